//! The billing domain's stores on PostgreSQL: each module implements the
//! narrow traits of the `billing` module of its name and holds all of that
//! module's SQL, so rating, the totals arithmetic, insights and invoices
//! see no sqlx type. The convenience entry points (`explain_cdr(pool, ..)`,
//! `generate_invoice(pool, ..)`, ...) wire those stores to a pool for
//! `temctl`, the bench and the tests.

pub mod customer;
pub mod document;
pub mod explain;
pub mod history;
pub mod insight;
pub mod invoice;
pub mod invoice_view;
pub mod pricings;
pub mod specification;

use std::sync::Arc;

use async_trait::async_trait;
use chrono::NaiveDate;
use sqlx::PgPool;

use crate::adapters::totals::calculate_totals_by;
use crate::billing::calculation::{CalculationReport, Recalculation};
use crate::billing::customer::CustomerError;
use crate::billing::handler::{CycleCalculator, TotalsStores};
use crate::billing::totals::{CycleTotals, TotalsError};
use crate::ports::StoreError;

/// The totals function's stores, all on one pool.
pub fn stores(pool: PgPool) -> TotalsStores {
    TotalsStores {
        customers: Arc::new(customer::PgCustomerSettings::new(pool.clone())),
        calculator: Arc::new(PgCalculator::new(pool.clone())),
        history: Arc::new(history::PgHistory::new(pool.clone())),
        insights: Arc::new(insight::PgInsights::new(pool.clone())),
        invoices: Arc::new(invoice::PgInvoices::new(pool.clone())),
        issued: Arc::new(document::PgIssued::new(pool.clone())),
        documents: Arc::new(document::PgIssued::new(pool.clone())),
        specifications: Arc::new(specification::PgSpecifications::new(pool.clone())),
        budgets: Arc::new(crate::adapters::budgets::PgBudgets::new(pool.clone())),
        outbox: Arc::new(crate::adapters::budgets::PgBudgets::new(pool.clone())),
        costs: Arc::new(crate::adapters::costs::PgCosts::new(pool.clone())),
        chargebacks: Arc::new(crate::adapters::costs::PgCosts::new(pool)),
    }
}

/// CalculateTotals in a REPEATABLE READ transaction of the pool
/// (`adapters::totals`).
#[derive(Clone)]
pub struct PgCalculator {
    pool: PgPool,
}

impl PgCalculator {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }
}

#[async_trait]
impl CycleCalculator for PgCalculator {
    async fn calculate(
        &self,
        customer_id: i64,
        cycle: NaiveDate,
        how: Recalculation,
        by: Option<&str>,
    ) -> Result<(CycleTotals, CalculationReport), TotalsError> {
        // The UTC months the cycle's CDRs may lie in (its zone can put its
        // first or last hours in the months beside it). Any of them gone
        // to the archive leaves the cycle incomplete: a late CDR must not
        // re-bill it from what is left.
        let archived: Option<NaiveDate> = sqlx::query_scalar(
            "SELECT month FROM cdr_archive
             WHERE customer_id = $1 AND state = 'removed'
               AND month >= date_trunc('month', $2::date - 1)::date
               AND month <= date_trunc('month', $2::date + interval '1 month')::date
             ORDER BY month LIMIT 1",
        )
        .bind(customer_id)
        .bind(cycle)
        .fetch_optional(&self.pool)
        .await?;
        if let Some(month) = archived {
            return Err(TotalsError::Archived {
                customer_id,
                cycle,
                month: month.format("%Y-%m").to_string(),
            });
        }
        calculate_totals_by(&self.pool, customer_id, cycle, how, by).await
    }
}

// The billing errors keep a database failure as a `StoreError`; these let
// the adapters' statements use `?` as before.
impl From<sqlx::Error> for CustomerError {
    fn from(e: sqlx::Error) -> Self {
        CustomerError::Store(StoreError::from(e))
    }
}

impl From<sqlx::Error> for TotalsError {
    fn from(e: sqlx::Error) -> Self {
        TotalsError::Store(StoreError::from(e))
    }
}
