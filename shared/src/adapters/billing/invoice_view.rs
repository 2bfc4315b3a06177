//! Invoices for operators on PostgreSQL ([`InvoiceViewStore`]): the list,
//! one invoice with its lines, and the documents recorded for it (the usage
//! specification in `invoice_specification`, migration 0014; the UBL in
//! `invoice_document`, migration 0013).

use async_trait::async_trait;
use sqlx::postgres::PgRow;
use sqlx::{PgPool, Row};

use crate::billing::invoice_view::{
    DocumentKind, DocumentRecord, InvoiceDetail, InvoiceFilter, InvoiceSummary, InvoiceViewStore,
    LineView,
};
use crate::ports::StoreError;

#[derive(Clone)]
pub struct PgInvoiceView {
    pool: PgPool,
}

impl PgInvoiceView {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }
}

const SUMMARY: &str = "SELECT i.id, i.customer_id, coalesce(c.code, c.name) AS customer, i.cycle, i.kind,
        i.sequence, i.status, i.number, i.issue_date, i.total_micros, i.payable_cents, i.blocked_reason
     FROM invoice i JOIN customer c ON c.id = i.customer_id";

fn summary(row: &PgRow) -> Result<InvoiceSummary, sqlx::Error> {
    Ok(InvoiceSummary {
        id: row.try_get("id")?,
        customer_id: row.try_get("customer_id")?,
        customer: row.try_get("customer")?,
        cycle: row.try_get("cycle")?,
        kind: row.try_get("kind")?,
        sequence: row.try_get("sequence")?,
        status: row.try_get("status")?,
        number: row.try_get("number")?,
        issue_date: row.try_get("issue_date")?,
        total_micros: row.try_get("total_micros")?,
        payable_cents: row.try_get("payable_cents")?,
        blocked_reason: row.try_get("blocked_reason")?,
    })
}

#[async_trait]
impl InvoiceViewStore for PgInvoiceView {
    async fn list(&self, filter: &InvoiceFilter) -> Result<Vec<InvoiceSummary>, StoreError> {
        // A customer is named by its id or its code, as in `temctl totals`.
        let customer_id = filter
            .customer
            .as_deref()
            .and_then(|c| c.trim().parse::<i64>().ok());
        let rows = sqlx::query(&format!(
            "{SUMMARY}
             WHERE ($1::text IS NULL OR c.code = $1 OR i.customer_id = $2)
               AND ($3::date IS NULL OR i.cycle = $3)
               AND ($4::text IS NULL OR i.status = $4)
             ORDER BY i.cycle DESC, i.customer_id, i.sequence DESC
             LIMIT $5"
        ))
        .bind(filter.customer.as_deref().map(str::trim))
        .bind(customer_id)
        .bind(filter.cycle)
        .bind(filter.status.map(|s| s.as_str()))
        .bind(filter.limit.max(1))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(summary).collect::<Result<_, _>>()?)
    }

    async fn find(
        &self,
        id: Option<i64>,
        number: Option<&str>,
    ) -> Result<Vec<(i64, bool)>, StoreError> {
        let rows: Vec<(i64, bool)> = sqlx::query_as(
            "SELECT id, true FROM invoice WHERE id = $1
             UNION ALL
             SELECT id, false FROM invoice WHERE number = $2
             ORDER BY 2 DESC, 1",
        )
        .bind(id)
        .bind(number)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows)
    }

    async fn detail(&self, id: i64) -> Result<Option<InvoiceDetail>, StoreError> {
        let Some(row) = sqlx::query(&format!(
            "SELECT s.*, i.rated_cost_micros, i.fees_micros, c.time_zone, i.due_date, i.finalised_at, i.net_cents,
                    i.vat_cents, i.vat_breakdown, i.seller_details, i.buyer_details, i.blocked_at
             FROM ({SUMMARY} WHERE i.id = $1) s JOIN invoice i ON i.id = s.id
             JOIN customer c ON c.id = i.customer_id"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?
        else {
            return Ok(None);
        };
        let lines = sqlx::query(
            "SELECT line_no, description, subscription, kind, zone, quantity, amount_micros,
                    vat_category, vat_rate_bp, net_cents
             FROM invoice_line WHERE invoice_id = $1 ORDER BY line_no",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|l| {
            Ok(LineView {
                line_no: l.try_get("line_no")?,
                description: l.try_get("description")?,
                subscription: l.try_get("subscription")?,
                kind: l.try_get("kind")?,
                zone: l.try_get("zone")?,
                quantity: l.try_get("quantity")?,
                amount_micros: l.try_get("amount_micros")?,
                vat_category: l.try_get("vat_category")?,
                vat_rate_bp: l.try_get("vat_rate_bp")?,
                net_cents: l.try_get("net_cents")?,
            })
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()?;
        // The usage specification (migration 0014) and the rendered
        // documents (RenderInvoice, migration 0013) are recorded apart.
        let documents = sqlx::query(
            "SELECT 'specification' AS what, bucket, key, sha256, size_bytes, written_at
               FROM invoice_specification WHERE invoice_id = $1
             UNION ALL
             SELECT format, bucket, key, sha256, size_bytes, written_at
               FROM invoice_document WHERE invoice_id = $1",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .filter_map(|d| {
            let what = match d.try_get::<String, _>("what") {
                Ok(what) => what,
                Err(e) => return Some(Err(e)),
            };
            let what = match what.as_str() {
                "specification" => DocumentKind::Specification,
                "ubl" => DocumentKind::Ubl,
                "pdf" => DocumentKind::Pdf,
                // A format a later build renders: not one this build shows.
                _ => return None,
            };
            Some(Ok((what, d)))
        })
        .map(|found| {
            let (what, d) = found?;
            Ok(DocumentRecord {
                what,
                bucket: d.try_get("bucket")?,
                key: d.try_get("key")?,
                sha256: d.try_get("sha256")?,
                size_bytes: d.try_get("size_bytes")?,
                written_at: d.try_get("written_at")?,
            })
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()?;
        Ok(Some(InvoiceDetail {
            summary: summary(&row)?,
            rated_cost_micros: row.try_get("rated_cost_micros")?,
            fees_micros: row.try_get("fees_micros")?,
            time_zone: row.try_get("time_zone")?,
            due_date: row.try_get("due_date")?,
            finalised_at: row.try_get("finalised_at")?,
            net_cents: row.try_get("net_cents")?,
            vat_cents: row.try_get("vat_cents")?,
            vat_breakdown: row.try_get("vat_breakdown")?,
            seller: row.try_get("seller_details")?,
            buyer: row.try_get("buyer_details")?,
            blocked_at: row.try_get("blocked_at")?,
            lines,
            documents,
        }))
    }
}
