"""Measure the latency of one enqueue call in tshjobs, stock Huey, Celery and RQ.

Run from the repository root:

    .venv/bin/python -m bench.enqueue_latency [--calls 10000] [--redis-port PORT]

Every system enqueues one int argument, as the ERP does with an order id, on
the same Redis. Each system runs in a child process of its own
(`bench.producers`), so imports and memory are measured apart. Redis is
flushed before each system. The results are printed as a Markdown table and
written as JSON, by default to bench/results/enqueue-latency.json.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import math
import os
import platform
import secrets
import shlex
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

import redis

from bench.producers import REDIS_HOST
from tests.services import RedisServer

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUTPUT = REPO_ROOT / "bench" / "results" / "enqueue-latency.json"

# Systems in the order they run and appear in the table, with the meaning of
# each row.
SYSTEMS = {
    "tshjobs": "tshjobs task call, audit row written on enqueue (as shipped)",
    "tshjobs-no-audit": "tshjobs task call, audit signal handler disconnected",
    "huey": "RedisHuey, pickle serializer, results=False",
    "huey-results": "RedisHuey, pickle serializer, results=True (default)",
    "celery": "Celery task.delay, Redis broker, no result backend",
    "celery-results": "Celery task.delay, Redis broker and Redis result backend",
    "rq": "RQ Queue.enqueue(func, order_id)",
}

PACKAGES = ("huey", "redis", "celery", "kombu", "rq", "sqlite-utils")

# Environment variables that would configure a child behind the benchmark's
# back: Celery reads CELERY_BROKER_URL and CELERY_RESULT_BACKEND in preference
# to the URLs it is given, and tshjobs reads TSHJOBS_*.
FOREIGN_ENV_PREFIXES = ("TSHJOBS_", "CELERY_", "RQ_")

# Where redis-server and the children run. On the 2-vCPU virtual machine of
# docs/benchmarks.md, a Redis round trip took about 40 µs with both processes
# on one CPU and about 125 µs across CPUs. Unpinned runs switched between the
# two from one system to the next, so the default pins the processes.
PLACEMENTS = {
    "split": "redis-server on the first allowed CPU, each child on the second",
    "same": "redis-server and each child on the first allowed CPU",
    "none": "no pinning: the kernel places the processes",
}

CHILD_TIMEOUT_SECONDS = 600
PERCENTILES = (50, 90, 99)


def percentile(sorted_values: list[int], percent: float) -> int:
    """Return the nearest-rank percentile of values sorted in ascending order."""
    if not sorted_values:
        raise ValueError("percentile of an empty list")
    rank = math.ceil(percent / 100 * len(sorted_values))
    return sorted_values[max(rank, 1) - 1]


def summarize(child: dict) -> dict:
    """Reduce one child's per-call timings to the statistics of the table."""
    timings = sorted(child["timings_ns"])
    summary = {"system": child["system"], "description": SYSTEMS[child["system"]]}
    for percent in PERCENTILES:
        summary[f"p{percent}_ns"] = percentile(timings, percent)
    summary["max_ns"] = timings[-1]
    summary["mean_ns"] = round(sum(timings) / len(timings))
    summary["calls_per_second"] = round(len(timings) / (child["wall_ns"] / 1e9))
    summary["first_call_ns"] = child["first_call_ns"]
    summary["timer_overhead_ns"] = child["timer_overhead_ns"]
    summary["rss_start_kib"] = child["rss_start_kib"]
    summary["peak_rss_kib"] = child["peak_rss_kib"]
    summary["peak_rss_growth_kib"] = child["peak_rss_kib"] - child["rss_start_kib"]
    summary["rss_growth_during_calls_kib"] = (
        child["peak_rss_kib"] - child["peak_rss_before_calls_kib"]
    )
    summary["queued"] = child["queued"]
    summary["redis_connections"] = child["connections"]
    for key in ("audit_rows", "serializers"):
        if key in child:
            summary[key] = child[key]
    return summary


