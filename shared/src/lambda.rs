//! Glue between Lambda events and the chain runtime: SQS records in, a
//! partial batch response out; or one envelope from the console.
//!
//! Each function deserializes one typed input (its SQS batch, its schedule
//! event, its console commands) and hands it here: [`QueueInput`] for a
//! queue-driven function, [`ScheduledInput`] for one with a schedule too.
//! The console command type is the function's own ([`ConsoleCommand`]), so
//! this glue names no domain.

use async_trait::async_trait;
use aws_lambda_events::event::cloudwatch_events::CloudWatchEvent;
use aws_lambda_events::event::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent};
use chrono::{DateTime, Utc};
use serde::de::{DeserializeOwned, Error as _};
use serde::{Deserialize, Deserializer};
use serde_json::Value;

use crate::envelope::Envelope;
use crate::runtime::{console_response, ChainRuntime, Disposition, IncomingMessage};

/// The Lambda deadline, which bounds how long a message claim is held.
pub fn deadline(context: &lambda_runtime::Context) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(context.deadline as i64)
        .unwrap_or_else(|| Utc::now() + chrono::Duration::minutes(15))
}

pub fn incoming(event: SqsEvent) -> Vec<IncomingMessage> {
    event
        .records
        .into_iter()
        .map(|record| IncomingMessage {
            message_id: record.message_id.unwrap_or_default(),
            body: record.body.unwrap_or_default(),
            receive_count: record
                .attributes
                .get("ApproximateReceiveCount")
                .and_then(|c| c.parse().ok())
                .unwrap_or(1),
            receipt_handle: record.receipt_handle,
        })
        .collect()
}

/// A function's own console command: a short event an operator types,
/// which becomes the envelope of its first step.
pub trait ConsoleCommand: DeserializeOwned {
    /// What to send, for the error of an event that is none of the inputs.
    const EXPECTED: &'static str;

    /// The command's envelope. Its id derives from the invocation's
    /// request id, so a retried invocation is deduplicated.
    fn envelope(&self, request_id: &str, now: DateTime<Utc>) -> Envelope;
}

/// A function that takes no console command of its own, only envelopes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoCommand {}

impl<'de> Deserialize<'de> for NoCommand {
    fn deserialize<D: Deserializer<'de>>(_: D) -> Result<Self, D::Error> {
        Err(D::Error::custom("this function has no console commands"))
    }
}

impl ConsoleCommand for NoCommand {
    const EXPECTED: &'static str = "a whole envelope (events/provider-sync/console-envelope.json)";

    fn envelope(&self, _request_id: &str, _now: DateTime<Utc>) -> Envelope {
        match *self {}
    }
}

/// What a queue-driven function is invoked with.
#[derive(Debug, Clone, PartialEq)]
pub enum QueueInput<C> {
    /// A batch from the function's queue (an SQS event has `Records`).
    Batch(SqsEvent),
    /// A whole envelope pasted into the console (it has a `version`); the
    /// runtime validates it like a queued one.
    Envelope(Value),
    /// The function's own console command.
    Command(C),
}

impl<'de, C: ConsoleCommand> Deserialize<'de> for QueueInput<C> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let event = Value::deserialize(deserializer)?;
        if event.get("Records").is_some() {
            return serde_json::from_value(event)
                .map(QueueInput::Batch)
                .map_err(|e| D::Error::custom(format!("not an SQS event: {e}")));
        }
        if event.get("version").is_some() {
            return Ok(QueueInput::Envelope(event));
        }
        C::deserialize(event).map(QueueInput::Command).map_err(|e| {
            D::Error::custom(format!(
                "not an SQS event, an envelope or a console command ({e}); send {}",
                C::EXPECTED
            ))
        })
    }
}

/// What a queue-driven function with a schedule is invoked with: its
/// EventBridge schedule event (it has a `detail-type`), or what its queue
/// and console send.
#[derive(Debug, Clone, PartialEq)]
pub enum ScheduledInput<C> {
    Schedule(CloudWatchEvent),
    Queue(QueueInput<C>),
}

