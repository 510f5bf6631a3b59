"""End to end with the real local model: HTTP in, a validated record out (the session's one model)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx2
import pytest

from extractor import AsyncClient
from schemas import Person
from service import Settings, create_app
from tests.conftest import FIXTURES


@pytest.mark.model
def test_service_extracts_with_the_local_engine(local_engine: Any) -> None:
    app = create_app(Settings(), engine=local_engine)
    text = (FIXTURES / "person" / "alice.txt").read_text()

    async def scenario() -> None:
        async with httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app), base_url="http://svc") as http:
            ready = await http.get("/readyz")
            assert ready.status_code == 200, ready.text
            assert ready.json()["model"] == local_engine.model
            upload = await http.post("/extract/person", files={"file": ("alice.txt", text.encode(), "text/plain")})
            assert upload.status_code == 200, upload.text
            body = upload.json()
            assert body["data"]["age"] == 34 and body["meta"]["engine"] == "local"
            assert 0 < body["meta"]["engine_ms"] <= body["meta"]["latency_ms"]
        async with AsyncClient("http://svc", transport=httpx2.ASGITransport(app=app)) as client:
            started = time.perf_counter()
            result = await client.run(Person, text)
            wall_ms = (time.perf_counter() - started) * 1000
        assert isinstance(result.data, Person)
        assert (result.data.name, result.data.age, result.data.city) == ("Alice Smith", 34, "Lisbon")
        assert result.meta.model == local_engine.model and result.meta.completion_tokens > 0
        print(f"\nservice e2e: wall {wall_ms:.0f} ms, extraction {result.meta.latency_ms:.0f} ms")

    asyncio.run(scenario())
