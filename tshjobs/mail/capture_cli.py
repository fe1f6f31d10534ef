"""Command line of the capture server: `python -m tshjobs.mail.capture`.

It runs until SIGINT or SIGTERM. With `--faults FILE` it reads a JSON object
of faults (see CaptureServer.apply_faults) from FILE, and again each time
the file changes, so a demo can make the server reject, drop or hang while it
runs.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import tempfile
import threading
from pathlib import Path

from tshjobs.mail.capture import TLS_MODES, CaptureServer, make_self_signed_certificate

log = logging.getLogger(__name__)

# Seconds between two checks of the faults file for changes.
FAULTS_POLL_SECONDS = 0.5


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tshjobs.mail.capture",
        description="Local SMTP server that stores each message it receives "
        "as a .eml file.",
    )
    parser.add_argument(
        "--dir", required=True, type=Path, help="directory for the .eml files"
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (127.0.0.1)"
    )
    parser.add_argument(
        "--port", type=int, default=2525, help="port to listen on; 0: any (2525)"
    )
    parser.add_argument(
        "--tls",
        choices=TLS_MODES,
        default="none",
        help="none, ssl (implicit TLS) or starttls, with a self-signed "
        "certificate made at start (none)",
    )
    parser.add_argument(
        "--faults",
        type=Path,
        help="JSON file of faults to apply, read again whenever it changes",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    arguments = parse_arguments(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )

    with tempfile.TemporaryDirectory(prefix="tshjobs-capture-") as scratch:
        certfile = keyfile = None
        if arguments.tls != "none":
            certfile, keyfile = make_self_signed_certificate(Path(scratch))

        server = CaptureServer(
            arguments.dir,
            arguments.host,
            arguments.port,
            tls=arguments.tls,
            certfile=certfile,
            keyfile=keyfile,
        )
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        signal.signal(signal.SIGINT, lambda *_: stop.set())

        server.start()
        print(
            f"capture server listening on {arguments.host}:{server.port}, "
            f"storing messages in {arguments.dir}",
            flush=True,
        )
        try:
            _watch_faults(server, arguments.faults, stop)
        finally:
            server.stop()
            log.info("stored %d message(s)", server.message_count)
    return 0


def _watch_faults(server: CaptureServer, path: Path | None, stop: threading.Event):
    """Wait for stop, applying the faults file whenever its modification time
    changes. A file that cannot be read or applied is logged and skipped."""
    applied_mtime = None
    while not stop.wait(FAULTS_POLL_SECONDS):
        if path is None:
            continue

        try:
            mtime = path.stat().st_mtime_ns
        except FileNotFoundError:
            mtime = None
        if mtime == applied_mtime:
            continue

        applied_mtime = mtime
        if mtime is None:
            server.clear_faults()
            log.info("faults file %s removed; faults cleared", path)
            continue

        try:
            config = json.loads(path.read_text())
            server.apply_faults(config)
        except (OSError, ValueError, TypeError) as exc:
            log.error("faults file %s not applied: %s", path, exc)
        else:
            log.info("applied faults from %s: %s", path, config)
