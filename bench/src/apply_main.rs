//! `apply-bench`: `temctl apply` of a large configuration, first and again
//! unchanged, against a fresh database. See bench/README.md.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Parser;
use tem_bench::{apply, db};

#[derive(Parser)]
#[command(
    name = "apply-bench",
    about = "Benchmark of temctl apply: a large configuration applied first, then again unchanged"
)]
struct Cli {
    /// Subscriptions in the generated file.
    #[arg(long, default_value_t = 50_000)]
    subscriptions: u32,
    /// Customers they are spread over.
    #[arg(long, default_value_t = 40)]
    customers: u32,
    /// Timed rounds, each on a fresh database.
    #[arg(long, default_value_t = 3)]
    runs: u32,
    /// PostgreSQL server [default: $DATABASE_URL, else
    /// postgres://postgres@127.0.0.1:5432/postgres]; fresh databases
    /// tem_bench_* are created on it and dropped at the end.
    #[arg(long)]
    database_url: Option<String>,
    /// The temctl binary to time as a process [default: the temctl next to
    /// this binary, if there is one].
    #[arg(long)]
    temctl: Option<PathBuf>,
    /// Keep the databases.
    #[arg(long)]
    keep: bool,
    /// Also write the JSON summary to this file.
    #[arg(long)]
    json_out: Option<PathBuf>,
}

fn main() -> Result<()> {
    tem_bench::report::init_tracing();
    let cli = Cli::parse();
    let temctl = cli.temctl.or_else(|| {
        let next_to_us = std::env::current_exe().ok()?.parent()?.join("temctl");
        next_to_us.is_file().then_some(next_to_us)
    });
    let runtime = tokio::runtime::Runtime::new().context("start the tokio runtime")?;
    runtime.block_on(apply::run(apply::Options {
        subscriptions: cli.subscriptions,
        customers: cli.customers,
        runs: cli.runs,
        database_url: cli.database_url.unwrap_or_else(db::server_url),
        temctl,
        keep: cli.keep,
        json_out: cli.json_out,
    }))
}
