//! Sync tasks: one per profile per run, tracked in DynamoDB so operators see
//! what is pending, running, completed or failed, and so sync-manager can skip
//! a profile whose previous task is still running.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskStatus {
    Pending,
    Running,
    Completed,
    Failed,
    /// Unfinished for longer than the configured limit (set by the ops
    /// watch): visible, and no longer blocking a new run of its profile. It
    /// may still complete or fail.
    Stalled,
}

impl TaskStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            TaskStatus::Pending => "pending",
            TaskStatus::Running => "running",
            TaskStatus::Completed => "completed",
            TaskStatus::Failed => "failed",
            TaskStatus::Stalled => "stalled",
        }
    }

    pub fn is_finished(self) -> bool {
        matches!(self, TaskStatus::Completed | TaskStatus::Failed)
    }

    /// Whether a finished branch may still complete a task in this status.
    pub fn may_complete(self) -> bool {
        matches!(
            self,
            TaskStatus::Pending | TaskStatus::Running | TaskStatus::Stalled
        )
    }
}

impl fmt::Display for TaskStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for TaskStatus {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "pending" => Ok(TaskStatus::Pending),
            "running" => Ok(TaskStatus::Running),
            "completed" => Ok(TaskStatus::Completed),
            "failed" => Ok(TaskStatus::Failed),
            "stalled" => Ok(TaskStatus::Stalled),
            other => Err(format!("unknown task status {other:?}")),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct NewTask {
    pub task_id: String,
    pub profile_id: i64,
    pub provider: String,
    pub period: NaiveDate,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SyncTask {
    pub task_id: String,
    pub profile_id: i64,
    pub provider: String,
    pub period: NaiveDate,
    pub status: TaskStatus,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    /// Chain branches still to finish; the task completes when it reaches 0.
    pub outstanding: i64,
    pub error: Option<String>,
    /// Operator-visible history lines ("... reopened: message X runs again").
    pub notes: Vec<String>,
    /// Ids of the task's messages now in a DLQ.
    pub failed_ids: Vec<String>,
}

impl SyncTask {
    /// Whether this task still blocks a new one for its profile. A task that
    /// has been unfinished for longer than `stale_after` is taken as lost (its
    /// messages sit in a DLQ or expired) so the profile is not blocked forever.
    pub fn blocks_new_run(&self, now: DateTime<Utc>, stale_after: chrono::Duration) -> bool {
        matches!(self.status, TaskStatus::Pending | TaskStatus::Running)
            && now - self.created_at < stale_after
    }
}

/// The note a task gets when a retried message reopens it.
pub fn reopened_note(message_id: &str, now: DateTime<Utc>) -> String {
    format!(
        "{} reopened: message {message_id} runs again",
        now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    )
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskProgress {
    pub outstanding: i64,
    pub status: TaskStatus,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(status: TaskStatus, created_at: DateTime<Utc>) -> SyncTask {
        SyncTask {
            task_id: "t".into(),
            profile_id: 1,
            provider: "routit".into(),
            period: NaiveDate::from_ymd_opt(2025, 1, 1).unwrap(),
            status,
            created_at,
            started_at: None,
            finished_at: None,
            outstanding: 1,
            error: None,
            notes: vec![],
            failed_ids: vec![],
        }
    }

    #[test]
    fn a_running_task_blocks_until_it_is_stale() {
        let now = Utc::now();
        let hour = chrono::Duration::hours(1);
        assert!(
            task(TaskStatus::Running, now - chrono::Duration::minutes(5)).blocks_new_run(now, hour)
        );
        assert!(task(TaskStatus::Pending, now).blocks_new_run(now, hour));
        assert!(
            !task(TaskStatus::Running, now - chrono::Duration::minutes(61))
                .blocks_new_run(now, hour)
        );
    }

    #[test]
    fn finished_tasks_never_block() {
        let now = Utc::now();
        let hour = chrono::Duration::hours(1);
        assert!(!task(TaskStatus::Completed, now).blocks_new_run(now, hour));
        assert!(!task(TaskStatus::Failed, now).blocks_new_run(now, hour));
    }

    #[test]
    fn a_stalled_task_does_not_block_but_may_still_complete() {
        let now = Utc::now();
        let hour = chrono::Duration::hours(1);
        assert!(!task(TaskStatus::Stalled, now).blocks_new_run(now, hour));
        assert!(TaskStatus::Stalled.may_complete());
        assert!(!TaskStatus::Failed.may_complete());
        assert!(!TaskStatus::Completed.may_complete());
    }

    #[test]
    fn statuses_round_trip_through_their_names() {
        for s in [
            TaskStatus::Pending,
            TaskStatus::Running,
            TaskStatus::Completed,
            TaskStatus::Failed,
            TaskStatus::Stalled,
        ] {
            assert_eq!(s.as_str().parse::<TaskStatus>().unwrap(), s);
        }
    }
}
