//! The maintenance chain's steps, run by the maintenance function from its
//! own queue: MaintainPartitions, then ArchiveExpiredMonths, then
//! PruneExpiredRecords, one chain a day from the schedule (or from the
//! console). Each step records its part of the run (`maintenance_run`)
//! and emits its counts as EMF metrics; the last one marks the run
//! finished, which `temctl status` reads ("maintenance last succeeded").
//! The archive and the pruning stop before the Lambda's time runs out and
//! re-enqueue themselves for the rest.

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Duration, NaiveDate, Utc};
use serde_json::{json, Value};

use crate::billing::specification::UploadStarter;
use crate::command::{Command, MaintenanceRun};
use crate::envelope::{ChainLink, Envelope};
use crate::lambda::ConsoleCommand;
use crate::maintenance::housekeeping::{
    housekeeping, HousekeepingSettings, HousekeepingStore, ObjectDelete,
};
use crate::maintenance::partitions::{ensure_partitions, PartitionStore};
use crate::maintenance::run::{archive_expired, ArchiveSettings, ArchiveStore};
use crate::maintenance::MaintenanceError;
use crate::metrics::{emit_counts, Unit};
use crate::ports::{ObjectPut, OutgoingMessage, QueueSend, StoreError};
use crate::runtime::{Delivery, StepError, StepHandler, StepOutcome};

/// The run's record (`maintenance_run`).
#[async_trait]
pub trait RunLog: Send + Sync {
    async fn started(&self, run_id: &str, today: NaiveDate) -> Result<(), StoreError>;
    /// Merges `report` under `part` into the run's report.
    async fn part(&self, run_id: &str, part: &str, report: Value) -> Result<(), StoreError>;
    async fn finished(&self, run_id: &str) -> Result<(), StoreError>;
    /// When the latest finished run finished.
    async fn last_finished(&self) -> Result<Option<DateTime<Utc>>, StoreError>;
}

/// The chain a maintenance run is: its first step's command and the rest.
pub fn maintenance_chain(run: MaintenanceRun) -> (Command, Vec<ChainLink>) {
    (
        Command::MaintainPartitions(run.clone()),
        vec![
            Command::ArchiveExpiredMonths(run.clone()).into(),
            Command::PruneExpiredRecords(run).into(),
        ],
    )
}

/// The root envelope of the run `run_id` (the schedule's event id, so a
/// redelivered event starts no second run).
pub fn maintenance_envelope(run_id: &str, today: NaiveDate, now: DateTime<Utc>) -> Envelope {
    let run = MaintenanceRun {
        run_id: run_id.to_string(),
        today,
    };
    let (first, rest) = maintenance_chain(run);
    Envelope::start(format!("maintenance:{run_id}"), first, rest, None, now)
}

/// Why a scheduled run could not be started.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("sending the maintenance run to its queue failed ({0}); the schedule's next day starts one, or start it now from the console: {{\"command\": \"maintenance\"}}")]
    Send(#[from] crate::ports::PortError),
    #[error("the maintenance queue refused the run ({0}); check the queue's policy and the function's role")]
    Refused(String),
}

/// Starts the day's run on the maintenance queue (the schedule's event).
pub async fn start_run(
    queues: &dyn QueueSend,
    queue_url: &str,
    run_id: &str,
    now: DateTime<Utc>,
) -> Result<Value, StartError> {
    let envelope = maintenance_envelope(run_id, now.date_naive(), now);
    let failed = queues
        .send_all(
            queue_url,
            vec![OutgoingMessage::new(
                envelope.id.clone(),
                envelope.to_body(),
            )],
        )
        .await?;
    if let Some(first) = failed.first() {
        return Err(StartError::Refused(first.reason.clone()));
    }
    tracing::info!(run_id, "maintenance run started");
    Ok(json!({"started": envelope.id, "today": now.date_naive()}))
}

/// The maintenance function's console command:
/// `{"command": "maintenance", "today"?: "YYYY-MM-DD"}` runs the chain now,
/// its first step in this invocation.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaintenanceCommand {
    pub command: MaintenanceVerb,
    #[serde(default)]
    pub today: Option<NaiveDate>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MaintenanceVerb {
    Maintenance,
}

impl ConsoleCommand for MaintenanceCommand {
    const EXPECTED: &'static str =
        r#"{"command": "maintenance", "today"?: "YYYY-MM-DD"} (events/maintenance/run.json)"#;

    fn envelope(&self, request_id: &str, now: DateTime<Utc>) -> Envelope {
        let run_id = format!("console:{request_id}");
        maintenance_envelope(&run_id, self.today.unwrap_or(now.date_naive()), now)
    }
}

pub struct Stores {
    pub partitions: Arc<dyn PartitionStore>,
    pub archive: Arc<dyn ArchiveStore>,
    pub housekeeping: Arc<dyn HousekeepingStore>,
    pub runs: Arc<dyn RunLog>,
}

pub struct Objects {
    pub uploads: Arc<dyn UploadStarter>,
    pub put: Arc<dyn ObjectPut>,
    pub delete: Arc<dyn ObjectDelete>,
}

pub struct MaintenanceSettings {
    pub bucket: String,
    pub default_retention_months: u16,
    pub housekeeping: HousekeepingSettings,
}

pub struct Maintenance {
    stores: Stores,
    objects: Objects,
    settings: MaintenanceSettings,
}

