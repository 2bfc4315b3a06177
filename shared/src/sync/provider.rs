//! provider-sync's step handler: runs one provider's driver for one period
//! and drops the export into the CDR bucket under
//! `inbox/{provider}/{profile_id}/{period}/{export_id}.zip`.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::NaiveDate;
use serde::Deserialize;
use serde_json::json;
use tracing::{info, instrument};

use crate::envelope::{ChainLink, Envelope, Step};
use crate::ports::{ObjectPut, ProfileStore, SecretGet};
use crate::routing::Provider;
use crate::runtime::{Delivery, StepError, StepHandler, StepOutcome};
use crate::sync::drivers::{
    driver_for, Access, Credentials, Export, HttpClient, Progress, ProviderDriver, Start,
};
use crate::sync::profile::{SyncProfile, WatermarkAdvance};

/// User metadata on a stored export naming the sync task it belongs to.
pub const TASK_ID_METADATA: &str = "tem-task-id";
/// User metadata on a stored export carrying the sync's trace id, so the
/// import's logs share it with the sync that fetched the export.
pub const TRACE_ID_METADATA: &str = "tem-trace-id";

/// The hand-off token of an object: how the task knows the import that
/// continues its branch.
pub fn handoff_token(bucket: &str, key: &str) -> String {
    format!("s3://{bucket}/{key}")
}

/// The payload every step of a provider sync carries.
#[derive(Debug, Clone, Deserialize)]
struct SyncPayload {
    provider: String,
    profile_id: i64,
    period: NaiveDate,
}

pub struct ProviderSync {
    provider: Provider,
    driver: Box<dyn ProviderDriver>,
    profiles: Arc<dyn ProfileStore>,
    secrets: Arc<dyn SecretGet>,
    objects: Arc<dyn ObjectPut>,
    bucket: String,
    poll_delay: Duration,
}

impl ProviderSync {
    pub fn new(
        provider: Provider,
        http: HttpClient,
        profiles: Arc<dyn ProfileStore>,
        secrets: Arc<dyn SecretGet>,
        objects: Arc<dyn ObjectPut>,
        bucket: String,
        poll_delay: Duration,
    ) -> Self {
        Self {
            provider,
            driver: driver_for(provider, http),
            profiles,
            secrets,
            objects,
            bucket,
            poll_delay,
        }
    }

    async fn access(&self, profile: &SyncProfile) -> Result<Access, StepError> {
        let secret = self
            .secrets
            .secret_string(&profile.credentials_secret)
            .await?;
        Ok(Access {
            base_url: profile.base_url.clone(),
            credentials: Credentials::parse(&profile.credentials_secret, &secret)?,
        })
    }

    /// Stores the export, then advances the watermark: a crash in between
    /// re-fetches the same period and overwrites the same key. The object
    /// carries the task id, so the import its S3 notification starts
    /// continues this task's branch.
    async fn store(
        &self,
        message: &Envelope,
        profile: &SyncProfile,
        period: NaiveDate,
        export: Export,
    ) -> Result<StepOutcome, StepError> {
        let key = format!(
            "inbox/{}/{}/{}/{}.zip",
            self.provider, profile.id, period, export.export_id
        );
        let size = export.bytes.len();
        let mut metadata: Vec<(&str, &str)> = message
            .task_id
            .iter()
            .map(|task_id| (TASK_ID_METADATA, task_id.as_str()))
            .collect();
        metadata.push((TRACE_ID_METADATA, message.trace_id.as_str()));
        self.objects
            .put_object(
                &self.bucket,
                &key,
                export.bytes,
                "application/zip",
                &metadata,
            )
            .await?;
        match self.profiles.advance_watermark(profile.id, period).await? {
            WatermarkAdvance::Advanced | WatermarkAdvance::AlreadyThere => {}
            WatermarkAdvance::WouldSkip { watermark } => {
                return Err(StepError::Permanent(format!(
                    "profile {} is at {watermark:?}; storing {period} would skip periods",
                    profile.id
                )))
            }
        }
        info!(%key, size, "export stored; watermark advanced");
        Ok(StepOutcome::HandOff {
            output: json!({ "bucket": self.bucket, "key": key, "bytes": size }),
            via: handoff_token(&self.bucket, &key),
        })
    }
}

#[async_trait]
impl StepHandler for ProviderSync {
    #[instrument(skip_all, fields(profile_id, period))]
    async fn handle(
        &self,
        message: &Envelope,
        _delivery: Delivery,
    ) -> Result<StepOutcome, StepError> {
        let payload: SyncPayload =
            serde_json::from_value(message.payload.clone()).map_err(|e| {
                StepError::Permanent(format!("{} payload is invalid: {e}", message.step))
            })?;
        tracing::Span::current()
            .record("profile_id", payload.profile_id)
            .record("period", payload.period.to_string());
        if payload.provider != self.provider.as_str() {
            return Err(StepError::Permanent(format!(
                "message for provider {} reached the {} function; check the queue routing",
                payload.provider, self.provider
            )));
        }
        let profile = self
            .profiles
            .profile(payload.profile_id)
            .await?
            .ok_or_else(|| {
                StepError::Permanent(format!(
                    "sync profile {} does not exist",
                    payload.profile_id
                ))
            })?;
        if profile.has_fetched(payload.period) {
            info!("period already fetched; nothing to do");
            return Ok(StepOutcome::done(json!({ "already_fetched": true })));
        }
        let access = self.access(&profile).await?;

        if message.step == Step::SyncProfile {
            let reference = message
                .task_id
                .clone()
                .unwrap_or_else(|| message.id.clone());
            return match self
                .driver
                .start(&access, payload.period, &reference)
                .await?
            {
                Start::Fetched(export) => {
                    self.store(message, &profile, payload.period, export).await
                }
                Start::Steps(steps) => {
                    let mut base = message.payload.clone();
                    base["reference"] = json!(reference);
                    Ok(StepOutcome::Continue {
                        output: json!({}),
                        next: steps
                            .into_iter()
                            .map(|s| ChainLink::new(s, base.clone()))
                            .collect(),
                    })
                }
            };
        }

        match self
            .driver
            .step(message.step, &access, &message.payload)
            .await?
        {
            Progress::Output(output) => Ok(StepOutcome::done(output)),
            Progress::NotReady => {
                info!(
                    delay_s = self.poll_delay.as_secs(),
                    "export not ready; polling again later"
                );
                Ok(StepOutcome::Requeue {
                    delay: self.poll_delay,
                    payload: message.payload.clone(),
                })
            }
            Progress::Fetched(export) => {
                self.store(message, &profile, payload.period, export).await
            }
        }
    }
}
