//! The totals benchmark's data: one customer with `rows` CDRs in the cycle
//! starting 2025-03-01 (Europe/Amsterdam) over its `subscriptions`,
//! interleaved in time with another customer's CDRs, after the same
//! customer's CDRs of the previous cycle, so the cycle has to be found
//! among other rows. Loaded with COPY, in time order like carrier exports,
//! one import file per day. Deterministic for a seed.
//!
//! The cycle's last local day is left empty: the benchmark's "import at the
//! cycle's end" fills it, as the daily import of the last day would.

use std::io::Write;

use anyhow::{Context, Result};
use chrono::{DateTime, Duration, NaiveDate, TimeZone, Utc};
use serde_json::{json, Value};
use sqlx::postgres::PgPoolCopyExt;
use tem_shared::import::load::COLUMNS;

use crate::db::BenchDb;
use crate::generate::Rng;

/// The benchmarked cycle (start day 1, Europe/Amsterdam).
pub const CYCLE: &str = "2025-03-01";
/// 2025-03-01 00:00 CET, 2025-03-31 00:00 CEST (the last local day's
/// start) and 2025-04-01 00:00 CEST, in UTC.
const CYCLE_START: (i32, u32, u32, u32) = (2025, 2, 28, 23);
const LAST_DAY_START: (i32, u32, u32, u32) = (2025, 3, 30, 22);
const CYCLE_END: (i32, u32, u32, u32) = (2025, 3, 31, 22);
/// 2025-03-16 00:00 CET: the day of the late file, mid-cycle.
const LATE_DAY_START: (i32, u32, u32, u32) = (2025, 3, 15, 23);
const FLUSH_BYTES: usize = 1 << 20;
/// The plan's bundles are sized for this many CDRs per subscription and
/// per cycle (scaled to the dataset), so they run out during the cycle.
const BUNDLE_CDRS_PER_SUBSCRIPTION: f64 = 20_000.0;
const BUNDLE_CDRS_PER_POOL: f64 = 1_000_000.0;

#[derive(Debug, Clone, serde::Serialize)]
pub struct Dataset {
    pub customer_id: i64,
    pub other_customer_id: i64,
    pub cycle: NaiveDate,
    /// CDRs of the customer in the cycle.
    pub rows: u64,
    /// The other customer's CDRs in the same weeks.
    pub other_customer_rows: u64,
    /// The other customer's subscriptions.
    pub other_subscriptions: u32,
    /// The other customer is on a plan of its own, sized like the
    /// customer's, as the reference of memory use at its size.
    pub other_on_plan: bool,
    /// The customer's CDRs of the previous cycle.
    pub previous_cycle_rows: u64,
    pub subscriptions: u32,
    pub rate_plan_id: String,
    pub other_rate_plan_id: String,
    /// When the generation and load took, seconds (VACUUM included).
    pub load_seconds: f64,
    #[serde(skip)]
    pub plan: Value,
}

/// What the benchmark asks of the data.
pub struct Spec {
    pub rows: u64,
    pub other_rows: u64,
    pub subscriptions: u32,
    /// CDRs of the other customer instead of half of `other_rows`, on a
    /// plan of its own (the memory reference); 0: none.
    pub reference_rows: u64,
    pub seed: u64,
}

fn utc((y, m, d, h): (i32, u32, u32, u32)) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(y, m, d, h, 0, 0)
        .single()
        .expect("a valid UTC time")
}

/// The cycle's bounds in UTC.
pub fn cycle_span() -> (DateTime<Utc>, DateTime<Utc>) {
    (utc(CYCLE_START), utc(CYCLE_END))
}

/// The cycle's last local day, which the dataset leaves to the import at
/// the cycle's end.
pub fn last_day() -> (DateTime<Utc>, DateTime<Utc>) {
    (utc(LAST_DAY_START), utc(CYCLE_END))
}

/// The local day 2025-03-16, of the late file mid-cycle.
pub fn late_day() -> (DateTime<Utc>, DateTime<Utc>) {
    let start = utc(LATE_DAY_START);
    (start, start + Duration::days(1))
}

