//! Failed messages, the way Symfony Messenger's `failed:*` commands work them:
//! list, stats, show, retry and remove, over the failure records in
//! PostgreSQL (`failed_message`) and the DLQ copies SQS keeps. One
//! implementation, used by the ops function's console commands and by
//! `temctl failed`.
//!
//! A retry sends before it marks and marks before it deletes: an interrupted
//! retry leaves at worst a message sent but still marked failed, which the
//! next run sends again and the runtime's idempotency record deduplicates.
//! A DLQ copy is deleted only once its row is resolved, so the DLQ-depth
//! alarm keeps meaning "open failures".

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tracing::{info, instrument, warn};

use crate::envelope::Envelope;
use crate::ops::settings::{queue_name_of, OpsSettings, QueuePair};
use crate::ports::{
    FailedMessage, FailureAdmin, FailureFilter, FailureStatus, OutgoingMessage, PortError,
    QueueDelete, QueueReceive, QueueRelease, QueueSend, ReceivedMessage, StepHistory, StepRun,
    TaskAdmin,
};

/// How long a DLQ scan hides the messages it looked at: long enough to
/// finish the scan (so it sees each message once), short enough that a
/// scan that dies gives them back soon. The scan releases them itself.
const SCAN_HIDE_SECONDS: i32 = 60;
/// SQS sends and deletes at most ten entries per batch call.
const BATCH: usize = 10;

/// The operator's selection, as `temctl failed` options and as the fields
/// of a console event (`events/ops/console-failed-*.json`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct FailedSelection {
    /// Explicit ids (envelope ids, or `sqs:<MessageId>`).
    pub ids: Vec<String>,
    /// Every match of the filters (retry and remove refuse a selection
    /// without ids unless this is set).
    pub all: bool,
    pub queue: Option<String>,
    pub step: Option<String>,
    pub provider: Option<String>,
    pub kind: Option<String>,
    pub grep: Option<String>,
    /// An age such as `90s`, `30m`, `2h`, `1d`: failures newer than that.
    pub since: Option<String>,
    pub task: Option<String>,
    /// `failed` (default), `retried`, `removed` or `any`.
    pub status: Option<String>,
    pub limit: Option<u32>,
    /// retry: say what would be sent, send nothing.
    pub dry_run: bool,
    /// remove: the operator's confirmation.
    pub yes: bool,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SelectionError {
    #[error("{0:?} is not an age; write a number and a unit: 90s, 30m, 2h or 1d")]
    BadAge(String),
    #[error("{0}")]
    BadStatus(String),
    #[error("name the messages to {action} (their ids), or pass --all (\"all\": true) to {action} every match of the filters")]
    NothingNamed { action: &'static str },
}

/// `90s`, `30m`, `2h`, `1d`, `2w`.
pub fn parse_age(text: &str) -> Result<Duration, SelectionError> {
    let text = text.trim();
    let bad = || SelectionError::BadAge(text.to_string());
    let split = text.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (number, unit) = text.split_at(split);
    let n: i64 = number.parse().map_err(|_| bad())?;
    match unit {
        "s" => Ok(Duration::seconds(n)),
        "m" => Ok(Duration::minutes(n)),
        "h" => Ok(Duration::hours(n)),
        "d" => Ok(Duration::days(n)),
        "w" => Ok(Duration::weeks(n)),
        _ => Err(bad()),
    }
}

impl FailedSelection {
    /// The store's filter for this selection at `now`; `--queue` may name a
    /// queue as tem does (`routit`) or as SQS does.
    pub fn filter(
        &self,
        settings: Option<&OpsSettings>,
        now: DateTime<Utc>,
    ) -> Result<FailureFilter, SelectionError> {
        let statuses = match self.status.as_deref() {
            None | Some("failed") => vec![FailureStatus::Failed],
            Some("any") | Some("all") => vec![
                FailureStatus::Failed,
                FailureStatus::Retried,
                FailureStatus::Removed,
            ],
            Some(other) => vec![other.parse().map_err(SelectionError::BadStatus)?],
        };
        let queue_urls = match (&self.queue, settings) {
            (Some(queue), Some(settings)) => settings
                .queues
                .iter()
                .filter(|q| &q.name == queue)
                .map(|q| q.url.clone())
                .collect(),
            _ => Vec::new(),
        };
        Ok(FailureFilter {
            statuses,
            queue: self.queue.clone(),
            queue_urls,
            step: self.step.clone(),
            provider: self.provider.clone(),
            kind: self.kind.clone(),
            grep: self.grep.clone(),
            since: match &self.since {
                Some(age) => Some(now - parse_age(age)?),
                None => None,
            },
            task_id: self.task.clone(),
            ids: self.ids.clone(),
            limit: self.limit,
        })
    }

    /// For retry and remove: ids, or `all` with filters; never "everything"
    /// by accident.
    pub fn require_named(&self, action: &'static str) -> Result<(), SelectionError> {
        if self.ids.is_empty() && !self.all {
            return Err(SelectionError::NothingNamed { action });
        }
        Ok(())
    }
}

/// The ports the failed-message commands work through.
#[derive(Clone, Copy)]
pub struct FailedPorts<'a> {
    pub failures: &'a dyn FailureAdmin,
    pub history: &'a dyn StepHistory,
    pub send: &'a dyn QueueSend,
    pub receive: &'a dyn QueueReceive,
    pub delete: &'a dyn QueueDelete,
    pub release: &'a dyn QueueRelease,
    pub tasks: &'a dyn TaskAdmin,
}

