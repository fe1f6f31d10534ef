"""Failed-login counting per username and client address.

Failures are rows in the appliance's SQLite database, so every gunicorn
worker reads the same count and a restart does not reset it.
"""

from __future__ import annotations

import logging
import math
import sqlite3
import time
from pathlib import Path

from tshjobs.users import connect_state

logger = logging.getLogger(__name__)

TABLE = "dashboard_login_failures"

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS {TABLE} (
    key TEXT NOT NULL,
    at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS {TABLE}_key ON {TABLE} (key, at);
"""


class LoginThrottle:
    """A limit of `max_failures` failed logins per key within `window`
    seconds. The key is the lower-cased username and the client address.

    A login calls `record_attempt` before it checks the password and `reset`
    after a success, so an attempt counts as a failure until it succeeds.
    """

    def __init__(self, path: Path, max_failures: int = 10, window: float = 600.0):
        self.path = Path(path)
        self.max_failures = max_failures
        self.window = window

    @staticmethod
    def key(username: str, address: str | None) -> str:
        return f"{username[:100].lower()}|{address or '-'}"

    def _connect(self) -> sqlite3.Connection:
        conn = connect_state(self.path)
        conn.executescript(_SCHEMA)
        return conn

    def record_attempt(self, key: str) -> int:
        """Count one login attempt of `key` and return 0, or return the
        seconds the key must wait when it already has `max_failures` in the
        window, counting nothing.

        The count and the insert run in one BEGIN IMMEDIATE transaction, so
        parallel logins cannot all pass the check before any of them is
        counted.
        """
        conn = self._connect()
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                wait = self._seconds_blocked(conn, key)
                if not wait:
                    now = time.time()
                    conn.execute(
                        f"INSERT INTO {TABLE} (key, at) VALUES (?, ?)", [key, now]
                    )
                    conn.execute(
                        f"DELETE FROM {TABLE} WHERE at <= ?", [now - self.window]
                    )
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        finally:
            conn.close()
        return wait

    def _seconds_blocked(self, conn: sqlite3.Connection, key: str) -> int:
        now = time.time()
        count, first = conn.execute(
            f"SELECT count(*), min(at) FROM {TABLE} WHERE key = ? AND at > ?",
            [key, now - self.window],
        ).fetchone()
        if count < self.max_failures:
            return 0

        # The oldest failure in the window leaves it first and frees a try.
        return max(1, math.ceil(first + self.window - now))

    def reset(self, key: str) -> None:
        conn = self._connect()
        try:
            conn.execute(f"DELETE FROM {TABLE} WHERE key = ?", [key])
        finally:
            conn.close()
