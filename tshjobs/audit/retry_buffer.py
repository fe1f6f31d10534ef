"""The retry buffer: audit writes that failed for a reason that may pass,
kept in a SQLite file of their own until a replay applies them. The ordering
and the replay are in `tshjobs.audit.replay`."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import TYPE_CHECKING

from tshjobs import sqlite_files
from tshjobs.audit.schema import MAX_ERROR_CHARS, _cut, _transaction

if TYPE_CHECKING:
    from tshjobs.settings import Settings

# Seconds a writer waits for the retry buffer's own lock.
RETRY_BUFFER_BUSY_TIMEOUT = 2.0

# The retry buffer. `at` is the time of the first attempt, which a replay
# writes into the audit rows. `arguments` is the JSON object {"args": [...],
# "kwargs": {...}}. AUTOINCREMENT keeps ids, and so the replay order, rising.
RETRY_SCHEMA = """
CREATE TABLE IF NOT EXISTS kept_writes (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    method TEXT NOT NULL,
    arguments TEXT NOT NULL,
    task_id TEXT,
    error TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS replay_status (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    last_error TEXT,
    last_error_at REAL
);
"""


def retry_buffer_path(audit_path: Path) -> Path:
    """Return the retry buffer's file, next to the audit database. It is a
    file of its own because SQLite locks whole files, and a locked audit
    database must not also lock the buffer that keeps its failed writes."""
    audit_path = Path(audit_path)
    return audit_path.with_name(audit_path.stem + "-retry.db")


class AuditRetryBuffer:
    """Audit writes that failed, kept in a SQLite file until a replay applies
    them. The file is created on the first write kept."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._connections = sqlite_files.PerThreadConnection(self._connect)

    def connection(self) -> sqlite3.Connection:
        return self._connections.get()

    def _connect(self) -> sqlite3.Connection:
        sqlite_files.create_group_writable(self.path)
        # A kept write is the only copy of that write: fsync each commit.
        conn = sqlite_files.connect(
            self.path, timeout=RETRY_BUFFER_BUSY_TIMEOUT, pragmas=("synchronous=FULL",)
        )
        conn.executescript(RETRY_SCHEMA)
        return conn

    def append(self, at, method, args, kwargs, task_id, error, failed) -> None:
        """Keep one write. `failed` marks `error` as a database error, which
        `backlog()` then reports as the last error."""
        arguments = json.dumps(
            {"args": list(args), "kwargs": dict(kwargs)},
            ensure_ascii=False,
            default=str,
        )
        conn = self.connection()
        with _transaction(conn):
            conn.execute(
                "INSERT INTO kept_writes (at, method, arguments, task_id, error)"
                " VALUES (?, ?, ?, ?, ?)",
                (at, method, arguments, task_id, error),
            )
            if failed:
                self.store_error(error)

    def store_error(self, error: str) -> None:
        self.connection().execute(
            "INSERT INTO replay_status (id, last_error, last_error_at)"
            " VALUES (1, ?, ?) ON CONFLICT (id) DO UPDATE SET"
            " last_error = excluded.last_error,"
            " last_error_at = excluded.last_error_at",
            (_cut(error, MAX_ERROR_CHARS), time.time()),
        )

    def is_empty(self) -> bool:
        if not self.path.exists():
            return True
        row = self.connection().execute("SELECT 1 FROM kept_writes LIMIT 1")
        return row.fetchone() is None

    def backlog(self) -> dict:
        """Return `pending` (the number of kept writes), `oldest_at` (the Unix
        time of the oldest, or None), and `last_error` and `last_error_at`
        (the latest failure of a write or a replay, kept after the backlog
        clears; None before the first)."""
        backlog = {
            "pending": 0,
            "oldest_at": None,
            "last_error": None,
            "last_error_at": None,
        }
        if not self.path.exists():
            return backlog

        conn = self.connection()
        pending, oldest = conn.execute(
            "SELECT count(*), min(at) FROM kept_writes"
        ).fetchone()
        backlog["pending"] = pending
        backlog["oldest_at"] = oldest
        status = conn.execute(
            "SELECT last_error, last_error_at FROM replay_status WHERE id = 1"
        ).fetchone()
        if status is not None:
            backlog["last_error"], backlog["last_error_at"] = status
        return backlog


def audit_backlog(settings: Settings) -> dict:
    """Return the audit writes waiting in the retry buffer, for the
    dashboard's /health. See `AuditRetryBuffer.backlog` for the keys."""
    return AuditRetryBuffer(retry_buffer_path(settings.audit_path)).backlog()
