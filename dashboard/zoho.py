"""The Zoho Books page: whether Zoho is configured, the shared access token,
the day's call count, the progress of the ERP's zoho_sync_queue table and its
failed rows, with buttons to retry a row and to sync the pending rows now.

Everything shown is read from the shared Zoho store (Redis, or zoho.db) and
the ERP database. The page never calls Zoho, and it never shows a token, a
secret or a URL. When the store or the ERP database cannot be read, its part
of the page shows a message with the error class, and the dashboard log has
the details.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import redis
from flask import (
    Blueprint,
    current_app,
    flash,
    redirect,
    render_template,
    request,
    url_for,
)
from flask_login import current_user

from dashboard.formatting import format_time
from tshjobs import queue
from tshjobs.erp import db as erp_db
from tshjobs.erp.queries import ErpRepository, load_queries
from tshjobs.erp.records import SYNC_STATUSES, SyncQueueItem
from tshjobs.errors import ConfigError, EntityNotFound, TshjobsError
from tshjobs.settings import Settings
from tshjobs.zoho.config import ZohoConfig
from tshjobs.zoho.ratelimit import rate_limit_status
from tshjobs.zoho.tokens import token_status

logger = logging.getLogger(__name__)

bp = Blueprint("zoho", __name__)

# Seconds the page waits for the ERP database to accept a connection.
ERP_TIMEOUT = 3.0
# The newest failed rows listed; the count above the list covers them all.
FAILED_ROWS_SHOWN = 100
# The page polls every 5 seconds, so each kind of failure is logged at most
# once a minute per process.
ERROR_LOG_INTERVAL = 60.0

# Errors of the shared Zoho store: Redis, or the zoho.db SQLite file.
STORE_ERRORS = (redis.RedisError, sqlite3.Error, OSError)
# Errors of the ERP database. ErpUnavailable and ConfigError are TshjobsErrors.
ERP_ERRORS = (TshjobsError, psycopg.Error, sqlite3.Error, OSError)

_last_logged: dict[str, float] = {}


class DashboardErp(ErpRepository):
    """The ERP repository with a connect timeout short enough for a page."""

    def __init__(self, settings: Settings):
        url = settings.erp_database_url
        if (
            erp_db.dialect_of(url) == "sqlite"
            and not Path(erp_db.sqlite_path(url)).is_file()
        ):
            # Connecting would create an empty file in place of the missing one.
            raise FileNotFoundError("ERP database file not found")

        queries = load_queries(settings.erp_queries_file or None)
        self.db = erp_db.connect(
            url, queries, connect_timeout=ERP_TIMEOUT, busy_timeout=ERP_TIMEOUT
        )


def _settings() -> Settings:
    return current_app.config["TSHJOBS_SETTINGS"]


def _log_failure(kind: str, message: str) -> None:
    """Log the exception being handled with its traceback, at most once per
    ERROR_LOG_INTERVAL for each kind."""
    now = time.monotonic()
    if now - _last_logged.get(kind, -ERROR_LOG_INTERVAL) >= ERROR_LOG_INTERVAL:
        _last_logged[kind] = now
        logger.exception(message)


def _host(url: str) -> str:
    """Return only the host name of a URL, never its user or password."""
    return urlsplit(url).hostname or ""


@bp.app_template_filter("datetime")
def format_datetime(value) -> str:
    """Format an aware datetime like the `time` filter: UTC, to the second."""
    return format_time(value.timestamp() if value is not None else None)


def read_configuration(settings: Settings) -> dict:
    """Return whether Zoho is configured, the reason when it is not, and the
    settings that are safe to show."""
    if not settings.zoho_enabled:
        return {"configured": False, "message": "TSHJOBS_ZOHO_CLIENT_ID is empty."}
    try:
        config = ZohoConfig.from_settings(settings)
    except ConfigError as exc:
        return {"configured": False, "message": str(exc)}

    return {
        "configured": True,
        "message": "",
        "data_centre": config.data_centre,
        "accounts_host": _host(config.accounts_url),
        "organization_id": config.organization_id,
        "plan": settings.zoho_plan,
        "daily_limit": config.daily_limit,
    }


def read_token(settings: Settings) -> dict:
    """Return the stored token status, or the class of the store's error."""
    try:
        return {"status": token_status(settings), "error": ""}
    except STORE_ERRORS as exc:
        _log_failure("token", "Reading the Zoho token status failed")
        return {"status": None, "error": type(exc).__name__}
    except ConfigError as exc:
        return {"status": None, "error": str(exc)}


def read_rate_limit(settings: Settings) -> dict:
    """Return the day's call count (None without Zoho), the message shown
    when the daily cap is reached, or the class of the store's error."""
    try:
        status = rate_limit_status(settings)
    except STORE_ERRORS as exc:
        _log_failure("rate limit", "Reading the Zoho rate limit status failed")
        return {"status": None, "error": type(exc).__name__, "cap_message": ""}
    except ConfigError as exc:
        return {"status": None, "error": str(exc), "cap_message": ""}

    cap_message = ""
    if status is not None and status.daily_limit_reached:
        if status.resets_at is None:
            resumes = "when the daily count resets"
        else:
            resumes = f"at {format_datetime(status.resets_at)} UTC"
        cap_message = f"Daily Zoho limit reached, sync resumes {resumes}."
    return {"status": status, "error": "", "cap_message": cap_message}


