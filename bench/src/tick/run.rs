//! The tick itself: the schedule's event to sync-manager, then watching
//! PostgreSQL until every affected cycle's draft invoice bills the new CDRs,
//! while sampling the stack's connections; afterwards what `step_run` says
//! about every step, and what is left in the dead-letter queues.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::json;
use sqlx::PgPool;
use tem_local::deployment::Deployment;
use tem_shared::ports::TaskStore;

use super::seed::Customer;

/// The application name of the benchmark's own connections, which the
/// connection count leaves out.
pub const APPLICATION: &str = "tick-bench";

/// What one tick took.
#[derive(Debug, Clone, Serialize)]
pub struct Tick {
    pub t0: DateTime<Utc>,
    /// sync-manager's synchronous answer.
    pub manager_seconds: f64,
    pub sent: usize,
    /// Seconds from the event to the moment each cycle's draft invoice
    /// first billed all its CDRs (polled every `poll_ms`).
    pub invoice_seconds: BTreeMap<i64, f64>,
    /// The last of those: the benchmark's measure.
    pub last_invoice_seconds: Option<f64>,
    /// Every sync task finished (each completes after its last invoice).
    pub tasks_seconds: Option<f64>,
    pub tasks: BTreeMap<String, usize>,
    pub timed_out: bool,
}

/// Connections of the stack's database, sampled every 100 ms.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Connections {
    pub samples: u64,
    /// The most connections of the functions at once (the benchmark's
    /// own left out).
    pub peak: i64,
    pub peak_at_seconds: f64,
    /// The most of them at once that were not idle.
    pub peak_active: i64,
}

pub struct Sampler {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Connections>,
}

impl Sampler {
    /// Counts the connections to `database` every 100 ms on a connection
    /// of its own, until stopped.
    pub fn start(pool: PgPool, database: String, t0: Instant) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let task = tokio::spawn(async move {
            let mut seen = Connections::default();
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            while !flag.load(Ordering::Relaxed) {
                tick.tick().await;
                let row: Result<(i64, i64), _> = sqlx::query_as(
                    "SELECT count(*), count(*) FILTER (WHERE state <> 'idle')
                     FROM pg_stat_activity WHERE datname = $1 AND application_name <> $2",
                )
                .bind(&database)
                .bind(APPLICATION)
                .fetch_one(&pool)
                .await;
                if let Ok((all, active)) = row {
                    seen.samples += 1;
                    if all > seen.peak {
                        seen.peak = all;
                        seen.peak_at_seconds = t0.elapsed().as_secs_f64();
                    }
                    seen.peak_active = seen.peak_active.max(active);
                }
            }
            seen
        });
        Self { stop, task }
    }

    pub async fn stop(self) -> Connections {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap_or_default()
    }
}

/// The schedule's event, as EventBridge sends it.
pub fn schedule_event() -> serde_json::Value {
    json!({
        "version": "0", "id": uuid::Uuid::new_v4().to_string(), "detail-type": "Scheduled Event",
        "source": "aws.events", "account": "000000000000", "time": Utc::now(),
        "region": "eu-west-1", "resources": [], "detail": {}
    })
}

