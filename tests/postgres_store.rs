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
