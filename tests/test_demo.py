"""`tshjobs demo`: the whole appliance on embedded defaults, as a user starts it."""

from __future__ import annotations

import fcntl
import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request

from tests.consumers import REPO
from tests.services import free_port


def read_until(process, pattern: str, timeout: float) -> str:
    """Read the process's output until a line matches `pattern`."""
    seen = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        seen.append(line)
        if re.search(pattern, line):
            return "".join(seen)
    raise AssertionError(f"{pattern!r} not printed; output:\n{''.join(seen)}")


def final_states(audit_path) -> dict[str, int]:
    with sqlite3.connect(audit_path) as conn:
        return dict(conn.execute("SELECT state, count(*) FROM tasks GROUP BY 1"))


def sent_count(audit_path) -> int:
    with sqlite3.connect(audit_path) as conn:
        query = "SELECT count(*) FROM tasks WHERE result LIKE 'sent to %'"
        return conn.execute(query).fetchone()[0]


def test_demo_plays_a_day(tmp_path):
    data_dir = tmp_path / "demo"
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TSHJOBS_")}
    process = subprocess.Popen(
        [sys.executable, "-m", "tshjobs.cli", "demo", "--data-dir", str(data_dir),
         "--port", str(port), "--customers", "60", "--orders", "300",
         "--events", "40", "--speed", "40"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip
    try:
        banner = read_until(process, r"records: http", timeout=60)
        read_until(process, r"simulated day is over", timeout=60)

        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health") as response:
            health = json.load(response)
        zoho_url = re.search(r"sandbox at (http://127\.0\.0\.1:\d+)", banner)[1]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/login") as response:
            login_page = response.read().decode()

        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            states = final_states(data_dir / "audit.db")
            if not {"queued", "running"} & {s for s, n in states.items() if n}:
                break
            time.sleep(0.5)
        with urllib.request.urlopen(f"{zoho_url}/_sandbox/count/contacts") as response:
            contacts = json.load(response)
    finally:
        process.send_signal(signal.SIGINT)
        output = process.communicate(timeout=60)[0]

    assert "user: admin" in banner
    assert contacts["count"] > 0
    assert data_dir.stat().st_mode & 0o777 == 0o700
    assert health["status"] == "ok"
    assert "Log in" in login_page or "login" in login_page.lower()
    assert states.get("succeeded", 0) > 0
    assert states.get("queued", 0) == 0
    emails = list((data_dir / "mail").glob("*.eml"))
    assert len(emails) == sent_count(data_dir / "audit.db")
    assert process.returncode == 0, output
    assert "Stopping the demo" in output
    env_file = data_dir / "tshjobs.env"
    assert env_file.stat().st_mode & 0o777 == 0o600
    listing = subprocess.run(
        [sys.executable, "-m", "tshjobs.cli", "tasks"],
        cwd=REPO, env={**env, "TSHJOBS_ENV_FILE": str(env_file)},
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert listing.returncode == 0, listing.stderr
    assert "succeeded" in listing.stdout


def run_demo_command(data_dir, port, timeout=60):
    env = {k: v for k, v in os.environ.items() if not k.startswith("TSHJOBS_")}
    return subprocess.run(
        [sys.executable, "-m", "tshjobs.cli", "demo", "--data-dir", str(data_dir),
         "--port", str(port), "--customers", "10", "--orders", "0", "--events", "0"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout,
        check=False,
    )  # fmt: skip


def test_demo_rejects_taken_port(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]

        result = run_demo_command(tmp_path / "demo", port)

    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr


def test_demo_rejects_shared_data_dir(tmp_path):
    data_dir = tmp_path / "demo"
    data_dir.mkdir()
    with open(data_dir / "demo.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)

        result = run_demo_command(data_dir, free_port())

    assert result.returncode == 1
    assert "another demo is running" in result.stderr
