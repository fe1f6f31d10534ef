"""The accounts server: access tokens from a refresh token, as Zoho issues them.

Zoho replies to a refresh with a new access token and no new refresh token.
It accepts a limited number of token requests in a sliding window, and keeps
a limited number of live access tokens per refresh token: a new one past
that revokes the oldest.
"""

from __future__ import annotations

import math
import secrets
import threading
import time
from collections import OrderedDict, deque

from tshjobs.zoho.sandbox.config import SandboxConfig

# The OAuth scope the sandbox grants: all of Zoho Books.
SCOPE = "ZohoBooks.fullaccess.all"


def oauth_error(error: str, description: str | None = None) -> dict:
    body = {"error": error}
    if description:
        body["error_description"] = description
    return body


class TokenIssuer:
    """Live access tokens and the token-request window, safe to share."""

    def __init__(self, config: SandboxConfig, clock=time.monotonic):
        self.config = config
        self.clock = clock
        self._lock = threading.Lock()
        # access token -> expiry on self.clock, oldest first
        self._live: OrderedDict[str, float] = OrderedDict()
        self._request_times: deque[float] = deque()
        self.refresh_token_revoked = False
        self.requests = 0
        self.denied = 0
        self.issued = 0

    def refresh(self, form: dict[str, str], api_domain: str) -> tuple[int, dict]:
        """Reply to one POST to /oauth/v2/token; return (HTTP status, body).

        Zoho's accounts server sends invalid_client and invalid_code with
        HTTP 200, so a client must read the body's `error`, not the status.
        """
        with self._lock:
            self.requests += 1
            now = self.clock()
            if not self._admit_request(now):
                return self._denial()

            config = self.config
            if form.get("grant_type") != "refresh_token":
                return 200, oauth_error("unsupported_grant_type")
            if form.get("client_id") != config.client_id:
                return 200, oauth_error("invalid_client")
            if form.get("client_secret") != config.client_secret:
                return 200, oauth_error("invalid_client_secret")
            if (
                self.refresh_token_revoked
                or form.get("refresh_token") != config.refresh_token
            ):
                return 200, oauth_error("invalid_code")

            token = self._issue(now)
            return 200, {
                "access_token": token,
                "scope": SCOPE,
                "api_domain": api_domain,
                "token_type": "Bearer",
                "expires_in": math.ceil(config.token_ttl_seconds),
            }

    def deny(self) -> tuple[int, dict]:
        """Count one token request and return the token limit reply."""
        with self._lock:
            self.requests += 1
            return self._denial()

    def _denial(self) -> tuple[int, dict]:
        self.denied += 1
        body = oauth_error(
            "Access Denied",
            "You have made too many requests continuously. "
            "Please try again after some time.",
        )
        return 400, {**body, "status": "failure"}

    def _admit_request(self, now: float) -> bool:
        window_start = now - self.config.token_window_seconds
        while self._request_times and self._request_times[0] <= window_start:
            self._request_times.popleft()

        # Only admitted requests count, so a client that backs off for the
        # window gets through again.
        if len(self._request_times) >= self.config.token_requests_limit:
            return False
        self._request_times.append(now)
        return True

    def _issue(self, now: float) -> str:
        self._drop_expired(now)
        while len(self._live) >= self.config.max_live_tokens:
            self._live.popitem(last=False)

        # Zoho access tokens look like 1000.<32 hex>.<32 hex>.
        token = f"1000.{secrets.token_hex(16)}.{secrets.token_hex(16)}"
        self._live[token] = now + self.config.token_ttl_seconds
        self.issued += 1
        return token

    def _drop_expired(self, now: float) -> None:
        for token in [token for token, expiry in self._live.items() if expiry <= now]:
            del self._live[token]

    def is_valid(self, token: str) -> bool:
        with self._lock:
            expiry = self._live.get(token)
            return expiry is not None and expiry > self.clock()

    def live_count(self) -> int:
        with self._lock:
            self._drop_expired(self.clock())
            return len(self._live)

    def expire_all(self) -> None:
        """Make every live access token expired: the next API call with one
        gets 401."""
        with self._lock:
            self._live.clear()

    def revoke_refresh_token(self, revoke_access_tokens: bool = False) -> None:
        with self._lock:
            self.refresh_token_revoked = True
            if revoke_access_tokens:
                self._live.clear()

    def reset(self) -> None:
        """Forget the request window, the counters and a revocation; live
        access tokens stay valid."""
        with self._lock:
            self._request_times.clear()
            self.refresh_token_revoked = False
            self.requests = self.denied = self.issued = 0
