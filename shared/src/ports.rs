//! Narrow traits at the edges. Domain code talks to queues, stores and
//! buckets only through these, never through SDK types; `adapters/` holds the
//! AWS and PostgreSQL implementations, and unit tests use in-memory fakes.

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};

use crate::runtime::Disposition;
use crate::sync::manager::RunSummary;
use crate::sync::profile::{ProfileSelection, SyncProfile, WatermarkAdvance};
use crate::tasks::{NewTask, SyncTask, TaskProgress, TaskStatus};

/// A failure of an external system. It is always worth a retry: the request
/// may succeed once the service is reachable again.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
#[error("{operation} failed: {message}")]
pub struct PortError {
    pub operation: &'static str,
    pub message: String,
}

impl PortError {
    pub fn new(operation: &'static str, message: impl std::fmt::Display) -> Self {
        Self {
            operation,
            message: message.to_string(),
        }
    }
}

/// A failure of a store a domain reads or writes through a narrow trait
/// (PostgreSQL for billing), with the error it came from kept as its
/// source: the runtime finds a pool timeout in a step's error by walking
/// the sources, and its text is the source's, so a step's reason reads as
/// the database said it.
#[derive(Debug, thiserror::Error)]
#[error("{source}")]
pub struct StoreError {
    /// Whether another attempt may succeed, as the adapter judged it.
    pub retryable: bool,
    pub source: crate::runtime::BoxError,
}

