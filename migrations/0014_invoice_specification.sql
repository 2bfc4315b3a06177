-- The usage specification written for an invoice (billing::specification):
-- its object, its SHA-256 and what it holds. Writing it again replaces the
-- row (and the object under the same key, with the same bytes while the
-- cycle's CDRs and pricings are unchanged).
CREATE TABLE invoice_specification (
    invoice_id         BIGINT PRIMARY KEY REFERENCES invoice (id),
    bucket             TEXT NOT NULL,
    key                TEXT NOT NULL,
    sha256             TEXT NOT NULL CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    size_bytes         BIGINT NOT NULL CHECK (size_bytes > 0),
    cdr_count          BIGINT NOT NULL CHECK (cdr_count >= 0),
    rated_cost_micros  BIGINT NOT NULL,
    written_at         TIMESTAMPTZ NOT NULL DEFAULT now()
);
