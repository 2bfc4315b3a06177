//! Unit tests of the chain runtime against in-memory fakes.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use serde_json::json;

use crate::envelope::{ChainLink, Envelope, Step};
use crate::fakes::{FakeFailures, FakeIdempotency, FakeJournal, FakeQueues, FakeTasks};
use crate::ports::{HandoffChange, TaskStore};
use crate::retry::Backoff;
use crate::routing::{Provider, Router};
use crate::runtime::*;
use crate::tasks::{NewTask, TaskStatus};

const ROUTIT_Q: &str = "q/routit";
const DLQ: &str = "q/routit-dlq";

/// Answers each call with the next scripted result (the last one repeats).
struct Scripted {
    answers: Mutex<VecDeque<Result<StepOutcome, StepError>>>,
    calls: AtomicUsize,
}

impl Scripted {
    fn new(answers: Vec<Result<StepOutcome, StepError>>) -> Arc<Self> {
        Arc::new(Self {
            answers: Mutex::new(answers.into()),
            calls: AtomicUsize::new(0),
        })
    }
}

#[async_trait]
impl StepHandler for Scripted {
    async fn handle(&self, _m: &Envelope, _d: Delivery) -> Result<StepOutcome, StepError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let mut answers = self.answers.lock().unwrap();
        if answers.len() > 1 {
            answers.pop_front().unwrap()
        } else {
            answers.front().map(replay).unwrap()
        }
    }
}

/// The same answer again (a step error holds its source, so it is not Clone).
fn replay(answer: &Result<StepOutcome, StepError>) -> Result<StepOutcome, StepError> {
    match answer {
        Ok(outcome) => Ok(outcome.clone()),
        Err(StepError::Retryable(r)) => Err(StepError::Retryable(r.as_str().into())),
        Err(StepError::Permanent(r)) => Err(StepError::Permanent(r.as_str().into())),
        Err(StepError::NotAttempted(r)) => Err(StepError::NotAttempted(r.as_str().into())),
    }
}

struct Harness {
    runtime: ChainRuntime,
    handler: Arc<Scripted>,
    queues: Arc<FakeQueues>,
    tasks: Arc<FakeTasks>,
    idempotency: Arc<FakeIdempotency>,
    journal: Arc<FakeJournal>,
    failures: Arc<FakeFailures>,
}

/// Ports over fakes; the journal and failure log are fresh ones.
fn ports(
    queues: &Arc<FakeQueues>,
    idempotency: Arc<FakeIdempotency>,
    tasks: Arc<FakeTasks>,
) -> RuntimePorts {
    RuntimePorts {
        queues: queues.clone(),
        visibility: queues.clone(),
        idempotency,
        tasks,
        journal: Arc::new(FakeJournal::default()),
        failures: Arc::new(FakeFailures::default()),
    }
}

fn harness(answers: Vec<Result<StepOutcome, StepError>>) -> Harness {
    let handler = Scripted::new(answers);
    let queues = Arc::new(FakeQueues::default());
    let tasks = Arc::new(FakeTasks::default());
    let settings = RuntimeSettings {
        source_queue_url: Some(ROUTIT_Q.into()),
        dlq_url: Some(DLQ.into()),
        max_chain_depth: 3,
        max_requeues: 2,
        max_attempts: 3,
        backoff: Backoff {
            base: Duration::from_secs(4),
            cap: Duration::from_secs(60),
        },
        pool_connections: 2,
        max_postpone_age: chrono::Duration::hours(1),
        function_name: "tem-routit".into(),
        ..RuntimeSettings::default()
    };
    let idempotency = Arc::new(FakeIdempotency::default());
    let journal = Arc::new(FakeJournal::default());
    let failures = Arc::new(FakeFailures::default());
    let runtime = ChainRuntime::new(
        handler.clone(),
        Router::new(BTreeMap::from([(Provider::Routit, ROUTIT_Q.to_string())])),
        RuntimePorts {
            journal: journal.clone(),
            failures: failures.clone(),
            ..ports(&queues, idempotency.clone(), tasks.clone())
        },
        settings,
    );
    Harness {
        runtime,
        handler,
        queues,
        tasks,
        idempotency,
        journal,
        failures,
    }
}

fn message(chain: Vec<ChainLink>) -> Envelope {
    Envelope::root(
        "m1",
        Step::SyncProfile,
        json!({"provider": "routit", "profile_id": 1, "period": "2025-01-01"}),
        chain,
        Some("task-1".into()),
        Utc::now(),
    )
}

fn incoming(envelope: &Envelope, receive_count: u32) -> IncomingMessage {
    incoming_body(envelope.to_body(), receive_count)
}

fn incoming_body(body: String, receive_count: u32) -> IncomingMessage {
    IncomingMessage {
        message_id: "sqs-1".into(),
        body,
        receive_count,
        receipt_handle: Some("rh-1".into()),
    }
}

async fn with_task(h: &Harness) {
    h.tasks
        .create(
            &NewTask {
                task_id: "task-1".into(),
                profile_id: 1,
                provider: "routit".into(),
                period: "2025-01-01".parse().unwrap(),
                created_at: Utc::now(),
            },
            None,
        )
        .await
        .unwrap();
}

fn deadline() -> chrono::DateTime<Utc> {
    Utc::now() + chrono::Duration::minutes(1)
}

fn poll_link() -> ChainLink {
    ChainLink {
        step: Step::RoutitPollExport,
        payload: json!({"provider": "routit"}),
    }
}

#[tokio::test]
async fn success_sends_the_head_of_the_chain_and_keeps_the_task_open() {
    let h = harness(vec![Ok(StepOutcome::done(json!({"export_id": "e1"})))]);
    with_task(&h).await;
    let m = message(vec![poll_link()]);
    let report = h.runtime.process(incoming(&m, 1), deadline()).await;
    assert_eq!(report.disposition, Disposition::Completed);
    let sent = h.queues.on(ROUTIT_Q);
    assert_eq!(sent.len(), 1);
    let child = Envelope::parse(&sent[0].body).unwrap();
    assert_eq!(child.step, Step::RoutitPollExport);
    assert_eq!(child.payload["export_id"], "e1");
    let task = h.tasks.task("task-1");
    assert_eq!((task.outstanding, task.status), (1, TaskStatus::Running));
}

