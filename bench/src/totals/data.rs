//! The totals benchmark's data: one customer with `rows` CDRs in the cycle
//! starting 2025-03-01 (Europe/Amsterdam), interleaved in time with another
//! customer's CDRs, after the same customer's CDRs of the previous cycle, so
//! the cycle has to be found among other rows. Loaded with COPY, in time
//! order like carrier exports. Deterministic for a seed.

use anyhow::{Context, Result};
use chrono::{DateTime, Duration, NaiveDate, TimeZone, Utc};
use serde_json::{json, Value};
use sqlx::postgres::PgPoolCopyExt;
use tem_shared::import::load::COLUMNS;

use crate::db::BenchDb;
use crate::generate::Rng;

/// The benchmarked cycle (start day 1, Europe/Amsterdam).
pub const CYCLE: &str = "2025-03-01";
/// 2025-03-01 00:00 CET and 2025-04-01 00:00 CEST in UTC.
const CYCLE_START: (i32, u32, u32, u32) = (2025, 2, 28, 23);
const CYCLE_END: (i32, u32, u32, u32) = (2025, 3, 31, 22);
const FLUSH_BYTES: usize = 1 << 20;

#[derive(Debug, Clone, serde::Serialize)]
pub struct Dataset {
    pub customer_id: i64,
    pub other_customer_id: i64,
    pub cycle: NaiveDate,
    /// CDRs of the customer in the cycle.
    pub rows: u64,
    /// The other customer's CDRs in the same weeks.
    pub other_customer_rows: u64,
    /// The customer's CDRs of the previous cycle.
    pub previous_cycle_rows: u64,
    pub subscriptions: u32,
    pub rate_plan_id: String,
    #[serde(skip)]
    pub plan: Value,
}

fn utc((y, m, d, h): (i32, u32, u32, u32)) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(y, m, d, h, 0, 0)
        .single()
        .expect("a valid UTC time")
}

/// The rate plan the rate-plan runs use: per-prefix voice rates with three
/// increment schemes, zone rates, SMS/MMS, data per MiB, a service rate, and
/// per-subscription and pooled bundles for voice, SMS and data, which run
/// out during the cycle so that both covered and charged CDRs occur.
pub fn rate_plan() -> Value {
    json!({
        "id": "bench-business",
        "name": "Benchmark business plan",
        "unit_bytes": 1_048_576,
        "monthly_fee_micros": 5_000_000,
        "rates": [
            {"id": "voice-home", "kind": "voice", "zone": "home", "prefix": "",
             "connect_fee_micros": 0, "price_per_minute_micros": 120_000, "first_increment_s": 60, "increment_s": 1},
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
            {"id": "minutes-per-line", "kinds": ["voice"], "zones": ["home"], "allowance": 600_000, "scope": "per_subscription"},
            {"id": "minutes-pool", "kinds": ["voice"], "zones": ["home", "eu"], "allowance": 20_000_000, "scope": "pooled"},
            {"id": "sms-pool", "kinds": ["sms", "mms"], "allowance": 100_000, "scope": "pooled"},
            {"id": "data-per-line", "kinds": ["data"], "zones": ["home"], "allowance": 32_212_254_720_u64, "scope": "per_subscription"},
            {"id": "data-eu-pool", "kinds": ["data"], "zones": ["eu"], "allowance": 10_737_418_240_u64, "scope": "pooled"}
        ]
    })
}

/// Creates the customers, the plan and the CDRs; returns what was made.
pub async fn create(
    db: &BenchDb,
    rows: u64,
    other_rows: u64,
    subscriptions: u32,
    seed: u64,
) -> Result<Dataset> {
    let plan = rate_plan();
    let plan_id = plan["id"].as_str().unwrap_or_default().to_string();
    sqlx::query("INSERT INTO rate_plan (id, name, plan) VALUES ($1, $2, $3)")
        .bind(&plan_id)
        .bind(plan["name"].as_str().unwrap_or_default())
        .bind(&plan)
        .execute(&db.pool)
        .await
        .context("insert the rate plan")?;
    let customer_id: i64 = sqlx::query_scalar(
        "INSERT INTO customer (name, billing_cycle_start_day, time_zone) VALUES ('Benchmark BV', 1, 'Europe/Amsterdam') RETURNING id",
    )
    .fetch_one(&db.pool)
    .await
    .context("insert the customer")?;
    let other_customer_id: i64 = sqlx::query_scalar(
        "INSERT INTO customer (name, billing_cycle_start_day, time_zone) VALUES ('Other BV', 1, 'Europe/Amsterdam') RETURNING id",
    )
    .fetch_one(&db.pool)
    .await
    .context("insert the other customer")?;
    let subscriptions = subscriptions.max(1);

    let other_customer_rows = other_rows / 2;
    let previous_cycle_rows = other_rows - other_customer_rows;
    let mut generator = CdrGenerator {
        rng: Rng::new(seed),
        seq: 0,
        customer_id,
        other_customer_id,
        subscriptions,
        file: None,
    };
    let mut copy = copy_cdrs(db).await?;
    let mut buf = Vec::with_capacity(FLUSH_BYTES + 1024);

    // The previous cycle (February), then March with the other customer's
    // CDRs interleaved evenly.
    let previous_start = utc((2025, 1, 31, 23));
    let start = utc(CYCLE_START);
    let end = utc(CYCLE_END);
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
    let timeline = rows + other_customer_rows;
    let mut acc = 0u64;
    for j in 0..timeline {
        let at = spread(start, end, j, timeline, &mut generator.rng);
        acc += other_customer_rows;
        let other = acc >= timeline;
        if other {
            acc -= timeline;
        }
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
    let in_cycle: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM call_detail_record WHERE customer_id = $1 AND started_at >= $2 AND started_at < $3",
    )
    .bind(customer_id)
    .bind(start)
    .bind(end)
    .fetch_one(&db.pool)
    .await
    .context("count the cycle")?;
    anyhow::ensure!(
        in_cycle as u64 == rows,
        "generated {rows} CDRs for the cycle but {in_cycle} are in it"
    );
    Ok(Dataset {
        customer_id,
        other_customer_id,
        cycle: CYCLE.parse().context("cycle date")?,
        rows,
        other_customer_rows,
        previous_cycle_rows,
        subscriptions,
        rate_plan_id: plan_id,
        plan,
    })
}

