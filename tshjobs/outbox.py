"""The email sent log: at most one email per (email kind, entity id).

Each key moves through three states in the appliance's SQLite database:

- `claimed`: a task is preparing the message; nothing has reached SMTP yet.
- `sending`: the message is being handed to the SMTP server.
- `sent`: the server accepted it (replied 250 to DATA).

A task may send only when it takes the claim. A key already `sent` is skipped
unless the caller forces a repeat. A key left in `sending` by a worker that
died is ambiguous (the server may have accepted the message), so it is not
sent again by itself. The task fails with that reason, and a person decides.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from tshjobs.errors import PermanentError, TemporaryError

logger = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS email_sent_log (
    kind TEXT NOT NULL,
    entity_id TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('claimed', 'sending', 'sent')),
    task_id TEXT,
    recipient TEXT,
    message_id TEXT,
    claimed_at REAL NOT NULL,
    sent_at REAL,
    send_count INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (kind, entity_id)
);
"""

# A claim older than this is taken over: its worker is gone. Longer than any
# SMTP conversation the timeouts allow.
STALE_CLAIM_SECONDS = 15 * 60


class SendInProgress(TemporaryError):
    """Raised when another task has the claim on this email right now."""


class DeliveryUnknown(PermanentError):
    """Raised when an earlier attempt died while handing the email to the SMTP
    server, so it may have been delivered."""


@dataclass(frozen=True)
class SentRecord:
    kind: str
    entity_id: str
    state: str
    task_id: str | None
    recipient: str | None
    message_id: str | None
    claimed_at: float
    sent_at: float | None
    send_count: int


class SentLog:
    def __init__(self, path: Path):
        self.path = Path(path)
        self._local = threading.local()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            # The database also contains the dashboard's password hashes.
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        except FileExistsError:
            pass
        self._conn().executescript(SCHEMA)

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None or getattr(self._local, "pid", None) != os.getpid():
            conn = sqlite3.connect(self.path, timeout=10.0, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            self._local.conn = conn
            self._local.pid = os.getpid()
        return conn

    def get(self, kind: str, entity_id) -> SentRecord | None:
        row = (
            self._conn()
            .execute(
                "SELECT kind, entity_id, state, task_id, recipient, message_id,"
                " claimed_at, sent_at, send_count FROM email_sent_log"
                " WHERE kind = ? AND entity_id = ?",
                (kind, str(entity_id)),
            )
            .fetchone()
        )
        return SentRecord(*row) if row else None

    def claim(self, kind: str, entity_id, task_id: str, force=False) -> bool:
        """Take the right to send this email. Return False when it was already
        sent and `force` is not set; raise when it cannot be decided now."""
        key = (kind, str(entity_id))
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            record = self.get(*key)
            now = time.time()
            if record is None:
                conn.execute(
                    "INSERT INTO email_sent_log (kind, entity_id, state, task_id,"
                    " claimed_at) VALUES (?, ?, 'claimed', ?, ?)",
                    (*key, task_id, now),
                )
            elif record.state == "sent" and not force:
                conn.execute("COMMIT")
                return False
            elif record.state == "sending":
                self._check_sending(record, task_id, now, force)
            elif (
                record.state == "claimed"
                and record.task_id != task_id
                and now - record.claimed_at < STALE_CLAIM_SECONDS
            ):
                raise SendInProgress(
                    f"{kind} email for {entity_id} is being prepared by task "
                    f"{record.task_id}"
                )
            if record is not None:
                conn.execute(
                    "UPDATE email_sent_log SET state = 'claimed', task_id = ?,"
                    " claimed_at = ? WHERE kind = ? AND entity_id = ?",
                    (task_id, now, *key),
                )
            conn.execute("COMMIT")
            return True
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def _check_sending(self, record: SentRecord, task_id, now, force) -> None:
        """Raise unless a message left in `sending` may be sent again: only
        when forced, and only once no live worker can still be sending it.
        The same task id finding its own `sending` row means an earlier run
        of it died mid-send."""
        stale = now - record.claimed_at >= STALE_CLAIM_SECONDS
        if force and (stale or record.task_id == task_id):
            return
        if not stale and record.task_id != task_id:
            raise SendInProgress(
                f"{record.kind} email for {record.entity_id} is being sent by "
                f"task {record.task_id}"
            )
        raise DeliveryUnknown(
            f"{record.kind} email for {record.entity_id}: task {record.task_id} "
            "stopped while handing it to the SMTP server, so it may have been "
            "delivered. Check the mail server's log; retry with force=True to "
            "send it again."
        )

    def mark_sending(self, kind, entity_id, task_id, recipient, message_id):
        self._conn().execute(
            "UPDATE email_sent_log SET state = 'sending', recipient = ?,"
            " message_id = ?, claimed_at = ?"
            " WHERE kind = ? AND entity_id = ? AND task_id = ?",
            (recipient, message_id, time.time(), kind, str(entity_id), task_id),
        )

    def mark_sent(self, kind, entity_id, task_id) -> None:
        self._conn().execute(
            "UPDATE email_sent_log SET state = 'sent', sent_at = ?,"
            " send_count = send_count + 1"
            " WHERE kind = ? AND entity_id = ? AND task_id = ?",
            (time.time(), kind, str(entity_id), task_id),
        )

    def release(self, kind, entity_id, task_id) -> None:
        """Give the claim back after the SMTP server refused the message, so
        that a retry may send it. A key that was sent before stays sent."""
        conn = self._conn()
        conn.execute(
            "DELETE FROM email_sent_log WHERE kind = ? AND entity_id = ?"
            " AND task_id = ? AND send_count = 0",
            (kind, str(entity_id), task_id),
        )
        conn.execute(
            "UPDATE email_sent_log SET state = 'sent'"
            " WHERE kind = ? AND entity_id = ? AND task_id = ? AND send_count > 0",
            (kind, str(entity_id), task_id),
        )
