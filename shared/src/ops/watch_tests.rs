use super::*;
use crate::envelope::Step;
use crate::fakes::{FakeIdempotency, FakeTasks};
use crate::ops::fakes::{row, World};
use crate::ports::{Claim, TaskStore};
use crate::tasks::{NewTask, TaskStatus};
use serde_json::json;

const Q: &str = "https://sqs/tem-RoutitQueue";
const DLQ: &str = "https://sqs/tem-RoutitDlq";

fn settings() -> OpsSettings {
    OpsSettings {
        queues: vec![QueuePair {
            name: "routit".into(),
            url: Q.into(),
            dlq_url: DLQ.into(),
        }],
        tasks_table: "t".into(),
        idempotency_table: "i".into(),
    }
}

/// Import rows left running past their deadline.
#[derive(Default)]
struct Imports(std::sync::Mutex<u64>);

#[async_trait::async_trait]
impl AbandonedImports for Imports {
    async fn mark_abandoned(&self, _now: DateTime<Utc>) -> Result<u64, PortError> {
        Ok(std::mem::take(&mut *self.0.lock().unwrap()))
    }
}

struct Rig {
    world: World,
    tasks: FakeTasks,
    idempotency: FakeIdempotency,
    imports: Imports,
}

impl Rig {
    async fn new() -> Self {
        let rig = Rig {
            world: World::default(),
            tasks: FakeTasks::default(),
            idempotency: FakeIdempotency::default(),
            imports: Imports::default(),
        };
        rig.tasks
            .create(
                &NewTask {
                    task_id: "task-1".into(),
                    profile_id: 1,
                    provider: "routit".into(),
                    period: chrono::NaiveDate::from_ymd_opt(2026, 11, 30).unwrap(),
                    created_at: Utc::now() - Duration::minutes(20),
                },
                None,
            )
            .await
            .unwrap();
        rig.tasks.mark_running("task-1", Utc::now()).await.unwrap();
        rig
    }

    fn ports(&self) -> WatchPorts<'_> {
        WatchPorts {
            failed: self.world.ports(),
            tasks: &self.tasks,
            idempotency: &self.idempotency,
            imports: &self.imports,
        }
    }
}

fn sync_body(id: &str) -> String {
    Envelope::root(
        id,
        Step::SyncProfile,
        json!({"provider": "routit"}),
        vec![],
        Some("task-1".into()),
        Utc::now(),
    )
    .to_body()
}

fn died(id: &str, started_at: DateTime<Utc>) -> StepRun {
    StepRun {
        id: 1,
        message_id: id.into(),
        attempt: 5,
        step: "SyncProfile".into(),
        function_name: "tem-RoutitSync".into(),
        queue: Some("tem-RoutitQueue".into()),
        provider: Some("routit".into()),
        task_id: Some("task-1".into()),
        trace_id: id.into(),
        depth: 0,
        chain_started_at: started_at,
        started_at,
        finished_at: None,
        outcome: None,
        error: None,
        error_kind: None,
        children: vec![],
        handoff: None,
    }
}

#[tokio::test]
async fn a_message_sqs_redrove_is_recorded_its_task_failed_with_the_reason_and_its_claim_freed_for_a_retry(
) {
    let rig = Rig::new().await;
    let now = Utc::now();
    let last_start = now - Duration::minutes(3);
    rig.world
        .runs
        .lock()
        .unwrap()
        .push(died("sync-1", last_start));
    rig.world
        .put(DLQ, &sync_body("sync-1"), &[], now - Duration::minutes(1));
    // The dead attempt's claim: in progress, expired.
    rig.idempotency
        .claim("sync-1", last_start, last_start + Duration::seconds(60))
        .await
        .unwrap();

    let report = watch(rig.ports(), &settings(), &WatchSettings::default(), now).await;

    assert_eq!(report.failures_recorded, vec!["sync-1".to_string()]);
    assert_eq!(report.redriven, 1);
    let failure = rig.world.row("sync-1");
    assert_eq!(failure.failure.error_kind, "redriven");
    assert_eq!(failure.failure.queue_url, Q);
    assert_eq!(failure.failure.dlq_url, DLQ);
    assert_eq!(failure.failure.provider.as_deref(), Some("routit"));
    assert_eq!(failure.failure.attempts, 5);
    assert!(
        failure
            .failure
            .error
            .contains("crashed, timed out or ran out of memory"),
        "{}",
        failure.failure.error
    );
    assert!(
        failure.failure.error.contains(&last_start.to_rfc3339()),
        "{}",
        failure.failure.error
    );
    assert!(
        failure.failure.error.contains("never finished"),
        "{}",
        failure.failure.error
    );
    let task = rig.tasks.task("task-1");
    assert_eq!(task.status, TaskStatus::Failed);
    assert!(
        task.error
            .as_deref()
            .unwrap()
            .contains("SyncProfile: SQS moved"),
        "{task:?}"
    );
    assert_eq!(
        rig.idempotency.status("sync-1").as_deref(),
        Some("dead_lettered")
    );
    assert!(matches!(
        rig.idempotency
            .claim("sync-1", now, now + Duration::seconds(60))
            .await
            .unwrap(),
        Claim::Acquired {
            after_dead_letter: true
        }
    ));
    assert_eq!(
        rig.world.visible(DLQ),
        1,
        "the open failure's DLQ copy stays"
    );
}

