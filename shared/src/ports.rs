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

#[async_trait]
pub trait QueueSend: Send + Sync {
    /// Sends all messages (ten per call), retrying entries the queue refused;
    /// returns those that still failed.
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
#[derive(Debug, Clone, PartialEq)]
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