/// Sends the schedule's event and waits until every customer's draft
/// invoice bills `seeded_cdrs + day_cdrs` CDRs (its totals version is the
/// totals', which count them all), then until every sync task finished.
pub async fn tick(
    deployment: &Deployment,
    pool: &PgPool,
    customers: &[Customer],
    timeout: Duration,
    poll: Duration,
    clock: Instant,
) -> Result<Tick> {
    let t0 = Utc::now();
    let answer = deployment
        .invoke("SyncManagerFunctionName", &schedule_event())
        .await?;
    let manager_seconds = clock.elapsed().as_secs_f64();
    if let Some(error) = answer.error {
        bail!("sync-manager failed ({error}): {}", answer.payload);
    }
    let sent = answer.payload["sent"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let failures = answer.payload["failures"].as_array().map_or(0, Vec::len);
    if failures > 0 || sent.is_empty() {
        bail!("sync-manager sent nothing or failed: {}", answer.payload);
    }
    let task_ids: Vec<String> = sent
        .iter()
        .filter_map(|s| s["task_id"].as_str().map(str::to_string))
        .collect();

    let ids: Vec<i64> = customers.iter().map(|c| c.id).collect();
    let cycles: Vec<chrono::NaiveDate> = customers.iter().map(|c| c.cycle).collect();
    let expected: Vec<i64> = customers
        .iter()
        .map(|c| (c.seeded_cdrs + c.day_cdrs) as i64)
        .collect();
    let affected = customers.iter().filter(|c| c.day_cdrs > 0).count();
    let mut invoice_seconds = BTreeMap::new();
    let mut timed_out = false;
    loop {
        let now = clock.elapsed().as_secs_f64();
        let current: Vec<i64> = sqlx::query_scalar(
            "SELECT e.customer_id
             FROM unnest($1::bigint[], $2::date[], $3::bigint[]) AS e (customer_id, cycle, expected)
             JOIN totals t ON t.customer_id = e.customer_id AND t.cycle = e.cycle
             JOIN invoice i ON i.customer_id = e.customer_id AND i.cycle = e.cycle AND i.sequence = 0
             WHERE t.cdr_count = e.expected AND i.totals_calculated_at = t.calculated_at",
        )
        .bind(&ids)
        .bind(&cycles)
        .bind(&expected)
        .fetch_all(pool)
        .await
        .context("poll the invoices")?;
        for id in current {
            invoice_seconds.entry(id).or_insert(now);
        }
        if invoice_seconds.len() >= affected {
            break;
        }
        if clock.elapsed() > timeout {
            timed_out = true;
            break;
        }
        tokio::time::sleep(poll).await;
    }
    let last_invoice_seconds =
        (!timed_out).then(|| invoice_seconds.values().copied().fold(0.0, f64::max));

    // The tasks complete after their last GenerateInvoice.
    let tasks = deployment.tasks();
    let mut statuses = BTreeMap::new();
    let mut tasks_seconds = None;
    loop {
        statuses.clear();
        let mut finished = 0;
        for id in &task_ids {
            let status = match tasks.get(id).await? {
                Some(task) => {
                    if task.status.is_finished() {
                        finished += 1;
                    }
                    task.status.to_string()
                }
                None => "missing".to_string(),
            };
            *statuses.entry(status).or_insert(0) += 1;
        }
        if finished == task_ids.len() {
            tasks_seconds = Some(clock.elapsed().as_secs_f64());
            break;
        }
        if clock.elapsed() > timeout {
            timed_out = true;
            break;
        }
        tokio::time::sleep(poll).await;
    }
    Ok(Tick {
        t0,
        manager_seconds,
        sent: sent.len(),
        invoice_seconds,
        last_invoice_seconds,
        tasks_seconds,
        tasks: statuses,
        timed_out,
    })
}

/// One step's attempts in `step_run` since the tick.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct StepStats {
    pub step: String,
    pub attempts: i64,
    pub completed: i64,
    pub postponed: i64,
    pub retried: i64,
    pub dead_lettered: i64,
    pub unfinished: i64,
    /// Attempts whose error is a pool wait.
    pub pool_waits: i64,
    pub p50: f64,
    pub p95: f64,
    pub max: f64,
    /// Seconds after the event of the first start and the last end.
    pub first_start: f64,
    pub last_end: f64,
    /// Time in the queue: from the end of the attempt that sent the
    /// message to this attempt's start (first attempts of chained steps).
    pub wait_p50: Option<f64>,
    pub wait_p95: Option<f64>,
    pub wait_max: Option<f64>,
}

pub async fn step_stats(pool: &PgPool, t0: DateTime<Utc>) -> Result<Vec<StepStats>> {
    let rows = sqlx::query_as::<_, StepStats>(
        "WITH runs AS (
             SELECT *, extract(epoch FROM finished_at - started_at)::float8 AS seconds
             FROM step_run WHERE started_at >= $1
         ), sent AS (
             SELECT unnest(children) AS child, finished_at AS sent_at FROM runs WHERE outcome = 'completed'
         ), waits AS (
             SELECT r.step, extract(epoch FROM r.started_at - s.sent_at)::float8 AS wait
             FROM runs r JOIN sent s ON s.child = r.message_id
             WHERE r.attempt = 1
         ), w AS (
             SELECT step,
                    percentile_cont(0.5) WITHIN GROUP (ORDER BY wait) AS wait_p50,
                    percentile_cont(0.95) WITHIN GROUP (ORDER BY wait) AS wait_p95,
                    max(wait) AS wait_max
             FROM waits GROUP BY step
         )
         SELECT r.step,
                count(*) AS attempts,
                count(*) FILTER (WHERE outcome = 'completed') AS completed,
                count(*) FILTER (WHERE outcome = 'postponed') AS postponed,
                count(*) FILTER (WHERE outcome = 'retry') AS retried,
                count(*) FILTER (WHERE outcome = 'dead_lettered') AS dead_lettered,
                count(*) FILTER (WHERE finished_at IS NULL) AS unfinished,
                count(*) FILTER (WHERE error ILIKE '%pool timed out%') AS pool_waits,
                coalesce(percentile_cont(0.5) WITHIN GROUP (ORDER BY seconds), 0) AS p50,
                coalesce(percentile_cont(0.95) WITHIN GROUP (ORDER BY seconds), 0) AS p95,
                coalesce(max(seconds), 0) AS max,
                extract(epoch FROM min(started_at) - $1)::float8 AS first_start,
                coalesce(extract(epoch FROM max(finished_at) - $1)::float8, 0) AS last_end,
                min(w.wait_p50) AS wait_p50, min(w.wait_p95) AS wait_p95, min(w.wait_max) AS wait_max
         FROM runs r LEFT JOIN w ON w.step = r.step
         GROUP BY r.step ORDER BY min(r.started_at)",
    )
    .bind(t0)
    .fetch_all(pool)
    .await
    .context("read step_run")?;
    Ok(rows)
}

