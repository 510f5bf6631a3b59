"""An adapter's manifest (`manifest.json` next to peft's `adapter_config.json`): what it was trained
on and for, so that an adapter is never applied to another schema version or another base model,
and an evaluation never scores documents the adapter saw.

    {"format": 1, "name": "receipt",
     "base_model": {"name": "SmolLM2-135M-Instruct", "sha256": "...", "config": {"model_type": "llama", ...}},
     "schema": {"name": "receipt", "version": "1", "sha256": "..."},
     "data": {"file": "train.jsonl", "sha256": "...", "documents": 300, "train": 240, "validation": 60,
              "train_ids": [...], "train_text_sha256": [...], "validation_ids": [...]},
     "hyperparameters": {...}, "metrics": {...}, "versions": {...}}

The base model is matched by its architecture (`config`: the shapes a LoRA depends on), not its
weights' hash: the packaged model is a dequantized GGUF and a GPU box loads the original
safetensors, and an adapter trained on either fits both. The hash is recorded for provenance.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from extractor.contracts.contract import Task
from extractor.engines.base import AdapterRef
from extractor.errors import AdapterRejected
from extractor.pipeline.prompt import compact_json, system_prompt

log = logging.getLogger(__name__)

MANIFEST_FILE = "manifest.json"
ADAPTER_CONFIG_FILE = "adapter_config.json"
FORMAT = 1

#: the config keys a LoRA adapter's shapes depend on
ARCHITECTURE_KEYS = ("model_type", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                     "num_key_value_heads", "vocab_size")


class BaseModelInfo(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str
    sha256: str | None = None
    config: dict[str, Any] = Field(default_factory=dict)


class SchemaInfo(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str
    version: str
    sha256: str


class DataInfo(BaseModel):
    model_config = ConfigDict(extra="allow")

    file: str
    sha256: str
    documents: int
    train: int
    validation: int
    train_ids: list[str] = Field(default_factory=list)
    #: `text_digest` of each training document: an overlap is caught even under another id
    train_text_sha256: list[str] = Field(default_factory=list)
    validation_ids: list[str] = Field(default_factory=list)


class Manifest(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)

    format: int = FORMAT
    name: str
    base_model: BaseModelInfo
    schema_info: SchemaInfo = Field(alias="schema")
    data: DataInfo
    hyperparameters: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, Any] = Field(default_factory=dict)
    versions: dict[str, str] = Field(default_factory=dict)

    def dump(self) -> str:
        return json.dumps(self.model_dump(mode="json", by_alias=True), indent=2, ensure_ascii=False) + "\n"


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def text_digest(text: str) -> str:
    """A document's fingerprint in the manifest (16 hex digits of its UTF-8 sha256)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def task_digest(task: Task[Any]) -> str:
    """What the adapter learned to answer: the system prompt, the few-shot pairs and the strict schema."""
    parts = {"system": system_prompt(task), "schema": task.strict_schema,
             "examples": [[ex.document, compact_json(ex.record)] for ex in task.examples]}
    return sha256_bytes(json.dumps(parts, sort_keys=True, ensure_ascii=False).encode("utf-8"))


def architecture(config: Mapping[str, Any]) -> dict[str, Any]:
    """The part of a HF `config.json` a LoRA adapter's shapes depend on."""
    return {k: config.get(k) for k in ARCHITECTURE_KEYS if k in config}


@dataclass(frozen=True)
class LoadedAdapter:
    """An adapter folder with its manifest and peft config read."""

    path: Path
    manifest: Manifest
    rank: int

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def schema(self) -> str:
        return self.manifest.schema_info.name

    @property
    def ref(self) -> AdapterRef:
        return AdapterRef(name=self.name, path=str(self.path), rank=self.rank)

    def check_task(self, task: Task[Any]) -> None:
        """Refuse an adapter trained for another schema or another version of it."""
        info = self.manifest.schema_info
        if info.name != task.name:
            raise AdapterRejected(f"adapter {self.path} was trained for schema {info.name!r}, not {task.name!r}")
        if info.version != task.version:
            raise AdapterRejected(f"adapter {self.path} was trained for {info.name} version {info.version!r}; "
                                  f"the registered {task.name} is version {task.version!r}: retrain it")
        if info.sha256 != task_digest(task):
            log.warning("adapter %s: %s version %s's prompt or schema changed since training (same version); "
                        "its outputs may be worse", self.path, task.name, task.version)

    def check_base(self, config: Mapping[str, Any] | None, model: str = "") -> None:
        """Refuse an adapter trained on a base model of another architecture than `config` (a HF
        config of the engine's model; None: the engine cannot tell, e.g. a remote server)."""
        if config is None:
            return
        want = self.manifest.base_model.config
        have = architecture(config)
        diff = {k: (want[k], have.get(k)) for k in want if want[k] != have.get(k)}
        if diff:
            details = ", ".join(f"{k} {a!r} != {b!r}" for k, (a, b) in diff.items())
            raise AdapterRejected(f"adapter {self.path} was trained on {self.manifest.base_model.name}, and the engine's "
                                  f"model {model or '?'} is another architecture ({details})")

    def trained_on(self, doc_id: str, text: str) -> bool:
        """Whether a document (by id or by text) was in the adapter's training split."""
        data = self.manifest.data
        return doc_id in set(data.train_ids) or text_digest(text) in set(data.train_text_sha256)


def load_adapter(path: str | Path) -> LoadedAdapter:
    """Read an adapter folder; `AdapterRejected` when it is no adapter this project wrote."""
    folder = Path(path)
    try:
        manifest = Manifest.model_validate_json((folder / MANIFEST_FILE).read_text(encoding="utf-8"))
        config = json.loads((folder / ADAPTER_CONFIG_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise AdapterRejected(f"{folder} is not an adapter folder: no {Path(exc.filename or '?').name} "
                              "(train one with `extract train`)") from None
    except ValueError as exc:
        raise AdapterRejected(f"{folder}: unreadable adapter manifest or config: {exc}") from None
    if manifest.format != FORMAT:
        raise AdapterRejected(f"{folder}: manifest format {manifest.format}, this version reads {FORMAT}")
    return LoadedAdapter(path=folder.resolve(), manifest=manifest, rank=int(config.get("r", 16)))
