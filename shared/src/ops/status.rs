//! `status`: the legacy runbook's six monitoring points and the operators'
//! daily questions, each as a check with its value, threshold and state, and
//! an overall state with the monitoring-plugin exit code (0 OK, 1 WARNING,
//! 2 CRITICAL, 3 UNKNOWN). One implementation for `temctl status` and the
//! ops function's `{"command": "status"}`.
//!
//! [`gather`] reads the facts through narrow ports (PostgreSQL, SQS, the
//! tasks table), [`evaluate`] is the pure core the threshold tests drive.
//! A source that cannot be read makes its checks UNKNOWN, never the command
//! fail: an operator still sees everything else.

use std::collections::BTreeMap;
use std::fmt;

use async_trait::async_trait;
use chrono::{DateTime, Duration, Utc};
use serde::Serialize;
use serde_json::{json, Value};

use crate::ops::settings::{queue_name_of, OpsSettings};
use crate::ports::{PortError, TaskAdmin};
use crate::tasks::SyncTask;

/// The runbook's monitoring points, the check name prefix `status` gives
/// each, and the template's alarm (logical id, or the prefix of one alarm
/// per function or queue). tests/template_rules.rs holds the template to it.
pub const MONITORING_POINTS: &[(u8, &str, &str)] = &[
    (1, "sync-manager runs", "SyncManagerMissedRunsAlarm"),
    (2, "failure rate", "FailureRateAlarm"),
    (3, "routing failures", "RoutingFailuresAlarm"),
    (4, "sync tasks failed", "TasksFailedAlarm"),
    (5, "queue depth", "DepthAlarm"),
    (6, "totals duration", "TotalsDurationAlarm"),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum State {
    Ok,
    Warning,
    Critical,
    Unknown,
}

impl State {
    /// The monitoring-plugin exit code.
    pub fn exit_code(self) -> i32 {
        match self {
            State::Ok => 0,
            State::Warning => 1,
            State::Critical => 2,
            State::Unknown => 3,
        }
    }

    /// Worst first: CRITICAL, WARNING, UNKNOWN, OK (the usual order of
    /// check aggregators: a known problem outranks a value that could not
    /// be read).
    fn rank(self) -> u8 {
        match self {
            State::Ok => 0,
            State::Unknown => 1,
            State::Warning => 2,
            State::Critical => 3,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            State::Ok => "OK",
            State::Warning => "WARNING",
            State::Critical => "CRITICAL",
            State::Unknown => "UNKNOWN",
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Check {
    pub name: String,
    /// The runbook's monitoring point (1-6); None for the daily extras.
    pub point: Option<u8>,
    pub value: Value,
    pub threshold: String,
    pub state: State,
    pub detail: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StatusReport {
    pub state: State,
    pub exit_code: i32,
    pub evaluated_at: DateTime<Utc>,
    pub checks: Vec<Check>,
}

impl StatusReport {
    fn new(checks: Vec<Check>, now: DateTime<Utc>) -> Self {
        let state = checks
            .iter()
            .map(|c| c.state)
            .max_by_key(|s| s.rank())
            .unwrap_or(State::Ok);
        Self {
            state,
            exit_code: state.exit_code(),
            evaluated_at: now,
            checks,
        }
    }

    /// A table for a terminal: state, name, value, threshold, detail.
    pub fn to_table(&self) -> String {
        let rows: Vec<[String; 5]> = self
            .checks
            .iter()
            .map(|c| {
                [
                    c.state.to_string(),
                    c.name.clone(),
                    match &c.value {
                        Value::String(s) => s.clone(),
                        Value::Null => "-".into(),
                        other => other.to_string(),
                    },
                    c.threshold.clone(),
                    c.detail.clone(),
                ]
            })
            .collect();
        let header = ["STATE", "CHECK", "VALUE", "THRESHOLD", "DETAIL"];
        let mut widths = header.map(str::len);
        for row in &rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let line = |cells: [&str; 5]| {
            let mut out = String::new();
            for (i, cell) in cells.iter().enumerate() {
                if i == 4 {
                    out.push_str(cell);
                } else {
                    out.push_str(&format!("{cell:<w$}  ", w = widths[i]));
                }
            }
            out.trim_end().to_string()
        };
        let mut out = format!(
            "tem status: {} (evaluated {})\n",
            self.state,
            self.evaluated_at.format("%Y-%m-%dT%H:%M:%SZ")
        );
        out.push_str(&line(header));
        out.push('\n');
        for row in &rows {
            out.push_str(&line([&row[0], &row[1], &row[2], &row[3], &row[4]]));
            out.push('\n');
        }
        out
    }
}

/// The thresholds, with the legacy runbook's values as defaults. Each can
/// be set by its environment variable (the ops function) or `temctl status
/// --set NAME=VALUE` (same names).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Thresholds {
    /// SYNC_PERIOD_MINUTES: the master sync's schedule (rate(5 minutes)).
    pub sync_period_minutes: i64,
    /// STATUS_SYNC_MISSED_CRITICAL: consecutive missed runs that are CRITICAL
    /// (the runbook: 2); one fewer is WARNING.
    pub sync_missed_critical: i64,
    /// STATUS_FAILURE_RATE_WARNING / _CRITICAL: failed attempts / attempts of
    /// one function and step over the last hour (runbook: over 1%).
    pub failure_rate_warning: f64,
    pub failure_rate_critical: f64,
    /// STATUS_ROUTING_FAILURES_CRITICAL: routing failures in the last hour
    /// above which the point is CRITICAL (runbook: any, so 0).
    pub routing_failures_critical: u64,
    /// STATUS_TASKS_FAILED_WARNING / _CRITICAL: failed / created tasks over
    /// 24 hours (runbook: over 10%).
    pub tasks_failed_warning: f64,
    pub tasks_failed_critical: f64,
    /// STATUS_QUEUE_DEPTH_WARNING / _CRITICAL: pending messages of a queue
    /// (runbook: over 1,000).
    pub queue_depth_warning: u64,
    pub queue_depth_critical: u64,
    /// STATUS_DLQ_DEPTH_CRITICAL: messages in a DLQ above which it is
    /// CRITICAL (0: anything).
    pub dlq_depth_critical: u64,
    /// STATUS_TOTALS_SECONDS_CRITICAL: a totals calculation (p95 over 24 h)
    /// taking longer is CRITICAL, the maximum alone WARNING (runbook: 5 min).
    pub totals_seconds_critical: f64,
    /// STATUS_SYNC_STALE_HOURS: a provider whose last successful sync or
    /// import is older than this is WARNING.
    pub sync_stale_hours: i64,
    /// STATUS_FAILED_IMPORTS_WARNING: failed imports in 24 h above this are
    /// WARNING.
    pub failed_imports_warning: u64,
    /// STATUS_STALLED_TASKS_WARNING: stalled tasks above this are WARNING.
    pub stalled_tasks_warning: u64,
    /// TASK_STALLED_AFTER_MINUTES: an unfinished task older than this counts
    /// as stalled (the ops watch's limit).
    pub task_stalled_after_minutes: i64,
    /// STATUS_FINALISATION_LATE_HOURS: a cycle still a draft this long after
    /// it became due (the hourly sweep missed it) is WARNING.
    pub finalisation_late_hours: i64,
    /// "maintenance last succeeded": WARNING when its last finished run is
    /// older (the schedule is daily).
    pub maintenance_stale_hours: i64,
    /// INVOICE_GRACE_DAYS: as the totals function's.
    pub invoice_grace_days: i64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Self {
            sync_period_minutes: 5,
            sync_missed_critical: 2,
            failure_rate_warning: 0.005,
            failure_rate_critical: 0.01,
            routing_failures_critical: 0,
            tasks_failed_warning: 0.05,
            tasks_failed_critical: 0.10,
            queue_depth_warning: 500,
            queue_depth_critical: 1000,
            dlq_depth_critical: 0,
            totals_seconds_critical: 300.0,
            sync_stale_hours: 26,
            failed_imports_warning: 0,
            stalled_tasks_warning: 0,
            task_stalled_after_minutes: 120,
            finalisation_late_hours: 2,
            maintenance_stale_hours: 26,
            invoice_grace_days: 5,
        }
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ThresholdError {
    #[error("unknown threshold {0:?}; the known ones are {known:?}", known = Thresholds::NAMES)]
    Unknown(String),
    #[error("threshold {name} = {value:?} is not a number")]
    Invalid { name: String, value: String },
}

impl Thresholds {
    pub const NAMES: &'static [&'static str] = &[
        "SYNC_PERIOD_MINUTES",
        "STATUS_SYNC_MISSED_CRITICAL",
        "STATUS_FAILURE_RATE_WARNING",
        "STATUS_FAILURE_RATE_CRITICAL",
        "STATUS_ROUTING_FAILURES_CRITICAL",
        "STATUS_TASKS_FAILED_WARNING",
        "STATUS_TASKS_FAILED_CRITICAL",
        "STATUS_QUEUE_DEPTH_WARNING",
        "STATUS_QUEUE_DEPTH_CRITICAL",
        "STATUS_DLQ_DEPTH_CRITICAL",
        "STATUS_TOTALS_SECONDS_CRITICAL",
        "STATUS_SYNC_STALE_HOURS",
        "STATUS_FAILED_IMPORTS_WARNING",
        "STATUS_STALLED_TASKS_WARNING",
        "TASK_STALLED_AFTER_MINUTES",
        "STATUS_FINALISATION_LATE_HOURS",
        "INVOICE_GRACE_DAYS",
    ];

    /// Sets one threshold by its name.
    pub fn set(&mut self, name: &str, value: &str) -> Result<(), ThresholdError> {
        fn parse<T: std::str::FromStr>(name: &str, value: &str) -> Result<T, ThresholdError> {
            value.trim().parse().map_err(|_| ThresholdError::Invalid {
                name: name.to_string(),
                value: value.to_string(),
            })
        }
        match name {
            "SYNC_PERIOD_MINUTES" => self.sync_period_minutes = parse(name, value)?,
            "STATUS_SYNC_MISSED_CRITICAL" => self.sync_missed_critical = parse(name, value)?,
            "STATUS_FAILURE_RATE_WARNING" => self.failure_rate_warning = parse(name, value)?,
            "STATUS_FAILURE_RATE_CRITICAL" => self.failure_rate_critical = parse(name, value)?,
            "STATUS_ROUTING_FAILURES_CRITICAL" => {
                self.routing_failures_critical = parse(name, value)?
            }
            "STATUS_TASKS_FAILED_WARNING" => self.tasks_failed_warning = parse(name, value)?,
            "STATUS_TASKS_FAILED_CRITICAL" => self.tasks_failed_critical = parse(name, value)?,
            "STATUS_QUEUE_DEPTH_WARNING" => self.queue_depth_warning = parse(name, value)?,
            "STATUS_QUEUE_DEPTH_CRITICAL" => self.queue_depth_critical = parse(name, value)?,
            "STATUS_DLQ_DEPTH_CRITICAL" => self.dlq_depth_critical = parse(name, value)?,
            "STATUS_TOTALS_SECONDS_CRITICAL" => self.totals_seconds_critical = parse(name, value)?,
            "STATUS_SYNC_STALE_HOURS" => self.sync_stale_hours = parse(name, value)?,
            "STATUS_FAILED_IMPORTS_WARNING" => self.failed_imports_warning = parse(name, value)?,
            "STATUS_STALLED_TASKS_WARNING" => self.stalled_tasks_warning = parse(name, value)?,
            "TASK_STALLED_AFTER_MINUTES" => self.task_stalled_after_minutes = parse(name, value)?,
            "STATUS_FINALISATION_LATE_HOURS" => self.finalisation_late_hours = parse(name, value)?,
            "STATUS_MAINTENANCE_STALE_HOURS" => self.maintenance_stale_hours = parse(name, value)?,
            "INVOICE_GRACE_DAYS" => self.invoice_grace_days = parse(name, value)?,
            other => return Err(ThresholdError::Unknown(other.to_string())),
        }
        Ok(())
    }

    /// The defaults, overridden by every name the lookup knows.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ThresholdError> {
        let mut thresholds = Self::default();
        for name in Self::NAMES {
            if let Some(value) = lookup(name).filter(|v| !v.trim().is_empty()) {
                thresholds.set(name, &value)?;
            }
        }
        Ok(thresholds)
    }
}

// ------------------------------------------------------------------ facts

/// Attempts and failed attempts (retry or dead-lettered) of one function
/// and step.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StepRate {
    pub function_name: String,
    pub step: String,
    pub attempts: u64,
    pub failed: u64,
}

/// Durations of the CalculateTotals attempts that finished.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Durations {
    pub count: u64,
    pub max_ms: Option<i64>,
    pub p95_ms: Option<i64>,
}

/// The last successful SyncProfile and ImportCdrFile of a provider.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProviderLast {
    pub provider: String,
    pub last_sync: Option<DateTime<Utc>>,
    pub last_import: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ImportCounts {
    pub failed: u64,
    pub rejected_rows: u64,
}

/// What GetQueueAttributes says of a queue.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct QueueDepth {
    pub visible: u64,
    pub in_flight: u64,
    pub delayed: u64,
}

