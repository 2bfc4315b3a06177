//! BackupTotals: an append-only history of every version of a cycle's
//! totals, with the time and the cause of each change.

use async_trait::async_trait;
use chrono::{NaiveDate, Utc};
use serde_json::Value;

use crate::billing::customer::{CustomerError, CustomerSettings};
use crate::cdr::cycle_bounds;
use crate::ports::StoreError;

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub enum Backup {
    /// A new version was appended.
    Appended { version: i32 },
    /// The totals equal the latest version; nothing appended.
    Unchanged { version: i32 },
    /// No totals calculated for this cycle yet.
    NoTotals,
}

#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error(transparent)]
    Customer(#[from] CustomerError),
    #[error("database error: {0}")]
    Store(#[from] StoreError),
}

/// Where backups are kept (`adapters::billing::history` on PostgreSQL).
#[async_trait]
pub trait HistoryStore: Send + Sync {
    /// Starts the backup of one cycle. Backups of the same cycle wait for
    /// each other from here to the commit, so versions never collide.
    async fn begin(
        &self,
        customer_id: i64,
        cycle: NaiveDate,
    ) -> Result<Box<dyn CycleHistory>, StoreError>;
}

/// One backup of one cycle: what it reads and appends commits together, or
/// not at all when it is dropped.
#[async_trait]
pub trait CycleHistory: Send {
    /// The cycle's totals with their lines, as one document (the figures a
    /// version records); `None` when the cycle has no totals.
    async fn current_figures(&mut self) -> Result<Option<Value>, StoreError>;
    /// The latest version and its figures.
    async fn latest(&mut self) -> Result<Option<(i32, Value)>, StoreError>;
    async fn append(
        &mut self,
        version: i32,
        cause: &str,
        figures: &Value,
    ) -> Result<(), StoreError>;
    async fn commit(self: Box<Self>) -> Result<(), StoreError>;
}

/// Whether the cycle had ended by now, in the customer's time zone.
async fn cycle_has_ended(
    customers: &dyn CustomerSettings,
    customer_id: i64,
    cycle: NaiveDate,
) -> Result<bool, CustomerError> {
    let customer = customers.load(customer_id, cycle).await?;
    Ok(Utc::now() >= cycle_bounds(cycle, customer.zone).1)
}

/// Appends the cycle's current totals as a new version when they differ
/// from the latest one. Safe to repeat: an unchanged cycle adds nothing.
///
/// The customer is read before the backup's transaction begins: a step
/// never asks for a second connection while it holds one. Two backups that
/// did so on a pool of two each held one connection and waited for the
/// other's until the pool's acquire timeout (issue 17).
pub async fn backup_totals(
    history: &dyn HistoryStore,
    customers: &dyn CustomerSettings,
    customer_id: i64,
    cycle: NaiveDate,
    cause: &str,
) -> Result<Backup, HistoryError> {
    // Only an import's backup can be late CDRs; the others need no customer.
    let ended = if cause == "import" {
        cycle_has_ended(customers, customer_id, cycle).await?
    } else {
        false
    };
    let mut backup = history.begin(customer_id, cycle).await?;
    let Some(current) = backup.current_figures().await? else {
        return Ok(Backup::NoTotals);
    };
    let latest = backup.latest().await?;
    if let Some((version, figures)) = &latest {
        if *figures == current {
            return Ok(Backup::Unchanged { version: *version });
        }
    }
    let version = latest.map_or(1, |(v, _)| v + 1);
    // An import that changes a cycle that had ended already brought CDRs
    // that arrived late: say so, because that is what a billing engineer
    // looks for when the figures of a past cycle moved.
    let cause = if ended && version > 1 {
        "late_cdrs"
    } else {
        cause
    };
    backup.append(version, cause, &current).await?;
    backup.commit().await?;
    Ok(Backup::Appended { version })
}
