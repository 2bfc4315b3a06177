-- Budgets and alerts (issue 19, part 2; shared/src/budgets/). Configured by
-- `temctl apply` (catalog/budgets.rs): budgets per customer, cost centre or
-- subscription, and each customer's alert rules (bill shock, anomaly),
-- both effective-dated by `valid_from` like billing details: the version
-- valid on a cycle's start applies to that cycle.

CREATE TABLE budget (
    customer_id    BIGINT NOT NULL REFERENCES customer (id),
    scope          TEXT NOT NULL CHECK (scope IN ('customer', 'cost_centre', 'subscription')),
    -- The cost centre's code or the subscription's identifier; '' for the
    -- whole customer (a key column cannot be NULL).
    subject        TEXT NOT NULL DEFAULT '',
    valid_from     DATE NOT NULL,
    amount_micros  BIGINT NOT NULL CHECK (amount_micros > 0),
    -- Percentages of the amount, ascending, each above 0.
    thresholds     INTEGER[] NOT NULL CHECK (cardinality(thresholds) > 0 AND 0 < ALL (thresholds)),
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (customer_id, scope, subject, valid_from),
    CHECK ((scope = 'customer') = (subject = ''))
);

CREATE TABLE alert_rule (
    customer_id              BIGINT NOT NULL REFERENCES customer (id),
    valid_from               DATE NOT NULL,
    -- Roaming data outside the EU per subscription within a day of CDR
    -- start times (provider cost); NULL: no bill-shock rule.
    bill_shock_limit_micros  BIGINT CHECK (bill_shock_limit_micros > 0),
    -- A subscription's cycle over k percent of the median of its last
    -- three cycles and over the floor; NULL: no anomaly rule.
    anomaly_k_percent        INTEGER CHECK (anomaly_k_percent > 0),
    anomaly_floor_micros     BIGINT CHECK (anomaly_floor_micros >= 0),
    created_at               TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at               TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (customer_id, valid_from),
    CHECK ((anomaly_k_percent IS NULL) = (anomaly_floor_micros IS NULL))
);

-- Per (budget, cycle): the level last sent (the highest threshold alerted
-- and not resolved; NULL: none). Evaluation after a calculation compares
-- the cycle's spending with it and writes the new level together with the
-- outgoing event (alert_outbox) in one transaction, so that a level crossed
-- once is sent once and a fall is resolved once.
CREATE TABLE budget_level (
    customer_id    BIGINT NOT NULL REFERENCES customer (id),
    cycle          DATE NOT NULL,
    scope          TEXT NOT NULL,
    subject        TEXT NOT NULL,
    level          INTEGER,
    spent_micros   BIGINT NOT NULL,
    updated_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (customer_id, cycle, scope, subject)
);

-- The outbox of alert messages to the alert topic (BudgetAlertTopic): a
-- row is written in the transaction that decided the alert, then published
-- and marked. A run that dies between the publish and the mark publishes
-- it again (at least once; `id` is in the message for deduplication); a
-- claim (`claimed_until`) keeps two runs from publishing one row at once.
CREATE TABLE alert_outbox (
    id             TEXT PRIMARY KEY,
    customer_id    BIGINT NOT NULL REFERENCES customer (id),
    kind           TEXT NOT NULL CHECK (kind IN ('budget_alert', 'budget_resolved', 'bill_shock', 'anomaly')),
    -- The SNS message attributes (string values) and the JSON body.
    attributes     JSONB NOT NULL,
    body           JSONB NOT NULL,
    -- The clock, not the transaction's start: the rows of one evaluation
    -- are published in the order they were decided.
    created_at     TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
    claimed_until  TIMESTAMPTZ,
    published_at   TIMESTAMPTZ,
    -- SNS's MessageId.
    message_id     TEXT
);
CREATE INDEX alert_outbox_pending ON alert_outbox (customer_id, created_at) WHERE published_at IS NULL;

-- The bill-shock alerts raised, one per subscription and window: a later
-- import that finds the same day's spending again (a window overlapping
-- one alerted) raises nothing new.
CREATE TABLE bill_shock_alert (
    customer_id     BIGINT NOT NULL REFERENCES customer (id),
    subscription    TEXT NOT NULL,
    window_start    TIMESTAMPTZ NOT NULL,
    window_end      TIMESTAMPTZ NOT NULL,
    amount_micros   BIGINT NOT NULL,
    limit_micros    BIGINT NOT NULL,
    newest_cdr_at   TIMESTAMPTZ NOT NULL,
    import_file_id  BIGINT NOT NULL,
    raised_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (customer_id, subscription, window_start)
);

-- The bill-shock rule reads a customer's roaming data outside the EU
-- around an import's CDRs. Only those rows enter this index, so the bulk
-- load of all other CDRs does not pay for it.
CREATE INDEX call_detail_record_world_data ON call_detail_record (customer_id, started_at)
    WHERE kind = 'data' AND roaming_zone = 'world';

-- Budget and alert events are insights too (`temctl insights`): kept by
-- the evaluation that raised them, which BillingInsight's replacement of
-- its own kinds leaves alone.
ALTER TABLE billing_insight DROP CONSTRAINT billing_insight_kind_check;
ALTER TABLE billing_insight ADD CONSTRAINT billing_insight_kind_check
    CHECK (kind IN ('cost_change', 'idle_subscription', 'roaming_share', 'unrated_cdrs',
                    'unassigned_cdrs', 'budget_alert', 'budget_resolved', 'anomaly', 'bill_shock'));

-- A final invoice's chargeback, stored by RenderInvoice (costs/export.rs):
-- the general-ledger rows of its allocation over the cost tree (where an
-- amount was booked, per GL code, class and VAT category; `UNALLOCATED`
-- for subscriptions without an assignment) and the CSV written beside the
-- invoice in S3. A final invoice never changes, so neither does this.
CREATE TABLE cost_allocation (
    invoice_id     BIGINT NOT NULL REFERENCES invoice (id),
    cost_centre    TEXT NOT NULL,
    gl_code        TEXT NOT NULL,
    charge_class   TEXT NOT NULL,
    vat_category   TEXT NOT NULL,
    amount_micros  BIGINT NOT NULL,
    PRIMARY KEY (invoice_id, cost_centre, gl_code, charge_class, vat_category)
);

CREATE TABLE gl_export (
    invoice_id        BIGINT PRIMARY KEY REFERENCES invoice (id),
    bucket            TEXT NOT NULL,
    key               TEXT NOT NULL,
    sha256            TEXT NOT NULL CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    size_bytes        BIGINT NOT NULL CHECK (size_bytes > 0),
    net_total_micros  BIGINT NOT NULL,
    written_at        TIMESTAMPTZ NOT NULL DEFAULT now()
);
