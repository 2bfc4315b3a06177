//! cdr-import's step handler: `ImportCdrFile` runs the importer on the
//! object and forks one `DispatchTotals` per (customer, billing cycle) the
//! import touched; `AttachUnassignedCdrs` gives customer-less CDRs their
//! customer once the subscription exists, and forks the same way.
//!
//! After a file's rows are loaded, the bill-shock rule looks at the
//! roaming data outside the EU it brought (`budgets::import`), so that
//! alert does not wait for the cycle.
//!
//! `AuditCarrierInvoice` audits a carrier's invoice file (issue 19) through
//! the audit's store (`audit::run`).

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use tracing::instrument;

use crate::audit::run::{audit_carrier_invoice, AuditStore};
use crate::audit::Tolerance;
use crate::budgets::alerts::{publish_pending, AlertOutbox, AlertPublisher};
use crate::budgets::import::{evaluate_import, BillShockStore};
use crate::command::{AuditCarrierInvoice, Cause, Command, CyclePayload, ImportCdrFile};
use crate::envelope::{derived_id, ChainLink, Envelope};
use crate::import::importer::{ImportRequest, Importer};
use crate::import::source::RangeRead;
use crate::lambda::{ConsoleCommand, QueueInput};
use crate::metrics::Unit;
use crate::routing::Provider;
use crate::runtime::{Delivery, Reason, StepError, StepHandler, StepOutcome};

/// Opens an object for ranged reads (S3 in production).
pub trait ObjectSource: Send + Sync {
    fn open(&self, bucket: &str, key: &str) -> Arc<dyn RangeRead>;
}

/// Provider and profile from `inbox/{provider}/{profile_id}/{period}/{file}`.
pub fn parse_inbox_key(key: &str) -> Result<(Provider, Option<i64>), String> {
    let mut parts = key.split('/');
    match (parts.next(), parts.next(), parts.next()) {
        (Some("inbox"), Some(provider), profile) => {
            let provider = provider.parse::<Provider>().map_err(|e| e.to_string())?;
            Ok((provider, profile.and_then(|p| p.parse().ok())))
        }
        _ => Err(format!(
            "cannot tell the provider from key {key:?}; exports belong under inbox/{{provider}}/{{profile_id}}/..., or give \"provider\""
        )),
    }
}

/// The bill-shock rule's store, its outbox and, when there is an alert
/// topic, the publisher.
#[derive(Clone)]
pub struct BillShockAlerts {
    pub store: Arc<dyn BillShockStore>,
    pub outbox: Arc<dyn AlertOutbox>,
    pub publisher: Option<Arc<dyn AlertPublisher>>,
}

/// Provider from `carrier-invoices/{provider}/...`.
pub fn parse_carrier_invoice_key(key: &str) -> Result<Provider, String> {
    let mut parts = key.split('/');
    match (parts.next(), parts.next()) {
        (Some("carrier-invoices"), Some(provider)) => {
            provider.parse::<Provider>().map_err(|e| e.to_string())
        }
        _ => Err(format!(
            "cannot tell the provider from key {key:?}; carrier invoices belong under carrier-invoices/{{provider}}/..., or give \"provider\""
        )),
    }
}

/// The audit's store and its tolerance, when the function audits carrier
/// invoices.
pub struct Auditing {
    pub store: Arc<dyn AuditStore>,
    pub tolerance: Tolerance,
}

pub struct CdrImport {
    importer: Importer,
    sources: Arc<dyn ObjectSource>,
    pool: sqlx::PgPool,
    bill_shock: Option<BillShockAlerts>,
    auditing: Option<Auditing>,
}

impl CdrImport {
    pub fn new(importer: Importer, sources: Arc<dyn ObjectSource>, pool: sqlx::PgPool) -> Self {
        Self {
            importer,
            sources,
            pool,
            bill_shock: None,
            auditing: None,
        }
    }

    /// Evaluates the bill-shock rule after each file.
    pub fn with_bill_shock(mut self, alerts: BillShockAlerts) -> Self {
        self.bill_shock = Some(alerts);
        self
    }

