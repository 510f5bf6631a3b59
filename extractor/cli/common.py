"""What every command shares: exit codes, one-line errors, the schema registry of `--schemas`,
and the Extractor a command opens (and closes) from its flags."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_ENGINE = 0, 1, 2, 3


def fail(message: str, code: int) -> int:
    print(f"extract: {message}", file=sys.stderr)
    return code


def quiet_libraries() -> None:
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def load_registry(args: argparse.Namespace) -> Any:
    """The default registry plus the contracts of every `--schemas MODULE`."""
    from extractor.contracts.registry import default_registry

    registry = default_registry()
    for module in getattr(args, "schemas", None) or []:
        registry.load_module(module)
    return registry


async def run_then_close(extractor: Any, work: Coroutine[Any, Any, T]) -> T:
    """Await `work`, then close the extractor in the same event loop (an HTTP engine's connections
    belong to the loop that opened them)."""
    async with extractor:
        return await work


def open_extractor(args: argparse.Namespace, registry: Any = None) -> Any:
    """An `Extractor` from `--engine`, `--engine-option` and the option flags. The caller closes it."""
    from extractor.cli.flags import options_from_args
    from extractor.engines import parse_options
    from extractor.pipeline.extractor import Extractor
    from extractor.pipeline.options import ExtractOptions

    options = ExtractOptions.parse(options_from_args(args))
    return Extractor(args.engine, options=options, registry=registry, adapter=getattr(args, "adapter", None),
                     **parse_options(args.engine_option or []))
