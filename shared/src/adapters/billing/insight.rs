//! Insights on PostgreSQL ([`InsightStore`]): the totals, subscriptions and
//! CDRs without a customer the rules look at, and `billing_insight`, which
//! a replacement rewrites in one transaction under the cycle's insight lock.

use std::collections::BTreeMap;

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};
use serde_json::Value;
use sqlx::{PgPool, Row};

use crate::adapters::billing::customer::PgCustomerSettings;
use crate::billing::insight::{
    self, ActiveSubscription, CycleFigures, Insight, InsightError, InsightStore, LineFigures,
};
use crate::ports::StoreError;

#[derive(Clone)]
pub struct PgInsights {
    pool: PgPool,
}

impl PgInsights {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }
}

#[async_trait]
impl InsightStore for PgInsights {
    async fn totals(
        &self,
        customer_id: i64,
        cycle: NaiveDate,
    ) -> Result<Option<CycleFigures>, StoreError> {
        // One statement, so the totals and their lines are of the same
        // version even while CalculateTotals replaces them.
        let rows = sqlx::query(
            "SELECT t.rated_cost_micros AS total_rated, t.unrated_count AS total_unrated,
                    l.subscription, l.kind, l.roaming_zone, l.rated_cost_micros, l.unrated_count
             FROM totals t
             LEFT JOIN totals_line l ON l.customer_id = t.customer_id AND l.cycle = t.cycle
             WHERE t.customer_id = $1 AND t.cycle = $2
             ORDER BY l.subscription, l.kind, l.roaming_zone",
        )
        .bind(customer_id)
        .bind(cycle)
        .fetch_all(&self.pool)
        .await?;
        let Some(first) = rows.first() else {
            return Ok(None);
        };
        let rated_cost_micros: i64 = first.try_get("total_rated")?;
        let unrated_count: i64 = first.try_get("total_unrated")?;
        let mut lines = Vec::with_capacity(rows.len());
        for r in &rows {
            // The one row of totals without lines has no line columns.
            let Some(subscription) = r.try_get::<Option<String>, _>("subscription")? else {
                continue;
            };
            lines.push(LineFigures {
                subscription,
                kind: r.try_get("kind")?,
                zone: r.try_get("roaming_zone")?,
                rated_cost_micros: r.try_get("rated_cost_micros")?,
                unrated_count: r.try_get("unrated_count")?,
            });
        }
        Ok(Some(CycleFigures {
            rated_cost_micros,
            unrated_count,
            lines,
        }))
    }

    async fn rated_cost(
        &self,
        customer_id: i64,
        cycle: NaiveDate,
    ) -> Result<Option<i64>, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT rated_cost_micros FROM totals WHERE customer_id = $1 AND cycle = $2",
        )
        .bind(customer_id)
        .bind(cycle)
        .fetch_optional(&self.pool)
        .await?)
    }

    async fn active_subscriptions(
        &self,
        customer_id: i64,
        from: NaiveDate,
        before: NaiveDate,
    ) -> Result<Vec<ActiveSubscription>, StoreError> {
        let subscriptions = sqlx::query(
            "SELECT identifier, provider, active_from, active_to FROM subscription
             WHERE customer_id = $1 AND active_from < $3 AND (active_to IS NULL OR active_to >= $2)
             ORDER BY identifier, active_from, provider",
        )
        .bind(customer_id)
        .bind(from)
        .bind(before)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|r| {
            Ok(ActiveSubscription {
                identifier: r.try_get("identifier")?,
                provider: r.try_get("provider")?,
                active_from: r.try_get("active_from")?,
                active_to: r.try_get("active_to")?,
            })
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()?;
        Ok(subscriptions)
    }

    async fn unassigned_by_provider(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<BTreeMap<String, i64>, StoreError> {
        Ok(sqlx::query_as::<_, (String, i64)>(
            "SELECT provider, count(*) FROM call_detail_record
             WHERE customer_id IS NULL AND started_at >= $1 AND started_at < $2
             GROUP BY provider",
        )
        .bind(from)
        .bind(to)
        .fetch_all(&self.pool)
        .await?
        .into_iter()
        .collect())
    }

    async fn replace_insights(
        &self,
        customer_id: i64,
        cycle: NaiveDate,
        insights: &[Insight],
    ) -> Result<(), StoreError> {
        let kinds: Vec<&str> = insights.iter().map(|i| i.kind.as_str()).collect();
        let subjects: Vec<&str> = insights.iter().map(|i| i.subject.as_str()).collect();
        let details: Vec<&Value> = insights.iter().map(|i| &i.detail).collect();

        let mut tx = self.pool.begin().await?;
        // Two runs for the same cycle (two imports in a row) write one after
        // the other instead of interleaving their deletes and inserts.
        sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
            .bind(format!("insight:{customer_id}:{cycle}"))
            .execute(&mut *tx)
            .await?;
        // Only the rules' own kinds: budget, anomaly and bill-shock
        // insights are kept by the evaluations that raise them.
        sqlx::query(
            "DELETE FROM billing_insight b
             WHERE b.customer_id = $1 AND b.cycle = $2
               AND b.kind IN ('cost_change', 'idle_subscription', 'roaming_share', 'unrated_cdrs', 'unassigned_cdrs')
               AND NOT EXISTS (SELECT 1 FROM UNNEST($3::text[], $4::text[]) AS n(kind, subject)
                               WHERE n.kind = b.kind AND n.subject = b.subject)",
        )
        .bind(customer_id)
        .bind(cycle)
        .bind(&kinds)
        .bind(&subjects)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO billing_insight (customer_id, cycle, kind, subject, detail)
             SELECT $1, $2, k, s, d FROM UNNEST($3::text[], $4::text[], $5::jsonb[]) AS n(k, s, d)
             ON CONFLICT (customer_id, cycle, kind, subject) DO UPDATE
             SET detail = EXCLUDED.detail,
                 detected_at = CASE WHEN billing_insight.detail = EXCLUDED.detail
                                    THEN billing_insight.detected_at ELSE EXCLUDED.detected_at END",
        )
        .bind(customer_id)
        .bind(cycle)
        .bind(&kinds)
        .bind(&subjects)
        .bind(&details)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }
}

/// [`insight::detect_insights`] on the pool's stores.
pub async fn detect_insights(
    pool: &PgPool,
    customer_id: i64,
    cycle: NaiveDate,
) -> Result<Vec<Insight>, InsightError> {
    insight::detect_insights(
        &PgInsights::new(pool.clone()),
        &PgCustomerSettings::new(pool.clone()),
        customer_id,
        cycle,
    )
    .await
}
