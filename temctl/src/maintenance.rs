//! The daily maintenance by hand (issue 20): `temctl maintenance
//! partitions` (the months ahead, before a large backfill), `temctl
//! maintenance run` (every part, as the chain runs them), and `temctl
//! archive list` / `temctl archive restore CUSTOMER MONTH` (a month back for
//! a late dispute). Every part is idempotent.

use std::io::{self, Write};

use chrono::{NaiveDate, Utc};
use clap::{Args, Subcommand};
use tem_shared::adapters::maintenance::{maintenance_stores, PgArchive, PgPartitions};
use tem_shared::adapters::s3::{S3Deletes, S3Documents, S3Objects, S3Uploads};
use tem_shared::adapters::{aws_config, s3_client};
use tem_shared::maintenance::housekeeping::{housekeeping, HousekeepingSettings};
use tem_shared::maintenance::partitions::{ensure_partitions, MONTHS_AHEAD};
use tem_shared::maintenance::retention::DEFAULT_RETENTION_MONTHS;
use tem_shared::maintenance::run::{archive_expired, restore_month, ArchiveSettings};
use tem_shared::maintenance::MaintenanceError;

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
    /// Run the whole maintenance now, as the daily chain does: partitions,
    /// the archive of months past their retention (to --bucket, under
    /// archive/), then the housekeeping. Recorded as a run that `temctl
    /// status` counts.
    Run(RunArgs),
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The day that counts as today (UTC).
    #[arg(long, value_name = "YYYY-MM-DD")]
    pub today: Option<NaiveDate>,
    /// The archive's bucket (the stack's CDR bucket); or ARCHIVE_BUCKET.
    #[arg(long, env = "ARCHIVE_BUCKET")]
    pub bucket: String,
    /// Months kept for customers without their own cdr_retention_months;
    /// or CDR_RETENTION_MONTHS.
    #[arg(long, env = "CDR_RETENTION_MONTHS", default_value_t = DEFAULT_RETENTION_MONTHS)]
    pub retention_months: u16,
    /// Print the report as one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ArchiveArgs {
    #[command(subcommand)]
    pub command: ArchiveCommand,
}

#[derive(Debug, Subcommand)]
pub enum ArchiveCommand {
    /// Every archived month: customer, month, state, rows, manifest.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Bring an archived month back into the database (its CDRs, and its
    /// cycles' pricings and totals), checked against its manifest; the
    /// maintenance leaves it there for --keep-days, then archives it again.
    Restore(RestoreArgs),
}

#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// The customer: its numeric id, its code, or `none` for the CDRs
    /// without a customer.
    #[arg(value_name = "CUSTOMER")]
    pub customer: String,
    /// The month: YYYY-MM (or any day of it).
    #[arg(value_name = "YYYY-MM", value_parser = parse_month)]
    pub month: NaiveDate,
    /// Days the restored month stays before the maintenance archives it again.
    #[arg(long, default_value_t = 90)]
    pub keep_days: i64,
    #[arg(long)]
    pub json: bool,
}

