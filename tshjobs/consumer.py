"""Start a Huey consumer with the appliance's settings."""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sqlite3
import threading
import time

from redis.exceptions import RedisError

from tshjobs.audit import log_write_failure
from tshjobs.queue import get_huey, import_task_modules
from tshjobs.settings import Settings
from tshjobs.spool import drain_forever

logger = logging.getLogger(__name__)

# The signals Huey's consumer handles: INT stops gracefully, TERM at once,
# HUP restarts.
CONSUMER_SIGNALS = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}


# prctl(2) option that sends a signal to this process when its parent dies.
PR_SET_PDEATHSIG = 1

# Seconds between scans for tasks held by workers that died.
RECOVERY_INTERVAL = 10.0


def recover_inflight(huey) -> int:
    """Put the tasks of dead workers back on the queue; return how many."""
    if not huey.reliable:
        return 0

    moved_at = time.time()
    recovered = huey.storage.recover()
    for owner, data in recovered:
        try:
            message = huey.serializer.deserialize(data)
        except Exception:
            logger.exception("Recovered an unreadable task from %s", owner)
            continue
        logger.warning(
            "Recovered task %s from %s, which stopped; it is queued again",
            message.id, owner, extra={"task_id": message.id},
        )  # fmt: skip
        try:
            huey.audit.record_recovered(message.id, owner, moved_at)
        except Exception:  # noqa: BLE001 - logged by log_write_failure
            log_write_failure(message.id, "recovered")
    return len(recovered)


def _recover_forever(huey, stop: threading.Event) -> None:
    while True:
        try:
            recover_inflight(huey)
        except (RedisError, sqlite3.Error) as exc:
            logger.warning("Recovery scan failed, queue storage unavailable: %s", exc)
        if stop.wait(RECOVERY_INTERVAL):
            return


def _prepare_worker_process(consumer_pid: int) -> None:
    """Set up a forked worker: take the stop signals again, and die with the
    consumer. A worker left behind by a consumer killed with SIGKILL would
    go on taking tasks with nobody to stop it."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, CONSUMER_SIGNALS)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL) != 0:
        logger.warning("Worker %d cannot follow its consumer's exit", os.getpid())
    if os.getppid() != consumer_pid:
        os._exit(1)  # the consumer died before prctl took effect


def run_consumer(settings: Settings, workers=None, worker_type=None, periodic=True):
    """Run a consumer until a signal stops it."""
    # Import the codec that name lookups load lazily, so that no thread of
    # this process is importing it when the consumer forks a worker.
    import encodings.idna  # noqa: F401

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
    consumer_pid = os.getpid()
    os.register_at_fork(after_in_child=lambda: _prepare_worker_process(consumer_pid))
    start = consumer.start

    stop = threading.Event()
    recovery = threading.Thread(
        target=_recover_forever, args=(huey, stop), name="tshjobs-recovery"
    )
    recovery.daemon = True
    spool_drain = threading.Thread(
        target=drain_forever, args=(huey, stop), name="tshjobs-spool"
    )
    spool_drain.daemon = True

    def start_with_signals_held():
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, CONSUMER_SIGNALS)
        try:
            start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)
        # Started after the workers fork: a thread inside an import or a
        # Redis call at fork time leaves its lock held in the child forever.
        recovery.start()
        spool_drain.start()

    consumer.start = start_with_signals_held
    try:
        consumer.run()
    finally:
        stop.set()
        if huey.reliable:
            huey.storage.stop_heartbeat()
