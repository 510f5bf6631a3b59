"""Schemathesis against the OpenAPI document, on the scripted engine: whatever it sends, no 500.

Every documented operation and body type (JSON, text, markdown, PDF bytes, multipart) is
fuzzed, a few examples each, so the whole run stays within seconds.
"""

from __future__ import annotations

from typing import Any

import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error

from tests.service_support import make_app


@schemathesis.serializer("application/pdf")
def _pdf_bytes(ctx: Any, value: Any) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode("utf-8", "surrogatepass")


@schemathesis.serializer("application/x-ndjson")
def _jsonl_bytes(ctx: Any, value: Any) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode("utf-8", "surrogatepass")


APP = make_app(max_body_bytes=64 * 1024)
SCHEMA = schemathesis.openapi.from_asgi("/openapi.json", APP)


@SCHEMA.parametrize()
@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_no_input_gets_a_500(case: Any) -> None:
    case.call_and_validate(checks=[not_a_server_error])
