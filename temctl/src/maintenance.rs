//! `temctl maintenance partitions`: the daily maintenance's partition part
//! run by hand (issue 20), for a database whose schedule is off or before
//! a large backfill of old months. Idempotent; prints what it created.

use std::io::{self, Write};

use chrono::{NaiveDate, Utc};
use clap::{Args, Subcommand};
use tem_shared::adapters::maintenance::PgPartitions;
use tem_shared::maintenance::partitions::{ensure_partitions, MONTHS_AHEAD};

use crate::db;
use crate::error::CliError;

#[derive(Debug, Args)]
pub struct MaintenanceArgs {
    #[command(subcommand)]
    pub command: MaintenanceCommand,
}

#[derive(Debug, Subcommand)]
pub enum MaintenanceCommand {
    /// Create the monthly partitions of call_detail_record and rating_chunk
    /// for this month and the next three, and for every month the default
    /// partition holds rows of (moving those rows into them).
    Partitions(PartitionsArgs),
}

#[derive(Debug, Args)]
pub struct PartitionsArgs {
    /// The day that counts as today (UTC); for a backfill's future months.
    #[arg(long, value_name = "YYYY-MM-DD")]
    pub today: Option<NaiveDate>,
    /// Print the report as one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(args: MaintenanceArgs) -> Result<(), CliError> {
    let MaintenanceCommand::Partitions(args) = args.command;
    let url = db::url_from_env()?;
    let db = db::open(&url, 1).await?;
    db.check_schema().await?;
    let today = args.today.unwrap_or_else(|| Utc::now().date_naive());
    let report = ensure_partitions(&PgPartitions::new(db.pool.clone()), today).await?;
    let mut out = io::stdout().lock();
    if args.json {
        serde_json::to_writer(&mut out, &report).map_err(io::Error::from)?;
        writeln!(out)?;
    } else if report.created.is_empty() {
        writeln!(
            out,
            "every partition exists (this month and the next {MONTHS_AHEAD}, and every month with rows); nothing created"
        )?;
    } else {
        for c in &report.created {
            writeln!(
                out,
                "created {} {}: {} row(s) moved from the default partition",
                c.table.name(),
                c.month.format("%Y-%m"),
                c.rows_moved
            )?;
        }
    }
    Ok(out.flush()?)
}
