"""Start a Huey consumer with the appliance's settings."""

from __future__ import annotations

import logging
import os
import signal

from tshjobs.queue import get_huey, import_task_modules
from tshjobs.settings import Settings

logger = logging.getLogger(__name__)

# The signals Huey's consumer handles: INT stops gracefully, TERM at once,
# HUP restarts.
CONSUMER_SIGNALS = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}


def _unblock_consumer_signals() -> None:
    signal.pthread_sigmask(signal.SIG_UNBLOCK, CONSUMER_SIGNALS)


def run_consumer(settings: Settings, workers=None, worker_type=None, periodic=True):
    """Run a consumer until a signal stops it."""
    huey = get_huey(settings)
    import_task_modules(settings)
    consumer = huey.create_consumer(
        workers=workers or settings.workers,
        worker_type=worker_type or settings.worker_type,
        periodic=periodic,
        initial_delay=0.05,
        backoff=1.5,
        max_delay=1.0,
        check_worker_health=True,
        health_check_interval=5,
    )

    # Huey installs its signal handlers only after it has started every
    # worker. A SIGINT arriving before that would kill the main process and
    # leave process workers running, so the signals are held back until the
    # handlers exist. Forked workers must not inherit the blocked mask.
    os.register_at_fork(after_in_child=_unblock_consumer_signals)
    start = consumer.start

    def start_with_signals_held():
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, CONSUMER_SIGNALS)
        try:
            start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)

    consumer.start = start_with_signals_held
    consumer.run()
