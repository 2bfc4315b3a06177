//! The maintenance's stores on PostgreSQL: the monthly partitions
//! (migration 0019; `tem_create_month_partition` does the creation, with
//! the move out of the default partition, in one transaction), and the
//! rows of a month read for its archive.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::Path;

use async_trait::async_trait;
use chrono::{DateTime, Months, NaiveDate, Utc};
use futures::TryStreamExt;
use serde_json::Value;
use sqlx::{PgPool, Row};

use crate::maintenance::archive::{
    read_cdrs, read_cycle_rows, ArchiveFileError, ArchivedCdr, CdrArchiveWriter, CycleRow,
    Manifest, RowDigest,
};
use crate::maintenance::handler::RunLog as MaintenanceRunLog;
use crate::maintenance::housekeeping::{ExpiredReject, Expiring, HousekeepingStore};
use crate::maintenance::partitions::{PartitionLayout, PartitionStore, PartitionedTable};
use crate::maintenance::retention::{ArchiveState, Blocker, RetentionPolicy};
use crate::maintenance::run::{
    ArchiveRecord, ArchiveStore, MonthRows, MonthRowsSink, Removal, RestoreReport, RestoreStore,
};
use crate::maintenance::MaintenanceError;
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
/// a customer) into `writer`, in the archive's order; returns the rows
/// written. Memory is the writer's row group, whatever the month's size.
pub async fn write_month_cdrs<W: Write + Send>(
    pool: &PgPool,
    customer: Option<i64>,
    month: NaiveDate,
    writer: &mut CdrArchiveWriter<W>,
) -> Result<u64, ArchiveReadError> {
    let (from, to) = month_bounds(month);
    let sql = month_cdrs_sql(customer);
    let mut rows = sqlx::query(&sql)
        .bind(from)
        .bind(to)
        .bind(customer)
        .fetch(pool);
    let mut written = 0;
    while let Some(row) = rows.try_next().await? {
        writer.push(&cdr_from_row(&row)?)?;
        written += 1;
    }
    Ok(written)
}

// ------------------------------------------------------------------ archive

/// The tables of a cycle's bookkeeping archived with its month, in the
/// order a restore inserts them (a cycle's state refers to its totals).
/// `rating_chunk` (the pricings) and `rating_checkpoint` are removed with
/// the month; the totals, their lines and history, and the cycle's state
/// stay (invoices, budgets and anomalies read them) and are archived so
/// that the month's files answer a dispute on their own.
const CYCLE_TABLES: [&str; 6] = [
    "totals",
    "totals_line",
    "totals_history",
    "cycle_state",
    "rating_checkpoint",
    "rating_chunk",
];

const CDR_COLUMNS: &str =
    "id, provider, external_id, subscription, customer_id, started_at, kind, direction,
    destination, roaming_zone, duration_seconds, volume_bytes, units, provider_cost_micros,
    import_file_id, source_line";

/// The condition on `customer_id` ($3) that can use an index:
/// `IS NOT DISTINCT FROM` cannot, and made every customer month a scan of
/// the whole month's partition (a 100M store's month of 2,000 customers
/// took 564 s to archive).
fn customer_is(customer: Option<i64>) -> &'static str {
    match customer {
        Some(_) => "customer_id = $3",
        None => "customer_id IS NULL AND $3::int8 IS NULL",
    }
}

/// A customer's CDRs of one month ($1..$2, customer $3) in the archive's
/// order: the files, their checksum and the restore's comparison all rely
/// on this one order.
fn month_cdrs_sql(customer: Option<i64>) -> String {
    format!(
        "SELECT {CDR_COLUMNS} FROM call_detail_record
         WHERE started_at >= $1 AND started_at < $2 AND {}
         ORDER BY started_at, provider, external_id, id",
        customer_is(customer)
    )
}

fn month_bounds(month: NaiveDate) -> (DateTime<Utc>, DateTime<Utc>) {
    let from: DateTime<Utc> = month.and_hms_opt(0, 0, 0).expect("midnight").and_utc();
    (from, from + Months::new(1))
}

