//! `store-bench`: the CDR import and a cycle's totals against a CDR store
//! of 100M CDRs over 24 monthly partitions, each set beside the same work
//! against a store of 1M CDRs, in one run (issue 20: at most 1.2x).
//!
//! The same import file (import-bench's March 2025 routit export) and the
//! same cycle (totals-bench's 1M-CDR rate-plan cycle of March 2025, and
//! its 1% import at the cycle's end) are measured in both stores, in
//! alternating order, best of `--runs`, each in a child process that
//! reports its peak memory. Everything the benchmark adds to a store it
//! removes again, so the stores stay as filled for the next run (and for
//! other measurements on them). See bench/README.md.

pub mod fill;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::db::BenchDb;
use crate::generate;
use crate::measure;
use crate::report::Goal;
use crate::totals::child::{ChildReport, Totals};
use crate::totals::data;
use crate::totals::engine::{self, How, Kind};
use fill::StoreInfo;

/// Issue 20: the work at the store's full size takes at most this many
/// times the same work at 1M.
pub const RATIO_GOAL: f64 = 1.2;

/// The names the benchmark's own customers have in a store, so a run can
/// find and remove what an earlier, killed run left.
const IMPORT_CUSTOMER: &str = "store-bench import BV";
/// data::create's two customers.
const CYCLE_CUSTOMERS: [&str; 2] = ["Benchmark BV", "Other BV"];
/// data::create's rate plans.
const RATE_PLANS: [&str; 2] = ["bench-business", "bench-reference"];
/// The bucket the import child names in its request (`child::import_only`).
const IMPORT_BUCKET: &str = "bench";
/// The months the benchmark writes to: the totals dataset starts with
/// the previous cycle on 2025-01-31 23:00 UTC; the import file is March
/// in Amsterdam time, whose first hour is 2025-02-28 in UTC.
const OWN_ROWS_FROM: &str = "2025-01-31 00:00:00+00";
const OWN_ROWS_TO: &str = "2025-04-01 00:00:00+00";
const IMPORT_FROM: &str = "2025-02-28 00:00:00+00";
const IMPORT_MONTHS: [&str; 2] = ["2025-02-01", "2025-03-01"];
const OWN_MONTHS: [&str; 3] = ["2025-01-01", "2025-02-01", "2025-03-01"];

pub struct Options {
    pub rows: u64,
    pub small_rows: u64,
    pub months: u32,
    pub customers: u32,
    pub import_rows: u64,
    pub import_subscriptions: u32,
    pub cycle_rows: u64,
    pub cycle_subscriptions: u32,
    pub other_rows: u64,
    pub added_rows: u64,
    pub runs: u32,
    pub seed: u64,
    pub database_url: String,
    /// Bytes that must stay free on PostgreSQL's disk after a fill.
    pub keep_free: u64,
    pub skip_import: bool,
    pub skip_totals: bool,
    /// Rewrite the cycle's month in time order after loading the cycle.
    pub interleave: bool,
    pub json_out: Option<PathBuf>,
}

fn progress(step: &str) {
    eprintln!("[store-bench] {step}");
}

/// One timed run in one store.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    pub round: u32,
    pub seconds: f64,
    pub vm_hwm_kb: u64,
    /// /proc/loadavg right before the run.
    pub load_average: String,
}

/// One measurement in both stores.
#[derive(Debug, Clone, Serialize)]
pub struct Pair {
    pub what: String,
    pub small: Vec<Sample>,
    pub big: Vec<Sample>,
    pub small_best: f64,
    pub big_best: f64,
    /// big_best / small_best.
    pub ratio: f64,
    pub small_median: f64,
    pub big_median: f64,
    pub small_peak_rss_mib: f64,
    pub big_peak_rss_mib: f64,
    /// Whether issue 20's goal applies (not to the bare query, which is
    /// shown as the database's own share).
    pub goal: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub small: StoreInfo,
    pub big: StoreInfo,
    pub environment: Vec<(String, String)>,
    pub import_rows: u64,
    pub cycle_rows: u64,
    pub added_rows: u64,
    /// Whether the cycle's CDRs lay among the store's in time order.
    pub interleaved: bool,
    pub runs: u32,
    pub pairs: Vec<Pair>,
    pub checks: Vec<(String, bool)>,
    pub goals: Vec<Goal>,
    pub all_goals_met: bool,
    pub notes: Vec<String>,
}