def child_environment(work_dir: Path, port: int) -> dict[str, str]:
    """Return a child's environment: this process's environment without the
    FOREIGN_ENV_PREFIXES variables, plus tshjobs settings that keep the data
    files in `work_dir`."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(FOREIGN_ENV_PREFIXES)
    }
    data_dir = work_dir / "data"
    data_dir.mkdir(parents=True)
    env.update(
        TSHJOBS_ENV_FILE="",
        TSHJOBS_DATA_DIR=str(data_dir),
        TSHJOBS_SECRET_KEY=secrets.token_hex(32),
        TSHJOBS_ERP_DATABASE_URL=f"sqlite:///{work_dir / 'erp.db'}",
        TSHJOBS_REDIS_URL=f"redis://{REDIS_HOST}:{port}/0",
    )
    return env


def choose_cpus(placement: str) -> tuple[int | None, int | None]:
    """Return the CPU numbers of redis-server and of the children, or None
    for a process left unpinned."""
    cpus = sorted(os.sched_getaffinity(0))
    if placement == "none":
        return None, None
    if placement == "same":
        return cpus[0], cpus[0]
    if len(cpus) < 2:
        raise SystemExit(
            f"--placement split needs two CPUs, but this process may use only"
            f" {cpus}: pass --placement same or --placement none"
        )
    return cpus[0], cpus[1]


def pin_process(pid: int, cpu: int) -> None:
    """Pin every thread of process `pid` to `cpu`."""
    for thread in Path(f"/proc/{pid}/task").iterdir():
        os.sched_setaffinity(int(thread.name), {cpu})


def run_child(
    system: str,
    port: int,
    args: argparse.Namespace,
    cpu: int | None,
    work_dir: Path,
) -> dict:
    """Run `bench.producers` for one system and return its JSON output."""
    output = work_dir / "result.json"
    command = [
        sys.executable, "-m", "bench.producers", system,
        "--redis-port", str(port),
        "--calls", str(args.calls),
        "--warmup", str(args.warmup),
        "--output", str(output),
    ]  # fmt: skip
    if cpu is not None:
        command += ["--cpu", str(cpu)]
    completed = subprocess.run(
        command,
        check=False,
        cwd=REPO_ROOT,
        env=child_environment(work_dir, port),
        timeout=CHILD_TIMEOUT_SECONDS,
    )
    if completed.returncode != 0:
        raise RuntimeError(
            f"{system}: benchmark child failed with exit code"
            f" {completed.returncode}; its error is printed above"
        )
    return json.loads(output.read_text())


def read_cpu_model() -> str:
    with open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    return platform.processor() or "unknown"


def read_memory_total_gib() -> float:
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024**2, 1)
    raise RuntimeError("MemTotal not found in /proc/meminfo")


def describe_machine(client: redis.Redis) -> dict:
    versions = {}
    for package in PACKAGES:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_model": read_cpu_model(),
        "memory_gib": read_memory_total_gib(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "redis_server": client.info("server")["redis_version"],
        "sqlite": sqlite3.sqlite_version,
        "packages": versions,
    }


def describe_source() -> dict:
    """Return the git commit of the tree under test and the files of tshjobs/
    with uncommitted changes, or None values when git is unavailable."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        changes = subprocess.run(
            ["git", "status", "--porcelain", "--", "tshjobs"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return {"git_commit": None, "tshjobs_uncommitted_files": None}
    # Each porcelain line is a two-letter status, a space and the path.
    changed_files = sorted(line[3:] for line in changes.splitlines())
    return {"git_commit": commit, "tshjobs_uncommitted_files": changed_files}


def check_redis_is_empty(client: redis.Redis, port: int) -> None:
    """Raise SystemExit if the Redis at `port` has keys, because the benchmark
    runs FLUSHALL on it."""
    keyspace = client.info("keyspace")
    if keyspace:
        databases = ", ".join(
            f"{db} ({info['keys']} keys)" for db, info in keyspace.items()
        )
        raise SystemExit(
            f"Redis on {REDIS_HOST}:{port} is not empty: {databases}. The benchmark"
            " runs FLUSHALL between systems; pass --allow-flush to accept that,"
            " or omit --redis-port to start a private redis-server."
        )


def format_table(summaries: list[dict]) -> str:
    """Return the results as a Markdown table, times in microseconds."""
    header = (
        "| System | p50 µs | p90 µs | p99 µs | max µs | mean µs | calls/s"
        " | peak RSS growth MiB | RSS growth in timed calls MiB |"
    )
    lines = [header, "|" + "---|" * 9]
    for row in summaries:
        cells = [row["system"]]
        for key in ("p50_ns", "p90_ns", "p99_ns", "max_ns", "mean_ns"):
            cells.append(f"{row[key] / 1000:.1f}")
        cells.append(f"{row['calls_per_second']:,}")
        cells.append(f"{row['peak_rss_growth_kib'] / 1024:.1f}")
        cells.append(f"{row['rss_growth_during_calls_kib'] / 1024:.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_notes(summaries: list[dict]) -> str:
    """Return the figures that do not fit the table: first calls and serializers."""
    lines = ["", "First call (connect and set up), ms:"]
    for row in summaries:
        lines.append(f"  {row['system']}: {row['first_call_ns'] / 1e6:.1f}")
    for row in summaries:
        if "serializers" in row:
            measured = row["serializers"]
            lines.append(
                "Serializing one tshjobs task message: signed"
                f" {measured['signed_serialize_ns'] / 1000:.1f} µs"
                f" ({measured['signed_message_bytes']} bytes), plain pickle"
                f" {measured['pickle_serialize_ns'] / 1000:.1f} µs"
                f" ({measured['pickle_message_bytes']} bytes)"
            )
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.enqueue_latency",
        description=__doc__.split("\n\n")[0],
    )
    parser.add_argument(
        "--calls", type=int, default=10_000, help="Timed enqueue calls per system."
    )
    parser.add_argument(
        "--warmup",
        type=int,
        default=500,
        help="Untimed enqueue calls per system before the timed ones.",
    )
    parser.add_argument(
        "--redis-port",
        type=int,
        help=(
            "Use the Redis already listening on this port of 127.0.0.1. It is"
            " flushed (FLUSHALL) between systems. Default: start a private"
            " redis-server on a free port, with persistence off."
        ),
    )
    parser.add_argument(
        "--allow-flush",
        action="store_true",
        help="Run even if the Redis given by --redis-port contains keys.",
    )
    parser.add_argument(
        "--placement",
        choices=list(PLACEMENTS),
        default="split",
        help=(
            "CPU pinning: "
            + "; ".join(f"{k}: {v}" for k, v in PLACEMENTS.items())
            + ". A Redis given by --redis-port is never pinned."
        ),
    )
    parser.add_argument(
        "--systems",
        default=",".join(SYSTEMS),
        help="Comma-separated systems to run, of: " + ", ".join(SYSTEMS) + ".",
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=DEFAULT_OUTPUT,
        help="JSON file to write the results to.",
    )
    args = parser.parse_args(argv)
    if args.calls < 1 or args.warmup < 1:
        parser.error("--calls and --warmup must be at least 1")

    args.systems = [name.strip() for name in args.systems.split(",") if name.strip()]
    unknown = [name for name in args.systems if name not in SYSTEMS]
    if unknown or not args.systems:
        parser.error(f"--systems: unknown or empty {unknown}; known: {list(SYSTEMS)}")
    return args


def run_all(
    args: argparse.Namespace, port: int, cpu: int | None, temp_dir: Path
) -> list[dict]:
    client = redis.Redis(host=REDIS_HOST, port=port)
    summaries = []
    for system in args.systems:
        client.flushall()
        print(f"Running {system} ...", file=sys.stderr, flush=True)
        work_dir = temp_dir / system
        child = run_child(system, port, args, cpu, work_dir)
        summaries.append(summarize(child))
    client.flushall()
    client.close()
    return summaries


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    python = Path(sys.executable)
    if python.is_relative_to(REPO_ROOT):
        python = python.relative_to(REPO_ROOT)
    arguments = sys.argv[1:] if argv is None else argv
    command = shlex.join([str(python), "-m", "bench.enqueue_latency", *arguments])
    started_at = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    load_before = os.getloadavg()
    redis_cpu, producer_cpu = choose_cpus(args.placement)

    with tempfile.TemporaryDirectory(prefix="tshjobs-bench-") as temp_name:
        temp_dir = Path(temp_name)
        server = None
        if args.redis_port is None:
            server = RedisServer(temp_dir / "redis")
            server.start()
            port = server.port
        else:
            port = args.redis_port
            redis_cpu = None
        try:
            if server is not None and redis_cpu is not None:
                pin_process(server.process.pid, redis_cpu)
            client = redis.Redis(host=REDIS_HOST, port=port)
            if server is None and not args.allow_flush:
                check_redis_is_empty(client, port)
            machine = describe_machine(client)
            client.close()
            summaries = run_all(args, port, producer_cpu, temp_dir)
        finally:
            if server is not None:
                server.stop()

    results = {
        "benchmark": "enqueue-latency",
        "command": command,
        "started_at": started_at,
        "calls": args.calls,
        "warmup": args.warmup,
        "placement": {
            "name": args.placement,
            "redis_cpu": redis_cpu,
            "producer_cpu": producer_cpu,
        },
        "load_average_before": [round(value, 2) for value in load_before],
        "load_average_after": [round(value, 2) for value in os.getloadavg()],
        "source": describe_source(),
        "machine": machine,
        "systems": summaries,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")

    print(format_table(summaries))
    print(format_notes(summaries))
    print(f"\nResults written to {args.output}")


if __name__ == "__main__":
    main()
