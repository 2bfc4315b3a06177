//! Glue between Lambda events and the chain runtime: SQS records in, a
//! partial batch response out; or one envelope from the console.

use aws_lambda_events::event::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent};
use chrono::{DateTime, Utc};
use serde_json::Value;

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

/// Handles a queue-driven function's event: an SQS batch (returning the
/// records to retry), or a bare envelope pasted into the console (returning
/// what happened to it).
pub async fn handle_event(
    runtime: &ChainRuntime,
    event: Value,
    deadline: DateTime<Utc>,
) -> Result<Value, lambda_runtime::Error> {
    if event.get("Records").is_some() {
        let sqs: SqsEvent = serde_json::from_value(event)?;
        let reports = runtime.process_batch(incoming(sqs), deadline).await;
        let mut response = SqsBatchResponse::default();
        response.batch_item_failures = reports
            .iter()
            .filter(|r| !r.disposition.acknowledged())
            .map(|r| {
                let mut failure = BatchItemFailure::default();
                failure.item_identifier = r.message_id.clone();
                failure
            })
            .collect();
        return Ok(serde_json::to_value(response)?);
    }
    let message = IncomingMessage {
        message_id: event
            .get("id")
            .and_then(Value::as_str)
            .unwrap_or("console")
            .to_string(),
        body: event.to_string(),
        receive_count: 1,
        receipt_handle: None,
    };
    let report = runtime.process(message, deadline).await;
    match report.disposition {
        Disposition::Completed | Disposition::Duplicate => Ok(console_response(&report)),
        Disposition::Retry | Disposition::DeadLettered => Err(format!(
            "{} failed: {}",
            report.step.as_deref().unwrap_or("message"),
            report.detail
        )
        .into()),
    }
}
