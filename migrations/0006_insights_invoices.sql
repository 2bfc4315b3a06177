-- BillingInsight: the anomalies of one customer's cycle, recomputed after
-- each totals calculation (see shared/src/billing/insight.rs).
CREATE TABLE billing_insight (
    customer_id  BIGINT NOT NULL REFERENCES customer (id),
    cycle        DATE NOT NULL,
    kind         TEXT NOT NULL CHECK (kind IN ('cost_change', 'idle_subscription', 'roaming_share',
                                               'unrated_cdrs', 'unassigned_cdrs')),
    -- The subscription identifier or provider the insight is about; '' when
    -- it is about the whole cycle (a key column cannot be NULL).
    subject      TEXT NOT NULL DEFAULT '',
    detail       JSONB NOT NULL,
    -- When this insight was first seen with this detail.
    detected_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (customer_id, cycle, kind, subject)
);

-- Every insight counts CDRs without a customer in its cycle's window. Only
-- those rows enter this index, so the bulk load of assigned CDRs does not
-- pay for it.
CREATE INDEX call_detail_record_unassigned ON call_detail_record (started_at) WHERE customer_id IS NULL;

-- Invoices (see shared/src/billing/invoice.rs). Per (customer, cycle): one
-- invoice (sequence 0), a draft while the cycle is open and final once it
-- has closed, then corrections 1, 2, ... for late changes, each final.
CREATE TABLE invoice (
    id                    BIGSERIAL PRIMARY KEY,
    customer_id           BIGINT NOT NULL REFERENCES customer (id),
    cycle                 DATE NOT NULL,
    kind                  TEXT NOT NULL CHECK (kind IN ('invoice', 'correction')),
    status                TEXT NOT NULL CHECK (status IN ('draft', 'final')),
    sequence              INTEGER NOT NULL CHECK (sequence >= 0),
    rated_cost_micros     BIGINT NOT NULL,
    fees_micros           BIGINT NOT NULL,
    total_micros          BIGINT NOT NULL,
    -- The totals version (totals.calculated_at) the lines were taken from.
    totals_calculated_at  TIMESTAMPTZ NOT NULL,
    created_at            TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at            TIMESTAMPTZ NOT NULL DEFAULT now(),
    finalised_at          TIMESTAMPTZ,
    CHECK (total_micros = rated_cost_micros + fees_micros),
    CHECK ((status = 'final') = (finalised_at IS NOT NULL)),
    CHECK ((kind = 'invoice') = (sequence = 0)),
    -- With sequence 0 reserved for the invoice, this is "at most one
    -- draft-or-final invoice per cycle" and "corrections numbered once".
    UNIQUE (customer_id, cycle, sequence)
);
-- The finalisation sweep looks for drafts only.
CREATE INDEX invoice_drafts ON invoice (cycle) WHERE status = 'draft';

CREATE TABLE invoice_line (
    invoice_id     BIGINT NOT NULL REFERENCES invoice (id),
    line_no        INTEGER NOT NULL CHECK (line_no >= 1),
    description    TEXT NOT NULL,
    subscription   TEXT NOT NULL,
    kind           TEXT NOT NULL CHECK (kind IN ('voice', 'sms', 'mms', 'data', 'service', 'fee')),
    -- The roaming zone of a usage line; '' for a fee (part of the key).
    zone           TEXT NOT NULL CHECK (zone IN ('home', 'eu', 'world', '')),
    quantity       TEXT NOT NULL,
    amount_micros  BIGINT NOT NULL,
    CHECK ((kind = 'fee') = (zone = '')),
    PRIMARY KEY (invoice_id, line_no),
    UNIQUE (invoice_id, subscription, kind, zone)
);

-- A final invoice is a document sent to a customer: neither it nor its
-- lines may change afterwards; late changes become a correction invoice.
CREATE FUNCTION invoice_refuse_change_of_final() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'invoice % is final and cannot be changed or removed; a late change becomes a correction invoice', OLD.id
        USING ERRCODE = 'integrity_constraint_violation';
END
$$;
CREATE TRIGGER invoice_final_is_immutable
    BEFORE UPDATE OR DELETE ON invoice
    FOR EACH ROW WHEN (OLD.status = 'final')
    EXECUTE FUNCTION invoice_refuse_change_of_final();

CREATE FUNCTION invoice_line_refuse_change_of_final() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    touched BIGINT;
BEGIN
    FOREACH touched IN ARRAY CASE TG_OP
        WHEN 'INSERT' THEN ARRAY[NEW.invoice_id]
        WHEN 'DELETE' THEN ARRAY[OLD.invoice_id]
        ELSE ARRAY[OLD.invoice_id, NEW.invoice_id] END
    LOOP
        IF EXISTS (SELECT 1 FROM invoice WHERE id = touched AND status = 'final') THEN
            RAISE EXCEPTION 'invoice % is final and its lines cannot be changed; a late change becomes a correction invoice', touched
                USING ERRCODE = 'integrity_constraint_violation';
        END IF;
    END LOOP;
    IF TG_OP = 'DELETE' THEN
        RETURN OLD;
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER invoice_line_of_final_is_immutable
    BEFORE INSERT OR UPDATE OR DELETE ON invoice_line
    FOR EACH ROW EXECUTE FUNCTION invoice_line_refuse_change_of_final();

-- Checked at commit, because an invoice's lines are written after its row
-- (and a correction becomes final after its lines): every invoice written
-- in the transaction totals the sum of its lines, and a correction is final.
CREATE FUNCTION invoice_check_lines() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    current invoice%ROWTYPE;
    lines_sum BIGINT;
BEGIN
    SELECT * INTO current FROM invoice WHERE id = NEW.id;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    SELECT coalesce(sum(amount_micros), 0) INTO lines_sum FROM invoice_line WHERE invoice_id = NEW.id;
    IF lines_sum <> current.total_micros THEN
        RAISE EXCEPTION 'invoice % totals % but its lines sum to %', NEW.id, current.total_micros, lines_sum
            USING ERRCODE = 'check_violation';
    END IF;
    IF current.kind = 'correction' AND current.status <> 'final' THEN
        RAISE EXCEPTION 'correction invoice % must be final when committed', NEW.id
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END
$$;
CREATE CONSTRAINT TRIGGER invoice_total_is_sum_of_lines
    AFTER INSERT OR UPDATE ON invoice
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION invoice_check_lines();
