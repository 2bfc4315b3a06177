//! `temctl task show|list`: one sync as a timeline of its steps (step_run in
//! PostgreSQL, DATABASE_URL) and the sync tasks of a deployed stack
//! (its tasks table, from --stack/TEM_STACK).

use std::io::{self, Write};

use chrono::Utc;
use clap::{Args, Subcommand};
use tem_shared::adapters::dynamodb::DynamoTasks;
use tem_shared::adapters::operations::PgStepHistory;
use tem_shared::adapters::task_admin::DynamoTaskAdmin;
use tem_shared::ops::failed::parse_age;
use tem_shared::ops::timeline;
use tem_shared::tasks::TaskStatus;

use crate::db;
use crate::error::CliError;
use crate::stack::StackArgs;

#[derive(Debug, Args)]
pub struct TaskArgs {
    #[command(subcommand)]
    pub command: TaskCommand,
    #[command(flatten)]
    pub stack: StackArgs,
}

#[derive(Debug, Subcommand)]
pub enum TaskCommand {
    /// One sync's chain in order, from SyncProfile to the last
    /// GenerateInvoice: each step's message id, queue, start, duration,
    /// attempts and outcome, fork branches nested.
    Show {
        task_id: String,
        #[arg(long)]
        json: bool,
    },
    /// Sync tasks created in the last --since (default 1d), newest first.
    List {
        /// pending, running, completed, failed or stalled.
        #[arg(long, value_parser = parse_status)]
        status: Option<TaskStatus>,
        #[arg(long, value_name = "AGE", default_value = "1d")]
        since: String,
        #[arg(long)]
        provider: Option<String>,
        #[arg(long)]
        json: bool,
    },
}

fn parse_status(text: &str) -> Result<TaskStatus, String> {
    text.parse()
}

pub async fn run(args: TaskArgs) -> Result<(), CliError> {
    let stack = args.stack.load().await?;
    let tasks = DynamoTasks::new(
        aws_sdk_dynamodb::Client::new(&stack.aws),
        &stack.settings.tasks_table,
        chrono::Duration::days(30),
    );
    let mut out = io::stdout().lock();
    let now = Utc::now();
    match args.command {
        TaskCommand::Show { task_id, json } => {
            let database = db::open(&db::url_from_env()?, 1).await?;
            let history = PgStepHistory::new(database.pool);
            let timeline = timeline::timeline(&history, &tasks, &task_id).await?;
            if timeline.task.is_none() && timeline.steps.is_empty() {
                return Err(CliError::NoSuchTask {
                    task_id,
                    stack: stack.name,
                });
            }
            if json {
                serde_json::to_writer(&mut out, &timeline).map_err(io::Error::from)?;
                writeln!(out)?;
            } else {
                write!(out, "{}", timeline::render(&timeline))?;
            }
        }
        TaskCommand::List {
            status,
            since,
            provider,
            json,
        } => {
            let since = parse_age(&since)?;
            let admin = DynamoTaskAdmin::from_config(&stack.aws, &stack.settings.tasks_table);
            let found =
                timeline::list_tasks(&admin, since, status, provider.as_deref(), now).await?;
            if json {
                serde_json::to_writer(&mut out, &serde_json::json!({ "tasks": found }))
                    .map_err(io::Error::from)?;
                writeln!(out)?;
            } else {
                write!(out, "{}", timeline::render_tasks(&found, now))?;
                writeln!(out, "{} task(s)", found.len())?;
            }
        }
    }
    Ok(())
}
