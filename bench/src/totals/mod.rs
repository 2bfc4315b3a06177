//! `totals-bench`: CalculateTotals on one customer's cycle of `--rows` CDRs
//! against a bare `SELECT ... GROUP BY` summing the same columns, in one run
//! on one PostgreSQL server. See bench/README.md.

pub mod data;

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use chrono::{DateTime, Utc};
use serde::Serialize;
use tem_shared::billing::cycle_input::InputSource;
use tem_shared::billing::totals::{
    calculate_totals_timed, cycle_bounds, CycleTotals, TotalsTimings, READ_COLUMNS,
};

use crate::db::BenchDb;
use crate::report::Goal;

pub struct Options {
    pub rows: u64,
    pub other_rows: u64,
    pub added_file_rows: u64,
    pub subscriptions: u32,
    pub runs: u32,
    pub seed: u64,
    pub database_url: String,
    pub keep: bool,
    pub json_out: Option<PathBuf>,
}

/// The baseline: what any totals calculation has to do at least, summing
/// the same columns over the same CDRs, grouped like the totals lines.
pub const BARE_GROUP_BY: &str =
    "SELECT subscription, kind, roaming_zone, count(*), sum(duration_seconds), \
     sum(volume_bytes), sum(units), sum(provider_cost_micros) \
     FROM call_detail_record WHERE customer_id = $1 AND started_at >= $2 AND started_at < $3 \
     GROUP BY subscription, kind, roaming_zone";

#[derive(Debug, Clone, Serialize)]
pub struct Timing {
    pub method: String,
    /// Every run, in seconds, in the order they ran.
    pub runs: Vec<f64>,
    pub best: f64,
    pub median: f64,
}

