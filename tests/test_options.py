"""One options value: merged as defaults then per-call overrides, and the same fields on every
surface (library, CLI flags, the service's request body, the SDK client)."""

from __future__ import annotations

import argparse
import asyncio
import json

import httpx2
import pytest

from extractor import Extractor, ScriptedEngine
from extractor.cli.flags import add_option_flags, options_from_args
from extractor.errors import InvalidRequest
from extractor.pipeline.options import DEFAULT_OPTIONS, ExtractOptions
from schemas import Person
from service.models import RequestOptions

GOOD = json.dumps({"name": "Alice Smith", "age": 34, "city": "Lisbon", "email": None})
DOC = "Alice Smith, 34, lives in Lisbon."


def test_overrides_win_only_where_they_set_a_field() -> None:
    defaults = ExtractOptions(max_retries=1, spans=True)
    merged = defaults.merged(ExtractOptions(confidence=True))
    assert (merged.max_retries, merged.spans, merged.confidence) == (1, True, True)
    assert defaults.merged({"spans": False, "grounded_decoding": None}).spans is False
    assert defaults.merged(None) is defaults and defaults.merged({}) is defaults


def test_bad_options_are_an_invalid_request_naming_the_field() -> None:
    with pytest.raises(InvalidRequest, match=r"\$\.max_retries"):
        DEFAULT_OPTIONS.merged({"max_retries": -1})
    with pytest.raises(InvalidRequest, match=r"\$\.nonsense"):
        ExtractOptions.parse({"nonsense": True})


def test_cli_flags_and_the_request_body_have_the_exposed_fields() -> None:
    exposed = set(ExtractOptions.exposed_fields())
    assert exposed >= {"max_retries", "spans", "confidence", "require_grounded", "grounded_decoding"}
    assert set(RequestOptions.model_fields) == exposed | {"timeout_s"}
    parser = argparse.ArgumentParser()
    add_option_flags(parser)
    flags = {a.dest for a in parser._actions if a.dest != "help"}
    assert flags == exposed
    args = parser.parse_args(["--spans", "--max-retries", "0", "--no-grounded-decoding"])
    assert options_from_args(args) == {"spans": True, "max_retries": 0, "grounded_decoding": False}
    assert options_from_args(parser.parse_args([])) == {}


def test_request_options_keep_the_fields_bounds() -> None:
    assert RequestOptions.model_validate({"max_retries": 3}).model_dump(exclude_none=True) == {"max_retries": 3}
    with pytest.raises(ValueError):
        RequestOptions.model_validate({"max_retries": 99})


def test_extractor_defaults_then_call_overrides_reach_the_loop() -> None:
    engine = ScriptedEngine(["{}", "{}", GOOD, "{}", "{}", GOOD])
    extractor = Extractor(engine, max_retries=0)
    with pytest.raises(Exception, match="1 attempt"):
        extractor.run(Person, DOC)
    result = extractor.run(Person, DOC, max_retries=2, spans=True)   # a call's overrides ...
    assert result.meta.attempts == 2 and result.meta.spans is not None
    result = extractor.run(Person, DOC, ExtractOptions(max_retries=3))  # ... or an options value
    assert result.meta.attempts == 3 and result.meta.spans is None       # the extractor's own spans=False again
    assert extractor.options.max_retries == 0


def test_extractor_tells_its_options_from_engine_options() -> None:
    with pytest.raises(Exception, match="nonsense"):
        Extractor("local", nonsense=1)  # an engine option the engine does not take, not an extraction option


def test_the_sdk_client_sends_only_the_options_set() -> None:
    from extractor import Client

    seen: list[dict[str, object]] = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        seen.append(json.loads(request.content))
        body = {"schema": "person", "version": "3", "data": json.loads(GOOD),
                "meta": {"attempts": 1, "errors": [], "latency_ms": 1.0, "tokens": {"prompt": 1, "completion": 1},
                         "engine": "fake", "model": "m", "engine_ms": 1.0, "queue_ms": 0.0}}
        return httpx2.Response(200, json=body)

    with Client("http://svc", transport=httpx2.MockTransport(handler)) as client:
        client.run(Person, DOC, spans=True)
        client.run(Person, DOC, ExtractOptions(max_retries=1))
        with pytest.raises(TypeError, match="nonsense"):
            client.run(Person, DOC, nonsense=True)
    assert [s["options"] for s in seen] == [{"spans": True}, {"max_retries": 1}]


def test_async_with_closes_an_engine_the_extractor_created() -> None:
    closed: list[bool] = []

    class Closing(ScriptedEngine):
        async def aclose(self) -> None:
            closed.append(True)

    async def main() -> None:
        async with Extractor(Closing([GOOD])) as ex:   # passed in: the caller's, not closed
            await ex.arun(Person, DOC)
        assert closed == []
        engine = Closing([])
        async with engine:
            pass
        assert closed == [True]

    asyncio.run(main())
