"""Create and open the appliance's own SQLite files.

The audit log, its retry buffer, the spool and the email sent log share one
set-up. The file is created with a chosen permission mode before SQLite opens
it, each connection runs in autocommit mode (isolation_level=None) with a WAL
journal, and each thread of each process keeps a connection of its own. The
busy timeout, the other pragmas and the file mode differ from file to file,
so they are parameters.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Generic, TypeVar

ConnectionT = TypeVar("ConnectionT")


def create_file(path: Path, mode: int, *, override_umask: bool = True) -> None:
    """Create an empty file with permission `mode`, and its parent directories,
    unless the file exists. With `override_umask`, the mode is set again after
    the file is created, because the process's umask may have cleared bits of
    it. Without, the umask applies."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:
        return
    os.close(fd)
    if override_umask:
        os.chmod(path, mode)


def create_group_writable(path: Path) -> None:
    """Create an empty SQLite file that the owner's group may write, unless it
    exists. The ERP's user, a member of that group, writes the queue and the
    `queued` audit rows; SQLite gives its -wal and -shm files the same mode."""
    create_file(path, 0o660)


def connect(
    path: Path, *, timeout: float, pragmas: Sequence[str] = ()
) -> sqlite3.Connection:
    """Open `path` in autocommit mode with a WAL journal, waiting up to
    `timeout` seconds for another connection's lock. Then run
    `PRAGMA <pragma>` for each item of `pragmas`, in order."""
    conn = sqlite3.connect(path, timeout=timeout, isolation_level=None)
    _set_wal(conn, timeout)
    for pragma in pragmas:
        conn.execute(f"PRAGMA {pragma}")
    return conn


def _set_wal(conn: sqlite3.Connection, timeout: float) -> None:
    """Switch the file to a WAL journal. The switch needs the file to
    itself, and SQLite does not wait for that, so connections opening a new
    file together try again for up to `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                conn.close()
                raise
            time.sleep(0.01)


class PerThreadConnection(Generic[ConnectionT]):
    """A connection, or an object that wraps one, opened by `open_connection`
    on first use in each thread. A forked child process opens its own, because
    a SQLite connection must not be used on both sides of a fork."""

    def __init__(self, open_connection: Callable[[], ConnectionT]):
        self._open_connection = open_connection
        self._local = threading.local()

    def get(self) -> ConnectionT:
        conn = getattr(self._local, "conn", None)
        if conn is None or getattr(self._local, "pid", None) != os.getpid():
            conn = self._open_connection()
            self._local.conn = conn
            self._local.pid = os.getpid()
        return conn

    def discard(self) -> None:
        """Drop this thread's connection, so that the next `get` opens a new
        one. SQLite opens a file it cannot write read-only and keeps it so,
        even after the file becomes writable again."""
        self._local.conn = None


def check_readable(path: Path, timeout: float = 2.0) -> None:
    """Open an existing SQLite file read-only and read its schema. Raise
    sqlite3.DatabaseError, naming the file, when it is not a database or is
    damaged; a missing file passes, because its owner creates it."""
    if not path.exists():
        return
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=timeout)
        try:
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        raise sqlite3.DatabaseError(f"{path}: {exc}") from None
