//! CalculateTotals against PostgreSQL: one customer's CDRs of one billing
//! cycle, priced by the standard method (provider cost) or the customer's
//! rate plan, written as totals with lines per subscription, kind and zone.
//! Recalculating replaces the cycle's rows, so it is idempotent.
//!
//! The two methods are built to stay close to the cost of a bare
//! `SELECT ... GROUP BY` over the cycle (`totals-bench` in `bench/` measures
//! it):
//! - **standard**: the lines are that GROUP BY itself, computed by the
//!   database; only the few grouped rows travel. Nothing is stored per CDR:
//!   every CDR is rated at its provider cost.
//! - **rate plan**: every CDR of the cycle is rated in memory by [`Rater`]
//!   (figures only, no text) on every calculation. The columns rating needs
//!   come from the cycle's stored input (`billing::cycle_input`) for the
//!   import files that did not change since the last calculation, and with
//!   one binary `COPY ... TO STDOUT` from the table for the rest. How each
//!   CDR was priced is written as a few rows of encoded columns
//!   (`billing::pricings`), together with the plan it was rated with
//!   (`cycle_rating`); `billing::explain` turns them into sentences.

use std::time::Instant;

use chrono::{DateTime, Months, NaiveDate, NaiveTime, Utc};
use chrono_tz::Tz;
use serde::Serialize;
use sqlx::{PgConnection, PgPool};

use crate::billing::customer::{BillingCustomer, CustomerError};
use crate::billing::cycle_input::{self, InputSource};
use crate::billing::cycle_rows::{parse_kind, parse_zone, CycleRows};
use crate::billing::pricings::{self, Pricings};
use crate::billing::rating::{Prepared, RatePlan, Rater, Usage};
use crate::import::format::{Kind, Zone};
use crate::import::normalize::local_to_utc;

pub use crate::billing::cycle_rows::READ_COLUMNS;

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

/// The figures of one totals line (or of the totals).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Sums {
    cdr_count: i64,
    voice_seconds: i64,
    data_bytes: i64,
    messages: i64,
    provider_cost_micros: i64,
    rated_cost_micros: i64,
    unrated_count: i64,
}

impl Sums {
    fn add(&mut self, other: &Sums) {
        self.cdr_count += other.cdr_count;
        self.voice_seconds += other.voice_seconds;
        self.data_bytes += other.data_bytes;
        self.messages += other.messages;
        self.provider_cost_micros += other.provider_cost_micros;
        self.rated_cost_micros += other.rated_cost_micros;
        self.unrated_count += other.unrated_count;
    }
}

/// One totals line: subscription, kind, zone and its figures.
struct Line {
    subscription: String,
    kind: &'static str,
    zone: &'static str,
    sums: Sums,
}

/// Where one calculation's time went (logged; `totals-bench` prints it).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct TotalsTimings {
    /// Reading the cycle: the GROUP BY (standard), or the stored input, its
    /// check against the table and the COPY of what changed (rate plan).
    pub read_seconds: f64,
    /// Where the rate-plan method's CDRs came from.
    pub input: InputSource,
    /// Sorting and rating in memory (rate plan only).
    pub rate_seconds: f64,
    /// Storing the cycle's input again, when it changed (rate plan only).
    pub store_input_seconds: f64,
    /// Writing totals, lines and rating, and the commit.
    pub write_seconds: f64,
}

/// Calculates and stores the totals of one customer's cycle.
pub async fn calculate_totals(
    pool: &PgPool,
    customer_id: i64,
    cycle: NaiveDate,
) -> Result<CycleTotals, TotalsError> {
    calculate_totals_timed(pool, customer_id, cycle)
        .await
        .map(|(totals, _)| totals)
}