#[tokio::test]
async fn a_step_that_skips_to_a_later_step_sends_that_step_with_the_rest_of_the_chain() {
    let h = harness(vec![Ok(StepOutcome::SkipTo {
        until: Step::RoutitDownloadExport,
    })]);
    with_task(&h).await;
    let download = ChainLink {
        step: Step::RoutitDownloadExport,
        payload: json!({"provider": "routit"}),
    };
    let m = message(vec![poll_link(), download.clone(), poll_link()]);
    let report = h.runtime.process(incoming(&m, 1), deadline()).await;
    assert_eq!(report.disposition, Disposition::Completed);
    let sent = h.queues.on(ROUTIT_Q);
    assert_eq!(sent.len(), 1, "one next message, the skipped step's");
    let child = Envelope::parse(&sent[0].body).unwrap();
    assert_eq!(child.step, Step::RoutitDownloadExport);
    assert_eq!(child.chain, vec![poll_link()]);
    let task = h.tasks.task("task-1");
    assert_eq!((task.outstanding, task.status), (1, TaskStatus::Running));
}

#[tokio::test]
async fn the_task_completes_when_its_last_step_finishes() {
    let h = harness(vec![Ok(StepOutcome::done(json!({})))]);
    with_task(&h).await;
    h.runtime
        .process(incoming(&message(vec![]), 1), deadline())
        .await;
    let task = h.tasks.task("task-1");
    assert_eq!((task.outstanding, task.status), (0, TaskStatus::Completed));
}

#[tokio::test]
async fn a_step_that_hands_off_sends_nothing_and_keeps_its_branch_open() {
    let h = harness(vec![Ok(StepOutcome::HandOff {
        via: "s3://cdr/inbox/x.zip".into(),
    })]);
    with_task(&h).await;
    let report = h
        .runtime
        .process(incoming(&message(vec![]), 1), deadline())
        .await;
    assert_eq!(report.disposition, Disposition::Completed);
    assert!(
        report.detail.contains("s3://cdr/inbox/x.zip"),
        "{}",
        report.detail
    );
    assert!(h.queues.on(ROUTIT_Q).is_empty());
    let task = h.tasks.task("task-1");
    assert_eq!((task.outstanding, task.status), (1, TaskStatus::Running));
}

#[tokio::test]
async fn a_duplicate_delivery_is_acknowledged_without_running_again() {
    let h = harness(vec![Ok(StepOutcome::done(json!({})))]);
    with_task(&h).await;
    let m = message(vec![poll_link()]);
    h.runtime.process(incoming(&m, 1), deadline()).await;
    let again = h.runtime.process(incoming(&m, 1), deadline()).await;
    assert_eq!(again.disposition, Disposition::Duplicate);
    assert!(again.disposition.acknowledged());
    assert_eq!(h.handler.calls.load(Ordering::SeqCst), 1);
    assert_eq!(h.queues.on(ROUTIT_Q).len(), 1);
    assert_eq!(h.tasks.task("task-1").outstanding, 1);
}

#[tokio::test]
async fn a_malformed_body_goes_to_the_dlq_at_once_with_the_reason() {
    let h = harness(vec![Ok(StepOutcome::done(json!({})))]);
    let report = h
        .runtime
        .process(incoming_body("{oops".into(), 1), deadline())
        .await;
    assert_eq!(report.disposition, Disposition::DeadLettered);
    let dead = h.queues.on(DLQ);
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].body, "{oops");
    let error = dead[0]
        .attributes
        .iter()
        .find(|(k, _)| k == "tem-error")
        .unwrap();
    assert!(error.1.contains("not retried"), "{error:?}");
    assert_eq!(h.handler.calls.load(Ordering::SeqCst), 0);
    // The copy is a new SQS message; the original's id keys its failure.
    let original = incoming_body("{oops".into(), 1).message_id;
    let named = dead[0]
        .attributes
        .iter()
        .find(|(k, _)| k == "tem-message-id")
        .map(|(_, v)| v.clone());
    assert_eq!(named, Some(original.clone()));
    let failures = h.failures.records.lock().unwrap();
    assert!(
        failures.contains_key(&format!("sqs:{original}")),
        "{:?}",
        failures.keys()
    );
}

#[tokio::test]
async fn an_unknown_step_goes_to_the_dlq_and_fails_its_task() {
    let h = harness(vec![Ok(StepOutcome::done(json!({})))]);
    with_task(&h).await;
    let mut value = serde_json::to_value(message(vec![])).unwrap();
    value["step"] = json!("Teleport");
    let report = h
        .runtime
        .process(incoming_body(value.to_string(), 1), deadline())
        .await;
    assert_eq!(report.disposition, Disposition::DeadLettered);
    assert!(report.detail.contains("Teleport"));
    assert_eq!(h.tasks.task("task-1").status, TaskStatus::Failed);
}

#[tokio::test]
async fn a_retryable_error_backs_off_through_visibility_and_is_not_acknowledged() {
    let h = harness(vec![Err(StepError::Retryable("carrier down".into()))]);
    with_task(&h).await;
    let report = h
        .runtime
        .process(incoming(&message(vec![]), 2), deadline())
        .await;
    assert_eq!(report.disposition, Disposition::Retry);
    assert!(!report.disposition.acknowledged());
    let visibility = h.queues.visibility.lock().unwrap().clone();
    // Attempt 2 with base 4 s: ceiling 8 s, jittered between 4 and 8.
    assert_eq!(visibility.len(), 1);
    assert!((4..=8).contains(&visibility[0].1), "{visibility:?}");
    assert!(h.queues.on(DLQ).is_empty());
}

#[tokio::test]
async fn a_retry_after_a_retryable_error_runs_the_handler_again() {
    let h = harness(vec![
        Err(StepError::Retryable("carrier down".into())),
        Ok(StepOutcome::done(json!({}))),
    ]);
    with_task(&h).await;
    let m = message(vec![]);
    h.runtime.process(incoming(&m, 1), deadline()).await;
    let second = h.runtime.process(incoming(&m, 2), deadline()).await;
    assert_eq!(second.disposition, Disposition::Completed);
    assert_eq!(h.tasks.task("task-1").status, TaskStatus::Completed);
}

