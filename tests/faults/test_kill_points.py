"""Kill points one at a time: where a worker dies decides what happens.

Each scenario sends welcome emails through real consumers, Redis,
PostgreSQL and an SMTP server, and breaks the work at one point:

- a worker killed before or after the SMTP server stores its message;
- a server that drops the connection before its 250 reply;
- a recovering consumer that writes its audit row late;
- a consumer killed while its scheduler moves due retries;
- a consumer stopped just after a failed attempt scheduled its retry;
- a consumer paused long enough to be taken for dead, so that two copies
  of one task run at once.

New consumers then recover or retry the tasks. A scenario that did not
reach the state it sets up raises ScenarioError, which fails its tests.
"""

from __future__ import annotations

import contextlib
import email.policy
import logging
import os
import signal
import time
from dataclasses import dataclass
from email import message_from_bytes

import psycopg
import pytest

from tests.faults.emails import (
    ACCEPTED,
    PREPARING,
    SENDING,
    TrapServer,
    address_of,
    deliveries_to,
    emails_to,
    prepare_erp,
    single_email_workload,
)
from tests.faults.harness import (
    ChaosPlan,
    ChaosRun,
    children_of,
    wait_until_stopped,
)
from tests.services import create_pg_database, drop_pg_database
from tshjobs.audit import FINAL_STATES
from tshjobs.consumer import recover_inflight

CUSTOMER_ID = 1


class ScenarioError(RuntimeError):
    """Raised when a scenario did not reach the state it sets up, so that
    its checks of the product do not apply."""


@dataclass
class Outcome:
    task_id: str
    state: str
    error: str | None
    attempts: int
    events: list[str]
    emails: int
    deliveries: int
    killed_phase: str | None
    # The state a stalled recovery found before it wrote its audit row.
    state_seen: str | None = None
    # The raw messages the SMTP server stored.
    stored: list[bytes] | None = None


def wait_until(condition, description: str, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.01)
    raise ScenarioError(f"timed out after {timeout} s waiting for {description}")


def wait_final(run: ChaosRun, task_id: str, timeout: float = 60.0) -> None:
    def final():
        row = run.audit.get(task_id)
        return row is not None and row["state"] in FINAL_STATES

    wait_until(final, f"task {task_id} to reach a final state", timeout)


def outcome_of(run: ChaosRun, task_id: str, customer_id=CUSTOMER_ID) -> Outcome:
    row = run.audit.get(task_id)
    killed = [kill.tasks[task_id] for kill in run.kills if task_id in kill.tasks]
    return Outcome(
        task_id=task_id,
        state=row["state"],
        error=row["error"],
        attempts=row["attempts"],
        events=[event["event"] for event in run.audit.events(task_id)],
        emails=emails_to(run.smtp, address_of(customer_id)),
        deliveries=deliveries_to(run.smtp, address_of(customer_id)),
        killed_phase=killed[0] if killed else None,
    )


@contextlib.contextmanager
def single_email_run(tmp_path_factory, name: str, customers: int = 3, **env):
    """A run without chaos and without consumers, on an ERP of `customers`
    customers; the scenario starts consumers itself. `env` adds settings."""
    url = create_pg_database()
    try:
        plan = ChaosPlan(seed=7, consumers=0, workers=1, env=env)
        env = {"TSHJOBS_ERP_DATABASE_URL": url}
        directory = tmp_path_factory.mktemp(name)
        with ChaosRun(directory, plan, name, env, TrapServer) as run:
            prepare_erp(url, customers=customers, rng_seed=7)
            run.smtp.attach(run)
            run.workload = single_email_workload(address_of(CUSTOMER_ID))
            yield run, url
    finally:
        drop_pg_database(url)


def send_welcome(run: ChaosRun) -> str:
    from tasks.emails import send_welcome_email

    return run.call(send_welcome_email, CUSTOMER_ID)


@pytest.fixture(scope="module")
def killed_before_store(tmp_path_factory):
    """The worker is killed when the message data have arrived, and the
    server does not store the message."""
    with single_email_run(tmp_path_factory, "killed-before-store") as (run, _):
        run.smtp.kill_before_store = {1}
        run.start_consumer()
        task_id = send_welcome(run)
        wait_until(lambda: run.smtp.trap_kills["before store"], "the trap kill")
        run.start_consumer()
        wait_final(run, task_id)
        yield outcome_of(run, task_id)


