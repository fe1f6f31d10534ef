"""The Zoho access token shared by every worker, consumer and host.

Zoho issues access tokens for one hour from a refresh token, allows at most
10 token requests per 10 minutes per client, and keeps at most 10 access
tokens alive per refresh token. So the processes share one token in the
shared store (Redis, or zoho.db without Redis). One process at a time
refreshes it, under a lock with an expiry. It does so
TSHJOBS_ZOHO_REFRESH_MARGIN seconds before the token expires, and again when
Zoho rejects the token (HTTP 401 or code 57) while it is still the stored
one. Token requests are counted in the store, and past the budget
`ZohoTokenLimited` is raised instead of calling.
"""

from __future__ import annotations

import datetime
import logging
import time
import uuid
from dataclasses import dataclass, field

import requests

from tshjobs.errors import (
    ZohoAuthError,
    ZohoConnectionError,
    ZohoDataCentreMismatch,
    ZohoError,
    ZohoNotConfigured,
    ZohoReauthorizationRequired,
    ZohoServerError,
    ZohoTimeout,
    ZohoTokenLimited,
)
from tshjobs.settings import Settings
from tshjobs.zoho.config import ZohoConfig
from tshjobs.zoho.store import SqliteFile, redis_client, sqlite_path
from tshjobs.zoho.token_stores import (
    SCHEMA,
    RedisTokenStore,
    SqliteTokenStore,
    TokenRecord,
)

logger = logging.getLogger(__name__)

TOKEN_PATH = "/oauth/v2/token"

# Zoho's budget of token requests per client: 10 per 600 seconds.
TOKEN_REQUEST_LIMIT = 10
TOKEN_REQUEST_WINDOW = 600.0

# Seconds between two looks at the store while another process refreshes.
LOCK_POLL_INTERVAL = 0.05

# A token this close to its expiry is not used even while another process
# refreshes it, because a call made with it could arrive after it expired.
MIN_VALIDITY = 5.0

BLOCKED_MESSAGES = {
    "reauthorization": "Zoho needs re-authorisation: the refresh token is "
    "invalid or revoked (invalid_code). Authorise the client again and set "
    "TSHJOBS_ZOHO_REFRESH_TOKEN",
}


@dataclass(frozen=True)
class AccessToken:
    """An access token and the API host it is valid for."""

    value: str = field(repr=False)
    api_url: str
    expires_at: float


@dataclass(frozen=True)
class TokenStatus:
    """The state of the shared token, for the dashboard. Never the token."""

    configured: bool
    needs_reauthorization: bool = False
    message: str = ""
    api_url: str = ""
    expires_at: datetime.datetime | None = None
    refreshed_at: datetime.datetime | None = None
    last_error: str = ""
    last_error_at: datetime.datetime | None = None


