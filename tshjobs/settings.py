"""Settings of the appliance, read once from TSHJOBS_* environment variables.

Values come from the process environment, then from an env file of
`NAME=value` lines (`TSHJOBS_ENV_FILE`, by default `/etc/tshjobs/tshjobs.env`
when it exists; set it empty to read none). The process environment wins. Every problem found is
reported together in one `ConfigError` that names the variable, the bad value
and what is allowed. Secrets are never echoed back.
"""

from __future__ import annotations

import email.policy
import os
import re
from dataclasses import dataclass, field, fields
from email.headerregistry import Address
from email.utils import parseaddr
from pathlib import Path

from tshjobs.errors import ConfigError

DEFAULT_ENV_FILE = "/etc/tshjobs/tshjobs.env"
ENV_PREFIX = "TSHJOBS_"
SMTP_SECURITY_MODES = ("ssl", "starttls", "none")
WORKER_TYPES = ("thread", "process")
ZOHO_DATA_CENTRES = ("com", "eu", "in", "com.au", "jp", "ca", "com.cn", "sa", "uk")
ZOHO_PLANS = ("free", "standard", "professional", "premium")


def _setting(default, help, *, secret=False, required=False):
    return field(
        default=default,
        metadata={"help": help, "secret": secret, "required": required},
    )


