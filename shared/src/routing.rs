//! Which queue runs which step.
//!
//! Every provider has its own queue (and DLQ), so one carrier's outage never
//! holds up another's work. A step whose provider is unknown, or whose queue
//! is not configured, is a [`RoutingError`]: reported, never dropped.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::envelope::Step;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Provider {
    KpnSp16,
    KpnEen,
    Vodafone,
    TMobile,
    Routit,
    Yielder,
    Telfort,
}

impl Provider {
    pub const ALL: [Provider; 7] = [
        Provider::KpnSp16,
        Provider::KpnEen,
        Provider::Vodafone,
        Provider::TMobile,
        Provider::Routit,
        Provider::Yielder,
        Provider::Telfort,
    ];

    /// The name used in profiles, S3 keys and message payloads.
    pub fn as_str(self) -> &'static str {
        match self {
            Provider::KpnSp16 => "kpn_sp16",
            Provider::KpnEen => "kpn_een",
            Provider::Vodafone => "vodafone",
            Provider::TMobile => "t_mobile",
            Provider::Routit => "routit",
            Provider::Yielder => "yielder",
            Provider::Telfort => "telfort",
        }
    }

    /// The suffix of the environment variable holding the provider's queue URL.
    pub fn env_key(self) -> String {
        self.as_str().to_ascii_uppercase()
    }
}

impl fmt::Display for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Provider {
    type Err = RoutingError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Provider::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| RoutingError::UnknownProvider(s.to_string()))
    }
}

#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum RoutingError {
    #[error("unknown provider {0:?}; known providers: kpn_sp16, kpn_een, vodafone, t_mobile, routit, yielder, telfort")]
    UnknownProvider(String),
    #[error("step {step} needs a \"provider\" string in its payload")]
    MissingProvider { step: Step },
    #[error("no queue is configured for {0}; set QUEUE_URL_{key} in the function's environment", key = .0.to_ascii_uppercase())]
    QueueNotConfigured(String),
}

/// Queue URLs by destination, loaded once from the environment.
#[derive(Debug, Clone, Default)]
pub struct Router {
    provider_queues: BTreeMap<Provider, String>,
    import_queue: Option<String>,
    totals_queue: Option<String>,
    maintenance_queue: Option<String>,
}

impl Router {
    pub fn new(provider_queues: BTreeMap<Provider, String>) -> Self {
        Self {
            provider_queues,
            ..Self::default()
        }
    }

    /// Adds the import and totals queues (`QUEUE_URL_IMPORT`, `QUEUE_URL_TOTALS`).
    pub fn with_pipeline_queues(mut self, import: Option<String>, totals: Option<String>) -> Self {
        self.import_queue = import;
        self.totals_queue = totals;
        self
    }

    /// Adds the maintenance chain's queue (`QUEUE_URL_MAINTENANCE`).
    pub fn with_maintenance_queue(mut self, maintenance: Option<String>) -> Self {
        self.maintenance_queue = maintenance;
        self
    }

    /// The provider a step's payload belongs to.
    pub fn provider_of(step: Step, payload: &Value) -> Result<Provider, RoutingError> {
        match payload.get("provider").and_then(Value::as_str) {
            Some(name) => name.parse(),
            None => Err(RoutingError::MissingProvider { step }),
        }
    }

    /// The queue URL that runs `step` with `payload`.
    pub fn queue_for(&self, step: Step, payload: &Value) -> Result<&str, RoutingError> {
        match step {
            Step::SyncProfile
            | Step::RoutitRequestExport
            | Step::RoutitPollExport
            | Step::RoutitDownloadExport => {
                let provider = Self::provider_of(step, payload)?;
                self.provider_queue(provider)
            }
            Step::ImportCdrFile | Step::AttachUnassignedCdrs | Step::AuditCarrierInvoice => self
                .import_queue
                .as_deref()
                .ok_or_else(|| RoutingError::QueueNotConfigured("import".into())),
            Step::DispatchTotals
            | Step::CalculateTotals
            | Step::BackupTotals
            | Step::BillingInsight
            | Step::GenerateInvoice
            | Step::RenderInvoice
            | Step::SpecifyInvoice => self
                .totals_queue
                .as_deref()
                .ok_or_else(|| RoutingError::QueueNotConfigured("totals".into())),
            Step::MaintainPartitions | Step::ArchiveExpiredMonths | Step::PruneExpiredRecords => {
                self.maintenance_queue
                    .as_deref()
                    .ok_or_else(|| RoutingError::QueueNotConfigured("maintenance".into()))
            }
        }
    }

    pub fn provider_queue(&self, provider: Provider) -> Result<&str, RoutingError> {
        self.provider_queues
            .get(&provider)
            .map(String::as_str)
            .ok_or_else(|| RoutingError::QueueNotConfigured(provider.as_str().to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn router() -> Router {
        Router::new(BTreeMap::from([
            (Provider::Routit, "https://q/routit".to_string()),
            (Provider::TMobile, "https://q/t_mobile".to_string()),
        ]))
    }

    #[test]
    fn every_provider_name_round_trips() {
        for provider in Provider::ALL {
            assert_eq!(provider.as_str().parse::<Provider>().unwrap(), provider);
            assert_eq!(
                serde_json::to_value(provider).unwrap(),
                json!(provider.as_str())
            );
        }
    }

    #[test]
    fn a_sync_step_goes_to_its_providers_queue() {
        let router = router();
        assert_eq!(
            router
                .queue_for(Step::SyncProfile, &json!({"provider": "t_mobile"}))
                .unwrap(),
            "https://q/t_mobile"
        );
        assert_eq!(
            router
                .queue_for(Step::RoutitPollExport, &json!({"provider": "routit"}))
                .unwrap(),
            "https://q/routit"
        );
    }

    #[test]
    fn an_unknown_provider_is_an_error_not_a_drop() {
        let err = router()
            .queue_for(Step::SyncProfile, &json!({"provider": "ben"}))
            .unwrap_err();
        assert_eq!(err, RoutingError::UnknownProvider("ben".into()));
        assert!(err.to_string().contains("known providers"));
    }

    #[test]
    fn a_known_provider_without_a_queue_says_which_variable_to_set() {
        let err = router()
            .queue_for(Step::SyncProfile, &json!({"provider": "kpn_een"}))
            .unwrap_err();
        assert!(err.to_string().contains("QUEUE_URL_KPN_EEN"), "{err}");
    }

    #[test]
    fn pipeline_steps_go_to_their_own_queues() {
        let full = router().with_pipeline_queues(Some("q/import".into()), Some("q/totals".into()));
        assert_eq!(
            full.queue_for(Step::ImportCdrFile, &json!({})).unwrap(),
            "q/import"
        );
        assert_eq!(
            full.queue_for(Step::DispatchTotals, &json!({})).unwrap(),
            "q/totals"
        );
        assert!(router()
            .queue_for(Step::DispatchTotals, &json!({}))
            .unwrap_err()
            .to_string()
            .contains("QUEUE_URL_TOTALS"));
    }

    #[test]
    fn a_payload_without_provider_cannot_be_routed() {
        assert_eq!(
            router()
                .queue_for(Step::SyncProfile, &json!({}))
                .unwrap_err(),
            RoutingError::MissingProvider {
                step: Step::SyncProfile
            }
        );
    }
}