class TokenManager:
    """Hands out the shared access token and refreshes it when due.

    `clock` returns the Unix time. Tests pass their own to move time on."""

    def __init__(
        self,
        config: ZohoConfig,
        store,
        *,
        session: requests.Session | None = None,
        clock=time.time,
        request_limit: int = TOKEN_REQUEST_LIMIT,
        request_window: float = TOKEN_REQUEST_WINDOW,
    ):
        self.config = config
        self.store = store
        self.session = session or requests.Session()
        self.clock = clock
        self.request_limit = request_limit
        self.request_window = request_window
        # The lock outlives the longest token request: connect plus response.
        self.lock_ttl = 2 * config.timeout + 5

    def access_token(self) -> AccessToken:
        """Return the stored token, refreshing it first when it expires within
        the refresh margin."""
        record = self.store.load(self.config.credentials_id)
        self._raise_if_blocked(record)
        if record.access_token and not self._due(record):
            return _token_of(record)
        return self._refresh(failed_token=None)

    def refresh(self, failed_token: str) -> AccessToken:
        """Return a token other than `failed_token`, which Zoho rejected.

        Only the first process to ask refreshes: the others find a new token
        stored and use it, so workers rejected at once cause one refresh."""
        return self._refresh(failed_token=failed_token)

    def status(self) -> TokenStatus:
        record = self.store.load(self.config.credentials_id)
        message = ""
        if record.blocked == "reauthorization":
            message = BLOCKED_MESSAGES["reauthorization"]
        elif record.blocked:
            message = record.last_error
        return TokenStatus(
            configured=True,
            needs_reauthorization=record.blocked == "reauthorization",
            message=message,
            api_url=record.api_url,
            expires_at=_datetime(record.expires_at),
            refreshed_at=_datetime(record.refreshed_at),
            last_error=record.last_error,
            last_error_at=_datetime(record.last_error_at),
        )

    def _refresh(self, failed_token: str | None) -> AccessToken:
        credentials_id = self.config.credentials_id
        owner = uuid.uuid4().hex
        deadline = time.monotonic() + self.lock_ttl + 5

        while True:
            record = self.store.load(credentials_id)
            self._raise_if_blocked(record)
            if self._usable(record, failed_token) and not self._due(record):
                return _token_of(record)

            if self.store.try_lock(credentials_id, owner, self.lock_ttl):
                try:
                    return self._refresh_locked(failed_token)
                finally:
                    self.store.unlock(credentials_id, owner)

            # Another process is refreshing: a token that is still valid
            # serves meanwhile; otherwise wait for the new one.
            if self._usable(record, failed_token):
                return _token_of(record)
            if time.monotonic() > deadline:
                raise ZohoTimeout(
                    "timed out waiting for another process to refresh the access token",
                    method="POST",
                    path=TOKEN_PATH,
                )
            time.sleep(LOCK_POLL_INTERVAL)

    def _refresh_locked(self, failed_token: str | None) -> AccessToken:
        credentials_id = self.config.credentials_id
        record = self.store.load(credentials_id)
        self._raise_if_blocked(record)
        if self._usable(record, failed_token) and not self._due(record):
            return _token_of(record)

        now = self.clock()
        free_at = self.store.take_request(
            self.config.client_key, now, self.request_limit, self.request_window
        )
        if free_at is not None:
            raise ZohoTokenLimited(
                f"{self.request_limit} access tokens were requested in the last "
                f"{self.request_window:g} seconds, Zoho's limit",
                retry_at=_datetime(free_at),
                method="POST",
                path=TOKEN_PATH,
            )

        try:
            token = self._request_token()
        except ZohoError as exc:
            self._save_error(record, exc)
            raise

        record.access_token = token.value
        record.api_url = token.api_url
        record.expires_at = token.expires_at
        record.refreshed_at = now
        self.store.save(credentials_id, record)
        logger.info(
            "Zoho access token refreshed for credentials %s; expires in %.0f s",
            credentials_id, token.expires_at - now,
        )  # fmt: skip
        return token

    def _request_token(self) -> AccessToken:
        data = {
            "grant_type": "refresh_token",
            "client_id": self.config.client_id,
            "client_secret": self.config.client_secret,
            "refresh_token": self.config.refresh_token,
        }
        timeout = self.config.timeout
        try:
            # A form body, not the query string, keeps the secrets out of
            # access logs.
            response = self.session.post(
                self.config.token_url, data=data, timeout=timeout
            )
        except requests.Timeout:
            raise ZohoTimeout(
                f"no response from the Zoho accounts server in {timeout:g} s",
                method="POST",
                path=TOKEN_PATH,
            ) from None
        except requests.RequestException as exc:
            raise ZohoConnectionError(
                f"cannot reach the Zoho accounts server: {type(exc).__name__}",
                method="POST",
                path=TOKEN_PATH,
            ) from None

        body = _json_body(response)
        if response.ok and body.get("access_token"):
            return AccessToken(
                value=body["access_token"],
                api_url=self.config.check_api_domain(body.get("api_domain", "")),
                expires_at=self.clock() + float(body.get("expires_in", 3600)),
            )
        raise self._token_error(response.status_code, body)

    def _token_error(self, status: int, body: dict) -> ZohoError:
        error = str(body.get("error") or "")
        description = str(body.get("error_description") or "")
        details = {"method": "POST", "path": TOKEN_PATH, "status": status,
                   "code": error or None, "zoho_message": description}  # fmt: skip

        if error == "invalid_code":
            return ZohoReauthorizationRequired(
                BLOCKED_MESSAGES["reauthorization"], **details
            )
        if "too many requests" in description.lower() or error == "Access Denied":
            self.store.fill_requests(
                self.config.client_key,
                self.clock(),
                self.request_limit,
                self.request_window,
            )
            return ZohoTokenLimited(
                "the Zoho accounts server rejected the token request as one too many",
                retry_at=_datetime(self.clock() + self.request_window),
                **details,
            )
        if status >= 500 or not body:
            return ZohoServerError("the Zoho accounts server failed", **details)
        if error in ("invalid_client", "invalid_client_secret"):
            return ZohoAuthError(
                "the client id or secret is not valid at this accounts server; "
                "check TSHJOBS_ZOHO_CLIENT_ID, TSHJOBS_ZOHO_CLIENT_SECRET and "
                "TSHJOBS_ZOHO_DATA_CENTRE",
                **details,
            )
        return ZohoAuthError("the Zoho accounts server rejected the token request",
                             **details)  # fmt: skip

    def _save_error(self, record: TokenRecord, exc: ZohoError) -> None:
        record.last_error = str(exc)
        record.last_error_at = self.clock()
        if isinstance(exc, ZohoReauthorizationRequired):
            record.blocked = "reauthorization"
            logger.error(
                "Zoho refresh token of credentials %s is invalid; no token will "
                "be requested until the settings change: %s",
                self.config.credentials_id, exc,
            )  # fmt: skip
        elif isinstance(exc, ZohoDataCentreMismatch):
            record.blocked = "data_centre"
            logger.error("Zoho data centre mismatch: %s", exc)
        else:
            logger.warning("Zoho access token request failed: %s", exc)
        self.store.save(self.config.credentials_id, record)

    def _raise_if_blocked(self, record: TokenRecord) -> None:
        if record.blocked == "reauthorization":
            raise ZohoReauthorizationRequired(
                BLOCKED_MESSAGES["reauthorization"], method="POST", path=TOKEN_PATH
            )
        if record.blocked == "data_centre":
            raise ZohoDataCentreMismatch(
                f"{record.last_error} (no token is requested until the Zoho "
                "settings change)"
            )

    def _due(self, record: TokenRecord) -> bool:
        # A margin longer than half the token's lifetime would refresh on
        # every call; only a test server issues tokens that short.
        lifetime = record.expires_at - record.refreshed_at
        margin = min(self.config.refresh_margin, lifetime / 2)
        return record.expires_at - margin <= self.clock()

    def _usable(self, record: TokenRecord, failed_token: str | None) -> bool:
        return (
            bool(record.access_token)
            and record.access_token != failed_token
            and record.expires_at - MIN_VALIDITY > self.clock()
        )


