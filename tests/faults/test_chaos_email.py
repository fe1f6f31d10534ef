"""Email under chaos: 1,000 emails while consumers and workers are killed.

Each scenario sends one email to each of 1,000 customers, enqueued in batches
of 50 every 2 s. Meanwhile a chaos thread sends SIGKILL every 0.3 to 1.2 s,
to a whole consumer or, with process workers, to one worker process. 60 % of the
kills first hunt for a moment that matters: a task dequeued and not started,
a task whose sent log is at `sent`, or a finished task not yet removed from
its in-flight list. The SMTP server also kills the sender of 3 messages
before it stores them, and of 3 once it has stored them: it stops the sender
before its 250 reply and kills it after.

What is checked: every email is received exactly once (one Message-ID per
recipient), every task ends succeeded in the audit log, and no consumer
exits by itself. A task killed after its message data went to the server
and before the reply was recorded sends the message again with the same
Message-ID; those resent copies are counted, and only such kills may cause
them.
"""

from __future__ import annotations

import pytest

from tests.faults.emails import ACCEPTED, SENDING, SENT, TrapServer, email_workload
from tests.faults.harness import DEQUEUED, FINISHED, ChaosPlan, ChaosRun
from tests.services import create_pg_database, drop_pg_database

PLANS = {
    "thread": ChaosPlan(
        seed=1001,
        consumers=3,
        workers=2,
        worker_type="thread",
        kill_pause=(0.3, 1.2),
        kill_for=90,
        hunt_share=0.6,
        hunt_phases=(DEQUEUED, SENT, FINISHED),
    ),
    "process": ChaosPlan(
        seed=2002,
        consumers=2,
        workers=2,
        worker_type="process",
        kill_pause=(0.3, 1.2),
        kill_for=90,
        hunt_share=0.6,
        hunt_phases=(DEQUEUED, SENT, FINISHED),
        worker_kill_share=0.6,
        scheduler_kill_share=0.1,
    ),
    "redis restarts": ChaosPlan(
        seed=3003,
        consumers=3,
        workers=2,
        worker_type="thread",
        kill_pause=(0.3, 1.2),
        kill_for=90,
        hunt_share=0.6,
        hunt_phases=(DEQUEUED, SENT, FINISHED),
        appendonly=True,
        events=((12.0, ChaosRun.restart_redis), (26.0, ChaosRun.restart_redis)),
    ),
    "smtp outage": ChaosPlan(
        seed=4004,
        consumers=3,
        workers=2,
        worker_type="thread",
        kill_pause=(0.3, 1.2),
        kill_for=100,
        hunt_share=0.6,
        hunt_phases=(DEQUEUED, SENT, FINISHED),
        events=((10.0, lambda run: run.smtp_outage(60.0)),),
        # 5 + 20 + 45 s of retries outlast the one-minute outage.
        env={"TSHJOBS_RETRY_DELAYS": "5,20,45"},
    ),
}


SCENARIOS = {
    "thread": "kill -9, thread workers",
    "process": "kill -9, process workers",
    "redis restarts": "kill -9 and 2 Redis restarts (append-only)",
    "smtp outage": "kill -9 and a one-minute SMTP outage",
}


@pytest.fixture(scope="module", params=list(PLANS))
def report(request, tmp_path_factory):
    erp_url = create_pg_database()
    try:
        directory = tmp_path_factory.mktemp("chaos-" + request.param.replace(" ", "-"))
        env = {"TSHJOBS_ERP_DATABASE_URL": erp_url}
        scenario = SCENARIOS[request.param]
        plan = PLANS[request.param]
        with ChaosRun(directory, plan, scenario, env, TrapServer) as run:
            workload = email_workload(
                run,
                erp_url,
                1000,
                traps_before_store=3,
                traps_after_store=3,
                batch=50,
                batch_pause=2.0,
            )
            yield run.run(workload)
    finally:
        drop_pg_database(erp_url)


def test_chaos_kills_reach_worst_moments(report):
    assert report.kills >= 10
    assert report.killed_phases.get(DEQUEUED, 0) >= 1
    # The traps kill 3 senders before and 3 after the server stores the
    # message. A trap that hits a resend of a message already stored (same
    # Message-ID) counts as accepted, and a trap whose task a random kill
    # took first misses, so the sum may fall short of 6.
    mid_send = report.killed_phases.get(SENDING, 0) + report.killed_phases.get(
        ACCEPTED, 0
    )
    assert report.killed_phases.get(SENDING, 0) >= 1
    assert report.killed_phases.get(ACCEPTED, 0) >= 3
    assert mid_send >= 5


def test_chaos_every_task_succeeded(report):
    assert report.not_final == {}
    assert report.failed == {}
    assert report.states == {"succeeded": report.tasks}


def test_chaos_no_unexpected_consumer_exit(report):
    assert report.unexpected_exits == []


def test_chaos_every_email_received(report):
    assert report.lost == []
    assert report.unexpected == []


def test_chaos_no_email_duplicated(report):
    assert report.duplicated == {}


def test_chaos_resent_only_after_mid_send_kills(report):
    if report.smtp_outages:
        pytest.skip("connections cut by the outage also make resent copies")
    killed_mid_send = report.tasks_killed_in(SENDING, ACCEPTED)

    assert report.repeats <= len(killed_mid_send)
