"""The email sent log: one email per (email kind, entity id).

Each key moves through three states in the appliance's SQLite database:

- `claimed`: a task is preparing the message; nothing has reached SMTP yet.
- `sending`: the message data are going to the SMTP server, so from here on
  the server may have stored it.
- `sent`: the server accepted it (replied 250 to the data).

A task sends only while it holds the claim. Each claim names its holder
(`tshjobs.liveness`): another copy of the task, or another task, waits while
the holder lives, and takes over at once when it died. A key already `sent`
is skipped unless the caller forces a repeat.

A key left in `sending` by a holder that died, or by a connection that broke
before the server's reply, may or may not have been delivered: SMTP cannot
tell. It is marked `maybe_delivered`, and the next attempt sends it again
with the same Message-ID (the default), so a mail system that removes
duplicates by Message-ID keeps one copy. With `resend_uncertain=False` the
task fails with DeliveryUnknown instead, and a person decides.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from tshjobs import sqlite_files
from tshjobs.errors import PermanentError, TemporaryError
from tshjobs.liveness import current_holder, holder_is_alive

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
    holder TEXT,
    maybe_delivered INTEGER NOT NULL DEFAULT 0,
    message BLOB,
    PRIMARY KEY (kind, entity_id)
);
"""

# Columns added after the first release, for sent logs created before them.
ADDED_COLUMNS = {
    "holder": "ALTER TABLE email_sent_log ADD COLUMN holder TEXT",
    "maybe_delivered": "ALTER TABLE email_sent_log ADD COLUMN maybe_delivered"
    " INTEGER NOT NULL DEFAULT 0",
    "message": "ALTER TABLE email_sent_log ADD COLUMN message BLOB",
}

COLUMNS = (
    "kind, entity_id, state, task_id, recipient, message_id, claimed_at,"
    " sent_at, send_count, holder, maybe_delivered"
)

# A claim whose holder cannot be checked from this host (another host
# sharing the data directory) is taken over after this long. It is longer
# than any SMTP conversation the timeouts allow.
STALE_CLAIM_SECONDS = 15 * 60


class SendInProgress(TemporaryError):
    """Raised when a live holder has the claim on this email right now."""


class DeliveryUnknown(PermanentError):
    """Raised when an earlier attempt may have delivered the email and
    resending such emails is turned off."""


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
    holder: str | None
    maybe_delivered: bool


@dataclass(frozen=True)
class Claim:
    """The right to send one email, held by `holder`.

    `message_id` is set when an earlier attempt may have delivered the
    email: the new attempt must send it with this Message-ID, and `message`
    contains the bytes that attempt sent, to be sent again unchanged."""

    kind: str
    entity_id: str
    task_id: str
    holder: str
    message_id: str | None
    maybe_delivered: bool
    message: bytes | None = None


