"""Checks that the enqueue benchmark runs and counts what it claims.

They check message counts, audit rows and the statistics' structure, never
timings. Run them with `.venv/bin/python -m pytest bench`.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from bench import enqueue_latency
from bench.enqueue_latency import SYSTEMS, child_environment, main, percentile
from tests.services import free_port
from tshjobs.serializer import PREFIX, SIGNATURE_BYTES

CALLS = 30
WARMUP = 3


def test_percentile_nearest_rank():
    values = list(range(1, 101))
    assert percentile(values, 50) == 50
    assert percentile(values, 90) == 90
    assert percentile(values, 99) == 99
    assert percentile(values, 100) == 100
    assert percentile([7], 50) == 7
    assert percentile([1, 2], 50) == 1


def test_child_environment_drops_foreign_settings(tmp_path, monkeypatch):
    monkeypatch.setenv("CELERY_BROKER_URL", "amqp://guest@192.0.2.1//")
    monkeypatch.setenv("TSHJOBS_REDIS_URL", "redis://192.0.2.1:6379/0")
    env = child_environment(tmp_path / "work", 6399)
    assert "CELERY_BROKER_URL" not in env
    assert env["TSHJOBS_REDIS_URL"] == "redis://127.0.0.1:6399/0"
    assert env["TSHJOBS_ENV_FILE"] == ""
    assert len(env["TSHJOBS_SECRET_KEY"]) == 64


def test_connection_guard_rejects_other_addresses():
    allowed, other = free_port(), free_port()
    code = textwrap.dedent(f"""
        import socket, sys
        from bench.producers import ConnectionGuard
        guard = ConnectionGuard("127.0.0.1", {allowed})
        sys.addaudithook(guard)
        try:
            socket.create_connection(("127.0.0.1", {other}), timeout=1)
        except RuntimeError as exc:
            print("rejected:", exc)
        try:
            socket.getaddrinfo("localhost", 5672)
        except RuntimeError as exc:
            print("rejected:", exc)
        print("violations", len(guard.violations))
    """)
    completed = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=enqueue_latency.REPO_ROOT,
    )
    lines = completed.stdout.splitlines()
    assert lines[0].startswith(f"rejected: socket.connect to ('127.0.0.1', {other})")
    assert lines[1].startswith("rejected: socket.getaddrinfo to 'localhost'")
    assert lines[2] == "violations 2"


def test_benchmark_runs_every_system(tmp_path, capsys):
    output = tmp_path / "results.json"
    # "same" pins to one CPU, so the test also runs on a single-CPU machine.
    main([
        "--calls", str(CALLS),
        "--warmup", str(WARMUP),
        "--placement", "same",
        "--output", str(output),
    ])  # fmt: skip

    results = json.loads(output.read_text())
    rows = {row["system"]: row for row in results["systems"]}
    assert list(rows) == list(SYSTEMS)
    assert results["calls"] == CALLS
    assert results["machine"]["redis_server"]
    placement = results["placement"]
    assert placement["name"] == "same"
    assert placement["redis_cpu"] == placement["producer_cpu"]
    for system, row in rows.items():
        assert row["queued"] == CALLS + WARMUP, system
        assert row["redis_connections"] >= 1, system
        assert row["p50_ns"] <= row["p90_ns"] <= row["p99_ns"] <= row["max_ns"], system
        assert row["calls_per_second"] > 0, system
        assert row["peak_rss_growth_kib"] > 0, system

    assert rows["tshjobs"]["audit_rows"] == CALLS + WARMUP
    assert rows["tshjobs-no-audit"]["audit_rows"] == 0
    serializers = rows["tshjobs"]["serializers"]
    signature_overhead = len(PREFIX) + SIGNATURE_BYTES
    assert serializers["signed_message_bytes"] == (
        serializers["pickle_message_bytes"] + signature_overhead
    )

    table = capsys.readouterr().out
    for system in SYSTEMS:
        assert f"| {system} |" in table
