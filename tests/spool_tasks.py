"""A task that records the order tasks run in, and a producer that enqueues
it as the ERP does, for the spool tests."""

from __future__ import annotations

import time
from pathlib import Path

from tshjobs.queue import task


@task(retries=0)
def append_line(path: str, value: str) -> str:
    """Append `value` as one line to the file at `path`."""
    with open(path, "a") as file:
        file.write(f"{value}\n")
    return value


def produce(prefix: str, first: int, second: int, output: str, go_file: str):
    """Enqueue `first` tasks that append `prefix-0`, `prefix-1`, ... to
    `output`, wait until `go_file` exists, then enqueue `second` more."""
    for number in range(first):
        append_line(output, f"{prefix}-{number}")

    while not Path(go_file).exists():
        time.sleep(0.01)

    for number in range(first, first + second):
        append_line(output, f"{prefix}-{number}")
