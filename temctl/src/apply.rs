//! `temctl apply -f FILE.yaml`: customers, subscriptions, rate plans and
//! sync profiles as data (see tem_shared::catalog for the file), upserted
//! idempotently, with the follow-up work sent to the functions' queues.

use std::io::{self, Write};
use std::path::PathBuf;

use chrono::{Duration, Utc};
use clap::Args;
use serde_json::json;
use tem_shared::adapters::sqs::SqsQueues;
use tem_shared::catalog::changes::{Action, Change};
use tem_shared::catalog::follow_up::{deliver, Delivery, DeliveryOutcome, DEFAULT_GRACE_DAYS};
use tem_shared::catalog::{self, Applied, ApplyOptions, CatalogError};
use tem_shared::config::{ConfigError, Env};
use tem_shared::ports::QueueSend;

use crate::db;
use crate::error::CliError;

/// Arguments of `temctl apply`.
#[derive(Debug, Args)]
#[command(after_long_help = AFTER_HELP)]
pub struct ApplyArgs {
    /// The YAML file declaring rate_plans, customers, subscriptions and
    /// sync_profiles.
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    pub file: PathBuf,
    /// Validate and print what would change, write nothing and send nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print the result as one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
}

const AFTER_HELP: &str = "\
Objects are matched by their natural keys: rate plans by id, customers by \
code, subscriptions by provider, identifier and active_from, sync profiles \
by name. Each object in the file is created or updated to match it exactly; \
objects in the database but not in the file are left alone (nothing is \
deleted), except a customer's cost tree: its cost_centres entries are its \
whole tree, and its stored nodes the file leaves out are removed. Applying the same file twice changes nothing the second time.

The whole file is validated before anything is written; every problem is \
printed on stderr with its field path, and the exit code is 1.

${NAME} in the file is replaced by the environment variable NAME (an unset \
one is an error); $${ is a literal ${.

Follow-up work: a rate plan whose prices changed re-rates the open cycles \
of every customer on it, as does a customer whose rate_plan, cycle start day \
or time zone changed (open: the current cycle, and cycles with totals that \
ended less than INVOICE_GRACE_DAYS, default 5, ago); added or changed \
subscriptions attach CDRs that arrived without a customer. These are sent \
to QUEUE_URL_TOTALS and QUEUE_URL_IMPORT (AWS settings from the usual \
environment). When those are not set, the data is still applied and the \
console JSON to invoke the functions with is printed instead.";

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: io::Error },
    #[error("{path}: {source}")]
    Catalog { path: String, source: CatalogError },
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("the changes are applied, but {0} follow-up message(s) could not be sent; invoke the functions with the console JSON printed above")]
    NotSent(usize),
    #[error("cannot write the result to stdout: {0}")]
    Output(#[from] io::Error),
}

impl ApplyError {
    pub fn exit_code(&self) -> u8 {
        match self {
            ApplyError::Config(_) => 2,
            _ => 1,
        }
    }
}

