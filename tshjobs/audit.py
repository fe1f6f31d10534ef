"""The audit log: one SQLite row per task, and an event row per signal.

Rows are written here and only here, from Huey's signals (see
`connect_signals`), never from inside a task. A write that fails is logged and
swallowed, so a broken audit database never breaks a task. When it failed for
a reason that may pass (the database locked, full or read-only), the write is
also kept in a retry buffer next to the database and replayed in order later
(see `AuditLog.replay_pending`).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
import logging
import os
import socket
import sqlite3
import sys
import threading
import time
import traceback as traceback_module
from pathlib import Path
from typing import TYPE_CHECKING

import sqlite_utils
from huey import signals as S

if TYPE_CHECKING:
    from tshjobs.settings import Settings

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

# Seconds every other writer waits for a locked audit database.
BUSY_TIMEOUT = 5.0

# A replay of kept writes waits at most REPLAY_BUSY_TIMEOUT seconds for the
# audit database's lock, then gives up until the next try, and applies at most
# REPLAY_BATCH kept writes per transaction. Before a write, a process with
# kept writes replays at most REPLAY_LIMIT_BEFORE_WRITE of them. If any remain,
# the new write is kept behind them, so one task's writes stay in order.
REPLAY_BUSY_TIMEOUT = 0.5
REPLAY_BATCH = 100
REPLAY_LIMIT_BEFORE_WRITE = 100

# Seconds a writer waits for the retry buffer's own lock.
RETRY_BUFFER_BUSY_TIMEOUT = 2.0

# SQLite result codes of failures that may pass. A write that fails with any
# other code (a bug, a schema mismatch) would fail again, so it is not kept.
TRANSIENT_SQLITE_CODES = frozenset(
    {
        sqlite3.SQLITE_BUSY,
        sqlite3.SQLITE_LOCKED,
        sqlite3.SQLITE_READONLY,
        sqlite3.SQLITE_IOERR,
        sqlite3.SQLITE_FULL,
        sqlite3.SQLITE_CANTOPEN,
    }
)

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


@contextlib.contextmanager
def _busy_timeout(conn: sqlite3.Connection, seconds: float):
    previous = conn.execute("PRAGMA busy_timeout").fetchone()[0]
    conn.execute(f"PRAGMA busy_timeout = {int(seconds * 1000)}")
    try:
        yield
    finally:
        conn.execute(f"PRAGMA busy_timeout = {int(previous)}")


def _is_transient(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    return code is not None and code & 0xFF in TRANSIENT_SQLITE_CODES


class AuditWriteDeferred(sqlite3.OperationalError):
    """Raised by a writer whose write did not reach the audit database but is
    kept in the retry buffer, to be replayed later."""


# The audit write running in this thread. `active` is true inside a writer or
# a replay, so that nested writer calls run plainly. `at` is the time that the
# write stores, which is the first attempt's time when replaying.
_writes = threading.local()

# Names of the writers that a replay may call.
_RETRIED_WRITERS: set[str] = set()

# Writers the ERP calls inside its own request. The kept writes they replay
# first go through the ERP's connection, with its short busy timeout.
_ENQUEUE_WRITERS = frozenset({"record_enqueued"})


_kept_writes_lock = threading.Lock()


def _new_lock_after_fork() -> None:
    # A thread of the parent may have held the lock when the process forked.
    global _kept_writes_lock
    _kept_writes_lock = threading.Lock()


os.register_at_fork(after_in_child=_new_lock_after_fork)


def _now() -> float:
    at = getattr(_writes, "at", None)
    return time.time() if at is None else at


def _kept_for_retry(method):
    """Make an AuditLog writer part of the retry buffer's ordering: it runs
    after this process's kept writes, and is kept itself when it fails for a
    reason that may pass (see `AuditLog._write_in_order`)."""
    _RETRIED_WRITERS.add(method.__name__)

    @functools.wraps(method)
    def writer(self, *args, **kwargs):
        if getattr(_writes, "active", False):
            return method(self, *args, **kwargs)

        _writes.active = True
        _writes.at = time.time()
        try:
            return self._write_in_order(method, args, kwargs)
        finally:
            _writes.active = False
            _writes.at = None

    return writer


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
        self._local = threading.local()

    def connection(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None or getattr(self._local, "pid", None) != os.getpid():
            create_group_writable(self.path)
            conn = sqlite3.connect(
                self.path, timeout=RETRY_BUFFER_BUSY_TIMEOUT, isolation_level=None
            )
            conn.execute("PRAGMA journal_mode=WAL")
            # A kept write is the only copy of that write: fsync each commit.
            conn.execute("PRAGMA synchronous=FULL")
            conn.executescript(RETRY_SCHEMA)
            self._local.conn = conn
            self._local.pid = os.getpid()
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


class AuditLog:
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
        create_group_writable(self.path)
        self.db.conn.executescript(SCHEMA)

    @property
    def db(self) -> sqlite_utils.Database:
        db = getattr(self._local, "db", None)
        if db is None or getattr(self._local, "pid", None) != os.getpid():
            conn = sqlite3.connect(
                self.path, timeout=BUSY_TIMEOUT, isolation_level=None
            )
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            db = sqlite_utils.Database(conn)
            self._local.db = db
            self._local.pid = os.getpid()
        return db

    def _conn(self) -> sqlite3.Connection:
        """Return the connection writers use: the replay's while this thread
        runs one, else the thread's own."""
        return getattr(self._local, "replay_conn", None) or self.db.conn

    def _execute(self, sql: str, params=()) -> None:
        self._conn().execute(sql, params)

    @_kept_for_retry
    def _event(self, task_id: str, event: str, detail: str = "") -> None:
        _insert_event(self._conn(), task_id, event, detail)

    # The retry buffer. Writers decorated with _kept_for_retry call
    # _write_in_order. Replays run in the consumer's periodic thread, and
    # before the next write of a process with kept writes.

    def _has_kept_writes(self) -> bool:
        return self._kept_pid == os.getpid()

    def _write_in_order(self, method, args, kwargs):
        """Run a writer after this process's kept writes. Raise
        AuditWriteDeferred when the write is kept for later instead: it failed
        for a reason that may pass, or kept writes remain ahead of it."""
        if self._has_kept_writes():
            self._replay_before_write(method.__name__)
            if self._has_kept_writes() and self._keep(
                method, args, kwargs, "deferred behind earlier kept writes", False
            ):
                raise AuditWriteDeferred(
                    "earlier failed audit writes are not replayed yet; this "
                    "write is kept behind them and retried later"
                )

        try:
            return method(self, *args, **kwargs)
        except sqlite3.OperationalError as exc:
            if not _is_transient(exc):
                raise
            if not self._keep(method, args, kwargs, _error_text(exc), True):
                raise
            raise AuditWriteDeferred(
                f"{_error_text(exc)}; the write is kept and retried later"
            ) from exc

    def _keep(self, method, args, kwargs, error: str, failed: bool) -> bool:
        """Append a write to the retry buffer; return whether it is kept."""
        bound = inspect.signature(method).bind(self, *args, **kwargs)
        task_id = bound.arguments.get("task_id")
        try:
            with _kept_writes_lock:
                self.retry_buffer.append(_writes.at, method.__name__, args,
                                         kwargs, task_id, error, failed)  # fmt: skip
                self._kept_pid = os.getpid()
        except (sqlite3.Error, OSError, ValueError):
            _log_keep_failure(task_id, method.__name__)
            return False
        return True

    def _replay_before_write(self, method_name: str) -> None:
        if method_name in _ENQUEUE_WRITERS:
            conn, busy_timeout = self._enqueue_conn(), ENQUEUE_BUSY_TIMEOUT
        else:
            conn, busy_timeout = self.db.conn, REPLAY_BUSY_TIMEOUT
        try:
            self.replay_pending(REPLAY_LIMIT_BEFORE_WRITE, conn, busy_timeout)
        except sqlite3.Error:
            # The write is then kept behind the others, or written at once
            # when the buffer cannot take it either.
            _log_keep_failure(None, method_name)

    def replay_pending(self, limit: int | None = None, conn=None,
                       busy_timeout: float = REPLAY_BUSY_TIMEOUT) -> int:  # fmt: skip
        """Apply the kept writes oldest first, on `conn` (by default this
        thread's connection), and return how many were applied.

        A replay stops at a write that fails again for a reason that may
        pass. That write and those after it stay, and the error is stored for
        `audit_backlog`. A write that fails for any other reason is dropped,
        with an error logged, so that it cannot block the rest. `limit` caps
        the writes looked at; None means all.
        """
        if self.retry_buffer.is_empty():
            self._forget_kept_writes()
            return 0

        conn = conn or self.db.conn
        saved = (getattr(_writes, "active", False), getattr(_writes, "at", None))
        _writes.active = True
        self._local.replay_conn = conn
        applied = seen = 0
        try:
            with _busy_timeout(conn, busy_timeout):
                while limit is None or seen < limit:
                    size = REPLAY_BATCH
                    if limit is not None:
                        size = min(size, limit - seen)
                    batch_applied, fetched = self._replay_batch(conn, size)
                    applied += batch_applied
                    seen += fetched
                    if fetched < size:
                        break
        except sqlite3.OperationalError as exc:
            if not _is_transient(exc):
                raise
            self._note_replay_failure(exc)
            return applied
        finally:
            _writes.active, _writes.at = saved
            self._local.replay_conn = None

        self._forget_kept_writes()
        if applied or self._replay_failing:
            logger.info("Replayed %d kept audit writes", applied)
        self._replay_failing = False
        return applied

    def _replay_batch(self, conn: sqlite3.Connection, size: int) -> tuple[int, int]:
        """Apply up to `size` kept writes in one audit transaction; return how
        many were applied and how many were read from the buffer."""
        buffer_conn = self.retry_buffer.connection()
        # Every replay locks the audit database first, then the buffer, and
        # holds both until its kept writes are deleted. With one lock order,
        # replays never wait on each other in a cycle, and no two replays
        # apply the same kept writes.
        conn.execute("BEGIN IMMEDIATE")
        try:
            buffer_conn.execute("BEGIN IMMEDIATE")
            try:
                rows = buffer_conn.execute(
                    "SELECT id, at, method, arguments, task_id FROM kept_writes"
                    " ORDER BY id LIMIT ?",
                    (size,),
                ).fetchall()
                applied = sum(self._apply_kept(conn, row) for row in rows)
                conn.execute("COMMIT")
            except BaseException:
                if buffer_conn.in_transaction:
                    buffer_conn.execute("ROLLBACK")
                raise
            # NOTE: a crash or failure between the audit COMMIT above and this
            # one applies these writes a second time on the next replay: an
            # extra event row, or an attempt counted twice.
            buffer_conn.executemany(
                "DELETE FROM kept_writes WHERE id = ?", [(row[0],) for row in rows]
            )
            buffer_conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            if buffer_conn.in_transaction:
                buffer_conn.execute("ROLLBACK")
            raise
        return applied, len(rows)

    def _apply_kept(self, conn: sqlite3.Connection, row) -> bool:
        """Apply one kept write; return False when it was dropped."""
        row_id, at, method_name, arguments, task_id = row
        conn.execute("SAVEPOINT kept_write")
        try:
            if method_name not in _RETRIED_WRITERS:
                raise ValueError(f"{method_name!r} is not an audit writer")
            call = json.loads(arguments)
            _writes.at = at
            getattr(self, method_name)(*call["args"], **call["kwargs"])
        except Exception as exc:
            if isinstance(exc, sqlite3.OperationalError) and _is_transient(exc):
                raise
            conn.execute("ROLLBACK TO kept_write")
            conn.execute("RELEASE kept_write")
            logger.error(
                "Dropped kept audit write %d (%s for task %s), which cannot be "
                "applied: %s", row_id, method_name, task_id, _error_text(exc),
                extra={"task_id": task_id},
            )  # fmt: skip
            return False
        conn.execute("RELEASE kept_write")
        return True

    def _forget_kept_writes(self) -> None:
        with _kept_writes_lock:
            if self._kept_pid is not None and self.retry_buffer.is_empty():
                self._kept_pid = None

    def _note_replay_failure(self, exc: sqlite3.Error) -> None:
        try:
            self.retry_buffer.store_error(_error_text(exc))
        except sqlite3.Error:
            pass  # the kept writes themselves carry their first error
        if not self._replay_failing:
            self._replay_failing = True
            logger.warning("Replaying kept audit writes failed, will retry: %s",
                           _error_text(exc))  # fmt: skip

    # Writers, one per signal. Each is an upsert, so a row missing because
    # the producer could not write it is created by the consumer. Each runs
    # in one transaction, so a replay never finds half of a write applied.

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


