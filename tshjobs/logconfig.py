"""Logging set-up for the entry points (CLI, consumer, dashboard)."""

from __future__ import annotations

import logging
import sys

FORMAT = "%(asctime)s %(levelname)s %(name)s [%(process)d:%(threadName)s] %(message)s"


def configure_logging(level: str = "INFO") -> None:
    """Send log records to stderr, unless the host process set up handlers."""
    root = logging.getLogger()
    if root.handlers:
        return

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(FORMAT))
    root.addHandler(handler)
    root.setLevel(level)

    # fontTools, which fpdf2 uses to embed fonts, logs every table it writes
    # at INFO.
    logging.getLogger("fontTools").setLevel(logging.WARNING)
