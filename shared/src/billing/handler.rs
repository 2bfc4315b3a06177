//! The totals function's step handler and input: `DispatchTotals` checks
//! the customer's cycle and chains `CalculateTotals`, `BackupTotals`,
//! `BillingInsight` and `GenerateInvoice`, in that order (each needs the one
//! before it: the history and the insights read the totals, the invoice
//! bills them). A chain whose calculation finds the cycle current, made by
//! another chain's calculation, skips to its invoice: the backup and the
//! insights of those totals are that chain's to do.
//!
//! When the cycle has a final invoice after `GenerateInvoice` (it was
//! finalised, corrected, or already final), the chain continues with
//! `RenderInvoice`, which writes the documents the cycle's final invoices
//! lack (`billing::document::rendering`; one read when none is missing). A
//! draft has no document, so an open cycle's chain ends at its invoice.
//! After RenderInvoice comes `SpecifyInvoice`, which writes the usage
//! specification of each final invoice that has none
//! (`billing::specification::specify_cycle`).
//! RenderInvoice also stores the final invoice's chargeback and writes its
//! general-ledger CSV beside the documents (`costs::export`).

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};
use serde::Deserialize;

use crate::billing::calculation::{CalculationReport, Recalculation};
use crate::billing::customer::{CustomerError, CustomerSettings};
use crate::billing::document::issued::IssuedStore;
use crate::billing::document::rendering::{
    render_cycle_documents, DocumentSink, DocumentStore, RenderError,
};
use crate::billing::history::{backup_totals, HistoryError, HistoryStore};
use crate::billing::insight::{detect_insights, InsightError, InsightStore};
use crate::billing::invoice::{generate_invoice, InvoiceError, InvoiceOutcome, InvoiceStore};
use crate::billing::specification::{
    specify_cycle, SpecificationError, SpecificationStore, UploadStarter,
};
use crate::billing::totals::{CycleTotals, TotalsError};
use crate::budgets::alerts::{publish_pending, AlertOutbox, AlertPublisher};
use crate::budgets::cycle::{evaluate_cycle, BudgetStore, BudgetsError};
use crate::command::{Cause, Command, CyclePayload};
use crate::costs::cycle::CostStore;
use crate::costs::export::{export_chargeback, ChargebackStore, ExportError};
use crate::envelope::{derived_id, ChainLink, Envelope, Step};
use crate::lambda::ConsoleCommand;
use crate::ports::{ObjectPut, StoreError};
use crate::runtime::{Delivery, StepError, StepHandler, StepOutcome};

/// CalculateTotals as one operation: the calculation's snapshot, lock and
/// retries belong to its store (`adapters::totals` on PostgreSQL).
#[async_trait]
pub trait CycleCalculator: Send + Sync {
    /// `by` is the calculating run (the CalculateTotals message id).
    async fn calculate(
        &self,
        customer_id: i64,
        cycle: NaiveDate,
        how: Recalculation,
        by: Option<&str>,
    ) -> Result<(CycleTotals, CalculationReport), TotalsError>;
}

/// The stores the totals steps read and write
/// (`adapters::billing::stores` builds PostgreSQL's).
#[derive(Clone)]
pub struct TotalsStores {
    pub customers: Arc<dyn CustomerSettings>,
    pub calculator: Arc<dyn CycleCalculator>,
    pub history: Arc<dyn HistoryStore>,
    pub insights: Arc<dyn InsightStore>,
    pub invoices: Arc<dyn InvoiceStore>,
    /// Final invoices as issued, read for their documents.
    pub issued: Arc<dyn IssuedStore>,
    /// The documents written for them.
    pub documents: Arc<dyn DocumentStore>,
    /// Their usage specifications (SpecifyInvoice).
    pub specifications: Arc<dyn SpecificationStore>,
    /// Budgets, levels and anomalies, evaluated in BillingInsight.
    pub budgets: Arc<dyn BudgetStore>,
    /// The alerts waiting to be published.
    pub outbox: Arc<dyn AlertOutbox>,
    /// Cost trees and invoices, and the chargebacks RenderInvoice stores.
    pub costs: Arc<dyn CostStore>,
    pub chargebacks: Arc<dyn ChargebackStore>,
}

