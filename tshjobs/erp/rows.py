"""Conversion of ERP query rows into the dataclasses of tshjobs.erp.models.

PostgreSQL returns Decimal, date and datetime values; SQLite returns the text
forms of schema_sqlite.sql. Both end up as the same Python types here. A float
is rejected, because an amount that went through a float may have lost cents.
"""

from __future__ import annotations

import datetime
from decimal import Decimal, InvalidOperation

from tshjobs.erp.models import Customer, LineItem, Product
from tshjobs.erp.records import SyncQueueItem


def to_decimal(value) -> Decimal:
    """Return an amount from the database as a Decimal."""
    if isinstance(value, Decimal):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return Decimal(value)
    if isinstance(value, str):
        try:
            return Decimal(value)
        except InvalidOperation:
            raise ValueError(f"invalid amount {value!r} in the ERP database") from None
    raise TypeError(
        f"amount {value!r} has type {type(value).__name__}; an ERP query must "
        "return amounts as NUMERIC (PostgreSQL) or decimal text (SQLite)"
    )


def to_date(value) -> datetime.date:
    """Return a date column, a `date` or 'YYYY-MM-DD' text, as a date."""
    if isinstance(value, datetime.datetime):
        return value.date()
    if isinstance(value, datetime.date):
        return value
    if isinstance(value, str):
        return datetime.date.fromisoformat(value[:10])
    raise TypeError(f"date {value!r} has type {type(value).__name__}")


def to_datetime(value) -> datetime.datetime:
    """Return a timestamp column as an aware datetime. SQLite text is UTC."""
    if isinstance(value, str):
        value = datetime.datetime.fromisoformat(value)
    if not isinstance(value, datetime.datetime):
        raise TypeError(f"timestamp {value!r} has type {type(value).__name__}")
    if value.tzinfo is None:
        value = value.replace(tzinfo=datetime.UTC)
    return value


def customer_from_row(row: dict, prefix: str = "") -> Customer:
    """Build a Customer from the columns `{prefix}id`, `{prefix}name`, ..."""
    return Customer(
        id=row[f"{prefix}id"],
        name=row[f"{prefix}name"],
        email=row[f"{prefix}email"] or None,
        phone=row[f"{prefix}phone"] or None,
        zoho_contact_id=row[f"{prefix}zoho_contact_id"],
    )


def product_from_row(row: dict) -> Product:
    return Product(
        id=row["id"],
        sku=row["sku"],
        name=row["name"],
        unit_price=to_decimal(row["unit_price"]),
        stock_quantity=row["stock_quantity"],
        reorder_level=row["reorder_level"],
        zoho_item_id=row["zoho_item_id"],
    )


def line_item_from_row(row: dict) -> LineItem:
    return LineItem(
        product_id=row["product_id"],
        sku=row["sku"],
        name=row["name"],
        quantity=row["quantity"],
        unit_price=to_decimal(row["unit_price"]),
    )


def sync_item_from_row(row: dict) -> SyncQueueItem:
    return SyncQueueItem(
        id=row["id"],
        entity_type=row["entity_type"],
        entity_id=row["entity_id"],
        status=row["status"],
        attempts=row["attempts"],
        last_error=row["last_error"],
        created_at=to_datetime(row["created_at"]),
        updated_at=to_datetime(row["updated_at"]),
    )
