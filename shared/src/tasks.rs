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
}

impl TaskStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            TaskStatus::Pending => "pending",
            TaskStatus::Running => "running",
            TaskStatus::Completed => "completed",
            TaskStatus::Failed => "failed",
        }
    }

    pub fn is_finished(self) -> bool {
        matches!(self, TaskStatus::Completed | TaskStatus::Failed)
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
}

impl SyncTask {
    /// Whether this task still blocks a new one for its profile. A task that
    /// has been unfinished for longer than `stale_after` is taken as lost (its
    /// messages sit in a DLQ or expired) so the profile is not blocked forever.
    pub fn blocks_new_run(&self, now: DateTime<Utc>, stale_after: chrono::Duration) -> bool {
        !self.status.is_finished() && now - self.created_at < stale_after
    }
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
    fn statuses_round_trip_through_their_names() {
        for s in [
            TaskStatus::Pending,
            TaskStatus::Running,
            TaskStatus::Completed,
            TaskStatus::Failed,
        ] {
            assert_eq!(s.as_str().parse::<TaskStatus>().unwrap(), s);
        }
    }
}
