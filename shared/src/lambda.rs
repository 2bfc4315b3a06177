//! Glue between Lambda events and the chain runtime: SQS records in, a
//! partial batch response out; or one envelope from the console.

use async_trait::async_trait;
use aws_lambda_events::event::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent};
use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::import::notification::{console_envelope, Adapted};
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

/// Handles a queue-driven function's event: an SQS batch (returning the
/// records to retry), or a bare envelope pasted into the console (returning
/// what happened to it).
pub async fn handle_event(
    runtime: &ChainRuntime,
    adapter: &dyn BodyAdapter,
    event: Value,
    deadline: DateTime<Utc>,
) -> Result<Value, lambda_runtime::Error> {
    if event.get("Records").is_some() {
        let sqs: SqsEvent = serde_json::from_value(event)?;
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
        return Ok(serde_json::to_value(response)?);
    }
    // The console's import and totals commands become envelopes; anything
    // else is taken as an envelope.
    let request_id = uuid::Uuid::new_v4().to_string();
    let now = chrono::Utc::now();
    let body = console_envelope(&event, &request_id, now)
        .or_else(|| crate::billing::handler::console_envelope(&event, &request_id, now))
        .unwrap_or_else(|| event.to_string());
    let message = IncomingMessage {
        message_id: event
            .get("id")
            .and_then(Value::as_str)
            .unwrap_or("console")
            .to_string(),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::{Envelope, Step};
    use crate::sync::profile::ProfileSelection;
    use crate::sync::trigger::Trigger;

    // The console and trigger events in events/ double as fixtures.
    const SQS_EVENT: &str = include_str!("../../events/provider-sync/sqs-sync-profile.json");
    const CONSOLE_ENVELOPE: &str = include_str!("../../events/provider-sync/console-envelope.json");
    const SCHEDULE: &str = include_str!("../../events/sync-manager/schedule.json");
    const BY_PROFILE: &str = include_str!("../../events/sync-manager/console-profiles.json");
    const BY_PROVIDER: &str = include_str!("../../events/sync-manager/console-providers.json");

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
    fn the_sample_sync_manager_events_parse_as_their_triggers() {
        let parse = |s: &str| {
            Trigger::from_event(&serde_json::from_str(s).unwrap(), || "x".into()).unwrap()
        };
        assert_eq!(parse(SCHEDULE).kind, "schedule");
        assert_eq!(
            parse(BY_PROFILE).selection,
            ProfileSelection::Ids(vec![1, 2])
        );
        assert_eq!(
            parse(BY_PROVIDER).selection,
            ProfileSelection::Providers(vec!["routit".into(), "t_mobile".into()])
        );
    }
}
