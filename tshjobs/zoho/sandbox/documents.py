"""Sales orders, invoices and customer payments.

Totals are Decimal sums of line totals, each rounded half up to the
organisation's price precision. A payment's `invoices` entries lower the
balance of each invoice it pays, in the same store transaction as the payment.
"""

from __future__ import annotations

from decimal import Decimal

from tshjobs.zoho.sandbox import fields
from tshjobs.zoho.sandbox.amounts import parse_amount, parse_number, quantize
from tshjobs.zoho.sandbox.entities import Kind, UniqueRule
from tshjobs.zoho.sandbox.errors import already_exists, invalid_field
from tshjobs.zoho.sandbox.fields import Context

DOCUMENT_OPTIONAL_FIELDS = ("notes", "terms", "shipment_date", "salesperson_name")


def _customer(payload: dict, record: dict, context: Context) -> None:
    """Set customer_id and customer_name from the payload or keep them."""
    if "customer_id" not in payload and "customer_id" in record:
        return

    customer_id = payload.get("customer_id")
    if not isinstance(customer_id, str | int) or customer_id == "":
        raise invalid_field("customer_id", "a contact id is required")
    contact = context.store.get("contacts", str(customer_id))
    if contact is None:
        raise invalid_field("customer_id", f"no contact has the id {customer_id}")

    record["customer_id"] = contact["contact_id"]
    record["customer_name"] = contact["contact_name"]


def _line_items(payload: dict, context: Context) -> list[dict]:
    line_items = payload.get("line_items")
    if not isinstance(line_items, list) or not line_items:
        raise invalid_field("line_items", "at least one line item is required")

    return [_line_item(line, context) for line in line_items]


def _line_item(line, context: Context) -> dict:
    if not isinstance(line, dict):
        raise invalid_field("line_items", "each line item must be an object")
    precision = context.config.price_precision

    item = None
    if line.get("item_id") not in (None, ""):
        item = context.store.get("items", str(line["item_id"]))
        if item is None:
            raise invalid_field("item_id", f"no item has the id {line['item_id']}")
    elif not line.get("name"):
        raise invalid_field("line_items", "each line item needs an item_id or a name")

    quantity = parse_number(line.get("quantity", 1), "quantity")
    if quantity <= 0:
        raise invalid_field("quantity", f"must be more than 0, not {quantity}")

    if line.get("rate") is not None:
        rate = parse_amount(line["rate"], "rate", precision)
    elif item is not None:
        rate = item["rate"]
    else:
        raise invalid_field("rate", "a line item without an item_id needs a rate")

    return {
        "line_item_id": context.store.new_id(),
        "item_id": item["item_id"] if item else "",
        "name": fields.text(line, "name", max_length=100)
        or (item["name"] if item else ""),
        "description": fields.text(line, "description", max_length=2000) or "",
        "quantity": quantity,
        "rate": rate,
        "item_total": quantize(quantity * rate, precision),
    }


def _document_number(
    payload: dict, record: dict, context: Context, field: str, prefix: str, width: int
) -> None:
    """Set the document number: the next in the series, or the client's own
    when the query has ignore_auto_number_generation=true."""
    client_number = fields.text(payload, field, max_length=100)
    if context.flag("ignore_auto_number_generation"):
        if not client_number and field not in record:
            raise invalid_field(
                field, "required when ignore_auto_number_generation is true"
            )
        if client_number:
            record[field] = client_number
    elif client_number and client_number != record.get(field):
        raise invalid_field(
            field,
            "numbers are generated automatically; send "
            "ignore_auto_number_generation=true to set your own",
        )

    if field not in record:
        number = context.store.next_number(field)
        record[field] = f"{prefix}{number:0{width}d}"


