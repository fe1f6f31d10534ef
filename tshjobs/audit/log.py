"""AuditLog: the audit database and its writers, one per Huey signal."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import sqlite_utils

from tshjobs import sqlite_files
from tshjobs.audit.readers import AuditReadersMixin
from tshjobs.audit.replay import ReplayMixin, _kept_for_retry, _now
from tshjobs.audit.retry_buffer import AuditRetryBuffer, retry_buffer_path
from tshjobs.audit.schema import (
    BUSY_TIMEOUT,
    ENQUEUE_BUSY_TIMEOUT,
    FINAL_STATES,
    MAX_ERROR_CHARS,
    MAX_TRACEBACK_CHARS,
    RETRYABLE_STATES,
    SCHEMA,
    _cut,
    _to_json,
    _transaction,
)


class AuditLog(ReplayMixin, AuditReadersMixin):
    """The audit database at `path`, one SQLite connection per thread."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._local = threading.local()
        self.retry_buffer = AuditRetryBuffer(retry_buffer_path(self.path))
        # The pid of this process while it may have writes in the retry
        # buffer. A replay that finds the buffer empty clears it. Guarded by
        # _kept_writes_lock.
        self._kept_pid: int | None = None
        self._replay_failing = False
        self._db = sqlite_files.PerThreadConnection(self._open_db)
        self._enqueue_connections = sqlite_files.PerThreadConnection(
            self._open_enqueue_conn
        )
        sqlite_files.create_group_writable(self.path)
        self.db.conn.executescript(SCHEMA)

    @property
    def db(self) -> sqlite_utils.Database:
        return self._db.get()

    def _open_db(self) -> sqlite_utils.Database:
        conn = sqlite_files.connect(
            self.path, timeout=BUSY_TIMEOUT, pragmas=("synchronous=NORMAL",)
        )
        return sqlite_utils.Database(conn)

    def _conn(self) -> sqlite3.Connection:
        """Return the connection writers use: the replay's while this thread
        runs one, else the thread's own."""
        return getattr(self._local, "replay_conn", None) or self.db.conn

    def _execute(self, sql: str, params=()) -> None:
        self._conn().execute(sql, params)

    @_kept_for_retry
    def _event(self, task_id: str, event: str, detail: str = "") -> None:
        _insert_event(self._conn(), task_id, event, detail)

    # Writers, one per signal. Each is an upsert, so a row missing because
    # the producer could not write it is created by the consumer. Each runs
    # in one transaction, so a replay never finds half of a write applied.

    def _enqueue_conn(self) -> sqlite3.Connection:
        """Return the connection for `queued` rows, which the ERP writes inside
        its own request. It waits at most ENQUEUE_BUSY_TIMEOUT for a lock and
        never runs a WAL checkpoint, whose fsync would stall the ERP. The
        consumers run the checkpoints."""
        return self._enqueue_connections.get()

    def _open_enqueue_conn(self) -> sqlite3.Connection:
        return sqlite_files.connect(
            self.path,
            timeout=ENQUEUE_BUSY_TIMEOUT,
            pragmas=("synchronous=NORMAL", "wal_autocheckpoint=0"),
        )

    @_kept_for_retry
    def record_enqueued(self, task_id, name, args, kwargs, queue, retry_of=None,
                        spooled_because=None):  # fmt: skip
        """Insert the task's row as queued. A row that a consumer wrote first
        keeps its later state: the producer writes after the task is in the
        queue, so a fast consumer can start it before this runs.
        `spooled_because` adds a `spooled` event with that reason."""
        conn = getattr(self._local, "replay_conn", None) or self._enqueue_conn()
        with _transaction(conn):
            self._insert_queued(conn, task_id, name, args, kwargs, queue, retry_of)
            if spooled_because:
                _insert_event(conn, task_id, "spooled", spooled_because)

    def _insert_queued(self, conn, task_id, name, args, kwargs, queue, retry_of):
        # A write replayed from the retry buffer can be older than the row it
        # finds, so it keeps the earliest enqueued_at and changes the state
        # only when it is the newer write.
        now = _now()
        conn.execute(
            """
            INSERT INTO tasks (id, name, args, kwargs, queue, state,
                               enqueued_at, updated_at, retry_of)
            VALUES (?, ?, ?, ?, ?, 'queued', ?, ?, ?)
            ON CONFLICT (id) DO UPDATE SET
                state = CASE WHEN tasks.state IN ('scheduled', 'retrying')
                                  AND excluded.updated_at >= tasks.updated_at
                             THEN 'queued' ELSE tasks.state END,
                enqueued_at = min(tasks.enqueued_at, excluded.enqueued_at),
                updated_at = max(tasks.updated_at, excluded.updated_at),
                retry_of = coalesce(tasks.retry_of, excluded.retry_of)
            """,
            (
                task_id,
                name,
                _to_json(list(args or ())),
                _to_json(dict(kwargs or {})),
                queue,
                now,
                now,
                retry_of,
            ),
        )
        if retry_of:
            conn.execute(
                "UPDATE tasks SET retried_by = ?, updated_at = ? WHERE id = ?",
                (task_id, now, retry_of),
            )
        _insert_event(conn, task_id, "enqueued",
                      f"retry of {retry_of}" if retry_of else "")  # fmt: skip

    @_kept_for_retry
    def record_scheduled(self, task_id, eta: float | None) -> None:
        with _transaction(self._conn()):
            self._execute(
                """
                UPDATE tasks SET eta = ?, updated_at = ?,
                    state = CASE WHEN state = 'retrying' THEN 'retrying'
                                 ELSE 'scheduled' END
                WHERE id = ?
                """,
                (eta, _now(), task_id),
            )
            self._event(task_id, "scheduled", f"eta {eta:.0f}" if eta else "")

    @_kept_for_retry
    def record_started(self, task_id, host, pid, worker, name=None, args=None,
                       kwargs=None, queue=None) -> None:  # fmt: skip
        now = _now()
        conn = self._conn()
        with _transaction(conn):
            row = conn.execute("SELECT 1 FROM tasks WHERE id = ?", (task_id,))
            if name is not None and row.fetchone() is None:
                self._insert_queued(conn, task_id, name, args, kwargs, queue, None)
            self._execute(
                """
                UPDATE tasks SET state = 'running', started_at = ?, updated_at = ?,
                    attempts = attempts + 1, host = ?, pid = ?, worker = ?,
                    eta = NULL
                WHERE id = ?
                """,
                (now, now, host, pid, worker, task_id),
            )
            self._event(task_id, "started", f"{host} pid {pid} {worker}")

    @_kept_for_retry
    def record_succeeded(self, task_id, result=None) -> None:
        now = _now()
        text = _cut(None if result is None else str(result), 500)
        with _transaction(self._conn()):
            self._execute(
                """
                UPDATE tasks SET state = 'succeeded', finished_at = ?,
                    updated_at = ?, result = coalesce(?, result), error = NULL
                WHERE id = ?
                """,
                (now, now, text, task_id),
            )
            self._event(task_id, "succeeded")

    @_kept_for_retry
    def record_result(self, task_id, result) -> None:
        self._execute(
            "UPDATE tasks SET result = ? WHERE id = ?",
            (_cut(str(result), 500), task_id),
        )

    @_kept_for_retry
    def record_failed(self, task_id, error: str, traceback: str, final=True) -> None:
        now = _now()
        state = "failed" if final else "retrying"
        with _transaction(self._conn()):
            self._execute(
                """
                UPDATE tasks SET state = ?, updated_at = ?, error = ?,
                    traceback = ?,
                    finished_at = CASE WHEN ? THEN ? ELSE finished_at END
                WHERE id = ?
                """,
                (
                    state,
                    now,
                    _cut(error, MAX_ERROR_CHARS),
                    _cut(traceback, MAX_TRACEBACK_CHARS),
                    final,
                    now,
                    task_id,
                ),
            )
            self._event(task_id, "failed" if final else "error", _cut(error, 500))

    @_kept_for_retry
    def record_state(self, task_id, state: str, detail: str = "") -> None:
        now = _now()
        final = state in FINAL_STATES
        with _transaction(self._conn()):
            self._execute(
                """
                UPDATE tasks SET state = ?, updated_at = ?,
                    finished_at = CASE WHEN ? THEN ? ELSE finished_at END
                WHERE id = ?
                """,
                (state, now, final, now, task_id),
            )
            self._event(task_id, state, detail)

    def claim_retry(self, task_id: str, new_task_id: str) -> bool:
        """Mark a retryable task as retried by `new_task_id`, unless it was
        retried already; return whether this call made the mark."""
        cursor = self.db.conn.execute(
            "UPDATE tasks SET retried_by = ?, updated_at = ?"
            " WHERE id = ? AND retried_by IS NULL AND state IN (?, ?, ?)",
            (new_task_id, time.time(), task_id, *RETRYABLE_STATES),
        )
        return cursor.rowcount == 1

    def release_retry(self, task_id: str, new_task_id: str) -> None:
        self._execute(
            "UPDATE tasks SET retried_by = NULL WHERE id = ? AND retried_by = ?",
            (task_id, new_task_id),
        )

    @_kept_for_retry
    def record_event(self, task_id: str, event: str, detail: str = "") -> None:
        """Add an event to a task's history without changing its state."""
        self._event(task_id, event, detail)

    @_kept_for_retry
    def record_recovered(self, task_id: str, owner: str, moved_at: float) -> None:
        """Mark a task that a dead worker held as queued again, unless its row
        changed since `moved_at`, when the task went back on the queue: a
        worker may have run it since, and this write must not undo that."""
        with _transaction(self._conn()):
            self._execute(
                f"""
                UPDATE tasks SET state = 'queued', updated_at = ?
                WHERE id = ? AND updated_at <= ?
                    AND state NOT IN ({", ".join("?" * len(FINAL_STATES))})
                """,
                (_now(), task_id, moved_at, *FINAL_STATES),
            )
            self._event(task_id, "recovered",
                        f"{owner} stopped; put back on the queue")  # fmt: skip

    @_kept_for_retry
    def log_action(self, username, action, task_id, detail="") -> None:
        self._execute(
            "INSERT INTO operator_actions (at, username, action, task_id, detail)"
            " VALUES (?, ?, ?, ?, ?)",
            (_now(), username, action, task_id, detail),
        )


def _insert_event(conn: sqlite3.Connection, task_id, event, detail="") -> None:
    conn.execute(
        "INSERT INTO task_events (task_id, at, event, detail) VALUES (?, ?, ?, ?)",
        (task_id, _now(), event, detail),
    )