def _insert_event(conn: sqlite3.Connection, task_id, event, detail="") -> None:
    conn.execute(
        "INSERT INTO task_events (task_id, at, event, detail) VALUES (?, ?, ?, ?)",
        (task_id, _now(), event, detail),
    )


def _error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


_write_failures = 0


def log_write_failure(task_id: str, what: str) -> None:
    """Log a failed audit write from inside an except block: the first with
    its traceback, then one line per 100, so that a broken audit database
    cannot flood the log. The line says whether the write was kept for a
    replay (AuditWriteDeferred) or lost."""
    global _write_failures
    _write_failures += 1
    exc = sys.exc_info()[1]
    outcome = "kept for a replay" if isinstance(exc, AuditWriteDeferred) else "lost"
    extra = {"task_id": task_id}
    if _write_failures == 1:
        logger.exception("Audit log write failed for task %s (%s); the write is %s",
                         task_id, what, outcome, extra=extra)  # fmt: skip
    elif _write_failures % 100 == 0:
        logger.error(
            "Audit log write failed for task %s (%s); the write is %s; %d "
            "failures so far", task_id, what, outcome, _write_failures,
            extra=extra,
        )  # fmt: skip


_keep_failures = 0


def _log_keep_failure(task_id: str | None, what: str) -> None:
    """Log, from inside an except block, that the retry buffer could not be
    read or written, rate-limited like log_write_failure."""
    global _keep_failures
    _keep_failures += 1
    if _keep_failures == 1 or _keep_failures % 100 == 0:
        logger.exception(
            "Audit retry buffer failed for task %s (%s); %d failures so far",
            task_id, what, _keep_failures, extra={"task_id": task_id},
        )  # fmt: skip


def audit_backlog(settings: Settings) -> dict:
    """Return the audit writes waiting in the retry buffer, for the
    dashboard's /health. See `AuditRetryBuffer.backlog` for the keys."""
    return AuditRetryBuffer(retry_buffer_path(settings.audit_path)).backlog()


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
            soft = huey.time_limits(task)[0] if hasattr(huey, "time_limits") else None
            reason = (
                f"TaskTimeout: soft time limit of {soft:g} s exceeded"
                if soft
                else ("TaskTimeout: timed out")
            )
            audit.record_failed(task.id, reason, "", not task.retries)
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
