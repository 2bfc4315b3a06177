//! `totals-bench calculate` and `totals-bench bare` (hidden): one case's
//! work alone in its process, so that its peak memory (`VmHWM`) is that
//! work's and not the benchmark's, which holds pricings for its checks.
//! Prints one JSON object on stdout.

use std::time::Instant;

use anyhow::{Context, Result};
use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use tem_shared::billing::totals::CycleTotals;

use super::engine::{self, How, Phases};
use super::BARE_GROUP_BY;

/// `CycleTotals` as the child sends it to the parent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    pub customer_id: i64,
    pub cycle: NaiveDate,
    pub method: String,
    pub rate_plan_id: Option<String>,
    pub cdr_count: i64,
    pub voice_seconds: i64,
    pub data_bytes: i64,
    pub messages: i64,
    pub provider_cost_micros: i64,
    pub rated_cost_micros: i64,
    pub unrated_count: i64,
}

impl From<&CycleTotals> for Totals {
    fn from(t: &CycleTotals) -> Self {
        Self {
            customer_id: t.customer_id,
            cycle: t.cycle,
            method: t.method.to_string(),
            rate_plan_id: t.rate_plan_id.clone(),
            cdr_count: t.cdr_count,
            voice_seconds: t.voice_seconds,
            data_bytes: t.data_bytes,
            messages: t.messages,
            provider_cost_micros: t.provider_cost_micros,
            rated_cost_micros: t.rated_cost_micros,
            unrated_count: t.unrated_count,
        }
    }
}

/// What the child reports to the parent.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChildReport {
    /// The call alone (the calculation, or the bare query fetched whole),
    /// from the child's clock: connecting and start-up are not in it.
    pub seconds: f64,
    pub totals: Option<Totals>,
    pub phases: Option<Phases>,
    /// Groups of the bare query.
    pub groups: Option<usize>,
    /// Peak resident set size of the process, in KiB.
    pub vm_hwm_kb: u64,
    /// Resident set size at the end, in KiB.
    pub vm_rss_kb: u64,
}

async fn connect(database: &str) -> Result<PgPool> {
    PgPoolOptions::new()
        .max_connections(4)
        .connect(database)
        .await
        .with_context(|| format!("connect to {database}"))
}

/// One calculation of the cycle.
pub async fn calculate(
    database: &str,
    customer_id: i64,
    cycle: NaiveDate,
    how: How,
) -> Result<ChildReport> {
    let pool = connect(database).await?;
    engine::before(&pool, customer_id, cycle, how)
        .await
        .context("prepare the calculation")?;
    let started = Instant::now();
    let (totals, phases) = engine::calculate(&pool, customer_id, cycle, how)
        .await
        .with_context(|| format!("calculate customer {customer_id}'s cycle {cycle}"))?;
    let seconds = started.elapsed().as_secs_f64();
    pool.close().await;
    let (vm_hwm_kb, vm_rss_kb) = crate::child::memory_kb().context("read /proc/self/status")?;
    Ok(ChildReport {
        seconds,
        totals: Some(Totals::from(&totals)),
        phases: Some(phases),
        groups: None,
        vm_hwm_kb,
        vm_rss_kb,
    })
}

/// The bare GROUP BY over the cycle, fetched whole.
pub async fn bare(
    database: &str,
    customer_id: i64,
    (start, end): (DateTime<Utc>, DateTime<Utc>),
) -> Result<ChildReport> {
    let pool = connect(database).await?;
    let started = Instant::now();
    let rows = sqlx::query(BARE_GROUP_BY)
        .bind(customer_id)
        .bind(start)
        .bind(end)
        .fetch_all(&pool)
        .await
        .context("the bare GROUP BY")?;
    let seconds = started.elapsed().as_secs_f64();
    let groups = rows.len();
    drop(rows);
    pool.close().await;
    let (vm_hwm_kb, vm_rss_kb) = crate::child::memory_kb().context("read /proc/self/status")?;
    Ok(ChildReport {
        seconds,
        totals: None,
        phases: None,
        groups: Some(groups),
        vm_hwm_kb,
        vm_rss_kb,
    })
}