/// [`calculate_totals`], also saying where the time went.
pub async fn calculate_totals_timed(
    pool: &PgPool,
    customer_id: i64,
    cycle: NaiveDate,
) -> Result<(CycleTotals, TotalsTimings), TotalsError> {
    let mut timings = TotalsTimings::default();
    let customer = BillingCustomer::load(pool, customer_id, cycle).await?;
    let (start, end) = cycle_bounds(cycle, customer.zone);

    let mut tx = pool.begin().await?;
    // Two calculations of the same cycle (two imports at once) run one after
    // the other, and each reads the CDRs only once it holds the lock, so the
    // one that writes last also read last.
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
        .bind(format!("totals:{customer_id}:{cycle}"))
        .execute(&mut *tx)
        .await?;
    let started = Instant::now();
    let (lines, rating) = match &customer.plan {
        None => (
            standard_lines(&mut tx, customer_id, start, end).await?,
            None,
        ),
        Some((_, plan)) => {
            let input = cycle_input::load(pool, &mut tx, customer_id, cycle, (start, end)).await?;
            timings.read_seconds = started.elapsed().as_secs_f64();
            timings.input = input.source;
            let rated = Instant::now();
            let order = input.rows.consumption_order();
            let (lines, rating) = rate_rows(plan, &input.rows, &order)?;
            timings.rate_seconds = rated.elapsed().as_secs_f64();
            let stored = Instant::now();
            cycle_input::store(
                &mut tx,
                customer_id,
                cycle,
                (start, end),
                &input.rows,
                &order,
                &input.store,
            )
            .await?;
            timings.store_input_seconds = stored.elapsed().as_secs_f64();
            (lines, Some(rating))
        }
    };
    if rating.is_none() {
        timings.read_seconds = started.elapsed().as_secs_f64();
    }
    let written = Instant::now();
    let mut total = Sums::default();
    for line in &lines {
        total.add(&line.sums);
    }
    let method = if customer.plan.is_some() {
        "rate_plan"
    } else {
        "standard"
    };

    // Deleting the totals also deletes their lines and the cycle's rating
    // (ON DELETE CASCADE), so nothing of an earlier calculation survives,
    // also when the customer changed method since.
    sqlx::query("DELETE FROM totals WHERE customer_id = $1 AND cycle = $2")
        .bind(customer_id)
        .bind(cycle)
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "INSERT INTO totals (customer_id, cycle, method, rate_plan_id, cdr_count, voice_seconds, data_bytes, messages,
                             provider_cost_micros, rated_cost_micros, unrated_count)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
    )
    .bind(customer_id)
    .bind(cycle)
    .bind(method)
    .bind(&customer.plan_id)
    .bind(total.cdr_count)
    .bind(total.voice_seconds)
    .bind(total.data_bytes)
    .bind(total.messages)
    .bind(total.provider_cost_micros)
    .bind(total.rated_cost_micros)
    .bind(total.unrated_count)
    .execute(&mut *tx)
    .await?;
    write_lines(&mut tx, customer_id, cycle, &lines).await?;
    if let (Some(rating), Some((document, _))) = (&rating, &customer.plan) {
        write_rating(
            &mut tx,
            customer_id,
            cycle,
            customer.plan_id.as_deref().unwrap_or_default(),
            document,
            rating,
        )
        .await?;
    }
    tx.commit().await?;
    timings.write_seconds = written.elapsed().as_secs_f64();
    tracing::info!(
        customer_id,
        %cycle,
        method,
        cdrs = total.cdr_count,
        input = ?timings.input,
        read_s = timings.read_seconds,
        rate_s = timings.rate_seconds,
        write_s = timings.write_seconds,
        "totals calculated"
    );
    let totals = CycleTotals {
        customer_id,
        cycle,
        method,
        rate_plan_id: customer.plan_id,
        cdr_count: total.cdr_count,
        voice_seconds: total.voice_seconds,
        data_bytes: total.data_bytes,
        messages: total.messages,
        provider_cost_micros: total.provider_cost_micros,
        rated_cost_micros: total.rated_cost_micros,
        unrated_count: total.unrated_count,
    };
    Ok((totals, timings))
}

/// Subscription, kind, zone, count and the sums of seconds, bytes, units
/// and provider cost.
type GroupRow = (String, String, String, i64, i64, i64, i64, i64);

