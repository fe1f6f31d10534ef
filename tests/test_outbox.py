"""The email sent log: at most one email per (kind, entity id)."""

from __future__ import annotations

import sqlite3
import subprocess
import threading
import time

import pytest

from tshjobs import liveness, outbox
from tshjobs.liveness import current_holder
from tshjobs.outbox import DeliveryUnknown, SendInProgress, SentLog


@pytest.fixture
def log(tmp_path):
    return SentLog(tmp_path / "tshjobs.db")


def holder_of(process: subprocess.Popen) -> str:
    """Return a holder id naming `process`, as if it held a claim."""
    own = current_holder().split("|")
    start = liveness._start_time(process.pid)
    return "|".join([own[0], own[1], str(process.pid), start, "1"])


@pytest.fixture
def live_holder():
    process = subprocess.Popen(["sleep", "60"])
    yield holder_of(process)
    process.kill()
    process.wait()


@pytest.fixture
def dead_holder():
    process = subprocess.Popen(["sleep", "60"])
    holder = holder_of(process)
    process.kill()
    process.wait()
    return holder


def send(log, claim, message_id="<m@x>"):
    log.mark_sending(claim, "a@example.com", message_id)
    log.mark_sent(claim)


def test_first_claim_wins_then_skips(log):
    claim = log.claim("invoice", 7, "task-1")
    send(log, claim)

    assert log.claim("invoice", 7, "task-2") is None
    record = log.get("invoice", 7)
    assert record.state == "sent"
    assert record.send_count == 1
    assert record.message_id == "<m@x>"
    assert record.holder is None


def test_force_sends_new_message(log):
    send(log, log.claim("invoice", 7, "task-1"))

    claim = log.claim("invoice", 7, "task-2", force=True)
    assert claim.message_id is None
    send(log, claim, "<m2@x>")

    record = log.get("invoice", 7)
    assert record.send_count == 2
    assert record.message_id == "<m2@x>"


def test_keys_are_per_kind_and_entity(log):
    send(log, log.claim("invoice", 7, "task-1"))

    assert log.claim("invoice", 8, "task-2")
    assert log.claim("welcome", 7, "task-3")


def test_claim_of_live_holder_is_in_progress(log, live_holder):
    log.claim("invoice", 7, "task-1", holder=live_holder)

    with pytest.raises(SendInProgress, match="being prepared by task task-1"):
        log.claim("invoice", 7, "task-2")


def test_same_holder_may_claim_again(log):
    assert log.claim("invoice", 7, "task-1")
    assert log.claim("invoice", 7, "task-1")


def test_other_copy_of_task_waits_for_live_holder(log, live_holder):
    log.claim("invoice", 7, "task-1", holder=live_holder)

    with pytest.raises(SendInProgress):
        log.claim("invoice", 7, "task-1")


def test_claim_of_dead_holder_taken_over(log, dead_holder):
    log.claim("invoice", 7, "task-1", holder=dead_holder)

    claim = log.claim("invoice", 7, "task-1")
    assert claim.holder == current_holder()
    assert not claim.maybe_delivered
    assert claim.message_id is None


def test_release_lets_a_retry_send(log):
    claim = log.claim("invoice", 7, "task-1")
    log.release(claim)

    assert log.get("invoice", 7) is None
    assert log.claim("invoice", 7, "task-2")


def test_release_after_forced_repeat_keeps_sent(log):
    send(log, log.claim("invoice", 7, "task-1"))
    log.release(log.claim("invoice", 7, "task-2", force=True))

    record = log.get("invoice", 7)
    assert record.state == "sent"
    assert record.message_id == "<m@x>"
    assert log.claim("invoice", 7, "task-3") is None


def test_dead_sender_resends_same_message_id(log, dead_holder):
    claim = log.claim("invoice", 7, "task-1", holder=dead_holder)
    log.mark_sending(claim, "a@example.com", "<m@x>")

    again = log.claim("invoice", 7, "task-1")
    assert again.maybe_delivered
    assert again.message_id == "<m@x>"


def test_dead_sender_without_resend_is_unknown(log, dead_holder):
    claim = log.claim("invoice", 7, "task-1", holder=dead_holder)
    log.mark_sending(claim, "a@example.com", "<m@x>")

    with pytest.raises(DeliveryUnknown, match="may have been delivered"):
        log.claim("invoice", 7, "task-1", resend_uncertain=False)
    forced = log.claim("invoice", 7, "task-1", resend_uncertain=False, force=True)
    assert forced.message_id == "<m@x>"


