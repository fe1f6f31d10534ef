"""The store of the Zoho state that all processes share: Redis or SQLite.

With TSHJOBS_REDIS_URL set, the access token and the rate limiter's counters
are Redis keys under `tshjobs:zoho:`, so every worker on every host shares
them. Without it they are tables in `zoho.db` in the data directory (mode
0600, because it contains the access token), shared by the processes of one
host.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
from pathlib import Path

import redis

from tshjobs.settings import Settings

REDIS_PREFIX = "tshjobs:zoho:"
SQLITE_FILE = "zoho.db"

# Seconds a SQLite statement waits for another process's write transaction.
# Every transaction here is a few statements, never a network call.
SQLITE_BUSY_TIMEOUT = 30.0

_schemas_created: set[tuple[str, str]] = set()
_schemas_lock = threading.Lock()


def redis_client(settings: Settings) -> redis.Redis | None:
    """Return a Redis client for the shared state, or None to use SQLite."""
    if not settings.redis_url:
        return None
    return redis.Redis.from_url(
        settings.redis_url, socket_timeout=10, socket_connect_timeout=5
    )


def sqlite_path(settings: Settings) -> Path:
    return settings.data_dir / SQLITE_FILE


class SqliteFile:
    """A SQLite file of Zoho state; each transaction opens a new connection,
    so an instance may be used from any thread and after a fork."""

    def __init__(self, path: Path, schema: str):
        self.path = path
        self.schema = schema

    @contextlib.contextmanager
    def transaction(self):
        """Run the block in a `BEGIN IMMEDIATE` transaction, which takes the
        file's write lock at once: two processes cannot interleave their
        read-then-write steps."""
        conn = self._connect()
        try:
            conn.execute("BEGIN IMMEDIATE")
            yield conn
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        finally:
            conn.close()

    def read(self, sql: str, parameters=()) -> list[sqlite3.Row]:
        conn = self._connect()
        try:
            return conn.execute(sql, parameters).fetchall()
        finally:
            conn.close()

    def _connect(self) -> sqlite3.Connection:
        self._create()
        conn = sqlite3.connect(
            self.path, timeout=SQLITE_BUSY_TIMEOUT, isolation_level=None
        )
        conn.row_factory = sqlite3.Row
        return conn

    def _create(self) -> None:
        key = (str(self.path), self.schema)
        if key in _schemas_created:
            return

        with _schemas_lock:
            create_private_file(self.path)
            conn = sqlite3.connect(self.path, timeout=SQLITE_BUSY_TIMEOUT)
            try:
                _use_wal(conn)
                conn.executescript(self.schema)
            finally:
                conn.close()
            _schemas_created.add(key)


def _use_wal(conn: sqlite3.Connection) -> None:
    """Switch the file to write-ahead logging, so that reads do not wait for
    a write transaction. The switch fails with "database is locked" when
    processes start together, so it is retried until one of them made it."""
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT
    while True:
        try:
            if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def create_private_file(path: Path) -> None:
    """Create an empty file that only its owner may read, unless it exists.
    SQLite gives its -wal and -shm files the same mode."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    os.close(fd)
    os.chmod(path, 0o600)
