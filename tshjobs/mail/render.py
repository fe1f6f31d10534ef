"""Render the text and HTML bodies of an email from Jinja2 templates.

Each email kind has two templates in `templates/`. `NAME.txt` is rendered
with autoescaping off, because plain text must show `<` and `&` as they are.
`NAME.html` is rendered with autoescaping on, so a customer named `<script>`
shows as text. Both use StrictUndefined: a missing context value
raises instead of rendering as an empty string.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, StrictUndefined

TEMPLATE_DIR = Path(__file__).with_name("templates")

_MONTHS = (
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
)


@dataclass(frozen=True)
class RenderedBody:
    """The two alternative bodies of one email."""

    text: str
    html: str


def format_money(amount: Decimal | float, currency: str) -> str:
    """Format an amount with two decimals, thousands separators and the
    currency code, such as `1,234.50 IQD`; halves round away from zero."""
    value = Decimal(str(amount)).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)
    return f"{value:,.2f} {currency}".strip()


def format_date(value: datetime.date) -> str:
    """Format a date as `5 March 2025`, in English whatever the process
    locale is."""
    return f"{value.day} {_MONTHS[value.month - 1]} {value.year}"


def format_cell(value: object) -> str:
    """Format one report table cell: decimals with two places, dates as
    `format_date` does, None as an empty cell."""
    if value is None:
        return ""
    if isinstance(value, Decimal):
        return f"{value.quantize(Decimal('0.01'), rounding=ROUND_HALF_UP):,.2f}"
    if isinstance(value, datetime.date):
        return format_date(value)
    return str(value)


def _make_environment(autoescape: bool) -> Environment:
    environment = Environment(
        loader=FileSystemLoader(TEMPLATE_DIR),
        autoescape=autoescape,
        undefined=StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    environment.filters["money"] = format_money
    environment.filters["long_date"] = format_date
    environment.filters["cell"] = format_cell
    return environment


_text_environment = _make_environment(autoescape=False)
_html_environment = _make_environment(autoescape=True)


def render_body(template: str, context: Mapping[str, object]) -> RenderedBody:
    """Render `templates/<template>.txt` and `templates/<template>.html` with
    the same context."""
    text = _text_environment.get_template(f"{template}.txt").render(context)
    html = _html_environment.get_template(f"{template}.html").render(context)
    return RenderedBody(text=text, html=html)
