"""Engines: one async method (`generate`) plus a lifecycle (`aclose`), a registry by name
(`registry`), and `ScriptedEngine`, a scripted fake for tests."""

from __future__ import annotations

from extractor.engines.base import AdapterRef, Capacity, Engine, GenerationRequest, GenerationResult, Message, TokenBudget, TokenLogprob
from extractor.engines.fake import ScriptedEngine
from extractor.engines.registry import (
    ENGINES,
    adapter_options,
    create_engine,
    engine_class,
    engine_names,
    parse_option,
    parse_options,
)

__all__ = ["ENGINES", "AdapterRef", "Capacity", "Engine", "GenerationRequest", "GenerationResult", "Message", "ScriptedEngine",
           "TokenBudget", "TokenLogprob", "adapter_options", "create_engine", "engine_class", "engine_names", "parse_option",
           "parse_options"]
