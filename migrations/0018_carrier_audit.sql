-- The carrier bill audit (issue 19): the contracted buy rates (written by
-- `temctl apply`, catalog/buy_rates.rs), each carrier invoice file read
-- (audit/parse.rs) and the findings of its audit (audit/run.rs), with the
-- dispute's status and the amount recovered.

-- One row per version: the version valid on a carrier period's first day
-- is the recurring charge the carrier may bill for it.
CREATE TABLE buy_rate (
    provider          TEXT NOT NULL,
    -- The carrier's account the subscription is billed on.
    account           TEXT NOT NULL CHECK (account <> ''),
    subscription      TEXT NOT NULL CHECK (subscription <> ''),
    valid_from        DATE NOT NULL,
    recurring_micros  BIGINT NOT NULL CHECK (recurring_micros >= 0),
    created_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (provider, account, subscription, valid_from)
);

-- A carrier invoice file as imported. The same content of one
-- provider/account/period is one row (re-importing it changes nothing);
-- another content for the same period is a correction: the earlier row
-- and its findings stay, marked superseded by the correction.
CREATE TABLE carrier_invoice (
    id                   BIGSERIAL PRIMARY KEY,
    provider             TEXT NOT NULL,
    account              TEXT NOT NULL,
    invoice_number       TEXT NOT NULL,
    period_start         DATE NOT NULL,
    -- Exclusive.
    period_end           DATE NOT NULL CHECK (period_end > period_start),
    file_key             TEXT NOT NULL,
    content_sha256       TEXT NOT NULL,
    lines_read           INTEGER NOT NULL,
    -- [{"line": N, "reason": "..."}]: the lines that were not read.
    rejected             JSONB NOT NULL DEFAULT '[]'::jsonb CHECK (jsonb_typeof(rejected) = 'array'),
    stated_total_micros  BIGINT,
    lines_total_micros   BIGINT NOT NULL,
    -- Deferred: a correction's id is set here before its row is inserted,
    -- as the period may have only one current invoice at any moment.
    superseded_by        BIGINT REFERENCES carrier_invoice (id) DEFERRABLE INITIALLY DEFERRED,
    imported_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    audited_at           TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (provider, account, period_start, content_sha256),
    CHECK (superseded_by IS NULL OR superseded_by <> id)
);
-- At most one current invoice per provider, account and period.
CREATE UNIQUE INDEX carrier_invoice_current
    ON carrier_invoice (provider, account, period_start) WHERE superseded_by IS NULL;

CREATE TABLE audit_finding (
    id                  BIGSERIAL PRIMARY KEY,
    carrier_invoice_id  BIGINT NOT NULL REFERENCES carrier_invoice (id),
    kind                TEXT NOT NULL CHECK (kind IN (
        'missing_cdrs', 'usage_underbilled', 'rate_overcharged', 'rate_undercharged',
        'no_buy_rate', 'billed_not_active', 'billed_after_termination', 'billed_twice',
        'active_not_billed', 'totals_mismatch')),
    -- '' for a finding of the file as a whole (totals_mismatch).
    subscription        TEXT NOT NULL,
    -- The usage kind or 'fee'; NULL for an inventory finding.
    charge_class        TEXT CHECK (charge_class IN ('voice', 'sms', 'mms', 'data', 'service', 'fee')),
    billed_micros       BIGINT NOT NULL,
    expected_micros     BIGINT NOT NULL,
    -- Evidence: the file and its lines, and which CDRs were summed (the
    -- provider's CDRs of `subscription` and `charge_class` started in
    -- [cdr_from, cdr_to)) with their number.
    file_key            TEXT NOT NULL,
    lines               INTEGER[] NOT NULL DEFAULT '{}',
    cdr_count           BIGINT,
    cdr_from            TIMESTAMPTZ,
    cdr_to              TIMESTAMPTZ,
    status              TEXT NOT NULL DEFAULT 'open'
                        CHECK (status IN ('open', 'disputed', 'credited', 'written_off')),
    recovered_micros    BIGINT NOT NULL DEFAULT 0 CHECK (recovered_micros >= 0),
    note                TEXT,
    -- The corrected carrier invoice whose audit replaced this finding.
    superseded_by       BIGINT REFERENCES carrier_invoice (id) DEFERRABLE INITIALLY DEFERRED,
    created_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    disputed_at         TIMESTAMPTZ,
    resolved_at         TIMESTAMPTZ,
    CHECK (status IN ('credited', 'written_off') = (resolved_at IS NOT NULL))
);
-- One finding per invoice, kind, subscription and class: what makes an
-- audit run again (the same file imported twice) update, not duplicate.
CREATE UNIQUE INDEX audit_finding_key
    ON audit_finding (carrier_invoice_id, kind, subscription, coalesce(charge_class, ''));
CREATE INDEX audit_finding_open ON audit_finding (status) WHERE superseded_by IS NULL;
