"""A failed call leaves the `Extractor` usable (issue 17, item 5).

`ThreadedEngine` decodes in a worker thread the way the local and vLLM engines do (jobs settled
through `engines/worker.py`), so a failed `extract_many` leaves jobs in the worker whose callers
are gone: it must neither die settling them nor hang the next call."""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Sequence

import pytest

from extractor import EmptyDocument, Engine, Extractor, GenerationRequest, GenerationResult
from extractor.engines.worker import Job, abandoned, settle
from schemas import Person

GOOD = '{"name":"Alice Smith","age":34,"city":"Lisbon","email":null}'
DOC = "Alice Smith is 34 years old and lives in Lisbon."
HANG_GUARD_S = 60  # only stops a hung test; never reached when the code is right


class ThreadedEngine(Engine):
    name = "threaded"
    model = "scripted"

    def __init__(self) -> None:
        self.gate = threading.Event()  # the worker settles nothing until the test opens it
        self.gate.set()
        self.dropped = 0
        self._jobs: queue.Queue[Job] = queue.Queue()
        self.worker = threading.Thread(target=self._run, daemon=True)
        self.worker.start()

    async def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        loop = asyncio.get_running_loop()
        jobs = [Job(r, loop.create_future(), loop) for r in requests]
        for job in jobs:
            self._jobs.put(job)
        return list(await asyncio.gather(*(j.future for j in jobs)))

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            self.gate.wait()
            if abandoned(job):
                self.dropped += 1
                continue
            settle(job, GenerationResult(GOOD, "stop", 10, 10))


def call_with_guard(fn: object) -> object:
    out: list[object] = []
    thread = threading.Thread(target=lambda: out.append(fn()), daemon=True)  # type: ignore[operator]
    thread.start()
    thread.join(HANG_GUARD_S)
    assert not thread.is_alive(), "the call hung"
    return out[0]


def test_failed_extract_many_leaves_the_extractor_usable() -> None:
    engine = ThreadedEngine()
    engine.gate.clear()
    ex = Extractor(engine, grounded_decoding=False)  # the jobs reach the engine at once (no constraint to build)
    with pytest.raises(EmptyDocument):
        ex.extract_many(Person, [DOC, "", DOC])
    engine.gate.set()  # the worker now meets the two jobs whose caller gave up
    assert call_with_guard(lambda: ex.extract(Person, DOC)) == Person(name="Alice Smith", age=34, city="Lisbon")
    assert engine.worker.is_alive()
    assert engine.dropped == 2  # the abandoned jobs were dropped, not decoded
    ex.close()


def test_return_exceptions_gives_each_documents_error_in_its_place() -> None:
    ex = Extractor(ThreadedEngine())
    out = ex.extract_many(Person, [DOC, "", DOC], return_exceptions=True)
    assert isinstance(out[1], EmptyDocument)
    assert out[0] == out[2] == Person(name="Alice Smith", age=34, city="Lisbon")
    assert ex.extract(Person, DOC).name == "Alice Smith"
    ex.close()


def test_sync_calls_share_one_loop_so_loop_bound_engines_keep_working() -> None:
    loops: list[asyncio.AbstractEventLoop] = []

    class LoopBound(ThreadedEngine):
        async def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
            loops.append(asyncio.get_running_loop())
            return await super().generate(requests)

    ex = Extractor(LoopBound())
    ex.extract(Person, DOC)
    ex.extract_many(Person, [DOC, DOC])
    assert len(set(map(id, loops))) == 1
    ex.close()


def test_settle_on_a_closed_loop_does_not_raise_in_the_worker() -> None:
    loop = asyncio.new_event_loop()
    job = Job(GenerationRequest(messages=(), schema={}, max_tokens=1), loop.create_future(), loop)
    loop.close()
    assert abandoned(job)
    settle(job, GenerationResult("{}", "stop", 1, 1))  # no RuntimeError


def test_sync_method_inside_an_event_loop_is_refused() -> None:
    async def inside() -> None:
        with pytest.raises(RuntimeError, match="inside an event loop"):
            Extractor(ThreadedEngine()).extract(Person, DOC)

    asyncio.run(inside())