/// The PostgreSQL side of the status (adapters/status.rs).
#[async_trait]
pub trait StatusStore: Send + Sync {
    /// When the latest recorded sync-manager run started.
    async fn last_sync_run(&self) -> Result<Option<DateTime<Utc>>, PortError>;
    /// The daily maintenance's last finished run (`maintenance_run`).
    async fn maintenance(&self) -> Result<MaintenanceFacts, PortError>;
    /// Attempts per function and step started since `since`: those that
    /// finished, and those that never did although started before
    /// `dead_before` (the process died: crash, timeout, out of memory),
    /// which count as failed.
    async fn step_rates(
        &self,
        since: DateTime<Utc>,
        dead_before: DateTime<Utc>,
    ) -> Result<Vec<StepRate>, PortError>;
    /// Routing and sending failures of the sync-manager runs since `since`.
    async fn routing_failures(&self, since: DateTime<Utc>) -> Result<u64, PortError>;
    async fn totals_durations(&self, since: DateTime<Utc>) -> Result<Durations, PortError>;
    async fn last_successes(&self) -> Result<Vec<ProviderLast>, PortError>;
    async fn imports(&self, since: DateTime<Utc>) -> Result<ImportCounts, PortError>;
    async fn cdrs_without_customer(&self) -> Result<u64, PortError>;
    /// Cycles whose invoice is still a draft although due for finalisation
    /// at `at` (billing::invoice::cycles_due_for_finalisation).
    async fn cycles_due(&self, at: DateTime<Utc>, grace: Duration) -> Result<u64, PortError>;
    /// Draft invoices of closed cycles that could not be issued for missing
    /// billing data, oldest first (billing::invoice, `Blocked`).
    async fn blocked_invoices(&self) -> Result<Vec<BlockedInvoice>, PortError>;
    /// The oldest open failure per source queue name (failed_message): the
    /// age of a DLQ's oldest message, which SQS reports only to CloudWatch.
    async fn oldest_failures(&self) -> Result<BTreeMap<String, DateTime<Utc>>, PortError>;
}

