"""Email tasks: the ERP calls these to send customer email in the background.

Each call enqueues and returns at once, e.g. `send_order_confirmation_email(42)`.
Every task is idempotent through the sent log (`tshjobs.outbox`): a kind of
email goes once to an entity, so a retry or a redelivered task sends nothing
twice. The one exception is an attempt that stopped after the message data
went to the SMTP server and before its reply (a worker killed, a connection
lost): SMTP cannot tell whether the server stored it, so the next attempt
sends it again with the same Message-ID (TSHJOBS_EMAIL_RESEND_UNCERTAIN).
Pass `force=True` to send a repeat.
"""

from __future__ import annotations

import datetime
import email.policy
import logging
from collections.abc import Callable
from email import message_from_bytes
from email.message import EmailMessage

from tshjobs.erp.queries import ErpRepository
from tshjobs.mail import compose
from tshjobs.mail.smtp import close_senders, get_sender
from tshjobs.outbox import SentLog
from tshjobs.queue import current_task_id, huey, task
from tshjobs.settings import Settings

logger = logging.getLogger(__name__)

EMAIL_RETRIES = 3

# Say QUIT to the SMTP server when the consumer stops, instead of dropping
# the connections that workers keep open between tasks.
huey.on_shutdown(name="close_smtp_senders")(close_senders)

_repositories: dict[tuple[str, str], ErpRepository] = {}
_sent_logs: dict[str, SentLog] = {}


def erp_repository(settings: Settings) -> ErpRepository:
    key = (settings.erp_database_url, settings.erp_queries_file)
    if key not in _repositories:
        _repositories[key] = ErpRepository(
            settings.erp_database_url, queries_file=settings.erp_queries_file or None
        )
    return _repositories[key]


def sent_log(settings: Settings) -> SentLog:
    path = str(settings.state_path)
    if path not in _sent_logs:
        _sent_logs[path] = SentLog(settings.state_path)
    return _sent_logs[path]


def deliver(
    kind: str,
    entity_id,
    build: Callable[[ErpRepository, Settings], EmailMessage],
    force: bool = False,
) -> str:
    """Build and send one email unless the sent log shows it went already.

    Return a one-line outcome for the audit log. Raises the mail and ERP
    errors of `tshjobs.errors`, which decide whether the task retries.
    """
    settings = huey.settings
    log = sent_log(settings)
    task_id = current_task_id()

    claim = log.claim(kind, entity_id, task_id, force=force,
                      resend_uncertain=settings.email_resend_uncertain)  # fmt: skip
    if claim is None:
        record = log.get(kind, entity_id)
        logger.info(
            "Skipped %s email for %s: already sent as %s",
            kind, entity_id, record.message_id, extra={"task_id": task_id},
        )  # fmt: skip
        return f"skipped: already sent to {record.recipient} as {record.message_id}"

    try:
        message = _message_to_send(claim, build, settings)
    except BaseException:
        log.release(claim)
        raise

    recipient = str(message["To"])
    message_id = str(message["Message-ID"])
    data = message.as_bytes()
    try:
        get_sender(settings).send(
            message,
            before_data=lambda: log.mark_sending(claim, recipient, message_id, data),
        )
    except BaseException as exc:
        log.release(claim, maybe_delivered=getattr(exc, "maybe_delivered", False))
        raise

    log.mark_sent(claim)
    logger.info(
        "Sent %s email for %s to %s as %s%s",
        kind, entity_id, recipient, message_id,
        " again: an earlier attempt may have delivered it"
        if claim.maybe_delivered else "",
        extra={"task_id": task_id},
    )  # fmt: skip
    again = " (again, same Message-ID)" if claim.maybe_delivered else ""
    return f"sent to {recipient} as {message_id}{again}"


def _message_to_send(claim, build, settings) -> EmailMessage:
    """Return the message an attempt sends: the bytes an earlier attempt
    may have delivered, unchanged, or a new message from the ERP."""
    if claim.message:
        # The copy is the same message with the same Message-ID, even if the
        # ERP row changed since, so a mail system that drops duplicate
        # Message-IDs keeps a correct one.
        return message_from_bytes(claim.message, policy=email.policy.default)

    message = build(erp_repository(settings), settings)
    if claim.message_id:
        # A sent log written before messages were stored: keep the ID.
        message.replace_header("Message-ID", claim.message_id)
    return message


@task(retries=EMAIL_RETRIES)
def send_order_confirmation_email(order_id: int, force: bool = False) -> str:
    """Email the customer a confirmation of order `order_id`.

    Idempotent: sent at most once per order (sent log key
    `order_confirmation`, order id) unless `force` is set.
    """
    return deliver(
        "order_confirmation",
        order_id,
        lambda erp, settings: compose.order_confirmation(
            erp.get_order(order_id), settings
        ),
        force,
    )


@task(retries=EMAIL_RETRIES)
def send_invoice_email(invoice_id: int, force: bool = False) -> str:
    """Email the customer invoice `invoice_id` with the invoice as a PDF.

    Idempotent: sent at most once per invoice (key `invoice`, invoice id)
    unless `force` is set.
    """
    return deliver(
        "invoice",
        invoice_id,
        lambda erp, settings: compose.invoice(erp.get_invoice(invoice_id), settings),
        force,
    )


@task(retries=EMAIL_RETRIES)
def send_payment_receipt(payment_id: int, force: bool = False) -> str:
    """Email the customer a receipt for payment `payment_id`.

    Idempotent: sent at most once per payment (key `payment_receipt`,
    payment id) unless `force` is set.
    """
    return deliver(
        "payment_receipt",
        payment_id,
        lambda erp, settings: compose.payment_receipt(
            erp.get_payment(payment_id), settings
        ),
        force,
    )


@task(retries=EMAIL_RETRIES)
def send_welcome_email(customer_id: int, force: bool = False) -> str:
    """Email a new customer a welcome.

    Idempotent: sent at most once per customer (key `welcome`, customer id)
    unless `force` is set.
    """
    return deliver(
        "welcome",
        customer_id,
        lambda erp, settings: compose.welcome(erp.get_customer(customer_id), settings),
        force,
    )


@task(retries=EMAIL_RETRIES)
def send_invoice_reminder_email(
    invoice_id: int, as_of: str | None = None, force: bool = False
) -> str:
    """Remind the customer that invoice `invoice_id` is overdue.

    `as_of` is the ISO date the reminder is for (today by default).
    Idempotent: at most one reminder per invoice per day (key
    `overdue_reminder`, "<invoice id>@<as_of>") unless `force` is set.
    """
    day = datetime.date.fromisoformat(as_of) if as_of else datetime.date.today()
    invoice = erp_repository(huey.settings).get_invoice(invoice_id)
    if invoice.balance <= 0:
        return f"skipped: invoice {invoice.invoice_number} is paid"
    if invoice.due_date >= day:
        return f"skipped: invoice {invoice.invoice_number} is not overdue on {day}"

    return deliver(
        "overdue_reminder",
        f"{invoice_id}@{day.isoformat()}",
        lambda erp, settings: compose.overdue_reminder(invoice, settings, day),
        force,
    )
