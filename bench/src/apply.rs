//! `apply-bench`: `temctl apply` of a large configuration, first into an
//! empty database and then again unchanged (and with a few changes), each
//! timed in-process (parse + `catalog::apply`, what `temctl apply` runs)
//! and, when the `temctl` binary sits next to this one, as the command
//! itself. See bench/README.md.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use chrono::{Duration, Utc};
use serde::Serialize;
use tem_shared::catalog::{self, ApplyOptions};

use crate::db::BenchDb;
use crate::report::{print_goals, print_json_summary, Goal};

/// Each apply, first and unchanged, must finish within this (release build).
pub const GOAL_SECONDS: f64 = 10.0;

pub struct Options {
    pub subscriptions: u32,
    pub customers: u32,
    pub runs: u32,
    pub database_url: String,
    /// The `temctl` binary to time as a process; `None`: not timed.
    pub temctl: Option<PathBuf>,
    pub keep: bool,
    pub json_out: Option<PathBuf>,
}

/// What the generated file holds.
#[derive(Debug, Clone, Serialize)]
pub struct Dataset {
    pub subscriptions: u32,
    pub customers: u32,
    /// Numbers with two periods back to back (two customers, adjacent
    /// periods: the overlap check must pass them).
    pub numbers_with_two_periods: u32,
    pub file_bytes: u64,
    /// Entries in the file: the plan, the customers and the subscriptions.
    pub entries: u64,
    /// Subscriptions the "changed" file changes (their active_to).
    pub changed_subscriptions: u32,
}

#[derive(Debug, Clone, Serialize)]
pub struct Timing {
    pub case: String,
    /// Seconds of each run, in the order they ran.
    pub runs: Vec<f64>,
    pub best: f64,
    pub median: f64,
    /// Of the fastest run: parsing and validating the file, and the
    /// database part (load, checks, diff, writes, commit).
    pub parse_seconds: Option<f64>,
    pub database_seconds: Option<f64>,
}

