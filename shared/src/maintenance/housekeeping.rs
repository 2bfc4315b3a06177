//! The bookkeeping that only grows unless someone prunes it: step runs and
//! failed messages past their `expires_at`, published alerts (the outbox's
//! claims), catalog applies past their keep, and the references to
//! imports' rejected-row files past theirs (the files themselves go by the
//! bucket's lifecycle rule, and here too, so nothing points at a gone
//! file). Each table is pruned in batches, one short transaction each, so
//! a large backlog never holds a lock for long; then the partitioned
//! tables are analysed, which autovacuum never does for a partitioned
//! parent.

use async_trait::async_trait;
use chrono::{DateTime, Duration, Utc};
use serde::Serialize;

use crate::maintenance::MaintenanceError;
use crate::ports::{PortError, StoreError};

/// A table of bookkeeping rows that expire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Expiring {
    /// `step_run` past `expires_at` (StepRecordTtlDays).
    StepRuns,
    /// `failed_message` past `expires_at` (FailedMessageRetentionDays).
    FailedMessages,
    /// `alert_outbox` rows published before the cut-off.
    PublishedAlerts,
    /// `catalog_apply` rows applied before the cut-off.
    CatalogApplies,
}

impl Expiring {
    pub const ALL: [Expiring; 4] = [
        Expiring::StepRuns,
        Expiring::FailedMessages,
        Expiring::PublishedAlerts,
        Expiring::CatalogApplies,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Expiring::StepRuns => "step_run",
            Expiring::FailedMessages => "failed_message",
            Expiring::PublishedAlerts => "alert_outbox",
            Expiring::CatalogApplies => "catalog_apply",
        }
    }
}

/// An import's rejected-row file past its retention.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpiredReject {
    pub import_file_id: i64,
    pub bucket: String,
    pub key: String,
}