#[async_trait]
pub trait QueueStats: Send + Sync {
    async fn depth(&self, queue_url: &str) -> Result<QueueDepth, PortError>;
}

/// The tasks the status needs: the two reads of the ops side's
/// [`TaskAdmin`], which serves it, and nothing that writes.
#[async_trait]
pub trait TaskOverview: Send + Sync {
    async fn tasks_created_between(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<SyncTask>, PortError>;
    async fn open_tasks(&self, created_before: DateTime<Utc>) -> Result<Vec<SyncTask>, PortError>;
}

#[async_trait]
impl<T: TaskAdmin + ?Sized> TaskOverview for T {
    async fn tasks_created_between(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<SyncTask>, PortError> {
        TaskAdmin::tasks_created_between(self, from, to).await
    }
    async fn open_tasks(&self, created_before: DateTime<Utc>) -> Result<Vec<SyncTask>, PortError> {
        TaskAdmin::open_tasks(self, created_before).await
    }
}

/// One queue's facts.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueFacts {
    pub name: String,
    pub dlq: bool,
    pub depth: Result<QueueDepth, String>,
    pub oldest: Option<DateTime<Utc>>,
}

/// A closed cycle's invoice kept as a draft: its customer and cycle, and
/// what is missing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockedInvoice {
    pub customer_id: i64,
    pub cycle: chrono::NaiveDate,
    pub reason: String,
    pub since: DateTime<Utc>,
}

/// Everything [`evaluate`] looks at; a source that failed holds its error.
#[derive(Debug, Clone, PartialEq)]
pub struct Facts {
    pub now: DateTime<Utc>,
    pub last_sync_run: Result<Option<DateTime<Utc>>, String>,
    pub step_rates: Result<Vec<StepRate>, String>,
    pub routing_failures: Result<u64, String>,
    /// Tasks created in the last 24 hours.
    pub tasks: Result<Vec<SyncTask>, String>,
    pub queues: Vec<QueueFacts>,
    pub totals: Result<Durations, String>,
    pub last_successes: Result<Vec<ProviderLast>, String>,
    pub imports: Result<ImportCounts, String>,
    pub without_customer: Result<u64, String>,
    pub cycles_due: Result<u64, String>,
    pub cycles_late: Result<u64, String>,
    pub blocked_invoices: Result<Vec<BlockedInvoice>, String>,
    /// Unfinished tasks created before the stalled limit, and tasks the
    /// watch marked stalled.
    pub stalled: Result<Vec<SyncTask>, String>,
    pub maintenance: Result<MaintenanceFacts, String>,
}

/// When the daily maintenance last finished, and since when the stack has
/// been running (its first sync-manager run): a stack younger than the
/// threshold is not expected to have a run yet.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct MaintenanceFacts {
    pub last_finished: Option<DateTime<Utc>>,
    pub running_since: Option<DateTime<Utc>>,
}

