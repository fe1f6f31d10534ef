"""Contract tests of the ERP data access layer, run on PostgreSQL and SQLite."""

from __future__ import annotations

import datetime
import multiprocessing
import sqlite3
import threading
from decimal import Decimal

import psycopg
import pytest

from tests.services import free_port
from tshjobs.erp.db import ErpUnavailable, connect, init_schema
from tshjobs.erp.models import Customer, Invoice, Order, Payment, Product
from tshjobs.erp.named_queries import (
    load_queries,
    parse_named_queries,
    sql_parameters,
    to_pyformat,
)
from tshjobs.erp.queries import ErpRepository
from tshjobs.erp.urls import redact_url
from tshjobs.errors import ConfigError, EntityNotFound, TemporaryError

DIALECTS = ["postgresql", "sqlite"]
DAY = datetime.date(2025, 3, 10)


@pytest.fixture(params=DIALECTS)
def erp_url(request, tmp_path):
    """An empty ERP database of the test's own, with the reference schema."""
    if request.param == "postgresql":
        url = request.getfixturevalue("pg_url")
    else:
        url = f"sqlite:///{tmp_path / 'erp.db'}"
    init_schema(url)
    return url


@pytest.fixture
def repo(erp_url):
    repository = ErpRepository(erp_url)
    yield repository
    repository.close()


def add_customer(repo, name="شركة التقنية الحديثة", email="info@example.com"):
    row = repo.db.fetch_all_sql(
        "INSERT INTO customers (name, email, phone) VALUES (:name, :email, :phone) "
        "RETURNING id",
        {"name": name, "email": email, "phone": "+964 770 123 4567"},
    )
    return row[0]["id"]


def add_product(repo, sku, price, stock=100, reorder_level=10, name=None):
    row = repo.db.fetch_all_sql(
        "INSERT INTO products (sku, name, unit_price, stock_quantity, reorder_level) "
        "VALUES (:sku, :name, :price, :stock, :reorder_level) RETURNING id",
        {
            "sku": sku,
            "name": name or f"Product {sku}",
            "price": Decimal(price),
            "stock": stock,
            "reorder_level": reorder_level,
        },
    )
    return row[0]["id"]


def add_invoiced_order(repo, customer_id, product_id, quantity, issue, due_days=30):
    order_id = repo.create_order(customer_id, [(product_id, quantity)], issue)
    invoice_id = repo.create_invoice_for_order(order_id, issue, due_days)
    return order_id, invoice_id


# Schema and connections


def test_init_schema_twice_keeps_rows(erp_url):
    with connect(erp_url) as db:
        db.execute_sql("INSERT INTO customers (name) VALUES ('Zoë')")

    init_schema(erp_url)
    init_schema(erp_url)

    with connect(erp_url) as db:
        rows = db.fetch_all_sql("SELECT name FROM customers")
    assert rows == [{"name": "Zoë"}]


def test_schema_has_every_table(repo):
    for table in (
        "customers",
        "products",
        "orders",
        "order_items",
        "invoices",
        "payments",
        "zoho_sync_queue",
    ):
        rows = repo.db.fetch_all_sql(f"SELECT COUNT(*) AS n FROM {table}")
        assert rows == [{"n": 0}], table


def test_schema_rejects_invalid_rows(repo):
    customer_id = add_customer(repo)
    bad_statements = [
        "INSERT INTO customers (name) VALUES ('  ')",
        "INSERT INTO products (sku, name, unit_price) VALUES ('X', 'X', -1)",
        "INSERT INTO zoho_sync_queue (entity_type, entity_id) VALUES ('user', 1)",
        (
            "INSERT INTO orders (order_number, customer_id, order_date, total, "
            f"currency) VALUES ('SO-1', {customer_id}, '2025-01-01', 1, 'usd')"
        ),
        (
            "INSERT INTO orders (order_number, customer_id, order_date, total) "
            "VALUES ('SO-2', 999, '2025-01-01', 1)"
        ),
    ]
    for statement in bad_statements:
        with pytest.raises((psycopg.IntegrityError, sqlite3.IntegrityError)):
            repo.db.execute_sql(statement)


def test_sqlite_rejects_noncanonical_amounts(tmp_path):
    url = f"sqlite:///{tmp_path / 'erp.db'}"
    init_schema(url)
    with connect(url) as db:
        for price in ("1.5", "01.50", "1.500", "-1.00", "1e3", "12.3x"):
            with pytest.raises(sqlite3.IntegrityError, match="CHECK constraint"):
                db.execute_sql(
                    "INSERT INTO products (sku, name, unit_price) "
                    "VALUES ('S', 'N', :price)",
                    {"price": price},
                )
        db.execute_sql(
            "INSERT INTO products (sku, name, unit_price) VALUES ('S', 'N', '0.30')"
        )


