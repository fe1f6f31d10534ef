"""Helpers of the Zoho client tests: settings, threads started together, a
scripted stub server, and a process target that shares the token store.

Every server listens on 127.0.0.1 only. The fixtures are in zoho_fixtures.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Self
from urllib.parse import parse_qsl, urlsplit

from tshjobs.errors import ZohoError
from tshjobs.settings import Settings
from tshjobs.zoho.client import ZohoClient
from tshjobs.zoho.ratelimit import rate_limiter

# A Redis database of the Zoho tests' own on the session's redis-server.
REDIS_DATABASE = 7

# Credentials the sandbox accepts by default.
CLIENT_ID = "sandbox-client"
CLIENT_SECRET = "sandbox-secret"
REFRESH_TOKEN = "sandbox-refresh-token"
ORGANIZATION_ID = "60012345"


def zoho_settings(data_dir: Path, accounts_url: str, redis_url: str = "", **changes):
    """Return Settings for the Zoho client against a local server."""
    values = {
        "data_dir": data_dir,
        "redis_url": redis_url,
        "zoho_accounts_url": accounts_url,
        "zoho_client_id": CLIENT_ID,
        "zoho_client_secret": CLIENT_SECRET,
        "zoho_refresh_token": REFRESH_TOKEN,
        "zoho_organization_id": ORGANIZATION_ID,
        "zoho_plan": "standard",
        "zoho_timeout": 5.0,
    }
    values.update(changes)
    return Settings(**values)


def client_for(settings: Settings, window_seconds: float = 1.0, **options):
    """Return a ZohoClient whose rate limiter has short windows."""
    limiter = rate_limiter(settings, window_seconds=window_seconds, **options)
    return ZohoClient(settings, limiter=limiter)


def run_threads(count: int, target, *args) -> list:
    """Run `target(index, *args)` in `count` threads started together; return
    each one's result, or the ZohoError it raised."""
    results: list = [None] * count
    barrier = threading.Barrier(count)

    def run(index: int) -> None:
        barrier.wait()
        try:
            results[index] = target(index, *args)
        except ZohoError as exc:
            results[index] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return results


@dataclass
class StubReply:
    """One scripted reply of StubZoho."""

    status: int = 200
    body: dict | str = field(default_factory=lambda: {"code": 0, "message": "ok"})
    headers: dict = field(default_factory=dict)
    delay: float = 0.0


@dataclass
class StubRequest:
    """One request StubZoho received."""

    method: str
    path: str
    query: dict
    headers: dict
    body: bytes


class StubZoho:
    """An HTTP server on 127.0.0.1 for replies the sandbox cannot make. It
    responds to Books API requests with the scripted replies in order (then
    code 0), grants every token request, and records each request."""

    def __init__(self):
        self.replies: deque[StubReply] = deque()
        self.requests: list[StubRequest] = []
        self.token_requests = 0
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_port}"
        self._thread = threading.Thread(target=self._server.serve_forever)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def reply(self, status=200, body=None, headers=None, delay=0.0) -> None:
        body = {"code": 0, "message": "ok"} if body is None else body
        self.replies.append(StubReply(status, body, headers or {}, delay))

    def api_requests(self) -> list[StubRequest]:
        return [r for r in self.requests if not r.path.startswith("/oauth/")]

    def _handler(self):
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                self._serve()

            do_POST = do_PUT = do_DELETE = do_GET

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                parts = urlsplit(self.path)
                recorded = StubRequest(
                    self.command, parts.path, dict(parse_qsl(parts.query)),
                    dict(self.headers), self.rfile.read(length),
                )  # fmt: skip
                stub.requests.append(recorded)
                if parts.path == "/oauth/v2/token":
                    stub.token_requests += 1
                    token = f"stub-token-{stub.token_requests}"
                    reply = StubReply(body={"access_token": token, "expires_in": 3600,
                                            "api_domain": stub.url})  # fmt: skip
                else:
                    reply = stub.replies.popleft() if stub.replies else StubReply()
                self._send(reply)

            def _send(self, reply: StubReply) -> None:
                time.sleep(reply.delay)
                body = reply.body
                text = body if isinstance(body, str) else json.dumps(body)
                self.send_response(reply.status)
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(text.encode())))
                self.end_headers()
                try:
                    self.wfile.write(text.encode())
                except OSError:
                    # The client gave up first (a timeout test).
                    pass

        return Handler


def refresh_in_process(settings, barrier, results, refreshes: int) -> None:
    """Process target: wait for the others, then take the shared token and
    force `refreshes` refreshes; put the outcome names on `results`."""
    from tshjobs.zoho.tokens import token_manager

    manager = token_manager(settings)
    barrier.wait()
    outcomes = []
    try:
        token = manager.access_token()
        outcomes.append("token")
        for _ in range(refreshes):
            try:
                token = manager.refresh(failed_token=token.value)
                outcomes.append("refreshed")
            except ZohoError as exc:
                outcomes.append(type(exc).__name__)
    except ZohoError as exc:
        outcomes.append(type(exc).__name__)
    results.put(outcomes)
