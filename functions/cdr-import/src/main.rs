//! cdr-import: S3 notifications from the import queue (or the console's
//! `{"bucket", "key"}`, or an envelope) in, CDRs loaded, `DispatchTotals` out;
//! bill-shock alerts to ALERT_TOPIC_ARN.
//! carrier invoices (`carrier-invoices/`) audited.

use std::sync::Arc;

use lambda_runtime::{run, service_fn, Error, LambdaEvent};
use tem_shared::adapters::audit::PgAudit;
use tem_shared::adapters::budgets::PgBudgets;
use tem_shared::adapters::s3::{S3Notifications, S3Rejects, S3Sources};
use tem_shared::adapters::s3_client;
use tem_shared::adapters::sns::{sns_client, SnsAlerts};
use tem_shared::audit::run::DEFAULT_TOLERANCE;
use tem_shared::audit::Tolerance;
use tem_shared::bootstrap::Platform;
use tem_shared::config::Env;
use tem_shared::import::handler::{Auditing, BillShockAlerts, CdrImport, ImportInput};
use tem_shared::import::importer::Importer;
use tem_shared::import::zip::ZipLimits;
use tem_shared::lambda::{deadline, handle_event};
use tem_shared::telemetry;

#[tokio::main]
async fn main() -> Result<(), Error> {
    telemetry::init();
    let env = Env::process();
    let platform = Platform::connect(&env).await?;
    let s3 = s3_client(&platform.aws);
    let limits = ZipLimits {
        max_entry_uncompressed: env.parsed(
            "MAX_ENTRY_BYTES",
            ZipLimits::default().max_entry_uncompressed,
        )?,
        max_ratio: env.parsed("MAX_COMPRESSION_RATIO", ZipLimits::default().max_ratio)?,
        ..ZipLimits::default()
    };
    let importer = Importer::new(
        platform.pool.clone(),
        Arc::new(S3Rejects::new(s3.clone(), env.required("CDR_BUCKET")?)),
        limits,
    );
    let budgets = Arc::new(PgBudgets::new(platform.pool.clone()));
    let bill_shock = BillShockAlerts {
        store: budgets.clone(),
        outbox: budgets,
        publisher: Some(Arc::new(SnsAlerts::new(
            sns_client(&platform.aws),
            env.required("ALERT_TOPIC_ARN")?,
        ))),
    };
    let tolerance = Tolerance {
        micros: env.parsed("AUDIT_TOLERANCE_MICROS", DEFAULT_TOLERANCE.micros)?,
        basis_points: env.parsed(
            "AUDIT_TOLERANCE_BASIS_POINTS",
            DEFAULT_TOLERANCE.basis_points,
        )?,
    };
    let s3_for_notifications = s3.clone();
    let runtime = platform.chain_runtime(
        &env,
        Arc::new(
            CdrImport::new(
                importer,
                Arc::new(S3Sources::new(s3.clone())),
                platform.pool.clone(),
            )
            .with_bill_shock(bill_shock)
            .with_audit(Auditing {
                store: Arc::new(PgAudit::new(platform.pool.clone())),
                tolerance,
            }),
        ),
    )?;
    let runtime = &runtime;
    let notifications = &S3Notifications::new(s3_for_notifications);
    run(service_fn(
        move |event: LambdaEvent<ImportInput>| async move {
            let deadline = deadline(&event.context);
            let request_id = &event.context.request_id;
            handle_event(runtime, notifications, event.payload, request_id, deadline).await
        },
    ))
    .await
}
