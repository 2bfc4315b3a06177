//! SQS: batched sends with retries of refused entries, visibility changes,
//! and queue depths for `status`.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_sqs::types::{MessageAttributeValue, QueueAttributeName, SendMessageBatchRequestEntry};
use aws_sdk_sqs::Client;

use crate::ops::status::{QueueDepth, QueueStats};
use crate::ports::{FailedSend, OutgoingMessage, PortError, QueueSend, QueueVisibility};

/// SQS accepts at most ten entries per `SendMessageBatch`.
const BATCH_SIZE: usize = 10;
/// Rounds of re-sending the entries SQS refused for reasons on its side.
const SEND_ROUNDS: u32 = 3;

#[derive(Debug, Clone)]
pub struct SqsQueues {
    client: Client,
}

impl SqsQueues {
    pub fn new(client: Client) -> Self {
        Self { client }
    }

    async fn send_batch(
        &self,
        queue_url: &str,
        batch: &[OutgoingMessage],
    ) -> Result<Vec<(usize, FailedSend, bool)>, PortError> {
        let mut entries = Vec::with_capacity(batch.len());
        for (index, message) in batch.iter().enumerate() {
            let mut attributes = HashMap::new();
            for (name, value) in &message.attributes {
                let value = MessageAttributeValue::builder()
                    .data_type("String")
                    .string_value(value)
                    .build()
                    .map_err(|e| PortError::new("sqs message attribute", e))?;
                attributes.insert(name.clone(), value);
            }
            // Entry ids only need to be unique in the batch; the position
            // is, and always satisfies SQS's id charset.
            let entry = SendMessageBatchRequestEntry::builder()
                .id(index.to_string())
                .message_body(&message.body)
                .delay_seconds(message.delay_seconds as i32)
                .set_message_attributes((!attributes.is_empty()).then_some(attributes))
                .build()
                .map_err(|e| PortError::new("sqs batch entry", e))?;
            entries.push(entry);
        }
        let output = self
            .client
            .send_message_batch()
            .queue_url(queue_url)
            .set_entries(Some(entries))
            .send()
            .await
            .map_err(|e| {
                PortError::new(
                    "sqs SendMessageBatch",
                    aws_sdk_sqs::error::DisplayErrorContext(e),
                )
            })?;
        Ok(output
            .failed()
            .iter()
            .filter_map(|f| {
                let index: usize = f.id().parse().ok()?;
                let failed = FailedSend {
                    id: batch.get(index)?.id.clone(),
                    reason: format!("{}: {}", f.code(), f.message().unwrap_or("")),
                };
                Some((index, failed, f.sender_fault()))
            })
            .collect())
    }
}

#[async_trait]
impl QueueSend for SqsQueues {
    async fn send_all(
        &self,
        queue_url: &str,
        messages: Vec<OutgoingMessage>,
    ) -> Result<Vec<FailedSend>, PortError> {
        let mut given_up = Vec::new();
        for chunk in messages.chunks(BATCH_SIZE) {
            let mut pending: Vec<OutgoingMessage> = chunk.to_vec();
            for round in 1..=SEND_ROUNDS {
                let failures = self.send_batch(queue_url, &pending).await?;
                if failures.is_empty() {
                    pending.clear();
                    break;
                }
                let mut retry = Vec::new();
                for (index, failure, sender_fault) in failures {
                    // A sender fault (bad entry) fails the same way every time.
                    if sender_fault || round == SEND_ROUNDS {
                        given_up.push(failure);
                    } else {
                        retry.push(pending[index].clone());
                    }
                }
                pending = retry;
                if pending.is_empty() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100 * u64::from(round))).await;
            }
        }
        Ok(given_up)
    }
}

#[async_trait]
impl QueueVisibility for SqsQueues {
    async fn set_visibility(
        &self,
        queue_url: &str,
        receipt_handle: &str,
        seconds: i32,
    ) -> Result<(), PortError> {
        self.client
            .change_message_visibility()
            .queue_url(queue_url)
            .receipt_handle(receipt_handle)
            .visibility_timeout(seconds)
            .send()
            .await
            .map_err(|e| {
                PortError::new(
                    "sqs ChangeMessageVisibility",
                    aws_sdk_sqs::error::DisplayErrorContext(e),
                )
            })?;
        Ok(())
    }
}

/// Queue depths for `status`: its own type, so that only the functions
/// that ask for depths reach (and are granted) GetQueueAttributes.
#[derive(Debug, Clone)]
pub struct SqsQueueStats {
    client: Client,
}

impl SqsQueueStats {
    pub fn new(client: Client) -> Self {
        Self { client }
    }
}

#[async_trait]
impl QueueStats for SqsQueueStats {
    async fn depth(&self, queue_url: &str) -> Result<QueueDepth, PortError> {
        let output = self
            .client
            .get_queue_attributes()
            .queue_url(queue_url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesDelayed)
            .send()
            .await
            .map_err(|e| {
                PortError::new(
                    "sqs GetQueueAttributes",
                    aws_sdk_sqs::error::DisplayErrorContext(e),
                )
            })?;
        let attributes = output.attributes();
        let get = |name: QueueAttributeName| {
            attributes
                .and_then(|a| a.get(&name))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        Ok(QueueDepth {
            visible: get(QueueAttributeName::ApproximateNumberOfMessages),
            in_flight: get(QueueAttributeName::ApproximateNumberOfMessagesNotVisible),
            delayed: get(QueueAttributeName::ApproximateNumberOfMessagesDelayed),
        })
    }
}
