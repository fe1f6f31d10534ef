"""Compose the emails tshjobs sends, one function per kind.

Each function takes the ERP row it is about and the Settings, renders the
`templates/<kind>.txt` and `.html` pair, and returns an EmailMessage ready for
`SmtpSender.send`. The sender is `settings.mail_from` and the customer's
address comes from the ERP row; a customer without a usable address raises
MissingEmailAddress, which is a PermanentError.
"""

from __future__ import annotations

import datetime
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from email.headerregistry import Address
from email.message import EmailMessage

from tshjobs.erp.models import Customer, Invoice, Order, Payment
from tshjobs.errors import MissingEmailAddress
from tshjobs.mail.headers import InvalidMessageError, check_header_text
from tshjobs.mail.message import Attachment, build_message, parse_address
from tshjobs.mail.pdf import render_invoice_pdf
from tshjobs.mail.render import format_cell, render_body
from tshjobs.settings import Settings, sender_address

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReportTable:
    """One table of a report email: a title, column headings and rows of
    cells. Decimal cells show two decimals and dates show as `5 March 2025`;
    columns whose cells are all numbers are right-aligned."""

    title: str
    columns: Sequence[str]
    rows: Sequence[Sequence[object]]

    def __post_init__(self) -> None:
        for number, row in enumerate(self.rows, start=1):
            if len(row) != len(self.columns):
                raise ValueError(
                    f"report table {self.title!r}: row {number} has {len(row)} "
                    f"cells but there are {len(self.columns)} columns"
                )

    @property
    def alignments(self) -> list[str]:
        """HTML `align` value of each column: right for numeric columns."""
        alignments = []
        for index in range(len(self.columns)):
            cells = [row[index] for row in self.rows if row[index] is not None]
            numeric = bool(cells) and all(
                isinstance(cell, (int, float, Decimal)) and not isinstance(cell, bool)
                for cell in cells
            )
            alignments.append("right" if numeric else "left")
        return alignments

    @property
    def text(self) -> str:
        """The table as aligned plain-text columns for the text/plain part."""
        cells = [[format_cell(cell) for cell in row] for row in self.rows]
        widths = [len(column) for column in self.columns]
        for row in cells:
            for index, cell in enumerate(row):
                widths[index] = max(widths[index], len(cell))

        lines = [_text_row(self.columns, widths, self.alignments)]
        lines.append("  ".join("-" * width for width in widths))
        for row in cells:
            lines.append(_text_row(row, widths, self.alignments))
        if not cells:
            lines.append("(no rows)")
        return "\n".join(lines)


def _text_row(cells: Sequence[str], widths: list[int], alignments: list[str]):
    padded = []
    for cell, width, alignment in zip(cells, widths, alignments):
        if alignment == "right":
            padded.append(cell.rjust(width))
        else:
            padded.append(cell.ljust(width))
    return "  ".join(padded).rstrip()


def customer_address(customer: Customer) -> Address:
    """Return the customer's name and email address as an Address, or raise
    MissingEmailAddress naming the customer id and what is wrong."""
    email = customer.email
    if email is None or not email.strip():
        raise MissingEmailAddress(
            f"customer {customer.id} ({customer.name!r}) has no email address; "
            "add one in the ERP and retry"
        )

    try:
        address = parse_address(email)
    except InvalidMessageError as exc:
        raise MissingEmailAddress(
            f"customer {customer.id} ({customer.name!r}) has an invalid email "
            f"address: {exc}; correct it in the ERP and retry"
        ) from None

    # A line break in the name would let the ERP data add header lines.
    name = check_header_text((customer.name or "").strip(), "customer name")
    return Address(name, addr_spec=address.addr_spec)


def order_confirmation(order: Order, settings: Settings) -> EmailMessage:
    """Compose the confirmation of a new order, with its line items."""
    context = _base_context(settings, f"Order {order.order_number}")
    context.update(
        order=order,
        customer=order.customer,
        items=order.items,
        currency=order.currency,
        totals=[("Order total", order.total)],
    )
    return _compose(
        "order_confirmation",
        context,
        settings,
        to=customer_address(order.customer),
        subject=f"Order {order.order_number} confirmed",
    )


def invoice(invoice: Invoice, settings: Settings) -> EmailMessage:
    """Compose an invoice email with the invoice PDF attached as
    `invoice-<number>.pdf`."""
    to = customer_address(invoice.customer)
    filename = f"invoice-{_file_name_part(invoice.invoice_number)}.pdf"
    pdf = render_invoice_pdf(invoice, company_name=settings.company_name)

    context = _base_context(settings, f"Invoice {invoice.invoice_number}")
    context.update(
        invoice=invoice,
        customer=invoice.customer,
        items=invoice.items,
        currency=invoice.currency,
        totals=_invoice_totals(invoice),
        attachment_name=filename,
    )
    return _compose(
        "invoice",
        context,
        settings,
        to=to,
        subject=f"Invoice {invoice.invoice_number} from {settings.company_name}",
        attachments=[Attachment(filename, pdf, "application/pdf")],
    )