#[tokio::test]
async fn a_second_watch_run_records_nothing_twice() {
    let rig = Rig::new().await;
    rig.world.put(DLQ, &sync_body("sync-1"), &[], Utc::now());
    let first = watch(
        rig.ports(),
        &settings(),
        &WatchSettings::default(),
        Utc::now(),
    )
    .await;
    let second = watch(
        rig.ports(),
        &settings(),
        &WatchSettings::default(),
        Utc::now(),
    )
    .await;
    assert_eq!(first.failures_recorded.len(), 1);
    assert!(second.failures_recorded.is_empty());
    assert_eq!(second.dlq_messages_seen, 1);
}

#[tokio::test]
async fn a_runtime_dead_letter_without_its_row_is_recorded_from_its_attributes() {
    let rig = Rig::new().await;
    rig.world.put(
        DLQ,
        &sync_body("sync-2"),
        &[
            ("tem-error", "carrier answered 503"),
            ("tem-error-kind", "retries_exhausted"),
            ("tem-attempts", "5"),
            ("tem-failed-at", "2026-12-01T10:00:00Z"),
            ("tem-step", "SyncProfile"),
            ("tem-source-queue", Q),
        ],
        Utc::now(),
    );
    let report = watch(
        rig.ports(),
        &settings(),
        &WatchSettings::default(),
        Utc::now(),
    )
    .await;
    assert_eq!(report.redriven, 0);
    let failure = rig.world.row("sync-2");
    assert_eq!(failure.failure.error_kind, "retries_exhausted");
    assert_eq!(failure.failure.error, "carrier answered 503");
    assert_eq!(
        failure.failure.failed_at.to_rfc3339(),
        "2026-12-01T10:00:00+00:00"
    );
}

#[tokio::test]
async fn dlq_copies_of_resolved_failures_are_deleted_and_open_ones_kept() {
    let rig = Rig::new().await;
    let at = Utc::now() - Duration::minutes(30);
    let mut retried = row("done", Q, DLQ, &sync_body("done"), at);
    retried.status = crate::ports::FailureStatus::Retried;
    retried.resolved_at = Some(Utc::now());
    rig.world.add_row(retried);
    rig.world
        .add_row(row("open", Q, DLQ, &sync_body("open"), at));
    rig.world.put(DLQ, &sync_body("done"), &[], at);
    rig.world.put(DLQ, &sync_body("open"), &[], at);

    let report = watch(
        rig.ports(),
        &settings(),
        &WatchSettings::default(),
        Utc::now(),
    )
    .await;

    assert_eq!(report.dlq_copies_deleted, 1);
    assert!(report.failures_recorded.is_empty());
    assert_eq!(rig.world.depth(DLQ), 1);
}

#[tokio::test]
async fn tasks_unfinished_past_the_limit_are_marked_stalled() {
    let rig = Rig::new().await;
    let now = Utc::now();
    let mut old = rig.tasks.task("task-1");
    old.created_at = now - Duration::minutes(150);
    let mut young = old.clone();
    young.task_id = "young".into();
    young.created_at = now - Duration::minutes(10);
    rig.world.tasks.lock().unwrap().extend([old, young]);

    let report = watch(rig.ports(), &settings(), &WatchSettings::default(), now).await;

    assert_eq!(report.tasks_stalled, vec!["task-1".to_string()]);
}

