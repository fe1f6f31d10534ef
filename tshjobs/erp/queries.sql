-- Every query tshjobs runs against the ERP database.
--
-- Format: a block per query, starting with '-- name: query_name' and holding
-- one statement with ':name' placeholders. A header may end in [postgresql]
-- or [sqlite] for a variant that only that database runs.
--
-- An admin whose ERP schema differs sets TSHJOBS_ERP_QUERIES_FILE to a file in
-- this format. Its blocks replace the blocks of the same name here, and must
-- return the same column names; docs/erp-schema.md lists them.
--
-- On SQLite an amount is canonical text ('12.30'). The queries therefore never
-- do arithmetic or ordering on amounts in SQL, where SQLite would use floats;
-- tshjobs adds them up as Decimal.

-- Customers and products

-- name: get_customer
SELECT id, name, email, phone, zoho_contact_id
FROM customers
WHERE id = :customer_id;

-- name: first_customer_named
-- The lowest customer id with this exact name, for the Zoho contact name.
SELECT min(id) AS id FROM customers WHERE name = :name;

-- name: get_product
SELECT id, sku, name, unit_price, stock_quantity, reorder_level, zoho_item_id
FROM products
WHERE id = :product_id;

-- name: list_low_stock_products
SELECT id, sku, name, unit_price, stock_quantity, reorder_level, zoho_item_id
FROM products
WHERE stock_quantity <= reorder_level
ORDER BY reorder_level - stock_quantity DESC, sku;

-- Orders, invoices, payments

-- name: get_order
SELECT o.id, o.order_number, o.order_date, o.status, o.total, o.currency,
       o.zoho_salesorder_id,
       c.id AS customer_id, c.name AS customer_name, c.email AS customer_email,
       c.phone AS customer_phone, c.zoho_contact_id AS customer_zoho_contact_id
FROM orders o
JOIN customers c ON c.id = o.customer_id
WHERE o.id = :order_id;

-- name: get_order_items
SELECT oi.product_id, p.sku, p.name, oi.quantity, oi.unit_price
FROM order_items oi
JOIN products p ON p.id = oi.product_id
WHERE oi.order_id = :order_id
ORDER BY oi.id;

-- name: get_invoice
SELECT i.id, i.invoice_number, i.order_id, i.issue_date, i.due_date, i.total,
       i.amount_paid, i.status, i.currency, i.zoho_invoice_id,
       c.id AS customer_id, c.name AS customer_name, c.email AS customer_email,
       c.phone AS customer_phone, c.zoho_contact_id AS customer_zoho_contact_id
FROM invoices i
JOIN customers c ON c.id = i.customer_id
WHERE i.id = :invoice_id;

-- name: get_payment
SELECT pm.id, pm.payment_number, pm.invoice_id, pm.payment_date, pm.amount,
       pm.method, pm.reference, pm.zoho_payment_id,
       c.id AS customer_id, c.name AS customer_name, c.email AS customer_email,
       c.phone AS customer_phone, c.zoho_contact_id AS customer_zoho_contact_id
FROM payments pm
JOIN customers c ON c.id = pm.customer_id
WHERE pm.id = :payment_id;

-- An invoice is overdue when it was sent, is not fully paid (payment in full
-- turns its status to 'paid') and its due date is before :as_of.

-- name: list_overdue_invoices
SELECT i.id, i.invoice_number, i.order_id, i.issue_date, i.due_date, i.total,
       i.amount_paid, i.status, i.currency, i.zoho_invoice_id,
       c.id AS customer_id, c.name AS customer_name, c.email AS customer_email,
       c.phone AS customer_phone, c.zoho_contact_id AS customer_zoho_contact_id
FROM invoices i
JOIN customers c ON c.id = i.customer_id
WHERE i.status = 'sent' AND i.due_date < :as_of
ORDER BY i.due_date, i.id;

-- name: list_overdue_invoice_items
SELECT i.id AS invoice_id, oi.product_id, p.sku, p.name, oi.quantity,
       oi.unit_price
