//! totals: DispatchTotals, CalculateTotals, BackupTotals, BillingInsight and
//! GenerateInvoice from the totals queue, or one cycle from the console
//! (`{"customer_id": 1, "cycle": "2025-01-01"}` as a DispatchTotals payload).
//! Its schedule finalises the invoices of cycles whose grace period ended
//! and publishes alerts left unpublished.
//! RenderInvoice writes the final invoices' documents into DOCUMENT_BUCKET,
//! and SpecifyInvoice their usage specifications (multipart uploads);
//! BillingInsight publishes budget and anomaly alerts to ALERT_TOPIC_ARN.

use std::sync::Arc;

use chrono::{Duration, Utc};
use lambda_runtime::{run, service_fn, Error, LambdaEvent};
use tem_shared::adapters::billing::stores;
use tem_shared::adapters::s3::{S3Objects, S3Uploads};
use tem_shared::adapters::s3_client;
use tem_shared::adapters::sns::{sns_client, SnsAlerts};
use tem_shared::billing::handler::{Totals, TotalsInput};
use tem_shared::billing::sweep::sweep_due_invoices;
use tem_shared::bootstrap::Platform;
use tem_shared::budgets::alerts::publish_all_pending;
use tem_shared::config::Env;
use tem_shared::lambda::{deadline, handle_event, schedule_run_key, EnvelopesOnly, ScheduledInput};
use tem_shared::telemetry;

#[tokio::main]
async fn main() -> Result<(), Error> {
    telemetry::init();
    let env = Env::process();
    let platform = Platform::connect(&env).await?;
    let grace = Duration::days(env.parsed("INVOICE_GRACE_DAYS", 5i64)?);
    let totals_queue = env.required("QUEUE_URL_TOTALS")?;
    let document_bucket = env.required("DOCUMENT_BUCKET")?;
    let alert_topic = env.required("ALERT_TOPIC_ARN")?;
    let stores = stores(platform.pool.clone());
    let invoices = stores.invoices.clone();
    let outbox = stores.outbox.clone();
    let alerts = Arc::new(SnsAlerts::new(sns_client(&platform.aws), alert_topic));
    let s3 = s3_client(&platform.aws);
    let totals = Totals::new(stores, grace)
        .with_documents(Arc::new(S3Objects::new(s3.clone())), document_bucket)
        .with_specifications(Arc::new(S3Uploads::new(s3)))
        .with_alerts(alerts.clone());
    let runtime = platform.chain_runtime(&env, Arc::new(totals))?;
    let (runtime, platform, totals_queue) = (&runtime, &platform, totals_queue.as_str());
    let invoices = invoices.as_ref();
    let (outbox, alerts) = (outbox.as_ref(), alerts.as_ref());
    run(service_fn(
        move |event: LambdaEvent<TotalsInput>| async move {
            match event.payload {
                ScheduledInput::Schedule(schedule) => {
                    let run_key = schedule_run_key(&schedule);
                    let queues = platform.queues.as_ref();
                    let report = sweep_due_invoices(
                        invoices,
                        queues,
                        totals_queue,
                        &run_key,
                        Utc::now(),
                        grace,
                    )
                    .await?;
                    // Alerts whose publish failed when they were decided.
                    publish_all_pending(outbox, alerts).await;
                    Ok(serde_json::to_value(report)?)
                }
                ScheduledInput::Queue(input) => {
                    let deadline = deadline(&event.context);
                    let request_id = &event.context.request_id;
                    handle_event(runtime, &EnvelopesOnly, input, request_id, deadline).await
                }
            }
        },
    ))
    .await
}
