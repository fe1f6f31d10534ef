"""Tasks enqueued while Redis is down wait in the spool and run in order once
it is back. Each test stops and starts a redis-server of its own."""

from __future__ import annotations

import collections
import pickle
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests import spool_tasks
from tests.consumers import REPO, ConsumerProcess, wait_for_state
from tests.services import RedisServer, free_port
from tshjobs import errors, spool
from tshjobs.queue import get_huey
from tshjobs.settings import load_settings

# Seconds per enqueue call that a thread may take before the test calls it
# hung. A client with redis-py 8.2's default timeouts (5 s) would exceed it
# against a hung Redis.
ENQUEUE_JOIN_TIMEOUT = 3.0


@pytest.fixture
def redis(tmp_path):
    server = RedisServer(tmp_path / "redis")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def env(redis_env, redis):
    # One worker runs the tasks in the order they are dequeued.
    return redis_env(redis.url, "tests.spool_tasks", workers=1)


@pytest.fixture
def audit(env):
    return get_huey().audit


def wait_until(condition, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"condition not met in {timeout}s")


def read_lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def enqueue_in_thread(calls) -> list:
    """Run `calls` (functions of no arguments) in order in a thread, and
    return their results or the exception that stopped them."""
    results = []

    def run():
        try:
            for call in calls:
                results.append(call())
        except Exception as exc:  # noqa: BLE001 - handed to the test
            results.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(timeout=ENQUEUE_JOIN_TIMEOUT * len(calls))
    assert not thread.is_alive(), "enqueue did not return: it hangs"
    return results


def spooled_count() -> int:
    return spool.spool_backlog(get_huey().settings)["pending"]


def spool_events(audit, task_id: str) -> list[tuple[str, str]]:
    return [(e["event"], e["detail"]) for e in audit.events(task_id)]


def test_spooled_tasks_run_in_order(env, redis, audit, tmp_path):
    output = tmp_path / "output"
    redis.stop()

    calls = [
        lambda number=number: spool_tasks.append_line(str(output), str(number))
        for number in range(50)
    ]
    results = enqueue_in_thread(calls)

    errors_raised = [r for r in results if isinstance(r, Exception)]
    assert errors_raised == []
    assert len(results) == 50
    assert spooled_count() == 50
    for queued in results:
        row = audit.get(queued.id)
        assert row["state"] == "queued"
        assert ("spooled", "Redis unavailable") in spool_events(audit, queued.id)

    redis.start()
    consumer = ConsumerProcess(env, tmp_path / "consumer.log").start()
    try:
        wait_until(lambda: len(read_lines(output)) >= 50)
        for queued in results:
            wait_for_state(audit, queued.id, "succeeded")
    finally:
        consumer.stop()

    assert read_lines(output) == [str(number) for number in range(50)]
    assert spooled_count() == 0
    assert "Delivered 50 spooled tasks" in consumer.log()


def test_producer_drains_spool_before_pushing(env, redis, audit):
    redis.stop()
    spooled = enqueue_in_thread(
        [lambda n=n: spool_tasks.append_line("/dev/null", str(n)) for n in range(3)]
    )
    redis.start()

    pushed = spool_tasks.append_line("/dev/null", "3")

    storage = get_huey().storage
    queued_ids = [
        get_huey().serializer.deserialize(data).id for data in storage.enqueued_items()
    ]
    assert queued_ids == [task.id for task in spooled] + [pushed.id]
    assert spooled_count() == 0
    assert "spooled" not in [event for event, _ in spool_events(audit, pushed.id)]


def test_setting_false_raises_queue_unavailable(env, redis, audit, monkeypatch):
    monkeypatch.setenv("TSHJOBS_SPOOL_WHEN_REDIS_DOWN", "false")
    get_huey(load_settings())
    redis.stop()

    results = enqueue_in_thread([lambda: spool_tasks.append_line("/dev/null", "x")])

    assert len(results) == 1
    assert isinstance(results[0], errors.QueueUnavailable)
    assert "TSHJOBS_SPOOL_WHEN_REDIS_DOWN" in str(results[0])
    assert spooled_count() == 0
    assert audit.search() == []


