//! Issued invoices read back from PostgreSQL for their documents
//! ([`IssuedStore`]): the invoice row with the parties, dates and totals
//! its finalisation recorded, its lines with their VAT, and for a
//! correction the number and issue date of the cycle's invoice (BG-3); and
//! the documents written for them ([`DocumentStore`], `invoice_document`).

use async_trait::async_trait;
use chrono::NaiveDate;
use sqlx::{PgPool, Row};

use crate::billing::document::issued::{IssuedStore, NotIssued, StoredIssue};
use crate::billing::document::rendering::{DocumentStore, RecordedDocument};
use crate::billing::document::ubl::{DocumentLine, InvoiceReference, IssuedInvoice};
use crate::billing::parties::{BuyerDetails, SellerDetails};
use crate::billing::vat::{LineVat, RateBp, VatCategory};
use crate::ports::StoreError;

#[derive(Clone)]
pub struct PgIssued {
    pool: PgPool,
}

impl PgIssued {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }
}

/// A recorded value this build cannot read: no retry fixes it.
fn unreadable(what: String) -> StoreError {
    StoreError {
        retryable: false,
        source: what.into(),
    }
}

#[async_trait]
impl IssuedStore for PgIssued {
    async fn issued(&self, invoice_id: i64) -> Result<Result<StoredIssue, NotIssued>, StoreError> {
        // One snapshot: the invoice and its lines never change once final,
        // but a reader should not depend on that to be consistent.
        let mut tx = self.pool.begin().await?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .execute(&mut *tx)
            .await?;
        let Some(row) = sqlx::query(
            "SELECT customer_id, cycle, sequence, status, number, issue_date, due_date,
                    seller_details, buyer_details, net_cents, vat_cents, payable_cents
             FROM invoice WHERE id = $1",
        )
        .bind(invoice_id)
        .fetch_optional(&mut *tx)
        .await?
        else {
            return Ok(Err(NotIssued::Missing));
        };
        if row.try_get::<String, _>("status")? != "final" {
            return Ok(Err(NotIssued::Draft));
        }
        let customer_id: i64 = row.try_get("customer_id")?;
        let cycle: NaiveDate = row.try_get("cycle")?;
        let sequence: i32 = row.try_get("sequence")?;
        let (Some(number), Some(issue_date), Some(due_date), Some(seller), Some(buyer)) = (
            row.try_get::<Option<String>, _>("number")?,
            row.try_get::<Option<NaiveDate>, _>("issue_date")?,
            row.try_get::<Option<NaiveDate>, _>("due_date")?,
            row.try_get::<Option<serde_json::Value>, _>("seller_details")?,
            row.try_get::<Option<serde_json::Value>, _>("buyer_details")?,
        ) else {
            return Ok(Err(NotIssued::Unnumbered));
        };
        let seller: SellerDetails = serde_json::from_value(seller).map_err(|e| {
            unreadable(format!(
                "invoice {invoice_id}: seller_details do not read as seller details: {e}"
            ))
        })?;
        let buyer: BuyerDetails = serde_json::from_value(buyer).map_err(|e| {
            unreadable(format!(
                "invoice {invoice_id}: buyer_details do not read as billing details: {e}"
            ))
        })?;
        let cents = |column: &str| -> Result<i64, StoreError> {
            row.try_get::<Option<i64>, _>(column)?
                .ok_or_else(|| unreadable(format!("final invoice {invoice_id} has no {column}")))
        };
        let (net_cents, vat_cents, payable_cents) = (
            cents("net_cents")?,
            cents("vat_cents")?,
            cents("payable_cents")?,
        );

        let rows = sqlx::query(
            "SELECT description, subscription, kind, zone, quantity, amount_micros,
                    vat_category, vat_rate_bp
             FROM invoice_line WHERE invoice_id = $1 ORDER BY line_no",
        )
        .bind(invoice_id)
        .fetch_all(&mut *tx)
        .await?;
        let mut lines = Vec::with_capacity(rows.len());
        for line in rows {
            let category: Option<String> = line.try_get("vat_category")?;
            let rate: Option<i32> = line.try_get("vat_rate_bp")?;
            let vat = match (category, rate) {
                (Some(category), Some(rate)) => LineVat {
                    category: category
                        .parse::<VatCategory>()
                        .map_err(|e| unreadable(format!("invoice {invoice_id}: {e}")))?,
                    rate: RateBp(u32::try_from(rate).map_err(|_| {
                        unreadable(format!("invoice {invoice_id}: VAT rate {rate} is negative"))
                    })?),
                },
                _ => {
                    return Err(unreadable(format!(
                        "final invoice {invoice_id} has a line without its VAT"
                    )))
                }
            };
            lines.push(DocumentLine {
                description: line.try_get("description")?,
                subscription: line.try_get("subscription")?,
                kind: line.try_get("kind")?,
                zone: line.try_get("zone")?,
                usage: line.try_get("quantity")?,
                amount_micros: line.try_get("amount_micros")?,
                vat,
            });
        }

        let corrects = if sequence == 0 {
            None
        } else {
            let original = sqlx::query(
                "SELECT number, issue_date FROM invoice
                 WHERE customer_id = $1 AND cycle = $2 AND sequence = 0",
            )
            .bind(customer_id)
            .bind(cycle)
            .fetch_optional(&mut *tx)
            .await?;
            match original {
                Some(o) => match (
                    o.try_get::<Option<String>, _>("number")?,
                    o.try_get::<Option<NaiveDate>, _>("issue_date")?,
                ) {
                    (Some(number), Some(issue_date)) => {
                        Some(InvoiceReference { number, issue_date })
                    }
                    _ => return Ok(Err(NotIssued::UnnumberedOriginal)),
                },
                None => return Ok(Err(NotIssued::UnnumberedOriginal)),
            }
        };
        tx.commit().await?;
        Ok(Ok(StoredIssue {
            invoice_id,
            customer_id,
            sequence,
            invoice: IssuedInvoice {
                number,
                issue_date,
                due_date,
                cycle,
                seller,
                buyer,
                lines,
                corrects,
            },
            net_cents,
            vat_cents,
            payable_cents,
        }))
    }
}

