"""Audit writes that fail while the database is locked are kept and replayed
in order, in this process and by a real consumer."""

from __future__ import annotations

import json
import logging
import sqlite3
import time

import pytest
import sqlite_utils

from tests import spool_tasks
from tests.consumers import ConsumerProcess, wait_for_state
from tshjobs.audit import (
    AuditLog,
    AuditWriteDeferred,
    audit_backlog,
    retry_buffer_path,
)
from tshjobs.queue import get_huey
from tshjobs.settings import load_settings


class Lock:
    """An exclusive lock on a SQLite file, held by a connection of its own."""

    def __init__(self, path):
        self.conn = sqlite3.connect(path, isolation_level=None)
        self.conn.execute("BEGIN EXCLUSIVE")
        self.held = True

    def release(self) -> None:
        if self.held:
            self.conn.execute("ROLLBACK")
            self.conn.close()
            self.held = False


@pytest.fixture
def audit(tmp_path):
    return AuditLog(tmp_path / "audit.db")


@pytest.fixture
def lock(audit):
    """Return a function that locks the audit database; released at the end."""
    locks = []

    def lock_audit() -> Lock:
        locks.append(Lock(audit.path))
        return locks[-1]

    yield lock_audit
    for held in locks:
        held.release()


def backlog(audit) -> dict:
    return audit.retry_buffer.backlog()


def test_locked_write_replayed_before_next_write(audit, lock):
    blocker = lock()
    with pytest.raises(AuditWriteDeferred):
        audit.record_enqueued("t1", "tasks.one", [1], {}, "tshjobs")
    assert backlog(audit)["pending"] == 1
    assert "locked" in backlog(audit)["last_error"]
    assert audit.get("t1") is None

    blocker.release()
    audit.record_enqueued("t2", "tasks.two", [2], {}, "tshjobs")

    first, second = audit.get("t1"), audit.get("t2")
    assert first["state"] == "queued"
    assert json.loads(first["args"]) == [1]
    assert second["state"] == "queued"
    assert first["enqueued_at"] < second["enqueued_at"]
    assert backlog(audit)["pending"] == 0


def test_kept_start_replayed_before_success(audit, lock):
    audit.record_enqueued("t1", "tasks.one", [], {}, "tshjobs")
    blocker = lock()
    with pytest.raises(AuditWriteDeferred):
        audit.record_started("t1", "host", 123, "Worker-1")
    blocker.release()

    audit.record_succeeded("t1")

    row = audit.get("t1")
    assert row["state"] == "succeeded"
    assert row["attempts"] == 1
    events = [event["event"] for event in audit.events("t1")]
    assert events == ["enqueued", "started", "succeeded"]


def test_replay_keeps_order_and_times(audit, lock):
    audit.record_enqueued("t1", "tasks.one", [], {}, "tshjobs")
    blocker = lock()
    with pytest.raises(AuditWriteDeferred):
        audit.record_started("t1", "host", 123, "Worker-1")
    with pytest.raises(AuditWriteDeferred):
        audit.record_succeeded("t1")
    with pytest.raises(AuditWriteDeferred):
        audit.record_result("t1", 42)
    assert backlog(audit)["pending"] == 3
    released_at = time.time()
    blocker.release()

    assert audit.replay_pending() == 3

    row = audit.get("t1")
    assert row["state"] == "succeeded"
    assert row["attempts"] == 1
    assert row["result"] == "42"
    assert row["started_at"] <= row["finished_at"]
    assert row["finished_at"] < released_at
    events = [event["event"] for event in audit.events("t1")]
    assert events == ["enqueued", "started", "succeeded"]
    assert backlog(audit)["pending"] == 0


