//! CalculateTotals against PostgreSQL: one customer's CDRs of one billing
//! cycle, priced by the standard method (provider cost) or the customer's
//! rate plan, written as totals with lines per subscription, kind and zone.
//! Recalculating replaces the cycle's rows, so it is idempotent.

use std::collections::BTreeMap;

use chrono::{DateTime, Months, NaiveDate, NaiveTime, Utc};
use chrono_tz::Tz;
use serde::Serialize;
use sqlx::{PgPool, Row};

use crate::billing::rating::{rate_cycle, standard, RatePlan, RatedCdr, RatingCdr};
use crate::import::format::{Kind, Zone};
use crate::import::normalize::local_to_utc;

#[derive(Debug, thiserror::Error)]
pub enum TotalsError {
    #[error("customer {0} does not exist")]
    UnknownCustomer(i64),
    #[error("{cycle} is not a cycle start of customer {customer} (cycles start on day {day})")]
    NotACycle {
        customer: i64,
        cycle: NaiveDate,
        day: u32,
    },
    #[error("rate plan {0} is not valid: {1}; fix it with temctl apply")]
    BadPlan(String, String),
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

#[derive(Default)]
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
    fn add(&mut self, cdr: &RatingCdr, rated: &RatedCdr) {
        self.cdr_count += 1;
        match cdr.kind {
            Kind::Voice => self.voice_seconds += i64::from(cdr.duration_seconds),
            Kind::Data => self.data_bytes += cdr.volume_bytes as i64,
            Kind::Sms | Kind::Mms => self.messages += i64::from(cdr.units),
            Kind::Service => {}
        }
        self.provider_cost_micros += cdr.provider_cost_micros;
        self.rated_cost_micros += rated.rated_cost_micros;
        self.unrated_count += i64::from(rated.unrated);
    }
}

fn parse_kind(s: &str) -> Kind {
    match s {
        "voice" => Kind::Voice,
        "sms" => Kind::Sms,
        "mms" => Kind::Mms,
        "data" => Kind::Data,
        _ => Kind::Service,
    }
}

fn parse_zone(s: &str) -> Zone {
    match s {
        "eu" => Zone::Eu,
        "world" => Zone::World,
        _ => Zone::Home,
    }
}

