//! The stores `store-bench` measures against: persistent databases
//! `tem_bench_store_<size>` at the project's migrations, filled by
//! `fill.sql` through psql, and reused by later runs while they hold what
//! was asked (a fill of 100M CDRs takes about half an hour on 2 cores).

use std::io::Write;
use std::process::{Command, Stdio};
use std::str::FromStr;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use chrono::NaiveDate;
use serde::Serialize;
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection};

use crate::db::BenchDb;

/// The fill, run by psql with the variables rows, months and customers.
const FILL_SQL: &str = include_str!("fill.sql");

/// Bytes a CDR takes with its indexes in a filled store (261 MB for 1M
/// CDRs; 300 leaves room for the WAL and the index builds' sort files).
pub const BYTES_PER_CDR: u64 = 300;

/// What a store holds, as the report shows it.
#[derive(Debug, Clone, Serialize)]
pub struct StoreInfo {
    pub database: String,
    pub rows: u64,
    pub months: u32,
    pub first_month: NaiveDate,
    pub last_month: NaiveDate,
    pub customers: u32,
    pub subscriptions: u32,
    /// Partitions of call_detail_record, the default one included.
    pub partitions: i64,
    pub size_bytes: i64,
    /// The fill's time, from the database's own record of it.
    pub fill_seconds: f64,
    /// The fill's load, index build and VACUUM (ANALYZE), seconds.
    pub fill_phases: (f64, f64, f64),
    /// Whether this run found the store already filled.
    pub reused: bool,
}

/// The store's name for a size: tem_bench_store_100m for 100,000,000.
pub fn store_name(rows: u64) -> String {
    if rows.is_multiple_of(1_000_000) {
        format!("tem_bench_store_{}m", rows / 1_000_000)
    } else {
        format!("tem_bench_store_{rows}")
    }
}

fn progress(step: &str) {
    eprintln!("[store-bench] {step}");
}

/// The store of `rows` CDRs over `months` months: reused when a finished
/// fill of that size is there (migrated to the current migrations), else
/// made afresh. Refuses a fill that would leave less than `keep_free`
/// bytes on the disk of PostgreSQL's data.
pub async fn ensure(
    server_url: &str,
    rows: u64,
    months: u32,
    customers: u32,
    keep_free: u64,
) -> Result<(BenchDb, StoreInfo)> {
    let name = store_name(rows);
    let server = PgConnectOptions::from_str(server_url)
        .with_context(|| format!("{server_url:?} is not a PostgreSQL URL"))?;
    let mut admin = server
        .connect()
        .await
        .with_context(|| format!("connect to PostgreSQL at {server_url}"))?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(&name)
            .fetch_one(&mut admin)
            .await
            .context("look for the store")?;
    if exists {
        let db = BenchDb::open(server_url, &name).await?;
        match finished_fill(&db).await? {
            Some((r, m, c)) if (r, m, c) == (rows as i64, months as i32, customers as i32) => {
                tem_shared::adapters::postgres::MIGRATOR
                    .run(&db.pool)
                    .await
                    .with_context(|| format!("bring {name} to the current migrations"))?;
                progress(&format!(
                    "{name}: reused ({rows} CDRs over {months} months)"
                ));
                let info = info(&db, true).await?;
                admin.close().await.ok();
                return Ok((db, info));
            }
            found => {
                progress(&format!(
                    "{name}: holds {found:?} (rows, months, customers) or an unfinished fill, not ({rows}, {months}, {customers}): made afresh"
                ));
                db.pool.close().await;
                sqlx::query(&format!("DROP DATABASE {name} WITH (FORCE)"))
                    .execute(&mut admin)
                    .await
                    .with_context(|| format!("drop {name}"))?;
            }
        }
    }
    check_disk(&mut admin, rows, keep_free).await?;
    admin.close().await.ok();
    let db = BenchDb::create_named(server_url, &name).await?;
    progress(&format!(
        "{name}: created and migrated; filling with {rows} CDRs over {months} months (psql, progress below)"
    ));
    let started = Instant::now();
    fill(&db.url, rows, months, customers)?;
    progress(&format!(
        "{name}: filled in {:.0} s",
        started.elapsed().as_secs_f64()
    ));
    let info = info(&db, false).await?;
    Ok((db, info))
}

