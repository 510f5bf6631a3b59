"""`extract`: the command line.

    extract run SCHEMA FILE...        one JSON line per document on stdout
    extract schemas                   list registered schemas
    extract schemas show NAME         print the compiled strict JSON schema
    extract schemas check FILE...     compile raw schema files, one JSON line each
    extract serve [--engine ...]      the HTTP service (service/), JSON log lines on stderr
    extract eval SCHEMA DATA.jsonl -o REPORT.json   per-field P/R/F1 against labels (+ REPORT.html)
    extract eval --compare A.json B.json            per-field deltas of two eval reports

Exit status: 0 when every document gave a valid record; 1 when a document
or its extraction failed; 2 for usage errors and unknown schemas; 3 when the
engine failed. Errors are one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from .errors import DocumentError, EngineError, ExtractorError, SchemaError

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_ENGINE = 0, 1, 2, 3


def _quiet_libraries() -> None:
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def read_document(name: str) -> str:
    """Read a document (a path, or `-` for stdin) as UTF-8 text, checked (`extractor.documents`)."""
    from .documents import MAX_DOCUMENT_CHARS, decode_document

    try:
        if name == "-":
            raw = sys.stdin.buffer.read(4 * MAX_DOCUMENT_CHARS + 1)
        else:
            with open(name, "rb") as f:  # never more than the limit allows: a 10 GB file is not read whole
                raw = f.read(4 * MAX_DOCUMENT_CHARS + 1)
    except OSError as exc:
        raise DocumentError(f"{name}: cannot read: {exc.strerror or exc}") from exc
    return decode_document(raw, name)


def _registry(args: argparse.Namespace) -> Any:
    from .registry import default_registry

    registry = default_registry()
    for module in args.schemas or []:
        registry.load_module(module)
    return registry


def _fail(message: str, code: int) -> int:
    print(f"extract: {message}", file=sys.stderr)
    return code


def cmd_run(args: argparse.Namespace) -> int:
    from .extractor import Extractor

    registry = _registry(args)
    task = registry.get(args.schema)
    docs: list[tuple[str, str | ExtractorError]] = []
    for name in args.files:
        try:
            docs.append((name, read_document(name)))
        except DocumentError as exc:
            docs.append((name, exc))
    if not any(isinstance(d, str) for _, d in docs):
        for _, err in docs:
            print(f"extract: {err}", file=sys.stderr)
        return EXIT_FAILED
    from .cli_quality import extractor_options
    from .engines import parse_options

    extractor = Extractor(args.engine, max_retries=args.max_retries, registry=registry, **extractor_options(args),
                          **parse_options(args.engine_option or []))
    return asyncio.run(_run_all(extractor, task, docs, show_progress=len(docs) > 1 and not args.no_progress))


async def _run_all(extractor: Any, task: Any, docs: list[tuple[str, str | ExtractorError]], show_progress: bool) -> int:
    from tqdm import tqdm

    bar = tqdm(total=len(docs), unit="doc", file=sys.stderr, disable=not show_progress)
    semaphore = asyncio.Semaphore(64)

    async def one(text: str | ExtractorError) -> Any:
        if isinstance(text, ExtractorError):
            return text
        async with semaphore:
            try:
                return await extractor.arun(task, text)
            except ExtractorError as exc:
                return exc
            finally:
                bar.update(1)

    if any(isinstance(t, ExtractorError) for _, t in docs):
        bar.update(sum(isinstance(t, ExtractorError) for _, t in docs))
    tasks = [asyncio.ensure_future(one(text)) for _, text in docs]
    status = EXIT_OK
    for (name, _), fut in zip(docs, tasks, strict=True):
        outcome = await fut
        if isinstance(outcome, EngineError):
            bar.close()
            for t in tasks:
                t.cancel()
            return _fail(f"engine {extractor.engine.name} failed: {outcome}", EXIT_ENGINE)
        if isinstance(outcome, ExtractorError):
            bar.clear()
            print(f"extract: {name}: {outcome}" if not str(outcome).startswith(name) else f"extract: {outcome}",
                  file=sys.stderr)
            status = EXIT_FAILED
            continue
        line = outcome.to_dict()
        if len(docs) > 1:
            line["meta"]["file"] = name
        bar.clear()
        print(json.dumps(line, ensure_ascii=False), flush=True)
        bar.refresh()
    bar.close()
    return status


def cmd_schemas(args: argparse.Namespace) -> int:
    registry = _registry(args)
    action = args.action or "list"
    if action == "list":
        for name in registry.names():
            task = registry.get(name)
            decoding = "grounded" if task.grounded_decoding else "plain"
            print(f"{name}\tv{task.version}\t{decoding}\t{task.instructions.splitlines()[0]}")
        return EXIT_OK
    if action == "show":
        if not args.names or len(args.names) != 1:
            return _fail("usage: extract schemas show NAME", EXIT_USAGE)
        print(json.dumps(registry.get(args.names[0]).strict_schema, indent=2, ensure_ascii=False))
        return EXIT_OK
    if action == "check":
        return _check(args.names or [], args.timeout)
    return _fail(f"unknown action {action!r}; use list, show or check", EXIT_USAGE)


def cmd_serve(args: argparse.Namespace) -> int:
    """Run the extraction service (flags override `EXTRACTOR_*` environment variables)."""
    from service.server import serve
    from service.settings import Settings, parse_engine_option

    try:
        settings = Settings.from_env()
        engine_options = {**settings.engine_options, **dict(parse_engine_option(o) for o in args.engine_option or [])}
        settings = settings.merged(
            engine=args.engine, host=args.host, port=args.port, max_inflight=args.max_inflight,
            max_waiting=args.max_waiting, deadline_s=args.deadline, max_body_bytes=args.max_body_bytes,
            max_retries=args.max_retries, api_keys_file=args.api_keys_file, engine_options=engine_options,
            batch_db=args.batch_db, workers=args.workers,
            schemas=tuple(args.schemas) if args.schemas else None)
    except ValueError as exc:
        return _fail(f"serve: {exc}", EXIT_USAGE)
    serve(settings, log_level=args.log_level)
    return EXIT_OK


def _check(files: Sequence[str], timeout: float) -> int:
    from .contract import task_from_file
    from .grammar_check import GrammarChecker

    if not files:
        return _fail("usage: extract schemas check FILE...", EXIT_USAGE)
    status = EXIT_OK
    with GrammarChecker(timeout_s=timeout) as checker:
        for f in files:
            line: dict[str, Any] = {"file": f, "ok": False, "reason": None, "compile_ms": 0.0}
            try:
                task = task_from_file(f)
                result = checker.check(task.strict_schema)
                line.update(ok=result.ok, reason=result.reason, compile_ms=round(result.compile_ms, 1))
            except SchemaError as exc:
                line["reason"] = str(exc)
            status = status if line["ok"] else EXIT_FAILED
            print(json.dumps(line), flush=True)
    return status


def build_parser() -> argparse.ArgumentParser:
    from .engines import engine_names

    parser = argparse.ArgumentParser(prog="extract", description="Typed, validated records from documents.")
    parser.add_argument("--schemas", action="append", metavar="MODULE",
                        help="import a module and register its Contract subclasses (repeatable)")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="extract a record from each document")
    run.add_argument("schema", help="a registered schema name or a JSON Schema file")
    run.add_argument("files", nargs="+", metavar="FILE", help="documents (UTF-8 text); - reads stdin")
    run.add_argument("--engine", default="local", choices=engine_names())
    run.add_argument("--engine-option", action="append", metavar="KEY=VALUE",
                     help="an engine option, repeatable (e.g. base_url=http://gpu:8000/v1, model=DIR)")
    run.add_argument("--max-retries", type=int, default=2, help="retries after a failed validation (default 2)")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    from . import cli_quality, cli_view
    cli_quality.add_flags(run)
    run.add_argument("--schemas", action="append", metavar="MODULE", dest="schemas_run",
                     help=argparse.SUPPRESS)
    run.set_defaults(func=cmd_run)

    from . import cli_batch

    cli_batch.add_parser(sub, engine_names())
    cli_view.add_parser(sub)
    from . import cli_eval
    cli_eval.add_parser(sub, engine_names())

    schemas = sub.add_parser("schemas", help="list, show or check schemas")
    schemas.add_argument("action", nargs="?", choices=["list", "show", "check"])
    schemas.add_argument("names", nargs="*", metavar="NAME_OR_FILE")
    schemas.add_argument("--timeout", type=float, default=10.0, help="seconds allowed per grammar compile")
    schemas.set_defaults(func=cmd_schemas)

    serve = sub.add_parser("serve", help="run the HTTP extraction service",
                           description="Flags override the EXTRACTOR_* environment variables (see service/settings.py).")
    serve.add_argument("--engine", choices=engine_names(), help="engine (env EXTRACTOR_ENGINE; default local)")
    serve.add_argument("--engine-option", action="append", metavar="KEY=VALUE",
                       help="engine option, VALUE read as JSON when it parses (repeatable; env EXTRACTOR_ENGINE_OPTIONS)")
    serve.add_argument("--host", help="address to listen on (env EXTRACTOR_HOST; default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (env EXTRACTOR_PORT; default 8080)")
    serve.add_argument("--max-inflight", type=int, help="requests extracting at once (env EXTRACTOR_MAX_INFLIGHT; 32)")
    serve.add_argument("--max-waiting", type=int, help="requests queued behind them (env EXTRACTOR_MAX_WAITING; 128)")
    serve.add_argument("--deadline", type=float, help="per-request deadline in seconds (env EXTRACTOR_DEADLINE_S; 60)")
    serve.add_argument("--max-body-bytes", type=int, help="request body limit (env EXTRACTOR_MAX_BODY_BYTES; 10 MiB)")
    serve.add_argument("--max-retries", type=int, help="retries after a failed validation (env EXTRACTOR_MAX_RETRIES; 2)")
    serve.add_argument("--api-keys-file", help="file of sha256 digests of API keys (env EXTRACTOR_API_KEYS_FILE)")
    serve.add_argument("--batch-db", metavar="PATH_OR_URL",
                       help="batch jobs' database: a SQLite file or postgresql://... (env EXTRACTOR_BATCH_DB; "
                            "default ./extractor-batches.sqlite3)")
    serve.add_argument("--workers", type=int, help="server processes, each with its own engine client and queue "
                                                   "(env EXTRACTOR_WORKERS; default 1; for remote engines such as vllm-http)")
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    serve.set_defaults(func=cmd_serve)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    _quiet_libraries()
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "schemas_run", None):
        args.schemas = [*(args.schemas or []), *args.schemas_run]
    try:
        code: int = args.func(args)
        return code
    except SchemaError as exc:
        return _fail(str(exc), EXIT_USAGE)
    except EngineError as exc:
        return _fail(f"engine failed: {exc}", EXIT_ENGINE)
    except ExtractorError as exc:
        return _fail(str(exc), EXIT_FAILED)
    except KeyboardInterrupt:
        return _fail("interrupted", 130)
    except BrokenPipeError:  # stdout closed early (`| head`): not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