#[async_trait]
impl DocumentStore for PgIssued {
    async fn without_document(
        &self,
        customer_id: i64,
        cycle: NaiveDate,
        format: &str,
    ) -> Result<Vec<i64>, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT i.id FROM invoice i
             WHERE i.customer_id = $1 AND i.cycle = $2 AND i.status = 'final'
               AND NOT EXISTS (SELECT 1 FROM invoice_document d
                               WHERE d.invoice_id = i.id AND d.format = $3)
             ORDER BY i.sequence",
        )
        .bind(customer_id)
        .bind(cycle)
        .bind(format)
        .fetch_all(&self.pool)
        .await?)
    }

    async fn record(&self, document: &RecordedDocument) -> Result<RecordedDocument, StoreError> {
        sqlx::query(
            "INSERT INTO invoice_document (invoice_id, format, document_type, bucket, key, sha256, size_bytes)
             VALUES ($1, $2, $3, $4, $5, $6, $7)
             ON CONFLICT (invoice_id, format) DO NOTHING",
        )
        .bind(document.invoice_id)
        .bind(&document.format)
        .bind(&document.document_type)
        .bind(&document.bucket)
        .bind(&document.key)
        .bind(&document.sha256)
        .bind(document.size_bytes)
        .execute(&self.pool)
        .await?;
        let row = sqlx::query(
            "SELECT document_type, bucket, key, sha256, size_bytes FROM invoice_document
             WHERE invoice_id = $1 AND format = $2",
        )
        .bind(document.invoice_id)
        .bind(&document.format)
        .fetch_one(&self.pool)
        .await?;
        Ok(RecordedDocument {
            invoice_id: document.invoice_id,
            format: document.format.clone(),
            document_type: row.try_get("document_type")?,
            bucket: row.try_get("bucket")?,
            key: row.try_get("key")?,
            sha256: row.try_get("sha256")?,
            size_bytes: row.try_get("size_bytes")?,
        })
    }
}