def test_enqueue_returns_when_redis_hangs(env, audit, monkeypatch):
    """A server that accepts connections but never replies, like a hung Redis."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        port = silent.getsockname()[1]
        monkeypatch.setenv("TSHJOBS_REDIS_URL", f"redis://127.0.0.1:{port}/0")
        get_huey(load_settings())

        results = enqueue_in_thread([lambda: spool_tasks.append_line("/dev/null", "x")])

    assert len(results) == 1
    assert not isinstance(results[0], Exception)
    assert spooled_count() == 1
    assert ("spooled", "Redis unavailable") in spool_events(audit, results[0].id)


def test_unreachable_redis_spools(env, audit, monkeypatch):
    monkeypatch.setenv("TSHJOBS_REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")
    get_huey(load_settings())

    queued = spool_tasks.append_line("/dev/null", "x")

    assert audit.get(queued.id)["state"] == "queued"
    assert spooled_count() == 1


def test_spool_file_durable_group_writable(env, redis):
    redis.stop()
    spool_tasks.append_line("/dev/null", "x")

    path = spool.spool_path(get_huey().settings)
    assert path.stat().st_mode & 0o777 == 0o660
    conn = spool.get_spool(get_huey().settings).connection()
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    # 2 is FULL: the WAL is synced on every commit.
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2


def run_producer(env: dict, prefix: str, first: int, second: int, output, go_file):
    code = (
        "from tests.spool_tasks import produce; "
        f"produce({prefix!r}, {first}, {second}, {str(output)!r}, {str(go_file)!r})"
    )
    return subprocess.Popen(
        [sys.executable, "-c", code],
        env={**env, "PYTHONPATH": str(REPO)},
        cwd=REPO,
    )


def test_concurrent_producers_deliver_once_in_order(env, redis, tmp_path):
    output = tmp_path / "output"
    go_file = tmp_path / "go"
    first, second = 400, 100
    redis.stop()
    consumer = ConsumerProcess(env, tmp_path / "consumer.log").start()
    producers = [
        run_producer(env, prefix, first, second, output, go_file)
        for prefix in ("a", "b")
    ]
    stop = threading.Event()
    delivered = []

    def drain_until_stopped():
        while not stop.is_set():
            delivered.append(spool.drain_spool(get_huey()))

    # Two threads here call drain_spool as the consumer's spool thread does,
    # so that several drains overlap the producers' own.
    drainers = [threading.Thread(target=drain_until_stopped) for _ in range(2)]
    try:
        # Both producers spool their first tasks at once while Redis is down.
        wait_until(lambda: spooled_count() == 2 * first)

        # The producers push their other tasks while the drainers run, each
        # producer draining the spool first while it finds tasks there.
        redis.start()
        for drainer in drainers:
            drainer.start()
        go_file.touch()
        for producer in producers:
            assert producer.wait(timeout=120) == 0
        wait_until(lambda: len(read_lines(output)) >= 2 * (first + second), 120)
    finally:
        stop.set()
        for drainer in drainers:
            if drainer.is_alive():
                drainer.join(timeout=30)
        for producer in producers:
            if producer.poll() is None:
                producer.kill()
        consumer.stop()

    lines = read_lines(output)
    repeated = [line for line, n in collections.Counter(lines).items() if n > 1]
    assert repeated == []
    for prefix in ("a", "b"):
        numbers = [int(line.split("-")[1]) for line in lines if line[0] == prefix]
        assert numbers == list(range(first + second))
    assert spooled_count() == 0


class _WritesFile:
    """A pickle that creates a file when loaded: the proof of code execution."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def test_forged_spool_row_not_executed(env, redis, audit, tmp_path):
    proof = tmp_path / "pwned"
    output = tmp_path / "output"
    redis.stop()
    before = spool_tasks.append_line(str(output), "before")
    path = spool.spool_path(get_huey().settings)
    with sqlite3.connect(path) as forger:
        forger.execute(
            "INSERT INTO spooled_tasks (queue, task_id, data, priority,"
            " spooled_at, reason) VALUES (?, 'forged', ?, NULL, 0, 'forged')",
            (get_huey().name, pickle.dumps(_WritesFile(proof))),
        )
    forger.close()
    after = spool_tasks.append_line(str(output), "after")

    redis.start()
    consumer = ConsumerProcess(env, tmp_path / "consumer.log").start()
    try:
        wait_for_state(audit, after.id, "succeeded")
    finally:
        consumer.stop()

    assert audit.get(before.id)["state"] == "succeeded"
    assert read_lines(output) == ["before", "after"]
    assert not proof.exists()
    assert "not signed by tshjobs" in consumer.log()
    assert spooled_count() == 0
