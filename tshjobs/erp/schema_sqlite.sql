-- Reference schema of the TSH ERP tables that tshjobs reads, for SQLite 3.35
-- or later (the queries use RETURNING).
--
-- Same tables and columns as schema_postgres.sql, stored the SQLite way:
--
-- * An amount is TEXT in one canonical form: digits, a point and exactly two
--   decimals, no sign and no leading zero ('0.30', '1234.50'), at most 12
--   digits like NUMERIC(12, 2). Amounts never pass through a float, and two
--   equal amounts are equal strings, so GROUP BY and = on amounts are exact.
--   tshjobs converts them to Decimal when reading.
-- * A date is TEXT 'YYYY-MM-DD', and a timestamp is TEXT 'YYYY-MM-DD HH:MM:SS'
--   in UTC (the format of CURRENT_TIMESTAMP), so text order is time order.
--
-- The CHECK constraints reject any other form. Every statement is idempotent.

CREATE TABLE IF NOT EXISTS customers (
    id              INTEGER PRIMARY KEY,
    name            TEXT NOT NULL CHECK (trim(name) <> ''),
    email           TEXT CHECK (email LIKE '%_@_%'),
    phone           TEXT,
    created_at      TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP
                    CHECK (datetime(created_at) IS created_at),
    updated_at      TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP
                    CHECK (datetime(updated_at) IS updated_at),
    zoho_contact_id TEXT UNIQUE
);

CREATE INDEX IF NOT EXISTS customers_name_idx ON customers (name);
CREATE INDEX IF NOT EXISTS customers_email_idx ON customers (lower(email));

CREATE TABLE IF NOT EXISTS products (
    id             INTEGER PRIMARY KEY,
    sku            TEXT NOT NULL UNIQUE CHECK (trim(sku) <> ''),
    name           TEXT NOT NULL CHECK (trim(name) <> ''),
    unit_price     TEXT NOT NULL CHECK (
        unit_price GLOB '[0-9]*.[0-9][0-9]' AND unit_price NOT GLOB '*[^0-9.]*'
        AND unit_price NOT GLOB '*.*.*' AND unit_price NOT GLOB '0[0-9]*'
        AND length(unit_price) <= 13
    ),
    stock_quantity INTEGER NOT NULL DEFAULT 0 CHECK (stock_quantity >= 0),
    reorder_level  INTEGER NOT NULL DEFAULT 0 CHECK (reorder_level >= 0),
    zoho_item_id   TEXT UNIQUE
);

-- Serves the low-stock report, which lists products at or below their
-- reorder level.
CREATE INDEX IF NOT EXISTS products_low_stock_idx
    ON products (sku) WHERE stock_quantity <= reorder_level;

CREATE TABLE IF NOT EXISTS orders (
    id                 INTEGER PRIMARY KEY,
    order_number       TEXT NOT NULL UNIQUE,
    customer_id        INTEGER NOT NULL REFERENCES customers (id) ON DELETE RESTRICT,
    order_date         TEXT NOT NULL CHECK (date(order_date) IS order_date),
    status             TEXT NOT NULL DEFAULT 'confirmed' CHECK (
        status IN ('draft', 'confirmed', 'shipped', 'delivered', 'cancelled')
    ),
    total              TEXT NOT NULL CHECK (
        total GLOB '[0-9]*.[0-9][0-9]' AND total NOT GLOB '*[^0-9.]*'
        AND total NOT GLOB '*.*.*' AND total NOT GLOB '0[0-9]*'
        AND length(total) <= 13
    ),
    currency           TEXT NOT NULL DEFAULT 'USD'
                       CHECK (currency GLOB '[A-Z][A-Z][A-Z]'),
    created_at         TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP
                       CHECK (datetime(created_at) IS created_at),
    zoho_salesorder_id TEXT UNIQUE
);

CREATE INDEX IF NOT EXISTS orders_customer_idx ON orders (customer_id);
CREATE INDEX IF NOT EXISTS orders_date_idx ON orders (order_date);

CREATE TABLE IF NOT EXISTS order_items (
    id         INTEGER PRIMARY KEY,
    order_id   INTEGER NOT NULL REFERENCES orders (id) ON DELETE CASCADE,
    product_id INTEGER NOT NULL REFERENCES products (id) ON DELETE RESTRICT,
    quantity   INTEGER NOT NULL CHECK (quantity > 0),
    unit_price TEXT NOT NULL CHECK (
        unit_price GLOB '[0-9]*.[0-9][0-9]' AND unit_price NOT GLOB '*[^0-9.]*'
        AND unit_price NOT GLOB '*.*.*' AND unit_price NOT GLOB '0[0-9]*'
        AND length(unit_price) <= 13
    )
);

CREATE INDEX IF NOT EXISTS order_items_order_idx ON order_items (order_id);
CREATE INDEX IF NOT EXISTS order_items_product_idx ON order_items (product_id);

