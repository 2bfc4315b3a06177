//! `temctl migrate`: apply the project's migrations to DATABASE_URL.

use tem_shared::adapters::postgres::MIGRATOR;

use crate::db::{self, Database};
use crate::error::CliError;

pub async fn run() -> Result<(), CliError> {
    let url = db::url_from_env()?;
    let db = db::open(&url, 1).await?;
    let before = applied(&db).await?;
    MIGRATOR
        .run(&db.pool)
        .await
        .map_err(|source| CliError::Migrate {
            target: db.target.clone(),
            source,
        })?;
    let after = applied(&db).await?;
    println!(
        "{}: {} migration(s) applied now, {} in total; the schema is up to date",
        db.target,
        after - before,
        after
    );
    Ok(())
}

/// How many migrations the database records as applied.
async fn applied(db: &Database) -> Result<i64, CliError> {
    let doing = "reading the applied migrations";
    let table: bool = sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
        .fetch_one(&db.pool)
        .await
        .map_err(|source| CliError::Database { doing, source })?;
    if !table {
        return Ok(0);
    }
    sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations WHERE success")
        .fetch_one(&db.pool)
        .await
        .map_err(|source| CliError::Database { doing, source })
}
