"""Failed-login counting per username and client address.

Failures are rows in the appliance's SQLite database, so every gunicorn
worker reads the same count and a restart does not reset it.
"""

from __future__ import annotations

import logging
import math
import time
from contextlib import closing
from pathlib import Path

import sqlite_utils

logger = logging.getLogger(__name__)

TABLE = "dashboard_login_failures"

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS {TABLE} (
    key TEXT NOT NULL,
    at REAL NOT NULL
)
"""
_INDEX = f"CREATE INDEX IF NOT EXISTS {TABLE}_key ON {TABLE} (key, at)"


class LoginThrottle:
    """A limit of `max_failures` failed logins per key within `window`
    seconds. The key is the lower-cased username and the client address."""

    def __init__(self, path: Path, max_failures: int = 10, window: float = 600.0):
        self.path = Path(path)
        self.max_failures = max_failures
        self.window = window

    @staticmethod
    def key(username: str, address: str | None) -> str:
        return f"{username[:100].lower()}|{address or '-'}"

    def _open(self) -> sqlite_utils.Database:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite_utils.Database(self.path)
        db.execute(_SCHEMA)
        db.execute(_INDEX)
        return db

    def seconds_blocked(self, key: str) -> int:
        """Return how many seconds the key must wait before it may try again,
        or 0 when it may try now."""
        since = time.time() - self.window
        with closing(self._open()) as db:
            rows = list(
                db.query(
                    f"SELECT count(*) AS n, min(at) AS first FROM {TABLE} "
                    "WHERE key = ? AND at > ?",
                    [key, since],
                )
            )
        count, first = rows[0]["n"], rows[0]["first"]
        if count < self.max_failures:
            return 0

        # The oldest failure in the window leaves it first and frees a try.
        return max(1, math.ceil(first + self.window - time.time()))

    def record_failure(self, key: str) -> None:
        now = time.time()
        with closing(self._open()) as db:
            db.execute(f"INSERT INTO {TABLE} (key, at) VALUES (?, ?)", [key, now])
            db.execute(f"DELETE FROM {TABLE} WHERE at <= ?", [now - self.window])

    def reset(self, key: str) -> None:
        with closing(self._open()) as db:
            db.execute(f"DELETE FROM {TABLE} WHERE key = ?", [key])