def test_kill_before_store_recovered(killed_before_store):
    assert killed_before_store.killed_phase == SENDING
    assert "recovered" in killed_before_store.events
    assert killed_before_store.state in FINAL_STATES


def test_kill_before_store_email_sent(killed_before_store):
    assert killed_before_store.emails == 1
    assert killed_before_store.deliveries == 1
    assert killed_before_store.state == "succeeded"


@pytest.fixture(scope="module")
def killed_after_store(tmp_path_factory):
    """The server stores the message, the worker is stopped before the 250
    reply and killed after it, with the sent log at `sending`."""
    with single_email_run(tmp_path_factory, "killed-after-store") as (run, url):
        run.smtp.kill_after_store = {1}
        run.start_consumer()
        task_id = send_welcome(run)
        wait_until(lambda: run.kills, "the delayed trap kill")
        # The ERP row changes before the resend, which must not change the
        # message sent under the same Message-ID.
        with psycopg.connect(url) as conn:
            conn.execute(
                "UPDATE customers SET name = 'Renamed Customer' WHERE id = %s",
                (CUSTOMER_ID,),
            )
        run.start_consumer()
        wait_final(run, task_id)
        outcome = outcome_of(run, task_id)
        outcome.stored = sorted(
            path.read_bytes() for path in run.smtp.directory.glob("*.eml")
        )
        yield outcome


def test_kill_after_store_email_not_repeated(killed_after_store):
    assert killed_after_store.killed_phase == ACCEPTED
    assert "recovered" in killed_after_store.events
    assert killed_after_store.emails == 1


def test_kill_after_store_resent_same_message_id(killed_after_store):
    # SMTP cannot tell the new attempt that the server stored the first
    # copy, so the copy goes again with the same Message-ID.
    assert killed_after_store.deliveries == 2


def test_kill_after_store_resent_unchanged(killed_after_store):
    first, second = (
        message_from_bytes(data, policy=email.policy.default)
        for data in killed_after_store.stored
    )

    assert first["Message-ID"] == second["Message-ID"]
    assert first["To"] == second["To"]
    assert first.get_body().get_content() == second.get_body().get_content()
    assert b"Renamed Customer" not in b"".join(killed_after_store.stored)


def test_kill_after_store_task_succeeds(killed_after_store):
    assert killed_after_store.state == "succeeded"


@pytest.fixture(scope="module")
def dropped_before_reply(tmp_path_factory):
    """The server stores the message and closes the connection without its
    250 reply, once; the worker lives on."""
    with single_email_run(tmp_path_factory, "dropped-before-reply") as (run, _):
        run.smtp.drop_after(1, before_reply=True)
        run.start_consumer()
        task_id = send_welcome(run)
        wait_until(
            lambda: emails_to(run.smtp, address_of(CUSTOMER_ID)), "the first message"
        )
        run.smtp.clear_faults()
        wait_final(run, task_id)
        yield outcome_of(run, task_id)


def test_drop_before_reply_task_succeeds(dropped_before_reply):
    assert dropped_before_reply.state == "succeeded"
    assert dropped_before_reply.attempts == 2


def test_drop_before_reply_email_once(dropped_before_reply):
    assert dropped_before_reply.emails == 1
    assert dropped_before_reply.deliveries == 2


class _StallRecovery(logging.Handler):
    """Holds up the "Recovered task" log record of `recover_inflight`, which
    comes after the task is back on the queue and before the audit write,
    until a new consumer has run the task to a final state."""

    def __init__(self, run: ChaosRun, task_id: str):
        super().__init__(logging.WARNING)
        self.run = run
        self.task_id = task_id
        self.state_seen: str | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if not record.getMessage().startswith(f"Recovered task {self.task_id}"):
            return
        self.run.start_consumer()
        wait_final(self.run, self.task_id)
        self.state_seen = self.run.audit.get(self.task_id)["state"]


