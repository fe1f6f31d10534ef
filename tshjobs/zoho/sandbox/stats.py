"""Counters of the Books API requests the sandbox replied to or dropped."""

from __future__ import annotations

import threading
from collections import Counter


class RequestStats:
    """Books API requests by outcome; safe to share between threads."""

    def __init__(self):
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self.requests = 0
            self.by_status: Counter[int] = Counter()
            self.rate_limited = 0
            self.dropped = 0

    def record(self, status: int | None) -> None:
        """Count one request; status None means the connection was dropped
        without a reply."""
        with self._lock:
            self.requests += 1
            if status is None:
                self.dropped += 1
                return
            self.by_status[status] += 1
            if status == 429:
                self.rate_limited += 1

    def snapshot(self) -> dict:
        with self._lock:
            return {
                "requests": self.requests,
                "by_status": dict(self.by_status),
                "rate_limited": self.rate_limited,
                "dropped": self.dropped,
            }
