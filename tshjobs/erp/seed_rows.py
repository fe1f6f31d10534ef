"""Generation of the sample ERP rows that tshjobs.erp.seed inserts.

Every choice comes from the `random.Random` passed in, so the same generator
state and arguments give the same rows. Ids are assigned here, starting at 1.
"""

from __future__ import annotations

import datetime
import random
import unicodedata
from decimal import ROUND_DOWN, Decimal

from tshjobs.erp import seed_data
from tshjobs.erp.writes import invoice_number, order_number, payment_number

EMAIL_DOMAINS = ("example.com", "example.org", "example.net")
CENT = Decimal("0.01")
UTC = datetime.UTC

# Columns the seed fills, per table, in insertion order (parents first). Each
# generated row is a tuple in this column order.
COLUMNS: dict[str, tuple[str, ...]] = {
    "customers": ("id", "name", "email", "phone", "created_at", "updated_at"),
    "products": (
        "id",
        "sku",
        "name",
        "unit_price",
        "stock_quantity",
        "reorder_level",
    ),
    "orders": (
        "id",
        "order_number",
        "customer_id",
        "order_date",
        "status",
        "total",
        "currency",
        "created_at",
    ),
    "order_items": ("id", "order_id", "product_id", "quantity", "unit_price"),
    "invoices": (
        "id",
        "invoice_number",
        "order_id",
        "customer_id",
        "issue_date",
        "due_date",
        "total",
        "amount_paid",
        "status",
        "currency",
    ),
    "payments": (
        "id",
        "payment_number",
        "invoice_id",
        "customer_id",
        "payment_date",
        "amount",
        "method",
        "reference",
    ),
    "zoho_sync_queue": (
        "id",
        "entity_type",
        "entity_id",
        "status",
        "attempts",
        "created_at",
        "updated_at",
    ),
}


def generate_rows(
    rng: random.Random,
    customers: int,
    products: int,
    orders: int,
    days: int,
    end_date: datetime.date,
) -> dict[str, list[tuple]]:
    """Return the rows of every table, keyed by table name, each row a tuple
    in COLUMNS order."""
    tables: dict[str, list[tuple]] = {table: [] for table in COLUMNS}
    _generate_customers(rng, tables, customers, days, end_date)
    prices = _generate_products(rng, tables, products)
    _generate_orders(rng, tables, customers, prices, orders, days, end_date)
    _generate_invoices_and_payments(rng, tables, end_date)
    _generate_sync_rows(tables, end_date)
    return tables


def _customer_name(rng: random.Random) -> str:
    data = seed_data
    kind = rng.random()
    if kind < 0.25:
        prefix = rng.choice(data.ARABIC_COMPANY_PREFIXES)
        return f"{prefix} {rng.choice(data.ARABIC_COMPANY_WORDS)}"
    if kind < 0.45:
        given_name = rng.choice(data.ARABIC_GIVEN_NAMES)
        return f"{given_name} {rng.choice(data.ARABIC_FAMILY_NAMES)}"
    if kind < 0.70:
        given_name = rng.choice(data.LATIN_GIVEN_NAMES)
        return f"{given_name} {rng.choice(data.LATIN_FAMILY_NAMES)}"
    if kind < 0.80:
        family = rng.choice(data.LATIN_FAMILY_NAMES)
        return f"{family}, {rng.choice(data.LATIN_GIVEN_NAMES)}"
    form = rng.choice(data.LATIN_COMPANY_FORMS)
    return form.format(
        family=rng.choice(data.LATIN_FAMILY_NAMES),
        other=rng.choice(data.LATIN_FAMILY_NAMES),
    )


def _email_for(name: str, customer_id: int, rng: random.Random) -> str:
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    words = "".join(c if c.isalnum() else " " for c in ascii_name.lower()).split()
    local = ".".join(words)[:30].strip(".") or "customer"
    return f"{local}.{customer_id}@{rng.choice(EMAIL_DOMAINS)}"