fn next_month(month: NaiveDate) -> NaiveDate {
    month + Months::new(1)
}

fn partition_name(table: &str, month: NaiveDate) -> String {
    format!("{table}_y{}", month.format("%Ym%m"))
}

fn cdr_from_row(row: &sqlx::postgres::PgRow) -> Result<ArchivedCdr, sqlx::Error> {
    Ok(ArchivedCdr {
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
    })
}

/// The archive's and the restore's store.
#[derive(Clone)]
pub struct PgArchive {
    pool: PgPool,
}

impl PgArchive {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    /// The customer an operator names: `none` (the CDRs without one), a
    /// numeric id, or a code.
    pub async fn customer(&self, name: &str) -> Result<Option<i64>, MaintenanceError> {
        if name == "none" {
            return Ok(None);
        }
        let id: Option<i64> = sqlx::query_scalar(
            "SELECT id FROM customer WHERE code = $1 OR id::text = $1 ORDER BY (code = $1) DESC LIMIT 1",
        )
        .bind(name)
        .fetch_optional(&self.pool)
        .await
        .map_err(StoreError::from)?;
        id.map(Some)
            .ok_or_else(|| MaintenanceError::UnknownCustomer(name.to_string()))
    }

    /// Every archived month, newest first: what `temctl archive list` shows.
    pub async fn list(&self) -> Result<Vec<ArchiveListing>, StoreError> {
        let rows = sqlx::query(
            "SELECT customer_id, month, state, bucket, manifest_key, cdr_rows, cycle_rows,
                    written_at, removed_at, restored_at, keep_until
             FROM cdr_archive ORDER BY month DESC, customer_key",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(ArchiveListing {
                    customer_id: r.try_get("customer_id")?,
                    month: r.try_get("month")?,
                    state: r.try_get("state")?,
                    bucket: r.try_get("bucket")?,
                    manifest_key: r.try_get("manifest_key")?,
                    cdr_rows: r.try_get::<i64, _>("cdr_rows")? as u64,
                    cycle_rows: r.try_get::<i64, _>("cycle_rows")? as u64,
                    written_at: r.try_get("written_at")?,
                    removed_at: r.try_get("removed_at")?,
                    restored_at: r.try_get("restored_at")?,
                    keep_until: r.try_get("keep_until")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StoreError::from)
    }
}

/// One row of `cdr_archive`, for operators.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ArchiveListing {
    pub customer_id: Option<i64>,
    pub month: NaiveDate,
    pub state: String,
    pub bucket: String,
    pub manifest_key: String,
    pub cdr_rows: u64,
    pub cycle_rows: u64,
    pub written_at: DateTime<Utc>,
    pub removed_at: Option<DateTime<Utc>>,
    pub restored_at: Option<DateTime<Utc>>,
    pub keep_until: Option<DateTime<Utc>>,
}

fn archive_state(state: &str, keep_until: Option<DateTime<Utc>>) -> Option<ArchiveState> {
    match (state, keep_until) {
        ("written", _) => Some(ArchiveState::Written),
        ("removed", _) => Some(ArchiveState::Removed),
        ("restored", Some(keep_until)) => Some(ArchiveState::Restored { keep_until }),
        _ => None,
    }
}

