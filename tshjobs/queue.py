"""The appliance's Huey instance, its retry policy and queue-level helpers.

Task modules declare tasks with `tshjobs.queue.task`; the ERP calls those
functions to enqueue. Storage is Redis when TSHJOBS_REDIS_URL is set and a
SQLite file in the data directory otherwise; both keep a dequeued task in
flight until its worker is done with it (`tshjobs.storage`,
`tshjobs.sqlite_storage`). The instance is built
lazily from the settings on first use, so importing a task module reads no
configuration.
"""

from __future__ import annotations

import contextvars
import functools
import importlib
import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

from huey import Huey
from huey import signals as S
from huey.api import Task
from huey.exceptions import HueyException, RetryTask

from tshjobs import errors, spool
from tshjobs.arguments import argument_check, check_json
from tshjobs.audit import (
    RETRYABLE_STATES,
    AuditLog,
    connect_signals,
    create_group_writable,
    full_name,
    log_write_failure,
)
from tshjobs.serializer import SignedSerializer
from tshjobs.settings import Settings, get_settings
from tshjobs.sqlite_storage import ReliableSqliteStorage
from tshjobs.storage import ReliableRedisStorage
from tshjobs.worker import WorkerMixin, retry_delay

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EnqueuedTask:
    """The handle a task function call returns, with the id of the new task."""

    id: str
    name: str

    def __str__(self) -> str:
        return self.id


class ApplianceHuey(WorkerMixin, Huey):
    """A Huey whose storage, serializer and audit log come from Settings.

    They are built on first use, or again by `configure()`: the task
    decorators need the instance at import time, before settings are read.
    """

    def __init__(self):
        self._settings: Settings | None = None
        self._storage = None
        self._audit: AuditLog | None = None
        super().__init__(name="tshjobs", results=False, utc=True)
        self._worker = threading.local()
        connect_signals(self, _AuditProxy(self))
        self.signal()(_log_signal)
        self.signal(S.SIGNAL_INTERRUPTED)(self._mark_interrupted)

    @property
    def reliable(self) -> bool:
        """Whether a task dequeued by a worker that dies is recovered."""
        return hasattr(self.storage, "recover")

    def create_storage(self):
        return None

    def enqueue(self, task):
        """Enqueue `task` and return an `EnqueuedTask` naming its id.

        With Redis storage the push has timeouts of tens of milliseconds, and
        a task that Redis does not take goes to the local spool, to be
        delivered in order once Redis is back (see `tshjobs.spool`). With
        TSHJOBS_SPOOL_WHEN_REDIS_DOWN=false it raises QueueUnavailable instead.
        Results are not kept in the queue's storage (the audit log keeps each
        task's outcome), so there is no Huey Result to return.
        """
        check_arguments = getattr(type(task), "check_arguments", None)
        if check_arguments is not None:
            check_arguments(task.args, task.kwargs)
        check_json(task.name, task.args, task.kwargs)

        spooled_because = None
        if self._immediate or not spool.uses_redis(self):
            super().enqueue(task)
        else:
            # The steps of Huey.enqueue, with the push to Redis replaced.
            if task.expires:
                task.resolve_expires(self.utc)
            self._emit(S.SIGNAL_ENQUEUED, task)
            data = self.serialize_task(task)
            spooled_because = spool.push_or_spool(self, task.id, data, task.priority)

        return EnqueuedTask(task.id, self.record_queued(task, spooled_because))

    def record_queued(self, task, spooled_because: str | None = None) -> str:
        """Write the audit row of a task just queued; return its name."""
        name = full_name(self, task)
        try:
            self.audit.record_enqueued(
                task.id,
                name,
                task.args,
                task.kwargs,
                self.name,
                spooled_because=spooled_because,
            )
        except Exception:  # noqa: BLE001 - logged by log_write_failure
            # The task is queued; the consumer writes its row when it starts.
            log_write_failure(task.id, "enqueued")
        return name

    def read_schedule(self, timestamp=None):
        """Move the scheduled tasks that are due onto the queue.

        Huey's scheduler enqueues what this returns. With reliable storage
        the tasks move inside the storage instead, so this returns nothing: a
        consumer killed halfway through leaves each task on the schedule or
        on the queue."""
        move = getattr(self.storage, "move_due_to_queue", None)
        if move is None:
            return super().read_schedule(timestamp)

        if timestamp is None:
            timestamp = self._get_timestamp()
        for data in move(timestamp):
            try:
                task = self.deserialize_task(data)
            except Exception:
                logger.exception("A task moved from the schedule cannot be read")
                continue
            self._emit(S.SIGNAL_ENQUEUED, task)
            self.record_queued(task)
        return []

    def configure(self, settings: Settings) -> None:
        self._settings = settings
        self.name = settings.queue_name
        self._serializer = SignedSerializer(settings.secret_key)
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        if settings.redis_url:
            storage_class = ReliableRedisStorage
            kwargs = {"url": settings.redis_url}
        else:
            storage_class = ReliableSqliteStorage
            kwargs = {"filename": str(settings.queue_path)}
            create_group_writable(settings.queue_path)
        self._storage = storage_class(self.name, **kwargs)
        self._audit = AuditLog(settings.audit_path)

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            self.configure(get_settings())
        return self._settings

    @property
    def storage(self):
        if self._storage is None:
            self.configure(get_settings())
        return self._storage

    @storage.setter
    def storage(self, value):
        self._storage = value

    @property
    def serializer(self):
        if self._settings is None:
            self.configure(get_settings())
        return self._serializer

    @serializer.setter
    def serializer(self, value):
        self._serializer = value

    @property
    def audit(self) -> AuditLog:
        if self._audit is None:
            self.configure(get_settings())
        return self._audit


