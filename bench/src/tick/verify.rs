//! Every affected invoice against one calculated from scratch: the stored
//! totals, lines and draft invoice are read, the cycle is rated again in
//! full (`Recalculation::Full`: every CDR of the cycle, no checkpoint) and
//! its draft invoice generated again, and both are read again; any
//! difference fails the benchmark.

use anyhow::{Context, Result};
use chrono::{Duration, Utc};
use futures::{StreamExt, TryStreamExt};
use serde::Serialize;
use serde_json::Value;
use sqlx::PgPool;
use tem_shared::billing::calculation::{Calculation, Recalculation};

use super::seed::{Customer, GRACE_DAYS};

#[derive(Debug, Clone, Serialize)]
pub struct Verification {
    pub cycles: usize,
    pub equal: usize,
    /// "customer N cycle D: what differs", for each difference.
    pub differences: Vec<String>,
    pub seconds: f64,
}

/// What a cycle bills: its totals and lines, its draft invoice and lines,
/// without the times they were written.
async fn billed(pool: &PgPool, customer: &Customer) -> Result<[Value; 4]> {
    let (totals, lines, invoice, invoice_lines): (Value, Value, Value, Value) = sqlx::query_as(
        "SELECT
           (SELECT to_jsonb(t) - 'calculated_at' FROM totals t WHERE customer_id = $1 AND cycle = $2),
           (SELECT coalesce(jsonb_agg(to_jsonb(l) ORDER BY subscription, kind, roaming_zone), '[]')
              FROM totals_line l WHERE customer_id = $1 AND cycle = $2),
           (SELECT to_jsonb(i) - 'id' - 'totals_calculated_at' - 'created_at' - 'updated_at'
              FROM invoice i WHERE customer_id = $1 AND cycle = $2 AND sequence = 0),
           (SELECT coalesce(jsonb_agg(to_jsonb(l) - 'invoice_id' ORDER BY line_no), '[]')
              FROM invoice_line l JOIN invoice i ON i.id = l.invoice_id
              WHERE i.customer_id = $1 AND i.cycle = $2 AND i.sequence = 0)",
    )
    .bind(customer.id)
    .bind(customer.cycle)
    .fetch_one(pool)
    .await
    .context("read what the cycle bills")?;
    Ok([totals, lines, invoice, invoice_lines])
}

pub async fn verify(
    pool: &PgPool,
    customers: &[Customer],
    parallel: usize,
) -> Result<Verification> {
    let started = std::time::Instant::now();
    let results: Vec<Option<String>> = futures::stream::iter(customers)
        .map(|c| async move {
            let stored = billed(pool, c).await?;
            let (_, report) = tem_shared::adapters::totals::calculate_totals_with(
                pool,
                c.id,
                c.cycle,
                Recalculation::Full,
            )
            .await
            .with_context(|| format!("recalculate customer {} cycle {}", c.id, c.cycle))?;
            tem_shared::adapters::billing::invoice::generate_invoice(
                pool,
                c.id,
                c.cycle,
                Utc::now(),
                Duration::days(GRACE_DAYS),
            )
            .await
            .context("generate the invoice again")?;
            let fresh = billed(pool, c).await?;
            let names = ["totals", "totals lines", "draft invoice", "invoice lines"];
            let mut differs: Vec<&str> = names
                .iter()
                .zip(stored.iter().zip(fresh.iter()))
                .filter(|(_, (a, b))| a != b)
                .map(|(name, _)| *name)
                .collect();
            if report.calculation != Calculation::Full {
                differs.push("(the recalculation was not a full one)");
            }
            if stored[0].is_null() || stored[2].is_null() {
                differs.push("(nothing stored)");
            }
            anyhow::Ok((!differs.is_empty()).then(|| {
                format!(
                    "customer {} cycle {}: {} differ",
                    c.id,
                    c.cycle,
                    differs.join(", ")
                )
            }))
        })
        .buffer_unordered(parallel.max(1))
        .try_collect()
        .await?;
    let differences: Vec<String> = results.into_iter().flatten().collect();
    Ok(Verification {
        cycles: customers.len(),
        equal: customers.len() - differences.len(),
        differences,
        seconds: started.elapsed().as_secs_f64(),
    })
}