/// The rate plan: per-prefix voice rates with three increment schemes,
/// zone rates, SMS/MMS, data per MiB, a service rate, and per-subscription
/// and pooled bundles for voice, SMS and data. Their allowances scale with
/// the CDRs per subscription (per-subscription bundles) and per cycle
/// (pooled ones), so that at any size they run out during the cycle and
/// both covered and charged CDRs occur. `variant` 1 charges 5% more for
/// home calls: the benchmark's plan change.
pub fn rate_plan(id: &str, rows: u64, subscriptions: u32, variant: u32) -> Value {
    let per_line = rows as f64 / f64::from(subscriptions.max(1)) / BUNDLE_CDRS_PER_SUBSCRIPTION;
    let pooled = rows as f64 / BUNDLE_CDRS_PER_POOL;
    let scale = |allowance: f64, factor: f64| ((allowance * factor).round() as u64).max(1);
    json!({
        "id": id,
        "name": "Benchmark business plan",
        "unit_bytes": 1_048_576,
        "monthly_fee_micros": 5_000_000,
        "rates": [
            {"id": "voice-home", "kind": "voice", "zone": "home", "prefix": "",
             "connect_fee_micros": 0, "price_per_minute_micros": if variant == 1 { 126_000 } else { 120_000 },
             "first_increment_s": 60, "increment_s": 1},
            {"id": "voice-nl-mobile", "kind": "voice", "zone": "home", "prefix": "316",
             "connect_fee_micros": 1_500, "price_per_minute_micros": 150_000, "first_increment_s": 30, "increment_s": 30},
            {"id": "voice-nl-fixed", "kind": "voice", "prefix": "3120",
             "price_per_minute_micros": 90_000, "first_increment_s": 1, "increment_s": 1},
            {"id": "voice-eu", "kind": "voice", "zone": "eu", "prefix": "",
             "connect_fee_micros": 5_000, "price_per_minute_micros": 250_000, "first_increment_s": 60, "increment_s": 60},
            {"id": "voice-us", "kind": "voice", "prefix": "1",
             "price_per_minute_micros": 600_000, "first_increment_s": 60, "increment_s": 1},
            {"id": "sms-home", "kind": "sms", "zone": "home", "prefix": "", "price_per_message_micros": 90_000},
            {"id": "sms-eu", "kind": "sms", "zone": "eu", "prefix": "", "price_per_message_micros": 120_000},
            {"id": "mms", "kind": "mms", "prefix": "", "price_per_message_micros": 250_000},
            {"id": "data-home", "kind": "data", "zone": "home", "prefix": "",
             "increment_bytes": 1024, "price_per_unit_micros": 8_000},
            {"id": "data-eu", "kind": "data", "zone": "eu", "prefix": "",
             "increment_bytes": 10_240, "price_per_unit_micros": 50_000},
            {"id": "service", "kind": "service", "prefix": ""}
        ],
        "bundles": [
            {"id": "minutes-per-line", "kinds": ["voice"], "zones": ["home"],
             "allowance": scale(600_000.0, per_line), "scope": "per_subscription"},
            {"id": "minutes-pool", "kinds": ["voice"], "zones": ["home", "eu"],
             "allowance": scale(20_000_000.0, pooled), "scope": "pooled"},
            {"id": "sms-pool", "kinds": ["sms", "mms"], "allowance": scale(100_000.0, pooled), "scope": "pooled"},
            {"id": "data-per-line", "kinds": ["data"], "zones": ["home"],
             "allowance": scale(32_212_254_720.0, per_line), "scope": "per_subscription"},
            {"id": "data-eu-pool", "kinds": ["data"], "zones": ["eu"],
             "allowance": scale(10_737_418_240.0, pooled), "scope": "pooled"}
        ]
    })
}

