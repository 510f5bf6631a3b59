"""Engines: one async method (`generate`) plus a lifecycle (`aclose`), a registry by name
(`registry`), and `ScriptedEngine`, a scripted fake for tests."""

from __future__ import annotations

from extractor.engines.base import Engine, GenerationRequest, GenerationResult, Message, TokenBudget, TokenLogprob
from extractor.engines.fake import ScriptedEngine
from extractor.engines.registry import ENGINES, create_engine, engine_names, parse_option, parse_options

__all__ = ["ENGINES", "Engine", "GenerationRequest", "GenerationResult", "Message", "ScriptedEngine", "TokenBudget", "TokenLogprob",
           "create_engine", "engine_names", "parse_option", "parse_options"]
