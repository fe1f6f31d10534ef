"""The peer baseline of bench/zoho_sync.py: its plain Zoho Books client, its
retry policy and the Redis keys of its task outcomes.

The client sends the same upsert calls as tshjobs' ZohoClient, with bodies
from the same `tshjobs.zoho.sync.ZohoSync`. Otherwise it is what a Celery, RQ
or stock Huey task would use: one `requests.Session` and one access token per
worker, and nothing that counts calls across workers. A 429 raises
PeerRateLimited, and the task retries it after `backoff_delay`.

The tasks themselves are in bench.zoho_peer_tasks, which needs its settings
at import.
"""

from __future__ import annotations

import random

import requests

from tshjobs.errors import ZohoServerError
from tshjobs.zoho.decimal_json import encode_json, round_amount
from tshjobs.zoho.responses import error_for, is_token_rejected, parse_body

API_PATH = "/books/v3"
TOKEN_PATH = "/oauth/v2/token"

# Redis keys: a hash of each final task's outcome by task id, and a counter
# of task attempts.
OUTCOMES_KEY = "zoho-peer:outcomes"
ATTEMPTS_KEY = "zoho-peer:attempts"

# Celery 5's defaults for a task with retry_backoff=True: 1 s doubled per
# retry, at most 600 s, with full jitter (retry_jitter=True).
BACKOFF_FACTOR = 1
BACKOFF_MAX = 600


class PeerRateLimited(Exception):
    """Raised when Zoho responds with HTTP 429."""


def backoff_delay(retries: int) -> int:
    """Return the seconds before retry number `retries` (0 for the first), as
    Celery 5's get_exponential_backoff_interval computes them for
    retry_backoff=True: a random whole number from 0 to min(600, 2**retries).
    """
    countdown = min(BACKOFF_MAX, BACKOFF_FACTOR * 2**retries)
    return random.randrange(countdown + 1)


def is_retryable(exc: BaseException) -> bool:
    """Return whether the baseline retries a task that raised `exc`: on a 429,
    a Zoho server error or a failed connection, as an `autoretry_for` list of
    those errors would."""
    retryable = (PeerRateLimited, ZohoServerError, requests.ConnectionError,
                 requests.Timeout)  # fmt: skip
    return isinstance(exc, retryable)


class PlainZohoClient:
    """Zoho Books calls through one requests.Session, with the methods that
    ZohoSync uses: `upsert` and `round_amount`."""

    def __init__(
        self,
        accounts_url: str,
        organization_id: str,
        client_id: str,
        client_secret: str,
        refresh_token: str,
        timeout: float = 30.0,
    ):
        self.accounts_url = accounts_url.rstrip("/")
        self.organization_id = organization_id
        self.credentials = {
            "grant_type": "refresh_token",
            "client_id": client_id,
            "client_secret": client_secret,
            "refresh_token": refresh_token,
        }
        self.timeout = timeout
        self.session = requests.Session()
        self._token: str | None = None
        self._api_url: str | None = None
        self._price_precision: int | None = None

    def upsert(self, path, key, unique_key, unique_value, body, params=None) -> dict:
        """Create or update the record whose `unique_key` custom field is
        `unique_value`, in one PUT, and return it."""
        headers = {
            "X-Unique-Identifier-Key": unique_key,
            "X-Unique-Identifier-Value": str(unique_value),
            "X-Upsert": "true",
        }
        result = self.request("PUT", path, params=params, body=body, headers=headers)
        return result.get(key) or {}

    def round_amount(self, value):
        """Round an amount to the organisation's price precision, read once."""
        if self._price_precision is None:
            path = f"/organizations/{self.organization_id}"
            organization = self.request("GET", path)["organization"]
            self._price_precision = int(organization.get("price_precision", 2))
        return round_amount(value, self._price_precision)

    def request(self, method, path, *, params=None, body=None, headers=None) -> dict:
        """Send one call; return Zoho's response object, raise PeerRateLimited
        on a 429 and the tshjobs ZohoError for any other failure. A rejected
        token is refreshed and the call sent once more."""
        response = self._send(method, path, params, body, headers)
        result = parse_body(response, method, path)
        if is_token_rejected(response, result):
            self._token = None
            response = self._send(method, path, params, body, headers)
            result = parse_body(response, method, path)

        if response.status_code == 429:
            raise PeerRateLimited(f"HTTP 429 on {method} {path}")
        error = error_for(response, result, method, path)
        if error is not None:
            raise error
        return result

    def _send(self, method, path, params, body, headers) -> requests.Response:
        if self._token is None:
            self._refresh_token()
        params = {**(params or {}), "organization_id": self.organization_id}
        headers = {**(headers or {}), "Authorization": f"Zoho-oauthtoken {self._token}"}
        data = None
        if body is not None:
            data = encode_json(body).encode()
            headers["Content-Type"] = "application/json;charset=UTF-8"
        return self.session.request(
            method, self._api_url + API_PATH + path, params=params, data=data,
            headers=headers, timeout=self.timeout,
        )  # fmt: skip

    def _refresh_token(self) -> None:
        response = self.session.post(
            self.accounts_url + TOKEN_PATH, data=self.credentials, timeout=self.timeout
        )
        token = response.json()
        if "access_token" not in token:
            raise RuntimeError(
                f"token request to {self.accounts_url} failed: HTTP"
                f" {response.status_code} {token}"
            )
        self._token = token["access_token"]
        self._api_url = token["api_domain"].rstrip("/")
