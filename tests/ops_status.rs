//! `status` over a real PostgreSQL: the queries behind the monitoring points
//! (tem_shared::adapters::status) with recorded sync runs, step runs,
//! imports and failures, evaluated at an injected time.

use std::sync::Mutex;

use async_trait::async_trait;
use chrono::{DateTime, Duration, TimeZone, Utc};
use sqlx::PgPool;
use tem_shared::adapters::status::PgStatus;
use tem_shared::ops::settings::{OpsSettings, QueuePair};
use tem_shared::ops::status::{
    status, QueueDepth, QueueStats, State, StatusReport, StatusStore, TaskOverview, Thresholds,
};
use tem_shared::ports::PortError;
use tem_shared::tasks::SyncTask;
use tem_tests::db::fresh;

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 12, 2, 12, 0, 0).unwrap()
}

/// Queue depths by URL; anything not set is empty.
#[derive(Default)]
struct Depths(Mutex<Vec<(String, u64)>>);

#[async_trait]
impl QueueStats for Depths {
    async fn depth(&self, queue_url: &str) -> Result<QueueDepth, PortError> {
        let visible = self
            .0
            .lock()
            .unwrap()
            .iter()
            .find(|(url, _)| url == queue_url)
            .map_or(0, |(_, n)| *n);
        Ok(QueueDepth {
            visible,
            ..QueueDepth::default()
        })
    }
}

struct NoTasks;

#[async_trait]
impl TaskOverview for NoTasks {
    async fn tasks_created_between(
        &self,
        _from: DateTime<Utc>,
        _to: DateTime<Utc>,
    ) -> Result<Vec<SyncTask>, PortError> {
        Ok(vec![])
    }
    async fn open_tasks(&self, _before: DateTime<Utc>) -> Result<Vec<SyncTask>, PortError> {
        Ok(vec![])
    }
}

fn settings() -> OpsSettings {
    OpsSettings {
        queues: vec![QueuePair {
            name: "routit".into(),
            url: "https://sqs/tem-RoutitQueue".into(),
            dlq_url: "https://sqs/tem-RoutitDlq".into(),
        }],
        tasks_table: "tasks".into(),
        idempotency_table: "idem".into(),
    }
}

async fn sync_run(pool: &PgPool, id: &str, at: DateTime<Utc>, failures: i32) {
    sqlx::query(
        "INSERT INTO sync_run (id, trigger, started_at, finished_at, profiles_seen, sent, skipped, failures, details)
         VALUES ($1, 'schedule', $2, $2, 1, 1, 0, $3, '{}')",
    )
    .bind(id)
    .bind(at)
    .bind(failures)
    .execute(pool)
    .await
    .unwrap();
}

#[allow(clippy::too_many_arguments)]
async fn step_run(
    pool: &PgPool,
    function: &str,
    step: &str,
    provider: Option<&str>,
    started_at: DateTime<Utc>,
    millis: i64,
    outcome: &str,
) {
    sqlx::query(
        "INSERT INTO step_run (message_id, attempt, step, function_name, queue, provider, trace_id, depth,
                               chain_started_at, started_at, finished_at, outcome, expires_at)
         VALUES ($1, 1, $2, $3, 'q', $4, 'trace', 0, $5, $5, $6, $7, $5 + interval '14 days')",
    )
    .bind(uuid::Uuid::new_v4().to_string())
    .bind(step)
    .bind(function)
    .bind(provider)
    .bind(started_at)
    .bind(started_at + Duration::milliseconds(millis))
    .bind(outcome)
    .execute(pool)
    .await
    .unwrap();
}

async fn evaluate(pool: &PgPool, queues: &Depths, at: DateTime<Utc>) -> StatusReport {
    status(
        &PgStatus::new(pool.clone()),
        queues,
        &NoTasks,
        &settings(),
        &Thresholds::default(),
        at,
    )
    .await
}

fn check<'a>(report: &'a StatusReport, name: &str) -> &'a tem_shared::ops::status::Check {
    report
        .checks
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no check {name}:\n{}", report.to_table()))
}

/// A stack that synced, imported and calculated totals recently.
async fn healthy(pool: &PgPool) {
    sync_run(pool, "run-1", now() - Duration::minutes(7), 0).await;
    sync_run(pool, "run-2", now() - Duration::minutes(2), 0).await;
    let at = now() - Duration::minutes(30);
    step_run(
        pool,
        "tem-RoutitSync",
        "SyncProfile",
        Some("routit"),
        at,
        800,
        "completed",
    )
    .await;
    step_run(
        pool,
        "tem-CdrImport",
        "ImportCdrFile",
        Some("routit"),
        at,
        1200,
        "completed",
    )
    .await;
    for i in 0..20 {
        step_run(
            pool,
            "tem-Totals",
            "CalculateTotals",
            None,
            at,
            1000 + i * 100,
            "completed",
        )
        .await;
    }
}

#[tokio::test]
async fn a_healthy_database_and_empty_queues_are_ok() {
    let db = fresh().await;
    healthy(&db.pool).await;
    let report = evaluate(&db.pool, &Depths::default(), now()).await;
    assert_eq!(report.state, State::Ok, "{}", report.to_table());
    assert_eq!(report.exit_code, 0);
    let totals = check(&report, "totals duration");
    assert_eq!(totals.value["max_ms"], 2900);
    assert_eq!(totals.value["p95_ms"], 2800);
    let routit = check(&report, "last sync and import routit");
    assert!(
        routit
            .detail
            .contains("sync 2026-12-02T11:30:00Z (29 min ago)"),
        "{}",
        routit.detail
    );
    assert_eq!(
        check(&report, "failure rate tem-Totals CalculateTotals").value,
        0.0
    );
}

