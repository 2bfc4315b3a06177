-- Every version of a cycle's totals, appended when they change: never
-- updated, never deleted.
CREATE TABLE totals_history (
    customer_id    BIGINT NOT NULL,
    cycle          DATE NOT NULL,
    version        INTEGER NOT NULL,
    recorded_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- import, late_cdrs, late_subscription, rerating, console
    cause          TEXT NOT NULL,
    figures        JSONB NOT NULL,
    PRIMARY KEY (customer_id, cycle, version)
);
