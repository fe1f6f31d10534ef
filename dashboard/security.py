"""Request protections shared by every page: CSRF tokens, the Origin check
and the security headers.

The CSRF token is our own: one random token per session, sent back in a
`csrf_token` form field or an `X-CSRF-Token` header on every request that is
not GET, HEAD or OPTIONS. The Origin (or, failing that, Referer) header of such
a request must name this host.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
from urllib.parse import urlsplit

from flask import Flask, abort, request, session

logger = logging.getLogger(__name__)

SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
CSRF_SESSION_KEY = "csrf_token"
CSRF_FORM_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"
# Endpoints that other servers call without a session: no Origin or CSRF
# check. Zoho Books webhooks authenticate with a token and a signature.
CSRF_EXEMPT_ENDPOINTS = frozenset({"webhooks.zoho_webhook"})

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'; object-src 'none'"
)


def derive_key(secret_key: str, purpose: bytes) -> str:
    """Return a key for one purpose, derived from TSHJOBS_SECRET_KEY with
    HMAC-SHA256, so that the Flask session key never equals the key that
    signs queued tasks."""
    return hmac.new(secret_key.encode(), purpose, hashlib.sha256).hexdigest()


def csrf_token() -> str:
    """Return the session's CSRF token, creating it on first use."""
    token = session.get(CSRF_SESSION_KEY)
    if not token:
        token = secrets.token_urlsafe(32)
        session[CSRF_SESSION_KEY] = token
    return token


def _origin_host(value: str) -> str | None:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return None
    return parts.netloc.lower()


def check_same_origin() -> None:
    """Abort with 403 when Origin or Referer names another host.

    Only the host and port are compared, not the scheme, because a reverse
    proxy that ends TLS makes the dashboard see http while the browser sends
    https. A request with neither header passes on to the token check:
    browsers send Origin with every POST, and other clients must still
    present the token.
    """
    origin = request.headers.get("Origin")
    referer = request.headers.get("Referer")
    if origin is not None:
        claimed = _origin_host(origin)
    elif referer is not None:
        claimed = _origin_host(referer)
    else:
        return

    if claimed != request.host.lower():
        logger.warning(
            "Rejected %s %s from origin %r (host %r)",
            request.method,
            request.path,
            origin if origin is not None else referer,
            request.host,
        )
        abort(403, "Cross-origin request rejected.")


def check_csrf_token() -> None:
    """Abort with 400 unless the request carries the session's CSRF token."""
    expected = session.get(CSRF_SESSION_KEY)
    sent = request.form.get(CSRF_FORM_FIELD) or request.headers.get(CSRF_HEADER)
    if not expected or not sent or not hmac.compare_digest(sent, expected):
        logger.warning(
            "Rejected %s %s: CSRF token missing or invalid",
            request.method,
            request.path,
        )
        abort(
            400,
            "The form has expired or did not come from this dashboard. "
            "Reload the page and try again.",
        )


def protect_unsafe_methods() -> None:
    if request.method in SAFE_METHODS or request.endpoint in CSRF_EXEMPT_ENDPOINTS:
        return

    check_same_origin()
    check_csrf_token()


def add_security_headers(response):
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "same-origin"
    if request.endpoint != "static":
        # Pages show task data behind a login, so no cache keeps a copy.
        response.headers["Cache-Control"] = "no-store"
    return response


def is_safe_redirect(target: str | None) -> bool:
    """Tell whether `target` is a path on this site, not another host, that
    can go into a Location header.

    Control characters are rejected because werkzeug raises on CR and LF in a
    header value, and browsers drop tab, CR and LF from a URL (WHATWG URL
    Standard), which turns `/\t/host` into `//host`. `str.isprintable` is
    false for every control, format and separator character except the
    ASCII space.
    """
    if not target or not target.startswith("/") or target.startswith("//"):
        return False
    if not target.isprintable():
        return False
    return "\\" not in target and not urlsplit(target).netloc


def init_app(app: Flask) -> None:
    app.before_request(protect_unsafe_methods)
    app.after_request(add_security_headers)
    app.jinja_env.globals["csrf_token"] = csrf_token
