//! In-memory queues, failure rows, step history and task notes for the ops
//! commands' unit tests.

use std::collections::BTreeMap;
use std::sync::Mutex;

use async_trait::async_trait;
use chrono::{DateTime, Duration, Utc};

use crate::ports::{
    FailedMessage, FailedSend, FailureAdmin, FailureFilter, FailureRecord, FailureStatus,
    OutgoingMessage, PortError, QueueDelete, QueueReceive, QueueRelease, QueueSend,
    ReceivedMessage, StepHistory, StepRun, TaskAdmin,
};
use crate::tasks::SyncTask;

use super::failed::FailedPorts;

#[derive(Debug, Clone)]
pub struct Held {
    pub message: ReceivedMessage,
    pub hidden: bool,
}

#[derive(Default)]
pub struct World {
    pub rows: Mutex<BTreeMap<String, FailedMessage>>,
    pub runs: Mutex<Vec<StepRun>>,
    /// queue url -> messages in it
    pub queues: Mutex<BTreeMap<String, Vec<Held>>>,
    /// (queue url, message) in send order
    pub sent: Mutex<Vec<(String, OutgoingMessage)>>,
    pub send_calls: Mutex<usize>,
    /// ids the queue refuses
    pub refuse: Mutex<Vec<String>>,
    /// the queue is unreachable
    pub send_down: Mutex<bool>,
    pub notes: Mutex<Vec<(String, String)>>,
    pub stalled: Mutex<Vec<String>>,
    pub tasks: Mutex<Vec<SyncTask>>,
    next: Mutex<u64>,
}

impl World {
    pub fn ports(&self) -> FailedPorts<'_> {
        FailedPorts {
            failures: self,
            history: self,
            send: self,
            receive: self,
            delete: self,
            release: self,
            tasks: self,
        }
    }

    pub fn add_row(&self, row: FailedMessage) {
        self.rows
            .lock()
            .unwrap()
            .insert(row.failure.id.clone(), row);
    }

    pub fn row(&self, id: &str) -> FailedMessage {
        self.rows.lock().unwrap()[id].clone()
    }

    /// Puts a message into a queue as SQS would, with a fresh MessageId.
    pub fn put(
        &self,
        queue: &str,
        body: &str,
        attributes: &[(&str, &str)],
        sent_at: DateTime<Utc>,
    ) -> String {
        let mut next = self.next.lock().unwrap();
        *next += 1;
        let id = format!("m{next}");
        self.queues
            .lock()
            .unwrap()
            .entry(queue.to_string())
            .or_default()
            .push(Held {
                message: ReceivedMessage {
                    message_id: id.clone(),
                    receipt_handle: format!("rh-{id}"),
                    body: body.to_string(),
                    attributes: attributes
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                    receive_count: 5,
                    sent_at: Some(sent_at),
                },
                hidden: false,
            });
        id
    }

    pub fn depth(&self, queue: &str) -> usize {
        self.queues
            .lock()
            .unwrap()
            .get(queue)
            .map_or(0, |q| q.len())
    }

    pub fn visible(&self, queue: &str) -> usize {
        self.queues
            .lock()
            .unwrap()
            .get(queue)
            .map_or(0, |q| q.iter().filter(|h| !h.hidden).count())
    }
}

pub fn row(
    id: &str,
    queue_url: &str,
    dlq_url: &str,
    body: &str,
    at: DateTime<Utc>,
) -> FailedMessage {
    FailedMessage {
        failure: FailureRecord {
            id: id.to_string(),
            queue: crate::ops::settings::queue_name_of(queue_url).to_string(),
            queue_url: queue_url.to_string(),
            dlq_url: dlq_url.to_string(),
            function_name: Some("f".into()),
            step: Some("SyncProfile".into()),
            provider: Some("routit".into()),
            task_id: Some("task-1".into()),
            trace_id: Some("trace".into()),
            body: body.to_string(),
            error_kind: "retries_exhausted".into(),
            error: "carrier answered 503\nmore".into(),
            attempts: 5,
            failed_at: at,
            expires_at: at + Duration::days(30),
        },
        times_failed: 1,
        status: FailureStatus::Failed,
        resolved_at: None,
        resolved_by: None,
        retries: 0,
    }
}