@dataclass(frozen=True)
class Settings:
    """One validated snapshot of the configuration."""

    data_dir: Path = _setting(
        Path("/var/lib/tshjobs"),
        "Directory of the appliance's SQLite files: queue (when no Redis URL "
        "is set), audit log, users and the email sent log.",
    )
    secret_key: str = _setting(
        "",
        "At least 32 characters. Signs queued tasks and dashboard sessions.",
        secret=True,
        required=True,
    )
    redis_url: str = _setting(
        "",
        "redis://host:port/db of the queue. Empty: the SQLite queue in the "
        "data directory.",
    )
    spool_when_redis_down: bool = _setting(
        True,
        "When Redis is unreachable, keep new tasks in spool.db in the data "
        "directory and deliver them in order once it is back (true), or raise "
        "QueueUnavailable in the caller (false).",
    )
    queue_name: str = _setting("tshjobs", "Name of the Huey queue.")
    erp_database_url: str = _setting(
        "",
        "The ERP database: postgresql://user@host:port/db or sqlite:///path.",
        required=True,
    )
    erp_queries_file: str = _setting(
        "",
        "Optional SQL file whose named queries replace the built-in ones.",
    )
    smtp_host: str = _setting("127.0.0.1", "SMTP server host name.")
    smtp_port: int = _setting(25, "SMTP server port (465 for ssl, 587 for starttls).")
    smtp_security: str = _setting(
        "none", "ssl (implicit TLS), starttls, or none (a local relay)."
    )
    smtp_username: str = _setting("", "SMTP login name; empty: no login.")
    smtp_password: str = _setting("", "SMTP password.", secret=True)
    smtp_timeout: float = _setting(30.0, "Seconds to wait for the SMTP server.")
    smtp_verify_tls: bool = _setting(
        True, "Verify the SMTP server's TLS certificate (true or false)."
    )
    mail_from: str = _setting(
        "TSH <no-reply@localhost>", "From address of every email, with a name."
    )
    email_resend_uncertain: bool = _setting(
        True,
        "When an attempt stopped after an email's data went to the SMTP server "
        "and before its reply, send it again with the same Message-ID (true), "
        "or fail the task with DeliveryUnknown for a person to decide (false).",
    )
    company_name: str = _setting("TSH", "Company name shown in emails.")
    workers: int = _setting(4, "Number of consumer workers (1 to 64).")
    worker_type: str = _setting(
        "process",
        "Consumer worker type: process, or thread (thread workers cannot be "
        "stopped at the hard time limit).",
    )
    retry_delays: tuple[float, ...] = _setting(
        (60.0, 120.0, 240.0),
        "Comma-separated seconds before the first, second, ... retry of a "
        "temporary failure; the last value repeats for later retries.",
    )
    retry_jitter: float = _setting(
        0.1, "Random share (0 to 1) added to or taken off each retry delay."
    )
    soft_time_limit: float = _setting(
        240.0,
        "Seconds a task may run before TaskTimeout is raised in it; it is then "
        "retried under its policy. A task can set its own.",
    )
    hard_time_limit: float = _setting(
        300.0,
        "Seconds a task may run before its process worker is ended; more than "
        "the soft limit. A task can set its own.",
    )
    management_emails: tuple[str, ...] = _setting(
        (), "Comma-separated addresses that receive the reports."
    )
    task_modules: tuple[str, ...] = _setting(
        ("tasks",),
        "Comma-separated Python modules that declare tasks; the consumer, the "
        "dashboard and the CLI import them all.",
    )
    dashboard_bind: str = _setting(
        "127.0.0.1:8080", "host:port the dashboard listens on."
    )
    dashboard_secure_cookies: bool = _setting(
        False,
        "Send the dashboard's session cookie over HTTPS only (true behind an "
        "HTTPS reverse proxy).",
    )
    log_level: str = _setting("INFO", "DEBUG, INFO, WARNING or ERROR.")
    zoho_data_centre: str = _setting(
        "com",
        "Zoho data centre of the organisation: "
        + ", ".join(ZOHO_DATA_CENTRES)
        + " (the domain of its Zoho URLs).",
    )
    zoho_accounts_url: str = _setting(
        "",
        "https:// URL of the Zoho accounts server that issues access tokens. "
        "Empty: the one of the data centre, such as https://accounts.zoho.eu.",
    )
    zoho_client_id: str = _setting(
        "",
        "Client id of the Zoho API client (a self client). Empty: Zoho Books "
        "is not used.",
    )
    zoho_client_secret: str = _setting(
        "", "Client secret of the Zoho API client.", secret=True
    )
    zoho_refresh_token: str = _setting(
        "",
        "OAuth refresh token of the Zoho API client, with the ZohoBooks scopes.",
        secret=True,
    )
    zoho_organization_id: str = _setting(
        "", "Zoho Books organization id, sent with every call."
    )
    zoho_plan: str = _setting(
        "free",
        "Zoho Books plan: "
        + ", ".join(ZOHO_PLANS)
        + ". Sets the daily call limit (1000, 2000, 5000, 10000) and the "
        "concurrent call limit (5 on free, 10 on the others).",
    )
    zoho_daily_limit: int = _setting(
        0, "Zoho calls allowed per day. 0: the limit of TSHJOBS_ZOHO_PLAN."
    )
    zoho_requests_per_minute: int = _setting(
        100,
        "Zoho calls allowed per clock minute, 1 to 10000. Zoho allows 100 per "
        "organisation; more is accepted only with TSHJOBS_ZOHO_ACCOUNTS_URL "
        "naming a sandbox or staging server.",
    )
    zoho_max_concurrent: int = _setting(
        0,
        "Zoho calls in progress at once across all workers. 0: the limit of "
        "TSHJOBS_ZOHO_PLAN.",
    )
    zoho_timeout: float = _setting(
        30.0, "Seconds to wait for Zoho to connect and to send each response."
    )
    zoho_refresh_margin: float = _setting(
        300.0,
        "Seconds before an access token expires at which it is refreshed, "
        "0 to 1800 (tokens last 3600 seconds).",
    )

    zoho_retry_delays: tuple[float, ...] = _setting(
        (300.0,),
        "Comma-separated seconds before the first, second, ... retry of a Zoho "
        "sync task after a temporary error (5 retries); the last value repeats.",
    )
    zoho_webhook_token: str = _setting(
        "",
        "Shared token that Zoho Books sends with each webhook, in the header "
        "X-TSH-Webhook-Token or the query parameter token: 16 to 200 letters, "
        "digits or -._~ characters. Empty: POST /webhooks/zoho responds with 404.",
        secret=True,
    )
    zoho_webhook_secret: str = _setting(
        "",
        "Secret of the Zoho Books webhook, 12 to 50 letters and digits. When "
        "set, each webhook must also carry a valid X-Zoho-Webhook-Signature.",
        secret=True,
    )

    @property
    def zoho_enabled(self) -> bool:
        """Whether Zoho Books is configured (a client id is set)."""
        return bool(self.zoho_client_id)

    @property
    def queue_path(self) -> Path:
        return self.data_dir / "queue.db"

    @property
    def audit_path(self) -> Path:
        return self.data_dir / "audit.db"

    @property
    def state_path(self) -> Path:
        """The appliance's own database: dashboard users and the sent log."""
        return self.data_dir / "tshjobs.db"

    def describe(self) -> dict[str, str]:
        """Return every setting as text, with secrets masked."""
        described = {}
        for item in fields(self):
            value = getattr(self, item.name)
            if item.metadata["secret"]:
                shown = "(set)" if value else "(empty)"
            elif isinstance(value, tuple):
                shown = ",".join(str(part) for part in value)
            else:
                shown = redact(str(value))
            described[env_name(item.name)] = shown
        return described


def redact(text: str) -> str:
    """Hide the password of a URL such as postgresql://user:pw@host/db, also
    one with unencoded "/", "#" or "?" in it (up to the last "@")."""
    return re.sub(r"(://[^/@:\s]*:).*@", r"\1***@", text)


def env_name(field_name: str) -> str:
    return ENV_PREFIX + field_name.upper()