/// Stores `plan` as the rate plan `id` (its document replaced when it
/// exists: a plan change).
pub async fn store_plan(db: &BenchDb, plan: &Value) -> Result<()> {
    sqlx::query(
        "INSERT INTO rate_plan (id, name, plan) VALUES ($1, $2, $3)
         ON CONFLICT (id) DO UPDATE SET plan = EXCLUDED.plan, updated_at = now()",
    )
    .bind(plan["id"].as_str().unwrap_or_default())
    .bind(plan["name"].as_str().unwrap_or_default())
    .bind(plan)
    .execute(&db.pool)
    .await
    .context("store the rate plan")?;
    Ok(())
}

/// Creates the customers, the plans and the CDRs; returns what was made.
pub async fn create(db: &BenchDb, spec: &Spec) -> Result<Dataset> {
    let started = std::time::Instant::now();
    let subscriptions = spec.subscriptions.max(1);
    let plan = rate_plan("bench-business", spec.rows, subscriptions, 0);
    store_plan(db, &plan).await?;
    let other_on_plan = spec.reference_rows > 0;
    let other_customer_rows = if other_on_plan {
        spec.reference_rows
    } else {
        spec.other_rows / 2
    };
    let other_subscriptions = if other_on_plan { subscriptions } else { 200 };
    let other_plan = rate_plan(
        "bench-reference",
        other_customer_rows,
        other_subscriptions,
        0,
    );
    store_plan(db, &other_plan).await?;
    let customer_id: i64 = sqlx::query_scalar(
        "INSERT INTO customer (name, billing_cycle_start_day, time_zone) VALUES ('Benchmark BV', 1, 'Europe/Amsterdam') RETURNING id",
    )
    .fetch_one(&db.pool)
    .await
    .context("insert the customer")?;
    let other_customer_id: i64 = sqlx::query_scalar(
        "INSERT INTO customer (name, billing_cycle_start_day, time_zone, rate_plan_id) VALUES ('Other BV', 1, 'Europe/Amsterdam', $1) RETURNING id",
    )
    .bind(other_on_plan.then_some("bench-reference"))
    .fetch_one(&db.pool)
    .await
    .context("insert the other customer")?;
    // Autovacuum would start on the freshly loaded table during the first
    // measurements; the load ends with a VACUUM of its own instead.
    // The months of the data have their partitions, as the daily
    // maintenance would have made them.
    crate::db::monthly_partitions(
        &db.pool,
        "call_detail_record",
        &["2025-01-01", "2025-02-01", "2025-03-01", "2025-04-01"],
    )
    .await?;
    crate::db::monthly_partitions(&db.pool, "rating_chunk", &["2025-03-01"]).await?;
    crate::db::autovacuum_off(&db.pool, "call_detail_record").await?;

    let previous_cycle_rows = spec.other_rows - spec.other_rows / 2;
    let mut generator = CdrGenerator::new(
        Rng::new(spec.seed),
        0,
        (customer_id, subscriptions),
        (other_customer_id, other_subscriptions),
        None,
    );
    let mut copy = copy_cdrs(db).await?;
    let mut buf = Vec::with_capacity(FLUSH_BYTES + 1024);

    // The previous cycle (February), then March up to its last day with
    // the other customer's CDRs interleaved evenly (over the whole month:
    // only the benchmarked customer's last day waits for its import).
    let previous_start = utc((2025, 1, 31, 23));
    let (start, end) = cycle_span();
    let (last_day_start, _) = last_day();
    for i in 0..previous_cycle_rows {
        let at = spread(
            previous_start,
            start,
            i,
            previous_cycle_rows,
            &mut generator.rng,
        );
        generator.row(&mut buf, at, false);
        flush(&mut copy, &mut buf, false).await?;
    }
    // The other customer's CDRs over the whole cycle, ours up to its last
    // day: merged in time order.
    let (mut ours, mut theirs) = (0u64, 0u64);
    let (mut next_ours, mut next_theirs) = (None, None);
    while ours < spec.rows || theirs < other_customer_rows {
        if next_ours.is_none() && ours < spec.rows {
            next_ours = Some(spread(
                start,
                last_day_start,
                ours,
                spec.rows,
                &mut generator.rng,
            ));
        }
        if next_theirs.is_none() && theirs < other_customer_rows {
            next_theirs = Some(spread(
                start,
                end,
                theirs,
                other_customer_rows,
                &mut generator.rng,
            ));
        }
        let other = match (next_ours, next_theirs) {
            (Some(a), Some(b)) => b < a,
            (None, Some(_)) => true,
            _ => false,
        };
        let at = if other {
            theirs += 1;
            next_theirs.take()
        } else {
            ours += 1;
            next_ours.take()
        }
        .context("a next CDR")?;
        generator.row(&mut buf, at, other);
        flush(&mut copy, &mut buf, false).await?;
    }
    flush(&mut copy, &mut buf, true).await?;
    copy.finish().await.context("finish the COPY of the CDRs")?;

    // Hint bits, visibility map and planner statistics, as a table that
    // has been in use for a while has them; both sides of the comparison
    // read the same table.
    sqlx::query("VACUUM (ANALYZE) call_detail_record")
        .execute(&db.pool)
        .await
        .context("vacuum")?;
    let in_cycle = count_in(db, customer_id, (start, end)).await?;
    anyhow::ensure!(
        in_cycle as u64 == spec.rows,
        "generated {} CDRs for the cycle but {in_cycle} are in it",
        spec.rows
    );
    Ok(Dataset {
        customer_id,
        other_customer_id,
        cycle: CYCLE.parse().context("cycle date")?,
        rows: spec.rows,
        other_customer_rows,
        other_subscriptions,
        other_on_plan,
        previous_cycle_rows,
        subscriptions,
        rate_plan_id: plan["id"].as_str().unwrap_or_default().to_string(),
        other_rate_plan_id: "bench-reference".into(),
        load_seconds: started.elapsed().as_secs_f64(),
        plan,
    })
}