@pytest.fixture(scope="module")
def late_recovery_write(tmp_path_factory):
    """The worker is killed while it reads the ERP (the customers table is
    locked), after it claimed the email. This process then recovers the task
    with `recover_inflight`, and a new consumer runs it before the recovery
    writes its audit row."""
    with single_email_run(tmp_path_factory, "late-recovery-write") as (run, url):
        run.start_consumer()
        with psycopg.connect(url) as lock:
            lock.execute("LOCK TABLE customers IN ACCESS EXCLUSIVE MODE")
            task_id = send_welcome(run)
            wait_until(
                lambda: (
                    (row := run.smtp.sent_log.row_of_task(task_id))
                    and row["state"] == "claimed"
                ),
                "the claim in the sent log",
            )
            if not run.kill_task_holder(task_id, "manual"):
                raise ScenarioError(f"task {task_id} was not running in a consumer")
            lock.rollback()

        stall = _StallRecovery(run, task_id)
        logger = logging.getLogger("tshjobs.consumer")
        logger.addHandler(stall)
        try:
            recovered = recover_inflight(run.huey)
        finally:
            logger.removeHandler(stall)
        if recovered != 1 or stall.state_seen is None:
            raise ScenarioError(
                f"recovered {recovered} task(s); state seen {stall.state_seen}"
            )
        outcome = outcome_of(run, task_id)
        outcome.state_seen = stall.state_seen
        yield outcome


def test_late_recovery_email_once(late_recovery_write):
    assert late_recovery_write.killed_phase == PREPARING
    assert late_recovery_write.state_seen == "succeeded"
    assert late_recovery_write.emails == 1


def test_late_recovery_keeps_final_state(late_recovery_write):
    assert late_recovery_write.state == "succeeded"


RETRIES_DUE = 200


@pytest.fixture(scope="module")
def scheduler_killed_mid_batch(tmp_path_factory):
    """200 emails fail while the SMTP server is down and wait on the schedule
    for their retry, 6 s later. Once they are due, a new consumer starts, and
    it is killed as soon as its scheduler has taken them off the schedule, as
    it puts them back on the queue one by one."""
    with single_email_run(
        tmp_path_factory,
        "scheduler-killed",
        customers=RETRIES_DUE,
        TSHJOBS_WORKERS="2",
        TSHJOBS_RETRY_DELAYS="6",
        TSHJOBS_RETRY_JITTER="0",
    ) as (run, _):
        from tasks.emails import send_welcome_email

        storage = run.huey.storage
        run.smtp.stop()
        first = run.start_consumer()
        task_ids = [
            run.call(send_welcome_email, customer_id)
            for customer_id in range(1, RETRIES_DUE + 1)
        ]
        wait_until(
            lambda: storage.schedule_size() == RETRIES_DUE,
            "every task to wait on the schedule",
        )
        first.stop()
        run.smtp.start()
        time.sleep(6.5)

        second = run.start_consumer()
        wait_until(
            lambda: storage.schedule_size() < RETRIES_DUE,
            "the scheduler to take the due tasks",
            timeout=60,
        )
        kill = run.kill_consumer(second, "manual")
        if kill is None or storage.schedule_size() != 0:
            raise ScenarioError("the consumer was not killed mid-batch")

        run.start_consumer()
        if not run.wait_until_done(timeout=90):
            raise ScenarioError("the tasks did not settle within 90 s")
        states = {task_id: run.audit.get(task_id)["state"] for task_id in task_ids}
        emails = {
            customer_id: emails_to(run.smtp, address_of(customer_id))
            for customer_id in range(1, RETRIES_DUE + 1)
        }
        yield states, emails


def test_scheduler_kill_sends_nothing_twice(scheduler_killed_mid_batch):
    states, emails = scheduler_killed_mid_batch

    assert max(emails.values()) <= 1
    assert set(states.values()) <= {"succeeded", "retrying"}


def test_scheduler_kill_loses_no_retry(scheduler_killed_mid_batch):
    states, emails = scheduler_killed_mid_batch

    assert list(states.values()).count("retrying") == 0
    assert sum(emails.values()) == RETRIES_DUE


def stop_consumer(consumer) -> list[int]:
    """SIGSTOP a consumer and its workers; return their pids."""
    pids = [consumer.process.pid, *children_of(consumer.process.pid)]
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    for pid in pids:
        wait_until_stopped(pid)
    return pids


def continue_processes(pids: list[int]) -> None:
    for pid in pids:
        os.kill(pid, signal.SIGCONT)


