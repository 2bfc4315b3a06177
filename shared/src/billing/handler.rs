//! The totals function's step handler: `DispatchTotals` decides the method
//! and chains `CalculateTotals`, `BackupTotals`, `BillingInsight` and
//! `GenerateInvoice`, in that order (each needs the one before it: the
//! history and the insights read the totals, the invoice bills them).

use async_trait::async_trait;
use chrono::NaiveDate;
use serde::Deserialize;
use serde_json::json;
use sqlx::PgPool;

use crate::adapters::totals::calculate_totals;
use crate::billing::customer::{BillingCustomer, CustomerError};
use crate::billing::history::{backup_totals, HistoryError};
use crate::billing::insight::{detect_insights, InsightError};
use crate::billing::invoice::{generate_invoice, InvoiceError};
use crate::billing::totals::TotalsError;
use crate::envelope::{ChainLink, Envelope, Step};
use crate::runtime::{Delivery, StepError, StepHandler, StepOutcome};

#[derive(Debug, Deserialize)]
struct CyclePayload {
    customer_id: i64,
    cycle: NaiveDate,
    #[serde(default = "default_cause")]
    cause: String,
}

fn default_cause() -> String {
    "console".into()
}

pub struct Totals {
    pool: PgPool,
    /// How long after a cycle ends its invoice stays a draft.
    grace: chrono::Duration,
}

impl Totals {
    pub fn new(pool: PgPool, grace: chrono::Duration) -> Self {
        Self { pool, grace }
    }
}

fn customer_error(e: CustomerError) -> StepError {
    if e.is_retryable() {
        StepError::Retryable(e.to_string())
    } else {
        StepError::Permanent(e.to_string())
    }
}

fn insight_error(e: InsightError) -> StepError {
    match e {
        InsightError::Database(db) => StepError::Retryable(db.to_string()),
        InsightError::Customer(e) => customer_error(e),
        other => StepError::Permanent(other.to_string()),
    }
}

fn invoice_error(e: InvoiceError) -> StepError {
    match e {
        InvoiceError::Database(db) => StepError::Retryable(db.to_string()),
        InvoiceError::Customer(e) => customer_error(e),
        other => StepError::Permanent(other.to_string()),
    }
}

fn totals_error(e: TotalsError) -> StepError {
    match e {
        TotalsError::Database(_) | TotalsError::Read(_) => StepError::Retryable(e.to_string()),
        TotalsError::Customer(e) => customer_error(e),
        other => StepError::Permanent(other.to_string()),
    }
}

#[async_trait]
impl StepHandler for Totals {
    #[tracing::instrument(skip_all)]
    async fn handle(
        &self,
        message: &Envelope,
        _delivery: Delivery,
    ) -> Result<StepOutcome, StepError> {
        let payload: CyclePayload =
            serde_json::from_value(message.payload.clone()).map_err(|e| {
                StepError::Permanent(format!(
                    "{} needs {{\"customer_id\": 1, \"cycle\": \"YYYY-MM-DD\"}}: {e}",
                    message.step
                ))
            })?;
        match message.step {
            Step::DispatchTotals => {
                let customer =
                    BillingCustomer::load(&self.pool, payload.customer_id, payload.cycle)
                        .await
                        .map_err(customer_error)?;
                let method = if customer.plan.is_some() {
                    "rate_plan"
                } else {
                    "standard"
                };
                let next = json!({
                    "customer_id": payload.customer_id,
                    "cycle": payload.cycle,
                    "cause": payload.cause,
                    "method": method,
                });
                Ok(StepOutcome::Continue {
                    output: json!({}),
                    next: [
                        Step::CalculateTotals,
                        Step::BackupTotals,
                        Step::BillingInsight,
                        Step::GenerateInvoice,
                    ]
                    .into_iter()
                    .map(|step| ChainLink::new(step, next.clone()))
                    .collect(),
                })
            }
            Step::CalculateTotals => {
                let started = std::time::Instant::now();
                let totals = calculate_totals(&self.pool, payload.customer_id, payload.cycle)
                    .await
                    .map_err(totals_error)?;
                // The runbook's "totals taking over 5 minutes" alarm reads this.
                crate::metrics::emit_counts(
                    &[],
                    &[(
                        "TotalsDuration",
                        crate::metrics::Unit::Milliseconds,
                        started.elapsed().as_millis() as f64,
                    )],
                );
                tracing::info!(
                    rated = totals.rated_cost_micros,
                    cdrs = totals.cdr_count,
                    "totals calculated"
                );
                Ok(StepOutcome::done(
                    json!({ "rated_cost_micros": totals.rated_cost_micros }),
                ))
            }
            Step::BackupTotals => {
                let backup = backup_totals(
                    &self.pool,
                    payload.customer_id,
                    payload.cycle,
                    &payload.cause,
                )
                .await
                .map_err(|e| match e {
                    HistoryError::Customer(e) => customer_error(e),
                    HistoryError::Database(e) => StepError::Retryable(e.to_string()),
                })?;
                Ok(StepOutcome::done(json!({ "backup": backup })))
            }
            Step::BillingInsight => {
                let insights = detect_insights(&self.pool, payload.customer_id, payload.cycle)
                    .await
                    .map_err(insight_error)?;
                let kinds: Vec<&str> = insights.iter().map(|i| i.kind.as_str()).collect();
                tracing::info!(count = insights.len(), ?kinds, "insights recorded");
                Ok(StepOutcome::done(json!({ "insights": kinds })))
            }
            Step::GenerateInvoice => {
                let outcome = generate_invoice(
                    &self.pool,
                    payload.customer_id,
                    payload.cycle,
                    chrono::Utc::now(),
                    self.grace,
                )
                .await
                .map_err(invoice_error)?;
                tracing::info!(?outcome, "invoice");
                Ok(StepOutcome::done(json!({ "invoice": outcome })))
            }
            other => Err(StepError::Permanent(format!(
                "the totals function does not run {other}"
            ))),
        }
    }
}

/// The console's `{"customer_id": 1, "cycle": "2025-01-01"}` as a
/// `DispatchTotals` envelope.
pub fn console_envelope(
    event: &serde_json::Value,
    request_id: &str,
    now: chrono::DateTime<chrono::Utc>,
) -> Option<String> {
    if event.get("version").is_some()
        || event.get("customer_id").is_none()
        || event.get("cycle").is_none()
    {
        return None;
    }
    let mut payload = event.clone();
    if payload.get("cause").is_none() {
        payload["cause"] = json!("console");
    }
    let id = crate::envelope::derived_id(&["console-totals", request_id]);
    Some(Envelope::root(id, Step::DispatchTotals, payload, vec![], None, now).to_body())
}
