"""Sync ERP customers and orders to the local Zoho Books sandbox, with tshjobs
and with a peer baseline, and measure how each uses the rate limit.

Run from the repository root:

    .venv/bin/python -m bench.zoho_sync [--customers 2000] [--orders 2000]

One run seeds a fresh PostgreSQL ERP per system, starts a private
redis-server and the sandbox (in this process), and runs each system in
turn: a consumer with --workers process workers, and one sync task per
customer and then one per order, enqueued by `bench.zoho_enqueue`, until
every task is final.
The sandbox is reset between the systems. The results are printed as
Markdown tables and written as JSON, by default to
bench/results/zoho-sync.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Self

import psycopg
import redis

from bench.zoho_describe import describe_machine, describe_source
from bench.zoho_measure import (
    RequestLog,
    RssSampler,
    count_by_window,
    descendants,
    summarize_windows,
)
from bench.zoho_report import format_tables
from bench.zoho_systems import DESCRIPTIONS, REPO_ROOT, PeerSystem, TshjobsSystem
from tests.faults.zoho import count_records, dependencies, mappings_not_written_back
from tests.services import RedisServer, create_pg_database, drop_pg_database
from tshjobs.erp.seed import seed
from tshjobs.zoho.sandbox import SandboxConfig, SandboxServer

DEFAULT_OUTPUT = REPO_ROOT / "bench" / "results" / "zoho-sync.json"
SYSTEMS = tuple(DESCRIPTIONS)
# Orders are dated over the year that ends here, so every run seeds the same
# rows.
SEED_END_DATE = datetime.date(2025, 6, 30)
SEED_DAYS = 365
# Seconds a consumer has to stop after SIGINT before it is killed.
STOP_TIMEOUT = 60
PROGRESS_INTERVAL = 30


class Services:
    """The private redis-server and the sandbox that both systems share, and
    the log of the sandbox's Books API requests."""

    def __init__(self, work_dir: Path, args: argparse.Namespace):
        self.work_dir = work_dir
        self.redis_server = RedisServer(work_dir / "redis")
        config = SandboxConfig(
            requests_per_minute=args.per_minute,
            window_seconds=args.window_seconds,
            daily_limit=args.daily_limit,
        )
        self.sandbox = SandboxServer(config, host="127.0.0.1")
        self.request_log = RequestLog()

    def __enter__(self) -> Self:
        self.redis_server.start()
        self.request_log.attach()
        self.sandbox.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.sandbox.stop()
        self.request_log.detach()
        self.redis_server.stop()

    def reset(self) -> None:
        """Empty Redis and the sandbox, and forget the logged requests."""
        client = self.redis_server.client()
        client.flushall()
        client.close()
        self.sandbox.reset()
        self.request_log.take()


def seed_erp(args: argparse.Namespace) -> tuple[str, dict[str, list[int]]]:
    """Create and seed a PostgreSQL ERP; return its URL and the ids of its
    customers and orders."""
    url = create_pg_database()
    seed(url, customers=args.customers, orders=args.orders,
         products=args.products, days=SEED_DAYS, end_date=SEED_END_DATE)  # fmt: skip
    with psycopg.connect(url) as conn:
        customers = conn.execute("SELECT id FROM customers ORDER BY id").fetchall()
        orders = conn.execute("SELECT id FROM orders ORDER BY id").fetchall()
    return url, {"customer": [row[0] for row in customers],
                 "order": [row[0] for row in orders]}  # fmt: skip


def start_consumer(command: list[str], env: dict, log_path: Path) -> subprocess.Popen:
    with open(log_path, "ab") as log_file:
        return subprocess.Popen(
            command, cwd=REPO_ROOT, env=env, stdout=log_file, stderr=subprocess.STDOUT
        )


def stop_consumer(process: subprocess.Popen) -> None:
    """Stop a consumer with SIGINT, as its systemd unit does; kill it and its
    children if it has not stopped after STOP_TIMEOUT seconds."""
    if process.poll() is not None:
        return
    children = descendants(process.pid)
    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        print(f"consumer {process.pid} did not stop; killing it", file=sys.stderr)
        for pid in [process.pid, *children]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        process.wait()


def enqueue(system_name: str, env: dict, ids: dict, work_dir: Path) -> dict:
    """Run bench.zoho_enqueue for the system; return its output."""
    ids_path = work_dir / "ids.json"
    output_path = work_dir / "enqueued.json"
    ids_path.write_text(json.dumps(ids))
    command = [sys.executable, "-m", "bench.zoho_enqueue", system_name,
               str(ids_path), str(output_path)]  # fmt: skip
    subprocess.run(command, cwd=REPO_ROOT, env=env, check=True)
    return json.loads(output_path.read_text())