def _build_document(
    payload: dict, previous: dict | None, context: Context, defaults: dict
) -> dict:
    record = dict(previous or defaults)
    _customer(payload, record, context)
    record["date"] = fields.iso_date(
        payload, "date", record.get("date", context.today())
    )
    if previous is None or "reference_number" in payload:
        record["reference_number"] = (
            fields.text(payload, "reference_number", max_length=50) or ""
        )
    if previous is None or "line_items" in payload:
        record["line_items"] = _line_items(payload, context)
    fields.copy_optional(payload, record, DOCUMENT_OPTIONAL_FIELDS)

    record["currency_code"] = context.config.currency_code
    total = sum((line["item_total"] for line in record["line_items"]), Decimal(0))
    record["sub_total"] = quantize(total, context.config.price_precision)
    record["total"] = record["sub_total"]
    record["custom_fields"] = fields.merge_custom_fields(
        payload, record.get("custom_fields", [])
    )
    return record


# Sales orders --------------------------------------------------------------


def build_salesorder(payload: dict, previous: dict | None, context: Context) -> dict:
    record = _build_document(payload, previous, context, {"status": "draft"})
    _document_number(payload, record, context, "salesorder_number", "SO-", 5)
    return record


SALESORDERS = Kind(
    name="salesorders",
    key="salesorder",
    id_field="salesorder_id",
    noun="Sales Order",
    created_message="Sales Order has been created.",
    updated_message="Sales Order has been updated.",
    build=build_salesorder,
    unique=(
        UniqueRule(
            key=lambda record: record["salesorder_number"],
            error=lambda record: already_exists(
                f'Sales Order "{record["salesorder_number"]}" already exists.'
            ),
        ),
    ),
    filters={
        "reference_number": lambda r, v: r.get("reference_number") == v,
        "salesorder_number": lambda r, v: r.get("salesorder_number") == v,
        "customer_id": lambda r, v: r.get("customer_id") == v,
        "status": lambda r, v: v.lower() == "all" or r.get("status") == v.lower(),
    },
)


# Invoices ------------------------------------------------------------------


def build_invoice(payload: dict, previous: dict | None, context: Context) -> dict:
    record = _build_document(payload, previous, context, {"status": "draft"})
    _document_number(payload, record, context, "invoice_number", "INV-", 6)

    record["due_date"] = fields.iso_date(
        payload, "due_date", record.get("due_date", record["date"])
    )
    if record["due_date"] < record["date"]:
        raise invalid_field("due_date", "the due date is before the invoice date")

    paid = (previous["total"] - previous["balance"]) if previous else Decimal(0)
    if record["total"] < paid:
        raise invalid_field(
            "line_items",
            f"the new total {record['total']} is less than the {paid} already paid",
        )
    _set_balance(record, record["total"] - paid, context)
    return record


def _set_balance(invoice: dict, balance: Decimal, context: Context) -> None:
    invoice["balance"] = quantize(balance, context.config.price_precision)
    invoice["payment_made"] = quantize(
        invoice["total"] - balance, context.config.price_precision
    )
    if balance == 0 and invoice["total"] > 0:
        invoice["status"] = "paid"
    elif balance < invoice["total"]:
        invoice["status"] = "partially_paid"
    else:
        invoice["status"] = "draft"


INVOICES = Kind(
    name="invoices",
    key="invoice",
    id_field="invoice_id",
    noun="Invoice",
    created_message="The invoice has been created.",
    updated_message="Invoice information has been updated.",
    build=build_invoice,
    unique=(
        UniqueRule(
            key=lambda record: record["invoice_number"],
            error=lambda record: already_exists(
                f'Invoice "{record["invoice_number"]}" already exists.'
            ),
        ),
    ),
    filters={
        "invoice_number": lambda r, v: r.get("invoice_number") == v,
        "reference_number": lambda r, v: r.get("reference_number") == v,
        "customer_id": lambda r, v: r.get("customer_id") == v,
        "status": lambda r, v: v.lower() == "all" or r.get("status") == v.lower(),
    },
)


# Customer payments ---------------------------------------------------------