#[async_trait]
impl FailureAdmin for World {
    async fn find(&self, filter: &FailureFilter) -> Result<Vec<FailedMessage>, PortError> {
        let rows = self.rows.lock().unwrap();
        let mut found: Vec<FailedMessage> = rows
            .values()
            .filter(|r| filter.statuses.is_empty() || filter.statuses.contains(&r.status))
            .filter(|r| filter.ids.is_empty() || filter.ids.contains(&r.failure.id))
            .filter(|r| filter.provider.is_none() || r.failure.provider == filter.provider)
            .filter(|r| filter.task_id.is_none() || r.failure.task_id == filter.task_id)
            .filter(|r| filter.since.is_none_or(|t| r.failure.failed_at >= t))
            .cloned()
            .collect();
        found.sort_by_key(|r| r.failure.failed_at);
        if let Some(limit) = filter.limit {
            found.truncate(limit as usize);
        }
        Ok(found)
    }

    async fn get_many(&self, ids: &[String]) -> Result<Vec<FailedMessage>, PortError> {
        let rows = self.rows.lock().unwrap();
        Ok(ids.iter().filter_map(|id| rows.get(id).cloned()).collect())
    }

    async fn mark_retried(
        &self,
        ids: &[String],
        by: &str,
        now: DateTime<Utc>,
    ) -> Result<Vec<String>, PortError> {
        let mut rows = self.rows.lock().unwrap();
        let mut changed = Vec::new();
        for id in ids {
            if let Some(r) = rows
                .get_mut(id)
                .filter(|r| r.status == FailureStatus::Failed)
            {
                r.status = FailureStatus::Retried;
                r.retries += 1;
                r.resolved_at = Some(now);
                r.resolved_by = Some(by.to_string());
                changed.push(id.clone());
            }
        }
        Ok(changed)
    }

    async fn mark_removed(
        &self,
        ids: &[String],
        by: &str,
        now: DateTime<Utc>,
    ) -> Result<Vec<String>, PortError> {
        let mut rows = self.rows.lock().unwrap();
        let mut changed = Vec::new();
        for id in ids {
            if let Some(r) = rows
                .get_mut(id)
                .filter(|r| r.status == FailureStatus::Failed)
            {
                r.status = FailureStatus::Removed;
                r.resolved_at = Some(now);
                r.resolved_by = Some(by.to_string());
                changed.push(id.clone());
            }
        }
        Ok(changed)
    }

    async fn ingest(&self, failure: &FailedMessage) -> Result<bool, PortError> {
        let mut rows = self.rows.lock().unwrap();
        if rows.contains_key(&failure.failure.id) {
            return Ok(false);
        }
        rows.insert(failure.failure.id.clone(), failure.clone());
        Ok(true)
    }

    async fn delete_expired(&self, now: DateTime<Utc>, limit: u32) -> Result<u64, PortError> {
        let mut rows = self.rows.lock().unwrap();
        let expired: Vec<String> = rows
            .values()
            .filter(|r| r.failure.expires_at < now)
            .take(limit as usize)
            .map(|r| r.failure.id.clone())
            .collect();
        for id in &expired {
            rows.remove(id);
        }
        Ok(expired.len() as u64)
    }
}

#[async_trait]
impl StepHistory for World {
    async fn attempts(&self, message_ids: &[String]) -> Result<Vec<StepRun>, PortError> {
        Ok(self
            .runs
            .lock()
            .unwrap()
            .iter()
            .filter(|r| message_ids.contains(&r.message_id))
            .cloned()
            .collect())
    }