def _random_time(rng: random.Random, day: datetime.date) -> datetime.datetime:
    midnight = datetime.datetime.combine(day, datetime.time(), tzinfo=UTC)
    return midnight + datetime.timedelta(seconds=rng.randrange(6 * 3600, 20 * 3600))


def _generate_customers(rng, tables, count, days, end_date) -> None:
    names: list[str] = []
    for customer_id in range(1, count + 1):
        showcase = customer_id <= len(seed_data.SHOWCASE_CUSTOMERS)
        if showcase:
            name, email = seed_data.SHOWCASE_CUSTOMERS[customer_id - 1]
        else:
            name = _customer_name(rng)
            # About 1 in 50 customers has the exact name of an earlier one.
            if (
                rng.random() < 0.02
                or customer_id == len(seed_data.SHOWCASE_CUSTOMERS) + 1
            ):
                name = rng.choice(names)
            email = None if rng.random() < 0.05 else _email_for(name, customer_id, rng)
        names.append(name)

        phone = None
        if rng.random() >= 0.03:
            phone = (
                f"+964 7{rng.choice('789')}{rng.randrange(10)} "
                f"{rng.randrange(1000):03d} {rng.randrange(10000):04d}"
            )
        created_day = end_date - datetime.timedelta(days=days + rng.randrange(365))
        created_at = _random_time(rng, created_day)
        tables["customers"].append(
            (customer_id, name, email, phone, created_at, created_at)
        )


def _generate_products(rng, tables, count) -> list[Decimal]:
    bands, weights = zip(*seed_data.PRICE_BANDS_CENTS, strict=True)
    prices = []
    for product_id in range(1, count + 1):
        base, variants = rng.choice(seed_data.PRODUCT_BASES)
        name = f"{base} {rng.choice(variants)}"
        low, high = rng.choices(bands, weights)[0]
        price = Decimal(rng.randint(low, high)).scaleb(-2)
        reorder_level = rng.randint(5, 50)
        # About 1 in 10 products (and always the first) is at or below its
        # reorder level, mostly below.
        if product_id == 1 or rng.random() < 0.1:
            stock = rng.randint(0, reorder_level - 1)
        else:
            stock = reorder_level + rng.randint(1, 300)
        prices.append(price)
        tables["products"].append(
            (product_id, f"TSH-{product_id:05d}", name, price, stock, reorder_level)
        )
    return prices


def _generate_orders(rng, tables, customers, prices, count, days, end_date) -> None:
    # Fewer orders on Fridays, the weekend in Iraq.
    offsets = list(range(days))
    weights = [
        0.3 if (end_date - datetime.timedelta(days=offset)).weekday() == 4 else 1.0
        for offset in offsets
    ]
    dates = sorted(
        end_date - datetime.timedelta(days=offset)
        for offset in rng.choices(offsets, weights, k=count)
    )

    item_id = 0
    for order_id, order_date in enumerate(dates, start=1):
        # A skewed pick: low customer ids order more often.
        customer_id = 1 + int(customers * rng.random() ** 1.6)
        line_count = min(rng.choice((1, 1, 2, 2, 3, 3, 4, 5)), len(prices))
        total = Decimal("0.00")
        for product_index in rng.sample(range(len(prices)), line_count):
            quantity = rng.choice((1, 1, 1, 2, 2, 3, 4, 5, 10, 12))
            price = prices[product_index]
            total += price * quantity
            item_id += 1
            tables["order_items"].append(
                (item_id, order_id, product_index + 1, quantity, price)
            )

        age = (end_date - order_date).days
        if rng.random() < 0.03:
            status = "cancelled"
        elif age == 0 and rng.random() < 0.2:
            status = "draft"
        elif age < 3:
            status = "confirmed"
        elif age < 10:
            status = "shipped"
        else:
            status = "delivered"
        tables["orders"].append(
            (
                order_id,
                order_number(order_id),
                customer_id,
                order_date,
                status,
                total,
                "USD",
                _random_time(rng, order_date),
            )
        )


