"""The audit log: one SQLite row per task, and an event row per signal.

Rows are written here and only here, from Huey's signals (see
`connect_signals`), never from inside a task. A write that fails is logged and
swallowed, so a broken audit database never breaks a task. When it failed for
a reason that may pass (the database locked, full or read-only), the write is
also kept in a retry buffer next to the database and replayed in order later
(see `AuditLog.replay_pending`).

Modules:

- `schema`: tables, task states, busy timeouts, shared column helpers.
- `retry_buffer`: the SQLite file that keeps failed writes (AuditRetryBuffer).
- `replay`: keeping writes in order, and replaying them (ReplayMixin).
- `log`: AuditLog and its writers.
- `readers`: AuditLog's queries for the dashboard and the CLI.
- `signals`: Huey's signals wired to the writers.

NOTE: the names below are imported from those modules. To monkeypatch one,
patch it in the module that uses it, because setting it here changes nothing.
"""

from tshjobs.audit.log import AuditLog
from tshjobs.audit.replay import (
    REPLAY_BATCH,
    REPLAY_BUSY_TIMEOUT,
    REPLAY_LIMIT_BEFORE_WRITE,
    TRANSIENT_SQLITE_CODES,
    AuditWriteDeferred,
)
from tshjobs.audit.retry_buffer import (
    RETRY_BUFFER_BUSY_TIMEOUT,
    RETRY_SCHEMA,
    AuditRetryBuffer,
    audit_backlog,
    retry_buffer_path,
)
from tshjobs.audit.schema import (
    BUSY_TIMEOUT,
    ENQUEUE_BUSY_TIMEOUT,
    FINAL_STATES,
    MAX_ERROR_CHARS,
    MAX_TRACEBACK_CHARS,
    RETRYABLE_STATES,
    SCHEMA,
    STATES,
)
from tshjobs.audit.signals import connect_signals, full_name, log_write_failure
from tshjobs.sqlite_files import create_group_writable

__all__ = [
    "BUSY_TIMEOUT",
    "ENQUEUE_BUSY_TIMEOUT",
    "FINAL_STATES",
    "MAX_ERROR_CHARS",
    "MAX_TRACEBACK_CHARS",
    "REPLAY_BATCH",
    "REPLAY_BUSY_TIMEOUT",
    "REPLAY_LIMIT_BEFORE_WRITE",
    "RETRYABLE_STATES",
    "RETRY_BUFFER_BUSY_TIMEOUT",
    "RETRY_SCHEMA",
    "SCHEMA",
    "STATES",
    "TRANSIENT_SQLITE_CODES",
    "AuditLog",
    "AuditRetryBuffer",
    "AuditWriteDeferred",
    "audit_backlog",
    "connect_signals",
    "create_group_writable",
    "full_name",
    "log_write_failure",
    "retry_buffer_path",
]
