//! The operators' PostgreSQL adapters against a real server: the filters of
//! `failed list`, resolving only open failures, recording DLQ-only ones
//! without overwriting the runtime's record, and expiring in batches.

use chrono::{Duration, Utc};
use tem_shared::adapters::operations::{PgFailures, PgStepHistory};
use tem_shared::ops::failed::FailedSelection;
use tem_shared::ops::settings::{OpsSettings, QueuePair};
use tem_shared::ports::{FailedMessage, FailureAdmin, FailureRecord, FailureStatus, StepHistory};
use tem_tests::db::fresh;

fn failure(id: &str, provider: &str, kind: &str, error: &str, age: Duration) -> FailedMessage {
    let failed_at = Utc::now() - age;
    FailedMessage {
        failure: FailureRecord {
            id: id.into(),
            queue: format!("tem-{provider}-queue"),
            queue_url: format!("https://sqs/tem-{provider}-queue"),
            dlq_url: format!("https://sqs/tem-{provider}-dlq"),
            function_name: Some("f".into()),
            step: Some("SyncProfile".into()),
            provider: Some(provider.into()),
            task_id: Some(format!("task-{provider}")),
            trace_id: None,
            body: format!("{{\"id\":\"{id}\"}}"),
            error_kind: kind.into(),
            error: error.into(),
            attempts: 5,
            failed_at,
            expires_at: failed_at + Duration::days(30),
        },
        times_failed: 1,
        status: FailureStatus::Failed,
        resolved_at: None,
        resolved_by: None,
        retries: 0,
    }
}

fn ids(rows: &[FailedMessage]) -> Vec<&str> {
    rows.iter().map(|r| r.failure.id.as_str()).collect()
}

#[tokio::test]
async fn failed_list_filters_by_queue_name_provider_kind_text_age_and_task() {
    let db = fresh().await;
    let store = PgFailures::new(db.pool.clone());
    for f in [
        failure(
            "a",
            "routit",
            "retries_exhausted",
            "carrier answered 503",
            Duration::hours(1),
        ),
        failure(
            "b",
            "routit",
            "redriven",
            "SQS moved it: 100%_done",
            Duration::hours(5),
        ),
        failure(
            "c",
            "t_mobile",
            "permanent",
            "bad credentials",
            Duration::minutes(5),
        ),
    ] {
        assert!(store.ingest(&f).await.unwrap());
    }
    let settings = OpsSettings {
        queues: vec![QueuePair {
            name: "routit".into(),
            url: "https://sqs/tem-routit-queue".into(),
            dlq_url: "https://sqs/tem-routit-dlq".into(),
        }],
        tasks_table: "t".into(),
        idempotency_table: "i".into(),
    };
    let find = |selection: FailedSelection| {
        let store = store.clone();
        let settings = settings.clone();
        async move {
            store
                .find(&selection.filter(Some(&settings), Utc::now()).unwrap())
                .await
                .unwrap()
        }
    };
    let all = FailedSelection::default;
    assert_eq!(ids(&find(all()).await), vec!["b", "a", "c"], "oldest first");
    let by_queue = find(FailedSelection {
        queue: Some("routit".into()),
        ..all()
    })
    .await;
    assert_eq!(ids(&by_queue), vec!["b", "a"], "tem's queue name");
    let by_sqs_name = find(FailedSelection {
        queue: Some("tem-t_mobile-queue".into()),
        ..all()
    })
    .await;
    assert_eq!(ids(&by_sqs_name), vec!["c"], "SQS's queue name");
    assert_eq!(
        ids(&find(FailedSelection {
            kind: Some("redriven".into()),
            ..all()
        })
        .await),
        vec!["b"]
    );
    assert_eq!(
        ids(&find(FailedSelection {
            grep: Some("503".into()),
            ..all()
        })
        .await),
        vec!["a"]
    );
    // LIKE's wildcards in the text are taken literally.
    assert_eq!(
        ids(&find(FailedSelection {
            grep: Some("%_DONE".into()),
            ..all()
        })
        .await),
        vec!["b"]
    );
    assert!(find(FailedSelection {
        grep: Some("_x%".into()),
        ..all()
    })
    .await
    .is_empty());
    assert_eq!(
        ids(&find(FailedSelection {
            since: Some("2h".into()),
            ..all()
        })
        .await),
        vec!["a", "c"]
    );
    assert_eq!(
        ids(&find(FailedSelection {
            task: Some("task-t_mobile".into()),
            ..all()
        })
        .await),
        vec!["c"]
    );
    assert_eq!(
        ids(&find(FailedSelection {
            limit: Some(1),
            ..all()
        })
        .await),
        vec!["b"]
    );
}

