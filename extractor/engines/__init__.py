"""Engines: one async method (`generate`) plus a lifecycle (`aclose`), a registry by name
(`registry`), and `ScriptedEngine`, a scripted fake for tests."""

from __future__ import annotations

from extractor.engines.base import Capacity, Engine, GenerationRequest, GenerationResult, Message, TokenLogprob
from extractor.engines.fake import ScriptedEngine
from extractor.engines.registry import ENGINES, create_engine, engine_class, engine_names, parse_option, parse_options

__all__ = ["ENGINES", "Capacity", "Engine", "GenerationRequest", "GenerationResult", "Message", "ScriptedEngine", "TokenLogprob",
           "create_engine", "engine_class", "engine_names", "parse_option", "parse_options"]
