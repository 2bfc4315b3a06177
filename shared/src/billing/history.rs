//! BackupTotals: an append-only history of every version of a cycle's
//! totals, with the time and the cause of each change.

use chrono::{NaiveDate, Utc};

use crate::billing::customer::{BillingCustomer, CustomerError};
use crate::cdr::cycle_bounds;
use serde_json::Value;
use sqlx::PgPool;

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub enum Backup {
    /// A new version was appended.
    Appended { version: i32 },
    /// The totals equal the latest version; nothing appended.
    Unchanged { version: i32 },
    /// No totals calculated for this cycle yet.
    NoTotals,
}

#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error(transparent)]
    Customer(#[from] CustomerError),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}

/// Whether the cycle had ended by now, in the customer's time zone.
async fn cycle_has_ended(
    pool: &PgPool,
    customer_id: i64,
    cycle: NaiveDate,
) -> Result<bool, CustomerError> {
    let customer = BillingCustomer::load(pool, customer_id, cycle).await?;
    Ok(Utc::now() >= cycle_bounds(cycle, customer.zone).1)
}

/// Appends the cycle's current totals as a new version when they differ
/// from the latest one. Safe to repeat: an unchanged cycle adds nothing.
pub async fn backup_totals(
    pool: &PgPool,
    customer_id: i64,
    cycle: NaiveDate,
    cause: &str,
) -> Result<Backup, HistoryError> {
    let mut tx = pool.begin().await?;
    // Serialise backups of the same cycle so versions never collide.
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
        .bind(format!("totals:{customer_id}:{cycle}"))
        .execute(&mut *tx)
        .await?;
    let current: Option<Value> = sqlx::query_scalar(
        "SELECT jsonb_build_object(
            'method', method, 'rate_plan_id', rate_plan_id, 'cdr_count', cdr_count,
            'voice_seconds', voice_seconds, 'data_bytes', data_bytes, 'messages', messages,
            'provider_cost_micros', provider_cost_micros, 'rated_cost_micros', rated_cost_micros,
            'unrated_count', unrated_count,
            'lines', (SELECT coalesce(jsonb_agg(to_jsonb(l) - 'customer_id' - 'cycle'
                                                ORDER BY l.subscription, l.kind, l.roaming_zone), '[]')
                      FROM totals_line l WHERE l.customer_id = t.customer_id AND l.cycle = t.cycle))
         FROM totals t WHERE customer_id = $1 AND cycle = $2",
    )
    .bind(customer_id)
    .bind(cycle)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(current) = current else {
        return Ok(Backup::NoTotals);
    };
    let latest: Option<(i32, Value)> = sqlx::query_as(
        "SELECT version, figures FROM totals_history WHERE customer_id = $1 AND cycle = $2 ORDER BY version DESC LIMIT 1",
    )
    .bind(customer_id)
    .bind(cycle)
    .fetch_optional(&mut *tx)
    .await?;
    if let Some((version, figures)) = &latest {
        if *figures == current {
            return Ok(Backup::Unchanged { version: *version });
        }
    }
    let version = latest.map_or(1, |(v, _)| v + 1);
    // An import that changes a cycle that had ended already brought CDRs
    // that arrived late: say so, because that is what a billing engineer
    // looks for when the figures of a past cycle moved.
    let cause =
        if cause == "import" && version > 1 && cycle_has_ended(pool, customer_id, cycle).await? {
            "late_cdrs"
        } else {
            cause
        };
    sqlx::query("INSERT INTO totals_history (customer_id, cycle, version, cause, figures) VALUES ($1, $2, $3, $4, $5)")
        .bind(customer_id)
        .bind(cycle)
        .bind(version)
        .bind(cause)
        .bind(&current)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(Backup::Appended { version })
}
