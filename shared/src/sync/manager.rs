//! Master sync: one run of sync-manager.
//!
//! For each selected profile: skip it when its previous task still runs or
//! nothing is due, otherwise create a task and send `SyncProfile` to the
//! provider's own queue. One provider's failure never stops the others, and
//! every run is recorded so a missed run can be detected.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use chrono::{DateTime, NaiveDate, Utc};
use futures::future;
use serde::Serialize;
use tracing::{error, info, instrument, warn};

use crate::envelope::{derived_id, Envelope, Step};
use crate::metrics::Unit;
use crate::ports::{
    OutgoingMessage, PortError, ProfileStore, QueueSend, RunLog, TaskCreation, TaskFanOut,
};
use crate::routing::{Provider, Router};
use crate::sync::profile::{ProfileSelection, SyncProfile};
use crate::tasks::{NewTask, SyncTask};

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SentTask {
    pub profile_id: i64,
    pub provider: String,
    pub period: NaiveDate,
    pub task_id: String,
    pub message_id: String,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ProfileNote {
    pub profile_id: i64,
    pub provider: String,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RunSummary {
    pub run_id: String,
    pub trigger: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub profiles_seen: usize,
    pub sent: Vec<SentTask>,
    pub skipped: Vec<ProfileNote>,
    /// Routing and sending failures; each is also logged as an error.
    pub failures: Vec<ProfileNote>,
}

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("could not read the sync profiles: {0}; check DATABASE_URL and that migrations ran")]
    Profiles(PortError),
}

pub struct SyncManager {
    profiles: Arc<dyn ProfileStore>,
    tasks: Arc<dyn TaskFanOut>,
    queues: Arc<dyn QueueSend>,
    runs: Arc<dyn RunLog>,
    router: Router,
    /// An unfinished task older than this no longer blocks its profile.
    stale_after: chrono::Duration,
}

/// Why a profile gets no message in this run.
enum Refusal {
    Skip(String),
    Fail(String),
}

/// What to do with one profile in this run.
#[derive(Debug, Clone, PartialEq)]
enum Decision {
    Send {
        provider: Provider,
        period: NaiveDate,
    },
    Skip(String),
    Fail(String),
}

impl SyncManager {
    pub fn new(
        profiles: Arc<dyn ProfileStore>,
        tasks: Arc<dyn TaskFanOut>,
        queues: Arc<dyn QueueSend>,
        runs: Arc<dyn RunLog>,
        router: Router,
        stale_after: chrono::Duration,
    ) -> Self {
        Self {
            profiles,
            tasks,
            queues,
            runs,
            router,
            stale_after,
        }
    }

