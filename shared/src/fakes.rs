//! In-memory fakes of the ports, for unit tests of domain logic only.
//! Integration tests use the real adapters against the emulator.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Mutex;

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};

use crate::ports::*;
use crate::sync::manager::RunSummary;
use crate::sync::profile::{ProfileSelection, SyncProfile, WatermarkAdvance};
use crate::tasks::{NewTask, SyncTask, TaskProgress, TaskStatus};

#[derive(Default)]
pub struct FakeQueues {
    pub sent: Mutex<BTreeMap<String, Vec<OutgoingMessage>>>,
    /// Every batch call SQS would get, in order: (queue URL, messages in
    /// it), split as the SQS adapter splits (`ports::send_batches`).
    pub batches: Mutex<Vec<(String, usize)>>,
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
        self.batches
            .lock()
            .unwrap()
            .extend(send_batches(&messages).map(|batch| (queue_url.to_string(), batch.len())));
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

impl FakeIdempotency {
    pub fn status(&self, id: &str) -> Option<String> {
        self.records.lock().unwrap().get(id).map(|r| r.0.clone())
    }
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
        let after_dead_letter = match records.get(id) {
            Some((status, _, outcome)) if status == "completed" => {
                return Ok(Claim::Completed {
                    outcome: outcome.clone(),
                })
            }
            Some((status, _, _)) if status == "dead_lettered" => true,
            Some((_, expires, _)) if *expires >= now => {
                return Ok(Claim::InProgress {
                    expires_at: *expires,
                })
            }
            _ => false,
        };
        records.insert(
            id.to_string(),
            ("in_progress".into(), expires_at, String::new()),
        );
        Ok(Claim::Acquired { after_dead_letter })
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

    async fn dead_lettered(
        &self,
        id: &str,
        reason: &str,
        now: DateTime<Utc>,
    ) -> Result<(), PortError> {
        let mut records = self.records.lock().unwrap();
        if records.get(id).is_some_and(|r| r.0 == "completed") {
            return Ok(());
        }
        records.insert(
            id.to_string(),
            ("dead_lettered".into(), now, reason.to_string()),
        );
        Ok(())
    }
}

/// One task with what DynamoDB keeps beside it.
#[derive(Debug, Clone)]
pub struct FakeTask {
    pub task: SyncTask,
    pub done_ids: HashSet<String>,
    pub handoffs: BTreeSet<String>,
}

/// Follows the same rules as `adapters::dynamodb::DynamoTasks`.
#[derive(Default)]
pub struct FakeTasks {
    pub tasks: Mutex<HashMap<String, FakeTask>>,
    pub pointers: Mutex<HashMap<i64, String>>,
}

impl FakeTasks {
    pub fn task(&self, id: &str) -> SyncTask {
        self.tasks.lock().unwrap()[id].task.clone()
    }

    pub fn handoffs(&self, id: &str) -> BTreeSet<String> {
        self.tasks.lock().unwrap()[id].handoffs.clone()
    }

    /// Changes a task directly, e.g. to set up a finished one.
    pub fn update(&self, id: &str, change: impl FnOnce(&mut FakeTask)) {
        change(
            self.tasks
                .lock()
                .unwrap()
                .get_mut(id)
                .expect("no such task"),
        );
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
            notes: vec![],
            failed_ids: vec![],
        };
        tasks.insert(
            task.task_id.clone(),
            FakeTask {
                task: new,
                done_ids: HashSet::new(),
                handoffs: BTreeSet::new(),
            },
        );
        Ok(TaskCreation::Created)
    }

    async fn get(&self, task_id: &str) -> Result<Option<SyncTask>, PortError> {
        Ok(self
            .tasks
            .lock()
            .unwrap()
            .get(task_id)
            .map(|t| t.task.clone()))
    }

    async fn current_for_profile(&self, profile_id: i64) -> Result<Option<SyncTask>, PortError> {
        let id = self.pointers.lock().unwrap().get(&profile_id).cloned();
        Ok(id.and_then(|id| self.tasks.lock().unwrap().get(&id).map(|t| t.task.clone())))
    }