impl<'de, C: ConsoleCommand> Deserialize<'de> for ScheduledInput<C> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let event = Value::deserialize(deserializer)?;
        if event.get("detail-type").is_some() {
            return serde_json::from_value(event)
                .map(ScheduledInput::Schedule)
                .map_err(|e| D::Error::custom(format!("not an EventBridge event: {e}")));
        }
        QueueInput::<C>::deserialize(event)
            .map(ScheduledInput::Queue)
            .map_err(|e| D::Error::custom(e.to_string()))
    }
}

/// The key of one schedule event: the same event delivered twice has the
/// same, so what it sends is deduplicated.
pub fn schedule_run_key(event: &CloudWatchEvent) -> String {
    format!("schedule:{}", event.id.as_deref().unwrap_or_default())
}

/// What to do with one body that arrived on a function's queue.
#[derive(Debug, Clone, PartialEq)]
pub enum Adapted {
    /// An envelope to process instead of the body.
    Envelope(String),
    /// Nothing to do (S3's test event), with the reason.
    Ignore(String),
    /// Not a notification: process the body as it is.
    Unchanged,
    /// Cannot tell yet (the object could not be looked at): leave the
    /// message on the queue for another delivery.
    Retry(String),
}

/// Turns what arrives on a function's queue into envelopes: the import
/// queue also carries S3 notifications; the others carry only envelopes.
#[async_trait]
pub trait BodyAdapter: Send + Sync {
    async fn adapt(&self, body: &str, now: DateTime<Utc>) -> Adapted;
}

/// A queue that carries only envelopes.
pub struct EnvelopesOnly;

#[async_trait]
impl BodyAdapter for EnvelopesOnly {
    async fn adapt(&self, _body: &str, _now: DateTime<Utc>) -> Adapted {
        Adapted::Unchanged
    }
}

/// The batch's step metrics, as EMF lines on stdout (crate::metrics).
fn emit_step_metrics(reports: &[crate::runtime::MessageReport]) {
    let namespace = crate::metrics::namespace_from_env();
    let function = crate::metrics::function_name_from_env();
    for document in crate::metrics::step_metrics(&namespace, &function, reports, Utc::now()) {
        document.emit();
    }
}

/// Handles a queue-driven function's input: an SQS batch (returning the
/// records to retry), or an envelope or console command from the console
/// (returning what happened to it). `request_id` is the invocation's.
pub async fn handle_event<C: ConsoleCommand>(
    runtime: &ChainRuntime,
    adapter: &dyn BodyAdapter,
    input: QueueInput<C>,
    request_id: &str,
    deadline: DateTime<Utc>,
) -> Result<Value, lambda_runtime::Error> {
    let (message_id, body) = match input {
        QueueInput::Batch(sqs) => return handle_batch(runtime, adapter, sqs, deadline).await,
        QueueInput::Envelope(event) => (
            event
                .get("id")
                .and_then(Value::as_str)
                .unwrap_or("console")
                .to_string(),
            event.to_string(),
        ),
        QueueInput::Command(command) => {
            let envelope = command.envelope(request_id, Utc::now());
            ("console".to_string(), envelope.to_body())
        }
    };
    let message = IncomingMessage {
        message_id,
        body,
        receive_count: 1,
        receipt_handle: None,
    };
    let report = runtime.process(message, deadline).await;
    emit_step_metrics(std::slice::from_ref(&report));
    match report.disposition {
        Disposition::Completed | Disposition::Duplicate => Ok(console_response(&report)),
        Disposition::Retry | Disposition::DeadLettered | Disposition::Postponed => Err(format!(
            "{} failed: {}",
            report.step.as_deref().unwrap_or("message"),
            report.detail
        )
        .into()),
    }
}

