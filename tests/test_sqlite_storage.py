"""ReliableSqliteStorage: in-flight rows, heartbeats and recovery, then real
consumers on the SQLite queue killed mid-task."""

from __future__ import annotations

import datetime
import logging
import multiprocessing
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from huey.storage import SqliteStorage

from tests import sample_tasks
from tests.consumers import REPO, ConsumerProcess, wait_for_state
from tshjobs import sqlite_storage
from tshjobs.liveness import current_holder, holder_is_alive
from tshjobs.queue import get_huey
from tshjobs.settings import load_settings
from tshjobs.sqlite_storage import ReliableSqliteStorage, process_id

QUEUE = "tshjobs-test"

# A process that takes `count` tasks, prints its in-flight key and waits to be
# killed. Mode "no-beats" writes only the first heartbeat, "stop-heartbeat"
# stops it after the dequeue.
CHILD = """
import sys, time
from tshjobs import sqlite_storage
filename, count, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
if mode == "no-beats":
    sqlite_storage.HEARTBEAT_INTERVAL = 3600
storage = sqlite_storage.ReliableSqliteStorage(sys.argv[4], filename=filename)
for _ in range(count):
    storage.dequeue()
if mode == "stop-heartbeat":
    storage.stop_heartbeat()
print(storage.inflight_key(), flush=True)
time.sleep(600)
"""


@pytest.fixture
def queue_file(tmp_path) -> Path:
    return tmp_path / "queue.db"


@pytest.fixture
def storage(queue_file):
    storage = ReliableSqliteStorage(QUEUE, filename=str(queue_file))
    yield storage
    storage.stop_heartbeat()
    storage.close()


class Child:
    """A real process that dequeues from the queue file and waits."""

    def __init__(self, queue_file: Path, count: int, mode: str = "beat"):
        self.process = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(queue_file), str(count), mode, QUEUE],
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            stdout=subprocess.PIPE,
            text=True,
        )
        self.key = self.process.stdout.readline().strip()
        assert self.key, "the child process exited before it dequeued"
        self.owner = self.key.rsplit("|", 1)[0]

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()
        self.process.stdout.close()


@pytest.fixture
def children():
    started = []
    yield started
    for child in started:
        if child.process.poll() is None:
            child.kill()


def enqueue_all(storage, *items, priority=None):
    for item in items:
        storage.enqueue(item, priority)


def heartbeats(queue_file) -> dict[str, float]:
    conn = sqlite3.connect(queue_file)
    try:
        return dict(conn.execute("select owner, beat_at from heartbeat"))
    finally:
        conn.close()


def execute_sql(queue_file, sql: str, params=()) -> None:
    conn = sqlite3.connect(queue_file)
    with conn:
        conn.execute(sql, params)
    conn.close()


def wait_until(condition, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"condition not met in {timeout}s")


# Dequeue, ack and requeue.


def test_dequeue_moves_task_in_flight(storage):
    enqueue_all(storage, b"a", b"b")

    data = storage.dequeue()

    assert data == b"a"
    assert storage.enqueued_items() == [b"b"]
    assert storage.inflight_items() == {storage.inflight_key(): [b"a"]}


def test_dequeue_empty_queue(storage):
    assert storage.dequeue() is None
    assert storage.inflight_items() == {}


def test_dequeue_keeps_priority_order(storage):
    for i, priority in enumerate((1, None, 5, None, 3)):
        storage.enqueue(b"i%d" % i, priority)

    taken = [storage.dequeue() for _ in range(5)]

    assert taken == [b"i2", b"i4", b"i0", b"i1", b"i3"]


def test_inflight_key_is_thread_holder_id(storage):
    key = storage.inflight_key()

    assert key == current_holder()
    assert holder_is_alive(key) is True
    assert key.rsplit("|", 1)[0] == process_id()


def test_inflight_key_per_thread(storage):
    keys = []
    thread = threading.Thread(target=lambda: keys.append(storage.inflight_key()))
    thread.start()
    thread.join()

    assert keys[0] != storage.inflight_key()
    assert keys[0].rsplit("|", 1)[0] == storage.owner


def test_ack_removes_one_entry(storage):
    enqueue_all(storage, b"same", b"same")
    storage.dequeue()
    storage.dequeue()

    storage.ack(b"same")

    assert storage.inflight_items() == {storage.inflight_key(): [b"same"]}


