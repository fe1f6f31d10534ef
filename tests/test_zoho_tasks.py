"""The Zoho sync tasks end to end: a real consumer, Redis, a PostgreSQL ERP
and the local Zoho sandbox."""

from __future__ import annotations

import time

import pytest

from tests.consumers import ConsumerProcess, wait_for_state
from tests.faults.zoho import zoho_env
from tests.services import free_port
from tshjobs.erp.db import connect, init_schema
from tshjobs.erp.queries import ErpRepository
from tshjobs.erp.seed import seed_tiny
from tshjobs.mail.capture import CaptureServer
from tshjobs.queue import get_huey
from tshjobs.settings import load_settings
from tshjobs.zoho.sandbox import SandboxConfig, SandboxServer


@pytest.fixture
def sandbox():
    with SandboxServer(SandboxConfig(daily_limit=10_000)) as server:
        yield server


@pytest.fixture
def erp(pg_url):
    init_schema(pg_url)
    seed_tiny(pg_url)
    repository = ErpRepository(pg_url)
    yield repository
    repository.close()


@pytest.fixture
def smtp(tmp_path):
    server = CaptureServer(tmp_path / "mail", host="127.0.0.1", port=free_port())
    server.start()
    yield server
    server.stop()


@pytest.fixture
def env(settings_env, pg_url, redis_url, sandbox, smtp, monkeypatch):
    values = {
        **settings_env,
        **zoho_env(sandbox),
        "TSHJOBS_SMTP_PORT": str(smtp.port),
        "TSHJOBS_MANAGEMENT_EMAILS": "ops@tsh.example",
        "TSHJOBS_REDIS_URL": redis_url,
        "TSHJOBS_ERP_DATABASE_URL": pg_url,
        "TSHJOBS_ZOHO_RETRY_DELAYS": "0.5",
        # Two alerts enqueued at once: the second waits for the first's
        # claim (SendInProgress), then finds the email sent.
        "TSHJOBS_RETRY_DELAYS": "0.5,1,1",
        "TSHJOBS_RETRY_JITTER": "0",
        "TSHJOBS_WORKERS": "2",
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    get_huey(load_settings())
    return values


@pytest.fixture
def consumer(env, erp, tmp_path):
    process = ConsumerProcess(env, tmp_path / "consumer.log").start()
    yield process
    process.stop()


@pytest.fixture
def audit(env):
    return get_huey().audit


def wait_until(condition, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"condition not met within {timeout} s")


def test_sync_order_task_succeeds(consumer, audit, sandbox, erp):
    from tasks.zoho import sync_order

    task_id = sync_order(1).id

    row = wait_for_state(audit, task_id, ("succeeded", "failed"))
    assert row["state"] == "succeeded", row["error"]
    assert "SO-1 synced as Zoho" in row["result"]
    assert sandbox.count("salesorders") == 1
    assert erp.get_order(1).zoho_salesorder_id


def test_daily_cap_waits_without_failing(consumer, audit, sandbox, erp):
    from tasks.zoho import sync_customer

    sandbox.set_config(daily_limit=3)
    task_ids = [sync_customer(customer_id).id for customer_id in range(1, 6)]

    def settled():
        rows = [audit.get(task_id) for task_id in task_ids]
        states = [row["state"] if row else None for row in rows]
        waiting = states.count("retrying") + states.count("scheduled")
        if states.count("succeeded") + waiting == len(task_ids):
            return rows
        return None

    rows = wait_until(settled)

    waiting = [row for row in rows if row["state"] in ("retrying", "scheduled")]
    assert sandbox.count("contacts") == len(task_ids) - len(waiting)
    assert waiting
    assert all("ZohoDailyLimitReached" in row["error"] for row in waiting)


def test_amount_rounded_and_row_done(consumer, audit, sandbox, erp, pg_url):
    from tasks.zoho import sync_product

    with connect(pg_url) as database:
        database.execute_sql("UPDATE products SET unit_price = 0.005 WHERE id = 1")
    queue_id = erp.enqueue_sync("product", 1)
    erp.claim_sync_batch(50)

    task_id = sync_product(1, queue_id=queue_id).id

    row = wait_for_state(audit, task_id, ("succeeded", "failed"))
    assert row["state"] == "succeeded", row["error"]
    assert erp.get_sync_row(queue_id).status == "done"
    assert str(sandbox.records("items")[0]["rate"]) == "0.01"


def test_permanent_error_fails_row_with_erp_id(consumer, audit, erp, pg_url):
    from tasks.zoho import sync_customer

    with connect(pg_url) as database:
        rows = database.fetch_all_sql(
            "INSERT INTO customers (name, email) VALUES ('Gone Ltd', 'g@x.example')"
            " RETURNING id"
        )
    customer_id = rows[0]["id"]
    queue_id = erp.enqueue_sync("customer", customer_id)
    erp.claim_sync_batch(50)
    with connect(pg_url) as database:
        database.execute_sql(
            "DELETE FROM customers WHERE id = :id", {"id": customer_id}
        )

    task_id = sync_customer(customer_id, queue_id=queue_id).id

    row = wait_for_state(audit, task_id, ("succeeded", "failed"))
    assert row["state"] == "failed"
    sync_row = erp.get_sync_row(queue_id)
    assert sync_row.status == "failed"
    assert sync_row.last_error.startswith(f"C-{customer_id}: EntityNotFound")


def test_sync_all_pending_drains_queue(consumer, audit, sandbox, erp):
    from tasks.zoho import sync_all_pending

    for customer_id in (1, 2, 3):
        erp.enqueue_sync("customer", customer_id)
    pending = erp.count_sync_rows()["pending"]

    task_id = sync_all_pending().id

    wait_for_state(audit, task_id, "succeeded")
    wait_until(lambda: erp.count_sync_rows()["pending"] == 0)
    wait_until(
        lambda: (
            erp.count_sync_rows()["done"] + erp.count_sync_rows()["failed"] == pending
        )
    )
    assert erp.count_sync_rows()["done"] >= 3


def test_reauthorization_fails_and_alerts_once(consumer, audit, sandbox, smtp):
    from tasks.zoho import sync_customer

    sandbox.revoke_refresh_token(revoke_access_tokens=True)
    task_ids = [sync_customer(customer_id).id for customer_id in (1, 2)]

    rows = [
        wait_for_state(audit, task_id, ("succeeded", "failed")) for task_id in task_ids
    ]
    alert_name = "tasks.zoho.send_zoho_reauthorization_alert"

    def alerts_final():
        alerts = audit.search(name=alert_name)
        if alerts and all(row["state"] in ("succeeded", "failed") for row in alerts):
            return alerts
        return None

    alert_tasks = wait_until(alerts_final)
    emails = list(smtp.directory.glob("*.eml"))

    assert [row["state"] for row in rows] == ["failed", "failed"]
    assert rows[0]["error"].startswith(
        "ZohoSyncFailed: C-1: ZohoReauthorizationRequired"
    )
    assert {row["state"] for row in alert_tasks} == {"succeeded"}
    assert len(emails) == 1
    assert "authorise the appliance again" in emails[0].read_text()
