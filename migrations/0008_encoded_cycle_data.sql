-- The stored input of a rate-plan cycle (shared/src/billing/cycle_input.rs):
-- the columns rating reads, for every CDR of the cycle, encoded and
-- compressed by the calculation, with a fingerprint per import file that
-- each calculation checks against call_detail_record before using it. Only a
-- speed-up: deleting rows here changes no figure. A cycle's copy is kept in
-- segments, each holding whole import files, so that after an import only
-- the new file's segment is written.
CREATE TABLE cycle_input (
    customer_id   BIGINT NOT NULL REFERENCES customer (id) ON DELETE CASCADE,
    cycle         DATE NOT NULL,
    segment       INTEGER NOT NULL,
    cdr_count     BIGINT NOT NULL,
    import_files  INTEGER NOT NULL,
    data          BYTEA NOT NULL,
    written_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (customer_id, cycle, segment)
);

-- Already compressed (lz4, by the calculation): PostgreSQL need not try.
ALTER TABLE cycle_input ALTER COLUMN data SET STORAGE EXTERNAL;

-- The pricings of a rate-plan cycle move from six arrays per chunk to one
-- column encoded by the calculation (shared/src/billing/pricings.rs):
-- PostgreSQL converting six million array elements took longer than the
-- rating itself. Ratings in the old form are dropped: the next calculation
-- of each cycle writes them again, and until then `temctl explain` says the
-- CDR is not yet rated.
DELETE FROM cycle_rating;
ALTER TABLE cycle_rating_chunk
    DROP COLUMN cdr_id,
    DROP COLUMN rated_cost_micros,
    DROP COLUMN rate,
    DROP COLUMN bundle,
    DROP COLUMN billed_quantity,
    DROP COLUMN covered_quantity,
    ADD COLUMN cdr_count INTEGER NOT NULL CHECK (cdr_count > 0),
    ADD COLUMN pricings BYTEA NOT NULL;
ALTER TABLE cycle_rating_chunk ALTER COLUMN pricings SET STORAGE EXTERNAL;