#[async_trait]
impl ArchiveStore for PgArchive {
    async fn retention(&self, default_months: u16) -> Result<RetentionPolicy, StoreError> {
        let rows: Vec<(i64, i16)> = sqlx::query_as(
            "SELECT id, cdr_retention_months FROM customer WHERE cdr_retention_months IS NOT NULL",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(RetentionPolicy {
            default_months,
            per_customer: rows
                .into_iter()
                .filter_map(|(id, m)| Some((id, u16::try_from(m).ok()?)))
                .collect(),
        })
    }

    async fn months_with_rows(&self, before: NaiveDate) -> Result<Vec<MonthRows>, StoreError> {
        let (before, _) = month_bounds(before);
        let rows: Vec<(Option<i64>, NaiveDate, i64)> = sqlx::query_as(
            "SELECT customer_id, date_trunc('month', started_at AT TIME ZONE 'UTC')::date AS month, count(*)
             FROM call_detail_record WHERE started_at < $1
             GROUP BY 1, 2 ORDER BY 2, 1 NULLS FIRST",
        )
        .bind(before)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(customer_id, month, rows)| MonthRows {
                customer_id,
                month,
                rows: rows as u64,
            })
            .collect())
    }

    async fn state(
        &self,
        customer: Option<i64>,
        month: NaiveDate,
    ) -> Result<Option<ArchiveState>, StoreError> {
        let row: Option<(String, Option<DateTime<Utc>>)> = sqlx::query_as(
            "SELECT state, keep_until FROM cdr_archive WHERE customer_key = coalesce($1, 0) AND month = $2",
        )
        .bind(customer)
        .bind(month)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.and_then(|(state, keep)| archive_state(&state, keep)))
    }

    async fn blockers(
        &self,
        customer: Option<i64>,
        month: NaiveDate,
    ) -> Result<Vec<Blocker>, StoreError> {
        let mut blockers = Vec::new();
        if let Some(customer) = customer {
            // The cycles that may overlap the UTC month: a cycle is a month
            // long from its first day, in the customer's zone (a day of
            // slack on each side for the zone).
            let drafts: Vec<(NaiveDate, i64)> = sqlx::query_as(
                "SELECT cycle, id FROM invoice
                 WHERE customer_id = $1 AND status = 'draft'
                   AND cycle > $2::date - interval '1 month 1 day'
                   AND cycle < $2::date + interval '1 month 1 day'
                 ORDER BY cycle, id",
            )
            .bind(customer)
            .bind(month)
            .fetch_all(&self.pool)
            .await?;
            blockers.extend(
                drafts
                    .into_iter()
                    .map(|(cycle, invoice_id)| Blocker::DraftInvoice { cycle, invoice_id }),
            );
            let not_invoiced: Vec<NaiveDate> = sqlx::query_scalar(
                "SELECT s.cycle FROM cycle_state s
                 WHERE s.customer_id = $1
                   AND s.cycle > $2::date - interval '1 month 1 day'
                   AND s.cycle < $2::date + interval '1 month 1 day'
                   AND NOT EXISTS (SELECT 1 FROM invoice i
                                   WHERE i.customer_id = s.customer_id AND i.cycle = s.cycle)
                 ORDER BY s.cycle",
            )
            .bind(customer)
            .bind(month)
            .fetch_all(&self.pool)
            .await?;
            blockers.extend(
                not_invoiced
                    .into_iter()
                    .map(|cycle| Blocker::NotInvoiced { cycle }),
            );
        }
        // A carrier invoice is per account, not per customer: its open
        // findings keep the whole month.
        let audits: Vec<(i64, i64)> = sqlx::query_as(
            "SELECT ci.id, count(*) FROM carrier_invoice ci
             JOIN audit_finding f ON f.carrier_invoice_id = ci.id
             WHERE ci.superseded_by IS NULL AND f.superseded_by IS NULL
               AND f.status IN ('open', 'disputed')
               AND ci.period_start < $1::date + interval '1 month' AND ci.period_end >= $1::date
             GROUP BY ci.id ORDER BY ci.id",
        )
        .bind(month)
        .fetch_all(&self.pool)
        .await?;
        blockers.extend(audits.into_iter().map(|(id, n)| Blocker::UnfinishedAudit {
            carrier_invoice_id: id,
            open_findings: n as u64,
        }));
        Ok(blockers)
    }

    async fn cycles(
        &self,
        customer: Option<i64>,
        month: NaiveDate,
    ) -> Result<Vec<NaiveDate>, StoreError> {
        let Some(customer) = customer else {
            return Ok(Vec::new());
        };
        Ok(sqlx::query_scalar(
            "SELECT cycle FROM totals WHERE customer_id = $1 AND cycle >= $2 AND cycle < $3 ORDER BY cycle",
        )
        .bind(customer)
        .bind(month)
        .bind(next_month(month))
        .fetch_all(&self.pool)
        .await?)
    }

    async fn read_month(
        &self,
        customer: Option<i64>,
        month: NaiveDate,
        sink: &mut dyn MonthRowsSink,
    ) -> Result<(), MaintenanceError> {
        let (from, to) = month_bounds(month);
        // One snapshot for the CDRs and the cycle rows: the manifest's
        // counts and checksum describe one state of the month.
        let mut tx = self.pool.begin().await.map_err(StoreError::from)?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .execute(&mut *tx)
            .await
            .map_err(StoreError::from)?;
        {
            let sql = month_cdrs_sql(customer);
            let mut rows = sqlx::query(&sql)
                .bind(from)
                .bind(to)
                .bind(customer)
                .fetch(&mut *tx);
            while let Some(row) = rows.try_next().await.map_err(StoreError::from)? {
                sink.cdr(&cdr_from_row(&row).map_err(StoreError::from)?)
                    .await?;
            }
        }
        if let Some(customer) = customer {
            for table in CYCLE_TABLES {
                let sql = format!(
                    "SELECT t.customer_id, t.cycle, row_to_json(t)::text AS row FROM {table} t
                     WHERE t.customer_id = $1 AND t.cycle >= $2 AND t.cycle < $3
                     ORDER BY t.cycle"
                );
                let mut rows = sqlx::query(&sql)
                    .bind(customer)
                    .bind(month)
                    .bind(next_month(month))
                    .fetch(&mut *tx);
                while let Some(row) = rows.try_next().await.map_err(StoreError::from)? {
                    let cycle_row = CycleRow {
                        table: table.to_string(),
                        customer_id: row.try_get("customer_id").map_err(StoreError::from)?,
                        cycle: row.try_get("cycle").map_err(StoreError::from)?,
                        row: row.try_get("row").map_err(StoreError::from)?,
                    };
                    sink.cycle_row(&cycle_row).await?;
                }
            }
        }
        tx.commit().await.map_err(StoreError::from)?;
        Ok(())
    }

    async fn record_written(
        &self,
        bucket: &str,
        manifest_key: &str,
        manifest: &Manifest,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO cdr_archive (customer_id, month, state, bucket, manifest_key, cdr_rows,
                                      cdr_rows_sha256, cycle_rows, max_cdr_id, written_at)
             VALUES ($1, $2, 'written', $3, $4, $5, $6, $7, $8, now())
             ON CONFLICT (customer_key, month) DO UPDATE SET
                 state = 'written', bucket = EXCLUDED.bucket, manifest_key = EXCLUDED.manifest_key,
                 cdr_rows = EXCLUDED.cdr_rows, cdr_rows_sha256 = EXCLUDED.cdr_rows_sha256,
                 cycle_rows = EXCLUDED.cycle_rows, max_cdr_id = EXCLUDED.max_cdr_id,
                 written_at = now(), removed_at = NULL, keep_until = NULL",
        )
        .bind(manifest.customer_id)
        .bind(manifest.month)
        .bind(bucket)
        .bind(manifest_key)
        .bind(manifest.cdrs.rows as i64)
        .bind(&manifest.cdr_rows_sha256)
        .bind(manifest.cycle_rows.rows as i64)
        .bind(manifest.max_cdr_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn remove(&self, month: NaiveDate) -> Result<Removal, StoreError> {
        let (from, to) = month_bounds(month);
        let mut tx = self.pool.begin().await?;
        // Behind a long import the removal waits this long, then fails
        // retryably: the next attempt (or day) tries again.
        sqlx::query("SET LOCAL lock_timeout = '30s'")
            .execute(&mut *tx)
            .await?;
        // Rows leaving because they are archived change no cycle: the
        // triggers that mark hand edits must not re-rate closed cycles.
        sqlx::query("SELECT set_config('tem.cycle_changes_marked', 'on', true)")
            .execute(&mut *tx)
            .await?;
        let written: Vec<(Option<i64>, i64, Option<i64>)> = sqlx::query_as(
            "SELECT customer_id, cdr_rows, max_cdr_id FROM cdr_archive
             WHERE month = $1 AND state = 'written' ORDER BY customer_key FOR UPDATE",
        )
        .bind(month)
        .fetch_all(&mut *tx)
        .await?;
        let mut removal = Removal::default();
        if written.is_empty() {
            return Ok(removal);
        }
        // No import may add to the month while its rows are counted and
        // removed (readers go on: SHARE ROW EXCLUSIVE lets them).
        sqlx::query("LOCK TABLE call_detail_record IN SHARE ROW EXCLUSIVE MODE")
            .execute(&mut *tx)
            .await?;
        let present: Vec<(Option<i64>, i64, i64)> = sqlx::query_as(
            "SELECT customer_id, count(*), max(id) FROM call_detail_record
             WHERE started_at >= $1 AND started_at < $2 GROUP BY customer_id",
        )
        .bind(from)
        .bind(to)
        .fetch_all(&mut *tx)
        .await?;
        let present: BTreeMap<Option<i64>, (i64, i64)> = present
            .into_iter()
            .map(|(c, n, max)| (c, (n, max)))
            .collect();
        // A written month is removed only as it was archived: the same
        // count and the same largest id. Anything else came in after its
        // files were written, and it is written again next run.
        let mut ok: Vec<Option<i64>> = Vec::new();
        for (customer, rows, max_id) in &written {
            let unchanged = match present.get(customer) {
                Some((n, max)) => n == rows && Some(*max) == *max_id,
                None => *rows == 0,
            };
            if unchanged {
                ok.push(*customer);
            } else {
                removal.stale.push(*customer);
            }
        }
        if !removal.stale.is_empty() {
            sqlx::query(
                "DELETE FROM cdr_archive WHERE month = $1 AND state = 'written'
                 AND customer_key = ANY($2)",
            )
            .bind(month)
            .bind(
                removal
                    .stale
                    .iter()
                    .map(|c| c.unwrap_or(0))
                    .collect::<Vec<_>>(),
            )
            .execute(&mut *tx)
            .await?;
        }
        let ok_keys: Vec<i64> = ok.iter().map(|c| c.unwrap_or(0)).collect();
        let ok_customers: Vec<i64> = ok.iter().flatten().copied().collect();
        if ok.is_empty() {
            tx.commit().await?;
            return Ok(removal);
        }
        let cdr_part = partition_name("call_detail_record", month);
        let rating_part = partition_name("rating_chunk", month);
        let cdr_part_exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
            .bind(&cdr_part)
            .fetch_one(&mut *tx)
            .await?;
        let everyone_archived = present.keys().all(|c| ok.contains(c));
        if cdr_part_exists && everyone_archived {
            sqlx::query(&format!(
                "ALTER TABLE call_detail_record DETACH PARTITION {cdr_part}"
            ))
            .execute(&mut *tx)
            .await?;
            sqlx::query(&format!("DROP TABLE {cdr_part}"))
                .execute(&mut *tx)
                .await?;
            removal.rows_dropped = present.values().map(|(n, _)| *n as u64).sum();
            removal.partitions_dropped.push(cdr_part);
        } else {
            for customer in &ok {
                let sql = format!(
                    "DELETE FROM call_detail_record
                     WHERE started_at >= $1 AND started_at < $2 AND {}",
                    customer_is(*customer)
                );
                removal.rows_deleted += sqlx::query(&sql)
                    .bind(from)
                    .bind(to)
                    .bind(customer)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
            }
        }
        // The pricings of the archived customers' cycles that start in the
        // month: the partition goes when no one else has pricings in it.
        let rating_part_exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
            .bind(&rating_part)
            .fetch_one(&mut *tx)
            .await?;
        let others_priced: bool = if rating_part_exists {
            sqlx::query_scalar(&format!(
                "SELECT EXISTS (SELECT 1 FROM {rating_part} WHERE customer_id <> ALL($1))"
            ))
            .bind(&ok_customers)
            .fetch_one(&mut *tx)
            .await?
        } else {
            true
        };
        if rating_part_exists && !others_priced {
            sqlx::query(&format!(
                "ALTER TABLE rating_chunk DETACH PARTITION {rating_part}"
            ))
            .execute(&mut *tx)
            .await?;
            sqlx::query(&format!("DROP TABLE {rating_part}"))
                .execute(&mut *tx)
                .await?;
            removal.partitions_dropped.push(rating_part);
        } else {
            sqlx::query(
                "DELETE FROM rating_chunk WHERE customer_id = ANY($1) AND cycle >= $2 AND cycle < $3",
            )
            .bind(&ok_customers)
            .bind(month)
            .bind(next_month(month))
            .execute(&mut *tx)
            .await?;
        }
        sqlx::query(
            "DELETE FROM rating_checkpoint WHERE customer_id = ANY($1) AND cycle >= $2 AND cycle < $3",
        )
        .bind(&ok_customers)
        .bind(month)
        .bind(next_month(month))
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE cdr_archive SET state = 'removed', removed_at = now()
             WHERE month = $1 AND customer_key = ANY($2)",
        )
        .bind(month)
        .bind(&ok_keys)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        removal.removed = ok;
        Ok(removal)
    }
}

