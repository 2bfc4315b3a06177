//! `totals-bench`: CalculateTotals (standard and rate plan) against a bare
//! `SELECT ... GROUP BY` on one customer's cycle. See bench/README.md.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Parser;
use tem_bench::{db, totals};

#[derive(Parser)]
#[command(
    name = "totals-bench",
    about = "Benchmark of CalculateTotals against a bare SELECT ... GROUP BY over the same CDRs"
)]
struct Cli {
    /// CDRs of the benchmarked customer in the benchmarked cycle.
    #[arg(long, default_value_t = 1_000_000)]
    rows: u64,
    /// Other CDRs in the table: half another customer's in the same weeks,
    /// half the customer's previous cycle.
    #[arg(long, default_value_t = 400_000)]
    other_rows: u64,
    /// The customer's subscriptions.
    #[arg(long, default_value_t = 50)]
    subscriptions: u32,
    /// CDRs of the import file added (and removed again) in each round, to
    /// time the calculation that follows an import [default: 1% of --rows].
    #[arg(long)]
    added_file_rows: Option<u64>,
    /// Timed rounds (each: bare query, standard, rate plan unchanged, after
    /// an added file, with nothing stored, COPY alone).
    #[arg(long, default_value_t = 5)]
    runs: u32,
    #[arg(long, default_value_t = 20_250_301)]
    seed: u64,
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

fn main() -> Result<()> {
    tem_bench::report::init_tracing();
    let cli = Cli::parse();
    let runtime = tokio::runtime::Runtime::new().context("start the tokio runtime")?;
    runtime.block_on(totals::run(totals::Options {
        rows: cli.rows,
        other_rows: cli.other_rows,
        added_file_rows: cli.added_file_rows.unwrap_or(cli.rows / 100).max(1),
        subscriptions: cli.subscriptions,
        runs: cli.runs,
        seed: cli.seed,
        database_url: cli.database_url.unwrap_or_else(db::server_url),
        keep: cli.keep,
        json_out: cli.json_out,
    }))
}
