//! `temctl`: the operators' command line. See `temctl --help`.

mod apply;
mod audit;
mod cli;
mod costs;
mod db;
mod error;
mod explain;
mod failed;
mod import;
mod insights;
mod invoice;
mod maintenance;
mod migrate;
mod progress;
mod stack;
mod status;
mod summary;
mod task;
mod totals;

use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Command};

#[tokio::main]
async fn main() -> ExitCode {
    // Usage errors (and --help/--version) exit here, with code 2 (0 for
    // help); `status` follows the monitoring-plugin convention, where 2 is
    // CRITICAL, so its usage errors are UNKNOWN (3).
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let status = std::env::args().nth(1).as_deref() == Some("status");
            let code = if status && e.use_stderr() {
                3
            } else {
                e.exit_code()
            };
            let _ = e.print();
            return ExitCode::from(u8::try_from(code).unwrap_or(2));
        }
    };
    let result = match cli.command {
        // Its own exit codes (monitoring-plugin convention).
        Command::Status(args) => return ExitCode::from(status::run(args).await),
        Command::Import(args) => import::run(args).await,
        Command::Migrate => migrate::run().await,
        Command::Apply(args) => apply::run(args).await,
        Command::Totals(args) => totals::run(args).await,
        Command::Costs(args) => costs::run(args).await,
        Command::Maintenance(args) => maintenance::run(args).await,
        Command::Archive(args) => maintenance::archive(args).await,
        Command::Insights(args) => insights::run(args).await,
        Command::Audit(args) => audit::run(args).await,
        Command::Explain(args) => explain::run(args).await,
        Command::Failed(args) => failed::run(args).await,
        Command::Task(args) => task::run(args).await,
        Command::Invoice(args) => invoice::run(args).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.is_closed_output() => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