impl StoreError {
    /// A failure worth another attempt.
    pub fn retryable(source: impl Into<crate::runtime::BoxError>) -> Self {
        Self {
            retryable: true,
            source: source.into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct OutgoingMessage {
    /// The envelope id; also the batch entry id, so failures can be matched.
    pub id: String,
    pub body: String,
    pub delay_seconds: u32,
    pub attributes: Vec<(String, String)>,
}

impl OutgoingMessage {
    pub fn new(id: impl Into<String>, body: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            body: body.into(),
            delay_seconds: 0,
            attributes: Vec::new(),
        }
    }
}

/// A message the queue refused even after the adapter's own retries.
#[derive(Debug, Clone, PartialEq)]
pub struct FailedSend {
    pub id: String,
    pub reason: String,
}

/// SQS takes at most ten messages per `SendMessageBatch`.
pub const SEND_BATCH_SIZE: usize = 10;

/// How [`QueueSend::send_all`] splits its messages into calls: in order,
/// ten per call, so every call but the last is full.
pub fn send_batches(messages: &[OutgoingMessage]) -> std::slice::Chunks<'_, OutgoingMessage> {
    messages.chunks(SEND_BATCH_SIZE)
}

#[async_trait]
pub trait QueueSend: Send + Sync {
    /// Sends all messages (ten per call: every call but the last is full),
    /// retrying entries the queue refused; returns those that still failed.
    /// An error means a call failed, and the messages after it may not have
    /// been sent.
    async fn send_all(
        &self,
        queue_url: &str,
        messages: Vec<OutgoingMessage>,
    ) -> Result<Vec<FailedSend>, PortError>;
}

#[async_trait]
pub trait QueueVisibility: Send + Sync {
    /// Hides a received message for `seconds`; this is how retries back off.
    async fn set_visibility(
        &self,
        queue_url: &str,
        receipt_handle: &str,
        seconds: i32,
    ) -> Result<(), PortError>;
}

/// The result of trying to take a message id for processing.
#[derive(Debug, Clone, PartialEq)]
pub enum Claim {
    /// Nobody holds this id; it is ours until `expires_at`.
    /// `after_dead_letter`: the id was dead-lettered before and this is a
    /// retry (an operator's, or a console DLQ redrive), so its task is
    /// reopened and its failure resolved when it completes.
    Acquired { after_dead_letter: bool },
    /// Processed before; the recorded outcome.
    Completed { outcome: String },
    /// Another invocation holds it and its deadline has not passed.
    InProgress { expires_at: DateTime<Utc> },
}

#[async_trait]
pub trait IdempotencyStore: Send + Sync {
    async fn claim(
        &self,
        message_id: &str,
        now: DateTime<Utc>,
        expires_at: DateTime<Utc>,
    ) -> Result<Claim, PortError>;
    async fn complete(
        &self,
        message_id: &str,
        outcome: &str,
        now: DateTime<Utc>,
    ) -> Result<(), PortError>;
    /// Gives the id back after a retryable failure, so the retry can claim it.
    async fn release(&self, message_id: &str) -> Result<(), PortError>;
    /// Records that the id failed for good, so a later delivery (a retry)
    /// may claim it again. Never overwrites a `completed` record.
    async fn dead_lettered(
        &self,
        message_id: &str,
        reason: &str,
        now: DateTime<Utc>,
    ) -> Result<(), PortError>;
}

/// Outcome of creating a sync task.
#[derive(Debug, Clone, PartialEq)]
pub enum TaskCreation {
    Created,
    /// The same task id exists already: this run was delivered twice.
    AlreadyExists,
    /// Another task became the profile's current one in the meantime.
    Superseded {
        current_task_id: String,
    },
}

#[async_trait]
pub trait TaskStore: Send + Sync {
    /// Creates the task and makes it the profile's current task, unless the
    /// profile's current task changed since `previous_task_id` was read.
    async fn create(
        &self,
        task: &NewTask,
        previous_task_id: Option<&str>,
    ) -> Result<TaskCreation, PortError>;
    async fn get(&self, task_id: &str) -> Result<Option<SyncTask>, PortError>;
    async fn current_for_profile(&self, profile_id: i64) -> Result<Option<SyncTask>, PortError>;
    async fn mark_running(&self, task_id: &str, now: DateTime<Utc>) -> Result<(), PortError>;
    /// Records that message `message_id` of the task finished and started
    /// `new_branches` messages. Counted once per message id, however often
    /// it is called, and only while the task has branches outstanding (and,
    /// for [`HandoffChange::Closes`], while the hand-off is open); completes
    /// the task when no branch is left, unless it is already finished. The
    /// count never goes below zero. `None` when the task does not exist
    /// (expired, or a hand-made message).
    async fn branch_done(
        &self,
        task_id: &str,
        message_id: &str,
        new_branches: u32,
        handoff: HandoffChange<'_>,
        now: DateTime<Utc>,
    ) -> Result<Option<TaskProgress>, PortError>;
    /// Fails the task because message `message_id` is now in a DLQ. A
    /// completed task stays completed.
    async fn mark_failed(
        &self,
        task_id: &str,
        message_id: &str,
        reason: &str,
        now: DateTime<Utc>,
    ) -> Result<(), PortError>;
    /// Message `message_id` runs again (a retry of a dead letter): it no
    /// longer counts as failed, and a failed task with no failed message left
    /// is running again. The task's status afterwards; `None` when there is
    /// no such task.
    async fn reopen(
        &self,
        task_id: &str,
        message_id: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<TaskStatus>, PortError>;
    /// Whether message `message_id` continuing hand-off `token` may count on
    /// the task: the task has that hand-off open, or this very message was
    /// already counted on it (a redelivery).
    async fn adoptable(
        &self,
        task_id: &str,
        token: &str,
        message_id: &str,
    ) -> Result<bool, PortError>;
}

/// What a fan-out over many profiles (sync-manager) needs of the task
/// store: the reads and creations of [`TaskStore`], many profiles per
/// call. The defaults go one profile at a time; a store that can do better
/// (DynamoDB's batch reads and transactions) says so, with the same
/// results.
#[async_trait]
pub trait TaskFanOut: TaskStore {
    /// [`TaskStore::current_for_profile`] of each profile, in the order
    /// given; a failure fails only the profiles it concerns.
    async fn current_for_profiles(
        &self,
        profile_ids: &[i64],
    ) -> Vec<Result<Option<SyncTask>, PortError>> {
        let mut found = Vec::with_capacity(profile_ids.len());
        for id in profile_ids {
            found.push(self.current_for_profile(*id).await);
        }
        found
    }

