//! `temctl failed list|stats|show|retry|remove`: the failed messages of a
//! deployed stack, as Symfony Messenger's `messenger:failed:*` commands.
//! The rows are in PostgreSQL (DATABASE_URL); retries and DLQ clean-up go
//! to SQS with the usual AWS environment. The stack (--stack/TEM_STACK) is
//! optional: it lets `--queue` take tem's queue names (`routit`, `import`).

use std::io::{self, BufRead, IsTerminal, Write};

use chrono::Utc;
use clap::{Args, Subcommand};
use tem_shared::adapters::operations::{PgFailures, PgStepHistory};
use tem_shared::adapters::sqs::{SqsDeadLetters, SqsQueues};
use tem_shared::adapters::task_admin::DynamoTaskAdmin;
use tem_shared::ops::failed::{
    self, human_age, FailedPorts, FailedSelection, RetryOptions, SelectionError,
};
use tem_shared::ports::FailureAdmin;

use crate::db;
use crate::error::CliError;
use crate::stack::StackArgs;

#[derive(Debug, Args)]
pub struct FailedArgs {
    #[command(subcommand)]
    pub command: FailedCommand,
    #[command(flatten)]
    pub stack: StackArgs,
}

#[derive(Debug, Subcommand)]
pub enum FailedCommand {
    /// One row per failed message: id, step, provider, task, attempts,
    /// failed_at, age and the first line of the error.
    List(ListArgs),
    /// Counts per queue, step, provider and error kind, and the oldest age.
    Stats(ListArgs),
    /// One failed message: its envelope, the chain still to run, every
    /// attribute and its attempt history.
    Show(ShowArgs),
    /// Send failed messages back to their queues; each runs exactly once
    /// more and reopens its task.
    Retry(RetryArgs),
    /// Remove failed messages (asks for confirmation, or takes --yes); the
    /// removal is noted on each task.
    Remove(RemoveArgs),
}

#[derive(Debug, Clone, Args, Default)]
pub struct Filters {
    /// The source queue: tem's name (routit, import, totals) or SQS's.
    #[arg(long)]
    pub queue: Option<String>,
    /// The failed step, e.g. SyncProfile, ImportCdrFile.
    #[arg(long)]
    pub step: Option<String>,
    /// The carrier, e.g. routit, t_mobile.
    #[arg(long)]
    pub provider: Option<String>,
    /// The error kind: invalid, permanent, retries_exhausted, loop, routing, redriven.
    #[arg(long)]
    pub kind: Option<String>,
    /// Text in the error or the body (case-insensitive).
    #[arg(long, value_name = "TEXT")]
    pub grep: Option<String>,
    /// Only failures newer than this age: 90s, 30m, 2h, 1d.
    #[arg(long, value_name = "AGE")]
    pub since: Option<String>,
    /// Only the failures of this sync task.
    #[arg(long, value_name = "ID")]
    pub task: Option<String>,
    /// failed (default: open failures), retried, removed or any.
    #[arg(long)]
    pub status: Option<String>,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub filters: Filters,
    /// At most this many rows.
    #[arg(long, value_name = "N")]
    pub limit: Option<u32>,
    /// One JSON object on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ShowArgs {
    pub id: String,
    /// One JSON object on stdout.
    #[arg(long)]
    pub json: bool,
}