class SentLog:
    def __init__(self, path: Path):
        self.path = Path(path)
        self._connections = sqlite_files.PerThreadConnection(self._connect)
        # The database also contains the dashboard's password hashes.
        sqlite_files.create_file(self.path, 0o600, override_umask=False)
        conn = self._conn()
        conn.executescript(SCHEMA)
        present = {row[1] for row in conn.execute("PRAGMA table_info(email_sent_log)")}
        for column, statement in ADDED_COLUMNS.items():
            if column not in present:
                conn.execute(statement)

    def _conn(self) -> sqlite3.Connection:
        return self._connections.get()

    def _connect(self) -> sqlite3.Connection:
        return sqlite_files.connect(self.path, timeout=10.0)

    def get(self, kind: str, entity_id) -> SentRecord | None:
        row = (
            self._conn()
            .execute(
                f"SELECT {COLUMNS} FROM email_sent_log WHERE kind = ? AND entity_id = ?",
                (kind, str(entity_id)),
            )
            .fetchone()
        )
        if row is None:
            return None
        return SentRecord(*row[:-1], maybe_delivered=bool(row[-1]))

    def claim(
        self,
        kind: str,
        entity_id,
        task_id: str,
        *,
        force: bool = False,
        resend_uncertain: bool = True,
        holder: str | None = None,
    ) -> Claim | None:
        """Take the right to send this email for `holder` (by default the
        calling thread). Return None when it was sent already and `force` is
        not set. Raise SendInProgress while a live holder has it, and
        DeliveryUnknown when it may have been delivered and
        `resend_uncertain` is off."""
        key = (kind, str(entity_id))
        holder = holder or current_holder()
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            record = self.get(*key)
            if record is None:
                claim = Claim(*key, task_id, holder, None, False)
            elif record.state == "sent":
                if not force:
                    conn.execute("COMMIT")
                    return None
                # A forced repeat is a new email, with a Message-ID of its own.
                claim = Claim(*key, task_id, holder, None, False)
            else:
                self._check_holder(record, holder)
                claim = self._take_over(record, task_id, holder, force,
                                        resend_uncertain)  # fmt: skip
            self._write_claim(claim, record)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return claim

    def _check_holder(self, record: SentRecord, holder: str) -> None:
        """Raise SendInProgress unless the record's holder is this one, is
        gone, or cannot be checked and went stale."""
        if record.holder is None or record.holder == holder:
            return

        alive = holder_is_alive(record.holder)
        if alive is None:
            alive = time.time() - record.claimed_at < STALE_CLAIM_SECONDS
        if alive:
            doing = "sent" if record.state == "sending" else "prepared"
            raise SendInProgress(
                f"{record.kind} email for {record.entity_id} is being {doing} by "
                f"task {record.task_id}"
            )

    def _take_over(self, record, task_id, holder, force, resend_uncertain) -> Claim:
        maybe_delivered = record.maybe_delivered or record.state == "sending"
        if not maybe_delivered:
            return Claim(record.kind, record.entity_id, task_id, holder, None, False)

        if not (resend_uncertain or force):
            raise DeliveryUnknown(
                f"{record.kind} email for {record.entity_id}: an attempt by task "
                f"{record.task_id} stopped after handing message "
                f"{record.message_id} to the SMTP server and before its reply, so "
                "it may have been delivered. Check the mail server's log; retry "
                "with force=True to send it again."
            )
        logger.warning(
            "%s email for %s may have been delivered by an earlier attempt; "
            "sending it again as %s",
            record.kind, record.entity_id, record.message_id,
            extra={"task_id": task_id},
        )  # fmt: skip
        stored = (
            self._conn()
            .execute(
                "SELECT message FROM email_sent_log WHERE kind = ? AND entity_id = ?",
                (record.kind, record.entity_id),
            )
            .fetchone()
        )
        return Claim(record.kind, record.entity_id, task_id, holder,
                     record.message_id, True, stored[0])  # fmt: skip

    def _write_claim(self, claim: Claim, record: SentRecord | None) -> None:
        conn = self._conn()
        if record is None:
            conn.execute(
                "INSERT INTO email_sent_log (kind, entity_id, state, task_id,"
                " claimed_at, holder) VALUES (?, ?, 'claimed', ?, ?, ?)",
                (claim.kind, claim.entity_id, claim.task_id, time.time(),
                 claim.holder),
            )  # fmt: skip
            return

        conn.execute(
            "UPDATE email_sent_log SET state = 'claimed', task_id = ?,"
            " claimed_at = ?, holder = ?, message_id = coalesce(?, message_id),"
            " maybe_delivered = ?"
            " WHERE kind = ? AND entity_id = ?",
            (claim.task_id, time.time(), claim.holder, claim.message_id,
             int(claim.maybe_delivered), claim.kind, claim.entity_id),
        )  # fmt: skip

    def mark_sending(
        self, claim: Claim, recipient: str, message_id: str, message: bytes = b""
    ) -> None:
        """Record that the message data are about to go to the SMTP server,
        with the bytes of the message, which a resend after an uncertain
        delivery sends unchanged. Raise SendInProgress when the claim was
        taken over meanwhile, so that the caller sends nothing."""
        cursor = self._conn().execute(
            "UPDATE email_sent_log SET state = 'sending', recipient = ?,"
            " message_id = ?, claimed_at = ?, message = ?"
            " WHERE kind = ? AND entity_id = ? AND holder = ? AND state != 'sent'",
            (recipient, message_id, time.time(), message or None, claim.kind,
             claim.entity_id, claim.holder),
        )  # fmt: skip
        if cursor.rowcount != 1:
            raise SendInProgress(
                f"{claim.kind} email for {claim.entity_id}: the claim of task "
                f"{claim.task_id} was taken over before its message was sent"
            )

    def mark_sent(self, claim: Claim) -> None:
        """Record the server's acceptance, even when another holder took the
        claim over meanwhile, because the message went."""
        self._conn().execute(
            "UPDATE email_sent_log SET state = 'sent', sent_at = ?,"
            " send_count = send_count + 1, holder = NULL, maybe_delivered = 0,"
            " message = NULL"
            " WHERE kind = ? AND entity_id = ?",
            (time.time(), claim.kind, claim.entity_id),
        )

    def release(self, claim: Claim, maybe_delivered: bool = False) -> None:
        """Give the claim back after an attempt that failed, so that a retry
        may send. `maybe_delivered` means that this attempt's message may
        have reached the server (a connection lost before its reply). The
        record is kept, with its Message-ID, whenever this or an earlier
        attempt may have delivered the message; a key sent before stays
        sent."""
        conn = self._conn()
        params = (claim.kind, claim.entity_id, claim.holder)
        if maybe_delivered or claim.maybe_delivered:
            conn.execute(
                "UPDATE email_sent_log SET state = 'claimed', holder = NULL,"
                " maybe_delivered = 1"
                " WHERE kind = ? AND entity_id = ? AND holder = ?",
                params,
            )
            return

        conn.execute(
            "DELETE FROM email_sent_log WHERE kind = ? AND entity_id = ?"
            " AND holder = ? AND send_count = 0",
            params,
        )
        conn.execute(
            "UPDATE email_sent_log SET state = 'sent', holder = NULL"
            " WHERE kind = ? AND entity_id = ? AND holder = ? AND send_count > 0",
            params,
        )
