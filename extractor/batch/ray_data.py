"""Cluster scale on Ray Data: map a dataset of documents through extraction, one engine per actor.

    import ray
    from extractor.batch.ray_data import extract_dataset

    ds = ray.data.read_parquet("/shared/docs/")                      # columns id, text
    out = extract_dataset(ds, "person", engine="vllm", engine_options={"model": "/models/SmolLM2-135M-Instruct"},
                          concurrency=8, num_gpus=1)                 # 8 actors, one GPU and one vLLM each
    out.write_parquet("/shared/people/")

`extract_dataset` runs `ds.map_batches` with a callable class, so Ray keeps a pool of
`concurrency` actors: each builds ONE `Extractor` (and so one engine, e.g. vLLM in process on
its GPU) in `__init__` and reuses it for every batch it gets. A batch goes through the
extractor's concurrent path (`aiter_many`): all its documents are in flight together and the
engine batches them. The actor's `__call__` is async, so Ray runs several batches of a block at
once on the actor's event loop (4 in Ray 2.60): up to about 4 x `batch_size` documents reach
one engine together, and it does not wait on one batch's slowest document.

Output rows, one per input row, in the input's order within each batch (and across the whole
dataset with `DataContext.get_current().execution_options.preserve_order = True`):

- `id`: the input's id column as a string
- `data`: the validated record as JSON text, or null on failure
- `error`: null, or as JSON text the `error` object of an `extract batch` line:
  `{"type": <error code>, "message": ..., "errors"?: [[...] per attempt]}`
- `meta`: the `meta` object of an `extract batch` line as JSON text (schema, version, engine,
  model, attempts, tokens, latency_ms), or null on failure

`data`, `error` and `meta` are JSON text (Arrow `string`) because Arrow blocks hold one type per
column: a struct column would take its type from each block's values (a field that is null in a
whole block, records of another schema), while text is the same type for every schema and every
block, and writes as is to Parquet, JSONL or CSV. `json.loads(row["data"])` gives the record.

One bad document never fails the dataset: it is a row with an `error`. An engine failure
(`EngineError`: the engine is down or cannot start) fails the batch, and so the dataset, as it
stops `extract batch`; rerun the rows that have no output.

Ray is an optional extra (`pip install '.[ray]'`): this module imports it only when called.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from extractor.contracts.contract import Task
from extractor.contracts.registry import default_registry
from extractor.engines import Engine, create_engine, engine_names
from extractor.errors import DocumentError, ExtractorError, InvalidRequest
from extractor.pipeline.extractor import Extractor
from extractor.pipeline.many import Document
from extractor.pipeline.options import DEFAULT_OPTIONS, ExtractOptions

if TYPE_CHECKING:
    import ray.data

#: builds an engine inside each actor; must pickle (a module-level function, a class, a `functools.partial`)
EngineFactory = Callable[[], Engine]

#: the output columns, all Arrow strings (`data`, `error`, `meta` hold JSON text or null)
OUTPUT_COLUMNS = ("id", "data", "error", "meta")


def resolve_schema(schema: str | type[BaseModel] | Task[Any], schema_modules: Sequence[str] = ()) -> Task[Any]:
    """The schema as a `Task`, resolved where it is called: a registered name (built in, or from
    `schema_modules`, as `extract --schemas`), a JSON Schema file path, a Pydantic model or a Task."""
    registry = default_registry()
    for module in schema_modules:
        registry.load_module(module)
    return registry.resolve(schema)


class ExtractBatches:
    """The callable class of `extract_dataset`'s `map_batches`: one per actor, one engine each.

    The schema arrives as a resolved `Task`: it pickles by value (its compiled JSON schema) with its
    Pydantic model by reference, so workers need the model's module importable, never a schema file."""

    def __init__(self, task: Task[Any], engine: str | EngineFactory, engine_options: Mapping[str, Any],
                 options: Mapping[str, Any], text_column: str, id_column: str) -> None:
        built = create_engine(engine, **engine_options) if isinstance(engine, str) else engine()
        self.extractor = Extractor(built, options=ExtractOptions.parse(options))
        self.task = task
        self.text_column = text_column
        self.id_column = id_column

    async def __call__(self, batch: Any) -> AsyncIterator[Any]:
        """A `pyarrow.Table` of input rows in, a table of `OUTPUT_COLUMNS` out, row for row."""
        import pyarrow as pa

        docs = self.documents(batch)
        rows: list[dict[str, Any]] = []
        async for item in self.extractor.aiter_many(self.task, docs, concurrency=max(1, len(docs)), ordered=True):
            rows.append(output_row(item.to_dict()))
        yield pa.table({name: pa.array([r[name] for r in rows], type=pa.string()) for name in OUTPUT_COLUMNS})

    def documents(self, batch: Any) -> list[Document]:
        missing = [c for c in (self.id_column, self.text_column) if c not in batch.column_names]
        if missing:
            raise DocumentError(f"the dataset has no {missing[0]!r} column (columns: {batch.column_names})")
        ids = batch.column(self.id_column).to_pylist()
        texts = batch.column(self.text_column).to_pylist()
        return [Document(str(i), t) if isinstance(t, str) else
                Document(str(i), "", error=DocumentError(f"no string {self.text_column!r} value (got {type(t).__name__})"))
                for i, t in zip(ids, texts, strict=True)]


