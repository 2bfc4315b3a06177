-- Totals recalculated incrementally (shared/src/billing/calculation/):
-- CDRs are rated as a stream in consumption order, with checkpoints of the
-- rating state at every local midnight of the cycle, and the writers that
-- change CDRs mark the cycles they changed. The stored, fingerprinted copy
-- of each cycle's input goes: call_detail_record is the only source of
-- truth again.
DROP TABLE cycle_input;
DROP TABLE cycle_rating_chunk;
DROP TABLE cycle_rating;

-- What the last calculation of a cycle used. A calculation that finds the
-- same settings and no pending change does nothing; another method, plan
-- document, time zone or cycle day rates the cycle in full. Deleting the
-- totals deletes it (and with it the checkpoints and pricings), so the next
-- calculation is a full one.
CREATE TABLE cycle_state (
    customer_id      BIGINT NOT NULL,
    cycle            DATE NOT NULL,
    method           TEXT NOT NULL CHECK (method IN ('standard', 'rate_plan')),
    rate_plan_id     TEXT,
    -- The plan document as rated: the rate and bundle numbers of the
    -- pricings index its "rates" and "bundles", so a later change of the
    -- plan does not change what an old rating says.
    plan             JSONB,
    time_zone        TEXT NOT NULL,
    start_day        SMALLINT NOT NULL,
    cdr_count        BIGINT NOT NULL,
    -- Calculations that did work (a coalesced, already current one does
    -- not count): the version the stored totals are.
    calculations     BIGINT NOT NULL,
    -- Where the last one started reading: NULL for a full calculation.
    restarted_at     TIMESTAMPTZ,
    cdrs_read        BIGINT NOT NULL,
    calculated_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (customer_id, cycle),
    FOREIGN KEY (customer_id, cycle) REFERENCES totals (customer_id, cycle) ON DELETE CASCADE
        DEFERRABLE INITIALLY DEFERRED
);

-- The rating state after every CDR of the cycle with started_at < at: line
-- sums, bundle use per subscription and pool, CDRs so far. One per local
-- midnight the cycle's CDRs cross, and one at the cycle's end (the final
-- state). Encoded and compressed by the calculation (billing::calculation::state).
CREATE TABLE rating_checkpoint (
    customer_id  BIGINT NOT NULL,
    cycle        DATE NOT NULL,
    at           TIMESTAMPTZ NOT NULL,
    cdr_count    BIGINT NOT NULL,
    state        BYTEA NOT NULL,
    PRIMARY KEY (customer_id, cycle, at),
    FOREIGN KEY (customer_id, cycle) REFERENCES cycle_state (customer_id, cycle) ON DELETE CASCADE
        DEFERRABLE INITIALLY DEFERRED
);
ALTER TABLE rating_checkpoint ALTER COLUMN state SET STORAGE EXTERNAL;

-- How each CDR of a rate-plan cycle was priced, in consumption order, in
-- rows of at most 20,000 CDRs: the CDRs of one segment (from a checkpoint to
-- the next) are rows seq 0, 1, ... of that segment, so a restart at a
-- checkpoint deletes and writes only the segments after it.
CREATE TABLE rating_chunk (
    customer_id     BIGINT NOT NULL,
    cycle           DATE NOT NULL,
    segment         TIMESTAMPTZ NOT NULL,
    seq             INTEGER NOT NULL,
    first_position  BIGINT NOT NULL,
    cdr_count       INTEGER NOT NULL CHECK (cdr_count > 0),
    pricings        BYTEA NOT NULL,
    PRIMARY KEY (customer_id, cycle, segment, seq),
    FOREIGN KEY (customer_id, cycle) REFERENCES cycle_state (customer_id, cycle) ON DELETE CASCADE
        DEFERRABLE INITIALLY DEFERRED
);
ALTER TABLE rating_chunk ALTER COLUMN pricings SET STORAGE EXTERNAL;

-- A pending change of one customer's cycle: its CDRs from changed_from on
-- may have changed since the last calculation. Written in the same
-- transaction as the change by the importer, attach and (for changes made
-- by hand in SQL) the triggers below; the calculation deletes the ones its
-- snapshot saw.
CREATE TABLE cycle_change (
    id            BIGSERIAL PRIMARY KEY,
    customer_id   BIGINT NOT NULL,
    cycle         DATE NOT NULL,
    changed_from  TIMESTAMPTZ NOT NULL,
    source        TEXT NOT NULL CHECK (source IN ('import', 'attach', 'hand_edit', 'deletion')),
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX cycle_change_cycle ON cycle_change (customer_id, cycle);

-- The cycle (its start date) containing `at` for a customer whose cycles
-- start on `start_day` in `zone`: billing::cycle_of in SQL.
CREATE FUNCTION billing_cycle_of(at TIMESTAMPTZ, start_day SMALLINT, zone TEXT) RETURNS DATE
LANGUAGE sql STABLE AS $$
    SELECT CASE
        WHEN extract(day FROM local) >= start_day
            THEN make_date(extract(year FROM local)::int, extract(month FROM local)::int, start_day)
        ELSE (make_date(extract(year FROM local)::int, extract(month FROM local)::int, start_day)
              - interval '1 month')::date
    END
    FROM (SELECT (at AT TIME ZONE zone)::date AS local) AS d
$$;

-- Hand edits and deletions in SQL mark the cycles of the rows they touched
-- (before and after the change). The writers that mark by themselves (the
-- importer, attach) set tem.cycle_changes_marked for their transaction.
-- No INSERT trigger: CDRs arrive through the importer, and a trigger there
-- would slow every import.
CREATE FUNCTION call_detail_record_mark_changes() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF current_setting('tem.cycle_changes_marked', true) = 'on' THEN
        RETURN NULL;
    END IF;
    IF TG_OP = 'UPDATE' THEN
        INSERT INTO cycle_change (customer_id, cycle, changed_from, source)
        SELECT r.customer_id, billing_cycle_of(r.started_at, c.billing_cycle_start_day, c.time_zone),
               min(r.started_at), 'hand_edit'
        FROM (SELECT customer_id, started_at FROM old_rows
              UNION ALL SELECT customer_id, started_at FROM new_rows) AS r
        JOIN customer c ON c.id = r.customer_id
        GROUP BY 1, 2;
    ELSE
        INSERT INTO cycle_change (customer_id, cycle, changed_from, source)
        SELECT r.customer_id, billing_cycle_of(r.started_at, c.billing_cycle_start_day, c.time_zone),
               min(r.started_at), 'deletion'
        FROM old_rows AS r
        JOIN customer c ON c.id = r.customer_id
        GROUP BY 1, 2;
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER call_detail_record_update_marks
    AFTER UPDATE ON call_detail_record
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION call_detail_record_mark_changes();

CREATE TRIGGER call_detail_record_delete_marks
    AFTER DELETE ON call_detail_record
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION call_detail_record_mark_changes();
