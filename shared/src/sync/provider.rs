//! provider-sync's step handler: runs one provider's driver for one period
//! and drops the export into the CDR bucket under
//! `inbox/{provider}/{profile_id}/{period}/{export_id}.zip`; with a month's
//! last day, also the carrier's invoice for that month (the carrier bill
//! audit's input) under `carrier-invoices/{provider}/{profile_id}/{month}.csv`.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::NaiveDate;
use tracing::{info, instrument};

use crate::command::{Command, RoutitExport, SyncPeriod};
use crate::envelope::{ChainLink, Envelope};
use crate::lambda::{NoCommand, QueueInput};
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

/// What provider-sync is invoked with: its queue's batches, or an envelope
/// from the console (events/provider-sync/console-envelope.json).
pub type ProviderSyncInput = QueueInput<NoCommand>;

pub struct ProviderSync {
    provider: Provider,
    driver: Box<dyn ProviderDriver>,
    http: HttpClient,
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
            driver: driver_for(provider, http.clone()),
            http,
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
        access: &Access,
        period: NaiveDate,
        export: Export,
    ) -> Result<StepOutcome, StepError> {
        self.store_carrier_invoice(access, profile, period).await?;
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
                return Err(StepError::Permanent(
                    format!(
                        "profile {} is at {watermark:?}; storing {period} would skip periods",
                        profile.id
                    )
                    .into(),
                ))
            }
        }
        info!(%key, size, "export stored; watermark advanced");
        Ok(StepOutcome::HandOff {
            via: handoff_token(&self.bucket, &key),
        })
    }
}

impl ProviderSync {
    /// On a month's last day, the carrier's invoice for that month, before
    /// the export (a failure retries both, and the watermark stays). Its
    /// S3 notification starts the audit on its own: it is not part of the
    /// sync task, and stored again it is the same content, which the audit
    /// recognises. A carrier that has not issued it yet is logged and
    /// skipped.
    async fn store_carrier_invoice(
        &self,
        access: &Access,
        profile: &SyncProfile,
        period: NaiveDate,
    ) -> Result<(), StepError> {
        let Some(month) = month_ended_on(period) else {
            return Ok(());
        };
        let Some(bytes) = self.http.carrier_invoice(access, month).await? else {
            info!(%month, "no carrier invoice for the month yet");
            return Ok(());
        };
        let key = carrier_invoice_key(self.provider, profile.id, month);
        let size = bytes.len();
        self.objects
            .put_object(&self.bucket, &key, bytes, "text/csv", &[])
            .await?;
        info!(%key, size, "carrier invoice stored");
        Ok(())
    }
}

/// The month whose last day `period` is.
pub fn month_ended_on(period: NaiveDate) -> Option<NaiveDate> {
    use chrono::Datelike;
    let next = period.succ_opt()?;
    (next.day() == 1).then(|| period.with_day(1)).flatten()
}

/// Where a carrier invoice is stored: under `carrier-invoices/`, which
/// notifies the import queue to audit it.
pub fn carrier_invoice_key(provider: Provider, profile_id: i64, month: NaiveDate) -> String {
    format!("carrier-invoices/{provider}/{profile_id}/{month}.csv")
}

