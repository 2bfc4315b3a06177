//! totals: DispatchTotals, CalculateTotals and BackupTotals from the totals
//! queue, or one cycle from the console
//! (`{"customer_id": 1, "cycle": "2025-01-01"}` as a DispatchTotals payload).

use std::sync::Arc;

use lambda_runtime::{run, service_fn, Error, LambdaEvent};
use serde_json::Value;
use tem_shared::billing::handler::Totals;
use tem_shared::bootstrap::Platform;
use tem_shared::config::Env;
use tem_shared::lambda::{deadline, handle_event};
use tem_shared::telemetry;

#[tokio::main]
async fn main() -> Result<(), Error> {
    telemetry::init();
    let env = Env::process();
    let platform = Platform::connect(&env).await?;
    let runtime = platform.chain_runtime(&env, Arc::new(Totals::new(platform.pool.clone())))?;
    let runtime = &runtime;
    run(service_fn(move |event: LambdaEvent<Value>| async move {
        handle_event(runtime, event.payload, deadline(&event.context)).await
    }))
    .await
}
