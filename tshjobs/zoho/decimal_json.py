"""JSON with exact decimal amounts: Decimal in, Decimal out, never a float.

Zoho Books amounts are decimals. Python's json module writes a Decimal only
through float, which turns 0.30 into 0.3 or 0.30000000000000004. So
`encode_json` writes request bodies with each Decimal's digits as they are,
and `decode_json` reads every JSON number with a fraction as a Decimal.
"""

from __future__ import annotations

import decimal
import json
from decimal import Decimal

# Zoho's default number of decimal places for prices and amounts.
DEFAULT_PRECISION = 2

_plain_encoder = json.JSONEncoder(ensure_ascii=False, allow_nan=False)


def encode_json(value) -> str:
    """Serialise `value` to JSON text, writing each Decimal exactly.

    Floats raise TypeError, because a binary float cannot hold an amount
    such as 0.1 exactly: pass a Decimal (or an int) instead. NaN and
    infinite Decimals raise ValueError."""
    return "".join(_encode(value))


def decode_json(text: str | bytes):
    """Parse JSON text, reading numbers with a fraction or exponent as
    Decimal and whole numbers as int."""
    return json.loads(text, parse_float=Decimal)


def round_amount(value, places: int = DEFAULT_PRECISION) -> Decimal:
    """Round an amount half up to `places` decimals, the organisation's
    `price_precision`: round_amount(Decimal("0.1") * 3) is Decimal("0.30")."""
    if isinstance(value, float):
        raise TypeError("amounts must be Decimal, int or str, not float")
    exponent = Decimal(1).scaleb(-places)
    return Decimal(value).quantize(exponent, rounding=decimal.ROUND_HALF_UP)


def _encode(value):
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise ValueError(f"cannot send {value} to Zoho: not a finite amount")
        yield format(value, "f")
    elif isinstance(value, float):
        raise TypeError(
            f"float {value!r} in a Zoho request body: use Decimal for amounts"
        )
    elif isinstance(value, dict):
        yield from _encode_object(value)
    elif isinstance(value, (list, tuple)):
        yield from _encode_array(value)
    else:
        # str, int, bool and None; anything else raises TypeError here.
        yield _plain_encoder.encode(value)


def _encode_object(value: dict):
    yield "{"
    for index, (key, item) in enumerate(value.items()):
        if not isinstance(key, str):
            raise TypeError(f"JSON object keys must be str, not {type(key).__name__}")
        if index:
            yield ", "
        yield _plain_encoder.encode(key)
        yield ": "
        yield from _encode(item)
    yield "}"


def _encode_array(value):
    yield "["
    for index, item in enumerate(value):
        if index:
            yield ", "
        yield from _encode(item)
    yield "]"