    /// `run_key` identifies the trigger (the EventBridge event id): the same
    /// event delivered twice creates the same tasks and messages, which are
    /// then deduplicated, instead of a second set.
    #[instrument(skip(self, selection), fields(run_key = %run_key, trigger = %trigger))]
    pub async fn run(
        &self,
        selection: &ProfileSelection,
        run_key: &str,
        trigger: &str,
        now: DateTime<Utc>,
    ) -> Result<RunSummary, SyncError> {
        let profiles = self
            .profiles
            .profiles(selection)
            .await
            .map_err(SyncError::Profiles)?;
        let mut summary = RunSummary {
            run_id: derived_id(&["run", run_key]),
            trigger: trigger.to_string(),
            started_at: now,
            finished_at: now,
            profiles_seen: profiles.len(),
            sent: Vec::new(),
            skipped: Vec::new(),
            failures: Vec::new(),
        };
        if let ProfileSelection::Ids(ids) = selection {
            for id in ids
                .iter()
                .filter(|id| !profiles.iter().any(|p| p.id == **id))
            {
                summary
                    .failures
                    .push(note(*id, "", format!("profile {id} does not exist")));
            }
        }

        // The profiles' current tasks in one go, then every task to create
        // in one go (the store batches both); each profile keeps its own
        // answer, in profile order.
        let ids: Vec<i64> = profiles.iter().map(|p| p.id).collect();
        let current = self.tasks.current_for_profiles(&ids).await;
        let plans: Vec<Result<Planned, Refusal>> = profiles
            .iter()
            .zip(current)
            .map(|(profile, current)| self.plan(profile, current, run_key, now))
            .collect();
        let creations: Vec<(NewTask, Option<String>)> = plans
            .iter()
            .flatten()
            .map(|p| (p.task.clone(), p.previous_task_id.clone()))
            .collect();
        let mut created = self.tasks.create_all(&creations).await.into_iter();
        let mut outgoing: BTreeMap<String, Vec<(SentTask, OutgoingMessage)>> = BTreeMap::new();
        for (profile, plan) in profiles.iter().zip(plans) {
            let prepared = plan.and_then(|planned| {
                let creation = created.next().unwrap_or_else(|| {
                    Err(PortError::new("task store", "gave no answer for this task"))
                });
                prepare(planned, creation, now)
            });
            match prepared {
                Ok((queue, sent, message)) => {
                    outgoing.entry(queue).or_default().push((sent, message))
                }
                Err(Refusal::Skip(reason)) => {
                    info!(profile_id = profile.id, provider = %profile.provider, %reason, "profile skipped");
                    summary
                        .skipped
                        .push(note(profile.id, &profile.provider, reason));
                }
                Err(Refusal::Fail(reason)) => {
                    error!(profile_id = profile.id, provider = %profile.provider, %reason, "profile not synced");
                    summary
                        .failures
                        .push(note(profile.id, &profile.provider, reason));
                }
            }
        }

        // Every provider's messages in one list, so the adapter fills every
        // batch but the last; the providers' queues all at once.
        let sends = outgoing.into_iter().map(|(queue, batch)| async move {
            let (tasks, messages): (Vec<SentTask>, Vec<OutgoingMessage>) =
                batch.into_iter().unzip();
            let failed = match self.queues.send_all(&queue, messages).await {
                Ok(failed) => failed,
                Err(e) => tasks
                    .iter()
                    .map(|t| crate::ports::FailedSend {
                        id: t.message_id.clone(),
                        reason: e.to_string(),
                    })
                    .collect(),
            };
            (tasks, failed)
        });
        for (tasks, failed) in future::join_all(sends).await {
            let failed: HashMap<&str, &crate::ports::FailedSend> =
                failed.iter().map(|f| (f.id.as_str(), f)).collect();
            for task in tasks {
                match failed.get(task.message_id.as_str()) {
                    None => summary.sent.push(task),
                    Some(failure) => {
                        let reason = format!("could not send SyncProfile: {}", failure.reason);
                        error!(profile_id = task.profile_id, provider = %task.provider, %reason, "routing failure");
                        if let Err(e) = self
                            .tasks
                            .mark_failed(&task.task_id, &task.message_id, &reason, Utc::now())
                            .await
                        {
                            warn!(error = %e, "could not mark the task failed");
                        }
                        summary
                            .failures
                            .push(note(task.profile_id, &task.provider, reason));
                    }
                }
            }
        }

        summary.finished_at = Utc::now();
        if let Err(e) = self.runs.record_run(&summary).await {
            warn!(error = %e, "could not record the run");
        }
        // SyncRuns is what the "sync-manager missed 2 runs" alarm watches;
        // RoutingFailures counts the run's routing and sending failures.
        // TaskFailureShare: a 0 per task started (metrics::TASK_FAILURE_SHARE_ALARM).
        let mut counts = vec![
            ("SyncRuns", Unit::Count, 1.0),
            ("FanOutSent", Unit::Count, summary.sent.len() as f64),
            ("FanOutSkipped", Unit::Count, summary.skipped.len() as f64),
            (
                "RoutingFailures",
                Unit::Count,
                summary.failures.len() as f64,
            ),
        ];
        counts.extend(
            summary
                .sent
                .iter()
                .map(|_| ("TaskFailureShare", Unit::Percent, 0.0)),
        );
        crate::metrics::emit_counts(&[], &counts);
        info!(
            seen = summary.profiles_seen,
            sent = summary.sent.len(),
            skipped = summary.skipped.len(),
            failures = summary.failures.len(),
            "sync run finished"
        );
        Ok(summary)
    }