def test_sqlite_connection_settings(tmp_path):
    url = f"sqlite:///{tmp_path / 'erp.db'}"
    with connect(url, busy_timeout=2.5) as db:
        journal = db.fetch_all_sql("PRAGMA journal_mode")
        foreign_keys = db.fetch_all_sql("PRAGMA foreign_keys")
        busy = db.fetch_all_sql("PRAGMA busy_timeout")
    assert journal == [{"journal_mode": "wal"}]
    assert foreign_keys == [{"foreign_keys": 1}]
    assert busy == [{"timeout": 2500}]


def test_float_parameter_rejected_on_sqlite(tmp_path):
    url = f"sqlite:///{tmp_path / 'erp.db'}"
    init_schema(url)
    with connect(url) as db, pytest.raises(TypeError, match="Decimal"):
        db.execute_sql(
            "INSERT INTO products (sku, name, unit_price) VALUES ('S', 'N', :price)",
            {"price": 0.1},
        )


def test_fetch_returns_dicts(repo):
    add_customer(repo, name="O'Brien & Sons", email=None)
    rows = repo.db.fetch_all_sql(
        "SELECT name, email FROM customers WHERE name LIKE '%Sons' AND 1 = :one",
        {"one": 1},
    )
    assert rows == [{"name": "O'Brien & Sons", "email": None}]


def test_transaction_rolls_back_on_error(repo):
    with pytest.raises(RuntimeError), repo.db.transaction():
        add_customer(repo, name="Rolled back")
        raise RuntimeError("stop")

    assert repo.db.fetch_all_sql("SELECT name FROM customers") == []


def test_nested_transaction_rolls_back_inner_block(repo):
    with repo.db.transaction():
        add_customer(repo, name="Outer")
        with pytest.raises(RuntimeError), repo.db.transaction():
            add_customer(repo, name="Inner")
            raise RuntimeError("stop")

    names = [row["name"] for row in repo.db.fetch_all_sql("SELECT name FROM customers")]
    assert names == ["Outer"]


