//! cdr-import's step handler: `ImportCdrFile` runs the importer on the
//! object and forks one `DispatchTotals` per (customer, billing cycle) the
//! import touched; `AttachUnassignedCdrs` gives customer-less CDRs their
//! customer once the subscription exists, and forks the same way.

use std::sync::Arc;

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::json;
use tracing::instrument;

use crate::envelope::{ChainLink, Envelope, Step};
use crate::import::importer::{ImportRequest, Importer};
use crate::import::source::RangeRead;
use crate::metrics::Unit;
use crate::routing::Provider;
use crate::runtime::{Delivery, StepError, StepHandler, StepOutcome};

/// Opens an object for ranged reads (S3 in production).
pub trait ObjectSource: Send + Sync {
    fn open(&self, bucket: &str, key: &str) -> Arc<dyn RangeRead>;
}

#[derive(Debug, Deserialize)]
struct ImportPayload {
    bucket: String,
    key: String,
    /// Given from the console; otherwise read from the key.
    provider: Option<String>,
    profile_id: Option<i64>,
    /// Set by the notification adapter when a message cannot be processed.
    error: Option<String>,
}

/// Provider and profile from `inbox/{provider}/{profile_id}/{period}/{file}`.
pub fn parse_inbox_key(key: &str) -> Result<(Provider, Option<i64>), String> {
    let mut parts = key.split('/');
    match (parts.next(), parts.next(), parts.next()) {
        (Some("inbox"), Some(provider), profile) => {
            let provider = provider.parse::<Provider>().map_err(|e| e.to_string())?;
            Ok((provider, profile.and_then(|p| p.parse().ok())))
        }
        _ => Err(format!(
            "cannot tell the provider from key {key:?}; exports belong under inbox/{{provider}}/{{profile_id}}/..., or give \"provider\""
        )),
    }
}

pub struct CdrImport {
    importer: Importer,
    sources: Arc<dyn ObjectSource>,
    pool: sqlx::PgPool,
}

impl CdrImport {
    pub fn new(importer: Importer, sources: Arc<dyn ObjectSource>, pool: sqlx::PgPool) -> Self {
        Self {
            importer,
            sources,
            pool,
        }
    }
}

/// One `DispatchTotals` per (customer, cycle).
fn dispatch_totals(
    touched: &[(i64, chrono::NaiveDate)],
    cause: &str,
    extra: serde_json::Value,
) -> Vec<ChainLink> {
    touched
        .iter()
        .map(|(customer_id, cycle)| {
            let mut payload = json!({ "customer_id": customer_id, "cycle": cycle, "cause": cause });
            if let (Some(payload), Some(extra)) = (payload.as_object_mut(), extra.as_object()) {
                payload.extend(extra.clone());
            }
            ChainLink::new(Step::DispatchTotals, payload)
        })
        .collect()
}

#[async_trait]
impl StepHandler for CdrImport {
    #[instrument(skip_all, fields(key))]
    async fn handle(
        &self,
        message: &Envelope,
        delivery: Delivery,
    ) -> Result<StepOutcome, StepError> {
        match message.step {
            Step::ImportCdrFile => {}
            Step::AttachUnassignedCdrs => {
                let attached = crate::import::attach::attach_unassigned(&self.pool)
                    .await
                    .map_err(|e| StepError::Retryable(format!("attaching CDRs failed: {e}")))?;
                tracing::info!(
                    cdrs = attached.cdrs,
                    cycles = attached.touched.len(),
                    "CDRs attached"
                );
                return Ok(StepOutcome::Fork {
                    branches: dispatch_totals(&attached.touched, "late_subscription", json!({})),
                    output: serde_json::to_value(&attached).unwrap_or_default(),
                });
            }
            other => {
                return Err(StepError::Permanent(format!(
                    "cdr-import does not run {other}"
                )))
            }
        }
        let payload: ImportPayload = serde_json::from_value(message.payload.clone())
            .map_err(|e| StepError::Permanent(format!("ImportCdrFile payload is invalid: {e}")))?;
        if let Some(error) = payload.error {
            return Err(StepError::Permanent(error));
        }
        tracing::Span::current().record("key", payload.key.as_str());
        let (provider, profile_id) = match &payload.provider {
            Some(name) => (
                name.parse::<Provider>()
                    .map_err(|e| StepError::Permanent(e.to_string()))?,
                payload.profile_id,
            ),
            None => parse_inbox_key(&payload.key).map_err(StepError::Permanent)?,
        };
        let request = ImportRequest {
            bucket: payload.bucket.clone(),
            key: payload.key.clone(),
            provider,
            profile_id: profile_id.or(payload.profile_id),
            deadline: Some(delivery.deadline),
        };
        let source = self.sources.open(&payload.bucket, &payload.key);
        let summary = self.importer.import(source, &request).await.map_err(|e| {
            if e.is_retryable() {
                StepError::Retryable(e.to_string())
            } else {
                StepError::Permanent(e.to_string())
            }
        })?;
        // An import of content seen before loaded nothing new: no counts.
        if summary.status != crate::import::importer::ImportStatus::AlreadyImported {
            crate::metrics::emit_counts(
                &[("Provider", provider.as_str())],
                &[
                    ("CdrsLoaded", Unit::Count, summary.loaded as f64),
                    ("CdrsDuplicate", Unit::Count, summary.duplicate as f64),
                    ("CdrsRejected", Unit::Count, summary.rejected as f64),
                    (
                        "CdrsWithoutCustomer",
                        Unit::Count,
                        summary.without_customer as f64,
                    ),
                ],
            );
        }
        let branches = dispatch_totals(
            &summary.touched,
            "import",
            json!({ "import_file_id": summary.import_file_id }),
        );
        Ok(StepOutcome::Fork {
            output: serde_json::to_value(&summary).unwrap_or_default(),
            branches,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_provider_and_profile_come_from_the_inbox_key() {
        assert_eq!(
            parse_inbox_key("inbox/routit/7/2025-01-14/x.zip").unwrap(),
            (Provider::Routit, Some(7))
        );
        assert_eq!(
            parse_inbox_key("inbox/t_mobile/x.zip").unwrap(),
            (Provider::TMobile, None)
        );
        assert!(parse_inbox_key("inbox/ben/1/x.zip")
            .unwrap_err()
            .contains("unknown provider"));
        assert!(parse_inbox_key("other/routit/1/x.zip")
            .unwrap_err()
            .contains("inbox/"));
    }
}
