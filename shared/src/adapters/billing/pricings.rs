//! The stored pricings on PostgreSQL ([`PricingsStore`]): `rating_chunk`
//! rows as the calculation wrote them; `billing::pricings` checks and
//! decodes them.

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};
use sqlx::{PgPool, Row};

use crate::billing::pricings::{
    self, PricingChunk, Pricings, PricingsError, PricingsStore, StoredChunk,
};
use crate::ports::StoreError;

#[derive(Clone)]
pub struct PgPricings {
    pool: PgPool,
}

impl PgPricings {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }
}

#[async_trait]
impl PricingsStore for PgPricings {
    async fn chunks(
        &self,
        customer_id: i64,
        cycle: NaiveDate,
        segment: Option<DateTime<Utc>>,
    ) -> Result<Vec<StoredChunk>, StoreError> {
        let rows = sqlx::query(
            "SELECT segment, first_position, cdr_count, pricings FROM rating_chunk
             WHERE customer_id = $1 AND cycle = $2 AND ($3::timestamptz IS NULL OR segment = $3)
             ORDER BY segment, seq",
        )
        .bind(customer_id)
        .bind(cycle)
        .bind(segment)
        .fetch_all(&self.pool)
        .await?;
        let chunks = rows
            .iter()
            .map(|row| {
                Ok(StoredChunk {
                    segment: row.try_get("segment")?,
                    first_position: row.try_get("first_position")?,
                    cdr_count: row.try_get("cdr_count")?,
                    pricings: row.try_get("pricings")?,
                })
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()?;
        Ok(chunks)
    }
}

/// [`pricings::read`] on the pool: every stored pricing of a cycle.
pub async fn read(
    pool: &PgPool,
    customer_id: i64,
    cycle: NaiveDate,
) -> Result<Pricings, PricingsError> {
    pricings::read(&PgPricings::new(pool.clone()), customer_id, cycle).await
}

/// [`pricings::read_chunks`] on the pool: a cycle's stored chunks (or one
/// segment's) with their segments and first positions.
pub async fn read_chunks(
    pool: &PgPool,
    customer_id: i64,
    cycle: NaiveDate,
    segment: Option<DateTime<Utc>>,
) -> Result<Vec<(DateTime<Utc>, u64, PricingChunk)>, PricingsError> {
    pricings::read_chunks(&PgPricings::new(pool.clone()), customer_id, cycle, segment).await
}
