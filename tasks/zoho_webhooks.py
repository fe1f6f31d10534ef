"""Zoho Books webhooks: apply a payment or an invoice balance that changed in
Zoho Books to the ERP.

POST /webhooks/zoho (`dashboard.webhooks`) checks the token and signature
and enqueues `process_zoho_webhook` with the parsed body. Zoho retries a
failed delivery later, so the same event can arrive twice, late, or twice
at once. `tshjobs.webhook_events` keeps the keys of the events processed, so
that each is applied once.
"""

from __future__ import annotations

import datetime
import logging
import re
from decimal import Decimal, InvalidOperation

from tasks.emails import erp_repository
from tshjobs.erp.queries import ErpRepository
from tshjobs.erp.webhook_writes import InvoicePaymentChange
from tshjobs.errors import PermanentError
from tshjobs.queue import current_task_id, huey, task
from tshjobs.settings import Settings
from tshjobs.webhook_events import WebhookEventLog, event_key
from tshjobs.zoho.payloads import ERP_ID_FIELD

logger = logging.getLogger(__name__)

WEBHOOK_RETRIES = 5

# Keys of the body that hold the record, and the kind of record each is.
ENTITY_KEYS = {"payment": "payment", "customerpayment": "payment", "invoice": "invoice"}

# Zoho's payment_mode, lower case without spaces, to the ERP's payment method.
PAYMENT_MODES = {
    "cash": "cash",
    "check": "cheque",
    "cheque": "cheque",
    "creditcard": "card",
    "debitcard": "card",
    "card": "card",
    "banktransfer": "bank_transfer",
    "bankremittance": "bank_transfer",
}

# Zoho invoice statuses whose balance does not reflect payments.
IGNORED_INVOICE_STATUSES = ("draft", "void")


class WebhookPayloadInvalid(PermanentError):
    """Raised when the invoice or payment of a webhook lacks a field the ERP
    change needs, or has one that cannot be read."""


_event_logs: dict[str, WebhookEventLog] = {}


def event_log(settings: Settings) -> WebhookEventLog:
    path = str(settings.state_path)
    if path not in _event_logs:
        _event_logs[path] = WebhookEventLog(settings.state_path)
    return _event_logs[path]


def find_record(event: dict) -> tuple[str | None, dict]:
    """Return ("invoice" or "payment", the record) of a webhook body, or
    (None, {}) when it has neither.

    The record is under a key named for it, in the body or in its `data`
    object. With plain form fields, the body is the record itself."""
    containers = [event]
    if isinstance(event.get("data"), dict):
        containers.append(event["data"])
    for container in containers:
        for key, kind in ENTITY_KEYS.items():
            if isinstance(container.get(key), dict):
                return kind, container[key]

    if "payment_id" in event:
        return "payment", event
    if "invoice_id" in event:
        return "invoice", event
    return None, {}


def _text(value) -> str | None:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        return None
    return str(value).strip() or None


def _amount(record: dict, name: str) -> Decimal:
    value = record.get(name)
    try:
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise InvalidOperation
        amount = Decimal(str(value).strip())
    except InvalidOperation:
        raise WebhookPayloadInvalid(f"{name} {value!r} is not an amount") from None
    if not amount.is_finite():
        raise WebhookPayloadInvalid(f"{name} {value!r} is not an amount")
    return amount


def _erp_id_number(record: dict, prefix: str) -> int | None:
    """Return the ERP id in the record's cf_erp_id, such as 17 of "INV-17"
    for prefix INV, or None. Zoho sends custom fields as a list, a hash or a
    plain key, depending on the payload format."""
    values = [record.get(ERP_ID_FIELD)]
    if isinstance(record.get("custom_field_hash"), dict):
        values.append(record["custom_field_hash"].get(ERP_ID_FIELD))
    for field in record.get("custom_fields") or []:
        if isinstance(field, dict) and field.get("api_name") == ERP_ID_FIELD:
            values.append(field.get("value"))

    for value in values:
        match = re.fullmatch(rf"{prefix}-(\d+)", _text(value) or "")
        if match:
            return int(match.group(1))
    return None


def _modified_version(kind: str | None, record: dict) -> tuple[str, str] | None:
    """Return ("invoice:<Zoho id>", modified time in UTC) for an invoice with
    a last_modified_time, else None. A time without an offset is UTC."""
    zoho_id = _text(record.get("invoice_id"))
    text = _text(record.get("last_modified_time"))
    if kind != "invoice" or zoho_id is None or text is None:
        return None
    try:
        modified = datetime.datetime.fromisoformat(text)
    except ValueError:
        return None

    if modified.tzinfo is not None:
        modified = modified.astimezone(datetime.UTC).replace(tzinfo=None)
    return f"invoice:{zoho_id}", modified.isoformat(timespec="seconds")


def _find_invoice(erp: ErpRepository, record: dict) -> int | None:
    invoice_id = _erp_id_number(record, "INV")
    if invoice_id is not None:
        return invoice_id
    zoho_id = _text(record.get("invoice_id"))
    return erp.find_invoice_id_by_zoho_id(zoho_id) if zoho_id else None


def _describe(change: InvoicePaymentChange) -> str:
    if not change.changed:
        return (
            f"invoice {change.invoice_id} unchanged: amount_paid "
            f"{change.amount_paid}, status {change.status}"
        )

    status = change.status
    if change.status_before != change.status:
        status = f"{change.status_before} -> {change.status}"
    return (
        f"invoice {change.invoice_id}: amount_paid {change.amount_paid_before} -> "
        f"{change.amount_paid}, status {status}"
    )


