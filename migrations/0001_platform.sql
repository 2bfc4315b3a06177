-- Customers: billing entities. Billing fields are used by the totals path.
CREATE TABLE customer (
    id                       BIGSERIAL PRIMARY KEY,
    name                     TEXT NOT NULL,
    billing_cycle_start_day  SMALLINT NOT NULL DEFAULT 1
        CHECK (billing_cycle_start_day BETWEEN 1 AND 28),
    time_zone                TEXT NOT NULL DEFAULT 'Europe/Amsterdam',
    created_at               TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- One carrier account to pull usage from. `provider` is free text on purpose:
-- a profile naming an unknown provider is reported as a routing failure.
CREATE TABLE sync_profile (
    id                  BIGSERIAL PRIMARY KEY,
    name                TEXT NOT NULL,
    provider            TEXT NOT NULL,
    base_url            TEXT NOT NULL,
    -- Secrets Manager id of the carrier credentials; never the credentials.
    credentials_secret  TEXT NOT NULL,
    active              BOOLEAN NOT NULL DEFAULT true,
    -- Periods are UTC days; the watermark is the last one fetched.
    first_period        DATE NOT NULL,
    watermark_period    DATE,
    created_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    CHECK (watermark_period IS NULL OR watermark_period >= first_period)
);
CREATE INDEX sync_profile_active_provider ON sync_profile (provider) WHERE active;

-- Every sync-manager run, so a missed run can be detected.
CREATE TABLE sync_run (
    id             TEXT PRIMARY KEY,
    trigger        TEXT NOT NULL,
    started_at     TIMESTAMPTZ NOT NULL,
    finished_at    TIMESTAMPTZ NOT NULL,
    profiles_seen  INTEGER NOT NULL,
    sent           INTEGER NOT NULL,
    skipped        INTEGER NOT NULL,
    failures       INTEGER NOT NULL,
    deliveries     INTEGER NOT NULL DEFAULT 1,
    details        JSONB NOT NULL
);
CREATE INDEX sync_run_started_at ON sync_run (started_at DESC);