/// Which failures a retry or a removal acts on.
#[derive(Debug, Args)]
pub struct Target {
    /// Message ids (from `temctl failed list`).
    #[arg(value_name = "ID")]
    pub ids: Vec<String>,
    /// Every failure matching the filters.
    #[arg(long)]
    pub all: bool,
    #[command(flatten)]
    pub filters: Filters,
    /// One JSON object on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct RetryArgs {
    #[command(flatten)]
    pub target: Target,
    /// List what would be sent, and send nothing.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, Args)]
pub struct RemoveArgs {
    #[command(flatten)]
    pub target: Target,
    /// Do not ask for confirmation.
    #[arg(long)]
    pub yes: bool,
}

fn selection(
    filters: &Filters,
    ids: Vec<String>,
    all: bool,
    limit: Option<u32>,
) -> FailedSelection {
    FailedSelection {
        ids,
        all,
        queue: filters.queue.clone(),
        step: filters.step.clone(),
        provider: filters.provider.clone(),
        kind: filters.kind.clone(),
        grep: filters.grep.clone(),
        since: filters.since.clone(),
        task: filters.task.clone(),
        status: filters.status.clone(),
        limit,
        ..FailedSelection::default()
    }
}

/// Who an operation is recorded as done by.
fn operator() -> String {
    std::env::var("USER")
        .or_else(|_| std::env::var("USERNAME"))
        .map(|u| format!("temctl ({u})"))
        .unwrap_or_else(|_| "temctl".into())
}

struct Context {
    failures: PgFailures,
    history: PgStepHistory,
    sqs: SqsQueues,
    dead_letters: SqsDeadLetters,
    tasks: DynamoTaskAdmin,
    settings: Option<tem_shared::ops::settings::OpsSettings>,
}

impl Context {
    fn ports(&self) -> FailedPorts<'_> {
        FailedPorts {
            failures: &self.failures,
            history: &self.history,
            send: &self.sqs,
            receive: &self.dead_letters,
            delete: &self.dead_letters,
            release: &self.dead_letters,
            tasks: &self.tasks,
        }
    }
}

async fn context(stack: &StackArgs) -> Result<Context, CliError> {
    let database = db::open(&db::url_from_env()?, 2).await?;
    let (aws, settings) = match stack.stack.as_deref().filter(|s| !s.trim().is_empty()) {
        Some(_) => {
            let stack = stack.load().await?;
            (stack.aws, Some(stack.settings))
        }
        None => (tem_shared::adapters::aws_config().await, None),
    };
    let tasks_table = settings
        .as_ref()
        .map(|s| s.tasks_table.clone())
        .unwrap_or_default();
    Ok(Context {
        failures: PgFailures::new(database.pool.clone()),
        history: PgStepHistory::new(database.pool),
        sqs: SqsQueues::new(aws_sdk_sqs::Client::new(&aws)),
        dead_letters: SqsDeadLetters::from_config(&aws),
        tasks: DynamoTaskAdmin::from_config(&aws, tasks_table),
        settings,
    })
}

