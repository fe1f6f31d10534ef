"""The audit log: one SQLite row per task, and an event row per signal.

Rows are written here and only here, from Huey's signals (see
`connect_signals`), never from inside a task. A write that fails is logged and
swallowed, so a broken audit database never breaks a task.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sqlite3
import threading
import time
import traceback as traceback_module
from pathlib import Path

import sqlite_utils
from huey import signals as S

logger = logging.getLogger(__name__)

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


def create_group_writable(path: Path) -> None:
    """Create an empty SQLite file that the owner's group may write, unless it
    exists. The ERP's user, a member of that group, writes the queue and the
    `queued` audit rows; SQLite gives its -wal and -shm files the same mode."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o660)
    except FileExistsError:
        return
    os.close(fd)
    os.chmod(path, 0o660)


def _to_json(value) -> str:
    return json.dumps(value, ensure_ascii=False, default=str)


def _cut(text: str | None, limit: int) -> str | None:
    if text is None or len(text) <= limit:
        return text
    return text[:limit] + f"... [{len(text) - limit} more characters]"


class AuditLog:
    """The audit database at `path`, one SQLite connection per thread."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._local = threading.local()
        create_group_writable(self.path)
        self.db.conn.executescript(SCHEMA)

    @property
    def db(self) -> sqlite_utils.Database:
        db = getattr(self._local, "db", None)
        if db is None or getattr(self._local, "pid", None) != os.getpid():
            conn = sqlite3.connect(self.path, timeout=5.0, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            db = sqlite_utils.Database(conn)
            self._local.db = db
            self._local.pid = os.getpid()
        return db

    def _execute(self, sql: str, params=()) -> None:
        self.db.conn.execute(sql, params)

    def _event(self, task_id: str, event: str, detail: str = "") -> None:
        self._execute(
            "INSERT INTO task_events (task_id, at, event, detail) VALUES (?, ?, ?, ?)",
            (task_id, time.time(), event, detail),
        )

    # Writers, one per signal. Each is an upsert, so a row missing because
    # the producer could not write it is created by the consumer.

    def _enqueue_conn(self) -> sqlite3.Connection:
        """Return the connection for `queued` rows, which the ERP writes inside
        its own request. It waits at most ENQUEUE_BUSY_TIMEOUT for a lock and
        never runs a WAL checkpoint, whose fsync would stall the ERP. The
        consumers run the checkpoints."""
        conn = getattr(self._local, "enqueue_conn", None)
        if conn is None or getattr(self._local, "enqueue_pid", None) != os.getpid():
            conn = sqlite3.connect(
                self.path, timeout=ENQUEUE_BUSY_TIMEOUT, isolation_level=None
            )
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA wal_autocheckpoint=0")
            self._local.enqueue_conn = conn
            self._local.enqueue_pid = os.getpid()
        return conn

    def record_enqueued(self, task_id, name, args, kwargs, queue, retry_of=None):
        """Insert the task's row as queued. A row that a consumer wrote first
        keeps its later state: the producer writes after the task is in the
        queue, so a fast consumer can start it before this runs."""
        now = time.time()
        conn = self._enqueue_conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute(
                """
                INSERT INTO tasks (id, name, args, kwargs, queue, state,
                                   enqueued_at, updated_at, retry_of)
                VALUES (?, ?, ?, ?, ?, 'queued', ?, ?, ?)
                ON CONFLICT (id) DO UPDATE SET
                    state = CASE WHEN tasks.state IN ('scheduled', 'retrying')
                                 THEN 'queued' ELSE tasks.state END,
                    updated_at = excluded.updated_at,
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
            conn.execute(
                "INSERT INTO task_events (task_id, at, event, detail)"
                " VALUES (?, ?, 'enqueued', ?)",
                (task_id, now, f"retry of {retry_of}" if retry_of else ""),
            )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def record_scheduled(self, task_id, eta: float | None) -> None:
        self._execute(
            """
            UPDATE tasks SET eta = ?, updated_at = ?,
                state = CASE WHEN state = 'retrying' THEN 'retrying'
                             ELSE 'scheduled' END
            WHERE id = ?
            """,
            (eta, time.time(), task_id),
        )
        self._event(task_id, "scheduled", f"eta {eta:.0f}" if eta else "")

    def record_started(self, task_id, host, pid, worker, name=None, args=None,
                       kwargs=None, queue=None) -> None:  # fmt: skip
        now = time.time()
        if name is not None and self.get(task_id) is None:
            self.record_enqueued(task_id, name, args, kwargs, queue)
        self._execute(
            """
            UPDATE tasks SET state = 'running', started_at = ?, updated_at = ?,
                attempts = attempts + 1, host = ?, pid = ?, worker = ?, eta = NULL
            WHERE id = ?
            """,
            (now, now, host, pid, worker, task_id),
        )
        self._event(task_id, "started", f"{host} pid {pid} {worker}")

    def record_succeeded(self, task_id, result=None) -> None:
        now = time.time()
        self._execute(
            """
            UPDATE tasks SET state = 'succeeded', finished_at = ?, updated_at = ?,
                result = coalesce(?, result), error = NULL
            WHERE id = ?
            """,
            (now, now, _cut(None if result is None else str(result), 500), task_id),
        )
        self._event(task_id, "succeeded")

    def record_result(self, task_id, result) -> None:
        self._execute(
            "UPDATE tasks SET result = ? WHERE id = ?",
            (_cut(str(result), 500), task_id),
        )

    def record_failed(self, task_id, error: str, traceback: str, final=True) -> None:
        now = time.time()
        state = "failed" if final else "retrying"
        self._execute(
            """
            UPDATE tasks SET state = ?, updated_at = ?, error = ?, traceback = ?,
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

    def record_state(self, task_id, state: str, detail: str = "") -> None:
        now = time.time()
        final = state in FINAL_STATES
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

    def record_recovered(self, task_id: str, owner: str) -> None:
        """Mark a task that a dead worker held as queued again."""
        now = time.time()
        self._execute(
            "UPDATE tasks SET state = 'queued', updated_at = ? WHERE id = ?",
            (now, task_id),
        )
        self._event(task_id, "recovered", f"{owner} stopped; put back on the queue")

    def log_action(self, username, action, task_id, detail="") -> None:
        self._execute(
            "INSERT INTO operator_actions (at, username, action, task_id, detail)"
            " VALUES (?, ?, ?, ?, ?)",
            (time.time(), username, action, task_id, detail),
        )

    # Readers, for the dashboard and the CLI.

    def get(self, task_id: str) -> dict | None:
        rows = list(self.db.query("SELECT * FROM tasks WHERE id = ?", [task_id]))
        return rows[0] if rows else None

    def events(self, task_id: str) -> list[dict]:
        return list(
            self.db.query(
                "SELECT at, event, detail FROM task_events WHERE task_id = ?"
                " ORDER BY at, id",
                [task_id],
            )
        )

    def search(self, *, state=None, name=None, text=None, before=None, limit=50):
        """Return rows newest first; `before` is the (enqueued_at, id) of the
        last row already shown, for keyset paging."""
        where, params = [], []
        if state:
            where.append("state = ?")
            params.append(state)
        if name:
            where.append("name = ?")
            params.append(name)
        if text:
            where.append("(id = ? OR args LIKE ? OR kwargs LIKE ? OR error LIKE ?)")
            pattern = "%" + text.replace("%", r"\%").replace("_", r"\_") + "%"
            params.extend([text, pattern, pattern, pattern])
        if before:
            where.append("(enqueued_at < ? OR (enqueued_at = ? AND id < ?))")
            params.extend([before[0], before[0], before[1]])

        sql = (
            "SELECT id, name, args, kwargs, queue, state, enqueued_at, started_at,"
            " finished_at, eta, attempts, host, pid, error, retry_of, retried_by"
            " FROM tasks"
        )
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY enqueued_at DESC, id DESC LIMIT ?"
        params.append(int(limit))
        if text:
            sql = sql.replace("LIKE ?", r"LIKE ? ESCAPE '\'")
        return list(self.db.query(sql, params))

    def counts_by_state(self) -> dict[str, int]:
        counts = {state: 0 for state in STATES}
        for row in self.db.query("SELECT state, count(*) AS n FROM tasks GROUP BY 1"):
            counts[row["state"]] = row["n"]
        return counts

    def task_names(self) -> list[str]:
        rows = self.db.query("SELECT DISTINCT name FROM tasks ORDER BY name")
        return [row["name"] for row in rows]

    def actions(self, limit=100) -> list[dict]:
        return list(
            self.db.query(
                "SELECT * FROM operator_actions ORDER BY at DESC, id DESC LIMIT ?",
                [int(limit)],
            )
        )


def _error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


_write_failures = 0


def log_write_failure(task_id: str, what: str) -> None:
    """Log a failed audit write from inside an except block: the first with
    its traceback, then one line per 100, so that a broken audit database
    cannot flood the log."""
    global _write_failures
    _write_failures += 1
    extra = {"task_id": task_id}
    if _write_failures == 1:
        logger.exception("Audit log write failed for task %s (%s)", task_id, what,
                         extra=extra)  # fmt: skip
    elif _write_failures % 100 == 0:
        logger.error(
            "Audit log write failed for task %s (%s); %d failures so far",
            task_id, what, _write_failures, extra=extra,
        )  # fmt: skip


def full_name(huey, task) -> str:
    """Return the registered name of a task: module and function."""
    return huey._registry.task_to_string(type(task))


def connect_signals(huey, audit: AuditLog) -> None:
    """Write the audit log from `huey`'s signals, in whatever process fires
    them: the producer for `enqueued`, the worker for the rest."""
    host = socket.gethostname()

    def write(signal, task, exc=None):
        if signal == S.SIGNAL_ENQUEUED:
            return  # written by ApplianceHuey.enqueue once the task is queued
        if signal == S.SIGNAL_SCHEDULED:
            eta = task.eta.timestamp() if task.eta else None
            audit.record_scheduled(task.id, eta)
        elif signal == S.SIGNAL_EXECUTING:
            audit.record_started(
                task.id, host, os.getpid(), threading.current_thread().name,
                full_name(huey, task), task.args, task.kwargs, huey.name,
            )  # fmt: skip
        elif signal == S.SIGNAL_COMPLETE:
            audit.record_succeeded(task.id)
        elif signal == S.SIGNAL_ERROR:
            trace = "".join(traceback_module.format_exception(exc))
            audit.record_failed(task.id, _error_text(exc), trace, not task.retries)
        elif signal == S.SIGNAL_TIMEOUT:
            audit.record_failed(task.id, f"timed out after {task.timeout} s", "",
                                not task.retries)  # fmt: skip
        elif signal == S.SIGNAL_RETRYING:
            audit.record_state(task.id, "retrying", f"{task.retries} retries left")
        elif signal == S.SIGNAL_INTERRUPTED and getattr(huey, "reliable", False):
            audit.record_state(task.id, "queued", "interrupted: the consumer "
                               "stopped while the task ran; put back on the queue")  # fmt: skip
        elif signal == S.SIGNAL_INTERRUPTED:
            audit.record_failed(task.id, "interrupted: the consumer stopped while "
                                "the task ran", "", final=True)  # fmt: skip
        elif signal == S.SIGNAL_CANCELED:
            audit.record_failed(task.id, "canceled before it ran", "", final=True)
        elif signal in (S.SIGNAL_REVOKED, S.SIGNAL_EXPIRED):
            audit.record_state(task.id, "revoked" if signal == S.SIGNAL_REVOKED
                               else "expired")  # fmt: skip
        else:
            audit._event(task.id, signal)

    def handler(signal, task, *args):
        exc = args[0] if args else None
        try:
            write(signal, task, exc)
        except Exception:  # noqa: BLE001 - logged by log_write_failure
            # The audit log must never break a task.
            log_write_failure(task.id, signal)

    def record_result(task, value, exc):
        if exc is None and value is not None:
            try:
                audit.record_result(task.id, value)
            except Exception:  # noqa: BLE001 - logged by log_write_failure
                log_write_failure(task.id, "result")

    huey.signal()(handler)
    huey.post_execute(name="audit_result")(record_result)
