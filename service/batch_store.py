"""Batch jobs and their items in a database: a SQLite file or PostgreSQL (SQLAlchemy Core).

An item is pending, running (leased by one worker until `lease_expires`), ok,
failed or cancelled. Workers `claim` pending items, and running items whose
lease has expired (their worker died), in one atomic UPDATE, so no item is
ever held by two live workers; on PostgreSQL with `FOR UPDATE SKIP LOCKED`,
so concurrent claimers take different rows instead of waiting on each other.
A worker writes an item's result line in the same UPDATE that marks it done,
and only while it still holds the lease: a result is stored once or not at all.

Every method is blocking (run it in a thread from async code); the database
is opened (migrated) on first use. On SQLite every transaction starts with
`BEGIN IMMEDIATE` (one writer at a time, waiting up to 30 s for the lock) in
WAL mode, so readers of the last commit never wait long.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Column,
    Connection,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    and_,
    create_engine,
    event,
    func,
    insert,
    or_,
    select,
    tuple_,
    update,
)
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.exc import IntegrityError

from extractor.errors import IdempotencyConflict, UnknownBatch
from service.batch_migrations import migrate

_META = MetaData()
JOBS = Table(
    "batch_jobs", _META,
    Column("id", String(64), primary_key=True),
    Column("schema_name", String(200), nullable=False),
    Column("options", Text, nullable=False),
    Column("idempotency_key", String(256)),
    Column("body_digest", String(64), nullable=False),
    Column("total", Integer, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("cancelled_at", Float),
)
ITEMS = Table(
    "batch_items", _META,
    Column("job_id", String(64), primary_key=True),
    Column("seq", Integer, primary_key=True),
    Column("item_id", Text, nullable=False),
    Column("text", Text, nullable=False),
    Column("status", String(16), nullable=False),
    Column("lease_owner", String(128)),
    Column("lease_expires", Float),
    Column("attempts", Integer, nullable=False),
    Column("result", Text),
    Column("finished_at", Float),
    Column("engine_errors", Integer, nullable=False, server_default="0"),
)

STATUSES = ("pending", "running", "ok", "failed", "cancelled")
_INSERT_CHUNK = 1000


def database_url(setting: str) -> URL:
    """`EXTRACTOR_BATCH_DB`: a file path (SQLite) or a URL; `postgresql://` uses psycopg 3."""
    if "://" not in setting:
        return URL.create("sqlite", database=str(Path(setting).expanduser().resolve()))
    url = make_url(setting)
    if url.drivername in ("postgresql", "postgres"):
        url = url.set(drivername="postgresql+psycopg")
    return url


def _iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds")


def new_job_id() -> str:
    """Time-ordered (milliseconds, hex) then random: claims take older jobs first."""
    return f"b{int(time.time() * 1000):012x}{secrets.token_hex(8)}"


@dataclass(frozen=True)
class NewItem:
    item_id: str
    text: str
    #: the result line of an item refused at submission (too large, not valid Unicode): stored as failed
    error_line: str | None = None


@dataclass(frozen=True)
class Job:
    id: str
    schema: str
    options: dict[str, Any]
    total: int
    created_at: float
    cancelled_at: float | None
    counts: dict[str, int]
    last_finished_at: float | None
    idempotency_key: str | None = None
    body_digest: str = field(default="", repr=False)

    @property
    def status(self) -> str:
        if self.cancelled_at is not None:
            return "cancelled"
        if self.counts["pending"] + self.counts["running"] == 0:
            return "done"
        if self.counts["running"] + self.counts["ok"] + self.counts["failed"] == 0:
            return "pending"
        return "running"

    def to_dict(self) -> dict[str, Any]:
        finished = self.status in ("done", "cancelled")
        counts = {"total": self.total, **self.counts}
        return {"id": self.id, "schema": self.schema, "status": self.status, "counts": counts,
                "options": self.options, "created_at": _iso(self.created_at),
                "finished_at": _iso(self.last_finished_at or self.cancelled_at) if finished else None,
                "cancelled_at": _iso(self.cancelled_at), "idempotency_key": self.idempotency_key,
                "results": f"/batches/{self.id}/results"}


@dataclass(frozen=True)
class Claimed:
    """An item leased to a worker, with what it needs to run it."""

    job_id: str
    seq: int
    item_id: str
    text: str
    schema: str
    options: dict[str, Any]


class BatchStore:
    def __init__(self, url: str | URL) -> None:
        self.url = make_url(url)
        self.dialect = self.url.get_backend_name()
        if self.dialect == "sqlite":
            self.engine: Engine = create_engine(self.url, connect_args={"timeout": 30, "check_same_thread": False})
            event.listen(self.engine, "connect", _sqlite_connect)
            event.listen(self.engine, "begin", _sqlite_begin)
        else:
            self.engine = create_engine(self.url, pool_pre_ping=True)
        self._opened = False
        self._open_lock = threading.Lock()

    # -- opening ---------------------------------------------------------------------------------

    def exists(self) -> bool:
        """Whether the database is there to resume from (a SQLite file is made by the first job only)."""
        if self.dialect == "sqlite":
            return self.url.database is not None and Path(self.url.database).exists()
        return True

    def open(self, *, create: bool = True) -> bool:
        """Migrate once; with `create=False` a SQLite file that does not exist yet stays absent."""
        with self._open_lock:
            if self._opened:
                return True
            if not create and not self.exists():
                return False
            if self.dialect == "sqlite" and self.url.database:
                Path(self.url.database).parent.mkdir(parents=True, exist_ok=True)
            with self.engine.begin() as conn:
                migrate(conn)
            self._opened = True
            return True

    def dispose(self) -> None:
        self.engine.dispose()

    # -- jobs ------------------------------------------------------------------------------------

    def create_job(self, *, schema: str, options: dict[str, Any], items: Sequence[NewItem], digest: str,
                   idempotency_key: str | None = None) -> tuple[Job, bool]:
        """The new job and True; or, for a known `idempotency_key` with the same digest, that job and False."""
        self.open()
        try:
            return self._create_job(schema, options, items, digest, idempotency_key)
        except IntegrityError:
            if idempotency_key is None:
                raise
            # another request with this key committed first: answer with its job
            return self._create_job(schema, options, items, digest, idempotency_key)

    def _create_job(self, schema: str, options: dict[str, Any], items: Sequence[NewItem], digest: str,
                    key: str | None) -> tuple[Job, bool]:
        now = time.time()
        with self.engine.begin() as conn:
            if key is not None:
                found = conn.execute(select(JOBS.c.id, JOBS.c.body_digest).where(JOBS.c.idempotency_key == key)).first()
                if found is not None:
                    if found.body_digest != digest:
                        raise IdempotencyConflict(f"the Idempotency-Key {key!r} was used for batch {found.id} with a "
                                                  "different body", batch=found.id)
                    return self._job(conn, found.id), False
            job_id = new_job_id()
            conn.execute(insert(JOBS).values(id=job_id, schema_name=schema, options=json.dumps(options), total=len(items),
                                             idempotency_key=key, body_digest=digest, created_at=now))
            rows = [{"job_id": job_id, "seq": seq, "item_id": item.item_id, "text": item.text,
                     "status": "pending" if item.error_line is None else "failed", "attempts": 0,
                     "result": item.error_line, "finished_at": None if item.error_line is None else now}
                    for seq, item in enumerate(items)]
            for start in range(0, len(rows), _INSERT_CHUNK):
                conn.execute(insert(ITEMS), rows[start:start + _INSERT_CHUNK])
            return self._job(conn, job_id), True

    def get_job(self, job_id: str) -> Job:
        self.open()
        with self.engine.begin() as conn:
            return self._job(conn, job_id)

    def cancel(self, job_id: str) -> Job:
        """Unfinished items (pending, and running ones: their results will be refused) become cancelled."""
        self.open()
        now = time.time()
        with self.engine.begin() as conn:
            job = self._job(conn, job_id)
            if job.cancelled_at is None:
                n = conn.execute(update(ITEMS).where(ITEMS.c.job_id == job_id, ITEMS.c.status.in_(("pending", "running")))
                                 .values(status="cancelled", lease_owner=None, lease_expires=None, finished_at=now)).rowcount
                if n:
                    conn.execute(update(JOBS).where(JOBS.c.id == job_id).values(cancelled_at=now))
                job = self._job(conn, job_id)
            return job

    def results(self, job_id: str, *, after_seq: int = -1, limit: int = 500) -> list[tuple[int, str]]:
        """Result lines of finished items (ok or failed) after `after_seq`, in input order."""
        self.open()
        with self.engine.begin() as conn:
            rows = conn.execute(select(ITEMS.c.seq, ITEMS.c.result)
                                .where(ITEMS.c.job_id == job_id, ITEMS.c.status.in_(("ok", "failed")),
                                       ITEMS.c.seq > after_seq)
                                .order_by(ITEMS.c.seq).limit(limit)).all()
        return [(int(r.seq), str(r.result)) for r in rows]

    def finished_items(self, job_id: str, *, limit: int = 500) -> list[tuple[str, str, str]]:
        """`(item id, text, result line)` of the first `limit` finished items, in input order (the view)."""
        self.open()
        with self.engine.begin() as conn:
            rows = conn.execute(select(ITEMS.c.item_id, ITEMS.c.text, ITEMS.c.result)
                                .where(ITEMS.c.job_id == job_id, ITEMS.c.status.in_(("ok", "failed")))
                                .order_by(ITEMS.c.seq).limit(limit)).all()
        return [(str(r.item_id), str(r.text), str(r.result)) for r in rows]

    def _job(self, conn: Connection, job_id: str) -> Job:
        row = conn.execute(select(JOBS).where(JOBS.c.id == job_id)).first()
        if row is None:
            raise UnknownBatch(f"no batch job {job_id!r}", batch=job_id)
        counts = dict.fromkeys(STATUSES, 0)
        last: float | None = None
        for status, n, finished in conn.execute(
                select(ITEMS.c.status, func.count(), func.max(ITEMS.c.finished_at))
                .where(ITEMS.c.job_id == job_id).group_by(ITEMS.c.status)):
            counts[str(status)] = int(n)
            if finished is not None:
                last = max(last or 0.0, float(finished))
        return Job(id=row.id, schema=row.schema_name, options=json.loads(row.options), total=row.total,
                   created_at=row.created_at, cancelled_at=row.cancelled_at, counts=counts, last_finished_at=last,
                   idempotency_key=row.idempotency_key, body_digest=row.body_digest)

    # -- leases ----------------------------------------------------------------------------------

    def claim(self, owner: str, limit: int, lease_s: float) -> list[Claimed]:
        """Lease up to `limit` items, oldest jobs first: pending ones and those whose lease expired."""
        self.open()
        now = time.time()
        claimable = or_(ITEMS.c.status == "pending", and_(ITEMS.c.status == "running", ITEMS.c.lease_expires < now))
        chosen = (select(ITEMS.c.job_id, ITEMS.c.seq).where(claimable)
                  .order_by(ITEMS.c.job_id, ITEMS.c.seq).limit(limit))
        if self.dialect == "postgresql":
            chosen = chosen.with_for_update(skip_locked=True)
        # `claimable` again on the UPDATE itself: PostgreSQL re-checks it on a row another transaction just changed
        claim = (update(ITEMS).where(tuple_(ITEMS.c.job_id, ITEMS.c.seq).in_(chosen), claimable)
                 .values(status="running", lease_owner=owner, lease_expires=now + lease_s, attempts=ITEMS.c.attempts + 1)
                 .returning(ITEMS.c.job_id, ITEMS.c.seq, ITEMS.c.item_id, ITEMS.c.text))
        with self.engine.begin() as conn:
            rows = conn.execute(claim).all()
            if not rows:
                return []
            jobs = {r.id: r for r in conn.execute(select(JOBS.c.id, JOBS.c.schema_name, JOBS.c.options)
                                                  .where(JOBS.c.id.in_({r.job_id for r in rows})))}
        out = [Claimed(r.job_id, int(r.seq), r.item_id, r.text, jobs[r.job_id].schema_name,
                       json.loads(jobs[r.job_id].options)) for r in rows]
        return sorted(out, key=lambda c: (c.job_id, c.seq))

    def renew(self, owner: str, lease_s: float) -> int:
        """Extend every lease `owner` holds; the number of items it still holds."""
        with self.engine.begin() as conn:
            return conn.execute(update(ITEMS).where(ITEMS.c.lease_owner == owner, ITEMS.c.status == "running")
                                .values(lease_expires=time.time() + lease_s)).rowcount

    def finish(self, owner: str, job_id: str, seq: int, *, ok: bool, line: str) -> bool:
        """Store an item's result line and mark it done, if `owner` still holds its lease."""
        with self.engine.begin() as conn:
            return conn.execute(
                update(ITEMS).where(ITEMS.c.job_id == job_id, ITEMS.c.seq == seq, ITEMS.c.status == "running",
                                    ITEMS.c.lease_owner == owner)
                .values(status="ok" if ok else "failed", result=line, finished_at=time.time(), lease_owner=None,
                        lease_expires=None)).rowcount == 1

    def engine_failure(self, owner: str, job_id: str, seq: int, *, max_errors: int, line: str) -> bool:
        """Count an engine failure of a leased item: at `max_errors` the item fails with `line`
        (True), before that it goes back to pending (False). Nothing happens without the lease."""
        held = and_(ITEMS.c.job_id == job_id, ITEMS.c.seq == seq, ITEMS.c.status == "running",
                    ITEMS.c.lease_owner == owner)
        with self.engine.begin() as conn:
            count = conn.execute(update(ITEMS).where(held).values(engine_errors=ITEMS.c.engine_errors + 1)
                                 .returning(ITEMS.c.engine_errors)).scalar()
            if count is None:
                return False
            give_up = int(count) >= max_errors
            values: dict[str, Any] = ({"status": "failed", "result": line, "finished_at": time.time()} if give_up
                                      else {"status": "pending"})
            conn.execute(update(ITEMS).where(held).values(lease_owner=None, lease_expires=None, **values))
            return give_up

    def release(self, owner: str, keys: Iterable[tuple[str, int]] | None = None) -> int:
        """Give leased items back as pending (all that `owner` holds, or those of `keys`)."""
        where = [ITEMS.c.lease_owner == owner, ITEMS.c.status == "running"]
        if keys is not None:
            wanted = list(keys)
            if not wanted:
                return 0
            where.append(tuple_(ITEMS.c.job_id, ITEMS.c.seq).in_(wanted))
        with self.engine.begin() as conn:
            return conn.execute(update(ITEMS).where(*where)
                                .values(status="pending", lease_owner=None, lease_expires=None)).rowcount


def _sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    import sqlite3

    dbapi_connection.isolation_level = None  # the driver's implicit BEGIN off: `_sqlite_begin` emits ours
    cursor = dbapi_connection.cursor()
    # Switching a new file to WAL needs it to itself, and SQLite answers "database is locked" at once
    # (no busy wait) while another connection is starting up too: retry for up to 30 s.
    deadline = time.monotonic() + 30
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            break
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _sqlite_begin(conn: Connection) -> None:
    conn.exec_driver_sql("BEGIN IMMEDIATE")
