"""The two systems of the Zoho sync benchmark: how each consumer is started,
and how the benchmark reads its tasks' outcomes.

- tshjobs: `tshjobs consumer` with the product's Zoho client and its shared
  rate limiter; outcomes from the audit log.
- peer: stock Huey's `huey_consumer` running bench.zoho_peer_tasks, a plain
  HTTP client with no shared limiter; outcomes from a Redis hash.
"""

from __future__ import annotations

import json
import os
import secrets
import sys
from dataclasses import dataclass
from pathlib import Path

import redis

from bench.zoho_peer import ATTEMPTS_KEY, OUTCOMES_KEY
from tests.faults.zoho import zoho_env
from tshjobs.audit import FINAL_STATES, AuditLog
from tshjobs.settings import load_settings
from tshjobs.zoho.sandbox import SandboxServer

REPO_ROOT = Path(__file__).resolve().parents[1]

# Variables that would configure a consumer behind the benchmark's back.
FOREIGN_ENV_PREFIXES = ("TSHJOBS_", "CELERY_", "RQ_", "ZOHO_PEER_")

DESCRIPTIONS = {
    "tshjobs": "tshjobs consumer, process workers, shared Zoho rate limiter",
    "peer": "stock Huey consumer, process workers, plain requests client, "
    "429 retried after exponential backoff with full jitter",
}


@dataclass
class Outcomes:
    """Tasks by outcome, the attempts they took, and when the last one
    finished (Unix time, or None before any did)."""

    succeeded: int
    failed: int
    not_final: int
    attempts: int
    last_finished_at: float | None


def clean_environment() -> dict[str, str]:
    """Return this process's environment without FOREIGN_ENV_PREFIXES
    variables, with the repository on PYTHONPATH."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(FOREIGN_ENV_PREFIXES)
    }
    env["PYTHONPATH"] = str(REPO_ROOT)
    return env


class TshjobsSystem:
    name = "tshjobs"

    def __init__(self, work_dir: Path, redis_url: str, erp_url: str,
                 sandbox: SandboxServer, workers: int, per_minute: int,
                 daily_limit: int):  # fmt: skip
        zoho = zoho_env(sandbox)
        # Keep the product's defaults for the timeout and the retry delays,
        # not the short ones of the fault tests.
        del zoho["TSHJOBS_ZOHO_TIMEOUT"], zoho["TSHJOBS_ZOHO_RETRY_DELAYS"]
        self.env = {
            **clean_environment(),
            "TSHJOBS_ENV_FILE": "",
            "TSHJOBS_DATA_DIR": str(work_dir / "data"),
            "TSHJOBS_SECRET_KEY": secrets.token_hex(32),
            "TSHJOBS_REDIS_URL": redis_url,
            "TSHJOBS_ERP_DATABASE_URL": erp_url,
            "TSHJOBS_TASK_MODULES": "tasks",
            "TSHJOBS_WORKERS": str(workers),
            "TSHJOBS_WORKER_TYPE": "process",
            **zoho,
            "TSHJOBS_ZOHO_REQUESTS_PER_MINUTE": str(per_minute),
            "TSHJOBS_ZOHO_DAILY_LIMIT": str(daily_limit),
        }
        self.audit_path = load_settings(self.env).audit_path
        self._audit: AuditLog | None = None
        # --no-periodic: the hourly sync_all_pending would add tasks of its
        # own if the run crossed the top of an hour.
        self.command = [sys.executable, "-m", "tshjobs.cli", "consumer",
                        "--no-periodic"]  # fmt: skip

    def outcomes(self, task_count: int) -> Outcomes:
        if self._audit is None:
            self._audit = AuditLog(self.audit_path)
        audit = self._audit
        counts = audit.counts_by_state()
        row = next(iter(audit.db.query(
            "SELECT coalesce(sum(attempts), 0) AS attempts,"
            " max(finished_at) AS last FROM tasks"
        )))  # fmt: skip
        final = sum(counts[state] for state in FINAL_STATES)
        return Outcomes(
            succeeded=counts["succeeded"],
            failed=final - counts["succeeded"],
            not_final=task_count - final,
            attempts=row["attempts"],
            last_finished_at=row["last"],
        )


class PeerSystem:
    name = "peer"

    def __init__(self, redis_url: str, erp_url: str, sandbox: SandboxServer,
                 workers: int, retries: int):  # fmt: skip
        zoho = zoho_env(sandbox)
        config = {
            "redis_url": redis_url,
            "erp_url": erp_url,
            "accounts_url": sandbox.url,
            "organization_id": zoho["TSHJOBS_ZOHO_ORGANIZATION_ID"],
            "client_id": zoho["TSHJOBS_ZOHO_CLIENT_ID"],
            "client_secret": zoho["TSHJOBS_ZOHO_CLIENT_SECRET"],
            "refresh_token": zoho["TSHJOBS_ZOHO_REFRESH_TOKEN"],
            "retries": retries,
        }
        self.redis_url = redis_url
        self.env = {**clean_environment(), "ZOHO_PEER_CONFIG": json.dumps(config)}
        consumer = Path(sys.executable).parent / "huey_consumer"
        self.command = [str(consumer), "bench.zoho_peer_tasks.huey",
                        "--workers", str(workers), "--worker-type", "process"]  # fmt: skip

    def outcomes(self, task_count: int) -> Outcomes:
        connection = redis.Redis.from_url(self.redis_url)
        try:
            stored = connection.hgetall(OUTCOMES_KEY)
            attempts = int(connection.get(ATTEMPTS_KEY) or 0)
        finally:
            connection.close()
        outcomes = [json.loads(value) for value in stored.values()]
        succeeded = sum(1 for o in outcomes if o["state"] == "succeeded")
        return Outcomes(
            succeeded=succeeded,
            failed=len(outcomes) - succeeded,
            not_final=task_count - len(outcomes),
            attempts=attempts,
            last_finished_at=max((o["finished_at"] for o in outcomes), default=None),
        )
