"""Holder ids: telling a live claim holder from a dead one."""

from __future__ import annotations

import subprocess
import threading

from tshjobs import liveness
from tshjobs.liveness import current_holder, holder_is_alive


def test_current_thread_is_alive():
    assert holder_is_alive(current_holder()) is True


def test_finished_thread_is_dead():
    holders = []
    thread = threading.Thread(target=lambda: holders.append(current_holder()))
    thread.start()
    thread.join()

    assert holder_is_alive(holders[0]) is False


def test_other_process_alive_then_dead():
    process = subprocess.Popen(["sleep", "60"])
    own = current_holder().split("|")
    start = liveness._start_time(process.pid)
    holder = "|".join([own[0], own[1], str(process.pid), start, "1"])
    try:
        assert holder_is_alive(holder) is True
    finally:
        process.kill()
        process.wait()

    assert holder_is_alive(holder) is False


def test_unreaped_process_is_dead():
    process = subprocess.Popen(["sleep", "60"])
    own = current_holder().split("|")
    holder = "|".join(
        [own[0], own[1], str(process.pid), liveness._start_time(process.pid), "1"]
    )
    process.kill()
    # Not reaped yet: the process is a zombie until wait().
    try:
        while liveness._start_time(process.pid) is not None:
            pass
        assert holder_is_alive(holder) is False
    finally:
        process.wait()


def test_reused_pid_is_dead():
    own = current_holder().split("|")
    holder = "|".join([own[0], own[1], own[2], "1", own[4]])

    assert holder_is_alive(holder) is False


def test_other_host_cannot_tell():
    assert holder_is_alive("elsewhere|abcd1234|1|1|1") is None


def test_malformed_holder_cannot_tell():
    assert holder_is_alive("not a holder") is None
