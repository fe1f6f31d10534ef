"""Exact amounts: JSON numbers read as Decimal and written back digit for digit.

The standard json module turns 0.30 into a float on the way in and cannot
write a Decimal as a number on the way out, so the sandbox parses with
`parse_float=Decimal` and writes JSON with `dumps` below.
"""

from __future__ import annotations

import json
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation

from tshjobs.zoho.sandbox.errors import invalid_field


def loads(text: str | bytes):
    """Parse JSON text, reading every non-integer number as a Decimal."""
    return json.loads(text, parse_float=Decimal)


def dumps(value) -> str:
    """Write value as JSON, with each Decimal as a number of its own digits."""
    if isinstance(value, Decimal):
        return _decimal_text(value)

    if isinstance(value, dict):
        members = (
            f"{json.dumps(str(key))}:{dumps(item)}" for key, item in value.items()
        )
        return "{" + ",".join(members) + "}"

    if isinstance(value, list | tuple):
        return "[" + ",".join(dumps(item) for item in value) + "]"

    return json.dumps(value, ensure_ascii=False)


def _decimal_text(value: Decimal) -> str:
    if not value.is_finite():
        raise ValueError(f"cannot write {value} as a JSON number")

    # "f" keeps 0.30 as 0.30 and writes 1E+2 as 100, which JSON readers accept.
    return format(value, "f")


def parse_number(value, field: str) -> Decimal:
    """Return value as a Decimal: a JSON number or a numeric string."""
    if isinstance(value, bool):
        raise invalid_field(field, "expected a number")

    if isinstance(value, int | Decimal):
        number = Decimal(value)
    elif isinstance(value, str):
        try:
            number = Decimal(value.strip())
        except InvalidOperation:
            raise invalid_field(field, f"{value!r} is not a number") from None
    else:
        raise invalid_field(field, "expected a number")

    if not number.is_finite():
        raise invalid_field(field, f"{value!r} is not a number")
    return number


def parse_amount(
    value, field: str, precision: int, *, positive: bool = False
) -> Decimal:
    """Return value as an amount with `precision` decimal places.

    An amount that cannot be written with `precision` places (0.305 with 2) is
    rejected rather than rounded, so a client that rounds wrongly finds out.
    """
    number = parse_number(value, field)

    try:
        quantized = quantize(number, precision)
    except InvalidOperation:
        raise invalid_field(field, f"{value} is too large") from None
    if quantized != number:
        raise invalid_field(
            field,
            f"{value} has more than {precision} decimal places, the "
            "organisation's price precision",
        )

    if number < 0 or (positive and number == 0):
        bound = "more than 0" if positive else "0 or more"
        raise invalid_field(field, f"must be {bound}, not {value}")
    return quantized


def quantize(number: Decimal, precision: int) -> Decimal:
    """Round number half up to `precision` decimal places."""
    return number.quantize(Decimal(1).scaleb(-precision), rounding=ROUND_HALF_UP)
