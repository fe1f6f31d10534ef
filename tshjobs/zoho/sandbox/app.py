"""The sandbox's HTTP face: the accounts server's token endpoint, the Books
API under /books/v3 and the control API under /_sandbox.

Each Books API request passes, in order: a 429 storm, the access token, the
organization_id, the limits, then any injected fault, and only then reaches
the records.
"""

from __future__ import annotations

import json
import logging
import socket
import time
from typing import TYPE_CHECKING

from flask import Flask, Response, g, request
from werkzeug.exceptions import HTTPException

from tshjobs.zoho.sandbox import amounts, api
from tshjobs.zoho.sandbox.control import control_blueprint
from tshjobs.zoho.sandbox.errors import (
    INVALID_FIELD_VALUE,
    UNKNOWN_URL,
    ApiError,
    internal_error,
    too_many_requests,
)

if TYPE_CHECKING:
    from tshjobs.zoho.sandbox.server import SandboxServer

log = logging.getLogger(__name__)

API_PREFIX = "/books/v3"
TOKEN_PATH = "/oauth/v2/token"
# Request bodies larger than this are rejected with 413.
MAX_BODY_BYTES = 10 * 1024 * 1024


def json_response(body, status: int = 200) -> Response:
    return Response(
        amounts.dumps(body), status=status, mimetype="application/json;charset=UTF-8"
    )


def error_response(error: ApiError) -> Response:
    return json_response(error.body(), error.status)


def create_app(sandbox: SandboxServer) -> Flask:
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    app.register_blueprint(control_blueprint(sandbox))

    @app.before_request
    def start_timer():
        g.started = time.monotonic()

    @app.after_request
    def log_request(response: Response):
        elapsed_ms = (time.monotonic() - g.started) * 1000
        status = "dropped" if g.get("dropped") else response.status_code
        fault = f" (injected fault {g.fault})" if g.get("fault") else ""
        # The path only: a token request may carry secrets in its query.
        log.info(
            "%s %s %s %.1f ms%s",
            request.method,
            request.path,
            status,
            elapsed_ms,
            fault,
        )
        return response

    @app.post(TOKEN_PATH)
    def token():
        return _serve_token(sandbox)

    @app.route(f"{API_PREFIX}/<path:path>", methods=["GET", "POST", "PUT", "DELETE"])
    def books_api(path: str):
        return _serve_books(sandbox, "/" + path)

    @app.errorhandler(404)
    def unknown_url(error):
        return error_response(ApiError(404, UNKNOWN_URL, "Invalid URL Passed"))

    @app.errorhandler(405)
    def method_not_allowed(error):
        return error_response(
            ApiError(405, UNKNOWN_URL, f"The {request.method} method is not supported.")
        )

    return app


def _serve_token(sandbox: SandboxServer) -> Response:
    fault = g.fault = sandbox.faults.take(TOKEN_PATH, "POST")
    if fault == "500":
        return Response(
            json.dumps({"error": "internal_error"}), 500, mimetype="application/json"
        )
    if fault == "timeout":
        return _hold_and_drop(sandbox)

    if fault == "429":
        # The accounts server signals too many requests with its token limit
        # reply, so a "429" fault there sends that reply.
        status, body = sandbox.tokens.deny()
    else:
        # Zoho takes the fields in the query string or in the form body.
        form = {**request.args.to_dict(), **request.form.to_dict()}
        status, body = sandbox.tokens.refresh(form, sandbox.api_domain())
    if fault == "commit_then_timeout":
        return _hold_and_drop(sandbox)
    return Response(json.dumps(body), status, mimetype="application/json")


def _serve_books(sandbox: SandboxServer, path: str) -> Response:
    if sandbox.faults.storming():
        return _finish(sandbox, error_response(too_many_requests()))
    try:
        api.authorize(request, sandbox.tokens)
        api.check_organization(request, path, sandbox.config)
    except ApiError as error:
        return _finish(sandbox, error_response(error))

    rejection = sandbox.limits.enter()
    if rejection is not None:
        return _finish(sandbox, error_response(rejection))
    try:
        return _finish(sandbox, _serve_admitted(sandbox, path))
    finally:
        sandbox.limits.leave()


def _serve_admitted(sandbox: SandboxServer, path: str) -> Response:
    fault = g.fault = sandbox.faults.take(path, request.method)
    if fault == "500":
        return error_response(internal_error())
    if fault == "429":
        return error_response(too_many_requests())
    if fault == "timeout":
        return _hold_and_drop(sandbox)

    try:
        status, body = api.route(sandbox.books, request, path)
        response = json_response(body, status)
    except ApiError as error:
        response = error_response(error)
    except HTTPException as error:
        # Raised by werkzeug, e.g. 413 for a body over MAX_BODY_BYTES.
        response = json_response(
            {"code": INVALID_FIELD_VALUE, "message": error.description}, error.code
        )
    except Exception:
        log.exception("Books API request failed: %s %s", request.method, path)
        response = error_response(internal_error())

    if fault == "commit_then_timeout":
        return _hold_and_drop(sandbox)
    return response


def _finish(sandbox: SandboxServer, response: Response) -> Response:
    sandbox.request_stats.record(None if g.get("dropped") else response.status_code)
    response.headers.update(sandbox.limits.headers())
    return response


def _hold_and_drop(sandbox: SandboxServer) -> Response:
    """Hold the request for fault_timeout_seconds, then close the connection
    without a reply. Only this request's thread waits; a stop ends the wait."""
    sandbox.stopping.wait(sandbox.config.fault_timeout_seconds)

    connection = request.environ.get("werkzeug.socket")
    if connection is not None:
        try:
            connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            # The client closed the connection first: it is dropped already.
            pass
    g.dropped = True

    # The server's write of this reply fails on the closed socket, and
    # werkzeug treats that as a dropped connection.
    return Response(status=500)