def held_in_flight(run: ChaosRun) -> set[str]:
    return {task_id for task_id, _ in run.tasks_in_flight(None)}


@pytest.fixture(scope="module")
def retries_while_stopped(tmp_path_factory):
    """Welcome emails fail one at a time while the SMTP server is down. As
    soon as an attempt's retry is on the schedule, the consumer is stopped,
    and the in-flight lists are read: a task found there too would run
    twice. Returns the ids of the tasks found in both places."""
    with single_email_run(
        tmp_path_factory,
        "retries-while-stopped",
        customers=10,
        TSHJOBS_WORKERS="2",
        TSHJOBS_RETRY_DELAYS="60",
        TSHJOBS_RETRY_JITTER="0",
    ) as (run, _):
        from tasks.emails import send_welcome_email

        storage = run.huey.storage
        run.smtp.stop()
        consumer = run.start_consumer()
        in_both = []
        for customer_id in range(1, 11):
            scheduled = storage.schedule_size()
            task_id = run.call(send_welcome_email, customer_id)
            wait_until(
                lambda scheduled=scheduled: storage.schedule_size() > scheduled,
                f"the retry of task {task_id} on the schedule",
            )
            pids = stop_consumer(consumer)
            try:
                if task_id in held_in_flight(run):
                    in_both.append(task_id)
            finally:
                continue_processes(pids)
        yield in_both


def test_retry_scheduled_and_acked_together(retries_while_stopped):
    assert retries_while_stopped == []


def forget_heartbeats(run: ChaosRun, pids: list[int]) -> int:
    """Delete the heartbeats of `pids`, as if they had expired; return how
    many were deleted."""
    storage = run.huey.storage
    deleted = 0
    for key in storage.conn.scan_iter(match=storage.heartbeat_prefix + "*"):
        owner = key.decode()[len(storage.heartbeat_prefix) :]
        if int(owner.split(":")[1]) in pids:
            deleted += storage.conn.delete(key)
    return deleted


def retry_events(run: ChaosRun, task_id: str) -> list[dict]:
    return [e for e in run.audit.events(task_id) if e["event"] == "retrying"]


@pytest.fixture(scope="module")
def two_copies_of_a_task(tmp_path_factory):
    """A consumer stops (SIGSTOP, as in a VM pause) while its worker holds
    the claim on an email and waits for the ERP (the customers table is
    locked). Its heartbeat expires, so this process recovers the task, and
    a second consumer runs the same task while the first copy still lives.
    Then the first consumer continues."""
    with single_email_run(
        tmp_path_factory,
        "two-copies",
        TSHJOBS_WORKERS="1",
        TSHJOBS_RETRY_DELAYS="2",
        TSHJOBS_RETRY_JITTER="0",
    ) as (run, url):
        first = run.start_consumer()
        with psycopg.connect(url) as lock:
            lock.execute("LOCK TABLE customers IN ACCESS EXCLUSIVE MODE")
            task_id = send_welcome(run)
            wait_until(
                lambda: (
                    (row := run.smtp.sent_log.row_of_task(task_id))
                    and row["state"] == "claimed"
                ),
                "the claim in the sent log",
            )
            pids = stop_consumer(first)
            if forget_heartbeats(run, pids) == 0:
                raise ScenarioError("the stopped consumer had no heartbeat")
            if recover_inflight(run.huey) != 1:
                raise ScenarioError("the stopped consumer's task was not recovered")

            run.start_consumer()
            wait_until(lambda: retry_events(run, task_id), "the second copy to retry")
            second_copy_error = run.audit.get(task_id)["error"]
            lock.rollback()
        continue_processes(pids)

        if not run.wait_until_done(timeout=60):
            raise ScenarioError("the tasks did not settle within 60 s")
        outcome = outcome_of(run, task_id)
        yield outcome, second_copy_error


def test_two_copies_second_waits(two_copies_of_a_task):
    _, second_copy_error = two_copies_of_a_task

    assert second_copy_error.startswith("SendInProgress")


def test_two_copies_task_succeeds(two_copies_of_a_task):
    outcome, _ = two_copies_of_a_task

    assert outcome.state == "succeeded"


def test_two_copies_email_once(two_copies_of_a_task):
    outcome, _ = two_copies_of_a_task

    assert outcome.emails == 1
    assert outcome.deliveries == 1
