"""Zoho Books sync tasks: the ERP calls these instead of calling Zoho itself.

Each call enqueues and returns at once, e.g. `sync_customer(17)`. Every task
is idempotent: it upserts by the ERP id stored in the unique custom field
cf_erp_id (`tshjobs.zoho.sync`), so a rerun after a timeout, a retry or a
recovered task updates the one Zoho record instead of making a second.

Temporary errors (5xx, timeouts, lost connections) are retried up to 5
times, TSHJOBS_ZOHO_RETRY_DELAYS apart (300 s by default). A rate limit or
the daily cap makes the task wait for its reset without using up a retry.
Permanent errors (validation, not found, re-authorisation needed) fail at
once with Zoho's message and the ERP id in the audit log.

`sync_all_pending` drains the ERP's zoho_sync_queue table: it claims a batch
of pending rows and enqueues one sync task per row, which marks its row done
or failed. It runs every hour, and on demand.
"""

from __future__ import annotations

import datetime
import logging
import os
import threading

from huey import crontab

from tasks.emails import deliver, erp_repository, sent_log
from tshjobs import errors
from tshjobs.mail import compose
from tshjobs.queue import current_task, huey, task
from tshjobs.settings import Settings
from tshjobs.zoho.client import ZohoClient
from tshjobs.zoho.config import ZohoConfig
from tshjobs.zoho.payloads import erp_id
from tshjobs.zoho.ratelimit import rate_limiter
from tshjobs.zoho.sync import ZohoSync

logger = logging.getLogger(__name__)

ZOHO_RETRIES = 5

# Rows claimed per run of sync_all_pending.
SYNC_BATCH = 200

# A zoho_sync_queue row in_progress for longer than this is pending again:
# its task is gone. Longer than 5 retries 300 s apart.
# NOTE: a task that waits for the daily cap's reset can hold its row longer.
# The row is then synced twice, which the upsert makes harmless.
STALE_SYNC_ROW = datetime.timedelta(hours=6)

# Seconds a sync task waits for a Zoho call slot. Past that it goes back on
# the schedule for the next rate window, so that a Zoho backlog does not hold
# the workers that email tasks need.
SLOT_MAX_WAIT = 5.0

_clients: dict[tuple[int, int], ZohoClient] = {}


def zoho_client(settings: Settings) -> ZohoClient:
    """Return this thread's client: each thread of each process keeps its
    own HTTP session."""
    key = (os.getpid(), threading.get_ident())
    client = _clients.get(key)
    if client is None or client.settings is not settings:
        limiter = rate_limiter(settings, max_wait=SLOT_MAX_WAIT)
        client = _clients[key] = ZohoClient(settings, limiter=limiter)
    return client


def zoho_delays(settings: Settings) -> tuple[float, ...]:
    return settings.zoho_retry_delays


def run_sync(entity_type: str, entity_id: int, queue_id: int | None) -> str:
    """Sync one entity and mark its zoho_sync_queue row; return the outcome
    line for the audit log."""
    settings = huey.settings
    erp = erp_repository(settings)
    try:
        zoho_id = ZohoSync(zoho_client(settings), erp).sync(entity_type, entity_id)
    except Exception as exc:
        _mark_failure(erp, queue_id, entity_type, entity_id, exc)
        if isinstance(exc, errors.ZohoReauthorizationRequired):
            _alert_reauthorization(settings)
        if errors.is_temporary(exc):
            raise
        # The audit log shows the ERP id with Zoho's message.
        reason = f"{erp_id(entity_type, entity_id)}: {type(exc).__name__}: {exc}"
        raise errors.ZohoSyncFailed(reason) from exc

    if queue_id:
        erp.mark_sync_done(queue_id)
    return f"{erp_id(entity_type, entity_id)} synced as Zoho {zoho_id}"


def _alert_reauthorization(settings: Settings) -> None:
    """Enqueue the re-authorisation alert, unless the sent log shows it is
    sent or being sent for these credentials."""
    credentials = ZohoConfig.from_settings(settings).credentials_id
    if sent_log(settings).get(REAUTHORIZATION_ALERT, credentials) is None:
        send_zoho_reauthorization_alert(credentials)


def _mark_failure(erp, queue_id, entity_type, entity_id, exc) -> None:
    """Mark the row failed once no retry follows, with Zoho's message and
    the ERP id."""
    running = current_task()
    waits = errors.is_temporary(exc) and (
        getattr(exc, "retry_at", None) is not None or (running and running.retries)
    )
    if not queue_id or waits:
        return
    reason = f"{erp_id(entity_type, entity_id)}: {type(exc).__name__}: {exc}"
    try:
        erp.mark_sync_failed(queue_id, reason)
    except Exception:
        logger.exception("Marking zoho_sync_queue row %d failed did not work", queue_id)


