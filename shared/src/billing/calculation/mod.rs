//! CalculateTotals: one customer's cycle priced by the standard method
//! (provider cost) or the customer's rate plan, as a stream in consumption
//! order, in memory that grows with the cycle's subscriptions and never with
//! its CDRs.
//!
//! - A calculation reads in one snapshot ([`CycleStore`], REPEATABLE READ
//!   in PostgreSQL) and records what it used (method, plan document, time
//!   zone, cycle day).
//! - Rating checkpoints (line sums, bundle use and CDRs so far, `state`)
//!   are stored at local midnights the CDRs cross (once the day's segment
//!   holds at least as many CDRs as a checkpoint holds lines, so that a
//!   checkpoint never costs more than the reading it saves), and once after
//!   the cycle's last CDR (or at the cycle's end when it has none). The writers that change
//!   CDRs mark the cycles they changed, with the earliest `started_at` they
//!   touched. The next calculation restarts at the last checkpoint at or
//!   before the earliest mark: only the CDRs from there on are read and
//!   priced again, and the totals are the checkpoint's sums plus the
//!   tail's. The daily import adds CDRs after the last one, so its cost is
//!   that of its own CDRs. Other settings rate the cycle in full.
//! - A calculation that finds the cycle as it left it (no marks, same
//!   settings) does nothing: several DispatchTotals of one burst give one
//!   calculation, plus one more if a change arrived during it.
//! - The standard method rates every CDR at its provider cost, so its tail
//!   is one GROUP BY; nothing is stored per CDR.

pub mod state;
mod stream;

use async_trait::async_trait;
use chrono::{DateTime, Duration, NaiveDate, NaiveTime, Utc};
use chrono_tz::Tz;
use serde::Serialize;

use crate::billing::customer::BillingCustomer;
use crate::billing::pricings::PricingChunk;
use crate::billing::totals::{CycleTotals, TotalsError};
use crate::cdr::cycle_bounds;
use crate::cdr::local_to_utc;
use crate::cdr::{Kind, Zone};

pub use state::{line_changes, Line, LineChanges, RatingState, Sums};
pub use stream::{CdrKey, CdrPage, PageRow, Span, PAGE};

/// How much of the cycle to price again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Recalculation {
    /// From the last checkpoint before the earliest change (or nothing when
    /// nothing changed).
    #[default]
    Incremental,
    /// Every CDR of the cycle, whatever is stored.
    Full,
}

/// What a calculation did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Calculation {
    /// Read and priced every CDR of the cycle.
    Full,
    /// Restarted at the checkpoint at `from`.
    FromCheckpoint { from: DateTime<Utc> },
    /// The stored totals were current: nothing was read or written.
    AlreadyCurrent,
}

/// What a calculation did and where its time went (logged; `totals-bench`
/// prints it).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct CalculationReport {
    pub calculation: Calculation,
    /// CDRs read and priced (the tail after the checkpoint).
    pub cdrs_read: u64,
    pub read_seconds: f64,
    pub rate_seconds: f64,
    pub write_seconds: f64,
    /// The totals were already current, made by another chain's
    /// CalculateTotals (not this run's own, retried after its commit): that
    /// chain backs them up and evaluates their insights.
    pub current_by_another: bool,
}

/// The billing method of a cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    Standard,
    RatePlan,
}

impl Method {
    /// The method as `totals.method` and `cycle_state.method` store it
    /// (a CHECK constraint allows only these two).
    pub fn from_stored(text: &str) -> Self {
        if text == "rate_plan" {
            Method::RatePlan
        } else {
            Method::Standard
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Method::Standard => "standard",
            Method::RatePlan => "rate_plan",
        }
    }
}

/// What a cycle's rating depends on besides its CDRs.
#[derive(Debug, Clone, PartialEq)]
pub struct CycleSettings {
    pub method: Method,
    pub rate_plan_id: Option<String>,
    pub plan: Option<serde_json::Value>,
    pub time_zone: String,
    pub start_day: u32,
}

impl CycleSettings {
    pub fn of(customer: &BillingCustomer) -> Self {
        CycleSettings {
            method: if customer.plan.is_some() {
                Method::RatePlan
            } else {
                Method::Standard
            },
            rate_plan_id: customer.plan_id.clone(),
            plan: customer.plan.as_ref().map(|(document, _)| document.clone()),
            time_zone: customer.zone.name().to_string(),
            start_day: customer.start_day,
        }
    }
}

/// The last calculation of a cycle, as stored.
#[derive(Debug, Clone)]
pub struct Previous {
    pub settings: CycleSettings,
    /// The run (a CalculateTotals message id) that made the stored totals;
    /// `None` when a caller outside the chains did.
    pub calculated_by: Option<String>,
}

/// A change of the cycle's CDRs not yet calculated.
#[derive(Debug, Clone, Copy)]
pub struct PendingChange {
    pub id: i64,
    pub changed_from: DateTime<Utc>,
}

