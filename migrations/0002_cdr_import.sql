-- Subscriptions: which customer a number or line id belongs to, and when.
CREATE TABLE subscription (
    id           BIGSERIAL PRIMARY KEY,
    customer_id  BIGINT NOT NULL REFERENCES customer (id),
    provider     TEXT NOT NULL,
    -- E.164 number (+31612345678) or the carrier's line id.
    identifier   TEXT NOT NULL,
    active_from  DATE NOT NULL DEFAULT DATE '1970-01-01',
    active_to    DATE,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    CHECK (active_to IS NULL OR active_to >= active_from)
);
CREATE INDEX subscription_identifier ON subscription (identifier);

-- One record per imported object.
CREATE TABLE import_file (
    id                  BIGSERIAL PRIMARY KEY,
    bucket              TEXT NOT NULL,
    key                 TEXT NOT NULL,
    sha256              TEXT NOT NULL,
    size_bytes          BIGINT NOT NULL,
    provider            TEXT NOT NULL,
    profile_id          BIGINT,
    status              TEXT NOT NULL CHECK (status IN ('running', 'completed', 'completed_with_errors', 'failed')),
    rows_read           BIGINT NOT NULL DEFAULT 0,
    rows_loaded         BIGINT NOT NULL DEFAULT 0,
    rows_duplicate      BIGINT NOT NULL DEFAULT 0,
    rows_rejected       BIGINT NOT NULL DEFAULT 0,
    rows_without_customer BIGINT NOT NULL DEFAULT 0,
    rejected_key        TEXT,
    error               TEXT,
    details             JSONB NOT NULL DEFAULT '{}',
    started_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    finished_at         TIMESTAMPTZ,
    duration_ms         BIGINT
);
CREATE INDEX import_file_sha256 ON import_file (sha256, provider);
CREATE INDEX import_file_object ON import_file (bucket, key);

-- Call detail records. The natural key (provider, external_id) is the only
-- index: each index slows the bulk load, and reads by customer arrive with
-- the totals path.
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
    source_line           INTEGER NOT NULL,
    PRIMARY KEY (provider, external_id)
);
