//! The ops watch (scheduled every minute): what makes a task fail however
//! its message failed, and keeps the operational records tidy.
//!
//! - A DLQ message without a failure row is recorded. Without tem's
//!   attributes SQS moved it itself (`redriven`): the function crashed,
//!   timed out or ran out of memory on every attempt, so no attempt could
//!   say why. Its task is marked failed with that reason, and its
//!   idempotency record dead-lettered so that a retry runs it.
//! - DLQ copies of resolved rows are deleted.
//! - Tasks unfinished for longer than `TASK_STALLED_AFTER_MINUTES` are
//!   marked stalled (visible, and no longer blocking their profile).
//! - Imports whose attempt died (running past their deadline) are marked
//!   abandoned, so nobody sees a phantom running import.
//! - Expired step_run and failed_message rows are deleted in batches.
//!
//! Every part is idempotent and bounded per run, so a run that stops midway
//! (timeout) leaves the rest to the next minute.

use chrono::{DateTime, Duration, Utc};
use serde::Serialize;
use serde_json::Value;
use tracing::{info, instrument, warn};

use crate::config::{ConfigError, Env};
use crate::envelope::{Envelope, Step};
use crate::import::notification::{parse_notification, Notification};
use crate::ops::failed::{failure_id, sweep_dlq, FailedPorts};
use crate::ops::settings::{queue_name_of, OpsSettings, QueuePair};
use crate::ports::{
    AbandonedImports, FailedMessage, FailureRecord, FailureStatus, IdempotencyStore, PortError,
    ReceivedMessage, StepRun, TaskStore,
};
use crate::routing::Provider;
use crate::sync::provider::handoff_token;

#[derive(Debug, Clone, PartialEq)]
pub struct WatchSettings {
    /// TASK_STALLED_AFTER_MINUTES (default 120).
    pub stalled_after: Duration,
    /// FAILED_MESSAGE_RETENTION_DAYS (default 30): a recorded failure's life.
    pub failure_retention: Duration,
    /// DLQ messages looked at per queue per run.
    pub dlq_messages_per_run: usize,
    /// Expired rows deleted per table per run, and per statement.
    pub expired_per_run: u32,
    pub expired_batch: u32,
}

impl Default for WatchSettings {
    fn default() -> Self {
        Self {
            stalled_after: Duration::minutes(120),
            failure_retention: Duration::days(30),
            dlq_messages_per_run: 1000,
            expired_per_run: 20_000,
            expired_batch: 2_000,
        }
    }
}

impl WatchSettings {
    pub fn from_env<F: Fn(&str) -> Option<String>>(env: &Env<F>) -> Result<Self, ConfigError> {
        let defaults = Self::default();
        let retention_days: i64 = env.parsed(
            "FAILED_MESSAGE_RETENTION_DAYS",
            defaults.failure_retention.num_days(),
        )?;
        if retention_days < 14 {
            return Err(ConfigError::Invalid {
                name: "FAILED_MESSAGE_RETENTION_DAYS",
                value: retention_days.to_string(),
                reason: "must be at least 14 (days), the longest SQS keeps the DLQ copy".into(),
            });
        }
        Ok(Self {
            stalled_after: Duration::minutes(env.parsed(
                "TASK_STALLED_AFTER_MINUTES",
                defaults.stalled_after.num_minutes(),
            )?),
            failure_retention: Duration::days(retention_days),
            ..defaults
        })
    }
}

/// The ports the watch works through: the failed-message ones, and the
/// runtime's task and idempotency stores.
#[derive(Clone, Copy)]
pub struct WatchPorts<'a> {
    pub failed: FailedPorts<'a>,
    pub tasks: &'a dyn TaskStore,
    pub idempotency: &'a dyn IdempotencyStore,
    pub imports: &'a dyn AbandonedImports,
}

/// What one run did (the ops function's answer and its log line).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct WatchReport {
    pub dlq_messages_seen: usize,
    pub dlq_copies_deleted: usize,
    /// Failures found only in a DLQ and recorded now.
    pub failures_recorded: Vec<String>,
    /// Of those, how many SQS redrove (no tem attributes).
    pub redriven: usize,
    pub tasks_failed: Vec<String>,
    pub tasks_stalled: Vec<String>,
    pub imports_abandoned: u64,
    pub step_runs_deleted: u64,
    pub failures_deleted: u64,
    /// Parts that could not run (the next run tries again).
    pub errors: Vec<String>,
}

