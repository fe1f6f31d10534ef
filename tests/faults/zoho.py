"""The Zoho Books workload of the fault tests: ERP entities synced to the
local Zoho sandbox while consumers die and Zoho misbehaves.

The workload enqueues one sync task per entity of a seeded PostgreSQL ERP:
customers, products, orders, invoices and payments, shuffled, so that an
order's sync often ensures a customer whose own task runs at the same time.
The effect key is the entity's cf_erp_id ("C-17"): each must have exactly
one record in the sandbox, whichever task created it.
"""

from __future__ import annotations

import random
import time
from collections import Counter

import psycopg

from tests.faults.harness import ChaosRun, Workload
from tests.zoho_support import CLIENT_ID, CLIENT_SECRET, ORGANIZATION_ID, REFRESH_TOKEN
from tshjobs.erp.db import connect
from tshjobs.erp.seed import seed
from tshjobs.zoho.payloads import erp_id
from tshjobs.zoho.sandbox import SandboxServer

# Sandbox entity name, and the ERP column holding the Zoho id, per type.
ZOHO_ENTITIES = {
    "customer": ("contacts", "customers", "zoho_contact_id", "contact_id"),
    "product": ("items", "products", "zoho_item_id", "item_id"),
    "order": ("salesorders", "orders", "zoho_salesorder_id", "salesorder_id"),
    "invoice": ("invoices", "invoices", "zoho_invoice_id", "invoice_id"),
    "payment": ("customerpayments", "payments", "zoho_payment_id", "payment_id"),
}


def zoho_env(sandbox: SandboxServer) -> dict[str, str]:
    """Settings for consumers that sync to `sandbox`."""
    return {
        "TSHJOBS_ZOHO_ACCOUNTS_URL": sandbox.url,
        "TSHJOBS_ZOHO_CLIENT_ID": CLIENT_ID,
        "TSHJOBS_ZOHO_CLIENT_SECRET": CLIENT_SECRET,
        "TSHJOBS_ZOHO_REFRESH_TOKEN": REFRESH_TOKEN,
        "TSHJOBS_ZOHO_ORGANIZATION_ID": ORGANIZATION_ID,
        "TSHJOBS_ZOHO_PLAN": "premium",
        "TSHJOBS_ZOHO_TIMEOUT": "3",
        "TSHJOBS_ZOHO_RETRY_DELAYS": "1,2",
    }


def prepare_erp(url: str, customers: int, rng_seed: int) -> dict[str, list[int]]:
    """Seed the ERP; return the ids to sync per entity type."""
    seed(url, customers=customers, orders=customers, products=20, days=30)
    with connect(url) as database:

        def ids(table: str, limit: int) -> list[int]:
            rows = database.fetch_all_sql(
                f"SELECT id FROM {table} ORDER BY id LIMIT {int(limit)}"
            )
            return [row["id"] for row in rows]

        return {
            "customer": ids("customers", customers),
            "product": ids("products", 20),
            "order": ids("orders", customers),
            "invoice": ids("invoices", customers // 2),
            "payment": ids("payments", customers * 3 // 10),
        }


def dependencies(url: str, entities: dict[str, list[int]]) -> set[str]:
    """Return the cf_erp_id of every entity the syncs create, including the
    customers, products and invoices that orders, invoices and payments
    ensure."""
    keys = {erp_id(kind, i) for kind, ids in entities.items() for i in ids}
    payment_invoices = (
        "SELECT invoice_id FROM payments"
        " WHERE id = ANY(%(pay)s) AND invoice_id IS NOT NULL"
    )
    invoice_orders = (
        "SELECT order_id FROM invoices"
        f" WHERE id = ANY(%(inv)s) OR id IN ({payment_invoices})"
    )
    products = (
        "SELECT product_id FROM order_items WHERE order_id = ANY(%(ids)s)"
        f" OR order_id IN ({invoice_orders})"
    )
    queries = [
        ("customer", "SELECT customer_id FROM orders WHERE id = ANY(%(ids)s)"),
        ("customer", "SELECT customer_id FROM invoices WHERE id = ANY(%(inv)s)"),
        ("customer", "SELECT customer_id FROM payments WHERE id = ANY(%(pay)s)"),
        ("product", products),
        ("invoice", payment_invoices),
    ]
    params = {
        "ids": entities["order"],
        "inv": entities["invoice"],
        "pay": entities["payment"],
    }
    with psycopg.connect(url) as conn:
        for kind, statement in queries:
            rows = conn.execute(statement, params).fetchall()
            keys |= {erp_id(kind, row[0]) for row in rows}
    return keys


def count_records(sandbox: SandboxServer) -> Counter:
    """Count the sandbox's records per cf_erp_id."""
    counts: Counter = Counter()
    for entity, *_ in ZOHO_ENTITIES.values():
        for record in sandbox.records(entity):
            counts[record.get("cf_erp_id")] += 1
    return counts


def zoho_workload(
    run: ChaosRun,
    erp_url: str,
    sandbox: SandboxServer,
    customers: int,
    *,
    batch: int = 25,
    batch_pause: float = 1.5,
) -> Workload:
    """Seed the ERP and return the sync workload for `run`. The tasks are
    enqueued `batch` at a time, `batch_pause` seconds apart, so that the
    kills and faults meet work in progress however fast the machine is."""
    from tasks.zoho import SYNC_TASKS

    entities = prepare_erp(erp_url, customers, run.plan.seed)
    jobs = [(kind, i) for kind, ids in entities.items() for i in ids]
    random.Random(run.plan.seed).shuffle(jobs)
    key_by_task: dict[str, str] = {}

    def enqueue(run: ChaosRun) -> None:
        for number, (kind, entity_id) in enumerate(jobs, start=1):
            task_id = run.call(SYNC_TASKS[kind], entity_id)
            key_by_task[task_id] = erp_id(kind, entity_id)
            if number % batch == 0:
                time.sleep(batch_pause)

    return Workload(
        name="zoho sync",
        enqueue=enqueue,
        expected=dependencies(erp_url, entities),
        count_effects=lambda run: count_records(sandbox),
        key_of=key_by_task.get,
    )


def mappings_not_written_back(erp_url: str, sandbox: SandboxServer) -> list[str]:
    """Return the cf_erp_id of every sandbox record whose id the ERP's
    column does not hold."""
    missing = []
    with connect(erp_url) as database:
        for entity, table, column, id_field in ZOHO_ENTITIES.values():
            stored = {
                row["id"]: row["zoho_id"]
                for row in database.fetch_all_sql(
                    f"SELECT id, {column} AS zoho_id FROM {table}"
                )
            }
            for record in sandbox.records(entity):
                key = record.get("cf_erp_id", "")
                entity_id = int(key.split("-", 1)[1])
                if stored.get(entity_id) != str(record[id_field]):
                    missing.append(key)
    return sorted(missing)
