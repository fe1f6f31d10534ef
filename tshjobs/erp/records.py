"""Results of the ERP repository that are not rows of models.py: sales
summaries and rows of the Zoho sync queue."""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from decimal import Decimal

SYNC_ENTITY_TYPES = ("customer", "product", "order", "invoice", "payment")
SYNC_STATUSES = ("pending", "in_progress", "done", "failed")


@dataclass(frozen=True)
class ProductSales:
    """Units and revenue of one product in one currency over a period."""

    product_id: int
    sku: str
    name: str
    currency: str
    quantity: int
    revenue: Decimal


@dataclass(frozen=True)
class SalesSummary:
    """Orders dated from `start` to `end`, both included, cancelled orders
    left out.

    `revenue` maps each currency to the sum of its order totals. `top_products`
    is ordered by units sold, then revenue, then SKU.
    """

    start: datetime.date
    end: datetime.date
    order_count: int
    revenue: dict[str, Decimal] = field(default_factory=dict)
    top_products: list[ProductSales] = field(default_factory=list)


@dataclass(frozen=True)
class SyncQueueItem:
    """One row of zoho_sync_queue: an ERP entity to push to Zoho Books."""

    id: int
    entity_type: str
    entity_id: int
    status: str
    attempts: int
    last_error: str | None
    created_at: datetime.datetime
    updated_at: datetime.datetime