def test_ack_with_other_thread_key(storage):
    storage.enqueue(b"a")
    taken = []

    def take():
        taken.append((storage.dequeue(), storage.inflight_key()))

    thread = threading.Thread(target=take)
    thread.start()
    thread.join()
    data, key = taken[0]
    storage.ack(b"unknown", key)

    assert storage.inflight_items() == {key: [b"a"]}

    storage.ack(data, key)

    assert storage.inflight_items() == {}


def test_requeue_puts_task_first(storage):
    enqueue_all(storage, b"a", b"b")
    storage.dequeue()
    storage.enqueue(b"c")

    storage.requeue(b"a")

    assert storage.enqueued_items() == [b"a", b"b", b"c"]
    assert storage.inflight_items() == {}


def test_requeue_keeps_priority(storage):
    storage.enqueue(b"high", 5)
    storage.enqueue(b"low")
    storage.dequeue()
    storage.enqueue(b"high-later", 5)

    storage.requeue(b"high")

    assert storage.enqueued_items() == [b"high", b"high-later", b"low"]


def test_requeue_after_rowid_reuse(storage):
    # SQLite gives a new row the largest id plus one, so the id of the task
    # just dequeued is handed out again.
    storage.enqueue(b"a")
    storage.dequeue()
    storage.enqueue(b"b")

    storage.requeue(b"a")

    assert storage.enqueued_items() == [b"a", b"b"]
    assert storage.dequeue() == b"a"
    assert storage.dequeue() == b"b"


def test_flush_queue_clears_inflight(storage):
    enqueue_all(storage, b"a", b"b")
    storage.dequeue()

    storage.flush_queue()

    assert storage.queue_size() == 0
    assert storage.inflight_items() == {}


def test_busy_timeout_default(storage):
    timeout_ms = storage.conn.execute("pragma busy_timeout").fetchone()[0]

    assert timeout_ms == sqlite_storage.BUSY_TIMEOUT * 1000


# Schedule.


def test_schedule_and_ack_schedules_retry(storage):
    eta = datetime.datetime(2030, 1, 1)
    storage.enqueue(b"attempt", 3)
    storage.enqueue(b"other")
    storage.dequeue()

    storage.schedule_and_ack(b"retry", eta, b"attempt", storage.inflight_key())

    assert storage.inflight_items() == {}
    assert storage.scheduled_items() == [b"retry"]
    assert storage.move_due_to_queue(eta) == [b"retry"]
    assert storage.enqueued_items() == [b"retry", b"other"]


def test_schedule_and_ack_without_eta(storage):
    storage.enqueue(b"attempt", 2)
    storage.dequeue()
    storage.enqueue(b"same-priority", 2)
    storage.enqueue(b"lower", 1)

    storage.schedule_and_ack(b"retry", None, b"attempt", storage.inflight_key())

    assert storage.inflight_items() == {}
    assert storage.schedule_size() == 0
    assert storage.enqueued_items() == [b"same-priority", b"retry", b"lower"]


def test_schedule_and_ack_failure_keeps_attempt(storage, queue_file):
    storage.enqueue(b"attempt")
    storage.dequeue()
    execute_sql(
        queue_file,
        "create trigger fail before insert on schedule "
        "begin select raise(abort, 'insert failed on purpose'); end",
    )
    eta = datetime.datetime(2030, 1, 1)

    with pytest.raises(sqlite3.IntegrityError):
        storage.schedule_and_ack(b"retry", eta, b"attempt", storage.inflight_key())

    assert storage.inflight_items() == {storage.inflight_key(): [b"attempt"]}
    assert storage.schedule_size() == 0


def test_move_due_to_queue_moves_due_only(storage, monkeypatch):
    monkeypatch.setattr(sqlite_storage, "MOVE_DUE_BATCH", 2)
    base = datetime.datetime(2030, 1, 1)
    for i in (3, 0, 4, 1, 2, 9):
        storage.add_to_schedule(b"t%d" % i, base + datetime.timedelta(seconds=i))

    moved = storage.move_due_to_queue(base + datetime.timedelta(seconds=4))

    assert moved == [b"t0", b"t1", b"t2", b"t3", b"t4"]
    assert storage.enqueued_items() == moved
    assert storage.scheduled_items() == [b"t9"]


