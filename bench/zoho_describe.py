"""The machine, software versions and source tree of a Zoho sync benchmark run."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import sqlite3
import subprocess

import psycopg
import redis

from bench.enqueue_latency import read_cpu_model, read_memory_total_gib
from bench.zoho_systems import REPO_ROOT
from tests.services import PG_ADMIN_URL

PACKAGES = ("huey", "redis", "requests", "psycopg", "flask", "werkzeug")

# Directories whose uncommitted changes the results record: the product and
# the benchmark.
SOURCE_DIRECTORIES = ("tshjobs", "tasks", "bench")


def describe_machine(client: redis.Redis) -> dict:
    versions = {}
    for package in PACKAGES:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    with psycopg.connect(PG_ADMIN_URL) as conn:
        postgresql = conn.execute("SHOW server_version").fetchone()[0]
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_model": read_cpu_model(),
        "memory_gib": read_memory_total_gib(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "redis_server": client.info("server")["redis_version"],
        "postgresql": postgresql,
        "sqlite": sqlite3.sqlite_version,
        "packages": versions,
    }


def describe_source() -> dict:
    """Return the git commit and the files with uncommitted changes under
    SOURCE_DIRECTORIES, or None values when git is unavailable."""
    try:
        commit = _git("rev-parse", "HEAD").strip()
        changes = _git("status", "--porcelain", "--", *SOURCE_DIRECTORIES)
    except (OSError, subprocess.CalledProcessError):
        return {"git_commit": None, "uncommitted_files": None}
    # Each porcelain line is a two-letter status, a space and the path.
    changed_files = sorted(line[3:] for line in changes.splitlines())
    return {"git_commit": commit, "uncommitted_files": changed_files}


def _git(*arguments: str) -> str:
    completed = subprocess.run(
        ["git", *arguments], cwd=REPO_ROOT, capture_output=True, text=True,
        check=True,
    )  # fmt: skip
    return completed.stdout