def test_each_thread_has_own_connection(repo):
    seen = {}
    # Every thread waits until all four have connected, so no connection is
    # freed (and its id reused) before the others exist.
    connected = threading.Barrier(4)

    def record():
        state = repo.db._connection()
        seen[threading.current_thread().name] = id(state.raw)
        repo.db.fetch_all_sql("SELECT 1 AS one")
        connected.wait(timeout=10)

    threads = [threading.Thread(target=record, name=f"t{i}") for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(set(seen.values())) == 4
    assert id(repo.db._connection().raw) not in seen.values()


def test_threads_write_concurrently(repo):
    errors = []

    def insert_customers(thread_number):
        try:
            for index in range(20):
                with repo.db.transaction():
                    add_customer(repo, name=f"T{thread_number}-{index}")
        except Exception as exc:  # noqa: BLE001 - reported by the assert below
            errors.append(exc)

    threads = [threading.Thread(target=insert_customers, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    count = repo.db.fetch_all_sql("SELECT COUNT(*) AS n FROM customers")
    assert count == [{"n": 120}]


def _read_customer_in_child(repo, customer_id, results):
    results.put(repo.get_customer(customer_id).name)


def test_forked_child_opens_own_connection(repo):
    customer_id = add_customer(repo, name="Müller, Hans")
    context = multiprocessing.get_context("fork")
    results = context.Queue()

    child = context.Process(
        target=_read_customer_in_child, args=(repo, customer_id, results)
    )
    child.start()
    child.join(timeout=30)

    assert child.exitcode == 0
    assert results.get(timeout=5) == "Müller, Hans"
    assert repo.get_customer(customer_id).name == "Müller, Hans"


def test_closed_database_rejects_use(erp_url):
    db = connect(erp_url)
    db.close()
    with pytest.raises(RuntimeError, match="closed"):
        db.fetch_all_sql("SELECT 1 AS one")


def test_invalid_urls_rejected(tmp_path):
    for url in ("mysql://localhost/erp", "sqlite:///:memory:", "sqlite:///"):
        with pytest.raises(ConfigError, match="invalid ERP database URL"):
            connect(url)


def test_unreachable_postgres_is_temporary():
    url = f"postgresql://postgres:secret@127.0.0.1:{free_port()}/erp"
    with pytest.raises(ErpUnavailable) as caught:
        connect(url, connect_timeout=2)
    assert isinstance(caught.value, TemporaryError)
    assert "secret" not in str(caught.value)


def test_lost_postgres_connection_reconnects(pg_url):
    with connect(pg_url) as db, connect(pg_url) as admin:
        backend = db.fetch_all_sql("SELECT pg_backend_pid() AS pid")[0]["pid"]
        admin.fetch_all_sql("SELECT pg_terminate_backend(:pid)", {"pid": backend})

        with pytest.raises(ErpUnavailable, match="failed"):
            db.fetch_all_sql("SELECT 1 AS one")
        assert db.fetch_all_sql("SELECT 1 AS one") == [{"one": 1}]


def test_sqlite_lock_timeout_is_temporary(tmp_path):
    url = f"sqlite:///{tmp_path / 'erp.db'}"
    init_schema(url)
    holder = connect(url)
    waiter = connect(url, busy_timeout=0.2)
    errors = []

    def write_while_locked():
        try:
            waiter.execute_sql("INSERT INTO customers (name) VALUES ('Waiter')")
        except ErpUnavailable as exc:
            errors.append(exc)

    with holder.transaction():
        holder.execute_sql("INSERT INTO customers (name) VALUES ('Holder')")
        thread = threading.Thread(target=write_while_locked)
        thread.start()
        thread.join(timeout=10)

    assert len(errors) == 1
    assert "locked" in str(errors[0])
    holder.close()
    waiter.close()


def test_redact_url_masks_password():
    assert (
        redact_url("postgresql://erp:s3cret@db:5432/erp?password=x&sslmode=require")
        == "postgresql://erp:***@db:5432/erp?password=***&sslmode=require"
    )
    assert redact_url("sqlite:////var/lib/erp.db") == "sqlite:////var/lib/erp.db"


# Reads


def test_get_customer(repo):
    customer_id = add_customer(repo, name="Müller, Hans", email=None)
    customer = repo.get_customer(customer_id)
    assert customer == Customer(
        id=customer_id,
        name="Müller, Hans",
        email=None,
        phone="+964 770 123 4567",
        zoho_contact_id=None,
    )


def test_get_product(repo):
    product_id = add_product(repo, "TSH-1", "19.99", stock=3, reorder_level=5)
    product = repo.get_product(product_id)
    assert product == Product(
        product_id, "TSH-1", "Product TSH-1", Decimal("19.99"), 3, 5
    )
    assert isinstance(product.unit_price, Decimal)


def test_get_order_with_customer_and_items(repo):
    customer_id = add_customer(repo)
    cable = add_product(repo, "CABLE", "2.50", name="كابل شبكة Cat6 3 م")
    router = add_product(repo, "ROUTER", "89.90")

    order_id = repo.create_order(customer_id, [(cable, 4), (router, 1)], DAY)
    order = repo.get_order(order_id)

    assert isinstance(order, Order)
    assert order.order_number == f"SO-{order_id:06d}"
    assert order.order_date == DAY
    assert order.status == "confirmed"
    assert order.currency == "USD"
    assert order.total == Decimal("99.90")
    assert order.customer.id == customer_id
    assert order.customer.name == "شركة التقنية الحديثة"
    assert [(item.sku, item.quantity) for item in order.items] == [
        ("CABLE", 4),
        ("ROUTER", 1),
    ]
    assert order.items[0].name == "كابل شبكة Cat6 3 م"
    assert order.items[0].amount == Decimal("10.00")
    assert sum(item.amount for item in order.items) == order.total


def test_get_invoice_with_order_items(repo):
    customer_id = add_customer(repo)
    product_id = add_product(repo, "P", "12.30")
    order_id, invoice_id = add_invoiced_order(repo, customer_id, product_id, 3, DAY, 15)

    invoice = repo.get_invoice(invoice_id)

    assert isinstance(invoice, Invoice)
    assert invoice.invoice_number == f"INV-{invoice_id:06d}"
    assert invoice.order_id == order_id
    assert invoice.issue_date == DAY
    assert invoice.due_date == DAY + datetime.timedelta(days=15)
    assert invoice.total == Decimal("36.90")
    assert invoice.amount_paid == Decimal("0.00")
    assert invoice.balance == Decimal("36.90")
    assert invoice.status == "sent"
    assert invoice.customer.id == customer_id
    assert [(item.sku, item.quantity) for item in invoice.items] == [("P", 3)]


def test_get_invoice_without_order_has_no_items(repo):
    customer_id = add_customer(repo)
    rows = repo.db.fetch_all_sql(
        "INSERT INTO invoices (invoice_number, customer_id, issue_date, due_date, "
        "total, status) VALUES ('MAN-1', :customer_id, :day, :day, :total, 'sent') "
        "RETURNING id",
        {"customer_id": customer_id, "day": DAY, "total": Decimal("5.00")},
    )
    invoice = repo.get_invoice(rows[0]["id"])
    assert invoice.order_id is None
    assert invoice.items == []
    assert invoice.total == Decimal("5.00")


def test_get_payment_with_customer_and_invoice(repo):
    customer_id = add_customer(repo)
    product_id = add_product(repo, "P", "10.00")
    _, invoice_id = add_invoiced_order(repo, customer_id, product_id, 2, DAY)

    payment_id = repo.record_payment(
        invoice_id, Decimal("5.25"), DAY, "cheque", "CHQ-1"
    )
    payment = repo.get_payment(payment_id)

    assert isinstance(payment, Payment)
    assert payment.payment_number == f"PAY-{payment_id:06d}"
    assert payment.amount == Decimal("5.25")
    assert payment.method == "cheque"
    assert payment.reference == "CHQ-1"
    assert payment.payment_date == DAY
    assert payment.customer.id == customer_id
    assert payment.invoice.id == invoice_id
    assert payment.invoice.amount_paid == Decimal("5.25")
    assert payment.invoice.items[0].quantity == 2


def test_get_payment_without_invoice(repo):
    customer_id = add_customer(repo)
    rows = repo.db.fetch_all_sql(
        "INSERT INTO payments (payment_number, customer_id, payment_date, amount, "
        "method) VALUES ('ADV-1', :customer_id, :day, :amount, 'cash') RETURNING id",
        {"customer_id": customer_id, "day": DAY, "amount": Decimal("100.00")},
    )
    payment = repo.get_payment(rows[0]["id"])
    assert payment.invoice is None
    assert payment.reference is None
    assert payment.amount == Decimal("100.00")


@pytest.mark.parametrize(
    ("method", "entity"),
    [
        ("get_customer", "customer"),
        ("get_product", "product"),
        ("get_order", "order"),
        ("get_invoice", "invoice"),
        ("get_payment", "payment"),
    ],
)
def test_missing_row_raises_entity_not_found(repo, method, entity):
    with pytest.raises(EntityNotFound) as caught:
        getattr(repo, method)(4242)
    assert caught.value.entity == entity
    assert caught.value.entity_id == 4242
    assert str(caught.value) == f"{entity} 4242 not found in the ERP database"


def test_decimal_line_items_sum_exactly(repo):
    customer_id = add_customer(repo)
    dime = add_product(repo, "DIME", "0.10")

    order_id = repo.create_order(customer_id, [(dime, 1), (dime, 1), (dime, 1)], DAY)
    invoice_id = repo.create_invoice_for_order(order_id, DAY)

    order = repo.get_order(order_id)
    assert order.total == Decimal("0.30")
    assert str(order.total) == "0.30"
    assert repo.get_invoice(invoice_id).total == Decimal("0.30")
    stored = repo.db.fetch_all_sql(
        "SELECT total FROM orders WHERE id = :id", {"id": order_id}
    )
    if repo.db.dialect == "sqlite":
        assert stored == [{"total": "0.30"}]
    else:
        assert stored == [{"total": Decimal("0.30")}]


def test_list_overdue_invoices(repo):
    customer_id = add_customer(repo)
    product_id = add_product(repo, "P", "10.00")
    issue = datetime.date(2025, 1, 1)
    as_of = datetime.date(2025, 2, 15)

    _, unpaid = add_invoiced_order(repo, customer_id, product_id, 1, issue, 30)
    _, partly_paid = add_invoiced_order(repo, customer_id, product_id, 2, issue, 10)
    repo.record_payment(partly_paid, Decimal("5.00"), issue)
    _, paid = add_invoiced_order(repo, customer_id, product_id, 1, issue, 10)
    repo.record_payment(paid, Decimal("10.00"), issue)
    _, due_today = add_invoiced_order(
        repo, customer_id, product_id, 1, issue, (as_of - issue).days
    )
    _, not_due = add_invoiced_order(repo, customer_id, product_id, 1, issue, 60)
    order_id = repo.create_order(customer_id, [(product_id, 1)], issue)
    repo.create_invoice_for_order(order_id, issue, 5, status="draft")

    overdue = repo.list_overdue_invoices(as_of)

    assert [invoice.id for invoice in overdue] == [partly_paid, unpaid]
    assert overdue[0].balance == Decimal("15.00")
    assert overdue[0].items[0].quantity == 2
    assert overdue[1].customer.id == customer_id
    assert due_today not in [invoice.id for invoice in overdue]
    assert not_due not in [invoice.id for invoice in overdue]


def test_list_low_stock_products(repo):
    add_product(repo, "OK", "1.00", stock=50, reorder_level=10)
    at_level = add_product(repo, "AT", "1.00", stock=10, reorder_level=10)
    short = add_product(repo, "SHORT", "1.00", stock=0, reorder_level=25)
    low = repo.list_low_stock_products()
    assert [product.id for product in low] == [short, at_level]
    assert low[0].reorder_level == 25


def test_sales_summary_for_one_day(repo):
    customer_id = add_customer(repo)
    cheap = add_product(repo, "CHEAP", "0.10")
    dear = add_product(repo, "DEAR", "1200.00")

    repo.create_order(customer_id, [(cheap, 3), (dear, 1)], DAY)
    repo.create_order(customer_id, [(cheap, 7)], DAY)
    repo.create_order(customer_id, [(dear, 5)], DAY, status="cancelled")
    repo.create_order(customer_id, [(dear, 9)], DAY + datetime.timedelta(days=1))

    summary = repo.sales_summary(DAY)

    assert summary.start == summary.end == DAY
    assert summary.order_count == 2
    assert summary.revenue == {"USD": Decimal("1201.00")}
    assert [(p.sku, p.quantity, p.revenue) for p in summary.top_products] == [
        ("CHEAP", 10, Decimal("1.00")),
        ("DEAR", 1, Decimal("1200.00")),
    ]


def test_sales_summary_between_dates(repo):
    customer_id = add_customer(repo)
    product_id = add_product(repo, "P", "0.10")
    for day in range(1, 31):
        repo.create_order(customer_id, [(product_id, day)], datetime.date(2025, 4, day))

    summary = repo.sales_summary_between(
        datetime.date(2025, 4, 1), datetime.date(2025, 4, 30)
    )
    empty = repo.sales_summary_between(
        datetime.date(2025, 5, 1), datetime.date(2025, 5, 31)
    )

    assert summary.order_count == 30
    assert summary.revenue == {"USD": Decimal("46.50")}
    assert summary.top_products[0].quantity == 465
    assert empty.order_count == 0
    assert empty.revenue == {}
    assert empty.top_products == []
    with pytest.raises(ValueError, match="before its start"):
        repo.sales_summary_between(DAY, DAY - datetime.timedelta(days=1))


# Writes of the ERP simulator


def test_create_order_rejects_invalid_input(repo):
    customer_id = add_customer(repo)
    product_id = add_product(repo, "P", "1.00")

    with pytest.raises(EntityNotFound, match="customer 999"):
        repo.create_order(999, [(product_id, 1)], DAY)
    with pytest.raises(EntityNotFound, match="product 999"):
        repo.create_order(customer_id, [(product_id, 1), (999, 1)], DAY)
    with pytest.raises(ValueError, match="at least one line item"):
        repo.create_order(customer_id, [], DAY)
    with pytest.raises(ValueError, match="quantity"):
        repo.create_order(customer_id, [(product_id, 0)], DAY)
    with pytest.raises(ValueError, match="status"):
        repo.create_order(customer_id, [(product_id, 1)], DAY, status="lost")

    assert repo.db.fetch_all_sql("SELECT COUNT(*) AS n FROM orders") == [{"n": 0}]


def test_create_invoice_for_order_rules(repo):
    customer_id = add_customer(repo)
    product_id = add_product(repo, "P", "1.00")
    order_id, invoice_id = add_invoiced_order(repo, customer_id, product_id, 1, DAY)
    cancelled = repo.create_order(
        customer_id, [(product_id, 1)], DAY, status="cancelled"
    )

    with pytest.raises(ValueError, match=f"already has invoice {invoice_id}"):
        repo.create_invoice_for_order(order_id, DAY)
    with pytest.raises(ValueError, match="cancelled"):
        repo.create_invoice_for_order(cancelled, DAY)
    with pytest.raises(EntityNotFound, match="order 999"):
        repo.create_invoice_for_order(999, DAY)

    second_order = repo.create_order(customer_id, [(product_id, 1)], DAY)
    draft_id = repo.create_invoice_for_order(second_order, DAY, 0, status="draft")
    draft = repo.get_invoice(draft_id)
    assert draft.status == "draft"
    assert draft.due_date == DAY


def test_record_payment_updates_invoice(repo):
    customer_id = add_customer(repo)
    product_id = add_product(repo, "P", "0.10")
    _, invoice_id = add_invoiced_order(repo, customer_id, product_id, 3, DAY)

    repo.record_payment(invoice_id, Decimal("0.10"), DAY, "cash")
    partly = repo.get_invoice(invoice_id)
    repo.record_payment(invoice_id, Decimal("0.20"), DAY, "card", "CARD-1234")
    paid = repo.get_invoice(invoice_id)

    assert partly.amount_paid == Decimal("0.10")
    assert partly.status == "sent"
    assert paid.amount_paid == Decimal("0.30")
    assert paid.status == "paid"
    assert paid.balance == Decimal("0.00")


def test_record_payment_rejects_invalid_payments(repo):
    customer_id = add_customer(repo)
    product_id = add_product(repo, "P", "10.00")
    _, invoice_id = add_invoiced_order(repo, customer_id, product_id, 1, DAY)

    with pytest.raises(ValueError, match="exceeds the balance 10.00"):
        repo.record_payment(invoice_id, Decimal("10.01"), DAY)
    with pytest.raises(ValueError, match="more than two decimal places"):
        repo.record_payment(invoice_id, Decimal("1.005"), DAY)
    with pytest.raises(ValueError, match="positive"):
        repo.record_payment(invoice_id, Decimal("0.00"), DAY)
    with pytest.raises(TypeError, match="Decimal"):
        repo.record_payment(invoice_id, 1.5, DAY)
    with pytest.raises(ValueError, match="method"):
        repo.record_payment(invoice_id, Decimal("1.00"), DAY, "barter")
    with pytest.raises(EntityNotFound, match="invoice 999"):
        repo.record_payment(999, Decimal("1.00"), DAY)

    repo.record_payment(invoice_id, Decimal("10.00"), DAY)
    with pytest.raises(ValueError, match="is paid"):
        repo.record_payment(invoice_id, Decimal("1.00"), DAY)
    assert repo.db.fetch_all_sql("SELECT COUNT(*) AS n FROM payments") == [{"n": 1}]


def test_new_ids_follow_existing_rows(repo):
    customer_id = add_customer(repo)
    product_id = add_product(repo, "P", "1.00")
    first = repo.create_order(customer_id, [(product_id, 1)], DAY)
    second = repo.create_order(customer_id, [(product_id, 1)], DAY)
    assert second == first + 1
    assert repo.get_order(second).order_number == f"SO-{second:06d}"


# Zoho ids and the sync queue


def test_set_zoho_id_on_each_entity(repo):
    customer_id = add_customer(repo)
    product_id = add_product(repo, "P", "1.00")
    order_id, invoice_id = add_invoiced_order(repo, customer_id, product_id, 1, DAY)
    payment_id = repo.record_payment(invoice_id, Decimal("1.00"), DAY)

    repo.set_zoho_id("customer", customer_id, "zc-1")
    repo.set_zoho_id("product", product_id, "zi-1")
    repo.set_zoho_id("order", order_id, "zs-1")
    repo.set_zoho_id("invoice", invoice_id, "zv-1")
    repo.set_zoho_id("payment", payment_id, "zp-1")

    assert repo.get_customer(customer_id).zoho_contact_id == "zc-1"
    assert repo.get_product(product_id).zoho_item_id == "zi-1"
    assert repo.get_order(order_id).zoho_salesorder_id == "zs-1"
    assert repo.get_invoice(invoice_id).zoho_invoice_id == "zv-1"
    assert repo.get_payment(payment_id).zoho_payment_id == "zp-1"

    repo.set_zoho_id("customer", customer_id, None)
    assert repo.get_customer(customer_id).zoho_contact_id is None


def test_set_zoho_id_rejects_unknown_targets(repo):
    with pytest.raises(EntityNotFound, match="order 77"):
        repo.set_zoho_id("order", 77, "zs-1")
    with pytest.raises(ValueError, match="unknown entity type 'user'"):
        repo.set_zoho_id("user", 1, "x")


def test_enqueue_sync_keeps_one_pending_row(repo):
    first = repo.enqueue_sync("invoice", 5)
    again = repo.enqueue_sync("invoice", 5)
    other = repo.enqueue_sync("payment", 5)

    assert again == first
    assert other != first
    assert repo.count_sync_rows() == {
        "pending": 2,
        "in_progress": 0,
        "done": 0,
        "failed": 0,
    }

    repo.claim_sync_batch(10)
    assert repo.enqueue_sync("invoice", 5) not in (first, other)


def test_sync_queue_claim_and_mark(repo):
    ids = [repo.enqueue_sync("customer", number) for number in range(1, 6)]

    claimed = repo.claim_sync_batch(3)
    assert [item.id for item in claimed] == ids[:3]
    assert {item.status for item in claimed} == {"in_progress"}
    assert {item.attempts for item in claimed} == {1}
    assert claimed[0].entity_type == "customer"
    assert claimed[0].created_at.tzinfo is not None

    repo.mark_sync_done(ids[0])
    repo.mark_sync_failed(ids[1], "Zoho answered 400: invalid GSTIN " + "x" * 5000)
    repo.mark_sync_failed(ids[2], "Zoho answered 503", retry=True)

    assert repo.get_sync_row(ids[0]).status == "done"
    failed = repo.get_sync_row(ids[1])
    assert failed.status == "failed"
    assert failed.last_error.startswith("Zoho answered 400")
    assert len(failed.last_error) == 2000
    retried = repo.get_sync_row(ids[2])
    assert retried.status == "pending"
    assert retried.last_error == "Zoho answered 503"

    again = repo.claim_sync_batch(10)
    assert [item.id for item in again] == [ids[2], ids[3], ids[4]]
    assert again[0].attempts == 2
    assert repo.claim_sync_batch(10) == []
    assert [item.id for item in repo.list_sync_rows("in_progress")] == [
        ids[4],
        ids[3],
        ids[2],
    ]
    assert len(repo.list_sync_rows(limit=2)) == 2

    with pytest.raises(EntityNotFound):
        repo.mark_sync_done(9999)
    with pytest.raises(ValueError, match="unknown sync status"):
        repo.list_sync_rows("lost")


def test_requeue_stale_sync_rows(repo):
    queue_id = repo.enqueue_sync("order", 1)
    repo.claim_sync_batch(1)
    assert repo.requeue_stale_sync_rows(datetime.timedelta(hours=1)) == 0

    repo.db.execute_sql(
        "UPDATE zoho_sync_queue SET updated_at = :old WHERE id = :id",
        {
            "old": datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC),
            "id": queue_id,
        },
    )
    assert repo.requeue_stale_sync_rows(datetime.timedelta(hours=1)) == 1
    assert repo.get_sync_row(queue_id).status == "pending"


def test_concurrent_claims_get_disjoint_rows(erp_url):
    with ErpRepository(erp_url) as setup:
        for number in range(200):
            setup.enqueue_sync("order", number)

    claimed: list[int] = []
    errors = []
    lock = threading.Lock()
    start = threading.Barrier(8)

    def claim_until_empty(repository):
        try:
            start.wait()
            while batch := repository.claim_sync_batch(7):
                with lock:
                    claimed.extend(item.id for item in batch)
        except Exception as exc:  # noqa: BLE001 - reported by the assert below
            errors.append(exc)

    repositories = [ErpRepository(erp_url) for _ in range(2)]
    threads = [
        threading.Thread(target=claim_until_empty, args=(repositories[n % 2],))
        for n in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    for repository in repositories:
        repository.close()

    assert errors == []
    assert len(claimed) == 200
    assert len(set(claimed)) == 200


def test_postgres_claim_skips_locked_rows(pg_url):
    init_schema(pg_url)
    first = ErpRepository(pg_url)
    second = ErpRepository(pg_url)
    for number in range(10):
        first.enqueue_sync("product", number)

    result = {}

    def claim_in_second():
        result["rows"] = second.claim_sync_batch(4)

    with first.db.transaction():
        held_rows = first.claim_sync_batch(4)
        # The first claim's rows stay locked until this block ends; the second
        # claim must pass over them instead of waiting.
        thread = threading.Thread(target=claim_in_second)
        thread.start()
        thread.join(timeout=10)
        assert not thread.is_alive(), "the second claim waited for locked rows"

    held_ids = {item.id for item in held_rows}
    other_ids = {item.id for item in result["rows"]}
    assert len(held_ids) == 4
    assert len(other_ids) == 4
    assert held_ids.isdisjoint(other_ids)
    first.close()
    second.close()


# Named queries and the override file


def test_builtin_queries_cover_both_dialects():
    catalog = load_queries()
    for name in sorted(catalog.names()):
        for dialect in DIALECTS:
            assert catalog.sql(name, dialect).strip(), (name, dialect)
    assert "SKIP LOCKED" in catalog.sql("claim_sync_rows", "postgresql")
    assert "SKIP LOCKED" not in catalog.sql("claim_sync_rows", "sqlite")


def test_to_pyformat_converts_placeholders_only():
    sql = (
        "SELECT ':not_a_param', x::text, '50%' AS p, \"a:b\" "
        "FROM t WHERE y = :value AND z LIKE '%' || :pattern -- note: :ignored %"
    )
    assert to_pyformat(sql) == (
        "SELECT ':not_a_param', x::text, '50%%' AS p, \"a:b\" "
        "FROM t WHERE y = %(value)s AND z LIKE '%%' || %(pattern)s "
        "-- note: :ignored %%"
    )
    assert sql_parameters(sql) == {"value", "pattern"}
    assert to_pyformat("SELECT $$a:b$$, :x") == "SELECT $$a:b$$, %(x)s"


def test_percent_in_query_runs_on_postgres(pg_url):
    init_schema(pg_url)
    with connect(pg_url) as db:
        db.execute_sql("INSERT INTO customers (name) VALUES ('100% Café')")
        rows = db.fetch_all_sql(
            "SELECT name FROM customers WHERE name LIKE '100%' AND id = :id",
            {"id": 1},
        )
    assert rows == [{"name": "100% Café"}]


def test_override_file_replaces_query(repo, tmp_path):
    customer_id = add_customer(repo, name="Smith & Sons")
    override = tmp_path / "erp-queries.sql"
    override.write_text(
        "-- Our ERP keeps names in another table.\n"
        "-- name: get_customer\n"
        "SELECT id, 'Renamed: ' || name AS name, email, phone, zoho_contact_id\n"
        "FROM customers WHERE id = :customer_id;\n",
        encoding="utf-8",
    )

    with ErpRepository(repo.db.url, queries_file=override) as custom:
        assert custom.get_customer(customer_id).name == "Renamed: Smith & Sons"
        with pytest.raises(EntityNotFound):
            custom.get_customer(customer_id + 1)
    assert repo.get_customer(customer_id).name == "Smith & Sons"


def test_override_of_plain_block_replaces_dialect_variants(tmp_path):
    override = tmp_path / "q.sql"
    override.write_text(
        "-- name: claim_sync_rows\nSELECT * FROM my_queue LIMIT :limit\n"
    )
    catalog = load_queries(override)
    for dialect in DIALECTS:
        assert catalog.sql("claim_sync_rows", dialect) == (
            "SELECT * FROM my_queue LIMIT :limit"
        )


def test_override_of_one_dialect_keeps_the_other(tmp_path):
    override = tmp_path / "q.sql"
    override.write_text(
        "-- name: claim_sync_rows [sqlite]\nSELECT * FROM my_queue LIMIT :limit\n"
    )
    catalog = load_queries(override)
    assert catalog.sql("claim_sync_rows", "sqlite").startswith("SELECT * FROM my_queue")
    assert "SKIP LOCKED" in catalog.sql("claim_sync_rows", "postgresql")


def test_override_unknown_name_rejected(tmp_path):
    override = tmp_path / "q.sql"
    override.write_text(
        "-- name: get_customer\nSELECT 1\n\n-- name: get_custmer\nSELECT 2\n"
    )
    with pytest.raises(ConfigError) as caught:
        load_queries(override)
    message = str(caught.value)
    assert "unknown query name 'get_custmer'" in message
    assert f"{override}:4" in message
    assert "get_customer" in message


def test_override_unknown_parameter_rejected(tmp_path):
    override = tmp_path / "q.sql"
    override.write_text("-- name: get_order\nSELECT * FROM orders WHERE id = :id\n")
    with pytest.raises(ConfigError, match=r"parameter\(s\) :id .*available: :order_id"):
        load_queries(override)


def test_override_missing_file_rejected(tmp_path):
    missing = tmp_path / "nowhere.sql"
    with pytest.raises(ConfigError, match="ERP queries file not found") as caught:
        ErpRepository(f"sqlite:///{tmp_path / 'erp.db'}", queries_file=missing)
    assert str(missing) in str(caught.value)
    assert "TSHJOBS_ERP_QUERIES_FILE" in str(caught.value)


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("SELECT 1\n-- name: get_customer\nSELECT 1\n", "SQL before the first"),
        ("-- name: get_customer\n\n", "has no SQL"),
        ("-- name: Get-Customer\nSELECT 1\n", "invalid query name"),
        ("-- name: get_customer [oracle]\nSELECT 1\n", "unknown dialect 'oracle'"),
        ("-- name: get_customer extra\nSELECT 1\n", "malformed header"),
        (
            "-- name: get_customer\nSELECT 1\n-- name: get_customer\nSELECT 2\n",
            "defined twice",
        ),
    ],
)
def test_malformed_query_file_rejected(text, error):
    with pytest.raises(ConfigError, match=error):
        parse_named_queries(text, "q.sql")


def test_repository_from_settings(settings_env, tmp_path, monkeypatch):
    override = tmp_path / "q.sql"
    override.write_text(
        "-- name: get_customer\n"
        "SELECT id, upper(name) AS name, email, phone, zoho_contact_id\n"
        "FROM customers WHERE id = :customer_id\n"
    )
    monkeypatch.setenv("TSHJOBS_ERP_QUERIES_FILE", str(override))
    url = settings_env["TSHJOBS_ERP_DATABASE_URL"]
    init_schema(url)

    with ErpRepository.from_settings() as repository:
        customer_id = add_customer(repository, name="smith & sons")
        assert repository.get_customer(customer_id).name == "SMITH & SONS"


def test_scrub_password_masks_raw_and_decoded():
    from tshjobs.erp.urls import redact_url, scrub_password

    url = "postgresql://u:p%40ss@127.0.0.1/db"
    message = 'invalid token: "p%40ss", login for p@ss failed'

    assert scrub_password(message, url) == 'invalid token: "***", login for *** failed'
    assert "p%40ss" not in redact_url(url)
    assert redact_url("postgresql://u:pa/ss#x@h/db") == "postgresql://u:***@h/db"