/// Rows inserted per statement by a restore.
const RESTORE_BATCH: usize = 5_000;

async fn insert_cdrs(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    batch: &[ArchivedCdr],
) -> Result<u64, sqlx::Error> {
    macro_rules! column {
        ($field:ident) => {
            batch.iter().map(|c| c.$field.clone()).collect::<Vec<_>>()
        };
    }
    Ok(sqlx::query(&format!(
        "INSERT INTO call_detail_record ({CDR_COLUMNS}) OVERRIDING SYSTEM VALUE
         SELECT * FROM UNNEST($1::int8[], $2::text[], $3::text[], $4::text[], $5::int8[],
                              $6::timestamptz[], $7::text[], $8::text[], $9::text[], $10::text[],
                              $11::int4[], $12::int8[], $13::int4[], $14::int8[], $15::int8[], $16::int4[])
         ON CONFLICT DO NOTHING"
    ))
    .bind(column!(id))
    .bind(column!(provider))
    .bind(column!(external_id))
    .bind(column!(subscription))
    .bind(column!(customer_id))
    .bind(column!(started_at))
    .bind(column!(kind))
    .bind(column!(direction))
    .bind(column!(destination))
    .bind(column!(roaming_zone))
    .bind(column!(duration_seconds))
    .bind(column!(volume_bytes))
    .bind(column!(units))
    .bind(column!(provider_cost_micros))
    .bind(column!(import_file_id))
    .bind(column!(source_line))
    .execute(&mut **tx)
    .await?
    .rows_affected())
}

