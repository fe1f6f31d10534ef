"""Run real `tshjobs consumer` processes and wait on the audit log."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tshjobs.audit import AuditLog

REPO = Path(__file__).resolve().parent.parent


class ConsumerProcess:
    def __init__(self, env: dict[str, str], log_path: Path, *args: str):
        self.env = {**os.environ, **env, "PYTHONPATH": str(REPO)}
        self.log_path = log_path
        self.args = args
        self.process: subprocess.Popen | None = None

    def start(self) -> ConsumerProcess:
        self.log_file = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tshjobs.cli", "consumer", *self.args],
            env=self.env,
            cwd=REPO,
            stdout=self.log_file,
            stderr=subprocess.STDOUT,
        )
        return self

    def stop(self, timeout: float = 20.0) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
        self.log_file.close()

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None
            self.log_file.close()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def wait_for_state(audit: AuditLog, task_id: str, states, timeout: float = 30.0):
    """Wait until the task's audit row is in one of `states`; return the row."""
    if isinstance(states, str):
        states = (states,)
    deadline = time.monotonic() + timeout
    row = None
    while time.monotonic() < deadline:
        row = audit.get(task_id)
        if row is not None and row["state"] in states:
            return row
        time.sleep(0.05)
    raise AssertionError(
        f"task {task_id} did not reach {states} in {timeout}s; last row: {row}"
    )