/// The benchmark's side of one store.
struct Side {
    db: BenchDb,
    info: StoreInfo,
}

pub async fn run(options: Options) -> Result<()> {
    if options.runs == 0 || options.import_rows == 0 || options.cycle_rows == 0 {
        bail!("--runs, --import-rows and --cycle-rows must be positive");
    }
    ensure!(
        options.small_rows < options.rows,
        "--small-rows must be below --rows"
    );
    let started = Instant::now();
    let mut sides = Vec::new();
    for rows in [options.small_rows, options.rows] {
        let (db, info) = fill::ensure(
            &options.database_url,
            rows,
            options.months,
            options.customers,
            options.keep_free,
        )
        .await?;
        sides.push(Side { db, info });
    }
    progress(&format!(
        "stores ready in {:.0} s",
        started.elapsed().as_secs_f64()
    ));
    let big = sides.pop().context("the big store")?;
    let small = sides.pop().context("the small store")?;
    for side in [&small, &big] {
        remove_own(&side.db, false).await?;
        crate::db::autovacuum_off(&side.db.pool, "call_detail_record").await?;
    }

    let outcome = measure_all(&small, &big, &options).await;
    // The stores are left as filled whatever happened: removing the
    // benchmark's rows is not skipped by a failed measurement.
    for side in [&small, &big] {
        progress(&format!("{}: removing the benchmark's rows", side.db.name));
        remove_own(&side.db, true).await?;
        if options.interleave {
            compact(&side.db, "call_detail_record_y2025m03").await?;
        }
        reset_autovacuum(&side.db).await?;
    }
    let mut summary = outcome?;
    for (info, side) in [(&mut summary.small, &small), (&mut summary.big, &big)] {
        info.size_bytes = sqlx::query_scalar("SELECT pg_database_size(current_database())")
            .fetch_one(&side.db.pool)
            .await
            .context("the database's size")?;
    }
    print(&summary);
    if let Some(path) = &options.json_out {
        std::fs::write(path, serde_json::to_vec_pretty(&summary)?)
            .with_context(|| format!("write {}", path.display()))?;
    }
    Ok(())
}

async fn measure_all(small: &Side, big: &Side, options: &Options) -> Result<Summary> {
    let mut environment = crate::report::environment(&big.db).await?;
    let mut pairs = Vec::new();
    let mut checks = Vec::new();
    let mut notes = Vec::new();
    if !options.skip_import {
        pairs.extend(import_pairs(small, big, options, &mut checks).await?);
    }
    if !options.skip_totals {
        pairs.extend(totals_pairs(small, big, options, &mut checks, &mut notes).await?);
    }
    environment.push((
        "load average (end)".to_string(),
        crate::report::load_average(),
    ));
    let goals: Vec<Goal> = pairs
        .iter()
        .filter(|p| p.goal)
        .map(|p| {
            Goal::at_most(
                &format!("{}: {} / {} CDRs", p.what, big.info.rows, small.info.rows),
                p.ratio,
                RATIO_GOAL,
                "x",
                false,
            )
        })
        .collect();
    if checks.iter().any(|(_, ok)| !ok) {
        notes.push("a check failed: the numbers are not comparable".into());
    }
    let all_goals_met = goals.iter().all(|g| g.met) && checks.iter().all(|(_, ok)| *ok);
    Ok(Summary {
        small: small.info.clone(),
        big: big.info.clone(),
        environment,
        import_rows: options.import_rows,
        cycle_rows: options.cycle_rows,
        added_rows: options.added_rows,
        interleaved: options.interleave && !options.skip_totals,
        runs: options.runs,
        pairs,
        checks,
        goals,
        all_goals_met,
        notes,
    })
}

/// Per case, the small store's runs and the big store's.
type InBoth<T> = (Vec<T>, Vec<T>);

/// The two stores in the order of round `round`: alternating, so neither
/// always runs first (warm caches, the other's dirty pages).
fn in_turn<T: Copy>(round: u32, small: T, big: T) -> [(T, bool); 2] {
    if round % 2 == 1 {
        [(small, false), (big, true)]
    } else {
        [(big, true), (small, false)]
    }
}

