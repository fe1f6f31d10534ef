"""Small tasks for testing the queue itself, apart from email and the ERP."""

from __future__ import annotations

import socket
import time
from pathlib import Path

from huey.exceptions import TaskTimeout

from tshjobs.errors import PermanentError, TemporaryError
from tshjobs.queue import task


@task(retries=2)
def add(a: int, b: int) -> int:
    return a + b


@task(retries=3)
def flaky(counter_file: str, failures: int) -> str:
    """Fail with a TemporaryError `failures` times, then succeed."""
    path = Path(counter_file)
    count = int(path.read_text()) if path.exists() else 0
    path.write_text(str(count + 1))
    if count < failures:
        raise TemporaryError(f"attempt {count + 1} failed on purpose")
    return f"succeeded on attempt {count + 1}"


@task(retries=3)
def broken(reason: str) -> None:
    raise PermanentError(reason)


@task(retries=3)
def buggy() -> None:
    raise KeyError("a bug, not a temporary failure")


@task(retries=0)
def sleep(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


@task(retries=0)
def touch(path: str) -> str:
    Path(path).touch()
    return path


@task(retries=0)
def echo(value):
    return value


@task(retries=1, soft_time_limit=1, hard_time_limit=4)
def read_forever(port: int) -> str:
    """Connect to 127.0.0.1:port and wait for a reply that never comes."""
    with socket.create_connection(("127.0.0.1", port)) as conn:
        return conn.recv(1).decode()


@task(retries=1, soft_time_limit=0.5, hard_time_limit=2)
def ignore_soft_limit(seconds: float) -> str:
    """Catch the soft time limit and keep going, as a badly written task would."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            time.sleep(0.05)
        except TaskTimeout:
            pass
    return "finished"


@task(retries=0, soft_time_limit=1, hard_time_limit=30)
def busy_loop(seconds: float) -> str:
    """Run Python code (not one long C call) for `seconds`."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.01)
    return "finished"
