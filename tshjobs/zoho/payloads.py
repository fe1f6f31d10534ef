"""Zoho Books request bodies built from ERP rows.

Every record carries the ERP id in the unique custom field `cf_erp_id`
("C-17" for customer 17), which the sync upserts by, so that a retried
create updates the record it made instead of adding a second one. Amounts
are `Decimal`, rounded to the organisation's price precision by the caller's
`round_amount`. Dates are the ERP's local dates. They are the
organisation's dates when both keep the company's time zone.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable
from decimal import Decimal

from tshjobs.erp.models import Customer, Invoice, LineItem, Order, Payment, Product

ERP_ID_FIELD = "cf_erp_id"

# The prefix of each entity type's cf_erp_id value.
ERP_ID_PREFIXES = {
    "customer": "C",
    "product": "P",
    "order": "SO",
    "invoice": "INV",
    "payment": "PAY",
}

# Zoho's length limits for names: contact_name 200, item name 100.
CONTACT_NAME_MAX = 200
ITEM_NAME_MAX = 100

Rounder = Callable[[Decimal], Decimal]


def erp_id(entity_type: str, entity_id: int) -> str:
    """Return the cf_erp_id value of an ERP entity, e.g. "C-17"."""
    return f"{ERP_ID_PREFIXES[entity_type]}-{entity_id}"


def custom_fields(entity_type: str, entity_id: int) -> list[dict]:
    return [{"api_name": ERP_ID_FIELD, "value": erp_id(entity_type, entity_id)}]


def normalize_name(name: str) -> str:
    """Return the form in which Zoho compares contact names: NFC, trimmed,
    case-folded."""
    return unicodedata.normalize("NFC", name).strip().casefold()


def contact_name(customer: Customer, disambiguate: bool) -> str:
    """Return the contact name for a customer. Two customers with the same
    name cannot both have it in Zoho (code 3062), so every one but the
    first by ERP id gets its ERP id appended, the same way every time."""
    name = unicodedata.normalize("NFC", customer.name).strip()
    suffix = f" ({erp_id('customer', customer.id)})" if disambiguate else ""
    return name[: CONTACT_NAME_MAX - len(suffix)] + suffix


def contact_body(customer: Customer, name: str) -> dict:
    body = {
        "contact_name": name,
        "contact_type": "customer",
        "custom_fields": custom_fields("customer", customer.id),
    }
    if customer.email:
        person = {"email": customer.email, "is_primary_contact": True}
        if customer.phone:
            person["phone"] = customer.phone
        body["contact_persons"] = [person]
    return body


def item_body(product: Product, round_amount: Rounder) -> dict:
    return {
        "name": unicodedata.normalize("NFC", product.name).strip()[:ITEM_NAME_MAX],
        "sku": product.sku,
        "rate": round_amount(product.unit_price),
        "product_type": "goods",
        "custom_fields": custom_fields("product", product.id),
    }


def line_items(
    items: list[LineItem], item_ids: dict[int, str], round_amount: Rounder
) -> list[dict]:
    return [
        {
            "item_id": item_ids[line.product_id],
            "quantity": line.quantity,
            "rate": round_amount(line.unit_price),
        }
        for line in items
    ]


def salesorder_body(
    order: Order, contact_id: str, item_ids: dict[int, str], round_amount: Rounder
) -> dict:
    return {
        "customer_id": contact_id,
        "date": order.order_date.isoformat(),
        "reference_number": order.order_number,
        "line_items": line_items(order.items, item_ids, round_amount),
        "custom_fields": custom_fields("order", order.id),
    }


def invoice_lines_add_up(invoice: Invoice, round_amount: Rounder) -> bool:
    """Tell whether the invoice's lines, rounded as Zoho rounds them, add up
    to its total. An invoice without an order has no lines."""
    lines = sum(
        (round_amount(line.unit_price) * line.quantity for line in invoice.items),
        Decimal(0),
    )
    return bool(invoice.items) and lines == round_amount(invoice.total)


def invoice_body(
    invoice: Invoice, contact_id: str, item_ids: dict[int, str], round_amount: Rounder
) -> dict:
    """Return the invoice. When its lines do not add up to the ERP's total,
    Zoho gets one line of that total, so that both show the same amount
    owed."""
    if invoice_lines_add_up(invoice, round_amount):
        lines = line_items(invoice.items, item_ids, round_amount)
    else:
        lines = [
            {
                "name": f"Invoice {invoice.invoice_number}",
                "quantity": 1,
                "rate": round_amount(invoice.total),
            }
        ]
    return {
        "customer_id": contact_id,
        "invoice_number": invoice.invoice_number,
        "date": invoice.issue_date.isoformat(),
        "due_date": invoice.due_date.isoformat(),
        "line_items": lines,
        "custom_fields": custom_fields("invoice", invoice.id),
    }


def payment_body(
    payment: Payment,
    contact_id: str,
    invoice_id: str | None,
    round_amount: Rounder,
) -> dict:
    amount = round_amount(payment.amount)
    body = {
        "customer_id": contact_id,
        "payment_mode": payment.method,
        "amount": amount,
        "date": payment.payment_date.isoformat(),
        "reference_number": payment.reference or payment.payment_number,
        "custom_fields": custom_fields("payment", payment.id),
    }
    if invoice_id is not None:
        body["invoices"] = [{"invoice_id": invoice_id, "amount_applied": amount}]
    return body