impl Maintenance {
    pub fn new(stores: Stores, objects: Objects, settings: MaintenanceSettings) -> Self {
        Self {
            stores,
            objects,
            settings,
        }
    }
}

fn step_error(e: MaintenanceError) -> StepError {
    StepError::classify(e.is_retryable(), e)
}

fn store_error(e: StoreError) -> StepError {
    StepError::classify(e.retryable, e.source)
}

/// Leaves a minute of the Lambda's time for recording the part and
/// sending the next message.
fn stop_after(delivery: &Delivery) -> DateTime<Utc> {
    delivery.deadline - Duration::seconds(60)
}

fn requeue(run: &MaintenanceRun) -> StepOutcome {
    StepOutcome::Requeue {
        delay: std::time::Duration::ZERO,
        payload: json!(run),
    }
}

#[async_trait]
impl StepHandler for Maintenance {
    #[tracing::instrument(skip_all, fields(step = %message.step))]
    async fn handle(
        &self,
        message: &Envelope,
        delivery: Delivery,
    ) -> Result<StepOutcome, StepError> {
        let runs = self.stores.runs.as_ref();
        match message.command()? {
            Command::MaintainPartitions(run) => {
                runs.started(&run.run_id, run.today)
                    .await
                    .map_err(store_error)?;
                let report = ensure_partitions(self.stores.partitions.as_ref(), run.today)
                    .await
                    .map_err(step_error)?;
                emit_counts(
                    &[("Part", "partitions")],
                    &[
                        ("PartitionsCreated", Unit::Count, report.created.len() as f64),
                        ("RowsMoved", Unit::Count, report.rows_moved() as f64),
                    ],
                );
                runs.part(&run.run_id, "partitions", json!(report))
                    .await
                    .map_err(store_error)?;
                tracing::info!(created = report.created.len(), "partitions ensured");
                Ok(StepOutcome::finished())
            }
            Command::ArchiveExpiredMonths(run) => {
                let settings = ArchiveSettings {
                    bucket: self.settings.bucket.clone(),
                    default_retention_months: self.settings.default_retention_months,
                    today: run.today,
                    now: Utc::now(),
                    stop_after: Some(stop_after(&delivery)),
                };
                let report = archive_expired(
                    self.stores.archive.as_ref(),
                    self.objects.uploads.as_ref(),
                    self.objects.put.as_ref(),
                    &settings,
                )
                .await
                .map_err(step_error)?;
                emit_counts(
                    &[("Part", "archive")],
                    &[
                        ("MonthsArchived", Unit::Count, report.written.len() as f64),
                        ("RowsArchived", Unit::Count, report.rows_archived() as f64),
                        (
                            "PartitionsDropped",
                            Unit::Count,
                            report.partitions_dropped() as f64,
                        ),
                        ("RowsRemoved", Unit::Count, report.rows_removed() as f64),
                        ("MonthsKept", Unit::Count, report.kept.len() as f64),
                    ],
                );
                for kept in &report.kept {
                    tracing::warn!(customer = ?kept.customer_id, month = %kept.month,
                        reasons = ?kept.reasons, "month past its retention kept");
                }
                runs.part(&run.run_id, "archive", json!(report))
                    .await
                    .map_err(store_error)?;
                if report.unfinished {
                    return Ok(requeue(&run));
                }
                Ok(StepOutcome::finished())
            }
            Command::PruneExpiredRecords(run) => {
                let settings = HousekeepingSettings {
                    stop_after: Some(stop_after(&delivery)),
                    ..self.settings.housekeeping.clone()
                };
                let report = housekeeping(
                    self.stores.housekeeping.as_ref(),
                    self.objects.delete.as_ref(),
                    &settings,
                    Utc::now(),
                )
                .await
                .map_err(step_error)?;
                emit_counts(
                    &[("Part", "housekeeping")],
                    &[
                        ("RowsPruned", Unit::Count, report.rows_pruned() as f64),
                        (
                            "RejectedFilesExpired",
                            Unit::Count,
                            report.rejected_files as f64,
                        ),
                    ],
                );
                runs.part(&run.run_id, "housekeeping", json!(report))
                    .await
                    .map_err(store_error)?;
                if report.unfinished {
                    return Ok(requeue(&run));
                }
                runs.finished(&run.run_id).await.map_err(store_error)?;
                emit_counts(&[], &[("MaintenanceSucceeded", Unit::Count, 1.0)]);
                tracing::info!(run_id = %run.run_id, "maintenance run finished");
                Ok(StepOutcome::finished())
            }
            other => Err(StepError::permanent(format!(
                "the maintenance function runs MaintainPartitions, ArchiveExpiredMonths and PruneExpiredRecords, not {}; send it to its own queue",
                other.step()
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::Step;

    #[test]
    fn a_run_is_three_steps_with_one_payload_in_order() {
        let today: NaiveDate = "2026-12-07".parse().unwrap();
        let envelope = maintenance_envelope("abc", today, Utc::now());
        assert_eq!(envelope.step, Step::MaintainPartitions);
        assert_eq!(envelope.id, "maintenance:abc");
        let steps: Vec<Step> = envelope.chain.iter().map(|l| l.step).collect();
        assert_eq!(
            steps,
            vec![Step::ArchiveExpiredMonths, Step::PruneExpiredRecords]
        );
        for link in &envelope.chain {
            assert_eq!(link.payload["run_id"], "abc");
            assert_eq!(link.payload["today"], "2026-12-07");
        }
    }
}
