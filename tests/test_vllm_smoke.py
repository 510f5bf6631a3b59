"""Plumbing check for `make test-vllm`: a real vLLM OpenAI server (CPU build) answers
with schema-enforced, compact JSON. Skipped unless $EXTRACTOR_VLLM_URL is set."""

from __future__ import annotations

import json
import os

import pytest

pytestmark = pytest.mark.vllm

URL = os.environ.get("EXTRACTOR_VLLM_URL", "")


@pytest.fixture(scope="module")
def base_url() -> str:
    if not URL:
        pytest.skip("EXTRACTOR_VLLM_URL is not set (run: make test-vllm)")
    return URL.rstrip("/")


def test_server_enforces_schema_compactly(base_url: str) -> None:
    import openai

    from extractor.engines.vllm_http import PROBE_SCHEMA

    client = openai.OpenAI(base_url=base_url, api_key="EMPTY", max_retries=0, timeout=120)
    served = [m.id for m in client.models.list().data]
    assert served
    response = client.chat.completions.create(
        model=served[0], messages=[{"role": "user", "content": "Say hello in one word."}],
        temperature=0, max_tokens=40,
        response_format={"type": "json_schema",
                         "json_schema": {"name": "probe", "schema": PROBE_SCHEMA, "strict": True}})
    text = response.choices[0].message.content or ""
    assert json.loads(text) == {"probe": "zq-7-enforced", "n": 7321}
    assert text == '{"probe":"zq-7-enforced","n":7321}'  # the server runs with disable_any_whitespace


def test_extractor_over_vllm_http(base_url: str) -> None:
    from extractor import Extractor
    from schemas import Person

    extractor = Extractor("vllm-http", base_url=base_url)
    person = extractor.extract(Person, "Alice Smith, 34, lives in Lisbon.")
    assert isinstance(person, Person)
    assert (person.name, person.age, person.city) == ("Alice Smith", 34, "Lisbon")
    # the server returns token logprobs when asked: per-field confidence
    confidence = extractor.run(Person, "Alice Smith, 34, lives in Lisbon.", confidence=True).meta.confidence
    assert confidence is not None and set(confidence) == {"name", "age", "city", "email"}
    assert all(0 < p <= 1 for p in confidence.values())
