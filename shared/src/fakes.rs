//! In-memory fakes of the ports, for unit tests of domain logic only.
//! Integration tests use the real adapters against the emulator.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::ports::*;
use crate::tasks::{NewTask, SyncTask, TaskProgress, TaskStatus};

#[derive(Default)]
pub struct FakeQueues {
    pub sent: Mutex<BTreeMap<String, Vec<OutgoingMessage>>>,
    pub visibility: Mutex<Vec<(String, i32)>>,
    /// Queue URLs whose sends fail.
    pub broken: Mutex<HashSet<String>>,
}

impl FakeQueues {
    pub fn on(&self, queue: &str) -> Vec<OutgoingMessage> {
        self.sent
            .lock()
            .unwrap()
            .get(queue)
            .cloned()
            .unwrap_or_default()
    }
}

#[async_trait]
impl QueueSend for FakeQueues {
    async fn send_all(
        &self,
        queue_url: &str,
        messages: Vec<OutgoingMessage>,
    ) -> Result<Vec<FailedSend>, PortError> {
        if self.broken.lock().unwrap().contains(queue_url) {
            return Err(PortError::new("fake send", "queue unavailable"));
        }
        self.sent
            .lock()
            .unwrap()
            .entry(queue_url.to_string())
            .or_default()
            .extend(messages);
        Ok(vec![])
    }
}

#[async_trait]
impl QueueVisibility for FakeQueues {
    async fn set_visibility(
        &self,
        _queue_url: &str,
        receipt_handle: &str,
        seconds: i32,
    ) -> Result<(), PortError> {
        self.visibility
            .lock()
            .unwrap()
            .push((receipt_handle.to_string(), seconds));
        Ok(())
    }
}

/// Status, claim expiry and outcome of one message id.
type IdempotencyRecord = (String, DateTime<Utc>, String);

#[derive(Default)]
pub struct FakeIdempotency {
    pub records: Mutex<HashMap<String, IdempotencyRecord>>,
}

#[async_trait]
impl IdempotencyStore for FakeIdempotency {
    async fn claim(
        &self,
        id: &str,
        now: DateTime<Utc>,
        expires_at: DateTime<Utc>,
    ) -> Result<Claim, PortError> {
        let mut records = self.records.lock().unwrap();
        match records.get(id) {
            Some((status, _, outcome)) if status == "completed" => {
                return Ok(Claim::Completed {
                    outcome: outcome.clone(),
                })
            }
            Some((_, expires, _)) if *expires >= now => {
                return Ok(Claim::InProgress {
                    expires_at: *expires,
                })
            }
            _ => {}
        }
        records.insert(
            id.to_string(),
            ("in_progress".into(), expires_at, String::new()),
        );
        Ok(Claim::Acquired)
    }

    async fn complete(&self, id: &str, outcome: &str, now: DateTime<Utc>) -> Result<(), PortError> {
        self.records.lock().unwrap().insert(
            id.to_string(),
            ("completed".into(), now, outcome.to_string()),
        );
        Ok(())
    }

    async fn release(&self, id: &str) -> Result<(), PortError> {
        let mut records = self.records.lock().unwrap();
        if records.get(id).is_some_and(|r| r.0 == "in_progress") {
            records.remove(id);
        }
        Ok(())
    }
}

#[derive(Default)]
pub struct FakeTasks {
    pub tasks: Mutex<HashMap<String, (SyncTask, HashSet<String>)>>,
    pub pointers: Mutex<HashMap<i64, String>>,
}

impl FakeTasks {
    pub fn task(&self, id: &str) -> SyncTask {
        self.tasks.lock().unwrap()[id].0.clone()
    }
}

#[async_trait]
impl TaskStore for FakeTasks {
    async fn create(
        &self,
        task: &NewTask,
        previous: Option<&str>,
    ) -> Result<TaskCreation, PortError> {
        let mut pointers = self.pointers.lock().unwrap();
        if let Some(current) = pointers.get(&task.profile_id) {
            if Some(current.as_str()) != previous && *current != task.task_id {
                return Ok(TaskCreation::Superseded {
                    current_task_id: current.clone(),
                });
            }
        }
        pointers.insert(task.profile_id, task.task_id.clone());
        let mut tasks = self.tasks.lock().unwrap();
        if tasks.contains_key(&task.task_id) {
            return Ok(TaskCreation::AlreadyExists);
        }
        let new = SyncTask {
            task_id: task.task_id.clone(),
            profile_id: task.profile_id,
            provider: task.provider.clone(),
            period: task.period,
            status: TaskStatus::Pending,
            created_at: task.created_at,
            started_at: None,
            finished_at: None,
            outstanding: 1,
            error: None,
        };
        tasks.insert(task.task_id.clone(), (new, HashSet::new()));
        Ok(TaskCreation::Created)
    }

    async fn get(&self, task_id: &str) -> Result<Option<SyncTask>, PortError> {
        Ok(self.tasks.lock().unwrap().get(task_id).map(|t| t.0.clone()))
    }

    async fn current_for_profile(&self, profile_id: i64) -> Result<Option<SyncTask>, PortError> {
        let id = self.pointers.lock().unwrap().get(&profile_id).cloned();
        Ok(id.and_then(|id| self.tasks.lock().unwrap().get(&id).map(|t| t.0.clone())))
    }

    async fn mark_running(&self, task_id: &str, now: DateTime<Utc>) -> Result<(), PortError> {
        if let Some((task, _)) = self.tasks.lock().unwrap().get_mut(task_id) {
            if task.status == TaskStatus::Pending {
                task.status = TaskStatus::Running;
                task.started_at = Some(now);
            }
        }
        Ok(())
    }

    async fn branch_done(
        &self,
        task_id: &str,
        message_id: &str,
        new: u32,
        now: DateTime<Utc>,
    ) -> Result<Option<TaskProgress>, PortError> {
        let mut tasks = self.tasks.lock().unwrap();
        let Some((task, done)) = tasks.get_mut(task_id) else {
            return Ok(None);
        };
        if done.insert(message_id.to_string()) {
            task.outstanding += i64::from(new) - 1;
            if task.outstanding <= 0 && task.status != TaskStatus::Failed {
                task.status = TaskStatus::Completed;
                task.finished_at = Some(now);
            }
        }
        Ok(Some(TaskProgress {
            outstanding: task.outstanding,
            status: task.status,
        }))
    }

    async fn mark_failed(
        &self,
        task_id: &str,
        reason: &str,
        now: DateTime<Utc>,
    ) -> Result<(), PortError> {
        if let Some((task, _)) = self.tasks.lock().unwrap().get_mut(task_id) {
            task.status = TaskStatus::Failed;
            task.error = Some(reason.to_string());
            task.finished_at = Some(now);
        }
        Ok(())
    }
}