def test_live_sender_in_progress_even_forced(log, live_holder):
    claim = log.claim("invoice", 7, "task-1", holder=live_holder)
    log.mark_sending(claim, "a@example.com", "<m@x>")

    with pytest.raises(SendInProgress, match="being sent by task task-1"):
        log.claim("invoice", 7, "task-2", force=True)


def test_lost_reply_keeps_message_id(log):
    claim = log.claim("invoice", 7, "task-1")
    log.mark_sending(claim, "a@example.com", "<m@x>")
    log.release(claim, maybe_delivered=True)

    record = log.get("invoice", 7)
    assert record.state == "claimed"
    assert record.maybe_delivered
    assert record.holder is None
    again = log.claim("invoice", 7, "task-1")
    assert again.message_id == "<m@x>"
    assert again.maybe_delivered


def test_failed_resend_keeps_uncertainty(log):
    claim = log.claim("invoice", 7, "task-1")
    log.mark_sending(claim, "a@example.com", "<m@x>")
    log.release(claim, maybe_delivered=True)

    # The resend is rejected before its data, which shows nothing about
    # the first attempt.
    log.release(log.claim("invoice", 7, "task-1"))

    third = log.claim("invoice", 7, "task-1")
    assert third.maybe_delivered
    assert third.message_id == "<m@x>"


def test_taken_over_claim_sends_nothing(log, dead_holder):
    stale = log.claim("invoice", 7, "task-1", holder=dead_holder)
    log.claim("invoice", 7, "task-1")

    with pytest.raises(SendInProgress, match="taken over"):
        log.mark_sending(stale, "a@example.com", "<m@x>")


def test_foreign_holder_waits_until_stale(log, monkeypatch):
    foreign = "another-host|00000000|4242|12345|1"
    log.claim("invoice", 7, "task-1", holder=foreign)

    with pytest.raises(SendInProgress):
        log.claim("invoice", 7, "task-2")

    later = time.time() + outbox.STALE_CLAIM_SECONDS + 1
    monkeypatch.setattr(outbox.time, "time", lambda: later)
    assert log.claim("invoice", 7, "task-2").task_id == "task-2"


def test_concurrent_claims_one_winner(tmp_path):
    path = tmp_path / "tshjobs.db"
    SentLog(path)
    start = threading.Barrier(8)
    done = threading.Barrier(8)
    outcomes = []

    def claim(number):
        log = SentLog(path)
        start.wait()
        try:
            outcomes.append(bool(log.claim("invoice", 7, f"task-{number}")))
        except SendInProgress:
            outcomes.append("in progress")
        # Every claimant stays alive until all have tried.
        done.wait()

    threads = [threading.Thread(target=claim, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert outcomes.count(True) == 1
    assert outcomes.count("in progress") == 7


def test_old_sent_log_gains_columns(tmp_path):
    path = tmp_path / "tshjobs.db"
    with sqlite3.connect(path) as conn:
        conn.execute(
            "CREATE TABLE email_sent_log (kind TEXT NOT NULL, entity_id TEXT NOT"
            " NULL, state TEXT NOT NULL, task_id TEXT, recipient TEXT, message_id"
            " TEXT, claimed_at REAL NOT NULL, sent_at REAL, send_count INTEGER NOT"
            " NULL DEFAULT 0, PRIMARY KEY (kind, entity_id))"
        )
        conn.execute(
            "INSERT INTO email_sent_log VALUES ('invoice', '7', 'sending', 'task-1',"
            " 'a@example.com', '<m@x>', 1.0, NULL, 0)"
        )
    conn.close()

    log = SentLog(path)

    record = log.get("invoice", 7)
    assert record.holder is None
    assert not record.maybe_delivered
    assert log.claim("invoice", 7, "task-1").message_id == "<m@x>"


def test_new_database_is_private(tmp_path):
    SentLog(tmp_path / "tshjobs.db")

    assert (tmp_path / "tshjobs.db").stat().st_mode & 0o777 == 0o600


def test_resend_gets_bytes_first_sent(log, dead_holder):
    claim = log.claim("invoice", 7, "task-1", holder=dead_holder)
    log.mark_sending(claim, "a@example.com", "<m@x>", b"first message bytes")

    again = log.claim("invoice", 7, "task-1")

    assert again.message == b"first message bytes"
    log.mark_sending(again, "a@example.com", "<m@x>", again.message)
    log.mark_sent(again)
    assert log.claim("invoice", 7, "task-2") is None