/// Adds one more import file of `rows` CDRs of the customer, spread over
/// 2025-03-16 (a late daily export), as import file `file`; their
/// external ids cannot collide with the dataset's.
pub async fn add_file(
    db: &BenchDb,
    dataset: &Dataset,
    rows: u64,
    file: i64,
    seed: u64,
) -> Result<()> {
    let mut generator = CdrGenerator {
        rng: Rng::new(seed ^ file as u64),
        seq: 5_000_000_000 + file as u64 * 10_000_000,
        customer_id: dataset.customer_id,
        other_customer_id: dataset.other_customer_id,
        subscriptions: dataset.subscriptions,
        file: Some(file),
    };
    let mut copy = copy_cdrs(db).await?;
    let mut buf = Vec::with_capacity(FLUSH_BYTES + 1024);
    let day = utc((2025, 3, 15, 23));
    for i in 0..rows {
        let at = spread(day, day + Duration::days(1), i, rows, &mut generator.rng);
        generator.row(&mut buf, at, false);
        flush(&mut copy, &mut buf, false).await?;
    }
    flush(&mut copy, &mut buf, true).await?;
    copy.finish()
        .await
        .context("finish the COPY of the added file")?;
    Ok(())
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

/// A COPY of generated lines into `call_detail_record`, in the importer's
/// column order.
async fn copy_cdrs(
    db: &BenchDb,
) -> Result<sqlx::postgres::PgCopyIn<sqlx::pool::PoolConnection<sqlx::Postgres>>> {
    db.pool
        .copy_in_raw(&format!("COPY call_detail_record ({COLUMNS}) FROM STDIN"))
        .await
        .context("start a COPY of CDRs")
}

async fn flush(
    copy: &mut sqlx::postgres::PgCopyIn<sqlx::pool::PoolConnection<sqlx::Postgres>>,
    buf: &mut Vec<u8>,
    last: bool,
) -> Result<()> {
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
    customer_id: i64,
    other_customer_id: i64,
    subscriptions: u32,
    /// The import file of every row; `None`: one file per day, as a daily
    /// carrier export.
    file: Option<i64>,
}

impl CdrGenerator {
    /// Appends one COPY text line.
    fn row(&mut self, out: &mut Vec<u8>, at: DateTime<Utc>, other: bool) {
        use std::io::Write;
        self.seq += 1;
        let rng = &mut self.rng;
        let provider = if rng.percent(90) { "routit" } else { "kpn" };
        let (customer, subscription) = if other {
            (
                self.other_customer_id,
                format!("+3165{:07}", rng.below(200)),
            )
        } else {
            (
                self.customer_id,
                format!("+3161{:07}", rng.below(u64::from(self.subscriptions))),
            )
        };
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
        let destination = match kind {
            "data" => String::new(),
            "service" => ["1244", "Spotify", "0900-8844"][rng.below(3) as usize].to_string(),
            _ => match rng.below(6) {
                0 | 1 => format!("+316{n:08}"),
                2 => format!("+3120{:07}", n % 10_000_000),
                3 => format!("+324{n:08}"),
                4 => format!("+1212{:07}", n % 10_000_000),
                _ => format!("+4915{n:08}"),
            },
        };
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
        let file = self.file.unwrap_or(at.timestamp() / 86_400);
        let _ = writeln!(
            out,
            "{provider}\t{}{:010}\t{subscription}\t{customer}\t{}\t{kind}\toutgoing\t{destination}\t{zone}\t{seconds}\t{bytes}\t{units}\t{cost}\t{file}\t{}",
            if provider == "kpn" { "K" } else { "RT" },
            self.seq,
            at.format("%Y-%m-%d %H:%M:%S+00"),
            self.seq % 2_000_000_000,
        );
    }
}
