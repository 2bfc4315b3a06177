//! The maintenance's stores on PostgreSQL: the monthly partitions
//! (migration 0019; `tem_create_month_partition` does the creation, with
//! the move out of the default partition, in one transaction), and the
//! rows of a month read for its archive.

use std::collections::BTreeSet;

use async_trait::async_trait;
use chrono::NaiveDate;
use chrono::{DateTime, Months, Utc};
use futures::TryStreamExt;
use sqlx::{PgPool, Row};
use std::io::Write;

use crate::maintenance::archive::{ArchiveFileError, ArchivedCdr, CdrArchiveWriter};

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

/// Why a month could not be written to its archive file.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveReadError {
    #[error("reading the month's CDRs failed ({0}); run the archive again")]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    File(#[from] ArchiveFileError),
}

/// Streams one customer's CDRs of one UTC month (`None`: the CDRs without
/// a customer) into `writer`, in consumption order; returns the rows
/// written. Memory is the writer's row group, whatever the month's size.
pub async fn write_month_cdrs<W: Write + Send>(
    pool: &PgPool,
    customer: Option<i64>,
    month: NaiveDate,
    writer: &mut CdrArchiveWriter<W>,
) -> Result<u64, ArchiveReadError> {
    let from: DateTime<Utc> = month.and_hms_opt(0, 0, 0).expect("midnight").and_utc();
    let to = from + Months::new(1);
    let mut rows = sqlx::query(
        "SELECT id, provider, external_id, subscription, customer_id, started_at, kind, direction,
                destination, roaming_zone, duration_seconds, volume_bytes, units,
                provider_cost_micros, import_file_id, source_line
         FROM call_detail_record
         WHERE started_at >= $1 AND started_at < $2 AND customer_id IS NOT DISTINCT FROM $3
         ORDER BY started_at, provider, external_id, id",
    )
    .bind(from)
    .bind(to)
    .bind(customer)
    .fetch(pool);
    let mut written = 0;
    while let Some(row) = rows.try_next().await? {
        writer.push(&ArchivedCdr {
            id: row.try_get("id")?,
            provider: row.try_get("provider")?,
            external_id: row.try_get("external_id")?,
            subscription: row.try_get("subscription")?,
            customer_id: row.try_get("customer_id")?,
            started_at: row.try_get("started_at")?,
            kind: row.try_get("kind")?,
            direction: row.try_get("direction")?,
            destination: row.try_get("destination")?,
            roaming_zone: row.try_get("roaming_zone")?,
            duration_seconds: row.try_get("duration_seconds")?,
            volume_bytes: row.try_get("volume_bytes")?,
            units: row.try_get("units")?,
            provider_cost_micros: row.try_get("provider_cost_micros")?,
            import_file_id: row.try_get("import_file_id")?,
            source_line: row.try_get("source_line")?,
        })?;
        written += 1;
    }
    Ok(written)
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
