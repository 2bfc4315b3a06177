//! The totals history on PostgreSQL ([`HistoryStore`]): a backup is one
//! transaction holding the cycle's totals lock (the advisory lock
//! CalculateTotals takes too), so it reads the totals of one calculation
//! and appends versions one at a time.

use async_trait::async_trait;
use chrono::NaiveDate;
use serde_json::Value;
use sqlx::{PgPool, Postgres, Transaction};

use crate::adapters::billing::customer::PgCustomerSettings;
use crate::billing::history::{self, Backup, CycleHistory, HistoryError, HistoryStore};
use crate::ports::StoreError;

#[derive(Clone)]
pub struct PgHistory {
    pool: PgPool,
}

impl PgHistory {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }
}

#[async_trait]
impl HistoryStore for PgHistory {
    async fn begin(
        &self,
        customer_id: i64,
        cycle: NaiveDate,
    ) -> Result<Box<dyn CycleHistory>, StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
            .bind(format!("totals:{customer_id}:{cycle}"))
            .execute(&mut *tx)
            .await?;
        Ok(Box::new(PgCycleHistory {
            tx,
            customer_id,
            cycle,
        }))
    }
}

/// One backup's transaction.
struct PgCycleHistory {
    tx: Transaction<'static, Postgres>,
    customer_id: i64,
    cycle: NaiveDate,
}

#[async_trait]
impl CycleHistory for PgCycleHistory {
    async fn current_figures(&mut self) -> Result<Option<Value>, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT jsonb_build_object(
                'method', method, 'rate_plan_id', rate_plan_id, 'cdr_count', cdr_count,
                'voice_seconds', voice_seconds, 'data_bytes', data_bytes, 'messages', messages,
                'provider_cost_micros', provider_cost_micros, 'rated_cost_micros', rated_cost_micros,
                'unrated_count', unrated_count,
                'lines', (SELECT coalesce(jsonb_agg(to_jsonb(l) - 'customer_id' - 'cycle'
                                                    ORDER BY l.subscription, l.kind, l.roaming_zone), '[]')
                          FROM totals_line l WHERE l.customer_id = t.customer_id AND l.cycle = t.cycle))
             FROM totals t WHERE customer_id = $1 AND cycle = $2",
        )
        .bind(self.customer_id)
        .bind(self.cycle)
        .fetch_optional(&mut *self.tx)
        .await?)
    }

    async fn latest(&mut self) -> Result<Option<(i32, Value)>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT version, figures FROM totals_history WHERE customer_id = $1 AND cycle = $2 ORDER BY version DESC LIMIT 1",
        )
        .bind(self.customer_id)
        .bind(self.cycle)
        .fetch_optional(&mut *self.tx)
        .await?)
    }

    async fn append(
        &mut self,
        version: i32,
        cause: &str,
        figures: &Value,
    ) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO totals_history (customer_id, cycle, version, cause, figures) VALUES ($1, $2, $3, $4, $5)")
            .bind(self.customer_id)
            .bind(self.cycle)
            .bind(version)
            .bind(cause)
            .bind(figures)
            .execute(&mut *self.tx)
            .await?;
        Ok(())
    }

    async fn commit(self: Box<Self>) -> Result<(), StoreError> {
        self.tx.commit().await?;
        Ok(())
    }
}

/// [`history::backup_totals`] on the pool's stores.
pub async fn backup_totals(
    pool: &PgPool,
    customer_id: i64,
    cycle: NaiveDate,
    cause: &str,
) -> Result<Backup, HistoryError> {
    history::backup_totals(
        &PgHistory::new(pool.clone()),
        &PgCustomerSettings::new(pool.clone()),
        customer_id,
        cycle,
        cause,
    )
    .await
}
