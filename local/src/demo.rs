//! Demo data for the local run: `local/demo.yaml` (a few customers, one on a
//! rate plan, their subscriptions and one sync profile per carrier pointed at
//! the simulator), applied as `temctl apply` does, with the credentials in
//! the emulator's Secrets Manager.

use std::collections::BTreeMap;

use anyhow::{bail, Context, Result};
use chrono::{Duration, NaiveDate, Utc};
use sqlx::PgPool;
use tem_shared::adapters::sqs::SqsQueues;
use tem_shared::catalog::changes::Summary;
use tem_shared::catalog::follow_up::{deliver, Delivery, DEFAULT_GRACE_DAYS};
use tem_shared::catalog::{self, ApplyOptions, Parsed};
use tem_shared::ports::QueueSend;
use tem_shared::routing::Router;

use crate::deployment::Deployment;

pub const PROVIDERS: [&str; 7] = provider_sim::PROVIDERS;

/// Makes sure the database `url` exists and is migrated.
pub async fn prepare_database(url: &str) -> Result<PgPool> {
    use sqlx::{ConnectOptions, Connection};
    use std::str::FromStr;
    let options = sqlx::postgres::PgConnectOptions::from_str(url)?;
    let name = options.get_database().unwrap_or("tem_local").to_string();
    let mut admin = options.clone().database("postgres").connect().await?;
    // The run replaces the stack and its bucket, so a database kept from an
    // earlier run would record invoice documents the new bucket lacks. A
    // database of the local run's own (tem_local*) is made afresh; any
    // other is only migrated, never dropped.
    let quoted = format!("\"{}\"", name.replace('"', ""));
    if name.starts_with("tem_local") {
        sqlx::query(&format!("DROP DATABASE IF EXISTS {quoted} WITH (FORCE)"))
            .execute(&mut admin)
            .await?;
    }
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(&name)
            .fetch_one(&mut admin)
            .await?;
    if !exists {
        sqlx::query(&format!("CREATE DATABASE {quoted}"))
            .execute(&mut admin)
            .await?;
    }
    admin.close().await?;
    let pool = sqlx::PgPool::connect_with(options).await?;
    tem_shared::adapters::postgres::MIGRATOR.run(&pool).await?;
    Ok(pool)
}

/// The demo's customers, subscriptions, rate plan and sync profiles.
pub const DEMO_FILE: &str = include_str!("../demo.yaml");

/// What seeding did.
pub struct Seeded {
    /// The active demo profiles.
    pub profile_ids: Vec<i64>,
    pub summary: Summary,
    /// The apply's follow-up (re-rating, attaching), sent to the stack's queues.
    pub follow_up: Vec<Delivery>,
}

/// Applies `local/demo.yaml` (customers, subscriptions, a rate plan, one
/// active profile per provider whose next period is `period`, one inactive
/// profile) through the same catalog code as `temctl apply`, and stores the
/// simulator token as each profile's credentials. Idempotent: re-running
/// changes nothing but the period, and resets the demo profiles' watermarks
/// so the run syncs `period` again.
pub async fn seed(
    deployment: &Deployment,
    simulator_base: &str,
    token: &str,
    period: NaiveDate,
) -> Result<Seeded> {
    let pool = &deployment.pool;
    for provider in PROVIDERS {
        let secret = format!("{}/{provider}/demo", deployment.secrets_prefix);
        deployment
            .put_secret(&secret, &serde_json::json!({ "token": token }).to_string())
            .await?;
    }
    let variables = BTreeMap::from([
        ("SIM_BASE_URL", simulator_base.to_string()),
        ("SECRETS_PREFIX", deployment.secrets_prefix.clone()),
        ("FIRST_PERIOD", period.to_string()),
    ]);
    let parsed = catalog::parse(DEMO_FILE, |name| {
        variables
            .get(name)
            .cloned()
            .or_else(|| std::env::var(name).ok())
    });
    if !parsed.is_valid() {
        let problems: Vec<String> = parsed.problems.iter().map(ToString::to_string).collect();
        bail!("local/demo.yaml is not valid:\n  {}", problems.join("\n  "));
    }
    adopt_customers_of_earlier_runs(pool, &parsed).await?;
    let now = Utc::now();
    let applied = catalog::apply(
        pool,
        &parsed,
        &ApplyOptions {
            source: "local/demo.yaml".into(),
            dry_run: false,
            now,
            grace: Duration::days(i64::from(DEFAULT_GRACE_DAYS)),
        },
    )
    .await
    .context("apply local/demo.yaml")?;
    let names: Vec<String> = parsed
        .document
        .sync_profiles
        .iter()
        .map(|p| p.name.clone())
        .collect();
    // A re-run on the same day would otherwise find every profile up to date.
    sqlx::query(
        "UPDATE sync_profile SET watermark_period = NULL, updated_at = now() WHERE name = ANY($1)",
    )
    .bind(&names)
    .execute(pool)
    .await?;
    let router = Router::default().with_pipeline_queues(
        Some(deployment.output("ImportQueueUrl").to_string()),
        Some(deployment.output("TotalsQueueUrl").to_string()),
    );
    let queues = SqsQueues::new(deployment.clients.sqs.clone());
    let follow_up = deliver(
        &applied.follow_ups,
        applied.revision,
        now,
        &router,
        Some(&queues as &dyn QueueSend),
    )
    .await;
    let active: Vec<String> = parsed
        .document
        .sync_profiles
        .iter()
        .filter(|p| p.active)
        .map(|p| p.name.clone())
        .collect();
    let profile_ids =
        sqlx::query_scalar("SELECT id FROM sync_profile WHERE name = ANY($1) ORDER BY id")
            .bind(&active)
            .fetch_all(pool)
            .await?;
    Ok(Seeded {
        profile_ids,
        summary: applied.summary,
        follow_up,
    })
}

