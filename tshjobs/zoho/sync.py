"""Push ERP entities to Zoho Books, exactly one Zoho record per entity.

Every write is an upsert by the unique custom field cf_erp_id (see
`tshjobs.zoho.payloads`): Zoho creates the record when no record has that
ERP id and updates it otherwise, in one request. A create can time out
after Zoho committed it, or a worker can die between Zoho's reply and the
write-back of the Zoho id. Running the sync again repairs both, because the
rerun finds the record by its ERP id and updates it. The Zoho id is then
written to the ERP's column (customers.zoho_contact_id and so on).

A sales order, invoice or payment first makes sure that its customer and
items (or invoice) exist in Zoho, syncing them when the ERP has no Zoho id
for them yet.
"""

from __future__ import annotations

import logging

from tshjobs.erp.models import Customer, LineItem
from tshjobs.erp.queries import ErpRepository
from tshjobs.errors import ZohoDuplicate
from tshjobs.zoho import payloads
from tshjobs.zoho.client import ZohoClient
from tshjobs.zoho.payloads import ERP_ID_FIELD, erp_id

logger = logging.getLogger(__name__)

# Per entity type: API path, response key, and the record's id field.
ENDPOINTS = {
    "customer": ("/contacts", "contact", "contact_id"),
    "product": ("/items", "item", "item_id"),
    "order": ("/salesorders", "salesorder", "salesorder_id"),
    "invoice": ("/invoices", "invoice", "invoice_id"),
    "payment": ("/customerpayments", "payment", "payment_id"),
}

# Zoho's code for "a contact with this name already exists".
CODE_DUPLICATE_CONTACT_NAME = 3062


class ZohoSync:
    """Syncs ERP entities through one client and one ERP connection."""

    def __init__(self, client: ZohoClient, erp: ErpRepository):
        self.client = client
        self.erp = erp

    def sync(self, entity_type: str, entity_id: int) -> str:
        """Create or update the Zoho record of an ERP entity; return its
        Zoho id."""
        method = getattr(self, f"sync_{entity_type}", None)
        if method is None or entity_type not in ENDPOINTS:
            raise ValueError(f"unknown entity type {entity_type!r}")
        return method(entity_id)

    def sync_customer(self, customer_id: int) -> str:
        customer = self.erp.get_customer(customer_id)
        first = self.erp.first_customer_named(customer.name)
        shared_name = first is not None and first != customer.id
        try:
            return self._upsert_contact(customer, shared_name)
        except ZohoDuplicate as exc:
            if shared_name or exc.code != CODE_DUPLICATE_CONTACT_NAME:
                raise
            # Another contact has the name in a form Zoho counts as the same
            # (another case or Unicode form): fall back to the ERP id suffix.
            logger.info("Contact name of customer %d is taken in Zoho; adding "
                        "its ERP id to the name", customer.id)  # fmt: skip
            return self._upsert_contact(customer, True)

    def _upsert_contact(self, customer: Customer, disambiguate: bool) -> str:
        name = payloads.contact_name(customer, disambiguate)
        body = payloads.contact_body(customer, name)
        return self._upsert("customer", customer.id, body)

    def sync_product(self, product_id: int) -> str:
        product = self.erp.get_product(product_id)
        body = payloads.item_body(product, self.client.round_amount)
        return self._upsert("product", product.id, body)

    def sync_order(self, order_id: int) -> str:
        order = self.erp.get_order(order_id)
        contact_id = self._ensure_contact(order.customer)
        item_ids = self._ensure_items(order.items)
        body = payloads.salesorder_body(
            order, contact_id, item_ids, self.client.round_amount
        )
        return self._upsert("order", order.id, body)

    def sync_invoice(self, invoice_id: int) -> str:
        invoice = self.erp.get_invoice(invoice_id)
        contact_id = self._ensure_contact(invoice.customer)
        item_ids = {}
        if payloads.invoice_lines_add_up(invoice, self.client.round_amount):
            item_ids = self._ensure_items(invoice.items)
        body = payloads.invoice_body(
            invoice, contact_id, item_ids, self.client.round_amount
        )
        params = {"ignore_auto_number_generation": "true"}
        return self._upsert("invoice", invoice.id, body, params)

    def sync_payment(self, payment_id: int) -> str:
        payment = self.erp.get_payment(payment_id)
        contact_id = self._ensure_contact(payment.customer)
        invoice_id = None
        if payment.invoice is not None:
            invoice_id = payment.invoice.zoho_invoice_id or self.sync_invoice(
                payment.invoice.id
            )
        body = payloads.payment_body(
            payment, contact_id, invoice_id, self.client.round_amount
        )
        return self._upsert("payment", payment.id, body)

    def _ensure_contact(self, customer: Customer) -> str:
        return customer.zoho_contact_id or self.sync_customer(customer.id)

    def _ensure_items(self, items: list[LineItem]) -> dict[int, str]:
        item_ids = {}
        for line in items:
            if line.product_id not in item_ids:
                product = self.erp.get_product(line.product_id)
                item_ids[line.product_id] = product.zoho_item_id or (
                    self.sync_product(product.id)
                )
        return item_ids

    def _upsert(self, entity_type, entity_id, body, params=None) -> str:
        path, key, id_field = ENDPOINTS[entity_type]
        value = erp_id(entity_type, entity_id)
        record = self.client.upsert(path, key, ERP_ID_FIELD, value, body, params)
        zoho_id = str(record[id_field])

        self.erp.set_zoho_id(entity_type, entity_id, zoho_id)
        logger.info("Synced %s %d (%s) to Zoho %s %s", entity_type, entity_id,
                    value, key, zoho_id)  # fmt: skip
        return zoho_id
