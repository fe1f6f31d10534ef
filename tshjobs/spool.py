"""A local spool for tasks enqueued while Redis is unreachable.

The ERP's call to a task function must return at once, so the producer talks
to Redis with connect and read timeouts of tens of milliseconds. When the push
fails, the signed message goes to `spool.db` in the data directory instead: a
SQLite file (WAL, fsync on every commit) whose rows keep their insertion
order. TSHJOBS_SPOOL_WHEN_REDIS_DOWN=false turns this off, and the call raises
QueueUnavailable.

Spooled tasks reach Redis in order. Every consumer drains the spool at start
and every DRAIN_INTERVAL seconds (`drain_forever`), and a producer that finds
spooled tasks drains them before it pushes its own. A drain holds the spool's
write lock from reading a batch until the batch is deleted, so drainers in
several processes take turns and never push the same rows.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
import weakref
from dataclasses import dataclass
from pathlib import Path

from huey.storage import RedisStorage
from redis import ConnectionPool
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.retry import Retry

from tshjobs import sqlite_files
from tshjobs.errors import QueueUnavailable
from tshjobs.settings import Settings

logger = logging.getLogger(__name__)

SPOOL_FILE = "spool.db"

# Seconds the producer's Redis client waits to connect, and for each reply. A
# refused or reset connection is retried once at once, because a pooled
# connection goes stale when Redis restarts; a timeout is not retried. Only
# pushes use this client. The consumer's blocking BLMOVE keeps the queue
# storage's client, whose read timeout (5 s, the default of redis-py 8.2) is
# longer than the BLMOVE block time (1 s, Huey's default read_timeout).
# NOTE: these timeouts do not bound the DNS lookup of a host name in
# TSHJOBS_REDIS_URL. Use an IP address where a slow DNS server could stall the
# ERP. A push whose reply is lost or late after Redis took it is pushed again
# or spooled, so that task runs twice; the appliance's tasks tolerate that.
PRODUCER_CONNECT_TIMEOUT = 0.05
PRODUCER_SOCKET_TIMEOUT = 0.1

# Seconds a spool reader or writer waits for another's write lock. A drain
# holds the lock for one batch of pushes, each bounded by the timeouts above.
SPOOL_BUSY_TIMEOUT = 5.0

# Rows pushed per drain transaction, and the most a producer pushes before its
# own task. A producer that finds more spooled tasks than that spools its task
# behind them, and the consumers deliver the rest.
DRAIN_BATCH = 100
PRODUCER_DRAIN_LIMIT = 1000

# Seconds between a consumer's drains of the spool and replays of kept audit
# writes.
DRAIN_INTERVAL = 2.0

# The number of dropped rows that a drain logs one by one. It counts the rest.
DROPPED_ROWS_LOGGED = 5

REASON_REDIS_DOWN = "Redis unavailable"
REASON_BEHIND_SPOOL = "earlier spooled tasks are still being delivered"

SCHEMA = """
CREATE TABLE IF NOT EXISTS spooled_tasks (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    queue TEXT NOT NULL,
    task_id TEXT NOT NULL,
    data BLOB NOT NULL,
    priority INTEGER,
    spooled_at REAL NOT NULL,
    reason TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS spooled_tasks_queue ON spooled_tasks (queue, id);
"""


@dataclass
class DrainResult:
    """Counts of one drain: rows pushed to Redis, and rows dropped because
    their message cannot be read (unsigned, or signed with another key)."""

    delivered: int = 0
    dropped: int = 0


class TaskSpool:
    """The spool file: signed task messages waiting for Redis, oldest first,
    with one SQLite connection per thread."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._connections = sqlite_files.PerThreadConnection(self._connect)

    def connection(self) -> sqlite3.Connection:
        return self._connections.get()

    def _connect(self) -> sqlite3.Connection:
        sqlite_files.create_group_writable(self.path)
        # FULL syncs the WAL at every commit, because a spooled row is the
        # only copy of its task.
        conn = sqlite_files.connect(
            self.path, timeout=SPOOL_BUSY_TIMEOUT, pragmas=("synchronous=FULL",)
        )
        conn.executescript(SCHEMA)
        return conn

    def append(self, queue: str, task_id: str, data: bytes, priority, reason: str):
        conn = self.connection()
        conn.execute(
            "INSERT INTO spooled_tasks (queue, task_id, data, priority,"
            " spooled_at, reason) VALUES (?, ?, ?, ?, ?, ?)",
            (queue, task_id, data, priority, time.time(), reason),
        )

    def has_rows(self, queue: str) -> bool:
        row = self.connection().execute(
            "SELECT 1 FROM spooled_tasks WHERE queue = ? LIMIT 1", (queue,)
        )
        return row.fetchone() is not None

    def count(self, queue: str) -> int:
        row = self.connection().execute(
            "SELECT count(*) FROM spooled_tasks WHERE queue = ?", (queue,)
        )
        return row.fetchone()[0]

    def drain(self, queue: str, push, check, limit: int | None = None):
        """Push spooled rows oldest first with `push(data, priority)`, delete
        them, and return a DrainResult. `check(data)` raises for a message
        that must not be pushed, which is then dropped with an error logged.

        A RedisError from `push` stops the drain and is raised. The rows
        pushed before it are deleted first, so none is pushed twice.
        """
        result = DrainResult()
        while limit is None or result.delivered + result.dropped < limit:
            size = DRAIN_BATCH
            if limit is not None:
                size = min(size, limit - result.delivered - result.dropped)

            error, fetched = self._drain_batch(queue, push, check, size, result)
            if error is not None:
                raise error
            if fetched < size:
                break
        return result

    def _drain_batch(self, queue, push, check, size, result):
        """Drain up to `size` rows in one transaction. Return the RedisError
        that stopped it (or None) and the number of rows read."""
        conn = self.connection()
        conn.execute("BEGIN IMMEDIATE")
        try:
            rows = conn.execute(
                "SELECT id, task_id, data, priority FROM spooled_tasks"
                " WHERE queue = ? ORDER BY id LIMIT ?",
                (queue, size),
            ).fetchall()
            done, error = [], None
            for row_id, task_id, data, priority in rows:
                try:
                    check(data)
                except Exception as exc:  # noqa: BLE001 - logged, row dropped
                    _log_dropped(row_id, task_id, exc, result.dropped)
                    result.dropped += 1
                    done.append(row_id)
                    continue
                try:
                    push(data, priority)
                except RedisError as exc:
                    error = exc
                    break
                result.delivered += 1
                done.append(row_id)

            # NOTE: a crash between a push above and this commit leaves the
            # row in the spool as well as in Redis, so the task is delivered
            # twice. The appliance's tasks tolerate a duplicate run.
            conn.executemany(
                "DELETE FROM spooled_tasks WHERE id = ?", [(i,) for i in done]
            )
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return error, len(rows)

    def backlog(self) -> dict:
        """Return `pending` (spooled tasks of every queue) and `oldest_at`
        (the Unix time the oldest was spooled, or None)."""
        if not self.path.exists():
            return {"pending": 0, "oldest_at": None}
        pending, oldest = (
            self.connection()
            .execute("SELECT count(*), min(spooled_at) FROM spooled_tasks")
            .fetchone()
        )
        return {"pending": pending, "oldest_at": oldest}


def spool_path(settings: Settings) -> Path:
    return settings.data_dir / SPOOL_FILE


_spools: dict[Path, TaskSpool] = {}
_producers: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def _new_lock_after_fork() -> None:
    # A thread of the parent may have held the lock when the process forked.
    global _lock
    _lock = threading.Lock()


os.register_at_fork(after_in_child=_new_lock_after_fork)


def get_spool(settings: Settings) -> TaskSpool:
    """Return the process's TaskSpool for the settings' data directory."""
    path = spool_path(settings)
    with _lock:
        spool = _spools.get(path)
        if spool is None:
            spool = _spools[path] = TaskSpool(path)
    return spool


def uses_redis(huey) -> bool:
    """Tell whether `huey` queues in Redis, the storage that spooling covers."""
    return isinstance(huey.storage, RedisStorage)


def producer_storage(huey):
    """Return the storage that pushes tasks: for Redis, a copy of the queue's
    storage class on a client with the producer's short timeouts."""
    storage = huey.storage
    if not isinstance(storage, RedisStorage):
        return storage

    with _lock:
        producer = _producers.get(storage)
        if producer is None:
            pool = ConnectionPool.from_url(
                huey.settings.redis_url,
                socket_connect_timeout=PRODUCER_CONNECT_TIMEOUT,
                socket_timeout=PRODUCER_SOCKET_TIMEOUT,
                retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
            )
            # Non-blocking, so that a dequeue by mistake cannot wait longer
            # than the socket timeout.
            producer = type(storage)(storage.name, blocking=False, connection_pool=pool)
            _producers[storage] = producer
    return producer


# Tasks this process spooled since its last successful push to Redis. The
# warning is logged when the count leaves 0, and the info line when it returns.
_spooled_in_outage = 0


def push_or_spool(huey, task_id: str, data: bytes, priority) -> str | None:
    """Push a serialized task to Redis after any spooled tasks, or spool it.

    Return None when the task is in Redis, else the reason it was spooled
    (for its audit event). Raise QueueUnavailable when Redis is unreachable
    and TSHJOBS_SPOOL_WHEN_REDIS_DOWN is false, or the spool cannot be
    written.
    """
    spool = get_spool(huey.settings)
    producer = producer_storage(huey)
    try:
        waiting = spool.has_rows(huey.name)
    except sqlite3.Error:
        # Without a readable spool there is no known backlog to keep order
        # with, and pushing beats failing the ERP's request.
        _log_spool_error("read", task_id)
        waiting = False

    if waiting:
        try:
            _drain(huey, spool, producer, PRODUCER_DRAIN_LIMIT)
            waiting = spool.has_rows(huey.name)
        except RedisError as exc:
            return _spool(huey, spool, task_id, data, priority, exc)
        except sqlite3.Error:
            _log_spool_error("drain", task_id)
            waiting = False
        if waiting:
            # Redis is up, so the consumers deliver the backlog soon; the
            # setting does not apply.
            _append(huey, spool, task_id, data, priority, REASON_BEHIND_SPOOL)
            return REASON_BEHIND_SPOOL

    try:
        producer.enqueue(data, priority)
    except RedisError as exc:
        return _spool(huey, spool, task_id, data, priority, exc)

    _end_outage()
    return None


def _spool(huey, spool, task_id, data, priority, exc: RedisError) -> str:
    if not huey.settings.spool_when_redis_down:
        raise QueueUnavailable(
            f"task {task_id} was not queued: Redis is unavailable ({exc}) and "
            "TSHJOBS_SPOOL_WHEN_REDIS_DOWN is false. Retry the call once Redis "
            "is back, or set TSHJOBS_SPOOL_WHEN_REDIS_DOWN=true."
        ) from exc

    _append(huey, spool, task_id, data, priority, REASON_REDIS_DOWN)
    _start_outage(spool, exc)
    return REASON_REDIS_DOWN


def _append(huey, spool, task_id, data, priority, reason) -> None:
    try:
        spool.append(huey.name, task_id, data, priority, reason)
    except sqlite3.Error as exc:
        raise QueueUnavailable(
            f"task {task_id} was not queued: {reason}, and the spool "
            f"{spool.path} could not be written ({exc}). Check that the data "
            "directory is writable and has free space."
        ) from exc


def _start_outage(spool: TaskSpool, exc: RedisError) -> None:
    global _spooled_in_outage
    with _lock:
        _spooled_in_outage += 1
        first = _spooled_in_outage == 1
    if first:
        logger.warning("Redis unavailable (%s); spooling new tasks to %s until "
                       "it is back", exc, spool.path)  # fmt: skip


def _end_outage() -> None:
    global _spooled_in_outage
    with _lock:
        spooled, _spooled_in_outage = _spooled_in_outage, 0
    if spooled:
        logger.info("Redis is reachable again; this process spooled %d tasks "
                    "meanwhile", spooled)  # fmt: skip


def _drain(huey, spool: TaskSpool, producer, limit: int | None) -> DrainResult:
    def check(data: bytes) -> None:
        huey.serializer.deserialize(data)

    result = spool.drain(huey.name, producer.enqueue, check, limit)
    if result.delivered or result.dropped:
        logger.info(
            "Delivered %d spooled tasks to Redis, dropped %d unreadable ones; "
            "%d still spooled", result.delivered, result.dropped,
            spool.count(huey.name),
        )  # fmt: skip
    return result


def drain_spool(huey, limit: int | None = None) -> int:
    """Push the tasks spooled for `huey`'s queue to its storage, oldest first,
    and return how many were pushed. Raise RedisError when Redis is still
    unreachable. The rows pushed before the error are deleted from the spool."""
    path = spool_path(huey.settings)
    if not path.exists():
        return 0

    spool = get_spool(huey.settings)
    if not spool.has_rows(huey.name):
        return 0
    return _drain(huey, spool, producer_storage(huey), limit).delivered


def drain_forever(huey, stop: threading.Event) -> None:
    """Drain the spool and replay kept audit writes now and every
    DRAIN_INTERVAL seconds, until `stop` is set. Runs in a consumer thread."""
    redis_down = replay_broken = False
    while True:
        try:
            drain_spool(huey)
            redis_down = False
        except RedisError as exc:
            if not redis_down:
                logger.warning(
                    "Spool drain failed, Redis unavailable: %s; retrying every %.0f s",
                    exc,
                    DRAIN_INTERVAL,
                )
            redis_down = True
        except sqlite3.Error:
            _log_spool_error("drain", None)

        # replay_pending logs the failures that may pass itself.
        try:
            huey.audit.replay_pending()
            replay_broken = False
        except sqlite3.Error:
            if not replay_broken:
                logger.exception("Replaying kept audit writes failed; retrying "
                                 "every %.0f s", DRAIN_INTERVAL)  # fmt: skip
            replay_broken = True

        if stop.wait(DRAIN_INTERVAL):
            return


def spool_backlog(settings: Settings) -> dict:
    """Return the tasks waiting in the spool, for the dashboard's /health:
    `pending` and `oldest_at` (see `TaskSpool.backlog`)."""
    return TaskSpool(spool_path(settings)).backlog()


def _log_dropped(row_id: int, task_id: str, exc: Exception, dropped: int) -> None:
    if dropped < DROPPED_ROWS_LOGGED:
        logger.error(
            "Dropped spooled row %d (task %s), which cannot be delivered: %s",
            row_id, task_id, exc, extra={"task_id": task_id},
        )  # fmt: skip


_spool_errors = 0


def _log_spool_error(what: str, task_id: str | None) -> None:
    """Log, from inside an except block, a spool that cannot be read or
    written: the first with its traceback, then one line per 100."""
    global _spool_errors
    _spool_errors += 1
    if _spool_errors == 1 or _spool_errors % 100 == 0:
        logger.exception("Spool %s failed (task %s); %d failures so far", what,
                         task_id, _spool_errors)  # fmt: skip
