"""The Zoho sync layer against the local sandbox and a PostgreSQL ERP."""

from __future__ import annotations

from decimal import Decimal

import pytest

from tests.zoho_support import client_for, zoho_settings
from tshjobs.erp.db import connect, init_schema
from tshjobs.erp.queries import ErpRepository
from tshjobs.erp.seed import seed_tiny
from tshjobs.errors import ZohoConnectionError, ZohoTimeout, ZohoValidationError
from tshjobs.zoho.sandbox import SandboxConfig, SandboxServer
from tshjobs.zoho.sync import ZohoSync


@pytest.fixture
def sandbox():
    config = SandboxConfig(window_seconds=1.0, fault_timeout_seconds=0.5)
    with SandboxServer(config) as server:
        yield server


@pytest.fixture
def erp(pg_url):
    init_schema(pg_url)
    seed_tiny(pg_url)
    repository = ErpRepository(pg_url)
    yield repository
    repository.close()


@pytest.fixture
def sync(tmp_path, sandbox, erp):
    settings = zoho_settings(tmp_path / "data", sandbox.url, zoho_timeout=2.0)
    client = client_for(settings)
    yield ZohoSync(client, erp)
    client.close()


def run_sql(erp: ErpRepository, sql: str, params: dict | None = None) -> None:
    with connect(erp.db.url) as database:
        database.execute_sql(sql, params)


def test_customer_created_then_updated(sync, sandbox, erp):
    contact_id = sync.sync_customer(1)
    run_sql(erp, "UPDATE customers SET name = 'Renamed Trading' WHERE id = 1")

    again = sync.sync_customer(1)

    assert again == contact_id
    assert sandbox.count("contacts") == 1
    assert sandbox.records("contacts")[0]["contact_name"] == "Renamed Trading"
    assert erp.get_customer(1).zoho_contact_id == contact_id


def test_order_brings_customer_and_items(sync, sandbox, erp):
    order = erp.get_order(1)

    salesorder_id = sync.sync_order(1)
    sync.sync_order(1)

    assert sandbox.count("salesorders") == 1
    assert sandbox.count("contacts") == 1
    assert sandbox.count("items") == len({line.product_id for line in order.items})
    assert erp.get_order(1).zoho_salesorder_id == salesorder_id
    assert erp.get_customer(order.customer.id).zoho_contact_id


def test_same_name_customers_both_sync(sync, sandbox, erp):
    run_sql(erp, "UPDATE customers SET name = 'Al-Noor Trading' WHERE id IN (2, 3)")

    sync.sync_customer(3)
    sync.sync_customer(2)
    sync.sync_customer(3)

    names = sorted(record["contact_name"] for record in sandbox.records("contacts"))
    assert names == ["Al-Noor Trading", "Al-Noor Trading (C-3)"]


@pytest.mark.parametrize(
    "name",
    ["شركة النور للتجارة", "Société Générale Café", "Smith & Sons", "O'Brien, Ltd"],
)
def test_names_round_trip(sync, sandbox, erp, name):
    run_sql(erp, "UPDATE customers SET name = :name WHERE id = 1", {"name": name})

    sync.sync_customer(1)

    assert sandbox.records("contacts")[0]["contact_name"] == name


def test_create_committed_then_timed_out(sync, sandbox, erp):
    sandbox.inject("commit_then_timeout", path="/contacts", method="PUT")

    with pytest.raises((ZohoTimeout, ZohoConnectionError)):
        sync.sync_customer(1)
    contact_id = sync.sync_customer(1)

    assert sandbox.count("contacts") == 1
    assert erp.get_customer(1).zoho_contact_id == contact_id


def test_crash_before_write_back_no_duplicate(sync, sandbox, erp):
    sync.sync_customer(1)
    # As if the worker died between Zoho's reply and the write-back.
    run_sql(erp, "UPDATE customers SET zoho_contact_id = NULL WHERE id = 1")

    sync.sync_customer(1)

    assert sandbox.count("contacts") == 1
    assert erp.get_customer(1).zoho_contact_id


