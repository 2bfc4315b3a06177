//! PostgreSQL: sync profiles, their watermarks, and the record of every
//! sync-manager run.

use async_trait::async_trait;
use chrono::NaiveDate;
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::Row;

use crate::ports::{PortError, ProfileStore, RunLog};
use crate::sync::manager::RunSummary;
use crate::sync::profile::{ProfileSelection, SyncProfile, WatermarkAdvance};

/// The embedded migrations (`migrations/` at the repository root).
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// A small pool: a Lambda instance handles one event at a time, and many
/// instances share the server's connection limit.
pub async fn connect(database_url: &str, max_connections: u32) -> Result<PgPool, sqlx::Error> {
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(std::time::Duration::from_secs(10))
        .connect(database_url)
        .await
}

fn db_error(operation: &'static str) -> impl FnOnce(sqlx::Error) -> PortError {
    move |e| PortError::new(operation, e)
}

const PROFILE_COLUMNS: &str =
    "id, name, provider, base_url, credentials_secret, active, first_period, watermark_period";

fn profile_from_row(row: &sqlx::postgres::PgRow) -> Result<SyncProfile, sqlx::Error> {
    Ok(SyncProfile {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        provider: row.try_get("provider")?,
        base_url: row.try_get("base_url")?,
        credentials_secret: row.try_get("credentials_secret")?,
        active: row.try_get("active")?,
        first_period: row.try_get("first_period")?,
        watermark: row.try_get("watermark_period")?,
    })
}

#[derive(Debug, Clone)]
pub struct PgProfiles {
    pool: PgPool,
}

impl PgProfiles {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }
}

#[async_trait]
impl ProfileStore for PgProfiles {
    async fn profiles(&self, selection: &ProfileSelection) -> Result<Vec<SyncProfile>, PortError> {
        let filter = match selection {
            ProfileSelection::All => "active",
            ProfileSelection::Ids(_) => "id = ANY($1)",
            ProfileSelection::Providers(_) => "active AND provider = ANY($1)",
        };
        let sql = format!("SELECT {PROFILE_COLUMNS} FROM sync_profile WHERE {filter} ORDER BY id");
        let query = match selection {
            ProfileSelection::All => sqlx::query(&sql),
            ProfileSelection::Ids(ids) => sqlx::query(&sql).bind(ids),
            ProfileSelection::Providers(providers) => sqlx::query(&sql).bind(providers),
        };
        let rows = query
            .fetch_all(&self.pool)
            .await
            .map_err(db_error("postgres select sync_profile"))?;
        rows.iter()
            .map(profile_from_row)
            .collect::<Result<_, _>>()
            .map_err(db_error("postgres read sync_profile"))
    }

    async fn profile(&self, profile_id: i64) -> Result<Option<SyncProfile>, PortError> {
        let row = sqlx::query(&format!(
            "SELECT {PROFILE_COLUMNS} FROM sync_profile WHERE id = $1"
        ))
        .bind(profile_id)
        .fetch_optional(&self.pool)
        .await
        .map_err(db_error("postgres select sync_profile"))?;
        row.as_ref()
            .map(profile_from_row)
            .transpose()
            .map_err(db_error("postgres read sync_profile"))
    }

    async fn advance_watermark(
        &self,
        profile_id: i64,
        period: NaiveDate,
    ) -> Result<WatermarkAdvance, PortError> {
        // Moves only from the period just before, or from nothing to the
        // first period: never twice, never over a gap.
        let advanced = sqlx::query(
            "UPDATE sync_profile SET watermark_period = $2, updated_at = now()
             WHERE id = $1
               AND ((watermark_period IS NULL AND first_period = $2)
                    OR watermark_period = $2 - 1)",
        )
        .bind(profile_id)
        .bind(period)
        .execute(&self.pool)
        .await
        .map_err(db_error("postgres update watermark"))?
        .rows_affected();
        if advanced == 1 {
            return Ok(WatermarkAdvance::Advanced);
        }
        let watermark: Option<NaiveDate> =
            sqlx::query_scalar("SELECT watermark_period FROM sync_profile WHERE id = $1")
                .bind(profile_id)
                .fetch_optional(&self.pool)
                .await
                .map_err(db_error("postgres select watermark"))?
                .flatten();
        Ok(match watermark {
            Some(w) if w >= period => WatermarkAdvance::AlreadyThere,
            other => WatermarkAdvance::WouldSkip { watermark: other },
        })
    }
}

#[derive(Debug, Clone)]
pub struct PgRunLog {
    pool: PgPool,
}

impl PgRunLog {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }
}

#[async_trait]
impl RunLog for PgRunLog {
    async fn record_run(&self, run: &RunSummary) -> Result<(), PortError> {
        let details = serde_json::to_value(run).map_err(|e| PortError::new("encode run", e))?;
        // A run delivered twice is recorded once, with its latest outcome.
        sqlx::query(
            "INSERT INTO sync_run (id, trigger, started_at, finished_at, profiles_seen, sent, skipped, failures, details)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
             ON CONFLICT (id) DO UPDATE SET finished_at = EXCLUDED.finished_at,
               profiles_seen = EXCLUDED.profiles_seen, sent = EXCLUDED.sent,
               skipped = EXCLUDED.skipped, failures = EXCLUDED.failures, details = EXCLUDED.details,
               deliveries = sync_run.deliveries + 1",
        )
        .bind(&run.run_id)
        .bind(&run.trigger)
        .bind(run.started_at)
        .bind(run.finished_at)
        .bind(run.profiles_seen as i32)
        .bind(run.sent.len() as i32)
        .bind(run.skipped.len() as i32)
        .bind(run.failures.len() as i32)
        .bind(details)
        .execute(&self.pool)
        .await
        .map_err(db_error("postgres insert sync_run"))?;
        Ok(())
    }
}