def read_sync_queue(settings: Settings) -> dict:
    """Return the zoho_sync_queue counts by status and the newest failed
    rows, or the class of the ERP database's error."""
    try:
        with DashboardErp(settings) as erp:
            counts = erp.count_sync_rows()
            failed = erp.list_sync_rows("failed", limit=FAILED_ROWS_SHOWN)
    except ERP_ERRORS as exc:
        _log_failure("erp", "Reading the zoho_sync_queue table failed")
        return {"counts": None, "failed": [], "error": type(exc).__name__}
    return {"counts": counts, "failed": failed, "error": ""}


@bp.app_template_global("zoho_alert")
def zoho_alert() -> str:
    """Return the one-line warning for the task list when Zoho needs
    re-authorisation or the daily cap is reached, else "".

    A store that cannot be read gives "": the task list shows the queue
    storage's state itself, and the Zoho page names the error.
    """
    settings = _settings()
    if not settings.zoho_enabled:
        return ""

    token = read_token(settings)["status"]
    if token is not None and token.needs_reauthorization:
        return "Zoho Books needs re-authorisation: no Zoho sync can run."
    return read_rate_limit(settings)["cap_message"]


def _page_context(settings: Settings) -> dict:
    return {
        "config": read_configuration(settings),
        "token": read_token(settings),
        "rate": read_rate_limit(settings),
        "sync": read_sync_queue(settings),
        "statuses": SYNC_STATUSES,
        "failed_rows_shown": FAILED_ROWS_SHOWN,
    }


@bp.route("/zoho")
def page():
    context = _page_context(_settings())

    is_htmx = request.headers.get("HX-Request") == "true"
    restoring = request.headers.get("HX-History-Restore-Request") == "true"
    template = "zoho/_live.html" if is_htmx and not restoring else "zoho/page.html"
    response = current_app.make_response(render_template(template, **context))
    response.vary.add("HX-Request")
    return response


def _record_action(action: str, task_id: str, detail: str) -> None:
    """Write a staff action to the audit log. The task is queued already,
    so a failed write is logged, not raised."""
    username = current_user.username
    try:
        queue.audit_log(_settings()).log_action(username, action, task_id, detail)
    except sqlite3.Error:
        logger.exception(
            "Recording the staff action %s of %s (task %s, %s) failed",
            action, username, task_id, detail,
        )  # fmt: skip
    logger.info("%s by %s: task %s, %s", action, username, task_id, detail)


def _enqueue_row_sync(settings: Settings, item: SyncQueueItem):
    """Enqueue the sync task of a zoho_sync_queue row and return its handle."""
    # Imported on use: a dashboard whose TSHJOBS_TASK_MODULES leaves out
    # tasks.zoho loads it only when a button queues a Zoho task.
    from tasks.zoho import SYNC_TASKS

    queue.get_huey(settings)
    return SYNC_TASKS[item.entity_type](item.entity_id, queue_id=item.id)


def _back():
    return redirect(url_for("zoho.page"))


def _reject_unless_configured(settings: Settings) -> bool:
    """Flash why nothing was queued and return True when Zoho is not
    configured, because every sync task would fail at once."""
    config = read_configuration(settings)
    if config["configured"]:
        return False
    flash(f"Nothing was queued: Zoho Books is not configured. {config['message']}",
          "error")  # fmt: skip
    return True


@bp.route("/zoho/rows/<int:queue_id>/retry", methods=["POST"])
def retry_row(queue_id: int):
    settings = _settings()
    if _reject_unless_configured(settings):
        return _back()

    try:
        with DashboardErp(settings) as erp:
            item = erp.retry_failed_sync_row(queue_id)
    except EntityNotFound:
        flash(f"Row {queue_id} is not in the zoho_sync_queue table.", "error")
        return _back()
    except ERP_ERRORS:
        logger.exception("Setting zoho_sync_queue row %d pending failed", queue_id)
        flash(
            "Retry failed: the ERP database cannot be reached. The dashboard log "
            "has the details.",
            "error",
        )
        return _back()

    if item is None:
        # A second POST, from a double click or another user.
        flash(f"Row {queue_id} is not failed any more; nothing was queued.", "info")
        return _back()

    # NOTE: the row stays pending while its task waits in the queue, so a
    # sync_all_pending run in between claims it and queues a second sync.
    # Both upsert by ERP id, so Zoho still gets one record.
    try:
        enqueued = _enqueue_row_sync(settings, item)
    except Exception:
        logger.exception("Enqueueing the sync of zoho_sync_queue row %d failed",
                         queue_id)  # fmt: skip
        flash(
            f"Row {queue_id} is pending again, but its sync task could not be "
            "queued, so the next hourly sync will take it. The dashboard log "
            "has the details.",
            "error",
        )
        return _back()

    entity = f"{item.entity_type} {item.entity_id}"
    _record_action(
        "zoho-retry", enqueued.id, f"zoho_sync_queue row {queue_id}, {entity}"
    )
    flash(f"Row {queue_id} ({entity}) is pending again; its sync was queued as "
          f"task {enqueued.id}.", "success")  # fmt: skip
    return _back()


@bp.route("/zoho/sync-pending", methods=["POST"])
def sync_pending():
    settings = _settings()
    if _reject_unless_configured(settings):
        return _back()

    from tasks.zoho import sync_all_pending

    queue.get_huey(settings)
    try:
        enqueued = sync_all_pending()
    except Exception:
        logger.exception("Enqueueing sync_all_pending for %s failed",
                         current_user.username)  # fmt: skip
        flash(
            "The sync could not be queued. The dashboard log has the details.",
            "error",
        )
        return _back()

    _record_action("zoho-sync-pending", enqueued.id, "sync_all_pending")
    flash(f"The sync of the pending rows was queued as task {enqueued.id}.",
          "success")  # fmt: skip
    return _back()
