//! The PostgreSQL adapters against a real server: profile selection,
//! watermarks that never skip or repeat a period, and the run log.

use chrono::{NaiveDate, Utc};
use tem_shared::adapters::postgres::{PgProfiles, PgRunLog};
use tem_shared::ports::{ProfileStore, RunLog};
use tem_shared::sync::manager::RunSummary;
use tem_shared::sync::profile::{ProfileSelection, WatermarkAdvance};
use tem_tests::db::{fresh, insert_profile, watermark};

fn day(s: &str) -> NaiveDate {
    s.parse().unwrap()
}

#[tokio::test]
async fn the_schedule_sees_only_active_profiles_but_ids_name_any() {
    let db = fresh().await;
    let active = insert_profile(
        &db.pool,
        "routit",
        "http://x",
        "s",
        true,
        "2025-01-01",
        None,
    )
    .await;
    let inactive = insert_profile(
        &db.pool,
        "routit",
        "http://x",
        "s",
        false,
        "2025-01-01",
        None,
    )
    .await;
    let other = insert_profile(
        &db.pool,
        "t_mobile",
        "http://x",
        "s",
        true,
        "2025-01-01",
        None,
    )
    .await;
    let store = PgProfiles::new(db.pool.clone());

    let ids = |ps: Vec<tem_shared::sync::profile::SyncProfile>| {
        ps.into_iter().map(|p| p.id).collect::<Vec<_>>()
    };
    assert_eq!(
        ids(store.profiles(&ProfileSelection::All).await.unwrap()),
        vec![active, other]
    );
    assert_eq!(
        ids(store
            .profiles(&ProfileSelection::Providers(vec!["routit".into()]))
            .await
            .unwrap()),
        vec![active]
    );
    assert_eq!(
        ids(store
            .profiles(&ProfileSelection::Ids(vec![inactive, other]))
            .await
            .unwrap()),
        vec![inactive, other]
    );
}

#[tokio::test]
async fn the_watermark_moves_one_period_at_a_time_and_only_once() {
    let db = fresh().await;
    let id = insert_profile(
        &db.pool,
        "routit",
        "http://x",
        "s",
        true,
        "2025-01-01",
        None,
    )
    .await;
    let store = PgProfiles::new(db.pool.clone());

    assert_eq!(
        store
            .advance_watermark(id, day("2025-01-02"))
            .await
            .unwrap(),
        WatermarkAdvance::WouldSkip { watermark: None }
    );
    assert_eq!(
        store
            .advance_watermark(id, day("2025-01-01"))
            .await
            .unwrap(),
        WatermarkAdvance::Advanced
    );
    assert_eq!(
        store
            .advance_watermark(id, day("2025-01-01"))
            .await
            .unwrap(),
        WatermarkAdvance::AlreadyThere
    );
    assert_eq!(
        store
            .advance_watermark(id, day("2025-01-03"))
            .await
            .unwrap(),
        WatermarkAdvance::WouldSkip {
            watermark: Some(day("2025-01-01"))
        }
    );
    assert_eq!(
        store
            .advance_watermark(id, day("2025-01-02"))
            .await
            .unwrap(),
        WatermarkAdvance::Advanced
    );
    assert_eq!(watermark(&db.pool, id).await, Some(day("2025-01-02")));
}

#[tokio::test]
async fn concurrent_advances_of_the_same_period_succeed_exactly_once() {
    let db = fresh().await;
    let id = insert_profile(
        &db.pool,
        "routit",
        "http://x",
        "s",
        true,
        "2025-01-01",
        Some("2025-01-04"),
    )
    .await;
    let store = PgProfiles::new(db.pool.clone());
    let results = futures_join(&store, id, day("2025-01-05")).await;
    assert_eq!(
        results
            .iter()
            .filter(|r| **r == WatermarkAdvance::Advanced)
            .count(),
        1,
        "{results:?}"
    );
    assert_eq!(
        results
            .iter()
            .filter(|r| **r == WatermarkAdvance::AlreadyThere)
            .count(),
        7
    );
}

async fn futures_join(store: &PgProfiles, id: i64, period: NaiveDate) -> Vec<WatermarkAdvance> {
    let mut handles = Vec::new();
    for _ in 0..8 {
        let store = store.clone();
        handles.push(tokio::spawn(async move {
            store.advance_watermark(id, period).await.unwrap()
        }));
    }
    let mut results = Vec::new();
    for h in handles {
        results.push(h.await.unwrap());
    }
    results
}

