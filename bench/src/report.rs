//! The benchmark's results: a table for people and a JSON summary.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::phases::Phase;

#[derive(Debug, Clone, Serialize)]
pub struct Load {
    pub method: String,
    pub seconds: f64,
    pub rows: u64,
    pub rows_per_second: f64,
}

impl Load {
    pub fn new(method: &str, seconds: f64, rows: u64) -> Self {
        Self {
            method: method.into(),
            seconds,
            rows,
            rows_per_second: if seconds > 0.0 {
                rows as f64 / seconds
            } else {
                0.0
            },
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Memory {
    pub rows: u64,
    pub peak_rss_kib: u64,
    pub small_rows: u64,
    pub small_peak_rss_kib: u64,
    /// peak(rows) / peak(small_rows).
    pub ratio: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Counts {
    pub rows_generated: u64,
    pub ours: i64,
    pub ours_with_customer: i64,
    pub psql_copy: i64,
    /// `None` with `--no-legacy`.
    pub legacy: Option<i64>,
    pub read: u64,
    pub loaded: u64,
    pub duplicate: u64,
    pub rejected: u64,
    pub without_customer: u64,
    pub tables_equal: bool,
    pub ours_is_rows_minus_rejected: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Goal {
    pub goal: String,
    pub actual: f64,
    pub target: f64,
    pub unit: String,
    pub met: bool,
    /// Headroom relative to the target: positive when met, negative by how
    /// much it is missed.
    pub margin_percent: f64,
}

impl Goal {
    pub fn at_least(goal: &str, actual: f64, target: f64, unit: &str) -> Self {
        Self {
            goal: goal.into(),
            actual,
            target,
            unit: unit.into(),
            met: actual >= target,
            margin_percent: (actual / target - 1.0) * 100.0,
        }
    }

    pub fn at_most(goal: &str, actual: f64, target: f64, unit: &str, strict: bool) -> Self {
        Self {
            goal: goal.into(),
            actual,
            target,
            unit: unit.into(),
            met: if strict {
                actual < target
            } else {
                actual <= target
            },
            margin_percent: (1.0 - actual / target) * 100.0,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub rows: u64,
    pub environment: BTreeMap<String, String>,
    /// Sizes in bytes.
    pub files: BTreeMap<String, u64>,
    pub loads: Vec<Load>,
    /// Time inside `Importer::import` (the child's own measurement; the
    /// `ours` load above is the child process's wall time).
    pub ours_import_call_seconds: f64,
    /// copy_time / our_time: our speed relative to `psql \copy`.
    pub ours_vs_copy_speed: f64,
    /// copy_time / our time on one connection (a pool of one).
    pub one_connection_vs_copy_speed: f64,
    /// legacy_time / our_time; `None` with `--no-legacy`.
    pub ours_vs_legacy_speed: Option<f64>,
    pub memory: Memory,
    pub counts: Counts,
    pub goals: Vec<Goal>,
    pub all_goals_met: bool,
    pub phases: Option<Vec<Phase>>,
    pub notes: Vec<String>,
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

pub fn print(summary: &Summary) {
    println!();
    println!("== CDR import benchmark: {} routit rows ==", summary.rows);
    for (key, value) in &summary.environment {
        println!("  {key:<22} {value}");
    }
    for (key, value) in &summary.files {
        println!(
            "  {key:<22} {value} bytes ({:.1} MiB)",
            *value as f64 / 1048576.0
        );
    }
    println!();
    println!(
        "{:<46} {:>10} {:>12} {:>12}",
        "load", "seconds", "rows", "rows/s"
    );
    println!("{}", "-".repeat(83));
    for load in &summary.loads {
        println!(
            "{:<46} {:>10.3} {:>12} {:>12.0}",
            load.method, load.seconds, load.rows, load.rows_per_second
        );
    }
    println!(
        "  (time inside Importer::import: {:.3} s)",
        summary.ours_import_call_seconds
    );
    println!();
    println!(
        "ours vs psql \\copy speed (copy_time / our_time): {:.3}x",
        summary.ours_vs_copy_speed
    );
    println!(
        "ours on one connection vs psql \\copy:             {:.3}x",
        summary.one_connection_vs_copy_speed
    );
    if let Some(speed) = summary.ours_vs_legacy_speed {
        println!("ours vs legacy speed (legacy_time / our_time):   {speed:.2}x");
    }
    let m = &summary.memory;
    println!(
        "peak RSS of the import: {:.1} MiB for {} rows, {:.1} MiB for {} rows, ratio {:.3}",
        mib(m.peak_rss_kib),
        m.rows,
        mib(m.small_peak_rss_kib),
        m.small_rows,
        m.ratio
    );
    println!();
    let c = &summary.counts;
    println!("row counts:");
    println!("  generated                 {}", c.rows_generated);
    println!(
        "  import report             read {}, loaded {}, duplicate {}, rejected {}, without customer {}",
        c.read, c.loaded, c.duplicate, c.rejected, c.without_customer
    );
    println!(
        "  call_detail_record        {} ({} with a customer)",
        c.ours, c.ours_with_customer
    );
    println!("  cdr_copy_baseline         {}", c.psql_copy);
    match c.legacy {
        Some(legacy) => println!("  cdr_legacy_baseline       {legacy}"),
        None => println!("  cdr_legacy_baseline       (not loaded: --no-legacy)"),
    }
    println!(
        "  tables equal: {}; ours = generated - rejected: {}",
        yes(c.tables_equal),
        yes(c.ours_is_rows_minus_rejected)
    );
    println!();
    print_goals(&summary.goals, 44, 3);
    if let Some(phases) = &summary.phases {
        println!();
        println!("phases of our import, each run alone:");
        for p in phases {
            println!("  {:<56} {:>8.3} s  {}", p.name, p.seconds, p.note);
        }
    }
    if !summary.notes.is_empty() {
        println!();
        for note in &summary.notes {
            println!("note: {note}");
        }
    }
    println!();
    print_json_summary(summary);
}

pub fn yes(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "NO"
    }
}

/// The summary as pretty JSON, for scripts reading the output.
pub fn print_json_summary<T: Serialize>(summary: &T) {
    println!("JSON summary:");
    println!(
        "{}",
        serde_json::to_string_pretty(summary).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
    );
}

pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// What the numbers depend on: cores, load and the server's settings.
pub async fn environment(db: &crate::db::BenchDb) -> anyhow::Result<Vec<(String, String)>> {
    let mut environment = vec![
        (
            "cpus".to_string(),
            std::thread::available_parallelism()
                .map(|n| n.to_string())
                .unwrap_or_else(|_| "?".into()),
        ),
        ("load average (start)".to_string(), load_average()),
    ];
    environment.extend(
        db.server_info()
            .await?
            .into_iter()
            .map(|(k, v)| (format!("postgres {k}"), v)),
    );
    Ok(environment)
}

/// The goals, each met or missed with its margin; `name_width` and
/// `decimals` fit the benchmark's goal names and numbers.
pub fn print_goals(goals: &[Goal], name_width: usize, decimals: usize) {
    println!("goals:");
    for goal in goals {
        println!(
            "  [{}] {:<name_width$} actual {:>w$.decimals$}{} target {:>w$.decimals$}{}  margin {:+.1}%",
            if goal.met { "met   " } else { "MISSED" },
            goal.goal,
            goal.actual,
            goal.unit,
            goal.target,
            goal.unit,
            goal.margin_percent,
            w = decimals + 5,
        );
    }
}

/// Warnings and errors of the code under test on stderr, so they do not mix
/// with the report on stdout.
pub fn init_tracing() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
}
