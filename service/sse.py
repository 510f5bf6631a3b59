"""`POST /extract/{schema}?stream=true`: the extraction's events as Server-Sent Events.

Each event of `extractor.longdoc.stream_document` is one SSE message, `event: <its kind>` and
`data: <its JSON>`: `item` / `record` / `field` as values become final (each sent once, never
changed), then `result` (the body a plain request returns). A failure after the stream started
is an `error` event holding the problem document the plain request would have returned.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Request

from extractor.errors import ExtractorError
from service.problems import problem_body

SSE_MEDIA_TYPE = "text/event-stream"


def message(kind: str, data: dict[str, Any]) -> bytes:
    return f"event: {kind}\ndata: {json.dumps(data, ensure_ascii=False, separators=(',', ':'))}\n\n".encode()


async def sse(events: AsyncIterator[dict[str, Any]], request: Request) -> AsyncIterator[bytes]:
    try:
        async for event in events:
            kind = event["event"]
            yield message(kind, {k: v for k, v in event.items() if k != "event"})
    except ExtractorError as exc:
        yield message("error", problem_body(exc, request))