    /// [`TaskStore::create`] of each task with the profile's task id read
    /// before, in the order given: each answers as its own `create` would.
    async fn create_all(
        &self,
        tasks: &[(NewTask, Option<String>)],
    ) -> Vec<Result<TaskCreation, PortError>> {
        let mut created = Vec::with_capacity(tasks.len());
        for (task, previous) in tasks {
            created.push(self.create(task, previous.as_deref()).await);
        }
        created
    }
}

/// What a finished branch does to the task's open hand-offs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandoffChange<'a> {
    None,
    /// The step handed its branch off through this token (`s3://bucket/key`).
    Opens(&'a str),
    /// The step continued the hand-off with this token (the import).
    Closes(&'a str),
}

/// One attempt of a step as it starts (a `step_run` row).
#[derive(Debug, Clone, PartialEq)]
pub struct StepStart {
    pub message_id: String,
    pub attempt: u32,
    pub step: String,
    pub function_name: String,
    /// The source queue's name; `None` when invoked directly.
    pub queue: Option<String>,
    pub provider: Option<String>,
    pub task_id: Option<String>,
    pub trace_id: String,
    pub depth: u32,
    pub chain_started_at: DateTime<Utc>,
    pub started_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

/// How an attempt ended.
#[derive(Debug, Clone, PartialEq)]
pub struct StepEnd {
    pub finished_at: DateTime<Utc>,
    pub outcome: Disposition,
    pub error: Option<String>,
    pub error_kind: Option<String>,
    pub children: Vec<String>,
    pub handoff: Option<String>,
}

/// The history of every attempt of every step, for timelines and for a
/// failure's attempt history.
#[async_trait]
pub trait StepJournal: Send + Sync {
    /// Records an attempt's start; returns the record's id for [`Self::finished`].
    async fn started(&self, start: &StepStart) -> Result<i64, PortError>;
    async fn finished(&self, id: i64, end: &StepEnd) -> Result<(), PortError>;
}

/// A message that failed for good (a `failed_message` row).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct FailureRecord {
    /// The envelope id, or `sqs:<MessageId>` for a body that is no envelope.
    pub id: String,
    pub queue: String,
    pub queue_url: String,
    pub dlq_url: String,
    pub function_name: Option<String>,
    pub step: Option<String>,
    pub provider: Option<String>,
    pub task_id: Option<String>,
    pub trace_id: Option<String>,
    pub body: String,
    pub error_kind: String,
    pub error: String,
    pub attempts: u32,
    pub failed_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

#[async_trait]
pub trait FailureLog: Send + Sync {
    /// Records a failure; a message failing again reopens its record.
    async fn record(&self, failure: &FailureRecord) -> Result<(), PortError>;
    /// Marks an open failure resolved by `by` (e.g. "redrive"); whether one was open.
    async fn resolved(&self, id: &str, by: &str, now: DateTime<Utc>) -> Result<bool, PortError>;
}

#[async_trait]
pub trait ObjectPut: Send + Sync {
    /// `metadata` becomes the object's user metadata (`x-amz-meta-*`).
    async fn put_object(
        &self,
        bucket: &str,
        key: &str,
        bytes: Vec<u8>,
        content_type: &str,
        metadata: &[(&str, &str)],
    ) -> Result<(), PortError>;
}

#[async_trait]
pub trait SecretGet: Send + Sync {
    async fn secret_string(&self, secret_id: &str) -> Result<String, PortError>;
}

#[async_trait]
pub trait ProfileStore: Send + Sync {
    /// Active profiles for `All` and `Providers`; every profile named by `Ids`,
    /// active or not, so the caller can say why one was not synced.
    async fn profiles(&self, selection: &ProfileSelection) -> Result<Vec<SyncProfile>, PortError>;
    async fn profile(&self, profile_id: i64) -> Result<Option<SyncProfile>, PortError>;
    /// Moves the watermark to `period` only from the period just before it.
    async fn advance_watermark(
        &self,
        profile_id: i64,
        period: NaiveDate,
    ) -> Result<WatermarkAdvance, PortError>;
}

#[async_trait]
pub trait RunLog: Send + Sync {
    async fn record_run(&self, run: &RunSummary) -> Result<(), PortError>;
}

// ------------------------------------------------------------- operations
// What the operators' commands (shared/src/ops/) read and change: queues as
// seen from outside (the DLQs), the failure records and step history in
// PostgreSQL, and the operator's side of sync tasks.

/// A message received from a queue, with what SQS knows of it.
#[derive(Debug, Clone, PartialEq)]
pub struct ReceivedMessage {
    /// SQS's MessageId (kept when SQS or the console moves the message).
    pub message_id: String,
    pub receipt_handle: String,
    pub body: String,
    /// Message attributes (string values), e.g. the runtime's `tem-error`.
    pub attributes: Vec<(String, String)>,
    /// ApproximateReceiveCount.
    pub receive_count: u32,
    /// SentTimestamp: when this copy entered the queue.
    pub sent_at: Option<DateTime<Utc>>,
}

impl ReceivedMessage {
    pub fn attribute(&self, name: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

#[async_trait]
pub trait QueueReceive: Send + Sync {
    /// Receives up to `max` (1..=10) messages without waiting, hiding them
    /// for `hide_seconds`.
    async fn receive(
        &self,
        queue_url: &str,
        max: u32,
        hide_seconds: i32,
    ) -> Result<Vec<ReceivedMessage>, PortError>;
}

#[async_trait]
pub trait QueueDelete: Send + Sync {
    /// Deletes the received messages (ten per call); returns the receipt
    /// handles SQS refused.
    async fn delete_all(
        &self,
        queue_url: &str,
        receipt_handles: Vec<String>,
    ) -> Result<Vec<FailedSend>, PortError>;
}

#[async_trait]
pub trait QueueRelease: Send + Sync {
    /// Sets the visibility of received messages (ten per call), e.g. 0 to
    /// give back the ones an operation looked at but left alone.
    async fn set_visibility_all(
        &self,
        queue_url: &str,
        receipt_handles: Vec<String>,
        seconds: i32,
    ) -> Result<(), PortError>;
}

/// Where a failure stands (failed_message.status).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureStatus {
    /// Open: in its DLQ (or its copy expired), waiting for an operator.
    Failed,
    /// Sent back to its queue by a retry, or completed after a console redrive.
    Retried,
    /// An operator removed it.
    Removed,
}

impl FailureStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            FailureStatus::Failed => "failed",
            FailureStatus::Retried => "retried",
            FailureStatus::Removed => "removed",
        }
    }
}

impl std::str::FromStr for FailureStatus {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "failed" => Ok(FailureStatus::Failed),
            "retried" => Ok(FailureStatus::Retried),
            "removed" => Ok(FailureStatus::Removed),
            other => Err(format!(
                "unknown failure status {other:?} (failed, retried, removed)"
            )),
        }
    }
}

