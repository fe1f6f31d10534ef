"""Soft and hard time limits of a running task.

The soft limit (TSHJOBS_SOFT_TIME_LIMIT, 240 s by default) raises Huey's
`TaskTimeout` inside the task, which lets it clean up; the task is then
retried under its policy. In a process worker the exception comes from
SIGALRM, so it also interrupts a blocking socket read. In a thread worker it
is raised asynchronously in the task's thread, which takes effect only when
the thread next runs Python code.

The hard limit (TSHJOBS_HARD_TIME_LIMIT, 300 s by default) is for a task that
ignores the soft limit or is stuck where no exception reaches it. In a
process worker a watchdog thread then retries or fails the task itself and
ends the worker process; the consumer starts a new one. A thread cannot be
stopped from outside, so in a thread worker the hard limit is only logged
and recorded.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import multiprocessing
import os
import signal
import threading

from huey.exceptions import TaskTimeout

logger = logging.getLogger(__name__)

# Exit status of a worker process ended by the hard time limit (EX_TEMPFAIL).
HARD_LIMIT_EXIT_STATUS = 75


def in_process_worker() -> bool:
    """Tell whether this code runs in the main thread of a forked worker."""
    return (
        multiprocessing.parent_process() is not None
        and threading.current_thread() is threading.main_thread()
    )


@contextlib.contextmanager
def soft_time_limit(seconds: float):
    """Raise TaskTimeout in the calling thread after `seconds`."""
    if not seconds:
        yield
        return

    message = f"soft time limit of {seconds:g} s exceeded"
    if threading.current_thread() is threading.main_thread():

        def on_alarm(signum, frame):
            raise TaskTimeout(message)

        previous = signal.signal(signal.SIGALRM, on_alarm)
        signal.setitimer(signal.ITIMER_REAL, seconds)
        try:
            yield
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
        return

    thread_id = threading.get_ident()
    done = threading.Event()

    def interrupt():
        if not done.is_set():
            ctypes.pythonapi.PyThreadState_SetAsyncExc(
                ctypes.c_ulong(thread_id), ctypes.py_object(TaskTimeout)
            )

    timer = threading.Timer(seconds, interrupt)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        done.set()
        timer.cancel()


class HardTimeLimit:
    """A watchdog that calls `on_expiry` if the task outlives `seconds`, and
    then, when `end_process` is set, ends this worker process."""

    def __init__(self, seconds: float, on_expiry, end_process: bool):
        self.seconds = seconds
        self.end_process = end_process
        self._on_expiry = on_expiry
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="tshjobs-watchdog")
        self._thread.daemon = True

    def __enter__(self):
        if self.seconds:
            self._thread.start()
        return self

    def __exit__(self, *exc_info):
        self._done.set()

    def _watch(self):
        if self._done.wait(self.seconds):
            return

        try:
            self._on_expiry(self.end_process)
        except Exception:
            logger.exception("Handling the hard time limit failed")
        if self.end_process:
            logging.shutdown()
            os._exit(HARD_LIMIT_EXIT_STATUS)