/// The standard method's lines, grouped by the database: the rated cost of
/// every CDR is its provider cost, and nothing else needs a CDR of its own.
async fn standard_lines(
    tx: &mut PgConnection,
    customer_id: i64,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
) -> Result<Vec<Line>, TotalsError> {
    let rows: Vec<GroupRow> = sqlx::query_as(
        "SELECT subscription, kind, roaming_zone, count(*), sum(duration_seconds)::bigint,
                sum(volume_bytes)::bigint, sum(units)::bigint, sum(provider_cost_micros)::bigint
         FROM call_detail_record
         WHERE customer_id = $1 AND started_at >= $2 AND started_at < $3
         GROUP BY subscription, kind, roaming_zone",
    )
    .bind(customer_id)
    .bind(start)
    .bind(end)
    .fetch_all(&mut *tx)
    .await?;
    rows.into_iter()
        .map(|(subscription, kind, zone, count, seconds, bytes, units, cost)| {
            let (Some(kind), Some(zone)) =
                (parse_kind(kind.as_bytes()), parse_zone(zone.as_bytes()))
            else {
                return Err(TotalsError::Read(format!(
                    "subscription {subscription} has CDRs of kind '{kind}' in zone '{zone}', which billing does not know"
                )));
            };
            Ok(Line {
                subscription,
                kind: kind.as_str(),
                zone: zone.as_str(),
                sums: Sums {
                    cdr_count: count,
                    voice_seconds: if kind == Kind::Voice { seconds } else { 0 },
                    data_bytes: if kind == Kind::Data { bytes } else { 0 },
                    messages: if matches!(kind, Kind::Sms | Kind::Mms) {
                        units
                    } else {
                        0
                    },
                    provider_cost_micros: cost,
                    rated_cost_micros: cost,
                    unrated_count: 0,
                },
            })
        })
        .collect()
}

async fn write_lines(
    tx: &mut PgConnection,
    customer_id: i64,
    cycle: NaiveDate,
    lines: &[Line],
) -> Result<(), TotalsError> {
    let column = |f: fn(&Sums) -> i64| lines.iter().map(|l| f(&l.sums)).collect::<Vec<i64>>();
    sqlx::query(
        "INSERT INTO totals_line (customer_id, cycle, subscription, kind, roaming_zone, cdr_count, voice_seconds,
                                  data_bytes, messages, provider_cost_micros, rated_cost_micros, unrated_count)
         SELECT $1, $2, * FROM UNNEST($3::text[], $4::text[], $5::text[], $6::bigint[], $7::bigint[], $8::bigint[],
                                      $9::bigint[], $10::bigint[], $11::bigint[], $12::bigint[])",
    )
    .bind(customer_id)
    .bind(cycle)
    .bind(lines.iter().map(|l| l.subscription.clone()).collect::<Vec<_>>())
    .bind(lines.iter().map(|l| l.kind).collect::<Vec<_>>())
    .bind(lines.iter().map(|l| l.zone).collect::<Vec<_>>())
    .bind(column(|s| s.cdr_count))
    .bind(column(|s| s.voice_seconds))
    .bind(column(|s| s.data_bytes))
    .bind(column(|s| s.messages))
    .bind(column(|s| s.provider_cost_micros))
    .bind(column(|s| s.rated_cost_micros))
    .bind(column(|s| s.unrated_count))
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// How each CDR of a cycle was priced, in consumption order, and the CDRs
/// that more than one bundle covered.
#[derive(Debug, Default)]
struct Rating {
    pricings: Pricings,
    split_position: Vec<i32>,
    split_bundle: Vec<i32>,
    split_covered: Vec<i64>,
}

fn index_i32(index: Option<usize>) -> i32 {
    index.and_then(|i| i32::try_from(i).ok()).unwrap_or(-1)
}

fn quantity_i64(quantity: u64) -> i64 {
    i64::try_from(quantity).unwrap_or(i64::MAX)
}

