//! The benchmark's own database: created fresh, migrated, seeded, dropped.

use std::str::FromStr;

use anyhow::{Context, Result};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgConnection};

/// The columns the importer loads (`COLUMNS` in
/// `shared/src/import/load.rs`), in its order.
pub const COLUMNS: &str = "provider, external_id, subscription, customer_id, started_at, kind, direction, destination, \
                           roaming_zone, duration_seconds, volume_bytes, units, provider_cost_micros, import_file_id, source_line";

pub const OURS: &str = "call_detail_record";
pub const COPY_BASELINE: &str = "cdr_copy_baseline";
pub const LEGACY_BASELINE: &str = "cdr_legacy_baseline";

pub fn server_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// `url` with its database replaced by `name`, other parts kept as given
/// (so psql accepts it too).
fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let authority_start = base.find("://").map(|i| i + 3).unwrap_or(0);
    let server = match base[authority_start..].find('/') {
        Some(i) => &base[..authority_start + i],
        None => base,
    };
    match query {
        Some(q) => format!("{server}/{name}?{q}"),
        None => format!("{server}/{name}"),
    }
}

pub struct BenchDb {
    pub name: String,
    /// A URL of the benchmark database, for psql and the child process.
    pub url: String,
    pub pool: PgPool,
    server: PgConnectOptions,
}

impl BenchDb {
    /// Creates `tem_bench_<random>` on the server of `server_url` and runs
    /// the project's migrations.
    pub async fn create(server_url: &str) -> Result<Self> {
        let name = format!(
            "tem_bench_{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        );
        Self::create_named(server_url, &name).await
    }

    /// Creates the database `name` on the server of `server_url` and runs
    /// the project's migrations.
    pub async fn create_named(server_url: &str, name: &str) -> Result<Self> {
        let server = PgConnectOptions::from_str(server_url)
            .with_context(|| format!("{server_url:?} is not a PostgreSQL URL"))?;
        let name = name.to_string();
        let mut admin = server
            .connect()
            .await
            .with_context(|| format!("connect to PostgreSQL at {server_url}"))?;
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await
            .with_context(|| format!("create database {name}"))?;
        admin.close().await.ok();
        let options = server.clone().database(&name);
        let url = with_database(server_url, &name);
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await
            .with_context(|| format!("connect to {name}"))?;
        tem_shared::adapters::postgres::MIGRATOR
            .run(&pool)
            .await
            .context("run the migrations")?;
        Ok(Self {
            name,
            url,
            pool,
            server,
        })
    }

    /// An existing database `name` on the server of `server_url`, as it
    /// is: the caller decides whether to migrate it.
    pub async fn open(server_url: &str, name: &str) -> Result<Self> {
        let server = PgConnectOptions::from_str(server_url)
            .with_context(|| format!("{server_url:?} is not a PostgreSQL URL"))?;
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .connect_with(server.clone().database(name))
            .await
            .with_context(|| format!("connect to {name}"))?;
        Ok(Self {
            name: name.to_string(),
            url: with_database(server_url, name),
            pool,
            server,
        })
    }

    pub async fn connect(&self) -> Result<PgConnection> {
        self.server
            .clone()
            .database(&self.name)
            .connect()
            .await
            .with_context(|| format!("connect to {}", self.name))
    }

    /// Closes the pool and drops the database.
    pub async fn drop_database(self) -> Result<()> {
        self.pool.close().await;
        let mut admin = self.server.connect().await.context("connect to drop")?;
        sqlx::query(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        ))
        .execute(&mut admin)
        .await
        .with_context(|| format!("drop database {}", self.name))?;
        admin.close().await.ok();
        Ok(())
    }

    /// One customer holding the given subscriptions, and the two baseline
    /// tables: the same columns, constraints and unique key as ours.
    /// Autovacuum is off on the three tables so a vacuum of one run's rows
    /// does not compete with the next measurement on a 2-core machine.
    pub async fn prepare(&self, subscriptions: &[String]) -> Result<i64> {
        let customer: i64 = sqlx::query_scalar(
            "INSERT INTO customer (name, billing_cycle_start_day, time_zone)
             VALUES ('Benchmark BV', 1, 'Europe/Amsterdam') RETURNING id",
        )
        .fetch_one(&self.pool)
        .await
        .context("insert the customer")?;
        sqlx::query(
            "INSERT INTO subscription (customer_id, provider, identifier)
             SELECT $1, 'routit', unnest($2::text[])",
        )
        .bind(customer)
        .bind(subscriptions)
        .execute(&self.pool)
        .await
        .context("insert the subscriptions")?;
        // The benchmark's month (March 2025) has its partition in ours, as
        // the daily maintenance would have made it; the baselines are
        // partitioned the same way, with the same per-partition key.
        monthly_partitions(&self.pool, OURS, &["2025-03-01"]).await?;
        for table in [COPY_BASELINE, LEGACY_BASELINE] {
            sqlx::query(&format!(
                "CREATE TABLE {table} (LIKE {OURS} INCLUDING ALL) PARTITION BY RANGE (started_at)"
            ))
            .execute(&self.pool)
            .await
            .with_context(|| format!("create {table}"))?;
            sqlx::query(&format!(
                "CREATE TABLE {table}_default PARTITION OF {table} DEFAULT"
            ))
            .execute(&self.pool)
            .await
            .with_context(|| format!("create {table}'s default partition"))?;
            sqlx::query(&format!(
                "CREATE UNIQUE INDEX ON {table}_default (provider, external_id)"
            ))
            .execute(&self.pool)
            .await
            .with_context(|| format!("key {table}'s default partition"))?;
            monthly_partitions(&self.pool, table, &["2025-03-01"]).await?;
        }
        for table in [OURS, COPY_BASELINE, LEGACY_BASELINE] {
            autovacuum_off(&self.pool, table).await?;
        }
        sqlx::query("ANALYZE customer, subscription")
            .execute(&self.pool)
            .await
            .context("analyze")?;
        Ok(customer)
    }

