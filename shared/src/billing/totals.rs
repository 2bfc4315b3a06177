//! The totals of one customer's billing cycle: what CalculateTotals
//! (`billing::calculation`) writes, with lines per subscription, kind and
//! zone, and what everything after it reads.
use chrono::{DateTime, Months, NaiveDate, NaiveTime, Utc};
use chrono_tz::Tz;
use serde::Serialize;

use crate::billing::customer::CustomerError;
use crate::import::normalize::local_to_utc;

#[derive(Debug, thiserror::Error)]
pub enum TotalsError {
    #[error(transparent)]
    Customer(#[from] CustomerError),
    #[error("CDR {id} cannot be rated: {problem}; correct or remove that row of call_detail_record, then recalculate")]
    BadCdr { id: i64, problem: String },
    #[error("reading the cycle's CDRs failed: {0}; retry, and report it if it persists")]
    Read(String),

    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
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

/// The UTC bounds `[start, end)` of the cycle that starts on `cycle` at
/// 00:00 local time and ends at the same point a month later.
pub fn cycle_bounds(cycle: NaiveDate, zone: Tz) -> (DateTime<Utc>, DateTime<Utc>) {
    let start_of = |day: NaiveDate| {
        // Midnight exists on every day in the zones we bill (DST changes at
        // 02:00 or later); fall back to 01:00 if a zone ever skips it.
        local_to_utc(day, NaiveTime::MIN, zone)
            .or_else(|_| local_to_utc(day, NaiveTime::from_hms_opt(1, 0, 0).expect("valid"), zone))
            .expect("01:00 exists")
    };
    let next = cycle + Months::new(1);
    (start_of(cycle), start_of(next))
}
