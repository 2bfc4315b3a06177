-- Invoices a customer can receive (issue 18): the seller's and customers'
-- billing details as effective-dated configuration (`temctl apply`), VAT
-- rates as effective-dated data, and a gapless number per seller assigned
-- when an invoice becomes final. See shared/src/billing/parties.rs, vat.rs,
-- numbering.rs and invoice.rs.

-- The seller's details, one row per version: an invoice uses the row of its
-- seller with the latest valid_from on or before its issue date.
CREATE TABLE seller_details (
    seller_code            TEXT NOT NULL CHECK (seller_code <> ''),
    valid_from             DATE NOT NULL,
    legal_name             TEXT NOT NULL,
    street                 TEXT NOT NULL,
    city                   TEXT NOT NULL,
    postcode               TEXT NOT NULL,
    country                TEXT NOT NULL,
    kvk                    TEXT NOT NULL,
    vat_number             TEXT NOT NULL,
    iban                   TEXT NOT NULL,
    bic                    TEXT NOT NULL,
    payment_terms_days     INTEGER NOT NULL CHECK (payment_terms_days BETWEEN 0 AND 365),
    peppol_scheme          TEXT NOT NULL,
    peppol_id              TEXT NOT NULL,
    invoice_number_format  TEXT NOT NULL,
    updated_at             TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (seller_code, valid_from)
);

-- A customer's billing details, one row per version. The required fields
-- are nullable on purpose: `temctl apply` always writes them, but a row
-- written by other means may lack one, and finalisation then keeps the
-- invoice a draft naming the missing fields (billing::parties).
CREATE TABLE customer_billing_details (
    customer_id         BIGINT NOT NULL REFERENCES customer (id),
    valid_from          DATE NOT NULL,
    seller_code         TEXT,
    legal_name          TEXT,
    street              TEXT,
    city                TEXT,
    postcode            TEXT,
    country             TEXT,
    vat_number          TEXT,
    peppol_scheme       TEXT,
    peppol_id           TEXT,
    invoice_email       TEXT,
    buyer_reference     TEXT,
    purchase_order      TEXT,
    payment_terms_days  INTEGER CHECK (payment_terms_days BETWEEN 0 AND 365),
    vat_category        TEXT,
    updated_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (customer_id, valid_from)
);

-- VAT rates as data: the rate of `code` in `country` from `valid_from` on,
-- in hundredths of a percent (2100 = 21%), with its UNCL5305 category.
CREATE TABLE vat_rate (
    country      TEXT NOT NULL,
    code         TEXT NOT NULL CHECK (code IN ('standard', 'reduced', 'zero', 'reverse_charge', 'exempt', 'outside_scope')),
    valid_from   DATE NOT NULL,
    category     TEXT NOT NULL CHECK (category IN ('S', 'AE', 'Z', 'E', 'O')),
    rate_bp      INTEGER NOT NULL CHECK (rate_bp BETWEEN 0 AND 10000),
    PRIMARY KEY (country, code, valid_from),
    -- Only the standard and reduced rates are percentages above zero.
    CHECK (category = 'S' OR rate_bp = 0)
);
INSERT INTO vat_rate (country, code, valid_from, category, rate_bp) VALUES
    ('NL', 'standard',       '2001-01-01', 'S', 1900),
    ('NL', 'standard',       '2012-10-01', 'S', 2100),
    ('NL', 'reduced',        '2001-01-01', 'S', 600),
    ('NL', 'reduced',        '2019-01-01', 'S', 900),
    ('NL', 'zero',           '2001-01-01', 'Z', 0),
    ('NL', 'reverse_charge', '2001-01-01', 'AE', 0),
    ('NL', 'exempt',         '2001-01-01', 'E', 0),
    ('NL', 'outside_scope',  '2001-01-01', 'O', 0);

-- The gapless series: the last number taken per seller and year (0 for a
-- format without {year}). Taken with INSERT ... ON CONFLICT DO UPDATE
-- SET last_number = last_number + 1 RETURNING in the finalisation's own
-- transaction, never from a sequence: a sequence keeps a value a rolled
-- back transaction took, which would leave a gap in the series.
CREATE TABLE invoice_number_counter (
    seller_code  TEXT NOT NULL,
    year         INTEGER NOT NULL,
    last_number  BIGINT NOT NULL CHECK (last_number >= 1),
    PRIMARY KEY (seller_code, year)
);

-- What a final invoice was issued with. Invoices finalised before this
-- migration have none of it; they never change again, so the checks below
-- are NOT VALID (enforced for every new or changed row, not for those).
ALTER TABLE invoice
    ADD COLUMN seller_code       TEXT,
    ADD COLUMN number            TEXT,
    ADD COLUMN number_seq        BIGINT,
    ADD COLUMN issue_date        DATE,
    ADD COLUMN due_date          DATE,
    ADD COLUMN seller_details    JSONB,
    ADD COLUMN buyer_details     JSONB,
    -- BG-23 and the document totals in cents (billing::document::amounts).
    ADD COLUMN vat_breakdown     JSONB,
    ADD COLUMN net_cents         BIGINT,
    ADD COLUMN vat_cents         BIGINT,
    ADD COLUMN payable_cents     BIGINT,
    -- Why a closed cycle's invoice is still a draft (missing billing data);
    -- cleared when it becomes final.
    ADD COLUMN blocked_reason    TEXT,
    ADD COLUMN blocked_at        TIMESTAMPTZ;
ALTER TABLE invoice
    ADD CONSTRAINT invoice_final_is_numbered CHECK (
        (status = 'final') = (number IS NOT NULL)
        AND (status = 'draft' OR (seller_code IS NOT NULL AND number_seq IS NOT NULL AND issue_date IS NOT NULL
                                  AND due_date IS NOT NULL AND seller_details IS NOT NULL
                                  AND buyer_details IS NOT NULL AND vat_breakdown IS NOT NULL
                                  AND net_cents IS NOT NULL AND vat_cents IS NOT NULL
                                  AND payable_cents IS NOT NULL AND blocked_reason IS NULL))
    ) NOT VALID;
ALTER TABLE invoice ADD CONSTRAINT invoice_number_unique_per_seller UNIQUE (seller_code, number);
-- `temctl status` lists the blocked drafts.
CREATE INDEX invoice_blocked ON invoice (blocked_at) WHERE blocked_reason IS NOT NULL;

-- Each line's VAT and its net amount in cents as the document states it;
-- set when the invoice becomes final.
ALTER TABLE invoice_line
    ADD COLUMN vat_category  TEXT CHECK (vat_category IN ('S', 'AE', 'Z', 'E', 'O')),
    ADD COLUMN vat_rate_bp   INTEGER CHECK (vat_rate_bp BETWEEN 0 AND 10000),
    ADD COLUMN net_cents     BIGINT;