fn text<T>(result: Result<T, PortError>) -> Result<T, String> {
    result.map_err(|e| e.to_string())
}

/// Reads every fact, the queues in parallel with the database.
#[tracing::instrument(skip_all)]
pub async fn gather(
    store: &dyn StatusStore,
    queues: &dyn QueueStats,
    tasks: &dyn TaskOverview,
    settings: &OpsSettings,
    thresholds: &Thresholds,
    now: DateTime<Utc>,
) -> Facts {
    let hour_ago = now - Duration::hours(1);
    let day_ago = now - Duration::hours(24);
    let grace = Duration::days(thresholds.invoice_grace_days);
    let oldest = store.oldest_failures().await.unwrap_or_default();
    let queue_facts = futures::future::join_all(settings.queues.iter().flat_map(|pair| {
        [(pair, false), (pair, true)].map(|(pair, dlq)| {
            let oldest = oldest.get(queue_name_of(&pair.url)).copied();
            async move {
                let url = if dlq { &pair.dlq_url } else { &pair.url };
                QueueFacts {
                    name: pair.name.clone(),
                    dlq,
                    depth: text(queues.depth(url).await),
                    oldest: if dlq { oldest } else { None },
                }
            }
        })
    }))
    .await;
    let recent = text(tasks.tasks_created_between(day_ago, now).await);
    let stalled_before = now - Duration::minutes(thresholds.task_stalled_after_minutes);
    let stalled = match (
        text(tasks.open_tasks(stalled_before).await),
        recent.as_ref(),
    ) {
        (Ok(mut open), Ok(recent)) => {
            // A task the watch marked stalled is no longer open. Compared by
            // name so this reads the status whichever TaskStatus has it.
            for task in recent.iter().filter(|t| t.status.as_str() == "stalled") {
                if !open.iter().any(|o| o.task_id == task.task_id) {
                    open.push(task.clone());
                }
            }
            Ok(open)
        }
        (Err(e), _) => Err(e),
        (_, Err(e)) => Err(e.clone()),
    };
    Facts {
        now,
        last_sync_run: text(store.last_sync_run().await),
        // No Lambda runs longer than 15 minutes.
        step_rates: text(
            store
                .step_rates(hour_ago, now - Duration::minutes(15))
                .await,
        ),
        routing_failures: text(store.routing_failures(hour_ago).await),
        tasks: recent,
        queues: queue_facts,
        totals: text(store.totals_durations(day_ago).await),
        last_successes: text(store.last_successes().await),
        imports: text(store.imports(day_ago).await),
        without_customer: text(store.cdrs_without_customer().await),
        cycles_due: text(store.cycles_due(now, grace).await),
        cycles_late: text(
            store
                .cycles_due(
                    now - Duration::hours(thresholds.finalisation_late_hours),
                    grace,
                )
                .await,
        ),
        blocked_invoices: text(store.blocked_invoices().await),
        stalled,
        maintenance: text(store.maintenance().await),
    }
}

// ------------------------------------------------------------- evaluation

fn unknown(name: &str, point: Option<u8>, threshold: String, error: &str) -> Check {
    Check {
        name: name.to_string(),
        point,
        value: Value::Null,
        threshold,
        state: State::Unknown,
        detail: format!("could not be read: {error}"),
    }
}

fn age_text(age: Duration) -> String {
    let minutes = age.num_minutes();
    if minutes < 120 {
        format!("{minutes} min")
    } else if minutes < 48 * 60 {
        format!("{} h", minutes / 60)
    } else {
        format!("{} d", minutes / (24 * 60))
    }
}

