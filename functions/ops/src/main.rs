//! ops: operator commands that must run inside the stack's network, sent
//! from the console or `aws lambda invoke` (events/ops/). `{"command":
//! "migrate"}` applies the embedded migrations, which is how
//! scripts/deploy.sh migrates a database only the VPC can reach.

use lambda_runtime::{run, service_fn, Error, LambdaEvent};
use serde_json::{json, Value};
use tem_shared::adapters::{migrations, postgres::MIGRATOR};
use tem_shared::bootstrap::Platform;
use tem_shared::config::Env;
use tem_shared::ops::OpsCommand;
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
        }
    }))
    .await
}
