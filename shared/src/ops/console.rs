//! The ops function's failed-message, task and watch commands: the same
//! code as `temctl failed` / `temctl task`, answering with JSON for the
//! console (events/ops/console-*.json) and the watch schedule.

use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use crate::billing::invoice_view::{
    self, DocumentAccess, InvoiceFilter, InvoiceStatus, InvoiceViewError, InvoiceViewStore,
};
use crate::ops::failed::{self, FailedPorts, FailedSelection, RetryOptions, SelectionError};
use crate::ops::settings::OpsSettings;
use crate::ops::timeline;
use crate::ops::watch::{self, WatchPorts, WatchSettings};
use crate::ops::OpsCommand;
use crate::ports::{AbandonedImports, FailedMessage, IdempotencyStore, PortError, TaskStore};
use crate::tasks::TaskStatus;

/// Who the console's retries and removals are recorded as done by.
pub const CONSOLE: &str = "ops console";

#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    #[error(transparent)]
    Port(#[from] PortError),
    #[error(transparent)]
    Selection(#[from] SelectionError),
    #[error("no failed message {0}; send failed-list with \"status\": \"any\" to see them all")]
    NoSuchFailure(String),
    #[error(
        "failed-remove removes {0} message(s) for good: add \"yes\": true to the event to confirm"
    )]
    Unconfirmed(usize),
    #[error("{0:?} is not a task status; use pending, running, completed, failed or stalled")]
    BadStatus(String),
    #[error("{0} is not a command of this module")]
    NotHere(&'static str),
    #[error(transparent)]
    Invoice(#[from] InvoiceViewError),
}

/// Where the console's invoice commands read invoices and sign URLs.
#[derive(Clone, Copy)]
pub struct InvoicePorts<'a> {
    pub view: &'a dyn InvoiceViewStore,
    pub documents: &'a dyn DocumentAccess,
}

pub struct Console<'a> {
    pub failed: FailedPorts<'a>,
    pub imports: &'a dyn AbandonedImports,
    pub tasks: &'a dyn TaskStore,
    pub idempotency: &'a dyn IdempotencyStore,
    pub settings: &'a OpsSettings,
    pub watch: &'a WatchSettings,
    pub invoices: InvoicePorts<'a>,
}