class _AuditProxy:
    """Forwards to the current audit log, which exists only once configured."""

    def __init__(self, owner: ApplianceHuey):
        self._owner = owner

    def __getattr__(self, name):
        return getattr(self._owner.audit, name)


def _log_signal(signal, task, *args):
    extra = {"task_id": task.id, "task_name": task.name}
    if signal == S.SIGNAL_RETRYING:
        logger.info(
            "Task %s %s will be retried in %.0f s (%d retries left)",
            task.name, task.id, task.retry_delay or 0, task.retries, extra=extra,
        )  # fmt: skip
    elif signal == S.SIGNAL_ERROR and not task.retries:
        logger.warning(
            "Task %s %s failed for good: %s", task.name, task.id, args[0],
            extra=extra,
        )  # fmt: skip
    elif signal == S.SIGNAL_COMPLETE:
        logger.info("Task %s %s succeeded", task.name, task.id, extra=extra)


huey = ApplianceHuey()


def get_huey(settings: Settings | None = None) -> ApplianceHuey:
    """Return the shared instance, reconfigured when `settings` is given."""
    if settings is not None and settings is not huey._settings:
        huey.configure(settings)
    return huey


def audit_log(settings: Settings | None = None) -> AuditLog:
    return get_huey(settings).audit


_current_task: contextvars.ContextVar[Task | None] = contextvars.ContextVar(
    "current_task", default=None
)


def current_task_id() -> str:
    """Return the id of the task running in this thread, or "" outside one."""
    running = _current_task.get()
    return running.id if running is not None else ""


def _default_delays(settings: Settings) -> tuple[float, ...]:
    return settings.retry_delays


def current_task() -> Task | None:
    """Return the task running in this thread, or None outside one."""
    return _current_task.get()


def task(
    retries: int = 3,
    soft_time_limit: float | None = None,
    hard_time_limit: float | None = None,
    retry_delays: Callable[[Settings], tuple[float, ...]] | None = None,
    **huey_options,
):
    """Declare a task with the appliance's retry policy and time limits.

    Calls are checked against `fn`'s signature when they are enqueued (see
    `tshjobs.arguments`), so bad arguments fail in the caller. The time
    limits default to TSHJOBS_SOFT_TIME_LIMIT and TSHJOBS_HARD_TIME_LIMIT
    (see `tshjobs.timelimits`).

    A `TemporaryError` (or a connection-level OSError) is retried up to
    `retries` times, waiting as TSHJOBS_RETRY_DELAYS sets, or as
    `retry_delays(settings)` returns. A temporary error with a `retry_at`
    time (a rate limit that resets then) waits until that time without
    using up a retry. Any other exception is permanent: the task fails at
    once and waits in the audit log.
    """

    def decorator(fn):
        @functools.wraps(fn)
        def run(*args, task: Task, **kwargs):
            token = _current_task.set(task)
            try:
                return fn(*args, **kwargs)
            except Exception as exc:
                retry_at = getattr(exc, "retry_at", None)
                if errors.is_temporary(exc) and retry_at is not None:
                    # Huey's RetryTask keeps the retry count as it is.
                    message = f"{type(exc).__name__}: {exc}"
                    logger.info("Task %s waits until %s without using a retry: %s",
                                task.id, retry_at, message,
                                extra={"task_id": task.id})  # fmt: skip
                    # Huey sends no error signal for RetryTask, so the
                    # reason is written here.
                    try:
                        huey.audit.record_failed(task.id, message, "", final=False)
                    except Exception:  # noqa: BLE001 - logged by log_write_failure
                        log_write_failure(task.id, "waiting")
                    raise RetryTask(message, eta=retry_at) from exc
                if errors.is_temporary(exc) and task.retries:
                    settings = huey.settings
                    delays = (retry_delays or _default_delays)(settings)
                    number = retries - task.retries
                    task.retry_delay = retry_delay(
                        delays, number, settings.retry_jitter
                    )
                else:
                    task.retries = 0
                raise
            finally:
                _current_task.reset(token)

        return huey.task(
            retries=retries,
            context=True,
            check_arguments=staticmethod(argument_check(fn)),
            soft_time_limit=soft_time_limit,
            hard_time_limit=hard_time_limit,
            **huey_options,
        )(run)

    return decorator