impl Timing {
    fn new(method: &str, runs: Vec<f64>) -> Self {
        let mut sorted = runs.clone();
        sorted.sort_by(f64::total_cmp);
        let median = if sorted.is_empty() {
            0.0
        } else if sorted.len() % 2 == 1 {
            sorted[sorted.len() / 2]
        } else {
            (sorted[sorted.len() / 2 - 1] + sorted[sorted.len() / 2]) / 2.0
        };
        Self {
            method: method.into(),
            best: sorted.first().copied().unwrap_or(0.0),
            median,
            runs,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Checks {
    pub bare_groups: usize,
    pub standard_lines: i64,
    pub standard_equals_bare_sums: bool,
    pub rate_plan_cdr_count: i64,
    pub stored_pricings: i64,
    pub stored_rated_sum_equals_totals: bool,
    pub lines_add_up_to_totals: bool,
    pub rate_plan_unrated: i64,
    pub covered_cdrs: i64,
    pub split_shares: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub dataset: data::Dataset,
    pub environment: Vec<(String, String)>,
    pub timings: Vec<Timing>,
    /// CDRs of the import file added before each "after an import" run.
    pub added_file_rows: u64,
    /// Phases of the best run of each rate-plan case.
    pub rate_plan_phases: TotalsTimings,
    pub after_import_phases: TotalsTimings,
    pub nothing_stored_phases: TotalsTimings,
    pub standard_totals: CycleTotals,
    pub rate_plan_totals: CycleTotals,
    pub ratio_standard_best: f64,
    pub ratio_standard_median: f64,
    pub ratio_rate_plan_best: f64,
    pub ratio_rate_plan_median: f64,
    pub ratio_after_import_best: f64,
    pub ratio_nothing_stored_best: f64,
    pub checks: Checks,
    pub goals: Vec<Goal>,
    pub all_goals_met: bool,
    pub notes: Vec<String>,
}

fn progress(step: &str) {
    eprintln!("[totals-bench] {step}");
}

pub async fn run(options: Options) -> Result<()> {
    if options.rows == 0 || options.runs == 0 {
        bail!("--rows and --runs must be positive");
    }
    let db = BenchDb::create(&options.database_url).await?;
    progress(&format!("database {} created and migrated", db.name));
    let outcome = measure(&db, &options).await;
    if options.keep {
        progress(&format!("kept database {}", db.name));
    } else {
        let name = db.name.clone();
        db.drop_database().await?;
        progress(&format!("database {name} dropped"));
    }
    let summary = outcome?;
    print(&summary);
    if let Some(path) = &options.json_out {
        std::fs::write(path, serde_json::to_vec_pretty(&summary)?)
            .with_context(|| format!("write {}", path.display()))?;
    }
    Ok(())
}

async fn set_plan(db: &BenchDb, customer_id: i64, plan: Option<&str>) -> Result<()> {
    sqlx::query("UPDATE customer SET rate_plan_id = $2 WHERE id = $1")
        .bind(customer_id)
        .bind(plan)
        .execute(&db.pool)
        .await
        .context("switch the customer's method")?;
    Ok(())
}

/// Runs the bare GROUP BY; returns its time and the number of groups.
async fn bare(
    db: &BenchDb,
    customer_id: i64,
    (start, end): (DateTime<Utc>, DateTime<Utc>),
) -> Result<(f64, usize)> {
    let started = Instant::now();
    let rows = sqlx::query(BARE_GROUP_BY)
        .bind(customer_id)
        .bind(start)
        .bind(end)
        .fetch_all(&db.pool)
        .await
        .context("the bare GROUP BY")?;
    Ok((started.elapsed().as_secs_f64(), rows.len()))
}

/// The floor of any rating outside the database: one COPY of the columns
/// the rate-plan method reads, received and thrown away.
async fn copy_floor(
    db: &BenchDb,
    customer_id: i64,
    (start, end): (DateTime<Utc>, DateTime<Utc>),
) -> Result<f64> {
    use futures::TryStreamExt;
    let mut connection = db.pool.acquire().await.context("a connection")?;
    let sql = format!(
        "COPY (SELECT {READ_COLUMNS} FROM call_detail_record
               WHERE customer_id = {customer_id} AND started_at >= '{}' AND started_at < '{}')
         TO STDOUT (FORMAT binary)",
        start.to_rfc3339(),
        end.to_rfc3339()
    );
    let started = Instant::now();
    let mut stream = connection
        .copy_out_raw(&sql)
        .await
        .context("start the COPY")?;
    let mut bytes = 0usize;
    while let Some(chunk) = stream.try_next().await.context("the COPY")? {
        bytes += chunk.len();
    }
    let took = started.elapsed().as_secs_f64();
    ensure!(bytes > 0, "the COPY returned nothing");
    Ok(took)
}

async fn calculate(
    db: &BenchDb,
    dataset: &data::Dataset,
) -> Result<(f64, CycleTotals, TotalsTimings)> {
    let started = Instant::now();
    let (totals, timings) = calculate_totals_timed(&db.pool, dataset.customer_id, dataset.cycle)
        .await
        .context("calculate_totals")?;
    Ok((started.elapsed().as_secs_f64(), totals, timings))
}

/// One calculation's phases, for the progress lines.
fn phases_text(p: &TotalsTimings) -> String {
    format!(
        "read {:.3}, rate {:.3}, store input {:.3}, write {:.3}",
        p.read_seconds, p.rate_seconds, p.store_input_seconds, p.write_seconds
    )
}

async fn note_checkpoint(db: &BenchDb, notes: &mut Vec<String>) {
    if let Some(note) = db.checkpoint().await {
        if !notes.contains(&note) {
            notes.push(note);
        }
    }
}

async fn measure(db: &BenchDb, options: &Options) -> Result<Summary> {
    let mut notes = Vec::new();
    let mut environment = crate::report::environment(db).await?;
    for setting in ["max_parallel_workers_per_gather", "work_mem", "jit"] {
        let value: String = sqlx::query_scalar(&format!("SHOW {setting}"))
            .fetch_one(&db.pool)
            .await
            .with_context(|| format!("show {setting}"))?;
        environment.push((format!("postgres {setting}"), value));
    }

    let started = Instant::now();
    let dataset = data::create(
        db,
        options.rows,
        options.other_rows,
        options.subscriptions,
        options.seed,
    )
    .await?;
    progress(&format!(
        "generated {} CDRs of customer {} in cycle {} ({} subscriptions), {} of another customer in the same weeks, {} of the previous cycle, in {:.1} s",
        dataset.rows,
        dataset.customer_id,
        dataset.cycle,
        dataset.subscriptions,
        dataset.other_customer_rows,
        dataset.previous_cycle_rows,
        started.elapsed().as_secs_f64()
    ));
    let bounds = cycle_bounds(dataset.cycle, chrono_tz::Europe::Amsterdam);
    let plan = Some(dataset.rate_plan_id.as_str());

    // One untimed round first: caches warm, and the first calculation's
    // table creation effects (new TOAST pages) are not in the numbers.
    note_checkpoint(db, &mut notes).await;
    progress("warm-up round");
    bare(db, dataset.customer_id, bounds).await?;
    set_plan(db, dataset.customer_id, None).await?;
    calculate(db, &dataset).await?;
    set_plan(db, dataset.customer_id, plan).await?;
    calculate(db, &dataset).await?;

    // Rounds of all cases side by side, so a disturbance on the machine
    // hits all alike.
    let (mut bare_runs, mut standard_runs, mut rated_runs, mut floor_runs) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut after_import_runs, mut nothing_stored_runs) = (Vec::new(), Vec::new());
    let mut groups = 0;
    let mut standard_totals = None;
    let mut rate_plan_totals = None;
    let mut best_phases: [Option<(f64, TotalsTimings)>; 3] = [None; 3];
    let mut keep_best = |case: usize, took: f64, phases: TotalsTimings| {
        if best_phases[case].is_none_or(|(best, _)| took < best) {
            best_phases[case] = Some((took, phases));
        }
    };
    for round in 1..=options.runs {
        note_checkpoint(db, &mut notes).await;
        let (took, n) = bare(db, dataset.customer_id, bounds).await?;
        bare_runs.push(took);
        groups = n;

        set_plan(db, dataset.customer_id, None).await?;
        note_checkpoint(db, &mut notes).await;
        let (took_standard, totals, _) = calculate(db, &dataset).await?;
        standard_runs.push(took_standard);
        standard_totals = Some(totals);

        // Nothing changed since the last calculation: the whole cycle from
        // its stored input, checked against the table.
        set_plan(db, dataset.customer_id, plan).await?;
        note_checkpoint(db, &mut notes).await;
        let (took_rated, totals, phases) = calculate(db, &dataset).await?;
        ensure!(
            phases.input == InputSource::Stored,
            "expected the stored input, got {:?}",
            phases.input
        );
        rated_runs.push(took_rated);
        rate_plan_totals = Some(totals);
        keep_best(0, took_rated, phases);

        // What follows an import: one more daily file, read from the table
        // on top of the stored input, and the input stored again. The file
        // is removed again after, untimed.
        let file = 900_000 + i64::from(round);
        data::add_file(db, &dataset, options.added_file_rows, file, options.seed).await?;
        note_checkpoint(db, &mut notes).await;
        let (took_after, after, after_phases) = calculate(db, &dataset).await?;
        ensure!(
            matches!(
                after_phases.input,
                InputSource::StoredAndFiles { files: 1, .. }
            ) && after.cdr_count as u64 == dataset.rows + options.added_file_rows,
            "the calculation after an import read {:?} and counted {}",
            after_phases.input,
            after.cdr_count
        );
        after_import_runs.push(took_after);
        keep_best(1, took_after, after_phases);
        data::remove_file(db, file).await?;
        calculate(db, &dataset).await?;

        // The first calculation of a cycle, or one whose stored input is
        // lost: everything from the table, and stored.
        sqlx::query("DELETE FROM cycle_input")
            .execute(&db.pool)
            .await
            .context("remove the stored input")?;
        note_checkpoint(db, &mut notes).await;
        let (took_cold, _, cold_phases) = calculate(db, &dataset).await?;
        ensure!(
            cold_phases.input == InputSource::Table,
            "expected a full read, got {:?}",
            cold_phases.input
        );
        nothing_stored_runs.push(took_cold);
        keep_best(2, took_cold, cold_phases);

        note_checkpoint(db, &mut notes).await;
        let took_floor = copy_floor(db, dataset.customer_id, bounds).await?;
        floor_runs.push(took_floor);
        progress(&format!(
            "round {round}/{}: bare {took:.3} s, standard {took_standard:.3} s, rate plan {took_rated:.3} s ({}), \
             after an import {took_after:.3} s ({}), nothing stored {took_cold:.3} s ({}), COPY alone {took_floor:.3} s",
            options.runs,
            phases_text(&phases),
            phases_text(&after_phases),
            phases_text(&cold_phases),
        ));
    }
    environment.push((
        "load average (end)".to_string(),
        crate::report::load_average(),
    ));
    let standard_totals = standard_totals.context("no standard run")?;
    let rate_plan_totals = rate_plan_totals.context("no rate-plan run")?;
    let checks = check(
        db,
        &dataset,
        bounds,
        groups,
        &standard_totals,
        &rate_plan_totals,
    )
    .await?;
    ensure!(
        checks.standard_equals_bare_sums
            && checks.stored_rated_sum_equals_totals
            && checks.lines_add_up_to_totals
            && checks.rate_plan_cdr_count as u64 == dataset.rows
            && checks.stored_pricings as u64 == dataset.rows,
        "the results do not check out: {checks:?}"
    );

    let bare = Timing::new("bare SELECT ... GROUP BY", bare_runs);
    let standard = Timing::new("calculate_totals, standard", standard_runs);
    let rated = Timing::new(
        "calculate_totals, rate plan with bundles, nothing changed",
        rated_runs,
    );
    let after_import = Timing::new(
        &format!(
            "  ... after an import file of {} more CDRs",
            options.added_file_rows
        ),
        after_import_runs,
    );
    let nothing_stored = Timing::new(
        "  ... with nothing stored (a cycle's first read)",
        nothing_stored_runs,
    );
    let floor = Timing::new(
        "(floor) COPY out of the columns rating reads, 1 connection, discarded",
        floor_runs,
    );
    let ratio_standard_best = standard.best / bare.best;
    let ratio_rate_plan_best = rated.best / bare.best;
    let ratio_standard_median = standard.median / bare.median;
    let ratio_rate_plan_median = rated.median / bare.median;
    let ratio_after_import_best = after_import.best / bare.best;
    let ratio_nothing_stored_best = nothing_stored.best / bare.best;
    let goals = vec![
        Goal::at_most(
            "standard / bare GROUP BY (best of runs)",
            ratio_standard_best,
            1.5,
            "x",
            false,
        ),
        Goal::at_most(
            "rate plan with bundles / bare GROUP BY (best of runs)",
            ratio_rate_plan_best,
            3.0,
            "x",
            false,
        ),
        Goal::at_most(
            "rate plan after an import / bare GROUP BY (best of runs)",
            ratio_after_import_best,
            3.0,
            "x",
            false,
        ),
    ];
    let all_goals_met = goals.iter().all(|g| g.met);
    if options.rows != 1_000_000 {
        notes.push("the goals are defined for 1,000,000 CDRs; this run used another size".into());
    }
    Ok(Summary {
        added_file_rows: options.added_file_rows,
        rate_plan_phases: best_phases[0].map(|(_, p)| p).unwrap_or_default(),
        after_import_phases: best_phases[1].map(|(_, p)| p).unwrap_or_default(),
        nothing_stored_phases: best_phases[2].map(|(_, p)| p).unwrap_or_default(),
        dataset,
        environment,
        timings: vec![bare, standard, rated, after_import, nothing_stored, floor],
        standard_totals,
        rate_plan_totals,
        ratio_standard_best,
        ratio_standard_median,
        ratio_rate_plan_best,
        ratio_rate_plan_median,
        ratio_after_import_best,
        ratio_nothing_stored_best,
        checks,
        goals,
        all_goals_met,
        notes,
    })
}

/// The calculations against the bare sums and their own stored parts.
async fn check(
    db: &BenchDb,
    dataset: &data::Dataset,
    (start, end): (DateTime<Utc>, DateTime<Utc>),
    bare_groups: usize,
    standard: &CycleTotals,
    rated: &CycleTotals,
) -> Result<Checks> {
    let (count, provider, seconds, bytes, messages): (i64, i64, i64, i64, i64) = sqlx::query_as(
        "SELECT count(*), sum(provider_cost_micros)::bigint,
                coalesce(sum(duration_seconds) FILTER (WHERE kind = 'voice'), 0)::bigint,
                coalesce(sum(volume_bytes) FILTER (WHERE kind = 'data'), 0)::bigint,
                coalesce(sum(units) FILTER (WHERE kind IN ('sms', 'mms')), 0)::bigint
         FROM call_detail_record WHERE customer_id = $1 AND started_at >= $2 AND started_at < $3",
    )
    .bind(dataset.customer_id)
    .bind(start)
    .bind(end)
    .fetch_one(&db.pool)
    .await
    .context("the check sums")?;
    let standard_equals_bare_sums = (
        standard.cdr_count,
        standard.provider_cost_micros,
        standard.rated_cost_micros,
        standard.voice_seconds,
        standard.data_bytes,
        standard.messages,
    ) == (count, provider, provider, seconds, bytes, messages)
        && (rated.cdr_count, rated.provider_cost_micros) == (count, provider);
    // The last calculation was the rate plan's: its stored parts.
    let pricings =
        tem_shared::billing::pricings::read(&db.pool, dataset.customer_id, dataset.cycle)
            .await
            .context("the stored pricings")?;
    let stored = pricings.len() as i64;
    let stored_rated: i64 = pricings.rated_cost_micros.iter().sum();
    let covered = pricings.covered_quantity.iter().filter(|c| **c > 0).count() as i64;
    let split_shares: i64 = sqlx::query_scalar(
        "SELECT coalesce(cardinality(split_position), 0)::bigint FROM cycle_rating WHERE customer_id = $1 AND cycle = $2",
    )
    .bind(dataset.customer_id)
    .bind(dataset.cycle)
    .fetch_one(&db.pool)
    .await
    .context("the split shares")?;
    let (lines, line_count, line_rated, line_unrated): (i64, i64, i64, i64) = sqlx::query_as(
        "SELECT count(*), sum(cdr_count)::bigint, sum(rated_cost_micros)::bigint, sum(unrated_count)::bigint
         FROM totals_line WHERE customer_id = $1 AND cycle = $2",
    )
    .bind(dataset.customer_id)
    .bind(dataset.cycle)
    .fetch_one(&db.pool)
    .await
    .context("the lines")?;
    Ok(Checks {
        bare_groups,
        standard_lines: lines,
        standard_equals_bare_sums,
        rate_plan_cdr_count: rated.cdr_count,
        stored_pricings: stored,
        stored_rated_sum_equals_totals: stored_rated == rated.rated_cost_micros,
        lines_add_up_to_totals: (line_count, line_rated, line_unrated)
            == (
                rated.cdr_count,
                rated.rated_cost_micros,
                rated.unrated_count,
            ),
        rate_plan_unrated: rated.unrated_count,
        covered_cdrs: covered,
        split_shares,
    })
}

pub fn print(summary: &Summary) {
    let d = &summary.dataset;
    println!();
    println!(
        "== totals benchmark: {} CDRs of one customer in cycle {} ==",
        d.rows, d.cycle
    );
    println!(
        "  also in the table: {} CDRs of another customer in the same weeks, {} of the previous cycle; {} subscriptions; plan {}",
        d.other_customer_rows, d.previous_cycle_rows, d.subscriptions, d.rate_plan_id
    );
    for (key, value) in &summary.environment {
        println!("  {key:<34} {value}");
    }
    println!();
    println!(
        "{:<70} {:>7} {:>8} {:>7}  runs",
        "method", "best s", "median s", "x bare"
    );
    println!("{}", "-".repeat(120));
    let bare = &summary.timings[0];
    for t in &summary.timings {
        println!(
            "{:<70} {:>7.3} {:>8.3} {:>6.2}x  {}",
            t.method,
            t.best,
            t.median,
            t.best / bare.best,
            t.runs
                .iter()
                .map(|r| format!("{r:.3}"))
                .collect::<Vec<_>>()
                .join(" ")
        );
    }
    let p = &summary.rate_plan_phases;
    println!(
        "  rate plan, fastest run: read (COPY) {:.3} s, sort + rate {:.3} s, write + commit {:.3} s",
        p.read_seconds, p.rate_seconds, p.write_seconds
    );
    println!(
        "  ratios of medians: standard {:.2}x, rate plan {:.2}x",
        summary.ratio_standard_median, summary.ratio_rate_plan_median
    );
    println!();
    let c = &summary.checks;
    println!("checks:");
    println!(
        "  standard totals = the bare sums: {}; {} groups, {} lines",
        crate::report::yes(c.standard_equals_bare_sums),
        c.bare_groups,
        c.standard_lines
    );
    println!(
        "  rate plan: {} CDRs, {} stored pricings, stored rated costs add up to the totals: {}, lines add up: {}",
        c.rate_plan_cdr_count,
        c.stored_pricings,
        crate::report::yes(c.stored_rated_sum_equals_totals),
        crate::report::yes(c.lines_add_up_to_totals)
    );
    println!(
        "  rate plan: {} CDRs (partly) covered by bundles, {} shares of CDRs several bundles covered, {} unrated",
        c.covered_cdrs, c.split_shares, c.rate_plan_unrated
    );
    let (s, r) = (&summary.standard_totals, &summary.rate_plan_totals);
    println!(
        "  provider cost {} micro-euros; rated: standard {}, rate plan {}",
        s.provider_cost_micros, s.rated_cost_micros, r.rated_cost_micros
    );
    println!();
    crate::report::print_goals(&summary.goals, 52, 2);
    for note in &summary.notes {
        println!("note: {note}");
    }
    println!();
    crate::report::print_json_summary(summary);
}
