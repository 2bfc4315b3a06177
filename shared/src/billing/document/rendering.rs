//! RenderInvoice: the documents of a cycle's final invoices, written to S3
//! and recorded with their content hash. It runs after GenerateInvoice in
//! the totals chain of a closed cycle.
//!
//! # What it does
//!
//! For each final invoice of the cycle (the invoice and its corrections)
//! that has no recorded UBL document yet, in sequence order: render the
//! Peppol BIS Billing 3.0 document ([`ubl_of`]), put it under
//! [`document_key`], then record the key, the SHA-256 of the bytes and the
//! size (`invoice_document`). An invoice already recorded is skipped
//! without rendering, so a cycle whose documents exist costs one read.
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
//! `invoices/{customer_id}/{cycle}/{number}.xml`, beside the usage
//! specification (`{number}-specification.csv.gz`) and the PDF to come.
//! Characters outside `A-Za-z0-9._-` in a number (its format is
//! configurable) become `_`, so a number never makes a folder. Numbers are
//! unique per seller; a customer bills with one seller at a time.

use async_trait::async_trait;
use chrono::NaiveDate;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::billing::document::issued::{ubl_of, DocumentError, IssuedStore};
use crate::billing::document::ubl::Profile;
use crate::ports::{ObjectPut, PortError, StoreError};

/// The only format rendered today (the PDF will be `pdf`).
pub const UBL: &str = "ubl";
const UBL_CONTENT_TYPE: &str = "application/xml";

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
            RenderError::Document(_) | RenderError::Changed { .. } => false,
        }
    }
}

/// The object key of an invoice's UBL document (see the module docs).
pub fn document_key(customer_id: i64, cycle: NaiveDate, number: &str) -> String {
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
    format!("invoices/{customer_id}/{cycle}/{name}.xml")
}

/// The lowercase hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Renders, writes and records the UBL documents of the cycle's final
/// invoices that have none (see the module docs). Returns what it recorded.
pub async fn render_cycle_documents(
    issued: &dyn IssuedStore,
    documents: &dyn DocumentStore,
    sink: &DocumentSink<'_>,
    customer_id: i64,
    cycle: NaiveDate,
) -> Result<Vec<RecordedDocument>, RenderError> {
    let mut recorded = Vec::new();
    for invoice_id in documents.without_document(customer_id, cycle, UBL).await? {
        let (stored, document) = ubl_of(issued, invoice_id, Profile::PeppolBis).await?;
        let key = document_key(customer_id, cycle, &stored.invoice.number);
        let sha256 = sha256_hex(&document.xml);
        let size_bytes = i64::try_from(document.xml.len()).unwrap_or(i64::MAX);
        sink.objects
            .put_object(
                sink.bucket,
                &key,
                document.xml,
                UBL_CONTENT_TYPE,
                &[
                    ("invoice-number", &stored.invoice.number),
                    ("sha256", &sha256),
                ],
            )
            .await
            .map_err(|source| RenderError::Put {
                bucket: sink.bucket.to_string(),
                key: key.clone(),
                source,
            })?;
        let wanted = RecordedDocument {
            invoice_id,
            format: UBL.into(),
            document_type: document.kind.as_str().into(),
            bucket: sink.bucket.to_string(),
            key,
            sha256,
            size_bytes,
        };
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
    Ok(recorded)
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