impl Console<'_> {
    async fn rows(
        &self,
        selection: &FailedSelection,
        now: DateTime<Utc>,
    ) -> Result<Vec<FailedMessage>, ConsoleError> {
        if !selection.ids.is_empty() && !selection.all {
            let rows = self.failed.failures.get_many(&selection.ids).await?;
            if let Some(missing) = selection
                .ids
                .iter()
                .find(|id| !rows.iter().any(|r| &r.failure.id == *id))
            {
                return Err(ConsoleError::NoSuchFailure(missing.clone()));
            }
            return Ok(rows);
        }
        Ok(self
            .failed
            .failures
            .find(&selection.filter(Some(self.settings), now)?)
            .await?)
    }

    /// Runs one of this module's commands; `migrate` (and others that need
    /// the platform itself) are the function's own.
    pub async fn run(
        &self,
        command: OpsCommand,
        now: DateTime<Utc>,
    ) -> Result<Value, ConsoleError> {
        Ok(match command {
            OpsCommand::FailedList(selection) => {
                let filter = selection.filter(Some(self.settings), now)?;
                let rows = failed::list(self.failed, &filter, now).await?;
                json!({"command": "failed-list", "count": rows.len(), "failed": rows})
            }
            OpsCommand::FailedStats(selection) => {
                let filter = selection.filter(Some(self.settings), now)?;
                json!({"command": "failed-stats", "stats": failed::stats(self.failed, &filter, now).await?})
            }
            OpsCommand::FailedShow { id } => match failed::show(self.failed, &id).await? {
                Some(detail) => json!({"command": "failed-show", "detail": detail}),
                None => return Err(ConsoleError::NoSuchFailure(id)),
            },
            OpsCommand::FailedRetry(selection) => {
                selection.require_named("retry")?;
                let rows = self.rows(&selection, now).await?;
                let options = RetryOptions {
                    dry_run: selection.dry_run,
                    by: CONSOLE.into(),
                    stop_after: None,
                };
                json!({"command": "failed-retry", "report": failed::retry(self.failed, rows, &options, now).await?})
            }
            OpsCommand::FailedRemove(selection) => {
                selection.require_named("remove")?;
                let rows = self.rows(&selection, now).await?;
                if !selection.yes {
                    return Err(ConsoleError::Unconfirmed(rows.len()));
                }
                json!({"command": "failed-remove", "report": failed::remove(self.failed, rows, CONSOLE, now).await?})
            }
            OpsCommand::TaskShow { task_id } => {
                let t = timeline::timeline(self.failed.history, self.tasks, &task_id).await?;
                json!({"command": "task-show", "text": timeline::render(&t), "timeline": t})
            }
            OpsCommand::TaskList {
                status,
                since,
                provider,
            } => {
                let status = match status {
                    Some(s) => Some(
                        s.parse::<TaskStatus>()
                            .map_err(|_| ConsoleError::BadStatus(s))?,
                    ),
                    None => None,
                };
                let since = failed::parse_age(since.as_deref().unwrap_or("1d"))?;
                let tasks = timeline::list_tasks(
                    self.failed.tasks,
                    since,
                    status,
                    provider.as_deref(),
                    now,
                )
                .await?;
                json!({"command": "task-list", "count": tasks.len(), "tasks": tasks})
            }
            OpsCommand::Watch {} => {
                let ports = WatchPorts {
                    failed: self.failed,
                    tasks: self.tasks,
                    idempotency: self.idempotency,
                    imports: self.imports,
                };
                json!({"command": "watch", "report": watch::watch(ports, self.settings, self.watch, now).await})
            }
            OpsCommand::InvoiceList {
                customer,
                cycle,
                status,
                limit,
            } => {
                let status = status.map(|s| s.parse::<InvoiceStatus>()).transpose()?;
                let filter = InvoiceFilter {
                    customer,
                    cycle,
                    status,
                    limit: limit.unwrap_or(100),
                };
                let rows = self
                    .invoices
                    .view
                    .list(&filter)
                    .await
                    .map_err(InvoiceViewError::from)?;
                json!({"command": "invoice-list", "count": rows.len(), "text": invoice_view::render_list(&rows), "invoices": rows})
            }
            OpsCommand::InvoiceShow { invoice } => {
                let detail = invoice_view::show(self.invoices.view, &invoice.parse()?).await?;
                json!({"command": "invoice-show", "text": invoice_view::render_detail(&detail), "invoice": detail})
            }
            OpsCommand::InvoiceDownload {
                invoice,
                what,
                expires_seconds,
            } => {
                // Everything the operator named is checked before signing.
                let invoice = invoice.parse()?;
                let what = what.parse()?;
                let expires = invoice_view::expiry(expires_seconds)?;
                let detail = invoice_view::show(self.invoices.view, &invoice).await?;
                let document = invoice_view::document(&detail, what)?;
                let url = self
                    .invoices
                    .documents
                    .presign(&document.bucket, &document.key, expires)
                    .await?;
                json!({
                    "command": "invoice-download",
                    "invoice": invoice_view::name_of(&detail.summary),
                    "what": what,
                    "url": url,
                    "expires_seconds": expires.as_secs(),
                    "expires_at": now + chrono::Duration::seconds(i64::try_from(expires.as_secs()).unwrap_or(0)),
                    "key": document.key,
                    "sha256": document.sha256,
                })
            }
            OpsCommand::Migrate {} => return Err(ConsoleError::NotHere("migrate")),
            OpsCommand::Status { .. } => return Err(ConsoleError::NotHere("status")),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fakes::{FakeIdempotency, FakeTasks};
    use crate::ops::fakes::{row, World};
    use crate::ports::FailureStatus;
    use serde_json::json;

    struct NoImports;

    #[async_trait::async_trait]
    impl AbandonedImports for NoImports {
        async fn mark_abandoned(&self, _now: DateTime<Utc>) -> Result<u64, PortError> {
            Ok(0)
        }
    }

    /// One final invoice, 2025-000001 (id 5), with its usage specification.
    struct OneInvoice;

    #[async_trait::async_trait]
    impl InvoiceViewStore for OneInvoice {
        async fn list(
            &self,
            _: &InvoiceFilter,
        ) -> Result<Vec<invoice_view::InvoiceSummary>, crate::ports::StoreError> {
            Ok(vec![])
        }
        async fn find(
            &self,
            id: Option<i64>,
            number: Option<&str>,
        ) -> Result<Vec<(i64, bool)>, crate::ports::StoreError> {
            Ok(if id == Some(5) || number == Some("2025-000001") {
                vec![(5, id == Some(5))]
            } else {
                vec![]
            })
        }
        async fn detail(
            &self,
            id: i64,
        ) -> Result<Option<invoice_view::InvoiceDetail>, crate::ports::StoreError> {
            Ok(Some(sample_detail(id)))
        }
    }

    fn sample_detail(id: i64) -> invoice_view::InvoiceDetail {
        use invoice_view::{DocumentKind, DocumentRecord, InvoiceDetail, InvoiceSummary};
        InvoiceDetail {
            summary: InvoiceSummary {
                id,
                customer_id: 3,
                customer: "acme".into(),
                cycle: chrono::NaiveDate::from_ymd_opt(2025, 3, 1).unwrap(),
                kind: "invoice".into(),
                sequence: 0,
                status: "final".into(),
                number: Some("2025-000001".into()),
                issue_date: None,
                total_micros: 0,
                payable_cents: None,
                blocked_reason: None,
            },
            rated_cost_micros: 0,
            fees_micros: 0,
            time_zone: "Europe/Amsterdam".into(),
            due_date: None,
            finalised_at: None,
            net_cents: None,
            vat_cents: None,
            vat_breakdown: None,
            seller: None,
            buyer: None,
            blocked_at: None,
            lines: vec![],
            documents: vec![DocumentRecord {
                what: DocumentKind::Specification,
                bucket: "docs".into(),
                key: "invoices/3/2025-03-01/2025-000001-specification.csv.gz".into(),
                sha256: "ab".repeat(32),
                size_bytes: 100,
                written_at: Utc::now(),
            }],
        }
    }

    /// Signs as `signed:{bucket}/{key}?{seconds}`.
    struct Signer;

    #[async_trait::async_trait]
    impl DocumentAccess for Signer {
        async fn download(&self, _: &str, _: &str, _: &std::path::Path) -> Result<u64, PortError> {
            Err(PortError::new("download", "not in the console"))
        }
        async fn presign(
            &self,
            bucket: &str,
            key: &str,
            expires: std::time::Duration,
        ) -> Result<String, PortError> {
            Ok(format!("signed:{bucket}/{key}?{}", expires.as_secs()))
        }
    }

    #[tokio::test]
    async fn a_console_download_answers_a_presigned_url_with_its_expiry_or_says_what_is_missing() {
        let world = World::default();
        let done = run(
            &world,
            json!({"command": "invoice-download", "invoice": "2025-000001", "what": "specification"}),
        )
        .await
        .unwrap();
        assert_eq!(
            done["url"],
            "signed:docs/invoices/3/2025-03-01/2025-000001-specification.csv.gz?900"
        );
        assert_eq!(done["expires_seconds"], 900);
        let hour = run(
            &world,
            json!({"command": "invoice-download", "invoice": "5", "what": "specification", "expires_seconds": 3600}),
        )
        .await
        .unwrap();
        assert!(hour["url"].as_str().unwrap().ends_with("?3600"), "{hour}");
        let err = run(
            &world,
            json!({"command": "invoice-download", "invoice": "5", "what": "pdf"}),
        )
        .await
        .unwrap_err();
        assert!(err.to_string().contains("has no PDF yet"), "{err}");
        let err = run(
            &world,
            json!({"command": "invoice-download", "invoice": "5", "what": "specification", "expires_seconds": 700000}),
        )
        .await
        .unwrap_err();
        assert!(err.to_string().contains("7 days"), "{err}");
        let err = run(
            &world,
            json!({"command": "invoice-show", "invoice": "2025-000002"}),
        )
        .await
        .unwrap_err();
        assert!(
            err.to_string().contains("no invoice number 2025-000002"),
            "{err}"
        );
    }

    async fn run(world: &World, event: Value) -> Result<Value, ConsoleError> {
        let tasks = FakeTasks::default();
        let idempotency = FakeIdempotency::default();
        let settings = OpsSettings {
            queues: vec![],
            tasks_table: "t".into(),
            idempotency_table: "i".into(),
        };
        let console = Console {
            failed: world.ports(),
            imports: &NoImports,
            tasks: &tasks,
            idempotency: &idempotency,
            settings: &settings,
            watch: &WatchSettings::default(),
            invoices: InvoicePorts {
                view: &OneInvoice,
                documents: &Signer,
            },
        };
        console
            .run(OpsCommand::from_event(&event).unwrap(), Utc::now())
            .await
    }

    #[tokio::test]
    async fn a_console_remove_without_yes_is_refused_and_says_what_to_add() {
        let world = World::default();
        world.add_row(row("a", "q", "dlq", "{}", Utc::now()));
        let err = run(&world, json!({"command": "failed-remove", "ids": ["a"]}))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("\"yes\": true"), "{err}");
        assert_eq!(world.row("a").status, FailureStatus::Failed);
        let done = run(
            &world,
            json!({"command": "failed-remove", "ids": ["a"], "yes": true}),
        )
        .await
        .unwrap();
        assert_eq!(done["report"]["removed"], json!(["a"]));
    }

    #[tokio::test]
    async fn a_console_retry_that_names_nothing_is_refused_and_an_unknown_id_is_named() {
        let world = World::default();
        let err = run(
            &world,
            json!({"command": "failed-retry", "provider": "routit"}),
        )
        .await
        .unwrap_err();
        assert!(err.to_string().contains("\"all\": true"), "{err}");
        let err = run(&world, json!({"command": "failed-retry", "ids": ["nope"]}))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("nope"), "{err}");
    }
}
