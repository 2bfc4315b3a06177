//! PostgreSQL: what the operators' commands read and change of the
//! `failed_message` and `step_run` tables (migrations/0009_operations.sql).
//! The runtime writes both (adapters/journal.rs); this side finds, resolves,
//! records DLQ-only failures and deletes expired rows.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::{PgPool, Postgres, QueryBuilder};

use crate::ports::{
    AbandonedImports, FailedMessage, FailureAdmin, FailureFilter, FailureRecord, FailureStatus,
    PortError, StepHistory, StepRun,
};

fn db_error(operation: &'static str) -> impl FnOnce(sqlx::Error) -> PortError {
    move |e| PortError::new(operation, e)
}

#[derive(sqlx::FromRow)]
struct FailedRow {
    id: String,
    queue: String,
    queue_url: String,
    dlq_url: String,
    function_name: Option<String>,
    step: Option<String>,
    provider: Option<String>,
    task_id: Option<String>,
    trace_id: Option<String>,
    body: String,
    error_kind: String,
    error: String,
    attempts: i32,
    failed_at: DateTime<Utc>,
    times_failed: i32,
    status: String,
    resolved_at: Option<DateTime<Utc>>,
    resolved_by: Option<String>,
    retries: i32,
    expires_at: DateTime<Utc>,
}

impl TryFrom<FailedRow> for FailedMessage {
    type Error = PortError;

    fn try_from(r: FailedRow) -> Result<Self, PortError> {
        Ok(FailedMessage {
            failure: FailureRecord {
                id: r.id,
                queue: r.queue,
                queue_url: r.queue_url,
                dlq_url: r.dlq_url,
                function_name: r.function_name,
                step: r.step,
                provider: r.provider,
                task_id: r.task_id,
                trace_id: r.trace_id,
                body: r.body,
                error_kind: r.error_kind,
                error: r.error,
                attempts: r.attempts.max(0) as u32,
                failed_at: r.failed_at,
                expires_at: r.expires_at,
            },
            status: r
                .status
                .parse::<FailureStatus>()
                .map_err(|e| PortError::new("read failed_message", e))?,
            times_failed: r.times_failed.max(0) as u32,
            resolved_at: r.resolved_at,
            resolved_by: r.resolved_by,
            retries: r.retries.max(0) as u32,
        })
    }
}

const FAILED_COLUMNS: &str =
    "id, queue, queue_url, dlq_url, function_name, step, provider, task_id, \
     trace_id, body, error_kind, error, attempts, failed_at, times_failed, status, resolved_at, \
     resolved_by, retries, expires_at";

#[derive(Debug, Clone)]
pub struct PgFailures {
    pool: PgPool,
}

impl PgFailures {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    async fn resolve(
        &self,
        ids: &[String],
        status: FailureStatus,
        by: &str,
        now: DateTime<Utc>,
    ) -> Result<Vec<String>, PortError> {
        // Only open rows change: a second retry of the same id (an
        // interrupted bulk retry run again) finds nothing to mark.
        sqlx::query_scalar(
            "UPDATE failed_message SET status = $2, resolved_at = $3, resolved_by = $4, \
                 retries = retries + CASE WHEN $2 = 'retried' THEN 1 ELSE 0 END \
             WHERE id = ANY($1) AND status = 'failed' RETURNING id",
        )
        .bind(ids)
        .bind(status.as_str())
        .bind(now)
        .bind(by)
        .fetch_all(&self.pool)
        .await
        .map_err(db_error("resolve failed_message"))
    }
}

