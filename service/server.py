"""`extract serve`: the app under uvicorn, logging JSON lines."""

from __future__ import annotations

from extractor.registry import SchemaRegistry

from .access_log import configure_logging
from .app import create_app
from .settings import Settings


def serve(settings: Settings, *, registry: SchemaRegistry | None = None, log_level: str = "info") -> None:
    import uvicorn

    configure_logging(log_level)
    app = create_app(settings, registry=registry)
    # uvicorn's own access log is off: RequestContext writes one JSON line per request
    uvicorn.run(app, host=settings.host, port=settings.port, log_config=None, access_log=False,
                log_level=log_level, timeout_graceful_shutdown=int(settings.deadline_s) + 1)