def read_env_file(path: Path) -> dict[str, str]:
    """Parse `NAME=value` lines; blank lines and `#` comments are skipped."""
    values = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue

        name, sep, value = line.partition("=")
        if not sep:
            raise ConfigError(f"{path}:{number}: expected NAME=value, got {line!r}")

        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        values[name.strip()] = value
    return values


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected true or false")


# The maximum retry delay: a week. Huey cannot schedule a delay so
# long that the retry time overflows a datetime.
MAX_RETRY_DELAY = 7 * 24 * 3600


def _parse_delays(text: str) -> tuple[float, ...]:
    parts = [part.strip() for part in text.split(",") if part.strip()]
    if not parts:
        raise ValueError("expected at least one delay in seconds, such as 60,120,240")
    try:
        delays = tuple(float(part) for part in parts)
    except ValueError:
        raise ValueError("expected comma-separated numbers of seconds") from None
    if not all(0 <= delay <= MAX_RETRY_DELAY for delay in delays):
        raise ValueError(f"each delay must be from 0 to {MAX_RETRY_DELAY} seconds")
    return delays


def _parse_addresses(text: str) -> tuple[str, ...]:
    addresses = tuple(part.strip() for part in text.split(",") if part.strip())
    for address in addresses:
        if not _is_email_address(address):
            raise ValueError(f"{address!r} is not an email address")
    return addresses


def _parse_modules(text: str) -> tuple[str, ...]:
    modules = tuple(part.strip() for part in text.split(",") if part.strip())
    for module in modules:
        if not re.fullmatch(
            r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*", module
        ):
            raise ValueError(f"{module!r} is not a Python module name")
    return modules


def _is_single_address(text: str) -> bool:
    header = email.policy.default.header_factory("From", text)
    return (
        len(header.addresses) == 1
        and not header.defects
        and _is_email_address(header.addresses[0].addr_spec)
    )


def _is_host_port(text: str) -> bool:
    match = re.fullmatch(r"[^\s:]+:(\d{1,5})", text)
    return match is not None and 1 <= int(match.group(1)) <= 65535


def _is_email_address(text: str) -> bool:
    return re.fullmatch(r"[^@\s<>,]+@[^@\s<>,]+", text) is not None


def _check_value(name: str, value) -> str | None:
    """Return a description of what is wrong with a parsed value, or None."""
    if name == "data_dir" and not value.is_absolute():
        return "must be an absolute path, such as /var/lib/tshjobs"
    if name == "secret_key" and len(value) < 32:
        return "must be at least 32 characters (try: openssl rand -hex 32)"
    if name == "erp_database_url" and not re.match(
        r"(postgres(ql)?://|sqlite:///).", value
    ):
        return "must start with postgresql:// or sqlite:/// and name a database"
    if name == "redis_url" and value and not re.match(r"rediss?://", value):
        return "must start with redis:// or rediss://, or be empty"
    if name in ("erp_database_url", "redis_url") and value:
        from tshjobs.erp.urls import url_problem

        problem = url_problem(value)
        if problem:
            return "is not a valid URL: " + problem
    if name == "smtp_security" and value not in SMTP_SECURITY_MODES:
        return "allowed: " + ", ".join(SMTP_SECURITY_MODES)
    if name == "worker_type" and value not in WORKER_TYPES:
        return "allowed: " + ", ".join(WORKER_TYPES)
    if name == "workers" and not 1 <= value <= 64:
        return "must be from 1 to 64"
    if name == "smtp_port" and not 1 <= value <= 65535:
        return "must be from 1 to 65535"
    if name == "smtp_timeout" and not 0 < value <= 600:
        return "must be more than 0 and at most 600 seconds"
    if name in ("soft_time_limit", "hard_time_limit") and not 0 < value <= 86400:
        return "must be more than 0 and at most 86400 seconds"
    if name == "retry_jitter" and not 0 <= value <= 1:
        return "must be from 0 to 1"
    if name == "log_level" and value not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        return "allowed: DEBUG, INFO, WARNING, ERROR"
    if name == "mail_from" and not _is_single_address(value):
        return "must be one address such as 'TSH <no-reply@example.com>'"
    if name == "dashboard_bind" and not _is_host_port(value):
        return "must be host:port with a port from 1 to 65535, such as 127.0.0.1:8080"
    if name.startswith("zoho_"):
        return _check_zoho_value(name, value)
    if isinstance(value, str) and re.search(r"[\x00-\x1f\x7f]", value):
        return "must not contain control characters such as line breaks"
    return None


