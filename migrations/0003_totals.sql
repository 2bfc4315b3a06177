-- Rate plans as documents (see shared/src/billing/rating.rs for the rules).
CREATE TABLE rate_plan (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    plan        JSONB NOT NULL,
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
ALTER TABLE customer ADD COLUMN rate_plan_id TEXT REFERENCES rate_plan (id);

-- Totals per customer and billing cycle (named by its start date).
CREATE TABLE totals (
    customer_id           BIGINT NOT NULL REFERENCES customer (id),
    cycle                 DATE NOT NULL,
    method                TEXT NOT NULL CHECK (method IN ('standard', 'rate_plan')),
    rate_plan_id          TEXT,
    cdr_count             BIGINT NOT NULL,
    voice_seconds         BIGINT NOT NULL,
    data_bytes            BIGINT NOT NULL,
    messages              BIGINT NOT NULL,
    provider_cost_micros  BIGINT NOT NULL,
    rated_cost_micros     BIGINT NOT NULL,
    unrated_count         BIGINT NOT NULL,
    calculated_at         TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (customer_id, cycle)
);

-- The same figures per subscription, kind and zone; totals are their sums.
CREATE TABLE totals_line (
    customer_id           BIGINT NOT NULL,
    cycle                 DATE NOT NULL,
    subscription          TEXT NOT NULL,
    kind                  TEXT NOT NULL,
    roaming_zone          TEXT NOT NULL,
    cdr_count             BIGINT NOT NULL,
    voice_seconds         BIGINT NOT NULL,
    data_bytes            BIGINT NOT NULL,
    messages              BIGINT NOT NULL,
    provider_cost_micros  BIGINT NOT NULL,
    rated_cost_micros     BIGINT NOT NULL,
    unrated_count         BIGINT NOT NULL,
    PRIMARY KEY (customer_id, cycle, subscription, kind, roaming_zone),
    FOREIGN KEY (customer_id, cycle) REFERENCES totals (customer_id, cycle) ON DELETE CASCADE
);

-- How each CDR of a rate-plan customer was priced (temctl explain).
CREATE TABLE cdr_rating (
    provider           TEXT NOT NULL,
    external_id        TEXT NOT NULL,
    customer_id        BIGINT NOT NULL,
    cycle              DATE NOT NULL,
    rated_cost_micros  BIGINT NOT NULL,
    rate_id            TEXT,
    bundle_id          TEXT,
    billed_quantity    BIGINT NOT NULL,
    covered_quantity   BIGINT NOT NULL,
    unrated            BOOLEAN NOT NULL,
    explanation        TEXT NOT NULL,
    PRIMARY KEY (provider, external_id)
);
CREATE INDEX cdr_rating_cycle ON cdr_rating (customer_id, cycle);