fn push_filter(q: &mut QueryBuilder<'_, Postgres>, f: &FailureFilter) {
    q.push(" WHERE TRUE");
    if !f.statuses.is_empty() {
        let statuses: Vec<&str> = f.statuses.iter().map(|s| s.as_str()).collect();
        q.push(" AND status = ANY(")
            .push_bind(statuses.into_iter().map(str::to_string).collect::<Vec<_>>())
            .push(")");
    }
    if !f.ids.is_empty() {
        q.push(" AND id = ANY(").push_bind(f.ids.clone()).push(")");
    }
    if let Some(queue) = &f.queue {
        q.push(" AND (queue = ")
            .push_bind(queue.clone())
            .push(" OR queue_url = ANY(")
            .push_bind(f.queue_urls.clone())
            .push("))");
    }
    if let Some(step) = &f.step {
        q.push(" AND step = ").push_bind(step.clone());
    }
    if let Some(provider) = &f.provider {
        q.push(" AND provider = ").push_bind(provider.clone());
    }
    if let Some(kind) = &f.kind {
        q.push(" AND error_kind = ").push_bind(kind.clone());
    }
    if let Some(grep) = &f.grep {
        let pattern = format!(
            "%{}%",
            grep.replace('\\', "\\\\")
                .replace('%', "\\%")
                .replace('_', "\\_")
        );
        q.push(" AND (error ILIKE ")
            .push_bind(pattern.clone())
            .push(" OR body ILIKE ")
            .push_bind(pattern)
            .push(")");
    }
    if let Some(since) = f.since {
        q.push(" AND failed_at >= ").push_bind(since);
    }
    if let Some(task) = &f.task_id {
        q.push(" AND task_id = ").push_bind(task.clone());
    }
}

#[async_trait]
impl FailureAdmin for PgFailures {
    async fn find(&self, filter: &FailureFilter) -> Result<Vec<FailedMessage>, PortError> {
        let mut q = QueryBuilder::new(format!("SELECT {FAILED_COLUMNS} FROM failed_message"));
        push_filter(&mut q, filter);
        q.push(" ORDER BY failed_at, id");
        if let Some(limit) = filter.limit {
            q.push(" LIMIT ").push_bind(i64::from(limit));
        }
        q.build_query_as::<FailedRow>()
            .fetch_all(&self.pool)
            .await
            .map_err(db_error("find failed_message"))?
            .into_iter()
            .map(FailedMessage::try_from)
            .collect()
    }

    async fn get_many(&self, ids: &[String]) -> Result<Vec<FailedMessage>, PortError> {
        sqlx::query_as::<_, FailedRow>(&format!(
            "SELECT {FAILED_COLUMNS} FROM failed_message WHERE id = ANY($1) ORDER BY failed_at, id"
        ))
        .bind(ids)
        .fetch_all(&self.pool)
        .await
        .map_err(db_error("read failed_message"))?
        .into_iter()
        .map(FailedMessage::try_from)
        .collect()
    }

    async fn mark_retried(
        &self,
        ids: &[String],
        by: &str,
        now: DateTime<Utc>,
    ) -> Result<Vec<String>, PortError> {
        self.resolve(ids, FailureStatus::Retried, by, now).await
    }

    async fn mark_removed(
        &self,
        ids: &[String],
        by: &str,
        now: DateTime<Utc>,
    ) -> Result<Vec<String>, PortError> {
        self.resolve(ids, FailureStatus::Removed, by, now).await
    }

