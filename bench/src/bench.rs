//! The benchmark run: generate, load three ways, compare, clean up.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};

use crate::db::{BenchDb, COPY_BASELINE, LEGACY_BASELINE, OURS};
use crate::generate;
use crate::measure;
use crate::phases;
use crate::report::{Counts, Goal, Load, Memory, Summary};

/// Issue 17: at least 1.2x the speed of `psql \\copy` of the same rows (issue
/// 3 asked for 0.8x).
pub const COPY_SPEED_GOAL: f64 = 1.2;

pub struct Options {
    pub rows: u64,
    pub small_rows: u64,
    pub subscriptions: u32,
    pub seed: u64,
    pub database_url: String,
    /// Time the import's stages alone (always done when the \copy goal is
    /// missed).
    pub phases: bool,
    /// Skip the legacy method (one INSERT per row; about 5 minutes per
    /// million rows on 2 cores).
    pub no_legacy: bool,
    /// Keep the database and the files.
    pub keep: bool,
    pub json_out: Option<PathBuf>,
}

/// A temporary folder, removed when dropped unless kept.
struct WorkDir {
    path: PathBuf,
    keep: bool,
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

fn progress(step: &str) {
    eprintln!("[import-bench] {step}");
}

pub async fn run(options: Options) -> Result<()> {
    if options.rows == 0 || options.small_rows == 0 {
        bail!("--rows and --small-rows must be positive");
    }
    let work = WorkDir {
        path: std::env::temp_dir().join(format!(
            "tem-bench-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        )),
        keep: options.keep,
    };
    std::fs::create_dir_all(&work.path)
        .with_context(|| format!("create {}", work.path.display()))?;
    let db = BenchDb::create(&options.database_url).await?;
    progress(&format!(
        "database {} created and migrated; files in {}",
        db.name,
        work.path.display()
    ));
    let outcome = measure_all(&db, &work.path, &options).await;
    if options.keep {
        progress(&format!(
            "kept database {} and {}",
            db.name,
            work.path.display()
        ));
    } else {
        let name = db.name.clone();
        db.drop_database().await?;
        progress(&format!("database {name} dropped"));
    }
    let summary = outcome?;
    crate::report::print(&summary);
    if let Some(path) = &options.json_out {
        std::fs::write(path, serde_json::to_vec_pretty(&summary)?)
            .with_context(|| format!("write {}", path.display()))?;
    }
    Ok(())
}

async fn measure_all(db: &BenchDb, dir: &Path, options: &Options) -> Result<Summary> {
    let mut notes = Vec::new();
    let mut environment = crate::report::environment(db).await?;

    // 1. The files and the subscriptions.
    let subscriptions = generate::known_subscriptions(options.subscriptions);
    db.prepare(&subscriptions).await?;
    let big_zip = dir.join(format!("routit-{}.zip", options.rows));
    let started = Instant::now();
    let generated =
        generate::write_zip(&big_zip, options.rows, options.subscriptions, options.seed)?;
    progress(&format!(
        "generated {} rows ({} bytes of CSV, {} bytes zipped; {} of a seeded subscription) in {:.1} s",
        generated.rows,
        generated.csv_bytes,
        generated.zip_bytes,
        generated.rows_known_subscriber,
        started.elapsed().as_secs_f64()
    ));
    let small_zip = if options.small_rows == options.rows {
        big_zip.clone()
    } else {
        let path = dir.join(format!("routit-{}.zip", options.small_rows));
        generate::write_zip(
            &path,
            options.small_rows,
            options.subscriptions,
            options.seed,
        )?;
        path
    };
    let rejects_dir = dir.join("rejected");

    // 5a. Peak memory for the small file (then the table is emptied).
    note_checkpoint(db, &mut notes).await;
    progress(&format!(
        "our import of {} rows (memory)",
        options.small_rows
    ));
    let (small, _) = measure::our_import(&small_zip, &db.url, &rejects_dir, 4)?;
    if small.loaded + small.rejected != options.small_rows {
        bail!(
            "the small import loaded {} and rejected {} of {} rows",
            small.loaded,
            small.rejected,
            options.small_rows
        );
    }
    db.reset_ours().await?;

    // 2 + 5b. Our import of the big file: time and peak memory.
    note_checkpoint(db, &mut notes).await;
    progress(&format!("our import of {} rows", options.rows));
    let (ours, ours_wall) = measure::our_import(&big_zip, &db.url, &rejects_dir, 4)?;
    progress(&format!(
        "  {:.3} s ({} loaded, {} rejected, {} without customer, peak RSS {} KiB)",
        ours_wall.as_secs_f64(),
        ours.loaded,
        ours.rejected,
        ours.without_customer,
        ours.vm_hwm_kb
    ));

    // 3. psql \copy of the same rows, already decompressed and canonical.
    let copy_file = dir.join("canonical.copy");
    measure::export_canonical(&db.url, &copy_file)?;
    let copy_bytes = std::fs::metadata(&copy_file)
        .with_context(|| format!("stat {}", copy_file.display()))?
        .len();
    note_checkpoint(db, &mut notes).await;
    progress("psql \\copy of the canonical rows");
    let copy_time = measure::psql_copy(&db.url, COPY_BASELINE, &copy_file)?;
    progress(&format!("  {:.3} s", copy_time.as_secs_f64()));

    // 3b. Ours again with a pool of one: the load on one connection, as
    //     before issue 17's second writer (and wherever no second is free).
    db.reset_ours().await?;
    note_checkpoint(db, &mut notes).await;
    progress(&format!(
        "our import of {} rows on one connection",
        options.rows
    ));
    let (single, single_wall) = measure::our_import(&big_zip, &db.url, &rejects_dir, 1)?;
    progress(&format!(
        "  {:.3} s ({} loaded)",
        single_wall.as_secs_f64(),
        single.loaded
    ));
    if single.loaded != ours.loaded {
        bail!(
            "on one connection {} rows loaded, on two {}",
            single.loaded,
            ours.loaded
        );
    }

    // 4. The legacy method.
    let legacy = if options.no_legacy {
        progress("legacy: skipped (--no-legacy)");
        None
    } else {
        note_checkpoint(db, &mut notes).await;
        progress(&format!(
            "legacy: one INSERT per row, COMMIT every {} rows",
            measure::LEGACY_COMMIT_EVERY
        ));
        let mut connection = db.connect().await?;
        let (legacy_rows, legacy_time) =
            measure::legacy_inserts(&mut connection, LEGACY_BASELINE, &copy_file).await?;
        drop(connection);
        progress(&format!("  {:.3} s", legacy_time.as_secs_f64()));
        Some((legacy_rows, legacy_time))
    };
    environment.push((
        "load average (end)".to_string(),
        crate::report::load_average(),
    ));

    // Verification.
    let counts = Counts {
        rows_generated: options.rows,
        ours: db.count(OURS).await?,
        ours_with_customer: db.count_with_customer(OURS).await?,
        psql_copy: db.count(COPY_BASELINE).await?,
        legacy: match legacy {
            Some(_) => Some(db.count(LEGACY_BASELINE).await?),
            None => None,
        },
        read: ours.read,
        loaded: ours.loaded,
        duplicate: ours.duplicate,
        rejected: ours.rejected,
        without_customer: ours.without_customer,
        tables_equal: false,
        ours_is_rows_minus_rejected: false,
    };
    let counts = Counts {
        tables_equal: counts.ours == counts.psql_copy
            && counts.legacy.is_none_or(|legacy| counts.ours == legacy),
        ours_is_rows_minus_rejected: counts.ours as u64 + counts.rejected == options.rows
            && counts.ours as u64 == counts.loaded,
        ..counts
    };
    if counts.rejected > 0 {
        notes.push(format!(
            "{} generated rows were rejected (expected 0); see the rejected rows CSV",
            counts.rejected
        ));
    }
    if let (Some((legacy_rows, _)), Some(stored)) = (legacy, counts.legacy) {
        if legacy_rows as i64 != stored {
            notes.push(format!(
                "the legacy loader sent {legacy_rows} rows but its table holds {stored}"
            ));
        }
    }

    let ours_s = ours_wall.as_secs_f64();
    let copy_s = copy_time.as_secs_f64();
    let ours_vs_copy_speed = copy_s / ours_s;
    let ours_vs_legacy_speed = legacy.map(|(_, time)| time.as_secs_f64() / ours_s);
    let memory = Memory {
        rows: options.rows,
        peak_rss_kib: ours.vm_hwm_kb,
        small_rows: options.small_rows,
        small_peak_rss_kib: small.vm_hwm_kb,
        ratio: ours.vm_hwm_kb as f64 / small.vm_hwm_kb as f64,
    };
    let mut goals = vec![Goal::at_least(
        "speed vs psql \\copy (copy_time/our_time)",
        ours_vs_copy_speed,
        COPY_SPEED_GOAL,
        "x",
    )];
    if let Some(speed) = ours_vs_legacy_speed {
        goals.push(Goal::at_least(
            "speed vs legacy (legacy_time/our_time)",
            speed,
            8.0,
            "x",
        ));
    }
    goals.extend([
        Goal::at_most(
            &format!(
                "peak RSS {} rows / peak RSS {} rows",
                options.rows, options.small_rows
            ),
            memory.ratio,
            1.2,
            "x",
            false,
        ),
        Goal::at_most(
            &format!("peak RSS for {} rows", options.rows),
            ours.vm_hwm_kb as f64 / 1024.0,
            128.0,
            " MiB",
            true,
        ),
    ]);
    let all_goals_met = goals.iter().all(|g| g.met);
    if options.rows != 1_000_000 && options.rows != 10_000_000 {
        notes.push(
            "the goals are defined for 1,000,000 and 10,000,000 rows; this run used another size"
                .to_string(),
        );
    }

    let phases = if options.phases || !goals[0].met {
        progress("timing the import's phases alone");
        Some(phases::run(&big_zip, &db.pool, Some(&copy_file)).await?)
    } else {
        None
    };

    Ok(Summary {
        rows: options.rows,
        environment: environment.into_iter().collect(),
        files: BTreeMap::from([
            ("zip".to_string(), generated.zip_bytes),
            ("csv (inside the zip)".to_string(), generated.csv_bytes),
            ("copy text file".to_string(), copy_bytes),
        ]),
        loads: [
            Load::new(
                "ours (ZIP -> call_detail_record, child process)",
                ours_s,
                ours.loaded,
            ),
            Load::new(
                "psql \\copy (decompressed canonical rows)",
                copy_s,
                counts.psql_copy as u64,
            ),
            Load::new(
                "ours on one connection (pool of 1)",
                single_wall.as_secs_f64(),
                single.loaded,
            ),
        ]
        .into_iter()
        .chain(legacy.map(|(rows, time)| {
            Load::new(
                "legacy (INSERT per row, COMMIT per 1,000)",
                time.as_secs_f64(),
                rows,
            )
        }))
        .collect(),
        ours_import_call_seconds: ours.import_ms / 1000.0,
        ours_vs_copy_speed,
        one_connection_vs_copy_speed: copy_s / single_wall.as_secs_f64(),
        ours_vs_legacy_speed,
        memory,
        counts,
        goals,
        all_goals_met,
        phases,
        notes,
    })
}

async fn note_checkpoint(db: &BenchDb, notes: &mut Vec<String>) {
    if let Some(note) = db.checkpoint().await {
        if !notes.contains(&note) {
            notes.push(note);
        }
    }
}
