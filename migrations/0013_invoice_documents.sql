-- The documents rendered for a final invoice (issue 18): per invoice and
-- format, the S3 object written and its SHA-256. The RenderInvoice step
-- (billing::document::rendering) writes a row after the object is in S3;
-- rendering is deterministic, so a step that runs again writes the same
-- bytes under the same key, and finds the row.
--
-- A separate table, not columns on `invoice`: a final invoice never changes
-- (invoice_final_is_immutable), and its documents are made after it is
-- final. Like the invoice, a recorded document never changes either.
CREATE TABLE invoice_document (
    invoice_id     BIGINT NOT NULL REFERENCES invoice (id),
    -- 'ubl' (Peppol BIS Billing 3.0); the PDF will be 'pdf'.
    format         TEXT NOT NULL CHECK (format IN ('ubl')),
    -- What UBL document it is: a correction lowering the amount is a
    -- credit note (381), everything else an invoice (380).
    document_type  TEXT NOT NULL CHECK (document_type IN ('invoice', 'credit_note')),
    bucket         TEXT NOT NULL,
    key            TEXT NOT NULL,
    sha256         TEXT NOT NULL CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    size_bytes     BIGINT NOT NULL CHECK (size_bytes > 0),
    written_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (invoice_id, format)
);

CREATE FUNCTION invoice_document_guard() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        IF NOT EXISTS (SELECT 1 FROM invoice WHERE id = NEW.invoice_id AND status = 'final') THEN
            RAISE EXCEPTION 'invoice % is not final: only a final invoice has documents', NEW.invoice_id
                USING ERRCODE = 'integrity_constraint_violation';
        END IF;
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'the % document of invoice % was sent and cannot be changed or removed', OLD.format, OLD.invoice_id
        USING ERRCODE = 'integrity_constraint_violation';
END
$$;
CREATE TRIGGER invoice_document_guard
    BEFORE INSERT OR UPDATE OR DELETE ON invoice_document
    FOR EACH ROW EXECUTE FUNCTION invoice_document_guard();
