//! maintenance: the daily maintenance chain from its own queue
//! (MaintainPartitions, ArchiveExpiredMonths, PruneExpiredRecords). Its
//! daily schedule starts a run; `{"command": "maintenance"}` from the
//! console starts one now (events/maintenance/). Archives go to
//! ARCHIVE_BUCKET under `archive/`, after CDR_RETENTION_MONTHS (or the
//! customer's own retention).

use std::sync::Arc;

use chrono::{Duration, Utc};
use lambda_runtime::{run, service_fn, Error, LambdaEvent};
use tem_shared::adapters::maintenance::maintenance_stores;
use tem_shared::adapters::s3::{S3Deletes, S3Objects, S3Uploads};
use tem_shared::adapters::s3_client;
use tem_shared::bootstrap::Platform;
use tem_shared::config::Env;
use tem_shared::lambda::{deadline, handle_event, schedule_run_key, EnvelopesOnly, ScheduledInput};
use tem_shared::maintenance::handler::{
    start_run, Maintenance, MaintenanceCommand, MaintenanceSettings, Objects,
};
use tem_shared::maintenance::housekeeping::HousekeepingSettings;
use tem_shared::maintenance::retention::DEFAULT_RETENTION_MONTHS;
use tem_shared::telemetry;

#[tokio::main]
async fn main() -> Result<(), Error> {
    telemetry::init();
    let env = Env::process();
    let platform = Platform::connect(&env).await?;
    let queue = env.required("QUEUE_URL_MAINTENANCE")?;
    let days = |name, default: i64| env.parsed(name, default).map(Duration::days);
    let settings = MaintenanceSettings {
        bucket: env.required("ARCHIVE_BUCKET")?,
        default_retention_months: env.parsed("CDR_RETENTION_MONTHS", DEFAULT_RETENTION_MONTHS)?,
        housekeeping: HousekeepingSettings {
            alert_keep: days("ALERT_KEEP_DAYS", 90)?,
            catalog_keep: days("CATALOG_APPLY_KEEP_DAYS", 400)?,
            rejected_keep: days("REJECTED_RETENTION_DAYS", 90)?,
            ..HousekeepingSettings::default()
        },
    };
    let s3 = s3_client(&platform.aws);
    let objects = Objects {
        uploads: Arc::new(S3Uploads::new(s3.clone())),
        put: Arc::new(S3Objects::new(s3.clone())),
        delete: Arc::new(S3Deletes::new(s3)),
    };
    let maintenance = Maintenance::new(maintenance_stores(&platform.pool), objects, settings);
    let runtime = platform.chain_runtime(&env, Arc::new(maintenance))?;
    let (runtime, platform, queue) = (&runtime, &platform, queue.as_str());
    run(service_fn(
        move |event: LambdaEvent<ScheduledInput<MaintenanceCommand>>| async move {
            match event.payload {
                ScheduledInput::Schedule(schedule) => {
                    let run_id = schedule_run_key(&schedule);
                    Ok(start_run(platform.queues.as_ref(), queue, &run_id, Utc::now()).await?)
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