#[async_trait]
impl StepHandler for ProviderSync {
    #[instrument(skip_all, fields(profile_id, period))]
    async fn handle(
        &self,
        message: &Envelope,
        _delivery: Delivery,
    ) -> Result<StepOutcome, StepError> {
        let command = message.command()?;
        let sync = match &command {
            Command::SyncProfile(sync) => sync.clone(),
            Command::RoutitRequestExport(export)
            | Command::RoutitPollExport(export)
            | Command::RoutitDownloadExport(export) => export.sync.clone(),
            other => {
                return Err(StepError::Permanent(
                    format!("provider-sync does not run {}", other.step()).into(),
                ))
            }
        };
        tracing::Span::current()
            .record("profile_id", sync.profile_id)
            .record("period", sync.period.to_string());
        if sync.provider != self.provider {
            return Err(StepError::Permanent(
                format!(
                    "message for provider {} reached the {} function; check the queue routing",
                    sync.provider, self.provider
                )
                .into(),
            ));
        }
        let profile = self
            .profiles
            .profile(sync.profile_id)
            .await?
            .ok_or_else(|| {
                StepError::Permanent(
                    format!("sync profile {} does not exist", sync.profile_id).into(),
                )
            })?;
        if profile.has_fetched(sync.period) {
            info!("period already fetched; nothing to do");
            return Ok(StepOutcome::finished());
        }
        let access = self.access(&profile).await?;

        if let Command::SyncProfile(_) = command {
            let reference = message
                .task_id
                .clone()
                .unwrap_or_else(|| message.id.clone());
            return match self.driver.start(&access, sync.period, &reference).await? {
                Start::Fetched(export) => {
                    self.store(message, &profile, &access, sync.period, export)
                        .await
                }
                Start::Steps(steps) => {
                    let export = RoutitExport {
                        sync,
                        reference,
                        export_id: None,
                    };
                    let next = steps
                        .into_iter()
                        .map(|step| {
                            Command::routit(step, export.clone())
                                .map(ChainLink::from)
                                .ok_or_else(|| {
                                    StepError::Permanent(
                                        format!("the driver named {step}, which is not a step of an export").into(),
                                    )
                                })
                        })
                        .collect::<Result<Vec<_>, _>>()?;
                    Ok(StepOutcome::Continue {
                        output: serde_json::Value::Null,
                        next,
                    })
                }
            };
        }

        match self.driver.step(&command, &access).await? {
            Progress::Output(handover) => Ok(StepOutcome::done(
                serde_json::to_value(handover).map_err(StepError::permanent)?,
            )),
            Progress::NotReady => {
                info!(
                    delay_s = self.poll_delay.as_secs(),
                    "export not ready; polling again later"
                );
                Ok(StepOutcome::Requeue {
                    delay: self.poll_delay,
                    payload: command.payload(),
                })
            }
            Progress::Fetched(export) => {
                self.store(message, &profile, &access, sync.period, export)
                    .await
            }
        }
    }
}

/// The `SyncProfile` that starts the sync of one period.
pub fn sync_profile(provider: Provider, profile_id: i64, period: NaiveDate) -> Command {
    Command::SyncProfile(SyncPeriod {
        provider,
        profile_id,
        period,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_months_last_day_fetches_that_months_carrier_invoice() {
        let day = |s: &str| s.parse::<NaiveDate>().unwrap();
        assert_eq!(month_ended_on(day("2025-03-31")), Some(day("2025-03-01")));
        assert_eq!(month_ended_on(day("2024-02-29")), Some(day("2024-02-01")));
        assert_eq!(month_ended_on(day("2025-03-30")), None);
        assert_eq!(month_ended_on(day("2025-03-01")), None);
        assert_eq!(
            carrier_invoice_key(Provider::KpnEen, 4, day("2025-03-01")),
            "carrier-invoices/kpn_een/4/2025-03-01.csv"
        );
    }

    const SQS_EVENT: &str = include_str!("../../../events/provider-sync/sqs-sync-profile.json");
    const CONSOLE_ENVELOPE: &str =
        include_str!("../../../events/provider-sync/console-envelope.json");

    #[test]
    fn the_provider_sync_input_parses_its_sqs_event_and_a_console_envelope() {
        let QueueInput::Batch(batch) =
            serde_json::from_str::<ProviderSyncInput>(SQS_EVENT).unwrap()
        else {
            panic!("an SQS event is a batch");
        };
        let body = batch.records[0].body.clone().unwrap();
        assert_eq!(
            Envelope::parse(&body).unwrap().command().unwrap(),
            sync_profile(Provider::Routit, 1, "2025-01-14".parse().unwrap())
        );
        let QueueInput::Envelope(envelope) =
            serde_json::from_str::<ProviderSyncInput>(CONSOLE_ENVELOPE).unwrap()
        else {
            panic!("a whole envelope is taken as one");
        };
        assert_eq!(envelope["step"], "SyncProfile");
    }

    #[test]
    fn provider_sync_has_no_console_command_and_says_to_send_an_envelope() {
        let err = serde_json::from_str::<ProviderSyncInput>(r#"{"profile_id": 1}"#).unwrap_err();
        assert!(err.to_string().contains("console-envelope.json"), "{err}");
    }
}