    async fn mark_running(&self, task_id: &str, now: DateTime<Utc>) -> Result<(), PortError> {
        if let Some(t) = self.tasks.lock().unwrap().get_mut(task_id) {
            if t.task.status == TaskStatus::Pending {
                t.task.status = TaskStatus::Running;
                t.task.started_at = Some(now);
            }
        }
        Ok(())
    }

    async fn branch_done(
        &self,
        task_id: &str,
        message_id: &str,
        new: u32,
        handoff: HandoffChange<'_>,
        now: DateTime<Utc>,
    ) -> Result<Option<TaskProgress>, PortError> {
        let mut tasks = self.tasks.lock().unwrap();
        let Some(t) = tasks.get_mut(task_id) else {
            return Ok(None);
        };
        let counts = t.task.outstanding > 0
            && !t.done_ids.contains(message_id)
            && match handoff {
                HandoffChange::Closes(token) => t.handoffs.contains(token),
                _ => true,
            };
        if counts {
            t.done_ids.insert(message_id.to_string());
            t.task.outstanding = (t.task.outstanding + i64::from(new) - 1).max(0);
            match handoff {
                HandoffChange::Opens(token) => {
                    t.handoffs.insert(token.to_string());
                }
                HandoffChange::Closes(token) => {
                    t.handoffs.remove(token);
                }
                HandoffChange::None => {}
            }
            if t.task.outstanding == 0 && t.task.status.may_complete() {
                t.task.status = TaskStatus::Completed;
                t.task.finished_at = Some(now);
            }
        }
        Ok(Some(TaskProgress {
            outstanding: t.task.outstanding,
            status: t.task.status,
        }))
    }

    async fn mark_failed(
        &self,
        task_id: &str,
        message_id: &str,
        reason: &str,
        now: DateTime<Utc>,
    ) -> Result<(), PortError> {
        if let Some(t) = self.tasks.lock().unwrap().get_mut(task_id) {
            if t.task.status == TaskStatus::Completed {
                return Ok(());
            }
            if !t.task.failed_ids.iter().any(|id| id == message_id) {
                t.task.failed_ids.push(message_id.to_string());
            }
            // The first failure's time and reason stay.
            t.task.status = TaskStatus::Failed;
            t.task.error.get_or_insert_with(|| reason.to_string());
            t.task.finished_at.get_or_insert(now);
        }
        Ok(())
    }

    async fn reopen(
        &self,
        task_id: &str,
        message_id: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<TaskStatus>, PortError> {
        let mut tasks = self.tasks.lock().unwrap();
        let Some(t) = tasks.get_mut(task_id) else {
            return Ok(None);
        };
        t.task.failed_ids.retain(|id| id != message_id);
        if t.task.failed_ids.is_empty() && t.task.status == TaskStatus::Failed {
            t.task.status = TaskStatus::Running;
            t.task.finished_at = None;
            t.task.error = None;
            t.task
                .notes
                .push(crate::tasks::reopened_note(message_id, now));
        }
        Ok(Some(t.task.status))
    }

    async fn adoptable(
        &self,
        task_id: &str,
        token: &str,
        message_id: &str,
    ) -> Result<bool, PortError> {
        Ok(self
            .tasks
            .lock()
            .unwrap()
            .get(task_id)
            .is_some_and(|t| t.handoffs.contains(token) || t.done_ids.contains(message_id)))
    }
}

/// One profile at a time, the trait's defaults.
impl TaskFanOut for FakeTasks {}

/// Sync profiles in memory; selects as `adapters::postgres::PgProfiles` does.
#[derive(Default)]
pub struct FakeProfiles {
    pub profiles: Mutex<Vec<SyncProfile>>,
}

#[async_trait]
impl ProfileStore for FakeProfiles {
    async fn profiles(&self, selection: &ProfileSelection) -> Result<Vec<SyncProfile>, PortError> {
        let mut found: Vec<SyncProfile> = self
            .profiles
            .lock()
            .unwrap()
            .iter()
            .filter(|p| match selection {
                ProfileSelection::All => p.active,
                ProfileSelection::Ids(ids) => ids.contains(&p.id),
                ProfileSelection::Providers(providers) => {
                    p.active && providers.contains(&p.provider)
                }
            })
            .cloned()
            .collect();
        found.sort_by_key(|p| p.id);
        Ok(found)
    }

