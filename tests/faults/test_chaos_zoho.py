"""Zoho Books sync under chaos: about 300 ERP entities synced to the local
Zoho sandbox while consumers are killed and Zoho misbehaves.

The workload (tests/faults/zoho.py) enqueues one sync task per customer,
product, order, invoice and payment of a seeded ERP, shuffled, 25 every
1.5 s. Meanwhile a
chaos thread kills whole consumers every 0.5 to 1.5 s, and the sandbox
returns 429 to every call for 2 s, then fails 20 calls with 500, hangs 3
calls past the client's timeout, and commits 3 writes before hanging.

What is checked: every entity has exactly one Zoho record, found by its
cf_erp_id. Every record's id is written back to the ERP, and every task ends
succeeded.
"""

from __future__ import annotations

import pytest

from tests.faults.harness import DEQUEUED, FINISHED, ChaosPlan, ChaosRun
from tests.faults.zoho import mappings_not_written_back, zoho_env, zoho_workload
from tests.services import create_pg_database, drop_pg_database
from tshjobs.zoho.sandbox import SandboxConfig, SandboxServer

CUSTOMERS = 100


def zoho_faults(sandbox: SandboxServer):
    def storm(run: ChaosRun) -> None:
        sandbox.storm_429(2.0)

    def errors(run: ChaosRun) -> None:
        sandbox.inject("500", count=20)

    def hangs(run: ChaosRun) -> None:
        sandbox.inject("timeout", count=3)
        sandbox.inject("commit_then_timeout", count=3, method="PUT")

    return ((3.0, storm), (8.0, errors), (12.0, hangs))


@pytest.fixture(scope="module")
def zoho_report(tmp_path_factory):
    erp_url = create_pg_database()
    config = SandboxConfig(
        requests_per_minute=6000, daily_limit=100_000, fault_timeout_seconds=5.0
    )
    try:
        with SandboxServer(config) as sandbox:
            plan = ChaosPlan(
                seed=5005,
                consumers=3,
                workers=2,
                worker_type="thread",
                kill_pause=(0.5, 1.5),
                kill_for=60,
                hunt_share=0.3,
                hunt_phases=(DEQUEUED, FINISHED),
                events=zoho_faults(sandbox),
            )
            env = {
                "TSHJOBS_ERP_DATABASE_URL": erp_url,
                "TSHJOBS_ZOHO_REQUESTS_PER_MINUTE": "6000",
                **zoho_env(sandbox),
            }
            directory = tmp_path_factory.mktemp("chaos-zoho")
            with ChaosRun(directory, plan, "kill -9, Zoho faults", env) as run:
                workload = zoho_workload(run, erp_url, sandbox, CUSTOMERS)
                report = run.run(workload)
                yield report, mappings_not_written_back(erp_url, sandbox), sandbox
    finally:
        drop_pg_database(erp_url)


def test_zoho_chaos_reaches_kills_and_faults(zoho_report):
    report, _, sandbox = zoho_report

    stats = sandbox.stats()
    print(f"\nsandbox: {stats['requests']} requests, by status {stats['by_status']}")

    assert report.kills >= 8
    assert stats["rate_limited"] >= 1
    assert stats["by_status"].get(500, 0) >= 1
    assert report.expected_effects >= 300


def test_zoho_one_record_per_entity(zoho_report):
    report, _, _ = zoho_report

    assert report.lost == []
    assert report.duplicated == {}
    assert report.unexpected == []


def test_zoho_every_mapping_written_back(zoho_report):
    _, not_written_back, _ = zoho_report

    assert not_written_back == []


def test_zoho_every_task_succeeded(zoho_report):
    report, _, _ = zoho_report

    assert report.not_final == {}
    assert report.failed == {}
    assert report.unexpected_exits == []
