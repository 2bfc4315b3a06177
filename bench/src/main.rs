//! `import-bench`: our CDR import against `psql \copy` and row-by-row
//! INSERTs, on one PostgreSQL server. See bench/README.md.

use tem_bench::{bench, child, db, generate};

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "import-bench",
    about = "Benchmark of the CDR import: ours vs psql \\copy vs one INSERT per row",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    bench: BenchArgs,
}

#[derive(Args)]
struct BenchArgs {
    /// Rows in the generated routit export.
    #[arg(long, default_value_t = 1_000_000)]
    rows: u64,
    /// Rows of the small export whose peak memory is the reference.
    #[arg(long, default_value_t = 50_000)]
    small_rows: u64,
    /// Seeded subscriptions (about 1 in 21 generated numbers is unknown).
    #[arg(long, default_value_t = 3_000)]
    subscriptions: u32,
    #[arg(long, default_value_t = 20_250_301)]
    seed: u64,
    /// PostgreSQL server [default: $DATABASE_URL, else
    /// postgres://postgres@127.0.0.1:5432/postgres]; a fresh database
    /// tem_bench_* is created on it and dropped at the end.
    #[arg(long)]
    database_url: Option<String>,
    /// Also time the import's stages alone (done anyway when the \copy
    /// goal is missed).
    #[arg(long)]
    phases: bool,
    /// Skip the legacy baseline (one INSERT per row, about 5 minutes per
    /// million rows): for runs at 10,000,000 rows.
    #[arg(long)]
    no_legacy: bool,
    /// Keep the database and the generated files.
    #[arg(long)]
    keep: bool,
    /// Also write the JSON summary to this file.
    #[arg(long)]
    json_out: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Internal: import one ZIP and print the result and peak memory as JSON.
    #[command(hide = true)]
    ImportOnly {
        #[arg(long)]
        zip: PathBuf,
        #[arg(long)]
        database: String,
        #[arg(long)]
        rejects_dir: PathBuf,
        /// The pool's size: 1 loads on one connection.
        #[arg(long, default_value_t = 4)]
        connections: u32,
    },
    /// Internal: write a generated routit export ZIP.
    #[command(hide = true)]
    Generate {
        #[arg(long)]
        rows: u64,
        #[arg(long, default_value_t = 3_000)]
        subscriptions: u32,
        #[arg(long, default_value_t = 20_250_301)]
        seed: u64,
        #[arg(long)]
        out: PathBuf,
    },
}

fn main() -> Result<()> {
    tem_bench::report::init_tracing();
    let cli = Cli::parse();
    let runtime = tokio::runtime::Runtime::new().context("start the tokio runtime")?;
    match cli.command {
        Some(Command::ImportOnly {
            zip,
            database,
            rejects_dir,
            connections,
        }) => {
            let report = runtime.block_on(child::import_only(
                &zip,
                &database,
                &rejects_dir,
                connections,
            ))?;
            println!("{}", serde_json::to_string(&report)?);
            Ok(())
        }
        Some(Command::Generate {
            rows,
            subscriptions,
            seed,
            out,
        }) => {
            let generated = generate::write_zip(&out, rows, subscriptions, seed)?;
            println!("{}", serde_json::to_string(&generated)?);
            Ok(())
        }
        None => {
            let args = cli.bench;
            runtime.block_on(bench::run(bench::Options {
                rows: args.rows,
                small_rows: args.small_rows,
                subscriptions: args.subscriptions,
                seed: args.seed,
                database_url: args.database_url.unwrap_or_else(db::server_url),
                phases: args.phases,
                no_legacy: args.no_legacy,
                keep: args.keep,
                json_out: args.json_out,
            }))
        }
    }
}