pub async fn run(args: ApplyArgs) -> Result<(), CliError> {
    let url = db::url_from_env()?;
    let path = args.file.display().to_string();
    let text = match std::fs::read_to_string(&args.file) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(CliError::FileNotFound(path));
        }
        Err(source) => return Err(ApplyError::Read { path, source }.into()),
    };
    let env = Env::process();
    let grace_days: u32 = env
        .parsed("INVOICE_GRACE_DAYS", DEFAULT_GRACE_DAYS)
        .map_err(ApplyError::from)?;
    let parsed = catalog::parse(&text, |name| std::env::var(name).ok());
    let db = db::open(&url, 1).await?;
    let options = ApplyOptions {
        source: path.clone(),
        dry_run: args.dry_run,
        now: Utc::now(),
        grace: Duration::days(i64::from(grace_days)),
    };
    let applied = catalog::apply(&db.pool, &parsed, &options)
        .await
        .map_err(|source| ApplyError::Catalog {
            path: path.clone(),
            source,
        })?;

    let router = env.router();
    let routable = applied
        .follow_ups
        .iter()
        .any(|f| router.queue_for(f.step(), &f.payload()).is_ok());
    // Only build an AWS client when there is something it could send.
    let sqs = match (applied.revision, routable) {
        (Some(_), true) => Some(SqsQueues::new(aws_sdk_sqs::Client::new(
            &aws_config::load_from_env().await,
        ))),
        _ => None,
    };
    let deliveries = deliver(
        &applied.follow_ups,
        applied.revision,
        options.now,
        &router,
        sqs.as_ref().map(|q| q as &dyn QueueSend),
    )
    .await;

    let mut out = io::stdout().lock();
    if args.json {
        write_json(&mut out, &path, &db.target, &options, &applied, &deliveries)
            .map_err(ApplyError::from)?;
    } else {
        write_human(&mut out, &path, &db.target, &options, &applied, &deliveries)
            .map_err(ApplyError::from)?;
    }
    drop(out);

    let not_sent: Vec<&Delivery> = deliveries
        .iter()
        .filter(|d| matches!(d.outcome, DeliveryOutcome::NotSent { .. }))
        .collect();
    let unconfigured = not_sent
        .iter()
        .filter(|d| matches!(&d.outcome, DeliveryOutcome::NotSent { problem } if problem.ends_with("is not set")))
        .count();
    if unconfigured == not_sent.len() && unconfigured > 0 {
        let mut variables: Vec<&str> = not_sent
            .iter()
            .map(|d| d.follow_up.queue_variable())
            .collect();
        variables.sort();
        variables.dedup();
        eprintln!(
            "warning: {unconfigured} follow-up message(s) not sent because {} not set; the data is applied; invoke the functions with the console JSON printed above, or set the variables and send them from a machine with queue access",
            match variables.as_slice() {
                [one] => format!("{one} is"),
                many => format!("{} are", many.join(" and ")),
            }
        );
        return Ok(());
    }
    if !not_sent.is_empty() {
        return Err(ApplyError::NotSent(not_sent.len()).into());
    }
    Ok(())
}

fn write_json(
    out: &mut impl Write,
    path: &str,
    target: &str,
    options: &ApplyOptions,
    applied: &Applied,
    deliveries: &[Delivery],
) -> io::Result<()> {
    let s = applied.summary;
    let value = json!({
        "file": path,
        "database": target,
        "dry_run": options.dry_run,
        "revision": applied.revision,
        "changed": s.changed,
        "created": s.created,
        "updated": s.updated,
        "unchanged": s.unchanged,
        "removed": s.removed,
        "changes": applied.changes,
        "follow_up": deliveries,
    });
    serde_json::to_writer(&mut *out, &value)?;
    writeln!(out)?;
    out.flush()
}

fn describe(change: &Change) -> String {
    match change.action {
        Action::Updated => format!(
            "updated ({})",
            change
                .fields
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ")
        ),
        action => action.as_str().to_string(),
    }
}

fn write_human(
    out: &mut impl Write,
    path: &str,
    target: &str,
    options: &ApplyOptions,
    applied: &Applied,
    deliveries: &[Delivery],
) -> io::Result<()> {
    let dry = if options.dry_run {
        " (dry run: nothing is written or sent)"
    } else {
        ""
    };
    writeln!(out, "apply {path} to {target}{dry}")?;
    let width = applied
        .changes
        .iter()
        .map(|c| c.key.chars().count())
        .max()
        .unwrap_or(0)
        .min(40);
    for change in &applied.changes {
        writeln!(
            out,
            "  {:<12} {:<width$}  {}",
            change.object.as_str(),
            change.key,
            describe(change)
        )?;
    }
    let s = applied.summary;
    // Only cost trees remove anything (they are applied whole).
    let (removed, except) = if s.removed > 0 {
        (
            format!(", {} removed", s.removed),
            ", except the cost nodes a customer's tree in the file leaves out",
        )
    } else {
        (String::new(), "")
    };
    writeln!(
        out,
        "{} changed ({} created, {} updated{removed}), {} unchanged{}; objects in the database but not in the file were left alone{except}",
        s.changed,
        s.created,
        s.updated,
        s.unchanged,
        if options.dry_run { ", dry run: rolled back" } else { "" },
    )?;
    if !deliveries.is_empty() {
        writeln!(out, "follow-up:")?;
    }
    for delivery in deliveries {
        writeln!(out, "  {}", delivery.follow_up.describe())?;
        let console = || {
            format!(
                "invoke the {} function with {}",
                delivery.console.function, delivery.console.event
            )
        };
        match &delivery.outcome {
            DeliveryOutcome::Sent { queue } => writeln!(out, "    sent to {queue}")?,
            DeliveryOutcome::NotSent { problem } => {
                writeln!(out, "    not sent ({problem}); {}", console())?
            }
            DeliveryOutcome::DryRun => writeln!(out, "    would be sent; or {}", console())?,
        }
    }
    out.flush()
}
