"""Typed, validated records from documents, with JSON-schema contracts."""

from typing import TYPE_CHECKING, Any

from extractor.adapters import AdapterRegistry
from extractor.batch.ray_data import extract_dataset  # imports Ray only when called
from extractor.contracts.compile import Limits, compile_strict_schema
from extractor.contracts.contract import Contract, Example, Task, task_from_file, task_from_json_schema, task_from_model
from extractor.contracts.registry import SchemaRegistry, default_registry
from extractor.engines import Engine, GenerationRequest, GenerationResult, ScriptedEngine, create_engine
from extractor.errors import (
    AdapterRejected,
    DeadlineExceeded,
    DocumentError,
    DocumentTooLarge,
    EmptyDocument,
    EngineError,
    EngineOverloaded,
    EngineTimeout,
    EngineUnavailable,
    ExtractionFailed,
    ExtractorError,
    GrammarNotEnforced,
    InvalidRequest,
    MalformedRequest,
    QueueFull,
    RequestError,
    SchemaError,
    SchemaRejected,
    Unauthorized,
    UndecodableDocument,
    UnknownSchema,
    UnsupportedMediaType,
    error_class,
    http_status,
)
from extractor.eval.report import build_report, compare_reports, write_report
from extractor.eval.run import aevaluate, evaluate, read_dataset
from extractor.grounding.spans import Span
from extractor.pipeline.extractor import Extractor
from extractor.pipeline.options import ExtractOptions
from extractor.pipeline.result import Extraction, Meta

if TYPE_CHECKING:
    from extractor.client import AsyncClient, Client


def __getattr__(name: str) -> Any:
    """`Client` and `AsyncClient` are imported on first use (they bring in the HTTP client)."""
    if name in ("Client", "AsyncClient"):
        from extractor import client

        return getattr(client, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "AdapterRegistry", "AdapterRejected",
    "AsyncClient", "Client", "Contract", "DeadlineExceeded", "DocumentError", "DocumentTooLarge", "EmptyDocument", "Engine", "EngineError",
    "EngineOverloaded", "EngineTimeout", "EngineUnavailable", "Example", "ExtractOptions", "Extraction", "ExtractionFailed",
    "Extractor", "ExtractorError", "GenerationRequest", "GenerationResult", "GrammarNotEnforced", "InvalidRequest",
    "Limits", "MalformedRequest", "Meta", "QueueFull", "RequestError", "SchemaError", "SchemaRegistry", "SchemaRejected",
    "ScriptedEngine", "Span", "Task", "Unauthorized", "UndecodableDocument", "UnknownSchema", "UnsupportedMediaType",
    "compile_strict_schema", "create_engine", "default_registry", "error_class", "extract_dataset", "http_status",
    "task_from_file", "task_from_json_schema", "task_from_model",
    "aevaluate", "build_report", "compare_reports", "evaluate", "read_dataset", "write_report",
]
