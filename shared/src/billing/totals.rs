//! The totals of one customer's billing cycle: what CalculateTotals
//! (`billing::calculation`) writes, with lines per subscription, kind and
//! zone, and what everything after it reads.
use chrono::NaiveDate;
use serde::Serialize;

use crate::billing::customer::CustomerError;
use crate::ports::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum TotalsError {
    #[error(transparent)]
    Customer(#[from] CustomerError),
    #[error("CDR {id} cannot be rated: {problem}; correct or remove that row of call_detail_record, then recalculate")]
    BadCdr { id: i64, problem: String },
    #[error("reading the cycle's CDRs failed: {0}; retry, and report it if it persists")]
    Read(String),

    #[error("database error: {0}")]
    Store(#[from] StoreError),
    /// Some of the cycle's CDRs were archived past their retention and
    /// removed: a calculation now would bill only what is left.
    #[error("cycle {cycle} of customer {customer_id} has CDRs in {month}, which is archived and removed from the database; restore it (`temctl archive restore {customer_id} {month}`), then calculate again")]
    Archived {
        customer_id: i64,
        cycle: NaiveDate,
        month: String,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CycleTotals {
    pub customer_id: i64,
    pub cycle: NaiveDate,
    pub method: &'static str,
    pub rate_plan_id: Option<String>,
    pub cdr_count: i64,
    pub voice_seconds: i64,
    pub data_bytes: i64,
    pub messages: i64,
    pub provider_cost_micros: i64,
    pub rated_cost_micros: i64,
    pub unrated_count: i64,
}