    async fn of_task(&self, task_id: &str) -> Result<Vec<StepRun>, PortError> {
        let mut runs: Vec<StepRun> = self
            .runs
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.task_id.as_deref() == Some(task_id))
            .cloned()
            .collect();
        runs.sort_by_key(|r| r.started_at);
        Ok(runs)
    }

    async fn of_handoff(&self, token: &str) -> Result<Vec<StepRun>, PortError> {
        let mut runs: Vec<StepRun> = self
            .runs
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.handoff.as_deref() == Some(token))
            .cloned()
            .collect();
        runs.sort_by_key(|r| r.started_at);
        Ok(runs)
    }

    async fn delete_expired(&self, now: DateTime<Utc>, limit: u32) -> Result<u64, PortError> {
        let mut runs = self.runs.lock().unwrap();
        let before = runs.len();
        let mut left = limit as usize;
        runs.retain(|r| {
            let expired = r.started_at + Duration::days(14) < now && left > 0;
            if expired {
                left -= 1;
            }
            !expired
        });
        Ok((before - runs.len()) as u64)
    }
}

#[async_trait]
impl QueueSend for World {
    async fn send_all(
        &self,
        queue_url: &str,
        messages: Vec<OutgoingMessage>,
    ) -> Result<Vec<FailedSend>, PortError> {
        if *self.send_down.lock().unwrap() {
            return Err(PortError::new("sqs SendMessageBatch", "connection refused"));
        }
        *self.send_calls.lock().unwrap() += messages.len().div_ceil(10);
        let refuse = self.refuse.lock().unwrap().clone();
        let mut failed = Vec::new();
        for m in messages {
            if refuse.contains(&m.id) {
                failed.push(FailedSend {
                    id: m.id.clone(),
                    reason: "InvalidParameterValue".into(),
                });
                continue;
            }
            self.put(queue_url, &m.body, &[], Utc::now());
            self.sent.lock().unwrap().push((queue_url.to_string(), m));
        }
        Ok(failed)
    }
}

#[async_trait]
impl QueueReceive for World {
    async fn receive(
        &self,
        queue_url: &str,
        max: u32,
        _hide_seconds: i32,
    ) -> Result<Vec<ReceivedMessage>, PortError> {
        let mut queues = self.queues.lock().unwrap();
        let Some(queue) = queues.get_mut(queue_url) else {
            return Ok(Vec::new());
        };
        Ok(queue
            .iter_mut()
            .filter(|h| !h.hidden)
            .take(max as usize)
            .map(|h| {
                h.hidden = true;
                h.message.clone()
            })
            .collect())
    }
}

#[async_trait]
impl QueueDelete for World {
    async fn delete_all(
        &self,
        queue_url: &str,
        receipt_handles: Vec<String>,
    ) -> Result<Vec<FailedSend>, PortError> {
        if let Some(queue) = self.queues.lock().unwrap().get_mut(queue_url) {
            queue.retain(|h| !receipt_handles.contains(&h.message.receipt_handle));
        }
        Ok(Vec::new())
    }
}

#[async_trait]
impl QueueRelease for World {
    async fn set_visibility_all(
        &self,
        queue_url: &str,
        receipt_handles: Vec<String>,
        seconds: i32,
    ) -> Result<(), PortError> {
        if let Some(queue) = self.queues.lock().unwrap().get_mut(queue_url) {
            for h in queue.iter_mut() {
                if receipt_handles.contains(&h.message.receipt_handle) {
                    h.hidden = seconds > 0;
                }
            }
        }
        Ok(())
    }
}

#[async_trait]
impl TaskAdmin for World {
    async fn note(&self, task_id: &str, text: &str, _now: DateTime<Utc>) -> Result<(), PortError> {
        self.notes
            .lock()
            .unwrap()
            .push((task_id.to_string(), text.to_string()));
        Ok(())
    }

    async fn mark_stalled(
        &self,
        task_id: &str,
        _reason: &str,
        _now: DateTime<Utc>,
    ) -> Result<bool, PortError> {
        self.stalled.lock().unwrap().push(task_id.to_string());
        Ok(true)
    }

    async fn open_tasks(&self, created_before: DateTime<Utc>) -> Result<Vec<SyncTask>, PortError> {
        Ok(self
            .tasks
            .lock()
            .unwrap()
            .iter()
            .filter(|t| !t.status.is_finished() && t.created_at < created_before)
            .cloned()
            .collect())
    }

    async fn tasks_created_between(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<SyncTask>, PortError> {
        Ok(self
            .tasks
            .lock()
            .unwrap()
            .iter()
            .filter(|t| t.created_at >= from && t.created_at < to)
            .cloned()
            .collect())
    }
}