/// Rates the cycle's CDRs in consumption `order` and sums the lines.
fn rate_rows(
    plan: &RatePlan,
    cycle: &CycleRows,
    order: &[u32],
) -> Result<(Vec<Line>, Rating), TotalsError> {
    let rows = &cycle.rows;
    if i32::try_from(rows.len()).is_err() {
        return Err(TotalsError::Read(format!(
            "the cycle has {} CDRs, more than one rating can hold (2^31)",
            rows.len()
        )));
    }
    let n = rows.len();
    let mut rating = Rating {
        pricings: Pricings::with_capacity(n),
        ..Rating::default()
    };
    let stored = &mut rating.pricings;
    // Lines in a dense table: subscription x kind x zone.
    const KINDS: usize = 5;
    const ZONES: usize = 3;
    let mut sums = vec![Sums::default(); cycle.subscriptions.len() * KINDS * ZONES];
    let kind_index = |k: Kind| match k {
        Kind::Voice => 0,
        Kind::Sms => 1,
        Kind::Mms => 2,
        Kind::Data => 3,
        Kind::Service => 4,
    };
    let zone_index = |z: Zone| match z {
        Zone::Home => 0,
        Zone::Eu => 1,
        Zone::World => 2,
    };
    let usage = |index: u32| {
        let row = &rows[index as usize];
        Usage {
            subscription: row.subscription as usize,
            kind: row.kind,
            zone: row.zone,
            destination: cycle.text(row.destination),
            duration_seconds: row.duration_seconds,
            volume_bytes: row.volume_bytes,
            units: row.units,
            provider_cost_micros: row.provider_cost_micros,
        }
    };
    let mut rater = Rater::new(plan);
    // Finding each CDR's rate does not depend on the others: done on two
    // threads, it takes about half the rating off the one walk in
    // consumption order that bundles need.
    let prepared: Vec<Prepared> = {
        let rater = &rater;
        let prepare = |part: &[u32]| -> Vec<Prepared> {
            part.iter().map(|&i| rater.prepare(&usage(i))).collect()
        };
        let (first, second) = order.split_at(order.len() / 2);
        std::thread::scope(|scope| {
            let other = scope.spawn(|| prepare(second));
            let mut all = prepare(first);
            all.extend(other.join().unwrap_or_else(|_| prepare(second)));
            all
        })
    };
    for (position, (&index, prepared)) in order.iter().zip(prepared).enumerate() {
        let row = &rows[index as usize];
        let pricing = rater.rate_prepared(&usage(index), prepared);
        stored.cdr_id.push(row.id);
        stored.rated_cost_micros.push(pricing.rated_cost_micros);
        stored.rate.push(index_i32(pricing.rate));
        stored.bundle.push(index_i32(pricing.bundle));
        stored
            .billed_quantity
            .push(quantity_i64(pricing.billed_quantity));
        stored
            .covered_quantity
            .push(quantity_i64(pricing.covered_quantity));
        let shares = rater.shares();
        if shares.iter().filter(|s| s.covered > 0).count() > 1 {
            for share in shares.iter().filter(|s| s.covered > 0) {
                rating.split_position.push(position as i32);
                rating.split_bundle.push(index_i32(Some(share.bundle)));
                rating.split_covered.push(quantity_i64(share.covered));
            }
        }
        let line = &mut sums[(row.subscription as usize * KINDS + kind_index(row.kind)) * ZONES
            + zone_index(row.zone)];
        line.cdr_count += 1;
        match row.kind {
            Kind::Voice => line.voice_seconds += i64::from(row.duration_seconds),
            Kind::Data => line.data_bytes += quantity_i64(row.volume_bytes),
            Kind::Sms | Kind::Mms => line.messages += i64::from(row.units),
            Kind::Service => {}
        }
        line.provider_cost_micros += row.provider_cost_micros;
        line.rated_cost_micros += pricing.rated_cost_micros;
        line.unrated_count += i64::from(pricing.unrated);
    }

    const ALL_KINDS: [Kind; KINDS] = [Kind::Voice, Kind::Sms, Kind::Mms, Kind::Data, Kind::Service];
    const ALL_ZONES: [Zone; ZONES] = [Zone::Home, Zone::Eu, Zone::World];
    let mut lines = Vec::new();
    for (index, line) in sums.iter().enumerate() {
        if line.cdr_count == 0 {
            continue;
        }
        let subscription = index / (KINDS * ZONES);
        lines.push(Line {
            subscription: cycle.subscriptions[subscription].clone(),
            kind: ALL_KINDS[index / ZONES % KINDS].as_str(),
            zone: ALL_ZONES[index % ZONES].as_str(),
            sums: *line,
        });
    }
    Ok((lines, rating))
}

async fn write_rating(
    tx: &mut PgConnection,
    customer_id: i64,
    cycle: NaiveDate,
    plan_id: &str,
    plan: &serde_json::Value,
    rating: &Rating,
) -> Result<(), TotalsError> {
    sqlx::query(
        "INSERT INTO cycle_rating (customer_id, cycle, rate_plan_id, plan, cdr_count, split_position, split_bundle,
                                   split_covered)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(customer_id)
    .bind(cycle)
    .bind(plan_id)
    .bind(plan)
    .bind(rating.pricings.len() as i64)
    .bind(&rating.split_position)
    .bind(&rating.split_bundle)
    .bind(&rating.split_covered)
    .execute(&mut *tx)
    .await?;
    pricings::write(tx, customer_id, cycle, &rating.pricings).await?;
    Ok(())
}