    async fn ingest(&self, f: &FailedMessage) -> Result<bool, PortError> {
        let inserted = sqlx::query(
            "INSERT INTO failed_message (id, queue, queue_url, dlq_url, function_name, step, \
                 provider, task_id, trace_id, body, error_kind, error, attempts, failed_at, \
                 expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15) \
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(&f.failure.id)
        .bind(&f.failure.queue)
        .bind(&f.failure.queue_url)
        .bind(&f.failure.dlq_url)
        .bind(&f.failure.function_name)
        .bind(&f.failure.step)
        .bind(&f.failure.provider)
        .bind(&f.failure.task_id)
        .bind(&f.failure.trace_id)
        .bind(&f.failure.body)
        .bind(&f.failure.error_kind)
        .bind(&f.failure.error)
        .bind(i32::try_from(f.failure.attempts).unwrap_or(i32::MAX))
        .bind(f.failure.failed_at)
        .bind(f.failure.expires_at)
        .execute(&self.pool)
        .await
        .map_err(db_error("insert failed_message"))?
        .rows_affected();
        Ok(inserted == 1)
    }

    async fn delete_expired(&self, now: DateTime<Utc>, limit: u32) -> Result<u64, PortError> {
        Ok(sqlx::query(
            "DELETE FROM failed_message WHERE id IN \
                 (SELECT id FROM failed_message WHERE expires_at < $1 LIMIT $2)",
        )
        .bind(now)
        .bind(i64::from(limit))
        .execute(&self.pool)
        .await
        .map_err(db_error("delete expired failed_message"))?
        .rows_affected())
    }
}

#[derive(sqlx::FromRow)]
struct RunRow {
    id: i64,
    message_id: String,
    attempt: i32,
    step: String,
    function_name: String,
    queue: Option<String>,
    provider: Option<String>,
    task_id: Option<String>,
    trace_id: String,
    depth: i32,
    chain_started_at: DateTime<Utc>,
    started_at: DateTime<Utc>,
    finished_at: Option<DateTime<Utc>>,
    outcome: Option<String>,
    error: Option<String>,
    error_kind: Option<String>,
    children: Vec<String>,
    handoff: Option<String>,
}

impl From<RunRow> for StepRun {
    fn from(r: RunRow) -> Self {
        StepRun {
            id: r.id,
            message_id: r.message_id,
            attempt: r.attempt.max(0) as u32,
            step: r.step,
            function_name: r.function_name,
            queue: r.queue,
            provider: r.provider,
            task_id: r.task_id,
            trace_id: r.trace_id,
            depth: r.depth.max(0) as u32,
            chain_started_at: r.chain_started_at,
            started_at: r.started_at,
            finished_at: r.finished_at,
            outcome: r.outcome,
            error: r.error,
            error_kind: r.error_kind,
            children: r.children,
            handoff: r.handoff,
        }
    }
}

const RUN_COLUMNS: &str =
    "id, message_id, attempt, step, function_name, queue, provider, task_id, \
     trace_id, depth, chain_started_at, started_at, finished_at, outcome, error, error_kind, \
     children, handoff";

#[derive(Debug, Clone)]
pub struct PgStepHistory {
    pool: PgPool,
}

impl PgStepHistory {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    /// The attempts matching `condition` (over `$1`), in `order`.
    async fn runs<T>(
        &self,
        condition: &str,
        order: &str,
        value: T,
    ) -> Result<Vec<StepRun>, PortError>
    where
        T: for<'q> sqlx::Encode<'q, Postgres> + sqlx::Type<Postgres> + Send,
    {
        let sql = format!("SELECT {RUN_COLUMNS} FROM step_run WHERE {condition} ORDER BY {order}");
        Ok(sqlx::query_as::<_, RunRow>(&sql)
            .bind(value)
            .fetch_all(&self.pool)
            .await
            .map_err(db_error("read step_run"))?
            .into_iter()
            .map(StepRun::from)
            .collect())
    }
}

#[async_trait]
impl StepHistory for PgStepHistory {
    async fn attempts(&self, message_ids: &[String]) -> Result<Vec<StepRun>, PortError> {
        self.runs(
            "message_id = ANY($1)",
            "message_id, started_at, id",
            message_ids.to_vec(),
        )
        .await
    }

    async fn of_task(&self, task_id: &str) -> Result<Vec<StepRun>, PortError> {
        self.runs("task_id = $1", "started_at, id", task_id.to_string())
            .await
    }

    async fn of_handoff(&self, token: &str) -> Result<Vec<StepRun>, PortError> {
        self.runs("handoff = $1", "started_at, id", token.to_string())
            .await
    }

    async fn delete_expired(&self, now: DateTime<Utc>, limit: u32) -> Result<u64, PortError> {
        Ok(sqlx::query(
            "DELETE FROM step_run WHERE id IN \
                 (SELECT id FROM step_run WHERE expires_at < $1 LIMIT $2)",
        )
        .bind(now)
        .bind(i64::from(limit))
        .execute(&self.pool)
        .await
        .map_err(db_error("delete expired step_run"))?
        .rows_affected())
    }
}

#[derive(Debug, Clone)]
pub struct PgAbandonedImports {
    pool: PgPool,
}

impl PgAbandonedImports {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }
}

#[async_trait]
impl AbandonedImports for PgAbandonedImports {
    async fn mark_abandoned(&self, now: DateTime<Utc>) -> Result<u64, PortError> {
        crate::import::importer::mark_abandoned_imports(&self.pool, now)
            .await
            .map_err(|e| PortError::new("mark abandoned imports", e))
    }
}