/// Evaluates every check; the overall state is the worst of them.
pub fn evaluate(facts: &Facts, t: &Thresholds) -> StatusReport {
    let now = facts.now;
    let mut checks = Vec::new();

    // 1. sync-manager missed runs.
    let period = Duration::minutes(t.sync_period_minutes.max(1));
    let threshold = format!(
        "CRITICAL at {} missed runs (every {} min)",
        t.sync_missed_critical, t.sync_period_minutes
    );
    checks.push(match &facts.last_sync_run {
        Err(e) => unknown("sync-manager runs", Some(1), threshold, e),
        Ok(None) => Check {
            name: "sync-manager runs".into(),
            point: Some(1),
            value: Value::Null,
            threshold,
            state: State::Critical,
            detail: "no sync-manager run recorded".into(),
        },
        Ok(Some(last)) => {
            // A run is missed when a whole period passed after the one that
            // was due next: the last run at 12:00 (every 5 min) missed one at
            // 12:10, two at 12:15.
            let since = now - *last;
            let missed = (since.num_seconds() / period.num_seconds() - 1).max(0);
            let state = if missed >= t.sync_missed_critical {
                State::Critical
            } else if missed >= 1 {
                State::Warning
            } else {
                State::Ok
            };
            Check {
                name: "sync-manager runs".into(),
                point: Some(1),
                value: json!(missed),
                threshold,
                state,
                detail: format!(
                    "last run {} ({} ago)",
                    last.format("%Y-%m-%dT%H:%M:%SZ"),
                    age_text(since)
                ),
            }
        }
    });

    // 2. failure rate per function and step, last hour.
    let threshold = format!(
        "WARNING over {:.1}%, CRITICAL over {:.1}% (1 h)",
        t.failure_rate_warning * 100.0,
        t.failure_rate_critical * 100.0
    );
    match &facts.step_rates {
        Err(e) => checks.push(unknown("failure rate", Some(2), threshold, e)),
        Ok(rates) if rates.is_empty() => checks.push(Check {
            name: "failure rate".into(),
            point: Some(2),
            value: json!(0.0),
            threshold,
            state: State::Ok,
            detail: "no step ran in the last hour".into(),
        }),
        Ok(rates) => {
            for rate in rates {
                let ratio = if rate.attempts == 0 {
                    0.0
                } else {
                    rate.failed as f64 / rate.attempts as f64
                };
                let state = if ratio > t.failure_rate_critical {
                    State::Critical
                } else if ratio > t.failure_rate_warning {
                    State::Warning
                } else {
                    State::Ok
                };
                checks.push(Check {
                    name: format!("failure rate {} {}", rate.function_name, rate.step),
                    point: Some(2),
                    value: json!((ratio * 10000.0).round() / 10000.0),
                    threshold: threshold.clone(),
                    state,
                    detail: format!("{} of {} attempts failed", rate.failed, rate.attempts),
                });
            }
        }
    }

    // 3. routing failures, last hour.
    let threshold = format!("CRITICAL over {} (1 h)", t.routing_failures_critical);
    checks.push(match &facts.routing_failures {
        Err(e) => unknown("routing failures", Some(3), threshold, e),
        Ok(n) => Check {
            name: "routing failures".into(),
            point: Some(3),
            value: json!(n),
            threshold,
            state: if *n > t.routing_failures_critical {
                State::Critical
            } else {
                State::Ok
            },
            detail: "sync-manager profiles not routed or not sent".into(),
        },
    });

    // 4. sync tasks failed, last 24 hours.
    let threshold = format!(
        "WARNING over {:.0}%, CRITICAL over {:.0}% (24 h)",
        t.tasks_failed_warning * 100.0,
        t.tasks_failed_critical * 100.0
    );
    checks.push(match &facts.tasks {
        Err(e) => unknown("sync tasks failed", Some(4), threshold, e),
        Ok(tasks) => {
            let failed = tasks
                .iter()
                .filter(|t| t.status.as_str() == "failed")
                .count();
            let ratio = if tasks.is_empty() {
                0.0
            } else {
                failed as f64 / tasks.len() as f64
            };
            Check {
                name: "sync tasks failed".into(),
                point: Some(4),
                value: json!((ratio * 10000.0).round() / 10000.0),
                threshold,
                state: if ratio > t.tasks_failed_critical {
                    State::Critical
                } else if ratio > t.tasks_failed_warning {
                    State::Warning
                } else {
                    State::Ok
                },
                detail: format!("{failed} of {} tasks", tasks.len()),
            }
        }
    });

    // 5. queue depth per queue and DLQ.
    for queue in &facts.queues {
        let (name, threshold) = if queue.dlq {
            (
                format!("queue depth {} dlq", queue.name),
                format!("CRITICAL over {}", t.dlq_depth_critical),
            )
        } else {
            (
                format!("queue depth {}", queue.name),
                format!(
                    "WARNING over {}, CRITICAL over {}",
                    t.queue_depth_warning, t.queue_depth_critical
                ),
            )
        };
        checks.push(match &queue.depth {
            Err(e) => unknown(&name, Some(5), threshold, e),
            Ok(depth) => {
                let pending = depth.visible + depth.delayed;
                let state = if queue.dlq {
                    if depth.visible + depth.in_flight > t.dlq_depth_critical {
                        State::Critical
                    } else {
                        State::Ok
                    }
                } else if pending > t.queue_depth_critical {
                    State::Critical
                } else if pending > t.queue_depth_warning {
                    State::Warning
                } else {
                    State::Ok
                };
                let oldest = match queue.oldest {
                    Some(at) => format!("oldest failure {} old", age_text(now - at)),
                    // SQS reports ApproximateAgeOfOldestMessage only to
                    // CloudWatch (the dashboard shows it).
                    None if depth.visible > 0 => "oldest message age: see the dashboard".into(),
                    None => "empty".into(),
                };
                Check {
                    name,
                    point: Some(5),
                    value: json!(if queue.dlq {
                        depth.visible + depth.in_flight
                    } else {
                        pending
                    }),
                    threshold,
                    state,
                    detail: format!(
                        "{} visible, {} in flight, {} delayed; {oldest}",
                        depth.visible, depth.in_flight, depth.delayed
                    ),
                }
            }
        });
    }

    // 6. totals duration, last 24 hours.
    let threshold = format!(
        "CRITICAL when p95 over {:.0} s, WARNING when the maximum is (24 h)",
        t.totals_seconds_critical
    );
    checks.push(match &facts.totals {
        Err(e) => unknown("totals duration", Some(6), threshold, e),
        Ok(d) => {
            let limit_ms = t.totals_seconds_critical * 1000.0;
            let over = |v: Option<i64>| v.is_some_and(|v| v as f64 > limit_ms);
            Check {
                name: "totals duration".into(),
                point: Some(6),
                value: json!({ "max_ms": d.max_ms, "p95_ms": d.p95_ms }),
                threshold,
                state: if over(d.p95_ms) {
                    State::Critical
                } else if over(d.max_ms) {
                    State::Warning
                } else {
                    State::Ok
                },
                detail: format!("{} calculations", d.count),
            }
        }
    });

    // The daily extras.
    let stale = Duration::hours(t.sync_stale_hours);
    let threshold = format!("WARNING when older than {} h", t.sync_stale_hours);
    match &facts.last_successes {
        Err(e) => checks.push(unknown("last sync and import", None, threshold, e)),
        Ok(lasts) => {
            for last in lasts {
                let old = |at: Option<DateTime<Utc>>| at.is_some_and(|at| now - at > stale);
                let show = |at: Option<DateTime<Utc>>| match at {
                    Some(at) => format!(
                        "{} ({} ago)",
                        at.format("%Y-%m-%dT%H:%M:%SZ"),
                        age_text(now - at)
                    ),
                    None => "none recorded".into(),
                };
                checks.push(Check {
                    name: format!("last sync and import {}", last.provider),
                    point: None,
                    value: json!(last.last_sync.or(last.last_import)),
                    threshold: threshold.clone(),
                    state: if old(last.last_sync) || old(last.last_import) {
                        State::Warning
                    } else {
                        State::Ok
                    },
                    detail: format!(
                        "sync {}, import {}",
                        show(last.last_sync),
                        show(last.last_import)
                    ),
                });
            }
        }
    }
    let threshold = format!("WARNING over {} (24 h)", t.failed_imports_warning);
    match &facts.imports {
        Err(e) => checks.push(unknown("failed imports", None, threshold, e)),
        Ok(imports) => {
            checks.push(Check {
                name: "failed imports".into(),
                point: None,
                value: json!(imports.failed),
                threshold,
                state: if imports.failed > t.failed_imports_warning {
                    State::Warning
                } else {
                    State::Ok
                },
                detail: "import_file rows failed in the last 24 h".into(),
            });
            checks.push(Check {
                name: "rejected rows".into(),
                point: None,
                value: json!(imports.rejected_rows),
                threshold: "informational".into(),
                state: State::Ok,
                detail: "rows refused by imports in the last 24 h (temctl import summary)".into(),
            });
        }
    }
    checks.push(match &facts.without_customer {
        Err(e) => unknown("cdrs without customer", None, "informational".into(), e),
        Ok(n) => Check {
            name: "cdrs without customer".into(),
            point: None,
            value: json!(n),
            threshold: "informational".into(),
            state: State::Ok,
            detail: "attached once their subscription exists".into(),
        },
    });
    let threshold = format!("WARNING when due for over {} h", t.finalisation_late_hours);
    checks.push(match (&facts.cycles_due, &facts.cycles_late) {
        (Err(e), _) | (_, Err(e)) => unknown("cycles awaiting finalisation", None, threshold, e),
        (Ok(due), Ok(late)) => Check {
            name: "cycles awaiting finalisation".into(),
            point: None,
            value: json!(due),
            threshold,
            state: if *late > 0 { State::Warning } else { State::Ok },
            detail: format!(
                "{late} of them due for over {} h",
                t.finalisation_late_hours
            ),
        },
    });
    // An invoice that cannot be issued is never fixed by waiting: someone
    // must apply the billing data, so any is a warning.
    let threshold = "WARNING over 0".to_string();
    checks.push(match &facts.blocked_invoices {
        Err(e) => unknown(
            "invoices blocked by missing billing data",
            None,
            threshold,
            e,
        ),
        Ok(blocked) => Check {
            name: "invoices blocked by missing billing data".into(),
            point: None,
            value: json!(blocked.len()),
            threshold,
            state: if blocked.is_empty() {
                State::Ok
            } else {
                State::Warning
            },
            detail: blocked
                .iter()
                .take(5)
                .map(|b| {
                    format!(
                        "customer {} cycle {} since {}: {}",
                        b.customer_id,
                        b.cycle,
                        b.since.format("%Y-%m-%d %H:%M"),
                        b.reason
                    )
                })
                .collect::<Vec<_>>()
                .join(" | "),
        },
    });
    let threshold = format!(
        "WARNING over {} (unfinished after {} min)",
        t.stalled_tasks_warning, t.task_stalled_after_minutes
    );
    checks.push(match &facts.stalled {
        Err(e) => unknown("stalled tasks", None, threshold, e),
        Ok(stalled) => Check {
            name: "stalled tasks".into(),
            point: None,
            value: json!(stalled.len()),
            threshold,
            state: if stalled.len() as u64 > t.stalled_tasks_warning {
                State::Warning
            } else {
                State::Ok
            },
            detail: stalled
                .iter()
                .take(5)
                .map(|t| format!("{} ({}, {})", t.task_id, t.provider, t.status.as_str()))
                .collect::<Vec<_>>()
                .join(", "),
        },
    });

    checks.push(maintenance_check(&facts.maintenance, t, now));

    StatusReport::new(checks, now)
}

