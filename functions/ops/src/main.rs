//! ops: operator commands that must run inside the stack's network, sent
//! from the console or `aws lambda invoke` (events/ops/). `{"command":
//! "migrate"}` applies the embedded migrations, which is how
//! scripts/deploy.sh migrates a database only the VPC can reach;
//! `{"command": "status"}` returns the monitoring points (ops::status).

use std::collections::BTreeMap;

use lambda_runtime::{run, service_fn, Error, LambdaEvent};
use serde_json::{json, Value};
use tem_shared::adapters::sqs::SqsQueueStats;
use tem_shared::adapters::status::PgStatus;
use tem_shared::adapters::task_overview::DynamoTaskOverview;
use tem_shared::adapters::{migrations, postgres::MIGRATOR};
use tem_shared::bootstrap::Platform;
use tem_shared::config::Env;
use tem_shared::ops::settings::OpsSettings;
use tem_shared::ops::{status, OpsCommand};
use tem_shared::telemetry;

#[tokio::main]
async fn main() -> Result<(), Error> {
    telemetry::init();
    let platform = Platform::connect(&Env::process()).await?;
    let platform = &platform;
    run(service_fn(move |event: LambdaEvent<Value>| async move {
        match OpsCommand::from_event(&event.payload)? {
            OpsCommand::Migrate {} => {
                let report = migrations::apply(&platform.pool, &MIGRATOR).await?;
                tracing::info!(
                    applied = report.applied.len(),
                    already = report.already_applied.len(),
                    "migrated"
                );
                Ok::<Value, Error>(json!({
                    "command": "migrate",
                    "applied": report.applied,
                    "already_applied": report.already_applied,
                }))
            }
            OpsCommand::Status { set } => Ok(serde_json::to_value(status(platform, &set).await?)?),
        }
    }))
    .await
}

/// The status report over this function's database, queues and tasks table;
/// thresholds from the environment, then the event's `set`.
async fn status(
    platform: &Platform,
    set: &BTreeMap<String, String>,
) -> Result<status::StatusReport, Error> {
    let env = Env::process();
    let settings = OpsSettings::from_env(&env)?;
    let mut thresholds = status::Thresholds::from_lookup(|name| env.optional(name))?;
    for (name, value) in set {
        thresholds.set(name, value)?;
    }
    let tasks = DynamoTaskOverview::new(
        aws_sdk_dynamodb::Client::new(&platform.aws),
        &settings.tasks_table,
    );
    let queues = SqsQueueStats::new(aws_sdk_sqs::Client::new(&platform.aws));
    let report = status::status(
        &PgStatus::new(platform.pool.clone()),
        &queues,
        &tasks,
        &settings,
        &thresholds,
        chrono::Utc::now(),
    )
    .await;
    tracing::info!(state = %report.state, checks = report.checks.len(), "status");
    Ok(report)
}
