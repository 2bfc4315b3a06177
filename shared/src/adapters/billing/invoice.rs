//! Invoices on PostgreSQL ([`InvoiceStore`]): a GenerateInvoice run is one
//! transaction holding the cycle's invoice lock, reading the totals it
//! bills and writing `invoice` and `invoice_line` (whose triggers refuse
//! any change to a final invoice and check its sums at commit).

use std::collections::BTreeMap;

use async_trait::async_trait;
use chrono::{DateTime, Duration, NaiveDate, Utc};
use sqlx::{PgPool, Postgres, Row, Transaction};

use crate::adapters::billing::customer::PgCustomerSettings;
use crate::billing::invoice::{
    self, CycleInvoices, CycleUsage, InvoiceError, InvoiceFigures, InvoiceLine, InvoiceOutcome,
    InvoiceStore, Issue, LineKey, UsageLine,
};
use crate::billing::parties::{Address, PeppolId, SellerDetails, StoredBuyer};
use crate::billing::vat::RateBp;
use crate::ports::StoreError;

#[derive(Clone)]
pub struct PgInvoices {
    pool: PgPool,
}

impl PgInvoices {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }
}

#[async_trait]
impl InvoiceStore for PgInvoices {
    async fn begin(
        &self,
        customer_id: i64,
        cycle: NaiveDate,
    ) -> Result<Box<dyn CycleInvoices>, StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
            .bind(format!("invoice:{customer_id}:{cycle}"))
            .execute(&mut *tx)
            .await?;
        Ok(Box::new(PgCycleInvoices {
            tx,
            customer_id,
            cycle,
        }))
    }

    async fn drafts_starting_next_by(
        &self,
        latest_next_start: NaiveDate,
    ) -> Result<Vec<(i64, NaiveDate, String)>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT i.customer_id, i.cycle, c.time_zone
             FROM invoice i JOIN customer c ON c.id = i.customer_id
             WHERE i.status = 'draft' AND i.sequence = 0 AND (i.cycle + interval '1 month')::date <= $1
             ORDER BY i.customer_id, i.cycle",
        )
        .bind(latest_next_start)
        .fetch_all(&self.pool)
        .await?)
    }
}

/// One GenerateInvoice run's transaction.
struct PgCycleInvoices {
    tx: Transaction<'static, Postgres>,
    customer_id: i64,
    cycle: NaiveDate,
}

impl PgCycleInvoices {
    /// A new draft of `kind` (the cycle's invoice, or a correction) with
    /// its figures.
    async fn insert_draft(
        &mut self,
        kind: &str,
        sequence: i32,
        figures: &InvoiceFigures,
    ) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar(
            "INSERT INTO invoice (customer_id, cycle, kind, status, sequence, rated_cost_micros,
                                  fees_micros, total_micros, totals_calculated_at)
             VALUES ($1, $2, $3, 'draft', $4, $5, $6, $7, $8) RETURNING id",
        )
        .bind(self.customer_id)
        .bind(self.cycle)
        .bind(kind)
        .bind(sequence)
        .bind(figures.rated_cost_micros)
        .bind(figures.fees_micros)
        .bind(figures.total_micros)
        .bind(figures.totals_calculated_at)
        .fetch_one(&mut *self.tx)
        .await?)
    }
}

#[async_trait]
impl CycleInvoices for PgCycleInvoices {
    async fn usage(&mut self) -> Result<Option<CycleUsage>, StoreError> {
        // One statement, so the totals and their lines are of the same version.
        let rows = sqlx::query(
            "SELECT t.rated_cost_micros AS total_rated, t.calculated_at,
                    l.subscription, l.kind, l.roaming_zone, l.cdr_count, l.voice_seconds, l.data_bytes,
                    l.messages, l.rated_cost_micros
             FROM totals t
             LEFT JOIN totals_line l ON l.customer_id = t.customer_id AND l.cycle = t.cycle
             WHERE t.customer_id = $1 AND t.cycle = $2",
        )
        .bind(self.customer_id)
        .bind(self.cycle)
        .fetch_all(&mut *self.tx)
        .await?;
        let Some(first) = rows.first() else {
            return Ok(None);
        };
        let rated_cost_micros: i64 = first.try_get("total_rated")?;
        let calculated_at: DateTime<Utc> = first.try_get("calculated_at")?;
        let mut lines = Vec::with_capacity(rows.len());
        for r in &rows {
            // The one row of totals without lines has no line columns.
            let Some(subscription) = r.try_get::<Option<String>, _>("subscription")? else {
                continue;
            };
            lines.push(UsageLine {
                subscription,
                kind: r.try_get("kind")?,
                zone: r.try_get("roaming_zone")?,
                cdr_count: r.try_get("cdr_count")?,
                voice_seconds: r.try_get("voice_seconds")?,
                data_bytes: r.try_get("data_bytes")?,
                messages: r.try_get("messages")?,
                rated_cost_micros: r.try_get("rated_cost_micros")?,
            });
        }
        Ok(Some(CycleUsage {
            rated_cost_micros,
            calculated_at,
            lines,
        }))
    }