    /// The bill-shock rule on what the import loaded. Recording is part
    /// of the step (a failure retries it; the rule finds the same windows
    /// and raises nothing twice). A failed publish is only logged: the
    /// alert stays in the outbox, and the customer's next BillingInsight,
    /// which this import's DispatchTotals runs, publishes it.
    async fn bill_shock(
        &self,
        import_file_id: i64,
        touched: &[(i64, chrono::NaiveDate)],
    ) -> Result<(), StepError> {
        let Some(alerts) = &self.bill_shock else {
            return Ok(());
        };
        let mut customers: Vec<i64> = touched.iter().map(|(c, _)| *c).collect();
        customers.sort_unstable();
        customers.dedup();
        let raised = evaluate_import(alerts.store.as_ref(), import_file_id, &customers)
            .await
            .map_err(|e| match e {
                crate::budgets::import::BillShockError::Store(s) => {
                    StepError::classify(s.retryable, s.source)
                }
                other => StepError::permanent(other),
            })?;
        if raised.is_empty() {
            return Ok(());
        }
        let newest: Vec<&str> = raised
            .iter()
            .filter_map(|a| a.attributes.get("newest_cdr_at").map(String::as_str))
            .collect();
        tracing::warn!(count = raised.len(), ?newest, "bill shock raised");
        let Some(publisher) = &alerts.publisher else {
            return Ok(());
        };
        let mut owners: Vec<i64> = raised.iter().map(|a| a.customer_id).collect();
        owners.dedup();
        for customer_id in owners {
            if let Err(e) =
                publish_pending(alerts.outbox.as_ref(), publisher.as_ref(), customer_id).await
            {
                tracing::warn!(error = %e, customer_id, "bill-shock alert not published yet");
            }
        }
        Ok(())
    }

    /// Also runs `AuditCarrierInvoice`.
    pub fn with_audit(mut self, auditing: Auditing) -> Self {
        self.auditing = Some(auditing);
        self
    }

    async fn audit(&self, file: AuditCarrierInvoice) -> Result<StepOutcome, StepError> {
        let Some(auditing) = &self.auditing else {
            return Err(StepError::Permanent(
                "this cdr-import was built without the carrier audit; wire CdrImport::with_audit"
                    .into(),
            ));
        };
        tracing::Span::current().record("key", file.key.as_str());
        let provider = match file.provider {
            Some(provider) => provider,
            None => {
                parse_carrier_invoice_key(&file.key).map_err(|e| StepError::Permanent(e.into()))?
            }
        };
        // A carrier invoice is a few MB at most (50,000 subscriptions are
        // about 10 MB): read whole, then parsed as a stream.
        let source = self.sources.open(&file.bucket, &file.key);
        let retryable = |e: crate::import::source::SourceError| {
            StepError::Retryable(Reason::with_source(
                format!("reading s3://{}/{}: {e}", file.bucket, file.key),
                e,
            ))
        };
        let size = source.len().await.map_err(retryable)?;
        let mut bytes = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
        let mut offset = 0;
        while offset < size {
            let len = (size - offset).min(8 << 20);
            bytes.extend_from_slice(&source.read_range(offset, len).await.map_err(retryable)?);
            offset += len;
        }
        let report = audit_carrier_invoice(
            auditing.store.as_ref(),
            provider.as_str(),
            &file.key,
            bytes.as_slice(),
            auditing.tolerance,
        )
        .await
        .map_err(|e| StepError::classify(e.is_retryable(), e))?;
        tracing::info!(
            carrier_invoice_id = report.invoice_id,
            lines = report.lines,
            rejected = report.rejected.len(),
            findings = report.findings.len(),
            overcharge_micros = report.overcharge_micros(),
            superseded_by = report.superseded_by,
            "carrier invoice audited"
        );
        Ok(StepOutcome::finished())
    }