fn maintenance_check(
    facts: &Result<MaintenanceFacts, String>,
    t: &Thresholds,
    now: DateTime<Utc>,
) -> Check {
    let name = "maintenance last succeeded";
    let stale = Duration::hours(t.maintenance_stale_hours);
    let threshold = format!("WARNING when older than {} h", t.maintenance_stale_hours);
    let facts = match facts {
        Err(e) => return unknown(name, None, threshold, e),
        Ok(facts) => facts,
    };
    let (state, detail) = match (facts.last_finished, facts.running_since) {
        (Some(at), _) if now - at > stale => (
            State::Warning,
            format!(
                "last run finished {} ago: partitions ahead, the archive and the pruning are behind; temctl failed list, then invoke the maintenance function with events/maintenance/console-run.json",
                age_text(now - at)
            ),
        ),
        (Some(at), _) => (State::Ok, format!("{} ago", age_text(now - at))),
        (None, Some(since)) if now - since > stale => (
            State::Warning,
            format!(
                "no run has finished, though the stack has been running for {}: check the maintenance schedule (ScheduleEnabled) and temctl failed list",
                age_text(now - since)
            ),
        ),
        (None, _) => (
            State::Ok,
            "no run yet; the daily schedule starts the first".to_string(),
        ),
    };
    Check {
        name: name.into(),
        point: None,
        value: json!(facts.last_finished),
        threshold,
        state,
        detail,
    }
}

