"""Audit writes kept in order: a writer runs after this process's kept
writes, a write that fails for a reason that may pass is kept in the retry
buffer, and a replay applies the kept writes oldest first.

`_kept_for_retry` wraps each AuditLog writer, and ReplayMixin gives AuditLog
the methods that keep and replay writes.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
import logging
import os
import sqlite3
import threading
import time

from tshjobs.audit.schema import ENQUEUE_BUSY_TIMEOUT, _error_text

# Every module of the audit package logs as `tshjobs.audit`, one logger name
# to filter and search their records by.
logger = logging.getLogger(__package__)

# A replay of kept writes waits at most REPLAY_BUSY_TIMEOUT seconds for the
# audit database's lock, then gives up until the next try, and applies at most
# REPLAY_BATCH kept writes per transaction. Before a write, a process with
# kept writes replays at most REPLAY_LIMIT_BEFORE_WRITE of them. If any remain,
# the new write is kept behind them, so one task's writes stay in order.
REPLAY_BUSY_TIMEOUT = 0.5
REPLAY_BATCH = 100
REPLAY_LIMIT_BEFORE_WRITE = 100

# SQLite result codes of failures that may pass. A write that fails with any
# other code (a bug, a schema mismatch) would fail again, so it is not kept.
TRANSIENT_SQLITE_CODES = frozenset(
    {
        sqlite3.SQLITE_BUSY,
        sqlite3.SQLITE_LOCKED,
        # Raised while a crashed writer's WAL is being recovered.
        sqlite3.SQLITE_PROTOCOL,
        sqlite3.SQLITE_READONLY,
        sqlite3.SQLITE_IOERR,
        sqlite3.SQLITE_FULL,
        sqlite3.SQLITE_CANTOPEN,
    }
)


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


class ReplayMixin:
    """AuditLog's methods that keep writes in the retry buffer and replay
    them. They use the AuditLog's `retry_buffer`, `db`, `_local`,
    `_enqueue_conn`, `_kept_pid` and `_replay_failing`."""

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
            self._reopen_if_read_only(exc)
            if not self._keep(method, args, kwargs, _error_text(exc), True):
                raise
            raise AuditWriteDeferred(
                f"{_error_text(exc)}; the write is kept and retried later"
            ) from exc

    def _reopen_if_read_only(self, exc: sqlite3.OperationalError) -> None:
        """Drop this thread's connections after a read-only error, so that
        the next write opens the file again, once it is writable."""
        code = getattr(exc, "sqlite_errorcode", None)
        if code is not None and code & 0xFF == sqlite3.SQLITE_READONLY:
            self._db.discard()
            self._enqueue_connections.discard()

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
            self._reopen_if_read_only(exc)
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