    async fn import(
        &self,
        file: ImportCdrFile,
        delivery: Delivery,
    ) -> Result<StepOutcome, StepError> {
        if let Some(error) = file.error {
            return Err(StepError::Permanent(error.into()));
        }
        tracing::Span::current().record("key", file.key.as_str());
        let (provider, profile_id) = match file.provider {
            Some(provider) => (provider, file.profile_id),
            None => parse_inbox_key(&file.key).map_err(|e| StepError::Permanent(e.into()))?,
        };
        let request = ImportRequest {
            bucket: file.bucket.clone(),
            key: file.key.clone(),
            provider,
            profile_id: profile_id.or(file.profile_id),
            deadline: Some(delivery.deadline),
        };
        let source = self.sources.open(&file.bucket, &file.key);
        let summary = self
            .importer
            .import(source, &request)
            .await
            .map_err(|e| StepError::classify(e.is_retryable(), e))?;
        // An import of content seen before loaded nothing new: no counts.
        if summary.status != crate::import::importer::ImportStatus::AlreadyImported {
            crate::metrics::emit_counts(
                &[("Provider", provider.as_str())],
                &[
                    ("CdrsLoaded", Unit::Count, summary.loaded as f64),
                    ("CdrsDuplicate", Unit::Count, summary.duplicate as f64),
                    ("CdrsRejected", Unit::Count, summary.rejected as f64),
                    (
                        "CdrsWithoutCustomer",
                        Unit::Count,
                        summary.without_customer as f64,
                    ),
                ],
            );
        }
        tracing::info!(
            import_file_id = summary.import_file_id,
            status = summary.status.as_str(),
            cycles = summary.touched.len(),
            "imported"
        );
        self.bill_shock(summary.import_file_id, &summary.touched)
            .await?;
        Ok(StepOutcome::Fork {
            branches: dispatch_totals(&summary.touched, Cause::Import),
        })
    }
}

/// One `DispatchTotals` per (customer, cycle).
fn dispatch_totals(touched: &[(i64, chrono::NaiveDate)], cause: Cause) -> Vec<ChainLink> {
    touched
        .iter()
        .map(|&(customer_id, cycle)| {
            Command::DispatchTotals(CyclePayload::new(customer_id, cycle, cause)).into()
        })
        .collect()
}

#[async_trait]
impl StepHandler for CdrImport {
    #[instrument(skip_all, fields(key))]
    async fn handle(
        &self,
        message: &Envelope,
        delivery: Delivery,
    ) -> Result<StepOutcome, StepError> {
        match message.command()? {
            Command::ImportCdrFile(file) => self.import(file, delivery).await,
            Command::AuditCarrierInvoice(file) => self.audit(file).await,
            Command::AttachUnassignedCdrs(_) => {
                let attached = crate::import::attach::attach_unassigned(&self.pool)
                    .await
                    .map_err(|e| {
                        StepError::Retryable(Reason::with_source(
                            format!("attaching CDRs failed: {e}"),
                            e,
                        ))
                    })?;
                tracing::info!(
                    cdrs = attached.cdrs,
                    cycles = attached.touched.len(),
                    "CDRs attached"
                );
                Ok(StepOutcome::Fork {
                    branches: dispatch_totals(&attached.touched, Cause::LateSubscription),
                })
            }
            other => Err(StepError::Permanent(
                format!("cdr-import does not run {}", other.step()).into(),
            )),
        }
    }
}

/// The console's `{"bucket": ..., "key": ..., "provider"?: ..., "profile_id"?: ...}`:
/// an `ImportCdrFile` of that object.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct ImportCommand(pub ImportCdrFile);

impl ConsoleCommand for ImportCommand {
    const EXPECTED: &'static str = r#"{"bucket": "...", "key": "inbox/{provider}/{profile_id}/..."} (events/cdr-import/console-import.json) or a whole envelope"#;

    fn envelope(&self, request_id: &str, now: DateTime<Utc>) -> Envelope {
        let id = derived_id(&["console-import", request_id]);
        Envelope::start(
            id,
            Command::ImportCdrFile(self.0.clone()),
            vec![],
            None,
            now,
        )
    }
}

