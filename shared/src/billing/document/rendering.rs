//! RenderInvoice: the documents of a cycle's final invoices, written to S3
//! and recorded with their content hash. It runs after GenerateInvoice in
//! the totals chain of a closed cycle.
//!
//! # What it does
//!
//! For each format, UBL then PDF, and each final invoice of the cycle (the
//! invoice and its corrections) that has no recorded document of that
//! format yet, in sequence order: render the Peppol BIS Billing 3.0
//! document ([`crate::billing::document::ubl`]) or the PDF
//! ([`crate::billing::document::pdf`]) from the invoice as issued and
//! checked ([`issued_of`]), put it under [`format_key`], then record the
//! key, the SHA-256 of the bytes and the size (`invoice_document`). An
//! invoice already recorded is skipped without rendering, so a cycle whose
//! documents exist costs one read per format.
//!
//! # Idempotent
//!
//! Rendering is deterministic (the same recorded invoice gives the same
//! bytes), so a run that dies between the put and the record puts the same
//! bytes under the same key again and records them. The record is
//! insert-if-absent; should a record exist with another hash (a renderer
//! change between two runs of the same step), the step fails without
//! changing it: a document that was sent is never replaced.
//!
//! # Keys
//!
//! `invoices/{customer_id}/{cycle}/{number}.xml` and `{number}.pdf`,
//! beside the usage specification (`{number}-specification.csv.gz`).
//! Characters outside `A-Za-z0-9._-` in a number (its format is
//! configurable) become `_`, so a number never makes a folder. Numbers are
//! unique per seller; a customer bills with one seller at a time.

use async_trait::async_trait;
use chrono::NaiveDate;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::billing::document::issued::{issued_of, DocumentError, IssuedStore};
use crate::billing::document::pdf::{render_pdf, Mark};
use crate::billing::document::ubl::{render, DocumentKind, Profile, UblError};
use crate::ports::{ObjectPut, PortError, StoreError};

/// The e-invoice, Peppol BIS Billing 3.0 (`{number}.xml`).
pub const UBL: &str = "ubl";
/// The PDF of the same invoice (`{number}.pdf`).
pub const PDF: &str = "pdf";
/// What RenderInvoice writes for each final invoice, in this order.
pub const FORMATS: [&str; 2] = [UBL, PDF];
const UBL_CONTENT_TYPE: &str = "application/xml";
const PDF_CONTENT_TYPE: &str = "application/pdf";

/// A document as `invoice_document` records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RecordedDocument {
    pub invoice_id: i64,
    pub format: String,
    /// `invoice` or `credit_note`.
    pub document_type: String,
    pub bucket: String,
    pub key: String,
    pub sha256: String,
    pub size_bytes: i64,
}

/// Where rendered documents are recorded (`adapters::billing::document`).
#[async_trait]
pub trait DocumentStore: Send + Sync {
    /// The ids of the cycle's final invoices without a `format` document,
    /// in sequence order.
    async fn without_document(
        &self,
        customer_id: i64,
        cycle: NaiveDate,
        format: &str,
    ) -> Result<Vec<i64>, StoreError>;
    /// Records `document` unless one is recorded for its invoice and
    /// format; returns the record as stored (the earlier one if any).
    async fn record(&self, document: &RecordedDocument) -> Result<RecordedDocument, StoreError>;
}

/// Where the documents go: a bucket and its writer.
pub struct DocumentSink<'a> {
    pub objects: &'a dyn ObjectPut,
    pub bucket: &'a str,
}

