//! Applying the embedded migrations ([`super::postgres::MIGRATOR`]) and saying
//! what changed: the ops function's `migrate` command.

use std::collections::BTreeSet;

use sqlx::migrate::{Migrate, MigrateError, Migrator};
use sqlx::PgPool;

use crate::ops::{MigrationId, MigrationReport};

#[derive(Debug, thiserror::Error)]
pub enum MigrationError {
    #[error("cannot reach PostgreSQL to migrate: {0}; check the database secret and the network path from the function")]
    Connect(#[source] sqlx::Error),
    #[error("migrating failed: {0}; versions applied before the failure stay applied, fix the cause and send migrate again")]
    Migrate(#[source] MigrateError),
}

/// Applies the migrations of `migrator` the database does not have yet.
///
/// The migrator's advisory lock is taken here, on one connection, around
/// reading what is applied and applying the rest, so the report is exact
/// even if another migrator (a second deploy) runs at the same time: it
/// waits, then finds nothing to do. The lock is re-entrant per session, so
/// `Migrator::run` taking it again on the same connection is fine.
pub async fn apply(pool: &PgPool, migrator: &Migrator) -> Result<MigrationReport, MigrationError> {
    let mut conn = pool.acquire().await.map_err(MigrationError::Connect)?;
    conn.lock().await.map_err(MigrationError::Migrate)?;
    let result = apply_locked(&mut conn, migrator).await;
    // Unlock even after a failure: the connection goes back to the pool.
    let unlocked = conn.unlock().await.map_err(MigrationError::Migrate);
    let report = result?;
    unlocked?;
    Ok(report)
}

async fn apply_locked(
    conn: &mut sqlx::PgConnection,
    migrator: &Migrator,
) -> Result<MigrationReport, MigrationError> {
    conn.ensure_migrations_table()
        .await
        .map_err(MigrationError::Migrate)?;
    let before: BTreeSet<i64> = conn
        .list_applied_migrations()
        .await
        .map_err(MigrationError::Migrate)?
        .into_iter()
        .map(|m| m.version)
        .collect();
    migrator
        .run(&mut *conn)
        .await
        .map_err(MigrationError::Migrate)?;
    let applied = migrator
        .iter()
        .filter(|m| !m.migration_type.is_down_migration() && !before.contains(&m.version))
        .map(|m| MigrationId {
            version: m.version,
            description: m.description.to_string(),
        })
        .collect();
    Ok(MigrationReport {
        applied,
        already_applied: before.into_iter().collect(),
    })
}
