"""What a worker does around each task: in-flight bookkeeping and time limits.

`WorkerMixin` is mixed into the appliance's Huey class. Its `dequeue` keeps
the raw message of the task a worker runs, and its `execute` acknowledges
that message once Huey is done with the task, puts it back when a shutdown
interrupted the task, and enforces the soft and hard time limits of
`tshjobs.timelimits`.
"""

from __future__ import annotations

import datetime
import logging
import random
import sqlite3
import time

from huey import signals as S
from huey.exceptions import HueyException
from redis.exceptions import RedisError

from tshjobs.audit import log_write_failure
from tshjobs.timelimits import HardTimeLimit, in_process_worker, soft_time_limit

logger = logging.getLogger(__name__)

# Seconds a worker keeps trying to queue a retry while the queue storage is
# unreachable or locked, before it leaves the attempt in flight for recovery.
REQUEUE_PATIENCE = 60.0

# Errors of the queue storage that may pass: Redis unreachable, the SQLite
# queue file locked.
STORAGE_ERRORS = (RedisError, sqlite3.OperationalError)


def retry_delay(delays: tuple[float, ...], retry_number: int, jitter: float) -> float:
    """Seconds to wait before retry `retry_number` (0 for the first): the
    configured delay for that retry, the last one repeating, spread by
    +/- `jitter` so that tasks failing together do not retry together."""
    if not delays:
        return 0.0
    base = delays[min(retry_number, len(delays) - 1)]
    return max(0.0, base * (1 + random.uniform(-jitter, jitter)))


