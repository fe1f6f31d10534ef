"""Checks that the Zoho sync benchmark runs end to end and counts what it
claims: every entity synced once, and counts in the JSON that add up.

They use a few dozen entities and a sandbox with 1-second windows, and never
check timings. Run them with `.venv/bin/python -m pytest bench`.
"""

from __future__ import annotations

import json
import random

import pytest

from bench.zoho_measure import ApiRequest, count_by_window, summarize_windows
from bench.zoho_peer import BACKOFF_MAX, backoff_delay
from bench.zoho_sync import SYSTEMS, main

CUSTOMERS = 12
ORDERS = 10
PRODUCTS = 6
WORKERS = 2


def small_run(tmp_path, *options: str) -> dict:
    output = tmp_path / "results.json"
    main([
        "--customers", str(CUSTOMERS),
        "--orders", str(ORDERS),
        "--products", str(PRODUCTS),
        "--workers", str(WORKERS),
        "--window-seconds", "1",
        "--output", str(output),
        *options,
    ])  # fmt: skip
    return json.loads(output.read_text())


def check_counts(row: dict) -> None:
    """Check that one system's figures agree with each other."""
    system = row["system"]
    tasks = row["tasks"]
    assert row["complete"], system
    assert tasks["enqueued"] == CUSTOMERS + ORDERS, system
    assert tasks["not_final"] == 0, system
    assert tasks["succeeded"] + tasks["failed"] == tasks["enqueued"], system
    assert tasks["attempts"] >= tasks["enqueued"], system

    windows = row["windows"]
    assert row["logged_calls"] == row["calls"], system
    assert sum(row["by_status"].values()) == row["calls"], system
    assert sum(w["requests"] for w in windows) == row["calls"], system
    assert sum(w["rate_limited"] for w in windows) == row["rate_limited"], system
    assert row["by_status"].get("429", 0) == row["rate_limited"], system
    # Summed, because a request at a window's edge may fall in the next
    # window by the sandbox's own clock reading.
    admitted = sum(w["admitted"] for w in windows)
    assert admitted == sum(row["sandbox_admitted_per_window"]), system
    assert row["full_windows"] == max(len(windows) - 2, 0), system

    assert row["peak_rss_kib"] > 0, system
    assert row["processes"] >= WORKERS + 1, system


def check_records(row: dict) -> None:
    """Check that every entity the tasks synced has exactly one record."""
    system = row["system"]
    records = row["records"]
    assert row["tasks"]["succeeded"] == row["tasks"]["enqueued"], system
    # The customers, the orders, and at least one product per order.
    assert records["expected"] > CUSTOMERS + ORDERS, system
    assert records["records"] == records["expected"], system
    assert records["distinct_erp_ids"] == records["expected"], system
    assert records["duplicate_records"] == 0, system
    assert records["missing"] == 0, system
    assert records["unexpected"] == 0, system
    assert records["not_written_back"] == 0, system


def test_benchmark_runs_both_systems(tmp_path, capsys):
    # 10,000 calls a window: no system is rate-limited, so tshjobs' limiter,
    # which always counts 60 s windows, never waits.
    results = small_run(tmp_path, "--per-minute", "10000")

    rows = {row["system"]: row for row in results["systems"]}
    assert list(rows) == list(SYSTEMS)
    assert results["settings"]["customers"] == CUSTOMERS
    assert results["machine"]["redis_server"]
    assert results["machine"]["postgresql"]
    for row in rows.values():
        check_counts(row)
        check_records(row)
        assert row["rate_limited"] == 0, row["system"]

    table = capsys.readouterr().out
    for system in SYSTEMS:
        assert f"| {system} |" in table


def test_peer_counts_with_rate_limit(tmp_path):
    # 20 calls a second, fewer than the run makes, so the peer's tasks most
    # likely meet 429s and retry them; the checks hold either way.
    results = small_run(tmp_path, "--per-minute", "20", "--systems", "peer")

    [row] = results["systems"]
    check_counts(row)
    assert row["max_admitted_in_a_window"] <= 20
    if row["tasks"]["failed"] == 0:
        check_records(row)


@pytest.mark.parametrize("retries", [0, 1, 5, 9, 10, 20])
def test_backoff_delay_range(retries):
    random.seed(retries)
    delays = {backoff_delay(retries) for _ in range(2000)}
    ceiling = min(BACKOFF_MAX, 2**retries)
    assert min(delays) >= 0
    assert max(delays) <= ceiling
    assert all(isinstance(delay, int) for delay in delays)
    if ceiling <= 8:
        assert delays == set(range(ceiling + 1))


def test_count_by_window_and_summary():
    requests = [
        ApiRequest(100.2, 200),
        ApiRequest(100.9, 429),
        ApiRequest(101.5, 201),
        ApiRequest(101.6, 429),
        ApiRequest(103.1, 200),
    ]
    windows = count_by_window(requests, 1.0)

    assert [w["start"] for w in windows] == [100.0, 101.0, 102.0, 103.0]
    assert [w["requests"] for w in windows] == [2, 2, 0, 1]
    assert [w["rate_limited"] for w in windows] == [1, 1, 0, 0]
    assert [w["admitted"] for w in windows] == [1, 1, 0, 1]

    summary = summarize_windows(windows, limit=2)
    assert summary["full_windows"] == 2
    assert summary["mean_utilisation"] == 0.25
    assert summary["min_utilisation"] == 0.0
    assert summary["rate_limited_first_window"] == 1
    assert summary["rate_limited_after_first_window"] == 1
    assert summary["max_admitted_in_a_window"] == 1


def test_count_by_window_empty():
    assert count_by_window([], 60.0) == []
    summary = summarize_windows([], limit=1200)
    assert summary["full_windows"] == 0
    assert summary["mean_utilisation"] is None
    assert summary["rate_limited_after_first_window"] == 0