/// One failed_message row: the failure as recorded, and what operators
/// did about it since.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct FailedMessage {
    #[serde(flatten)]
    pub failure: FailureRecord,
    pub times_failed: u32,
    pub status: FailureStatus,
    pub resolved_at: Option<DateTime<Utc>>,
    pub resolved_by: Option<String>,
    pub retries: u32,
}

/// Which failures an operator means. Every field narrows; `queue` matches
/// the queue's SQS name or the name tem gives it (`routit`, `import`: the
/// caller resolves that to URLs in `queue_urls`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FailureFilter {
    /// Only these statuses; empty means open failures only.
    pub statuses: Vec<FailureStatus>,
    pub queue: Option<String>,
    /// Source queue URLs that `queue` also stands for.
    pub queue_urls: Vec<String>,
    pub step: Option<String>,
    pub provider: Option<String>,
    pub kind: Option<String>,
    /// Case-insensitive substring of the error or the body.
    pub grep: Option<String>,
    pub since: Option<DateTime<Utc>>,
    pub task_id: Option<String>,
    pub ids: Vec<String>,
    pub limit: Option<u32>,
}

/// What an operation did to failure rows: the ids it changed.
#[async_trait]
pub trait FailureAdmin: Send + Sync {
    /// Rows matching the filter, oldest failure first.
    async fn find(&self, filter: &FailureFilter) -> Result<Vec<FailedMessage>, PortError>;
    /// The rows with these ids (any status).
    async fn get_many(&self, ids: &[String]) -> Result<Vec<FailedMessage>, PortError>;
    /// Marks open rows retried (retries + 1); returns the ids it changed.
    /// A row that is no longer open is left as it is.
    async fn mark_retried(
        &self,
        ids: &[String],
        by: &str,
        now: DateTime<Utc>,
    ) -> Result<Vec<String>, PortError>;
    /// Marks open rows removed; returns the ids it changed.
    async fn mark_removed(
        &self,
        ids: &[String],
        by: &str,
        now: DateTime<Utc>,
    ) -> Result<Vec<String>, PortError>;
    /// Inserts a failure found only in a DLQ; false when a row exists (the
    /// runtime's record, which knows more, always wins).
    async fn ingest(&self, failure: &FailedMessage) -> Result<bool, PortError>;
    /// Deletes up to `limit` rows expired before `now`; returns how many.
    async fn delete_expired(&self, now: DateTime<Utc>, limit: u32) -> Result<u64, PortError>;
}

