"""`extract run SCHEMA FILE...`: one JSON line per document on stdout, a progress bar on stderr
for several files."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

from extractor.cli.common import EXIT_ENGINE, EXIT_FAILED, EXIT_OK, fail, load_registry, open_extractor, run_then_close
from extractor.cli.flags import add_engine_flags, add_option_flags
from extractor.errors import DocumentError, EngineError, ExtractorError


def add_parser(sub: Any, engine_names: list[str]) -> None:
    run = sub.add_parser("run", help="extract a record from each document")
    run.add_argument("schema", help="a registered schema name or a JSON Schema file")
    run.add_argument("files", nargs="+", metavar="FILE", help="documents (UTF-8 text); - reads stdin")
    add_engine_flags(run, engine_names)
    add_option_flags(run)
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    run.add_argument("--stream", action="store_true",
                     help="print each document's events as JSON lines as values become final (item, record, field), "
                          "then its result")
    run.add_argument("--schemas", action="append", metavar="MODULE", dest="schemas_run", help=argparse.SUPPRESS)
    run.set_defaults(func=cmd_run)


def cmd_run(args: argparse.Namespace) -> int:
    from extractor.pipeline.documents import read_document_file

    registry = load_registry(args)
    task = registry.get(args.schema)
    docs: list[tuple[str, str | ExtractorError]] = []
    for name in args.files:
        try:
            docs.append((name, read_document_file(name)))
        except DocumentError as exc:
            docs.append((name, exc))
    if not any(isinstance(d, str) for _, d in docs):
        for _, err in docs:
            print(f"extract: {err}", file=sys.stderr)
        return EXIT_FAILED
    extractor = open_extractor(args, registry)
    if args.stream:
        return asyncio.run(run_then_close(extractor, _print_events(extractor, task, docs)))
    return asyncio.run(run_then_close(extractor, _print_results(
        extractor, task, docs, args.concurrency, show_progress=len(docs) > 1 and not args.no_progress)))


async def _print_events(extractor: Any, task: Any, docs: list[tuple[str, str | ExtractorError]]) -> int:
    """`--stream`: one JSON line per event, documents one after the other (`meta.file` / `file`
    name the document when there are several)."""
    status = EXIT_OK
    for name, text in docs:
        try:
            if isinstance(text, ExtractorError):
                raise text
            async for event in extractor.astream(task, text):
                if len(docs) > 1:
                    event = {**event, "file": name}
                print(json.dumps(event, ensure_ascii=False), flush=True)
        except EngineError as exc:
            return fail(f"engine {extractor.engine.name} failed: {exc}", EXIT_ENGINE)
        except ExtractorError as exc:
            print(f"extract: {name}: {exc}", file=sys.stderr)
            status = EXIT_FAILED
    return status


async def _print_results(extractor: Any, task: Any, docs: list[tuple[str, str | ExtractorError]], concurrency: int,
                         show_progress: bool) -> int:
    from tqdm import tqdm

    bar = tqdm(total=len(docs), unit="doc", file=sys.stderr, disable=not show_progress)
    semaphore = asyncio.Semaphore(max(1, concurrency))

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
            return fail(f"engine {extractor.engine.name} failed: {outcome}", EXIT_ENGINE)
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
