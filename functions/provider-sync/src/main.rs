//! provider-sync: one binary, deployed once per provider on that provider's
//! queue; runs the provider's driver through the shared chain runtime.

use std::sync::Arc;
use std::time::Duration;

use lambda_runtime::{run, service_fn, Error, LambdaEvent};
use tem_shared::adapters::postgres::PgProfiles;
use tem_shared::adapters::{s3::S3Objects, s3_client};
use tem_shared::bootstrap::Platform;
use tem_shared::config::Env;
use tem_shared::lambda::{deadline, handle_event, EnvelopesOnly};
use tem_shared::routing::Provider;
use tem_shared::sync::drivers::HttpClient;
use tem_shared::sync::provider::{ProviderSync, ProviderSyncInput};
use tem_shared::telemetry;

#[tokio::main]
async fn main() -> Result<(), Error> {
    telemetry::init();
    let env = Env::process();
    let platform = Platform::connect(&env).await?;
    let provider: Provider = env.required("PROVIDER")?.parse()?;
    let handler = ProviderSync::new(
        provider,
        HttpClient::new(Duration::from_secs(env.parsed("HTTP_TIMEOUT_SECONDS", 20)?)),
        Arc::new(PgProfiles::new(platform.pool.clone())),
        platform.secrets.clone(),
        Arc::new(S3Objects::new(s3_client(&platform.aws))),
        env.required("CDR_BUCKET")?,
        Duration::from_secs(env.parsed("POLL_DELAY_SECONDS", 60)?),
    );
    let runtime = platform.chain_runtime(&env, Arc::new(handler))?;
    let runtime = &runtime;
    run(service_fn(
        move |event: LambdaEvent<ProviderSyncInput>| async move {
            let deadline = deadline(&event.context);
            let request_id = &event.context.request_id;
            handle_event(runtime, &EnvelopesOnly, event.payload, request_id, deadline).await
        },
    ))
    .await
}
