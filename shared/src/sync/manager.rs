//! Master sync: one run of sync-manager.
//!
//! For each selected profile: skip it when its previous task still runs or
//! nothing is due, otherwise create a task and send `SyncProfile` to the
//! provider's own queue. One provider's failure never stops the others, and
//! every run is recorded so a missed run can be detected.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, NaiveDate, Utc};
use serde::Serialize;
use tracing::{error, info, instrument, warn};

use crate::envelope::{derived_id, Envelope, Step};
use crate::metrics::Unit;
use crate::ports::{
    OutgoingMessage, PortError, ProfileStore, QueueSend, RunLog, TaskCreation, TaskStore,
};
use crate::routing::{Provider, Router};
use crate::sync::profile::{ProfileSelection, SyncProfile};
use crate::tasks::NewTask;

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
    tasks: Arc<dyn TaskStore>,
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
        tasks: Arc<dyn TaskStore>,
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

        let mut outgoing: BTreeMap<String, Vec<(SentTask, OutgoingMessage)>> = BTreeMap::new();
        for profile in &profiles {
            match self.prepare(profile, run_key, now).await {
                Ok(Some((queue, sent, message))) => {
                    outgoing.entry(queue).or_default().push((sent, message))
                }
                Ok(None) => {}
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

        for (queue, batch) in outgoing {
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
            for task in tasks {
                match failed.iter().find(|f| f.id == task.message_id) {
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

    /// Decides for one profile and, if it is to be synced, creates its task.
    async fn prepare(
        &self,
        profile: &SyncProfile,
        run_key: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<(String, SentTask, OutgoingMessage)>, Refusal> {
        let task_id = derived_id(&["task", run_key, &profile.id.to_string()]);
        let current = self
            .tasks
            .current_for_profile(profile.id)
            .await
            .map_err(|e| Refusal::Fail(format!("task store unavailable: {e}")))?;
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
        let task = NewTask {
            task_id: task_id.clone(),
            profile_id: profile.id,
            provider: provider.to_string(),
            period,
            created_at: now,
        };
        match self
            .tasks
            .create(&task, current.as_ref().map(|t| t.task_id.as_str()))
            .await
        {
            Ok(TaskCreation::Created) | Ok(TaskCreation::AlreadyExists) => {}
            Ok(TaskCreation::Superseded { current_task_id }) => {
                return Err(Refusal::Skip(format!(
                    "task {current_task_id} was started for this profile concurrently"
                )))
            }
            Err(e) => return Err(Refusal::Fail(format!("could not create the task: {e}"))),
        }
        let envelope = Envelope::start(
            derived_id(&[&task_id, Step::SyncProfile.as_str()]),
            crate::sync::provider::sync_profile(provider, profile.id, period),
            vec![],
            Some(task_id.clone()),
            now,
        );
        let sent = SentTask {
            profile_id: profile.id,
            provider: provider.to_string(),
            period,
            task_id,
            message_id: envelope.id.clone(),
        };
        let message = OutgoingMessage::new(envelope.id.clone(), envelope.to_body());
        Ok(Some((queue, sent, message)))
    }
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
    use crate::tasks::{SyncTask, TaskStatus};

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

    #[test]
    fn a_profile_that_is_up_to_date_is_skipped() {
        assert!(matches!(
            decide(&profile("routit", true, Some("2025-03-09")), None, "t", now(), hour()),
            Decision::Skip(reason) if reason.contains("up to date")
        ));
    }
}
