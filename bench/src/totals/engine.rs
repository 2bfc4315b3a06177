//! The one place `totals-bench` calls the totals calculation, so that the
//! benchmark's cases, checks and report do not depend on which version of
//! the billing core they measure.
//!
//! Since issue 11 that is `tem_shared::adapters::totals::calculate_totals_with(
//! pool, customer, cycle, Recalculation::Full | Recalculation::Incremental)`,
//! which restarts at a checkpoint before the changes the writers marked
//! (`tem_shared::cdr::changes::mark`).

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use tem_shared::adapters::totals::calculate_totals_with;
use tem_shared::billing::calculation::{Calculation, Recalculation};
use tem_shared::billing::totals::{CycleTotals, TotalsError};

/// How a case asks for its calculation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
pub enum How {
    /// Every CDR of the cycle read and rated, as after a plan change.
    Full,
    /// What an import's DispatchTotals asks for: only what changed since
    /// the last calculation, if the calculation can tell.
    Incremental,
}

/// What the calculation did, in the benchmark's own terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    /// Every CDR of the cycle from the table.
    Full,
    /// From a checkpoint at `from` on (issue 11).
    FromCheckpoint { from: DateTime<Utc> },
    /// Nothing to do: the stored totals were current (issue 11).
    AlreadyCurrent,
    /// Before issue 11: every CDR rated again, the ones of unchanged import
    /// files from the stored copy; `files` import files read again from the
    /// table.
    StoredCopy { files: usize },
}

/// Where one calculation's time went, as the calculation reports it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Phases {
    pub kind: Kind,
    /// CDRs read from the table; `None` when the calculation does not say.
    pub cdrs_read: Option<u64>,
    pub read_seconds: f64,
    pub rate_seconds: f64,
    pub write_seconds: f64,
}

/// Untimed preparation of a calculation: nothing since issue 11
/// (`Recalculation::Full` says it); kept so the cases read the same.
pub async fn before(
    _pool: &PgPool,
    _customer_id: i64,
    _cycle: NaiveDate,
    _how: How,
) -> Result<(), sqlx::Error> {
    Ok(())
}

/// One calculation of the cycle.
pub async fn calculate(
    pool: &PgPool,
    customer_id: i64,
    cycle: NaiveDate,
    how: How,
) -> Result<(CycleTotals, Phases), TotalsError> {
    let recalculation = match how {
        How::Full => Recalculation::Full,
        How::Incremental => Recalculation::Incremental,
    };
    let (totals, report) = calculate_totals_with(pool, customer_id, cycle, recalculation).await?;
    let kind = match report.calculation {
        Calculation::Full => Kind::Full,
        Calculation::FromCheckpoint { from } => Kind::FromCheckpoint { from },
        Calculation::AlreadyCurrent => Kind::AlreadyCurrent,
    };
    Ok((
        totals,
        Phases {
            kind,
            cdrs_read: Some(report.cdrs_read),
            read_seconds: report.read_seconds,
            rate_seconds: report.rate_seconds,
            write_seconds: report.write_seconds,
        },
    ))
}

/// Marks the cycle's CDRs from `changed_from` on as changed, as the
/// importer does for the files it loads: the benchmark adds CDRs by COPY,
/// which marks nothing by itself. (Removing them again needs no mark: the
/// DELETE trigger of issue 11 marks deletions.)
///
/// Written as the row the importer writes (`cycle_change`, migration 0010),
/// and only when that table exists: before issue 11 a calculation finds
/// changed files by itself. After it this may call
/// `tem_shared::cdr::changes::mark` (or wherever the importer's marking
/// lands) instead.
pub async fn mark_added(
    pool: &PgPool,
    customer_id: i64,
    cycle: NaiveDate,
    changed_from: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    let marks: bool = sqlx::query_scalar("SELECT to_regclass('cycle_change') IS NOT NULL")
        .fetch_one(pool)
        .await?;
    if marks {
        sqlx::query(
            "INSERT INTO cycle_change (customer_id, cycle, changed_from, source) VALUES ($1, $2, $3, 'import')",
        )
        .bind(customer_id)
        .bind(cycle)
        .bind(changed_from)
        .execute(pool)
        .await?;
    }
    Ok(())
}
