"""The audit database's tables and task states, its busy timeouts, and the
helpers for column values and transactions that its writers share."""

from __future__ import annotations

import contextlib
import json
import sqlite3

STATES = (
    "queued",
    "scheduled",
    "running",
    "retrying",
    "succeeded",
    "failed",
    "revoked",
    "expired",
)
FINAL_STATES = ("succeeded", "failed", "revoked", "expired")
RETRYABLE_STATES = ("failed", "revoked", "expired")

# Seconds the ERP's enqueue call waits for a locked audit database before it
# gives up on the `queued` row (the consumer writes the row when it starts
# the task), so a long reader cannot stall the ERP's request.
ENQUEUE_BUSY_TIMEOUT = 0.1

# Seconds every other writer waits for a locked audit database.
BUSY_TIMEOUT = 5.0

# Error text kept in a row; longer texts are cut so one bad task cannot bloat
# the database.
MAX_ERROR_CHARS = 2_000
MAX_TRACEBACK_CHARS = 20_000

SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    args TEXT NOT NULL DEFAULT '[]',
    kwargs TEXT NOT NULL DEFAULT '{}',
    queue TEXT,
    state TEXT NOT NULL,
    enqueued_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    eta REAL,
    updated_at REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    host TEXT,
    pid INTEGER,
    worker TEXT,
    error TEXT,
    traceback TEXT,
    retry_of TEXT,
    retried_by TEXT,
    result TEXT
);
CREATE INDEX IF NOT EXISTS tasks_enqueued ON tasks (enqueued_at, id);
CREATE INDEX IF NOT EXISTS tasks_state ON tasks (state, enqueued_at);
CREATE INDEX IF NOT EXISTS tasks_name ON tasks (name, enqueued_at);
CREATE TABLE IF NOT EXISTS task_events (
    id INTEGER PRIMARY KEY,
    task_id TEXT NOT NULL,
    at REAL NOT NULL,
    event TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS task_events_task ON task_events (task_id, at);
CREATE TABLE IF NOT EXISTS operator_actions (
    id INTEGER PRIMARY KEY,
    at REAL NOT NULL,
    username TEXT NOT NULL,
    action TEXT NOT NULL,
    task_id TEXT,
    detail TEXT NOT NULL DEFAULT ''
);
"""


def _to_json(value) -> str:
    return json.dumps(value, ensure_ascii=False, default=str)


def _cut(text: str | None, limit: int) -> str | None:
    if text is None or len(text) <= limit:
        return text
    return text[:limit] + f"... [{len(text) - limit} more characters]"


@contextlib.contextmanager
def _transaction(conn: sqlite3.Connection):
    """Run the block in one write transaction on `conn`, or inside the one
    already open on it."""
    if conn.in_transaction:
        yield conn
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
        conn.execute("COMMIT")
    except BaseException:
        # SQLite may have rolled back already, after a disk full or I/O error.
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"
