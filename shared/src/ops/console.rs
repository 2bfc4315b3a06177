//! The ops function's failed-message, task and watch commands: the same
//! code as `temctl failed` / `temctl task`, answering with JSON for the
//! console (events/ops/console-*.json) and the watch schedule.

use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use crate::ops::failed::{self, FailedPorts, FailedSelection, RetryOptions, SelectionError};
use crate::ops::settings::OpsSettings;
use crate::ops::timeline;
use crate::ops::watch::{self, WatchPorts, WatchSettings};
use crate::ops::OpsCommand;
use crate::ports::{AbandonedImports, FailedMessage, IdempotencyStore, PortError, TaskStore};
use crate::tasks::TaskStatus;

/// Who the console's retries and removals are recorded as done by.
pub const CONSOLE: &str = "ops console";

#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    #[error(transparent)]
    Port(#[from] PortError),
    #[error(transparent)]
    Selection(#[from] SelectionError),
    #[error("no failed message {0}; send failed-list with \"status\": \"any\" to see them all")]
    NoSuchFailure(String),
    #[error(
        "failed-remove removes {0} message(s) for good: add \"yes\": true to the event to confirm"
    )]
    Unconfirmed(usize),
    #[error("{0:?} is not a task status; use pending, running, completed, failed or stalled")]
    BadStatus(String),
    #[error("{0} is not a command of this module")]
    NotHere(&'static str),
}

pub struct Console<'a> {
    pub failed: FailedPorts<'a>,
    pub imports: &'a dyn AbandonedImports,
    pub tasks: &'a dyn TaskStore,
    pub idempotency: &'a dyn IdempotencyStore,
    pub settings: &'a OpsSettings,
    pub watch: &'a WatchSettings,
}

impl Console<'_> {
    async fn rows(
        &self,
        selection: &FailedSelection,
        now: DateTime<Utc>,
    ) -> Result<Vec<FailedMessage>, ConsoleError> {
        if !selection.ids.is_empty() && !selection.all {
            let rows = self.failed.failures.get_many(&selection.ids).await?;
            if let Some(missing) = selection
                .ids
                .iter()
                .find(|id| !rows.iter().any(|r| &r.failure.id == *id))
            {
                return Err(ConsoleError::NoSuchFailure(missing.clone()));
            }
            return Ok(rows);
        }
        Ok(self
            .failed
            .failures
            .find(&selection.filter(Some(self.settings), now)?)
            .await?)
    }

    /// Runs one of this module's commands; `migrate` (and others that need
    /// the platform itself) are the function's own.
    pub async fn run(
        &self,
        command: OpsCommand,
        now: DateTime<Utc>,
    ) -> Result<Value, ConsoleError> {
        Ok(match command {
            OpsCommand::FailedList(selection) => {
                let filter = selection.filter(Some(self.settings), now)?;
                let rows = failed::list(self.failed, &filter, now).await?;
                json!({"command": "failed-list", "count": rows.len(), "failed": rows})
            }
            OpsCommand::FailedStats(selection) => {
                let filter = selection.filter(Some(self.settings), now)?;
                json!({"command": "failed-stats", "stats": failed::stats(self.failed, &filter, now).await?})
            }
            OpsCommand::FailedShow { id } => match failed::show(self.failed, &id).await? {
                Some(detail) => json!({"command": "failed-show", "detail": detail}),
                None => return Err(ConsoleError::NoSuchFailure(id)),
            },
            OpsCommand::FailedRetry(selection) => {
                selection.require_named("retry")?;
                let rows = self.rows(&selection, now).await?;
                let options = RetryOptions {
                    dry_run: selection.dry_run,
                    by: CONSOLE.into(),
                    stop_after: None,
                };
                json!({"command": "failed-retry", "report": failed::retry(self.failed, rows, &options, now).await?})
            }
            OpsCommand::FailedRemove(selection) => {
                selection.require_named("remove")?;
                let rows = self.rows(&selection, now).await?;
                if !selection.yes {
                    return Err(ConsoleError::Unconfirmed(rows.len()));
                }
                json!({"command": "failed-remove", "report": failed::remove(self.failed, rows, CONSOLE, now).await?})
            }
            OpsCommand::TaskShow { task_id } => {
                let t = timeline::timeline(self.failed.history, self.tasks, &task_id).await?;
                json!({"command": "task-show", "text": timeline::render(&t), "timeline": t})
            }
            OpsCommand::TaskList {
                status,
                since,
                provider,
            } => {
                let status = match status {
                    Some(s) => Some(
                        s.parse::<TaskStatus>()
                            .map_err(|_| ConsoleError::BadStatus(s))?,
                    ),
                    None => None,
                };
                let since = failed::parse_age(since.as_deref().unwrap_or("1d"))?;
                let tasks = timeline::list_tasks(
                    self.failed.tasks,
                    since,
                    status,
                    provider.as_deref(),
                    now,
                )
                .await?;
                json!({"command": "task-list", "count": tasks.len(), "tasks": tasks})
            }
            OpsCommand::Watch {} => {
                let ports = WatchPorts {
                    failed: self.failed,
                    tasks: self.tasks,
                    idempotency: self.idempotency,
                    imports: self.imports,
                };
                json!({"command": "watch", "report": watch::watch(ports, self.settings, self.watch, now).await})
            }
            OpsCommand::Migrate {} => return Err(ConsoleError::NotHere("migrate")),
            OpsCommand::Status { .. } => return Err(ConsoleError::NotHere("status")),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fakes::{FakeIdempotency, FakeTasks};
    use crate::ops::fakes::{row, World};
    use crate::ports::FailureStatus;
    use serde_json::json;

    struct NoImports;

    #[async_trait::async_trait]
    impl AbandonedImports for NoImports {
        async fn mark_abandoned(&self, _now: DateTime<Utc>) -> Result<u64, PortError> {
            Ok(0)
        }
    }

    async fn run(world: &World, event: Value) -> Result<Value, ConsoleError> {
        let tasks = FakeTasks::default();
        let idempotency = FakeIdempotency::default();
        let settings = OpsSettings {
            queues: vec![],
            tasks_table: "t".into(),
            idempotency_table: "i".into(),
        };
        let console = Console {
            failed: world.ports(),
            imports: &NoImports,
            tasks: &tasks,
            idempotency: &idempotency,
            settings: &settings,
            watch: &WatchSettings::default(),
        };
        console
            .run(OpsCommand::from_event(&event).unwrap(), Utc::now())
            .await
    }

    #[tokio::test]
    async fn a_console_remove_without_yes_is_refused_and_says_what_to_add() {
        let world = World::default();
        world.add_row(row("a", "q", "dlq", "{}", Utc::now()));
        let err = run(&world, json!({"command": "failed-remove", "ids": ["a"]}))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("\"yes\": true"), "{err}");
        assert_eq!(world.row("a").status, FailureStatus::Failed);
        let done = run(
            &world,
            json!({"command": "failed-remove", "ids": ["a"], "yes": true}),
        )
        .await
        .unwrap();
        assert_eq!(done["report"]["removed"], json!(["a"]));
    }

    #[tokio::test]
    async fn a_console_retry_that_names_nothing_is_refused_and_an_unknown_id_is_named() {
        let world = World::default();
        let err = run(
            &world,
            json!({"command": "failed-retry", "provider": "routit"}),
        )
        .await
        .unwrap_err();
        assert!(err.to_string().contains("\"all\": true"), "{err}");
        let err = run(&world, json!({"command": "failed-retry", "ids": ["nope"]}))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("nope"), "{err}");
    }
}