def build_payment(payload: dict, previous: dict | None, context: Context) -> dict:
    record = dict(previous or {})
    precision = context.config.price_precision

    _customer(payload, record, context)
    if previous is None or "amount" in payload:
        if payload.get("amount") is None:
            raise invalid_field("amount", "a value is required")
        record["amount"] = parse_amount(
            payload["amount"], "amount", precision, positive=True
        )
    record["date"] = fields.iso_date(
        payload, "date", record.get("date", context.today())
    )
    record["payment_mode"] = fields.text(payload, "payment_mode", max_length=100) or (
        record.get("payment_mode", "cash")
    )
    if previous is None or "reference_number" in payload:
        record["reference_number"] = (
            fields.text(payload, "reference_number", max_length=100) or ""
        )
    fields.copy_optional(payload, record, ("description", "bank_charges"))
    if "invoices" in payload or previous is None:
        record["invoices"] = _applications(payload.get("invoices", []), context)

    applied = sum((entry["amount_applied"] for entry in record["invoices"]), Decimal(0))
    if applied > record["amount"]:
        raise invalid_field(
            "invoices",
            f"the amounts applied ({applied}) exceed the payment amount "
            f"({record['amount']})",
        )
    record["unused_amount"] = quantize(record["amount"] - applied, precision)

    if "payment_number" not in record:
        record["payment_number"] = str(context.store.next_number("payment_number"))
    record["currency_code"] = context.config.currency_code
    record["custom_fields"] = fields.merge_custom_fields(
        payload, record.get("custom_fields", [])
    )
    return record


def _applications(entries, context: Context) -> list[dict]:
    if not isinstance(entries, list):
        raise invalid_field("invoices", "expected a list")

    applications = []
    for entry in entries:
        if not isinstance(entry, dict) or not entry.get("invoice_id"):
            raise invalid_field("invoices", "each entry needs an invoice_id")
        invoice = context.store.get("invoices", str(entry["invoice_id"]))
        if invoice is None:
            raise invalid_field(
                "invoice_id", f"no invoice has the id {entry['invoice_id']}"
            )
        amount = parse_amount(
            entry.get("amount_applied"),
            "amount_applied",
            context.config.price_precision,
            positive=True,
        )
        applications.append(
            {
                "invoice_id": invoice["invoice_id"],
                "invoice_number": invoice["invoice_number"],
                "amount_applied": amount,
            }
        )
    return applications


def apply_payment(
    record: dict, previous: dict | None, context: Context
) -> list[tuple[str, str, dict]]:
    """Return the invoices whose balances change when `record` replaces
    `previous`, as (entity, id, record) changes.

    Raise when an application exceeds an invoice's balance or names an
    invoice of another customer.
    """
    invoices: dict[str, dict] = {}

    def invoice(invoice_id: str) -> dict:
        if invoice_id not in invoices:
            invoices[invoice_id] = context.store.get("invoices", invoice_id)
        return invoices[invoice_id]

    for entry in (previous or {}).get("invoices", []):
        undone = invoice(entry["invoice_id"])
        _set_balance(undone, undone["balance"] + entry["amount_applied"], context)

    for entry in record["invoices"]:
        target = invoice(entry["invoice_id"])
        if target["customer_id"] != record["customer_id"]:
            raise invalid_field(
                "invoice_id",
                f"invoice {target['invoice_number']} belongs to another customer",
            )
        if entry["amount_applied"] > target["balance"]:
            raise invalid_field(
                "amount_applied",
                f"{entry['amount_applied']} is more than the balance "
                f"{target['balance']} of invoice {target['invoice_number']}",
            )
        _set_balance(target, target["balance"] - entry["amount_applied"], context)

    return [("invoices", invoice_id, data) for invoice_id, data in invoices.items()]


CUSTOMERPAYMENTS = Kind(
    name="customerpayments",
    key="payment",
    id_field="payment_id",
    noun="Payment",
    created_message="The payment has been created.",
    updated_message="The payment has been updated.",
    build=build_payment,
    side_effects=apply_payment,
    filters={
        "reference_number": lambda r, v: r.get("reference_number") == v,
        "customer_id": lambda r, v: r.get("customer_id") == v,
        "payment_mode": lambda r, v: r.get("payment_mode") == v,
    },
)