#[tokio::test]
async fn sync_manager_that_has_not_run_for_three_periods_is_critical_with_exit_code_two() {
    let db = fresh().await;
    healthy(&db.pool).await;
    // The last run was 2 minutes before now(); three periods later:
    let later = now() + Duration::minutes(13);
    let report = evaluate(&db.pool, &Depths::default(), later).await;
    let runs = check(&report, "sync-manager runs");
    assert_eq!(runs.state, State::Critical, "{}", report.to_table());
    assert_eq!(runs.value, 2);
    assert_eq!(report.state, State::Critical);
    assert_eq!(report.exit_code, 2);
}

#[tokio::test]
async fn failed_attempts_routing_failures_and_deep_queues_are_read_from_their_sources() {
    let db = fresh().await;
    healthy(&db.pool).await;
    let at = now() - Duration::minutes(10);
    step_run(
        &db.pool,
        "tem-RoutitSync",
        "SyncProfile",
        Some("routit"),
        at,
        100,
        "retry",
    )
    .await;
    // Older than an hour: not counted.
    let old = now() - Duration::minutes(90);
    step_run(
        &db.pool,
        "tem-RoutitSync",
        "SyncProfile",
        Some("routit"),
        old,
        100,
        "dead_lettered",
    )
    .await;
    // An attempt whose process died 20 minutes ago (never finished) failed;
    // one started a minute ago may still be running.
    for minutes in [20, 1] {
        sqlx::query(
            "INSERT INTO step_run (message_id, attempt, step, function_name, queue, provider, trace_id, depth,
                                   chain_started_at, started_at, expires_at)
             VALUES ($1, 1, 'CalculateTotals', 'tem-Totals', 'q', NULL, 'trace', 0, $2, $2, $2 + interval '14 days')",
        )
        .bind(uuid::Uuid::new_v4().to_string())
        .bind(now() - Duration::minutes(minutes))
        .execute(&db.pool)
        .await
        .unwrap();
    }
    sync_run(&db.pool, "run-3", now() - Duration::minutes(1), 2).await;
    sqlx::query(
        "INSERT INTO failed_message (id, queue, queue_url, dlq_url, body, error_kind, error, attempts, failed_at, expires_at)
         VALUES ('m1', 'tem-RoutitQueue', 'https://sqs/tem-RoutitQueue', 'https://sqs/tem-RoutitDlq', '{}',
                 'permanent', 'carrier refused', 5, $1, $1 + interval '30 days')",
    )
    .bind(now() - Duration::hours(3))
    .execute(&db.pool)
    .await
    .unwrap();
    let queues = Depths::default();
    queues.0.lock().unwrap().extend([
        ("https://sqs/tem-RoutitQueue".to_string(), 1001),
        ("https://sqs/tem-RoutitDlq".to_string(), 1),
    ]);

    let report = evaluate(&db.pool, &queues, now()).await;
    let rate = check(&report, "failure rate tem-RoutitSync SyncProfile");
    assert_eq!(rate.state, State::Critical);
    assert_eq!(rate.detail, "1 of 2 attempts failed");
    // 20 completed in the healthy run, and the dead attempt.
    let totals = check(&report, "failure rate tem-Totals CalculateTotals");
    assert_eq!(totals.detail, "1 of 21 attempts failed");
    assert_eq!(totals.state, State::Critical);
    let routing = check(&report, "routing failures");
    assert_eq!(
        (routing.state, routing.value.clone()),
        (State::Critical, 2.into())
    );
    assert_eq!(check(&report, "queue depth routit").state, State::Critical);
    let dlq = check(&report, "queue depth routit dlq");
    assert_eq!(dlq.state, State::Critical);
    assert!(
        dlq.detail.contains("oldest failure 3 h old"),
        "{}",
        dlq.detail
    );
    assert_eq!(report.exit_code, 2);
}

#[tokio::test]
async fn failed_imports_rejected_rows_and_customerless_cdrs_are_counted() {
    let db = fresh().await;
    healthy(&db.pool).await;
    for (status, rejected) in [("failed", 0i64), ("completed_with_errors", 7)] {
        sqlx::query(
            "INSERT INTO import_file (bucket, key, sha256, size_bytes, provider, status, rows_rejected, started_at, finished_at)
             VALUES ('b', $1, 'x', 1, 'routit', $2, $3, $4, $4)",
        )
        .bind(uuid::Uuid::new_v4().to_string())
        .bind(status)
        .bind(rejected)
        .bind(now() - Duration::hours(2))
        .execute(&db.pool)
        .await
        .unwrap();
    }
    let store = PgStatus::new(db.pool.clone());
    assert_eq!(store.cdrs_without_customer().await.unwrap(), 0);
    let report = evaluate(&db.pool, &Depths::default(), now()).await;
    assert_eq!(check(&report, "failed imports").state, State::Warning);
    assert_eq!(check(&report, "rejected rows").value, 7);
    assert_eq!(report.exit_code, 1, "{}", report.to_table());
}