def payment_receipt(payment: Payment, settings: Settings) -> EmailMessage:
    """Compose the receipt of a payment, with the invoice it paid if any."""
    context = _base_context(settings, f"Payment receipt {payment.payment_number}")
    # NOTE: Payment rows carry no currency of their own, so a payment without
    # an invoice shows its amount without a currency code.
    currency = payment.invoice.currency if payment.invoice else ""
    context.update(
        payment=payment,
        customer=payment.customer,
        invoice=payment.invoice,
        currency=currency,
    )
    return _compose(
        "payment_receipt",
        context,
        settings,
        to=customer_address(payment.customer),
        subject=f"Payment receipt {payment.payment_number}",
    )


def welcome(customer: Customer, settings: Settings) -> EmailMessage:
    """Compose the welcome email of a new customer."""
    context = _base_context(settings, f"Welcome to {settings.company_name}")
    context.update(customer=customer)
    return _compose(
        "welcome",
        context,
        settings,
        to=customer_address(customer),
        subject=f"Welcome to {settings.company_name}",
    )


def overdue_reminder(
    invoice: Invoice, settings: Settings, as_of: datetime.date
) -> EmailMessage:
    """Compose a reminder that an invoice is past its due date on `as_of`.

    Raises ValueError when the invoice is not overdue on that date or has
    nothing left to pay, because such a reminder would be wrong."""
    days_overdue = (as_of - invoice.due_date).days
    if days_overdue <= 0:
        raise ValueError(
            f"invoice {invoice.invoice_number} is not overdue on "
            f"{as_of.isoformat()}: it is due on {invoice.due_date.isoformat()}"
        )
    if invoice.balance <= 0:
        raise ValueError(
            f"invoice {invoice.invoice_number} has no balance due "
            f"(total {invoice.total}, paid {invoice.amount_paid})"
        )

    context = _base_context(settings, f"Invoice {invoice.invoice_number} overdue")
    context.update(
        invoice=invoice,
        customer=invoice.customer,
        currency=invoice.currency,
        days_overdue=days_overdue,
        as_of=as_of,
    )
    return _compose(
        "overdue_reminder",
        context,
        settings,
        to=customer_address(invoice.customer),
        subject=f"Payment reminder: invoice {invoice.invoice_number} is overdue",
    )


def report(
    recipients: Sequence[str],
    subject: str,
    context: Mapping[str, object],
    attachments: Sequence[Attachment],
    settings: Settings,
    *,
    template: str = "report",
) -> EmailMessage:
    """Compose a periodic report (daily sales, low stock) for the management.

    The default `report` template reads these context keys, all optional:
    `title` (default: the subject), `intro` (a paragraph), `summary` (pairs of
    label and value) and `tables` (ReportTable objects). Another template
    pair under `templates/` can be named with `template`; it receives the
    same keys plus whatever else `context` contains. Raises InvalidMessageError
    when there is no recipient, such as with TSHJOBS_MANAGEMENT_EMAILS unset.
    """
    if not recipients:
        raise InvalidMessageError(
            f"report {subject!r} has no recipients; set TSHJOBS_MANAGEMENT_EMAILS"
        )
    to = [parse_address(recipient) for recipient in recipients]

    full_context = _base_context(settings, subject)
    full_context.update(
        intro="",
        summary=[],
        tables=[],
        attachment_names=[attachment.filename for attachment in attachments],
    )
    full_context.update(context)
    return _compose(
        template,
        full_context,
        settings,
        to=to,
        subject=subject,
        attachments=attachments,
    )


def _base_context(settings: Settings, title: str) -> dict[str, object]:
    return {"company_name": settings.company_name, "title": title}


def _compose(
    template: str,
    context: Mapping[str, object],
    settings: Settings,
    *,
    to: Address | Sequence[Address],
    subject: str,
    attachments: Sequence[Attachment] = (),
) -> EmailMessage:
    recipients = [to] if isinstance(to, Address) else list(to)
    body = render_body(template, context)
    message = build_message(
        sender=sender_address(settings),
        to=recipients,
        subject=subject,
        text=body.text,
        html=body.html,
        attachments=attachments,
    )
    log.info(
        "composed %s email %s for %d recipient(s)",
        template,
        message["Message-ID"],
        len(recipients),
    )
    return message


def _invoice_totals(invoice: Invoice) -> list[tuple[str, Decimal]]:
    totals = [("Invoice total", invoice.total)]
    if invoice.amount_paid:
        totals.append(("Paid", invoice.amount_paid))
        totals.append(("Balance due", invoice.balance))
    return totals


def _file_name_part(text: str) -> str:
    """Replace the characters that are unsafe in a file name (path separators,
    spaces, control characters) with `-`."""
    return re.sub(r"[^\w.-]+", "-", text).strip("-.") or "unnumbered"