fn bad_file(e: std::io::Error) -> MaintenanceError {
    MaintenanceError::LocalFile(e)
}

#[async_trait]
impl RestoreStore for PgArchive {
    async fn record(
        &self,
        customer: Option<i64>,
        month: NaiveDate,
    ) -> Result<Option<ArchiveRecord>, StoreError> {
        let row: Option<(String, String, String, Option<DateTime<Utc>>)> = sqlx::query_as(
            "SELECT bucket, manifest_key, state, keep_until FROM cdr_archive
             WHERE customer_key = coalesce($1, 0) AND month = $2",
        )
        .bind(customer)
        .bind(month)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.and_then(|(bucket, manifest_key, state, keep)| {
            Some(ArchiveRecord {
                bucket,
                manifest_key,
                state: archive_state(&state, keep)?,
            })
        }))
    }

    async fn restore(
        &self,
        manifest: &Manifest,
        cdr_file: &Path,
        cycle_file: &Path,
        keep_until: DateTime<Utc>,
    ) -> Result<RestoreReport, MaintenanceError> {
        let (customer, month) = (manifest.customer_id, manifest.month);
        let mismatch = |reason: String| MaintenanceError::RestoreMismatch {
            customer,
            month,
            reason,
        };
        // The month's partitions again, if they were dropped (each in its
        // own transaction; made once, whoever asks).
        let partitions = PgPartitions::new(self.pool.clone());
        for table in PartitionedTable::ALL {
            partitions.create(table, month).await?;
        }
        let mut tx = self.pool.begin().await.map_err(StoreError::from)?;
        // Rows coming back change no cycle (see the removal).
        sqlx::query("SELECT set_config('tem.cycle_changes_marked', 'on', true)")
            .execute(&mut *tx)
            .await
            .map_err(StoreError::from)?;
        let file = std::fs::File::open(cdr_file).map_err(bad_file)?;
        let mut digest = RowDigest::default();
        let mut batch = Vec::with_capacity(RESTORE_BATCH);
        let mut inserted = 0;
        for cdr in read_cdrs(file)? {
            let cdr = cdr?;
            if cdr.customer_id != customer {
                return Err(mismatch(format!(
                    "CDR {} belongs to customer {:?}",
                    cdr.id, cdr.customer_id
                )));
            }
            digest.add(&cdr);
            batch.push(cdr);
            if batch.len() == RESTORE_BATCH {
                inserted += insert_cdrs(&mut tx, &batch)
                    .await
                    .map_err(StoreError::from)?;
                batch.clear();
            }
        }
        if !batch.is_empty() {
            inserted += insert_cdrs(&mut tx, &batch)
                .await
                .map_err(StoreError::from)?;
        }
        let rows = digest.rows();
        let sha256 = digest.hex();
        if rows != manifest.cdrs.rows || sha256 != manifest.cdr_rows_sha256 {
            return Err(mismatch(format!(
                "the file has {rows} rows with checksum {sha256}, the manifest {} with {}",
                manifest.cdrs.rows, manifest.cdr_rows_sha256
            )));
        }
        let file = std::fs::File::open(cycle_file).map_err(bad_file)?;
        let mut cycle_rows = 0;
        let mut cycle_inserted = 0;
        for row in read_cycle_rows(file)? {
            let row = row?;
            // The table's name comes from the file: only ours are written.
            let Some(table) = CYCLE_TABLES.iter().find(|t| **t == row.table) else {
                return Err(mismatch(format!("a row of unknown table {:?}", row.table)));
            };
            if Some(row.customer_id) != customer {
                return Err(mismatch(format!(
                    "a {table} row of customer {}",
                    row.customer_id
                )));
            }
            cycle_rows += 1;
            cycle_inserted += sqlx::query(&format!(
                "INSERT INTO {table} SELECT * FROM jsonb_populate_record(NULL::{table}, $1::jsonb)
                 ON CONFLICT DO NOTHING"
            ))
            .bind(&row.row)
            .execute(&mut *tx)
            .await
            .map_err(StoreError::from)?
            .rows_affected();
        }
        if cycle_rows != manifest.cycle_rows.rows {
            return Err(mismatch(format!(
                "the cycle file has {cycle_rows} rows, the manifest {}",
                manifest.cycle_rows.rows
            )));
        }
        // What the database now holds of the archived rows, by id.
        let (from, to) = month_bounds(month);
        let sql = format!(
            "SELECT count(*) FROM call_detail_record
             WHERE started_at >= $1 AND started_at < $2 AND {}
               AND id <= coalesce($4, 0)",
            customer_is(customer)
        );
        let held: i64 = sqlx::query_scalar(&sql)
            .bind(from)
            .bind(to)
            .bind(customer)
            .bind(manifest.max_cdr_id)
            .fetch_one(&mut *tx)
            .await
            .map_err(StoreError::from)?;
        if held as u64 != rows {
            return Err(mismatch(format!(
                "{held} of the month's archived CDRs are in the database after the restore, not {rows}"
            )));
        }
        sqlx::query(
            "UPDATE cdr_archive SET state = 'restored', restored_at = now(), keep_until = $3
             WHERE customer_key = coalesce($1, 0) AND month = $2",
        )
        .bind(customer)
        .bind(month)
        .bind(keep_until)
        .execute(&mut *tx)
        .await
        .map_err(StoreError::from)?;
        tx.commit().await.map_err(StoreError::from)?;
        Ok(RestoreReport {
            customer_id: customer,
            month,
            cdr_rows: rows,
            cdrs_inserted: inserted,
            cycle_rows,
            cycle_rows_inserted: cycle_inserted,
            cdr_rows_sha256: sha256,
            keep_until,
        })
    }
}