CREATE TABLE IF NOT EXISTS invoices (
    id              INTEGER PRIMARY KEY,
    invoice_number  TEXT NOT NULL UNIQUE,
    order_id        INTEGER REFERENCES orders (id) ON DELETE RESTRICT,
    customer_id     INTEGER NOT NULL REFERENCES customers (id) ON DELETE RESTRICT,
    issue_date      TEXT NOT NULL CHECK (date(issue_date) IS issue_date),
    due_date        TEXT NOT NULL CHECK (date(due_date) IS due_date),
    total           TEXT NOT NULL CHECK (
        total GLOB '[0-9]*.[0-9][0-9]' AND total NOT GLOB '*[^0-9.]*'
        AND total NOT GLOB '*.*.*' AND total NOT GLOB '0[0-9]*'
        AND length(total) <= 13
    ),
    amount_paid     TEXT NOT NULL DEFAULT '0.00' CHECK (
        amount_paid GLOB '[0-9]*.[0-9][0-9]' AND amount_paid NOT GLOB '*[^0-9.]*'
        AND amount_paid NOT GLOB '*.*.*' AND amount_paid NOT GLOB '0[0-9]*'
        AND length(amount_paid) <= 13
    ),
    status          TEXT NOT NULL DEFAULT 'draft' CHECK (
        status IN ('draft', 'sent', 'paid', 'void')
    ),
    currency        TEXT NOT NULL DEFAULT 'USD'
                    CHECK (currency GLOB '[A-Z][A-Z][A-Z]'),
    zoho_invoice_id TEXT UNIQUE,
    CHECK (due_date >= issue_date),
    -- Both sides are canonical amounts of at most 12 significant digits.
    -- Rounding such numbers to doubles keeps them distinct and in order, so
    -- this comparison is exact.
    CHECK (CAST(amount_paid AS NUMERIC) <= CAST(total AS NUMERIC)),
    CHECK (status <> 'paid' OR amount_paid = total)
);

CREATE INDEX IF NOT EXISTS invoices_order_idx ON invoices (order_id);
CREATE INDEX IF NOT EXISTS invoices_customer_idx ON invoices (customer_id);
CREATE INDEX IF NOT EXISTS invoices_status_due_idx ON invoices (status, due_date);

-- Serves the overdue report: open invoices ordered by due date.
CREATE INDEX IF NOT EXISTS invoices_open_due_idx
    ON invoices (due_date) WHERE status = 'sent';

CREATE TABLE IF NOT EXISTS payments (
    id              INTEGER PRIMARY KEY,
    payment_number  TEXT NOT NULL UNIQUE,
    invoice_id      INTEGER REFERENCES invoices (id) ON DELETE RESTRICT,
    customer_id     INTEGER NOT NULL REFERENCES customers (id) ON DELETE RESTRICT,
    payment_date    TEXT NOT NULL CHECK (date(payment_date) IS payment_date),
    amount          TEXT NOT NULL CHECK (
        amount GLOB '[0-9]*.[0-9][0-9]' AND amount NOT GLOB '*[^0-9.]*'
        AND amount NOT GLOB '*.*.*' AND amount NOT GLOB '0[0-9]*'
        AND length(amount) <= 13 AND amount <> '0.00'
    ),
    method          TEXT NOT NULL CHECK (
        method IN ('cash', 'bank_transfer', 'card', 'cheque', 'other')
    ),
    reference       TEXT,
    zoho_payment_id TEXT UNIQUE
);

CREATE INDEX IF NOT EXISTS payments_invoice_idx ON payments (invoice_id);
CREATE INDEX IF NOT EXISTS payments_customer_idx ON payments (customer_id);
CREATE INDEX IF NOT EXISTS payments_date_idx ON payments (payment_date);

-- Entities the ERP wants pushed to Zoho Books. entity_id points into the
-- table that entity_type names, so it has no foreign key.
CREATE TABLE IF NOT EXISTS zoho_sync_queue (
    id          INTEGER PRIMARY KEY,
    entity_type TEXT NOT NULL CHECK (
        entity_type IN ('customer', 'product', 'order', 'invoice', 'payment')
    ),
    entity_id   INTEGER NOT NULL,
    status      TEXT NOT NULL DEFAULT 'pending' CHECK (
        status IN ('pending', 'in_progress', 'done', 'failed')
    ),
    attempts    INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    last_error  TEXT,
    created_at  TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP
                CHECK (datetime(created_at) IS created_at),
    updated_at  TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP
                CHECK (datetime(updated_at) IS updated_at)
);

-- Serves the claim of the oldest pending rows.
CREATE INDEX IF NOT EXISTS zoho_sync_queue_pending_idx
    ON zoho_sync_queue (id) WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS zoho_sync_queue_entity_idx
    ON zoho_sync_queue (entity_type, entity_id);
CREATE INDEX IF NOT EXISTS zoho_sync_queue_status_idx
    ON zoho_sync_queue (status, updated_at);
