"""Sample data for the reference ERP schema, for the demo and the tests.

`seed(url)` fills an empty ERP database with customers, products, a year of
orders, their invoices and payments. The data depend only on the arguments:
the same `seed` and `end_date` give the same rows. Amounts are exact Decimal
sums of line items. Rows go in with COPY (PostgreSQL) or one prepared INSERT
per table (SQLite), in one transaction.

Run `python -m tshjobs.erp.seed sqlite:///erp.db` to seed from the shell.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import random
import time
from dataclasses import dataclass

from tshjobs.erp.db import Database, connect
from tshjobs.erp.seed_rows import COLUMNS, generate_rows

log = logging.getLogger(__name__)

DEFAULT_SEED = 20240101
TINY = {"customers": 20, "orders": 50, "products": 15}
# Children before parents, the order in which rows can be deleted.
TABLES = (
    "zoho_sync_queue",
    "payments",
    "invoices",
    "order_items",
    "orders",
    "products",
    "customers",
)


@dataclass(frozen=True)
class SeedCounts:
    """Rows inserted per table."""

    customers: int
    products: int
    orders: int
    order_items: int
    invoices: int
    payments: int
    sync_rows: int


def seed(
    url: str,
    customers: int = 2000,
    orders: int = 20000,
    days: int = 365,
    seed: int = DEFAULT_SEED,
    *,
    products: int = 200,
    end_date: datetime.date | None = None,
    replace: bool = False,
) -> SeedCounts:
    """Create the schema at `url` if needed and fill it with sample data.

    Orders are dated over the `days` days that end on `end_date` (default:
    today). Raises ValueError when the database already has customers, unless
    `replace` is true, which deletes every ERP row first.
    """
    if customers < 1 or products < 1 or orders < 0 or days < 1:
        raise ValueError(
            "seed needs customers >= 1, products >= 1, orders >= 0 and days >= 1"
        )

    started = time.monotonic()
    end_date = end_date or datetime.date.today()
    tables = generate_rows(
        random.Random(seed), customers, products, orders, days, end_date
    )

    with connect(url) as db:
        db.init_schema()
        with db.transaction():
            if replace:
                _delete_all(db)
            elif db.fetch_all_sql("SELECT id FROM customers LIMIT 1"):
                raise ValueError(
                    "the ERP database already has customers; seed only an empty "
                    "database, or pass replace=True (--replace) to delete all ERP "
                    "rows first"
                )

            for table, columns in COLUMNS.items():
                db.insert_many(table, columns, tables[table])
            if db.dialect == "postgresql":
                _reset_identities(db)

    counts = SeedCounts(
        customers=len(tables["customers"]),
        products=len(tables["products"]),
        orders=len(tables["orders"]),
        order_items=len(tables["order_items"]),
        invoices=len(tables["invoices"]),
        payments=len(tables["payments"]),
        sync_rows=len(tables["zoho_sync_queue"]),
    )
    log.info("seeded the ERP in %.1f s: %s", time.monotonic() - started, counts)
    return counts


def seed_tiny(
    url: str, seed: int = DEFAULT_SEED, end_date: datetime.date | None = None
) -> SeedCounts:
    """Seed a tiny ERP for tests: 20 customers, 15 products, 50 orders."""
    return seed_erp(url, seed=seed, end_date=end_date, **TINY)


# seed() under another name, for functions whose own `seed` parameter hides it.
seed_erp = seed


def _delete_all(db: Database) -> None:
    if db.dialect == "postgresql":
        db.execute_sql(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY")
        return
    for table in TABLES:
        db.execute_sql(f"DELETE FROM {table}")


def _reset_identities(db: Database) -> None:
    # COPY wrote explicit ids, so each identity sequence must move past them.
    for table in TABLES:
        db.execute_sql(
            f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
            f"(SELECT COALESCE(MAX(id), 0) + 1 FROM {table}), false)"
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m tshjobs.erp.seed",
        description="Fill an empty ERP database with sample data.",
    )
    parser.add_argument("url", help="postgresql://... or sqlite:///path")
    parser.add_argument("--customers", type=int, default=2000)
    parser.add_argument("--orders", type=int, default=20000)
    parser.add_argument("--products", type=int, default=200)
    parser.add_argument("--days", type=int, default=365, help="days of orders")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument(
        "--end-date",
        type=datetime.date.fromisoformat,
        help="date of the last orders, YYYY-MM-DD (default: today)",
    )
    parser.add_argument(
        "--tiny", action="store_true", help="20 customers, 15 products, 50 orders"
    )
    parser.add_argument(
        "--replace", action="store_true", help="delete all ERP rows first"
    )
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    sizes = (
        TINY
        if args.tiny
        else {
            "customers": args.customers,
            "orders": args.orders,
            "products": args.products,
        }
    )
    seed_erp(
        args.url,
        days=args.days,
        seed=args.seed,
        end_date=args.end_date,
        replace=args.replace,
        **sizes,
    )


if __name__ == "__main__":
    main()
