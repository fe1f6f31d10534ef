"""API limits of the organisation: per window, per day and in progress at once.

Windows are fixed: window n covers [n * window_seconds, (n + 1) *
window_seconds) of Unix time, so 60-second windows are clock minutes. The
day ends at midnight in the organisation's time zone.

Only admitted requests count towards the limits: a request rejected with 429
does not use up quota, so a client that waits for the next window gets in.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from tshjobs.zoho.sandbox.config import SandboxConfig
from tshjobs.zoho.sandbox.errors import ApiError, daily_limit_reached, too_many_requests

# Finished windows kept for stats()["requests_per_window"].
MAX_WINDOWS_KEPT = 10_000


class RequestLimits:
    """Counts and admits API requests; safe to share between threads."""

    def __init__(self, config: SandboxConfig, clock=time.time):
        self.config = config
        self.clock = clock
        self._lock = threading.Lock()
        self.in_flight = 0
        self.reset()

    def reset(self) -> None:
        """Zero the counts; requests in progress stay counted as in flight."""
        with self._lock:
            self.max_in_flight = self.in_flight
            self._window: int | None = None
            self._window_count = 0
            self.finished_windows: deque[int] = deque(maxlen=MAX_WINDOWS_KEPT)
            self._day: str | None = None
            self.day_count = 0

    def enter(self) -> ApiError | None:
        """Admit one request and count it, or return the 429 to send.

        Call `leave()` after the reply to an admitted request.
        """
        with self._lock:
            now = self.clock()
            self._roll_window(now)
            self._roll_day(now)
            config = self.config

            if self.day_count >= config.daily_limit:
                return daily_limit_reached(config.daily_limit)
            if self._window_count >= config.requests_per_minute:
                return too_many_requests()
            if self.in_flight >= config.max_concurrent:
                return too_many_requests()

            self._window_count += 1
            self.day_count += 1
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            return None

    def leave(self) -> None:
        with self._lock:
            self.in_flight -= 1

    def _roll_window(self, now: float) -> None:
        window = math.floor(now / self.config.window_seconds)
        if self._window is None:
            self._window = window
        elif window != self._window:
            self.finished_windows.append(self._window_count)
            # Windows with no request at all count as zero, up to the
            # number of windows kept.
            idle = min(window - self._window - 1, MAX_WINDOWS_KEPT)
            self.finished_windows.extend([0] * max(idle, 0))
            self._window = window
            self._window_count = 0

    def _roll_day(self, now: float) -> None:
        day = self._local_time(now).date().isoformat()
        if day != self._day:
            self._day = day
            self.day_count = 0

    def _local_time(self, now: float) -> datetime:
        return datetime.fromtimestamp(now, ZoneInfo(self.config.time_zone))

    def headers(self) -> dict[str, str]:
        """Return the X-Rate-Limit-* headers of the daily quota."""
        with self._lock:
            now = self.clock()
            self._roll_day(now)
            local = self._local_time(now)
            midnight = (local + timedelta(days=1)).replace(
                hour=0, minute=0, second=0, microsecond=0
            )
            remaining = max(self.config.daily_limit - self.day_count, 0)
            return {
                "X-Rate-Limit-Limit": str(self.config.daily_limit),
                "X-Rate-Limit-Remaining": str(remaining),
                "X-Rate-Limit-Reset": str(math.ceil(midnight.timestamp() - now)),
            }

    def snapshot(self) -> dict:
        with self._lock:
            return {
                "in_flight": self.in_flight,
                "max_concurrent_seen": self.max_in_flight,
                "requests_in_window": self._window_count,
                "requests_per_window": list(self.finished_windows),
                "requests_today": self.day_count,
            }