pub async fn run(args: FailedArgs) -> Result<(), CliError> {
    let ctx = context(&args.stack).await?;
    let now = Utc::now();
    let mut out = io::stdout().lock();
    match args.command {
        FailedCommand::List(list) => {
            let filter = selection(&list.filters, vec![], false, list.limit)
                .filter(ctx.settings.as_ref(), now)?;
            let rows = failed::list(ctx.ports(), &filter, now).await?;
            if list.json {
                serde_json::to_writer(&mut out, &serde_json::json!({ "failed": rows }))
                    .map_err(io::Error::from)?;
                writeln!(out)?;
                return Ok(());
            }
            if rows.is_empty() {
                writeln!(out, "no failed messages match")?;
                return Ok(());
            }
            writeln!(
                out,
                "{:<40} {:<22} {:<10} {:<38} {:>4} {:<20} {:>7}  error",
                "id", "step", "provider", "task", "att", "failed_at", "age"
            )?;
            for r in &rows {
                writeln!(
                    out,
                    "{:<40} {:<22} {:<10} {:<38} {:>4} {:<20} {:>7}  {}",
                    r.id,
                    r.step.as_deref().unwrap_or("-"),
                    r.provider.as_deref().unwrap_or("-"),
                    r.task_id.as_deref().unwrap_or("-"),
                    r.attempts,
                    r.failed_at.format("%Y-%m-%d %H:%M:%S"),
                    human_age(r.age_seconds),
                    r.error
                )?;
            }
            writeln!(out, "{} failed message(s)", rows.len())?;
        }
        FailedCommand::Stats(list) => {
            let filter =
                selection(&list.filters, vec![], false, None).filter(ctx.settings.as_ref(), now)?;
            let stats = failed::stats(ctx.ports(), &filter, now).await?;
            if list.json {
                serde_json::to_writer(&mut out, &stats).map_err(io::Error::from)?;
                writeln!(out)?;
                return Ok(());
            }
            writeln!(out, "{} failed message(s)", stats.total)?;
            if let Some(age) = stats.oldest_age_seconds {
                writeln!(out, "oldest: {} ago", human_age(age))?;
            }
            for (title, counts) in [
                ("queue", &stats.by_queue),
                ("step", &stats.by_step),
                ("provider", &stats.by_provider),
                ("kind", &stats.by_kind),
            ] {
                writeln!(out, "by {title}:")?;
                for (name, count) in counts {
                    writeln!(out, "  {name:<40} {count:>6}")?;
                }
            }
        }
        FailedCommand::Show(show) => {
            let Some(detail) = failed::show(ctx.ports(), &show.id).await? else {
                return Err(CliError::NoSuchFailure(show.id));
            };
            if show.json {
                serde_json::to_writer(&mut out, &detail).map_err(io::Error::from)?;
                writeln!(out)?;
                return Ok(());
            }
            let f = &detail.failure;
            writeln!(out, "failed message {}", f.failure.id)?;
            let field = |out: &mut dyn Write, k: &str, v: String| writeln!(out, "  {k:<14} {v}");
            let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
            field(&mut out, "status", f.status.as_str().into())?;
            field(
                &mut out,
                "queue",
                format!("{} ({})", f.failure.queue, f.failure.queue_url),
            )?;
            field(&mut out, "dlq", f.failure.dlq_url.clone())?;
            field(&mut out, "function", opt(&f.failure.function_name))?;
            field(&mut out, "step", opt(&f.failure.step))?;
            field(&mut out, "provider", opt(&f.failure.provider))?;
            field(&mut out, "task", opt(&f.failure.task_id))?;
            field(&mut out, "trace", opt(&f.failure.trace_id))?;
            field(&mut out, "kind", f.failure.error_kind.clone())?;
            field(&mut out, "attempts", f.failure.attempts.to_string())?;
            field(
                &mut out,
                "failed_at",
                format!(
                    "{} ({} ago)",
                    f.failure.failed_at.to_rfc3339(),
                    human_age((now - f.failure.failed_at).num_seconds())
                ),
            )?;
            field(&mut out, "times failed", f.times_failed.to_string())?;
            field(&mut out, "retries", f.retries.to_string())?;
            if let Some(at) = f.resolved_at {
                field(
                    &mut out,
                    "resolved",
                    format!("{} by {}", at.to_rfc3339(), opt(&f.resolved_by)),
                )?;
            }
            field(&mut out, "expires_at", f.failure.expires_at.to_rfc3339())?;
            writeln!(out, "error:")?;
            for line in f.failure.error.lines() {
                writeln!(out, "  {line}")?;
            }
            if !detail.chain.is_empty() {
                writeln!(out, "chain still to run: {}", detail.chain.join(" -> "))?;
            }
            writeln!(out, "attempts recorded:")?;
            if detail.attempts.is_empty() {
                writeln!(
                    out,
                    "  none (step records expire after STEP_RECORD_TTL_DAYS)"
                )?;
            }
            for a in &detail.attempts {
                let took = a
                    .finished_at
                    .map(|end| {
                        tem_shared::ops::timeline::human_duration(
                            (end - a.started_at).num_milliseconds(),
                        )
                    })
                    .unwrap_or_else(|| "never finished".into());
                writeln!(
                    out,
                    "  #{:<3} {} {:>14}  {:<14} {}",
                    a.attempt,
                    a.started_at.to_rfc3339(),
                    took,
                    a.outcome.as_deref().unwrap_or("no outcome"),
                    a.error.as_deref().map(failed::first_line).unwrap_or("")
                )?;
            }
            writeln!(out, "body:")?;
            let body = match &detail.envelope {
                Some(envelope) => {
                    serde_json::to_string_pretty(envelope).map_err(io::Error::from)?
                }
                None => f.failure.body.clone(),
            };
            for line in body.lines() {
                writeln!(out, "  {line}")?;
            }
        }
        FailedCommand::Retry(retry) => {
            let act = &retry.target;
            let sel = selection(&act.filters, act.ids.clone(), act.all, None);
            sel.require_named("retry")?;
            let rows = matching(&ctx, &sel, now).await?;
            let options = RetryOptions {
                dry_run: retry.dry_run,
                by: operator(),
                stop_after: None,
            };
            let report = failed::retry(ctx.ports(), rows, &options, now).await?;
            if act.json {
                serde_json::to_writer(&mut out, &report).map_err(io::Error::from)?;
                writeln!(out)?;
            } else {
                let verb = if report.dry_run {
                    "would retry"
                } else {
                    "retried"
                };
                for id in &report.retried {
                    writeln!(out, "{verb} {id}")?;
                }
                for s in &report.skipped {
                    writeln!(out, "skipped {} ({})", s.id, s.reason)?;
                }
                for s in &report.failed {
                    writeln!(out, "NOT retried {} ({}); it stays failed", s.id, s.reason)?;
                }
                writeln!(
                    out,
                    "{} {}, {} skipped, {} not sent; {} DLQ copies deleted",
                    report.retried.len(),
                    verb,
                    report.skipped.len(),
                    report.failed.len(),
                    report.dlq_deleted
                )?;
            }
            if !report.failed.is_empty() {
                return Err(CliError::PartlyDone(format!(
                    "{} message(s) could not be sent; run the same command again",
                    report.failed.len()
                )));
            }
        }
        FailedCommand::Remove(remove) => {
            let act = &remove.target;
            let sel = selection(&act.filters, act.ids.clone(), act.all, None);
            sel.require_named("remove")?;
            let rows = matching(&ctx, &sel, now).await?;
            let open = rows
                .iter()
                .filter(|r| r.status == tem_shared::ports::FailureStatus::Failed)
                .count();
            if !remove.yes && open > 0 {
                confirm(open)?;
            }
            let report = failed::remove(ctx.ports(), rows, &operator(), now).await?;
            if act.json {
                serde_json::to_writer(&mut out, &report).map_err(io::Error::from)?;
                writeln!(out)?;
            } else {
                for id in &report.removed {
                    writeln!(out, "removed {id}")?;
                }
                for s in &report.skipped {
                    writeln!(out, "skipped {} ({})", s.id, s.reason)?;
                }
                writeln!(
                    out,
                    "{} removed, {} skipped; {} DLQ copies deleted; noted on {} task(s)",
                    report.removed.len(),
                    report.skipped.len(),
                    report.dlq_deleted,
                    report.tasks_noted.len()
                )?;
            }
        }
    }
    Ok(())
}

