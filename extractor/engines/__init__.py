"""Engines by name. Each entry names a module and a class, imported on use,
so `import extractor` loads no torch, transformers or vLLM."""

from __future__ import annotations

import importlib
import json
from collections.abc import Sequence
from typing import Any

from ..errors import ExtractorError
from .base import Engine, GenerationRequest, GenerationResult, TokenLogprob
from .fake import ScriptedEngine

ENGINES: dict[str, str] = {
    "local": "extractor.engines.local:LocalEngine",
    "vllm-http": "extractor.engines.vllm_http:VllmHttpEngine",
    "vllm": "extractor.engines.vllm_inprocess:VllmEngine",
}


def engine_names() -> list[str]:
    return sorted(ENGINES)


def parse_options(pairs: Sequence[str]) -> dict[str, Any]:
    """`KEY=VALUE` strings (from `--engine-option`) -> keyword options. Values are read as
    JSON where they parse (`8`, `true`, `0.5`), else kept as strings."""
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ExtractorError(f"engine option {pair!r} is not KEY=VALUE")
        try:
            options[key.strip().replace("-", "_")] = json.loads(value)
        except json.JSONDecodeError:
            options[key.strip().replace("-", "_")] = value
    return options


def create_engine(name: str, **options: Any) -> Engine:
    """Instantiate the engine registered under `name` with its options."""
    try:
        target = ENGINES[name]
    except KeyError:
        raise ExtractorError(f"unknown engine {name!r}; choose one of {', '.join(engine_names())}") from None
    module_name, _, cls_name = target.partition(":")
    cls = getattr(importlib.import_module(module_name), cls_name)
    try:
        engine: Engine = cls(**options)
    except TypeError as exc:  # an option the engine does not take
        raise ExtractorError(f"engine {name!r}: {exc}") from None
    return engine


__all__ = ["ENGINES", "Engine", "GenerationRequest", "GenerationResult", "ScriptedEngine", "TokenLogprob",
           "create_engine", "engine_names", "parse_options"]
