//! `audit-bench`: the carrier bill audit of a 50,000-subscription carrier
//! invoice against 1M and 10M CDRs, next to the bare SQL sum of the same
//! CDRs, each in a child process that reports its time and peak memory.
//! See bench/README.md.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use tem_bench::audit;

#[derive(Parser)]
#[command(
    name = "audit-bench",
    about = "Benchmark of the carrier bill audit against the bare SQL sum of the same CDRs",
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
    /// CDR counts to measure at, in increasing order (the CDRs are added to).
    #[arg(long, value_delimiter = ',', default_values_t = [1_000_000u64, 10_000_000])]
    rows: Vec<u64>,
    /// Subscriptions on the carrier invoice.
    #[arg(long, default_value_t = 50_000)]
    subscriptions: u32,
    /// Differences planted in the invoice (usage 1.00 over the CDRs).
    #[arg(long, default_value_t = 100)]
    planted: u32,
    /// PostgreSQL server [default: $DATABASE_URL, else
    /// postgres://postgres@127.0.0.1:5432/postgres]; a fresh database
    /// tem_bench_* is created on it and dropped at the end.
    #[arg(long)]
    database_url: Option<String>,
    /// Keep the database.
    #[arg(long)]
    keep: bool,
}

#[derive(Subcommand)]
enum Child {
    /// Internal: the bare SQL sum; prints its time and peak memory as JSON.
    #[command(hide = true)]
    SqlOnly {
        #[arg(long)]
        database: String,
    },
    /// Internal: the audit of one file; prints its time and peak memory as JSON.
    #[command(hide = true)]
    AuditOnly {
        #[arg(long)]
        database: String,
        #[arg(long)]
        file: PathBuf,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Runtime::new().context("start the tokio runtime")?;
    match cli.command {
        Some(Child::SqlOnly { database }) => {
            let report = runtime.block_on(audit::sql_only(&database))?;
            println!("{}", serde_json::to_string(&report)?);
        }
        Some(Child::AuditOnly { database, file }) => {
            let report = runtime.block_on(audit::audit_only(&database, &file))?;
            println!("{}", serde_json::to_string(&report)?);
        }
        None => {
            let args = cli.bench;
            let options = audit::Options {
                sizes: args.rows,
                subscriptions: args.subscriptions,
                planted: args.planted,
                database_url: args.database_url.unwrap_or_else(tem_bench::db::server_url),
                keep: args.keep,
            };
            let load_before = tem_bench::report::load_average();
            let cases = runtime.block_on(audit::run(&options))?;
            println!("{}", audit::table(&cases, options.subscriptions));
            println!(
                "load average before {load_before}, after {}",
                tem_bench::report::load_average()
            );
            println!("{}", serde_json::to_string_pretty(&cases)?);
        }
    }
    Ok(())
}