    async fn fee_counts(&mut self) -> Result<BTreeMap<String, i64>, StoreError> {
        Ok(sqlx::query_as::<_, (String, i64)>(
            "SELECT identifier, count(*) FROM subscription
             WHERE customer_id = $1 AND active_from <= $2 AND (active_to IS NULL OR active_to >= $2)
             GROUP BY identifier",
        )
        .bind(self.customer_id)
        .bind(self.cycle)
        .fetch_all(&mut *self.tx)
        .await?
        .into_iter()
        .collect())
    }

    async fn main_invoice(&mut self) -> Result<Option<(i64, String)>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT id, status FROM invoice WHERE customer_id = $1 AND cycle = $2 AND sequence = 0",
        )
        .bind(self.customer_id)
        .bind(self.cycle)
        .fetch_optional(&mut *self.tx)
        .await?)
    }

    async fn billed_lines(&mut self) -> Result<BTreeMap<LineKey, i64>, StoreError> {
        Ok(sqlx::query_as::<_, (String, String, String, i64)>(
            "SELECT l.subscription, l.kind, l.zone, sum(l.amount_micros)::bigint
             FROM invoice_line l JOIN invoice i ON i.id = l.invoice_id
             WHERE i.customer_id = $1 AND i.cycle = $2 AND i.status = 'final'
             GROUP BY l.subscription, l.kind, l.zone",
        )
        .bind(self.customer_id)
        .bind(self.cycle)
        .fetch_all(&mut *self.tx)
        .await?
        .into_iter()
        .map(|(s, k, z, amount)| ((s, k, z), amount))
        .collect())
    }

    async fn billed_totals(&mut self) -> Result<(i32, i64), StoreError> {
        Ok(sqlx::query_as(
            "SELECT (count(*) FILTER (WHERE kind = 'correction'))::int, coalesce(sum(total_micros), 0)::bigint
             FROM invoice WHERE customer_id = $1 AND cycle = $2 AND status = 'final'",
        )
        .bind(self.customer_id)
        .bind(self.cycle)
        .fetch_one(&mut *self.tx)
        .await?)
    }

    async fn create_draft(&mut self, figures: &InvoiceFigures) -> Result<i64, StoreError> {
        self.insert_draft("invoice", 0, figures).await
    }

    async fn rewrite_draft(
        &mut self,
        invoice_id: i64,
        figures: &InvoiceFigures,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE invoice SET rated_cost_micros = $2, fees_micros = $3, total_micros = $4,
                                totals_calculated_at = $5, updated_at = now()
             WHERE id = $1",
        )
        .bind(invoice_id)
        .bind(figures.rated_cost_micros)
        .bind(figures.fees_micros)
        .bind(figures.total_micros)
        .bind(figures.totals_calculated_at)
        .execute(&mut *self.tx)
        .await?;
        sqlx::query("DELETE FROM invoice_line WHERE invoice_id = $1")
            .bind(invoice_id)
            .execute(&mut *self.tx)
            .await?;
        Ok(())
    }

    async fn create_correction(
        &mut self,
        sequence: i32,
        figures: &InvoiceFigures,
    ) -> Result<i64, StoreError> {
        self.insert_draft("correction", sequence, figures).await
    }

    async fn insert_lines(
        &mut self,
        invoice_id: i64,
        lines: &[InvoiceLine],
    ) -> Result<(), StoreError> {
        let numbers: Vec<i32> = (1..).take(lines.len()).collect();
        sqlx::query(
            "INSERT INTO invoice_line (invoice_id, line_no, description, subscription, kind, zone, quantity, amount_micros)
             SELECT $1, n, d, s, k, z, q, a
             FROM UNNEST($2::int[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::bigint[])
                  AS t(n, d, s, k, z, q, a)",
        )
        .bind(invoice_id)
        .bind(&numbers)
        .bind(lines.iter().map(|l| l.description.as_str()).collect::<Vec<_>>())
        .bind(lines.iter().map(|l| l.subscription.as_str()).collect::<Vec<_>>())
        .bind(lines.iter().map(|l| l.kind.as_str()).collect::<Vec<_>>())
        .bind(lines.iter().map(|l| l.zone.as_str()).collect::<Vec<_>>())
        .bind(lines.iter().map(|l| l.quantity.as_str()).collect::<Vec<_>>())
        .bind(lines.iter().map(|l| l.amount_micros).collect::<Vec<_>>())
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    async fn buyer_details(&mut self, on: NaiveDate) -> Result<Option<StoredBuyer>, StoreError> {
        let Some(r) = sqlx::query(
            "SELECT valid_from, seller_code, legal_name, street, city, postcode, country, vat_number,
                    peppol_scheme, peppol_id, invoice_email, buyer_reference, purchase_order,
                    payment_terms_days, vat_category
             FROM customer_billing_details
             WHERE customer_id = $1 AND valid_from <= $2
             ORDER BY valid_from DESC LIMIT 1",
        )
        .bind(self.customer_id)
        .bind(on)
        .fetch_optional(&mut *self.tx)
        .await?
        else {
            return Ok(None);
        };
        let terms: Option<i32> = r.try_get("payment_terms_days")?;
        Ok(Some(StoredBuyer {
            customer_id: self.customer_id,
            valid_from: r.try_get("valid_from")?,
            seller: r.try_get("seller_code")?,
            legal_name: r.try_get("legal_name")?,
            street: r.try_get("street")?,
            city: r.try_get("city")?,
            postcode: r.try_get("postcode")?,
            country: r.try_get("country")?,
            vat_number: r.try_get("vat_number")?,
            peppol_scheme: r.try_get("peppol_scheme")?,
            peppol_id: r.try_get("peppol_id")?,
            invoice_email: r.try_get("invoice_email")?,
            buyer_reference: r.try_get("buyer_reference")?,
            purchase_order: r.try_get("purchase_order")?,
            // The column's CHECK keeps it within 0..=365.
            payment_terms_days: terms.and_then(|t| u32::try_from(t).ok()),
            vat_category: r.try_get("vat_category")?,
        }))
    }

    async fn seller_details(
        &mut self,
        seller: &str,
        on: NaiveDate,
    ) -> Result<Option<SellerDetails>, StoreError> {
        let Some(r) = sqlx::query(
            "SELECT seller_code, valid_from, legal_name, street, city, postcode, country, kvk, vat_number,
                    iban, bic, payment_terms_days, peppol_scheme, peppol_id, invoice_number_format
             FROM seller_details
             WHERE seller_code = $1 AND valid_from <= $2
             ORDER BY valid_from DESC LIMIT 1",
        )
        .bind(seller)
        .bind(on)
        .fetch_optional(&mut *self.tx)
        .await?
        else {
            return Ok(None);
        };
        let terms: i32 = r.try_get("payment_terms_days")?;
        Ok(Some(SellerDetails {
            code: r.try_get("seller_code")?,
            valid_from: r.try_get("valid_from")?,
            legal_name: r.try_get("legal_name")?,
            address: Address {
                street: r.try_get("street")?,
                city: r.try_get("city")?,
                postcode: r.try_get("postcode")?,
                country: r.try_get("country")?,
            },
            kvk: r.try_get("kvk")?,
            vat_number: r.try_get("vat_number")?,
            iban: r.try_get("iban")?,
            bic: r.try_get("bic")?,
            payment_terms_days: u32::try_from(terms).unwrap_or(0),
            peppol: PeppolId {
                scheme: r.try_get("peppol_scheme")?,
                id: r.try_get("peppol_id")?,
            },
            invoice_number_format: r.try_get("invoice_number_format")?,
        }))
    }

    async fn vat_rate(
        &mut self,
        country: &str,
        code: &str,
        on: NaiveDate,
    ) -> Result<Option<(String, RateBp)>, StoreError> {
        let row: Option<(String, i32)> = sqlx::query_as(
            "SELECT category, rate_bp FROM vat_rate
             WHERE country = $1 AND code = $2 AND valid_from <= $3
             ORDER BY valid_from DESC LIMIT 1",
        )
        .bind(country)
        .bind(code)
        .bind(on)
        .fetch_optional(&mut *self.tx)
        .await?;
        // The column's CHECK keeps the rate within 0..=10000.
        Ok(row.map(|(category, rate)| (category, RateBp(u32::try_from(rate).unwrap_or(0)))))
    }

    async fn block(
        &mut self,
        invoice_id: i64,
        reason: &str,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        // blocked_at keeps the first time this reason was seen.
        sqlx::query(
            "UPDATE invoice SET blocked_at = CASE WHEN blocked_reason IS NOT DISTINCT FROM $2
                                                  THEN coalesce(blocked_at, $3) ELSE $3 END,
                                blocked_reason = $2, updated_at = now()
             WHERE id = $1",
        )
        .bind(invoice_id)
        .bind(reason)
        .bind(now)
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    async fn take_number(&mut self, seller: &str, year: i32) -> Result<i64, StoreError> {
        // The row stays locked until this transaction ends: a concurrent
        // finalisation of the same series waits here, and a rollback gives
        // the number back (see billing::numbering).
        Ok(sqlx::query_scalar(
            "INSERT INTO invoice_number_counter (seller_code, year, last_number) VALUES ($1, $2, 1)
             ON CONFLICT (seller_code, year)
             DO UPDATE SET last_number = invoice_number_counter.last_number + 1
             RETURNING last_number",
        )
        .bind(seller)
        .bind(year)
        .fetch_one(&mut *self.tx)
        .await?)
    }

    async fn finalise(&mut self, invoice_id: i64, issue: &Issue) -> Result<(), StoreError> {
        let count = issue.line_vat.len();
        let numbers: Vec<i32> = (1..).take(count).collect();
        sqlx::query(
            "UPDATE invoice_line l SET vat_category = t.c, vat_rate_bp = t.r, net_cents = t.n
             FROM UNNEST($2::int[], $3::text[], $4::int[], $5::bigint[]) AS t(no, c, r, n)
             WHERE l.invoice_id = $1 AND l.line_no = t.no",
        )
        .bind(invoice_id)
        .bind(&numbers)
        .bind(
            issue
                .line_vat
                .iter()
                .map(|v| v.category.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            issue
                .line_vat
                .iter()
                .map(|v| i32::try_from(v.rate.0).unwrap_or(i32::MAX))
                .collect::<Vec<_>>(),
        )
        .bind(&issue.amounts.line_net_cents)
        .execute(&mut *self.tx)
        .await?;
        let json = |value: serde_json::Result<serde_json::Value>| {
            value.map_err(|e| StoreError {
                retryable: false,
                source: Box::new(e),
            })
        };
        sqlx::query(
            "UPDATE invoice SET status = 'final', finalised_at = $2, updated_at = now(),
                    seller_code = $3, number = $4, number_seq = $5, issue_date = $6, due_date = $7,
                    seller_details = $8, buyer_details = $9, vat_breakdown = $10,
                    net_cents = $11, vat_cents = $12, payable_cents = $13,
                    blocked_reason = NULL, blocked_at = NULL
             WHERE id = $1",
        )
        .bind(invoice_id)
        .bind(issue.finalised_at)
        .bind(&issue.seller.code)
        .bind(&issue.number)
        .bind(issue.number_seq)
        .bind(issue.issue_date)
        .bind(issue.due_date)
        .bind(json(serde_json::to_value(&issue.seller))?)
        .bind(json(serde_json::to_value(&issue.buyer))?)
        .bind(json(serde_json::to_value(&issue.amounts.breakdown))?)
        .bind(issue.amounts.tax_exclusive_cents)
        .bind(issue.amounts.vat_total_cents)
        .bind(issue.amounts.payable_cents)
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    async fn commit(self: Box<Self>) -> Result<(), StoreError> {
        self.tx.commit().await?;
        Ok(())
    }
}

/// [`invoice::generate_invoice`] on the pool's stores.
pub async fn generate_invoice(
    pool: &PgPool,
    customer_id: i64,
    cycle: NaiveDate,
    now: DateTime<Utc>,
    grace: Duration,
) -> Result<InvoiceOutcome, InvoiceError> {
    invoice::generate_invoice(
        &PgInvoices::new(pool.clone()),
        &PgCustomerSettings::new(pool.clone()),
        customer_id,
        cycle,
        now,
        grace,
    )
    .await
}

/// [`invoice::cycles_due_for_finalisation`] on the pool.
pub async fn cycles_due_for_finalisation(
    pool: &PgPool,
    now: DateTime<Utc>,
    grace: Duration,
) -> Result<Vec<(i64, NaiveDate)>, InvoiceError> {
    invoice::cycles_due_for_finalisation(&PgInvoices::new(pool.clone()), now, grace).await
}
