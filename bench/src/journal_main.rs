//! `journal-bench`: the chain runtime with and without the step journal,
//! side by side in one run. See bench/README.md.

use anyhow::{Context, Result};
use clap::Parser;
use tem_bench::{db, journal};

#[derive(Parser)]
#[command(
    name = "journal-bench",
    about = "Benchmark of the step journal: the chain runtime with the PostgreSQL journal against none"
)]
struct Cli {
    /// Messages per round.
    #[arg(long, default_value_t = 20_000)]
    messages: u32,
    /// Records per SQS batch.
    #[arg(long, default_value_t = 10)]
    batch: u32,
    /// The database pool (DATABASE_MAX_CONNECTIONS): records of a batch run this many at once.
    #[arg(long, default_value_t = 2)]
    pool: u32,
    /// Rounds, each running both variants.
    #[arg(long, default_value_t = 3)]
    runs: u32,
    /// PostgreSQL server [default: $DATABASE_URL, else
    /// postgres://postgres@127.0.0.1:5432/postgres]; a fresh database
    /// tem_bench_* is created on it and dropped at the end.
    #[arg(long)]
    database_url: Option<String>,
    /// Keep the database.
    #[arg(long)]
    keep: bool,
    /// Print the summary as JSON too.
    #[arg(long)]
    json: bool,
}

fn main() -> Result<()> {
    tem_bench::report::init_tracing();
    let cli = Cli::parse();
    let runtime = tokio::runtime::Runtime::new().context("start the tokio runtime")?;
    let summary = runtime.block_on(journal::run(journal::Options {
        messages: cli.messages,
        batch: cli.batch.clamp(1, 10),
        pool: cli.pool.max(1),
        runs: cli.runs.max(1),
        database_url: cli.database_url.unwrap_or_else(db::server_url),
        keep: cli.keep,
    }))?;
    journal::print(&summary);
    if cli.json {
        tem_bench::report::print_json_summary(&summary);
    }
    Ok(())
}
