"""The service's settings: engine, limits and access, from flags or `EXTRACTOR_*` environment variables.

    EXTRACTOR_ENGINE            engine name (default local)
    EXTRACTOR_ENGINE_OPTIONS    JSON object of engine options, e.g. {"base_url": "http://127.0.0.1:8000/v1"}
    EXTRACTOR_HOST / _PORT      where to listen (127.0.0.1:8080)
    EXTRACTOR_WORKERS           server processes; each has its own engine and queue, so the limits
                                below are per process. Default: the engine's (`Engine.capacity`): 1 for
                                local and vllm (each process would load the model), for vllm-http a
                                quarter of the cores up to 4 (one process's event loop tops out near
                                200-250 requests/s)
    EXTRACTOR_MAX_INFLIGHT      requests extracting at once, batched into the engine. Default: the
                                engine's: 32 for local, 256 for vllm and vllm-http (what vLLM batches)
    EXTRACTOR_MAX_WAITING       requests queued behind them before 429 (128)
    EXTRACTOR_MAX_PER_CLIENT    requests in flight per client address before 429 (default: in flight
                                plus waiting plus one, past what one process holds)
    EXTRACTOR_DEADLINE_S        per-request deadline, queue wait included (60); a request may ask for less
    EXTRACTOR_MAX_BODY_BYTES    request body limit (10 MiB)
    EXTRACTOR_MAX_DOCUMENT_CHARS  document text limit after decoding or PDF extraction (200000)
    EXTRACTOR_MAX_RETRIES       retries after a failed validation (2)
    EXTRACTOR_API_KEYS          comma-separated sha256 hex digests of the accepted API keys
    EXTRACTOR_API_KEYS_FILE     file with one sha256 hex digest per line (# comments allowed)
    EXTRACTOR_SCHEMAS           comma-separated modules whose Contract subclasses get registered
    EXTRACTOR_ADAPTERS          comma-separated LoRA adapter folders (`extract train`): /extract/<schema>
                                runs with that schema's adapter (each manifest names its schema); one made
                                for another schema version or base model stops the start-up
    EXTRACTOR_BATCH_DB          batch jobs' database: a SQLite file (./extractor-batches.sqlite3) or a
                                postgresql://user@host/db URL
    EXTRACTOR_BATCH_CLAIM       items a batch worker leases at a time (16)
    EXTRACTOR_BATCH_LEASE_S     seconds a lease lasts without renewal; a dead worker's items wait this long (60)
    EXTRACTOR_BATCH_POLL_S      seconds between looks for batch work when idle (1)
    EXTRACTOR_BATCH_MAX_ITEMS   items one batch may hold (100000)
    EXTRACTOR_BATCH_MAX_ENGINE_ERRORS  engine failures of one item (while the engine answers others)
                                before it fails alone instead of coming back (5)
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

from extractor.engines import parse_option
from extractor.pipeline.documents import MAX_DOCUMENT_CHARS
from extractor.pipeline.options import DEFAULT_OPTIONS

PREFIX = "EXTRACTOR_"


@dataclass(frozen=True)
class Settings:
    engine: str = "local"
    engine_options: dict[str, Any] = field(default_factory=dict)
    host: str = "127.0.0.1"
    port: int = 8080
    #: None: the engine's own default (`resolved()`)
    workers: int | None = None
    max_inflight: int | None = None
    max_waiting: int = 128
    deadline_s: float = 60.0
    max_body_bytes: int = 10 * 1024 * 1024
    max_document_chars: int = MAX_DOCUMENT_CHARS
    max_retries: int = DEFAULT_OPTIONS.max_retries
    api_keys: tuple[str, ...] = ()
    api_keys_file: str | None = None
    schemas: tuple[str, ...] = ()
    adapters: tuple[str, ...] = ()
    #: seconds a client is told to wait (Retry-After) after a 429 or a 503
    retry_after_s: int = 1
    #: seconds /readyz waits for its probe generation, and how long a good probe is trusted
    ready_timeout_s: float = 30.0
    ready_cache_s: float = 5.0
    #: batch jobs: where they live, and how the worker leases their items
    batch_db: str = "./extractor-batches.sqlite3"
    batch_claim: int = 16
    batch_lease_s: float = 60.0
    batch_poll_s: float = 1.0
    batch_max_items: int = 100_000
    batch_max_engine_errors: int = 5
    #: connections: a request head must arrive within header_timeout_s, its body within body_timeout_s;
    #: at most max_connections at once (more get 503), idle ones closed after keep_alive_s; at most
    #: max_per_client requests in flight per client address (more get 429); None: one more than a
    #: process holds (max_inflight + max_waiting + 1), so that one pipeline at full speed (256 in
    #: flight from one address) is never refused while the queue has room, and a full queue
    #: answers with its own 429 (queue-full, Retry-After from its estimate) first
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    max_connections: int = 2048
    keep_alive_s: int = 5
    max_per_client: int | None = None
    #: PDF uploads: read by this many child processes at most at once, within these limits
    pdf_workers: int = 2
    pdf_max_pages: int = 500
    pdf_max_content_bytes: int = 32 * 1024 * 1024
    pdf_timeout_s: float = 20.0

    def __post_init__(self) -> None:
        for name in ("max_inflight", "max_body_bytes", "max_document_chars", "port", "workers", "batch_claim", "batch_max_items",
                     "batch_max_engine_errors", "pdf_workers", "pdf_max_pages", "pdf_max_content_bytes", "max_connections", "keep_alive_s",
                     "max_per_client"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.max_waiting < 0 or self.max_retries < 0:
            raise ValueError("max_waiting and max_retries must not be negative")
        if min(self.deadline_s, self.batch_lease_s, self.batch_poll_s, self.pdf_timeout_s, self.header_timeout_s,
               self.body_timeout_s) <= 0:
            raise ValueError("deadline_s, batch_lease_s, batch_poll_s and the pdf, header and body timeouts must be "
                             "positive")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = env.get(PREFIX + f.name.upper())
            if raw is None or raw == "":
                continue
            values[f.name] = _parse(f.name, raw)
        return cls(**values)

    def to_json(self) -> str:
        """These settings as one JSON object (`from_json` reads it back), for worker processes."""
        return json.dumps({f.name: getattr(self, f.name) for f in fields(self)})

    @classmethod
    def from_json(cls, text: str) -> Settings:
        values = json.loads(text)
        for name in ("api_keys", "schemas", "adapters"):
            values[name] = tuple(values[name])
        return cls(**values)

    def resolved(self) -> Settings:
        """These settings with the engine's serving defaults where none was chosen."""
        settings = self
        if self.workers is None or self.max_inflight is None:
            from extractor.engines import engine_class

            capacity = engine_class(self.engine).capacity(self.engine_options)
            settings = replace(self, workers=self.workers or capacity.processes,
                               max_inflight=self.max_inflight or capacity.inflight)
        if settings.max_per_client is None:
            assert settings.max_inflight is not None
            settings = replace(settings, max_per_client=settings.max_inflight + settings.max_waiting + 1)
        return settings

    def merged(self, **overrides: Any) -> Settings:
        """These settings with every override that is not None (flags over the environment)."""
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})


def _parse(name: str, raw: str) -> Any:
    default = Settings.__dataclass_fields__[name].default
    if name in ("workers", "max_inflight", "max_per_client"):
        return int(raw)
    if name == "engine_options":
        value = json.loads(raw)
        if not isinstance(value, dict):
            raise ValueError(f"{PREFIX}ENGINE_OPTIONS must be a JSON object")
        return dict(parse_option(f"{key}={json.dumps(v)}") for key, v in value.items())
    if name in ("api_keys", "schemas", "adapters"):
        return tuple(part.strip() for part in raw.split(",") if part.strip())
    if isinstance(default, bool):
        return raw.lower() in ("1", "true", "yes")
    if isinstance(default, int):
        return int(raw)
    if isinstance(default, float):
        return float(raw)
    return raw
