"""Schema -> adapter: which LoRA adapter an extractor (or the service) applies to a schema's documents.

Each adapter's manifest names its schema, so a registry is built from folders alone
(`AdapterRegistry.load(["adapters/receipt", "adapters/invoice"])`, the CLI's repeatable `--adapter`,
the service's `EXTRACTOR_ADAPTERS=dir1,dir2`). `check` refuses, before any document is sent, an
adapter whose schema version or base model does not match.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, Union

from extractor.adapters.manifest import LoadedAdapter, load_adapter
from extractor.contracts.contract import Task
from extractor.engines.base import AdapterRef
from extractor.errors import AdapterRejected, UnknownSchema

#: what `Extractor(adapter=...)` takes: a folder, several, or a registry
AdapterSpec = Union[str, "os.PathLike[str]", Iterable[Union[str, "os.PathLike[str]"]], "AdapterRegistry", None]


class AdapterRegistry:
    def __init__(self, adapters: Iterable[LoadedAdapter] = ()) -> None:
        self._by_schema: dict[str, LoadedAdapter] = {}
        names: dict[str, Path] = {}
        for adapter in adapters:
            if adapter.schema in self._by_schema:
                raise AdapterRejected(f"two adapters for schema {adapter.schema!r}: {self._by_schema[adapter.schema].path} "
                                      f"and {adapter.path}")
            if adapter.name in names:
                raise AdapterRejected(f"two adapters named {adapter.name!r}: {names[adapter.name]} and {adapter.path}")
            self._by_schema[adapter.schema] = adapter
            names[adapter.name] = adapter.path

    @classmethod
    def load(cls, spec: AdapterSpec) -> AdapterRegistry:
        """A registry from a folder, a comma-separated list of folders, an iterable of folders, or a registry."""
        if spec is None:
            return cls()
        if isinstance(spec, AdapterRegistry):
            return spec
        if isinstance(spec, (str, os.PathLike)):
            spec = [p for p in str(spec).split(",") if p.strip()] if isinstance(spec, str) else [spec]
        return cls(load_adapter(str(p).strip()) for p in spec)

    def __iter__(self) -> Iterator[LoadedAdapter]:
        return iter(self._by_schema.values())

    def __len__(self) -> int:
        return len(self._by_schema)

    def __bool__(self) -> bool:
        return bool(self._by_schema)

    def get(self, schema: str) -> LoadedAdapter | None:
        return self._by_schema.get(schema)

    def ref_for(self, task: Task[Any]) -> AdapterRef | None:
        """The adapter a document of `task` is generated with (None: the base model)."""
        adapter = self._by_schema.get(task.name)
        if adapter is None:
            return None
        if adapter.manifest.schema_info.version != task.version:  # a Task passed in, not the registered one
            adapter.check_task(task)
        return adapter.ref

    def refs(self) -> list[AdapterRef]:
        return [a.ref for a in self]

    def check(self, resolve: Any, base_config: Mapping[str, Any] | None = None, model: str = "") -> None:
        """Refuse any adapter that does not fit its registered schema (`resolve(name) -> Task`) or the
        engine's base model (`base_config`, a HF config; None when the engine cannot tell)."""
        for adapter in self:
            try:
                task = resolve(adapter.schema)
            except UnknownSchema:
                raise AdapterRejected(f"adapter {adapter.path} is for schema {adapter.schema!r}, which is not "
                                      "registered") from None
            adapter.check_task(task)
            adapter.check_base(base_config, model)