def wait_until_final(system, task_count, process, timeout):
    """Poll the system's outcomes every second until every task is final or
    `timeout` seconds have passed; return the last outcomes."""
    started = time.monotonic()
    next_report = started + PROGRESS_INTERVAL
    while True:
        outcomes = system.outcomes(task_count)
        now = time.monotonic()
        if outcomes.not_final <= 0 or now - started > timeout:
            return outcomes
        if process.poll() is not None:
            raise RuntimeError(
                f"{system.name}: the consumer exited with code {process.returncode}"
                " before every task was final; see its log above"
            )
        if now >= next_report:
            print(f"  {system.name}: {outcomes}", file=sys.stderr, flush=True)
            next_report += PROGRESS_INTERVAL
        time.sleep(1)


def make_system(name: str, work_dir: Path, services: Services, erp_url: str, args):
    redis_url = services.redis_server.url
    if name == "tshjobs":
        return TshjobsSystem(work_dir, redis_url, erp_url, services.sandbox,
                             args.workers, args.per_minute, args.daily_limit)  # fmt: skip
    return PeerSystem(redis_url, erp_url, services.sandbox, args.workers,
                      args.peer_retries)  # fmt: skip


def run_consumer(system, ids: dict, work_dir: Path, args) -> dict:
    """Start the system's consumer, enqueue the tasks, wait until they are
    final and stop it; return the task figures and the peak memory."""
    log_path = work_dir / "consumer.log"
    process = start_consumer(system.command, system.env, log_path)
    with ExitStack() as stack:
        stack.callback(stop_consumer, process)
        sampler = RssSampler(process.pid).start()
        stack.callback(sampler.stop)
        try:
            enqueued = enqueue(system.name, system.env, ids, work_dir)
            task_count = len(enqueued["task_ids"])
            outcomes = wait_until_final(system, task_count, process, args.timeout)
        except Exception:
            sys.stderr.write(log_path.read_text(errors="replace")[-4000:])
            raise
    return {
        "enqueued": enqueued,
        "outcomes": outcomes,
        "peak_rss_kib": sampler.peak_kib,
        "processes": sampler.max_processes,
        "rss_samples": sampler.samples,
    }


def measure_records(sandbox: SandboxServer, erp_url: str, ids: dict) -> dict:
    """Compare the sandbox's records with the cf_erp_id every synced entity
    needs: the customers, the orders, and the products of those orders."""
    entities = {"customer": ids["customer"], "order": ids["order"],
                "product": [], "invoice": [], "payment": []}  # fmt: skip
    expected = dependencies(erp_url, entities)
    counts = count_records(sandbox)
    return {
        "expected": len(expected),
        "records": sum(counts.values()),
        "distinct_erp_ids": len(counts),
        "erp_ids_with_duplicates": sum(1 for n in counts.values() if n > 1),
        "duplicate_records": sum(n - 1 for n in counts.values() if n > 1),
        "missing": len(expected - set(counts)),
        "unexpected": len(set(counts) - expected),
        "not_written_back": len(mappings_not_written_back(erp_url, sandbox)),
    }


def summarize_run(name, consumer, services, erp_url, ids, args) -> dict:
    """Return one system's results: tasks, calls by window, records, memory."""
    enqueued, outcomes = consumer["enqueued"], consumer["outcomes"]
    stats = services.sandbox.stats()
    requests = services.request_log.take()
    windows = count_by_window(requests, args.window_seconds)
    last = outcomes.last_finished_at
    return {
        "system": name,
        "description": DESCRIPTIONS[name],
        "complete": outcomes.not_final <= 0,
        "enqueue_started_at": enqueued["started_at"],
        "first_call_at": requests[0].at if requests else None,
        "last_finished_at": last,
        "enqueue_seconds": round(enqueued["finished_at"] - enqueued["started_at"], 3),
        "wall_seconds": round(last - enqueued["started_at"], 1) if last else None,
        "tasks": {
            "enqueued": len(enqueued["task_ids"]),
            "succeeded": outcomes.succeeded,
            "failed": outcomes.failed,
            "not_final": outcomes.not_final,
            "attempts": outcomes.attempts,
        },
        "calls": stats["requests"],
        "logged_calls": len(requests),
        "by_status": {str(k): v for k, v in sorted(stats["by_status"].items())},
        "rate_limited": stats["rate_limited"],
        "token_requests": stats["token_requests"],
        **summarize_windows(windows, args.per_minute),
        "windows": windows,
        "sandbox_admitted_per_window": [
            *stats["requests_per_window"],
            stats["requests_in_window"],
        ],
        "records": measure_records(services.sandbox, erp_url, ids),
        "peak_rss_kib": consumer["peak_rss_kib"],
        "processes": consumer["processes"],
        "rss_samples": consumer["rss_samples"],
    }


