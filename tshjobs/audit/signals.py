"""Huey's signals wired to the audit log, and the rate-limited log of audit
writes that failed."""

from __future__ import annotations

import logging
import os
import socket
import sys
import threading
import traceback as traceback_module

from huey import signals as S

from tshjobs.audit.log import AuditLog
from tshjobs.audit.replay import AuditWriteDeferred
from tshjobs.audit.schema import _error_text

# Every module of the audit package logs as `tshjobs.audit`, one logger name
# to filter and search their records by.
logger = logging.getLogger(__package__)

_write_failures = 0


def log_write_failure(task_id: str, what: str) -> None:
    """Log a failed audit write from inside an except block: the first with
    its traceback, then one line per 100, so that a broken audit database
    cannot flood the log. The line states whether the write was kept for a
    replay (AuditWriteDeferred) or lost."""
    global _write_failures
    _write_failures += 1
    exc = sys.exc_info()[1]
    outcome = "kept for a replay" if isinstance(exc, AuditWriteDeferred) else "lost"
    extra = {"task_id": task_id}
    if _write_failures == 1:
        logger.exception("Audit log write failed for task %s (%s); the write is %s",
                         task_id, what, outcome, extra=extra)  # fmt: skip
    elif _write_failures % 100 == 0:
        logger.error(
            "Audit log write failed for task %s (%s); the write is %s; %d "
            "failures so far", task_id, what, outcome, _write_failures,
            extra=extra,
        )  # fmt: skip


def full_name(huey, task) -> str:
    """Return the registered name of a task: module and function."""
    return huey._registry.task_to_string(type(task))


def connect_signals(huey, audit: AuditLog) -> None:
    """Write the audit log from `huey`'s signals, in whatever process fires
    them: the producer for `enqueued`, the worker for the rest."""
    host = socket.gethostname()

    def write(signal, task, exc=None):
        if signal == S.SIGNAL_ENQUEUED:
            return  # written by ApplianceHuey.enqueue once the task is queued
        if signal == S.SIGNAL_SCHEDULED:
            eta = task.eta.timestamp() if task.eta else None
            audit.record_scheduled(task.id, eta)
        elif signal == S.SIGNAL_EXECUTING:
            audit.record_started(
                task.id, host, os.getpid(), threading.current_thread().name,
                full_name(huey, task), task.args, task.kwargs, huey.name,
            )  # fmt: skip
        elif signal == S.SIGNAL_COMPLETE:
            audit.record_succeeded(task.id)
        elif signal == S.SIGNAL_ERROR:
            trace = "".join(traceback_module.format_exception(exc))
            audit.record_failed(task.id, _error_text(exc), trace, not task.retries)
        elif signal == S.SIGNAL_TIMEOUT:
            soft = huey.time_limits(task)[0] if hasattr(huey, "time_limits") else None
            reason = (
                f"TaskTimeout: soft time limit of {soft:g} s exceeded"
                if soft
                else ("TaskTimeout: timed out")
            )
            audit.record_failed(task.id, reason, "", not task.retries)
        elif signal == S.SIGNAL_RETRYING:
            audit.record_state(task.id, "retrying", f"{task.retries} retries left")
        elif signal == S.SIGNAL_INTERRUPTED and getattr(huey, "reliable", False):
            audit.record_state(task.id, "queued", "interrupted: the consumer "
                               "stopped while the task ran; put back on the queue")  # fmt: skip
        elif signal == S.SIGNAL_INTERRUPTED:
            audit.record_failed(task.id, "interrupted: the consumer stopped while "
                                "the task ran", "", final=True)  # fmt: skip
        elif signal == S.SIGNAL_CANCELED:
            audit.record_failed(task.id, "canceled before it ran", "", final=True)
        elif signal in (S.SIGNAL_REVOKED, S.SIGNAL_EXPIRED):
            audit.record_state(task.id, "revoked" if signal == S.SIGNAL_REVOKED
                               else "expired")  # fmt: skip
        else:
            audit._event(task.id, signal)

    def handler(signal, task, *args):
        exc = args[0] if args else None
        try:
            write(signal, task, exc)
        except Exception:  # noqa: BLE001 - logged by log_write_failure
            # The audit log must never break a task.
            log_write_failure(task.id, signal)

    def record_result(task, value, exc):
        if exc is None and value is not None:
            try:
                audit.record_result(task.id, value)
            except Exception:  # noqa: BLE001 - logged by log_write_failure
                log_write_failure(task.id, "result")

    huey.signal()(handler)
    huey.post_execute(name="audit_result")(record_result)
