//! The tick benchmark's data: customers whose cycles are some 20 days old,
//! with their subscriptions on every carrier, one sync profile per carrier
//! pointing at the simulator, and the CDRs already in each cycle, loaded
//! with COPY, marked as the importer marks them, and rated once (totals,
//! history, insights and a draft invoice per cycle) before the tick.

use std::io::Write;

use anyhow::{ensure, Context, Result};
use chrono::{DateTime, Datelike, Duration, NaiveDate, TimeZone, Utc};
use chrono_tz::Tz;
use futures::{StreamExt, TryStreamExt};
use serde::Serialize;
use sqlx::postgres::PgPoolCopyExt;
use sqlx::PgPool;
use tem_shared::billing::calculation::{Calculation, Recalculation};
use tem_shared::import::load::COLUMNS;

use crate::generate::Rng;
use crate::totals::data::Usage;

pub const PROVIDERS: [&str; 7] = provider_sim::PROVIDERS;
pub const ZONE: Tz = chrono_tz::Europe::Amsterdam;
pub const PLAN_ID: &str = "tick-business";
/// How long after a cycle ends its invoice stays a draft (the template's
/// `InvoiceGraceDays` default).
pub const GRACE_DAYS: i64 = 5;
const FLUSH_BYTES: usize = 1 << 20;

/// What the benchmark asks of the data.
#[derive(Debug, Clone, Serialize)]
pub struct Spec {
    pub customers: u32,
    /// Every n-th customer (the first included) is on the rate plan.
    pub rate_plan_every: u32,
    /// Subscriptions of each customer at each carrier.
    pub subscriptions_per_provider: u32,
    pub cdrs_per_customer: u64,
    /// The CDRs of the synced day, over all carriers.
    pub day_cdrs: u64,
    /// Days between a cycle's start and the synced day.
    pub cycle_age_days: i64,
    /// Cycle ages vary by up to this many days either side (start days vary).
    pub cycle_age_spread: i64,
    /// The day sync-manager syncs (yesterday, UTC).
    pub period: NaiveDate,
    pub seed: u64,
    /// Customer cycles rated at once while seeding.
    pub parallel: usize,
}

impl Spec {
    /// Subscriber numbers per carrier: the simulator's `subscribers`.
    pub fn subscribers(&self) -> usize {
        (self.customers * self.subscriptions_per_provider) as usize
    }

    /// The synced day's rows per carrier: `day_cdrs` split evenly, the
    /// first carriers taking the remainder.
    pub fn rows_per_provider(&self) -> Vec<(&'static str, usize)> {
        let n = PROVIDERS.len() as u64;
        PROVIDERS
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let extra = u64::from((i as u64) < self.day_cdrs % n);
                (*p, (self.day_cdrs / n + extra) as usize)
            })
            .collect()
    }

    /// Customer `index`'s cycle: its start day and local start date, some
    /// `cycle_age_days` (plus or minus the spread) before the period. A
    /// start day past 28 (not allowed) moves the start back to the 28th.
    pub fn cycle_of(&self, index: u32) -> (u32, NaiveDate) {
        let width = 2 * self.cycle_age_spread + 1;
        let age = self.cycle_age_days + (i64::from(index) % width) - self.cycle_age_spread;
        let mut start = self.period - Duration::days(age.max(1));
        while start.day() > 28 {
            start -= Duration::days(1);
        }
        (start.day(), start)
    }

    /// CDRs of the synced day per customer index, as the simulator writes
    /// them: carrier row `i` is subscriber `i % subscribers`, and
    /// subscriber `s` belongs to customer `s % customers`.
    pub fn day_cdrs_per_customer(&self) -> Vec<u64> {
        let mut counts = vec![0u64; self.customers as usize];
        let subscribers = self.subscribers();
        for (_, rows) in self.rows_per_provider() {
            for i in 0..rows {
                counts[(i % subscribers) % self.customers as usize] += 1;
            }
        }
        counts
    }
}