    /// Decides for one profile, given its current task as read: the task
    /// to create and where its message goes, or why none.
    fn plan(
        &self,
        profile: &SyncProfile,
        current: Result<Option<SyncTask>, PortError>,
        run_key: &str,
        now: DateTime<Utc>,
    ) -> Result<Planned, Refusal> {
        let task_id = derived_id(&["task", run_key, &profile.id.to_string()]);
        let current = current.map_err(|e| Refusal::Fail(format!("task store unavailable: {e}")))?;
        let (provider, period) =
            match decide(profile, current.as_ref(), &task_id, now, self.stale_after) {
                Decision::Send { provider, period } => (provider, period),
                Decision::Skip(reason) => return Err(Refusal::Skip(reason)),
                Decision::Fail(reason) => return Err(Refusal::Fail(reason)),
            };
        let queue = self
            .router
            .provider_queue(provider)
            .map_err(|e| Refusal::Fail(e.to_string()))?
            .to_string();
        Ok(Planned {
            queue,
            provider,
            task: NewTask {
                task_id,
                profile_id: profile.id,
                provider: provider.to_string(),
                period,
                created_at: now,
            },
            previous_task_id: current.map(|t| t.task_id),
        })
    }
}

/// A task to create for a profile, and where its message goes.
struct Planned {
    queue: String,
    provider: Provider,
    task: NewTask,
    /// The profile's current task when it was read.
    previous_task_id: Option<String>,
}

/// The profile's message, once its task exists.
fn prepare(
    planned: Planned,
    creation: Result<TaskCreation, PortError>,
    now: DateTime<Utc>,
) -> Result<(String, SentTask, OutgoingMessage), Refusal> {
    match creation {
        Ok(TaskCreation::Created) | Ok(TaskCreation::AlreadyExists) => {}
        Ok(TaskCreation::Superseded { current_task_id }) => {
            return Err(Refusal::Skip(format!(
                "task {current_task_id} was started for this profile concurrently"
            )))
        }
        Err(e) => return Err(Refusal::Fail(format!("could not create the task: {e}"))),
    }
    let Planned {
        queue,
        provider,
        task,
        ..
    } = planned;
    let envelope = Envelope::start(
        derived_id(&[&task.task_id, Step::SyncProfile.as_str()]),
        crate::sync::provider::sync_profile(provider, task.profile_id, task.period),
        vec![],
        Some(task.task_id.clone()),
        now,
    );
    let sent = SentTask {
        profile_id: task.profile_id,
        provider: task.provider,
        period: task.period,
        task_id: task.task_id,
        message_id: envelope.id.clone(),
    };
    let message = OutgoingMessage::new(envelope.id.clone(), envelope.to_body());
    Ok((queue, sent, message))
}

/// The pure decision for one profile, given its current task.
fn decide(
    profile: &SyncProfile,
    current: Option<&crate::tasks::SyncTask>,
    task_id: &str,
    now: DateTime<Utc>,
    stale_after: chrono::Duration,
) -> Decision {
    if !profile.active {
        return Decision::Skip("profile is inactive".into());
    }
    let provider = match profile.provider.parse::<Provider>() {
        Ok(provider) => provider,
        Err(e) => return Decision::Fail(e.to_string()),
    };
    if let Some(task) = current {
        // The same run delivered twice resends its own task's message.
        if task.task_id != task_id && task.blocks_new_run(now, stale_after) {
            return Decision::Skip(format!(
                "previous task {} is still {} (since {})",
                task.task_id, task.status, task.created_at
            ));
        }
        if task.task_id == task_id {
            return Decision::Send {
                provider,
                period: task.period,
            };
        }
    }
    match profile.due_period(now.date_naive()) {
        Some(period) => Decision::Send { provider, period },
        None => Decision::Skip(format!(
            "up to date: last period fetched is {}",
            profile
                .watermark
                .map(|w| w.to_string())
                .unwrap_or_else(|| "none".into())
        )),
    }
}

