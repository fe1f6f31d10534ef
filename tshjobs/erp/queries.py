"""The ERP repository: typed access to the ERP database for the tasks.

`ErpRepository` runs the named queries of queries.sql (or of the admin's
override file, see tshjobs.erp.named_queries) and returns the dataclasses of
tshjobs.erp.models. A row that does not exist raises
`tshjobs.errors.EntityNotFound`. One repository may be shared by the threads
of a process: each thread uses its own connection (see tshjobs.erp.db).
"""

from __future__ import annotations

import datetime
import logging
from collections import defaultdict
from decimal import Decimal
from pathlib import Path
from typing import Self

from tshjobs.erp.db import Database, connect
from tshjobs.erp.models import Customer, Invoice, LineItem, Order, Payment, Product
from tshjobs.erp.named_queries import QueryCatalog, load_queries
from tshjobs.erp.records import ProductSales, SalesSummary
from tshjobs.erp.rows import (
    customer_from_row,
    line_item_from_row,
    product_from_row,
    to_date,
    to_decimal,
)
from tshjobs.erp.sync_queue import SyncQueueMixin
from tshjobs.erp.webhook_writes import ZohoWebhookWritesMixin
from tshjobs.erp.writes import ErpWritesMixin
from tshjobs.errors import EntityNotFound
from tshjobs.settings import Settings, get_settings

__all__ = ["ErpRepository", "QueryCatalog", "load_queries"]

log = logging.getLogger(__name__)

DEFAULT_TOP_PRODUCTS = 10


