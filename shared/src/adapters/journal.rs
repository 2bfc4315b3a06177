//! PostgreSQL: the step journal (`step_run`, one row per attempt) and the
//! failure log (`failed_message`, one row per message that failed for good).
//! See migrations/0009_operations.sql for what each column means.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::PgPool;

use crate::ports::{FailureLog, FailureRecord, PortError, StepEnd, StepJournal, StepStart};
use crate::runtime::Disposition;

/// The `step_run.outcome` of a disposition (the CHECK constraint's names).
pub fn outcome_name(outcome: Disposition) -> &'static str {
    match outcome {
        Disposition::Completed => "completed",
        Disposition::Duplicate => "duplicate",
        Disposition::Retry => "retry",
        Disposition::DeadLettered => "dead_lettered",
        Disposition::Postponed => "postponed",
    }
}

fn port_error(operation: &'static str) -> impl FnOnce(sqlx::Error) -> PortError {
    move |e| PortError::new(operation, e)
}

/// Attempt counts and depths are small; one that does not fit is clamped
/// rather than refused, since the journal only informs.
fn int(value: u32) -> i32 {
    i32::try_from(value).unwrap_or(i32::MAX)
}

#[derive(Debug, Clone)]
pub struct PgStepJournal {
    pool: PgPool,
}

impl PgStepJournal {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }
}

#[async_trait]
impl StepJournal for PgStepJournal {
    async fn started(&self, start: &StepStart) -> Result<i64, PortError> {
        sqlx::query_scalar(
            "INSERT INTO step_run (message_id, attempt, step, function_name, queue, provider, \
                 task_id, trace_id, depth, chain_started_at, started_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) RETURNING id",
        )
        .bind(&start.message_id)
        .bind(int(start.attempt))
        .bind(&start.step)
        .bind(&start.function_name)
        .bind(&start.queue)
        .bind(&start.provider)
        .bind(&start.task_id)
        .bind(&start.trace_id)
        .bind(int(start.depth))
        .bind(start.chain_started_at)
        .bind(start.started_at)
        .bind(start.expires_at)
        .fetch_one(&self.pool)
        .await
        .map_err(port_error("postgres INSERT step_run"))
    }

    async fn finished(&self, id: i64, end: &StepEnd) -> Result<(), PortError> {
        sqlx::query(
            "UPDATE step_run SET finished_at = $2, outcome = $3, error = $4, error_kind = $5, \
                 children = $6, handoff = $7 \
             WHERE id = $1",
        )
        .bind(id)
        .bind(end.finished_at)
        .bind(outcome_name(end.outcome))
        .bind(&end.error)
        .bind(&end.error_kind)
        .bind(&end.children)
        .bind(&end.handoff)
        .execute(&self.pool)
        .await
        .map_err(port_error("postgres UPDATE step_run"))?;
        Ok(())
    }
}

#[derive(Debug, Clone)]
pub struct PgFailureLog {
    pool: PgPool,
}

impl PgFailureLog {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }
}

#[async_trait]
impl FailureLog for PgFailureLog {
    async fn record(&self, f: &FailureRecord) -> Result<(), PortError> {
        // A message failing again (after a retry) opens its record again and
        // counts the failure; the resolution of the earlier one is history.
        sqlx::query(
            "INSERT INTO failed_message (id, queue, queue_url, dlq_url, function_name, step, \
                 provider, task_id, trace_id, body, error_kind, error, attempts, failed_at, \
                 expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15) \
             ON CONFLICT (id) DO UPDATE SET \
                 queue = EXCLUDED.queue, queue_url = EXCLUDED.queue_url, \
                 dlq_url = EXCLUDED.dlq_url, function_name = EXCLUDED.function_name, \
                 step = EXCLUDED.step, provider = EXCLUDED.provider, \
                 task_id = EXCLUDED.task_id, trace_id = EXCLUDED.trace_id, \
                 body = EXCLUDED.body, error_kind = EXCLUDED.error_kind, \
                 error = EXCLUDED.error, attempts = EXCLUDED.attempts, \
                 failed_at = EXCLUDED.failed_at, expires_at = EXCLUDED.expires_at, \
                 status = 'failed', times_failed = failed_message.times_failed + 1",
        )
        .bind(&f.id)
        .bind(&f.queue)
        .bind(&f.queue_url)
        .bind(&f.dlq_url)
        .bind(&f.function_name)
        .bind(&f.step)
        .bind(&f.provider)
        .bind(&f.task_id)
        .bind(&f.trace_id)
        .bind(&f.body)
        .bind(&f.error_kind)
        .bind(&f.error)
        .bind(int(f.attempts))
        .bind(f.failed_at)
        .bind(f.expires_at)
        .execute(&self.pool)
        .await
        .map_err(port_error("postgres UPSERT failed_message"))?;
        Ok(())
    }

    async fn resolved(&self, id: &str, by: &str, now: DateTime<Utc>) -> Result<bool, PortError> {
        let updated = sqlx::query(
            "UPDATE failed_message SET status = 'retried', resolved_at = $2, resolved_by = $3 \
             WHERE id = $1 AND status = 'failed'",
        )
        .bind(id)
        .bind(now)
        .bind(by)
        .execute(&self.pool)
        .await
        .map_err(port_error("postgres UPDATE failed_message resolved"))?;
        Ok(updated.rows_affected() > 0)
    }
}
