"""`extract serve`: the command that runs this service. It reaches the `extract` command line
through the `extractor.commands` entry-point group (pyproject.toml), so the library never
imports the service."""

from __future__ import annotations

import argparse
from typing import Any

from extractor.cli.common import EXIT_OK, EXIT_USAGE, fail
from extractor.cli.flags import add_engine_flags


def add_parser(sub: Any, engine_names: list[str]) -> None:
    serve = sub.add_parser("serve", help="run the HTTP extraction service",
                           description="Flags override the EXTRACTOR_* environment variables (see service/settings.py).")
    add_engine_flags(serve, engine_names, default=None, concurrency=False)
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


def cmd_serve(args: argparse.Namespace) -> int:
    """Run the extraction service (flags override `EXTRACTOR_*` environment variables)."""
    from extractor.engines import parse_options
    from service.server import serve
    from service.settings import Settings

    try:
        settings = Settings.from_env()
        engine_options = {**settings.engine_options, **parse_options(args.engine_option or [])}
        settings = settings.merged(
            engine=args.engine, host=args.host, port=args.port, max_inflight=args.max_inflight,
            max_waiting=args.max_waiting, deadline_s=args.deadline, max_body_bytes=args.max_body_bytes,
            max_retries=args.max_retries, api_keys_file=args.api_keys_file, engine_options=engine_options,
            batch_db=args.batch_db, workers=args.workers,
            schemas=tuple(args.schemas) if args.schemas else None,
            adapters=tuple(args.adapter) if args.adapter else None)
    except ValueError as exc:
        return fail(f"serve: {exc}", EXIT_USAGE)
    serve(settings, log_level=args.log_level)
    return EXIT_OK