/// One seeded customer and its cycle.
#[derive(Debug, Clone, Serialize)]
pub struct Customer {
    pub id: i64,
    pub index: u32,
    pub on_plan: bool,
    pub start_day: u32,
    pub cycle: NaiveDate,
    /// The CDRs in the cycle before the tick.
    pub seeded_cdrs: u64,
    /// The synced day's CDRs of the customer.
    pub day_cdrs: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Seeded {
    pub customers: Vec<Customer>,
    pub profile_ids: Vec<i64>,
    pub subscriptions: u64,
    pub load_seconds: f64,
    pub vacuum_seconds: f64,
    pub rate_seconds: f64,
    /// The first calculations: each must have been a full one.
    pub full_calculations: usize,
    /// Marks left after the first calculations (0 expected).
    pub marks_left: i64,
}

fn utc_midnight(day: NaiveDate) -> Result<DateTime<Utc>> {
    ZONE.from_local_datetime(&day.and_hms_opt(0, 0, 0).context("midnight")?)
        .earliest()
        .map(|t| t.with_timezone(&Utc))
        .with_context(|| format!("local midnight of {day} in {ZONE}"))
}

/// The rate plan of a third of the customers: the totals benchmark's plan
/// (per-prefix voice rates, zone rates, SMS/MMS, data, and per-subscription
/// and pooled bundles scaled so they run out during the cycle).
pub fn plan(spec: &Spec) -> serde_json::Value {
    let subscriptions = spec.subscriptions_per_provider * PROVIDERS.len() as u32;
    crate::totals::data::rate_plan(PLAN_ID, spec.cdrs_per_customer, subscriptions, 0)
}

/// Customers, subscriptions, the rate plan and the sync profiles (whose
/// credentials secrets the caller stores).
pub async fn catalog(
    pool: &PgPool,
    spec: &Spec,
    simulator_base: &str,
    secret_of: impl Fn(&str) -> String,
) -> Result<(Vec<Customer>, Vec<i64>, u64)> {
    ensure!(
        spec.subscribers() <= provider_sim::MAX_SUBSCRIBERS,
        "{} customers x {} subscriptions per carrier is more than the simulator's {} numbers",
        spec.customers,
        spec.subscriptions_per_provider,
        provider_sim::MAX_SUBSCRIBERS
    );
    let plan = plan(spec);
    sqlx::query("INSERT INTO rate_plan (id, name, plan) VALUES ($1, $2, $3)")
        .bind(PLAN_ID)
        .bind("Tick business plan")
        .bind(&plan)
        .execute(pool)
        .await
        .context("store the rate plan")?;
    let day_cdrs = spec.day_cdrs_per_customer();
    let mut customers = Vec::new();
    for index in 0..spec.customers {
        let on_plan = index % spec.rate_plan_every.max(1) == 0;
        let (start_day, cycle) = spec.cycle_of(index);
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO customer (name, code, billing_cycle_start_day, time_zone, rate_plan_id)
             VALUES ($1, $2, $3, $4, $5) RETURNING id",
        )
        .bind(format!("Tick customer {index:03}"))
        .bind(format!("tick-{index:03}"))
        .bind(start_day as i16)
        .bind(ZONE.name())
        .bind(on_plan.then_some(PLAN_ID))
        .fetch_one(pool)
        .await
        .context("insert a customer")?;
        customers.push(Customer {
            id,
            index,
            on_plan,
            start_day,
            cycle,
            seeded_cdrs: spec.cdrs_per_customer,
            day_cdrs: day_cdrs[index as usize],
        });
    }
    // Subscriber s of every carrier belongs to customer s % customers.
    let (mut ids, mut providers, mut numbers) = (Vec::new(), Vec::new(), Vec::new());
    for provider in PROVIDERS {
        for s in 0..spec.subscribers() {
            ids.push(customers[s % customers.len()].id);
            providers.push(provider.to_string());
            numbers.push(provider_sim::subscriber_number(provider, s));
        }
    }
    sqlx::query(
        "INSERT INTO subscription (customer_id, provider, identifier)
         SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[])",
    )
    .bind(&ids)
    .bind(&providers)
    .bind(&numbers)
    .execute(pool)
    .await
    .context("insert the subscriptions")?;
    let mut profile_ids = Vec::new();
    for provider in PROVIDERS {
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO sync_profile (name, provider, base_url, credentials_secret, first_period)
             VALUES ($1, $2, $3, $4, $5) RETURNING id",
        )
        .bind(format!("tick {provider}"))
        .bind(provider)
        .bind(format!("{simulator_base}/{provider}"))
        .bind(secret_of(provider))
        .bind(spec.period)
        .fetch_one(pool)
        .await
        .context("insert a sync profile")?;
        profile_ids.push(id);
    }
    sqlx::query("ANALYZE customer, subscription, sync_profile, rate_plan")
        .execute(pool)
        .await?;
    Ok((customers, profile_ids, ids.len() as u64))
}