/// One calculation's view of a cycle and its writes: one snapshot, locked
/// against other calculations of the same cycle.
#[async_trait]
pub trait CycleStore: Send {
    async fn customer(&mut self) -> Result<BillingCustomer, TotalsError>;
    async fn previous(&mut self) -> Result<Option<Previous>, TotalsError>;
    async fn pending_changes(&mut self) -> Result<Vec<PendingChange>, TotalsError>;
    async fn stored_totals(&mut self) -> Result<Option<CycleTotals>, TotalsError>;
    /// The latest checkpoint at or before `at` (never the cycle's end).
    async fn checkpoint_before(
        &mut self,
        at: DateTime<Utc>,
    ) -> Result<Option<(DateTime<Utc>, Vec<u8>)>, TotalsError>;
    /// The state after every CDR (the cycle's latest checkpoint).
    async fn final_state(&mut self) -> Result<Option<Vec<u8>>, TotalsError>;
    /// Deletes the pricings of segments from `from` on and every checkpoint
    /// after it (all of them when `from` is `None`).
    async fn discard_from(&mut self, from: Option<DateTime<Utc>>) -> Result<(), TotalsError>;
    /// The next CDRs in consumption order with `started_at >= from` and
    /// after `after`: about `limit` of them, and every CDR of an instant in
    /// the same page; `page.more` says whether more follow.
    async fn read_page(
        &mut self,
        from: DateTime<Utc>,
        after: Option<&CdrKey>,
        limit: usize,
        page: &mut CdrPage,
    ) -> Result<(), TotalsError>;
    /// The standard method's sums of `[from, to)` per subscription, kind and
    /// zone, and the latest `started_at` among them.
    async fn group(
        &mut self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<(Vec<(String, Kind, Zone, Sums)>, Option<DateTime<Utc>>), TotalsError>;
    async fn write_chunk(
        &mut self,
        segment: DateTime<Utc>,
        seq: i32,
        first_position: u64,
        chunk: &PricingChunk,
    ) -> Result<(), TotalsError>;
    async fn write_checkpoint(
        &mut self,
        at: DateTime<Utc>,
        state: &RatingState,
    ) -> Result<(), TotalsError>;
    async fn write_totals(
        &mut self,
        totals: &CycleTotals,
        lines: &LineChanges,
    ) -> Result<(), TotalsError>;
    async fn write_settings(
        &mut self,
        settings: &CycleSettings,
        cdr_count: u64,
        restarted_at: Option<DateTime<Utc>>,
        cdrs_read: u64,
        by: Option<&str>,
    ) -> Result<(), TotalsError>;
    async fn consume(&mut self, changes: &[PendingChange]) -> Result<(), TotalsError>;
}

/// The UTC instants of the local midnights strictly inside the cycle: where
/// a segment may end and a checkpoint be taken.
pub fn segment_starts(cycle: NaiveDate, zone: Tz) -> Vec<DateTime<Utc>> {
    let (start, end) = cycle_bounds(cycle, zone);
    let mut out = Vec::new();
    let mut day = cycle + Duration::days(1);
    loop {
        let at = local_to_utc(day, NaiveTime::MIN, zone)
            .or_else(|_| local_to_utc(day, NaiveTime::from_hms_opt(1, 0, 0).expect("valid"), zone))
            .unwrap_or(end);
        if at >= end {
            break;
        }
        if at > start {
            out.push(at);
        }
        day += Duration::days(1);
    }
    out
}

/// Calculates and stores the totals of one customer's cycle in `store`'s
/// snapshot. `by` is the run (a CalculateTotals message id) recorded as the
/// maker of the totals when it does work.
pub async fn calculate<S: CycleStore + ?Sized>(
    store: &mut S,
    customer_id: i64,
    cycle: NaiveDate,
    how: Recalculation,
    by: Option<&str>,
) -> Result<(CycleTotals, CalculationReport), TotalsError> {
    let started = std::time::Instant::now();
    let customer = store.customer().await?;
    let settings = CycleSettings::of(&customer);
    let previous = store.previous().await?;
    let changes = store.pending_changes().await?;
    let stored = store.stored_totals().await?;
    let same = previous.as_ref().is_some_and(|p| p.settings == settings);
    if how == Recalculation::Incremental && same && changes.is_empty() {
        if let Some(totals) = stored {
            // Only a chain's own message id proves the chain owes nothing
            // more; unknown makers (temctl, a benchmark) are not trusted to
            // have backed up, so their totals count as this run's.
            let made_by = previous.as_ref().and_then(|p| p.calculated_by.as_deref());
            let current_by_another = matches!((made_by, by), (Some(m), Some(b)) if m != b);
            return Ok((
                totals,
                CalculationReport {
                    calculation: Calculation::AlreadyCurrent,
                    cdrs_read: 0,
                    read_seconds: started.elapsed().as_secs_f64(),
                    rate_seconds: 0.0,
                    write_seconds: 0.0,
                    current_by_another,
                },
            ));
        }
    }
    let (_, end) = cycle_bounds(cycle, customer.zone);
    // A checkpoint, and the stored lines, are only good for the same
    // settings; a restart needs both the final state (to see which lines
    // changed) and a checkpoint at or before the earliest change.
    let incremental = how == Recalculation::Incremental && same && stored.is_some();
    let final_bytes = match incremental {
        true => store.final_state().await?,
        false => None,
    };
    let before = final_bytes
        .as_ref()
        .and_then(|bytes| trusted(customer_id, cycle, RatingState::decode(bytes)));
    let earliest = changes.iter().map(|c| c.changed_from).min();
    let mut resume: Option<(DateTime<Utc>, RatingState)> = None;
    if let (Some(before), Some(at)) = (&before, earliest) {
        if let Some((from, bytes)) = store.checkpoint_before(at).await? {
            // After a daily import the checkpoint is the final state itself:
            // decoding it twice cost more than the import's own rating.
            resume = match final_bytes.as_deref() == Some(bytes.as_slice()) {
                true => Some(before.clone()),
                false => trusted(customer_id, cycle, RatingState::decode(&bytes)),
            }
            .map(|s| (from, s));
        }
    }
    let calculation = match &resume {
        Some((from, _)) => Calculation::FromCheckpoint { from: *from },
        None => Calculation::Full,
    };
    store
        .discard_from(resume.as_ref().map(|(at, _)| *at))
        .await?;

    let mut run = stream::Run::new(
        customer.rate_plan(),
        cycle,
        customer.zone,
        resume,
        customer_id,
    );
    let read_started = std::time::Instant::now();
    let mut write_seconds = 0.0;
    match customer.rate_plan() {
        Some(_) => {
            let mut page = CdrPage::default();
            let mut after: Option<CdrKey> = None;
            loop {
                store
                    .read_page(run.from(), after.as_ref(), stream::PAGE, &mut page)
                    .await?;
                if page.rows.is_empty() {
                    break;
                }
                let outputs = run.rate_page(&page)?;
                let written = std::time::Instant::now();
                write_outputs(store, outputs).await?;
                write_seconds += written.elapsed().as_secs_f64();
                after = page.last_key();
                if !page.more {
                    break;
                }
            }
        }
        None => {
            let (groups, last) = store.group(run.from(), end).await?;
            run.add_groups(groups, last)?;
        }
    }
    let outputs = run.finish(end);
    let written = std::time::Instant::now();
    write_outputs(store, outputs).await?;
    let rate_and_read = read_started.elapsed().as_secs_f64() - write_seconds;
    let state = run.state();
    let total = state.total();
    let totals = CycleTotals {
        customer_id,
        cycle,
        method: settings.method.as_str(),
        rate_plan_id: customer.plan_id.clone(),
        cdr_count: total.cdr_count,
        voice_seconds: total.voice_seconds,
        data_bytes: total.data_bytes,
        messages: total.messages,
        provider_cost_micros: total.provider_cost_micros,
        rated_cost_micros: total.rated_cost_micros,
        unrated_count: total.unrated_count,
    };
    let lines = line_changes(before.as_ref(), state);
    store.write_totals(&totals, &lines).await?;
    let restarted_at = match calculation {
        Calculation::FromCheckpoint { from } => Some(from),
        _ => None,
    };
    store
        .write_settings(
            &settings,
            state.cdr_count,
            restarted_at,
            run.cdrs_read(),
            by,
        )
        .await?;
    store.consume(&changes).await?;
    write_seconds += written.elapsed().as_secs_f64();
    Ok((
        totals,
        CalculationReport {
            calculation,
            cdrs_read: run.cdrs_read(),
            read_seconds: rate_and_read - run.rate_seconds(),
            rate_seconds: run.rate_seconds(),
            write_seconds,
            current_by_another: false,
        },
    ))
}

/// A stored state that does not decode is only a lost speed-up: the
/// cycle is rated in full (and its checkpoints written again).
fn trusted(
    customer_id: i64,
    cycle: NaiveDate,
    state: Result<RatingState, String>,
) -> Option<RatingState> {
    state
        .map_err(|problem| {
            tracing::warn!(customer_id, %cycle, %problem, "a stored rating checkpoint is damaged; rating the cycle in full");
        })
        .ok()
}

async fn write_outputs<S: CycleStore + ?Sized>(
    store: &mut S,
    outputs: Vec<stream::Output>,
) -> Result<(), TotalsError> {
    for output in outputs {
        match output {
            stream::Output::Chunk {
                segment,
                seq,
                first_position,
                chunk,
            } => {
                store
                    .write_chunk(segment, seq, first_position, &chunk)
                    .await?
            }
            stream::Output::Checkpoint { at, state } => store.write_checkpoint(at, &state).await?,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_start_at_every_local_midnight_inside_the_cycle() {
        let ams = chrono_tz::Europe::Amsterdam;
        let cycle: NaiveDate = "2025-03-01".parse().unwrap();
        let starts = segment_starts(cycle, ams);
        assert_eq!(starts.len(), 30, "31 days, 30 midnights inside");
        assert_eq!(starts[0].to_rfc3339(), "2025-03-01T23:00:00+00:00");
        // Summer time from 30 March: midnight is 22:00 UTC.
        assert_eq!(starts[29].to_rfc3339(), "2025-03-30T22:00:00+00:00");
    }
}
