-- A CDR store that lasts for years (issue 20): call_detail_record and the
-- pricings of rated cycles (rating_chunk) are partitioned by month, so that
-- indexes, vacuum and each import's uniqueness check work on one month's
-- rows whatever the table's size, and a month past its retention goes by
-- detaching its partition instead of deleting rows.
--
-- call_detail_record: RANGE on started_at, one partition per calendar month
-- in UTC (call_detail_record_yYYYYmMM), and a DEFAULT partition so that a
-- CDR whose month has no partition yet is loaded, never rejected; the daily
-- maintenance (tem_create_month_partition) creates months ahead and moves
-- any rows the default partition holds for a month into that month's new
-- partition.
--
-- Exactly-once import: a unique index on a partitioned table must contain
-- the partition key, so (provider, external_id) cannot be unique across
-- the whole table by one index. Each partition instead has its own unique
-- index on (provider, external_id) ({partition}_key, made with the
-- partition), and the importer inserts with ON CONFLICT DO NOTHING, which
-- on a partitioned table checks the unique indexes of the partition the
-- row goes to. A CDR delivered again (the same file, an overlapping
-- export, a retried import) is the same line parsed by the same format:
-- it has the same started_at, so it goes to the partition that holds its
-- first delivery, whose index refuses it. That is why the uniqueness holds
-- across partitions without an index across them. The one pair it cannot
-- see is a carrier sending one id twice with start times in different
-- months: two different CDRs by their content, loaded as two (README,
-- "Partitions"). (provider, external_id, started_at) is unique over the
-- whole table, as the partitions' ranges do not overlap.

-- rating_chunk: RANGE on cycle (its first day), monthly, with a default
-- partition; its primary key already contains cycle.
--
-- Existing rows are moved: the old table is renamed, the partitioned one
-- created without indexes, filled, and indexed once at the end (one
-- sorted build per partition instead of index maintenance per row; README
-- says how long 10M rows took).

-- ---------------------------------------------------------------------
-- Creating one month's partition, also when the default partition already
-- holds rows of that month. Idempotent: an existing partition is left
-- alone. Returns the rows moved out of the default partition, or NULL when
-- the partition existed already.
CREATE FUNCTION tem_create_month_partition(parent REGCLASS, month DATE) RETURNS BIGINT
LANGUAGE plpgsql AS $$
DECLARE
    first_day  DATE := date_trunc('month', month)::date;
    next_day   DATE := (date_trunc('month', month) + interval '1 month')::date;
    base       TEXT := (SELECT relname FROM pg_class WHERE oid = parent);
    part       TEXT := format('%s_y%sm%s', base, to_char(first_day, 'YYYY'), to_char(first_day, 'MM'));
    dflt       TEXT := base || '_default';
    key_column TEXT;
    low        TEXT;
    high       TEXT;
    moved      BIGINT := 0;