def token_store(settings: Settings):
    """Return the token store the settings choose: Redis or zoho.db."""
    client = redis_client(settings)
    if client is not None:
        return RedisTokenStore(client)
    return SqliteTokenStore(SqliteFile(sqlite_path(settings), SCHEMA))


def token_manager(settings: Settings, **options) -> TokenManager:
    """Return a TokenManager on the store the settings choose, or raise
    ZohoNotConfigured."""
    return TokenManager(ZohoConfig.from_settings(settings), token_store(settings),
                        **options)  # fmt: skip


def token_status(settings: Settings) -> TokenStatus:
    """Return the state of the shared token for the dashboard: whether Zoho
    needs re-authorisation, when the token expires and was last refreshed,
    and the last error."""
    if not settings.zoho_enabled:
        return TokenStatus(configured=False, message="Zoho Books is not configured")
    try:
        manager = token_manager(settings)
    except ZohoNotConfigured as exc:
        return TokenStatus(configured=False, message=str(exc))
    return manager.status()


def _token_of(record: TokenRecord) -> AccessToken:
    return AccessToken(record.access_token, record.api_url, record.expires_at)


def _json_body(response: requests.Response) -> dict:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _datetime(timestamp: float) -> datetime.datetime | None:
    if not timestamp:
        return None
    return datetime.datetime.fromtimestamp(timestamp, datetime.UTC)