def _generate_invoices_and_payments(rng, tables, end_date) -> None:
    payments: list[tuple] = []
    invoice_id = 0
    for order in tables["orders"]:
        order_id, _, customer_id, order_date, status, total, currency, _ = order
        # Most orders are invoiced; cancelled and draft orders never are.
        if status in ("cancelled", "draft") or rng.random() < 0.08:
            continue

        invoice_id += 1
        issue_date = min(end_date, order_date + datetime.timedelta(rng.randint(0, 2)))
        due_date = issue_date + datetime.timedelta(rng.choice((15, 30, 30, 30, 45, 60)))
        status, paid_amounts = _invoice_outcome(
            rng, invoice_id, total, due_date, end_date
        )

        latest = min(end_date, due_date + datetime.timedelta(days=15))
        span = (latest - issue_date).days
        pay_dates = sorted(
            issue_date + datetime.timedelta(rng.randint(0, span)) for _ in paid_amounts
        )
        for pay_date, amount in zip(pay_dates, paid_amounts, strict=True):
            payments.append((pay_date, invoice_id, customer_id, amount))

        amount_paid = sum(paid_amounts, Decimal("0.00"))
        tables["invoices"].append(
            (
                invoice_id,
                invoice_number(invoice_id),
                order_id,
                customer_id,
                issue_date,
                due_date,
                total,
                amount_paid,
                status,
                currency,
            )
        )

    payments.sort(key=lambda payment: (payment[0], payment[1]))
    for payment_id, (pay_date, invoice_id, customer_id, amount) in enumerate(
        payments, start=1
    ):
        method, reference = _payment_method(rng)
        tables["payments"].append(
            (
                payment_id,
                payment_number(payment_id),
                invoice_id,
                customer_id,
                pay_date,
                amount,
                method,
                reference,
            )
        )


def _invoice_outcome(rng, invoice_id, total, due_date, end_date):
    """Return the status and the payment amounts of a new invoice."""
    if rng.random() < 0.01:
        return "void", []
    if due_date >= end_date and rng.random() < 0.05:
        return "draft", []

    past_due = due_date < end_date
    roll = rng.random()
    # The first invoice, if past due, stays unpaid so that every seed has an
    # overdue invoice.
    if invoice_id == 1 and past_due:
        return "sent", []
    if roll < (0.80 if past_due else 0.35):
        if total >= Decimal("0.02") and rng.random() < 0.15:
            first = _part_of(rng, total)
            return "paid", [first, total - first]
        return "paid", [total]
    if roll < (0.88 if past_due else 0.40) and total >= Decimal("0.02"):
        return "sent", [_part_of(rng, total)]
    return "sent", []


def _part_of(rng: random.Random, total: Decimal) -> Decimal:
    """Return an amount strictly between 0 and `total`, in whole cents."""
    part = (total * Decimal(rng.randint(30, 70)) / 100).quantize(CENT, ROUND_DOWN)
    return min(max(part, CENT), total - CENT)


def _payment_method(rng: random.Random) -> tuple[str, str | None]:
    method = rng.choices(("bank_transfer", "cash", "card", "cheque"), (45, 25, 20, 10))[
        0
    ]
    if method == "bank_transfer":
        return method, f"TRF-{rng.randrange(10**8):08d}"
    if method == "card":
        return method, f"CARD-{rng.randrange(10**4):04d}"
    if method == "cheque":
        return method, f"CHQ-{rng.randrange(10**6):06d}"
    return method, None


def _generate_sync_rows(tables, end_date) -> None:
    """Queue the orders, invoices and payments of the last day, as the ERP
    would after creating them."""
    queued_at = datetime.datetime.combine(end_date, datetime.time(21), tzinfo=UTC)
    entities = [("order", row[0]) for row in tables["orders"] if row[3] == end_date]
    entities += [
        ("invoice", row[0]) for row in tables["invoices"] if row[4] == end_date
    ]
    entities += [
        ("payment", row[0]) for row in tables["payments"] if row[4] == end_date
    ]
    for queue_id, (entity_type, entity_id) in enumerate(entities, start=1):
        tables["zoho_sync_queue"].append(
            (queue_id, entity_type, entity_id, "pending", 0, queued_at, queued_at)
        )
