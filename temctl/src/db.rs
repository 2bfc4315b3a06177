//! The database named by DATABASE_URL.

use std::str::FromStr;

use sqlx::postgres::PgConnectOptions;
use sqlx::PgPool;
use tem_shared::adapters::postgres::connect;

use crate::error::CliError;

/// A connected pool, and where it points (without the password) for messages.
pub struct Database {
    pub pool: PgPool,
    pub target: String,
}

/// The URL from DATABASE_URL; there is no default, so a backfill never lands
/// in a database nobody named.
pub fn url_from_env() -> Result<String, CliError> {
    match std::env::var("DATABASE_URL") {
        Ok(url) if !url.trim().is_empty() => Ok(url),
        _ => Err(CliError::MissingDatabaseUrl),
    }
}

pub async fn open(url: &str, max_connections: u32) -> Result<Database, CliError> {
    let options =
        PgConnectOptions::from_str(url).map_err(|e| CliError::BadDatabaseUrl(e.to_string()))?;
    let target = format!(
        "{}:{}/{}",
        options.get_host(),
        options.get_port(),
        options.get_database().unwrap_or("(default database)")
    );
    let pool = connect(url, max_connections)
        .await
        .map_err(|source| CliError::Connect {
            target: target.clone(),
            source,
        })?;
    Ok(Database { pool, target })
}

impl Database {
    /// Refuses to import into a database without the import tables.
    pub async fn check_schema(&self) -> Result<(), CliError> {
        let present: bool = sqlx::query_scalar(
            "SELECT to_regclass('call_detail_record') IS NOT NULL AND to_regclass('import_file') IS NOT NULL",
        )
        .fetch_one(&self.pool)
        .await
        .map_err(|source| CliError::Database {
            doing: "checking the schema",
            source,
        })?;
        if present {
            Ok(())
        } else {
            Err(CliError::NotMigrated {
                target: self.target.clone(),
            })
        }
    }
}