sync_task = task(retries=ZOHO_RETRIES, retry_delays=zoho_delays)


@sync_task
def sync_customer(customer_id: int, queue_id: int = 0) -> str:
    """Create or update the Zoho contact of ERP customer `customer_id`.

    Idempotent: upserts by cf_erp_id "C-<id>". Two customers with one name
    both sync: the later ones by ERP id get " (C-<id>)" after the name."""
    return run_sync("customer", customer_id, queue_id)


@sync_task
def sync_product(product_id: int, queue_id: int = 0) -> str:
    """Create or update the Zoho item of ERP product `product_id`.

    Idempotent: upserts by cf_erp_id "P-<id>"."""
    return run_sync("product", product_id, queue_id)


@sync_task
def sync_order(order_id: int, queue_id: int = 0) -> str:
    """Create or update the Zoho sales order of ERP order `order_id`, after
    its customer and items.

    Idempotent: upserts by cf_erp_id "SO-<id>"."""
    return run_sync("order", order_id, queue_id)


@sync_task
def sync_invoice(invoice_id: int, queue_id: int = 0) -> str:
    """Create or update the Zoho invoice of ERP invoice `invoice_id`, after
    its customer and items.

    Idempotent: upserts by cf_erp_id "INV-<id>"."""
    return run_sync("invoice", invoice_id, queue_id)


@sync_task
def sync_payment(payment_id: int, queue_id: int = 0) -> str:
    """Create or update the Zoho customer payment of ERP payment
    `payment_id`, after its customer and invoice.

    Idempotent: upserts by cf_erp_id "PAY-<id>"."""
    return run_sync("payment", payment_id, queue_id)


SYNC_TASKS = {
    "customer": sync_customer,
    "product": sync_product,
    "order": sync_order,
    "invoice": sync_invoice,
    "payment": sync_payment,
}


@sync_task
def sync_all_pending(batch: int = SYNC_BATCH) -> str:
    """Claim up to `batch` pending zoho_sync_queue rows and enqueue one sync
    task per row; enqueue itself again while pending rows remain.

    Idempotent: each row is claimed once (pending to in_progress), and each
    sync task is an upsert. A row whose task vanished is pending again after
    6 hours."""
    erp = erp_repository(huey.settings)
    erp.requeue_stale_sync_rows(STALE_SYNC_ROW)

    items = erp.claim_sync_batch(batch)
    for item in items:
        SYNC_TASKS[item.entity_type](item.entity_id, queue_id=item.id)

    counts = erp.count_sync_rows()
    if items and counts["pending"]:
        sync_all_pending(batch)
    summary = ", ".join(f"{status} {count}" for status, count in counts.items())
    logger.info("Enqueued %d Zoho syncs; zoho_sync_queue: %s", len(items), summary)
    return f"enqueued {len(items)} syncs; zoho_sync_queue: {summary}"


REAUTHORIZATION_ALERT = "zoho_reauthorization"


@task(retries=3)
def send_zoho_reauthorization_alert(credentials_id: str, force: bool = False) -> str:
    """Email TSHJOBS_MANAGEMENT_EMAILS that Zoho rejected the refresh token
    and a person must authorise the appliance again.

    Idempotent: sent once per set of credentials (sent log key
    `zoho_reauthorization`, credentials id), so a new refresh token that
    fails again alerts again."""

    def build(erp, settings):
        return compose.report(
            settings.management_emails,
            "Zoho Books sync stopped: authorise the appliance again",
            {"intro": REAUTHORIZATION_TEXT},
            [],
            settings,
        )

    return deliver(REAUTHORIZATION_ALERT, credentials_id, build, force)


REAUTHORIZATION_TEXT = (
    "Zoho Books rejected the appliance's refresh token (invalid_code), so no "
    "record is synced until a person authorises the appliance again. Create a "
    "new refresh token in Zoho's API console, set TSHJOBS_ZOHO_REFRESH_TOKEN in "
    "/etc/tshjobs/tshjobs.env, restart the appliance (systemctl restart "
    "tshjobs.target), then retry the failed rows on the dashboard's Zoho Books "
    "page."
)


@huey.periodic_task(crontab(minute="0"))
def hourly_sync() -> None:
    """Enqueue sync_all_pending at the start of every hour, when Zoho Books
    is configured."""
    if huey.settings.zoho_enabled:
        sync_all_pending()
