"""Soft and hard time limits stop stuck tasks, and workers take the next one."""

from __future__ import annotations

import socket
import threading

import pytest

from tests import sample_tasks
from tests.consumers import ConsumerProcess, wait_for_state
from tshjobs.queue import get_huey
from tshjobs.settings import load_settings


@pytest.fixture
def env(settings_env, redis_url, monkeypatch):
    values = {
        **settings_env,
        "TSHJOBS_REDIS_URL": redis_url,
        "TSHJOBS_TASK_MODULES": "tests.sample_tasks",
        "TSHJOBS_WORKERS": "1",
        "TSHJOBS_RETRY_DELAYS": "0.2",
        "TSHJOBS_RETRY_JITTER": "0",
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    get_huey(load_settings())
    return values


@pytest.fixture
def audit(env):
    return get_huey().audit


@pytest.fixture
def silent_server():
    """A TCP server on 127.0.0.1 that accepts connections and never replies."""
    server = socket.create_server(("127.0.0.1", 0))
    accepted = []
    stop = threading.Event()

    def accept():
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(server.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join()
    for conn in accepted:
        conn.close()
    server.close()


def run_with_consumer(env, tmp_path, *args):
    return ConsumerProcess(env, tmp_path / "consumer.log", *args).start()


@pytest.mark.parametrize("worker_type", ["process", "thread"])
def test_soft_limit_stops_python_loop(env, audit, tmp_path, worker_type):
    consumer = run_with_consumer(env, tmp_path, "-k", worker_type)
    try:
        stuck = sample_tasks.busy_loop(60).id
        after = sample_tasks.add(1, 2).id

        row = wait_for_state(audit, stuck, "failed")
        assert wait_for_state(audit, after, "succeeded")["result"] == "3"
    finally:
        consumer.stop()

    assert "soft time limit of 1 s exceeded" in row["error"]


def test_soft_limit_interrupts_blocking_read(env, audit, tmp_path, silent_server):
    consumer = run_with_consumer(env, tmp_path, "-k", "process")
    try:
        stuck = sample_tasks.read_forever(silent_server).id
        after = sample_tasks.add(2, 3).id

        row = wait_for_state(audit, stuck, "failed")
        assert wait_for_state(audit, after, "succeeded")["result"] == "5"
    finally:
        consumer.stop()

    assert row["attempts"] == 2
    assert "soft time limit" in row["error"]
    events = [event["event"] for event in audit.events(stuck)]
    assert events.count("error") == 1


def test_hard_limit_ends_stuck_process_worker(env, audit, tmp_path):
    consumer = run_with_consumer(env, tmp_path, "-k", "process")
    try:
        stuck = sample_tasks.ignore_soft_limit(60).id
        after = sample_tasks.add(3, 4).id

        row = wait_for_state(audit, stuck, "failed", timeout=60)
        assert wait_for_state(audit, after, "succeeded", timeout=60)["result"] == "7"
    finally:
        consumer.stop()

    assert row["attempts"] == 2
    assert "hard time limit of 2 s exceeded" in row["error"]
    assert "Worker 1 died, restarting" in consumer.log()
    assert get_huey().storage.inflight_items() == {}


def test_time_limits_settings_checked():
    from tshjobs.errors import ConfigError

    base = {
        "TSHJOBS_ENV_FILE": "",
        "TSHJOBS_SECRET_KEY": "k" * 32,
        "TSHJOBS_ERP_DATABASE_URL": "sqlite:///erp.db",
    }
    with pytest.raises(ConfigError, match="must be less than TSHJOBS_HARD_TIME_LIMIT"):
        load_settings({**base, "TSHJOBS_SOFT_TIME_LIMIT": "300"})
    settings = load_settings(base)
    assert settings.soft_time_limit == 240
    assert settings.hard_time_limit == 300