/// The customer's CDRs in `[start, end)`.
pub async fn count_in(
    db: &BenchDb,
    customer_id: i64,
    (start, end): (DateTime<Utc>, DateTime<Utc>),
) -> Result<i64> {
    sqlx::query_scalar(
        "SELECT count(*) FROM call_detail_record WHERE customer_id = $1 AND started_at >= $2 AND started_at < $3",
    )
    .bind(customer_id)
    .bind(start)
    .bind(end)
    .fetch_one(&db.pool)
    .await
    .context("count the CDRs")
}

/// CDRs one import file added.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Added {
    pub file: i64,
    pub rows: u64,
    /// The earliest `started_at` of the file: where its change begins.
    pub first_started_at: DateTime<Utc>,
}

/// Adds one more import file of `rows` CDRs of the customer, spread over
/// `[from, to)`, as import file `file`; their external ids cannot collide
/// with the dataset's or another file's.
pub async fn add_file(
    db: &BenchDb,
    dataset: &Dataset,
    rows: u64,
    file: i64,
    (from, to): (DateTime<Utc>, DateTime<Utc>),
    seed: u64,
) -> Result<Added> {
    let mut generator = CdrGenerator::new(
        Rng::new(seed ^ file as u64),
        5_000_000_000 + file as u64 * 100_000_000,
        (dataset.customer_id, dataset.subscriptions),
        (dataset.other_customer_id, dataset.other_subscriptions),
        Some(file),
    );
    let mut copy = copy_cdrs(db).await?;
    let mut buf = Vec::with_capacity(FLUSH_BYTES + 1024);
    let mut first = None;
    for i in 0..rows {
        let at = spread(from, to, i, rows, &mut generator.rng);
        first = Some(first.map_or(at, |f: DateTime<Utc>| f.min(at)));
        generator.row(&mut buf, at, false);
        flush(&mut copy, &mut buf, false).await?;
    }
    flush(&mut copy, &mut buf, true).await?;
    copy.finish()
        .await
        .context("finish the COPY of the added file")?;
    Ok(Added {
        file,
        rows,
        first_started_at: first.context("an added file has at least one CDR")?,
    })
}

/// Removes an added import file's CDRs again.
pub async fn remove_file(db: &BenchDb, file: i64) -> Result<()> {
    sqlx::query("DELETE FROM call_detail_record WHERE import_file_id = $1")
        .bind(file)
        .execute(&db.pool)
        .await
        .context("remove the added file")?;
    Ok(())
}

