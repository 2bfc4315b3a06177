//! `spec-bench`: the usage specification of a large cycle, to a local file
//! and to the emulator's S3, each in a child process that reports its time
//! and peak memory. See bench/README.md.

use std::path::PathBuf;

use anyhow::{Context, Result};
use chrono::NaiveDate;
use clap::{Args, Parser, Subcommand};
use tem_bench::{db, spec};

#[derive(Parser)]
#[command(
    name = "spec-bench",
    about = "Benchmark of the usage specification (CSV, gzip, streamed) of a large cycle, to a file and to S3",
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
    /// CDRs of the large cycle.
    #[arg(long, default_value_t = 10_000_000)]
    rows: u64,
    /// CDRs of the reference cycle (another customer, same cycle).
    #[arg(long, default_value_t = 1_000_000)]
    reference_rows: u64,
    #[arg(long, default_value_t = 5_000)]
    subscriptions: u32,
    #[arg(long, default_value_t = 20_250_301)]
    seed: u64,
    /// Only the local file, no emulator.
    #[arg(long)]
    no_s3: bool,
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
    /// Internal: one specification; prints its time, size and peak memory
    /// as JSON.
    #[command(hide = true)]
    Write {
        #[arg(long)]
        database: String,
        #[arg(long)]
        customer: i64,
        #[arg(long)]
        cycle: NaiveDate,
        /// The sink, as JSON.
        #[arg(long)]
        sink: String,
    },
}

fn main() -> Result<()> {
    tem_bench::report::init_tracing();
    let cli = Cli::parse();
    let runtime = tokio::runtime::Runtime::new().context("start the tokio runtime")?;
    match cli.command {
        Some(Child::Write {
            database,
            customer,
            cycle,
            sink,
        }) => {
            let sink: spec::Sink = serde_json::from_str(&sink).context("the sink")?;
            let report = runtime.block_on(spec::write_child(&database, customer, cycle, sink))?;
            println!("{}", serde_json::to_string(&report)?);
            Ok(())
        }
        None => {
            let args = cli.bench;
            runtime.block_on(spec::run(spec::Options {
                rows: args.rows,
                reference_rows: args.reference_rows,
                subscriptions: args.subscriptions,
                seed: args.seed,
                database_url: args.database_url.unwrap_or_else(db::server_url),
                s3: !args.no_s3,
                keep: args.keep,
                json_out: args.json_out,
            }))
        }
    }
}
