//! Monthly partitions created ahead of the CDRs that will need them.
//!
//! `call_detail_record` (by `started_at`, months in UTC) and `rating_chunk`
//! (by its cycle's first day) are partitioned by month with a default
//! partition (migration 0019). A CDR whose month has no partition is
//! loaded into the default partition, never rejected; the maintenance then
//! creates that month's partition and moves those rows into it, and keeps
//! this month and the next [`MONTHS_AHEAD`] created, so that in a running
//! system the default partition stays empty and each import's uniqueness
//! check touches one month's index.

use std::collections::BTreeSet;

use async_trait::async_trait;
use chrono::{Datelike, Months, NaiveDate};
use serde::Serialize;

use crate::maintenance::MaintenanceError;
use crate::ports::StoreError;

/// This month and the next three: a schedule that stops for up to three
/// months still finds partitions for new CDRs.
pub const MONTHS_AHEAD: u32 = 3;

/// The tables partitioned by month.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PartitionedTable {
    CallDetailRecord,
    RatingChunk,
}

impl PartitionedTable {
    pub const ALL: [PartitionedTable; 2] = [Self::CallDetailRecord, Self::RatingChunk];

    pub fn name(self) -> &'static str {
        match self {
            Self::CallDetailRecord => "call_detail_record",
            Self::RatingChunk => "rating_chunk",
        }
    }
}

/// The first day of `day`'s month.
pub fn month_of(day: NaiveDate) -> NaiveDate {
    day.with_day(1).expect("every month has a first day")
}

/// The months a table must have partitions for: the months its default
/// partition holds rows of, and this month with the next [`MONTHS_AHEAD`];
/// less the months it has. In ascending order.
pub fn months_to_create(
    today: NaiveDate,
    existing: &BTreeSet<NaiveDate>,
    in_default: &BTreeSet<NaiveDate>,
) -> Vec<NaiveDate> {
    let this_month = month_of(today);
    let ahead = (0..=MONTHS_AHEAD).filter_map(|n| this_month.checked_add_months(Months::new(n)));
    let wanted: BTreeSet<NaiveDate> = ahead
        .chain(in_default.iter().map(|m| month_of(*m)))
        .collect();
    wanted.difference(existing).copied().collect()
}

/// What a table's partitions are now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PartitionLayout {
    /// The first day of each month that has a partition.
    pub months: BTreeSet<NaiveDate>,
    /// The months the default partition holds rows of.
    pub in_default: BTreeSet<NaiveDate>,
}

/// The partitions of the monthly tables, as the maintenance sees them.
#[async_trait]
pub trait PartitionStore: Send + Sync {
    async fn layout(&self, table: PartitionedTable) -> Result<PartitionLayout, StoreError>;

    /// Creates the partition of `month` (its first day), moving the rows
    /// the default partition holds for it; `None` when it existed already
    /// (another run made it), else the rows moved.
    async fn create(
        &self,
        table: PartitionedTable,
        month: NaiveDate,
    ) -> Result<Option<u64>, StoreError>;
}

/// One partition the run created.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CreatedPartition {
    pub table: PartitionedTable,
    pub month: NaiveDate,
    /// Rows moved into it out of the default partition.
    pub rows_moved: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PartitionReport {
    pub created: Vec<CreatedPartition>,
}

impl PartitionReport {
    pub fn rows_moved(&self) -> u64 {
        self.created.iter().map(|c| c.rows_moved).sum()
    }
}

/// Creates every partition [`months_to_create`] asks for, table by table.
/// Each creation is its own transaction: a run killed part-way leaves
/// whole partitions, and the next run creates the rest.
pub async fn ensure_partitions(
    store: &dyn PartitionStore,
    today: NaiveDate,
) -> Result<PartitionReport, MaintenanceError> {
    let mut report = PartitionReport::default();
    for table in PartitionedTable::ALL {
        let layout = store.layout(table).await?;
        for month in months_to_create(today, &layout.months, &layout.in_default) {
            if let Some(rows_moved) = store.create(table, month).await? {
                report.created.push(CreatedPartition {
                    table,
                    month,
                    rows_moved,
                });
            }
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day(s: &str) -> NaiveDate {
        s.parse().unwrap()
    }

    fn months(days: &[&str]) -> BTreeSet<NaiveDate> {
        days.iter().map(|d| day(d)).collect()
    }

    #[test]
    fn a_new_table_gets_this_month_and_the_next_three() {
        let wanted = months_to_create(day("2026-12-07"), &BTreeSet::new(), &BTreeSet::new());
        assert_eq!(
            wanted,
            vec![
                day("2026-12-01"),
                day("2027-01-01"),
                day("2027-02-01"),
                day("2027-03-01")
            ]
        );
    }

    #[test]
    fn months_that_exist_are_not_created_again() {
        let existing = months(&["2026-12-01", "2027-01-01", "2027-02-01"]);
        let wanted = months_to_create(day("2026-12-31"), &existing, &BTreeSet::new());
        assert_eq!(wanted, vec![day("2027-03-01")]);
    }

    #[test]
    fn a_month_only_the_default_partition_holds_gets_its_partition_too() {
        let existing = months(&["2026-12-01", "2027-01-01", "2027-02-01", "2027-03-01"]);
        let in_default = months(&["2019-04-01", "2031-07-01"]);
        let wanted = months_to_create(day("2026-12-07"), &existing, &in_default);
        assert_eq!(wanted, vec![day("2019-04-01"), day("2031-07-01")]);
    }

    #[test]
    fn the_months_ahead_cross_a_year_end() {
        let wanted = months_to_create(day("2027-11-30"), &BTreeSet::new(), &BTreeSet::new());
        assert_eq!(wanted.last(), Some(&day("2028-02-01")));
    }
}
