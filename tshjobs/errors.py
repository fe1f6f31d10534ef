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


class ZohoError(TshjobsError):
    """Base class of the errors raised by the Zoho Books client.

    The message names the request's method and path (never a token or a
    secret), the HTTP status, and Zoho's code and message when Zoho sent them.
    The same values are attributes, for the sync tasks to branch on.
    """

    def __init__(
        self,
        reason: str,
        *,
        method: str = "",
        path: str = "",
        status: int | None = None,
        code: int | str | None = None,
        zoho_message: str = "",
    ):
        self.reason = reason
        self.method = method
        self.path = path
        self.status = status
        self.code = code
        self.zoho_message = zoho_message
        super().__init__(self._describe())

    def _describe(self) -> str:
        request = f"{self.method} {self.path}: " if self.method else ""
        details = []
        if self.status is not None:
            details.append(f"HTTP {self.status}")
        if self.code is not None:
            details.append(f"Zoho code {self.code}: {self.zoho_message or '-'}")
        suffix = f" ({', '.join(details)})" if details else ""
        return f"{request}{self.reason}{suffix}"

    def __reduce__(self):
        # Rebuild from the attributes: the keyword-only arguments and the
        # retry time of subclasses are not in self.args.
        return (_restore_zoho_error, (type(self), self.__dict__.copy()))


def _restore_zoho_error(cls, state):
    error = cls.__new__(cls)
    error.__dict__.update(state)
    Exception.__init__(error, error._describe())
    return error


class _RetryAtMixin:
    """Adds `retry_at`, the UTC datetime from which a new call may succeed."""

    def __init__(self, reason: str, *, retry_at, **details):
        self.retry_at = retry_at
        super().__init__(reason, **details)

    def _describe(self) -> str:
        return (
            f"{super()._describe()}; retry after {self.retry_at:%Y-%m-%d %H:%M:%S} UTC"
        )


class ZohoNotConfigured(ZohoError, ConfigError):
    """Raised when Zoho Books is used but a TSHJOBS_ZOHO_* setting it needs is
    empty; the message names each missing variable."""


class ZohoDataCentreMismatch(ZohoError, ConfigError):
    """Raised when the token server names an API host (`api_domain`) outside
    the configured data centre, or outside the host of a test accounts server.
    Fix TSHJOBS_ZOHO_DATA_CENTRE or TSHJOBS_ZOHO_ACCOUNTS_URL."""


class ZohoAuthError(ZohoError, PermanentError):
    """Raised when Zoho rejects the access token (HTTP 401 or code 57) even
    after one refresh, or rejects the client id or secret: a missing scope or
    a wrong client."""


class ZohoReauthorizationRequired(ZohoError, PermanentError):
    """Raised when the refresh token is dead (`invalid_code`): a person must
    authorise the client again and set TSHJOBS_ZOHO_REFRESH_TOKEN."""


class ZohoTokenLimited(_RetryAtMixin, ZohoError, TemporaryError):
    """Raised when no access token may be requested before `retry_at`: the
    budget of token requests (10 per 10 minutes) is spent, or Zoho responded
    that too many were made."""


class ZohoRateLimited(_RetryAtMixin, ZohoError, TemporaryError):
    """Raised on HTTP 429, or when no call slot came free within the maximum
    wait. `retry_at` is the start of the next rate limit window."""


class ZohoDailyLimitReached(_RetryAtMixin, ZohoError, TemporaryError):
    """Raised when the daily call limit is reached; `retry_at` is when the
    daily count resets."""


class ZohoNotFound(ZohoError, PermanentError):
    """Raised when the record does not exist (HTTP 404 or code 1002)."""


class ZohoValidationError(ZohoError, PermanentError):
    """Raised when Zoho rejects the request (HTTP 400 or 405) for a reason
    with no class of its own; `code` and `zoho_message` give Zoho's reason."""


class ZohoDuplicate(ZohoValidationError):
    """Raised when the record would duplicate one that exists: code 3062 (a
    contact with this name exists) or a duplicate unique custom field."""


class ZohoSyncFailed(PermanentError):
    """Raised by a sync task whose entity cannot be synced without a person:
    the message starts with the entity's ERP id (such as "C-17"), then the
    error that stopped it."""


class ZohoServerError(ZohoError, TemporaryError):
    """Raised on HTTP 5xx, code 1000 (internal error) or a response that is
    not Zoho's JSON envelope."""


class ZohoConnectionError(ZohoError, TemporaryError):
    """Raised when no connection to Zoho could be made or it broke before a
    response came. A call that was sent may have been applied."""


class ZohoTimeout(ZohoConnectionError):
    """Raised when Zoho did not connect or respond within TSHJOBS_ZOHO_TIMEOUT
    seconds. A call that was sent may have been applied."""


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