def run_system(name: str, services: Services, args, temp_dir: Path) -> dict:
    print(f"Running {name} ...", file=sys.stderr, flush=True)
    work_dir = temp_dir / name
    work_dir.mkdir()
    services.reset()
    erp_url, ids = seed_erp(args)
    try:
        system = make_system(name, work_dir, services, erp_url, args)
        consumer = run_consumer(system, ids, work_dir, args)
        return summarize_run(name, consumer, services, erp_url, ids, args)
    finally:
        drop_pg_database(erp_url)


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.zoho_sync", description=__doc__.split("\n\n")[0]
    )
    add = parser.add_argument
    add(
        "--customers",
        type=positive_int,
        default=2000,
        help="Customers to seed and sync (default 2000).",
    )
    add(
        "--orders",
        type=positive_int,
        default=2000,
        help="Orders to seed and sync (default 2000).",
    )
    add(
        "--products",
        type=positive_int,
        default=200,
        help="Products to seed; orders sync the ones they contain (default 200).",
    )
    add(
        "--workers",
        type=positive_int,
        default=4,
        help="Worker processes of each consumer (default 4).",
    )
    add(
        "--per-minute",
        type=positive_int,
        default=1200,
        help="Calls the sandbox admits per window, and the value of"
        " TSHJOBS_ZOHO_REQUESTS_PER_MINUTE (default 1200).",
    )
    add(
        "--window-seconds",
        type=float,
        default=60.0,
        help="Length of the sandbox's fixed windows in seconds (default 60)."
        " The tshjobs limiter always counts 60 s windows.",
    )
    add(
        "--daily-limit",
        type=positive_int,
        default=1_000_000,
        help="Daily call limit of the sandbox and of tshjobs (default 1000000).",
    )
    add(
        "--peer-retries",
        type=int,
        default=10,
        help="Retries of a peer task, as Celery's max_retries (default 10).",
    )
    add(
        "--timeout",
        type=float,
        default=3600,
        help="Seconds to wait for a system's tasks before recording the run as"
        " incomplete (default 3600).",
    )
    add(
        "--systems",
        default=",".join(SYSTEMS),
        help="Comma-separated systems to run, of: " + ", ".join(SYSTEMS) + ".",
    )
    add("--output", type=Path, default=DEFAULT_OUTPUT,
        help="JSON file to write the results to.")  # fmt: skip
    return parser


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.systems = [name.strip() for name in args.systems.split(",") if name.strip()]
    unknown = [name for name in args.systems if name not in SYSTEMS]
    if unknown or not args.systems:
        parser.error(f"--systems: unknown or empty {unknown}; known: {list(SYSTEMS)}")
    if args.window_seconds <= 0:
        parser.error("--window-seconds must be more than 0")
    return args


def command_line(argv: list[str] | None) -> str:
    python = Path(sys.executable)
    if python.is_relative_to(REPO_ROOT):
        python = python.relative_to(REPO_ROOT)
    arguments = sys.argv[1:] if argv is None else argv
    return shlex.join([str(python), "-m", "bench.zoho_sync", *arguments])


def settings_of(args: argparse.Namespace) -> dict:
    names = ("customers", "orders", "products", "workers", "per_minute",
             "window_seconds", "daily_limit", "peer_retries")  # fmt: skip
    return {name: getattr(args, name) for name in names}


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    started_at = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    load_before = os.getloadavg()
    # Read before the run: the consumers import the tree as it is now.
    source = describe_source()
    with tempfile.TemporaryDirectory(prefix="tshjobs-zoho-bench-") as temp_name:
        temp_dir = Path(temp_name)
        with Services(temp_dir, args) as services:
            client = redis.Redis.from_url(services.redis_server.url)
            machine = describe_machine(client)
            client.close()
            systems = [run_system(name, services, args, temp_dir)
                       for name in args.systems]  # fmt: skip

    results = {
        "benchmark": "zoho-sync",
        "command": command_line(argv),
        "started_at": started_at,
        "settings": settings_of(args),
        "load_average_before": [round(value, 2) for value in load_before],
        "load_average_after": [round(value, 2) for value in os.getloadavg()],
        "source": source,
        "machine": machine,
        "systems": systems,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    print(format_tables(results))
    print(f"\nResults written to {args.output}")
    return results


if __name__ == "__main__":
    main()