/// One row of `failed list`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FailureRow {
    pub id: String,
    pub queue: String,
    pub step: Option<String>,
    pub provider: Option<String>,
    pub task_id: Option<String>,
    pub kind: String,
    pub attempts: u32,
    pub failed_at: DateTime<Utc>,
    pub age_seconds: i64,
    pub status: FailureStatus,
    /// The first line of the error.
    pub error: String,
}

impl FailureRow {
    pub fn of(f: &FailedMessage, now: DateTime<Utc>) -> Self {
        Self {
            id: f.failure.id.clone(),
            queue: f.failure.queue.clone(),
            step: f.failure.step.clone(),
            provider: f.failure.provider.clone(),
            task_id: f.failure.task_id.clone(),
            kind: f.failure.error_kind.clone(),
            attempts: f.failure.attempts,
            failed_at: f.failure.failed_at,
            age_seconds: (now - f.failure.failed_at).num_seconds().max(0),
            status: f.status,
            error: first_line(&f.failure.error).to_string(),
        }
    }
}

pub fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or("").trim_end()
}

/// `45s`, `12m`, `3h05m`, `2d04h`: an age an operator reads at a glance.
pub fn human_age(seconds: i64) -> String {
    let s = seconds.max(0);
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m", s / 60),
        3600..=86_399 => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d{:02}h", s / 86_400, (s % 86_400) / 3600),
    }
}

#[instrument(skip(ports))]
pub async fn list(
    ports: FailedPorts<'_>,
    filter: &FailureFilter,
    now: DateTime<Utc>,
) -> Result<Vec<FailureRow>, PortError> {
    Ok(ports
        .failures
        .find(filter)
        .await?
        .iter()
        .map(|f| FailureRow::of(f, now))
        .collect())
}

/// Counts per queue, step, provider and error kind, and the oldest age.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct FailureStats {
    pub total: usize,
    pub by_queue: BTreeMap<String, usize>,
    pub by_step: BTreeMap<String, usize>,
    pub by_provider: BTreeMap<String, usize>,
    pub by_kind: BTreeMap<String, usize>,
    pub oldest_failed_at: Option<DateTime<Utc>>,
    pub oldest_age_seconds: Option<i64>,
}

pub fn stats_of(rows: &[FailedMessage], now: DateTime<Utc>) -> FailureStats {
    let mut stats = FailureStats {
        total: rows.len(),
        ..FailureStats::default()
    };
    let none = || "(none)".to_string();
    for f in rows {
        *stats.by_queue.entry(f.failure.queue.clone()).or_default() += 1;
        *stats
            .by_step
            .entry(f.failure.step.clone().unwrap_or_else(none))
            .or_default() += 1;
        *stats
            .by_provider
            .entry(f.failure.provider.clone().unwrap_or_else(none))
            .or_default() += 1;
        *stats
            .by_kind
            .entry(f.failure.error_kind.clone())
            .or_default() += 1;
    }
    stats.oldest_failed_at = rows.iter().map(|f| f.failure.failed_at).min();
    stats.oldest_age_seconds = stats
        .oldest_failed_at
        .map(|t| (now - t).num_seconds().max(0));
    stats
}

