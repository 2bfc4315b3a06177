//! Demo data for the local run: a few customers and one sync profile per
//! carrier, pointed at the simulator, with their credentials in the
//! emulator's Secrets Manager.

use anyhow::Result;
use chrono::NaiveDate;
use sqlx::PgPool;

use crate::deployment::Deployment;

pub const PROVIDERS: [&str; 7] = provider_sim::PROVIDERS;

/// Makes sure the database `url` exists and is migrated.
pub async fn prepare_database(url: &str) -> Result<PgPool> {
    use sqlx::{ConnectOptions, Connection};
    use std::str::FromStr;
    let options = sqlx::postgres::PgConnectOptions::from_str(url)?;
    let name = options.get_database().unwrap_or("tem_local").to_string();
    let mut admin = options.clone().database("postgres").connect().await?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(&name)
            .fetch_one(&mut admin)
            .await?;
    if !exists {
        sqlx::query(&format!("CREATE DATABASE \"{}\"", name.replace('"', "")))
            .execute(&mut admin)
            .await?;
    }
    admin.close().await?;
    let pool = sqlx::PgPool::connect_with(options).await?;
    tem_shared::adapters::postgres::MIGRATOR.run(&pool).await?;
    Ok(pool)
}

/// Seeds customers and one active profile per provider whose next period is
/// `period`, plus one inactive profile; stores the simulator token as each
/// profile's credentials. Idempotent: re-running resets the demo profiles.
pub async fn seed(
    deployment: &Deployment,
    simulator_base: &str,
    token: &str,
    period: NaiveDate,
) -> Result<Vec<i64>> {
    let pool = &deployment.pool;
    for (name, day) in [
        ("Acme Logistics", 1),
        ("Bakkerij de Vries", 15),
        ("Stadsbeheer Utrecht", 28),
    ] {
        sqlx::query(
            "INSERT INTO customer (name, billing_cycle_start_day, time_zone)
             SELECT $1, $2, 'Europe/Amsterdam' WHERE NOT EXISTS (SELECT 1 FROM customer WHERE name = $1)",
        )
        .bind(name)
        .bind(day as i16)
        .execute(pool)
        .await?;
    }
    // The simulator's exports use +31612300000..49 (Routit) and
    // +31612340000..49 (the others); most belong to the demo customers.
    let customers: Vec<i64> = sqlx::query_scalar(
        "SELECT id FROM customer WHERE name IN ('Acme Logistics', 'Bakkerij de Vries', 'Stadsbeheer Utrecht') ORDER BY name",
    )
    .fetch_all(pool)
    .await?;
    sqlx::query("DELETE FROM subscription WHERE identifier LIKE '+316123%'")
        .execute(pool)
        .await?;
    for i in 0..40 {
        for (provider, prefix) in std::iter::once(("routit", "+31612300")).chain(
            PROVIDERS
                .iter()
                .filter(|p| **p != "routit")
                .map(|p| (*p, "+31612340")),
        ) {
            sqlx::query(
                "INSERT INTO subscription (customer_id, provider, identifier) VALUES ($1, $2, $3)",
            )
            .bind(customers[i % customers.len()])
            .bind(provider)
            .bind(format!("{prefix}{i:03}"))
            .execute(pool)
            .await?;
        }
    }
    let mut ids = Vec::new();
    for provider in PROVIDERS {
        let secret = format!("{}/{provider}/demo", deployment.secrets_prefix);
        deployment
            .put_secret(&secret, &serde_json::json!({ "token": token }).to_string())
            .await?;
        let id = upsert_profile(
            pool,
            &format!("demo {provider}"),
            provider,
            &format!("{simulator_base}/{provider}"),
            &secret,
            true,
            period,
        )
        .await?;
        ids.push(id);
    }
    upsert_profile(
        pool,
        "demo routit (retired account)",
        "routit",
        &format!("{simulator_base}/routit"),
        "none",
        false,
        period,
    )
    .await?;
    Ok(ids)
}

async fn upsert_profile(
    pool: &PgPool,
    name: &str,
    provider: &str,
    base_url: &str,
    secret: &str,
    active: bool,
    period: NaiveDate,
) -> Result<i64> {
    let existing: Option<i64> = sqlx::query_scalar("SELECT id FROM sync_profile WHERE name = $1")
        .bind(name)
        .fetch_optional(pool)
        .await?;
    let id = match existing {
        Some(id) => {
            sqlx::query(
                "UPDATE sync_profile SET provider = $2, base_url = $3, credentials_secret = $4, active = $5,
                 first_period = $6, watermark_period = NULL, updated_at = now() WHERE id = $1",
            )
            .bind(id)
            .bind(provider)
            .bind(base_url)
            .bind(secret)
            .bind(active)
            .bind(period)
            .execute(pool)
            .await?;
            id
        }
        None => {
            sqlx::query_scalar(
                "INSERT INTO sync_profile (name, provider, base_url, credentials_secret, active, first_period)
                 VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
            )
            .bind(name)
            .bind(provider)
            .bind(base_url)
            .bind(secret)
            .bind(active)
            .bind(period)
            .fetch_one(pool)
            .await?
        }
    };
    Ok(id)
}