def import_task_modules(settings: Settings | None = None) -> None:
    """Import every module named in TSHJOBS_TASK_MODULES, registering its tasks."""
    settings = settings or get_settings()
    for module in settings.task_modules:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise errors.ConfigError(
                f"TSHJOBS_TASK_MODULES: cannot import {module!r}: {exc}"
            ) from exc


def resolve_task_name(name: str) -> str:
    """Return the registered name for `name`: itself when it names a module,
    else the one registered task whose function is called `name`. Raise
    UnknownTask when none or several match."""
    if "." in name:
        return name

    matches = sorted(
        registered for registered in huey._registry._registry
        if registered.rsplit(".", 1)[-1] == name
    )  # fmt: skip
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise errors.UnknownTask(
            f"task name {name!r} is ambiguous: give one of " + ", ".join(matches)
        )
    raise errors.UnknownTask(
        f"no registered task is called {name!r}; docs/tasks.md lists the task names"
    )


def task_class(name: str) -> type[Task]:
    try:
        return huey._registry.string_to_task(name)
    except HueyException:
        raise errors.UnknownTask(
            f"task {name!r} is not registered: is its module imported by the "
            "consumer and the dashboard?"
        ) from None


def enqueue_by_name(name: str, args=(), kwargs=None) -> str:
    """Enqueue a registered task by its name and return the new task id."""
    new_task = task_class(name)(args=tuple(args), kwargs=dict(kwargs or {}))
    huey.enqueue(new_task)
    return new_task.id


def retry_task(task_id: str, username: str, settings: Settings | None = None) -> str:
    """Enqueue a failed, expired or revoked task again with its arguments,
    record who asked, and return the new task's id.

    A task is retried at most once: a second request, such as a double click,
    raises NotRetryable naming the task that retried it. Retry that one.
    """
    audit = audit_log(settings)
    row = audit.get(task_id)
    if row is None:
        raise errors.UnknownTask(f"task {task_id} is not in the audit log")
    if row["retried_by"]:
        raise errors.NotRetryable(
            f"task {task_id} was already retried as {row['retried_by']}"
        )
    if row["state"] not in RETRYABLE_STATES:
        raise errors.NotRetryable(
            f"task {task_id} is {row['state']}; only "
            + ", ".join(RETRYABLE_STATES)
            + " tasks can be retried"
        )

    args, kwargs = json.loads(row["args"]), json.loads(row["kwargs"])
    new_task = task_class(row["name"])(args=tuple(args), kwargs=kwargs)
    if not audit.claim_retry(task_id, new_task.id):
        current = audit.get(task_id) or {}
        raise errors.NotRetryable(
            f"task {task_id} was already retried as {current.get('retried_by')}"
        )
    try:
        huey.enqueue(new_task)
    except BaseException:
        audit.release_retry(task_id, new_task.id)
        raise

    audit.record_enqueued(new_task.id, row["name"], args, kwargs, huey.name,
                          retry_of=task_id)  # fmt: skip
    audit.log_action(username, "retry", task_id, f"new task {new_task.id}")
    logger.info(
        "Task %s retried by %s as %s", task_id, username, new_task.id,
        extra={"task_id": new_task.id},
    )  # fmt: skip
    return new_task.id


def queue_length(settings: Settings | None = None) -> int:
    return get_huey(settings).pending_count()


def scheduled_count(settings: Settings | None = None) -> int:
    return get_huey(settings).scheduled_count()
