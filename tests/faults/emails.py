"""The email workload of the fault tests, and an SMTP server that kills senders.

The workload sends one email to each of N customers of a seeded PostgreSQL
ERP: an order confirmation to customers with an odd id and an order, a
welcome email to the rest. Every customer gets the unique address
chaos-<id>@example.com, so the effect key is the recipient and each must
receive exactly one email: one Message-ID. A copy resent with the same
Message-ID, after an attempt stopped between the message data and the
server's reply, is counted apart as a repeat.

The sent-log row (`tshjobs.outbox`) of a running email task splits the
harness's RUNNING phase in four. PREPARING comes before the message reaches
SMTP, and SENDING while it is handed over. ACCEPTED means the server has
stored it while the sent log is still at `sending`, and SENT that the sent
log is at `sent`.
"""

from __future__ import annotations

import logging
import random
import sqlite3
import threading
import time
from collections import Counter
from email import policy
from email.parser import BytesHeaderParser
from pathlib import Path

from tests.faults.harness import ChaosRun, Workload
from tshjobs.erp.db import connect
from tshjobs.erp.seed import seed
from tshjobs.mail.capture import CapturedMessage, CaptureServer

log = logging.getLogger(__name__)

PREPARING = "preparing"  # no sent-log row yet, or `claimed`
SENDING = "sending"  # sent log `sending`; the server has not stored it
ACCEPTED = "accepted"  # the server stored it; sent log still `sending`
SENT = "sent"  # sent log `sent`; the task has not finished

_header_parser = BytesHeaderParser(policy=policy.default)


def message_id_of(content: bytes) -> str:
    return str(_header_parser.parsebytes(content)["Message-ID"]).strip()


def address_of(customer_id: int) -> str:
    return f"chaos-{customer_id}@example.com"


def prepare_erp(url: str, customers: int, rng_seed: int) -> list[tuple[str, int, str]]:
    """Seed the ERP and return (email kind, entity id, recipient) per email,
    in a shuffled order."""
    seed(url, customers=customers, orders=customers, products=20, days=30)
    with connect(url) as database:
        database.execute_sql(
            "UPDATE customers SET email = 'chaos-' || id || '@example.com'"
        )
        rows = database.fetch_all_sql(
            "SELECT customer_id, min(id) AS order_id FROM orders GROUP BY customer_id"
        )
    first_order = {row["customer_id"]: row["order_id"] for row in rows}

    jobs = []
    for customer_id in range(1, customers + 1):
        order_id = first_order.get(customer_id)
        if customer_id % 2 and order_id is not None:
            jobs.append(("order_confirmation", order_id, address_of(customer_id)))
        else:
            jobs.append(("welcome", customer_id, address_of(customer_id)))
    random.Random(rng_seed).shuffle(jobs)
    return jobs


class SentLogReader:
    """Read-only access to the consumers' sent log, one connection a thread."""

    def __init__(self, path: Path):
        self.path = path
        self._local = threading.local()

    def row_of_task(self, task_id: str) -> sqlite3.Row | None:
        return self._query("SELECT * FROM email_sent_log WHERE task_id = ?", task_id)

    def row_of_message(self, message_id: str) -> sqlite3.Row | None:
        return self._query(
            "SELECT * FROM email_sent_log WHERE message_id = ?", message_id
        )

    def _query(self, sql: str, value: str) -> sqlite3.Row | None:
        if not self.path.exists():
            return None
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=10.0)
            conn.row_factory = sqlite3.Row
            self._local.conn = conn

        # A reader can meet "locking protocol" (SQLITE_PROTOCOL) while a
        # killed writer's WAL is recovered; it passes on a second try.
        for attempt in range(50):
            try:
                return conn.execute(sql, (value,)).fetchone()
            except sqlite3.OperationalError as exc:
                # A consumer creates the file a moment before the table.
                if "no such table" in str(exc):
                    return None
                if "locking protocol" not in str(exc) or attempt == 49:
                    raise
                time.sleep(0.02)
        return None


class TrapServer(CaptureServer):
    """A CaptureServer that kills the worker sending chosen messages.

    The messages are counted from 1 as their data arrive. For a number in
    `kill_before_store`, the worker is killed before the server stores the
    message, and the server drops it: the worker died before the server
    accepted the message. For a number in `kill_after_store`, the server
    stores the message and stops the worker with SIGSTOP before it replies
    250. The worker is killed KILL_DELAY seconds later, so it dies with the
    250 unread and the sent log still at `sending`.

    It also records the Message-ID of every message stored, for the phases.
    """

    # Seconds between the 250 reply and the SIGKILL of a worker stopped by
    # kill_after_store.
    KILL_DELAY = 0.3

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.run: ChaosRun | None = None
        self.sent_log: SentLogReader | None = None
        self.kill_before_store: set[int] = set()
        self.kill_after_store: set[int] = set()
        self.stored_ids: set[str] = set()
        self.trap_kills: dict[str, list[str]] = {"before store": [], "after store": []}
        self.trap_misses: list[str] = []
        self._received = 0
        self._trap_lock = threading.Lock()

    def attach(self, run: ChaosRun) -> None:
        """Let the traps kill through `run`, which reads its sent log."""
        self.run = run
        self.sent_log = SentLogReader(run.data_dir / "tshjobs.db")

    def _store(self, envelope) -> CapturedMessage:
        # NOTE: overrides a private method of CaptureServer, which calls it
        # for each message whose data arrived, before its 250 reply.
        with self._trap_lock:
            self._received += 1
            number = self._received
        message_id = message_id_of(envelope.original_content)

        if number in self.kill_before_store and self._kill_sender(
            message_id, "before store", delay=0.0
        ):
            return CapturedMessage(
                self.directory / "dropped.eml",
                envelope.mail_from,
                tuple(envelope.rcpt_tos),
            )

        stored = super()._store(envelope)
        with self._trap_lock:
            self.stored_ids.add(message_id)
        if number in self.kill_after_store:
            self._kill_sender(message_id, "after store", delay=self.KILL_DELAY)
        return stored

    def _kill_sender(self, message_id: str, trap: str, delay: float) -> bool:
        try:
            row = self.sent_log.row_of_message(message_id)
            if row is not None and self.run.kill_task_holder(
                row["task_id"], "trap", delay
            ):
                self.trap_kills[trap].append(row["task_id"])
                return True
        except Exception:
            # A failed trap must not break the SMTP session; it is listed in
            # trap_misses like a trap whose task was not found.
            log.exception("trap %s for message %s failed", trap, message_id)
        self.trap_misses.append(f"{trap}: {message_id}")
        return False

    def is_stored(self, message_id: str) -> bool:
        with self._trap_lock:
            return message_id in self.stored_ids


