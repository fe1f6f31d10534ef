"""The exception tree of tshjobs.

Every error the appliance raises on purpose derives from `TshjobsError`. Task
errors split into `TemporaryError` (the task is retried under its policy) and
`PermanentError` (the task fails at once and waits in the audit log for a
person to retry it).
"""

from huey.exceptions import TaskTimeout


class TshjobsError(Exception):
    """Base class of every error raised by tshjobs."""


class ConfigError(TshjobsError):
    """Raised when a setting is missing or invalid; the message names the
    variable, the bad value and what is allowed."""


class TaskError(TshjobsError):
    """Base class of the errors a task raises to say how it failed."""


class TemporaryError(TaskError):
    """Raised when a task failed for a reason that may pass: a 4xx SMTP reply,
    a dropped connection, a timeout. The task is retried."""


class PermanentError(TaskError):
    """Raised when retrying cannot help: a 5xx SMTP reply, a missing entity,
    a customer without an email address. The task fails at once."""


class EntityNotFound(PermanentError):
    """Raised when an ERP row that a task needs does not exist."""

    def __init__(self, entity: str, entity_id):
        self.entity = entity
        self.entity_id = entity_id
        super().__init__(f"{entity} {entity_id} not found in the ERP database")


class MissingEmailAddress(PermanentError):
    """Raised when the customer an email is for has no usable email address."""


class SmtpTemporaryError(TemporaryError):
    """Raised when the SMTP server replied 4xx, dropped the connection or
    timed out. `maybe_delivered` is true when the connection broke after the
    message data were sent and before the server's reply, so the server may
    have stored the message."""

    def __init__(self, message: str, *, maybe_delivered: bool = False):
        super().__init__(message)
        self.maybe_delivered = maybe_delivered


class SmtpPermanentError(PermanentError):
    """Raised when the SMTP server rejected the message with a 5xx reply, or
    rejected our login."""


class AlreadySent(TshjobsError):
    """Raised when an email of this kind was already sent for this entity and
    the caller did not ask to force a repeat."""


class UnknownTask(TshjobsError):
    """Raised when a task name is not registered with the queue."""


class QueueUnavailable(TshjobsError):
    """Raised when a task cannot be queued: Redis is unreachable and
    TSHJOBS_SPOOL_WHEN_REDIS_DOWN is false, or the spool cannot be written."""


class NotRetryable(TshjobsError):
    """Raised when a person requests a retry of a task whose state does not
    allow it (only failed, expired and revoked tasks can be retried)."""


def is_temporary(exc: BaseException) -> bool:
    """Tell whether a task that raised `exc` may succeed if run again.

    Our own errors say so by class. Of the rest, only a task that ran past
    its soft time limit and connection-level failures count as temporary (a
    refused or dropped connection, a timeout, a locked or unreachable
    database). Anything else is a bug or bad data, and retrying it would only
    repeat the failure.
    """
    if isinstance(exc, TaskError):
        return isinstance(exc, TemporaryError)
    if isinstance(exc, TaskTimeout):
        return True
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    module = type(exc).__module__
    return type(exc).__name__ == "OperationalError" and module in (
        "sqlite3",
        "psycopg",
        "psycopg.errors",
    )
