"""`extract serve`: the app under uvicorn, logging JSON lines.

With `workers > 1`, uvicorn starts that many processes; each builds the app from the settings
passed in `EXTRACTOR_SERVE_SETTINGS` (so flags reach them too), and Prometheus metrics are kept in
`PROMETHEUS_MULTIPROC_DIR` so that `/metrics` in any process reports all of them.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import socket
import tempfile
from typing import Any

from fastapi import FastAPI

from extractor.contracts.registry import SchemaRegistry
from service.access_log import configure_logging
from service.app import create_app
from service.limits import LimitedH11Protocol
from service.settings import Settings

SETTINGS_ENV = "EXTRACTOR_SERVE_SETTINGS"
LOG_LEVEL_ENV = "EXTRACTOR_SERVE_LOG_LEVEL"
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


class NoDelayH11Protocol(LimitedH11Protocol):
    """uvicorn's HTTP/1.1 protocol with TCP_NODELAY on every connection, and a time limit on a
    request's head (service/limits.py).

    asyncio sets it only on sockets whose `proto` is IPPROTO_TCP; the listening socket uvicorn
    shares with its worker processes is made with proto 0, so without this every response of a
    multi-worker service waited for the client's delayed ACK: about 40 ms a request on loopback
    (tests/test_service_workers.py measures it)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().connection_made(transport)


def serve(settings: Settings, *, registry: SchemaRegistry | None = None, log_level: str = "info") -> None:
    import uvicorn

    settings = settings.resolved()
    configure_logging(log_level)
    logging.getLogger("extractor.service").info(
        "serving engine %s with %d worker process(es), %s request(s) in flight and %d waiting per process",
        settings.engine, settings.workers, settings.max_inflight, settings.max_waiting)
    NoDelayH11Protocol.header_timeout_s = settings.header_timeout_s
    # uvicorn's own access log is off: RequestContext writes one JSON line per request
    common: dict[str, Any] = {"host": settings.host, "port": settings.port, "log_config": None, "access_log": False,
              "log_level": log_level, "timeout_graceful_shutdown": int(settings.deadline_s) + 1,
                              "http": NoDelayH11Protocol, "limit_concurrency": settings.max_connections,
                              "timeout_keep_alive": settings.keep_alive_s}
    if settings.workers == 1:
        uvicorn.run(create_app(settings, registry=registry), **common)
        return
    if registry is not None:
        raise ValueError("several workers build their registries from settings.schemas; pass no registry")
    metrics_dir = tempfile.mkdtemp(prefix="extractor-metrics-")
    os.environ.update({SETTINGS_ENV: settings.to_json(), LOG_LEVEL_ENV: log_level, MULTIPROC_ENV: metrics_dir})
    try:
        uvicorn.run("service.server:app_from_environment", factory=True, workers=settings.workers, **common)
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)


def app_from_environment() -> FastAPI:
    """The app of one worker process (uvicorn's factory)."""
    configure_logging(os.environ.get(LOG_LEVEL_ENV, "info"))
    settings = Settings.from_json(os.environ[SETTINGS_ENV])
    NoDelayH11Protocol.header_timeout_s = settings.header_timeout_s
    return create_app(settings)
