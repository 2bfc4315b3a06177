-- CalculateTotals reads one customer's cycle: without this index every
-- calculation reads every customer's CDRs. The bulk load pays for it
-- (bench/README.md has the numbers).
CREATE INDEX call_detail_record_customer_started ON call_detail_record (customer_id, started_at);

-- No index on id: it would serve only `temctl explain --cdr <id>` and cost
-- every import about half as much again as the one above (measured with
-- psql \copy of a million rows); the CLI finds a CDR by its key
-- (PROVIDER:EXTERNAL_ID) through the primary key, by id with a scan.

-- One row per CDR cost more to write than the rating itself (a million rows
-- with a sentence each); how each CDR was priced is now kept per cycle as
-- parallel arrays (cycle_rating_chunk) and explained on demand.
DROP TABLE cdr_rating;

-- The rating of one rate-plan cycle: the plan it was rated with, and the
-- CDRs that more than one bundle covered.
CREATE TABLE cycle_rating (
    customer_id     BIGINT NOT NULL,
    cycle           DATE NOT NULL,
    rate_plan_id    TEXT NOT NULL,
    -- The plan document as it was when rated: the rate and bundle numbers of
    -- the chunks index its "rates" and "bundles", so a later change of the
    -- plan does not change what an old rating says.
    plan            JSONB NOT NULL,
    cdr_count       BIGINT NOT NULL,
    rated_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- Each share of a CDR that several bundles covered: its position in
    -- consumption order, the bundle number and the quantity it covered. Rare
    -- (a bundle running out part-way through a CDR), so kept here and not
    -- per CDR.
    split_position  INTEGER[] NOT NULL DEFAULT '{}',
    split_bundle    INTEGER[] NOT NULL DEFAULT '{}',
    split_covered   BIGINT[] NOT NULL DEFAULT '{}',
    PRIMARY KEY (customer_id, cycle),
    FOREIGN KEY (customer_id, cycle) REFERENCES totals (customer_id, cycle) ON DELETE CASCADE,
    CHECK (cardinality(split_position) = cardinality(split_bundle)
           AND cardinality(split_position) = cardinality(split_covered))
);

-- How each CDR was priced, in consumption order (started_at, provider,
-- external_id, id), a fixed number of CDRs per chunk; element i of every
-- array is the CDR at position first_position + i.
CREATE TABLE cycle_rating_chunk (
    customer_id        BIGINT NOT NULL,
    cycle              DATE NOT NULL,
    chunk              INTEGER NOT NULL,
    first_position     INTEGER NOT NULL,
    cdr_id             BIGINT[] NOT NULL,
    rated_cost_micros  BIGINT[] NOT NULL,
    -- Index into the snapshot's "rates"; -1: no rate (unrated, or a service).
    rate               INTEGER[] NOT NULL,
    -- Index into the snapshot's "bundles" of the first bundle that covered
    -- part of the CDR; -1: none.
    bundle             INTEGER[] NOT NULL,
    -- Seconds, bytes or messages after increments, and the part bundles
    -- covered.
    billed_quantity    BIGINT[] NOT NULL,
    covered_quantity   BIGINT[] NOT NULL,
    PRIMARY KEY (customer_id, cycle, chunk),
    FOREIGN KEY (customer_id, cycle) REFERENCES cycle_rating (customer_id, cycle) ON DELETE CASCADE,
    CHECK (cardinality(cdr_id) = cardinality(rated_cost_micros)
           AND cardinality(cdr_id) = cardinality(rate)
           AND cardinality(cdr_id) = cardinality(bundle)
           AND cardinality(cdr_id) = cardinality(billed_quantity)
           AND cardinality(cdr_id) = cardinality(covered_quantity))
);

-- The arrays are written once per calculation and read rarely: lz4 packs
-- them several times faster than the default pglz, which took longer than
-- the whole rating (2 s of pglz for a million CDRs against 0.2 s). A server
-- built without lz4 keeps them uncompressed instead, still faster to write
-- than pglz.
DO $$
DECLARE
    col TEXT;
BEGIN
    FOREACH col IN ARRAY ARRAY['cdr_id', 'rated_cost_micros', 'rate', 'bundle', 'billed_quantity', 'covered_quantity']
    LOOP
        BEGIN
            EXECUTE format('ALTER TABLE cycle_rating_chunk ALTER COLUMN %I SET COMPRESSION lz4', col);
        EXCEPTION WHEN feature_not_supported THEN
            EXECUTE format('ALTER TABLE cycle_rating_chunk ALTER COLUMN %I SET STORAGE EXTERNAL', col);
        END;
    END LOOP;
END
$$;