def apply_invoice(erp: ErpRepository, record: dict) -> str:
    """Set the ERP invoice's amount_paid and status from Zoho's balance."""
    name = f"Zoho invoice {_text(record.get('invoice_id')) or '(no invoice_id)'}"
    status = (_text(record.get("status")) or "").lower()
    if status in IGNORED_INVOICE_STATUSES:
        return f"ignored: {name} is {status}; only sent invoices are applied"

    invoice_id = _find_invoice(erp, record)
    if invoice_id is None:
        return f"ignored: {name} matches no ERP invoice"
    if record.get("balance") is None:
        return f"ignored: {name} has no balance"

    balance = _amount(record, "balance")
    total = _amount(record, "total") if record.get("total") is not None else None
    return _describe(erp.apply_zoho_invoice_balance(invoice_id, balance, total))


def _payment_date(record: dict) -> datetime.date:
    text = _text(record.get("date")) or ""
    try:
        return datetime.date.fromisoformat(text[:10])
    except ValueError:
        raise WebhookPayloadInvalid(f"payment date {text!r} is not a date") from None


def _applied_invoices(record: dict) -> list[tuple[dict, Decimal]]:
    """Return the invoices a Zoho payment is applied to, with the amounts."""
    if isinstance(record.get("invoices"), list):
        applied = [
            (entry, _amount(entry, "amount_applied"))
            for entry in record["invoices"]
            if isinstance(entry, dict)
        ]
        return [(entry, amount) for entry, amount in applied if amount > 0]
    if _text(record.get("invoice_id")):
        return [(record, _amount(record, "amount"))]
    return []


def apply_payment(erp: ErpRepository, record: dict) -> str:
    """Record a Zoho customer payment in the ERP unless it is there."""
    zoho_id = _text(record.get("payment_id"))
    if zoho_id is None:
        return "ignored: payment without a payment_id"
    erp_payment = _erp_id_number(record, "PAY")
    if erp_payment is not None:
        return f"ignored: Zoho payment {zoho_id} is ERP payment {erp_payment}"
    existing = erp.find_payment_id_by_zoho_id(zoho_id)
    if existing is not None:
        return f"unchanged: Zoho payment {zoho_id} is ERP payment {existing}"

    applied = _applied_invoices(record)
    if not applied:
        return f"ignored: Zoho payment {zoho_id} is not applied to an invoice"
    if len(applied) > 1:
        raise WebhookPayloadInvalid(
            f"Zoho payment {zoho_id} is applied to {len(applied)} invoices, but an "
            "ERP payment belongs to one invoice; record it in the ERP by hand"
        )
    entry, amount = applied[0]
    invoice_id = _find_invoice(erp, entry)
    if invoice_id is None:
        return (
            f"ignored: Zoho invoice {_text(entry.get('invoice_id'))} of payment "
            f"{zoho_id} matches no ERP invoice"
        )

    mode = re.sub(r"[\s_-]", "", _text(record.get("payment_mode")) or "").lower()
    result = erp.record_zoho_payment(
        invoice_id, amount, _payment_date(record), zoho_id,
        method=PAYMENT_MODES.get(mode, "other"),
        reference=_text(record.get("reference_number")),
    )  # fmt: skip
    if result is None:
        return f"unchanged: Zoho payment {zoho_id} was recorded meanwhile"
    payment_id, change = result
    return (
        f"recorded Zoho payment {zoho_id} of {amount} as ERP payment {payment_id}; "
        + _describe(change)
    )


def apply_event(erp: ErpRepository, event: dict) -> str:
    """Apply one webhook body to the ERP; return the outcome line."""
    kind, record = find_record(event)
    if kind is None:
        keys = ", ".join(sorted(str(key) for key in event)[:10])
        return f"ignored: no invoice or payment in the event (keys: {keys})"

    event_type = (_text(event.get("event_type")) or "").lower()
    if "delete" in event_type or "void" in event_type:
        return f"ignored: {event_type} events are not applied"
    if kind == "invoice":
        return apply_invoice(erp, record)
    return apply_payment(erp, record)


@task(retries=WEBHOOK_RETRIES)
def process_zoho_webhook(event: dict) -> str:
    """Apply a Zoho Books webhook to the ERP and return the outcome line: a
    payment recorded, an invoice's amount_paid and status set from its
    balance, or why the event was ignored.

    Idempotent: the event key is inserted into zoho_webhook_events in the
    transaction that decides to apply it, so a redelivery or a copy running
    at once applies nothing. A copy that finds a live worker applying the
    event retries, then reports a duplicate. A failure removes the key, so a
    retry applies the event. The ERP writes are idempotent too: a payment is found
    by its Zoho id, a balance is an absolute amount. So a worker that died
    between the ERP commit and marking the event done is harmless.
    """
    settings = huey.settings
    task_id = current_task_id()
    key = event_key(event)
    kind, record = find_record(event)
    version = _modified_version(kind, record)
    log = event_log(settings)
    extra = {"task_id": task_id}
    logger.info("Processing Zoho webhook %s (%s)", key, kind or "unknown",
                extra=extra)  # fmt: skip

    refusal = log.claim(key, kind or "unknown", task_id, version)
    if refusal is not None:
        logger.info("Zoho webhook %s not applied: %s", key, refusal, extra=extra)
        return refusal

    try:
        outcome = apply_event(erp_repository(settings), event)
    except BaseException:
        log.release(key)
        raise

    log.finish(key, outcome, version)
    logger.info("Zoho webhook %s: %s", key, outcome, extra=extra)
    return outcome