def test_move_due_to_queue_batch_atomic(storage, queue_file, monkeypatch):
    monkeypatch.setattr(sqlite_storage, "MOVE_DUE_BATCH", 2)
    base = datetime.datetime(2030, 1, 1)
    for i in range(5):
        storage.add_to_schedule(b"t%d" % i, base + datetime.timedelta(seconds=i))
    execute_sql(
        queue_file,
        "create trigger fail before insert on task when new.data = x'7433' "
        "begin select raise(abort, 'insert failed on purpose'); end",
    )

    with pytest.raises(sqlite3.IntegrityError):
        storage.move_due_to_queue(base + datetime.timedelta(seconds=10))

    # The first batch (t0, t1) moved; the failed one (t2, t3) stays whole.
    assert storage.enqueued_items() == [b"t0", b"t1"]
    assert storage.scheduled_items() == [b"t2", b"t3", b"t4"]


def test_stock_queue_file_upgraded(queue_file):
    stock = SqliteStorage(QUEUE, filename=str(queue_file))
    eta = datetime.datetime(2030, 1, 1)
    stock.add_to_schedule(b"scheduled", eta)
    stock.enqueue(b"queued")
    stock.close()

    storage = ReliableSqliteStorage(QUEUE, filename=str(queue_file))
    try:
        assert storage.move_due_to_queue(eta) == [b"scheduled"]
        assert storage.enqueued_items() == [b"queued", b"scheduled"]
        assert storage.dequeue() == b"queued"
        assert storage.inflight_items() == {storage.inflight_key(): [b"queued"]}
    finally:
        storage.stop_heartbeat()
        storage.close()


# Heartbeats.


def test_heartbeat_written_before_dequeue(storage, queue_file):
    storage.enqueue(b"a")
    assert heartbeats(queue_file) == {}

    storage.dequeue()

    assert list(heartbeats(queue_file)) == [process_id()]


def test_heartbeat_refreshed_then_stopped(queue_file, monkeypatch):
    monkeypatch.setattr(sqlite_storage, "HEARTBEAT_INTERVAL", 0.05)
    storage = ReliableSqliteStorage(QUEUE, filename=str(queue_file))
    try:
        owner = storage.owner
        first = heartbeats(queue_file)[owner]
        wait_until(lambda: heartbeats(queue_file)[owner] > first)

        storage.stop_heartbeat()
        time.sleep(0.3)

        assert heartbeats(queue_file) == {}
    finally:
        storage.close()


# Recovery.


def test_recover_killed_process(storage, queue_file, children, caplog):
    caplog.set_level(logging.INFO, logger=sqlite_storage.__name__)
    storage.enqueue(b"a", 5)
    storage.enqueue(b"b", 5)
    storage.enqueue(b"c")
    child = Child(queue_file, 2)
    children.append(child)
    storage.enqueue(b"d", 5)
    assert child.owner.split("|")[2] == str(child.process.pid)

    child.kill()
    recovered = storage.recover()

    assert recovered == [(child.owner, b"a"), (child.owner, b"b")]
    assert storage.enqueued_items() == [b"a", b"b", b"d", b"c"]
    assert storage.inflight_items() == {}
    assert heartbeats(queue_file) == {}
    assert "its process has ended" in caplog.text


def test_recover_skips_live_process(storage, queue_file, children):
    storage.enqueue(b"a")
    child = Child(queue_file, 1)
    children.append(child)

    assert storage.recover() == []
    assert storage.inflight_items() == {child.key: [b"a"]}

    child.kill()

    assert storage.recover() == [(child.owner, b"a")]


def test_recover_stale_heartbeat(storage, queue_file, children, caplog):
    caplog.set_level(logging.INFO, logger=sqlite_storage.__name__)
    storage.enqueue(b"a")
    child = Child(queue_file, 1, "no-beats")
    children.append(child)
    execute_sql(
        queue_file,
        "update heartbeat set beat_at = ? where owner = ?",
        (time.time() - storage.heartbeat_ttl - 5, child.owner),
    )

    recovered = storage.recover()

    assert child.process.poll() is None
    assert recovered == [(child.owner, b"a")]
    assert "heartbeat is" in caplog.text


def test_recover_stopped_heartbeat(storage, queue_file, children):
    storage.enqueue(b"a")
    child = Child(queue_file, 1, "stop-heartbeat")
    children.append(child)

    recovered = storage.recover()

    assert child.process.poll() is None
    assert recovered == [(child.owner, b"a")]


def test_recover_skips_own_process(storage, queue_file):
    enqueue_all(storage, b"a")
    storage.dequeue()
    storage.stop_heartbeat()
    other = ReliableSqliteStorage(QUEUE, filename=str(queue_file), heartbeat_ttl=0)

    try:
        assert other.recover() == []
    finally:
        other.close()

    assert storage.inflight_items() == {storage.inflight_key(): [b"a"]}