class WorkerMixin:
    """Worker-side methods of ApplianceHuey; see the module docstring."""

    def _mark_interrupted(self, signal, task, *args):
        self._worker.interrupted = True

    def time_limits(self, task) -> tuple[float, float]:
        """Return the task's (soft, hard) limits in seconds."""
        soft = getattr(type(task), "soft_time_limit", None)
        hard = getattr(type(task), "hard_time_limit", None)
        return (soft or self.settings.soft_time_limit,
                hard or self.settings.hard_time_limit)  # fmt: skip

    def _timeout_context(self, task):
        return soft_time_limit(self.time_limits(task)[0])

    def dequeue(self):
        """Take the next task; with reliable storage it stays in this worker's
        in-flight list until `execute` has finished with it."""
        data = self.storage.dequeue()
        if data is None:
            return None

        key = self.storage.inflight_key() if self.reliable else None
        try:
            task = self.deserialize_task(data)
        except Exception:
            # Unsigned or unknown tasks are logged and dropped, not redelivered.
            self._ack(data, key)
            raise
        self._worker.inflight = (data, key)
        self._worker.interrupted = False
        return task

    def execute(self, task, timestamp=None):
        inflight = getattr(self._worker, "inflight", None)
        self._worker.inflight = None
        self._worker.executing = inflight
        self._worker.keep_inflight = False
        hard = self.time_limits(task)[1]
        end_process = in_process_worker()

        def on_expiry(ends_process):
            self._on_hard_limit(task, hard, inflight, ends_process)

        if inflight is not None and self.reliable:
            timestamp = timestamp or self._get_timestamp()
            if not self.ready_to_run(task, timestamp):
                # Huey would add it to the schedule and then acknowledge it,
                # two steps a kill could split.
                self._worker.executing = None
                self._requeue_and_ack(task, task.eta, inflight)
                return None

        try:
            with HardTimeLimit(hard, on_expiry, end_process):
                return super().execute(task, timestamp)
        finally:
            self._worker.executing = None
            if inflight is None:
                pass
            elif getattr(self._worker, "interrupted", False):
                self.storage.requeue(*inflight)
                logger.warning("Task %s interrupted; put back on the queue", task.id,
                               extra={"task_id": task.id})  # fmt: skip
            elif self._worker.keep_inflight:
                logger.error(
                    "Task %s: its retry could not be queued; it stays in flight "
                    "and is recovered when this consumer restarts", task.id,
                    extra={"task_id": task.id},
                )  # fmt: skip
            else:
                self._ack(*inflight)

    def _requeue_task(self, task, timestamp, retry_eta=None):
        """Queue the retry of a failed attempt. With reliable storage the
        retry is written and the attempt acknowledged in one transaction."""
        inflight = getattr(self._worker, "executing", None)
        if inflight is None or not self.reliable:
            return super()._requeue_task(task, timestamp, retry_eta)

        task.retries -= 1
        eta = retry_eta
        if eta is None and task.retry_delay:
            eta = timestamp + datetime.timedelta(seconds=task.retry_delay)
            if task.retry_backoff:
                task.retry_delay *= task.retry_backoff
        self._requeue_and_ack(task, eta, inflight)

    def _requeue_and_ack(self, task, eta, inflight) -> None:
        """Put `task` on the schedule for `eta` (on the queue for None) and
        acknowledge its in-flight attempt, atomically. Storage errors are
        retried for up to REQUEUE_PATIENCE seconds."""
        task.eta = eta
        data = self.serialize_task(task)
        deadline = time.monotonic() + REQUEUE_PATIENCE
        pause = 0.1
        while True:
            try:
                self.storage.schedule_and_ack(data, eta, *inflight)
                break
            except STORAGE_ERRORS as exc:
                if time.monotonic() + pause > deadline:
                    self._worker.keep_inflight = True
                    raise
                logger.warning("Task %s: queueing its retry failed (%s); trying "
                               "again in %.1f s", task.id, exc, pause,
                               extra={"task_id": task.id})  # fmt: skip
                time.sleep(pause)
                pause = min(pause * 2, 2.0)

        logger.info("Task %s: put on the %s, %d retries left", task.id,
                    f"schedule for {eta}" if eta else "queue", task.retries,
                    extra={"task_id": task.id})  # fmt: skip
        if eta is None:
            self._emit(S.SIGNAL_ENQUEUED, task)
            self.record_queued(task)
        else:
            self._emit(S.SIGNAL_SCHEDULED, task)

    def _on_hard_limit(self, task, seconds, inflight, ends_process) -> None:
        """Retry or fail a task past its hard limit, from the watchdog thread."""
        reason = f"TimeLimitExceeded: hard time limit of {seconds:g} s exceeded"
        if not ends_process:
            # NOTE: a thread cannot be stopped from outside, so in a thread
            # worker the task keeps its thread until it returns by itself.
            logger.error("Task %s: %s; a thread worker cannot stop it", task.id,
                         reason, extra={"task_id": task.id})  # fmt: skip
            try:
                self.audit.record_event(task.id, "hard time limit", reason)
            except Exception:  # noqa: BLE001 - logged by log_write_failure
                log_write_failure(task.id, "hard time limit")
            return

        final = not task.retries
        self._audit_failure(task, reason + "; worker process ended", final)
        if not final:
            settings = self.settings
            declared = getattr(type(task), "default_retries", task.retries)
            delay = retry_delay(settings.retry_delays, declared - task.retries,
                                settings.retry_jitter)  # fmt: skip
            task.retries -= 1
            eta = self._get_timestamp() + datetime.timedelta(seconds=delay)
            if inflight is not None and self.reliable:
                self._requeue_and_ack(task, eta, inflight)
                inflight = None
            else:
                task.eta = eta
                self.add_schedule(task)
        if inflight is not None:
            self._ack(*inflight)
        logger.error("Task %s: %s; %s", task.id, reason,
                     "failed" if final else "retry scheduled",
                     extra={"task_id": task.id})  # fmt: skip

    def _audit_failure(self, task, reason: str, final: bool) -> None:
        try:
            self.audit.record_failed(task.id, reason, "", final=final)
        except Exception:  # noqa: BLE001 - logged by log_write_failure
            log_write_failure(task.id, "hard time limit")

    def _ack(self, data, key=None) -> None:
        ack = getattr(self.storage, "ack", None)
        if ack is not None:
            ack(data, key)

    def deserialize_task(self, data):
        """Load a dequeued task. One whose name this process does not know
        is lost to Huey, so it is marked failed in the audit log, where it
        can be retried once its module is in TSHJOBS_TASK_MODULES."""
        try:
            return super().deserialize_task(data)
        except HueyException as exc:
            message = self.serializer.deserialize(data)
            logger.error("Dropped task %s: %s", message.id, exc,
                         extra={"task_id": message.id})  # fmt: skip
            try:
                self.audit.record_enqueued(message.id, message.name, message.args,
                                           message.kwargs, self.name)  # fmt: skip
                self.audit.record_failed(
                    message.id,
                    f"UnknownTask: {message.name} is not registered in this "
                    "consumer; add its module to TSHJOBS_TASK_MODULES",
                    "",
                )
            except Exception:  # noqa: BLE001 - logged by log_write_failure
                log_write_failure(message.id, "unknown task")
            raise
