//! The usage specification's reads on PostgreSQL ([`UsageSnapshot`]): one
//! REPEATABLE READ, READ ONLY transaction, so the totals, the CDRs and the
//! pricings all come from one snapshot, read a page (binary COPY, the
//! calculation's own page reader, so the order is rating's) or one pricing
//! chunk at a time. Also where a written specification is recorded on its
//! invoice.

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};
use chrono_tz::Tz;
use sqlx::{PgPool, Postgres, Row, Transaction};

use crate::adapters::totals::copy_page;
use crate::billing::calculation::{CdrKey, CdrPage, PAGE};
use crate::billing::pricings::StoredChunk;
use crate::billing::specification::{
    self, PartUpload, RatedBy, SpecificationError, UsageCycle, UsageSnapshot, Written,
};
use crate::billing::totals::TotalsError;
use crate::cdr::cycle_bounds;
use crate::ports::StoreError;

pub struct PgUsageSnapshot {
    tx: Transaction<'static, Postgres>,
    customer_id: i64,
    cycle: NaiveDate,
    /// The last pricing chunk read: (segment, seq).
    chunk_after: Option<(DateTime<Utc>, i32)>,
}

impl PgUsageSnapshot {
    pub async fn begin(
        pool: &PgPool,
        customer_id: i64,
        cycle: NaiveDate,
    ) -> Result<Self, StoreError> {
        let tx = pool
            .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .await?;
        Ok(Self {
            tx,
            customer_id,
            cycle,
            chunk_after: None,
        })
    }
}

fn store(e: sqlx::Error) -> SpecificationError {
    SpecificationError::Store(e.into())
}

#[async_trait]
impl UsageSnapshot for PgUsageSnapshot {
    async fn cycle(&mut self) -> Result<Option<UsageCycle>, SpecificationError> {
        let row = sqlx::query(
            "SELECT t.method, t.rated_cost_micros, t.cdr_count, c.time_zone, s.time_zone AS rated_zone,
                    (SELECT count(*) FROM cycle_change m WHERE m.customer_id = $1 AND m.cycle = $2) AS pending
             FROM totals t JOIN customer c ON c.id = t.customer_id
             LEFT JOIN cycle_state s ON s.customer_id = t.customer_id AND s.cycle = t.cycle
             WHERE t.customer_id = $1 AND t.cycle = $2",
        )
        .bind(self.customer_id)
        .bind(self.cycle)
        .fetch_optional(&mut *self.tx)
        .await
        .map_err(store)?;
        let Some(row) = row else { return Ok(None) };
        let method: String = row.try_get("method").map_err(store)?;
        Ok(Some(UsageCycle {
            time_zone: row.try_get("time_zone").map_err(store)?,
            rated_by: if method == "rate_plan" {
                RatedBy::RatePlan
            } else {
                RatedBy::Standard
            },
            rated_cost_micros: row.try_get("rated_cost_micros").map_err(store)?,
            cdr_count: row.try_get("cdr_count").map_err(store)?,
            pending_changes: row.try_get("pending").map_err(store)?,
            rated_time_zone: row
                .try_get::<Option<String>, _>("rated_zone")
                .map_err(store)?
                .filter(|z| !z.is_empty()),
        }))
    }

    async fn page(
        &mut self,
        zone: Tz,
        after: Option<CdrKey>,
        page: &mut CdrPage,
    ) -> Result<(), SpecificationError> {
        let (start, end) = cycle_bounds(self.cycle, zone);
        copy_page(
            &mut self.tx,
            self.customer_id,
            start,
            end,
            after.as_ref(),
            PAGE,
            page,
        )
        .await
        .map_err(|e| match e {
            TotalsError::Store(e) => SpecificationError::Store(e),
            other => SpecificationError::Read(other.to_string()),
        })
    }

