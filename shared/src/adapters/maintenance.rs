//! The maintenance's stores on PostgreSQL: the monthly partitions
//! (migration 0019; `tem_create_month_partition` does the creation, with
//! the move out of the default partition, in one transaction).

use std::collections::BTreeSet;

use async_trait::async_trait;
use chrono::NaiveDate;
use sqlx::PgPool;

use crate::maintenance::partitions::{PartitionLayout, PartitionStore, PartitionedTable};
use crate::ports::StoreError;

pub struct PgPartitions {
    pool: PgPool,
}

impl PgPartitions {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }
}

/// The month a partition's name (`{table}_yYYYYmMM`) stands for.
fn month_of_partition(table: &str, name: &str) -> Option<NaiveDate> {
    let rest = name.strip_prefix(table)?.strip_prefix("_y")?;
    let (year, month) = rest.split_once('m')?;
    NaiveDate::from_ymd_opt(year.parse().ok()?, month.parse().ok()?, 1)
}

/// The month of a row in the default partition, in SQL: UTC months for
/// CDRs, the cycle's first day's month for pricings.
fn month_expression(table: PartitionedTable) -> &'static str {
    match table {
        PartitionedTable::CallDetailRecord => {
            "date_trunc('month', started_at AT TIME ZONE 'UTC')::date"
        }
        PartitionedTable::RatingChunk => "date_trunc('month', cycle)::date",
    }
}

#[async_trait]
impl PartitionStore for PgPartitions {
    async fn layout(&self, table: PartitionedTable) -> Result<PartitionLayout, StoreError> {
        let names: Vec<String> = sqlx::query_scalar(
            "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
             WHERE i.inhparent = $1::regclass",
        )
        .bind(table.name())
        .fetch_all(&self.pool)
        .await?;
        let months = names
            .iter()
            .filter_map(|n| month_of_partition(table.name(), n))
            .collect();
        let in_default: Vec<NaiveDate> = sqlx::query_scalar(&format!(
            "SELECT DISTINCT {} FROM {}_default",
            month_expression(table),
            table.name()
        ))
        .fetch_all(&self.pool)
        .await?;
        Ok(PartitionLayout {
            months,
            in_default: in_default.into_iter().collect::<BTreeSet<_>>(),
        })
    }

    async fn create(
        &self,
        table: PartitionedTable,
        month: NaiveDate,
    ) -> Result<Option<u64>, StoreError> {
        let moved: Option<i64> =
            sqlx::query_scalar("SELECT tem_create_month_partition($1::regclass, $2)")
                .bind(table.name())
                .bind(month)
                .fetch_one(&self.pool)
                .await?;
        Ok(moved.map(|m| m as u64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partitions_name_gives_its_month_and_other_names_none() {
        assert_eq!(
            month_of_partition("call_detail_record", "call_detail_record_y2026m03"),
            NaiveDate::from_ymd_opt(2026, 3, 1)
        );
        assert_eq!(
            month_of_partition("call_detail_record", "call_detail_record_default"),
            None
        );
        assert_eq!(
            month_of_partition("rating_chunk", "call_detail_record_y2026m03"),
            None
        );
    }
}