#[tokio::test]
async fn the_last_attempt_dead_letters_with_error_attempts_and_time() {
    let h = harness(vec![Err(StepError::Retryable("carrier down".into()))]);
    with_task(&h).await;
    let report = h
        .runtime
        .process(incoming(&message(vec![]), 3), deadline())
        .await;
    assert_eq!(report.disposition, Disposition::DeadLettered);
    let dead = h.queues.on(DLQ);
    let attr = |name: &str| {
        dead[0]
            .attributes
            .iter()
            .find(|(k, _)| k == name)
            .unwrap()
            .1
            .clone()
    };
    assert!(attr("tem-error").contains("carrier down"));
    assert_eq!(attr("tem-attempts"), "3");
    assert_eq!(attr("tem-error-kind"), "retries_exhausted");
    assert!(attr("tem-failed-at")
        .parse::<chrono::DateTime<Utc>>()
        .is_ok());
    assert_eq!(attr("tem-source-queue"), ROUTIT_Q);
    assert_eq!(attr("tem-function"), "tem-routit");
    let task = h.tasks.task("task-1");
    assert_eq!(task.status, TaskStatus::Failed);
    assert!(task.error.unwrap().contains("carrier down"));
    assert_eq!(task.failed_ids, vec!["m1".to_string()]);
    let failures = h.failures.records.lock().unwrap();
    let (failure, status, _) = &failures["m1"];
    assert_eq!(status, "failed");
    assert_eq!(
        (
            failure.queue.as_str(),
            failure.queue_url.as_str(),
            failure.dlq_url.as_str()
        ),
        ("routit", ROUTIT_Q, DLQ)
    );
    assert_eq!(
        (failure.attempts, failure.error_kind.as_str()),
        (3, "retries_exhausted")
    );
    assert_eq!(failure.task_id.as_deref(), Some("task-1"));
    assert_eq!(Envelope::parse(&failure.body).unwrap().id, "m1");
    assert!(failure.expires_at - failure.failed_at >= chrono::Duration::days(14));
}

