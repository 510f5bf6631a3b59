"""Durable batch jobs of the service (`/batches`), on a scripted engine, against SQLite and PostgreSQL.

The PostgreSQL cases create a database of their own (`extractor_test_<random>`) and drop it after;
they are skipped only when no server answers at `EXTRACTOR_TEST_PG`
(default postgresql://postgres@127.0.0.1:5432/postgres), and fail instead with
`EXTRACTOR_REQUIRE_PG` set (CI, whose scripts/postgres.sh starts one).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import httpx2
import pytest
from fastapi import FastAPI
from sqlalchemy import text

from extractor import EngineUnavailable, GenerationRequest, GenerationResult, ScriptedEngine, error_class, http_status
from extractor.errors import IdempotencyConflict, UnknownBatch
from service.batch_migrations import MIGRATIONS
from service.batch_store import BatchStore, NewItem, database_url
from tests.service_support import DOC, GatedEngine, answer, client, make_app

ROOT = Path(__file__).resolve().parent.parent
PROBLEM = "application/problem+json"
PG_ADMIN = os.environ.get("EXTRACTOR_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
DOC_ID = re.compile(r"\[doc (\S+)\]")


# -- databases ----------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def postgres() -> str | None:
    import psycopg

    try:
        with psycopg.connect(PG_ADMIN.replace("+psycopg", ""), connect_timeout=3):
            return PG_ADMIN
    except psycopg.OperationalError:
        return None


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty batch database: a SQLite file path, or the URL of a new PostgreSQL database."""
    if request.param == "sqlite":
        yield str(tmp_path / "batches.sqlite3")
        return
    admin = request.getfixturevalue("postgres")
    if admin is None:
        if os.environ.get("EXTRACTOR_REQUIRE_PG"):  # CI (.ci/run starts one): never a silent skip
            pytest.fail(f"no PostgreSQL at {PG_ADMIN} and EXTRACTOR_REQUIRE_PG is set")
        pytest.skip(f"no PostgreSQL at {PG_ADMIN}")
    import psycopg

    name = f"extractor_test_{secrets.token_hex(6)}"
    plain = admin.replace("+psycopg", "")
    with psycopg.connect(plain, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    try:
        yield str(database_url(plain).set(database=name).render_as_string(hide_password=False))
    finally:
        with psycopg.connect(plain, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


# -- helpers ------------------------------------------------------------------------------------

def doc(ident: object) -> str:
    return f"[doc {ident}] {DOC}"


class CountingEngine(ScriptedEngine):
    """Answers every person request (after `delay` s) and counts the generations per document id."""

    def __init__(self, delay: float = 0.0, fail_first: int = 0) -> None:
        super().__init__(answer)
        self.delay = delay
        self.fail_first = fail_first
        self.calls: Counter[str] = Counter()

    async def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        await asyncio.sleep(self.delay)
        if self.fail_first > 0:
            self.fail_first -= 1
            raise EngineUnavailable("the engine is down (scripted)")
        for r in requests:
            found = DOC_ID.search(r.messages[-1]["content"])
            self.calls[found.group(1) if found else "?"] += 1
        return await super().generate(requests)


def batch_app(db: str, engine: Any = None, **settings: Any) -> FastAPI:
    settings = {"batch_poll_s": 0.02, "batch_claim": 4, "batch_lease_s": 30.0, **settings}
    return make_app(engine if engine is not None else CountingEngine(), batch_db=db, **settings)


@asynccontextmanager
async def serving(*apps: FastAPI) -> AsyncIterator[httpx2.AsyncClient]:
    """Run each app's lifespan (its batch worker) and give a client of the first."""
    async with AsyncExitStack() as stack:
        for app in apps:
            await stack.enter_async_context(app.router.lifespan_context(app))
        async with client(apps[0]) as c:
            yield c


async def until(c: httpx2.AsyncClient, job_id: str, ready: Callable[[dict[str, Any]], bool],
                timeout: float = 15.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        r = await c.get(f"/batches/{job_id}")
        assert r.status_code == 200, r.text
        job: dict[str, Any] = r.json()
        if ready(job):
            return job
        assert time.monotonic() < deadline, f"timed out; last: {job}"
        await asyncio.sleep(0.02)


def done(job: dict[str, Any]) -> bool:
    return bool(job["status"] == "done")


async def result_lines(c: httpx2.AsyncClient, job_id: str) -> list[dict[str, Any]]:
    r = await c.get(f"/batches/{job_id}/results")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/x-ndjson")
    return [json.loads(line) for line in r.text.splitlines()]


def problem(r: httpx2.Response, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == PROBLEM
    body: dict[str, Any] = r.json()
    assert (body["status"], body["code"], body["type"]) == (status, code, f"urn:extractor:problem:{code}")
    return body


def person_items(n: int) -> list[dict[str, Any]]:
    return [{"id": f"p{i}", "text": doc(f"p{i}")} for i in range(n)]


def jobs_in(db: str) -> int:
    store = BatchStore(database_url(db))
    try:
        if not store.exists():
            return 0
        store.open()
        with store.engine.begin() as conn:
            return int(conn.execute(text("SELECT count(*) FROM batch_jobs")).scalar_one())
    finally:
        store.dispose()


# -- create, status, results --------------------------------------------------------------------

def test_a_json_batch_runs_to_done_and_streams_its_lines(db: str) -> None:
    engine = CountingEngine()
    items = [*person_items(3), {"id": "blank", "text": "   "}, {"id": "huge", "text": doc("huge") + "x" * 300}]

    async def scenario() -> None:
        async with serving(batch_app(db, engine, max_document_chars=200)) as c:
            r = await c.post("/batches", json={"schema": "person", "items": items, "options": {"max_retries": 0}})
            assert r.status_code == 201, r.text
            created = r.json()
            assert r.headers["location"] == f"/batches/{created['id']}"
            assert created["schema"] == "person" and created["options"] == {"max_retries": 0}
            assert created["counts"]["total"] == 5 and created["created_at"].endswith("+00:00")
            job = await until(c, created["id"], done)
            assert job["counts"] == {"total": 5, "pending": 0, "running": 0, "ok": 3, "failed": 2, "cancelled": 0}
            assert job["finished_at"] is not None
            lines = await result_lines(c, created["id"])
        assert [line["id"] for line in lines] == ["p0", "p1", "p2", "blank", "huge"]  # input order
        for line in lines[:3]:
            assert set(line) == {"id", "data", "meta"}
            assert line["data"] == {"name": "Alice Smith", "age": 34, "city": "Lisbon", "email": None}
            assert (line["meta"]["schema"], line["meta"]["attempts"], line["meta"]["engine"]) == ("person", 1, "fake")
        assert lines[3] == {"id": "blank", "error": {"type": "empty-document", "message": "the document is empty"}}
        assert lines[4]["error"]["type"] == "document-too-large" and set(lines[4]) == {"id", "error"}
        assert engine.calls == {"p0": 1, "p1": 1, "p2": 1}  # the two bad documents never reached the engine

    asyncio.run(scenario())


def test_jsonl_and_multipart_uploads(db: str) -> None:
    engine = CountingEngine()
    jsonl = "\n".join(json.dumps({"id": f"j{i}", "text": doc(f"j{i}")}) for i in range(3)) + "\n\n"
    no_ids = json.dumps({"text": doc("x")}) + "\n" + json.dumps({"text": doc("y")}) + "\n"

    async def scenario() -> None:
        async with serving(batch_app(db, engine)) as c:
            ids = []
            for content_type in ("application/x-ndjson", "application/jsonl"):
                r = await c.post("/batches?schema=person", content=jsonl.encode(),
                                 headers={"content-type": content_type})
                assert r.status_code == 201, r.text
                assert r.json()["counts"]["total"] == 3
                ids.append(r.json()["id"])
            r = await c.post("/batches", files={"file": ("docs.jsonl", no_ids.encode(), "application/octet-stream")},
                             data={"schema": "person", "options": json.dumps({"max_retries": 1})})
            assert r.status_code == 201, r.text
            assert r.json()["options"] == {"max_retries": 1}
            ids.append(r.json()["id"])
            for job_id in ids:
                await until(c, job_id, done)
            assert [line["id"] for line in await result_lines(c, ids[0])] == ["j0", "j1", "j2"]
            assert [line["id"] for line in await result_lines(c, ids[2])] == ["1", "2"]  # line numbers
        assert engine.calls == {"j0": 2, "j1": 2, "j2": 2, "x": 1, "y": 1}  # two jobs of the same three

    asyncio.run(scenario())


def test_the_same_idempotency_key_gives_the_same_job(db: str) -> None:
    app = batch_app(db)  # no lifespan: nothing runs, the jobs only get stored
    body = {"schema": "person", "items": person_items(2)}

    async def scenario() -> None:
        async with client(app) as c:
            first = await c.post("/batches", json=body, headers={"Idempotency-Key": "order-7"})
            assert first.status_code == 201, first.text
            again = await c.post("/batches", json=body, headers={"Idempotency-Key": "order-7"})
            assert again.status_code == 200 and again.json()["id"] == first.json()["id"]
            assert again.headers["location"] == first.headers["location"]
            assert again.json()["idempotency_key"] == "order-7"
            # the same items sent as JSONL are the same body
            jsonl = "".join(json.dumps(i) + "\n" for i in body["items"])
            same = await c.post("/batches?schema=person", content=jsonl.encode(),
                                headers={"content-type": "application/x-ndjson", "Idempotency-Key": "order-7"})
            assert same.status_code == 200 and same.json()["id"] == first.json()["id"]
            other = await c.post("/batches", json={**body, "items": person_items(3)}, headers={"Idempotency-Key": "order-7"})
            assert problem(other, 409, "idempotency-conflict")["batch"] == first.json()["id"]
            other_opts = await c.post("/batches", json={**body, "options": {"max_retries": 0}},
                                      headers={"Idempotency-Key": "order-7"})
            problem(other_opts, 409, "idempotency-conflict")
            fresh = await c.post("/batches", json=body, headers={"Idempotency-Key": "order-8"})
            assert fresh.status_code == 201 and fresh.json()["id"] != first.json()["id"]
            keyless = [await c.post("/batches", json=body) for _ in range(2)]
            assert [r.status_code for r in keyless] == [201, 201] and keyless[0].json()["id"] != keyless[1].json()["id"]

    asyncio.run(scenario())
    assert jobs_in(db) == 4


def test_counts_while_running(db: str) -> None:
    engine = GatedEngine()

    async def scenario() -> None:
        async with serving(batch_app(db, engine, batch_claim=2)) as c:
            r = await c.post("/batches", json={"schema": "person", "items": person_items(5)})
            job_id = r.json()["id"]
            assert r.json()["status"] == "pending"
            job = await until(c, job_id, lambda j: j["counts"]["running"] == 2 and engine.entered == 2)
            assert job["status"] == "running" and job["finished_at"] is None
            assert job["counts"] == {"total": 5, "pending": 3, "running": 2, "ok": 0, "failed": 0, "cancelled": 0}
            assert await result_lines(c, job_id) == []
            engine.gate.set()
            job = await until(c, job_id, done)
            assert job["counts"]["ok"] == 5

    asyncio.run(scenario())


def test_cancel_runs_nothing_more(db: str) -> None:
    engine = GatedEngine()

    async def scenario() -> None:
        async with serving(batch_app(db, engine, batch_claim=2)) as c:
            job_id = (await c.post("/batches", json={"schema": "person", "items": person_items(6)})).json()["id"]
            await until(c, job_id, lambda j: j["counts"]["running"] == 2 and engine.entered == 2)
            r = await c.delete(f"/batches/{job_id}")
            assert r.status_code == 200, r.text
            assert r.json()["status"] == "cancelled" and r.json()["cancelled_at"] is not None
            assert r.json()["counts"] == {"total": 6, "pending": 0, "running": 0, "ok": 0, "failed": 0, "cancelled": 6}
            engine.gate.set()  # the two in the engine finish, and their results are refused
            await asyncio.sleep(0.3)
            job = (await c.get(f"/batches/{job_id}")).json()
            assert job["status"] == "cancelled" and job["counts"]["cancelled"] == 6
            assert await result_lines(c, job_id) == []
            assert engine.entered == 2 and len(engine.requests) == 2  # the pending four never ran
            assert (await c.delete(f"/batches/{job_id}")).json()["status"] == "cancelled"  # again: no change
            # cancelling a finished job changes nothing
            done_id = (await c.post("/batches", json={"schema": "person", "items": person_items(1)})).json()["id"]
            await until(c, done_id, done)
            r = await c.delete(f"/batches/{done_id}")
            assert r.json()["status"] == "done" and r.json()["counts"]["ok"] == 1

    asyncio.run(scenario())


@pytest.mark.parametrize(("method", "path"), [
    ("GET", "/batches/nope"), ("GET", "/batches/nope/results"), ("DELETE", "/batches/nope"),
])
def test_an_unknown_batch_is_404(db: str, method: str, path: str) -> None:
    async def scenario() -> httpx2.Response:
        async with client(batch_app(db)) as c:
            await c.post("/batches", json={"schema": "person", "items": person_items(1)})  # the database exists
            return await c.request(method, path)

    body = problem(asyncio.run(scenario()), 404, "unknown-batch")
    assert body["batch"] == "nope"


BAD_BODIES: list[tuple[str, dict[str, Any], int, str]] = [
    ("malformed json", {"content": b'{"schema": "person", "items": [', "headers": {"content-type": "application/json"}},
     400, "malformed-request"),
    ("no items", {"json": {"schema": "person", "items": []}}, 422, "invalid-request"),
    ("no schema", {"json": {"items": person_items(1)}}, 422, "invalid-request"),
    ("unknown schema", {"json": {"schema": "nobody", "items": person_items(1)}}, 404, "unknown-schema"),
    ("text not a string", {"json": {"schema": "person", "items": [{"id": "a", "text": 7}]}}, 422, "invalid-request"),
    ("duplicate ids", {"json": {"schema": "person", "items": [{"id": "a", "text": DOC}, {"id": "a", "text": DOC}]}},
     422, "invalid-request"),
    ("id of a bad type", {"json": {"schema": "person", "items": [{"id": [1], "text": DOC}]}}, 422, "invalid-request"),
    ("unknown field", {"json": {"schema": "person", "items": person_items(1), "extra": 1}}, 422, "invalid-request"),
    ("bad options", {"json": {"schema": "person", "items": person_items(1), "options": {"max_retries": 99}}},
     422, "invalid-request"),
    ("jsonl without schema", {"content": b'{"id": "a", "text": "x"}\n', "headers": {"content-type": "application/x-ndjson"}},
     422, "invalid-request"),
    ("jsonl bad line", {"content": b'{"id": "a", "text": "x"}\n{"id": \n', "params": {"schema": "person"},
                        "headers": {"content-type": "application/x-ndjson"}}, 400, "malformed-request"),
    ("jsonl line not an object", {"content": b'["a", "x"]\n', "params": {"schema": "person"},
                                  "headers": {"content-type": "application/jsonl"}}, 422, "invalid-request"),
    ("jsonl not utf-8", {"content": b'{"id": "a", "text": "\xff"}\n', "params": {"schema": "person"},
                         "headers": {"content-type": "application/x-ndjson"}}, 400, "malformed-request"),
    ("jsonl with no lines", {"content": b"\n\n", "params": {"schema": "person"},
                             "headers": {"content-type": "application/x-ndjson"}}, 422, "invalid-request"),
    ("plain text", {"content": DOC.encode(), "headers": {"content-type": "text/plain"}}, 415, "unsupported-media-type"),
    ("multipart without file", {"data": {"schema": "person"}, "files": {"other": ("a.txt", b"x", "text/plain")}},
     422, "invalid-request"),
    ("too many items", {"json": {"schema": "person", "items": person_items(4)}}, 413, "document-too-large"),
    ("body over the limit", {"json": {"schema": "person", "items": [{"id": "a", "text": "x" * 5000}]}},
     413, "document-too-large"),
    ("bad idempotency key", {"json": {"schema": "person", "items": person_items(1)},
                             "headers": {"Idempotency-Key": "has spaces in it"}}, 422, "invalid-request"),
]


@pytest.mark.parametrize(("case", "request_kwargs", "status", "code"), BAD_BODIES, ids=[b[0] for b in BAD_BODIES])
def test_bad_bodies_are_problems_and_store_nothing(tmp_path: Path, case: str, request_kwargs: dict[str, Any],
                                                   status: int, code: str) -> None:
    db = str(tmp_path / "batches.sqlite3")
    engine = CountingEngine()

    async def scenario() -> httpx2.Response:
        async with serving(batch_app(db, engine, batch_max_items=3, max_body_bytes=4096)) as c:
            r = await c.post("/batches", **request_kwargs)
            await asyncio.sleep(0.05)
            return r

    problem(asyncio.run(scenario()), status, code)
    assert jobs_in(db) == 0 and not engine.calls


# -- workers, leases, crashes -------------------------------------------------------------------

def test_an_engine_failure_leaves_items_pending_until_it_recovers(db: str) -> None:
    engine = CountingEngine(fail_first=3)

    async def scenario() -> None:
        async with serving(batch_app(db, engine, batch_claim=4)) as c:
            job_id = (await c.post("/batches", json={"schema": "person", "items": person_items(4)})).json()["id"]
            job = await until(c, job_id, done)
            assert job["counts"]["ok"] == 4 and job["counts"]["failed"] == 0
            assert [line["id"] for line in await result_lines(c, job_id)] == ["p0", "p1", "p2", "p3"]
        assert engine.fail_first == 0  # it failed three times, and no item was failed for it
        # an item whose generation was done when a sibling's failed is given back with the rest and run again:
        # engine work may repeat, a result line never does
        # ("?": the readiness probes by which the worker tells an outage from an item's own failure)
        assert set(engine.calls) - {"?"} == {"p0", "p1", "p2", "p3"}

    asyncio.run(scenario())


def test_two_workers_on_one_database_never_run_the_same_item(db: str) -> None:
    engines = [CountingEngine(delay=0.01), CountingEngine(delay=0.01)]
    apps = [batch_app(db, e, batch_claim=3, batch_poll_s=0.01) for e in engines]
    n = 40

    async def scenario() -> None:
        async with serving(*apps) as c:
            job_id = (await c.post("/batches", json={"schema": "person", "items": person_items(n)})).json()["id"]
            await until(c, job_id, done, timeout=30)
            lines = await result_lines(c, job_id)
        assert sorted(line["id"] for line in lines) == sorted(f"p{i}" for i in range(n))
        assert all("data" in line for line in lines)

    asyncio.run(scenario())
    total = engines[0].calls + engines[1].calls
    assert total == Counter({f"p{i}": 1 for i in range(n)}), total
    assert engines[0].calls and engines[1].calls, "both workers should have taken part"


def test_concurrent_claims_are_disjoint(db: str) -> None:
    """Four stores (four connection pools, as four processes would have) claim from one job in threads."""
    setup = BatchStore(database_url(db))
    job, _ = setup.create_job(schema="person", options={}, digest="d",
                              items=[NewItem(f"i{k}", doc(k)) for k in range(300)])
    stores = [BatchStore(database_url(db)) for _ in range(4)]
    taken: list[list[tuple[str, int]]] = [[] for _ in stores]
    start = threading.Barrier(len(stores))

    def claim_all(k: int) -> None:
        start.wait()
        while items := stores[k].claim(f"w{k}", 7, 60.0):
            taken[k].extend((c.job_id, c.seq) for c in items)
            time.sleep(0.02)  # as a worker spends time on its items: on a busy box one thread took all 300

    threads = [threading.Thread(target=claim_all, args=(k,)) for k in range(len(stores))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    every = [key for keys in taken for key in keys]
    assert len(every) == len(set(every)) == 300
    assert sum(1 for keys in taken if keys) >= 2
    assert setup.get_job(job.id).counts["running"] == 300
    for s in [setup, *stores]:
        s.dispose()


def test_a_graceful_stop_gives_its_leases_back(db: str) -> None:
    gated = GatedEngine()
    after = CountingEngine()

    async def scenario() -> None:
        first = batch_app(db, gated, batch_claim=2, batch_lease_s=600.0)
        async with serving(first) as c:
            job_id = (await c.post("/batches", json={"schema": "person", "items": person_items(5)})).json()["id"]
            await until(c, job_id, lambda j: j["counts"]["running"] == 2)
        # the first service stopped while two items were in its engine: no 600 s wait for their leases
        async with serving(batch_app(db, after, batch_lease_s=600.0)) as c:
            job = await until(c, job_id, done, timeout=10)
            assert job["counts"]["ok"] == 5

    asyncio.run(scenario())
    assert after.calls == Counter({f"p{i}": 1 for i in range(5)})


def test_a_crashed_worker_s_items_are_resumed_by_a_new_instance(db: str) -> None:
    """A service process is killed (SIGKILL) holding leased items; a new one finishes the job."""
    n, answered = 12, 5
    resumed = CountingEngine()

    async def scenario() -> None:
        async with client(batch_app(db)) as c:  # no worker of its own: only stores the job
            job_id = (await c.post("/batches", json={"schema": "person", "items": person_items(n)})).json()["id"]
            child = subprocess.Popen([sys.executable, "-m", "tests.batch_crash_child", db, str(answered)], cwd=ROOT,
                                     stdout=subprocess.PIPE, text=True)
            try:
                # claims of 4: the first four answered, then one, then three hang in the engine
                await until(c, job_id, lambda j: j["counts"]["ok"] == answered and j["counts"]["running"] == 3,
                            timeout=60)
            finally:
                child.kill()
                out, _ = child.communicate(timeout=30)
            assert child.returncode == -9
            hung = [line.split()[1] for line in out.splitlines() if line.startswith("hang")]
            assert len(hung) == 3
            before = await result_lines(c, job_id)
            job = (await c.get(f"/batches/{job_id}")).json()
            assert job["counts"]["running"] == 3 and job["status"] == "running"  # held by a dead worker
        finished_by_child = {line["id"] for line in before}
        assert len(finished_by_child) == answered and not finished_by_child & set(hung)

        async with serving(batch_app(db, resumed, batch_lease_s=30.0)) as c:
            job = await until(c, job_id, done, timeout=30)
            assert job["counts"] == {"total": n, "pending": 0, "running": 0, "ok": n, "failed": 0, "cancelled": 0}
            lines = await result_lines(c, job_id)
        ids = [line["id"] for line in lines]
        assert ids == [f"p{i}" for i in range(n)]  # every item once, nothing lost or duplicated
        assert all(line in lines for line in before)  # what the dead worker finished is kept as it was
        assert resumed.calls == Counter({i: 1 for i in set(ids) - finished_by_child})  # the rest, once each
        assert set(hung) <= set(resumed.calls)

    asyncio.run(scenario())


# -- the database and the library ---------------------------------------------------------------

def test_migrations_are_versioned_and_idempotent(db: str) -> None:
    stores = [BatchStore(database_url(db)) for _ in range(3)]
    if db.endswith(".sqlite3"):
        assert not stores[0].open(create=False) and not Path(db).exists()  # no file is made before a job
    errors: list[BaseException] = []

    def open_store(s: BatchStore) -> None:
        try:
            s.open()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=open_store, args=(s,)) for s in stores]  # concurrent start-ups
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    again = BatchStore(database_url(db))
    assert again.open(create=False)
    with again.engine.begin() as conn:
        versions = [row[0] for row in conn.execute(text("SELECT version FROM schema_version ORDER BY version"))]
    assert versions == list(range(1, len(MIGRATIONS) + 1))
    for s in [*stores, again]:
        s.dispose()


def test_batch_errors_have_their_statuses() -> None:
    assert http_status(UnknownBatch("x")) == 404
    assert http_status(IdempotencyConflict("x")) == 409
    assert error_class("unknown-batch") is UnknownBatch and error_class("idempotency-conflict") is IdempotencyConflict


def test_database_setting() -> None:
    assert database_url("postgresql://u@h/db").drivername == "postgresql+psycopg"
    url = database_url("rel/batches.sqlite3")
    assert url.drivername == "sqlite" and url.database == str(Path("rel/batches.sqlite3").resolve())


def test_importing_the_library_does_not_import_sqlalchemy() -> None:
    code = "import sys, extractor; import extractor.batch.jsonl, extractor.pipeline.many; assert 'sqlalchemy' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
