"""`extract schemas [list | show NAME | check FILE...]`: the registered schemas, one compiled
strict schema, or raw schema files compiled (grammar included, in a child process with a time
limit), one JSON line each: accepted or not, and for a raw schema the keywords the grammar
enforces, those only validated after decoding and those ignored as annotations; `ok` when
xgrammar (the engines' grammar) or else llguidance compiles it (`backends` says which did)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from typing import Any

from extractor.cli.common import EXIT_FAILED, EXIT_OK, EXIT_USAGE, fail, load_registry
from extractor.errors import SchemaError


def add_parser(sub: Any, engine_names: list[str]) -> None:
    schemas = sub.add_parser("schemas", help="list, show or check schemas")
    schemas.add_argument("action", nargs="?", choices=["list", "show", "check"])
    schemas.add_argument("names", nargs="*", metavar="NAME_OR_FILE")
    schemas.add_argument("--timeout", type=float, default=10.0, help="seconds allowed per grammar compile")
    schemas.set_defaults(func=cmd_schemas)


def cmd_schemas(args: argparse.Namespace) -> int:
    registry = load_registry(args)
    action = args.action or "list"
    if action == "list":
        for name in registry.names():
            task = registry.get(name)
            decoding = "grounded" if task.grounded_decoding else "plain"
            print(f"{name}\tv{task.version}\t{decoding}\t{task.instructions.splitlines()[0]}")
        return EXIT_OK
    if action == "show":
        if not args.names or len(args.names) != 1:
            return fail("usage: extract schemas show NAME", EXIT_USAGE)
        print(json.dumps(registry.get(args.names[0]).strict_schema, indent=2, ensure_ascii=False))
        return EXIT_OK
    return _check(args.names or [], args.timeout)


def _check(files: Sequence[str], timeout: float) -> int:
    from extractor.contracts.contract import task_from_file
    from extractor.engines.grammar_backends import llguidance_error
    from extractor.engines.grammar_check import GrammarChecker

    if not files:
        return fail("usage: extract schemas check FILE...", EXIT_USAGE)
    status = EXIT_OK
    with GrammarChecker(timeout_s=timeout) as checker:
        for f in files:
            line: dict[str, Any] = {"file": f, "ok": False, "reason": None, "compile_ms": 0.0}
            try:
                task = task_from_file(f)
                result = checker.check(task.strict_schema)
                ll_reason = llguidance_error(task.strict_schema)
                line.update(ok=result.ok or ll_reason is None, reason=None if result.ok else result.reason,
                            compile_ms=round(result.compile_ms, 1),
                            backends={"xgrammar": result.reason or "ok", "llguidance": ll_reason or "ok"})
                if task.report is not None and task.prepared is not None:
                    line.update(wrapped=task.prepared.wrapped, strict=task.prepared.strict, **task.report.as_dict())
            except SchemaError as exc:
                line["reason"] = str(exc)
            status = status if line["ok"] else EXIT_FAILED
            print(json.dumps(line), flush=True)
    return status
