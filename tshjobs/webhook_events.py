"""The Zoho Books webhook events already processed, for dedupe.

Zoho Books retries a failed webhook delivery later, so one event can arrive
twice, late, or twice at once. Each event gets a key (`event_key`), and
`WebhookEventLog` stores the keys in the `zoho_webhook_events` table of the
appliance's SQLite database, the file of the email sent log. An event moves
from `applying` (claimed by a task) to `done` (with its outcome line). The
table `zoho_webhook_versions` keeps the newest Zoho modified time applied
per Zoho record, so that a late delivery of an older change is ignored.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sqlite3
import time
from pathlib import Path

from tshjobs import sqlite_files
from tshjobs.errors import TemporaryError
from tshjobs.liveness import current_holder, holder_is_alive

logger = logging.getLogger(__name__)

# A claim whose holder cannot be checked from this host is taken over after
# this long, as in the email sent log.
STALE_CLAIM_SECONDS = 15 * 60

# Processed events are kept this long, longer than Zoho goes on retrying.
# NOTE: Zoho Books does not document its retry schedule; 90 days is a guess
# with a wide margin.
KEEP_EVENTS_SECONDS = 90 * 24 * 3600

SCHEMA = """
CREATE TABLE IF NOT EXISTS zoho_webhook_events (
    event_key TEXT PRIMARY KEY,
    event_type TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('applying', 'done')),
    task_id TEXT,
    holder TEXT,
    outcome TEXT,
    claimed_at REAL NOT NULL,
    done_at REAL
);
CREATE INDEX IF NOT EXISTS zoho_webhook_events_done
    ON zoho_webhook_events (done_at);
CREATE TABLE IF NOT EXISTS zoho_webhook_versions (
    entity TEXT PRIMARY KEY,
    modified_at TEXT NOT NULL
);
"""


class WebhookInProgress(TemporaryError):
    """Raised when another live worker is applying the same event right now.
    The task is retried and then finds the event done."""


class WebhookEventLog:
    """The processed webhook events and the newest change applied per Zoho
    record, in the appliance's SQLite database."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._connections = sqlite_files.PerThreadConnection(self._connect)
        # The database also contains the dashboard's password hashes.
        sqlite_files.create_file(self.path, 0o600, override_umask=False)
        self._conn().executescript(SCHEMA)

    def _conn(self) -> sqlite3.Connection:
        return self._connections.get()

    def _connect(self) -> sqlite3.Connection:
        return sqlite_files.connect(self.path, timeout=10.0)

    def get(self, key: str) -> dict | None:
        cursor = self._conn().execute(
            "SELECT event_key, event_type, state, task_id, holder, outcome,"
            " claimed_at, done_at FROM zoho_webhook_events WHERE event_key = ?",
            (key,),
        )
        row = cursor.fetchone()
        if row is None:
            return None
        return dict(zip([column[0] for column in cursor.description], row))

    def claim(self, key, event_type, task_id, version=None) -> str | None:
        """Take the event `key` for the calling thread and return None, or
        return the outcome line of an event that must not be applied: one
        done already, or one older than the newest change applied to its
        Zoho record. `version` is (record, modified time) or None.

        The check and the insert are one BEGIN IMMEDIATE transaction, so of
        two copies only one gets the claim. Raises WebhookInProgress when a
        live holder is applying the event.
        """
        holder = current_holder()
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            refusal = self._refusal(key, holder)
            if refusal is None:
                # NOTE: the newest version is recorded only when an event is
                # done, so two events of one record claimed at the same time
                # both pass this check and apply in either order.
                refusal = self._stale(version)
                state = "done" if refusal else "applying"
                conn.execute(
                    "INSERT OR REPLACE INTO zoho_webhook_events (event_key,"
                    " event_type, state, task_id, holder, outcome, claimed_at,"
                    " done_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (key, event_type, state, task_id, None if refusal else holder,
                     refusal, time.time(), time.time() if refusal else None),
                )  # fmt: skip
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return refusal

    def _refusal(self, key: str, holder: str) -> str | None:
        row = self.get(key)
        if row is None:
            return None
        if row["state"] == "done":
            return (
                f"duplicate: event {key} was processed by task {row['task_id']}: "
                f"{row['outcome']}"
            )

        if row["holder"] is None or row["holder"] == holder:
            return None
        alive = holder_is_alive(row["holder"])
        if alive is None:
            alive = time.time() - row["claimed_at"] < STALE_CLAIM_SECONDS
        if alive:
            raise WebhookInProgress(
                f"event {key} is being applied by task {row['task_id']}"
            )
        logger.warning(
            "Zoho webhook %s: task %s died while applying it; applying it again",
            key, row["task_id"],
        )  # fmt: skip
        return None

    def _stale(self, version: tuple[str, str] | None) -> str | None:
        if version is None:
            return None
        entity, modified_at = version
        row = (
            self._conn()
            .execute(
                "SELECT modified_at FROM zoho_webhook_versions WHERE entity = ?",
                (entity,),
            )
            .fetchone()
        )
        if row is None or row[0] <= modified_at:
            return None
        return (
            f"ignored: stale event, Zoho {entity} was modified at {modified_at} "
            f"and a change of {row[0]} is applied already"
        )

    def finish(self, key: str, outcome: str, version=None) -> None:
        """Mark the event done with its outcome, record the modified time of
        its Zoho record, and delete events done long ago."""
        conn = self._conn()
        now = time.time()
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute(
                "UPDATE zoho_webhook_events SET state = 'done', outcome = ?,"
                " holder = NULL, done_at = ? WHERE event_key = ?",
                (outcome, now, key),
            )
            if version is not None:
                conn.execute(
                    "INSERT INTO zoho_webhook_versions (entity, modified_at)"
                    " VALUES (?, ?) ON CONFLICT (entity) DO UPDATE SET"
                    " modified_at = max(modified_at, excluded.modified_at)",
                    version,
                )
            conn.execute(
                "DELETE FROM zoho_webhook_events WHERE state = 'done' AND done_at < ?",
                (now - KEEP_EVENTS_SECONDS,),
            )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def release(self, key: str) -> None:
        """Give up the claim after a failure, so a retry or a later
        delivery applies the event."""
        self._conn().execute(
            "DELETE FROM zoho_webhook_events WHERE event_key = ? AND holder = ?"
            " AND state = 'applying'",
            (key, current_holder()),
        )


def event_key(event: dict) -> str:
    """Return the dedupe key: "event_id:<id>" from Zoho's event id, else
    "sha256:<hex>" of the event as canonical JSON (sorted keys, no spaces)."""
    event_id = event.get("event_id")
    if isinstance(event_id, (str, int)) and str(event_id).strip():
        return f"event_id:{str(event_id).strip()}"

    canonical = json.dumps(
        event, sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()