/// Row `i` of `n` evenly over `[start, end)`, plus up to 2 s of jitter
/// (so CDRs share a second now and then, and ties are broken by provider
/// and external id), never past `end`.
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

type Copy = sqlx::postgres::PgCopyIn<sqlx::pool::PoolConnection<sqlx::Postgres>>;

/// A COPY of generated lines into `call_detail_record`, in the importer's
/// column order.
async fn copy_cdrs(db: &BenchDb) -> Result<Copy> {
    db.pool
        .copy_in_raw(&format!("COPY call_detail_record ({COLUMNS}) FROM STDIN"))
        .await
        .context("start a COPY of CDRs")
}

async fn flush(copy: &mut Copy, buf: &mut Vec<u8>, last: bool) -> Result<()> {
    if buf.len() >= FLUSH_BYTES || (last && !buf.is_empty()) {
        copy.send(buf.as_slice())
            .await
            .context("send CDRs to COPY")?;
        buf.clear();
    }
    Ok(())
}

struct CdrGenerator {
    rng: Rng,
    seq: u64,
    /// The customer and its subscriptions.
    ours: (i64, u32),
    other: (i64, u32),
    /// The import file of every row; `None`: one file per day, as a daily
    /// carrier export.
    file: Option<i64>,
    /// The last second formatted, and its text: CDRs come in time order,
    /// several per second at 10M a month.
    last_second: Option<(i64, String)>,
}

impl CdrGenerator {
    fn new(rng: Rng, seq: u64, ours: (i64, u32), other: (i64, u32), file: Option<i64>) -> Self {
        Self {
            rng,
            seq,
            ours,
            other,
            file,
            last_second: None,
        }
    }

    /// Appends one COPY text line.
    fn row(&mut self, out: &mut Vec<u8>, at: DateTime<Utc>, other: bool) {
        self.seq += 1;
        let seconds_since_epoch = at.timestamp();
        if self
            .last_second
            .as_ref()
            .is_none_or(|(s, _)| *s != seconds_since_epoch)
        {
            self.last_second = Some((
                seconds_since_epoch,
                at.format("%Y-%m-%d %H:%M:%S+00").to_string(),
            ));
        }
        let started_at = self.last_second.as_ref().map_or("", |(_, t)| t.as_str());
        let rng = &mut self.rng;
        let provider = if rng.percent(90) { "routit" } else { "kpn" };
        let ((customer, subscriptions), prefix) = if other {
            (self.other, 5)
        } else {
            (self.ours, 1)
        };
        let subscription = rng.below(u64::from(subscriptions));
        let usage = Usage::draw(rng);
        let file = self.file.unwrap_or(seconds_since_epoch / 86_400);
        let _ = write!(
            out,
            "{provider}\t{}{:010}\t+316{prefix}{subscription:07}\t{customer}\t{started_at}\t{}\toutgoing\t",
            if provider == "kpn" { "K" } else { "RT" },
            self.seq,
            usage.kind,
        );
        usage.write(out);
        let _ = writeln!(out, "\t{file}\t{}", self.seq % 2_000_000_000);
    }
}

/// One CDR's usage in the benchmarks' mix: 45% voice (5% of them 0 s, up
/// to 75 min), 20% SMS, 2% MMS, 30% data (up to 500 MB), 3% services; 85%
/// home, 12% EU, 3% world; destinations in five prefixes and short codes.
/// Drawn in a fixed order, so a seed gives the same rows.
pub(crate) struct Usage {
    pub(crate) kind: &'static str,
    zone: &'static str,
    n: u64,
    destination_choice: u64,
    service: usize,
    seconds: u64,
    bytes: u64,
    units: u64,
    cost: u64,
}

