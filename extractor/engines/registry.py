"""Engines by name, and the one parser of engine options.

The built-in engines are listed here as `module:Class` and imported on use, so `import
extractor` loads no torch, transformers or vLLM. Third-party engines register through the
`extractor.engines` entry-point group (in their `pyproject.toml`:
`[project.entry-points."extractor.engines"] mine = "mypkg.engine:MyEngine"`), and then
`--engine mine` / `Extractor("mine")` work without editing this file.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Iterable, Sequence
from importlib.metadata import entry_points
from typing import Any

from extractor.engines.base import AdapterRef, Engine
from extractor.errors import ExtractorError

ENTRY_POINT_GROUP = "extractor.engines"

ENGINES: dict[str, str] = {
    "local": "extractor.engines.local:LocalEngine",
    "vllm-http": "extractor.engines.vllm_http:VllmHttpEngine",
    "vllm": "extractor.engines.vllm_inprocess:VllmEngine",
}


def _registered() -> dict[str, str]:
    """The built-in engines plus the entry points of installed packages (built-ins win)."""
    found = {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}
    return {**found, **ENGINES}


def engine_names() -> list[str]:
    return sorted(_registered())


def parse_option(pair: str) -> tuple[str, Any]:
    """`KEY=VALUE` (an `--engine-option`, an item of `EXTRACTOR_ENGINE_OPTIONS`) -> (key, value).
    The key is trimmed and `-` becomes `_` (`max-batch-size` is `max_batch_size`); the value is
    read as JSON where it parses (`8`, `true`, `0.5`), else kept as the string."""
    key, sep, value = pair.partition("=")
    key = key.strip().replace("-", "_")
    if not sep or not key:
        raise ExtractorError(f"engine option {pair!r} is not KEY=VALUE")
    value = value.strip()
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def parse_options(pairs: Iterable[str]) -> dict[str, Any]:
    """Several `KEY=VALUE` strings -> keyword options; a later key wins."""
    return dict(parse_option(pair) for pair in pairs)


def engine_class(name: str) -> type[Engine]:
    """The class registered under `name` (its module imported now)."""
    registered = _registered()
    try:
        target = registered[name]
    except KeyError:
        raise ExtractorError(f"unknown engine {name!r}; choose one of {', '.join(sorted(registered))}") from None
    module_name, _, cls_name = target.partition(":")
    cls: type[Engine] = getattr(importlib.import_module(module_name), cls_name)
    return cls


def adapter_options(name: str, adapters: Sequence[AdapterRef]) -> dict[str, Any]:
    """The options engine `name` must start with to apply these LoRA adapters (vLLM in-process:
    `enable_lora`, `max_lora_rank`, `max_loras`); an engine without an `adapter_options` needs none."""
    if not adapters:
        return {}
    hook = getattr(engine_class(name), "adapter_options", None)
    return dict(hook(adapters)) if callable(hook) else {}


def create_engine(name: str, **options: Any) -> Engine:
    """Instantiate the engine registered under `name` with its options."""
    cls = engine_class(name)
    try:
        engine: Engine = cls(**options)
    except TypeError as exc:  # an option the engine does not take
        raise ExtractorError(f"engine {name!r}: {exc}") from None
    return engine