#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error(transparent)]
    Document(#[from] DocumentError),
    #[error(transparent)]
    Render(#[from] UblError),
    #[error("writing {key} to bucket {bucket} failed: {source}; the step is retried")]
    Put {
        bucket: String,
        key: String,
        source: PortError,
    },
    #[error("invoice {invoice_id} already has its {format} document {key} with SHA-256 {recorded}, but it renders to {rendered} now; a sent document is never replaced: find what changed the renderer or the recorded invoice")]
    Changed {
        invoice_id: i64,
        format: String,
        key: String,
        recorded: String,
        rendered: String,
    },
    #[error("database error: {0}")]
    Store(#[from] StoreError),
}

impl RenderError {
    /// Whether another attempt may succeed: a store or S3 failure may pass;
    /// a document the rules refuse, or a changed one, stays so.
    pub fn is_retryable(&self) -> bool {
        match self {
            RenderError::Put { .. } => true,
            RenderError::Store(e) => e.retryable,
            RenderError::Document(DocumentError::Store(e)) => e.retryable,
            RenderError::Document(_) | RenderError::Render(_) | RenderError::Changed { .. } => {
                false
            }
        }
    }
}

/// The object key of an invoice's UBL document (see the module docs).
pub fn document_key(customer_id: i64, cycle: NaiveDate, number: &str) -> String {
    format_key(customer_id, cycle, number, UBL)
}

/// The object key of an invoice's document in `format` (`ubl` or `pdf`).
pub fn format_key(customer_id: i64, cycle: NaiveDate, number: &str, format: &str) -> String {
    let name: String = number
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    let extension = if format == PDF { "pdf" } else { "xml" };
    format!("invoices/{customer_id}/{cycle}/{name}.{extension}")
}

/// The lowercase hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Renders, writes and records the documents (UBL, then PDF) of the
/// cycle's final invoices that lack them (see the module docs). Returns
/// what it recorded.
pub async fn render_cycle_documents(
    issued: &dyn IssuedStore,
    documents: &dyn DocumentStore,
    sink: &DocumentSink<'_>,
    customer_id: i64,
    cycle: NaiveDate,
) -> Result<Vec<RecordedDocument>, RenderError> {
    let mut recorded = Vec::new();
    for format in FORMATS {
        for invoice_id in documents
            .without_document(customer_id, cycle, format)
            .await?
        {
            let stored = issued_of(issued, invoice_id).await?;
            let (kind, bytes, content_type) = if format == PDF {
                let pdf = render_pdf(&stored.invoice, Mark::Original)?;
                (pdf.kind, pdf.bytes, PDF_CONTENT_TYPE)
            } else {
                let ubl = render(&stored.invoice, Profile::PeppolBis)?;
                (ubl.kind, ubl.xml, UBL_CONTENT_TYPE)
            };
            let key = format_key(customer_id, cycle, &stored.invoice.number, format);
            let wanted = put_document(
                sink,
                invoice_id,
                &stored.invoice.number,
                format,
                kind,
                key,
                bytes,
                content_type,
            )
            .await?;
            let stored = documents.record(&wanted).await?;
            if stored.sha256 != wanted.sha256 {
                return Err(RenderError::Changed {
                    invoice_id,
                    format: wanted.format,
                    key: stored.key,
                    recorded: stored.sha256,
                    rendered: wanted.sha256,
                });
            }
            recorded.push(stored);
        }
    }
    Ok(recorded)
}

/// Puts one document and returns its record to be.
#[allow(clippy::too_many_arguments)]
async fn put_document(
    sink: &DocumentSink<'_>,
    invoice_id: i64,
    number: &str,
    format: &str,
    kind: DocumentKind,
    key: String,
    bytes: Vec<u8>,
    content_type: &str,
) -> Result<RecordedDocument, RenderError> {
    let sha256 = sha256_hex(&bytes);
    let size_bytes = i64::try_from(bytes.len()).unwrap_or(i64::MAX);
    sink.objects
        .put_object(
            sink.bucket,
            &key,
            bytes,
            content_type,
            &[("invoice-number", number), ("sha256", &sha256)],
        )
        .await
        .map_err(|source| RenderError::Put {
            bucket: sink.bucket.to_string(),
            key: key.clone(),
            source,
        })?;
    Ok(RecordedDocument {
        invoice_id,
        format: format.into(),
        document_type: kind.as_str().into(),
        bucket: sink.bucket.to_string(),
        key,
        sha256,
        size_bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_sits_under_the_customer_and_cycle_and_a_number_never_makes_a_folder() {
        let cycle: NaiveDate = "2025-03-01".parse().unwrap();
        assert_eq!(
            document_key(42, cycle, "2026-000123"),
            "invoices/42/2025-03-01/2026-000123.xml"
        );
        assert_eq!(
            document_key(42, cycle, "TEM/2026/12"),
            "invoices/42/2025-03-01/TEM_2026_12.xml"
        );
        assert_eq!(
            format_key(42, cycle, "TEM/2026/12", PDF),
            "invoices/42/2025-03-01/TEM_2026_12.pdf"
        );
    }

    #[test]
    fn the_hash_is_the_lowercase_hex_sha256_of_the_bytes() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn only_store_and_s3_failures_are_retried() {
        let put = RenderError::Put {
            bucket: "b".into(),
            key: "k".into(),
            source: PortError::new("s3 PutObject", "slow down"),
        };
        assert!(put.is_retryable());
        assert!(!RenderError::Document(DocumentError::Draft(1)).is_retryable());
        assert!(RenderError::Store(StoreError::retryable("reset")).is_retryable());
    }
}
