"""Tasks survive consumers and workers killed mid-task (Redis storage)."""

from __future__ import annotations

import os
import signal
import time

import pytest

from tests import sample_tasks
from tests.consumers import ConsumerProcess, wait_for_state
from tshjobs.queue import get_huey


@pytest.fixture
def env(redis_env, redis_url):
    return redis_env(redis_url, "tests.sample_tasks", workers=2)


@pytest.fixture
def audit(env):
    return get_huey().audit


def wait_until(condition, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"condition not met in {timeout}s")


def event_names(audit, task_id):
    return [event["event"] for event in audit.events(task_id)]


def test_task_held_by_killed_consumer_runs_again(env, audit, tmp_path):
    first = ConsumerProcess(env, tmp_path / "first.log").start()
    task_id = sample_tasks.sleep(3).id
    wait_for_state(audit, task_id, "running")
    assert get_huey().pending_count() == 0

    first.kill()
    second = ConsumerProcess(env, tmp_path / "second.log").start()
    try:
        row = wait_for_state(audit, task_id, "succeeded")
    finally:
        second.stop()

    assert row["attempts"] == 2
    assert "recovered" in event_names(audit, task_id)
    assert "Recovered task" in second.log()
    assert get_huey().storage.inflight_items() == {}


def test_killed_process_worker_task_recovered(env, audit, tmp_path):
    consumer = ConsumerProcess(env, tmp_path / "consumer.log", "-k", "process")
    consumer.start()
    try:
        task_id = sample_tasks.sleep(3).id
        row = wait_for_state(audit, task_id, "running")
        assert row["pid"] != consumer.process.pid

        os.kill(row["pid"], signal.SIGKILL)

        row = wait_for_state(audit, task_id, "succeeded", timeout=60)
    finally:
        consumer.stop()

    assert row["attempts"] == 2
    assert "recovered" in event_names(audit, task_id)


def test_graceful_stop_finishes_running_task(env, audit, tmp_path):
    consumer = ConsumerProcess(env, tmp_path / "consumer.log").start()
    try:
        task_id = sample_tasks.sleep(1.5).id
        wait_for_state(audit, task_id, "running")
    finally:
        consumer.stop()

    row = audit.get(task_id)
    assert row["state"] == "succeeded"
    assert row["attempts"] == 1
    assert get_huey().storage.inflight_items() == {}


def test_live_worker_tasks_not_recovered(env, audit, tmp_path):
    consumer = ConsumerProcess(env, tmp_path / "consumer.log").start()
    try:
        task_id = sample_tasks.sleep(2).id
        wait_for_state(audit, task_id, "running")
        wait_until(lambda: get_huey().storage.inflight_items())

        recovered = get_huey().storage.recover()

        row = wait_for_state(audit, task_id, "succeeded")
    finally:
        consumer.stop()

    assert recovered == []
    assert row["attempts"] == 1