class ErpRepository(SyncQueueMixin, ErpWritesMixin, ZohoWebhookWritesMixin):
    """Reads (and for the Zoho sync, Zoho webhooks and the demo, writes) the
    ERP database.

    `queries_file` is an optional override file of named queries. A missing
    or invalid file raises ConfigError here.
    """

    def __init__(self, url: str, queries_file: str | Path | None = None):
        self.db: Database = connect(url, load_queries(queries_file))

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> ErpRepository:
        """Open the ERP named by TSHJOBS_ERP_DATABASE_URL, with the queries of
        TSHJOBS_ERP_QUERIES_FILE when it is set."""
        settings = settings or get_settings()
        return cls(settings.erp_database_url, settings.erp_queries_file or None)

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # Single entities

    def get_customer(self, customer_id: int) -> Customer:
        row = self.db.fetch_one("get_customer", {"customer_id": customer_id})
        if row is None:
            raise EntityNotFound("customer", customer_id)
        return customer_from_row(row)

    def get_product(self, product_id: int) -> Product:
        row = self.db.fetch_one("get_product", {"product_id": product_id})
        if row is None:
            raise EntityNotFound("product", product_id)
        return product_from_row(row)

    def get_order(self, order_id: int) -> Order:
        """Return the order with its customer and line items."""
        row = self.db.fetch_one("get_order", {"order_id": order_id})
        if row is None:
            raise EntityNotFound("order", order_id)

        return Order(
            id=row["id"],
            order_number=row["order_number"],
            order_date=to_date(row["order_date"]),
            status=row["status"],
            total=to_decimal(row["total"]),
            currency=row["currency"],
            customer=customer_from_row(row, prefix="customer_"),
            items=self._order_items(order_id),
            zoho_salesorder_id=row["zoho_salesorder_id"],
        )

    def get_invoice(self, invoice_id: int) -> Invoice:
        """Return the invoice with its customer and the line items of its
        order (none when the invoice has no order)."""
        row = self.db.fetch_one("get_invoice", {"invoice_id": invoice_id})
        if row is None:
            raise EntityNotFound("invoice", invoice_id)

        items = self._order_items(row["order_id"]) if row["order_id"] else []
        return _invoice_from_row(row, items)

    def get_payment(self, payment_id: int) -> Payment:
        """Return the payment with its customer and, when the payment is
        applied to one, its invoice."""
        row = self.db.fetch_one("get_payment", {"payment_id": payment_id})
        if row is None:
            raise EntityNotFound("payment", payment_id)

        invoice = self.get_invoice(row["invoice_id"]) if row["invoice_id"] else None
        return Payment(
            id=row["id"],
            payment_number=row["payment_number"],
            payment_date=to_date(row["payment_date"]),
            amount=to_decimal(row["amount"]),
            method=row["method"],
            reference=row["reference"],
            customer=customer_from_row(row, prefix="customer_"),
            invoice=invoice,
            zoho_payment_id=row["zoho_payment_id"],
        )

    # Reports

    def list_overdue_invoices(self, as_of: datetime.date) -> list[Invoice]:
        """Return the sent, unpaid invoices due before `as_of`, with customers
        and line items, oldest due date first."""
        params = {"as_of": as_of}
        items_by_invoice: dict[int, list[LineItem]] = defaultdict(list)
        for row in self.db.fetch_all("list_overdue_invoice_items", params):
            items_by_invoice[row["invoice_id"]].append(line_item_from_row(row))

        invoices = [
            _invoice_from_row(row, items_by_invoice.get(row["id"], []))
            for row in self.db.fetch_all("list_overdue_invoices", params)
        ]
        return [invoice for invoice in invoices if invoice.balance > 0]

    def list_low_stock_products(self) -> list[Product]:
        """Return the products whose stock is at or below their reorder level,
        the largest shortfall first."""
        rows = self.db.fetch_all("list_low_stock_products")
        return [product_from_row(row) for row in rows]

    def sales_summary(self, day: datetime.date) -> SalesSummary:
        """Summarise the orders dated `day`."""
        return self.sales_summary_between(day, day)

    def sales_summary_between(
        self,
        start: datetime.date,
        end: datetime.date,
        top: int = DEFAULT_TOP_PRODUCTS,
    ) -> SalesSummary:
        """Summarise the orders dated from `start` to `end`, both included:
        order count, revenue per currency and the `top` products by units."""
        if end < start:
            raise ValueError(f"sales summary end {end} is before its start {start}")

        params = {"start": start, "end": end}
        order_count = 0
        revenue: dict[str, Decimal] = defaultdict(Decimal)
        for row in self.db.fetch_all("sales_order_totals", params):
            order_count += row["order_count"]
            revenue[row["currency"]] += to_decimal(row["total"]) * row["order_count"]

        sales: dict[tuple[int, str], dict] = {}
        for row in self.db.fetch_all("sales_product_quantities", params):
            key = (row["product_id"], row["currency"])
            entry = sales.setdefault(
                key,
                {
                    "sku": row["sku"],
                    "name": row["name"],
                    "quantity": 0,
                    "revenue": Decimal("0.00"),
                },
            )
            entry["quantity"] += row["quantity"]
            entry["revenue"] += to_decimal(row["unit_price"]) * row["quantity"]

        products = [
            ProductSales(
                product_id=product_id,
                sku=entry["sku"],
                name=entry["name"],
                currency=currency,
                quantity=entry["quantity"],
                revenue=entry["revenue"],
            )
            for (product_id, currency), entry in sales.items()
        ]
        products.sort(key=lambda item: (-item.quantity, -item.revenue, item.sku))
        return SalesSummary(
            start=start,
            end=end,
            order_count=order_count,
            revenue=dict(revenue),
            top_products=products[:top],
        )

    def _order_items(self, order_id: int) -> list[LineItem]:
        rows = self.db.fetch_all("get_order_items", {"order_id": order_id})
        return [line_item_from_row(row) for row in rows]


def _invoice_from_row(row: dict, items: list[LineItem]) -> Invoice:
    return Invoice(
        id=row["id"],
        invoice_number=row["invoice_number"],
        issue_date=to_date(row["issue_date"]),
        due_date=to_date(row["due_date"]),
        total=to_decimal(row["total"]),
        amount_paid=to_decimal(row["amount_paid"]),
        status=row["status"],
        currency=row["currency"],
        customer=customer_from_row(row, prefix="customer_"),
        order_id=row["order_id"],
        items=items,
        zoho_invoice_id=row["zoho_invoice_id"],
    )