/// One step_run row: one attempt of one step.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct StepRun {
    pub id: i64,
    pub message_id: String,
    pub attempt: u32,
    pub step: String,
    pub function_name: String,
    pub queue: Option<String>,
    pub provider: Option<String>,
    pub task_id: Option<String>,
    pub trace_id: String,
    pub depth: u32,
    pub chain_started_at: DateTime<Utc>,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    /// None while running, or when the process died.
    pub outcome: Option<String>,
    pub error: Option<String>,
    pub error_kind: Option<String>,
    pub children: Vec<String>,
    pub handoff: Option<String>,
}

#[async_trait]
pub trait StepHistory: Send + Sync {
    /// Every recorded attempt of these messages, by message then attempt.
    async fn attempts(&self, message_ids: &[String]) -> Result<Vec<StepRun>, PortError>;
    /// Every recorded attempt of the task's steps, in start order.
    async fn of_task(&self, task_id: &str) -> Result<Vec<StepRun>, PortError>;
    /// Every recorded attempt that carried this hand-off token (the step
    /// that opened it and the imports that continued it), in start order.
    async fn of_handoff(&self, token: &str) -> Result<Vec<StepRun>, PortError>;
    /// Deletes up to `limit` rows expired before `now`; returns how many.
    async fn delete_expired(&self, now: DateTime<Utc>, limit: u32) -> Result<u64, PortError>;
}

/// The operator's side of sync tasks (the runtime's is [`TaskStore`]).
#[async_trait]
pub trait TaskAdmin: Send + Sync {
    /// Appends a line to the task's notes (operator-visible history).
    async fn note(&self, task_id: &str, text: &str, now: DateTime<Utc>) -> Result<(), PortError>;
    /// Marks a pending or running task stalled; false when it was neither.
    async fn mark_stalled(
        &self,
        task_id: &str,
        reason: &str,
        now: DateTime<Utc>,
    ) -> Result<bool, PortError>;
    /// Unfinished (pending or running) tasks created before `created_before`.
    async fn open_tasks(&self, created_before: DateTime<Utc>) -> Result<Vec<SyncTask>, PortError>;
    /// Tasks created in `[from, to)`, oldest first.
    async fn tasks_created_between(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<SyncTask>, PortError>;
}

/// Imports whose attempt died: an import_file row left `running` past its
/// Lambda deadline, with no later attempt of the object to supersede it.
#[async_trait]
pub trait AbandonedImports: Send + Sync {
    /// Marks them `abandoned`; returns how many.
    async fn mark_abandoned(&self, now: DateTime<Utc>) -> Result<u64, PortError>;
}
