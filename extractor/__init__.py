"""Typed, validated records from documents, with JSON-schema contracts."""

from .compile import Limits, compile_strict_schema
from .contract import Contract, Example, Task, task_from_file, task_from_json_schema, task_from_model
from .engines import Engine, GenerationRequest, GenerationResult, ScriptedEngine, create_engine
from .errors import (
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
    SchemaError,
    SchemaRejected,
    UndecodableDocument,
    UnknownSchema,
    http_status,
)
from .extractor import Extractor
from .registry import SchemaRegistry, default_registry
from .result import Extraction, Meta

__all__ = [
    "Contract", "DocumentError", "DocumentTooLarge", "EmptyDocument", "Engine", "EngineError",
    "EngineOverloaded", "EngineTimeout", "EngineUnavailable", "Example", "Extraction", "ExtractionFailed",
    "Extractor", "ExtractorError", "GenerationRequest", "GenerationResult", "GrammarNotEnforced", "Limits",
    "Meta", "SchemaError", "SchemaRegistry", "SchemaRejected", "ScriptedEngine", "Task", "UndecodableDocument",
    "UnknownSchema", "compile_strict_schema", "create_engine", "default_registry", "http_status",
    "task_from_file", "task_from_json_schema", "task_from_model",
]
