"""Orders, invoices and payments written by the demo's ERP simulator, as
methods of ErpRepository.

The real ERP writes these rows itself; tshjobs only reads them. Totals are
exact Decimal sums of the line items, and a payment updates its invoice's
amount_paid and status in the same transaction.
"""

from __future__ import annotations

import datetime
import logging
import uuid
from collections.abc import Sequence
from decimal import Decimal

from tshjobs.erp.db import Database
from tshjobs.erp.rows import to_decimal
from tshjobs.erp.sqlite_values import format_amount
from tshjobs.errors import EntityNotFound

log = logging.getLogger(__name__)

ORDER_STATUSES = ("draft", "confirmed", "shipped", "delivered", "cancelled")
PAYMENT_METHODS = ("cash", "bank_transfer", "card", "cheque", "other")


def order_number(order_id: int) -> str:
    return f"SO-{order_id:06d}"


def invoice_number(invoice_id: int) -> str:
    return f"INV-{invoice_id:06d}"


def payment_number(payment_id: int) -> str:
    return f"PAY-{payment_id:06d}"


def _provisional_number() -> str:
    # Numbers derive from the new row's id, which exists only after the
    # INSERT, so the row starts with a unique placeholder that the same
    # transaction replaces.
    return "NEW-" + uuid.uuid4().hex