// ------------------------------------------------------------- housekeeping

pub struct PgHousekeeping {
    pool: PgPool,
}

impl PgHousekeeping {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }
}

#[async_trait]
impl HousekeepingStore for PgHousekeeping {
    async fn prune(
        &self,
        table: Expiring,
        now: DateTime<Utc>,
        before: DateTime<Utc>,
        limit: u32,
    ) -> Result<u64, StoreError> {
        let (name, condition, at) = match table {
            Expiring::StepRuns => ("step_run", "expires_at < $1", now),
            Expiring::FailedMessages => ("failed_message", "expires_at < $1", now),
            Expiring::PublishedAlerts => ("alert_outbox", "published_at < $1", before),
            Expiring::CatalogApplies => ("catalog_apply", "applied_at < $1", before),
        };
        // By ctid: one statement, whatever the table's key.
        Ok(sqlx::query(&format!(
            "DELETE FROM {name} WHERE ctid = ANY(ARRAY(SELECT ctid FROM {name} WHERE {condition} LIMIT $2))"
        ))
        .bind(at)
        .bind(i64::from(limit))
        .execute(&self.pool)
        .await?
        .rows_affected())
    }

    async fn expired_rejects(
        &self,
        before: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<ExpiredReject>, StoreError> {
        let rows: Vec<(i64, String, String)> = sqlx::query_as(
            "SELECT id, bucket, rejected_key FROM import_file
             WHERE rejected_key IS NOT NULL AND coalesce(finished_at, started_at) < $1
             ORDER BY id LIMIT $2",
        )
        .bind(before)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(import_file_id, bucket, key)| ExpiredReject {
                import_file_id,
                bucket,
                key,
            })
            .collect())
    }

    async fn forget_reject(&self, import_file_id: i64) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE import_file SET details = details || jsonb_build_object('rejected_key_expired', rejected_key),
                                    rejected_key = NULL
             WHERE id = $1",
        )
        .bind(import_file_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn analyze(&self) -> Result<Vec<String>, StoreError> {
        let mut analysed = Vec::new();
        for table in PartitionedTable::ALL {
            // Autovacuum analyses partitions, never their parent: the
            // planner's row estimates across months come from this.
            sqlx::query(&format!("ANALYZE {}", table.name()))
                .execute(&self.pool)
                .await?;
            analysed.push(table.name().to_string());
        }
        Ok(analysed)
    }
}