#[instrument(skip(ports))]
pub async fn stats(
    ports: FailedPorts<'_>,
    filter: &FailureFilter,
    now: DateTime<Utc>,
) -> Result<FailureStats, PortError> {
    let mut all = filter.clone();
    all.limit = None;
    Ok(stats_of(&ports.failures.find(&all).await?, now))
}

/// Everything `failed show` prints about one failure.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FailureDetail {
    pub failure: FailedMessage,
    /// The body as an envelope, when it is one.
    pub envelope: Option<Value>,
    /// The failed step and the steps still to run after it.
    pub chain: Vec<String>,
    /// Every recorded attempt (step_run), oldest first.
    pub attempts: Vec<StepRun>,
}

#[instrument(skip(ports))]
pub async fn show(ports: FailedPorts<'_>, id: &str) -> Result<Option<FailureDetail>, PortError> {
    let Some(row) = ports
        .failures
        .get_many(&[id.to_string()])
        .await?
        .into_iter()
        .next()
    else {
        return Ok(None);
    };
    let attempts = ports.history.attempts(&[id.to_string()]).await?;
    let (envelope, chain) = match Envelope::parse(&row.failure.body) {
        Ok(e) => (
            serde_json::from_str(&row.failure.body).ok(),
            std::iter::once(e.step.to_string())
                .chain(e.chain.iter().map(|l| l.step.to_string()))
                .collect(),
        ),
        Err(_) => (None, Vec::new()),
    };
    Ok(Some(FailureDetail {
        failure: row,
        envelope,
        chain,
        attempts,
    }))
}

/// The body a retry sends: an envelope with its attempt count reset (so
/// the step gets all its attempts again), anything else unchanged. The
/// JSON is edited, not re-serialised from [`Envelope`], so fields this
/// build does not know survive.
pub fn retry_body(body: &str) -> String {
    if Envelope::parse(body).is_err() {
        return body.to_string();
    }
    match serde_json::from_str::<Value>(body) {
        Ok(Value::Object(mut object)) => {
            object.insert("attempt".into(), Value::from(0));
            Value::Object(object).to_string()
        }
        _ => body.to_string(),
    }
}