#[async_trait]
pub trait HousekeepingStore: Send + Sync {
    /// Deletes up to `limit` rows of `table` expired at `now` (or, for the
    /// tables kept by age, older than `before`); returns how many.
    async fn prune(
        &self,
        table: Expiring,
        now: DateTime<Utc>,
        before: DateTime<Utc>,
        limit: u32,
    ) -> Result<u64, StoreError>;
    /// Imports finished before `before` that still name a rejected-row file.
    async fn expired_rejects(
        &self,
        before: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<ExpiredReject>, StoreError>;
    /// The import no longer names its rejected-row file (the count of
    /// rejected rows stays).
    async fn forget_reject(&self, import_file_id: i64) -> Result<(), StoreError>;
    /// ANALYZE of the partitioned tables; returns their names.
    async fn analyze(&self) -> Result<Vec<String>, StoreError>;
}

/// Deletes an object; deleting one that is gone is no error.
#[async_trait]
pub trait ObjectDelete: Send + Sync {
    async fn delete_object(&self, bucket: &str, key: &str) -> Result<(), PortError>;
}

#[derive(Debug, Clone)]
pub struct HousekeepingSettings {
    pub batch: u32,
    pub alert_keep: Duration,
    pub catalog_keep: Duration,
    pub rejected_keep: Duration,
    /// Stop starting new batches after this; the step runs again.
    pub stop_after: Option<DateTime<Utc>>,
}

impl Default for HousekeepingSettings {
    fn default() -> Self {
        Self {
            batch: 5_000,
            alert_keep: Duration::days(90),
            // The catalog's history is who changed which price when: kept
            // for a tax year and a bit.
            catalog_keep: Duration::days(400),
            rejected_keep: Duration::days(90),
            stop_after: None,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct HousekeepingReport {
    pub pruned: std::collections::BTreeMap<&'static str, u64>,
    pub rejected_files: u64,
    pub analysed: Vec<String>,
    pub unfinished: bool,
}

impl HousekeepingReport {
    pub fn rows_pruned(&self) -> u64 {
        self.pruned.values().sum()
    }
}

fn out_of_time(settings: &HousekeepingSettings) -> bool {
    settings.stop_after.is_some_and(|t| Utc::now() >= t)
}

#[tracing::instrument(skip_all)]
pub async fn housekeeping(
    store: &dyn HousekeepingStore,
    objects: &dyn ObjectDelete,
    settings: &HousekeepingSettings,
    now: DateTime<Utc>,
) -> Result<HousekeepingReport, MaintenanceError> {
    let mut report = HousekeepingReport::default();
    for table in Expiring::ALL {
        let before = match table {
            Expiring::PublishedAlerts => now - settings.alert_keep,
            Expiring::CatalogApplies => now - settings.catalog_keep,
            Expiring::StepRuns | Expiring::FailedMessages => now,
        };
        let mut pruned = 0;
        loop {
            if out_of_time(settings) {
                report.unfinished = true;
                report.pruned.insert(table.as_str(), pruned);
                return Ok(report);
            }
            let n = store.prune(table, now, before, settings.batch).await?;
            pruned += n;
            if n < u64::from(settings.batch) {
                break;
            }
        }
        report.pruned.insert(table.as_str(), pruned);
    }
    loop {
        if out_of_time(settings) {
            report.unfinished = true;
            return Ok(report);
        }
        let rejects = store
            .expired_rejects(now - settings.rejected_keep, settings.batch)
            .await?;
        for reject in &rejects {
            objects
                .delete_object(&reject.bucket, &reject.key)
                .await
                .map_err(MaintenanceError::Delete)?;
            store.forget_reject(reject.import_file_id).await?;
            report.rejected_files += 1;
        }
        if rejects.len() < settings.batch as usize {
            break;
        }
    }
    report.analysed = store.analyze().await?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::sync::Mutex;

    /// Rows per table, deleted a batch at a time.
    struct Rows {
        left: Mutex<BTreeMap<Expiring, u64>>,
        calls: Mutex<u32>,
        rejects: Mutex<Vec<ExpiredReject>>,
        deleted: Mutex<Vec<String>>,
    }

    #[async_trait]
    impl HousekeepingStore for Rows {
        async fn prune(
            &self,
            table: Expiring,
            _now: DateTime<Utc>,
            _before: DateTime<Utc>,
            limit: u32,
        ) -> Result<u64, StoreError> {
            *self.calls.lock().unwrap() += 1;
            let mut left = self.left.lock().unwrap();
            let rows = left.entry(table).or_default();
            let n = (*rows).min(u64::from(limit));
            *rows -= n;
            Ok(n)
        }
        async fn expired_rejects(
            &self,
            _before: DateTime<Utc>,
            limit: u32,
        ) -> Result<Vec<ExpiredReject>, StoreError> {
            let rejects = self.rejects.lock().unwrap();
            Ok(rejects.iter().take(limit as usize).cloned().collect())
        }
        async fn forget_reject(&self, id: i64) -> Result<(), StoreError> {
            self.rejects
                .lock()
                .unwrap()
                .retain(|r| r.import_file_id != id);
            Ok(())
        }
        async fn analyze(&self) -> Result<Vec<String>, StoreError> {
            Ok(vec!["call_detail_record".into()])
        }
    }

    #[async_trait]
    impl ObjectDelete for Rows {
        async fn delete_object(&self, _bucket: &str, key: &str) -> Result<(), PortError> {
            self.deleted.lock().unwrap().push(key.into());
            Ok(())
        }
    }

    #[tokio::test]
    async fn a_backlog_is_pruned_in_batches_until_none_is_left() {
        let rows = Rows {
            left: Mutex::new(BTreeMap::from([
                (Expiring::StepRuns, 12_345),
                (Expiring::CatalogApplies, 3),
            ])),
            calls: Mutex::new(0),
            rejects: Mutex::new(
                (1..=3)
                    .map(|i| ExpiredReject {
                        import_file_id: i,
                        bucket: "b".into(),
                        key: format!("rejected/{i}.csv"),
                    })
                    .collect(),
            ),
            deleted: Mutex::new(vec![]),
        };
        let settings = HousekeepingSettings {
            batch: 5_000,
            ..HousekeepingSettings::default()
        };
        let report = housekeeping(&rows, &rows, &settings, Utc::now())
            .await
            .unwrap();
        assert_eq!(report.pruned["step_run"], 12_345);
        assert_eq!(report.pruned["catalog_apply"], 3);
        assert_eq!(report.rows_pruned(), 12_348);
        // 3 batches of step runs, one each for the other three tables.
        assert_eq!(*rows.calls.lock().unwrap(), 6);
        assert_eq!(report.rejected_files, 3);
        assert_eq!(rows.deleted.lock().unwrap().len(), 3);
        assert!(rows.rejects.lock().unwrap().is_empty());
        assert_eq!(report.analysed, vec!["call_detail_record".to_string()]);
        assert!(!report.unfinished);
    }

    #[tokio::test]
    async fn a_run_out_of_time_stops_between_batches_and_says_so() {
        let rows = Rows {
            left: Mutex::new(BTreeMap::from([(Expiring::StepRuns, 10)])),
            calls: Mutex::new(0),
            rejects: Mutex::new(vec![]),
            deleted: Mutex::new(vec![]),
        };
        let settings = HousekeepingSettings {
            stop_after: Some(Utc::now() - Duration::seconds(1)),
            ..HousekeepingSettings::default()
        };
        let report = housekeeping(&rows, &rows, &settings, Utc::now())
            .await
            .unwrap();
        assert!(report.unfinished);
        assert_eq!(*rows.calls.lock().unwrap(), 0);
    }
}