/// Demo customers of runs from before customers had codes get their code,
/// so the file updates them instead of adding a second Acme Logistics.
async fn adopt_customers_of_earlier_runs(pool: &PgPool, parsed: &Parsed) -> Result<()> {
    for customer in &parsed.document.customers {
        sqlx::query(
            "UPDATE customer SET code = $1
             WHERE id = (SELECT min(id) FROM customer WHERE code IS NULL AND name = $2)
               AND NOT EXISTS (SELECT 1 FROM customer WHERE code = $1)",
        )
        .bind(&customer.code)
        .bind(&customer.name)
        .execute(pool)
        .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_file_is_valid_once_the_local_run_fills_in_its_variables() {
        let variables = BTreeMap::from([
            ("SIM_BASE_URL", "http://127.0.0.1:4000"),
            ("SECRETS_PREFIX", "tem-local"),
            ("FIRST_PERIOD", "2025-01-14"),
        ]);
        let parsed = catalog::parse(DEMO_FILE, |name| variables.get(name).map(|v| v.to_string()));

        assert_eq!(parsed.problems, vec![]);
        let doc = &parsed.document;
        assert_eq!(doc.subscriptions.len(), 40 * PROVIDERS.len());
        let active: Vec<&str> = doc
            .sync_profiles
            .iter()
            .filter(|p| p.active)
            .map(|p| p.provider.as_str())
            .collect();
        assert_eq!(active, PROVIDERS, "one active profile per carrier");
        assert_eq!(
            doc.sync_profiles[0].base_url,
            "http://127.0.0.1:4000/kpn_sp16"
        );
        assert_eq!(
            doc.sync_profiles[0].credentials_secret,
            "tem-local/kpn_sp16/demo"
        );
        let rated: Vec<&str> = doc
            .customers
            .iter()
            .filter(|c| c.rate_plan.is_some())
            .map(|c| c.code.as_str())
            .collect();
        assert_eq!(rated, ["acme"]);
        let plan = &doc.rate_plans[0].plan;
        assert!(plan.monthly_fee_micros > 0 && !plan.bundles.is_empty());
        // Every demo customer can be invoiced: a closed cycle becomes final.
        let invoiced: Vec<&str> = doc
            .billing_details
            .iter()
            .map(|b| b.customer.as_str())
            .collect();
        assert_eq!(invoiced, ["acme", "bakker", "stadsbeheer"]);
        assert_eq!(doc.sellers.len(), 1);
        // Every demo customer has a cost tree and assignments to show.
        let trees: std::collections::BTreeSet<&str> = doc
            .cost_centres
            .iter()
            .map(|n| n.customer.as_str())
            .collect();
        assert_eq!(
            trees.into_iter().collect::<Vec<_>>(),
            ["acme", "bakker", "stadsbeheer"]
        );
        assert_eq!(doc.cost_assignments.len(), 10);
    }
}
