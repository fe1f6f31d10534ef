"""Small tasks for testing the queue itself, apart from email and the ERP."""

from __future__ import annotations

import time
from pathlib import Path

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