/// What cdr-import is invoked with: its queue's batches (S3 notifications
/// and envelopes), a console import or envelope (attach).
pub type ImportInput = QueueInput<ImportCommand>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_provider_and_profile_come_from_the_inbox_key() {
        assert_eq!(
            parse_inbox_key("inbox/routit/7/2025-01-14/x.zip").unwrap(),
            (Provider::Routit, Some(7))
        );
        assert_eq!(
            parse_inbox_key("inbox/t_mobile/x.zip").unwrap(),
            (Provider::TMobile, None)
        );
        assert!(parse_inbox_key("inbox/ben/1/x.zip")
            .unwrap_err()
            .contains("unknown provider"));
        assert!(parse_inbox_key("other/routit/1/x.zip")
            .unwrap_err()
            .contains("inbox/"));
    }

    const SQS_NOTIFICATION: &str =
        include_str!("../../../events/cdr-import/sqs-s3-notification.json");
    const CONSOLE_IMPORT: &str = include_str!("../../../events/cdr-import/console-import.json");
    const CONSOLE_ATTACH: &str = include_str!("../../../events/cdr-import/console-attach.json");

    #[test]
    fn the_import_input_parses_its_sqs_event_its_console_import_and_a_console_envelope() {
        let QueueInput::Batch(batch) =
            serde_json::from_str::<ImportInput>(SQS_NOTIFICATION).unwrap()
        else {
            panic!("an SQS event is a batch");
        };
        assert_eq!(batch.records.len(), 1);
        let input: ImportInput = serde_json::from_str(CONSOLE_IMPORT).unwrap();
        assert_eq!(
            input,
            QueueInput::Command(ImportCommand(ImportCdrFile::object(
                "tem-cdr-000000000000-eu-west-1",
                "inbox/routit/1/2025-01-14/rt 20250114.zip"
            )))
        );
        let QueueInput::Envelope(envelope) =
            serde_json::from_str::<ImportInput>(CONSOLE_ATTACH).unwrap()
        else {
            panic!("a whole envelope is taken as one");
        };
        let envelope = Envelope::parse(&envelope.to_string()).unwrap();
        assert!(matches!(
            envelope.command().unwrap(),
            Command::AttachUnassignedCdrs(_)
        ));
    }

    #[test]
    fn a_console_import_becomes_an_import_envelope_that_names_its_object() {
        let QueueInput::Command(command) = serde_json::from_str::<ImportInput>(
            r#"{"bucket": "b", "key": "k", "provider": "t_mobile"}"#,
        )
        .unwrap() else {
            panic!("a console import");
        };
        let envelope = command.envelope("req-1", Utc::now());
        let Command::ImportCdrFile(file) = envelope.command().unwrap() else {
            panic!("an import");
        };
        assert_eq!((file.bucket.as_str(), file.key.as_str()), ("b", "k"));
        assert_eq!(file.provider, Some(Provider::TMobile));
    }

    #[test]
    fn a_console_import_without_a_key_says_what_to_send() {
        let err = serde_json::from_str::<ImportInput>(r#"{"bucket": "b"}"#).unwrap_err();
        assert!(err.to_string().contains("key"), "{err}");
        assert!(err.to_string().contains("console-import.json"), "{err}");
    }

    #[test]
    fn an_import_forks_one_dispatch_per_cycle_it_touched_with_its_cause() {
        let day = |s: &str| s.parse::<chrono::NaiveDate>().unwrap();
        let links = dispatch_totals(
            &[(1, day("2025-01-01")), (2, day("2025-01-15"))],
            Cause::Import,
        );
        assert_eq!(
            links,
            vec![
                ChainLink::from(Command::DispatchTotals(CyclePayload::new(
                    1,
                    day("2025-01-01"),
                    Cause::Import
                ))),
                ChainLink::from(Command::DispatchTotals(CyclePayload::new(
                    2,
                    day("2025-01-15"),
                    Cause::Import
                ))),
            ]
        );
    }
}
