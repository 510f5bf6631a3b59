"""Engines by name. Each entry names a module and a class, imported on use,
so `import extractor` loads no torch, transformers or vLLM."""

from __future__ import annotations

import importlib
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


def create_engine(name: str, **options: Any) -> Engine:
    """Instantiate the engine registered under `name` with its options."""
    try:
        target = ENGINES[name]
    except KeyError:
        raise ExtractorError(f"unknown engine {name!r}; choose one of {', '.join(engine_names())}") from None
    module_name, _, cls_name = target.partition(":")
    cls = getattr(importlib.import_module(module_name), cls_name)
    engine: Engine = cls(**options)
    return engine


__all__ = ["ENGINES", "Engine", "GenerationRequest", "GenerationResult", "ScriptedEngine", "TokenLogprob",
           "create_engine", "engine_names"]
