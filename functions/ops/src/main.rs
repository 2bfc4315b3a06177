//! ops: operator commands that must run inside the stack's network, sent
//! from the console or `aws lambda invoke` (events/ops/), and the watch the
//! schedule sends every minute. `{"command": "migrate"}` applies the
//! embedded migrations, which is how scripts/deploy.sh migrates a database
//! only the VPC can reach; the failed-message, task and watch commands run
//! shared/src/ops (the code `temctl failed` and `temctl task` run).
//! `{"command": "status"}` returns the monitoring points (ops::status).

use std::collections::BTreeMap;

use chrono::Utc;
use lambda_runtime::{run, service_fn, Error, LambdaEvent};
use serde_json::{json, Value};
use tem_shared::adapters::operations::{PgAbandonedImports, PgFailures, PgStepHistory};
use tem_shared::adapters::sqs::{SqsDeadLetters, SqsQueueStats};
use tem_shared::adapters::status::PgStatus;
use tem_shared::adapters::task_admin::DynamoTaskAdmin;
use tem_shared::adapters::{migrations, postgres::MIGRATOR};
use tem_shared::bootstrap::Platform;
use tem_shared::config::Env;
use tem_shared::ops::console::Console;
use tem_shared::ops::failed::FailedPorts;
use tem_shared::ops::settings::OpsSettings;
use tem_shared::ops::watch::WatchSettings;
use tem_shared::ops::{status, OpsCommand};
use tem_shared::telemetry;

#[tokio::main]
async fn main() -> Result<(), Error> {
    telemetry::init();
    let env = Env::process();
    let platform = Platform::connect(&env).await?;
    let settings = OpsSettings::from_env(&env)?;
    let watch = WatchSettings::from_env(&env)?;
    let failures = PgFailures::new(platform.pool.clone());
    let history = PgStepHistory::new(platform.pool.clone());
    let imports = PgAbandonedImports::new(platform.pool.clone());
    let dead_letters = SqsDeadLetters::from_config(&platform.aws);
    let task_admin = DynamoTaskAdmin::from_config(&platform.aws, &settings.tasks_table);
    let console = Console {
        failed: FailedPorts {
            failures: &failures,
            history: &history,
            send: platform.queues.as_ref(),
            receive: &dead_letters,
            delete: &dead_letters,
            release: &dead_letters,
            tasks: &task_admin,
        },
        imports: &imports,
        tasks: platform.tasks.as_ref(),
        idempotency: platform.idempotency.as_ref(),
        settings: &settings,
        watch: &watch,
    };
    let (platform, console, settings, task_admin) = (&platform, &console, &settings, &task_admin);
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
            OpsCommand::Status { set } => Ok(serde_json::to_value(
                status(platform, settings, task_admin, &set).await?,
            )?),
            command => Ok(console.run(command, Utc::now()).await?),
        }
    }))
    .await
}

/// The status report over this function's database, queues and tasks table;
/// thresholds from the environment, then the event's `set`.
async fn status(
    platform: &Platform,
    settings: &OpsSettings,
    tasks: &DynamoTaskAdmin,
    set: &BTreeMap<String, String>,
) -> Result<status::StatusReport, Error> {
    let env = Env::process();
    let mut thresholds = status::Thresholds::from_lookup(|name| env.optional(name))?;
    for (name, value) in set {
        thresholds.set(name, value)?;
    }
    let queues = SqsQueueStats::new(aws_sdk_sqs::Client::new(&platform.aws));
    let report = status::status(
        &PgStatus::new(platform.pool.clone()),
        &queues,
        tasks,
        settings,
        &thresholds,
        chrono::Utc::now(),
    )
    .await;
    tracing::info!(state = %report.state, checks = report.checks.len(), "status");
    Ok(report)
}
