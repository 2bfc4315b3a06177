//! `startup-bench`: each function's zip size and init time (process start to
//! its first `GET /runtime/invocation/next`). See bench/README.md.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Parser;
use tem_bench::{db, startup};

#[derive(Parser)]
#[command(
    name = "startup-bench",
    about = "Package size and init time of every function, from its release zip"
)]
struct Cli {
    /// Where the zips are: <dir>/<function>/bootstrap.zip (scripts/build.sh
    /// --release writes target/lambda/).
    #[arg(long, default_value = "target/lambda")]
    lambda_dir: PathBuf,
    /// Another build's zips, whose sizes are reported and held to the goal
    /// too (e.g. a copy of an arm64 build beside the runnable x86_64 one).
    #[arg(long)]
    size_dir: Vec<PathBuf>,
    /// Timed starts per function (after one unrecorded start).
    #[arg(long, default_value_t = 20)]
    runs: usize,
    /// Only these functions [default: all].
    #[arg(long, value_delimiter = ',')]
    functions: Vec<String>,
    /// PostgreSQL server [default: $DATABASE_URL, else
    /// postgres://postgres@127.0.0.1:5432/postgres]; a migrated database
    /// tem_bench_* is created on it and dropped at the end.
    #[arg(long)]
    database_url: Option<String>,
    /// Also write the JSON summary to this file.
    #[arg(long)]
    json_out: Option<PathBuf>,
}

fn main() -> Result<()> {
    tem_bench::report::init_tracing();
    let cli = Cli::parse();
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("bench/ sits in the repository")?
        .to_path_buf();
    let functions = if cli.functions.is_empty() {
        startup::FUNCTIONS.iter().map(|f| f.to_string()).collect()
    } else {
        cli.functions
    };
    let runtime = tokio::runtime::Runtime::new().context("start the tokio runtime")?;
    runtime.block_on(startup::run(startup::Options {
        lambda_dir: repo.join(cli.lambda_dir),
        size_dirs: cli.size_dir.into_iter().map(|d| repo.join(d)).collect(),
        repo,
        functions,
        runs: cli.runs,
        database_url: cli.database_url.unwrap_or_else(db::server_url),
        json_out: cli.json_out,
    }))
}