pub struct Totals {
    stores: TotalsStores,
    /// How long after a cycle ends its invoice stays a draft.
    grace: chrono::Duration,
    /// Where RenderInvoice writes documents; without it GenerateInvoice
    /// chains no RenderInvoice (a test of the other steps).
    documents: Option<(Arc<dyn ObjectPut>, String)>,
    /// Where SpecifyInvoice starts its uploads (into the document bucket);
    /// without it RenderInvoice chains no SpecifyInvoice.
    uploads: Option<Arc<dyn UploadStarter>>,
    /// Where alerts are published (the alert topic); without it they stay
    /// in the outbox (`alert_outbox`), recorded and listed as insights.
    alerts: Option<Arc<dyn AlertPublisher>>,
}

impl Totals {
    pub fn new(stores: TotalsStores, grace: chrono::Duration) -> Self {
        Self {
            stores,
            grace,
            documents: None,
            uploads: None,
            alerts: None,
        }
    }

    /// Writes the usage specifications of final invoices into the document
    /// bucket (SpecifyInvoice, after RenderInvoice).
    pub fn with_specifications(mut self, uploads: Arc<dyn UploadStarter>) -> Self {
        self.uploads = Some(uploads);
        self
    }

    /// Publishes budget and anomaly alerts with `publisher`.
    pub fn with_alerts(mut self, publisher: Arc<dyn AlertPublisher>) -> Self {
        self.alerts = Some(publisher);
        self
    }

    /// Renders the documents of final invoices into `bucket` (RenderInvoice).
    pub fn with_documents(mut self, objects: Arc<dyn ObjectPut>, bucket: String) -> Self {
        self.documents = Some((objects, bucket));
        self
    }
}

fn customer_error(e: CustomerError) -> StepError {
    StepError::classify(e.is_retryable(), e)
}

/// A store failure is retried as its adapter judged; its source's text is
/// the reason.
fn store_error(e: StoreError) -> StepError {
    StepError::classify(e.retryable, e.source)
}

fn insight_error(e: InsightError) -> StepError {
    match e {
        InsightError::Store(e) => store_error(e),
        InsightError::Customer(e) => customer_error(e),
        other => StepError::permanent(other),
    }
}

fn invoice_error(e: InvoiceError) -> StepError {
    match e {
        InvoiceError::Store(e) => store_error(e),
        InvoiceError::Customer(e) => customer_error(e),
        other => StepError::permanent(other),
    }
}

fn budgets_error(e: BudgetsError) -> StepError {
    match e {
        BudgetsError::Store(e) => store_error(e),
        BudgetsError::Customer(e) => customer_error(e),
        other => StepError::permanent(other),
    }
}

fn export_error(e: ExportError) -> StepError {
    StepError::classify(e.is_retryable(), e)
}

fn render_error(e: RenderError) -> StepError {
    StepError::classify(e.is_retryable(), e)
}

