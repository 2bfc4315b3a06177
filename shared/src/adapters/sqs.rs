//! SQS: batched sends with retries of refused entries, and visibility changes;
//! for the operators' commands also receives, batched deletes and batched
//! visibility changes (DLQ reconciliation), and queue depths for `status`.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_sqs::types::{
    ChangeMessageVisibilityBatchRequestEntry, DeleteMessageBatchRequestEntry,
    MessageAttributeValue, MessageSystemAttributeName, QueueAttributeName,
    SendMessageBatchRequestEntry,
};
use aws_sdk_sqs::Client;
use futures::{stream, StreamExt, TryStreamExt};

use chrono::DateTime;

use crate::ops::status::{QueueDepth, QueueStats};
use crate::ports::{
    FailedSend, OutgoingMessage, PortError, QueueDelete, QueueReceive, QueueRelease, QueueSend,
    QueueVisibility, ReceivedMessage,
};

/// SQS accepts at most ten entries per batch call.
const BATCH_SIZE: usize = crate::ports::SEND_BATCH_SIZE;
/// Rounds of re-sending the entries SQS refused for reasons on its side.
const SEND_ROUNDS: u32 = 3;
/// SendMessageBatch calls in flight at once for one `send_all`: a fan-out
/// of thousands of messages to one queue is hundreds of calls.
const BATCHES_AT_ONCE: usize = 8;

#[derive(Debug, Clone)]
pub struct SqsQueues {
    client: Client,
}

impl SqsQueues {
    pub fn new(client: Client) -> Self {
        Self { client }
    }

    /// Sends one batch, and again the entries SQS refused for reasons on
    /// its side; returns the entries given up.
    async fn send_chunk(
        &self,
        queue_url: &str,
        batch: Vec<OutgoingMessage>,
    ) -> Result<Vec<FailedSend>, PortError> {
        let mut given_up = Vec::new();
        let mut pending = batch;
        for round in 1..=SEND_ROUNDS {
            let failures = self.send_batch(queue_url, &pending).await?;
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
        Ok(given_up)
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
        // Full batches of ten (the last may be short), several in flight at
        // once; a call that fails ends the send, as it did one at a time.
        let batches: Vec<Vec<OutgoingMessage>> = crate::ports::send_batches(&messages)
            .map(<[OutgoingMessage]>::to_vec)
            .collect();
        stream::iter(batches)
            .map(|batch| self.send_chunk(queue_url, batch))
            .buffer_unordered(BATCHES_AT_ONCE)
            .try_fold(Vec::new(), |mut given_up, failed| async move {
                given_up.extend(failed);
                Ok(given_up)
            })
            .await
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

/// What the operators' commands do to a DLQ: receive, delete, give back.
/// Its own type, so that only the functions that reconcile DLQs (ops) are
/// granted ReceiveMessage and DeleteMessage (infra/permissions.yaml counts
/// calls per adapter type).
#[derive(Debug, Clone)]
pub struct SqsDeadLetters {
    client: Client,
}

impl SqsDeadLetters {
    pub fn new(client: Client) -> Self {
        Self { client }
    }

    pub fn from_config(config: &aws_config::SdkConfig) -> Self {
        Self::new(Client::new(config))
    }
}

#[async_trait]
impl QueueReceive for SqsDeadLetters {
    async fn receive(
        &self,
        queue_url: &str,
        max: u32,
        hide_seconds: i32,
    ) -> Result<Vec<ReceivedMessage>, PortError> {
        let output = self
            .client
            .receive_message()
            .queue_url(queue_url)
            .max_number_of_messages(max.clamp(1, 10) as i32)
            .visibility_timeout(hide_seconds)
            .wait_time_seconds(0)
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .message_system_attribute_names(MessageSystemAttributeName::SentTimestamp)
            .message_attribute_names("All")
            .send()
            .await
            .map_err(|e| {
                PortError::new(
                    "sqs ReceiveMessage",
                    aws_sdk_sqs::error::DisplayErrorContext(e),
                )
            })?;
        Ok(output
            .messages()
            .iter()
            .map(|m| {
                let system = m.attributes();
                let system_value = |name: MessageSystemAttributeName| {
                    system.and_then(|a| a.get(&name)).map(String::as_str)
                };
                let mut attributes: Vec<(String, String)> = m
                    .message_attributes()
                    .into_iter()
                    .flatten()
                    .filter_map(|(k, v)| Some((k.clone(), v.string_value()?.to_string())))
                    .collect();
                attributes.sort();
                ReceivedMessage {
                    message_id: m.message_id().unwrap_or_default().to_string(),
                    receipt_handle: m.receipt_handle().unwrap_or_default().to_string(),
                    body: m.body().unwrap_or_default().to_string(),
                    attributes,
                    receive_count: system_value(
                        MessageSystemAttributeName::ApproximateReceiveCount,
                    )
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0),
                    sent_at: system_value(MessageSystemAttributeName::SentTimestamp)
                        .and_then(|v| v.parse::<i64>().ok())
                        .and_then(DateTime::from_timestamp_millis),
                }
            })
            .collect())
    }
}

#[async_trait]
impl QueueDelete for SqsDeadLetters {
    async fn delete_all(
        &self,
        queue_url: &str,
        receipt_handles: Vec<String>,
    ) -> Result<Vec<FailedSend>, PortError> {
        let mut refused = Vec::new();
        for chunk in receipt_handles.chunks(BATCH_SIZE) {
            let entries = chunk
                .iter()
                .enumerate()
                .map(|(i, handle)| {
                    DeleteMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .receipt_handle(handle)
                        .build()
                        .map_err(|e| PortError::new("sqs delete entry", e))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let output = self
                .client
                .delete_message_batch()
                .queue_url(queue_url)
                .set_entries(Some(entries))
                .send()
                .await
                .map_err(|e| {
                    PortError::new(
                        "sqs DeleteMessageBatch",
                        aws_sdk_sqs::error::DisplayErrorContext(e),
                    )
                })?;
            refused.extend(output.failed().iter().filter_map(|f| {
                let index: usize = f.id().parse().ok()?;
                Some(FailedSend {
                    id: chunk.get(index)?.clone(),
                    reason: format!("{}: {}", f.code(), f.message().unwrap_or("")),
                })
            }));
        }
        Ok(refused)
    }
}

#[async_trait]
impl QueueRelease for SqsDeadLetters {
    async fn set_visibility_all(
        &self,
        queue_url: &str,
        receipt_handles: Vec<String>,
        seconds: i32,
    ) -> Result<(), PortError> {
        for chunk in receipt_handles.chunks(BATCH_SIZE) {
            let entries = chunk
                .iter()
                .enumerate()
                .map(|(i, handle)| {
                    ChangeMessageVisibilityBatchRequestEntry::builder()
                        .id(i.to_string())
                        .receipt_handle(handle)
                        .visibility_timeout(seconds)
                        .build()
                        .map_err(|e| PortError::new("sqs visibility entry", e))
                })
                .collect::<Result<Vec<_>, _>>()?;
            // An entry SQS refuses (the message was deleted meanwhile) needs
            // nothing more: it reappears when its visibility runs out.
            self.client
                .change_message_visibility_batch()
                .queue_url(queue_url)
                .set_entries(Some(entries))
                .send()
                .await
                .map_err(|e| {
                    PortError::new(
                        "sqs ChangeMessageVisibilityBatch",
                        aws_sdk_sqs::error::DisplayErrorContext(e),
                    )
                })?;
        }
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
