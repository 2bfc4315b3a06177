//! sync-manager: every five minutes (or from the console), create a sync
//! task per due profile and send `SyncProfile` to the provider's queue.

use std::sync::Arc;

use lambda_runtime::{run, service_fn, Error, LambdaEvent};
use serde_json::Value;
use tem_shared::adapters::postgres::{PgProfiles, PgRunLog};
use tem_shared::bootstrap::Platform;
use tem_shared::config::Env;
use tem_shared::sync::manager::SyncManager;
use tem_shared::sync::trigger::{SyncManagerInput, Trigger};
use tem_shared::telemetry;

#[tokio::main]
async fn main() -> Result<(), Error> {
    telemetry::init();
    let env = Env::process();
    let platform = Platform::connect(&env).await?;
    let stale_after = chrono::Duration::minutes(env.parsed("TASK_STALE_MINUTES", 60)?);
    let manager = SyncManager::new(
        Arc::new(PgProfiles::new(platform.pool.clone())),
        platform.tasks.clone(),
        platform.queues.clone(),
        Arc::new(PgRunLog::new(platform.pool.clone())),
        env.router(),
        stale_after,
    );
    let manager = &manager;
    run(service_fn(
        move |event: LambdaEvent<SyncManagerInput>| async move {
            let trigger = Trigger::from_input(event.payload, || event.context.request_id.clone())?;
            let summary = manager
                .run(
                    &trigger.selection,
                    &trigger.run_key,
                    trigger.kind,
                    chrono::Utc::now(),
                )
                .await?;
            Ok::<Value, Error>(serde_json::to_value(summary)?)
        },
    ))
    .await
}