FROM invoices i
JOIN order_items oi ON oi.order_id = i.order_id
JOIN products p ON p.id = oi.product_id
WHERE i.status = 'sent' AND i.due_date < :as_of
ORDER BY i.id, oi.id;

-- Sales summaries over order dates from :start to :end, both included.
-- Rows come grouped by amount so that tshjobs can add them up exactly.

-- name: sales_order_totals
SELECT currency, total, COUNT(*) AS order_count
FROM orders
WHERE order_date BETWEEN :start AND :end AND status <> 'cancelled'
GROUP BY currency, total;

-- name: sales_product_quantities
SELECT p.id AS product_id, p.sku, p.name, o.currency, oi.unit_price,
       SUM(oi.quantity) AS quantity
FROM order_items oi
JOIN orders o ON o.id = oi.order_id
JOIN products p ON p.id = oi.product_id
WHERE o.order_date BETWEEN :start AND :end AND o.status <> 'cancelled'
GROUP BY p.id, p.sku, p.name, o.currency, oi.unit_price;

-- Zoho Books ids. Against a production ERP, tshjobs writes only these
-- columns, the zoho_sync_queue table, and the payments and invoice amounts
-- that Zoho Books webhooks report (the last section of this file).

-- name: set_customer_zoho_id
UPDATE customers SET zoho_contact_id = :zoho_id WHERE id = :entity_id;

-- name: set_product_zoho_id
UPDATE products SET zoho_item_id = :zoho_id WHERE id = :entity_id;

-- name: set_order_zoho_id
UPDATE orders SET zoho_salesorder_id = :zoho_id WHERE id = :entity_id;

-- name: set_invoice_zoho_id
UPDATE invoices SET zoho_invoice_id = :zoho_id WHERE id = :entity_id;

-- name: set_payment_zoho_id
UPDATE payments SET zoho_payment_id = :zoho_id WHERE id = :entity_id;

-- Zoho sync queue

-- name: enqueue_sync
INSERT INTO zoho_sync_queue (entity_type, entity_id, status, attempts)
SELECT :entity_type, :entity_id, 'pending', 0
WHERE NOT EXISTS (
    SELECT 1 FROM zoho_sync_queue
    WHERE entity_type = :entity_type AND entity_id = :entity_id
      AND status = 'pending'
)
RETURNING id;

-- name: find_pending_sync
SELECT id
FROM zoho_sync_queue
WHERE entity_type = :entity_type AND entity_id = :entity_id AND status = 'pending'
ORDER BY id
LIMIT 1;

-- name: get_sync_row
SELECT id, entity_type, entity_id, status, attempts, last_error, created_at,
       updated_at
FROM zoho_sync_queue
WHERE id = :queue_id;

-- name: list_sync_rows
SELECT id, entity_type, entity_id, status, attempts, last_error, created_at,
       updated_at
FROM zoho_sync_queue
WHERE CAST(:status AS TEXT) IS NULL OR status = :status
ORDER BY id DESC
LIMIT :limit;

-- name: count_sync_rows_by_status
SELECT status, COUNT(*) AS row_count
FROM zoho_sync_queue
GROUP BY status;

-- Claims the oldest pending rows. SKIP LOCKED lets concurrent claimers pass
-- over rows another transaction is claiming, so each gets different rows.

-- name: claim_sync_rows [postgresql]
UPDATE zoho_sync_queue
SET status = 'in_progress', attempts = attempts + 1,
    updated_at = CURRENT_TIMESTAMP
WHERE id IN (
    SELECT id FROM zoho_sync_queue
    WHERE status = 'pending'
    ORDER BY id
    LIMIT :limit
    FOR UPDATE SKIP LOCKED
)
RETURNING id, entity_type, entity_id, status, attempts, last_error, created_at,
          updated_at;

-- SQLite has one writer at a time, and tshjobs runs this inside BEGIN
-- IMMEDIATE, so no other claim can interleave.

-- name: claim_sync_rows [sqlite]
UPDATE zoho_sync_queue
SET status = 'in_progress', attempts = attempts + 1,
    updated_at = CURRENT_TIMESTAMP
