"""`/health`: a JSON report on the queue storage, the audit database, the
local spool and the ERP database, open without a login.

The report names each check, whether it passed, the queue's counts, the
audit writes waiting to be retried, the tasks waiting in the spool for
Redis, and the class name of any error. It never contains URLs, paths, task data or error
messages, which could carry host names or passwords; the log has those.
"""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

import redis
from flask import Blueprint, current_app, jsonify

from tshjobs import queue
from tshjobs.audit import audit_backlog
from tshjobs.erp import db as erp_db
from tshjobs.settings import Settings
from tshjobs.spool import spool_backlog
from tshjobs.sqlite_files import check_readable

logger = logging.getLogger(__name__)

bp = Blueprint("health", __name__)

# Seconds each check may wait for its server.
CHECK_TIMEOUT = 2.0


def check_queue(settings: Settings) -> dict:
    """Ping Redis (or read the SQLite queue) and return the queue's counts."""
    if settings.redis_url:
        client = redis.Redis.from_url(
            settings.redis_url,
            socket_timeout=CHECK_TIMEOUT,
            socket_connect_timeout=CHECK_TIMEOUT,
        )
        try:
            client.ping()
        finally:
            client.close()

    return {
        "storage": "redis" if settings.redis_url else "sqlite",
        "length": queue.queue_length(settings),
        "scheduled": queue.scheduled_count(settings),
    }


def check_audit(settings: Settings) -> dict:
    """Take the audit database's write lock and roll back, writing nothing.

    The DELETE matches no row but still fails on a read-only database.
    """
    path = Path(settings.audit_path)
    if not path.is_file():
        raise FileNotFoundError("audit database not found")

    conn = sqlite3.connect(path, timeout=CHECK_TIMEOUT, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("DELETE FROM operator_actions WHERE 0")
        conn.execute("ROLLBACK")
    finally:
        conn.close()
    return audit_writes_pending(settings)


def audit_writes_pending(settings: Settings) -> dict:
    """Report the audit writes that failed and wait in the retry buffer.
    Any at all fail the check: the audit log lags behind the tasks."""
    backlog = audit_backlog(settings)
    return {
        "ok": backlog["pending"] == 0,
        "writes_pending": backlog["pending"],
        "oldest_pending_at": backlog["oldest_at"],
        "last_write_error_at": backlog["last_error_at"],
    }


def check_spool(settings: Settings) -> dict:
    """Report the tasks spooled while Redis was unreachable and not yet
    delivered to it. Any at all fail the check."""
    backlog = spool_backlog(settings)
    return {
        "ok": backlog["pending"] == 0,
        "pending": backlog["pending"],
        "oldest_at": backlog["oldest_at"],
    }


def check_state(settings: Settings) -> dict:
    """Read the schema of the state database (users, sessions, sent log)."""
    check_readable(Path(settings.state_path), timeout=CHECK_TIMEOUT)
    return {}


def check_erp(settings: Settings) -> dict:
    """Connect to the ERP database and run one query."""
    url = settings.erp_database_url
    dialect = erp_db.dialect_of(url)
    if dialect == "sqlite" and not Path(erp_db.sqlite_path(url)).is_file():
        # Connecting would create an empty file in place of the missing one.
        raise FileNotFoundError("ERP database file not found")

    database = erp_db.connect(
        url, connect_timeout=CHECK_TIMEOUT, busy_timeout=CHECK_TIMEOUT
    )
    with database:
        database.fetch_all_sql("SELECT 1")
    return {"kind": dialect}


CHECKS = {
    "queue": check_queue,
    "audit": check_audit,
    "spool": check_spool,
    "state": check_state,
    "erp": check_erp,
}


def run_checks(settings: Settings) -> dict:
    """Run every check and return the report with its overall status.

    The status is `down` when the queue storage fails, since then no task can
    be queued or run, `degraded` when another check fails, and `ok` otherwise.
    """
    results = {}
    for name, check in CHECKS.items():
        try:
            # A check reports a problem by raising, or by returning "ok": False
            # with its figures.
            results[name] = {"ok": True, **check(settings)}
        except Exception as exc:  # noqa: BLE001 - each failure becomes a result
            logger.warning("Health check %s failed: %s", name, exc)
            results[name] = {"ok": False, "error": type(exc).__name__}

    if not results["queue"]["ok"]:
        status = "down"
    elif all(result["ok"] for result in results.values()):
        status = "ok"
    else:
        status = "degraded"
    return {"status": status, "checks": results}


@bp.route("/health")
def health():
    report = run_checks(current_app.config["TSHJOBS_SETTINGS"])
    code = 200 if report["status"] == "ok" else 503
    return jsonify(report), code
