"""`extract`: the command line, one module per command.

    extract run SCHEMA FILE...        one JSON line per document on stdout (`cli/run.py`)
    extract batch SCHEMA INPUT -o OUT a resumable batch into JSONL (`cli/batch.py`)
    extract eval SCHEMA DATA.jsonl -o REPORT.json   per-field P/R/F1 against labels (`cli/eval.py`)
    extract view RESULTS.jsonl -o page.html         values highlighted in their documents (`cli/view.py`)
    extract train SCHEMA TRAIN.jsonl --out DIR      a LoRA adapter for the schema (`cli/train.py`)
    extract merge DIR --out MODEL_DIR               the adapter folded into its base model (`cli/merge.py`)
    extract schemas [list|show NAME|check FILE...]  (`cli/schemas.py`)
    extract serve [--engine ...]      the HTTP service (`service/cli.py`, through the
                                      `extractor.commands` entry-point group)

Exit status: 0 when every document gave a valid record; 1 when a document or its extraction
failed; 2 for usage errors and unknown schemas; 3 when the engine failed. Errors are one line on
stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from importlib.metadata import entry_points

from extractor.cli import batch, eval, merge, run, schemas, train, view
from extractor.cli.common import EXIT_ENGINE, EXIT_FAILED, EXIT_OK, EXIT_USAGE, fail, quiet_libraries
from extractor.errors import EngineError, ExtractorError, RequestError, SchemaError

#: the built-in commands, in the order `extract --help` lists them
COMMANDS = (run, batch, eval, view, train, merge, schemas)
#: packages add commands here (this project's pyproject.toml: `serve = "service.cli:add_parser"`)
ENTRY_POINT_GROUP = "extractor.commands"


#: what the group holds when this project runs from a source tree without its package metadata
#: (PYTHONPATH=checkout, as on a GPU box): a name to import on use, never imported by the library
SOURCE_TREE_COMMANDS = {"serve": "service.cli:add_parser"}


def _plugin_commands() -> dict[str, str]:
    found = {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}
    return found or SOURCE_TREE_COMMANDS


def build_parser() -> argparse.ArgumentParser:
    from extractor.engines import engine_names

    parser = argparse.ArgumentParser(prog="extract", description="Typed, validated records from documents.")
    parser.add_argument("--schemas", action="append", metavar="MODULE",
                        help="import a module and register its Contract subclasses (repeatable)")
    sub = parser.add_subparsers(dest="command", required=True)
    names = engine_names()
    for command in COMMANDS:
        command.add_parser(sub, names)
    for target in _plugin_commands().values():
        module_name, _, attr = target.partition(":")
        try:
            add_parser = getattr(importlib.import_module(module_name), attr)
        except ImportError:  # the package that brings the command is not installed
            continue
        add_parser(sub, names)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    quiet_libraries()
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "schemas_run", None):
        args.schemas = [*(args.schemas or []), *args.schemas_run]
    try:
        code: int = args.func(args)
        return code
    except (SchemaError, RequestError) as exc:
        return fail(str(exc), EXIT_USAGE)
    except EngineError as exc:
        return fail(f"engine failed: {exc}", EXIT_ENGINE)
    except ExtractorError as exc:
        return fail(str(exc), EXIT_FAILED)
    except KeyboardInterrupt:
        return fail("interrupted", 130)
    except BrokenPipeError:  # stdout closed early (`| head`): not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