/// The failure id of a DLQ message: its envelope id, or `sqs:<MessageId>`
/// for a body that is not an envelope. The runtime's copy of such a body is
/// a new SQS message; `tem-message-id`, when the runtime sets it, names the
/// original's MessageId, which its failure row is keyed by. A copy SQS
/// itself moved keeps its MessageId.
pub fn failure_id(message: &ReceivedMessage) -> String {
    match Envelope::parse(&message.body) {
        Ok(e) => e.id,
        Err(_) => format!(
            "sqs:{}",
            message
                .attribute("tem-message-id")
                .unwrap_or(&message.message_id)
        ),
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Skipped {
    pub id: String,
    pub reason: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RetryReport {
    pub dry_run: bool,
    /// Open failures selected.
    pub selected: usize,
    /// Sent back to their queue and marked retried.
    pub retried: Vec<String>,
    /// Sent, but no longer open when marked (someone else resolved them).
    pub sent_unmarked: Vec<String>,
    /// Not sent: already resolved, or the queue refused them (still open).
    pub skipped: Vec<Skipped>,
    pub failed: Vec<Skipped>,
    /// DLQ copies deleted because their rows are resolved now.
    pub dlq_deleted: usize,
}

#[derive(Debug, Clone, Default)]
pub struct RetryOptions {
    pub dry_run: bool,
    /// Who retries: the operator's name, or `console`.
    pub by: String,
    /// Stop after this many messages were sent (a bulk retry in parts).
    pub stop_after: Option<usize>,
}

/// Sends each open failure back to its source queue, ten per call, and
/// marks each batch retried right after its send succeeded. Rows that are
/// not open are skipped (an interrupted retry run again does not resend
/// them); a refused send leaves its row open.
#[instrument(skip(ports, rows, options), fields(rows = rows.len(), dry_run = options.dry_run))]
pub async fn retry(
    ports: FailedPorts<'_>,
    rows: Vec<FailedMessage>,
    options: &RetryOptions,
    now: DateTime<Utc>,
) -> Result<RetryReport, PortError> {
    let mut report = RetryReport {
        dry_run: options.dry_run,
        ..RetryReport::default()
    };
    let mut by_queue: BTreeMap<String, Vec<FailedMessage>> = BTreeMap::new();
    for row in rows {
        if row.status != FailureStatus::Failed {
            report.skipped.push(Skipped {
                reason: format!("already {}", row.status.as_str()),
                id: row.failure.id,
            });
            continue;
        }
        report.selected += 1;
        by_queue
            .entry(row.failure.queue_url.clone())
            .or_default()
            .push(row);
    }
    if options.dry_run {
        report.retried = by_queue
            .values()
            .flatten()
            .map(|r| r.failure.id.clone())
            .collect();
        return Ok(report);
    }
    let mut dlqs = BTreeMap::new();
    let mut sent_total = 0usize;
    'queues: for (queue_url, rows) in by_queue {
        for chunk in rows.chunks(BATCH) {
            if options.stop_after.is_some_and(|n| sent_total >= n) {
                break 'queues;
            }
            let messages = chunk
                .iter()
                .map(|r| OutgoingMessage::new(r.failure.id.clone(), retry_body(&r.failure.body)))
                .collect();
            let refused = match ports.send.send_all(&queue_url, messages).await {
                Ok(refused) => refused,
                Err(e) => {
                    warn!(error = %e, queue = queue_name_of(&queue_url), "retry send failed; the rows stay open");
                    report.failed.extend(chunk.iter().map(|r| Skipped {
                        id: r.failure.id.clone(),
                        reason: e.to_string(),
                    }));
                    continue;
                }
            };
            let refused_ids: HashMap<&str, &str> = refused
                .iter()
                .map(|f| (f.id.as_str(), f.reason.as_str()))
                .collect();
            let mut sent = Vec::new();
            for row in chunk {
                match refused_ids.get(row.failure.id.as_str()) {
                    Some(reason) => report.failed.push(Skipped {
                        id: row.failure.id.clone(),
                        reason: reason.to_string(),
                    }),
                    None => sent.push(row.failure.id.clone()),
                }
            }
            sent_total += sent.len();
            if sent.is_empty() {
                continue;
            }
            let marked = ports.failures.mark_retried(&sent, &options.by, now).await?;
            let marked_set: HashSet<&String> = marked.iter().collect();
            for id in &sent {
                if !marked_set.contains(id) {
                    report.sent_unmarked.push(id.clone());
                }
            }
            report.retried.extend(marked);
            dlqs.insert(chunk[0].failure.dlq_url.clone(), ());
        }
    }
    for dlq_url in dlqs.keys() {
        match sweep_dlq(ports, dlq_url, usize::MAX).await {
            Ok(sweep) => report.dlq_deleted += sweep.deleted,
            // The rows are resolved: the ops watch deletes the copies later.
            Err(e) => {
                warn!(error = %e, dlq = queue_name_of(dlq_url), "could not clean the DLQ now")
            }
        }
    }
    info!(
        retried = report.retried.len(),
        failed = report.failed.len(),
        "retried"
    );
    Ok(report)
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RemoveReport {
    pub removed: Vec<String>,
    pub skipped: Vec<Skipped>,
    pub dlq_deleted: usize,
    /// Tasks whose notes say an operator removed one of their messages.
    pub tasks_noted: Vec<String>,
}

/// Marks open failures removed, deletes their DLQ copies and notes the
/// removal on each task. The caller has asked for confirmation.
#[instrument(skip(ports, rows), fields(rows = rows.len()))]
pub async fn remove(
    ports: FailedPorts<'_>,
    rows: Vec<FailedMessage>,
    by: &str,
    now: DateTime<Utc>,
) -> Result<RemoveReport, PortError> {
    let mut report = RemoveReport::default();
    let (open, resolved): (Vec<_>, Vec<_>) = rows
        .into_iter()
        .partition(|r| r.status == FailureStatus::Failed);
    report.skipped = resolved
        .into_iter()
        .map(|r| Skipped {
            reason: format!("already {}", r.status.as_str()),
            id: r.failure.id,
        })
        .collect();
    let ids: Vec<String> = open.iter().map(|r| r.failure.id.clone()).collect();
    let mut removed = Vec::new();
    for chunk in ids.chunks(500) {
        removed.extend(ports.failures.mark_removed(chunk, by, now).await?);
    }
    let removed_set: HashSet<&String> = removed.iter().collect();
    let mut dlqs = BTreeMap::new();
    for row in open.iter().filter(|r| removed_set.contains(&r.failure.id)) {
        dlqs.insert(row.failure.dlq_url.clone(), ());
        if let Some(task_id) = &row.failure.task_id {
            let text = format!(
                "{} removed message {} by an operator ({by})",
                now.format("%Y-%m-%dT%H:%M:%SZ"),
                row.failure.id
            );
            match ports.tasks.note(task_id, &text, now).await {
                Ok(()) => report.tasks_noted.push(task_id.clone()),
                Err(e) => warn!(error = %e, task_id, "could not note the removal on the task"),
            }
        }
    }
    report.removed = removed;
    for dlq_url in dlqs.keys() {
        match sweep_dlq(ports, dlq_url, usize::MAX).await {
            Ok(sweep) => report.dlq_deleted += sweep.deleted,
            Err(e) => {
                warn!(error = %e, dlq = queue_name_of(dlq_url), "could not clean the DLQ now")
            }
        }
    }
    Ok(report)
}

/// What one pass over a DLQ saw.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DlqSweep {
    pub seen: usize,
    /// Copies of resolved rows, deleted.
    pub deleted: usize,
    /// Messages with no failure row (for the watch to record).
    pub unrecorded: Vec<ReceivedMessage>,
}

/// One pass over a DLQ: deletes the copies whose row was resolved after the
/// copy arrived (a copy newer than the resolution is a new failure of the
/// same message and stays), and returns the messages that have no row.
/// Everything else is given back (visibility 0) at the end. Looks at no
/// more than `max` messages.
#[instrument(skip(ports), fields(dlq = queue_name_of(dlq_url)))]
pub async fn sweep_dlq(
    ports: FailedPorts<'_>,
    dlq_url: &str,
    max: usize,
) -> Result<DlqSweep, PortError> {
    let mut sweep = DlqSweep::default();
    let mut keep = Vec::new();
    let result = async {
        while sweep.seen < max {
            let want = (max - sweep.seen).min(BATCH) as u32;
            let batch = ports
                .receive
                .receive(dlq_url, want, SCAN_HIDE_SECONDS)
                .await?;
            if batch.is_empty() {
                break;
            }
            sweep.seen += batch.len();
            let ids: Vec<String> = batch.iter().map(failure_id).collect();
            let rows: HashMap<String, FailedMessage> = ports
                .failures
                .get_many(&ids)
                .await?
                .into_iter()
                .map(|r| (r.failure.id.clone(), r))
                .collect();
            let mut delete = Vec::new();
            for (message, id) in batch.into_iter().zip(ids) {
                match rows.get(&id) {
                    Some(row) if is_resolved_copy(row, &message) => {
                        delete.push(message.receipt_handle)
                    }
                    Some(_) => keep.push(message.receipt_handle),
                    None => {
                        keep.push(message.receipt_handle.clone());
                        sweep.unrecorded.push(message);
                    }
                }
            }
            if !delete.is_empty() {
                let count = delete.len();
                let refused = ports.delete.delete_all(dlq_url, delete).await?;
                sweep.deleted += count - refused.len();
            }
        }
        Ok::<(), PortError>(())
    }
    .await;
    if !keep.is_empty() {
        if let Err(e) = ports.release.set_visibility_all(dlq_url, keep, 0).await {
            warn!(error = %e, "could not give the DLQ messages back; they reappear after {SCAN_HIDE_SECONDS}s");
        }
    }
    result.map(|()| sweep)
}

/// A DLQ copy is stale when its row was resolved at or after the copy
/// arrived in the DLQ.
fn is_resolved_copy(row: &FailedMessage, message: &ReceivedMessage) -> bool {
    if row.status == FailureStatus::Failed {
        return false;
    }
    match (row.resolved_at, message.sent_at) {
        // SentTimestamp has millisecond resolution; allow for it.
        (Some(resolved), Some(sent)) => resolved + Duration::seconds(1) >= sent,
        (Some(_), None) => true,
        (None, _) => false,
    }
}

/// The queue pair a failure row belongs to, for commands that only know
/// the row.
pub fn pair_of<'a>(settings: &'a OpsSettings, row: &FailedMessage) -> Option<&'a QueuePair> {
    settings
        .queue_by_url(&row.failure.queue_url)
        .or_else(|| settings.queue_by_url(&row.failure.dlq_url))
}

#[cfg(test)]
#[path = "failed_tests.rs"]
mod tests;