BEGIN
    -- Two runs at once (a retried step beside a late one) take turns; the
    -- second finds the partition made.
    PERFORM pg_advisory_xact_lock(hashtext('tem_create_month_partition'));
    IF to_regclass(part) IS NOT NULL THEN
        RETURN NULL;
    END IF;
    -- The partition key's column (started_at or cycle) from the catalogue,
    -- so one function serves both tables.
    SELECT a.attname INTO STRICT key_column
    FROM pg_partitioned_table p
    JOIN pg_attribute a ON a.attrelid = p.partrelid AND a.attnum = p.partattrs[0]
    WHERE p.partrelid = parent;
    IF (SELECT atttypid FROM pg_attribute WHERE attrelid = parent AND attname = key_column)
       = 'timestamptz'::regtype THEN
        -- Months in UTC: a partition's bounds do not depend on the session.
        low := quote_literal(first_day::text || ' 00:00:00+00');
        high := quote_literal(next_day::text || ' 00:00:00+00');
    ELSE
        low := quote_literal(first_day::text);
        high := quote_literal(next_day::text);
    END IF;
    -- Moving rows between partitions of the same table changes no CDR:
    -- the triggers that mark hand edits must not see it as one.
    PERFORM set_config('tem.cycle_changes_marked', 'on', true);
    IF to_regclass(dflt) IS NOT NULL THEN
        EXECUTE format('SELECT count(*) FROM %I WHERE %I >= %s AND %I < %s',
                       dflt, key_column, low, key_column, high) INTO moved;
    END IF;
    IF moved = 0 THEN
        EXECUTE format('CREATE TABLE %I PARTITION OF %s FOR VALUES FROM (%s) TO (%s)',
                       part, parent, low, high);
    ELSE
        -- A partition cannot be created over rows the default partition
        -- holds for its range: build it beside, move the rows, attach it.
        EXECUTE format('CREATE TABLE %I (LIKE %s INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING STORAGE INCLUDING COMPRESSION)',
                       part, parent);
        EXECUTE format('WITH gone AS (DELETE FROM %I WHERE %I >= %s AND %I < %s RETURNING *)
                        INSERT INTO %I SELECT * FROM gone',
                       dflt, key_column, low, key_column, high, part);
        EXECUTE format('ALTER TABLE %I ADD CONSTRAINT %I CHECK (%I >= %s AND %I < %s)',
                       part, part || '_range', key_column, low, key_column, high);
        EXECUTE format('ALTER TABLE %s ATTACH PARTITION %I FOR VALUES FROM (%s) TO (%s)',
                       parent, part, low, high);
        -- The check only spared the attach its scan.
        EXECUTE format('ALTER TABLE %I DROP CONSTRAINT %I', part, part || '_range');
    END IF;
    -- A table of CDRs (call_detail_record, or a benchmark's copy of it):
    -- the partition's own uniqueness of (provider, external_id), which the
    -- import's ON CONFLICT checks (see the top). The migration below
    -- builds these after loading the existing rows.
    IF EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = parent AND attname = 'external_id' AND NOT attisdropped)
       AND current_setting('tem.partition_keys_later', true) IS DISTINCT FROM 'on' THEN
        EXECUTE format('CREATE UNIQUE INDEX IF NOT EXISTS %I ON %I (provider, external_id)',
                       part || '_key', part);
    END IF;
    PERFORM set_config('tem.cycle_changes_marked', 'off', true);
    RETURN moved;
END
$$;

-- ---------------------------------------------------------------------
-- call_detail_record
ALTER TABLE call_detail_record RENAME TO call_detail_record_unpartitioned;
ALTER INDEX call_detail_record_pkey RENAME TO call_detail_record_unpartitioned_pkey;
ALTER INDEX call_detail_record_customer_started RENAME TO call_detail_record_unpartitioned_customer_started;
ALTER INDEX call_detail_record_unassigned RENAME TO call_detail_record_unpartitioned_unassigned;
DROP TRIGGER call_detail_record_update_marks ON call_detail_record_unpartitioned;
DROP TRIGGER call_detail_record_delete_marks ON call_detail_record_unpartitioned;

CREATE TABLE call_detail_record (
    id                    BIGINT GENERATED ALWAYS AS IDENTITY,
    provider              TEXT NOT NULL,
    external_id           TEXT NOT NULL,
    subscription          TEXT NOT NULL,
    -- NULL until the subscription is known.
    customer_id           BIGINT,
    started_at            TIMESTAMPTZ NOT NULL,
    kind                  TEXT NOT NULL CHECK (kind IN ('voice', 'sms', 'mms', 'data', 'service')),
    direction             TEXT NOT NULL CHECK (direction IN ('outgoing', 'incoming')),
    destination           TEXT NOT NULL,
    roaming_zone          TEXT NOT NULL CHECK (roaming_zone IN ('home', 'eu', 'world')),
    duration_seconds      INTEGER NOT NULL CHECK (duration_seconds >= 0),
    volume_bytes          BIGINT NOT NULL CHECK (volume_bytes >= 0),
    units                 INTEGER NOT NULL CHECK (units >= 0),
    -- Micro-euros.
    provider_cost_micros  BIGINT NOT NULL,
    import_file_id        BIGINT NOT NULL,
    source_line           INTEGER NOT NULL
) PARTITION BY RANGE (started_at);
CREATE TABLE call_detail_record_default PARTITION OF call_detail_record DEFAULT;

