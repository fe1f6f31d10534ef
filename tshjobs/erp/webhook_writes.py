"""Payments and invoice balances reported by Zoho Books webhooks, written to
the ERP as methods of ErpRepository.

Both writes are idempotent. A payment carries its Zoho id
(payments.zoho_payment_id), so a second copy finds the first and inserts
nothing. An invoice balance is applied as an absolute amount, so applying it
twice changes nothing the second time. Each runs in one transaction that
first locks the invoice row (get_invoice_for_payment), so two workers
writing to one invoice take turns.

A payment and the invoice balance it causes arrive as two webhooks in either
order. amount_paid is therefore the larger of the current value and the sum
of the ERP payments, so the same money is never counted twice.
"""

from __future__ import annotations

import datetime
import logging
from dataclasses import dataclass
from decimal import Decimal

from tshjobs.erp.db import Database
from tshjobs.erp.rows import to_decimal
from tshjobs.erp.sqlite_values import format_amount
from tshjobs.erp.writes import PAYMENT_METHODS, _provisional_number, payment_number
from tshjobs.errors import EntityNotFound, PermanentError

log = logging.getLogger(__name__)


class ZohoChangeConflict(PermanentError):
    """Raised when a change reported by Zoho Books does not fit the ERP row:
    the invoice is void, the totals differ, or the payments would exceed the
    invoice total. A person must reconcile the two by hand."""


@dataclass(frozen=True)
class InvoicePaymentChange:
    """amount_paid and status of an ERP invoice before and after a write."""

    invoice_id: int
    amount_paid_before: Decimal
    amount_paid: Decimal
    status_before: str
    status: str

    @property
    def changed(self) -> bool:
        return (self.amount_paid_before, self.status_before) != (
            self.amount_paid,
            self.status,
        )


def _check_amount(name: str, amount: Decimal) -> None:
    if not isinstance(amount, Decimal):
        raise TypeError(f"{name} must be a Decimal, got {type(amount).__name__}")
    format_amount(amount)


def _status_for(paid: Decimal, total: Decimal, status_before: str) -> str:
    """Return 'paid' when nothing is left to pay. Otherwise a partly paid
    invoice is 'sent', and an unpaid one keeps its status unless it was
    'paid' (a payment removed in Zoho)."""
    if paid == total:
        return "paid"
    if paid > 0 or status_before == "paid":
        return "sent"
    return status_before


