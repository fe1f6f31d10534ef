"""Task pages: the history list, one task's detail, the retry action and the
list of staff actions."""

from __future__ import annotations

import logging
import math
import time

from flask import (
    Blueprint,
    abort,
    current_app,
    flash,
    redirect,
    render_template,
    request,
    url_for,
)
from flask_login import current_user
from markupsafe import Markup

from tshjobs import errors, queue
from tshjobs.audit import RETRYABLE_STATES, STATES

logger = logging.getLogger(__name__)

bp = Blueprint("tasks", __name__)

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 200
MAX_FILTER_CHARS = 200
# Cursors of the pages before the current one, kept in the URL so that
# "Newer" can step back. AuditLog.search pages only towards older rows.
MAX_TRAIL = 50
QUEUE_ERROR_LOG_INTERVAL = 60.0

_last_queue_error_logged = 0.0


def _settings():
    return current_app.config["TSHJOBS_SETTINGS"]


def _audit():
    return queue.audit_log(_settings())


def page_size(text: str | None) -> int:
    """Parse `?limit=`: a number is clamped to 1..200, anything else gives 50."""
    try:
        size = int(text)
    except (TypeError, ValueError):
        return DEFAULT_PAGE_SIZE
    return min(max(size, 1), MAX_PAGE_SIZE)


def encode_cursor(row: dict) -> str:
    """Return the keyset cursor of a row: `<enqueued_at>~<id>`."""
    return f"{row['enqueued_at']!r}~{row['id']}"


def decode_cursor(text: str | None) -> tuple[float, str] | None:
    """Parse a cursor from `encode_cursor`, or return None when it is invalid."""
    if not text:
        return None

    at_text, separator, task_id = text.partition("~")
    if not separator or not task_id:
        return None
    try:
        at = float(at_text)
    except ValueError:
        return None
    if not math.isfinite(at):
        return None
    return at, task_id


def _queue_numbers() -> dict:
    """Return the queue's waiting and scheduled counts, or None for each when
    the queue storage cannot be reached."""
    global _last_queue_error_logged

    try:
        return {
            "waiting": queue.queue_length(_settings()),
            "scheduled": queue.scheduled_count(_settings()),
        }
    except Exception:
        # The list refreshes every few seconds, so log at most once a minute per process.
        now = time.monotonic()
        if now - _last_queue_error_logged > QUEUE_ERROR_LOG_INTERVAL:
            _last_queue_error_logged = now
            logger.exception("Reading the queue length failed")
        return {"waiting": None, "scheduled": None}


def _filters() -> dict:
    state = request.args.get("state", "")
    return {
        "state": state if state in STATES else "",
        "name": request.args.get("name", "").strip()[:MAX_FILTER_CHARS],
        "q": request.args.get("q", "").strip()[:MAX_FILTER_CHARS],
        "limit": page_size(request.args.get("limit")),
    }


def _page_links(filters: dict, before: str, trail: list[str], older: str | None):
    """Return the URLs of the newest, newer and older pages (None when there
    is no such page)."""
    query = {key: value for key, value in filters.items() if value}
    if filters["limit"] == DEFAULT_PAGE_SIZE:
        query.pop("limit")

    links = {"newest": None, "newer": None, "older": None}
    if before:
        links["newest"] = url_for("tasks.task_list", **query)
        if trail:
            links["newer"] = url_for(
                "tasks.task_list", **query, before=trail[-1], trail=trail[:-1]
            )
        else:
            links["newer"] = links["newest"]

    if older:
        next_trail = (trail + [before])[-MAX_TRAIL:] if before else trail
        links["older"] = url_for(
            "tasks.task_list", **query, before=older, trail=next_trail
        )

    links["self"] = url_for(
        "tasks.task_list", **query, before=before or None, trail=trail
    )
    return links


@bp.route("/")
@bp.route("/tasks")
def task_list():
    filters = _filters()
    cursor = decode_cursor(request.args.get("before"))
    before = (
        encode_cursor({"enqueued_at": cursor[0], "id": cursor[1]}) if cursor else ""
    )
    trail = [text for text in request.args.getlist("trail") if decode_cursor(text)]
    trail = trail[-MAX_TRAIL:]

    audit = _audit()
    rows = audit.search(
        state=filters["state"] or None,
        name=filters["name"] or None,
        text=filters["q"] or None,
        before=cursor,
        limit=filters["limit"] + 1,
    )
    has_older = len(rows) > filters["limit"]
    rows = rows[: filters["limit"]]
    older = encode_cursor(rows[-1]) if has_older else None

    context = {
        "rows": rows,
        "filters": filters,
        "states": STATES,
        "retryable": RETRYABLE_STATES,
        "counts": audit.counts_by_state(),
        "queue_numbers": _queue_numbers(),
        "task_names": audit.task_names(),
        "links": _page_links(filters, before, trail, older),
    }

    is_htmx = request.headers.get("HX-Request") == "true"
    restoring = request.headers.get("HX-History-Restore-Request") == "true"
    template = "tasks/_list.html" if is_htmx and not restoring else "tasks/list.html"
    response = current_app.make_response(render_template(template, **context))
    response.vary.add("HX-Request")
    return response


@bp.route("/tasks/<task_id>")
def task_detail(task_id: str):
    audit = _audit()
    row = audit.get(task_id)
    if row is None:
        abort(404, f"Task {task_id} is not in the audit log.")

    return render_template(
        "tasks/detail.html",
        task=row,
        events=audit.events(task_id),
        retryable=row["state"] in RETRYABLE_STATES and not row["retried_by"],
    )


def _flash_already_retried(task_id: str, new_id: str) -> None:
    # Markup.format escapes both ids, which come from the audit log.
    message = Markup('Task {} was already retried as task <a href="{}">{}</a>.')
    url = url_for("tasks.task_detail", task_id=new_id)
    flash(message.format(task_id, url, new_id), "info")


@bp.route("/tasks/<task_id>/retry", methods=["POST"])
def retry(task_id: str):
    try:
        new_id = queue.retry_task(
            task_id, username=current_user.username, settings=_settings()
        )
    except (errors.UnknownTask, errors.NotRetryable) as exc:
        row = _audit().get(task_id)
        if isinstance(exc, errors.NotRetryable) and row and row["retried_by"]:
            # This is a second POST, from a double click or another user.
            _flash_already_retried(task_id, row["retried_by"])
        else:
            flash(f"Retry failed: {exc}", "error")
        return redirect(url_for("tasks.task_detail", task_id=task_id))
    except Exception:
        logger.exception(
            "Retrying task %s for %s failed", task_id, current_user.username
        )
        flash(
            "Retry failed: the task could not be queued. The dashboard log has "
            "the details.",
            "error",
        )
        return redirect(url_for("tasks.task_detail", task_id=task_id))

    # retry_task records the action under the user's name in the audit log.
    flash(f"Task {task_id} was queued again as task {new_id}.", "success")
    return redirect(url_for("tasks.task_detail", task_id=new_id))


@bp.route("/actions")
def actions():
    return render_template("tasks/actions.html", actions=_audit().actions(limit=200))
