"""Counters of the Zoho rate limiter: a Redis Lua script or SQLite tables.

Both stores take a call in one atomic step that checks, in this order, the
daily count, the concurrent call slots and the current window's count, and
returns one of the `Decision` values with the time it concerns.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import redis

from tshjobs.zoho.store import REDIS_PREFIX, SqliteFile


class Decision(enum.IntEnum):
    """The outcome of one attempt to take a call."""

    TAKEN = 0
    WINDOW_FULL = 1  # `at`: the end of the current window
    SLOTS_FULL = 2  # `at`: when the first slot expires
    DAILY_LIMIT = 3  # `at`: when the daily count resets


@dataclass(frozen=True)
class Request:
    """The limits and times of one attempt to take a call. Times are Unix
    timestamps."""

    organization_id: str
    now: float
    window_start: float
    window_end: float
    requests_per_window: int
    max_concurrent: int
    slot_id: str
    slot_expires_at: float
    daily_limit: int
    # The end of the current day in the organisation's time zone, used when
    # Zoho has sent no X-Rate-Limit-Reset for the day yet.
    day_end: float


@dataclass(frozen=True)
class DailyCount:
    """The daily calls counted so far. `remaining` is Zoho's
    X-Rate-Limit-Remaining less the calls made since, or -1 when unknown."""

    used: int
    remaining: int
    resets_at: float


class RedisLimitStore:
    """Counters in Redis, shared by every worker on every host."""

    # KEYS: window counter, slot set, daily hash.
    # ARGV: now, window end, requests per window, max concurrent, slot id,
    # slot expiry, daily limit, day end.
    _TAKE = """
        local now = tonumber(ARGV[1])
        local resets_at = tonumber(redis.call('HGET', KEYS[3], 'resets_at') or '0')
        if resets_at <= now then
            resets_at = tonumber(ARGV[8])
            redis.call('HSET', KEYS[3], 'resets_at', ARGV[8], 'used', 0,
                       'remaining', -1)
        end
        local used = tonumber(redis.call('HGET', KEYS[3], 'used') or '0')
        local remaining = tonumber(redis.call('HGET', KEYS[3], 'remaining') or '-1')
        if used >= tonumber(ARGV[7]) or remaining == 0 then
            return {3, tostring(resets_at)}
        end

        redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
        if redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[4]) then
            local first = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
            return {2, first[2]}
        end

        local count = tonumber(redis.call('GET', KEYS[1]) or '0')
        if count >= tonumber(ARGV[3]) then
            return {1, ARGV[2]}
        end

        redis.call('INCR', KEYS[1])
        redis.call('EXPIREAT', KEYS[1], math.ceil(tonumber(ARGV[2])) + 60)
        redis.call('ZADD', KEYS[2], ARGV[6], ARGV[5])
        redis.call('HINCRBY', KEYS[3], 'used', 1)
        if remaining > 0 then
            redis.call('HINCRBY', KEYS[3], 'remaining', -1)
        end
        return {0, '0'}
    """

    # KEYS: daily hash. ARGV: now, remaining, resets at. The count restarts
    # when the stored day is over.
    _RECORD_DAILY = """
        local resets_at = tonumber(redis.call('HGET', KEYS[1], 'resets_at') or '0')
        if resets_at <= tonumber(ARGV[1]) then
            redis.call('HSET', KEYS[1], 'used', 0)
        end
        redis.call('HSET', KEYS[1], 'remaining', ARGV[2], 'resets_at', ARGV[3])
        return 0
    """

    def __init__(self, client: redis.Redis):
        self.redis = client
        self._take = client.register_script(self._TAKE)
        self._record_daily = client.register_script(self._RECORD_DAILY)

    def take(self, request: Request) -> tuple[Decision, float]:
        organization_id = request.organization_id
        keys = [
            self._window_key(organization_id, request.window_start),
            REDIS_PREFIX + "slots:" + organization_id,
            REDIS_PREFIX + "daily:" + organization_id,
        ]
        args = [request.now, request.window_end, request.requests_per_window,
                request.max_concurrent, request.slot_id, request.slot_expires_at,
                request.daily_limit, request.day_end]  # fmt: skip
        decision, at = self._take(keys=keys, args=args)
        return Decision(int(decision)), float(at)

    def release(self, organization_id: str, slot_id: str) -> None:
        self.redis.zrem(REDIS_PREFIX + "slots:" + organization_id, slot_id)

    def fill_window(self, organization_id, window_start, window_end, limit) -> None:
        key = self._window_key(organization_id, window_start)
        self.redis.set(key, limit, exat=int(window_end) + 60)

    def record_daily(self, organization_id, now, remaining, resets_at) -> None:
        self._record_daily(
            keys=[REDIS_PREFIX + "daily:" + organization_id],
            args=[now, remaining, resets_at],
        )

    def daily(self, organization_id: str) -> DailyCount:
        stored = self.redis.hgetall(REDIS_PREFIX + "daily:" + organization_id)
        return DailyCount(
            used=int(stored.get(b"used", 0)),
            remaining=int(stored.get(b"remaining", -1)),
            resets_at=float(stored.get(b"resets_at", 0)),
        )

    def take_turn(self, organization_id, window_start, window_end) -> int:
        """Count one more caller turned away in this window; return how many
        were turned away before it."""
        key = f"{REDIS_PREFIX}overflow:{organization_id}:{window_start:.3f}"
        pipe = self.redis.pipeline()
        pipe.incr(key)
        pipe.expireat(key, int(window_end) + 60)
        return int(pipe.execute()[0]) - 1

    def _window_key(self, organization_id: str, window_start: float) -> str:
        return f"{REDIS_PREFIX}window:{organization_id}:{window_start:.3f}"


SCHEMA = """
CREATE TABLE IF NOT EXISTS zoho_rate_window (
    organization_id TEXT NOT NULL,
    window_start REAL NOT NULL,
    count INTEGER NOT NULL,
    PRIMARY KEY (organization_id, window_start)
);
CREATE TABLE IF NOT EXISTS zoho_rate_overflow (
    organization_id TEXT NOT NULL,
    window_start REAL NOT NULL,
    count INTEGER NOT NULL,
    PRIMARY KEY (organization_id, window_start)
);
CREATE TABLE IF NOT EXISTS zoho_rate_slot (
    slot_id TEXT PRIMARY KEY,
    organization_id TEXT NOT NULL,
    expires_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS zoho_rate_daily (
    organization_id TEXT PRIMARY KEY,
    used INTEGER NOT NULL DEFAULT 0,
    remaining INTEGER NOT NULL DEFAULT -1,
    resets_at REAL NOT NULL DEFAULT 0
);
"""


class SqliteLimitStore:
    """Counters in zoho.db, shared by the processes of one host."""

    def __init__(self, file: SqliteFile):
        self.file = file

    def take(self, request: Request) -> tuple[Decision, float]:
        with self.file.transaction() as conn:
            daily = self._current_day(conn, request)
            if daily.used >= request.daily_limit or daily.remaining == 0:
                return Decision.DAILY_LIMIT, daily.resets_at

            first_expiry = self._live_slots(conn, request)
            if first_expiry is not None:
                return Decision.SLOTS_FULL, first_expiry

            count = conn.execute(
                "SELECT count FROM zoho_rate_window "
                "WHERE organization_id = ? AND window_start = ?",
                (request.organization_id, request.window_start),
            ).fetchone()
            if count is not None and count[0] >= request.requests_per_window:
                return Decision.WINDOW_FULL, request.window_end

            self._count_call(conn, request)
            return Decision.TAKEN, 0.0

    def release(self, organization_id: str, slot_id: str) -> None:
        with self.file.transaction() as conn:
            conn.execute("DELETE FROM zoho_rate_slot WHERE slot_id = ?", (slot_id,))

    def take_turn(self, organization_id, window_start, window_end) -> int:
        """Count one more caller turned away in this window; return how many
        were turned away before it."""
        with self.file.transaction() as conn:
            conn.execute(
                "DELETE FROM zoho_rate_overflow WHERE window_start < ?",
                (window_start,),
            )
            count = conn.execute(
                "INSERT INTO zoho_rate_overflow (organization_id, window_start, "
                "count) VALUES (?, ?, 1) ON CONFLICT DO UPDATE SET count = count + 1"
                " RETURNING count",
                (organization_id, window_start),
            ).fetchone()[0]
        return count - 1

    def fill_window(self, organization_id, window_start, window_end, limit) -> None:
        with self.file.transaction() as conn:
            conn.execute(
                "INSERT INTO zoho_rate_window (organization_id, window_start, count) "
                "VALUES (?, ?, ?) ON CONFLICT DO UPDATE SET count = excluded.count",
                (organization_id, window_start, limit),
            )

    def record_daily(self, organization_id, now, remaining, resets_at) -> None:
        """Store Zoho's daily count; the count restarts when the stored day
        is over."""
        with self.file.transaction() as conn:
            conn.execute(
                "INSERT INTO zoho_rate_daily (organization_id, remaining, resets_at) "
                "VALUES (?, ?, ?) ON CONFLICT DO UPDATE SET "
                "used = CASE WHEN resets_at <= ? THEN 0 ELSE used END, "
                "remaining = excluded.remaining, resets_at = excluded.resets_at",
                (organization_id, remaining, resets_at, now),
            )

    def daily(self, organization_id: str) -> DailyCount:
        rows = self.file.read(
            "SELECT used, remaining, resets_at FROM zoho_rate_daily "
            "WHERE organization_id = ?",
            (organization_id,),
        )
        if not rows:
            return DailyCount(used=0, remaining=-1, resets_at=0.0)
        return DailyCount(*rows[0])

    def _current_day(self, conn, request: Request) -> DailyCount:
        row = conn.execute(
            "SELECT used, remaining, resets_at FROM zoho_rate_daily "
            "WHERE organization_id = ?",
            (request.organization_id,),
        ).fetchone()
        if row is not None and row["resets_at"] > request.now:
            return DailyCount(*row)

        conn.execute(
            "INSERT INTO zoho_rate_daily (organization_id, used, remaining, resets_at) "
            "VALUES (?, 0, -1, ?) ON CONFLICT DO UPDATE SET used = 0, "
            "remaining = -1, resets_at = excluded.resets_at",
            (request.organization_id, request.day_end),
        )
        return DailyCount(used=0, remaining=-1, resets_at=request.day_end)

    def _live_slots(self, conn, request: Request) -> float | None:
        """Drop expired slots; return when the first live one expires if all
        are taken, else None."""
        conn.execute(
            "DELETE FROM zoho_rate_slot WHERE organization_id = ? AND expires_at <= ?",
            (request.organization_id, request.now),
        )
        count, first_expiry = conn.execute(
            "SELECT count(*), min(expires_at) FROM zoho_rate_slot "
            "WHERE organization_id = ?",
            (request.organization_id,),
        ).fetchone()
        return first_expiry if count >= request.max_concurrent else None

    def _count_call(self, conn, request: Request) -> None:
        conn.execute(
            "INSERT INTO zoho_rate_window (organization_id, window_start, count) "
            "VALUES (?, ?, 1) ON CONFLICT DO UPDATE SET count = count + 1",
            (request.organization_id, request.window_start),
        )
        conn.execute(
            "DELETE FROM zoho_rate_window WHERE organization_id = ? "
            "AND window_start < ?",
            (request.organization_id, request.window_start - 3600),
        )
        conn.execute(
            "INSERT INTO zoho_rate_slot (slot_id, organization_id, expires_at) "
            "VALUES (?, ?, ?)",
            (request.slot_id, request.organization_id, request.slot_expires_at),
        )
        conn.execute(
            "UPDATE zoho_rate_daily SET used = used + 1, remaining = CASE "
            "WHEN remaining > 0 THEN remaining - 1 ELSE remaining END "
            "WHERE organization_id = ?",
            (request.organization_id,),
        )