def _check_zoho_value(name: str, value) -> str | None:
    if name == "zoho_data_centre" and value not in ZOHO_DATA_CENTRES:
        return "allowed: " + ", ".join(ZOHO_DATA_CENTRES)
    if name == "zoho_plan" and value not in ZOHO_PLANS:
        return "allowed: " + ", ".join(ZOHO_PLANS)
    if name == "zoho_accounts_url" and not re.fullmatch(r"https?://[^/\s?#]+/?", value):
        return "must be a URL such as https://accounts.zoho.eu, without a path"
    if name == "zoho_daily_limit" and not 0 <= value <= 10_000_000:
        return "must be from 0 to 10000000"
    if name == "zoho_requests_per_minute" and not 1 <= value <= 10_000:
        return "must be from 1 to 10000"
    if name == "zoho_max_concurrent" and not 0 <= value <= 100:
        return "must be from 0 to 100"
    if name == "zoho_timeout" and not 0 < value <= 600:
        return "must be more than 0 and at most 600 seconds"
    if name == "zoho_refresh_margin" and not 0 <= value <= 1800:
        return "must be from 0 to 1800 seconds"
    if name == "zoho_webhook_token" and not re.fullmatch(
        r"[A-Za-z0-9._~-]{16,200}", value
    ):
        return "must be 16 to 200 letters, digits or -._~ (try: openssl rand -hex 24)"
    if name == "zoho_webhook_secret" and not re.fullmatch(r"[A-Za-z0-9]{12,50}", value):
        return "must be 12 to 50 letters and digits, as Zoho Books requires"
    if isinstance(value, str) and re.search(r"[\x00-\x1f\x7f\s]", value):
        return "must not contain spaces or control characters"
    return None


def _parse(item, text: str):
    kind = type(item.default)
    if kind is bool:
        return _parse_bool(text)
    if kind is int:
        if not re.fullmatch(r"\s*-?\d+\s*", text):
            raise ValueError("expected a whole number")
        return int(text)
    if kind is float:
        try:
            return float(text)
        except ValueError:
            raise ValueError("expected a number") from None
    if isinstance(item.default, Path):
        return Path(text)
    if item.name in ("retry_delays", "zoho_retry_delays"):
        return _parse_delays(text)
    if item.name == "management_emails":
        return _parse_addresses(text)
    if item.name == "task_modules":
        return _parse_modules(text)
    if item.name == "log_level":
        return text.strip().upper()
    if item.name in ("zoho_data_centre", "zoho_plan"):
        return text.strip().lower()
    return text.strip()


def load_settings(environ: dict[str, str] | None = None) -> Settings:
    """Build Settings from the environment and the env file, or raise
    ConfigError listing every invalid or missing variable."""
    environ = dict(os.environ if environ is None else environ)
    # An empty TSHJOBS_ENV_FILE means: read no env file at all.
    env_file_text = environ.get(ENV_PREFIX + "ENV_FILE", DEFAULT_ENV_FILE)
    env_file = Path(env_file_text) if env_file_text else None
    if env_file is not None and env_file.is_file():
        merged = read_env_file(env_file)
        merged.update(environ)
        environ = merged
    elif env_file is not None and ENV_PREFIX + "ENV_FILE" in environ:
        raise ConfigError(f"TSHJOBS_ENV_FILE={env_file}: file not found")

    values, problems = {}, []
    for item in fields(Settings):
        name = env_name(item.name)
        text = environ.get(name)
        if text is None or text == "":
            if item.metadata["required"]:
                problems.append(f"{name} is missing: {item.metadata['help']}")
            continue

        shown = "(hidden)" if item.metadata["secret"] else repr(redact(text))
        try:
            value = _parse(item, text)
        except ValueError as exc:
            problems.append(f"{name}={shown} is invalid: {exc}")
            continue

        problem = _check_value(item.name, value)
        if problem:
            problems.append(f"{name}={shown} is invalid: {problem}")
            continue
        values[item.name] = value

    soft = values.get("soft_time_limit", Settings.soft_time_limit)
    hard = values.get("hard_time_limit", Settings.hard_time_limit)
    if not problems and soft >= hard:
        problems.append(
            f"TSHJOBS_SOFT_TIME_LIMIT={soft:g} is invalid: must be less than "
            f"TSHJOBS_HARD_TIME_LIMIT={hard:g}, so the task can clean up first"
        )

    if problems:
        raise ConfigError("invalid settings:\n  " + "\n  ".join(problems))
    return Settings(**values)


_current: Settings | None = None


def get_settings() -> Settings:
    """Return the process's settings, loading them on first use."""
    global _current
    if _current is None:
        _current = load_settings()
    return _current


def reset_settings() -> None:
    """Forget the loaded settings so the next get_settings() reads again."""
    global _current
    _current = None


def sender_address(settings: Settings) -> Address:
    name, address = parseaddr(settings.mail_from)
    username, _, domain = address.partition("@")
    return Address(display_name=name, username=username, domain=domain)