def test_recover_other_queue_untouched(storage, queue_file, children):
    storage.enqueue(b"a")
    child = Child(queue_file, 1)
    children.append(child)
    child.kill()
    other = ReliableSqliteStorage("other", filename=str(queue_file))

    try:
        assert other.recover() == []
    finally:
        other.close()

    assert storage.inflight_items() == {child.key: [b"a"]}


# Forked processes.


def _dequeue_all(storage, start, results) -> None:
    start.wait()
    taken = []
    while (data := storage.dequeue()) is not None:
        taken.append(data)
    results.put((storage.inflight_key(), taken))


def test_concurrent_dequeue_from_processes(storage):
    count, workers = 400, 4
    items = [b"task-%d" % i for i in range(count)]
    enqueue_all(storage, *items)
    context = multiprocessing.get_context("fork")
    start, results = context.Event(), context.Queue()
    processes = [
        context.Process(target=_dequeue_all, args=(storage, start, results))
        for _ in range(workers)
    ]
    for process in processes:
        process.start()

    start.set()
    outcomes = [results.get(timeout=60) for _ in processes]
    for process in processes:
        process.join()

    taken = [data for _, part in outcomes for data in part]
    assert len(taken) == count
    assert sorted(taken) == sorted(items)
    inflight = storage.inflight_items()
    assert inflight == {key: part for key, part in outcomes if part}
    pids = {int(key.split("|")[2]) for key, _ in outcomes}
    assert pids == {process.pid for process in processes}


def _dequeue_one(storage, results) -> None:
    results.put((storage.dequeue(), storage.inflight_key()))


def test_forked_child_owns_its_tasks(storage):
    enqueue_all(storage, b"parent", b"child")
    assert storage.dequeue() == b"parent"
    context = multiprocessing.get_context("fork")
    results = context.Queue()

    process = context.Process(target=_dequeue_one, args=(storage, results))
    process.start()
    data, child_key = results.get(timeout=30)
    process.join()

    assert data == b"child"
    assert child_key.split("|")[2] == str(process.pid)
    assert storage.recover() == [(child_key.rsplit("|", 1)[0], b"child")]
    assert storage.inflight_items() == {storage.inflight_key(): [b"parent"]}
    assert storage.dequeue() == b"child"


# Real consumers on the SQLite queue.


@pytest.fixture
def env(settings_env, monkeypatch):
    values = {
        **settings_env,
        "TSHJOBS_TASK_MODULES": "tests.sample_tasks",
        "TSHJOBS_WORKERS": "2",
        "TSHJOBS_RETRY_DELAYS": "0.5",
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    huey = get_huey(load_settings())
    assert isinstance(huey.storage, ReliableSqliteStorage)
    return values


@pytest.fixture
def audit(env):
    return get_huey().audit


def event_names(audit, task_id):
    return [event["event"] for event in audit.events(task_id)]


@pytest.mark.parametrize("worker_type", ["thread", "process"])
def test_killed_consumer_task_recovered(env, audit, tmp_path, worker_type):
    first = ConsumerProcess(env, tmp_path / "first.log", "-k", worker_type)
    first.start()
    task_id = sample_tasks.sleep(3).id
    wait_for_state(audit, task_id, "running")
    assert get_huey().pending_count() == 0

    first.kill()
    second = ConsumerProcess(env, tmp_path / "second.log", "-k", worker_type)
    second.start()
    try:
        row = wait_for_state(audit, task_id, "succeeded")
    finally:
        second.stop()

    assert row["attempts"] == 2
    assert "recovered" in event_names(audit, task_id)
    assert f"Recovered task {task_id}" in second.log()
    assert get_huey().storage.inflight_items() == {}


def test_killed_process_worker_recovered(env, audit, tmp_path):
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
    assert f"Recovered task {task_id}" in consumer.log()
    assert get_huey().storage.inflight_items() == {}


def test_live_consumer_tasks_not_recovered(env, audit, tmp_path):
    consumer = ConsumerProcess(env, tmp_path / "consumer.log", "-k", "thread")
    consumer.start()
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
    assert get_huey().storage.inflight_items() == {}


def test_retry_goes_through_schedule(env, audit, tmp_path):
    consumer = ConsumerProcess(env, tmp_path / "consumer.log", "-k", "process")
    consumer.start()
    try:
        task_id = sample_tasks.flaky(str(tmp_path / "counter"), 1).id
        row = wait_for_state(audit, task_id, "succeeded")
    finally:
        consumer.stop()

    assert row["attempts"] == 2
    assert get_huey().storage.schedule_size() == 0
    assert get_huey().storage.inflight_items() == {}