fn parse_month(text: &str) -> Result<NaiveDate, String> {
    let day = if text.len() == 7 {
        format!("{text}-01")
    } else {
        text.to_string()
    };
    day.parse::<NaiveDate>()
        .map(tem_shared::maintenance::partitions::month_of)
        .map_err(|_| format!("{text:?} is not a month (YYYY-MM)"))
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
    let args = match args.command {
        MaintenanceCommand::Partitions(args) => args,
        MaintenanceCommand::Run(args) => return run_all(args).await,
    };
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

fn print_json(value: &impl serde::Serialize) -> Result<(), CliError> {
    let mut out = io::stdout().lock();
    serde_json::to_writer(&mut out, value).map_err(io::Error::from)?;
    writeln!(out)?;
    Ok(out.flush()?)
}

async fn run_all(args: RunArgs) -> Result<(), CliError> {
    let url = db::url_from_env()?;
    let db = db::open(&url, 1).await?;
    db.check_schema().await?;
    let now = Utc::now();
    let today = args.today.unwrap_or_else(|| now.date_naive());
    let stores = maintenance_stores(&db.pool);
    let run_id = format!("temctl:{}", uuid::Uuid::new_v4());
    stores
        .runs
        .started(&run_id, today)
        .await
        .map_err(MaintenanceError::from)?;
    let partitions = ensure_partitions(stores.partitions.as_ref(), today).await?;
    stores
        .runs
        .part(&run_id, "partitions", serde_json::json!(partitions))
        .await
        .map_err(MaintenanceError::from)?;
    let s3 = s3_client(&aws_config().await);
    let settings = ArchiveSettings {
        bucket: args.bucket,
        default_retention_months: args.retention_months,
        today,
        now,
        stop_after: None,
    };
    let archive = archive_expired(
        stores.archive.as_ref(),
        &S3Uploads::new(s3.clone()),
        &S3Objects::new(s3.clone()),
        &settings,
    )
    .await?;
    stores
        .runs
        .part(&run_id, "archive", serde_json::json!(archive))
        .await
        .map_err(MaintenanceError::from)?;
    let chores = housekeeping(
        stores.housekeeping.as_ref(),
        &S3Deletes::new(s3),
        &HousekeepingSettings::default(),
        now,
    )
    .await?;
    stores
        .runs
        .part(&run_id, "housekeeping", serde_json::json!(chores))
        .await
        .map_err(MaintenanceError::from)?;
    stores
        .runs
        .finished(&run_id)
        .await
        .map_err(MaintenanceError::from)?;
    if args.json {
        return print_json(&serde_json::json!({
            "run_id": run_id, "partitions": partitions, "archive": archive, "housekeeping": chores,
        }));
    }
    let mut out = io::stdout().lock();
    writeln!(out, "maintenance run {run_id} for {today}")?;
    writeln!(out, "partitions created: {}", partitions.created.len())?;
    for w in &archive.written {
        writeln!(
            out,
            "archived customer {} {}: {} CDRs, {} cycle rows ({})",
            w.customer_id.map_or("none".into(), |c| c.to_string()),
            w.month.format("%Y-%m"),
            w.cdr_rows,
            w.cycle_rows,
            w.manifest_key
        )?;
    }
    for (month, removal) in &archive.removed {
        writeln!(
            out,
            "removed {}: {} customer(s), partitions dropped {:?}, {} rows deleted, {} dropped{}",
            month.format("%Y-%m"),
            removal.removed.len(),
            removal.partitions_dropped,
            removal.rows_deleted,
            removal.rows_dropped,
            if removal.stale.is_empty() {
                String::new()
            } else {
                format!(", {} changed since written (next run)", removal.stale.len())
            }
        )?;
    }
    for kept in &archive.kept {
        writeln!(
            out,
            "kept customer {} {}: {}",
            kept.customer_id.map_or("none".into(), |c| c.to_string()),
            kept.month.format("%Y-%m"),
            kept.reasons.join("; ")
        )?;
    }
    writeln!(
        out,
        "housekeeping: {} row(s) pruned {:?}, {} rejected file(s) expired, analysed {}",
        chores.rows_pruned(),
        chores.pruned,
        chores.rejected_files,
        chores.analysed.join(", ")
    )?;
    Ok(out.flush()?)
}

pub async fn archive(args: ArchiveArgs) -> Result<(), CliError> {
    let url = db::url_from_env()?;
    let db = db::open(&url, 1).await?;
    db.check_schema().await?;
    let store = PgArchive::new(db.pool.clone());
    match args.command {
        ArchiveCommand::List { json } => {
            let listing = store.list().await.map_err(MaintenanceError::from)?;
            if json {
                return print_json(&listing);
            }
            let mut out = io::stdout().lock();
            writeln!(
                out,
                "customer  month    state     CDRs       cycle rows  manifest"
            )?;
            for a in &listing {
                writeln!(
                    out,
                    "{:<9} {}  {:<9} {:>10} {:>11}  s3://{}/{}{}",
                    a.customer_id.map_or("none".into(), |c| c.to_string()),
                    a.month.format("%Y-%m"),
                    a.state,
                    a.cdr_rows,
                    a.cycle_rows,
                    a.bucket,
                    a.manifest_key,
                    a.keep_until.map_or(String::new(), |k| format!(
                        " (kept until {})",
                        k.format("%Y-%m-%d")
                    ))
                )?;
            }
            Ok(out.flush()?)
        }
        ArchiveCommand::Restore(args) => {
            let customer = store.customer(&args.customer).await?;
            let workdir =
                std::env::temp_dir().join(format!("tem-restore-{}", uuid::Uuid::new_v4()));
            std::fs::create_dir_all(&workdir)?;
            let s3 = S3Documents::new(s3_client(&aws_config().await));
            let keep_until = Utc::now() + chrono::Duration::days(args.keep_days);
            let restored =
                restore_month(&store, &s3, customer, args.month, keep_until, &workdir).await;
            // The downloaded files are copies of what stays in S3.
            let _ = std::fs::remove_dir_all(&workdir);
            let report = restored?;
            if args.json {
                return print_json(&report);
            }
            let mut out = io::stdout().lock();
            writeln!(
                out,
                "restored customer {} {}: {} CDRs ({} put back), {} cycle rows ({} put back), checksum {} as archived; kept until {}",
                args.customer,
                args.month.format("%Y-%m"),
                report.cdr_rows,
                report.cdrs_inserted,
                report.cycle_rows,
                report.cycle_rows_inserted,
                report.cdr_rows_sha256,
                report.keep_until.format("%Y-%m-%d")
            )?;
            Ok(out.flush()?)
        }
    }
}
