//! totals: DispatchTotals, CalculateTotals, BackupTotals, BillingInsight and
//! GenerateInvoice from the totals queue, or one cycle from the console
//! (`{"customer_id": 1, "cycle": "2025-01-01"}` as a DispatchTotals payload).
//! Its schedule finalises the invoices of cycles whose grace period ended.

use std::sync::Arc;

use chrono::{Duration, Utc};
use lambda_runtime::{run, service_fn, Error, LambdaEvent};
use serde_json::Value;
use tem_shared::billing::handler::Totals;
use tem_shared::billing::sweep::sweep_due_invoices;
use tem_shared::bootstrap::Platform;
use tem_shared::config::Env;
use tem_shared::lambda::{deadline, handle_event, EnvelopesOnly};
use tem_shared::telemetry;

#[tokio::main]
async fn main() -> Result<(), Error> {
    telemetry::init();
    let env = Env::process();
    let platform = Platform::connect(&env).await?;
    let grace = Duration::days(env.parsed("INVOICE_GRACE_DAYS", 5i64)?);
    let totals_queue = env.required("QUEUE_URL_TOTALS")?;
    let runtime =
        platform.chain_runtime(&env, Arc::new(Totals::new(platform.pool.clone(), grace)))?;
    let (runtime, platform, totals_queue) = (&runtime, &platform, totals_queue.as_str());
    run(service_fn(move |event: LambdaEvent<Value>| async move {
        // EventBridge's scheduled event: the invoice sweep.
        if let Some(id) = event
            .payload
            .get("detail-type")
            .and(event.payload.get("id"))
        {
            let run_key = format!("schedule:{}", id.as_str().unwrap_or_default());
            let report = sweep_due_invoices(
                &platform.pool,
                platform.queues.as_ref(),
                totals_queue,
                &run_key,
                Utc::now(),
                grace,
            )
            .await?;
            return Ok(serde_json::to_value(report)?);
        }
        handle_event(
            runtime,
            &EnvelopesOnly,
            event.payload,
            deadline(&event.context),
        )
        .await
    }))
    .await
}