/// Messages in each of the stack's dead-letter queues now.
pub async fn dead_letters(deployment: &Deployment) -> Result<BTreeMap<String, i64>> {
    use aws_sdk_sqs::types::QueueAttributeName;
    let mut found = BTreeMap::new();
    let sqs = &deployment.clients.sqs;
    let listed = sqs
        .list_queues()
        .queue_name_prefix(&deployment.stack.name)
        .send()
        .await
        .map_err(|e| anyhow::anyhow!(aws_sdk_sqs::error::DisplayErrorContext(e)))?;
    for url in listed.queue_urls() {
        let name = url.rsplit('/').next().unwrap_or(url);
        if !name.to_ascii_lowercase().contains("dlq") {
            continue;
        }
        let attributes = sqs
            .get_queue_attributes()
            .queue_url(url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
            .send()
            .await
            .map_err(|e| anyhow::anyhow!(aws_sdk_sqs::error::DisplayErrorContext(e)))?;
        let count: i64 = attributes
            .attributes()
            .into_iter()
            .flatten()
            .filter_map(|(_, v)| v.parse::<i64>().ok())
            .sum();
        found.insert(name.to_string(), count);
    }
    Ok(found)
}

/// One chain alone on an idle stack: a DispatchTotals of one cycle sent to
/// the totals queue, timed to the end of its GenerateInvoice, with each
/// hop's time in the queue (send to start) and in the step.
#[derive(Debug, Clone, Serialize)]
pub struct Alone {
    pub seconds: f64,
    /// (step, queue wait, run) per step, seconds.
    pub steps: Vec<(String, f64, f64)>,
}

pub async fn one_chain_alone(
    deployment: &Deployment,
    pool: &PgPool,
    customer: &Customer,
    timeout: Duration,
) -> Result<Alone> {
    use tem_shared::command::{Cause, Command, CyclePayload};
    use tem_shared::envelope::Envelope;
    let now = Utc::now();
    let id = format!("tick-bench-alone-{}", uuid::Uuid::new_v4().simple());
    let envelope = Envelope::start(
        id.clone(),
        Command::DispatchTotals(CyclePayload::new(
            customer.id,
            customer.cycle,
            Cause::Console,
        )),
        vec![],
        None,
        now,
    );
    let sent = Instant::now();
    deployment
        .send_raw("TotalsQueueUrl", &serde_json::to_string(&envelope)?)
        .await?;
    loop {
        let done: Option<DateTime<Utc>> = sqlx::query_scalar(
            "SELECT finished_at FROM step_run WHERE trace_id = $1 AND step = 'GenerateInvoice' AND outcome = 'completed'",
        )
        .bind(&id)
        .fetch_optional(pool)
        .await?
        .flatten();
        if done.is_some() {
            break;
        }
        if sent.elapsed() > timeout {
            bail!("one chain alone did not finish within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let seconds = sent.elapsed().as_secs_f64();
    let rows: Vec<(String, DateTime<Utc>, DateTime<Utc>)> = sqlx::query_as(
        "SELECT step, started_at, finished_at FROM step_run
         WHERE trace_id = $1 AND outcome = 'completed' ORDER BY started_at",
    )
    .bind(&id)
    .fetch_all(pool)
    .await?;
    let mut previous_end = now;
    let mut steps = Vec::new();
    for (step, started, finished) in rows {
        let wait = (started - previous_end).num_microseconds().unwrap_or(0) as f64 / 1e6;
        let run = (finished - started).num_microseconds().unwrap_or(0) as f64 / 1e6;
        steps.push((step, wait, run));
        previous_end = finished;
    }
    Ok(Alone { seconds, steps })
}