    async fn profile(&self, profile_id: i64) -> Result<Option<SyncProfile>, PortError> {
        Ok(self
            .profiles
            .lock()
            .unwrap()
            .iter()
            .find(|p| p.id == profile_id)
            .cloned())
    }

    async fn advance_watermark(
        &self,
        profile_id: i64,
        period: NaiveDate,
    ) -> Result<WatermarkAdvance, PortError> {
        let mut profiles = self.profiles.lock().unwrap();
        let Some(p) = profiles.iter_mut().find(|p| p.id == profile_id) else {
            return Ok(WatermarkAdvance::WouldSkip { watermark: None });
        };
        if p.has_fetched(period) {
            return Ok(WatermarkAdvance::AlreadyThere);
        }
        let next = match p.watermark {
            Some(w) => w.succ_opt(),
            None => Some(p.first_period),
        };
        if next != Some(period) {
            return Ok(WatermarkAdvance::WouldSkip {
                watermark: p.watermark,
            });
        }
        p.watermark = Some(period);
        Ok(WatermarkAdvance::Advanced)
    }
}

/// The runs recorded, in order.
#[derive(Default)]
pub struct FakeRunLog {
    pub runs: Mutex<Vec<RunSummary>>,
}

#[async_trait]
impl RunLog for FakeRunLog {
    async fn record_run(&self, run: &RunSummary) -> Result<(), PortError> {
        self.runs.lock().unwrap().push(run.clone());
        Ok(())
    }
}

/// Every journal call, in order; `broken` makes every call fail.
#[derive(Default)]
pub struct FakeJournal {
    pub starts: Mutex<Vec<StepStart>>,
    pub ends: Mutex<Vec<(i64, StepEnd)>>,
    pub broken: std::sync::atomic::AtomicBool,
}

impl FakeJournal {
    fn check(&self) -> Result<(), PortError> {
        if self.broken.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(PortError::new("fake journal", "database unavailable"));
        }
        Ok(())
    }
}

#[async_trait]
impl StepJournal for FakeJournal {
    async fn started(&self, start: &StepStart) -> Result<i64, PortError> {
        self.check()?;
        let mut starts = self.starts.lock().unwrap();
        starts.push(start.clone());
        Ok(starts.len() as i64)
    }

    async fn finished(&self, id: i64, end: &StepEnd) -> Result<(), PortError> {
        self.check()?;
        self.ends.lock().unwrap().push((id, end.clone()));
        Ok(())
    }
}

/// A failure with its status and who resolved it.
type FailureEntry = (FailureRecord, String, Option<String>);

/// Failures by id with their status and resolver; `broken` fails every call.
#[derive(Default)]
pub struct FakeFailures {
    pub records: Mutex<BTreeMap<String, FailureEntry>>,
    pub broken: std::sync::atomic::AtomicBool,
}

impl FakeFailures {
    pub fn status(&self, id: &str) -> Option<String> {
        self.records.lock().unwrap().get(id).map(|r| r.1.clone())
    }
}

#[async_trait]
impl FailureLog for FakeFailures {
    async fn record(&self, failure: &FailureRecord) -> Result<(), PortError> {
        if self.broken.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(PortError::new("fake failures", "database unavailable"));
        }
        self.records
            .lock()
            .unwrap()
            .insert(failure.id.clone(), (failure.clone(), "failed".into(), None));
        Ok(())
    }

    async fn resolved(&self, id: &str, by: &str, _now: DateTime<Utc>) -> Result<bool, PortError> {
        if self.broken.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(PortError::new("fake failures", "database unavailable"));
        }
        let mut records = self.records.lock().unwrap();
        match records.get_mut(id) {
            Some(r) if r.1 == "failed" => {
                r.1 = "retried".into();
                r.2 = Some(by.to_string());
                Ok(true)
            }
            _ => Ok(false),
        }
    }
}
