//! The chain runtime: what every queue-driven function does with a message.
//!
//! For each record, independently of its neighbours in the batch:
//! 1. validate the envelope; a body no retry can fix goes to the DLQ at once;
//! 2. refuse chains that are too deep or steps that re-enqueue too often;
//! 3. claim the message id (idempotency): a duplicate is acknowledged unrun;
//! 4. run the step's handler;
//! 5. on success send the continuation of the chain *before* acknowledging,
//!    count the branch on the task, and record the message as completed;
//! 6. on a retryable error hide the message for a backoff delay and report it
//!    as a batch item failure; after the last attempt, or on a permanent
//!    error, send it to the DLQ with the reason and fail its task;
//! 7. when the step could not even start (no database connection within the
//!    pool's acquire timeout), put it back without spending an attempt (see
//!    [`StepError::NotAttempted`]).
//!
//! Every attempt of an envelope is journaled (start and end, [`StepJournal`])
//! and every dead letter recorded ([`FailureLog`]); both only inform, so
//! their errors are logged and never fail a message. A dead-lettered id may
//! run again (an operator's retry or the console's DLQ redrive): its claim
//! is taken again, its task reopened, and its failure resolved when it
//! completes. A live claim of another invocation (one that may have died)
//! is waited for, not retried against, so a dead attempt costs one receive.
//!
//! A batch's records run concurrently, but never more at once than the
//! database pool can serve: `pool_connections / connections_per_record`
//! (at least one), so a record never waits for another's connection.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{json, Value};
use tracing::{error, info, warn, Instrument};

use crate::envelope::{salvage_task_id, ChainLink, Envelope, Step};
use crate::ops::settings::queue_name_of;
use crate::ports::{
    Claim, FailureLog, FailureRecord, HandoffChange, IdempotencyStore, OutgoingMessage, PortError,
    QueueSend, QueueVisibility, StepEnd, StepJournal, StepStart, TaskStore,
};
use crate::retry::Backoff;
use crate::routing::Router;

/// What a step handler asks the runtime to do next.
#[derive(Debug, Clone, PartialEq)]
pub enum StepOutcome {
    /// Done; continue with `next` (run first) and then the rest of the chain.
    /// `output` is merged into the next step's payload.
    Continue { output: Value, next: Vec<ChainLink> },
    /// Not done yet: run this same step again after `delay` with `payload`.
    Requeue { delay: Duration, payload: Value },
    /// Done; continue with one message per branch, each followed by the
    /// rest of the chain. No branches ends this chain here.
    Fork { branches: Vec<ChainLink> },
    /// Done; the chain's links before its first `until` are work another
    /// message already owes, so the chain continues at `until` (as it was
    /// fixed, when it has no such link).
    SkipTo { until: Step },
    /// Done here, but the branch goes on outside the queues (an export put
    /// into the CDR bucket continues as the import its S3 notification
    /// starts, which adopts the task). The task keeps this branch open as
    /// the hand-off `via`, the token `s3://{bucket}/{key}`.
    HandOff { via: String },
}

impl StepOutcome {
    pub fn done(output: Value) -> Self {
        StepOutcome::Continue {
            output,
            next: Vec::new(),
        }
    }

    /// Done, handing nothing on; the chain continues as it was fixed.
    pub fn finished() -> Self {
        Self::done(Value::Null)
    }
}

/// An error a step's work may carry as the cause of its failure.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why a step failed, and whether another attempt may succeed. The text
/// is what the DLQ's `tem-error`, the journal and the task show; the error
/// it came from stays attached as its [`std::error::Error::source`], so the
/// runtime can tell a pool wait from its type and logs keep the chain.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    /// Worth another attempt (network, throttling, carrier not reachable).
    #[error(transparent)]
    Retryable(Reason),
    /// No retry can fix it (bad input, misconfiguration).
    #[error(transparent)]
    Permanent(Reason),
    /// The step could not start its work: it waited for a database
    /// connection until the pool's acquire timeout. Nothing was done, so no
    /// attempt is spent: the runtime sends the message again as a new SQS
    /// message (whose receive count starts over) carrying the attempts
    /// already spent in `Envelope::attempt`, and acknowledges this one.
    /// It is never dead-lettered for its attempts.
    #[error(transparent)]
    NotAttempted(Reason),
}

/// The text of a step's failure and the error it came from.
#[derive(Debug)]
pub struct Reason {
    text: String,
    source: Option<BoxError>,
}

impl Reason {
    /// The error's own text as the reason, the error as its source.
    pub fn from_error(error: impl Into<BoxError>) -> Self {
        let source = error.into();
        Self {
            text: source.to_string(),
            source: Some(source),
        }
    }