WHERE id IN (
    SELECT id FROM zoho_sync_queue
    WHERE status = 'pending'
    ORDER BY id
    LIMIT :limit
)
RETURNING id, entity_type, entity_id, status, attempts, last_error, created_at,
          updated_at;

-- name: mark_sync_row
UPDATE zoho_sync_queue
SET status = :status, last_error = :last_error, updated_at = CURRENT_TIMESTAMP
WHERE id = :queue_id;

-- name: requeue_stale_sync_rows
UPDATE zoho_sync_queue
SET status = 'pending', updated_at = CURRENT_TIMESTAMP
WHERE status = 'in_progress' AND updated_at < :cutoff;

-- Only a failed row changes, so a second request for the same row (a double
-- click, another user) changes nothing and returns no row.

-- name: retry_failed_sync_row
UPDATE zoho_sync_queue
SET status = 'pending', updated_at = CURRENT_TIMESTAMP
WHERE id = :queue_id AND status = 'failed'
RETURNING id, entity_type, entity_id, status, attempts, last_error, created_at,
          updated_at;

-- Writes of the demo's ERP simulator. The real ERP does these itself.

-- name: insert_order
INSERT INTO orders (order_number, customer_id, order_date, status, total, currency)
VALUES (:order_number, :customer_id, :order_date, :status, :total, :currency)
RETURNING id;

-- name: set_order_number
UPDATE orders SET order_number = :order_number WHERE id = :order_id;

-- name: insert_order_item
INSERT INTO order_items (order_id, product_id, quantity, unit_price)
VALUES (:order_id, :product_id, :quantity, :unit_price);

-- name: find_open_invoice_for_order
SELECT id
FROM invoices
WHERE order_id = :order_id AND status <> 'void'
ORDER BY id
LIMIT 1;

-- name: insert_invoice
INSERT INTO invoices (invoice_number, order_id, customer_id, issue_date,
                      due_date, total, amount_paid, status, currency)
VALUES (:invoice_number, :order_id, :customer_id, :issue_date, :due_date,
        :total, :amount_paid, :status, :currency)
RETURNING id;

-- name: set_invoice_number
UPDATE invoices SET invoice_number = :invoice_number WHERE id = :invoice_id;

-- Locks the invoice until the payment's transaction ends. On SQLite, BEGIN
-- IMMEDIATE already keeps other writers out.

-- name: get_invoice_for_payment [postgresql]
SELECT id, customer_id, total, amount_paid, status
FROM invoices
WHERE id = :invoice_id
FOR UPDATE;

-- name: get_invoice_for_payment [sqlite]
SELECT id, customer_id, total, amount_paid, status
FROM invoices
WHERE id = :invoice_id;

-- name: update_invoice_payment
UPDATE invoices
SET amount_paid = :amount_paid, status = :status
WHERE id = :invoice_id;

-- name: insert_payment
INSERT INTO payments (payment_number, invoice_id, customer_id, payment_date,
                      amount, method, reference)
VALUES (:payment_number, :invoice_id, :customer_id, :payment_date, :amount,
        :method, :reference)
RETURNING id;

-- name: set_payment_number
UPDATE payments SET payment_number = :payment_number WHERE id = :payment_id;

-- Zoho Books webhooks: payments recorded in Zoho and invoice balances changed
-- there. The invoice is locked with get_invoice_for_payment first.

-- name: find_invoice_by_zoho_id
SELECT id FROM invoices WHERE zoho_invoice_id = :zoho_id;

-- name: find_payment_by_zoho_id
SELECT id FROM payments WHERE zoho_payment_id = :zoho_id;

-- name: list_invoice_payment_amounts
SELECT amount FROM payments WHERE invoice_id = :invoice_id;

-- name: insert_zoho_payment
INSERT INTO payments (payment_number, invoice_id, customer_id, payment_date,
                      amount, method, reference, zoho_payment_id)
VALUES (:payment_number, :invoice_id, :customer_id, :payment_date, :amount,
        :method, :reference, :zoho_payment_id)
RETURNING id;
