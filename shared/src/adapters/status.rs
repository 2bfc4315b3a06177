//! The PostgreSQL side of `status` (ops::status::StatusStore): sync runs,
//! step runs, imports, CDRs, draft and blocked invoices and open failures.

use std::collections::BTreeMap;

use async_trait::async_trait;
use chrono::{DateTime, Duration, Utc};
use sqlx::PgPool;

use crate::adapters::billing::invoice::cycles_due_for_finalisation;
use crate::ops::status::{
    BlockedInvoice, Durations, ImportCounts, ProviderLast, StatusStore, StepRate,
};
use crate::ports::PortError;

pub struct PgStatus {
    pool: PgPool,
}

impl PgStatus {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }
}

fn db_error(operation: &'static str) -> impl FnOnce(sqlx::Error) -> PortError {
    move |e| PortError::new(operation, e)
}

fn count(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

#[async_trait]
impl StatusStore for PgStatus {
    async fn last_sync_run(&self) -> Result<Option<DateTime<Utc>>, PortError> {
        sqlx::query_scalar("SELECT max(started_at) FROM sync_run")
            .fetch_one(&self.pool)
            .await
            .map_err(db_error("postgres read sync_run"))
    }

    async fn maintenance(&self) -> Result<crate::ops::status::MaintenanceFacts, PortError> {
        let (last_finished, running_since): (Option<DateTime<Utc>>, Option<DateTime<Utc>>) =
            sqlx::query_as(
                "SELECT (SELECT max(finished_at) FROM maintenance_run),
                        (SELECT min(started_at) FROM sync_run)",
            )
            .fetch_one(&self.pool)
            .await
            .map_err(db_error("postgres read maintenance_run"))?;
        Ok(crate::ops::status::MaintenanceFacts {
            last_finished,
            running_since,
        })
    }

    async fn step_rates(
        &self,
        since: DateTime<Utc>,
        dead_before: DateTime<Utc>,
    ) -> Result<Vec<StepRate>, PortError> {
        let rows: Vec<(String, String, i64, i64)> = sqlx::query_as(
            "SELECT function_name, step, count(*),
                    count(*) FILTER (WHERE outcome IN ('retry', 'dead_lettered') OR outcome IS NULL)
             FROM step_run
             WHERE started_at >= $1 AND (outcome IS NOT NULL OR started_at < $2)
             GROUP BY function_name, step
             ORDER BY function_name, step",
        )
        .bind(since)
        .bind(dead_before)
        .fetch_all(&self.pool)
        .await
        .map_err(db_error("postgres read step_run rates"))?;
        Ok(rows
            .into_iter()
            .map(|(function_name, step, attempts, failed)| StepRate {
                function_name,
                step,
                attempts: count(attempts),
                failed: count(failed),
            })
            .collect())
    }

    async fn routing_failures(&self, since: DateTime<Utc>) -> Result<u64, PortError> {
        let n: i64 = sqlx::query_scalar(
            "SELECT coalesce(sum(failures), 0)::BIGINT FROM sync_run WHERE started_at >= $1",
        )
        .bind(since)
        .fetch_one(&self.pool)
        .await
        .map_err(db_error("postgres read sync_run failures"))?;
        Ok(count(n))
    }

    async fn totals_durations(&self, since: DateTime<Utc>) -> Result<Durations, PortError> {
        let (n, max, p95): (i64, Option<i64>, Option<i64>) = sqlx::query_as(
            "SELECT count(*), max(ms)::BIGINT,
                    (percentile_disc(0.95) WITHIN GROUP (ORDER BY ms))::BIGINT
             FROM (SELECT (extract(epoch FROM finished_at - started_at) * 1000)::BIGINT AS ms
                   FROM step_run
                   WHERE step = 'CalculateTotals' AND outcome = 'completed' AND finished_at >= $1) d",
        )
        .bind(since)
        .fetch_one(&self.pool)
        .await
        .map_err(db_error("postgres read totals durations"))?;
        Ok(Durations {
            count: count(n),
            max_ms: max,
            p95_ms: p95,
        })
    }

    async fn last_successes(&self) -> Result<Vec<ProviderLast>, PortError> {
        // Step runs expire after their TTL; import_file keeps the imports,
        // and every provider with an active profile is listed even when
        // nothing was recorded for it.
        let rows: Vec<(String, Option<DateTime<Utc>>, Option<DateTime<Utc>>)> = sqlx::query_as(
            "WITH s AS (
                 SELECT provider,
                        max(finished_at) FILTER (WHERE step = 'SyncProfile') AS sync,
                        max(finished_at) FILTER (WHERE step = 'ImportCdrFile') AS import
                 FROM step_run
                 WHERE outcome = 'completed' AND provider IS NOT NULL
                   AND step IN ('SyncProfile', 'ImportCdrFile')
                 GROUP BY provider),
             i AS (
                 SELECT provider, max(finished_at) AS import
                 FROM import_file
                 WHERE status IN ('completed', 'completed_with_errors')
                 GROUP BY provider),
             p AS (SELECT DISTINCT provider FROM sync_profile WHERE active)
             SELECT names.provider, s.sync, greatest(s.import, i.import)
             FROM (SELECT provider FROM s UNION SELECT provider FROM i UNION SELECT provider FROM p) names
             LEFT JOIN s ON s.provider = names.provider
             LEFT JOIN i ON i.provider = names.provider
             ORDER BY names.provider",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(db_error("postgres read last successes"))?;
        Ok(rows
            .into_iter()
            .map(|(provider, last_sync, last_import)| ProviderLast {
                provider,
                last_sync,
                last_import,
            })
            .collect())
    }

    async fn imports(&self, since: DateTime<Utc>) -> Result<ImportCounts, PortError> {
        let (failed, rejected): (i64, i64) = sqlx::query_as(
            "SELECT count(*) FILTER (WHERE status = 'failed'),
                    coalesce(sum(rows_rejected), 0)::BIGINT
             FROM import_file WHERE started_at >= $1",
        )
        .bind(since)
        .fetch_one(&self.pool)
        .await
        .map_err(db_error("postgres read import_file"))?;
        Ok(ImportCounts {
            failed: count(failed),
            rejected_rows: count(rejected),
        })
    }

    async fn cdrs_without_customer(&self) -> Result<u64, PortError> {
        // The partial index call_detail_record_unassigned holds exactly these.
        let n: i64 =
            sqlx::query_scalar("SELECT count(*) FROM call_detail_record WHERE customer_id IS NULL")
                .fetch_one(&self.pool)
                .await
                .map_err(db_error("postgres count CDRs without customer"))?;
        Ok(count(n))
    }

    async fn cycles_due(&self, at: DateTime<Utc>, grace: Duration) -> Result<u64, PortError> {
        let due = cycles_due_for_finalisation(&self.pool, at, grace)
            .await
            .map_err(|e| PortError::new("postgres read draft invoices", e))?;
        Ok(due.len() as u64)
    }

    async fn blocked_invoices(&self) -> Result<Vec<BlockedInvoice>, PortError> {
        let rows: Vec<(i64, chrono::NaiveDate, String, DateTime<Utc>)> = sqlx::query_as(
            "SELECT customer_id, cycle, blocked_reason, blocked_at FROM invoice
             WHERE blocked_reason IS NOT NULL AND status = 'draft'
             ORDER BY blocked_at, customer_id, cycle",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(db_error("postgres read blocked invoices"))?;
        Ok(rows
            .into_iter()
            .map(|(customer_id, cycle, reason, since)| BlockedInvoice {
                customer_id,
                cycle,
                reason,
                since,
            })
            .collect())
    }

    async fn oldest_failures(&self) -> Result<BTreeMap<String, DateTime<Utc>>, PortError> {
        let rows: Vec<(String, DateTime<Utc>)> = sqlx::query_as(
            "SELECT queue, min(failed_at) FROM failed_message WHERE status = 'failed' GROUP BY queue",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(db_error("postgres read failed_message"))?;
        Ok(rows.into_iter().collect())
    }
}
