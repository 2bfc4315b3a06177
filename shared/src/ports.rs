//! Narrow traits at the edges. Domain code talks to queues, stores and
//! buckets only through these, never through SDK types; `adapters/` holds the
//! AWS and PostgreSQL implementations, and unit tests use in-memory fakes.

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};

use crate::sync::manager::RunSummary;
use crate::sync::profile::{ProfileSelection, SyncProfile, WatermarkAdvance};
use crate::tasks::{NewTask, SyncTask, TaskProgress};

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
    /// Nobody has processed this id; it is ours until `expires_at`.
    Acquired,
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
    /// it is called; completes the task when no branch is left. `None` when
    /// the task does not exist (expired, or a hand-made message).
    async fn branch_done(
        &self,
        task_id: &str,
        message_id: &str,
        new_branches: u32,
        now: DateTime<Utc>,
    ) -> Result<Option<TaskProgress>, PortError>;
    async fn mark_failed(
        &self,
        task_id: &str,
        reason: &str,
        now: DateTime<Utc>,
    ) -> Result<(), PortError>;
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