#[instrument(skip_all)]
pub async fn watch(
    ports: WatchPorts<'_>,
    settings: &OpsSettings,
    watch: &WatchSettings,
    now: DateTime<Utc>,
) -> WatchReport {
    let mut report = WatchReport::default();
    for pair in &settings.queues {
        if let Err(e) = watch_dlq(ports, pair, watch, now, &mut report).await {
            report
                .errors
                .push(format!("DLQ {}: {e}", queue_name_of(&pair.dlq_url)));
        }
    }
    if let Err(e) = mark_stalled(ports, watch, now, &mut report).await {
        report.errors.push(format!("stalled tasks: {e}"));
    }
    match ports.imports.mark_abandoned(now).await {
        Ok(n) => report.imports_abandoned = n,
        Err(e) => report.errors.push(format!("abandoned imports: {e}")),
    }
    match delete_expired(watch, |limit| {
        ports.failed.history.delete_expired(now, limit)
    })
    .await
    {
        Ok(n) => report.step_runs_deleted = n,
        Err(e) => report.errors.push(format!("expired step runs: {e}")),
    }
    match delete_expired(watch, |limit| {
        ports.failed.failures.delete_expired(now, limit)
    })
    .await
    {
        Ok(n) => report.failures_deleted = n,
        Err(e) => report.errors.push(format!("expired failures: {e}")),
    }
    for error in &report.errors {
        warn!(%error, "watch: part of the run failed; the next run tries again");
    }
    info!(
        seen = report.dlq_messages_seen,
        deleted = report.dlq_copies_deleted,
        recorded = report.failures_recorded.len(),
        redriven = report.redriven,
        tasks_failed = report.tasks_failed.len(),
        stalled = report.tasks_stalled.len(),
        imports_abandoned = report.imports_abandoned,
        step_runs_deleted = report.step_runs_deleted,
        failures_deleted = report.failures_deleted,
        "watched"
    );
    report
}

async fn watch_dlq(
    ports: WatchPorts<'_>,
    pair: &QueuePair,
    watch: &WatchSettings,
    now: DateTime<Utc>,
    report: &mut WatchReport,
) -> Result<(), PortError> {
    let sweep = sweep_dlq(ports.failed, &pair.dlq_url, watch.dlq_messages_per_run).await?;
    report.dlq_messages_seen += sweep.seen;
    report.dlq_copies_deleted += sweep.deleted;
    for message in &sweep.unrecorded {
        let attempts = attempts_of(ports, message).await?;
        let failure = unrecorded_failure(message, pair, &attempts, watch, now);
        if !ports.failed.failures.ingest(&failure).await? {
            continue;
        }
        if failure.failure.error_kind == "redriven" {
            report.redriven += 1;
        }
        report.failures_recorded.push(failure.failure.id.clone());
        let reason = format!(
            "{}: {}",
            failure.failure.step.as_deref().unwrap_or("message"),
            failure.failure.error
        );
        // The id the runtime claimed: the envelope's, or for an S3
        // notification the envelope its import attempts ran as.
        let claimed = match Envelope::parse(&failure.failure.body) {
            Ok(envelope) => Some(envelope.id),
            Err(_) => attempts.last().map(|a| a.message_id.clone()),
        };
        if let Some(claimed) = &claimed {
            // The dead attempt's claim is an expired in_progress: mark it
            // dead-lettered so a retry's claim reopens the task.
            ports
                .idempotency
                .dead_lettered(claimed, &reason, now)
                .await?;
        }
        if let (Some(task_id), Some(claimed)) = (&failure.failure.task_id, &claimed) {
            ports
                .tasks
                .mark_failed(task_id, claimed, &reason, now)
                .await?;
            report.tasks_failed.push(task_id.clone());
        }
    }
    Ok(())
}

/// The attempts the runtime recorded of a DLQ message: by its envelope id,
/// or, for an S3 notification (the import queue's own body), the import
/// attempts that continued the object's hand-off.
async fn attempts_of(
    ports: WatchPorts<'_>,
    message: &ReceivedMessage,
) -> Result<Vec<StepRun>, PortError> {
    if Envelope::parse(&message.body).is_ok() {
        let id = failure_id(message);
        return ports
            .failed
            .history
            .attempts(std::slice::from_ref(&id))
            .await;
    }
    let Notification::Object(object) = parse_notification(&message.body) else {
        return Ok(Vec::new());
    };
    let token = handoff_token(&object.bucket, &object.key);
    let mut runs = ports.failed.history.of_handoff(&token).await?;
    runs.retain(|r| r.step == Step::ImportCdrFile.as_str());
    // The imports of the latest upload of the object: the same key
    // uploaded again is a new message of its own.
    if let Some(last) = runs.last().map(|r| r.message_id.clone()) {
        runs.retain(|r| r.message_id == last);
    }
    Ok(runs)
}