def sent_log_phase(run: ChaosRun, task_id: str) -> str:
    """Return the phase of a running email task from its sent-log row."""
    smtp: TrapServer = run.smtp
    row = smtp.sent_log.row_of_task(task_id)
    if row is None or row["state"] == "claimed":
        return PREPARING
    if row["state"] == "sending":
        return ACCEPTED if smtp.is_stored(row["message_id"]) else SENDING
    return SENT


def single_email_workload(recipient: str) -> Workload:
    """A workload for scenarios that enqueue by hand: it enqueues nothing,
    expects one email to `recipient` and reads phases from the sent log."""
    return Workload(
        name="single email",
        enqueue=lambda run: None,
        expected={recipient},
        count_effects=lambda run: Counter({recipient: emails_to(run.smtp, recipient)}),
        key_of=lambda task_id: recipient,
        running_phase=sent_log_phase,
        unsettled_phases=frozenset({SENDING}),
        count_repeats=count_resent_copies,
    )


def stored_messages(smtp: CaptureServer) -> list[tuple[str, str]]:
    """Return (recipient, Message-ID) of every message the server stored."""
    stored = []
    for path in smtp.directory.glob("*.eml"):
        with open(path, "rb") as file:
            headers = _header_parser.parse(file)
        recipient = headers["To"].addresses[0].addr_spec
        stored.append((recipient, str(headers["Message-ID"]).strip()))
    return stored


def emails_to(smtp: CaptureServer, recipient: str) -> int:
    """Count the emails `recipient` received: messages with distinct
    Message-IDs, as a mailbox that drops duplicate Message-IDs shows them."""
    return len({mid for to, mid in stored_messages(smtp) if to == recipient})


def deliveries_to(smtp: CaptureServer, recipient: str) -> int:
    """Count every message stored for `recipient`, resent copies included."""
    return sum(1 for to, _ in stored_messages(smtp) if to == recipient)


def count_emails(run: ChaosRun) -> Counter:
    """Count the emails per recipient, a resent copy once."""
    return Counter(to for to, _ in set(stored_messages(run.smtp)))


def count_resent_copies(run: ChaosRun) -> int:
    """Count the messages stored again under a Message-ID already stored."""
    stored = stored_messages(run.smtp)
    return len(stored) - len(set(stored))


def email_workload(
    run: ChaosRun,
    erp_url: str,
    customers: int,
    *,
    traps_before_store: int = 0,
    traps_after_store: int = 0,
    batch: int = 100,
    batch_pause: float = 0.3,
) -> Workload:
    """Seed the ERP and return the email workload for `run`, whose SMTP
    server must be a TrapServer. The traps kill the senders of randomly
    chosen messages among the first 80 %."""
    rng = random.Random(run.plan.seed)
    jobs = prepare_erp(erp_url, customers, run.plan.seed)
    smtp: TrapServer = run.smtp
    smtp.attach(run)
    numbers = rng.sample(
        range(20, max(21, customers * 8 // 10)), traps_before_store + traps_after_store
    )
    smtp.kill_before_store = set(numbers[:traps_before_store])
    smtp.kill_after_store = set(numbers[traps_before_store:])
    recipient_by_task: dict[str, str] = {}

    from tasks.emails import send_order_confirmation_email, send_welcome_email

    functions = {
        "order_confirmation": send_order_confirmation_email,
        "welcome": send_welcome_email,
    }

    def enqueue(run: ChaosRun) -> None:
        for number, (kind, entity_id, recipient) in enumerate(jobs, start=1):
            task_id = run.call(functions[kind], entity_id)
            recipient_by_task[task_id] = recipient
            if number % batch == 0:
                time.sleep(batch_pause)

    return Workload(
        name="email",
        enqueue=enqueue,
        expected={recipient for _, _, recipient in jobs},
        count_effects=count_emails,
        key_of=recipient_by_task.get,
        running_phase=sent_log_phase,
        unsettled_phases=frozenset({SENDING}),
        count_repeats=count_resent_copies,
    )
