"""`tshjobs doctor`: check every setting and every connection, in plain words."""

from __future__ import annotations

import logging
import os
import smtplib
import ssl
from collections.abc import Callable
from dataclasses import dataclass

from tshjobs.errors import ConfigError
from tshjobs.settings import Settings, load_settings

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


def _check(name: str, probe: Callable[[], str]) -> Check:
    try:
        return Check(name, True, probe())
    except Exception as exc:  # noqa: BLE001 - every failure becomes a report line
        return Check(name, False, f"{type(exc).__name__}: {exc}")


def check_data_dir(settings: Settings) -> str:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    if not os.access(settings.data_dir, os.W_OK):
        raise PermissionError(f"{settings.data_dir} is not writable by this user")
    return f"{settings.data_dir} is writable"


def check_queue(settings: Settings) -> str:
    from tshjobs.queue import get_huey

    huey = get_huey(settings)
    count = huey.pending_count()
    where = "Redis" if settings.redis_url else f"SQLite {settings.queue_path}"
    if settings.redis_url:
        huey.storage.conn.ping()
    return f"{where} reachable, {count} tasks queued"


def check_task_modules(settings: Settings) -> str:
    from tshjobs.queue import get_huey, import_task_modules

    get_huey(settings)
    import_task_modules(settings)
    return "imported " + ", ".join(settings.task_modules)


def check_audit(settings: Settings) -> str:
    from tshjobs.audit import AuditLog

    audit = AuditLog(settings.audit_path)
    audit.db.conn.execute("BEGIN IMMEDIATE")
    audit.db.conn.execute("ROLLBACK")
    return f"{settings.audit_path} is writable"


def check_state(settings: Settings) -> str:
    from tshjobs.sqlite_files import check_readable

    check_readable(settings.state_path)
    return f"{settings.state_path} (users, sessions, sent log) is readable"


def check_erp(settings: Settings) -> str:
    from tshjobs.erp.db import connect
    from tshjobs.erp.queries import load_queries
    from tshjobs.erp.urls import dialect_of, sqlite_path

    url = settings.erp_database_url
    if dialect_of(url) == "sqlite" and not os.path.exists(sqlite_path(url)):
        # Opening it would create an empty database instead of failing.
        raise FileNotFoundError(f"SQLite ERP database {sqlite_path(url)} not found")

    queries = load_queries(settings.erp_queries_file or None)
    with connect(settings.erp_database_url, queries) as database:
        for table in ("customers", "orders", "invoices", "payments"):
            database.fetch_all_sql(f"SELECT 1 FROM {table} LIMIT 1")
    return "ERP database reachable; customers, orders, invoices, payments present"


def check_smtp(settings: Settings) -> str:
    host, port = settings.smtp_host, settings.smtp_port
    context = ssl.create_default_context()
    if not settings.smtp_verify_tls:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE

    if settings.smtp_security == "ssl":
        client = smtplib.SMTP_SSL(host, port, timeout=settings.smtp_timeout,
                                  context=context)  # fmt: skip
    else:
        client = smtplib.SMTP(host, port, timeout=settings.smtp_timeout)
    with client:
        client.ehlo()
        if settings.smtp_security == "starttls":
            client.starttls(context=context)
            client.ehlo()
        if settings.smtp_username:
            client.login(settings.smtp_username, settings.smtp_password)
        client.noop()
    login = " and login accepted" if settings.smtp_username else ""
    return f"{host}:{port} ({settings.smtp_security}) answered{login}"


def check_zoho(settings: Settings) -> str:
    """Resolve the Zoho settings and read the stored token status, without
    calling Zoho."""
    from tshjobs.errors import ZohoReauthorizationRequired
    from tshjobs.zoho.config import ZohoConfig
    from tshjobs.zoho.tokens import token_status

    config = ZohoConfig.from_settings(settings)
    status = token_status(settings)
    if status.needs_reauthorization:
        raise ZohoReauthorizationRequired(
            f"{status.message}. Create the new refresh token in Zoho's API "
            "console, and restart the services after setting it"
        )
    if status.message:
        # The token is blocked for another reason, such as a data centre
        # mismatch; the message names the setting to fix.
        raise ConfigError(status.message)

    where = f"data centre {config.data_centre}, organization {config.organization_id}"
    if status.expires_at is None:
        return f"{where}; no access token fetched yet"
    expires = status.expires_at.strftime("%Y-%m-%d %H:%M:%S")
    return f"{where}; access token stored, expires {expires} UTC"


def run_checks(environ: dict[str, str] | None = None) -> tuple[list[Check], bool]:
    """Run every check and return the results and whether all passed."""
    try:
        settings = load_settings(environ)
    except ConfigError as exc:
        return [Check("settings", False, str(exc))], False

    checks = [
        Check("settings", True, "all TSHJOBS_* values are valid"),
        _check("data directory", lambda: check_data_dir(settings)),
        _check("queue", lambda: check_queue(settings)),
        _check("task modules", lambda: check_task_modules(settings)),
        _check("audit log", lambda: check_audit(settings)),
        _check("state database", lambda: check_state(settings)),
        _check("ERP database", lambda: check_erp(settings)),
        _check("SMTP server", lambda: check_smtp(settings)),
    ]
    if settings.zoho_enabled:
        checks.append(_check("Zoho Books", lambda: check_zoho(settings)))
    return checks, all(check.ok for check in checks)