fn totals_error(e: TotalsError) -> StepError {
    match e {
        TotalsError::Store(StoreError {
            retryable: true, ..
        })
        | TotalsError::Read(_) => StepError::retryable(e),
        TotalsError::Customer(e) => customer_error(e),
        other => StepError::permanent(other),
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
        match message.command()? {
            Command::DispatchTotals(cycle) => {
                // Fails here, before anything is calculated, for a customer
                // that does not exist, a day that is no cycle start, or a
                // missing or bad time zone or plan.
                self.stores
                    .customers
                    .load(cycle.customer_id, cycle.cycle)
                    .await
                    .map_err(customer_error)?;
                Ok(StepOutcome::Continue {
                    output: serde_json::Value::Null,
                    next: calculation_chain(cycle),
                })
            }
            Command::CalculateTotals(cycle) => {
                let started = std::time::Instant::now();
                // A re-rating (a catalog change, or an operator's console
                // command with that cause) rates every CDR of the cycle:
                // also what no writer marked, such as a CDR inserted by hand.
                let how = match cycle.cause {
                    Cause::Rerating => Recalculation::Full,
                    _ => Recalculation::Incremental,
                };
                let (totals, report) = self
                    .stores
                    .calculator
                    .calculate(cycle.customer_id, cycle.cycle, how, Some(&message.id))
                    .await
                    .map_err(totals_error)?;
                tracing::info!(calculation = ?report.calculation, cdrs_read = report.cdrs_read, "calculation");
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
                    method = totals.method,
                    rated = totals.rated_cost_micros,
                    cdrs = totals.cdr_count,
                    "totals calculated"
                );
                // Another chain made these totals, and its BackupTotals and
                // BillingInsight will read them; this chain's CDRs are in
                // them, so it owes only its invoice (its task completes
                // after it). A day's sync forks one chain per carrier for
                // every cycle, and most find the cycle current: skipping
                // their repeats takes two fifths of the totals queue's
                // messages away (issue 17).
                if report.current_by_another {
                    return Ok(StepOutcome::SkipTo {
                        until: Step::GenerateInvoice,
                    });
                }
                Ok(StepOutcome::finished())
            }
            Command::BackupTotals(cycle) => {
                let backup = backup_totals(
                    self.stores.history.as_ref(),
                    self.stores.customers.as_ref(),
                    cycle.customer_id,
                    cycle.cycle,
                    cycle.cause.as_str(),
                )
                .await
                .map_err(|e| match e {
                    HistoryError::Customer(e) => customer_error(e),
                    HistoryError::Store(e) => store_error(e),
                })?;
                tracing::info!(?backup, "totals backed up");
                Ok(StepOutcome::finished())
            }
            Command::BillingInsight(cycle) => {
                let insights = detect_insights(
                    self.stores.insights.as_ref(),
                    self.stores.customers.as_ref(),
                    cycle.customer_id,
                    cycle.cycle,
                )
                .await
                .map_err(insight_error)?;
                let kinds: Vec<&str> = insights.iter().map(|i| i.kind.as_str()).collect();
                tracing::info!(count = insights.len(), ?kinds, "insights recorded");
                // Budgets here, not in CalculateTotals: this step runs once
                // per calculation, in the chain that made the totals (a
                // chain that found them current skips it). The levels and
                // their alerts are recorded in one transaction; a retry
                // finds the levels recorded and raises nothing twice.
                let budgets = evaluate_cycle(
                    self.stores.budgets.as_ref(),
                    self.stores.customers.as_ref(),
                    cycle.customer_id,
                    cycle.cycle,
                )
                .await
                .map_err(budgets_error)?;
                for skipped in &budgets.skipped {
                    tracing::warn!(reason = skipped.as_str(), "budget not evaluated");
                }
                let raised: Vec<&str> = budgets.raised.iter().map(|a| a.kind.as_str()).collect();
                tracing::info!(
                    budgets = budgets.evaluated.len(),
                    anomalies = budgets.anomalies.len(),
                    ?raised,
                    "budgets evaluated"
                );
                // A failed publish leaves the alert in the outbox for the
                // hourly sweep: an SNS outage must not hold up the invoice.
                if let Some(publisher) = &self.alerts {
                    match publish_pending(
                        self.stores.outbox.as_ref(),
                        publisher.as_ref(),
                        cycle.customer_id,
                    )
                    .await
                    {
                        Ok(0) => {}
                        Ok(sent) => tracing::info!(sent, "alerts published"),
                        Err(e) => tracing::warn!(error = %e, "alerts not published yet"),
                    }
                }
                Ok(StepOutcome::finished())
            }
            Command::GenerateInvoice(cycle) => {
                let outcome = generate_invoice(
                    self.stores.invoices.as_ref(),
                    self.stores.customers.as_ref(),
                    cycle.customer_id,
                    cycle.cycle,
                    chrono::Utc::now(),
                    self.grace,
                )
                .await
                .map_err(invoice_error)?;
                tracing::info!(?outcome, "invoice");
                let has_final = matches!(
                    outcome,
                    InvoiceOutcome::Finalised { .. }
                        | InvoiceOutcome::CorrectionCreated { .. }
                        | InvoiceOutcome::Unchanged { .. }
                );
                Ok(StepOutcome::Continue {
                    output: serde_json::Value::Null,
                    next: if has_final && self.documents.is_some() {
                        vec![ChainLink::from(Command::RenderInvoice(cycle))]
                    } else {
                        Vec::new()
                    },
                })
            }
            Command::RenderInvoice(cycle) => {
                let Some((objects, bucket)) = &self.documents else {
                    return Err(StepError::Permanent(
                        "this totals function has no document bucket: set DOCUMENT_BUCKET and redrive the message".into(),
                    ));
                };
                let written = render_cycle_documents(
                    self.stores.issued.as_ref(),
                    self.stores.documents.as_ref(),
                    &DocumentSink {
                        objects: objects.as_ref(),
                        bucket,
                    },
                    cycle.customer_id,
                    cycle.cycle,
                )
                .await
                .map_err(render_error)?;
                let keys: Vec<&str> = written.iter().map(|d| d.key.as_str()).collect();
                tracing::info!(count = written.len(), ?keys, "invoice documents written");
                // The final invoice's chargeback beside its documents
                // (costs::export): once, like the documents.
                let chargeback = export_chargeback(
                    self.stores.costs.as_ref(),
                    self.stores.chargebacks.as_ref(),
                    objects.as_ref(),
                    bucket,
                    cycle.customer_id,
                    cycle.cycle,
                )
                .await
                .map_err(export_error)?;
                if let Some(stored) = &chargeback {
                    tracing::info!(
                        key = stored.key.as_str(),
                        rows = stored.rows.len(),
                        "chargeback stored"
                    );
                }
                if self.uploads.is_some() {
                    return Ok(StepOutcome::Continue {
                        output: serde_json::Value::Null,
                        next: vec![ChainLink::from(Command::SpecifyInvoice(cycle))],
                    });
                }
                Ok(StepOutcome::done(
                    serde_json::to_value(&written).unwrap_or_default(),
                ))
            }
            Command::SpecifyInvoice(cycle) => {
                let (Some((_, bucket)), Some(uploads)) = (&self.documents, &self.uploads) else {
                    return Err(StepError::Permanent(
                        "this totals function has no document bucket for specifications: set DOCUMENT_BUCKET and redrive the message".into(),
                    ));
                };
                match specify_cycle(
                    self.stores.specifications.as_ref(),
                    uploads.as_ref(),
                    bucket,
                    cycle.customer_id,
                    cycle.cycle,
                )
                .await
                {
                    Ok(specified) => {
                        let keys: Vec<&str> = specified.iter().map(|s| s.key.as_str()).collect();
                        tracing::info!(
                            count = specified.len(),
                            ?keys,
                            "usage specifications written"
                        );
                        Ok(StepOutcome::done(
                            serde_json::to_value(&specified).unwrap_or_default(),
                        ))
                    }
                    // CDRs arrived since this chain's calculation: the chain
                    // their import started calculates them, renders, and
                    // specifies the invoice then (the cycle is still without
                    // a specification). Nothing is lost by ending here.
                    Err(SpecificationError::NotCurrent { why, .. }) => {
                        tracing::info!(%why, "cycle changed since its calculation; a later chain writes the specification");
                        Ok(StepOutcome::finished())
                    }
                    Err(e) => Err(StepError::classify(e.is_retryable(), e)),
                }
            }
            other => Err(StepError::Permanent(
                format!("the totals function does not run {}", other.step()).into(),
            )),
        }
    }
}

