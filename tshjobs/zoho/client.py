"""The Zoho Books API client that the sync tasks call.

Each call takes the shared access token (`tshjobs.zoho.tokens`) and a slot
of the shared rate limiter (`tshjobs.zoho.ratelimit`), sends JSON with
exact decimal amounts, and maps Zoho's `{"code", "message"}` envelope to the
ZohoError classes. The only retry made here is one after refreshing a token
that Zoho rejected. Every other failure is raised, and the task's retry
policy decides: `TemporaryError` subclasses are retried, `PermanentError`
ones are not.
"""

from __future__ import annotations

import logging
import time
from typing import Self

import requests

from tshjobs.errors import (
    ZohoConnectionError,
    ZohoDailyLimitReached,
    ZohoRateLimited,
    ZohoTimeout,
)
from tshjobs.settings import Settings
from tshjobs.zoho.config import ZohoConfig
from tshjobs.zoho.decimal_json import encode_json, round_amount
from tshjobs.zoho.ratelimit import RateLimiter, rate_limiter
from tshjobs.zoho.responses import (
    CODE_DAILY_LIMIT,
    error_for,
    is_token_rejected,
    parse_body,
)
from tshjobs.zoho.tokens import TokenManager, token_manager

logger = logging.getLogger(__name__)

API_PATH = "/books/v3"


class ZohoClient:
    """Calls to the Zoho Books API of the configured organisation.

    Paths are relative to /books/v3, such as "/contacts". A client uses one
    HTTP session: give each thread its own client. `tokens` and `limiter`
    replace the ones the settings choose (tests pass limiters with short
    windows)."""

    def __init__(
        self,
        settings: Settings,
        *,
        tokens: TokenManager | None = None,
        limiter: RateLimiter | None = None,
        session: requests.Session | None = None,
    ):
        self.settings = settings
        self.config = ZohoConfig.from_settings(settings)
        self.session = session or requests.Session()
        self.tokens = tokens or token_manager(settings, session=self.session)
        self.limiter = limiter or rate_limiter(settings)
        self._organization: dict | None = None

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def get(self, path: str, params: dict | None = None) -> dict:
        """Send GET and return Zoho's response object."""
        return self.request("GET", path, params=params)

    def post(self, path: str, body: dict, params: dict | None = None) -> dict:
        return self.request("POST", path, params=params, body=body)

    def put(self, path: str, body: dict, params: dict | None = None) -> dict:
        return self.request("PUT", path, params=params, body=body)

    def delete(self, path: str, params: dict | None = None) -> dict:
        return self.request("DELETE", path, params=params)

    def list_all(self, path: str, key: str, params: dict | None = None) -> list:
        """Return the records under `key` of every page of a list, following
        `page_context.has_more_page`. Each page is a call of its own."""
        params = dict(params or {})
        page = int(params.pop("page", 1))
        records = []

        while True:
            response = self.get(path, {**params, "page": page})
            records.extend(response.get(key) or [])
            if not (response.get("page_context") or {}).get("has_more_page"):
                return records
            page += 1

    def upsert(
        self,
        path: str,
        key: str,
        unique_key: str,
        unique_value: str,
        body: dict,
        params: dict | None = None,
    ) -> dict:
        """Create or update the record whose unique custom field `unique_key`
        (such as "cf_erp_id") is `unique_value`, in one idempotent
        `PUT <path>`, and return the record under `key` (such as "contact").
        A retry cannot make a duplicate, unlike a retried POST."""
        headers = {
            "X-Unique-Identifier-Key": unique_key,
            "X-Unique-Identifier-Value": str(unique_value),
            "X-Upsert": "true",
        }
        response = self.request("PUT", path, params=params, body=body, headers=headers)
        return response.get(key) or {}

    def organization(self) -> dict:
        """Return the organisation's settings, such as `price_precision` and
        `time_zone`; fetched once per client."""
        if self._organization is None:
            path = f"/organizations/{self.config.organization_id}"
            self._organization = self.get(path)["organization"]
            time_zone = self._organization.get("time_zone")
            if time_zone:
                self.limiter.time_zone = time_zone
        return self._organization

    def round_amount(self, value):
        """Round an amount to the organisation's price precision."""
        places = int(self.organization().get("price_precision", 2))
        return round_amount(value, places)

    def request(
        self,
        method: str,
        path: str,
        *,
        params: dict | None = None,
        body: dict | None = None,
        headers: dict | None = None,
    ) -> dict:
        """Send one call and return Zoho's response object, or raise the
        ZohoError for the failure. A rejected access token is refreshed and
        the call sent once more."""
        token = self.tokens.access_token()
        response = self._send(method, path, token, params, body, headers)
        result = parse_body(response, method, path)

        if is_token_rejected(response, result):
            logger.info("Zoho rejected the access token on %s %s; refreshing",
                        method, path)  # fmt: skip
            token = self.tokens.refresh(failed_token=token.value)
            response = self._send(method, path, token, params, body, headers)
            result = parse_body(response, method, path)

        if response.status_code == 429:
            raise self._rate_limited(response, result, method, path)
        error = error_for(response, result, method, path)
        if error is not None:
            raise error
        return result

    def _send(self, method, path, token, params, body, headers) -> requests.Response:
        url = token.api_url + API_PATH + path
        params = {**(params or {}), "organization_id": self.config.organization_id}
        headers = {**(headers or {}), "Authorization": f"Zoho-oauthtoken {token.value}"}
        data = None
        if body is not None:
            data = encode_json(body).encode()
            headers["Content-Type"] = "application/json;charset=UTF-8"

        with self.limiter.slot(method, path):
            started = time.monotonic()
            response = self._http(method, url, path, params, data, headers)
            self.limiter.record_headers(response.headers)

        logger.debug(
            "Zoho %s %s: HTTP %d in %.0f ms", method, path, response.status_code,
            (time.monotonic() - started) * 1000,
        )  # fmt: skip
        return response

    def _http(self, method, url, path, params, data, headers) -> requests.Response:
        timeout = self.config.timeout
        try:
            return self.session.request(
                method, url, params=params, data=data, headers=headers,
                timeout=timeout,
            )  # fmt: skip
        except requests.Timeout:
            raise ZohoTimeout(
                f"no response from Zoho in {timeout:g} s; the call may have "
                "been applied",
                method=method,
                path=path,
            ) from None
        except requests.RequestException as exc:
            raise ZohoConnectionError(
                f"the connection to Zoho failed ({type(exc).__name__}); the "
                "call may have been applied",
                method=method,
                path=path,
            ) from None

    def _rate_limited(self, response, body, method, path):
        details = {"method": method, "path": path, "status": 429,
                   "code": body.get("code"),
                   "zoho_message": str(body.get("message") or "")}  # fmt: skip
        daily = body.get("code") == CODE_DAILY_LIMIT
        if daily or response.headers.get("X-Rate-Limit-Remaining") == "0":
            resets_at = self.limiter.mark_daily_spent()
            logger.warning("Zoho daily call limit reached on %s %s; it resets at %s",
                           method, path, resets_at)  # fmt: skip
            return ZohoDailyLimitReached(
                "Zoho's daily call limit is reached", retry_at=resets_at, **details
            )

        next_window = self.limiter.mark_window_spent()
        logger.warning(
            "Zoho rate limit hit on %s %s (HTTP 429); no calls until %s",
            method, path, next_window,
        )  # fmt: skip
        return ZohoRateLimited(
            "Zoho's per-minute rate limit is reached", retry_at=next_window, **details
        )