    async fn next_chunk(&mut self) -> Result<Option<StoredChunk>, SpecificationError> {
        let (segment, seq) = match self.chunk_after {
            Some((segment, seq)) => (Some(segment), seq),
            None => (None, 0),
        };
        let row = sqlx::query(
            "SELECT segment, seq, first_position, cdr_count, pricings FROM rating_chunk
             WHERE customer_id = $1 AND cycle = $2
               AND ($3::timestamptz IS NULL OR (segment, seq) > ($3, $4))
             ORDER BY segment, seq LIMIT 1",
        )
        .bind(self.customer_id)
        .bind(self.cycle)
        .bind(segment)
        .bind(seq)
        .fetch_optional(&mut *self.tx)
        .await
        .map_err(store)?;
        let Some(row) = row else { return Ok(None) };
        let segment: DateTime<Utc> = row.try_get("segment").map_err(store)?;
        self.chunk_after = Some((segment, row.try_get("seq").map_err(store)?));
        Ok(Some(StoredChunk {
            segment,
            first_position: row.try_get("first_position").map_err(store)?,
            cdr_count: row.try_get("cdr_count").map_err(store)?,
            pricings: row.try_get("pricings").map_err(store)?,
        }))
    }
}

/// [`specification::write`] of a cycle on the pool.
pub async fn write_cycle(
    pool: &PgPool,
    upload: &mut dyn PartUpload,
    customer_id: i64,
    cycle: NaiveDate,
) -> Result<Written, SpecificationError> {
    let mut snapshot = PgUsageSnapshot::begin(pool, customer_id, cycle).await?;
    specification::write(&mut snapshot, upload, customer_id, cycle).await
}

/// Records a written specification on its invoice (replacing an earlier
/// one).
pub async fn record(
    pool: &PgPool,
    invoice_id: i64,
    bucket: &str,
    key: &str,
    written: &Written,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO invoice_specification (invoice_id, bucket, key, sha256, size_bytes, cdr_count, rated_cost_micros)
         VALUES ($1, $2, $3, $4, $5, $6, $7)
         ON CONFLICT (invoice_id) DO UPDATE SET bucket = EXCLUDED.bucket, key = EXCLUDED.key,
             sha256 = EXCLUDED.sha256, size_bytes = EXCLUDED.size_bytes, cdr_count = EXCLUDED.cdr_count,
             rated_cost_micros = EXCLUDED.rated_cost_micros, written_at = now()",
    )
    .bind(invoice_id)
    .bind(bucket)
    .bind(key)
    .bind(&written.sha256)
    .bind(i64::try_from(written.bytes).unwrap_or(i64::MAX))
    .bind(i64::try_from(written.rows).unwrap_or(i64::MAX))
    .bind(written.rated_cost_micros)
    .execute(pool)
    .await?;
    Ok(())
}

/// The SpecifyInvoice step's store on the pool.
#[derive(Clone)]
pub struct PgSpecifications {
    pool: PgPool,
}

impl PgSpecifications {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }
}

#[async_trait]
impl specification::SpecificationStore for PgSpecifications {
    async fn without_specification(
        &self,
        customer_id: i64,
        cycle: NaiveDate,
    ) -> Result<Vec<(i64, String)>, StoreError> {
        // A final invoice finalised before numbering (no number) gets none
        // by the step: `temctl invoice specify` still writes one.
        Ok(sqlx::query_as(
            "SELECT i.id, i.number FROM invoice i
             WHERE i.customer_id = $1 AND i.cycle = $2 AND i.status = 'final'
               AND i.number IS NOT NULL
               AND NOT EXISTS (SELECT 1 FROM invoice_specification s WHERE s.invoice_id = i.id)
             ORDER BY i.sequence",
        )
        .bind(customer_id)
        .bind(cycle)
        .fetch_all(&self.pool)
        .await?)
    }

    async fn write(
        &self,
        upload: &mut dyn PartUpload,
        customer_id: i64,
        cycle: NaiveDate,
    ) -> Result<Written, SpecificationError> {
        write_cycle(&self.pool, upload, customer_id, cycle).await
    }

    async fn record(
        &self,
        invoice_id: i64,
        bucket: &str,
        key: &str,
        written: &Written,
    ) -> Result<(), StoreError> {
        record(&self.pool, invoice_id, bucket, key, written).await
    }
}
