"""Storage of the shared access token: a Redis hash or a SQLite row.

Both stores keep the same record under the credentials id (see
`ZohoConfig.credentials_id`), a refresh lock with an expiry, and the log of
token requests that enforces the token request budget.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import asdict, dataclass, fields

import redis

from tshjobs.zoho.store import REDIS_PREFIX, SqliteFile


@dataclass
class TokenRecord:
    """The stored access token of one set of credentials and its history.
    Times are Unix timestamps; 0 means never."""

    access_token: str = ""
    api_url: str = ""
    expires_at: float = 0.0
    refreshed_at: float = 0.0
    last_error: str = ""
    last_error_at: float = 0.0
    # Why no token may be requested until the settings change: "" (none),
    # "reauthorization" (invalid_code) or "data_centre" (api_domain mismatch).
    blocked: str = ""


class RedisTokenStore:
    """Token records in Redis hashes, shared by every host."""

    _UNLOCK = """
        if redis.call('GET', KEYS[1]) == ARGV[1] then
            return redis.call('DEL', KEYS[1])
        end
        return 0
    """
    # Returns nil when a request may be made (and logs it), or the time at
    # which the oldest logged request leaves the window.
    _TAKE_REQUEST = """
        local now, limit, window = tonumber(ARGV[1]), tonumber(ARGV[2]),
            tonumber(ARGV[3])
        redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
        if redis.call('ZCARD', KEYS[1]) >= limit then
            local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
            return tostring(tonumber(oldest[2]) + window)
        end
        redis.call('ZADD', KEYS[1], now, ARGV[4])
        redis.call('EXPIRE', KEYS[1], math.ceil(window) + 60)
        return false
    """
    _FILL_REQUESTS = """
        local now, limit, window = tonumber(ARGV[1]), tonumber(ARGV[2]),
            tonumber(ARGV[3])
        redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
        for i = redis.call('ZCARD', KEYS[1]) + 1, limit do
            redis.call('ZADD', KEYS[1], now, ARGV[4] .. ':' .. i)
        end
        redis.call('EXPIRE', KEYS[1], math.ceil(window) + 60)
        return 0
    """

    def __init__(self, client: redis.Redis):
        self.redis = client
        self._unlock = client.register_script(self._UNLOCK)
        self._take_request = client.register_script(self._TAKE_REQUEST)
        self._fill_requests = client.register_script(self._FILL_REQUESTS)

    def load(self, credentials_id: str) -> TokenRecord:
        stored = self.redis.hgetall(REDIS_PREFIX + "token:" + credentials_id)
        values = {key.decode(): value.decode() for key, value in stored.items()}
        return _record_from_text(values)

    def save(self, credentials_id: str, record: TokenRecord) -> None:
        mapping = {key: str(value) for key, value in asdict(record).items()}
        self.redis.hset(REDIS_PREFIX + "token:" + credentials_id, mapping=mapping)

    def try_lock(self, credentials_id: str, owner: str, ttl: float) -> bool:
        key = REDIS_PREFIX + "token-lock:" + credentials_id
        return bool(self.redis.set(key, owner, nx=True, px=int(ttl * 1000)))

    def unlock(self, credentials_id: str, owner: str) -> None:
        self._unlock(keys=[REDIS_PREFIX + "token-lock:" + credentials_id],
                     args=[owner])  # fmt: skip

    def take_request(self, client_key, now, limit, window) -> float | None:
        key = REDIS_PREFIX + "token-requests:" + client_key
        free_at = self._take_request(
            keys=[key], args=[now, limit, window, uuid.uuid4().hex]
        )
        return None if free_at is None else float(free_at)

    def fill_requests(self, client_key, now, limit, window) -> None:
        key = REDIS_PREFIX + "token-requests:" + client_key
        self._fill_requests(keys=[key], args=[now, limit, window, uuid.uuid4().hex])


SCHEMA = """
CREATE TABLE IF NOT EXISTS zoho_token (
    credentials_id TEXT PRIMARY KEY,
    access_token TEXT NOT NULL DEFAULT '',
    api_url TEXT NOT NULL DEFAULT '',
    expires_at REAL NOT NULL DEFAULT 0,
    refreshed_at REAL NOT NULL DEFAULT 0,
    last_error TEXT NOT NULL DEFAULT '',
    last_error_at REAL NOT NULL DEFAULT 0,
    blocked TEXT NOT NULL DEFAULT '',
    lock_owner TEXT NOT NULL DEFAULT '',
    lock_expires_at REAL NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS zoho_token_request (
    client_key TEXT NOT NULL,
    requested_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS zoho_token_request_time
    ON zoho_token_request (client_key, requested_at);
"""


class SqliteTokenStore:
    """Token records in zoho.db, shared by the processes of one host. The
    refresh lock is a row's owner and expiry, taken in a `BEGIN IMMEDIATE`
    transaction, so a killed process's lock frees itself."""

    def __init__(self, file: SqliteFile):
        self.file = file

    def load(self, credentials_id: str) -> TokenRecord:
        rows = self.file.read(
            "SELECT * FROM zoho_token WHERE credentials_id = ?", (credentials_id,)
        )
        if not rows:
            return TokenRecord()
        return TokenRecord(
            **{item.name: rows[0][item.name] for item in fields(TokenRecord)}
        )

    def save(self, credentials_id: str, record: TokenRecord) -> None:
        values = asdict(record)
        columns = ", ".join(values)
        updates = ", ".join(f"{name} = excluded.{name}" for name in values)
        with self.file.transaction() as conn:
            conn.execute(
                f"INSERT INTO zoho_token (credentials_id, {columns}) "
                f"VALUES (?, {', '.join('?' * len(values))}) "
                f"ON CONFLICT (credentials_id) DO UPDATE SET {updates}",
                (credentials_id, *values.values()),
            )

    def try_lock(self, credentials_id: str, owner: str, ttl: float) -> bool:
        now = time.time()
        with self.file.transaction() as conn:
            conn.execute(
                "INSERT OR IGNORE INTO zoho_token (credentials_id) VALUES (?)",
                (credentials_id,),
            )
            taken = conn.execute(
                "UPDATE zoho_token SET lock_owner = ?, lock_expires_at = ? "
                "WHERE credentials_id = ? AND (lock_owner = '' OR lock_expires_at < ?)",
                (owner, now + ttl, credentials_id, now),
            )
            return taken.rowcount == 1

    def unlock(self, credentials_id: str, owner: str) -> None:
        with self.file.transaction() as conn:
            conn.execute(
                "UPDATE zoho_token SET lock_owner = '', lock_expires_at = 0 "
                "WHERE credentials_id = ? AND lock_owner = ?",
                (credentials_id, owner),
            )

    def take_request(self, client_key, now, limit, window) -> float | None:
        with self.file.transaction() as conn:
            times = self._recent_requests(conn, client_key, now, window)
            if len(times) >= limit:
                return times[0] + window

            conn.execute(
                "INSERT INTO zoho_token_request (client_key, requested_at) "
                "VALUES (?, ?)",
                (client_key, now),
            )
            return None

    def fill_requests(self, client_key, now, limit, window) -> None:
        with self.file.transaction() as conn:
            count = len(self._recent_requests(conn, client_key, now, window))
            conn.executemany(
                "INSERT INTO zoho_token_request (client_key, requested_at) "
                "VALUES (?, ?)",
                [(client_key, now)] * max(0, limit - count),
            )

    def _recent_requests(self, conn, client_key, now, window) -> list[float]:
        conn.execute(
            "DELETE FROM zoho_token_request WHERE client_key = ? AND requested_at <= ?",
            (client_key, now - window),
        )
        rows = conn.execute(
            "SELECT requested_at FROM zoho_token_request WHERE client_key = ? "
            "ORDER BY requested_at",
            (client_key,),
        )
        return [row[0] for row in rows]


def _record_from_text(values: dict[str, str]) -> TokenRecord:
    record = TokenRecord()
    for item in fields(TokenRecord):
        if item.name in values:
            kind = type(getattr(record, item.name))
            setattr(record, item.name, kind(values[item.name]))
    return record
