//! `fanout-bench`: one sync-manager run over 10,000 profiles against the
//! emulator: its time, its SendMessageBatch calls and messages per call, its
//! DynamoDB calls. See bench/README.md.

use anyhow::{Context, Result};
use clap::Parser;
use tem_bench::{db, fanout};

#[derive(Parser)]
#[command(
    name = "fanout-bench",
    about = "Benchmark of sync-manager's fan-out: one run over many profiles against the AWS emulator"
)]
struct Cli {
    /// Active sync profiles, spread over the seven providers.
    #[arg(long, default_value_t = 10_000)]
    profiles: u32,
    /// Rounds, each on fresh queues, table and database.
    #[arg(long, default_value_t = 1)]
    runs: u32,
    /// The sync-manager's pool (the template's ManagerPool).
    #[arg(long, default_value_t = 2)]
    pool: u32,
    /// PostgreSQL server [default: $DATABASE_URL, else
    /// postgres://postgres@127.0.0.1:5432/postgres]; a fresh database
    /// tem_bench_* is created on it per round and dropped at the end.
    #[arg(long)]
    database_url: Option<String>,
    /// Keep the databases, queues and tables.
    #[arg(long)]
    keep: bool,
}

fn main() -> Result<()> {
    tem_bench::report::init_tracing();
    let cli = Cli::parse();
    let runtime = tokio::runtime::Runtime::new().context("start the tokio runtime")?;
    let summary = runtime.block_on(fanout::run(fanout::Options {
        profiles: cli.profiles.max(1),
        runs: cli.runs.max(1),
        pool: cli.pool.max(1),
        database_url: cli.database_url.unwrap_or_else(db::server_url),
        keep: cli.keep,
    }))?;
    fanout::print(&summary);
    tem_bench::report::print_json_summary(&summary);
    if !(summary.all_goals_met && summary.checks_passed) {
        std::process::exit(1);
    }
    Ok(())
}