def output_row(line: dict[str, Any]) -> dict[str, str | None]:
    """An `extract batch` line (`ItemResult.to_dict()`) as a row of JSON text columns."""
    def text(key: str) -> str | None:
        return json.dumps(line[key], ensure_ascii=False) if key in line else None

    return {"id": str(line["id"]), "data": text("data"), "error": text("error"), "meta": text("meta")}


def extract_dataset(ds: ray.data.Dataset, schema: str | type[BaseModel] | Task[Any], *,
                    engine: str | EngineFactory = "local", engine_options: Mapping[str, Any] | None = None,
                    options: ExtractOptions | Mapping[str, Any] | None = None,
                    text_column: str = "text", id_column: str = "id",
                    concurrency: int | tuple[int, int] = 1, num_gpus: float | None = None,
                    num_cpus: float | None = None, batch_size: int = 256, schema_modules: Sequence[str] = (),
                    **map_batches_options: Any) -> ray.data.Dataset:
    """Extract `schema` from the `text_column` of every row of `ds`: a lazy Dataset of
    `OUTPUT_COLUMNS` rows (see the module docstring), one per input row.

    `engine` is a registered engine name (`local`, `vllm`, `vllm-http`) built in each actor with
    `engine_options`, or a picklable zero-argument callable that returns an `Engine`.
    `options` (an `ExtractOptions` or a mapping of its fields) configure each actor's `Extractor`.
    `concurrency` actors (or `(min, max)` for an autoscaling pool) each hold one engine; give
    each `num_gpus=1` for vLLM on GPU workers. `batch_size` rows go to an actor at a time, all in
    flight together. Other keyword arguments go to `Dataset.map_batches` (e.g. `memory`,
    `accelerator_type`, `runtime_env`). The schema is resolved here, so an unknown one fails
    before anything runs.
    """
    import ray.data

    if isinstance(engine, str) and engine not in engine_names():
        raise ExtractorError(f"unknown engine {engine!r}; choose one of {', '.join(engine_names())}")
    if not isinstance(engine, str) and engine_options:
        raise ValueError("engine_options go with an engine name; an engine factory builds its engine itself")
    try:  # checked here, so a bad option fails before any actor starts
        chosen = DEFAULT_OPTIONS.merged(options).model_dump()
    except InvalidRequest as exc:
        raise ValueError(f"options: {exc}") from None
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    if isinstance(concurrency, int):
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        pool = ray.data.ActorPoolStrategy(size=concurrency)
    else:
        low, high = concurrency
        pool = ray.data.ActorPoolStrategy(min_size=low, max_size=high)
    return ds.map_batches(
        ExtractBatches,
        fn_constructor_kwargs={"task": resolve_schema(schema, schema_modules), "engine": engine,
                               "engine_options": dict(engine_options or {}), "options": chosen,
                               "text_column": text_column, "id_column": id_column},
        batch_format="pyarrow", batch_size=batch_size, compute=pool, num_gpus=num_gpus, num_cpus=num_cpus,
        **map_batches_options)


__all__ = ["OUTPUT_COLUMNS", "EngineFactory", "ExtractBatches", "extract_dataset", "output_row", "resolve_schema"]
