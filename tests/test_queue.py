"""The queue end to end: enqueue in this process, run in a real consumer process,
read the outcome from the audit log. Run against Redis and against SQLite."""

from __future__ import annotations

import json
import os
import pickle
import signal
import sqlite3
import threading
import time
import uuid
from pathlib import Path

import pytest

from tests import sample_tasks
from tests.consumers import ConsumerProcess, wait_for_state
from tests.services import free_port
from tshjobs import errors
from tshjobs.queue import get_huey, retry_task
from tshjobs.settings import load_settings


@pytest.fixture(params=["redis", "sqlite"])
def queue_env(request, settings_env, monkeypatch):
    env = dict(settings_env)
    env["TSHJOBS_TASK_MODULES"] = "tests.sample_tasks"
    env["TSHJOBS_RETRY_DELAYS"] = "0.2,0.4"
    env["TSHJOBS_RETRY_JITTER"] = "0"
    env["TSHJOBS_WORKERS"] = "2"
    if request.param == "redis":
        env["TSHJOBS_REDIS_URL"] = request.getfixturevalue("redis_url")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    get_huey(load_settings())
    return env


@pytest.fixture
def consumer(queue_env, tmp_path):
    process = ConsumerProcess(queue_env, tmp_path / "consumer.log").start()
    yield process
    process.stop()


@pytest.fixture
def audit(queue_env):
    return get_huey().audit


def test_enqueue_records_queued_row(queue_env, audit):
    result = sample_tasks.add(2, 3)

    row = audit.get(result.id)
    assert row["state"] == "queued"
    assert json.loads(row["args"]) == [2, 3]
    assert row["name"] == "tests.sample_tasks.add"
    assert get_huey().pending_count() == 1


def test_task_succeeds(consumer, audit):
    task_id = sample_tasks.add(2, 3).id

    row = wait_for_state(audit, task_id, "succeeded")
    assert row["result"] == "5"
    assert row["attempts"] == 1
    assert row["pid"] is not None
    assert row["started_at"] >= row["enqueued_at"]
    assert row["finished_at"] >= row["started_at"]


def test_temporary_failure_retries_then_succeeds(consumer, audit, tmp_path):
    counter = tmp_path / "count"
    task_id = sample_tasks.flaky(str(counter), 2).id

    row = wait_for_state(audit, task_id, "succeeded")
    assert row["attempts"] == 3
    assert row["result"] == "succeeded on attempt 3"
    events = [event["event"] for event in audit.events(task_id)]
    assert events.count("error") == 2
    assert events.count("started") == 3


def test_temporary_failure_exhausts_retries(consumer, audit, tmp_path):
    task_id = sample_tasks.flaky(str(tmp_path / "count"), 10).id

    row = wait_for_state(audit, task_id, "failed")
    assert row["attempts"] == 4
    assert "attempt 4 failed on purpose" in row["error"]
    assert "TemporaryError" in row["traceback"]


def test_permanent_failure_fails_at_once(consumer, audit):
    task_id = sample_tasks.broken("order 99 not found").id

    row = wait_for_state(audit, task_id, "failed")
    assert row["attempts"] == 1
    assert row["error"] == "PermanentError: order 99 not found"


def test_unexpected_exception_is_not_retried(consumer, audit):
    task_id = sample_tasks.buggy().id

    row = wait_for_state(audit, task_id, "failed")
    assert row["attempts"] == 1
    assert "KeyError" in row["error"]


def test_retry_reruns_failed_task_with_arguments(consumer, audit, tmp_path):
    counter = tmp_path / "count"
    first = sample_tasks.flaky(str(counter), 4).id
    wait_for_state(audit, first, "failed")

    second = retry_task(first, "alice")

    row = wait_for_state(audit, second, "succeeded")
    assert row["retry_of"] == first
    assert json.loads(row["args"]) == [str(counter), 4]
    assert audit.get(first)["retried_by"] == second
    action = audit.actions()[0]
    assert action["username"] == "alice"
    assert action["task_id"] == first