def test_payment_amount_exact(sync, sandbox, erp):
    run_sql(erp, "UPDATE payments SET amount = 0.30 WHERE id = 1")

    sync.sync_payment(1)

    record = sandbox.records("customerpayments")[0]
    assert Decimal(str(record["amount"])) == Decimal("0.30")


def test_line_amounts_add_up_exactly(sync, sandbox, erp):
    run_sql(erp, "DELETE FROM order_items WHERE order_id = 1 AND id NOT IN"
                 " (SELECT min(id) FROM order_items WHERE order_id = 1)")  # fmt: skip
    run_sql(
        erp,
        "UPDATE order_items SET quantity = 3, unit_price = 0.1 WHERE order_id = 1",
    )

    sync.sync_order(1)

    order = sandbox.records("salesorders")[0]
    assert Decimal(str(order["total"])) == Decimal("0.30")
    assert order["line_items"][0]["rate"] == Decimal("0.10")


def test_mapping_survives_sandbox_restart(tmp_path, erp):
    config = SandboxConfig(window_seconds=1.0, state_path=tmp_path / "zoho.db")
    with SandboxServer(config) as sandbox:
        settings = zoho_settings(tmp_path / "data", sandbox.url)
        with client_for(settings) as client:
            first = ZohoSync(client, erp).sync_customer(1)
        port = int(sandbox.url.rsplit(":", 1)[1])

    with SandboxServer(config, port=port) as sandbox:
        with client_for(settings) as client:
            again = ZohoSync(client, erp).sync_customer(1)

        assert again == first
        assert sandbox.count("contacts") == 1
    assert erp.get_customer(1).zoho_contact_id == first


def test_validation_error_is_permanent(sync, sandbox, erp):
    run_sql(erp, "UPDATE customers SET name = :n WHERE id = 1", {"n": "x" * 300})

    sync.sync_customer(1)

    assert len(sandbox.records("contacts")[0]["contact_name"]) <= 200
    with pytest.raises(ZohoValidationError):
        sync.client.upsert("/contacts", "contact", "cf_erp_id", "C-9", {})


UPDATES = {
    "product": ("items", "UPDATE products SET name = 'Renamed item' WHERE id = 1",
                "name", "Renamed item"),
    "order": ("salesorders",
              "UPDATE orders SET order_date = DATE '2026-01-02' WHERE id = 1",
              "date", "2026-01-02"),
    "invoice": ("invoices",
                "UPDATE invoices SET due_date = DATE '2027-03-04' WHERE id = 1",
                "due_date", "2027-03-04"),
    "payment": ("customerpayments",
                "UPDATE payments SET reference = 'REF-NEW' WHERE id = 1",
                "reference_number", "REF-NEW"),
}  # fmt: skip


@pytest.mark.parametrize("entity_type", list(UPDATES))
def test_each_entity_created_then_updated(sync, sandbox, erp, entity_type):
    entity, sql, field, value = UPDATES[entity_type]
    zoho_id = sync.sync(entity_type, 1)
    run_sql(erp, sql)

    again = sync.sync(entity_type, 1)

    records = [r for r in sandbox.records(entity) if r["cf_erp_id"].endswith("-1")]
    assert again == zoho_id
    assert len(records) == 1
    assert str(records[0][field]) == value


def test_invoice_keeps_erp_total_when_lines_differ(sync, sandbox, erp):
    run_sql(erp, "UPDATE invoices SET total = total + 5.00 WHERE id = 1")
    total = erp.get_invoice(1).total

    sync.sync_invoice(1)

    record = sandbox.records("invoices")[0]
    assert Decimal(str(record["total"])) == total
    assert len(record["line_items"]) == 1


def test_invoice_without_order_syncs(sync, sandbox, erp):
    run_sql(erp, "UPDATE invoices SET order_id = NULL WHERE id = 1")

    sync.sync_invoice(1)

    record = sandbox.records("invoices")[0]
    assert Decimal(str(record["total"])) == erp.get_invoice(1).total
