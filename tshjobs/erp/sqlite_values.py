"""Parameters in the storage forms of schema_sqlite.sql.

SQLite stores an amount as canonical text with two decimals ('12.30'), a date
as 'YYYY-MM-DD' and a timestamp as UTC 'YYYY-MM-DD HH:MM:SS' (a naive
datetime is taken to be UTC already). A float is rejected, because an amount
that went through a float may have lost cents.
"""

from __future__ import annotations

import datetime
from decimal import Decimal

CENT = Decimal("0.01")


def format_amount(value: Decimal) -> str:
    """Return the canonical SQLite text of an amount, such as '12.30'.

    Raises ValueError for a value with more than two decimals, a NaN or an
    infinity, instead of rounding it.
    """
    if not value.is_finite():
        raise ValueError(f"amount {value} is not a finite number")

    quantized = value.quantize(CENT)
    if quantized != value:
        raise ValueError(f"amount {value} has more than two decimal places")
    return f"{quantized:f}"


def sqlite_value(value):
    """Return a parameter in the form schema_sqlite.sql stores it."""
    if isinstance(value, Decimal):
        return format_amount(value)
    if isinstance(value, datetime.datetime):
        if value.tzinfo is not None:
            value = value.astimezone(datetime.UTC)
        return value.strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, datetime.date):
        return value.isoformat()
    if isinstance(value, float):
        raise TypeError(
            f"float parameter {value!r}: pass amounts as Decimal so that they "
            "stay exact"
        )
    return value


def sqlite_params(params: dict | None) -> dict:
    return {key: sqlite_value(value) for key, value in (params or {}).items()}