def test_retry_rejects_succeeded_task(consumer, audit):
    task_id = sample_tasks.add(1, 1).id
    wait_for_state(audit, task_id, "succeeded")

    with pytest.raises(errors.NotRetryable):
        retry_task(task_id, "alice")


def test_retry_unknown_task_id(queue_env):
    with pytest.raises(errors.UnknownTask):
        retry_task("no-such-task", "alice")


class _WritesFile:
    """A pickle that creates a file when loaded: the proof of code execution."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


@pytest.mark.parametrize("queue_env", ["redis"], indirect=True)
def test_unsigned_message_is_not_unpickled(queue_env, consumer, audit, tmp_path):
    proof = tmp_path / "pwned"
    storage = get_huey().storage
    storage.enqueue(pickle.dumps(_WritesFile(proof)))
    task_id = sample_tasks.add(1, 2).id

    wait_for_state(audit, task_id, "succeeded")
    time.sleep(0.2)
    assert not proof.exists()
    assert "not signed by tshjobs" in consumer.log()


def test_enqueue_rejects_non_json_arguments(queue_env):
    with pytest.raises(TypeError, match="must be JSON values"):
        sample_tasks.echo(object())

    assert get_huey().pending_count() == 0


def test_locked_audit_log_never_breaks_task(queue_env, tmp_path):
    audit_path = get_huey().settings.audit_path
    marker = tmp_path / "ran"
    consumer = ConsumerProcess(queue_env, tmp_path / "consumer.log").start()
    try:
        blocker = sqlite3.connect(audit_path, isolation_level=None)
        blocker.execute("BEGIN EXCLUSIVE")
        try:
            sample_tasks.touch(str(marker))
            deadline = time.monotonic() + 30
            while not marker.exists() and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
    finally:
        consumer.stop()

    assert marker.exists()
    assert "Audit log write failed" in consumer.log()


def test_process_workers_run_and_retry(queue_env, audit, tmp_path):
    consumer = ConsumerProcess(queue_env, tmp_path / "consumer.log", "-k", "process")
    consumer.start()
    try:
        done = sample_tasks.add(20, 22).id
        flaky = sample_tasks.flaky(str(tmp_path / "count"), 1).id

        assert wait_for_state(audit, done, "succeeded")["result"] == "42"
        row = wait_for_state(audit, flaky, "succeeded")
    finally:
        consumer.stop()

    assert row["attempts"] == 2
    assert row["pid"] != os.getpid()


def test_revoked_task_recorded(queue_env, audit, tmp_path):
    marker = tmp_path / "ran"
    queued = sample_tasks.touch(str(marker))
    get_huey().revoke_by_id(queued.id)

    consumer = ConsumerProcess(queue_env, tmp_path / "consumer.log").start()
    try:
        row = wait_for_state(audit, queued.id, "revoked")
    finally:
        consumer.stop()

    assert not marker.exists()
    assert row["finished_at"] is not None


def test_expired_task_recorded(queue_env, audit, tmp_path):
    marker = tmp_path / "ran"
    queued = sample_tasks.touch.schedule(args=(str(marker),), delay=0.001, expires=0.01)
    time.sleep(0.1)

    consumer = ConsumerProcess(queue_env, tmp_path / "consumer.log").start()
    try:
        wait_for_state(audit, queued.id, "expired")
    finally:
        consumer.stop()

    assert not marker.exists()
    assert retry_task(queued.id, "alice")


def test_shared_files_group_writable(queue_env):
    settings = get_huey().settings

    assert settings.audit_path.stat().st_mode & 0o777 == 0o660
    if not settings.redis_url:
        assert settings.queue_path.stat().st_mode & 0o777 == 0o660


def processes_with_env(marker: str) -> list[int]:
    """Return the pids of live processes whose environment contains marker."""
    pids = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if marker.encode() in environ.read_bytes():
                pids.append(int(environ.parent.name))
        except OSError:
            continue
    return pids


@pytest.mark.parametrize("queue_env", ["sqlite"], indirect=True)
@pytest.mark.parametrize("attempt", range(5))
def test_early_sigint_leaves_no_workers(queue_env, tmp_path, attempt):
    """SIGINT while the consumer starts its workers, before Huey's signal
    handlers exist, must still stop every worker process."""
    token = uuid.uuid4().hex
    marker = f"TSHJOBS_TEST_MARKER={token}"
    env = {**queue_env, "TSHJOBS_TEST_MARKER": token}
    consumer = ConsumerProcess(
        env, tmp_path / "consumer.log", "-k", "process", "-w", "4"
    )
    consumer.start()
    deadline = time.monotonic() + 30
    while "consumer started" not in consumer.log() and time.monotonic() < deadline:
        time.sleep(0.001)

    consumer.process.send_signal(signal.SIGINT)
    consumer.process.wait(timeout=60)
    consumer.process = None
    consumer.log_file.close()

    deadline = time.monotonic() + 10
    while processes_with_env(marker) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert processes_with_env(marker) == []


def test_enqueue_with_audit_locked_still_queues(queue_env, audit, tmp_path):
    blocker = sqlite3.connect(get_huey().settings.audit_path, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        queued = sample_tasks.add(1, 1)
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()

    assert audit.get(queued.id) is None
    assert get_huey().pending_count() == 1
    consumer = ConsumerProcess(queue_env, tmp_path / "consumer.log").start()
    try:
        row = wait_for_state(audit, queued.id, "succeeded")
    finally:
        consumer.stop()
    assert row["name"] == "tests.sample_tasks.add"
    assert json.loads(row["args"]) == [1, 1]


@pytest.mark.parametrize("queue_env", ["redis"], indirect=True)
def test_failed_enqueue_leaves_no_queued_row(queue_env, audit, monkeypatch):
    monkeypatch.setenv("TSHJOBS_REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")
    monkeypatch.setenv("TSHJOBS_SPOOL_WHEN_REDIS_DOWN", "false")
    get_huey(load_settings())

    with pytest.raises(errors.QueueUnavailable):
        sample_tasks.add(1, 1)

    assert audit.search() == []


def test_unknown_task_fails_and_can_be_retried(queue_env, audit, tmp_path):
    queued = sample_tasks.add(2, 2)
    without_module = {**queue_env, "TSHJOBS_TASK_MODULES": "tasks"}

    consumer = ConsumerProcess(without_module, tmp_path / "first.log").start()
    try:
        row = wait_for_state(audit, queued.id, "failed")
    finally:
        consumer.stop()
    assert "tests.sample_tasks.add is not registered" in row["error"]
    assert "TSHJOBS_TASK_MODULES" in row["error"]

    retried = retry_task(queued.id, "alice")
    consumer = ConsumerProcess(queue_env, tmp_path / "second.log").start()
    try:
        assert wait_for_state(audit, retried, "succeeded")["result"] == "4"
    finally:
        consumer.stop()


def test_retry_twice_creates_one_task(queue_env, audit, tmp_path):
    first = sample_tasks.broken("no such order").id
    consumer = ConsumerProcess(queue_env, tmp_path / "consumer.log").start()
    try:
        wait_for_state(audit, first, "failed")
    finally:
        consumer.stop()

    second = retry_task(first, "alice")
    with pytest.raises(errors.NotRetryable, match=f"already retried as {second}"):
        retry_task(first, "bob")

    assert get_huey().pending_count() == 1
    assert audit.get(first)["retried_by"] == second


def test_concurrent_retries_create_one_task(queue_env, audit, tmp_path):
    first = sample_tasks.broken("no such order").id
    consumer = ConsumerProcess(queue_env, tmp_path / "consumer.log").start()
    try:
        wait_for_state(audit, first, "failed")
    finally:
        consumer.stop()
    start = threading.Barrier(5)
    outcomes = []

    def retry():
        start.wait()
        try:
            outcomes.append(retry_task(first, "alice"))
        except errors.NotRetryable:
            outcomes.append("rejected")

    threads = [threading.Thread(target=retry) for _ in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert outcomes.count("rejected") == 4
    assert get_huey().pending_count() == 1