fn note(profile_id: i64, provider: &str, reason: String) -> ProfileNote {
    ProfileNote {
        profile_id,
        provider: provider.to_string(),
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fakes::{FakeProfiles, FakeQueues, FakeRunLog, FakeTasks};
    use crate::tasks::TaskStatus;
    use std::sync::Mutex;

    fn now() -> DateTime<Utc> {
        "2025-03-10T12:00:00Z".parse().unwrap()
    }

    fn profile(provider: &str, active: bool, watermark: Option<&str>) -> SyncProfile {
        SyncProfile {
            id: 4,
            name: "acme".into(),
            provider: provider.into(),
            base_url: "http://sim".into(),
            credentials_secret: "s".into(),
            active,
            first_period: "2025-03-01".parse().unwrap(),
            watermark: watermark.map(|w| w.parse().unwrap()),
        }
    }

    fn task(id: &str, status: TaskStatus, minutes_ago: i64) -> SyncTask {
        SyncTask {
            task_id: id.into(),
            profile_id: 4,
            provider: "routit".into(),
            period: "2025-03-05".parse().unwrap(),
            status,
            created_at: now() - chrono::Duration::minutes(minutes_ago),
            started_at: None,
            finished_at: None,
            outstanding: 1,
            error: None,
            notes: vec![],
            failed_ids: vec![],
        }
    }

    fn hour() -> chrono::Duration {
        chrono::Duration::hours(1)
    }

    #[test]
    fn an_active_profile_with_a_due_period_is_sent() {
        assert_eq!(
            decide(
                &profile("routit", true, Some("2025-03-08")),
                None,
                "t",
                now(),
                hour()
            ),
            Decision::Send {
                provider: Provider::Routit,
                period: "2025-03-09".parse().unwrap()
            }
        );
    }

    #[test]
    fn an_inactive_profile_is_skipped() {
        assert!(matches!(
            decide(&profile("routit", false, None), None, "t", now(), hour()),
            Decision::Skip(reason) if reason.contains("inactive")
        ));
    }

    #[test]
    fn an_unknown_provider_is_a_failure_not_a_skip() {
        assert!(matches!(
            decide(&profile("ben", true, None), None, "t", now(), hour()),
            Decision::Fail(reason) if reason.contains("unknown provider")
        ));
    }

    #[test]
    fn a_profile_whose_previous_task_runs_is_skipped_with_the_task_named() {
        let running = task("old", TaskStatus::Running, 3);
        assert!(matches!(
            decide(&profile("routit", true, None), Some(&running), "new", now(), hour()),
            Decision::Skip(reason) if reason.contains("old") && reason.contains("running")
        ));
    }

    #[test]
    fn a_stale_or_finished_previous_task_does_not_block() {
        for previous in [
            task("old", TaskStatus::Running, 120),
            task("old", TaskStatus::Completed, 1),
            task("old", TaskStatus::Failed, 1),
        ] {
            assert!(matches!(
                decide(
                    &profile("routit", true, None),
                    Some(&previous),
                    "new",
                    now(),
                    hour()
                ),
                Decision::Send { .. }
            ));
        }
    }

    #[test]
    fn the_same_run_delivered_twice_resends_its_own_period() {
        let own = task("same", TaskStatus::Pending, 0);
        assert_eq!(
            decide(
                &profile("routit", true, Some("2025-03-08")),
                Some(&own),
                "same",
                now(),
                hour()
            ),
            Decision::Send {
                provider: Provider::Routit,
                period: "2025-03-05".parse().unwrap()
            }
        );
    }

    fn due_profile(id: i64, provider: &str) -> SyncProfile {
        SyncProfile {
            id,
            provider: provider.into(),
            ..profile(provider, true, None)
        }
    }

    /// A manager over fakes, with a queue `q-<provider>` per provider.
    fn manager(
        profiles: Vec<SyncProfile>,
        queues: Arc<FakeQueues>,
        tasks: Arc<FakeTasks>,
    ) -> SyncManager {
        let router = Router::new(
            Provider::ALL
                .into_iter()
                .map(|p| (p, format!("q-{}", p.as_str())))
                .collect(),
        );
        SyncManager::new(
            Arc::new(FakeProfiles {
                profiles: Mutex::new(profiles),
            }),
            tasks,
            queues,
            Arc::new(FakeRunLog::default()),
            router,
            hour(),
        )
    }

    #[tokio::test]
    async fn each_providers_messages_go_out_in_full_batches_of_ten() {
        let profiles: Vec<SyncProfile> = (1..=25)
            .map(|id| due_profile(id, "routit"))
            .chain((26..=28).map(|id| due_profile(id, "kpn_een")))
            .collect();
        let queues = Arc::new(FakeQueues::default());
        let tasks = Arc::new(FakeTasks::default());
        let summary = manager(profiles, queues.clone(), tasks.clone())
            .run(&ProfileSelection::All, "tick", "schedule", now())
            .await
            .unwrap();

        let mut batches = queues.batches.lock().unwrap().clone();
        batches.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
        assert_eq!(
            batches,
            vec![
                ("q-kpn_een".to_string(), 3),
                ("q-routit".to_string(), 10),
                ("q-routit".to_string(), 10),
                ("q-routit".to_string(), 5),
            ]
        );
        assert_eq!(summary.sent.len(), 28);
        assert!(summary.skipped.is_empty() && summary.failures.is_empty());
        assert_eq!(tasks.tasks.lock().unwrap().len(), 28);
        // The summary lists the profiles in order whatever order the
        // concurrent task writes finished in.
        let routit: Vec<i64> = summary
            .sent
            .iter()
            .filter(|t| t.provider == "routit")
            .map(|t| t.profile_id)
            .collect();
        assert_eq!(routit, (1..=25).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn a_provider_whose_queue_fails_does_not_stop_the_others() {
        let profiles = vec![
            due_profile(1, "routit"),
            due_profile(2, "t_mobile"),
            due_profile(3, "routit"),
        ];
        let queues = Arc::new(FakeQueues::default());
        queues.broken.lock().unwrap().insert("q-routit".into());
        let tasks = Arc::new(FakeTasks::default());
        let summary = manager(profiles, queues.clone(), tasks.clone())
            .run(&ProfileSelection::All, "tick", "schedule", now())
            .await
            .unwrap();

        assert_eq!(
            summary
                .sent
                .iter()
                .map(|t| t.profile_id)
                .collect::<Vec<_>>(),
            vec![2]
        );
        assert_eq!(queues.on("q-t_mobile").len(), 1);
        let failed: Vec<i64> = summary.failures.iter().map(|f| f.profile_id).collect();
        assert_eq!(failed, vec![1, 3]);
        for task in summary
            .failures
            .iter()
            .map(|f| derived_id(&["task", "tick", &f.profile_id.to_string()]))
        {
            assert_eq!(tasks.task(&task).status, TaskStatus::Failed);
        }
    }

    #[test]
    fn a_profile_that_is_up_to_date_is_skipped() {
        assert!(matches!(
            decide(&profile("routit", true, Some("2025-03-09")), None, "t", now(), hour()),
            Decision::Skip(reason) if reason.contains("up to date")
        ));
    }
}
