//! `totals-bench`: CalculateTotals (standard and rate plan) against a bare
//! `SELECT ... GROUP BY` on one customer's cycle, in the cases of issue 11,
//! each in a child process that reports its peak memory. See
//! bench/README.md.

use std::path::PathBuf;

use anyhow::{Context, Result};
use chrono::{DateTime, NaiveDate, Utc};
use clap::{Args, Parser, Subcommand};
use tem_bench::totals::engine::How;
use tem_bench::{db, totals};

#[derive(Parser)]
#[command(
    name = "totals-bench",
    about = "Benchmark of CalculateTotals against a bare SELECT ... GROUP BY over the same CDRs",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Child>,
    #[command(flatten)]
    bench: BenchArgs,
}

#[derive(Args)]
struct BenchArgs {
    /// CDRs of the benchmarked customer in the benchmarked cycle.
    #[arg(long, default_value_t = 1_000_000)]
    rows: u64,
    /// The customer's subscriptions.
    #[arg(long, default_value_t = 5_000)]
    subscriptions: u32,
    /// Other CDRs in the table: half another customer's in the same weeks
    /// (unless --reference-rows), half the customer's previous cycle.
    #[arg(long, default_value_t = 400_000)]
    other_rows: u64,
    /// The other customer's CDRs in the same cycle, on a plan of its own,
    /// whose full calculation is the reference of peak memory (goal: the
    /// same within 20%) [default: 1,000,000 when --rows is more, else none].
    #[arg(long)]
    reference_rows: Option<u64>,
    /// CDRs of each file added (and removed again) in a round: the import
    /// at the cycle's end and the late file [default: 1% of --rows].
    #[arg(long)]
    added_rows: Option<u64>,
    /// Timed rounds, each of every case.
    #[arg(long, default_value_t = 5)]
    runs: u32,
    #[arg(long, default_value_t = 20_250_301)]
    seed: u64,
    /// Skip comparing each incremental calculation of round 1 with a full
    /// recalculation of the same CDRs (totals and every pricing).
    #[arg(long)]
    no_verify: bool,
    /// PostgreSQL server [default: $DATABASE_URL, else
    /// postgres://postgres@127.0.0.1:5432/postgres]; a fresh database
    /// tem_bench_* is created on it and dropped at the end.
    #[arg(long)]
    database_url: Option<String>,
    /// Keep the database.
    #[arg(long)]
    keep: bool,
    /// Also write the JSON summary to this file.
    #[arg(long)]
    json_out: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Child {
    /// Internal: one calculation of a cycle; prints its time, totals,
    /// phases and peak memory as JSON.
    #[command(hide = true)]
    Calculate {
        #[arg(long)]
        database: String,
        #[arg(long)]
        customer: i64,
        #[arg(long)]
        cycle: NaiveDate,
        #[arg(long, value_enum)]
        how: How,
    },
    /// Creates a database with the dataset of --rows CDRs (the customer on
    /// its plan, nothing calculated) and keeps it; prints its URL, customer
    /// and cycle as JSON (for bench/scripts/totals-function-rss.sh).
    Seed {
        #[arg(long, default_value_t = 3_000_000)]
        rows: u64,
        #[arg(long, default_value_t = 5_000)]
        subscriptions: u32,
        #[arg(long, default_value_t = 400_000)]
        other_rows: u64,
        #[arg(long, default_value_t = 20_250_301)]
        seed: u64,
        /// PostgreSQL server [default: $DATABASE_URL, else
        /// postgres://postgres@127.0.0.1:5432/postgres].
        #[arg(long)]
        database_url: Option<String>,
    },
    /// Internal: the bare GROUP BY over a customer's CDRs in [start, end).
    #[command(hide = true)]
    Bare {
        #[arg(long)]
        database: String,
        #[arg(long)]
        customer: i64,
        #[arg(long)]
        start: DateTime<Utc>,
        #[arg(long)]
        end: DateTime<Utc>,
    },
}

fn main() -> Result<()> {
    tem_bench::report::init_tracing();
    let cli = Cli::parse();
    let runtime = tokio::runtime::Runtime::new().context("start the tokio runtime")?;
    let report = match cli.command {
        Some(Child::Seed {
            rows,
            subscriptions,
            other_rows,
            seed,
            database_url,
        }) => {
            let spec = totals::data::Spec {
                rows,
                other_rows,
                subscriptions,
                reference_rows: 0,
                seed,
            };
            let url = database_url.unwrap_or_else(db::server_url);
            let seeded = runtime.block_on(totals::seed(&url, &spec))?;
            println!("{}", serde_json::to_string(&seeded)?);
            return Ok(());
        }
        Some(Child::Calculate {
            database,
            customer,
            cycle,
            how,
        }) => runtime.block_on(totals::child::calculate(&database, customer, cycle, how))?,
        Some(Child::Bare {
            database,
            customer,
            start,
            end,
        }) => runtime.block_on(totals::child::bare(&database, customer, (start, end)))?,
        None => {
            let args = cli.bench;
            return runtime.block_on(totals::run(totals::Options {
                rows: args.rows,
                other_rows: args.other_rows,
                subscriptions: args.subscriptions,
                reference_rows: args.reference_rows.unwrap_or(if args.rows > 1_000_000 {
                    1_000_000
                } else {
                    0
                }),
                added_rows: args.added_rows.unwrap_or(args.rows / 100).max(1),
                runs: args.runs,
                seed: args.seed,
                database_url: args.database_url.unwrap_or_else(db::server_url),
                verify: !args.no_verify,
                keep: args.keep,
                json_out: args.json_out,
            }));
        }
    };
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}