/// The failure row of a DLQ message nobody recorded: from tem's attributes
/// when the runtime dead-lettered it (and could not write its row), else a
/// redrive by SQS, explained from the attempts the runtime started.
pub fn unrecorded_failure(
    message: &ReceivedMessage,
    pair: &QueuePair,
    attempts: &[StepRun],
    watch: &WatchSettings,
    now: DateTime<Utc>,
) -> FailedMessage {
    let envelope = Envelope::parse(&message.body).ok();
    let last = attempts.iter().max_by_key(|r| (r.started_at, r.attempt));
    let attribute = |name: &str| message.attribute(name).map(str::to_string);
    let failed_at = attribute("tem-failed-at")
        .and_then(|t| t.parse::<DateTime<Utc>>().ok())
        .or(message.sent_at)
        .unwrap_or(now);
    let (error_kind, error, attempt_count) = match attribute("tem-error") {
        Some(error) => (
            attribute("tem-error-kind").unwrap_or_else(|| "unknown".into()),
            error,
            attribute("tem-attempts")
                .and_then(|a| a.parse().ok())
                .unwrap_or(message.receive_count),
        ),
        None => {
            let receives = message.receive_count.max(attempts.len() as u32);
            let mut error = format!(
                "SQS moved the message to its DLQ after {receives} receives without an outcome: \
                 the function crashed, timed out or ran out of memory on every attempt"
            );
            if let Some(last) = last {
                error.push_str(&format!(
                    "; the last attempt ({}, attempt {}) started at {} and {}",
                    last.function_name,
                    last.attempt,
                    last.started_at.to_rfc3339(),
                    match (&last.finished_at, &last.outcome) {
                        (None, _) => "never finished".to_string(),
                        (Some(_), Some(outcome)) => format!("ended {outcome}"),
                        (Some(_), None) => "ended without an outcome".to_string(),
                    }
                ));
            }
            ("redriven".to_string(), error, receives)
        }
    };
    let provider = last
        .and_then(|r| r.provider.clone())
        .or_else(|| {
            envelope
                .as_ref()
                .and_then(|e| e.payload.get("provider"))
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .or_else(|| {
            pair.name
                .parse::<Provider>()
                .ok()
                .map(|p| p.as_str().to_string())
        });
    FailedMessage {
        failure: FailureRecord {
            id: failure_id(message),
            queue: queue_name_of(&pair.url).to_string(),
            queue_url: attribute("tem-source-queue").unwrap_or_else(|| pair.url.clone()),
            dlq_url: pair.dlq_url.clone(),
            function_name: attribute("tem-function")
                .or_else(|| last.map(|r| r.function_name.clone())),
            step: attribute("tem-step")
                .or_else(|| envelope.as_ref().map(|e| e.step.to_string()))
                .or_else(|| last.map(|r| r.step.clone())),
            provider,
            task_id: envelope
                .as_ref()
                .and_then(|e| e.task_id.clone())
                .or_else(|| last.and_then(|r| r.task_id.clone())),
            trace_id: envelope.as_ref().map(|e| e.trace_id.clone()),
            body: message.body.clone(),
            error_kind,
            error,
            attempts: attempt_count,
            failed_at,
            expires_at: failed_at + watch.failure_retention,
        },
        times_failed: 1,
        status: FailureStatus::Failed,
        resolved_at: None,
        resolved_by: None,
        retries: 0,
    }
}

async fn mark_stalled(
    ports: WatchPorts<'_>,
    watch: &WatchSettings,
    now: DateTime<Utc>,
    report: &mut WatchReport,
) -> Result<(), PortError> {
    let limit = watch.stalled_after;
    for task in ports.failed.tasks.open_tasks(now - limit).await? {
        let reason = format!(
            "still {} {} minutes after it was created (TASK_STALLED_AFTER_MINUTES = {}); \
             see `temctl task show {}` for the step that did not finish",
            task.status,
            (now - task.created_at).num_minutes(),
            limit.num_minutes(),
            task.task_id
        );
        if ports
            .failed
            .tasks
            .mark_stalled(&task.task_id, &reason, now)
            .await?
        {
            report.tasks_stalled.push(task.task_id);
        }
    }
    Ok(())
}

async fn delete_expired<F, Fut>(watch: &WatchSettings, mut delete: F) -> Result<u64, PortError>
where
    F: FnMut(u32) -> Fut,
    Fut: std::future::Future<Output = Result<u64, PortError>>,
{
    let mut total = 0;
    while total < u64::from(watch.expired_per_run) {
        let deleted = delete(watch.expired_batch).await?;
        total += deleted;
        if deleted < u64::from(watch.expired_batch) {
            break;
        }
    }
    Ok(total)
}

#[cfg(test)]
#[path = "watch_tests.rs"]
mod tests;