/// Calculates and stores the totals of one customer's cycle.
pub async fn calculate_totals(
    pool: &PgPool,
    customer_id: i64,
    cycle: NaiveDate,
) -> Result<CycleTotals, TotalsError> {
    let customer = sqlx::query(
        "SELECT c.billing_cycle_start_day, c.time_zone, c.rate_plan_id, p.plan
         FROM customer c LEFT JOIN rate_plan p ON p.id = c.rate_plan_id WHERE c.id = $1",
    )
    .bind(customer_id)
    .fetch_optional(pool)
    .await?
    .ok_or(TotalsError::UnknownCustomer(customer_id))?;
    let day: i16 = customer.try_get("billing_cycle_start_day")?;
    if chrono::Datelike::day(&cycle) != day as u32 {
        return Err(TotalsError::NotACycle {
            customer: customer_id,
            cycle,
            day: day as u32,
        });
    }
    let zone: Tz = customer
        .try_get::<String, _>("time_zone")?
        .parse()
        .unwrap_or(chrono_tz::Europe::Amsterdam);
    let plan_id: Option<String> = customer.try_get("rate_plan_id")?;
    let plan: Option<RatePlan> = match customer.try_get::<Option<serde_json::Value>, _>("plan")? {
        Some(document) => Some(serde_json::from_value(document).map_err(|e| {
            TotalsError::BadPlan(plan_id.clone().unwrap_or_default(), e.to_string())
        })?),
        None => None,
    };
    let (start, end) = cycle_bounds(cycle, zone);
    let rows = sqlx::query(
        "SELECT provider, external_id, subscription, started_at, kind, roaming_zone, destination,
                duration_seconds, volume_bytes, units, provider_cost_micros
         FROM call_detail_record
         WHERE customer_id = $1 AND started_at >= $2 AND started_at < $3",
    )
    .bind(customer_id)
    .bind(start)
    .bind(end)
    .fetch_all(pool)
    .await?;
    let cdrs: Vec<RatingCdr> = rows
        .iter()
        .enumerate()
        .map(|(i, r)| {
            Ok(RatingCdr {
                id: i as i64,
                provider: r.try_get("provider")?,
                external_id: r.try_get("external_id")?,
                subscription: r.try_get("subscription")?,
                started_at: r.try_get("started_at")?,
                kind: parse_kind(r.try_get::<&str, _>("kind")?),
                zone: parse_zone(r.try_get::<&str, _>("roaming_zone")?),
                destination: r.try_get("destination")?,
                duration_seconds: r.try_get::<i32, _>("duration_seconds")? as u32,
                volume_bytes: r.try_get::<i64, _>("volume_bytes")? as u64,
                units: r.try_get::<i32, _>("units")? as u32,
                provider_cost_micros: r.try_get("provider_cost_micros")?,
            })
        })
        .collect::<Result<_, sqlx::Error>>()?;
    let rated = match &plan {
        Some(plan) => rate_cycle(plan, &cdrs),
        None => standard(&cdrs),
    };

    let mut total = Sums::default();
    let mut lines: BTreeMap<(String, &'static str, &'static str), Sums> = BTreeMap::new();
    for rating in &rated {
        let cdr = &cdrs[rating.cdr_id as usize];
        total.add(cdr, rating);
        lines
            .entry((
                cdr.subscription.clone(),
                cdr.kind.as_str(),
                cdr.zone.as_str(),
            ))
            .or_default()
            .add(cdr, rating);
    }
    let method = if plan.is_some() {
        "rate_plan"
    } else {
        "standard"
    };

    let mut tx = pool.begin().await?;
    // Two calculations of the same cycle (two imports at once) write one
    // after the other; the later one read the later data.
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
        .bind(format!("totals:{customer_id}:{cycle}"))
        .execute(&mut *tx)
        .await?;
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
    .bind(&plan_id)
    .bind(total.cdr_count)
    .bind(total.voice_seconds)
    .bind(total.data_bytes)
    .bind(total.messages)
    .bind(total.provider_cost_micros)
    .bind(total.rated_cost_micros)
    .bind(total.unrated_count)
    .execute(&mut *tx)
    .await?;
    for ((subscription, kind, zone), sums) in &lines {
        sqlx::query(
            "INSERT INTO totals_line (customer_id, cycle, subscription, kind, roaming_zone, cdr_count, voice_seconds,
                                      data_bytes, messages, provider_cost_micros, rated_cost_micros, unrated_count)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
        )
        .bind(customer_id)
        .bind(cycle)
        .bind(subscription)
        .bind(*kind)
        .bind(*zone)
        .bind(sums.cdr_count)
        .bind(sums.voice_seconds)
        .bind(sums.data_bytes)
        .bind(sums.messages)
        .bind(sums.provider_cost_micros)
        .bind(sums.rated_cost_micros)
        .bind(sums.unrated_count)
        .execute(&mut *tx)
        .await?;
    }
    sqlx::query("DELETE FROM cdr_rating WHERE customer_id = $1 AND cycle = $2")
        .bind(customer_id)
        .bind(cycle)
        .execute(&mut *tx)
        .await?;
    if plan.is_some() {
        for chunk in rated.chunks(5_000) {
            let cdr = |r: &RatedCdr| &cdrs[r.cdr_id as usize];
            sqlx::query(
                "INSERT INTO cdr_rating (provider, external_id, customer_id, cycle, rated_cost_micros, rate_id, bundle_id,
                                         billed_quantity, covered_quantity, unrated, explanation)
                 SELECT p, e, $3, $4, c, r, b, q, v, u, x
                 FROM UNNEST($1::text[], $2::text[], $5::bigint[], $6::text[], $7::text[], $8::bigint[], $9::bigint[],
                             $10::bool[], $11::text[]) AS t(p, e, c, r, b, q, v, u, x)",
            )
            .bind(chunk.iter().map(|r| cdr(r).provider.clone()).collect::<Vec<_>>())
            .bind(chunk.iter().map(|r| cdr(r).external_id.clone()).collect::<Vec<_>>())
            .bind(customer_id)
            .bind(cycle)
            .bind(chunk.iter().map(|r| r.rated_cost_micros).collect::<Vec<_>>())
            .bind(chunk.iter().map(|r| r.rate_id.clone()).collect::<Vec<_>>())
            .bind(chunk.iter().map(|r| r.bundle_id.clone()).collect::<Vec<_>>())
            .bind(chunk.iter().map(|r| r.billed_quantity as i64).collect::<Vec<_>>())
            .bind(chunk.iter().map(|r| r.covered_quantity as i64).collect::<Vec<_>>())
            .bind(chunk.iter().map(|r| r.unrated).collect::<Vec<_>>())
            .bind(chunk.iter().map(|r| r.explanation.clone()).collect::<Vec<_>>())
            .execute(&mut *tx)
            .await?;
        }
    }
    tx.commit().await?;
    Ok(CycleTotals {
        customer_id,
        cycle,
        method,
        rate_plan_id: plan_id,
        cdr_count: total.cdr_count,
        voice_seconds: total.voice_seconds,
        data_bytes: total.data_bytes,
        messages: total.messages,
        provider_cost_micros: total.provider_cost_micros,
        rated_cost_micros: total.rated_cost_micros,
        unrated_count: total.unrated_count,
    })
}
