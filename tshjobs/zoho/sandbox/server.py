"""SandboxServer: the sandbox on a port of its own, in a background thread,
with the control methods that tests call directly."""

from __future__ import annotations

import dataclasses
import logging
import threading
from typing import Self

from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server

from tshjobs.zoho.sandbox import fields
from tshjobs.zoho.sandbox.app import create_app
from tshjobs.zoho.sandbox.books import Books
from tshjobs.zoho.sandbox.config import SandboxConfig, config_field_names
from tshjobs.zoho.sandbox.faults import FaultPlan
from tshjobs.zoho.sandbox.limits import RequestLimits
from tshjobs.zoho.sandbox.stats import RequestStats
from tshjobs.zoho.sandbox.store import ENTITIES, RecordStore
from tshjobs.zoho.sandbox.tokens import TokenIssuer

log = logging.getLogger(__name__)

# Seconds between the serving thread's checks for a stop request.
POLL_SECONDS = 0.05

# Settings that only take effect when the sandbox starts.
START_ONLY_FIELDS = frozenset({"state_path"})


class _RequestHandler(WSGIRequestHandler):
    """werkzeug's handler without its access log: the app logs each request."""

    def log_request(self, code="-", size="-") -> None:
        pass


class SandboxServer:
    """A local Zoho Books v3 sandbox: accounts server, Books API and control
    API on one port.

    Use it as a context manager, or call start() and stop(). The records stay
    in memory unless config.state_path names a SQLite file.
    """

    def __init__(
        self,
        config: SandboxConfig | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ):
        self.config = config if config is not None else SandboxConfig()
        self.host = host
        self.port = port
        self.store = RecordStore(self.config.state_path)
        self.books = Books(self.store, self.config)
        self.tokens = TokenIssuer(self.config)
        self.limits = RequestLimits(self.config)
        self.faults = FaultPlan()
        self.request_stats = RequestStats()
        # Set by stop(): requests held by a timeout fault stop waiting.
        self.stopping = threading.Event()
        self._server: BaseWSGIServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("", "0.0.0.0") else self.host
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    def api_domain(self) -> str:
        """Return the api_domain sent with each token."""
        return self.config.api_domain or self.url

    def start(self) -> Self:
        self.stopping.clear()
        self._server = make_server(
            self.host,
            self.port,
            create_app(self),
            threaded=True,
            request_handler=_RequestHandler,
        )
        self.port = self._server.server_port
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": POLL_SECONDS},
            name=f"zoho-sandbox-{self.port}",
            daemon=True,
        )
        self._thread.start()
        log.info(
            "Zoho Books sandbox serving on %s, organization %s, records %s",
            self.url,
            self.config.organization_id,
            self.config.state_path or "in memory",
        )
        return self

    def stop(self) -> None:
        """Stop serving, end held requests and close the state file."""
        self.stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join()
            self._server = None
            log.info("Zoho Books sandbox on %s stopped", self.url)
        self.store.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    # Control -----------------------------------------------------------------

    def inject(
        self,
        fault: str,
        count: int = 1,
        path: str | None = None,
        method: str | None = None,
    ) -> None:
        """Make the next `count` matching requests fail: "500", "429",
        "timeout" (hold, then drop the connection) or "commit_then_timeout"
        (apply the write, then hold and drop). path narrows it to a Books API
        path such as "/contacts", or to "/oauth/v2/token"."""
        self.faults.inject(fault, count=count, path=path, method=method)

    def pending_faults(self) -> list[dict]:
        return self.faults.pending()

    def clear_faults(self) -> None:
        self.faults.clear()

    def storm_429(self, seconds: float) -> None:
        """Reply 429 to every Books API request for `seconds`."""
        self.faults.storm(seconds)

    def expire_tokens(self) -> None:
        self.tokens.expire_all()

    def revoke_refresh_token(self, revoke_access_tokens: bool = False) -> None:
        """Make the refresh token dead: token requests get invalid_code.
        Access tokens already issued live on unless revoke_access_tokens."""
        self.tokens.revoke_refresh_token(revoke_access_tokens)

    def stats(self) -> dict:
        """Return the counters; see docs/zoho-sandbox.md for each key."""
        return {
            **self.request_stats.snapshot(),
            **self.limits.snapshot(),
            "token_requests": self.tokens.requests,
            "token_requests_denied": self.tokens.denied,
            "tokens_issued": self.tokens.issued,
            "live_tokens": self.tokens.live_count(),
        }

    def records(self, entity: str) -> list[dict]:
        """Return the stored records of an entity ("contacts", "items",
        "salesorders", "invoices" or "customerpayments") as the API shows
        them."""
        return [
            fields.with_custom_field_keys(r) for r in self.store.all(_entity(entity))
        ]

    def count(self, entity: str) -> int:
        return self.store.count(_entity(entity))

    def set_config(self, **changes) -> None:
        """Change settings while the sandbox runs; raise ValueError for an
        unknown field, a bad value or a field fixed at start."""
        unknown = set(changes) - config_field_names()
        if unknown:
            raise ValueError(f"unknown setting(s): {', '.join(sorted(unknown))}")
        fixed = set(changes) & START_ONLY_FIELDS
        if fixed:
            raise ValueError(f"{', '.join(sorted(fixed))} can only be set at start")

        # replace() validates the new values together before any is applied.
        checked = dataclasses.replace(self.config, **changes)
        for name in changes:
            setattr(self.config, name, getattr(checked, name))
        log.info("Sandbox settings changed: %s", ", ".join(sorted(changes)))

    def reset(self) -> None:
        """Delete every record and zero the counters; clear faults, the 429
        storm and a refresh token revocation. Live access tokens stay."""
        self.store.clear()
        self.request_stats.reset()
        self.limits.reset()
        self.faults.clear()
        self.tokens.reset()
        log.info("Sandbox reset")


def _entity(entity: str) -> str:
    if entity not in ENTITIES:
        raise ValueError(f"entity must be one of {', '.join(ENTITIES)}, not {entity!r}")
    return entity