/// The CDRs already in every cycle: `cdrs_per_customer` each, spread
/// evenly over the cycle's days before the period (in time order, over the
/// customer's subscriptions at every carrier), with `streams` COPYs at
/// once; each cycle then marked as changed from its start, as the importer
/// marks what it loads. Ends with `VACUUM (ANALYZE)`, as a table in use has
/// its statistics and visibility map. Returns (load, vacuum) seconds.
pub async fn cdrs(
    pool: &PgPool,
    spec: &Spec,
    customers: &[Customer],
    streams: usize,
) -> Result<(f64, f64)> {
    // The months of the cycles (the two before the period's and its own)
    // have their partitions, as the daily maintenance would have made them.
    for table in ["call_detail_record", "rating_chunk"] {
        sqlx::query(
            "SELECT tem_create_month_partition($1::regclass, m::date)
             FROM generate_series(date_trunc('month', $2::date - 62), $2::date, interval '1 month') AS m",
        )
        .bind(table)
        .bind(spec.period)
        .execute(pool)
        .await
        .with_context(|| format!("create the partitions of {table}"))?;
    }
    let started = std::time::Instant::now();
    let period_start = utc_midnight(spec.period)?;
    let chunks: Vec<Vec<Customer>> = customers
        .chunks(customers.len().div_ceil(streams.max(1)).max(1))
        .map(<[Customer]>::to_vec)
        .collect();
    futures::stream::iter(chunks)
        .map(|chunk| async move {
            let mut copy = pool
                .copy_in_raw(&format!("COPY call_detail_record ({COLUMNS}) FROM STDIN"))
                .await
                .context("start a COPY of CDRs")?;
            let mut buf = Vec::with_capacity(FLUSH_BYTES + 1024);
            for customer in &chunk {
                let mut rows = Rows::new(spec, customer);
                let start = utc_midnight(customer.cycle)?;
                for i in 0..spec.cdrs_per_customer {
                    let at = spread(
                        start,
                        period_start,
                        i,
                        spec.cdrs_per_customer,
                        &mut rows.rng,
                    );
                    rows.row(&mut buf, at);
                    if buf.len() >= FLUSH_BYTES {
                        copy.send(buf.as_slice())
                            .await
                            .context("send CDRs to COPY")?;
                        buf.clear();
                    }
                }
            }
            if !buf.is_empty() {
                copy.send(buf.as_slice())
                    .await
                    .context("send CDRs to COPY")?;
            }
            copy.finish().await.context("finish the COPY of the CDRs")?;
            anyhow::Ok(())
        })
        .buffer_unordered(streams.max(1))
        .try_collect::<Vec<()>>()
        .await?;
    let (ids, cycles, froms): (Vec<i64>, Vec<NaiveDate>, Vec<DateTime<Utc>>) = {
        let mut ids = Vec::new();
        let mut cycles = Vec::new();
        let mut froms = Vec::new();
        for c in customers {
            ids.push(c.id);
            cycles.push(c.cycle);
            froms.push(utc_midnight(c.cycle)?);
        }
        (ids, cycles, froms)
    };
    sqlx::query(
        "INSERT INTO cycle_change (customer_id, cycle, changed_from, source)
         SELECT *, 'import' FROM unnest($1::bigint[], $2::date[], $3::timestamptz[])",
    )
    .bind(&ids)
    .bind(&cycles)
    .bind(&froms)
    .execute(pool)
    .await
    .context("mark the loaded cycles")?;
    let load = started.elapsed().as_secs_f64();
    let vacuum = std::time::Instant::now();
    sqlx::query("VACUUM (ANALYZE) call_detail_record")
        .execute(pool)
        .await
        .context("vacuum")?;
    Ok((load, vacuum.elapsed().as_secs_f64()))
}

/// Rates every cycle once, as an import's chain would: CalculateTotals
/// (the first calculation of a cycle is a full one), BackupTotals,
/// BillingInsight and GenerateInvoice, `parallel` cycles at once. Returns
/// the seconds and how many calculations were full ones.
pub async fn rate(pool: &PgPool, customers: &[Customer], parallel: usize) -> Result<(f64, usize)> {
    let started = std::time::Instant::now();
    let done = std::sync::atomic::AtomicUsize::new(0);
    let fulls: Vec<bool> = futures::stream::iter(customers)
        .map(|c| {
            let done = &done;
            async move {
                let (_, report) = tem_shared::adapters::totals::calculate_totals_with(
                    pool,
                    c.id,
                    c.cycle,
                    Recalculation::Incremental,
                )
                .await
                .with_context(|| format!("rate customer {} cycle {}", c.id, c.cycle))?;
                tem_shared::adapters::billing::history::backup_totals(
                    pool, c.id, c.cycle, "import",
                )
                .await
                .context("back up the totals")?;
                tem_shared::adapters::billing::insight::detect_insights(pool, c.id, c.cycle)
                    .await
                    .context("insights")?;
                tem_shared::adapters::billing::invoice::generate_invoice(
                    pool,
                    c.id,
                    c.cycle,
                    Utc::now(),
                    Duration::days(GRACE_DAYS),
                )
                .await
                .context("the draft invoice")?;
                let n = done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                if n.is_multiple_of(20) {
                    eprintln!("    rated {n} of {} cycles", customers.len());
                }
                anyhow::Ok(report.calculation == Calculation::Full)
            }
        })
        .buffer_unordered(parallel.max(1))
        .try_collect()
        .await?;
    Ok((
        started.elapsed().as_secs_f64(),
        fulls.iter().filter(|f| **f).count(),
    ))
}

