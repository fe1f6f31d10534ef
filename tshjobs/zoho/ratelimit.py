"""The Zoho rate limiter shared by every worker and host.

Zoho Books allows 100 calls per minute per organisation (more get HTTP 429,
with no Retry-After header), a daily number of calls that depends on the
plan, and a number of calls in progress at once. The limiter counts all
three in the shared store (Redis, or zoho.db without Redis):

- Calls per fixed clock window (a minute by default), so that every worker
  starts and waits for the same windows. A 429 marks the current window as
  spent, so every worker waits for the next one instead of sending more.
- Calls per day, until midnight in the organisation's time zone. Once Zoho
  has sent its X-Rate-Limit-Reset and X-Rate-Limit-Remaining headers, the
  day ends at that reset time and no more than the remaining calls are made.
- Concurrent calls, as slots that expire, so that a killed worker's slot
  frees itself.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import math
import random
import time
import uuid
import zoneinfo
from dataclasses import dataclass

from tshjobs.errors import ZohoDailyLimitReached, ZohoNotConfigured, ZohoRateLimited
from tshjobs.settings import Settings
from tshjobs.zoho.config import ZohoConfig
from tshjobs.zoho.ratelimit_stores import (
    SCHEMA,
    Decision,
    RedisLimitStore,
    Request,
    SqliteLimitStore,
)
from tshjobs.zoho.store import SqliteFile, redis_client, sqlite_path

logger = logging.getLogger(__name__)

# Seconds between two attempts while every call slot is taken.
SLOT_POLL_INTERVAL = 0.05


@dataclass(frozen=True)
class RateLimitStatus:
    """The daily count of Zoho calls, for the dashboard."""

    daily_used: int
    daily_limit: int
    # Zoho's X-Rate-Limit-Remaining less the calls made since; None until
    # Zoho has sent it today.
    daily_remaining: int | None
    resets_at: datetime.datetime | None
    daily_limit_reached: bool
    message: str


class RateLimiter:
    """Takes a call slot for one Zoho organisation before each call.

    `window_seconds` is the length of the fixed windows of
    `requests_per_window` calls (60 for Zoho; tests use shorter ones).
    `slot_ttl` is how long a slot lives when its call never releases it, and
    `max_wait` how long `acquire` waits before it raises ZohoRateLimited.
    """

    def __init__(
        self,
        store,
        organization_id: str,
        *,
        requests_per_window: int,
        daily_limit: int,
        max_concurrent: int,
        window_seconds: float = 60.0,
        slot_ttl: float = 70.0,
        max_wait: float | None = None,
        time_zone: str = "UTC",
        clock=time.time,
    ):
        self.store = store
        self.organization_id = organization_id
        self.requests_per_window = requests_per_window
        self.daily_limit = daily_limit
        self.max_concurrent = max_concurrent
        self.window_seconds = window_seconds
        self.slot_ttl = slot_ttl
        self.max_wait = 2 * window_seconds if max_wait is None else max_wait
        self.clock = clock
        self.time_zone = time_zone
        # A call is not started this close to the end of a window: it could
        # reach Zoho in the next window, which it would then overfill.
        self.window_guard = min(1.0, window_seconds * 0.05)
        # Waiters for the next window start at random times within this
        # spread, so that they do not all call in the same instant.
        self.jitter = min(2.0, window_seconds * 0.1)

    @property
    def time_zone(self) -> str:
        return self._zone.key

    @time_zone.setter
    def time_zone(self, name: str) -> None:
        try:
            self._zone = zoneinfo.ZoneInfo(name)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            logger.warning("Unknown Zoho time zone %r; counting days in UTC", name)
            self._zone = zoneinfo.ZoneInfo("UTC")

    def acquire(self, method: str = "", path: str = "") -> str:
        """Wait until a call may start, take a slot for it and return the
        slot's id, for `release`.

        Raises ZohoDailyLimitReached at once when the daily limit is reached,
        and ZohoRateLimited when no slot came free within `max_wait`."""
        slot_id = uuid.uuid4().hex
        deadline = self.clock() + self.max_wait

        while True:
            request = self._request(slot_id)
            if request.window_end - request.now < self.window_guard:
                decision, at = Decision.WINDOW_FULL, request.window_end
            else:
                decision, at = self.store.take(request)

            if decision == Decision.TAKEN:
                return slot_id
            if decision == Decision.DAILY_LIMIT:
                raise self._daily_error(at, method, path)

            if decision == Decision.WINDOW_FULL:
                wake_at = at + random.uniform(0, self.jitter)
            else:
                wake_at = min(at, request.now + SLOT_POLL_INTERVAL)
            if wake_at > deadline:
                if decision == Decision.WINDOW_FULL:
                    at = self._turn(request)
                raise ZohoRateLimited(
                    f"no Zoho call slot came free within {self.max_wait:g} s",
                    retry_at=_utc(at),
                    method=method,
                    path=path,
                )
            time.sleep(max(0.0, wake_at - self.clock()))

    def release(self, slot_id: str) -> None:
        self.store.release(self.organization_id, slot_id)

    @contextlib.contextmanager
    def slot(self, method: str = "", path: str = ""):
        """Hold a call slot for the duration of the block."""
        slot_id = self.acquire(method, path)
        try:
            yield slot_id
        finally:
            self.release(slot_id)

    def mark_window_spent(self) -> datetime.datetime:
        """Count the current window as full after Zoho responded with 429, so that
        no worker calls again before the next window; return its start."""
        now = self.clock()
        start, end = self._window(now)
        self.store.fill_window(self.organization_id, start, end,
                               self.requests_per_window)  # fmt: skip
        return _utc(end)

    def record_headers(self, headers) -> None:
        """Store the daily count Zoho reports in X-Rate-Limit-Remaining and
        X-Rate-Limit-Reset (seconds until the daily count resets)."""
        remaining = _header_int(headers, "X-Rate-Limit-Remaining")
        if remaining is None:
            return

        reset_in = _header_int(headers, "X-Rate-Limit-Reset")
        if reset_in is None:
            resets_at = self._daily_reset()
        else:
            resets_at = self.clock() + reset_in
        self.store.record_daily(
            self.organization_id, self.clock(), max(0, remaining), resets_at
        )

    def mark_daily_spent(self) -> datetime.datetime:
        """Count the day as spent after Zoho responded that the daily limit is
        reached; return when the daily count resets."""
        resets_at = self._daily_reset()
        self.store.record_daily(self.organization_id, self.clock(), 0, resets_at)
        return _utc(resets_at)

    def status(self) -> RateLimitStatus:
        daily = self.store.daily(self.organization_id)
        now = self.clock()
        if daily.resets_at <= now:
            daily = type(daily)(used=0, remaining=-1, resets_at=0.0)

        reached = daily.used >= self.daily_limit or daily.remaining == 0
        resets_at = _utc(daily.resets_at) if daily.resets_at else None
        message = ""
        if reached:
            local = resets_at.astimezone(self._zone)
            message = (
                f"daily Zoho limit reached, resumes at "
                f"{local:%Y-%m-%d %H:%M} {self.time_zone}"
            )
        return RateLimitStatus(
            daily_used=daily.used,
            daily_limit=self.daily_limit,
            daily_remaining=None if daily.remaining < 0 else daily.remaining,
            resets_at=resets_at,
            daily_limit_reached=reached,
            message=message,
        )

    def _turn(self, request: Request) -> float:
        """Return when a caller turned away from a full window should try
        again. The callers turned away in one window are spread evenly over
        the following windows, `requests_per_window` to a window, so that they
        do not all come back at once and most find a free slot then."""
        position = self.store.take_turn(
            self.organization_id, request.window_start, request.window_end
        )
        windows_ahead, place = divmod(position, self.requests_per_window)
        share = place / self.requests_per_window
        usable = self.window_seconds - self.window_guard
        return (
            request.window_end
            + windows_ahead * self.window_seconds
            + share * usable
            + random.uniform(0, self.jitter * 0.1)
        )

    def _request(self, slot_id: str) -> Request:
        now = self.clock()
        start, end = self._window(now)
        return Request(
            organization_id=self.organization_id,
            now=now,
            window_start=start,
            window_end=end,
            requests_per_window=self.requests_per_window,
            max_concurrent=self.max_concurrent,
            slot_id=slot_id,
            slot_expires_at=now + self.slot_ttl,
            daily_limit=self.daily_limit,
            day_end=self._day_end(now),
        )

    def _daily_reset(self) -> float:
        """Return when the current day's count resets: the stored time, or
        midnight in the organisation's time zone once that has passed."""
        now = self.clock()
        resets_at = self.store.daily(self.organization_id).resets_at
        return resets_at if resets_at > now else self._day_end(now)

    def _window(self, now: float) -> tuple[float, float]:
        start = math.floor(now / self.window_seconds) * self.window_seconds
        return start, start + self.window_seconds

    def _day_end(self, now: float) -> float:
        local = datetime.datetime.fromtimestamp(now, self._zone)
        midnight = datetime.datetime.combine(
            local.date() + datetime.timedelta(days=1), datetime.time(), self._zone
        )
        return midnight.timestamp()

    def _daily_error(self, resets_at: float, method, path) -> ZohoDailyLimitReached:
        local = _utc(resets_at).astimezone(self._zone)
        return ZohoDailyLimitReached(
            f"the daily Zoho call limit is reached; it resets at "
            f"{local:%Y-%m-%d %H:%M} {self.time_zone}",
            retry_at=_utc(resets_at),
            method=method,
            path=path,
        )


def limit_store(settings: Settings):
    """Return the counter store the settings choose: Redis or zoho.db."""
    client = redis_client(settings)
    if client is not None:
        return RedisLimitStore(client)
    return SqliteLimitStore(SqliteFile(sqlite_path(settings), SCHEMA))


def rate_limiter(settings: Settings, **options) -> RateLimiter:
    """Return the RateLimiter of the configured organisation, or raise
    ZohoNotConfigured. `options` go to RateLimiter."""
    config = ZohoConfig.from_settings(settings)
    options.setdefault("slot_ttl", 2 * config.timeout + 10)
    return RateLimiter(
        limit_store(settings),
        config.organization_id,
        requests_per_window=config.requests_per_minute,
        daily_limit=config.daily_limit,
        max_concurrent=config.max_concurrent,
        **options,
    )


def rate_limit_status(settings: Settings) -> RateLimitStatus | None:
    """Return the daily count for the dashboard, or None without Zoho."""
    try:
        return rate_limiter(settings).status()
    except ZohoNotConfigured:
        return None


def _header_int(headers, name: str) -> int | None:
    try:
        return int(headers.get(name, ""))
    except ValueError:
        return None


def _utc(timestamp: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(timestamp, datetime.UTC)