class ZohoWebhookWritesMixin:
    """The webhook write methods of ErpRepository."""

    db: Database

    def find_invoice_id_by_zoho_id(self, zoho_invoice_id: str) -> int | None:
        row = self.db.fetch_one("find_invoice_by_zoho_id", {"zoho_id": zoho_invoice_id})
        return row["id"] if row else None

    def find_payment_id_by_zoho_id(self, zoho_payment_id: str) -> int | None:
        row = self.db.fetch_one("find_payment_by_zoho_id", {"zoho_id": zoho_payment_id})
        return row["id"] if row else None

    def _lock_invoice(self, invoice_id: int) -> dict:
        invoice = self.db.fetch_one(
            "get_invoice_for_payment", {"invoice_id": invoice_id}
        )
        if invoice is None:
            raise EntityNotFound("invoice", invoice_id)
        if invoice["status"] == "void":
            raise ZohoChangeConflict(
                f"invoice {invoice_id} is void in the ERP but has payments in "
                "Zoho Books"
            )
        return invoice

    def _write_amount_paid(self, invoice: dict, paid: Decimal) -> InvoicePaymentChange:
        total = to_decimal(invoice["total"])
        change = InvoicePaymentChange(
            invoice_id=invoice["id"],
            amount_paid_before=to_decimal(invoice["amount_paid"]),
            amount_paid=paid,
            status_before=invoice["status"],
            status=_status_for(paid, total, invoice["status"]),
        )
        if change.changed:
            self.db.execute(
                "update_invoice_payment",
                {"invoice_id": invoice["id"], "amount_paid": paid,
                 "status": change.status},
            )  # fmt: skip
        return change

    def apply_zoho_invoice_balance(
        self, invoice_id: int, balance: Decimal, zoho_total: Decimal | None = None
    ) -> InvoicePaymentChange:
        """Set the invoice's amount_paid to its total minus Zoho's `balance`,
        and its status to match ('paid' when the balance is 0).

        Raises EntityNotFound for an unknown invoice, ZohoChangeConflict when
        the invoice is void, when `zoho_total` differs from the ERP total, or
        when the balance is below 0 or above the total.
        """
        _check_amount("balance", balance)

        with self.db.transaction():
            invoice = self._lock_invoice(invoice_id)
            total = to_decimal(invoice["total"])
            if zoho_total is not None and zoho_total != total:
                raise ZohoChangeConflict(
                    f"invoice {invoice_id} totals {total} in the ERP and "
                    f"{zoho_total} in Zoho Books"
                )
            if not 0 <= balance <= total:
                raise ZohoChangeConflict(
                    f"Zoho Books balance {balance} of invoice {invoice_id} is not "
                    f"between 0 and its total {total}"
                )
            change = self._write_amount_paid(invoice, total - balance)

        if change.changed:
            log.info(
                "invoice %s amount_paid %s -> %s from Zoho Books",
                invoice_id, change.amount_paid_before, change.amount_paid,
            )  # fmt: skip
        return change

    def record_zoho_payment(
        self,
        invoice_id: int,
        amount: Decimal,
        payment_date: datetime.date,
        zoho_payment_id: str,
        method: str = "other",
        reference: str | None = None,
    ) -> tuple[int, InvoicePaymentChange] | None:
        """Insert a payment recorded in Zoho Books against an ERP invoice,
        unless a payment with this Zoho id exists, and update the invoice's
        amount_paid and status. Return the new payment id and the invoice
        change, or None when the payment was there already.

        Raises EntityNotFound for an unknown invoice, ValueError for an amount
        that is not positive or an unknown method, ZohoChangeConflict when the
        invoice is void or its payments would exceed its total.
        """
        _check_amount("amount", amount)
        if amount <= 0:
            raise ValueError(f"payment amount must be positive, got {amount}")
        if method not in PAYMENT_METHODS:
            raise ValueError(
                f"unknown payment method {method!r}; allowed: "
                + ", ".join(PAYMENT_METHODS)
            )

        with self.db.transaction():
            invoice = self._lock_invoice(invoice_id)
            if self.find_payment_id_by_zoho_id(zoho_payment_id) is not None:
                return None

            total = to_decimal(invoice["total"])
            rows = self.db.fetch_all(
                "list_invoice_payment_amounts", {"invoice_id": invoice_id}
            )
            paid_by_payments = amount + sum(
                (to_decimal(row["amount"]) for row in rows), Decimal("0.00")
            )
            if paid_by_payments > total:
                raise ZohoChangeConflict(
                    f"Zoho Books payment {zoho_payment_id} of {amount} would bring "
                    f"the payments of invoice {invoice_id} to {paid_by_payments}, "
                    f"more than its total {total}"
                )

            payment_id = self._insert_zoho_payment(
                invoice, amount, payment_date, zoho_payment_id, method, reference
            )
            paid = max(to_decimal(invoice["amount_paid"]), paid_by_payments)
            change = self._write_amount_paid(invoice, paid)

        log.info(
            "recorded Zoho Books payment %s as payment %s of %s on invoice %s",
            zoho_payment_id, payment_id, amount, invoice_id,
        )  # fmt: skip
        return payment_id, change

    def _insert_zoho_payment(
        self, invoice, amount, payment_date, zoho_payment_id, method, reference
    ) -> int:
        row = self.db.fetch_one(
            "insert_zoho_payment",
            {
                "payment_number": _provisional_number(),
                "invoice_id": invoice["id"],
                "customer_id": invoice["customer_id"],
                "payment_date": payment_date,
                "amount": amount,
                "method": method,
                "reference": reference,
                "zoho_payment_id": zoho_payment_id,
            },
        )
        payment_id = row["id"]
        self.db.execute(
            "set_payment_number",
            {"payment_id": payment_id, "payment_number": payment_number(payment_id)},
        )
        return payment_id
