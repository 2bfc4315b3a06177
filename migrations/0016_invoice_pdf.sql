-- The PDF of a final invoice (issue 18): RenderInvoice records it in
-- invoice_document beside the UBL, with format 'pdf'
-- (invoices/{customer}/{cycle}/{number}.pdf). Only the allowed formats
-- change; a recorded document still never changes.
ALTER TABLE invoice_document DROP CONSTRAINT invoice_document_format_check;
ALTER TABLE invoice_document ADD CONSTRAINT invoice_document_format_check
    CHECK (format IN ('ubl', 'pdf'));