/// Gathers and evaluates: what `temctl status` and the ops command run.
pub async fn status(
    store: &dyn StatusStore,
    queues: &dyn QueueStats,
    tasks: &dyn TaskOverview,
    settings: &OpsSettings,
    thresholds: &Thresholds,
    now: DateTime<Utc>,
) -> StatusReport {
    let facts = gather(store, queues, tasks, settings, thresholds, now).await;
    evaluate(&facts, thresholds)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tasks::TaskStatus;
    use chrono::TimeZone;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 12, 2, 12, 0, 0).unwrap()
    }

    fn task(id: &str, status: TaskStatus) -> SyncTask {
        SyncTask {
            task_id: id.into(),
            profile_id: 1,
            provider: "routit".into(),
            period: now().date_naive(),
            status,
            created_at: now() - Duration::hours(1),
            started_at: None,
            finished_at: None,
            outstanding: 0,
            error: None,
            notes: vec![],
            failed_ids: vec![],
        }
    }

    fn queue(name: &str, dlq: bool, visible: u64) -> QueueFacts {
        QueueFacts {
            name: name.into(),
            dlq,
            depth: Ok(QueueDepth {
                visible,
                in_flight: 0,
                delayed: 0,
            }),
            oldest: None,
        }
    }

    /// A stack where every check is OK.
    fn healthy() -> Facts {
        Facts {
            now: now(),
            last_sync_run: Ok(Some(now() - Duration::minutes(3))),
            step_rates: Ok(vec![StepRate {
                function_name: "tem-RoutitSync".into(),
                step: "SyncProfile".into(),
                attempts: 1000,
                failed: 0,
            }]),
            routing_failures: Ok(0),
            tasks: Ok((0..20)
                .map(|i| task(&format!("t{i}"), TaskStatus::Completed))
                .collect()),
            queues: vec![queue("routit", false, 3), queue("routit", true, 0)],
            totals: Ok(Durations {
                count: 10,
                max_ms: Some(2_000),
                p95_ms: Some(1_500),
            }),
            last_successes: Ok(vec![ProviderLast {
                provider: "routit".into(),
                last_sync: Some(now() - Duration::hours(1)),
                last_import: Some(now() - Duration::hours(1)),
            }]),
            imports: Ok(ImportCounts {
                failed: 0,
                rejected_rows: 4,
            }),
            without_customer: Ok(12),
            cycles_due: Ok(1),
            cycles_late: Ok(0),
            blocked_invoices: Ok(vec![]),
            stalled: Ok(vec![]),
            maintenance: Ok(MaintenanceFacts {
                last_finished: Some(now() - Duration::hours(20)),
                running_since: Some(now() - Duration::days(90)),
            }),
        }
    }

    #[test]
    fn maintenance_older_than_26_hours_is_a_warning_and_a_young_stack_without_a_run_is_not() {
        let mut facts = healthy();
        assert_eq!(state_of(&facts, "maintenance last succeeded"), State::Ok);
        facts.maintenance = Ok(MaintenanceFacts {
            last_finished: Some(now() - Duration::hours(27)),
            running_since: Some(now() - Duration::days(90)),
        });
        assert_eq!(
            state_of(&facts, "maintenance last succeeded"),
            State::Warning
        );
        facts.maintenance = Ok(MaintenanceFacts {
            last_finished: None,
            running_since: Some(now() - Duration::hours(3)),
        });
        assert_eq!(state_of(&facts, "maintenance last succeeded"), State::Ok);
        facts.maintenance = Ok(MaintenanceFacts {
            last_finished: None,
            running_since: Some(now() - Duration::days(3)),
        });
        assert_eq!(
            state_of(&facts, "maintenance last succeeded"),
            State::Warning
        );
    }

    fn check<'a>(report: &'a StatusReport, name: &str) -> &'a Check {
        report
            .checks
            .iter()
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("no check {name}: {:#?}", report.checks))
    }

    fn state_of(facts: &Facts, name: &str) -> State {
        check(&evaluate(facts, &Thresholds::default()), name).state
    }

    #[test]
    fn a_healthy_stack_is_ok_with_exit_code_zero() {
        let report = evaluate(&healthy(), &Thresholds::default());
        assert_eq!(report.state, State::Ok, "{}", report.to_table());
        assert_eq!(report.exit_code, 0);
        for point in 1..=6u8 {
            assert!(
                report.checks.iter().any(|c| c.point == Some(point)),
                "point {point} is evaluated"
            );
        }
    }

    #[test]
    fn sync_manager_is_warning_after_one_missed_run_and_critical_after_two() {
        let mut facts = healthy();
        let at = |minutes| Ok(Some(now() - Duration::minutes(minutes)));
        // Every 5 minutes: 9 min since the last run is none missed yet.
        facts.last_sync_run = at(9);
        assert_eq!(state_of(&facts, "sync-manager runs"), State::Ok);
        facts.last_sync_run = at(10);
        assert_eq!(state_of(&facts, "sync-manager runs"), State::Warning);
        facts.last_sync_run = at(14);
        assert_eq!(state_of(&facts, "sync-manager runs"), State::Warning);
        facts.last_sync_run = at(15);
        assert_eq!(state_of(&facts, "sync-manager runs"), State::Critical);
        facts.last_sync_run = Ok(None);
        assert_eq!(state_of(&facts, "sync-manager runs"), State::Critical);
    }

    #[test]
    fn the_sync_period_comes_from_the_thresholds() {
        let mut facts = healthy();
        facts.last_sync_run = Ok(Some(now() - Duration::minutes(15)));
        let thresholds = Thresholds::from_lookup(|name| {
            (name == "SYNC_PERIOD_MINUTES").then(|| "10".to_string())
        })
        .unwrap();
        assert_eq!(
            check(&evaluate(&facts, &thresholds), "sync-manager runs").state,
            State::Ok
        );
    }

    #[test]
    fn a_failure_rate_over_one_percent_is_critical_per_function_and_step() {
        let mut facts = healthy();
        let rate = |failed| {
            Ok(vec![
                StepRate {
                    function_name: "tem-Totals".into(),
                    step: "CalculateTotals".into(),
                    attempts: 1000,
                    failed,
                },
                StepRate {
                    function_name: "tem-Totals".into(),
                    step: "GenerateInvoice".into(),
                    attempts: 1000,
                    failed: 0,
                },
            ])
        };
        let name = "failure rate tem-Totals CalculateTotals";
        facts.step_rates = rate(5);
        assert_eq!(state_of(&facts, name), State::Ok);
        facts.step_rates = rate(6);
        assert_eq!(state_of(&facts, name), State::Warning);
        facts.step_rates = rate(10);
        assert_eq!(state_of(&facts, name), State::Warning);
        facts.step_rates = rate(11);
        assert_eq!(state_of(&facts, name), State::Critical);
        assert_eq!(
            state_of(&facts, "failure rate tem-Totals GenerateInvoice"),
            State::Ok
        );
        assert_eq!(evaluate(&facts, &Thresholds::default()).exit_code, 2);
    }

    #[test]
    fn any_routing_failure_in_the_last_hour_is_critical() {
        let mut facts = healthy();
        facts.routing_failures = Ok(1);
        assert_eq!(state_of(&facts, "routing failures"), State::Critical);
    }

    #[test]
    fn sync_tasks_failed_over_ten_percent_is_critical() {
        let mut facts = healthy();
        let with_failed = |failed: usize| {
            Ok((0..100)
                .map(|i| {
                    let status = if i < failed {
                        TaskStatus::Failed
                    } else {
                        TaskStatus::Completed
                    };
                    task(&format!("t{i}"), status)
                })
                .collect())
        };
        facts.tasks = with_failed(5);
        assert_eq!(state_of(&facts, "sync tasks failed"), State::Ok);
        facts.tasks = with_failed(6);
        assert_eq!(state_of(&facts, "sync tasks failed"), State::Warning);
        facts.tasks = with_failed(10);
        assert_eq!(state_of(&facts, "sync tasks failed"), State::Warning);
        facts.tasks = with_failed(11);
        assert_eq!(state_of(&facts, "sync tasks failed"), State::Critical);
        facts.tasks = Ok(vec![]);
        assert_eq!(state_of(&facts, "sync tasks failed"), State::Ok);
    }

    #[test]
    fn a_queue_over_a_thousand_messages_or_a_dlq_with_one_is_critical() {
        let mut facts = healthy();
        for (visible, state) in [
            (500, State::Ok),
            (501, State::Warning),
            (1000, State::Warning),
            (1001, State::Critical),
        ] {
            facts.queues[0] = queue("routit", false, visible);
            assert_eq!(state_of(&facts, "queue depth routit"), state, "{visible}");
        }
        facts.queues[0] = queue("routit", false, 0);
        facts.queues[1] = queue("routit", true, 1);
        facts.queues[1].oldest = Some(now() - Duration::minutes(30));
        let report = evaluate(&facts, &Thresholds::default());
        let dlq = check(&report, "queue depth routit dlq");
        assert_eq!(dlq.state, State::Critical);
        assert!(dlq.detail.contains("30 min"), "{}", dlq.detail);
        assert_eq!(report.exit_code, 2);
    }

    #[test]
    fn totals_over_five_minutes_at_p95_are_critical_and_at_the_maximum_a_warning() {
        let mut facts = healthy();
        let durations = |max, p95| {
            Ok(Durations {
                count: 20,
                max_ms: Some(max),
                p95_ms: Some(p95),
            })
        };
        facts.totals = durations(300_000, 300_000);
        assert_eq!(state_of(&facts, "totals duration"), State::Ok);
        facts.totals = durations(300_001, 1_000);
        assert_eq!(state_of(&facts, "totals duration"), State::Warning);
        facts.totals = durations(400_000, 300_001);
        assert_eq!(state_of(&facts, "totals duration"), State::Critical);
    }

    #[test]
    fn the_daily_extras_warn_on_stale_providers_failed_imports_late_cycles_and_stalled_tasks() {
        let mut facts = healthy();
        facts.last_successes = Ok(vec![ProviderLast {
            provider: "routit".into(),
            last_sync: Some(now() - Duration::hours(27)),
            last_import: None,
        }]);
        facts.imports = Ok(ImportCounts {
            failed: 1,
            rejected_rows: 0,
        });
        facts.cycles_late = Ok(1);
        facts.blocked_invoices = Ok(vec![BlockedInvoice {
            customer_id: 7,
            cycle: "2025-03-01".parse().unwrap(),
            reason: "customer 7 has no billing details valid on 2025-04-06".into(),
            since: now(),
        }]);
        facts.stalled = Ok(vec![task("old", TaskStatus::Running)]);
        let report = evaluate(&facts, &Thresholds::default());
        assert!(check(&report, "invoices blocked by missing billing data")
            .detail
            .contains("customer 7 cycle 2025-03-01"));
        for name in [
            "last sync and import routit",
            "failed imports",
            "cycles awaiting finalisation",
            "invoices blocked by missing billing data",
            "stalled tasks",
        ] {
            assert_eq!(check(&report, name).state, State::Warning, "{name}");
        }
        assert_eq!(report.state, State::Warning);
        assert_eq!(report.exit_code, 1);
    }

    #[test]
    fn an_unreadable_source_is_unknown_and_a_critical_check_still_outranks_it() {
        let mut facts = healthy();
        facts.totals = Err("postgres timed out".into());
        let report = evaluate(&facts, &Thresholds::default());
        assert_eq!(check(&report, "totals duration").state, State::Unknown);
        assert_eq!(report.exit_code, 3);
        facts.routing_failures = Ok(3);
        assert_eq!(evaluate(&facts, &Thresholds::default()).exit_code, 2);
        facts.routing_failures = Ok(0);
        facts.imports = Ok(ImportCounts {
            failed: 2,
            rejected_rows: 0,
        });
        assert_eq!(evaluate(&facts, &Thresholds::default()).exit_code, 1);
    }

    #[test]
    fn thresholds_are_set_by_name_and_a_wrong_name_or_value_is_refused() {
        let mut t = Thresholds::default();
        t.set("STATUS_QUEUE_DEPTH_CRITICAL", "50").unwrap();
        assert_eq!(t.queue_depth_critical, 50);
        assert!(matches!(
            t.set("STATUS_QUEUE_DEPTH", "1"),
            Err(ThresholdError::Unknown(_))
        ));
        assert!(matches!(
            t.set("STATUS_QUEUE_DEPTH_CRITICAL", "many"),
            Err(ThresholdError::Invalid { .. })
        ));
        for name in Thresholds::NAMES {
            assert!(
                Thresholds::default().set(name, "1").is_ok(),
                "{name} is settable"
            );
        }
    }

    #[test]
    fn the_table_shows_every_check_and_the_json_names_the_states_in_capitals() {
        let report = evaluate(&healthy(), &Thresholds::default());
        let table = report.to_table();
        assert!(table.starts_with("tem status: OK"));
        assert_eq!(table.lines().count(), report.checks.len() + 2);
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["state"], "OK");
        assert_eq!(json["exit_code"], 0);
        assert_eq!(json["checks"][0]["state"], "OK");
        for key in ["name", "value", "threshold", "state", "detail"] {
            assert!(json["checks"][0].get(key).is_some(), "{key}");
        }
    }
}