/// (rows, months, customers) of a finished fill, None when the database
/// holds no finished fill.
async fn finished_fill(db: &BenchDb) -> Result<Option<(i64, i32, i32)>> {
    let has_record: bool = sqlx::query_scalar("SELECT to_regclass('store_bench_fill') IS NOT NULL")
        .fetch_one(&db.pool)
        .await
        .context("look for the fill's record")?;
    if !has_record {
        return Ok(None);
    }
    sqlx::query_as(
        "SELECT rows, months, customers FROM store_bench_fill WHERE finished_at IS NOT NULL",
    )
    .fetch_optional(&db.pool)
    .await
    .context("read the fill's record")
}

/// The free space on the disk of the server's data directory (this
/// machine's: the benchmark runs beside its server), against the fill's
/// estimated size plus what has to stay free.
async fn check_disk(admin: &mut sqlx::PgConnection, rows: u64, keep_free: u64) -> Result<()> {
    let data_directory: String = sqlx::query_scalar("SHOW data_directory")
        .fetch_one(&mut *admin)
        .await
        .context("ask the server for its data directory (needs superuser)")?;
    let free = free_bytes(&data_directory)
        .with_context(|| format!("the free space of {data_directory} (is the server local?)"))?;
    let needed = rows * BYTES_PER_CDR;
    if free < needed + keep_free {
        let fits = free.saturating_sub(keep_free) / BYTES_PER_CDR / 10_000_000 * 10_000_000;
        bail!(
            "{rows} CDRs need about {} GB and {} GB must stay free, but {data_directory} has {} GB free: \
             use --rows {fits} (the largest multiple of 10M that fits)",
            needed / 1_000_000_000,
            keep_free / 1_000_000_000,
            free / 1_000_000_000
        );
    }
    Ok(())
}

pub fn free_bytes(path: &str) -> Result<u64> {
    let c_path = std::ffi::CString::new(path).context("a path without NUL")?;
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: statvfs writes into the struct we own and reads the path.
    let rc = unsafe { libc::statvfs(c_path.as_ptr(), &mut stat) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context("statvfs");
    }
    Ok(stat.f_bavail * stat.f_frsize)
}

/// Runs fill.sql through psql on `url`; its notices (a line per month)
/// show on stderr.
fn fill(url: &str, rows: u64, months: u32, customers: u32) -> Result<()> {
    let mut child = Command::new("psql")
        .arg(url)
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1"])
        .arg("-v")
        .arg(format!("rows={rows}"))
        .arg("-v")
        .arg(format!("months={months}"))
        .arg("-v")
        .arg(format!("customers={customers}"))
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .context("run psql (is the PostgreSQL client installed?)")?;
    child
        .stdin
        .take()
        .context("psql's stdin")?
        .write_all(FILL_SQL.as_bytes())
        .context("send fill.sql to psql")?;
    let status = child.wait().context("wait for psql")?;
    if !status.success() {
        bail!("the fill failed ({status}); psql's error is above");
    }
    Ok(())
}

/// The fill's record (table store_bench_fill), with its phases' times.
#[derive(sqlx::FromRow)]
struct FillRecord {
    rows: i64,
    months: i32,
    first_month: NaiveDate,
    customers: i32,
    subscriptions: i32,
    total: f64,
    load: f64,
    index: f64,
    vacuum: f64,
}

async fn info(db: &BenchDb, reused: bool) -> Result<StoreInfo> {
    let record: FillRecord = sqlx::query_as(
        "SELECT rows, months, first_month, customers, subscriptions,
                extract(epoch FROM finished_at - started_at)::float8 AS total,
                extract(epoch FROM loaded_at - started_at)::float8 AS load,
                extract(epoch FROM indexed_at - loaded_at)::float8 AS index,
                extract(epoch FROM finished_at - indexed_at)::float8 AS vacuum
         FROM store_bench_fill",
    )
    .fetch_one(&db.pool)
    .await
    .context("read the fill's record")?;
    let partitions: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_partition_tree('call_detail_record') WHERE isleaf",
    )
    .fetch_one(&db.pool)
    .await
    .context("count the partitions")?;
    let size_bytes: i64 = sqlx::query_scalar("SELECT pg_database_size(current_database())")
        .fetch_one(&db.pool)
        .await
        .context("the database's size")?;
    let last_month = record
        .first_month
        .checked_add_months(chrono::Months::new(record.months.max(1) as u32 - 1))
        .context("the last month")?;
    Ok(StoreInfo {
        database: db.name.clone(),
        rows: record.rows as u64,
        months: record.months as u32,
        first_month: record.first_month,
        last_month,
        customers: record.customers as u32,
        subscriptions: record.subscriptions as u32,
        partitions,
        size_bytes,
        fill_seconds: record.total,
        fill_phases: (record.load, record.index, record.vacuum),
        reused,
    })
}