#[tokio::test]
async fn expired_records_are_deleted_in_bounded_batches() {
    let rig = Rig::new().await;
    let old = Utc::now() - Duration::days(40);
    for i in 0..25 {
        rig.world
            .add_row(row(&format!("old-{i}"), Q, DLQ, "{}", old));
    }
    rig.world.add_row(row("new", Q, DLQ, "{}", Utc::now()));
    let settings_small = WatchSettings {
        expired_batch: 10,
        expired_per_run: 20,
        ..WatchSettings::default()
    };
    let first = watch(rig.ports(), &settings(), &settings_small, Utc::now()).await;
    let second = watch(rig.ports(), &settings(), &settings_small, Utc::now()).await;
    assert_eq!((first.failures_deleted, second.failures_deleted), (20, 5));
    assert_eq!(rig.world.rows.lock().unwrap().len(), 1);
}

#[test]
fn a_failure_retention_under_fourteen_days_is_refused() {
    let env = Env::from_fn(|k| (k == "FAILED_MESSAGE_RETENTION_DAYS").then(|| "7".to_string()));
    let err = WatchSettings::from_env(&env).unwrap_err();
    assert!(err.to_string().contains("14"), "{err}");
    let env = Env::from_fn(|k| (k == "TASK_STALLED_AFTER_MINUTES").then(|| "30".to_string()));
    assert_eq!(
        WatchSettings::from_env(&env).unwrap().stalled_after,
        Duration::minutes(30)
    );
}

#[tokio::test]
async fn abandoned_imports_are_marked_once() {
    let rig = Rig::new().await;
    *rig.imports.0.lock().unwrap() = 2;
    let first = watch(
        rig.ports(),
        &settings(),
        &WatchSettings::default(),
        Utc::now(),
    )
    .await;
    let second = watch(
        rig.ports(),
        &settings(),
        &WatchSettings::default(),
        Utc::now(),
    )
    .await;
    assert_eq!((first.imports_abandoned, second.imports_abandoned), (2, 0));
}

#[tokio::test]
async fn an_s3_notification_sqs_redrove_fails_the_task_its_import_ran_for() {
    let rig = Rig::new().await;
    let import_queue = QueuePair {
        name: "import".into(),
        url: "https://sqs/tem-ImportQueue".into(),
        dlq_url: "https://sqs/tem-ImportDlq".into(),
    };
    let settings = OpsSettings {
        queues: vec![import_queue.clone()],
        ..settings()
    };
    let started = Utc::now() - Duration::minutes(4);
    let mut import = died("import-envelope-id", started);
    import.step = "ImportCdrFile".into();
    import.handoff = Some("s3://cdr/inbox/routit/1/x.zip".into());
    rig.world.runs.lock().unwrap().push(import);
    let notification = json!({"Records": [{"eventSource": "aws:s3", "s3": {
        "bucket": {"name": "cdr"}, "object": {"key": "inbox/routit/1/x.zip", "eTag": "e", "size": 3}
    }}]})
    .to_string();
    let sqs_id = rig
        .world
        .put(&import_queue.dlq_url, &notification, &[], Utc::now());

    let report = watch(
        rig.ports(),
        &settings,
        &WatchSettings::default(),
        Utc::now(),
    )
    .await;

    assert_eq!(report.failures_recorded, vec![format!("sqs:{sqs_id}")]);
    assert_eq!(report.tasks_failed, vec!["task-1".to_string()]);
    let failure = rig.world.row(&format!("sqs:{sqs_id}"));
    assert_eq!(failure.failure.step.as_deref(), Some("ImportCdrFile"));
    assert!(
        failure.failure.error.contains(&started.to_rfc3339()),
        "{}",
        failure.failure.error
    );
    assert_eq!(rig.tasks.task("task-1").status, TaskStatus::Failed);
    assert_eq!(
        rig.idempotency.status("import-envelope-id").as_deref(),
        Some("dead_lettered"),
        "a retry of the notification reopens the task"
    );
}