#[tokio::test]
async fn only_open_failures_are_resolved_and_a_second_retry_marks_nothing() {
    let db = fresh().await;
    let store = PgFailures::new(db.pool.clone());
    store
        .ingest(&failure(
            "a",
            "routit",
            "permanent",
            "x",
            Duration::hours(1),
        ))
        .await
        .unwrap();
    let now = Utc::now();
    let ids = vec!["a".to_string(), "missing".to_string()];
    assert_eq!(
        store.mark_retried(&ids, "alice", now).await.unwrap(),
        vec!["a"]
    );
    assert!(store
        .mark_retried(&ids, "alice", now)
        .await
        .unwrap()
        .is_empty());
    assert!(store
        .mark_removed(&ids, "bob", now)
        .await
        .unwrap()
        .is_empty());
    let row = &store.get_many(&ids).await.unwrap()[0];
    assert_eq!((row.status, row.retries), (FailureStatus::Retried, 1));
    assert_eq!(row.resolved_by.as_deref(), Some("alice"));
    // Listing resolved ones needs --status.
    let any = FailedSelection {
        status: Some("any".into()),
        ..FailedSelection::default()
    };
    assert_eq!(
        store
            .find(&any.filter(None, now).unwrap())
            .await
            .unwrap()
            .len(),
        1
    );
    let open = FailedSelection::default();
    assert!(store
        .find(&open.filter(None, now).unwrap())
        .await
        .unwrap()
        .is_empty());
}

#[tokio::test]
async fn a_dlq_only_failure_never_overwrites_the_runtimes_record() {
    let db = fresh().await;
    let store = PgFailures::new(db.pool.clone());
    let runtime = failure(
        "a",
        "routit",
        "retries_exhausted",
        "the real reason",
        Duration::hours(1),
    );
    assert!(store.ingest(&runtime).await.unwrap());
    let watch = failure("a", "routit", "redriven", "a guess", Duration::zero());
    assert!(!store.ingest(&watch).await.unwrap());
    assert_eq!(
        store.get_many(&["a".into()]).await.unwrap()[0]
            .failure
            .error,
        "the real reason"
    );
}

#[tokio::test]
async fn expired_failures_and_step_runs_are_deleted_a_batch_at_a_time() {
    let db = fresh().await;
    let store = PgFailures::new(db.pool.clone());
    for i in 0..5 {
        store
            .ingest(&failure(
                &format!("old-{i}"),
                "routit",
                "permanent",
                "x",
                Duration::days(40),
            ))
            .await
            .unwrap();
    }
    store
        .ingest(&failure(
            "new",
            "routit",
            "permanent",
            "x",
            Duration::hours(1),
        ))
        .await
        .unwrap();
    assert_eq!(store.delete_expired(Utc::now(), 3).await.unwrap(), 3);
    assert_eq!(store.delete_expired(Utc::now(), 3).await.unwrap(), 2);
    assert_eq!(store.delete_expired(Utc::now(), 3).await.unwrap(), 0);

    let old = Utc::now() - Duration::days(20);
    for (attempt, started) in [(1, old), (2, Utc::now())] {
        sqlx::query(
            "INSERT INTO step_run (message_id, attempt, step, function_name, trace_id, depth, \
                 chain_started_at, started_at, expires_at, task_id) \
             VALUES ('m', $1, 'SyncProfile', 'f', 't', 0, $2, $2, $2 + interval '14 days', 'task')",
        )
        .bind(attempt)
        .bind(started)
        .execute(&db.pool)
        .await
        .unwrap();
    }
    let history = PgStepHistory::new(db.pool.clone());
    assert_eq!(history.attempts(&["m".into()]).await.unwrap().len(), 2);
    assert_eq!(history.delete_expired(Utc::now(), 100).await.unwrap(), 1);
    let left = history.of_task("task").await.unwrap();
    assert_eq!((left.len(), left[0].attempt), (1, 2));
}
