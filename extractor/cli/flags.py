"""The flags every extracting command shares, generated from `ExtractOptions` so the CLI, the
library and the service's request body name the same options: `--max-retries`, `--spans`,
`--confidence`, `--require-grounded`, `--grounded-decoding/--no-grounded-decoding`; and the
engine's: `--engine`, `--engine-option KEY=VALUE`, `--concurrency`."""

from __future__ import annotations

import argparse
import types
import typing
from typing import Any

from extractor.pipeline.options import DEFAULT_CONCURRENCY, DEFAULT_OPTIONS, ExtractOptions


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_option_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per exposed `ExtractOptions` field; an omitted flag leaves the default alone."""
    for name in ExtractOptions.exposed_fields():
        field = ExtractOptions.model_fields[name]
        default = getattr(DEFAULT_OPTIONS, name)
        annotation = field.annotation
        optional = isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union
        inner = [a for a in typing.get_args(annotation) if a is not type(None)] if optional else [annotation]
        unset = "the schema" if inner == [bool] else "automatic"
        help_text = f"{field.description} (default {default if default is not None else unset})"
        if annotation is bool:
            parser.add_argument(_flag(name), action="store_true", default=None, help=help_text)
        elif optional and inner == [bool]:  # bool | None: on, off, or as the schema says
            parser.add_argument(_flag(name), action=argparse.BooleanOptionalAction, default=None, help=help_text)
        elif typing.get_origin(annotation) is typing.Literal:
            parser.add_argument(_flag(name), choices=typing.get_args(annotation), default=None, help=help_text)
        elif optional:  # int | None: a number, or the default
            number: Any = inner[0]
            parser.add_argument(_flag(name), type=number, default=None, metavar="N", help=help_text)
        else:
            convert: Any = annotation
            parser.add_argument(_flag(name), type=convert, default=None, metavar="N", help=help_text)


def options_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The options the command line set (omitted flags are left out)."""
    return {name: getattr(args, name) for name in ExtractOptions.exposed_fields()
            if getattr(args, name, None) is not None}


def add_engine_flags(parser: argparse.ArgumentParser, engine_names: list[str], *, default: str | None = "local",
                     concurrency: bool = True) -> None:
    parser.add_argument("--engine", default=default, choices=engine_names,
                        help=f"the engine (default {default})" if default else "the engine")
    parser.add_argument("--engine-option", action="append", metavar="KEY=VALUE",
                        help="an engine option, repeatable; VALUE is read as JSON where it parses "
                             "(e.g. base_url=http://gpu:8000/v1, model=DIR, max-batch-size=8)")
    parser.add_argument("--adapter", action="append", metavar="DIR",
                        help="a LoRA adapter folder (`extract train`), repeatable: its schema is extracted with it")
    if concurrency:
        parser.add_argument("--concurrency", type=int, default=DEFAULT_CONCURRENCY,
                            help=f"documents in flight (default {DEFAULT_CONCURRENCY})")
