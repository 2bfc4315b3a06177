//! `temctl status [--json]`: the runbook's monitoring points and the daily
//! extras (tem_shared::ops::status), as a table or as the JSON the ops
//! function's `{"command": "status"}` returns. The exit code follows the
//! monitoring-plugin convention, with --json too: 0 OK, 1 WARNING,
//! 2 CRITICAL, 3 UNKNOWN (also when the status could not be evaluated).

use std::collections::BTreeMap;

use chrono::Utc;
use clap::Args;
use tem_shared::adapters::sqs::SqsQueueStats;
use tem_shared::adapters::status::PgStatus;
use tem_shared::adapters::task_admin::DynamoTaskAdmin;
use tem_shared::config::Env;
use tem_shared::ops::settings::OpsSettings;
use tem_shared::ops::status::{self, StatusReport, ThresholdError, Thresholds};

use crate::db;
use crate::error::CliError;
use crate::stack::{StackArgs, StackError};

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub stack: StackArgs,
    /// Print the report as one JSON object (the ops function's answer).
    #[arg(long)]
    pub json: bool,
    /// Override a threshold for this run, by its environment name
    /// (e.g. STATUS_QUEUE_DEPTH_CRITICAL=500); repeatable. The environment
    /// variables of the same names are read first.
    #[arg(long = "set", value_name = "NAME=VALUE", value_parser = parse_setting)]
    pub set: Vec<(String, String)>,
}

fn parse_setting(text: &str) -> Result<(String, String), String> {
    let (name, value) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?} is not NAME=VALUE"))?;
    Thresholds::default()
        .set(name, value)
        .map_err(|e| e.to_string())?;
    Ok((name.to_string(), value.to_string()))
}

#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error(transparent)]
    Stack(#[from] StackError),
    #[error("the stack's queues and tables are not known: {0}; pass --stack NAME (or TEM_STACK), or set QUEUE_URL_<NAME>, DLQ_URL_<NAME>, TASKS_TABLE and IDEMPOTENCY_TABLE as the ops function has them")]
    Settings(#[from] tem_shared::config::ConfigError),
    #[error(transparent)]
    Threshold(#[from] ThresholdError),
    #[error(transparent)]
    Cli(#[from] CliError),
}

/// The stack to look at (its queues, DLQs and tables) and the AWS
/// configuration: the stack's outputs when `--stack`/`TEM_STACK` names one,
/// otherwise the ops function's environment names (QUEUE_URL_*, ...), so
/// the same command runs where that environment is set.
async fn settings(args: &StatusArgs) -> Result<(OpsSettings, aws_config::SdkConfig), StatusError> {
    match args.stack.load().await {
        Ok(stack) => Ok((stack.settings, stack.aws)),
        Err(StackError::NotNamed) => Ok((
            OpsSettings::from_env(&Env::process())?,
            tem_shared::adapters::aws_config().await,
        )),
        Err(e) => Err(e.into()),
    }
}

pub async fn report(args: &StatusArgs) -> Result<StatusReport, StatusError> {
    let env = Env::process();
    let mut thresholds = Thresholds::from_lookup(|name| env.optional(name))?;
    for (name, value) in &args.set {
        thresholds.set(name, value)?;
    }
    let (settings, aws) = settings(args).await?;
    let database = db::open(&db::url_from_env()?, 2).await?;
    let queues = SqsQueueStats::new(aws_sdk_sqs::Client::new(&aws));
    let tasks = DynamoTaskAdmin::from_config(&aws, &settings.tasks_table);
    Ok(status::status(
        &PgStatus::new(database.pool),
        &queues,
        &tasks,
        &settings,
        &thresholds,
        Utc::now(),
    )
    .await)
}

/// Prints the report and returns the exit code.
pub async fn run(args: StatusArgs) -> u8 {
    match report(&args).await {
        Ok(report) => {
            let text = if args.json {
                serde_json::to_string_pretty(&report).unwrap_or_default()
            } else {
                report.to_table()
            };
            println!("{}", text.trim_end());
            report.exit_code as u8
        }
        Err(e) => {
            eprintln!("error: {e}");
            if args.json {
                let unknown: BTreeMap<&str, serde_json::Value> = BTreeMap::from([
                    ("state", "UNKNOWN".into()),
                    ("exit_code", 3.into()),
                    ("error", e.to_string().into()),
                ]);
                println!("{}", serde_json::to_string(&unknown).unwrap_or_default());
            }
            status::State::Unknown.exit_code() as u8
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_threshold_setting_is_checked_when_the_arguments_are_parsed() {
        assert_eq!(
            parse_setting("STATUS_QUEUE_DEPTH_CRITICAL=5").unwrap(),
            ("STATUS_QUEUE_DEPTH_CRITICAL".into(), "5".into())
        );
        assert!(parse_setting("STATUS_QUEUE_DEPTH_CRITICAL").is_err());
        assert!(parse_setting("NO_SUCH=1").unwrap_err().contains("NO_SUCH"));
    }
}