#[tokio::test]
async fn a_permanent_error_dead_letters_on_the_first_attempt() {
    let h = harness(vec![Err(StepError::Permanent("bad credentials".into()))]);
    with_task(&h).await;
    let report = h
        .runtime
        .process(incoming(&message(vec![]), 1), deadline())
        .await;
    assert_eq!(report.disposition, Disposition::DeadLettered);
    assert_eq!(h.queues.on(DLQ).len(), 1);
    assert!(h.queues.visibility.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_step_that_requeues_too_often_is_refused() {
    let h = harness(vec![Ok(StepOutcome::Requeue {
        delay: Duration::from_secs(30),
        payload: json!({"provider": "routit"}),
    })]);
    with_task(&h).await;
    let mut m = message(vec![]);
    let first = h.runtime.process(incoming(&m, 1), deadline()).await;
    assert_eq!(first.disposition, Disposition::Completed);
    let requeued = h.queues.on(ROUTIT_Q);
    assert_eq!(requeued[0].delay_seconds, 30);
    m.requeues = 2;
    m.id = "m-late".into();
    let refused = h.runtime.process(incoming(&m, 1), deadline()).await;
    assert_eq!(refused.disposition, Disposition::DeadLettered);
    assert!(refused.detail.contains("re-enqueue"), "{}", refused.detail);
}

#[tokio::test]
async fn a_chain_deeper_than_the_limit_is_refused_before_running() {
    let h = harness(vec![Ok(StepOutcome::done(json!({})))]);
    let mut m = message(vec![]);
    m.depth = 4;
    let report = h.runtime.process(incoming(&m, 1), deadline()).await;
    assert_eq!(report.disposition, Disposition::DeadLettered);
    assert!(report.detail.contains("depth"));
    assert_eq!(h.handler.calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_failed_send_of_the_next_step_leaves_the_message_for_a_retry() {
    let h = harness(vec![Ok(StepOutcome::done(json!({})))]);
    with_task(&h).await;
    h.queues.broken.lock().unwrap().insert(ROUTIT_Q.into());
    let m = message(vec![poll_link()]);
    let report = h.runtime.process(incoming(&m, 1), deadline()).await;
    assert_eq!(report.disposition, Disposition::Retry);
    assert_eq!(h.tasks.task("task-1").outstanding, 1);
    // Fixed queue: the retry runs again and sends the same child id.
    h.queues.broken.lock().unwrap().clear();
    let retry = h.runtime.process(incoming(&m, 2), deadline()).await;
    assert_eq!(retry.disposition, Disposition::Completed);
    assert_eq!(retry.children, vec![crate::envelope::child_id("m1", "0")]);
}

#[tokio::test]
async fn an_unreachable_dlq_keeps_the_message_on_its_queue() {
    let h = harness(vec![Err(StepError::Permanent("bad".into()))]);
    h.queues.broken.lock().unwrap().insert(DLQ.into());
    let report = h
        .runtime
        .process(incoming(&message(vec![]), 1), deadline())
        .await;
    assert_eq!(report.disposition, Disposition::Retry);
}

#[tokio::test]
async fn one_bad_record_in_a_batch_does_not_return_its_neighbours() {
    let h = harness(vec![Ok(StepOutcome::done(json!({})))]);
    let good = message(vec![]);
    let mut records = vec![incoming(&good, 1), incoming_body("garbage".into(), 1)];
    records[1].message_id = "sqs-2".into();
    let reports = h.runtime.process_batch(records, deadline()).await;
    assert!(reports.iter().all(|r| r.disposition.acknowledged()));
    assert_eq!(reports[0].disposition, Disposition::Completed);
    assert_eq!(reports[1].disposition, Disposition::DeadLettered);
}

/// Counts how many records run at once; each holds its place for a while.
#[derive(Default)]
struct Gauge {
    now: AtomicUsize,
    most: AtomicUsize,
    per_record: u32,
}

#[async_trait]
impl StepHandler for Gauge {
    async fn handle(&self, _m: &Envelope, _d: Delivery) -> Result<StepOutcome, StepError> {
        let now = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.most.fetch_max(now, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(20)).await;
        self.now.fetch_sub(1, Ordering::SeqCst);
        Ok(StepOutcome::done(json!({})))
    }

    fn connections_per_record(&self) -> u32 {
        self.per_record
    }
}

fn gauged(pool_connections: u32, per_record: u32) -> (ChainRuntime, Arc<Gauge>) {
    let gauge = Arc::new(Gauge {
        per_record,
        ..Gauge::default()
    });
    let queues = Arc::new(FakeQueues::default());
    let runtime = ChainRuntime::new(
        gauge.clone(),
        Router::new(BTreeMap::from([(Provider::Routit, ROUTIT_Q.to_string())])),
        ports(
            &queues,
            Arc::new(FakeIdempotency::default()),
            Arc::new(FakeTasks::default()),
        ),
        RuntimeSettings {
            pool_connections,
            ..RuntimeSettings::default()
        },
    );
    (runtime, gauge)
}

fn batch_of(n: usize) -> Vec<IncomingMessage> {
    (0..n)
        .map(|i| {
            let mut m = message(vec![]);
            m.id = format!("m{i}");
            let mut record = incoming(&m, 1);
            record.message_id = format!("sqs-{i}");
            record
        })
        .collect()
}

#[tokio::test]
async fn a_batch_runs_no_more_records_at_once_than_the_pool_has_connections() {
    let (runtime, gauge) = gauged(2, 1);
    let reports = runtime.process_batch(batch_of(10), deadline()).await;
    assert_eq!(runtime.max_in_flight(), 2);
    // Concurrent up to the pool, and never beyond it.
    assert_eq!(gauge.most.load(Ordering::SeqCst), 2);
    assert!(reports
        .iter()
        .all(|r| r.disposition == Disposition::Completed));
    // Reports keep the batch's order, for the partial batch response.
    let ids: Vec<_> = reports.iter().map(|r| r.message_id.clone()).collect();
    assert_eq!(ids, (0..10).map(|i| format!("sqs-{i}")).collect::<Vec<_>>());
}

#[tokio::test]
async fn records_that_hold_several_connections_run_fewer_at_once() {
    let (runtime, gauge) = gauged(6, 3);
    runtime.process_batch(batch_of(10), deadline()).await;
    assert_eq!(gauge.most.load(Ordering::SeqCst), 2);
    // A pool smaller than one record's need still runs one at a time.
    let (runtime, gauge) = gauged(2, 3);
    runtime.process_batch(batch_of(4), deadline()).await;
    assert_eq!(runtime.max_in_flight(), 1);
    assert_eq!(gauge.most.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_totals_calculation_holds_one_connection() {
    // It reads and writes in one transaction; a batch of them may run as
    // many at once as the pool has connections.
    let pool = sqlx::PgPool::connect_lazy("postgres://nobody@127.0.0.1:1/none").unwrap();
    let totals = crate::billing::handler::Totals::new(
        crate::adapters::billing::stores(pool),
        chrono::Duration::days(5),
    );
    assert_eq!(totals.connections_per_record(), 1);
}

fn pool_wait() -> StepError {
    // What the handlers make of sqlx's PoolTimedOut.
    StepError::Retryable(
        format!("database error: {POOL_TIMED_OUT}; the import was rolled back and can be retried")
            .into(),
    )
}

#[tokio::test]
async fn a_pool_wait_on_the_last_attempt_is_not_dead_lettered_but_sent_again_with_the_attempts_spent(
) {
    let h = harness(vec![Err(pool_wait())]);
    with_task(&h).await;
    let m = message(vec![]);
    // max_attempts is 3: a real failure here would be dead-lettered.
    let report = h.runtime.process(incoming(&m, 3), deadline()).await;
    assert_eq!(report.disposition, Disposition::Postponed);
    assert!(report.disposition.acknowledged());
    assert!(h.queues.on(DLQ).is_empty());
    let again = h.queues.on(ROUTIT_Q);
    assert_eq!(again.len(), 1);
    assert!(again[0].delay_seconds >= 1);
    let copy = Envelope::parse(&again[0].body).unwrap();
    assert_eq!(copy.id, m.id);
    // Two attempts were spent before; the one that only waited is not counted.
    assert_eq!(copy.attempt, 2);
    assert_eq!(h.tasks.task("task-1").status, TaskStatus::Running);
}

#[tokio::test]
async fn a_message_waiting_for_the_database_longer_than_the_postpone_limit_is_dead_lettered_on_its_last_attempt(
) {
    let h = harness(vec![Err(pool_wait())]);
    with_task(&h).await;
    let mut m = message(vec![]);
    // A database that has been unreachable for two hours is an outage an
    // operator must see, not a wait to hide.
    m.created_at = chrono::Utc::now() - chrono::Duration::hours(2);
    let report = h.runtime.process(incoming(&m, 3), deadline()).await;
    assert_eq!(report.disposition, Disposition::DeadLettered);
    assert_eq!(h.queues.on(DLQ).len(), 1);
    assert!(h.queues.on(ROUTIT_Q).is_empty());
}

#[tokio::test]
async fn the_copy_of_a_postponed_message_keeps_counting_real_attempts() {
    let h = harness(vec![
        Err(pool_wait()),
        Err(StepError::Retryable("server closed the connection".into())),
    ]);
    with_task(&h).await;
    h.runtime
        .process(incoming(&message(vec![]), 3), deadline())
        .await;
    let copy = Envelope::parse(&h.queues.on(ROUTIT_Q)[0].body).unwrap();
    // The copy's first receive is attempt 3 of 3: a real failure now ends it.
    let report = h.runtime.process(incoming(&copy, 1), deadline()).await;
    assert_eq!(report.disposition, Disposition::DeadLettered);
    let dead = h.queues.on(DLQ);
    let attempts = dead[0]
        .attributes
        .iter()
        .find(|(k, _)| k == "tem-attempts")
        .unwrap();
    assert_eq!(attempts.1, "3");
    assert!(
        report.detail.contains("after 3 attempts"),
        "{}",
        report.detail
    );
}

#[tokio::test]
async fn a_postponed_message_runs_again_after_about_a_second_and_each_further_postponement_waits_twice_as_long(
) {
    let h = harness(vec![Err(pool_wait()), Err(pool_wait()), Err(pool_wait())]);
    with_task(&h).await;
    let mut m = message(vec![]);
    let mut ceilings = vec![];
    for round in 1..=3u32 {
        h.runtime.process(incoming(&m, 1), deadline()).await;
        let sent = h.queues.on(ROUTIT_Q);
        let copy = sent.last().unwrap();
        ceilings.push(copy.delay_seconds);
        m = Envelope::parse(&copy.body).unwrap();
        assert_eq!(m.postponements, round);
        assert_eq!(m.attempt, 0, "waiting is no attempt");
    }
    // Equal jitter: between half and all of 1, 2 and 4 seconds, in whole
    // seconds (SQS delays), not the retry back-off's 4 s and more.
    assert!(ceilings[0] == 1, "{ceilings:?}");
    assert!((1..=2).contains(&ceilings[1]), "{ceilings:?}");
    assert!((2..=4).contains(&ceilings[2]), "{ceilings:?}");
}

#[tokio::test]
async fn a_postponed_copy_that_succeeds_completes_its_task() {
    let h = harness(vec![Err(pool_wait()), Ok(StepOutcome::done(json!({})))]);
    with_task(&h).await;
    h.runtime
        .process(incoming(&message(vec![]), 1), deadline())
        .await;
    let copy = Envelope::parse(&h.queues.on(ROUTIT_Q)[0].body).unwrap();
    assert_eq!(copy.attempt, 0);
    let report = h.runtime.process(incoming(&copy, 1), deadline()).await;
    assert_eq!(report.disposition, Disposition::Completed);
    assert_eq!(h.tasks.task("task-1").status, TaskStatus::Completed);
    assert_eq!(h.handler.calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_pool_wait_without_a_source_queue_is_left_for_a_retry() {
    let h = harness(vec![Err(pool_wait())]);
    let runtime_settings = RuntimeSettings {
        max_attempts: 1,
        ..RuntimeSettings::default()
    };
    let runtime = ChainRuntime::new(
        h.handler.clone(),
        Router::new(BTreeMap::new()),
        ports(
            &h.queues,
            Arc::new(FakeIdempotency::default()),
            h.tasks.clone(),
        ),
        runtime_settings,
    );
    let report = runtime
        .process(incoming(&message(vec![]), 1), deadline())
        .await;
    assert_eq!(report.disposition, Disposition::Retry);
    assert!(report.detail.contains("not attempted"), "{}", report.detail);
    assert!(h.queues.sent.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_real_pool_timeout_in_the_totals_handler_is_postponed_on_the_last_attempt() {
    // Nothing listens on port 1: sqlx retries the refused connection until
    // the acquire timeout and reports PoolTimedOut, as with a busy pool.
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_millis(200))
        .connect_lazy("postgres://nobody@127.0.0.1:1/none")
        .unwrap();
    let queues = Arc::new(FakeQueues::default());
    let runtime = ChainRuntime::new(
        Arc::new(crate::billing::handler::Totals::new(
            crate::adapters::billing::stores(pool),
            chrono::Duration::days(5),
        )),
        Router::new(BTreeMap::new()),
        ports(
            &queues,
            Arc::new(FakeIdempotency::default()),
            Arc::new(FakeTasks::default()),
        ),
        RuntimeSettings {
            source_queue_url: Some("q/totals".into()),
            dlq_url: Some("q/totals-dlq".into()),
            max_attempts: 3,
            ..RuntimeSettings::default()
        },
    );
    let m = Envelope::root(
        "t1",
        Step::DispatchTotals,
        json!({"customer_id": 1, "cycle": "2025-01-01"}),
        vec![],
        None,
        Utc::now(),
    );
    let report = runtime.process(incoming(&m, 3), deadline()).await;
    assert_eq!(
        report.disposition,
        Disposition::Postponed,
        "{}",
        report.detail
    );
    assert!(queues.on("q/totals-dlq").is_empty());
    let copy = Envelope::parse(&queues.on("q/totals")[0].body).unwrap();
    assert_eq!((copy.id.as_str(), copy.attempt), ("t1", 2));
}

// --- retries of dead letters, live claims, task accounting, the journal ---

fn permanent(reason: &str) -> Result<StepOutcome, StepError> {
    Err(StepError::Permanent(reason.into()))
}

#[tokio::test]
async fn a_dead_lettered_message_runs_again_on_redelivery_and_reopens_its_task() {
    let h = harness(vec![
        permanent("carrier refused"),
        Ok(StepOutcome::done(json!({}))),
    ]);
    with_task(&h).await;
    let m = message(vec![]);
    let first = h.runtime.process(incoming(&m, 1), deadline()).await;
    assert_eq!(first.disposition, Disposition::DeadLettered);
    assert_eq!(h.idempotency.status("m1").as_deref(), Some("dead_lettered"));
    assert_eq!(h.tasks.task("task-1").status, TaskStatus::Failed);

    // The DLQ's body, moved back unchanged (console redrive or a retry).
    let again = h.runtime.process(incoming(&m, 1), deadline()).await;
    assert_eq!(
        again.disposition,
        Disposition::Completed,
        "{}",
        again.detail
    );
    assert_eq!(h.handler.calls.load(Ordering::SeqCst), 2);
    let task = h.tasks.task("task-1");
    assert_eq!((task.status, task.outstanding), (TaskStatus::Completed, 0));
    assert!(task.failed_ids.is_empty());
    assert!(
        task.notes
            .iter()
            .any(|n| n.ends_with("reopened: message m1 runs again")),
        "{:?}",
        task.notes
    );
    assert_eq!(h.failures.status("m1").as_deref(), Some("retried"));
    assert_eq!(
        h.failures.records.lock().unwrap()["m1"].2.as_deref(),
        Some("redrive")
    );
    assert_eq!(h.idempotency.status("m1").as_deref(), Some("completed"));
}

#[tokio::test]
async fn a_retried_dead_letter_gets_its_claim_back_and_its_attempts_start_again() {
    let h = harness(vec![
        Err(StepError::Retryable("carrier down".into())),
        Err(StepError::Retryable("carrier still down".into())),
        Ok(StepOutcome::done(json!({}))),
    ]);
    with_task(&h).await;
    let m = message(vec![]);
    // The last attempt (max_attempts is 3) dead-letters.
    let dead = h.runtime.process(incoming(&m, 3), deadline()).await;
    assert_eq!(dead.disposition, Disposition::DeadLettered);
    // The retry is a new SQS message: receive count 1, far from the limit.
    let retry = h.runtime.process(incoming(&m, 1), deadline()).await;
    assert_eq!(retry.disposition, Disposition::Retry, "{}", retry.detail);
    assert_eq!(h.queues.on(DLQ).len(), 1);
    assert_eq!(h.tasks.task("task-1").status, TaskStatus::Running);
    // Its claim is given back marked dead-lettered, so the attempt that
    // completes still resolves the failure.
    assert_eq!(h.idempotency.status("m1").as_deref(), Some("dead_lettered"));
    let done = h.runtime.process(incoming(&m, 2), deadline()).await;
    assert_eq!(done.disposition, Disposition::Completed, "{}", done.detail);
    assert_eq!(h.tasks.task("task-1").status, TaskStatus::Completed);
    assert_eq!(h.failures.status("m1").as_deref(), Some("retried"));
}

#[tokio::test]
async fn a_live_claim_is_waited_for_for_its_remaining_time() {
    let h = harness(vec![Ok(StepOutcome::done(json!({})))]);
    let now = Utc::now();
    h.idempotency.records.lock().unwrap().insert(
        "m1".into(),
        (
            "in_progress".into(),
            now + chrono::Duration::seconds(600),
            String::new(),
        ),
    );
    let report = h
        .runtime
        .process(incoming(&message(vec![]), 1), deadline())
        .await;
    assert_eq!(report.disposition, Disposition::Retry);
    assert_eq!(h.handler.calls.load(Ordering::SeqCst), 0);
    let (_, seconds) = h.queues.visibility.lock().unwrap()[0].clone();
    // 600 s left, plus one, minus the time the test took to get here.
    assert!((599..=601).contains(&seconds), "{seconds}");
}

#[tokio::test]
async fn a_claim_held_longer_than_sqs_can_hide_a_message_waits_twelve_hours() {
    let h = harness(vec![Ok(StepOutcome::done(json!({})))]);
    h.idempotency.records.lock().unwrap().insert(
        "m1".into(),
        (
            "in_progress".into(),
            Utc::now() + chrono::Duration::days(2),
            String::new(),
        ),
    );
    h.runtime
        .process(incoming(&message(vec![]), 1), deadline())
        .await;
    assert_eq!(h.queues.visibility.lock().unwrap()[0].1, 43_200);
}

#[tokio::test]
async fn a_task_never_goes_below_zero() {
    let h = harness(vec![Ok(StepOutcome::done(json!({})))]);
    with_task(&h).await;
    let now = Utc::now();
    for id in ["a", "b", "c"] {
        let progress = h
            .tasks
            .branch_done("task-1", id, 0, HandoffChange::None, now)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(progress.outstanding, 0);
    }
    assert_eq!(h.tasks.task("task-1").outstanding, 0);
}

#[tokio::test]
async fn a_failed_branch_then_retried_completes_the_task() {
    let h = harness(vec![
        Ok(StepOutcome::Fork {
            branches: vec![poll_link(), poll_link()],
        }),
        permanent("export broken"),
        Ok(StepOutcome::done(json!({}))),
    ]);
    with_task(&h).await;
    h.runtime
        .process(incoming(&message(vec![]), 1), deadline())
        .await;
    let branches: Vec<Envelope> = h
        .queues
        .on(ROUTIT_Q)
        .iter()
        .map(|m| Envelope::parse(&m.body).unwrap())
        .collect();
    assert_eq!(branches.len(), 2);
    let failed = h
        .runtime
        .process(incoming(&branches[0], 1), deadline())
        .await;
    assert_eq!(failed.disposition, Disposition::DeadLettered);
    h.runtime
        .process(incoming(&branches[1], 1), deadline())
        .await;
    let task = h.tasks.task("task-1");
    assert_eq!((task.status, task.outstanding), (TaskStatus::Failed, 1));

    let retried = h
        .runtime
        .process(incoming(&branches[0], 1), deadline())
        .await;
    assert_eq!(retried.disposition, Disposition::Completed);
    let task = h.tasks.task("task-1");
    assert_eq!((task.status, task.outstanding), (TaskStatus::Completed, 0));
    assert!(task.error.is_none() && task.failed_ids.is_empty());
}

#[tokio::test]
async fn a_finished_task_is_never_failed_or_completed_again() {
    let h = harness(vec![Ok(StepOutcome::done(json!({})))]);
    with_task(&h).await;
    h.runtime
        .process(incoming(&message(vec![]), 1), deadline())
        .await;
    let completed = h.tasks.task("task-1");
    assert_eq!(completed.status, TaskStatus::Completed);
    let later = Utc::now() + chrono::Duration::hours(1);
    h.tasks
        .mark_failed("task-1", "other", "late failure", later)
        .await
        .unwrap();
    h.tasks
        .branch_done("task-1", "other", 0, HandoffChange::None, later)
        .await
        .unwrap();
    let task = h.tasks.task("task-1");
    assert_eq!(task.status, TaskStatus::Completed);
    assert_eq!(task.finished_at, completed.finished_at);
    assert_eq!(task.outstanding, 0);
    assert!(task.failed_ids.is_empty());

    // A failed task is not completed by a branch either, only after a retry.
    let h = harness(vec![Ok(StepOutcome::done(json!({})))]);
    with_task(&h).await;
    h.tasks
        .mark_failed("task-1", "x", "broken", Utc::now())
        .await
        .unwrap();
    h.runtime
        .process(incoming(&message(vec![]), 1), deadline())
        .await;
    assert_eq!(h.tasks.task("task-1").status, TaskStatus::Failed);
}

#[tokio::test]
async fn every_attempt_is_journaled_at_its_start_and_end_with_its_outcome() {
    let h = harness(vec![
        Err(StepError::Retryable("carrier down".into())),
        Ok(StepOutcome::done(json!({}))),
    ]);
    with_task(&h).await;
    let m = message(vec![poll_link()]);
    h.runtime.process(incoming(&m, 1), deadline()).await;
    h.runtime.process(incoming(&m, 2), deadline()).await;
    let starts = h.journal.starts.lock().unwrap().clone();
    let ends = h.journal.ends.lock().unwrap().clone();
    assert_eq!(starts.len(), 2);
    assert_eq!(
        starts.iter().map(|s| s.attempt).collect::<Vec<_>>(),
        vec![1, 2]
    );
    for start in &starts {
        assert_eq!(start.message_id, "m1");
        assert_eq!(start.step, "SyncProfile");
        assert_eq!(start.function_name, "tem-routit");
        assert_eq!(start.queue.as_deref(), Some("routit"));
        assert_eq!(start.provider.as_deref(), Some("routit"));
        assert_eq!(start.task_id.as_deref(), Some("task-1"));
        assert_eq!(start.trace_id, m.trace_id);
        assert_eq!(
            start.expires_at - start.started_at,
            chrono::Duration::days(14)
        );
    }
    assert_eq!(ends.iter().map(|e| e.0).collect::<Vec<_>>(), vec![1, 2]);
    assert_eq!(ends[0].1.outcome, Disposition::Retry);
    assert!(ends[0].1.error.as_deref().unwrap().contains("carrier down"));
    assert_eq!(ends[1].1.outcome, Disposition::Completed);
    assert_eq!(ends[1].1.error, None);
    assert_eq!(ends[1].1.children.len(), 1);
}

#[tokio::test]
async fn a_dead_letter_is_journaled_with_its_error_kind() {
    let h = harness(vec![permanent("bad credentials")]);
    h.runtime
        .process(incoming(&message(vec![]), 1), deadline())
        .await;
    let ends = h.journal.ends.lock().unwrap().clone();
    assert_eq!(ends[0].1.outcome, Disposition::DeadLettered);
    assert_eq!(ends[0].1.error_kind.as_deref(), Some("permanent"));
}

#[tokio::test]
async fn a_journal_or_failure_log_that_fails_does_not_fail_the_message() {
    let h = harness(vec![
        Ok(StepOutcome::done(json!({}))),
        permanent("bad credentials"),
    ]);
    with_task(&h).await;
    h.journal.broken.store(true, Ordering::SeqCst);
    h.failures.broken.store(true, Ordering::SeqCst);
    let ok = h
        .runtime
        .process(incoming(&message(vec![poll_link()]), 1), deadline())
        .await;
    assert_eq!(ok.disposition, Disposition::Completed);
    assert_eq!(h.queues.on(ROUTIT_Q).len(), 1);
    let mut other = message(vec![]);
    other.id = "m2".into();
    let dead = h.runtime.process(incoming(&other, 1), deadline()).await;
    assert_eq!(dead.disposition, Disposition::DeadLettered);
    assert_eq!(h.queues.on(DLQ).len(), 1);
}

// --- hand-offs: an import counts on a task only while it has the hand-off open ---

const TOKEN: &str = "s3://cdr/inbox/routit/1/2025-01-01/e1.zip";

fn import_of(token: &str, id: &str) -> Envelope {
    let mut m = Envelope::root(
        id,
        Step::ImportCdrFile,
        json!({"bucket": "cdr", "key": token.trim_start_matches("s3://cdr/")}),
        vec![],
        Some("task-1".into()),
        Utc::now(),
    );
    m.handoff = Some(token.to_string());
    m
}

/// A task whose export was handed off and whose import then completed it.
async fn completed_through_a_hand_off(h: &Harness) -> crate::tasks::SyncTask {
    with_task(h).await;
    let sync = h
        .runtime
        .process(incoming(&message(vec![]), 1), deadline())
        .await;
    assert_eq!(sync.disposition, Disposition::Completed);
    assert_eq!(
        h.tasks.handoffs("task-1").into_iter().collect::<Vec<_>>(),
        vec![TOKEN.to_string()]
    );
    assert_eq!(h.tasks.task("task-1").outstanding, 1);
    let import = h
        .runtime
        .process(incoming(&import_of(TOKEN, "import-1"), 1), deadline())
        .await;
    assert_eq!(import.task_id.as_deref(), Some("task-1"));
    let task = h.tasks.task("task-1");
    assert_eq!((task.status, task.outstanding), (TaskStatus::Completed, 0));
    assert!(h.tasks.handoffs("task-1").is_empty());
    task
}

fn hand_off() -> Result<StepOutcome, StepError> {
    Ok(StepOutcome::HandOff { via: TOKEN.into() })
}

#[tokio::test]
async fn an_import_continuing_an_open_hand_off_counts_on_its_task_and_closes_it() {
    let h = harness(vec![hand_off(), Ok(StepOutcome::done(json!({})))]);
    completed_through_a_hand_off(&h).await;
    let ends = h.journal.ends.lock().unwrap().clone();
    assert_eq!(ends[0].1.handoff.as_deref(), Some(TOKEN));
    assert_eq!(ends[1].1.handoff.as_deref(), Some(TOKEN));
}

#[tokio::test]
async fn an_export_copied_with_the_originals_metadata_does_not_touch_the_completed_task() {
    let h = harness(vec![hand_off(), Ok(StepOutcome::done(json!({})))]);
    let completed = completed_through_a_hand_off(&h).await;
    let copy = import_of("s3://cdr/reimport/e1.zip", "import-of-the-copy");
    let report = h.runtime.process(incoming(&copy, 1), deadline()).await;
    assert_eq!(report.disposition, Disposition::Completed);
    assert_eq!(report.task_id, None);
    let task = h.tasks.task("task-1");
    assert_eq!(task.outstanding, 0);
    assert_eq!(task.status, TaskStatus::Completed);
    assert_eq!(task.finished_at, completed.finished_at);
    assert_eq!(h.journal.starts.lock().unwrap()[2].task_id, None);
}

#[tokio::test]
async fn an_object_put_by_hand_with_a_finished_tasks_id_and_a_failing_import_leaves_the_task_completed(
) {
    let h = harness(vec![
        hand_off(),
        Ok(StepOutcome::done(json!({}))),
        permanent("not a CDR export"),
    ]);
    let completed = completed_through_a_hand_off(&h).await;
    // The same key put again by hand: a new object version, a new message id.
    let by_hand = import_of(TOKEN, "import-by-hand");
    let report = h.runtime.process(incoming(&by_hand, 1), deadline()).await;
    assert_eq!(report.disposition, Disposition::DeadLettered);
    let task = h.tasks.task("task-1");
    assert_eq!(task.status, TaskStatus::Completed);
    assert_eq!(task.finished_at, completed.finished_at);
    assert!(task.failed_ids.is_empty());
    assert_eq!(
        h.failures.records.lock().unwrap()["import-by-hand"]
            .0
            .task_id,
        None
    );
}

#[tokio::test]
async fn a_redelivered_import_that_already_counted_is_still_adopted() {
    let h = harness(vec![hand_off(), Ok(StepOutcome::done(json!({})))]);
    completed_through_a_hand_off(&h).await;
    // Its completion was not recorded (idempotency store down), so it runs again.
    h.idempotency.records.lock().unwrap().remove("import-1");
    let again = h
        .runtime
        .process(incoming(&import_of(TOKEN, "import-1"), 1), deadline())
        .await;
    assert_eq!(again.task_id.as_deref(), Some("task-1"));
    assert_eq!(h.tasks.task("task-1").outstanding, 0);
}

#[tokio::test]
async fn an_import_of_a_task_that_failed_meanwhile_is_still_adopted_and_retried_into_completion() {
    let h = harness(vec![
        hand_off(),
        permanent("corrupt zip"),
        Ok(StepOutcome::done(json!({}))),
    ]);
    with_task(&h).await;
    h.runtime
        .process(incoming(&message(vec![]), 1), deadline())
        .await;
    let import = import_of(TOKEN, "import-1");
    let failed = h.runtime.process(incoming(&import, 1), deadline()).await;
    assert_eq!(failed.disposition, Disposition::DeadLettered);
    assert_eq!(h.tasks.task("task-1").status, TaskStatus::Failed);
    h.tasks
        .update("task-1", |t| t.task.notes.push("kept".into()));
    let retried = h.runtime.process(incoming(&import, 1), deadline()).await;
    assert_eq!(retried.disposition, Disposition::Completed);
    let task = h.tasks.task("task-1");
    assert_eq!((task.status, task.outstanding), (TaskStatus::Completed, 0));
    assert_eq!(task.notes[0], "kept");
}

// --- the step span ---

/// Records the fields of every `step` span, as a log line's span list shows them.
#[derive(Clone, Default)]
struct StepFields(Arc<Mutex<BTreeMap<String, String>>>);

struct Visit<'a>(&'a mut BTreeMap<String, String>);

impl tracing::field::Visit for Visit<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0.insert(
            field.name().to_string(),
            format!("{value:?}").trim_matches('"').to_string(),
        );
    }

    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.0.insert(field.name().to_string(), value.to_string());
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for StepFields {
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        _id: &tracing::span::Id,
        _ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        if attrs.metadata().name() == "step" {
            attrs.record(&mut Visit(&mut self.0.lock().unwrap()));
        }
    }

    fn on_record(
        &self,
        _id: &tracing::span::Id,
        values: &tracing::span::Record<'_>,
        _ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        values.record(&mut Visit(&mut self.0.lock().unwrap()));
    }
}

#[tokio::test]
async fn the_step_span_carries_the_trace_id_with_the_task_message_step_provider_and_attempt() {
    use tracing_subscriber::layer::SubscriberExt;
    let fields = StepFields::default();
    let _guard =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(fields.clone()));
    let h = harness(vec![Ok(StepOutcome::done(json!({})))]);
    with_task(&h).await;
    let mut m = message(vec![]);
    m.trace_id = "trace-of-the-sync".into();
    h.runtime.process(incoming(&m, 2), deadline()).await;
    let recorded = fields.0.lock().unwrap().clone();
    let get = |name: &str| recorded.get(name).cloned().unwrap_or_default();
    assert_eq!(get("trace_id"), "trace-of-the-sync");
    assert_eq!(get("task_id"), "task-1");
    assert_eq!(get("message_id"), "m1");
    assert_eq!(get("step"), "SyncProfile");
    assert_eq!(get("provider"), "routit");
    assert_eq!(get("attempt"), "2");
}

#[tokio::test]
async fn a_payload_that_does_not_parse_is_dead_lettered_at_once_naming_the_step_and_what_it_expects(
) {
    // The handler reads the payload before it touches the database.
    let pool = sqlx::PgPool::connect_lazy("postgres://nobody@127.0.0.1:1/none").unwrap();
    let queues = Arc::new(FakeQueues::default());
    let runtime = ChainRuntime::new(
        Arc::new(crate::billing::handler::Totals::new(
            crate::adapters::billing::stores(pool),
            chrono::Duration::days(5),
        )),
        Router::new(BTreeMap::new()),
        ports(
            &queues,
            Arc::new(FakeIdempotency::default()),
            Arc::new(FakeTasks::default()),
        ),
        RuntimeSettings {
            source_queue_url: Some("q/totals".into()),
            dlq_url: Some("q/totals-dlq".into()),
            max_attempts: 3,
            ..RuntimeSettings::default()
        },
    );
    let m = Envelope::root(
        "t-bad",
        Step::BackupTotals,
        json!({"customer_id": 1, "cycle": "first of January"}),
        vec![],
        None,
        Utc::now(),
    );
    let report = runtime.process(incoming(&m, 1), deadline()).await;
    assert_eq!(report.disposition, Disposition::DeadLettered);
    assert_eq!(report.error_kind.as_deref(), Some("permanent"));
    let dead = queues.on("q/totals-dlq");
    let error = &dead[0]
        .attributes
        .iter()
        .find(|(k, _)| k == "tem-error")
        .unwrap()
        .1;
    assert!(
        error.starts_with("BackupTotals payload is invalid: cycle:"),
        "{error}"
    );
    assert!(error.contains(r#"expects {"customer_id": 1"#), "{error}");
}

#[tokio::test]
async fn a_pool_wait_is_recognised_by_its_source_error_whatever_the_text_says() {
    // Two answers, so the first is handed out as it is (a replayed one
    // would lose its source).
    let h = harness(vec![
        Err(StepError::Retryable(Reason::with_source(
            "could not load the customer",
            sqlx::Error::PoolTimedOut,
        ))),
        Ok(StepOutcome::finished()),
    ]);
    with_task(&h).await;
    let report = h
        .runtime
        .process(incoming(&message(vec![]), 3), deadline())
        .await;
    assert_eq!(
        report.disposition,
        Disposition::Postponed,
        "{}",
        report.detail
    );
    assert!(h.queues.on(DLQ).is_empty());
}

#[test]
fn a_step_error_keeps_its_source_and_its_retryability() {
    let error = StepError::retryable(sqlx::Error::PoolTimedOut);
    assert!(error.is_retryable());
    assert_eq!(error.reason(), POOL_TIMED_OUT);
    let source = std::error::Error::source(&error).expect("the sqlx error is kept");
    assert!(matches!(
        source.downcast_ref::<sqlx::Error>(),
        Some(sqlx::Error::PoolTimedOut)
    ));
    let permanent =
        StepError::permanent(crate::routing::RoutingError::UnknownProvider("ben".into()));
    assert!(!permanent.is_retryable());
    assert!(permanent.to_string().contains("known providers"));
}
