-- Retention, archive and the maintenance's own record (issue 20).
--
-- A customer's month of CDRs (UTC calendar month of started_at) is kept
-- for its retention: the customer's cdr_retention_months, or the stack's
-- default (CDR_RETENTION_MONTHS) when NULL. Past it, the daily maintenance
-- writes the month to S3 (its CDRs, and the pricings and totals of the
-- customer's cycles that start in it, as Parquet, with a manifest), records
-- that here, and only then removes the rows: the month's partitions are
-- detached and dropped when every customer in them is archived, otherwise
-- the customer's rows are deleted.
ALTER TABLE customer
    ADD COLUMN cdr_retention_months SMALLINT CHECK (cdr_retention_months BETWEEN 1 AND 240);

-- One row per archived (customer, month); customer_id NULL for the CDRs
-- that never found their customer.
--   written:  the files and the manifest are in S3; the rows are still here.
--   removed:  the rows are gone from the database (deleted, or their
--             partitions dropped).
--   restored: `temctl archive restore` brought the rows back; the
--             maintenance leaves them until keep_until, then archives the
--             month again.
CREATE TABLE cdr_archive (
    customer_id       BIGINT,
    month             DATE NOT NULL CHECK (month = date_trunc('month', month)::date),
    state             TEXT NOT NULL CHECK (state IN ('written', 'removed', 'restored')),
    bucket            TEXT NOT NULL,
    manifest_key      TEXT NOT NULL,
    cdr_rows          BIGINT NOT NULL CHECK (cdr_rows >= 0),
    -- SHA-256 over the CDRs in the archive's order (maintenance::archive):
    -- what a restore checks the rows it brings back against.
    cdr_rows_sha256   TEXT NOT NULL CHECK (cdr_rows_sha256 ~ '^[0-9a-f]{64}$'),
    cycle_rows        BIGINT NOT NULL CHECK (cycle_rows >= 0),
    -- The largest CDR id archived: rows that arrive after the files were
    -- written are never removed with the month (see the removal).
    max_cdr_id        BIGINT,
    written_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    removed_at        TIMESTAMPTZ,
    restored_at       TIMESTAMPTZ,
    keep_until        TIMESTAMPTZ,
    -- 0 for the CDRs without a customer (ids start at 1): one key for both.
    customer_key      BIGINT GENERATED ALWAYS AS (coalesce(customer_id, 0)) STORED,
    CHECK ((state = 'restored') = (keep_until IS NOT NULL)),
    PRIMARY KEY (customer_key, month)
);

-- One row per maintenance run (the chain's id): what each part did, and
-- when the run finished. `temctl status` reads the last finished run.
CREATE TABLE maintenance_run (
    run_id       TEXT PRIMARY KEY,
    today        DATE NOT NULL,
    started_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    finished_at  TIMESTAMPTZ,
    report       JSONB NOT NULL DEFAULT '{}'::jsonb CHECK (jsonb_typeof(report) = 'object')
);
CREATE INDEX maintenance_run_finished ON maintenance_run (finished_at) WHERE finished_at IS NOT NULL;

-- Migration 0019 rebuilt call_detail_record as a partitioned table without
-- the bill-shock rule's partial index of 0017 (roaming data outside the
-- EU by customer and time): made again here, on every partition.
CREATE INDEX IF NOT EXISTS call_detail_record_world_data ON call_detail_record (customer_id, started_at)
    WHERE kind = 'data' AND roaming_zone = 'world';