class ErpWritesMixin:
    """The write-side helpers of ErpRepository for the ERP simulator."""

    db: Database

    def create_order(
        self,
        customer_id: int,
        items: Sequence[tuple[int, int]],
        order_date: datetime.date,
        *,
        status: str = "confirmed",
        currency: str = "USD",
    ) -> int:
        """Insert an order of `(product_id, quantity)` items at the products'
        current prices and return its id. The total is the exact sum of the
        lines.

        Raises EntityNotFound for an unknown customer or product, ValueError
        for an empty order, a quantity below 1 or an unknown status.
        """
        if not items:
            raise ValueError("an order needs at least one line item")
        if status not in ORDER_STATUSES:
            raise ValueError(
                f"unknown order status {status!r}; allowed: "
                + ", ".join(ORDER_STATUSES)
            )
        for product_id, quantity in items:
            if not isinstance(quantity, int) or quantity < 1:
                raise ValueError(
                    f"quantity of product {product_id} must be a whole number of "
                    f"at least 1, got {quantity!r}"
                )

        with self.db.transaction():
            self.get_customer(customer_id)
            prices = {
                product_id: self.get_product(product_id).unit_price
                for product_id in {product_id for product_id, _ in items}
            }
            total = sum(
                (prices[product_id] * quantity for product_id, quantity in items),
                Decimal("0.00"),
            )

            row = self.db.fetch_one(
                "insert_order",
                {
                    "order_number": _provisional_number(),
                    "customer_id": customer_id,
                    "order_date": order_date,
                    "status": status,
                    "total": total,
                    "currency": currency,
                },
            )
            order_id = row["id"]
            self.db.execute(
                "set_order_number",
                {"order_id": order_id, "order_number": order_number(order_id)},
            )
            self.db.execute_many(
                "insert_order_item",
                [
                    {
                        "order_id": order_id,
                        "product_id": product_id,
                        "quantity": quantity,
                        "unit_price": prices[product_id],
                    }
                    for product_id, quantity in items
                ],
            )

        log.info("created order %s total %s %s", order_id, total, currency)
        return order_id

    def create_invoice_for_order(
        self,
        order_id: int,
        issue_date: datetime.date,
        due_days: int = 30,
        *,
        status: str = "sent",
    ) -> int:
        """Insert an invoice for the whole of an order, due `due_days` after
        `issue_date`, and return its id.

        Raises EntityNotFound for an unknown order, ValueError when the order
        is cancelled or already has an invoice that is not void.
        """
        if due_days < 0:
            raise ValueError(f"due_days must be 0 or more, got {due_days}")
        if status not in ("draft", "sent"):
            raise ValueError(f"a new invoice is draft or sent, not {status!r}")

        with self.db.transaction():
            order = self.db.fetch_one("get_order", {"order_id": order_id})
            if order is None:
                raise EntityNotFound("order", order_id)
            if order["status"] == "cancelled":
                raise ValueError(
                    f"order {order_id} is cancelled and cannot be invoiced"
                )

            existing = self.db.fetch_one(
                "find_open_invoice_for_order", {"order_id": order_id}
            )
            if existing is not None:
                raise ValueError(
                    f"order {order_id} already has invoice {existing['id']}; void it "
                    "before invoicing the order again"
                )

            row = self.db.fetch_one(
                "insert_invoice",
                {
                    "invoice_number": _provisional_number(),
                    "order_id": order_id,
                    "customer_id": order["customer_id"],
                    "issue_date": issue_date,
                    "due_date": issue_date + datetime.timedelta(days=due_days),
                    "total": to_decimal(order["total"]),
                    "amount_paid": Decimal("0.00"),
                    "status": status,
                    "currency": order["currency"],
                },
            )
            invoice_id = row["id"]
            self.db.execute(
                "set_invoice_number",
                {
                    "invoice_id": invoice_id,
                    "invoice_number": invoice_number(invoice_id),
                },
            )

        log.info("created invoice %s for order %s", invoice_id, order_id)
        return invoice_id

    def record_payment(
        self,
        invoice_id: int,
        amount: Decimal,
        payment_date: datetime.date,
        method: str = "bank_transfer",
        reference: str | None = None,
    ) -> int:
        """Insert a payment against an invoice and return its id.

        Adds `amount` to the invoice's amount_paid and sets its status to
        'paid' when nothing is left to pay. Raises EntityNotFound for an
        unknown invoice, ValueError for an amount that is not positive, has
        more than two decimals or exceeds the balance, for an unknown method,
        or for an invoice that is not 'sent'.
        """
        if not isinstance(amount, Decimal):
            raise TypeError(f"amount must be a Decimal, got {type(amount).__name__}")
        format_amount(amount)
        if amount <= 0:
            raise ValueError(f"payment amount must be positive, got {amount}")
        if method not in PAYMENT_METHODS:
            raise ValueError(
                f"unknown payment method {method!r}; allowed: "
                + ", ".join(PAYMENT_METHODS)
            )

        with self.db.transaction():
            invoice = self.db.fetch_one(
                "get_invoice_for_payment", {"invoice_id": invoice_id}
            )
            if invoice is None:
                raise EntityNotFound("invoice", invoice_id)
            if invoice["status"] != "sent":
                raise ValueError(
                    f"invoice {invoice_id} is {invoice['status']}; only a sent "
                    "invoice takes payments"
                )

            total = to_decimal(invoice["total"])
            balance = total - to_decimal(invoice["amount_paid"])
            if amount > balance:
                raise ValueError(
                    f"payment {amount} exceeds the balance {balance} of invoice "
                    f"{invoice_id}"
                )
            paid = total - balance + amount

            row = self.db.fetch_one(
                "insert_payment",
                {
                    "payment_number": _provisional_number(),
                    "invoice_id": invoice_id,
                    "customer_id": invoice["customer_id"],
                    "payment_date": payment_date,
                    "amount": amount,
                    "method": method,
                    "reference": reference,
                },
            )
            payment_id = row["id"]
            self.db.execute(
                "set_payment_number",
                {
                    "payment_id": payment_id,
                    "payment_number": payment_number(payment_id),
                },
            )
            self.db.execute(
                "update_invoice_payment",
                {
                    "invoice_id": invoice_id,
                    "amount_paid": paid,
                    "status": "paid" if paid == total else "sent",
                },
            )

        log.info(
            "recorded payment %s of %s on invoice %s", payment_id, amount, invoice_id
        )
        return payment_id