impl Usage {
    pub(crate) fn draw(rng: &mut Rng) -> Self {
        let kind = match rng.below(100) {
            0..=44 => "voice",
            45..=64 => "sms",
            65..=66 => "mms",
            67..=96 => "data",
            _ => "service",
        };
        let zone = match rng.below(100) {
            0..=84 => "home",
            85..=96 => "eu",
            _ => "world",
        };
        let n = rng.below(100_000_000);
        let destination_choice = rng.below(6);
        let service = rng.below(3) as usize;
        let (seconds, bytes, units, cost) = match kind {
            "voice" => {
                let s = match rng.below(100) {
                    0..=4 => 0,
                    5..=44 => 1 + rng.below(60),
                    45..=94 => 1 + rng.below(900),
                    _ => 900 + rng.below(3600),
                };
                (s, 0, 0, s * 250)
            }
            "data" => {
                let b = match rng.below(100) {
                    0..=59 => rng.below(2_000_000),
                    60..=94 => rng.below(50_000_000),
                    _ => rng.below(500_000_000),
                };
                (0, b, 0, b / 100_000)
            }
            "service" => (0, 0, 1, 500_000 + rng.below(9) * 250_000),
            _ => (0, 0, 1, 75_000),
        };
        Self {
            kind,
            zone,
            n,
            destination_choice,
            service,
            seconds,
            bytes,
            units,
            cost,
        }
    }

    /// The COPY columns from the destination to the provider cost, tab
    /// separated.
    pub(crate) fn write(&self, out: &mut Vec<u8>) {
        let Self {
            kind,
            zone,
            n,
            destination_choice,
            service,
            seconds,
            bytes,
            units,
            cost,
        } = *self;
        let _ = match kind {
            "data" => Ok(()),
            "service" => out.write_all(["1244", "Spotify", "0900-8844"][service].as_bytes()),
            _ => match destination_choice {
                0 | 1 => write!(out, "+316{n:08}"),
                2 => write!(out, "+3120{:07}", n % 10_000_000),
                3 => write!(out, "+324{n:08}"),
                4 => write!(out, "+1212{:07}", n % 10_000_000),
                _ => write!(out, "+4915{n:08}"),
            },
        };
        let _ = write!(out, "\t{zone}\t{seconds}\t{bytes}\t{units}\t{cost}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowance(plan: &Value, bundle: &str) -> u64 {
        plan["bundles"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|b| b["id"] == bundle)
            .and_then(|b| b["allowance"].as_u64())
            .unwrap_or(0)
    }

    #[test]
    fn bundles_scale_with_the_cdrs_per_subscription_and_per_cycle() {
        // The sizes the plan was tuned at: 1M CDRs over 50 subscriptions.
        let tuned = rate_plan("p", 1_000_000, 50, 0);
        assert_eq!(allowance(&tuned, "minutes-per-line"), 600_000);
        assert_eq!(allowance(&tuned, "minutes-pool"), 20_000_000);
        // 100 times the subscriptions: a hundredth per line, the pool alike.
        let wide = rate_plan("p", 1_000_000, 5_000, 0);
        assert_eq!(allowance(&wide, "minutes-per-line"), 6_000);
        assert_eq!(allowance(&wide, "minutes-pool"), 20_000_000);
        // Ten times the CDRs: ten times both.
        let big = rate_plan("p", 10_000_000, 5_000, 0);
        assert_eq!(allowance(&big, "minutes-per-line"), 60_000);
        assert_eq!(allowance(&big, "data-eu-pool"), 107_374_182_400);
    }

    #[test]
    fn the_changed_plan_differs_only_in_the_price_of_home_calls() {
        let before = rate_plan("p", 1_000_000, 5_000, 0);
        let after = rate_plan("p", 1_000_000, 5_000, 1);
        assert_ne!(before, after);
        let mut restored = after.clone();
        restored["rates"][0]["price_per_minute_micros"] = json!(120_000);
        assert_eq!(before, restored);
    }

    #[test]
    fn the_dataset_leaves_the_last_day_to_the_import_at_the_cycle_s_end() {
        let (start, end) = cycle_span();
        let (last_start, last_end) = last_day();
        assert_eq!(last_end, end);
        assert_eq!(last_end - last_start, Duration::days(1));
        let (late_start, late_end) = late_day();
        assert!(start < late_start && late_end < last_start);
    }
}
