"""Rows the tasks read from the ERP database.

These dataclasses are the contract between the ERP queries and the tasks:
every amount is a `Decimal` with two places, every date a `datetime.date` in
the company's local calendar.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from decimal import Decimal


@dataclass(frozen=True)
class Customer:
    id: int
    name: str
    email: str | None
    phone: str | None = None
    zoho_contact_id: str | None = None


@dataclass(frozen=True)
class Product:
    id: int
    sku: str
    name: str
    unit_price: Decimal
    stock_quantity: int
    reorder_level: int
    zoho_item_id: str | None = None


@dataclass(frozen=True)
class LineItem:
    product_id: int
    sku: str
    name: str
    quantity: int
    unit_price: Decimal

    @property
    def amount(self) -> Decimal:
        return self.unit_price * self.quantity


@dataclass(frozen=True)
class Order:
    id: int
    order_number: str
    order_date: datetime.date
    status: str
    total: Decimal
    currency: str
    customer: Customer
    items: list[LineItem] = field(default_factory=list)
    zoho_salesorder_id: str | None = None


@dataclass(frozen=True)
class Invoice:
    id: int
    invoice_number: str
    issue_date: datetime.date
    due_date: datetime.date
    total: Decimal
    amount_paid: Decimal
    status: str
    currency: str
    customer: Customer
    order_id: int | None = None
    items: list[LineItem] = field(default_factory=list)
    zoho_invoice_id: str | None = None

    @property
    def balance(self) -> Decimal:
        return self.total - self.amount_paid


@dataclass(frozen=True)
class Payment:
    id: int
    payment_number: str
    payment_date: datetime.date
    amount: Decimal
    method: str
    reference: str | None
    customer: Customer
    invoice: Invoice | None = None
    zoho_payment_id: str | None = None