fn sample(round: u32, seconds: f64, vm_hwm_kb: u64, load_average: String) -> Sample {
    Sample {
        round,
        seconds,
        vm_hwm_kb,
        load_average,
    }
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

fn pair(what: String, small: Vec<Sample>, big: Vec<Sample>, goal: bool) -> Pair {
    let best = |s: &[Sample]| s.iter().map(|s| s.seconds).fold(f64::INFINITY, f64::min);
    let med = |s: &[Sample]| median(&s.iter().map(|s| s.seconds).collect::<Vec<_>>());
    let rss = |s: &[Sample]| s.iter().map(|s| s.vm_hwm_kb).max().unwrap_or(0) as f64 / 1024.0;
    Pair {
        what,
        small_best: best(&small),
        big_best: best(&big),
        ratio: best(&big) / best(&small),
        small_median: med(&small),
        big_median: med(&big),
        small_peak_rss_mib: rss(&small),
        big_peak_rss_mib: rss(&big),
        small,
        big,
        goal,
    }
}

// ---------------------------------------------------------------------
// The import

/// A temporary folder for the export and the rejected rows.
struct WorkDir(PathBuf);

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn import_pairs(
    small: &Side,
    big: &Side,
    options: &Options,
    checks: &mut Vec<(String, bool)>,
) -> Result<Vec<Pair>> {
    let work = WorkDir(std::env::temp_dir().join(format!(
        "tem-store-bench-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )));
    std::fs::create_dir_all(&work.0).with_context(|| format!("create {}", work.0.display()))?;
    let zip = work.0.join(format!("routit-{}.zip", options.import_rows));
    let generated = generate::write_zip(
        &zip,
        options.import_rows,
        options.import_subscriptions,
        options.seed,
    )?;
    progress(&format!(
        "generated the import file: {} rows, {} bytes zipped",
        generated.rows, generated.zip_bytes
    ));
    let subscriptions = generate::known_subscriptions(options.import_subscriptions);
    let mut customers = Vec::new();
    for side in [small, big] {
        customers.push(import_customer(&side.db, &subscriptions).await?);
    }
    let rejects = work.0.join("rejected");
    let (mut wall, mut call) = ((Vec::new(), Vec::new()), (Vec::new(), Vec::new()));
    let mut loaded = (Vec::new(), Vec::new());
    for round in 1..=options.runs {
        for (side, is_big) in in_turn(round, small, big) {
            let customer = customers[usize::from(is_big)];
            note_checkpoint(&side.db).await;
            let load = crate::report::load_average();
            let (report, elapsed) = measure::our_import(&zip, &side.db.url, &rejects, 4)?;
            progress(&format!(
                "round {round}: import into {}: {:.3} s ({} loaded, {} duplicate, {} rejected; peak RSS {} KiB; load {load})",
                side.db.name,
                elapsed.as_secs_f64(),
                report.loaded,
                report.duplicate,
                report.rejected,
                report.vm_hwm_kb
            ));
            let (w, c, l) = if is_big {
                (&mut wall.1, &mut call.1, &mut loaded.1)
            } else {
                (&mut wall.0, &mut call.0, &mut loaded.0)
            };
            w.push(sample(
                round,
                elapsed.as_secs_f64(),
                report.vm_hwm_kb,
                load.clone(),
            ));
            c.push(sample(
                round,
                report.import_ms / 1000.0,
                report.vm_hwm_kb,
                load,
            ));
            l.push(report.loaded);
            checks.push((
                format!(
                    "round {round}, {}: every row of the file loaded once (loaded + rejected = {}, no duplicates)",
                    side.db.name, options.import_rows
                ),
                report.loaded + report.rejected == options.import_rows && report.duplicate == 0,
            ));
            remove_import(&side.db, customer).await?;
        }
    }
    checks.push((
        "the same rows loaded in both stores in every round".into(),
        loaded.0 == loaded.1,
    ));
    Ok(vec![
        pair(
            format!(
                "import of {} CDRs (child process, start-up included)",
                options.import_rows
            ),
            wall.0,
            wall.1,
            true,
        ),
        pair(
            format!(
                "import of {} CDRs (Importer::import alone)",
                options.import_rows
            ),
            call.0,
            call.1,
            false,
        ),
    ])
}

/// The customer holding the import file's known numbers.
async fn import_customer(db: &BenchDb, subscriptions: &[String]) -> Result<i64> {
    let customer: i64 = sqlx::query_scalar(
        "INSERT INTO customer (name, billing_cycle_start_day, time_zone)
         VALUES ($1, 1, 'Europe/Amsterdam') RETURNING id",
    )
    .bind(IMPORT_CUSTOMER)
    .fetch_one(&db.pool)
    .await
    .context("insert the import's customer")?;
    sqlx::query(
        "INSERT INTO subscription (customer_id, provider, identifier)
         SELECT $1, 'routit', unnest($2::text[])",
    )
    .bind(customer)
    .bind(subscriptions)
    .execute(&db.pool)
    .await
    .context("insert the import's subscriptions")?;
    sqlx::query("ANALYZE customer, subscription")
        .execute(&db.pool)
        .await
        .context("analyze")?;
    Ok(customer)
}

/// Removes one import's rows, marks and record, and vacuums the months
/// it went to, so every round imports into the same table.
async fn remove_import(db: &BenchDb, customer: i64) -> Result<()> {
    let deleted =
        delete_customer_rows(db, customer, IMPORT_FROM).await? + delete_unassigned(db).await?;
    sqlx::query("DELETE FROM cycle_change WHERE customer_id = $1")
        .bind(customer)
        .execute(&db.pool)
        .await
        .context("remove the import's marks")?;
    sqlx::query("DELETE FROM import_file WHERE bucket = $1")
        .bind(IMPORT_BUCKET)
        .execute(&db.pool)
        .await
        .context("remove the import's record")?;
    vacuum_months(db, &IMPORT_MONTHS, false).await?;
    progress(&format!(
        "  {}: the import's {deleted} rows removed",
        db.name
    ));
    Ok(())
}

/// A customer's CDRs from `from` to the end of March 2025, found through
/// the (customer_id, started_at) index.
async fn delete_customer_rows(db: &BenchDb, customer: i64, from: &str) -> Result<u64> {
    Ok(sqlx::query(
        "DELETE FROM call_detail_record
         WHERE customer_id = $1 AND started_at >= $2::timestamptz AND started_at < $3::timestamptz",
    )
    .bind(customer)
    .bind(from)
    .bind(OWN_ROWS_TO)
    .execute(&db.pool)
    .await
    .with_context(|| format!("remove customer {customer}'s CDRs ({})", db.name))?
    .rows_affected())
}

/// The import's rows of numbers no customer has, found through the index
/// of unassigned CDRs: the generator's references start with RT25, the
/// fill's with RTS or KS.
async fn delete_unassigned(db: &BenchDb) -> Result<u64> {
    Ok(sqlx::query(
        "DELETE FROM call_detail_record
         WHERE customer_id IS NULL AND started_at >= $1::timestamptz AND started_at < $2::timestamptz
           AND left(external_id, 4) = 'RT25'",
    )
    .bind(IMPORT_FROM)
    .bind(OWN_ROWS_TO)
    .execute(&db.pool)
    .await
    .with_context(|| format!("remove the import's unassigned CDRs ({})", db.name))?
    .rows_affected())
}

async fn vacuum_months(db: &BenchDb, months: &[&str], analyze: bool) -> Result<()> {
    for month in months {
        let partition: Option<String> = sqlx::query_scalar(
            "SELECT to_regclass('call_detail_record_y' || to_char($1::date, 'YYYY') || 'm' || to_char($1::date, 'MM'))::text",
        )
        .bind(month)
        .fetch_one(&db.pool)
        .await
        .context("find the month's partition")?;
        if let Some(partition) = partition {
            sqlx::query(&format!(
                "VACUUM {}{partition}",
                if analyze { "(ANALYZE) " } else { "" }
            ))
            .execute(&db.pool)
            .await
            .with_context(|| format!("vacuum {partition}"))?;
        }
    }
    Ok(())
}

async fn note_checkpoint(db: &BenchDb) {
    if let Some(note) = db.checkpoint().await {
        progress(&note);
    }
}

// ---------------------------------------------------------------------
// The totals

/// Runs a child of this program (`calculate` or `bare`, as totals-bench's).
fn child(args: &[String]) -> Result<ChildReport> {
    let exe = std::env::current_exe().context("find this program")?;
    let mut command = Command::new(&exe);
    command.args(args).stdin(Stdio::null());
    // sqlx warns of every statement over a second, which the
    // calculations of big cycles have by design.
    if std::env::var_os("RUST_LOG").is_none() {
        command.env("RUST_LOG", "warn,sqlx::query=error");
    }
    let output = command
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("run {} {}", exe.display(), args.join(" ")))?;
    if !output.status.success() {
        bail!(
            "the child `{}` failed ({}); its error is above",
            args.join(" "),
            output.status
        );
    }
    serde_json::from_slice(&output.stdout).with_context(|| {
        format!(
            "parse the child's report {:?}",
            String::from_utf8_lossy(&output.stdout)
        )
    })
}

fn calculate(db: &BenchDb, dataset: &data::Dataset, how: How) -> Result<ChildReport> {
    child(&[
        "calculate".into(),
        "--database".into(),
        db.url.clone(),
        "--customer".into(),
        dataset.customer_id.to_string(),
        "--cycle".into(),
        dataset.cycle.to_string(),
        "--how".into(),
        match how {
            How::Full => "full".into(),
            How::Incremental => "incremental".into(),
        },
    ])
}

fn bare(db: &BenchDb, dataset: &data::Dataset) -> Result<ChildReport> {
    let (start, end): (DateTime<Utc>, DateTime<Utc>) = data::cycle_span();
    child(&[
        "bare".into(),
        "--database".into(),
        db.url.clone(),
        "--customer".into(),
        dataset.customer_id.to_string(),
        "--start".into(),
        start.to_rfc3339(),
        "--end".into(),
        end.to_rfc3339(),
    ])
}

/// The totals without the customer's id, which may differ between the
/// stores: the same CDRs give the same totals in both.
fn comparable(report: &ChildReport) -> Option<Totals> {
    report.totals.clone().map(|t| Totals {
        customer_id: 0,
        ..t
    })
}

async fn totals_pairs(
    small: &Side,
    big: &Side,
    options: &Options,
    checks: &mut Vec<(String, bool)>,
    notes: &mut Vec<String>,
) -> Result<Vec<Pair>> {
    let spec = data::Spec {
        rows: options.cycle_rows,
        other_rows: options.other_rows,
        subscriptions: options.cycle_subscriptions,
        reference_rows: 0,
        seed: options.seed,
    };
    let mut datasets = Vec::new();
    for side in [small, big] {
        progress(&format!(
            "{}: loading the cycle of {} CDRs (totals-bench's dataset)",
            side.db.name, options.cycle_rows
        ));
        let dataset = data::create(&side.db, &spec).await?;
        sqlx::query("UPDATE customer SET rate_plan_id = $2 WHERE id = $1")
            .bind(dataset.customer_id)
            .bind(&dataset.rate_plan_id)
            .execute(&side.db.pool)
            .await
            .context("put the customer on its plan")?;
        progress(&format!("  loaded in {:.1} s", dataset.load_seconds));
        if options.interleave {
            let started = Instant::now();
            interleave(&side.db, "call_detail_record_y2025m03").await?;
            progress(&format!(
                "  March 2025 rewritten in time order in {:.1} s",
                started.elapsed().as_secs_f64()
            ));
        }
        bare(&side.db, &dataset)?;
        calculate(&side.db, &dataset, How::Full)?;
        datasets.push(dataset);
    }
    let mut samples: [InBoth<Sample>; 3] = Default::default();
    let mut results: [InBoth<Option<Totals>>; 3] = Default::default();
    for round in 1..=options.runs {
        for (side, is_big) in in_turn(round, small, big) {
            let dataset = &datasets[usize::from(is_big)];
            let mut record = |case: usize, report: &ChildReport, load: String| {
                let s = sample(round, report.seconds, report.vm_hwm_kb, load);
                let totals = comparable(report);
                if is_big {
                    samples[case].1.push(s);
                    results[case].1.push(totals);
                } else {
                    samples[case].0.push(s);
                    results[case].0.push(totals);
                }
            };
            note_checkpoint(&side.db).await;
            let load = crate::report::load_average();
            let r = bare(&side.db, dataset)?;
            record(0, &r, load);

            note_checkpoint(&side.db).await;
            let load = crate::report::load_average();
            let full = calculate(&side.db, dataset, How::Full)?;
            record(1, &full, load);
            if full.phases.map(|p| p.kind) != Some(Kind::Full) {
                notes.push(format!(
                    "round {round}, {}: the full calculation was {:?}",
                    side.db.name,
                    full.phases.map(|p| p.kind)
                ));
            }

            let file = 900_000 + i64::from(round) * 10 + 2;
            let added = data::add_file(
                &side.db,
                dataset,
                options.added_rows,
                file,
                data::last_day(),
                options.seed,
            )
            .await?;
            engine::mark_added(
                &side.db.pool,
                dataset.customer_id,
                dataset.cycle,
                added.first_started_at,
            )
            .await
            .context("mark the added CDRs")?;
            note_checkpoint(&side.db).await;
            let load = crate::report::load_average();
            let after = calculate(&side.db, dataset, How::Incremental)?;
            record(2, &after, load);
            match after.phases.map(|p| p.kind) {
                Some(Kind::FromCheckpoint { from }) if from <= added.first_started_at => {}
                kind => notes.push(format!(
                    "round {round}, {}: the calculation after the import was {kind:?}, not from a checkpoint before the file",
                    side.db.name
                )),
            }
            data::remove_file(&side.db, file).await?;
            calculate(&side.db, dataset, How::Incremental)?;
            progress(&format!(
                "round {round}: {}: bare {:.3} s, rate plan full {:.3} s (RSS {} KiB), after {} CDRs {:.3} s",
                side.db.name,
                r.seconds,
                full.seconds,
                full.vm_hwm_kb,
                options.added_rows,
                after.seconds
            ));
        }
    }
    let cycle = options.cycle_rows;
    let expected = [
        None,
        Some(cycle as i64),
        Some((cycle + options.added_rows) as i64),
    ];
    let labels = [
        format!("bare SELECT ... GROUP BY of the cycle ({cycle} CDRs)"),
        format!("totals, rate plan, full calculation ({cycle} CDRs)"),
        format!(
            "totals, rate plan, after a 1% import at the cycle's end ({} CDRs)",
            options.added_rows
        ),
    ];
    let mut pairs = Vec::new();
    for (case, ((small_samples, big_samples), (small_totals, big_totals))) in
        samples.into_iter().zip(results).enumerate()
    {
        if let Some(count) = expected[case] {
            checks.push((
                format!("{}: the totals count every CDR ({count}) in every run, and are the same in both stores", labels[case]),
                small_totals == big_totals
                    && small_totals
                        .iter()
                        .all(|t| t.as_ref().is_some_and(|t| t.cdr_count == count)),
            ));
        }
        pairs.push(pair(
            labels[case].clone(),
            small_samples,
            big_samples,
            case > 0,
        ));
    }
    Ok(pairs)
}

/// Rewrites a month's partition in the order of `started_at`, so that
/// the cycle's CDRs, loaded after the store's, lie among them in the heap
/// as when a carrier's daily file holds every customer's CDRs of the day:
/// a cycle read from a big partition then touches more pages. The ids and
/// every column are kept; statements naming a partition do not fire the
/// table's change marks (migration 0019).
async fn interleave(db: &BenchDb, partition: &str) -> Result<()> {
    let mut tx = db.pool.begin().await.context("begin")?;
    for sql in [
        format!("CREATE TEMP TABLE store_bench_month ON COMMIT DROP AS SELECT * FROM {partition} ORDER BY started_at, provider, external_id"),
        format!("TRUNCATE {partition}"),
        format!("INSERT INTO {partition} SELECT * FROM store_bench_month ORDER BY started_at, provider, external_id"),
    ] {
        sqlx::query(&sql)
            .execute(&mut *tx)
            .await
            .with_context(|| format!("{sql} ({})", db.name))?;
    }
    tx.commit().await.context("commit the rewrite")?;
    sqlx::query(&format!("VACUUM (ANALYZE) {partition}"))
        .execute(&db.pool)
        .await
        .with_context(|| format!("vacuum {partition}"))?;
    Ok(())
}

// ---------------------------------------------------------------------
// Leaving the stores as filled

/// Removes everything of the benchmark's from a store: its customers'
/// CDRs and calculations, the import's rows and records, the plans.
/// Quick when there is nothing (the rows are found through the
/// indexes of their customers and of unassigned CDRs). `vacuum`: vacuum
/// the months written to, so the store is as the fill left it.
async fn remove_own(db: &BenchDb, vacuum: bool) -> Result<()> {
    let mut names = vec![IMPORT_CUSTOMER];
    names.extend(CYCLE_CUSTOMERS);
    let customers: Vec<i64> = sqlx::query_scalar("SELECT id FROM customer WHERE name = ANY($1)")
        .bind(&names)
        .fetch_all(&db.pool)
        .await
        .context("find the benchmark's customers")?;
    let imports: i64 = sqlx::query_scalar("SELECT count(*) FROM import_file WHERE bucket = $1")
        .bind(IMPORT_BUCKET)
        .fetch_one(&db.pool)
        .await
        .context("count the benchmark's imports")?;
    // An import's unassigned rows outlive its customer when a run was
    // killed between the two deletes.
    let mut rows = delete_unassigned(db).await?;
    if customers.is_empty() && imports == 0 && rows == 0 {
        return Ok(());
    }
    for customer in &customers {
        rows += delete_customer_rows(db, *customer, OWN_ROWS_FROM).await?;
    }
    // totals cascades to its lines, the cycle state and the pricings.
    for table in [
        "cycle_change",
        "totals_history",
        "billing_insight",
        "totals",
        "subscription",
        "customer",
    ] {
        let column = if table == "customer" {
            "id"
        } else {
            "customer_id"
        };
        sqlx::query(&format!("DELETE FROM {table} WHERE {column} = ANY($1)"))
            .bind(&customers)
            .execute(&db.pool)
            .await
            .with_context(|| format!("remove the benchmark's rows of {table} ({})", db.name))?;
    }
    sqlx::query("DELETE FROM rate_plan WHERE id = ANY($1)")
        .bind(RATE_PLANS.as_slice())
        .execute(&db.pool)
        .await
        .context("remove the benchmark's plans")?;
    sqlx::query("DELETE FROM import_file WHERE bucket = $1")
        .bind(IMPORT_BUCKET)
        .execute(&db.pool)
        .await
        .context("remove the import records")?;
    if vacuum {
        vacuum_months(db, &OWN_MONTHS, true).await?;
    }
    progress(&format!(
        "{}: removed {rows} CDRs and {} customers of the benchmark's",
        db.name,
        customers.len()
    ));
    Ok(())
}

/// Rewrites a partition without the free space the benchmark's deleted
/// rows left: after `interleave` that space is spread over the whole
/// partition, and the next run's import would go into it instead of at
/// the end, as it goes in a store that has never held them.
async fn compact(db: &BenchDb, partition: &str) -> Result<()> {
    let started = Instant::now();
    sqlx::query(&format!("VACUUM (FULL, ANALYZE) {partition}"))
        .execute(&db.pool)
        .await
        .with_context(|| format!("compact {partition} ({})", db.name))?;
    progress(&format!(
        "{}: {partition} compacted in {:.1} s",
        db.name,
        started.elapsed().as_secs_f64()
    ));
    Ok(())
}

/// Autovacuum back on, as the fill left it (the benchmark turns it off so
/// one run's vacuum does not compete with the next measurement).
async fn reset_autovacuum(db: &BenchDb) -> Result<()> {
    let leaves: Vec<String> = sqlx::query_scalar(
        "SELECT relid::regclass::text FROM pg_partition_tree('call_detail_record') WHERE isleaf",
    )
    .fetch_all(&db.pool)
    .await
    .context("list the partitions")?;
    for leaf in leaves {
        sqlx::query(&format!("ALTER TABLE {leaf} RESET (autovacuum_enabled)"))
            .execute(&db.pool)
            .await
            .with_context(|| format!("reset autovacuum on {leaf}"))?;
    }
    Ok(())
}

// ---------------------------------------------------------------------
// The report

fn gb(bytes: i64) -> f64 {
    bytes as f64 / 1e9
}

fn describe(info: &StoreInfo) -> String {
    format!(
        "{}: {} CDRs over {} months ({} to {}), {} partitions with the default, {} customers, {} subscriptions, {:.1} GB; filled in {:.0} s (load {:.0}, indexes {:.0}, VACUUM ANALYZE {:.0}){}",
        info.database,
        info.rows,
        info.months,
        info.first_month.format("%Y-%m"),
        info.last_month.format("%Y-%m"),
        info.partitions,
        info.customers,
        info.subscriptions,
        gb(info.size_bytes),
        info.fill_seconds,
        info.fill_phases.0,
        info.fill_phases.1,
        info.fill_phases.2,
        if info.reused { "; reused" } else { "" }
    )
}

pub fn print(summary: &Summary) {
    println!();
    println!(
        "== store benchmark: the same import and the same cycle in a store of {} and of {} CDRs ==",
        summary.big.rows, summary.small.rows
    );
    println!("  {}", describe(&summary.small));
    println!("  {}", describe(&summary.big));
    println!(
        "  the cycle's CDRs lie {} in March 2025's partition",
        if summary.interleaved {
            "among the store's in time order (--interleave)"
        } else {
            "together after the store's"
        }
    );
    for (key, value) in &summary.environment {
        println!("  {key:<34} {value}");
    }
    println!();
    println!(
        "{:<72} {:>9} {:>9} {:>7} {:>15}",
        "measurement (best of runs)", "small s", "big s", "ratio", "RSS MiB s / b"
    );
    println!("{}", "-".repeat(116));
    for p in &summary.pairs {
        println!(
            "{:<72} {:>9.3} {:>9.3} {:>6.3}x {:>7.1} / {:<6.1}",
            p.what, p.small_best, p.big_best, p.ratio, p.small_peak_rss_mib, p.big_peak_rss_mib
        );
    }
    println!();
    println!("every run (s, small / big, load average before):");
    for p in &summary.pairs {
        println!("  {}", p.what);
        for (s, b) in p.small.iter().zip(&p.big) {
            println!(
                "    round {}: {:.3} ({}) / {:.3} ({})",
                s.round, s.seconds, s.load_average, b.seconds, b.load_average
            );
        }
        println!(
            "    median {:.3} / {:.3} ({:.3}x)",
            p.small_median,
            p.big_median,
            p.big_median / p.small_median
        );
    }
    println!();
    println!("checks:");
    for (what, ok) in &summary.checks {
        println!("  {what}: {}", crate::report::yes(*ok));
    }
    println!();
    crate::report::print_goals(&summary.goals, 100, 3);
    for note in &summary.notes {
        println!("note: {note}");
    }
    println!();
    crate::report::print_json_summary(summary);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_names_say_their_size() {
        assert_eq!(fill::store_name(100_000_000), "tem_bench_store_100m");
        assert_eq!(fill::store_name(1_000_000), "tem_bench_store_1m");
        assert_eq!(fill::store_name(1_500), "tem_bench_store_1500");
    }

    #[test]
    fn the_stores_take_turns_going_first() {
        assert_eq!(
            in_turn(1, "small", "big"),
            [("small", false), ("big", true)]
        );
        assert_eq!(
            in_turn(2, "small", "big"),
            [("big", true), ("small", false)]
        );
        assert_eq!(in_turn(3, "small", "big"), in_turn(1, "small", "big"));
    }

    #[test]
    fn a_pair_sets_the_best_of_the_big_store_against_the_best_of_the_small() {
        let runs = |seconds: &[f64]| {
            seconds
                .iter()
                .enumerate()
                .map(|(i, s)| sample(i as u32 + 1, *s, 1024, String::new()))
                .collect()
        };
        let p = pair(
            "x".into(),
            runs(&[2.0, 1.0, 3.0]),
            runs(&[1.5, 1.2, 9.0]),
            true,
        );
        assert_eq!((p.small_best, p.big_best), (1.0, 1.2));
        assert!((p.ratio - 1.2).abs() < 1e-12);
        assert_eq!((p.small_median, p.big_median), (2.0, 1.5));
        assert_eq!(p.big_peak_rss_mib, 1.0);
    }
}