/// The rows a retry or remove acts on: the named ids (any status, so a
/// resolved one is reported as skipped) or every match of the filters.
async fn matching(
    ctx: &Context,
    sel: &FailedSelection,
    now: chrono::DateTime<Utc>,
) -> Result<Vec<tem_shared::ports::FailedMessage>, CliError> {
    if !sel.ids.is_empty() && !sel.all {
        let rows = ctx.failures.get_many(&sel.ids).await?;
        if let Some(missing) = sel
            .ids
            .iter()
            .find(|id| !rows.iter().any(|r| &r.failure.id == *id))
        {
            return Err(CliError::NoSuchFailure(missing.clone()));
        }
        return Ok(rows);
    }
    Ok(ctx
        .failures
        .find(&sel.filter(ctx.settings.as_ref(), now)?)
        .await?)
}

/// Asks on a terminal; refuses (exit code 2) when nobody can answer.
fn confirm(count: usize) -> Result<(), CliError> {
    if !io::stdin().is_terminal() {
        return Err(CliError::Unconfirmed(count));
    }
    eprint!("remove {count} failed message(s)? They will not run again. Type yes to confirm: ");
    io::stderr().flush()?;
    let mut answer = String::new();
    io::stdin().lock().read_line(&mut answer)?;
    if answer.trim() == "yes" {
        Ok(())
    } else {
        Err(CliError::Unconfirmed(count))
    }
}

impl From<SelectionError> for CliError {
    fn from(e: SelectionError) -> Self {
        CliError::Selection(e)
    }
}
