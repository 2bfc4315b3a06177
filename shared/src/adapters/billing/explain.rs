//! What `temctl explain` reads on PostgreSQL ([`ExplainStore`]): the CDR,
//! its customer, what the last calculation of its cycle stored (totals,
//! `cycle_state`, change marks, checkpoints) and the CDRs that shared its
//! bundles. Each read is its own statement on the pool.

use std::collections::HashSet;

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};
use sqlx::postgres::PgRow;
use sqlx::{PgPool, Row};

use crate::adapters::billing::pricings::PgPricings;
use crate::billing::explain::{
    self, CdrExplanation, CdrFacts, CdrRef, ExplainError, ExplainStore, StoredCustomer,
    StoredRating,
};
use crate::ports::StoreError;

const CDR_COLUMNS: &str = "id, provider, external_id, subscription, customer_id, started_at, kind, direction, \
                           destination, roaming_zone, duration_seconds, volume_bytes, units, provider_cost_micros";

#[derive(Clone)]
pub struct PgExplain {
    pool: PgPool,
}

impl PgExplain {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }
}

fn cdr_facts(row: &PgRow) -> Result<(CdrFacts, Option<i64>), sqlx::Error> {
    let facts = CdrFacts {
        id: row.try_get("id")?,
        provider: row.try_get("provider")?,
        external_id: row.try_get("external_id")?,
        subscription: row.try_get("subscription")?,
        started_at: row.try_get("started_at")?,
        kind: row.try_get("kind")?,
        direction: row.try_get("direction")?,
        destination: row.try_get("destination")?,
        roaming_zone: row.try_get("roaming_zone")?,
        duration_seconds: i64::from(row.try_get::<i32, _>("duration_seconds")?),
        volume_bytes: row.try_get("volume_bytes")?,
        units: i64::from(row.try_get::<i32, _>("units")?),
        provider_cost_micros: row.try_get("provider_cost_micros")?,
    };
    Ok((facts, row.try_get("customer_id")?))
}

#[async_trait]
impl ExplainStore for PgExplain {
    async fn cdr(&self, cdr: &CdrRef) -> Result<Option<(CdrFacts, Option<i64>)>, StoreError> {
        let row = match cdr {
            CdrRef::Id(id) => {
                sqlx::query(&format!(
                    "SELECT {CDR_COLUMNS} FROM call_detail_record WHERE id = $1"
                ))
                .bind(id)
                .fetch_optional(&self.pool)
                .await?
            }
            CdrRef::Key {
                provider,
                external_id,
            } => {
                sqlx::query(&format!(
                "SELECT {CDR_COLUMNS} FROM call_detail_record WHERE provider = $1 AND external_id = $2"
            ))
                .bind(provider)
                .bind(external_id)
                .fetch_optional(&self.pool)
                .await?
            }
        };
        Ok(row.as_ref().map(cdr_facts).transpose()?)
    }

    async fn customer(&self, customer_id: i64) -> Result<StoredCustomer, StoreError> {
        let row = sqlx::query(
            "SELECT c.billing_cycle_start_day, c.time_zone, c.rate_plan_id, p.plan
             FROM customer c LEFT JOIN rate_plan p ON p.id = c.rate_plan_id WHERE c.id = $1",
        )
        .bind(customer_id)
        .fetch_one(&self.pool)
        .await?;
        Ok(StoredCustomer {
            start_day: row.try_get("billing_cycle_start_day")?,
            time_zone: row.try_get("time_zone")?,
            rate_plan_id: row.try_get("rate_plan_id")?,
            plan: row.try_get("plan")?,
        })
    }

    async fn rating(
        &self,
        customer_id: i64,
        cycle: NaiveDate,
    ) -> Result<Option<StoredRating>, StoreError> {
        let row = sqlx::query(
            "SELECT t.method, t.rate_plan_id, t.calculated_at, s.plan, s.time_zone, s.start_day
             FROM totals t LEFT JOIN cycle_state s ON s.customer_id = t.customer_id AND s.cycle = t.cycle
             WHERE t.customer_id = $1 AND t.cycle = $2",
        )
        .bind(customer_id)
        .bind(cycle)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        Ok(Some(StoredRating {
            method: row.try_get("method")?,
            rate_plan_id: row.try_get("rate_plan_id")?,
            calculated_at: row.try_get("calculated_at")?,
            plan: row.try_get("plan")?,
            time_zone: row.try_get("time_zone")?,
            start_day: row.try_get("start_day")?,
        }))
    }

    async fn pending_changes(
        &self,
        customer_id: i64,
        cycle: NaiveDate,
    ) -> Result<(i64, Option<DateTime<Utc>>), StoreError> {
        Ok(sqlx::query_as(
            "SELECT count(*), min(changed_from) FROM cycle_change WHERE customer_id = $1 AND cycle = $2",
        )
        .bind(customer_id)
        .bind(cycle)
        .fetch_one(&self.pool)
        .await?)
    }

    async fn segment_at(
        &self,
        customer_id: i64,
        cycle: NaiveDate,
        at: DateTime<Utc>,
    ) -> Result<Option<DateTime<Utc>>, StoreError> {
        Ok(sqlx::query_scalar::<_, Option<DateTime<Utc>>>(
            "SELECT max(segment) FROM rating_chunk WHERE customer_id = $1 AND cycle = $2 AND segment <= $3",
        )
        .bind(customer_id)
        .bind(cycle)
        .bind(at)
        .fetch_one(&self.pool)
        .await?)
    }

    async fn subscription_cdrs(
        &self,
        customer_id: i64,
        subscription: &str,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<HashSet<i64>, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT id FROM call_detail_record
             WHERE customer_id = $1 AND started_at >= $2 AND started_at <= $3 AND subscription = $4",
        )
        .bind(customer_id)
        .bind(from)
        .bind(to)
        .bind(subscription)
        .fetch_all(&self.pool)
        .await?
        .into_iter()
        .collect())
    }

    async fn checkpoint(
        &self,
        customer_id: i64,
        cycle: NaiveDate,
        at: DateTime<Utc>,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT state FROM rating_checkpoint WHERE customer_id = $1 AND cycle = $2 AND at = $3",
        )
        .bind(customer_id)
        .bind(cycle)
        .bind(at)
        .fetch_optional(&self.pool)
        .await?)
    }
}

/// [`explain::explain_cdr`] on the pool's stores.
pub async fn explain_cdr(pool: &PgPool, cdr: &CdrRef) -> Result<CdrExplanation, ExplainError> {
    explain::explain_cdr(
        &PgExplain::new(pool.clone()),
        &PgPricings::new(pool.clone()),
        cdr,
    )
    .await
}