/// Row `i` of `n` evenly over `[start, end)`, plus up to 2 s of jitter
/// (CDRs share a second now and then), never past `end`.
fn spread(
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    i: u64,
    n: u64,
    rng: &mut Rng,
) -> DateTime<Utc> {
    let span = (end - start).num_seconds().max(1) as u64;
    let offset = (i as u128 * span as u128 / n.max(1) as u128) as u64 + rng.below(3);
    start + Duration::seconds(offset.min(span - 1) as i64)
}

/// COPY text lines of one customer's CDRs, over its subscriptions at every
/// carrier, with the totals benchmark's mix of kinds, zones and sizes.
struct Rows {
    rng: Rng,
    customer_id: i64,
    /// (provider, number) of each subscription of the customer.
    lines: Vec<(&'static str, String)>,
    seq: u64,
    last_second: Option<(i64, String)>,
}

impl Rows {
    fn new(spec: &Spec, customer: &Customer) -> Self {
        let mut lines = Vec::new();
        for provider in PROVIDERS {
            for j in 0..spec.subscriptions_per_provider {
                let s = (j * spec.customers + customer.index) as usize;
                lines.push((provider, provider_sim::subscriber_number(provider, s)));
            }
        }
        Self {
            rng: Rng::new(spec.seed ^ (u64::from(customer.index) << 32)),
            customer_id: customer.id,
            lines,
            seq: u64::from(customer.index) * 1_000_000_000,
            last_second: None,
        }
    }

    fn row(&mut self, out: &mut Vec<u8>, at: DateTime<Utc>) {
        self.seq += 1;
        let second = at.timestamp();
        if self.last_second.as_ref().is_none_or(|(s, _)| *s != second) {
            self.last_second = Some((second, at.format("%Y-%m-%d %H:%M:%S+00").to_string()));
        }
        let started_at = self.last_second.as_ref().map_or("", |(_, t)| t.as_str());
        let rng = &mut self.rng;
        let (provider, number) = &self.lines[rng.below(self.lines.len() as u64) as usize];
        let usage = Usage::draw(rng);
        // One "import file" per day, as daily carrier exports.
        let file = second / 86_400;
        let _ = write!(
            out,
            "{provider}\tTICK{:013}\t{number}\t{}\t{started_at}\t{}\toutgoing\t",
            self.seq, self.customer_id, usage.kind
        );
        usage.write(out);
        let _ = writeln!(out, "\t{file}\t{}", self.seq % 2_000_000_000);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> Spec {
        Spec {
            customers: 200,
            rate_plan_every: 3,
            subscriptions_per_provider: 5,
            cdrs_per_customer: 100_000,
            day_cdrs: 50_000,
            cycle_age_days: 20,
            cycle_age_spread: 2,
            period: "2026-12-06".parse().unwrap(),
            seed: 1,
            parallel: 2,
        }
    }

    #[test]
    fn the_day_s_cdrs_are_split_over_the_carriers_and_all_land_on_customers() {
        let spec = spec();
        let rows = spec.rows_per_provider();
        assert_eq!(rows.iter().map(|r| r.1 as u64).sum::<u64>(), 50_000);
        assert_eq!(rows[0].1, 7_143);
        assert_eq!(rows[6].1, 7_142);
        let per_customer = spec.day_cdrs_per_customer();
        assert_eq!(per_customer.iter().sum::<u64>(), 50_000);
        assert!(per_customer.iter().all(|n| (245..=255).contains(n)));
    }

    #[test]
    fn cycles_are_about_twenty_days_old_with_varied_start_days() {
        let spec = spec();
        let mut days = std::collections::BTreeSet::new();
        for i in 0..spec.customers {
            let (day, start) = spec.cycle_of(i);
            let age = (spec.period - start).num_days();
            assert!((18..=22).contains(&age), "age {age}");
            assert!(day <= 28);
            assert_eq!(
                tem_shared::cdr::cycle_of(utc_midnight(spec.period).unwrap(), day, ZONE),
                start
            );
            days.insert(day);
        }
        assert_eq!(days.len(), 5);
    }

    #[test]
    fn a_start_day_past_the_28th_moves_back_to_the_28th() {
        let mut spec = spec();
        spec.period = "2026-12-20".parse().unwrap();
        spec.cycle_age_spread = 0;
        // 2026-11-30 is not a start day; the cycle starts on the 28th.
        assert_eq!(spec.cycle_of(0), (28, "2026-11-28".parse().unwrap()));
    }
}