#[tokio::test]
async fn a_run_delivered_twice_is_recorded_once_with_its_delivery_count() {
    let db = fresh().await;
    let log = PgRunLog::new(db.pool.clone());
    let run = RunSummary {
        run_id: "r1".into(),
        trigger: "schedule".into(),
        started_at: Utc::now(),
        finished_at: Utc::now(),
        profiles_seen: 3,
        sent: vec![],
        skipped: vec![],
        failures: vec![],
    };
    log.record_run(&run).await.unwrap();
    log.record_run(&run).await.unwrap();
    let (count, deliveries, seen): (i64, i32, i32) =
        sqlx::query_as("SELECT count(*) OVER (), deliveries, profiles_seen FROM sync_run")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!((count, deliveries, seen), (1, 2, 3));
}

// --- the step journal and the failure log (adapters/journal.rs) ---

use tem_shared::adapters::journal::{PgFailureLog, PgStepJournal};
use tem_shared::ports::{FailureLog, FailureRecord, StepEnd, StepJournal, StepStart};
use tem_shared::runtime::Disposition;

/// attempt, outcome, error_kind, children, finished
type JournalRow = (i32, Option<String>, Option<String>, Vec<String>, bool);

fn start(attempt: u32) -> StepStart {
    let now = Utc::now();
    StepStart {
        message_id: "m1".into(),
        attempt,
        step: "SyncProfile".into(),
        function_name: "tem-RoutitSyncFunction".into(),
        queue: Some("tem-RoutitQueue".into()),
        provider: Some("routit".into()),
        task_id: Some("task-1".into()),
        trace_id: "trace-1".into(),
        depth: 0,
        chain_started_at: now,
        started_at: now,
        expires_at: now + chrono::Duration::days(14),
    }
}

#[tokio::test]
async fn an_attempt_is_journaled_at_its_start_and_completed_at_its_end() {
    let db = fresh().await;
    let journal = PgStepJournal::new(db.pool.clone());
    let died = journal.started(&start(1)).await.unwrap();
    let second = journal.started(&start(2)).await.unwrap();
    journal
        .finished(
            second,
            &StepEnd {
                finished_at: Utc::now(),
                outcome: Disposition::DeadLettered,
                error: Some("carrier down".into()),
                error_kind: Some("retries_exhausted".into()),
                children: vec!["c1".into(), "c2".into()],
                handoff: Some("s3://b/k".into()),
            },
        )
        .await
        .unwrap();
    let rows: Vec<JournalRow> = sqlx::query_as(
        "SELECT attempt, outcome, error_kind, children, finished_at IS NOT NULL
         FROM step_run WHERE message_id = 'm1' ORDER BY attempt",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(died, second - 1);
    // The first attempt's process "died": its row stays open.
    assert_eq!(rows[0], (1, None, None, vec![], false));
    assert_eq!(
        rows[1],
        (
            2,
            Some("dead_lettered".into()),
            Some("retries_exhausted".into()),
            vec!["c1".into(), "c2".into()],
            true
        )
    );
}

fn failure(error: &str) -> FailureRecord {
    let now = Utc::now();
    FailureRecord {
        id: "m1".into(),
        queue: "tem-RoutitQueue".into(),
        queue_url: "http://sqs/q/tem-RoutitQueue".into(),
        dlq_url: "http://sqs/q/tem-RoutitDlq".into(),
        function_name: Some("tem-RoutitSyncFunction".into()),
        step: Some("SyncProfile".into()),
        provider: Some("routit".into()),
        task_id: Some("task-1".into()),
        trace_id: Some("trace-1".into()),
        body: "{}".into(),
        error_kind: "permanent".into(),
        error: error.into(),
        attempts: 1,
        failed_at: now,
        expires_at: now + chrono::Duration::days(30),
    }
}

#[tokio::test]
async fn a_failure_is_recorded_resolved_once_and_reopened_when_it_fails_again() {
    let db = fresh().await;
    let log = PgFailureLog::new(db.pool.clone());
    log.record(&failure("first")).await.unwrap();
    assert!(log.resolved("m1", "redrive", Utc::now()).await.unwrap());
    assert!(!log.resolved("m1", "redrive", Utc::now()).await.unwrap());
    assert!(!log.resolved("nobody", "redrive", Utc::now()).await.unwrap());
    let resolved: (String, Option<String>) =
        sqlx::query_as("SELECT status, resolved_by FROM failed_message WHERE id = 'm1'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(resolved, ("retried".into(), Some("redrive".into())));

    log.record(&failure("second")).await.unwrap();
    let again: (String, i32, String) =
        sqlx::query_as("SELECT status, times_failed, error FROM failed_message WHERE id = 'm1'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(again, ("failed".into(), 2, "second".into()));
}