impl Timing {
    fn new(case: &str, runs: Vec<(f64, Option<(f64, f64)>)>) -> Self {
        let mut sorted: Vec<f64> = runs.iter().map(|r| r.0).collect();
        sorted.sort_by(f64::total_cmp);
        let median = match sorted.len() {
            0 => 0.0,
            n if n % 2 == 1 => sorted[n / 2],
            n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
        };
        let fastest = runs
            .iter()
            .min_by(|a, b| a.0.total_cmp(&b.0))
            .and_then(|r| r.1);
        Self {
            case: case.into(),
            best: sorted.first().copied().unwrap_or(0.0),
            median,
            runs: runs.iter().map(|r| r.0).collect(),
            parse_seconds: fastest.map(|f| f.0),
            database_seconds: fastest.map(|f| f.1),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Checks {
    pub stored_subscriptions: i64,
    pub stored_customers: i64,
    pub first_created: usize,
    pub unchanged_changed: usize,
    pub unchanged_unchanged: usize,
    pub changed_updated: usize,
    pub temctl_first_created: Option<u64>,
    pub temctl_unchanged_changed: Option<u64>,
    pub all_as_expected: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub dataset: Dataset,
    pub environment: Vec<(String, String)>,
    pub timings: Vec<Timing>,
    pub checks: Checks,
    pub goals: Vec<Goal>,
    pub all_goals_met: bool,
    pub notes: Vec<String>,
}

fn progress(step: &str) {
    eprintln!("[apply-bench] {step}");
}

/// The configuration file: one rate plan, `customers` customers, and
/// `subscriptions` subscriptions spread over them and over three
/// providers; one number in ten has two adjacent periods of two customers.
/// `changed` subscriptions get an active_to they did not have.
pub fn generate(subscriptions: u32, customers: u32, changed: u32) -> (String, Dataset) {
    let mut text = String::with_capacity(subscriptions as usize * 100 + 4096);
    text.push_str(
        "rate_plans:\n  - id: bench-2025\n    name: Benchmark 2025\n    unit_bytes: 1048576\n    monthly_fee_micros: 12500000\n    rates:\n      - {id: voice-nl, kind: voice, zone: home, prefix: \"31\", price_per_minute_micros: 100000, first_increment_s: 60, increment_s: 1}\n      - {id: sms, kind: sms, price_per_message_micros: 90000}\n",
    );
    text.push_str("customers:\n");
    for c in 0..customers {
        let plan = if c % 2 == 0 {
            ", rate_plan: bench-2025"
        } else {
            ""
        };
        let _ = writeln!(
            text,
            "  - {{code: cust-{c:04}, name: Customer {c}, billing_cycle_start_day: {}{plan}}}",
            c % 28 + 1
        );
    }
    text.push_str("subscriptions:\n");
    let mut written = 0u32;
    let mut number = 0u32;
    let mut two_periods = 0u32;
    let mut changes_left = changed;
    while written < subscriptions {
        let customer = number % customers;
        let (provider, identifier) = match number % 10 {
            7 => ("kpn_een", format!("LINE-{number:07}")),
            8 | 9 => ("t_mobile", format!("+3165{number:07}")),
            _ => ("routit", format!("+3161{number:07}")),
        };
        if number % 10 == 3 && subscriptions - written >= 2 {
            // Moved to another customer mid-year: adjacent periods.
            let next = (customer + 1) % customers;
            let _ = writeln!(
                text,
                "  - {{identifier: \"{identifier}\", customer: cust-{customer:04}, provider: {provider}, active_to: 2025-06-30}}\n  - {{identifier: \"{identifier}\", customer: cust-{next:04}, provider: {provider}, active_from: 2025-07-01}}"
            );
            written += 2;
            two_periods += 1;
        } else {
            let to = if changes_left > 0 && number % 10 == 1 {
                changes_left -= 1;
                ", active_to: 2026-12-31"
            } else {
                ""
            };
            let _ = writeln!(
                text,
                "  - {{identifier: \"{identifier}\", customer: cust-{customer:04}, provider: {provider}{to}}}"
            );
            written += 1;
        }
        number += 1;
    }
    let dataset = Dataset {
        subscriptions,
        customers,
        numbers_with_two_periods: two_periods,
        file_bytes: text.len() as u64,
        entries: 1 + u64::from(customers) + u64::from(subscriptions),
        changed_subscriptions: changed - changes_left,
    };
    (text, dataset)
}

/// What one in-process apply did, and its times.
struct Outcome {
    seconds: f64,
    parse_seconds: f64,
    database_seconds: f64,
    created: usize,
    updated: usize,
    changed: usize,
    unchanged: usize,
}

/// Parse and apply, as `temctl apply -f` does (without printing the
/// changes or sending the follow-up messages).
async fn apply_in_process(db: &BenchDb, text: &str) -> Result<Outcome> {
    let started = Instant::now();
    let parsed = catalog::parse(text, |name| std::env::var(name).ok());
    let parse_seconds = started.elapsed().as_secs_f64();
    if !parsed.problems.is_empty() {
        bail!(
            "the generated file has {} problem(s), first: {}",
            parsed.problems.len(),
            parsed.problems[0]
        );
    }
    let options = ApplyOptions {
        source: "apply-bench.yaml".into(),
        dry_run: false,
        now: Utc::now(),
        grace: Duration::days(5),
    };
    let applied = catalog::apply(&db.pool, &parsed, &options)
        .await
        .context("catalog::apply")?;
    let seconds = started.elapsed().as_secs_f64();
    let s = applied.summary;
    Ok(Outcome {
        seconds,
        parse_seconds,
        database_seconds: seconds - parse_seconds,
        created: s.created,
        updated: s.updated,
        changed: s.changed,
        unchanged: s.unchanged,
    })
}

/// `temctl apply --json -f file` as a process; its wall time and JSON.
fn apply_with_temctl(temctl: &Path, url: &str, file: &Path) -> Result<(f64, serde_json::Value)> {
    let started = Instant::now();
    let output = Command::new(temctl)
        .args(["apply", "--json", "-f"])
        .arg(file)
        .env("DATABASE_URL", url)
        .env_remove("QUEUE_URL_TOTALS")
        .env_remove("QUEUE_URL_IMPORT")
        .output()
        .with_context(|| format!("run {}", temctl.display()))?;
    let seconds = started.elapsed().as_secs_f64();
    ensure!(
        output.status.success(),
        "temctl apply failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let value = serde_json::from_slice(&output.stdout).context("temctl's JSON output")?;
    Ok((seconds, value))
}

pub async fn run(options: Options) -> Result<()> {
    if options.subscriptions < 2 || options.customers < 2 || options.runs == 0 {
        bail!("--subscriptions and --customers must be at least 2, --runs positive");
    }
    let changed = (options.subscriptions / 100).max(1);
    let (text, dataset) = generate(options.subscriptions, options.customers, 0);
    let (changed_text, changed_dataset) =
        generate(options.subscriptions, options.customers, changed);
    progress(&format!(
        "generated {} subscriptions of {} customers ({:.1} MiB)",
        dataset.subscriptions,
        dataset.customers,
        dataset.file_bytes as f64 / 1048576.0
    ));
    let dataset = Dataset {
        changed_subscriptions: changed_dataset.changed_subscriptions,
        ..dataset
    };

    let mut first = Vec::new();
    let mut unchanged = Vec::new();
    let mut with_changes = Vec::new();
    let mut checks = Checks {
        stored_subscriptions: 0,
        stored_customers: 0,
        first_created: 0,
        unchanged_changed: usize::MAX,
        unchanged_unchanged: 0,
        changed_updated: 0,
        temctl_first_created: None,
        temctl_unchanged_changed: None,
        all_as_expected: false,
    };
    let mut environment = Vec::new();
    let mut expected = true;
    for run in 1..=options.runs {
        let db = BenchDb::create(&options.database_url).await?;
        progress(&format!(
            "run {run}: database {} created and migrated",
            db.name
        ));
        if environment.is_empty() {
            environment = crate::report::environment(&db).await?;
        }
        let outcome = async {
            let a = apply_in_process(&db, &text).await?;
            progress(&format!("run {run}: first apply {:.3} s", a.seconds));
            let b = apply_in_process(&db, &text).await?;
            progress(&format!("run {run}: unchanged re-apply {:.3} s", b.seconds));
            let c = apply_in_process(&db, &changed_text).await?;
            progress(&format!(
                "run {run}: re-apply with {} changed {:.3} s",
                dataset.changed_subscriptions, c.seconds
            ));
            let (subs, customers): (i64, i64) = sqlx::query_as(
                "SELECT (SELECT count(*) FROM subscription), (SELECT count(*) FROM customer)",
            )
            .fetch_one(&db.pool)
            .await?;
            anyhow::Ok((a, b, c, subs, customers))
        }
        .await;
        if options.keep {
            progress(&format!("keeping database {}", db.name));
        } else {
            db.drop_database().await?;
        }
        let (a, b, c, subs, customers) = outcome?;
        expected &= a.created as u64 == dataset.entries
            && a.updated == 0
            && b.changed == 0
            && b.unchanged as u64 == dataset.entries
            && c.updated == dataset.changed_subscriptions as usize
            && c.created == 0
            && subs == i64::from(dataset.subscriptions)
            && customers == i64::from(dataset.customers);
        checks.stored_subscriptions = subs;
        checks.stored_customers = customers;
        checks.first_created = a.created;
        checks.unchanged_changed = b.changed;
        checks.unchanged_unchanged = b.unchanged;
        checks.changed_updated = c.updated;
        first.push((a.seconds, Some((a.parse_seconds, a.database_seconds))));
        unchanged.push((b.seconds, Some((b.parse_seconds, b.database_seconds))));
        with_changes.push((c.seconds, Some((c.parse_seconds, c.database_seconds))));
    }

    let mut timings = vec![
        Timing::new("first apply, nothing stored (in-process)", first),
        Timing::new("re-apply, unchanged (in-process)", unchanged),
        Timing::new(
            &format!(
                "re-apply, {} subscriptions changed (in-process)",
                dataset.changed_subscriptions
            ),
            with_changes,
        ),
    ];
    let mut notes = Vec::new();
    match &options.temctl {
        Some(temctl) => {
            let dir = std::env::temp_dir().join(format!(
                "tem-apply-bench-{}",
                uuid::Uuid::new_v4().simple()
            ));
            std::fs::create_dir_all(&dir)?;
            let file = dir.join("catalog.yaml");
            std::fs::write(&file, &text)?;
            let mut first = Vec::new();
            let mut unchanged = Vec::new();
            for run in 1..=options.runs {
                let db = BenchDb::create(&options.database_url).await?;
                let outcome = (|| {
                    let a = apply_with_temctl(temctl, &db.url, &file)?;
                    progress(&format!("run {run}: temctl apply, first {:.3} s", a.0));
                    let b = apply_with_temctl(temctl, &db.url, &file)?;
                    progress(&format!("run {run}: temctl apply, unchanged {:.3} s", b.0));
                    anyhow::Ok((a, b))
                })();
                if !options.keep {
                    db.drop_database().await?;
                }
                let ((a, a_json), (b, b_json)) = outcome?;
                checks.temctl_first_created = a_json["created"].as_u64();
                checks.temctl_unchanged_changed = b_json["changed"].as_u64();
                expected &= checks.temctl_first_created == Some(dataset.entries)
                    && checks.temctl_unchanged_changed == Some(0);
                first.push((a, None));
                unchanged.push((b, None));
            }
            let _ = std::fs::remove_dir_all(&dir);
            notes.push(format!("temctl timed as a process: {}", temctl.display()));
            timings.push(Timing::new("temctl apply --json, first (process)", first));
            timings.push(Timing::new(
                "temctl apply --json, unchanged (process)",
                unchanged,
            ));
        }
        None => notes.push(
            "no temctl binary next to this one (build it with `cargo build --release -p temctl`, or pass --temctl): the command itself was not timed".into(),
        ),
    }
    checks.all_as_expected = expected;

    let mut goals = vec![
        Goal::at_most(
            "first apply (in-process, best run)",
            timings[0].best,
            GOAL_SECONDS,
            "s",
            true,
        ),
        Goal::at_most(
            "unchanged re-apply (in-process, best run)",
            timings[1].best,
            GOAL_SECONDS,
            "s",
            true,
        ),
    ];
    if timings.len() == 5 {
        goals.push(Goal::at_most(
            "temctl apply, first (best run)",
            timings[3].best,
            GOAL_SECONDS,
            "s",
            true,
        ));
        goals.push(Goal::at_most(
            "temctl apply, unchanged (best run)",
            timings[4].best,
            GOAL_SECONDS,
            "s",
            true,
        ));
    }
    if cfg!(debug_assertions) {
        notes.push("a debug build: the goals are for a release build (--release)".into());
    }
    let all_goals_met = goals.iter().all(|g| g.met) && expected;
    let summary = Summary {
        dataset,
        environment,
        timings,
        checks,
        goals,
        all_goals_met,
        notes,
    };
    print(&summary);
    if let Some(path) = &options.json_out {
        std::fs::write(path, serde_json::to_vec_pretty(&summary)?)
            .with_context(|| format!("write {}", path.display()))?;
    }
    if !summary.checks.all_as_expected {
        bail!(
            "the applies did not do what was expected: {:?}",
            summary.checks
        );
    }
    Ok(())
}

pub fn print(summary: &Summary) {
    let d = &summary.dataset;
    println!();
    println!(
        "== apply benchmark: {} subscriptions of {} customers ==",
        d.subscriptions, d.customers
    );
    println!(
        "  {} entries, {:.1} MiB of YAML; {} numbers with two adjacent periods; {} subscriptions changed in the third case",
        d.entries,
        d.file_bytes as f64 / 1048576.0,
        d.numbers_with_two_periods,
        d.changed_subscriptions
    );
    for (key, value) in &summary.environment {
        println!("  {key:<34} {value}");
    }
    println!();
    println!(
        "{:<60} {:>7} {:>8} {:>8} {:>10}  runs",
        "case", "best s", "median s", "parse s", "database s"
    );
    println!("{}", "-".repeat(110));
    let opt = |v: Option<f64>| v.map(|v| format!("{v:.3}")).unwrap_or_else(|| "-".into());
    for t in &summary.timings {
        println!(
            "{:<60} {:>7.3} {:>8.3} {:>8} {:>10}  {}",
            t.case,
            t.best,
            t.median,
            opt(t.parse_seconds),
            opt(t.database_seconds),
            t.runs
                .iter()
                .map(|r| format!("{r:.3}"))
                .collect::<Vec<_>>()
                .join(" ")
        );
    }
    println!();
    let c = &summary.checks;
    println!("checks:");
    println!(
        "  first apply created {} objects; {} subscriptions and {} customers stored",
        c.first_created, c.stored_subscriptions, c.stored_customers
    );
    println!(
        "  unchanged re-apply: {} changed, {} unchanged; with changes: {} updated",
        c.unchanged_changed, c.unchanged_unchanged, c.changed_updated
    );
    if let (Some(created), Some(changed)) = (c.temctl_first_created, c.temctl_unchanged_changed) {
        println!("  temctl: first created {created}, unchanged re-apply changed {changed}");
    }
    println!(
        "  all as expected: {}",
        crate::report::yes(c.all_as_expected)
    );
    println!();
    print_goals(&summary.goals, 44, 3);
    for note in &summary.notes {
        println!("note: {note}");
    }
    println!();
    print_json_summary(summary);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_generated_file_is_valid_and_holds_exactly_the_subscriptions_asked_for() {
        let (text, dataset) = generate(1001, 7, 5);
        let parsed = catalog::parse(&text, |_| None);
        assert!(parsed.problems.is_empty(), "{:?}", &parsed.problems[..1]);
        assert_eq!(parsed.document.subscriptions.len(), 1001);
        assert_eq!(parsed.document.customers.len(), 7);
        assert_eq!(dataset.entries, 1 + 7 + 1001);
        assert_eq!(dataset.changed_subscriptions, 5);
        assert!(dataset.numbers_with_two_periods > 50);
    }
}
