"""The email sent log: at most one email per (kind, entity id)."""

from __future__ import annotations

import threading
import time

import pytest

from tshjobs import outbox
from tshjobs.outbox import DeliveryUnknown, SendInProgress, SentLog


@pytest.fixture
def log(tmp_path):
    return SentLog(tmp_path / "tshjobs.db")


def send(log, task_id, kind="invoice", entity_id=7):
    log.mark_sending(kind, entity_id, task_id, "a@example.com", "<m@x>")
    log.mark_sent(kind, entity_id, task_id)


def test_first_claim_wins_then_skips(log):
    assert log.claim("invoice", 7, "task-1")
    send(log, "task-1")

    assert not log.claim("invoice", 7, "task-2")
    record = log.get("invoice", 7)
    assert record.state == "sent"
    assert record.send_count == 1
    assert record.message_id == "<m@x>"


def test_force_sends_again(log):
    log.claim("invoice", 7, "task-1")
    send(log, "task-1")

    assert log.claim("invoice", 7, "task-2", force=True)
    send(log, "task-2")

    assert log.get("invoice", 7).send_count == 2


def test_keys_are_per_kind_and_entity(log):
    log.claim("invoice", 7, "task-1")
    send(log, "task-1")

    assert log.claim("invoice", 8, "task-2")
    assert log.claim("welcome", 7, "task-3")


def test_claim_held_by_other_task_is_temporary(log):
    log.claim("invoice", 7, "task-1")

    with pytest.raises(SendInProgress):
        log.claim("invoice", 7, "task-2")


def test_same_task_may_claim_again(log):
    assert log.claim("invoice", 7, "task-1")
    assert log.claim("invoice", 7, "task-1")


def test_release_lets_a_retry_send(log):
    log.claim("invoice", 7, "task-1")
    log.mark_sending("invoice", 7, "task-1", "a@example.com", "<m@x>")
    log.release("invoice", 7, "task-1")

    assert log.get("invoice", 7) is None
    assert log.claim("invoice", 7, "task-2")


def test_release_after_forced_repeat_keeps_sent(log):
    log.claim("invoice", 7, "task-1")
    send(log, "task-1")
    log.claim("invoice", 7, "task-2", force=True)
    log.release("invoice", 7, "task-2")

    assert log.get("invoice", 7).state == "sent"
    assert not log.claim("invoice", 7, "task-3")


def test_stale_sending_is_delivery_unknown(log, monkeypatch):
    log.claim("invoice", 7, "task-1")
    log.mark_sending("invoice", 7, "task-1", "a@example.com", "<m@x>")
    later = time.time() + outbox.STALE_CLAIM_SECONDS + 1
    monkeypatch.setattr(outbox.time, "time", lambda: later)

    with pytest.raises(DeliveryUnknown, match="may have been delivered"):
        log.claim("invoice", 7, "task-2")
    assert log.claim("invoice", 7, "task-2", force=True)


def test_stale_claim_is_taken_over(log, monkeypatch):
    log.claim("invoice", 7, "task-1")
    later = time.time() + outbox.STALE_CLAIM_SECONDS + 1
    monkeypatch.setattr(outbox.time, "time", lambda: later)

    assert log.claim("invoice", 7, "task-2")
    assert log.get("invoice", 7).task_id == "task-2"


def test_concurrent_claims_one_winner(tmp_path):
    path = tmp_path / "tshjobs.db"
    SentLog(path)
    start = threading.Barrier(8)
    outcomes = []

    def claim(number):
        log = SentLog(path)
        start.wait()
        try:
            outcomes.append(log.claim("invoice", 7, f"task-{number}"))
        except SendInProgress:
            outcomes.append("in progress")

    threads = [threading.Thread(target=claim, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert outcomes.count(True) == 1
    assert outcomes.count("in progress") == 7


def test_own_sending_row_is_delivery_unknown(log):
    log.claim("invoice", 7, "task-1")
    log.mark_sending("invoice", 7, "task-1", "a@example.com", "<m@x>")

    with pytest.raises(DeliveryUnknown):
        log.claim("invoice", 7, "task-1")
    assert log.claim("invoice", 7, "task-1", force=True)


def test_fresh_sending_by_other_task_in_progress(log):
    log.claim("invoice", 7, "task-1")
    log.mark_sending("invoice", 7, "task-1", "a@example.com", "<m@x>")

    with pytest.raises(SendInProgress):
        log.claim("invoice", 7, "task-2", force=True)


def test_new_database_is_private(tmp_path):
    SentLog(tmp_path / "tshjobs.db")

    assert (tmp_path / "tshjobs.db").stat().st_mode & 0o777 == 0o600
