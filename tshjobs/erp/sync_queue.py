"""Zoho Books ids and the zoho_sync_queue table, as methods of ErpRepository.

The ERP adds a pending row to zoho_sync_queue when an entity changes. The
Zoho sync claims pending rows, pushes the entities, stores the Zoho ids on
them and marks each row done or failed. These and the payments of Zoho
Books webhooks (tshjobs.erp.webhook_writes) are the only writes tshjobs
makes to a production ERP database.
"""

from __future__ import annotations

import datetime
import logging

from tshjobs.erp.db import Database
from tshjobs.erp.records import SYNC_ENTITY_TYPES, SYNC_STATUSES, SyncQueueItem
from tshjobs.erp.rows import sync_item_from_row
from tshjobs.errors import EntityNotFound

log = logging.getLogger(__name__)

# Maximum length of a stored last_error. Longer errors are truncated.
MAX_ERROR_LENGTH = 2000


def _check_entity_type(entity_type: str) -> None:
    if entity_type not in SYNC_ENTITY_TYPES:
        raise ValueError(
            f"unknown entity type {entity_type!r}; allowed: "
            + ", ".join(SYNC_ENTITY_TYPES)
        )


class SyncQueueMixin:
    """The Zoho methods of ErpRepository."""

    db: Database

    def set_zoho_id(
        self, entity_type: str, entity_id: int, zoho_id: str | None
    ) -> None:
        """Store the Zoho Books id of an ERP entity (None clears it).

        The column is customers.zoho_contact_id, products.zoho_item_id,
        orders.zoho_salesorder_id, invoices.zoho_invoice_id or
        payments.zoho_payment_id. Raises EntityNotFound when the row does not
        exist.
        """
        _check_entity_type(entity_type)
        changed = self.db.execute(
            f"set_{entity_type}_zoho_id", {"entity_id": entity_id, "zoho_id": zoho_id}
        )
        if changed == 0:
            raise EntityNotFound(entity_type, entity_id)

    def first_customer_named(self, name: str) -> int | None:
        """Return the lowest id of the customers named exactly `name`."""
        row = self.db.fetch_one("first_customer_named", {"name": name})
        return row["id"] if row else None

    def enqueue_sync(self, entity_type: str, entity_id: int) -> int:
        """Add a pending sync row for an entity and return its id. When the
        entity already has a pending row, return that row's id instead."""
        _check_entity_type(entity_type)
        params = {"entity_type": entity_type, "entity_id": entity_id}
        with self.db.transaction():
            row = self.db.fetch_one("enqueue_sync", params)
            if row is None:
                row = self.db.fetch_one("find_pending_sync", params)
        if row is None:
            # Another connection claimed the pending row between the two
            # statements, so the entity needs a row of its own again.
            return self.enqueue_sync(entity_type, entity_id)
        return row["id"]

    def get_sync_row(self, queue_id: int) -> SyncQueueItem:
        row = self.db.fetch_one("get_sync_row", {"queue_id": queue_id})
        if row is None:
            raise EntityNotFound("zoho_sync_queue row", queue_id)
        return sync_item_from_row(row)

    def list_sync_rows(
        self, status: str | None = None, limit: int = 100
    ) -> list[SyncQueueItem]:
        """Return up to `limit` queue rows, newest first, of one status or of
        all statuses when `status` is None."""
        if status is not None and status not in SYNC_STATUSES:
            raise ValueError(
                f"unknown sync status {status!r}; allowed: " + ", ".join(SYNC_STATUSES)
            )
        rows = self.db.fetch_all("list_sync_rows", {"status": status, "limit": limit})
        return [sync_item_from_row(row) for row in rows]

    def count_sync_rows(self) -> dict[str, int]:
        """Return the number of queue rows of each status, zero included."""
        counts = dict.fromkeys(SYNC_STATUSES, 0)
        for row in self.db.fetch_all("count_sync_rows_by_status"):
            counts[row["status"]] = row["row_count"]
        return counts

    def claim_sync_batch(self, limit: int = 50) -> list[SyncQueueItem]:
        """Mark up to `limit` of the oldest pending rows in_progress, count an
        attempt on each and return them, oldest first.

        The claim is atomic: two claimers at once get disjoint rows
        (FOR UPDATE SKIP LOCKED on PostgreSQL, one write transaction on
        SQLite). Inside an enclosing transaction the rows stay locked until
        it ends.
        """
        if limit < 1:
            raise ValueError(f"claim limit must be at least 1, got {limit}")

        with self.db.transaction():
            rows = self.db.fetch_all("claim_sync_rows", {"limit": limit})
        items = sorted((sync_item_from_row(row) for row in rows), key=lambda i: i.id)
        if items:
            log.debug("claimed %d zoho_sync_queue rows", len(items))
        return items

    def mark_sync_done(self, queue_id: int) -> None:
        """Mark a claimed row done and clear its last error."""
        self._mark_sync_row(queue_id, "done", None)

    def mark_sync_failed(self, queue_id: int, error: str, retry: bool = False) -> None:
        """Store the error of a row and set it back to pending when `retry`,
        else to failed."""
        self._mark_sync_row(
            queue_id, "pending" if retry else "failed", error[:MAX_ERROR_LENGTH]
        )

    def requeue_stale_sync_rows(self, older_than: datetime.timedelta) -> int:
        """Set back to pending the in_progress rows not updated for
        `older_than`, whose claimer most likely died, and return their count."""
        cutoff = datetime.datetime.now(datetime.UTC) - older_than
        count = self.db.execute("requeue_stale_sync_rows", {"cutoff": cutoff})
        if count:
            log.warning(
                "requeued %d zoho_sync_queue rows stuck in_progress since before %s",
                count,
                cutoff.isoformat(timespec="seconds"),
            )
        return count

    def retry_failed_sync_row(self, queue_id: int) -> SyncQueueItem | None:
        """Set a failed row back to pending, keeping its attempts and last
        error, and return it; return None when the row is not failed.

        The check and the change are one statement, so of two requests for
        the same row only the first gets the row. Raises EntityNotFound when
        the row does not exist.
        """
        row = self.db.fetch_one("retry_failed_sync_row", {"queue_id": queue_id})
        if row is not None:
            return sync_item_from_row(row)

        # Read only to tell a missing row from one that is not failed.
        self.get_sync_row(queue_id)
        return None

    def _mark_sync_row(
        self, queue_id: int, status: str, last_error: str | None
    ) -> None:
        changed = self.db.execute(
            "mark_sync_row",
            {"queue_id": queue_id, "status": status, "last_error": last_error},
        )
        if changed == 0:
            raise EntityNotFound("zoho_sync_queue row", queue_id)