SELECT set_config('tem.partition_keys_later', 'on', true);
-- A partition for every month that has rows, and for this month and the
-- next three (the maintenance keeps three ahead from now on).
SELECT tem_create_month_partition('call_detail_record', month::date)
FROM (SELECT DISTINCT date_trunc('month', started_at AT TIME ZONE 'UTC') AS month
      FROM call_detail_record_unpartitioned
      UNION
      SELECT date_trunc('month', (now() AT TIME ZONE 'UTC') + make_interval(months => n))
      FROM generate_series(0, 3) AS n) AS months
ORDER BY month;

INSERT INTO call_detail_record OVERRIDING SYSTEM VALUE
SELECT id, provider, external_id, subscription, customer_id, started_at, kind, direction,
       destination, roaming_zone, duration_seconds, volume_bytes, units,
       provider_cost_micros, import_file_id, source_line
FROM call_detail_record_unpartitioned;
SELECT setval(pg_get_serial_sequence('call_detail_record', 'id'),
              greatest((SELECT max(id) FROM call_detail_record_unpartitioned), 1),
              (SELECT max(id) FROM call_detail_record_unpartitioned) IS NOT NULL);
DROP TABLE call_detail_record_unpartitioned;

SELECT set_config('tem.partition_keys_later', 'off', true);
DO $$
DECLARE
    part TEXT;
BEGIN
    FOR part IN SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
                WHERE i.inhparent = 'call_detail_record'::regclass LOOP
        EXECUTE format('CREATE UNIQUE INDEX %I ON %I (provider, external_id)', part || '_key', part);
    END LOOP;
END
$$;
-- CalculateTotals reads one customer's cycle (see 0005).
CREATE INDEX call_detail_record_customer_started ON call_detail_record (customer_id, started_at);
CREATE INDEX call_detail_record_unassigned ON call_detail_record (started_at) WHERE customer_id IS NULL;

-- The hand-edit triggers of 0010, on the partitioned table: they fire for
-- statements on call_detail_record, not for statements naming a partition.
CREATE TRIGGER call_detail_record_update_marks
    AFTER UPDATE ON call_detail_record
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION call_detail_record_mark_changes();
CREATE TRIGGER call_detail_record_delete_marks
    AFTER DELETE ON call_detail_record
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION call_detail_record_mark_changes();

-- ---------------------------------------------------------------------
-- rating_chunk
ALTER TABLE rating_chunk RENAME TO rating_chunk_unpartitioned;
ALTER INDEX rating_chunk_pkey RENAME TO rating_chunk_unpartitioned_pkey;
ALTER TABLE rating_chunk_unpartitioned DROP CONSTRAINT rating_chunk_customer_id_cycle_fkey;

CREATE TABLE rating_chunk (
    customer_id     BIGINT NOT NULL,
    cycle           DATE NOT NULL,
    segment         TIMESTAMPTZ NOT NULL,
    seq             INTEGER NOT NULL,
    first_position  BIGINT NOT NULL,
    cdr_count       INTEGER NOT NULL CHECK (cdr_count > 0),
    pricings        BYTEA NOT NULL
) PARTITION BY RANGE (cycle);
ALTER TABLE rating_chunk ALTER COLUMN pricings SET STORAGE EXTERNAL;
CREATE TABLE rating_chunk_default PARTITION OF rating_chunk DEFAULT;

SELECT tem_create_month_partition('rating_chunk', month::date)
FROM (SELECT DISTINCT date_trunc('month', cycle) AS month FROM rating_chunk_unpartitioned
      UNION
      SELECT date_trunc('month', (now() AT TIME ZONE 'UTC') + make_interval(months => n))
      FROM generate_series(0, 3) AS n) AS months
ORDER BY month;

INSERT INTO rating_chunk SELECT * FROM rating_chunk_unpartitioned;
DROP TABLE rating_chunk_unpartitioned;

ALTER TABLE rating_chunk ADD PRIMARY KEY (customer_id, cycle, segment, seq);
ALTER TABLE rating_chunk ADD FOREIGN KEY (customer_id, cycle)
    REFERENCES cycle_state (customer_id, cycle) ON DELETE CASCADE DEFERRABLE INITIALLY DEFERRED;