    /// `text` as the reason (which usually already says what the error
    /// says), with the error kept as its source.
    pub fn with_source(text: impl Into<String>, error: impl Into<BoxError>) -> Self {
        Self {
            text: text.into(),
            source: Some(error.into()),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

impl std::error::Error for Reason {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// Reasons read as text (`reason.contains("401")`).
impl std::ops::Deref for Reason {
    type Target = str;

    fn deref(&self) -> &str {
        &self.text
    }
}

impl From<String> for Reason {
    fn from(text: String) -> Self {
        Self { text, source: None }
    }
}

impl From<&str> for Reason {
    fn from(text: &str) -> Self {
        Self::from(text.to_string())
    }
}

/// The text of a database pool's acquire timeout (sqlx's
/// `Error::PoolTimedOut`; a test in `adapters::postgres` pins it). A
/// retryable error whose source is that error, or whose text contains it
/// (a handler that formatted the database error into its reason), is a
/// pool wait.
pub const POOL_TIMED_OUT: &str = "pool timed out while waiting for an open connection";

impl StepError {
    /// Worth another attempt, because of `error`.
    pub fn retryable(error: impl Into<BoxError>) -> Self {
        StepError::Retryable(Reason::from_error(error))
    }

    /// No retry can fix it, because of `error`.
    pub fn permanent(error: impl Into<BoxError>) -> Self {
        StepError::Permanent(Reason::from_error(error))
    }

    /// Retryable or permanent as `retryable` says, because of `error`.
    pub fn classify(retryable: bool, error: impl Into<BoxError>) -> Self {
        if retryable {
            Self::retryable(error)
        } else {
            Self::permanent(error)
        }
    }

    /// Whether another attempt may succeed.
    pub fn is_retryable(&self) -> bool {
        !matches!(self, StepError::Permanent(_))
    }

    /// The text the DLQ, the journal and the task show.
    pub fn reason(&self) -> &str {
        match self {
            StepError::Retryable(r) | StepError::Permanent(r) | StepError::NotAttempted(r) => {
                r.as_str()
            }
        }
    }

    /// A retryable error that is really a pool wait becomes
    /// [`StepError::NotAttempted`].
    fn classified(self) -> Self {
        match self {
            StepError::Retryable(reason) if is_pool_wait(&reason) => {
                StepError::NotAttempted(reason)
            }
            other => other,
        }
    }
}

/// Whether the failure comes from waiting for a pooled database connection.
fn is_pool_wait(reason: &Reason) -> bool {
    if reason.contains(POOL_TIMED_OUT) {
        return true;
    }
    let mut cause: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(reason);
    while let Some(error) = cause {
        if matches!(
            error.downcast_ref::<sqlx::Error>(),
            Some(sqlx::Error::PoolTimedOut)
        ) {
            return true;
        }
        cause = error.source();
    }
    false
}

impl From<PortError> for StepError {
    fn from(e: PortError) -> Self {
        StepError::retryable(e)
    }
}

impl From<crate::command::CommandError> for StepError {
    fn from(e: crate::command::CommandError) -> Self {
        StepError::permanent(e)
    }
}

/// What the handler may know about the delivery.
#[derive(Debug, Clone, Copy)]
pub struct Delivery {
    /// The attempt this is, 1 on the first: the attempts spent in earlier
    /// copies of the message plus SQS `ApproximateReceiveCount`.
    pub receive_count: u32,
    pub deadline: DateTime<Utc>,
}

#[async_trait]
pub trait StepHandler: Send + Sync {
    async fn handle(
        &self,
        message: &Envelope,
        delivery: Delivery,
    ) -> Result<StepOutcome, StepError>;

    /// How many database connections one record may hold at once; the
    /// runtime runs `pool / this` records of a batch at a time.
    fn connections_per_record(&self) -> u32 {
        1
    }
}

#[derive(Debug, Clone)]
pub struct RuntimeSettings {
    /// The queue records arrive on (for visibility changes); `None` when invoked directly.
    pub source_queue_url: Option<String>,
    pub dlq_url: Option<String>,
    pub max_chain_depth: u32,
    pub max_requeues: u32,
    /// Attempts before the runtime itself dead-letters a retryable failure;
    /// equal to the queue's `maxReceiveCount`.
    pub max_attempts: u32,
    pub backoff: Backoff,
    /// The database pool's size (`DATABASE_MAX_CONNECTIONS`), which bounds
    /// how many records of a batch run at once.
    pub pool_connections: u32,
    /// How long after its chain started (`created_at`, which children
    /// inherit) a message may still be postponed for a pool wait; after that a pool wait counts as an attempt, so a long
    /// database outage ends in the DLQ (visible) instead of cycling forever.
    pub max_postpone_age: chrono::Duration,
    /// The delay before a postponed message runs again, by how often it
    /// was postponed: short, because a healthy pool frees a connection in
    /// milliseconds, and doubling, because a pool that stays empty means
    /// the database is in trouble.
    pub postpone_backoff: Backoff,
    /// `AWS_LAMBDA_FUNCTION_NAME`, recorded with every attempt and failure.
    pub function_name: String,
    /// How long an attempt's journal record is kept (`STEP_RECORD_TTL_DAYS`).
    pub step_record_ttl: chrono::Duration,
    /// How long a failure stays retryable (`FAILED_MESSAGE_RETENTION_DAYS`).
    pub failure_retention: chrono::Duration,
}

impl Default for RuntimeSettings {
    fn default() -> Self {
        Self {
            source_queue_url: None,
            dlq_url: None,
            max_chain_depth: 20,
            max_requeues: 10,
            max_attempts: 5,
            backoff: Backoff {
                base: Duration::from_secs(5),
                cap: Duration::from_secs(900),
            },
            pool_connections: 2,
            max_postpone_age: chrono::Duration::hours(1),
            postpone_backoff: DEFAULT_POSTPONE_BACKOFF,
            function_name: "local".into(),
            step_record_ttl: chrono::Duration::days(14),
            failure_retention: chrono::Duration::days(DEFAULT_FAILURE_RETENTION_DAYS),
        }
    }
}

/// A first postponement waits about a second, the sixth a minute at most.
pub const DEFAULT_POSTPONE_BACKOFF: Backoff = Backoff {
    base: Duration::from_secs(1),
    cap: Duration::from_secs(60),
};

/// How long a failure stays retryable by default (`FAILED_MESSAGE_RETENTION_DAYS`).
pub const DEFAULT_FAILURE_RETENTION_DAYS: i64 = 30;

/// The longest an SQS message can be hidden (12 hours).
const MAX_VISIBILITY_SECONDS: i64 = 43_200;

/// One message as it arrived, free of the event source's types.
#[derive(Debug, Clone)]
pub struct IncomingMessage {
    pub message_id: String,
    pub body: String,
    pub receive_count: u32,
    pub receipt_handle: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Disposition {
    /// Handled; children sent.
    Completed,
    /// Seen before; acknowledged without running.
    Duplicate,
    /// Left on the queue for another attempt.
    Retry,
    /// Moved to the DLQ with the reason.
    DeadLettered,
    /// Not attempted (no database connection in time); sent again as a new
    /// message with the attempts so far, and this one acknowledged.
    Postponed,
}

impl Disposition {
    /// Whether the record is removed from its queue.
    pub fn acknowledged(self) -> bool {
        !matches!(self, Disposition::Retry)
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct MessageReport {
    pub message_id: String,
    pub step: Option<String>,
    pub disposition: Disposition,
    pub detail: String,
    pub children: Vec<String>,
    /// What the metrics and the step journal need besides the disposition;
    /// unset for a body that is not an envelope.
    pub provider: Option<String>,
    pub task_id: Option<String>,
    /// The attempt this was (earlier copies' attempts included).
    pub attempt: u32,
    pub started_at: DateTime<Utc>,
    pub duration: Duration,
    /// When the chain started (the envelope's `created_at`).
    pub chain_started_at: Option<DateTime<Utc>>,
    /// Why it was dead-lettered: invalid, permanent, retries_exhausted,
    /// loop or routing.
    pub error_kind: Option<String>,
}

/// Why a message was dead-lettered (`tem-error-kind`, the failure record's
/// `error_kind`, the step metrics' dimension).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// The body is not a valid envelope.
    Invalid,
    /// The step failed in a way no retry can fix.
    Permanent,
    /// The step kept failing until its last attempt.
    RetriesExhausted,
    /// The chain was too deep or the step re-enqueued itself too often.
    Loop,
    /// The next step could not be routed to a queue.
    Routing,
}

impl FailureKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Invalid => "invalid",
            FailureKind::Permanent => "permanent",
            FailureKind::RetriesExhausted => "retries_exhausted",
            FailureKind::Loop => "loop",
            FailureKind::Routing => "routing",
        }
    }
}

/// The stores and queues the runtime works with.
#[derive(Clone)]
pub struct RuntimePorts {
    pub queues: Arc<dyn QueueSend>,
    pub visibility: Arc<dyn QueueVisibility>,
    pub idempotency: Arc<dyn IdempotencyStore>,
    pub tasks: Arc<dyn TaskStore>,
    pub journal: Arc<dyn StepJournal>,
    pub failures: Arc<dyn FailureLog>,
}

pub struct ChainRuntime {
    handler: Arc<dyn StepHandler>,
    router: Router,
    queues: Arc<dyn QueueSend>,
    visibility: Arc<dyn QueueVisibility>,
    idempotency: Arc<dyn IdempotencyStore>,
    tasks: Arc<dyn TaskStore>,
    journal: Arc<dyn StepJournal>,
    failures: Arc<dyn FailureLog>,
    settings: RuntimeSettings,
}

/// What one attempt learnt on the way that its report does not carry.
#[derive(Debug, Default)]
struct AttemptNotes {
    /// The hand-off the attempt opened or continued.
    handoff: Option<String>,
    /// The claim was taken over from a dead letter (a retry).
    after_dead_letter: bool,
}

impl ChainRuntime {
    pub fn new(
        handler: Arc<dyn StepHandler>,
        router: Router,
        ports: RuntimePorts,
        settings: RuntimeSettings,
    ) -> Self {
        Self {
            handler,
            router,
            queues: ports.queues,
            visibility: ports.visibility,
            idempotency: ports.idempotency,
            tasks: ports.tasks,
            journal: ports.journal,
            failures: ports.failures,
            settings,
        }
    }

    /// How many records of a batch run at once: as many as the pool has
    /// connections for, and at least one.
    pub fn max_in_flight(&self) -> usize {
        let per_record = self.handler.connections_per_record().max(1);
        (self.settings.pool_connections / per_record).max(1) as usize
    }

    /// Handles a batch; every record independently, at most
    /// [`Self::max_in_flight`] at once, reports in the batch's order.
    pub async fn process_batch(
        &self,
        messages: Vec<IncomingMessage>,
        deadline: DateTime<Utc>,
    ) -> Vec<MessageReport> {
        use futures::StreamExt;
        futures::stream::iter(messages)
            .map(|m| self.process(m, deadline))
            .buffered(self.max_in_flight())
            .collect()
            .await
    }

    pub async fn process(
        &self,
        incoming: IncomingMessage,
        deadline: DateTime<Utc>,
    ) -> MessageReport {
        let started_at = Utc::now();
        let clock = std::time::Instant::now();
        let mut envelope = match Envelope::parse(&incoming.body) {
            Ok(envelope) => envelope,
            Err(e) => {
                let reason = format!("invalid message, not retried: {e}");
                let task_id = salvage_task_id(&incoming.body);
                let mut report = self
                    .dead_letter(
                        &incoming,
                        None,
                        task_id.as_deref(),
                        FailureKind::Invalid,
                        &reason,
                    )
                    .await;
                report.task_id = task_id;
                report.attempt = incoming.receive_count;
                report.started_at = started_at;
                report.duration = clock.elapsed();
                return report;
            }
        };
        let provider = envelope
            .payload
            .get("provider")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        // Attempts spent in earlier copies (see StepError::NotAttempted) count.
        let attempt = envelope.attempt.saturating_add(incoming.receive_count);
        let span = tracing::info_span!(
            "step",
            trace_id = %envelope.trace_id,
            // Recorded once the task is known to adopt the message.
            task_id = tracing::field::Empty,
            message_id = %envelope.id,
            step = %envelope.step,
            provider = %provider,
            attempt,
        );
        let chain_started_at = envelope.created_at;
        let mut notes = AttemptNotes::default();
        let report = async {
            let adoption = self.adopt(&mut envelope).await;
            tracing::Span::current().record("task_id", envelope.task_id.as_deref().unwrap_or(""));
            if let Err(e) = adoption {
                // Nothing ran yet and no claim is held: just come back later.
                warn!(error = %e, "cannot tell whether the task adopts this message");
                return self.retry(&incoming, &envelope, e.to_string()).await;
            }
            let journal_id = self
                .journal_start(&envelope, attempt, &provider, started_at)
                .await;
            let report = self
                .process_envelope(&incoming, &envelope, deadline, &mut notes)
                .await;
            self.journal_end(journal_id, &report, &notes).await;
            report
        }
        .instrument(span)
        .await;
        MessageReport {
            provider: (!provider.is_empty()).then_some(provider),
            task_id: envelope.task_id,
            attempt,
            started_at,
            duration: clock.elapsed(),
            chain_started_at: Some(chain_started_at),
            ..report
        }
    }

    /// A message continuing a hand-off counts on its task only while the
    /// task has that hand-off open (or already counted this very message).
    /// Otherwise (an export copied within the bucket with its metadata, an
    /// object put by hand with a finished task's id) it runs on its own, so
    /// it can neither complete nor fail a task it does not belong to.
    async fn adopt(&self, envelope: &mut Envelope) -> Result<(), PortError> {
        let (Some(task_id), Some(token)) = (&envelope.task_id, &envelope.handoff) else {
            return Ok(());
        };
        if self.tasks.adoptable(task_id, token, &envelope.id).await? {
            return Ok(());
        }
        warn!(
            task_id = %task_id,
            handoff = %token,
            "the task does not have this hand-off open (finished, or the object was copied or put by hand); running without the task"
        );
        envelope.task_id = None;
        Ok(())
    }

    async fn journal_start(
        &self,
        envelope: &Envelope,
        attempt: u32,
        provider: &str,
        started_at: DateTime<Utc>,
    ) -> Option<i64> {
        let start = StepStart {
            message_id: envelope.id.clone(),
            attempt,
            step: envelope.step.to_string(),
            function_name: self.settings.function_name.clone(),
            queue: self
                .settings
                .source_queue_url
                .as_deref()
                .map(|url| queue_name_of(url).to_string()),
            provider: (!provider.is_empty()).then(|| provider.to_string()),
            task_id: envelope.task_id.clone(),
            trace_id: envelope.trace_id.clone(),
            depth: envelope.depth,
            chain_started_at: envelope.created_at,
            started_at,
            expires_at: started_at + self.settings.step_record_ttl,
        };
        match self.journal.started(&start).await {
            Ok(id) => Some(id),
            Err(e) => {
                warn!(error = %e, "could not journal the attempt's start; going on without it");
                None
            }
        }
    }

    async fn journal_end(&self, id: Option<i64>, report: &MessageReport, notes: &AttemptNotes) {
        let Some(id) = id else { return };
        let failed = matches!(
            report.disposition,
            Disposition::Retry | Disposition::DeadLettered | Disposition::Postponed
        );
        let end = StepEnd {
            finished_at: Utc::now(),
            outcome: report.disposition,
            error: failed.then(|| report.detail.clone()),
            error_kind: report.error_kind.clone(),
            children: report.children.clone(),
            handoff: notes.handoff.clone(),
        };
        if let Err(e) = self.journal.finished(id, &end).await {
            warn!(error = %e, "could not journal the attempt's end; going on without it");
        }
    }

    async fn process_envelope(
        &self,
        incoming: &IncomingMessage,
        envelope: &Envelope,
        deadline: DateTime<Utc>,
        notes: &mut AttemptNotes,
    ) -> MessageReport {
        let step = envelope.step.to_string();
        // Attempts spent in earlier copies (see StepError::NotAttempted) count.
        let attempt = envelope.attempt.saturating_add(incoming.receive_count);
        if envelope.depth > self.settings.max_chain_depth {
            let reason = format!(
                "chain depth {} exceeds the limit of {}; refusing to continue a chain that may loop",
                envelope.depth, self.settings.max_chain_depth
            );
            return self.refuse(incoming, envelope, &reason).await;
        }
        if envelope.requeues > self.settings.max_requeues {
            let reason = format!(
                "step {} re-enqueued itself {} times, over the limit of {}",
                envelope.step, envelope.requeues, self.settings.max_requeues
            );
            return self.refuse(incoming, envelope, &reason).await;
        }

        let now = Utc::now();
        match self.idempotency.claim(&envelope.id, now, deadline).await {
            Ok(Claim::Acquired { after_dead_letter }) => {
                notes.after_dead_letter = after_dead_letter;
                if after_dead_letter {
                    if let Err(report) = self.reopen(incoming, envelope, now).await {
                        return report;
                    }
                }
            }
            Ok(Claim::Completed { outcome }) => {
                info!(%outcome, "duplicate delivery; already processed");
                return report(
                    incoming,
                    Some(step),
                    Disposition::Duplicate,
                    outcome,
                    vec![],
                );
            }
            Ok(Claim::InProgress { expires_at }) => {
                // The holder may have died (killed, out of memory): retrying
                // before its claim expires would only spend attempts, so come
                // back just after it expires.
                let wait =
                    ((expires_at - now).num_seconds() + 1).clamp(1, MAX_VISIBILITY_SECONDS) as i32;
                info!(%expires_at, wait_s = wait, "another invocation holds this message's claim; waiting for it to expire");
                return self
                    .retry_later(
                        incoming,
                        Some(step),
                        wait,
                        format!("claimed by another invocation until {expires_at}"),
                    )
                    .await;
            }
            Err(e) => {
                warn!(error = %e, "idempotency store unavailable");
                return self.retry(incoming, envelope, e.to_string()).await;
            }
        }

        if let Some(task_id) = &envelope.task_id {
            if let Err(e) = self.tasks.mark_running(task_id, now).await {
                warn!(error = %e, "could not mark the task running; continuing");
            }
        }

        let delivery = Delivery {
            receive_count: attempt,
            deadline,
        };
        let result = self
            .handler
            .handle(envelope, delivery)
            .await
            .map_err(StepError::classified);
        match result {
            Ok(outcome) => {
                let report = self.succeed(incoming, envelope, outcome, notes).await;
                if report.disposition == Disposition::Completed && notes.after_dead_letter {
                    match self
                        .failures
                        .resolved(&envelope.id, "redrive", Utc::now())
                        .await
                    {
                        Ok(true) => info!("the failure of this message is resolved"),
                        Ok(false) => {}
                        Err(e) => warn!(error = %e, "could not mark the failure resolved"),
                    }
                }
                report
            }
            Err(StepError::NotAttempted(reason))
                if now - envelope.created_at < self.settings.max_postpone_age =>
            {
                let reason = reason.to_string();
                warn!(%reason, "no database connection in time; not attempted, postponed");
                self.release(envelope, notes).await;
                self.postpone(incoming, envelope, attempt.saturating_sub(1), reason)
                    .await
            }
            Err(StepError::Retryable(reason) | StepError::NotAttempted(reason)) => {
                let reason = reason.to_string();
                if attempt >= self.settings.max_attempts {
                    let reason = format!("gave up after {attempt} attempts; last error: {reason}");
                    self.finish_failed(
                        incoming,
                        envelope,
                        FailureKind::RetriesExhausted,
                        &reason,
                        notes,
                    )
                    .await
                } else {
                    warn!(%reason, "step failed; will retry");
                    self.release(envelope, notes).await;
                    self.retry(incoming, envelope, reason).await
                }
            }
            Err(StepError::Permanent(reason)) => {
                let reason = reason.to_string();
                error!(%reason, "step failed permanently");
                self.finish_failed(incoming, envelope, FailureKind::Permanent, &reason, notes)
                    .await
            }
        }
    }

    /// A dead-lettered message runs again: its task goes back to running
    /// (unless another of its messages is still failed). If the task cannot
    /// be reached the message waits, its claim again marked dead-lettered so
    /// the next delivery reopens the task instead.
    async fn reopen(
        &self,
        incoming: &IncomingMessage,
        envelope: &Envelope,
        now: DateTime<Utc>,
    ) -> Result<(), MessageReport> {
        info!("a dead-lettered message runs again");
        let Some(task_id) = &envelope.task_id else {
            return Ok(());
        };
        match self.tasks.reopen(task_id, &envelope.id, now).await {
            Ok(status) => {
                info!(status = ?status, "task reopened for the retried message");
                Ok(())
            }
            Err(e) => {
                warn!(error = %e, "could not reopen the task; retrying later");
                self.mark_dead_lettered(envelope, "waiting to reopen its task")
                    .await;
                Err(self.retry(incoming, envelope, e.to_string()).await)
            }
        }
    }

    async fn succeed(
        &self,
        incoming: &IncomingMessage,
        envelope: &Envelope,
        outcome: StepOutcome,
        notes: &mut AttemptNotes,
    ) -> MessageReport {
        let step = envelope.step.to_string();
        let mut handed_off = None;
        let (children, delay) = match outcome {
            StepOutcome::HandOff { via } => {
                handed_off = Some(via);
                (Vec::new(), 0)
            }
            StepOutcome::Continue { output, next } => (
                envelope
                    .continuation(&output, next)
                    .into_iter()
                    .collect::<Vec<_>>(),
                0,
            ),
            StepOutcome::Fork { branches } => (envelope.fork(branches), 0),
            StepOutcome::SkipTo { until } => (envelope.skipping_to(until).into_iter().collect(), 0),
            StepOutcome::Requeue { delay, payload } => {
                let again = envelope.requeued(payload);
                if again.requeues > self.settings.max_requeues {
                    let reason = format!(
                        "step {} would re-enqueue itself for the {}th time, over the limit of {}",
                        envelope.step, again.requeues, self.settings.max_requeues
                    );
                    return self
                        .finish_failed(incoming, envelope, FailureKind::Loop, &reason, notes)
                        .await;
                }
                // SQS caps message delays at 15 minutes.
                (vec![again], delay.as_secs().min(900) as u32)
            }
        };
        if let Some(too_deep) = children
            .iter()
            .find(|c| c.depth > self.settings.max_chain_depth)
        {
            let reason = format!(
                "continuing would make the chain {} steps deep, over the limit of {}",
                too_deep.depth, self.settings.max_chain_depth
            );
            return self
                .finish_failed(incoming, envelope, FailureKind::Loop, &reason, notes)
                .await;
        }

        let mut sent = Vec::new();
        for child in &children {
            let queue = match self.router.queue_for(child.step, &child.payload) {
                Ok(queue) => queue.to_string(),
                Err(e) => {
                    let reason = format!("cannot route the next step {}: {e}", child.step);
                    return self
                        .finish_failed(incoming, envelope, FailureKind::Routing, &reason, notes)
                        .await;
                }
            };
            let mut message = OutgoingMessage::new(child.id.clone(), child.to_body());
            message.delay_seconds = delay;
            match self.queues.send_all(&queue, vec![message]).await {
                Ok(failed) if failed.is_empty() => sent.push(child.id.clone()),
                Ok(failed) => {
                    self.release(envelope, notes).await;
                    return self
                        .retry(
                            incoming,
                            envelope,
                            format!("could not send the next step: {}", failed[0].reason),
                        )
                        .await;
                }
                Err(e) => {
                    self.release(envelope, notes).await;
                    return self.retry(incoming, envelope, e.to_string()).await;
                }
            }
        }

        notes.handoff = handed_off.clone().or_else(|| envelope.handoff.clone());
        if let Some(task_id) = &envelope.task_id {
            let change = match (&handed_off, &envelope.handoff) {
                (Some(via), _) => HandoffChange::Opens(via),
                (None, Some(token)) => HandoffChange::Closes(token),
                (None, None) => HandoffChange::None,
            };
            match self
                .tasks
                .branch_done(
                    task_id,
                    &envelope.id,
                    children.len() as u32 + u32::from(handed_off.is_some()),
                    change,
                    Utc::now(),
                )
                .await
            {
                Ok(Some(progress)) => info!(
                    outstanding = progress.outstanding,
                    status = %progress.status,
                    "task progress"
                ),
                Ok(None) => warn!("the message names a task that does not exist; not counted"),
                Err(e) => {
                    // The children are out; a retry re-sends the same ids,
                    // which their consumers deduplicate.
                    self.release(envelope, notes).await;
                    return self.retry(incoming, envelope, e.to_string()).await;
                }
            }
        }

        let detail = if let Some(via) = handed_off {
            format!("completed; continues through {via}")
        } else if sent.is_empty() {
            "completed; end of chain".to_string()
        } else {
            format!("completed; sent {}", sent.join(", "))
        };
        if let Err(e) = self
            .idempotency
            .complete(&envelope.id, &detail, Utc::now())
            .await
        {
            // Acknowledging anyway is safe: the work and the children are
            // idempotent, and a redelivery would only repeat them.
            warn!(error = %e, "could not record completion");
        }
        info!(%detail, "step completed");
        report(incoming, Some(step), Disposition::Completed, detail, sent)
    }

    /// A refusal before the handler ran (loop prevention).
    async fn refuse(
        &self,
        incoming: &IncomingMessage,
        envelope: &Envelope,
        reason: &str,
    ) -> MessageReport {
        error!(%reason, "refused");
        self.dead_letter(
            incoming,
            Some(envelope),
            envelope.task_id.as_deref(),
            FailureKind::Loop,
            reason,
        )
        .await
    }

    async fn finish_failed(
        &self,
        incoming: &IncomingMessage,
        envelope: &Envelope,
        kind: FailureKind,
        reason: &str,
        notes: &AttemptNotes,
    ) -> MessageReport {
        let report = self
            .dead_letter(
                incoming,
                Some(envelope),
                envelope.task_id.as_deref(),
                kind,
                reason,
            )
            .await;
        if report.disposition == Disposition::DeadLettered {
            self.mark_dead_lettered(envelope, reason).await;
        } else {
            self.release(envelope, notes).await;
        }
        report
    }

    /// Records the id as dead-lettered, so a retry may claim it again.
    async fn mark_dead_lettered(&self, envelope: &Envelope, reason: &str) {
        if let Err(e) = self
            .idempotency
            .dead_lettered(&envelope.id, reason, Utc::now())
            .await
        {
            // The in-progress claim then expires with the deadline, after
            // which a retry claims it too (without reopening the task).
            warn!(error = %e, "could not record the dead-lettering");
        }
    }

    /// Moves the original body to the DLQ with the reason as attributes,
    /// records the failure, and fails the task. If the DLQ cannot be reached
    /// the message stays on its queue: nothing is lost.
    async fn dead_letter(
        &self,
        incoming: &IncomingMessage,
        envelope: Option<&Envelope>,
        task_id: Option<&str>,
        kind: FailureKind,
        reason: &str,
    ) -> MessageReport {
        let step = envelope.map(|e| e.step.to_string());
        // The id a retry and the task know this failure by.
        let failed_id =
            envelope.map_or_else(|| format!("sqs:{}", incoming.message_id), |e| e.id.clone());
        let why = format!("{}: {reason}", step.as_deref().unwrap_or("message"));
        let Some(dlq) = &self.settings.dlq_url else {
            // Invoked directly (console): the caller sees the error instead.
            error!(%reason, "failed");
            if let Some(task_id) = task_id {
                if let Err(e) = self
                    .tasks
                    .mark_failed(task_id, &failed_id, &why, Utc::now())
                    .await
                {
                    warn!(error = %e, "could not mark the task failed");
                }
            }
            return MessageReport {
                error_kind: Some(kind.as_str().to_string()),
                ..report(
                    incoming,
                    step,
                    Disposition::DeadLettered,
                    reason.to_string(),
                    vec![],
                )
            };
        };
        let attempts = envelope
            .map_or(0, |e| e.attempt)
            .saturating_add(incoming.receive_count);
        let failed_at = Utc::now();
        let mut message = OutgoingMessage::new(incoming.message_id.clone(), incoming.body.clone());
        message.attributes = vec![
            ("tem-error".into(), truncate(reason, 4000)),
            ("tem-error-kind".into(), kind.as_str().into()),
            ("tem-attempts".into(), attempts.to_string()),
            ("tem-failed-at".into(), failed_at.to_rfc3339()),
            (
                "tem-step".into(),
                step.clone().unwrap_or_else(|| "unknown".into()),
            ),
            ("tem-function".into(), self.settings.function_name.clone()),
            // The copy is a new SQS message: the original's id keys the
            // failure of a body that is not an envelope (`sqs:<id>`).
            ("tem-message-id".into(), incoming.message_id.clone()),
        ];
        // SQS refuses empty attribute values: without a source queue, none.
        if let Some(source) = &self.settings.source_queue_url {
            message
                .attributes
                .push(("tem-source-queue".into(), source.clone()));
        }
        match self.queues.send_all(dlq, vec![message]).await {
            Ok(failed) if failed.is_empty() => {}
            Ok(failed) => {
                error!(reason = %failed[0].reason, "DLQ refused the message; leaving it on its queue");
                return report(
                    incoming,
                    step,
                    Disposition::Retry,
                    failed[0].reason.clone(),
                    vec![],
                );
            }
            Err(e) => {
                error!(error = %e, "DLQ unreachable; leaving the message on its queue");
                return report(incoming, step, Disposition::Retry, e.to_string(), vec![]);
            }
        }
        error!(%reason, kind = kind.as_str(), "moved to the dead-letter queue");
        if let Some(task_id) = task_id {
            if let Err(e) = self
                .tasks
                .mark_failed(task_id, &failed_id, &why, Utc::now())
                .await
            {
                warn!(error = %e, "could not mark the task failed");
            }
        }
        self.record_failure(FailureRecord {
            id: failed_id,
            queue: String::new(),
            queue_url: String::new(),
            dlq_url: dlq.clone(),
            function_name: Some(self.settings.function_name.clone()),
            step: step.clone(),
            provider: envelope
                .and_then(|e| e.payload.get("provider"))
                .and_then(Value::as_str)
                .map(str::to_string),
            task_id: task_id.map(str::to_string),
            trace_id: envelope.map(|e| e.trace_id.clone()),
            body: incoming.body.clone(),
            error_kind: kind.as_str().to_string(),
            error: reason.to_string(),
            attempts,
            failed_at,
            expires_at: failed_at + self.settings.failure_retention,
        })
        .await;
        MessageReport {
            error_kind: Some(kind.as_str().to_string()),
            ..report(
                incoming,
                step,
                Disposition::DeadLettered,
                reason.to_string(),
                vec![],
            )
        }
    }

    /// Keeps the failure findable and retryable beyond the DLQ's own
    /// retention. The DLQ copy is already out, so an error here only warns:
    /// the ops watch records DLQ messages that have no record.
    async fn record_failure(&self, mut failure: FailureRecord) {
        let Some(source) = &self.settings.source_queue_url else {
            warn!("no source queue to retry this failure on; not recorded");
            return;
        };
        failure.queue = queue_name_of(source).to_string();
        failure.queue_url = source.clone();
        if let Err(e) = self.failures.record(&failure).await {
            warn!(error = %e, "could not record the failure; the ops watch will find it in the DLQ");
        }
    }
    /// Puts back a message whose step was not attempted, without spending
    /// an attempt: SQS counts every receive toward the queue's
    /// `maxReceiveCount`, and its redrive would dead-letter the message
    /// however often it was only waiting. So the body goes out again as a
    /// new message (receive count 1) with `attempt` = the attempts actually
    /// spent, and this one is acknowledged; the same envelope id keeps the
    /// step idempotent if both copies ever run. Without a source queue
    /// (console) or if the send fails, the message is left for a retry.
    async fn postpone(
        &self,
        incoming: &IncomingMessage,
        envelope: &Envelope,
        spent: u32,
        reason: String,
    ) -> MessageReport {
        let step = Some(envelope.step.to_string());
        let seconds = self
            .settings
            .postpone_backoff
            .visibility_seconds(envelope.postponements + 1, &mut rand::thread_rng());
        let Some(queue) = &self.settings.source_queue_url else {
            return self
                .retry_later(incoming, step, seconds, format!("not attempted: {reason}"))
                .await;
        };
        let mut again = envelope.clone();
        again.attempt = spent;
        again.postponements = envelope.postponements.saturating_add(1);
        let mut message = OutgoingMessage::new(envelope.id.clone(), again.to_body());
        // SQS caps message delays at 15 minutes.
        message.delay_seconds = seconds.clamp(1, 900) as u32;
        match self.queues.send_all(queue, vec![message]).await {
            Ok(failed) if failed.is_empty() => report(
                incoming,
                step,
                Disposition::Postponed,
                format!(
                    "not attempted ({reason}); sent again to run in {}s, {spent} attempts spent",
                    seconds.clamp(1, 900)
                ),
                vec![],
            ),
            Ok(failed) => {
                let why = format!(
                    "not attempted: {reason}; re-send failed: {}",
                    failed[0].reason
                );
                self.retry_later(incoming, step, seconds, why).await
            }
            Err(e) => {
                let why = format!("not attempted: {reason}; re-send failed: {e}");
                self.retry_later(incoming, step, seconds, why).await
            }
        }
    }

    async fn retry(
        &self,
        incoming: &IncomingMessage,
        envelope: &Envelope,
        reason: String,
    ) -> MessageReport {
        let attempt = envelope.attempt.saturating_add(incoming.receive_count);
        let seconds = self
            .settings
            .backoff
            .visibility_seconds(attempt.max(1), &mut rand::thread_rng());
        self.retry_later(incoming, Some(envelope.step.to_string()), seconds, reason)
            .await
    }

    async fn retry_later(
        &self,
        incoming: &IncomingMessage,
        step: Option<String>,
        seconds: i32,
        reason: String,
    ) -> MessageReport {
        if let (Some(queue), Some(handle)) =
            (&self.settings.source_queue_url, &incoming.receipt_handle)
        {
            if let Err(e) = self.visibility.set_visibility(queue, handle, seconds).await {
                // The queue's own visibility timeout still delays the retry.
                warn!(error = %e, "could not set the backoff delay");
            }
        }
        report(
            incoming,
            step,
            Disposition::Retry,
            format!("{reason} (retry in {seconds}s)"),
            vec![],
        )
    }

    /// Gives the claim back for a retry. A message retried after a dead
    /// letter keeps its claim marked dead-lettered instead, so the attempt
    /// that finally completes still resolves its failure.
    async fn release(&self, envelope: &Envelope, notes: &AttemptNotes) {
        if notes.after_dead_letter {
            self.mark_dead_lettered(envelope, "retrying after a dead letter")
                .await;
            return;
        }
        if let Err(e) = self.idempotency.release(&envelope.id).await {
            // The claim then expires with the deadline; the retry waits for it.
            warn!(error = %e, "could not release the idempotency claim");
        }
    }
}

fn report(
    incoming: &IncomingMessage,
    step: Option<String>,
    disposition: Disposition,
    detail: String,
    children: Vec<String>,
) -> MessageReport {
    MessageReport {
        message_id: incoming.message_id.clone(),
        step,
        disposition,
        detail,
        children,
        provider: None,
        task_id: None,
        attempt: incoming.receive_count,
        started_at: Utc::now(),
        duration: Duration::ZERO,
        chain_started_at: None,
        error_kind: None,
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// The JSON a direct (console) invocation returns.
pub fn console_response(report: &MessageReport) -> Value {
    json!({
        "message_id": report.message_id,
        "step": report.step,
        "disposition": report.disposition,
        "detail": report.detail,
        "children": report.children,
    })
}
