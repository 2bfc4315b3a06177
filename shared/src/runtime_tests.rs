//! Unit tests of the chain runtime against in-memory fakes.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use serde_json::json;

use crate::envelope::{ChainLink, Envelope, Step};
use crate::fakes::{FakeIdempotency, FakeQueues, FakeTasks};
use crate::ports::TaskStore;
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
            answers.front().cloned().unwrap()
        }
    }
}

struct Harness {
    runtime: ChainRuntime,
    handler: Arc<Scripted>,
    queues: Arc<FakeQueues>,
    tasks: Arc<FakeTasks>,
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
    };
    let runtime = ChainRuntime::new(
        handler.clone(),
        Router::new(BTreeMap::from([(Provider::Routit, ROUTIT_Q.to_string())])),
        queues.clone(),
        queues.clone(),
        Arc::new(FakeIdempotency::default()),
        tasks.clone(),
        settings,
    );
    Harness {
        runtime,
        handler,
        queues,
        tasks,
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
    ChainLink::new(Step::RoutitPollExport, json!({"provider": "routit"}))
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
        output: json!({"key": "inbox/x.zip"}),
        via: "the import of inbox/x.zip".into(),
    })]);
    with_task(&h).await;
    let report = h
        .runtime
        .process(incoming(&message(vec![]), 1), deadline())
        .await;
    assert_eq!(report.disposition, Disposition::Completed);
    assert!(
        report.detail.contains("the import of inbox/x.zip"),
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
    let task = h.tasks.task("task-1");
    assert_eq!(task.status, TaskStatus::Failed);
    assert!(task.error.unwrap().contains("carrier down"));
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
