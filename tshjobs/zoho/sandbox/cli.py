"""The `tshjobs zoho-sandbox` command, also run by `python -m
tshjobs.zoho.sandbox`: the sandbox in the foreground until SIGINT or
SIGTERM."""

from __future__ import annotations

import logging
import signal
import sys
import threading

import click

from tshjobs.logconfig import configure_logging
from tshjobs.zoho.sandbox.config import SandboxConfig

log = logging.getLogger(__name__)

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
DEFAULTS = SandboxConfig()


@click.command("zoho-sandbox")
@click.option(
    "--host", default="127.0.0.1", show_default=True, help="Address to listen on."
)
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=8765,
    show_default=True,
    help="Port to listen on; 0 picks a free one.",
)
@click.option(
    "--state-file",
    type=click.Path(dir_okay=False),
    default=None,
    help="SQLite file that keeps the records across restarts (default: memory).",
)
@click.option("--organization-id", default=DEFAULTS.organization_id, show_default=True)
@click.option(
    "--requests-per-minute",
    type=click.IntRange(1),
    default=DEFAULTS.requests_per_minute,
    show_default=True,
    help="Books API requests allowed in each rate window.",
)
@click.option(
    "--window-seconds",
    type=click.FloatRange(min=0.01),
    default=DEFAULTS.window_seconds,
    show_default=True,
    help="Length of the rate window, in seconds.",
)
@click.option(
    "--daily-limit",
    type=click.IntRange(1),
    default=DEFAULTS.daily_limit,
    show_default=True,
    help="Books API requests allowed per day (Zoho Free plan: 1000).",
)
@click.option(
    "--max-concurrent",
    type=click.IntRange(1),
    default=DEFAULTS.max_concurrent,
    show_default=True,
    help="Books API requests allowed in progress at once.",
)
@click.option(
    "--token-ttl",
    type=click.FloatRange(min=0.01),
    default=DEFAULTS.token_ttl_seconds,
    show_default=True,
    help="Lifetime of an access token, in seconds.",
)
@click.option(
    "--token-requests-limit",
    type=click.IntRange(1),
    default=DEFAULTS.token_requests_limit,
    show_default=True,
    help="Token requests allowed per token window (600 seconds).",
)
@click.option(
    "--price-precision",
    type=click.IntRange(0, 6),
    default=DEFAULTS.price_precision,
    show_default=True,
    help="Decimal places of amounts.",
)
@click.option("--time-zone", default=DEFAULTS.time_zone, show_default=True)
@click.option("--currency-code", default=DEFAULTS.currency_code, show_default=True)
@click.option(
    "--api-domain",
    default=None,
    help="api_domain sent with each token (default: the sandbox's own URL).",
)
@click.option(
    "--fault-timeout",
    type=click.FloatRange(min=0),
    default=DEFAULTS.fault_timeout_seconds,
    show_default=True,
    help="Seconds a 'timeout' fault keeps a request open before closing the "
    "connection.",
)
def zoho_sandbox(host, port, state_file, organization_id, requests_per_minute,
                 window_seconds, daily_limit, max_concurrent, token_ttl,
                 token_requests_limit, price_precision, time_zone, currency_code,
                 api_domain, fault_timeout):  # fmt: skip
    """Run the local Zoho Books sandbox in the foreground (docs/zoho-sandbox.md)."""
    from tshjobs.zoho.sandbox.server import SandboxServer

    configure_logging("INFO")
    try:
        config = SandboxConfig(
            organization_id=organization_id,
            requests_per_minute=requests_per_minute,
            window_seconds=window_seconds,
            daily_limit=daily_limit,
            max_concurrent=max_concurrent,
            token_ttl_seconds=token_ttl,
            token_requests_limit=token_requests_limit,
            price_precision=price_precision,
            time_zone=time_zone,
            currency_code=currency_code,
            api_domain=api_domain,
            state_path=state_file,
            fault_timeout_seconds=fault_timeout,
        )
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    if host not in LOOPBACK_HOSTS:
        log.warning("The control API under /_sandbox has no login; %s exposes it", host)

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        server = SandboxServer(config, host=host, port=port).start()
    except OSError as exc:
        raise click.ClickException(f"cannot listen on {host}:{port}: {exc}") from None

    # Flushed at once, so a script reading a pipe learns the port.
    click.echo(f"Zoho Books sandbox on {server.url}; press Ctrl+C to stop.")
    sys.stdout.flush()
    stop.wait()
    server.stop()
