//! `store-bench`: the CDR import and a cycle's totals in a store of 100M
//! CDRs over 24 monthly partitions against the same in a store of 1M, in
//! one run (issue 20). See bench/README.md.

use std::path::PathBuf;

use anyhow::{Context, Result};
use chrono::{DateTime, NaiveDate, Utc};
use clap::{Args, Parser, Subcommand};
use tem_bench::totals::engine::How;
use tem_bench::{child, db, store, totals};

#[derive(Parser)]
#[command(
    name = "store-bench",
    about = "Benchmark of the CDR import and a cycle's totals in a store of 100M CDRs against one of 1M",
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
    /// CDRs of the big store (database tem_bench_store_<size>, kept and
    /// reused while it holds this many).
    #[arg(long, default_value_t = 100_000_000)]
    rows: u64,
    /// CDRs of the small store, the reference.
    #[arg(long, default_value_t = 1_000_000)]
    small_rows: u64,
    /// Monthly partitions the stores' CDRs are spread over, ending with
    /// this month.
    #[arg(long, default_value_t = 24)]
    months: u32,
    /// The stores' customers (50 subscriptions each).
    #[arg(long, default_value_t = 2_000)]
    customers: u32,
    /// Rows of the imported file (import-bench's March 2025 routit export).
    #[arg(long, default_value_t = 1_000_000)]
    import_rows: u64,
    /// Seeded subscriptions of the import file's customer.
    #[arg(long, default_value_t = 3_000)]
    import_subscriptions: u32,
    /// CDRs of the calculated cycle (totals-bench's dataset).
    #[arg(long, default_value_t = 1_000_000)]
    cycle_rows: u64,
    #[arg(long, default_value_t = 5_000)]
    cycle_subscriptions: u32,
    /// Other CDRs of totals-bench's dataset around the cycle.
    #[arg(long, default_value_t = 400_000)]
    other_rows: u64,
    /// CDRs of the import at the cycle's end [default: 1% of --cycle-rows].
    #[arg(long)]
    added_rows: Option<u64>,
    /// Rounds, each measuring every case in both stores in turn.
    #[arg(long, default_value_t = 3)]
    runs: u32,
    #[arg(long, default_value_t = 20_250_301)]
    seed: u64,
    /// GB that must stay free on PostgreSQL's disk after a fill.
    #[arg(long, default_value_t = 15)]
    keep_free_gb: u64,
    /// Only the totals.
    #[arg(long)]
    skip_import: bool,
    /// Only the import.
    #[arg(long)]
    skip_totals: bool,
    /// After loading the cycle, rewrite its month's partition in time
    /// order, so the cycle's CDRs lie among the store's (as when each
    /// carrier file holds every customer's CDRs of a day) instead of
    /// together after them.
    #[arg(long)]
    interleave: bool,
    /// PostgreSQL server [default: $DATABASE_URL, else
    /// postgres://postgres@127.0.0.1:5432/postgres]; the stores are
    /// databases on it.
    #[arg(long)]
    database_url: Option<String>,
    /// Also write the JSON summary to this file.
    #[arg(long)]
    json_out: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Child {
    /// Internal: import one ZIP (as import-bench's).
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
    /// Internal: one calculation of a cycle (as totals-bench's).
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
    /// Internal: the bare GROUP BY (as totals-bench's).
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
        Some(Child::ImportOnly {
            zip,
            database,
            rejects_dir,
            connections,
        }) => serde_json::to_string(&runtime.block_on(child::import_only(
            &zip,
            &database,
            &rejects_dir,
            connections,
        ))?)?,
        Some(Child::Calculate {
            database,
            customer,
            cycle,
            how,
        }) => serde_json::to_string(
            &runtime.block_on(totals::child::calculate(&database, customer, cycle, how))?,
        )?,
        Some(Child::Bare {
            database,
            customer,
            start,
            end,
        }) => serde_json::to_string(&runtime.block_on(totals::child::bare(
            &database,
            customer,
            (start, end),
        ))?)?,
        None => {
            let args = cli.bench;
            return runtime.block_on(store::run(store::Options {
                rows: args.rows,
                small_rows: args.small_rows,
                months: args.months,
                customers: args.customers,
                import_rows: args.import_rows,
                import_subscriptions: args.import_subscriptions,
                cycle_rows: args.cycle_rows,
                cycle_subscriptions: args.cycle_subscriptions,
                other_rows: args.other_rows,
                added_rows: args.added_rows.unwrap_or(args.cycle_rows / 100).max(1),
                runs: args.runs,
                seed: args.seed,
                database_url: args.database_url.unwrap_or_else(db::server_url),
                keep_free: args.keep_free_gb * 1_000_000_000,
                skip_import: args.skip_import,
                skip_totals: args.skip_totals,
                interleave: args.interleave,
                json_out: args.json_out,
            }));
        }
    };
    println!("{report}");
    Ok(())
}
