"""The Zoho settings resolved for use: hosts, limits and the credentials check.

Zoho's hosts per data centre: access tokens come from the accounts server of
the organisation's data centre, and calls go to the host that the token
response names (`api_domain`), `https://www.zohoapis.<domain>`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from urllib.parse import urlsplit

from tshjobs.errors import ZohoDataCentreMismatch, ZohoNotConfigured
from tshjobs.settings import Settings, env_name

# Accounts server of each data centre.
ACCOUNTS_HOSTS = {
    "com": "accounts.zoho.com",
    "eu": "accounts.zoho.eu",
    "in": "accounts.zoho.in",
    "com.au": "accounts.zoho.com.au",
    "jp": "accounts.zoho.jp",
    "ca": "accounts.zohocloud.ca",
    "com.cn": "accounts.zoho.com.cn",
    "sa": "accounts.zoho.sa",
    "uk": "accounts.zoho.uk",
}

# Zoho Books daily call limits and concurrent call limits per plan. Zoho
# documents the concurrent limit for its APIs in general; the figure for
# Books is not confirmed.
DAILY_LIMITS = {"free": 1000, "standard": 2000, "professional": 5000, "premium": 10000}
CONCURRENT_LIMITS = {"free": 5, "standard": 10, "professional": 10, "premium": 10}

# The settings without which no call can be made.
REQUIRED_SETTINGS = (
    "zoho_client_id",
    "zoho_client_secret",
    "zoho_refresh_token",
    "zoho_organization_id",
)


# Zoho Books' limit of calls per minute per organisation.
ZOHO_PER_MINUTE = 100


@dataclass(frozen=True)
class ZohoConfig:
    """The Zoho settings with every default resolved."""

    data_centre: str
    accounts_url: str
    client_id: str
    client_secret: str
    refresh_token: str
    organization_id: str
    daily_limit: int
    requests_per_minute: int
    max_concurrent: int
    timeout: float
    refresh_margin: float

    @classmethod
    def from_settings(cls, settings: Settings) -> ZohoConfig:
        """Resolve the Zoho settings, or raise ZohoNotConfigured naming each
        required TSHJOBS_ZOHO_* variable that is empty."""
        missing = [env_name(name) for name in REQUIRED_SETTINGS
                   if not getattr(settings, name)]  # fmt: skip
        if missing:
            raise ZohoNotConfigured(
                "Zoho Books is not configured: set " + ", ".join(missing)
            )

        plan = settings.zoho_plan
        accounts_url = settings.zoho_accounts_url or (
            "https://" + ACCOUNTS_HOSTS[settings.zoho_data_centre]
        )
        config = cls(
            data_centre=settings.zoho_data_centre,
            accounts_url=accounts_url.rstrip("/"),
            client_id=settings.zoho_client_id,
            client_secret=settings.zoho_client_secret,
            refresh_token=settings.zoho_refresh_token,
            organization_id=settings.zoho_organization_id,
            daily_limit=settings.zoho_daily_limit or DAILY_LIMITS[plan],
            requests_per_minute=settings.zoho_requests_per_minute,
            max_concurrent=settings.zoho_max_concurrent or CONCURRENT_LIMITS[plan],
            timeout=settings.zoho_timeout,
            refresh_margin=settings.zoho_refresh_margin,
        )
        config._check_accounts_host()
        if config.uses_zoho_accounts and config.requests_per_minute > ZOHO_PER_MINUTE:
            raise ZohoNotConfigured(
                f"TSHJOBS_ZOHO_REQUESTS_PER_MINUTE={config.requests_per_minute} is "
                f"more than the {ZOHO_PER_MINUTE} calls a minute Zoho Books allows; "
                "values above it are for the local sandbox only"
            )
        return config

    @property
    def token_url(self) -> str:
        return self.accounts_url + "/oauth/v2/token"

    @property
    def uses_zoho_accounts(self) -> bool:
        """Whether the accounts URL is one of Zoho's, not a test server."""
        return urlsplit(self.accounts_url).hostname in ACCOUNTS_HOSTS.values()

    @property
    def credentials_id(self) -> str:
        """A digest of the settings that decide which token is valid: the
        stored token and its dead mark are kept under it, so changing any of
        them starts afresh. Safe to log: it reveals no secret."""
        parts = (self.accounts_url, self.data_centre, self.client_id,
                 self.client_secret, self.refresh_token)  # fmt: skip
        return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]

    @property
    def client_key(self) -> str:
        """A digest of the accounts server and client id: the token request
        budget is counted under it."""
        text = f"{self.accounts_url}\n{self.client_id}"
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def check_api_domain(self, api_domain: str) -> str:
        """Return the API base URL from a token response's `api_domain`, or
        raise ZohoDataCentreMismatch when it is not a host of the data centre
        (or, with a test accounts server, not that server's host)."""
        parts = urlsplit(api_domain or "")
        host = parts.hostname or ""
        if self.uses_zoho_accounts:
            expected = "zohoapis." + self.data_centre
            valid = parts.scheme == "https" and (
                host == expected or host.endswith("." + expected)
            )
        else:
            expected = urlsplit(self.accounts_url).hostname or ""
            valid = parts.scheme in ("http", "https") and host == expected

        if not valid:
            raise ZohoDataCentreMismatch(
                f"the token server names the API host {api_domain!r}, not one "
                f"of {expected}; check {env_name('zoho_data_centre')}="
                f"{self.data_centre} and {env_name('zoho_accounts_url')}",
                method="POST",
                path="/oauth/v2/token",
            )
        return f"{parts.scheme}://{parts.netloc}"

    def _check_accounts_host(self) -> None:
        host = urlsplit(self.accounts_url).hostname
        if self.uses_zoho_accounts and host != ACCOUNTS_HOSTS[self.data_centre]:
            raise ZohoDataCentreMismatch(
                f"{env_name('zoho_accounts_url')} names {host}, the accounts "
                f"server of another data centre than "
                f"{env_name('zoho_data_centre')}={self.data_centre}",
                method="POST",
                path="/oauth/v2/token",
            )
