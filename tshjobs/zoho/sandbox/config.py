"""Settings of the Zoho Books sandbox: credentials, limits and organisation."""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from zoneinfo import ZoneInfo

# Fields that `SandboxServer.config_view()` and the control API hide.
SECRET_FIELDS = frozenset({"client_secret", "refresh_token"})


@dataclass
class SandboxConfig:
    """Settings of one sandbox. The defaults follow Zoho Books on a paid plan,
    and the credentials are the only ones the sandbox accepts."""

    organization_id: str = "60012345"
    organization_name: str = "TSH Sandbox"
    client_id: str = "sandbox-client"
    client_secret: str = "sandbox-secret"
    refresh_token: str = "sandbox-refresh-token"

    # Requests per organisation in each fixed window of window_seconds.
    requests_per_minute: int = 100
    window_seconds: float = 60.0
    # Requests per organisation per day; the day ends at midnight in time_zone.
    daily_limit: int = 1000
    # API requests in progress at once per organisation.
    max_concurrent: int = 10

    # Lifetime of an access token, in seconds.
    token_ttl_seconds: float = 3600
    # Token requests allowed in any sliding window of token_window_seconds.
    token_requests_limit: int = 10
    token_window_seconds: float = 600
    # Live access tokens per refresh token; one more revokes the oldest.
    max_live_tokens: int = 10

    price_precision: int = 2
    time_zone: str = "Asia/Baghdad"
    currency_code: str = "IQD"

    # api_domain sent with each token. None: the sandbox's own URL.
    api_domain: str | None = None
    # SQLite file that keeps the records across restarts. None: memory only.
    state_path: str | Path | None = None
    # Seconds a "timeout" fault keeps a request open before closing the
    # connection.
    fault_timeout_seconds: float = 30.0

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the first field whose value is invalid."""
        positive = (
            "requests_per_minute",
            "window_seconds",
            "daily_limit",
            "max_concurrent",
            "token_ttl_seconds",
            "token_requests_limit",
            "token_window_seconds",
            "max_live_tokens",
        )
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int | float) or value <= 0:
                raise ValueError(f"{name} must be a positive number, not {value!r}")

        if (
            not isinstance(self.price_precision, int)
            or not 0 <= self.price_precision <= 6
        ):
            raise ValueError(
                f"price_precision must be an integer from 0 to 6, "
                f"not {self.price_precision!r}"
            )
        try:
            ZoneInfo(self.time_zone)
        except (ValueError, KeyError):
            # ZoneInfoNotFoundError is a KeyError.
            raise ValueError(
                f"time_zone {self.time_zone!r} is not an IANA time zone"
            ) from None
        if self.fault_timeout_seconds < 0:
            raise ValueError(
                f"fault_timeout_seconds must be 0 or more, "
                f"not {self.fault_timeout_seconds!r}"
            )

    def public_view(self) -> dict:
        """Return the settings as a dict, with the secrets replaced by '***'."""
        view = {}
        for field in fields(self):
            value = getattr(self, field.name)
            if field.name in SECRET_FIELDS:
                value = "***"
            elif isinstance(value, Path):
                value = str(value)
            view[field.name] = value
        return view


def config_field_names() -> set[str]:
    """Return the names of the SandboxConfig fields."""
    return {field.name for field in fields(SandboxConfig)}
