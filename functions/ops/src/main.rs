//! ops: operator commands that must run inside the stack's network, sent
//! from the console or `aws lambda invoke` (events/ops/), and the watch the
//! schedule sends every minute. `{"command": "migrate"}` applies the
//! embedded migrations, which is how scripts/deploy.sh migrates a database
//! only the VPC can reach; `{"command": "status"}` returns the monitoring
//! points; the failed-message, task and watch commands run shared/src/ops
//! (the code `temctl failed`, `temctl task` and `temctl status` run).

use chrono::Utc;
use lambda_runtime::{run, service_fn, Error, LambdaEvent};
use serde_json::{json, Value};
use tem_shared::adapters::{migrations, postgres::MIGRATOR};
use tem_shared::bootstrap::{Ops, Platform};
use tem_shared::config::Env;
use tem_shared::ops::OpsCommand;
use tem_shared::telemetry;

#[tokio::main]
async fn main() -> Result<(), Error> {
    telemetry::init();
    let env = Env::process();
    let platform = Platform::connect(&env).await?;
    let ops = Ops::new(&platform, &env)?;
    let (platform, ops) = (&platform, &ops);
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
            OpsCommand::Status { set } => {
                let report = ops.status(&set, Utc::now()).await?;
                tracing::info!(state = %report.state, checks = report.checks.len(), "status");
                Ok(serde_json::to_value(report)?)
            }
            command => Ok(ops.console(platform).run(command, Utc::now()).await?),
        }
    }))
    .await
}