def test_write_that_cannot_apply_is_dropped(audit, lock, caplog):
    blocker = lock()
    with pytest.raises(AuditWriteDeferred):
        audit.record_enqueued("t1", "tasks.one", [], {}, "tshjobs")
    buffer = sqlite3.connect(retry_buffer_path(audit.path), isolation_level=None)
    buffer.execute(
        "INSERT INTO kept_writes (at, method, arguments, task_id, error)"
        " VALUES (0, 'get', '{\"args\": [\"t1\"], \"kwargs\": {}}', 't1', ''),"
        " (0, 'record_state', '{\"args\": [], \"kwargs\": {}}', 't1', '')"
    )
    buffer.close()
    blocker.release()

    with caplog.at_level(logging.ERROR, logger="tshjobs.audit"):
        applied = audit.replay_pending()

    assert applied == 1
    assert audit.get("t1")["state"] == "queued"
    assert "'get' is not an audit writer" in caplog.text
    assert "record_state for task t1" in caplog.text
    assert backlog(audit)["pending"] == 0


def test_permanent_error_not_kept(audit):
    audit.db.conn.execute("DROP TABLE task_events")

    with pytest.raises(sqlite3.OperationalError) as raised:
        audit.record_enqueued("t1", "tasks.one", [], {}, "tshjobs")

    assert not isinstance(raised.value, AuditWriteDeferred)
    assert backlog(audit)["pending"] == 0


def test_backlog_without_buffer_file(settings_env):
    settings = load_settings()

    assert audit_backlog(settings) == {
        "pending": 0,
        "oldest_at": None,
        "last_error": None,
        "last_error_at": None,
    }
    assert not retry_buffer_path(settings.audit_path).exists()


@pytest.fixture
def queue_env(settings_env, monkeypatch):
    env = {**settings_env, "TSHJOBS_TASK_MODULES": "tests.spool_tasks"}
    env["TSHJOBS_WORKERS"] = "1"
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    get_huey(load_settings())
    return env


def wait_until(condition, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"condition not met in {timeout}s")


def read_lines(path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def test_consumer_completes_rows_after_lock(queue_env, tmp_path):
    settings = get_huey().settings
    audit = get_huey().audit
    output = tmp_path / "output"
    queued = [spool_tasks.append_line(str(output), str(n)) for n in range(3)]

    blocker = Lock(settings.audit_path)
    consumer = ConsumerProcess(queue_env, tmp_path / "consumer.log").start()
    try:
        wait_until(lambda: len(read_lines(output)) == 3)
        wait_until(lambda: audit_backlog(settings)["pending"] >= 9)
        kept = audit_backlog(settings)
        released_at = time.time()
        blocker.release()

        rows = [wait_for_state(audit, task.id, "succeeded") for task in queued]
        wait_until(lambda: audit_backlog(settings)["pending"] == 0)
    finally:
        blocker.release()
        consumer.stop()

    assert read_lines(output) == ["0", "1", "2"]
    # Each task's started, succeeded and result writes were kept.
    assert kept["pending"] == 9
    assert "locked" in kept["last_error"]
    for number, (task, row) in enumerate(zip(queued, rows, strict=True)):
        assert row["attempts"] == 1
        assert row["result"] == str(number)
        assert row["finished_at"] < released_at
        events = [event["event"] for event in audit.events(task.id)]
        assert events == ["enqueued", "started", "succeeded"]
    assert "Audit log write failed" in consumer.log()
    assert "Replayed" in consumer.log()


def test_read_only_connection_reopened(audit):
    audit.record_enqueued("t1", "tasks.one", [1], {}, "tshjobs")
    # The connection SQLite gives a process while the file cannot be
    # written (for example chattr +i), kept after the file is writable again.
    read_only = sqlite3.connect(
        f"file:{audit.path}?mode=ro", uri=True, isolation_level=None
    )
    audit._db._local.conn = sqlite_utils.Database(read_only)

    with pytest.raises(AuditWriteDeferred):
        audit.record_event("t1", "first", "kept while read-only")
    audit.record_event("t1", "second", "after the file is writable")

    events = [event["event"] for event in audit.events("t1")]
    assert events[-2:] == ["first", "second"]
    assert backlog(audit)["pending"] == 0