async fn handle_batch(
    runtime: &ChainRuntime,
    adapter: &dyn BodyAdapter,
    sqs: SqsEvent,
    deadline: DateTime<Utc>,
) -> Result<Value, lambda_runtime::Error> {
    let mut messages = Vec::new();
    let mut not_yet = Vec::new();
    for mut m in incoming(sqs) {
        match adapter.adapt(&m.body, Utc::now()).await {
            Adapted::Envelope(body) => {
                m.body = body;
                messages.push(m);
            }
            Adapted::Ignore(reason) => {
                tracing::info!(message_id = %m.message_id, %reason, "ignored");
            }
            Adapted::Unchanged => messages.push(m),
            Adapted::Retry(reason) => {
                tracing::warn!(message_id = %m.message_id, %reason, "left for another delivery");
                not_yet.push(m.message_id);
            }
        }
    }
    let reports = runtime.process_batch(messages, deadline).await;
    emit_step_metrics(&reports);
    let mut response = SqsBatchResponse::default();
    response.batch_item_failures = reports
        .iter()
        .filter(|r| !r.disposition.acknowledged())
        .map(|r| r.message_id.clone())
        .chain(not_yet)
        .map(|id| {
            let mut failure = BatchItemFailure::default();
            failure.item_identifier = id;
            failure
        })
        .collect();
    Ok(serde_json::to_value(response)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::Step;

    // The console and trigger events in events/ double as fixtures; each
    // function's own input is tested beside its handler.
    const SQS_EVENT: &str = include_str!("../../events/provider-sync/sqs-sync-profile.json");
    const CONSOLE_ENVELOPE: &str = include_str!("../../events/provider-sync/console-envelope.json");
    const SCHEDULE: &str = include_str!("../../events/totals/schedule-invoice-sweep.json");

    #[test]
    fn the_sample_sqs_event_carries_a_valid_envelope_and_its_receive_count() {
        let event: SqsEvent = serde_json::from_str(SQS_EVENT).unwrap();
        let messages = incoming(event);
        assert_eq!(messages.len(), 1);
        assert_eq!(messages[0].receive_count, 1);
        assert!(messages[0].receipt_handle.is_some());
        let envelope = Envelope::parse(&messages[0].body).unwrap();
        assert_eq!(envelope.step, Step::SyncProfile);
        assert_eq!(envelope.payload["provider"], "routit");
    }

    #[test]
    fn the_sample_console_envelope_is_valid() {
        assert_eq!(
            Envelope::parse(CONSOLE_ENVELOPE).unwrap().step,
            Step::SyncProfile
        );
    }

    #[test]
    fn a_queue_input_tells_a_batch_from_an_envelope_and_from_a_command() {
        assert!(matches!(
            serde_json::from_str::<QueueInput<NoCommand>>(SQS_EVENT).unwrap(),
            QueueInput::Batch(_)
        ));
        assert!(matches!(
            serde_json::from_str::<QueueInput<NoCommand>>(CONSOLE_ENVELOPE).unwrap(),
            QueueInput::Envelope(_)
        ));
        let err = serde_json::from_str::<QueueInput<NoCommand>>(r#"{"a": 1}"#).unwrap_err();
        assert!(err.to_string().contains("no console commands"), "{err}");
        let err = serde_json::from_str::<QueueInput<NoCommand>>(r#"{"Records": 1}"#).unwrap_err();
        assert!(err.to_string().contains("not an SQS event"), "{err}");
    }

    #[test]
    fn a_scheduled_input_is_keyed_by_its_event_id() {
        let ScheduledInput::Schedule(event) =
            serde_json::from_str::<ScheduledInput<NoCommand>>(SCHEDULE).unwrap()
        else {
            panic!("a schedule event");
        };
        assert_eq!(
            schedule_run_key(&event),
            "schedule:7b1c0e52-3f8e-4d0a-9a4e-1f6c2d9b8e11"
        );
        assert!(matches!(
            serde_json::from_str::<ScheduledInput<NoCommand>>(SQS_EVENT).unwrap(),
            ScheduledInput::Queue(QueueInput::Batch(_))
        ));
    }
}