/// What a `DispatchTotals` runs, in order: each step needs the one before
/// it (the history and the insights read the totals, the invoice bills
/// them).
pub fn calculation_chain(cycle: CyclePayload) -> Vec<ChainLink> {
    [
        Command::CalculateTotals(cycle),
        Command::BackupTotals(cycle),
        Command::BillingInsight(cycle),
        Command::GenerateInvoice(cycle),
    ]
    .into_iter()
    .map(ChainLink::from)
    .collect()
}

/// The console's `{"customer_id": 1, "cycle": "2025-01-01", "cause"?: ...}`:
/// a `DispatchTotals` of that cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct CycleCommand(pub CyclePayload);

impl ConsoleCommand for CycleCommand {
    const EXPECTED: &'static str = r#"{"customer_id": 1, "cycle": "2025-01-01"} (a DispatchTotals payload) or a whole envelope"#;

    fn envelope(&self, request_id: &str, now: DateTime<Utc>) -> Envelope {
        let id = derived_id(&["console-totals", request_id]);
        Envelope::start(id, Command::DispatchTotals(self.0), vec![], None, now)
    }
}

/// What the totals function is invoked with: its queue's batches, its
/// schedule (the invoice sweep), a console cycle or envelope.
pub type TotalsInput = crate::lambda::ScheduledInput<CycleCommand>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::Cause;
    use crate::lambda::{QueueInput, ScheduledInput};

    const CONSOLE_CYCLE: &str = include_str!("../../../events/totals/console-cycle.json");
    const CONSOLE_DISPATCH: &str = include_str!("../../../events/totals/console-dispatch.json");
    const SCHEDULE: &str = include_str!("../../../events/totals/schedule-invoice-sweep.json");

    fn cycle() -> CyclePayload {
        CyclePayload::new(1, "2025-01-01".parse().unwrap(), Cause::Console)
    }

    #[test]
    fn the_totals_input_parses_its_schedule_its_console_cycle_and_a_console_envelope() {
        let schedule: TotalsInput = serde_json::from_str(SCHEDULE).unwrap();
        let ScheduledInput::Schedule(event) = schedule else {
            panic!("the sweep's schedule event is a schedule: {schedule:?}");
        };
        assert_eq!(
            crate::lambda::schedule_run_key(&event),
            "schedule:7b1c0e52-3f8e-4d0a-9a4e-1f6c2d9b8e11"
        );
        assert_eq!(
            serde_json::from_str::<TotalsInput>(CONSOLE_CYCLE).unwrap(),
            ScheduledInput::Queue(QueueInput::Command(CycleCommand(cycle())))
        );
        let ScheduledInput::Queue(QueueInput::Envelope(envelope)) =
            serde_json::from_str::<TotalsInput>(CONSOLE_DISPATCH).unwrap()
        else {
            panic!("a whole envelope is taken as one");
        };
        let envelope = Envelope::parse(&envelope.to_string()).unwrap();
        assert_eq!(
            envelope.command().unwrap(),
            Command::DispatchTotals(cycle())
        );
    }

    #[test]
    fn a_console_cycle_becomes_a_dispatch_whose_id_derives_from_the_request() {
        let now = Utc::now();
        let first = CycleCommand(cycle()).envelope("req-1", now);
        assert_eq!(first.command().unwrap(), Command::DispatchTotals(cycle()));
        assert_eq!(first.id, CycleCommand(cycle()).envelope("req-1", now).id);
        assert_ne!(first.id, CycleCommand(cycle()).envelope("req-2", now).id);
    }

    #[test]
    fn a_console_event_that_is_no_input_says_what_to_send() {
        let err = serde_json::from_str::<TotalsInput>(r#"{"customer_id": 1}"#).unwrap_err();
        assert!(err.to_string().contains("cycle"), "{err}");
        assert!(
            err.to_string().contains(r#"send {"customer_id": 1"#),
            "{err}"
        );
    }

    #[test]
    fn a_store_failure_is_retried_as_its_adapter_judged_and_keeps_its_source() {
        let failure = |retryable| StoreError {
            retryable,
            source: "connection reset by peer".into(),
        };
        let step = invoice_error(InvoiceError::Store(failure(true)));
        assert!(step.is_retryable());
        assert_eq!(step.reason(), "connection reset by peer");
        assert!(std::error::Error::source(&step).is_some());
        assert!(!insight_error(InsightError::Store(failure(false))).is_retryable());
        let step = totals_error(TotalsError::Store(failure(true)));
        assert!(step.is_retryable());
        assert_eq!(step.reason(), "database error: connection reset by peer");
        assert!(!totals_error(TotalsError::Store(failure(false))).is_retryable());
        assert!(customer_error(CustomerError::Store(failure(true))).is_retryable());
    }

    #[test]
    fn a_dispatch_chains_the_four_steps_of_its_cycle_with_its_cause() {
        let cycle = CyclePayload::new(4, "2025-02-01".parse().unwrap(), Cause::Import);
        let chain = calculation_chain(cycle);
        let steps: Vec<Step> = chain.iter().map(|l| l.step).collect();
        assert_eq!(
            steps,
            [
                Step::CalculateTotals,
                Step::BackupTotals,
                Step::BillingInsight,
                Step::GenerateInvoice
            ]
        );
        for link in &chain {
            assert_eq!(link.payload["cause"], "import");
            assert!(link.payload.get("method").is_none(), "{}", link.payload);
        }
    }
}
