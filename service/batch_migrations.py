"""The batch database's schema, as ordered, versioned migrations.

`MIGRATIONS[n]` takes the database from version n to n + 1; `schema_version`
holds the version reached. `migrate` runs at start-up and applies what is
missing in one transaction with the versions it records, so a step is there
in whole or not at all. It is idempotent and safe to run from several
processes at once: PostgreSQL takes an advisory lock, SQLite's transactions
start with `BEGIN IMMEDIATE` (see batch_store), so one process migrates and
the others then find nothing to do.

Never edit a released step: append a new one. The DDL is plain SQL that
SQLite and PostgreSQL both read (`DOUBLE PRECISION` is a REAL in SQLite).
"""

from __future__ import annotations

from sqlalchemy import Connection, text

MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (  # 1: jobs and their items; an item is a lease-able unit of work and holds its result line
        """CREATE TABLE batch_jobs (
            id VARCHAR(64) PRIMARY KEY,
            schema_name VARCHAR(200) NOT NULL,
            options TEXT NOT NULL,
            idempotency_key VARCHAR(256) UNIQUE,
            body_digest VARCHAR(64) NOT NULL,
            total INTEGER NOT NULL,
            created_at DOUBLE PRECISION NOT NULL,
            cancelled_at DOUBLE PRECISION
        )""",
        """CREATE TABLE batch_items (
            job_id VARCHAR(64) NOT NULL REFERENCES batch_jobs (id) ON DELETE CASCADE,
            seq INTEGER NOT NULL,
            item_id TEXT NOT NULL,
            text TEXT NOT NULL,
            status VARCHAR(16) NOT NULL,
            lease_owner VARCHAR(128),
            lease_expires DOUBLE PRECISION,
            attempts INTEGER NOT NULL DEFAULT 0,
            result TEXT,
            finished_at DOUBLE PRECISION,
            PRIMARY KEY (job_id, seq)
        )""",
        "CREATE UNIQUE INDEX batch_items_item_id ON batch_items (job_id, item_id)",
        "CREATE INDEX batch_items_claim ON batch_items (status, job_id, seq)",
        "CREATE INDEX batch_items_lease ON batch_items (lease_owner)",
    ),
    (  # 2: engine failures an item met while the engine answered others: past a cap the item fails alone
        "ALTER TABLE batch_items ADD COLUMN engine_errors INTEGER NOT NULL DEFAULT 0",
    ),
)

#: PostgreSQL advisory lock key of the migration (any constant; 'xbat' in ASCII)
_LOCK_KEY = 0x78626174


def current_version(conn: Connection) -> int:
    row = conn.execute(text("SELECT max(version) FROM schema_version")).scalar()
    return int(row) if row is not None else 0


def migrate(conn: Connection) -> int:
    """Apply the missing steps inside the caller's transaction; return the version reached."""
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _LOCK_KEY})
    conn.execute(text("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY)"))
    version = current_version(conn)
    if version > len(MIGRATIONS):
        raise RuntimeError(f"the batch database is at schema version {version}; this service knows up to "
                           f"{len(MIGRATIONS)}: upgrade the service")
    for number, steps in enumerate(MIGRATIONS[version:], start=version + 1):
        for statement in steps:
            conn.execute(text(statement))
        conn.execute(text("INSERT INTO schema_version (version) VALUES (:v)"), {"v": number})
    return len(MIGRATIONS)