// ----------------------------------------------------------------- run log

/// The maintenance chain's stores, on one pool.
pub fn maintenance_stores(pool: &PgPool) -> crate::maintenance::handler::Stores {
    crate::maintenance::handler::Stores {
        partitions: std::sync::Arc::new(PgPartitions::new(pool.clone())),
        archive: std::sync::Arc::new(PgArchive::new(pool.clone())),
        housekeeping: std::sync::Arc::new(PgHousekeeping::new(pool.clone())),
        runs: std::sync::Arc::new(PgMaintenanceRuns::new(pool.clone())),
    }
}

pub struct PgMaintenanceRuns {
    pool: PgPool,
}

impl PgMaintenanceRuns {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }
}

#[async_trait]
impl MaintenanceRunLog for PgMaintenanceRuns {
    async fn started(&self, run_id: &str, today: NaiveDate) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO maintenance_run (run_id, today) VALUES ($1, $2) ON CONFLICT (run_id) DO NOTHING",
        )
        .bind(run_id)
        .bind(today)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn part(&self, run_id: &str, part: &str, report: Value) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE maintenance_run SET report = report || jsonb_build_object($2::text, $3::jsonb)
             WHERE run_id = $1",
        )
        .bind(run_id)
        .bind(part)
        .bind(report)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn finished(&self, run_id: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE maintenance_run SET finished_at = now() WHERE run_id = $1")
            .bind(run_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn last_finished(&self) -> Result<Option<DateTime<Utc>>, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT max(finished_at) FROM maintenance_run")
                .fetch_one(&self.pool)
                .await?,
        )
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