    /// Empties our table and the import records (after the small run).
    pub async fn reset_ours(&self) -> Result<()> {
        sqlx::query(&format!("TRUNCATE {OURS}, import_file"))
            .execute(&self.pool)
            .await
            .context("truncate our table")?;
        Ok(())
    }

    /// Flushes dirty buffers so one measurement does not pay for the
    /// previous one's writes. Needs superuser or pg_checkpoint; skipped
    /// (with a note) without.
    pub async fn checkpoint(&self) -> Option<String> {
        match sqlx::query("CHECKPOINT").execute(&self.pool).await {
            Ok(_) => None,
            Err(e) => Some(format!("CHECKPOINT skipped: {e}")),
        }
    }

    pub async fn count(&self, table: &str) -> Result<i64> {
        sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
            .fetch_one(&self.pool)
            .await
            .with_context(|| format!("count {table}"))
    }

    pub async fn count_with_customer(&self, table: &str) -> Result<i64> {
        sqlx::query_scalar(&format!(
            "SELECT count(*) FROM {table} WHERE customer_id IS NOT NULL"
        ))
        .fetch_one(&self.pool)
        .await
        .with_context(|| format!("count {table}"))
    }

    /// The server's version and the settings that matter for bulk loads.
    pub async fn server_info(&self) -> Result<Vec<(String, String)>> {
        let mut info = vec![(
            "version".to_string(),
            sqlx::query_scalar::<_, String>("SHOW server_version")
                .fetch_one(&self.pool)
                .await
                .context("server version")?,
        )];
        for setting in [
            "shared_buffers",
            "max_wal_size",
            "synchronous_commit",
            "wal_level",
            "fsync",
        ] {
            let value: String = sqlx::query_scalar(&format!("SHOW {setting}"))
                .fetch_one(&self.pool)
                .await
                .with_context(|| format!("show {setting}"))?;
            info.push((setting.to_string(), value));
        }
        Ok(info)
    }
}

/// The partitions of the given months (first days) of a monthly
/// partitioned table (migration 0019), as the daily maintenance makes them.
pub async fn monthly_partitions(pool: &PgPool, table: &str, months: &[&str]) -> Result<()> {
    for month in months {
        sqlx::query("SELECT tem_create_month_partition($1::regclass, $2::date)")
            .bind(table)
            .bind(month)
            .execute(pool)
            .await
            .with_context(|| format!("create {table}'s partition of {month}"))?;
    }
    Ok(())
}

/// Autovacuum off on a table, or on every partition of a partitioned one
/// (where the setting lives), so a vacuum of one run's rows does not
/// compete with the next measurement on a 2-core machine.
pub async fn autovacuum_off(pool: &PgPool, table: &str) -> Result<()> {
    let leaves: Vec<String> = sqlx::query_scalar(
        "SELECT relid::regclass::text FROM pg_partition_tree($1::regclass) WHERE isleaf",
    )
    .bind(table)
    .fetch_all(pool)
    .await
    .with_context(|| format!("list {table}'s partitions"))?;
    for leaf in leaves {
        sqlx::query(&format!(
            "ALTER TABLE {leaf} SET (autovacuum_enabled = false)"
        ))
        .execute(pool)
        .await
        .with_context(|| format!("turn autovacuum off on {leaf}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::with_database;

    #[test]
    fn database_is_replaced() {
        assert_eq!(
            with_database("postgres://postgres@127.0.0.1:5432/postgres", "b"),
            "postgres://postgres@127.0.0.1:5432/b"
        );
        assert_eq!(
            with_database("postgres://u:p@h/x?sslmode=disable", "b"),
            "postgres://u:p@h/b?sslmode=disable"
        );
        assert_eq!(
            with_database("postgres://h:5432", "b"),
            "postgres://h:5432/b"
        );
    }
}
