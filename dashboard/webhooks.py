"""POST /webhooks/zoho: webhooks from Zoho Books workflow rules.

The endpoint needs no dashboard login and no CSRF token (dashboard.auth and
dashboard.security exempt it). It checks instead:

1. TSHJOBS_ZOHO_WEBHOOK_TOKEN is set; otherwise webhooks are off: 404.
2. The request carries that token in the header X-TSH-Webhook-Token or the
   query parameter `token`: else 401.
3. The body is at most MAX_BODY_BYTES: else 413.
4. When TSHJOBS_ZOHO_WEBHOOK_SECRET is set, X-Zoho-Webhook-Signature is the
   HMAC-SHA256 of the raw body with that secret, as hex or base64: else 401.
5. The body is a JSON object, or a form whose field JSONString or payload
   contains one, or plain form fields: else 400.

A valid delivery enqueues `tasks.zoho_webhooks.process_zoho_webhook` and
gets 202 with the task id. Nothing is enqueued otherwise.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import threading
import time
from urllib.parse import parse_qsl

from flask import Blueprint, current_app, jsonify, request
from werkzeug.exceptions import RequestEntityTooLarge

from tasks.zoho_webhooks import process_zoho_webhook
from tshjobs.errors import QueueUnavailable
from tshjobs.settings import Settings

logger = logging.getLogger(__name__)

bp = Blueprint("webhooks", __name__)

TOKEN_HEADER = "X-TSH-Webhook-Token"
TOKEN_PARAMETER = "token"
SIGNATURE_HEADER = "X-Zoho-Webhook-Signature"
# Form fields that may contain the whole event as JSON.
JSON_FORM_FIELDS = ("JSONString", "payload")
MAX_BODY_BYTES = 1024 * 1024
REJECTION_LOG_KEY = "zoho_webhook_rejections"


class RejectionLog:
    """Logs a rejected webhook at most once per client address and reason
    per `interval` seconds; the next line counts the ones left out."""

    def __init__(self, interval: float = 60.0, max_keys: int = 1000):
        self.interval = interval
        self.max_keys = max_keys
        self._lock = threading.Lock()
        self._seen: dict[tuple[str, str], tuple[float, int]] = {}

    def warning(self, address: str, reason: str) -> None:
        key = (address, reason)
        now = time.monotonic()
        with self._lock:
            logged_at, left_out = self._seen.get(key, (None, 0))
            if logged_at is not None and now - logged_at < self.interval:
                self._seen[key] = (logged_at, left_out + 1)
                return
            if key not in self._seen and len(self._seen) >= self.max_keys:
                self._seen.clear()
            self._seen[key] = (now, 0)

        more = f" ({left_out} more since the last line)" if left_out else ""
        logger.warning("Rejected Zoho webhook from %s: %s%s", address, reason, more)


@bp.record_once
def _add_rejection_log(state) -> None:
    state.app.extensions[REJECTION_LOG_KEY] = RejectionLog()


def _reject(status: int, error: str, reason: str | None = None):
    """Log the rejection, rate-limited, and return a JSON error response."""
    log = current_app.extensions[REJECTION_LOG_KEY]
    log.warning(request.remote_addr or "-", reason or error)
    return jsonify(error=error), status


def _token_valid(settings: Settings) -> bool:
    expected = settings.zoho_webhook_token.encode()
    sent = request.headers.get(TOKEN_HEADER) or request.args.get(TOKEN_PARAMETER)
    return sent is not None and hmac.compare_digest(sent.encode(), expected)


def signature_valid(secret: str, body: bytes, signature: str | None) -> bool:
    """Tell whether `signature` is the HMAC-SHA256 of `body` with `secret`,
    as hex (either case) or base64 (standard or URL-safe alphabet)."""
    if not signature:
        return False

    digest = hmac.new(secret.encode(), body, hashlib.sha256).digest()
    signature = signature.strip()
    if hmac.compare_digest(signature.lower().encode(), digest.hex().encode()):
        return True
    try:
        decoded = base64.b64decode(
            signature.replace("-", "+").replace("_", "/"), validate=True
        )
    except (binascii.Error, ValueError):
        return False
    return hmac.compare_digest(decoded, digest)


class InvalidWebhookBody(ValueError):
    """Raised when a webhook body is not a JSON object, a form with a JSON
    field, or a form."""


def _reject_constant(name: str):
    raise InvalidWebhookBody(f"{name} is not a JSON number")


def _load_json_object(text: str) -> dict:
    """Parse a JSON object, keeping numbers with a fraction as their text so
    that amounts reach the task without float rounding."""
    event = json.loads(text, parse_float=str, parse_constant=_reject_constant)
    if not isinstance(event, dict):
        raise InvalidWebhookBody("the JSON body is not an object")
    return event


def parse_body(body: bytes, mimetype: str) -> dict:
    """Return the event of a webhook body. Raises InvalidWebhookBody, or the
    ValueError of the JSON or form parser, for any other body."""
    text = body.decode("utf-8")
    if mimetype != "application/x-www-form-urlencoded":
        return _load_json_object(text)

    fields = dict(parse_qsl(text, keep_blank_values=True, strict_parsing=bool(text)))
    for name in JSON_FORM_FIELDS:
        if name in fields:
            return _load_json_object(fields[name])
    if not fields:
        raise InvalidWebhookBody("the form is empty")
    return fields


def _read_body() -> bytes | None:
    """Return the body, or None when it is larger than MAX_BODY_BYTES."""
    request.max_content_length = MAX_BODY_BYTES
    try:
        return request.get_data(cache=True)
    except RequestEntityTooLarge:
        return None


@bp.route("/webhooks/zoho", methods=["POST"])
def zoho_webhook():
    settings: Settings = current_app.config["TSHJOBS_SETTINGS"]
    if not settings.zoho_webhook_token:
        reason = "webhooks are off: TSHJOBS_ZOHO_WEBHOOK_TOKEN is empty"
        return _reject(404, "not found", reason)

    if not _token_valid(settings):
        return _reject(401, "invalid or missing token")

    body = _read_body()
    if body is None:
        return _reject(413, f"body larger than {MAX_BODY_BYTES} bytes")

    if settings.zoho_webhook_secret and not signature_valid(
        settings.zoho_webhook_secret, body, request.headers.get(SIGNATURE_HEADER)
    ):
        return _reject(401, "invalid or missing signature")

    try:
        event = parse_body(body, request.mimetype)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        return _reject(400, "invalid body", f"invalid body: {exc}")

    try:
        queued = process_zoho_webhook(event)
    except QueueUnavailable as exc:
        logger.error("Zoho webhook could not be queued: %s", exc)
        return jsonify(error="queue unavailable, retry later"), 503

    logger.info(
        "Zoho webhook from %s queued as task %s", request.remote_addr, queued.id,
        extra={"task_id": queued.id},
    )  # fmt: skip
    return jsonify(task_id=queued.id), 202
