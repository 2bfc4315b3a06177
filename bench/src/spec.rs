//! `spec-bench`: the usage specification (issue 18) of a large cycle,
//! written to a local file and to the emulator's S3, each in a child
//! process that reports its time and peak memory. The dataset is
//! totals-bench's (`totals::data`): the benchmarked customer's `--rows`
//! CDRs and the reference customer's `--reference-rows` in the same cycle,
//! both on rate plans with bundles, calculated in full first so that every
//! CDR has its stored pricing. The goal is memory that stays flat: the
//! peak at the large size within 20% of the reference's. See
//! bench/README.md.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result};
use async_trait::async_trait;
use chrono::NaiveDate;
use serde::{Deserialize, Serialize};
use tem_local::emulator::Emulator;
use tem_shared::adapters::billing::specification::write_cycle;
use tem_shared::adapters::s3::S3MultipartUpload;
use tem_shared::adapters::s3_client;
use tem_shared::adapters::totals::calculate_totals_with;
use tem_shared::billing::calculation::Recalculation;
use tem_shared::billing::specification::{PartUpload, CONTENT_TYPE};
use tem_shared::ports::PortError;

use crate::db::BenchDb;
use crate::totals::data;

pub struct Options {
    pub rows: u64,
    pub reference_rows: u64,
    pub subscriptions: u32,
    pub seed: u64,
    pub database_url: String,
    pub s3: bool,
    pub keep: bool,
    pub json_out: Option<PathBuf>,
}

/// Where a child writes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Sink {
    File(PathBuf),
    S3 { bucket: String, key: String },
}

/// What a child reports.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChildReport {
    pub seconds: f64,
    pub rows: u64,
    pub bytes: u64,
    pub parts: u32,
    pub sha256: String,
    pub rated_cost_micros: i64,
    /// The object's size as S3 reports it (HeadObject), for the S3 sink.
    pub stored_bytes: Option<u64>,
    pub vm_hwm_kb: u64,
    pub vm_rss_kb: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Case {
    pub sink: &'static str,
    pub rows: u64,
    pub report: ChildReport,
}

#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub rows: u64,
    pub reference_rows: u64,
    pub subscriptions: u32,
    pub load_seconds: f64,
    pub calculation_seconds: f64,
    pub load_average_start: String,
    pub load_average_end: String,
    pub cases: Vec<Case>,
    /// Peak RSS at `rows` over that at `reference_rows`, per sink.
    pub rss_ratios: Vec<(String, f64)>,
    pub checks: Vec<(String, bool)>,
}

/// A file as the upload: each part appended as it comes.
pub struct FileUpload {
    file: std::fs::File,
}

impl FileUpload {
    pub fn create(path: &Path) -> Result<Self> {
        Ok(Self {
            file: std::fs::File::create(path)
                .with_context(|| format!("create {}", path.display()))?,
        })
    }
}

#[async_trait]
impl PartUpload for FileUpload {
    async fn part(&mut self, bytes: Vec<u8>) -> Result<(), PortError> {
        self.file
            .write_all(&bytes)
            .map_err(|e| PortError::new("write the file", e))
    }

    async fn complete(&mut self, last: Vec<u8>) -> Result<(), PortError> {
        self.file
            .write_all(&last)
            .and_then(|_| self.file.sync_all())
            .map_err(|e| PortError::new("write the file", e))
    }

    async fn abort(&mut self) {}
}

/// The child: one specification, timed, with this process's peak memory.
pub async fn write_child(
    database: &str,
    customer_id: i64,
    cycle: NaiveDate,
    sink: Sink,
) -> Result<ChildReport> {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(database)
        .await
        .with_context(|| format!("connect to {database}"))?;
    let (written, seconds, stored_bytes) = match sink {
        Sink::File(path) => {
            let mut upload = FileUpload::create(&path)?;
            let started = Instant::now();
            let written = write_cycle(&pool, &mut upload, customer_id, cycle).await?;
            (written, started.elapsed().as_secs_f64(), None)
        }
        Sink::S3 { bucket, key } => {
            let emulator = Emulator::start().context("the emulator")?;
            let s3 = s3_client(&emulator.sdk_config().await);
            let mut upload = S3MultipartUpload::new(s3.clone(), &bucket, &key, CONTENT_TYPE);
            let started = Instant::now();
            let written = write_cycle(&pool, &mut upload, customer_id, cycle).await?;
            let seconds = started.elapsed().as_secs_f64();
            let head = s3
                .head_object()
                .bucket(&bucket)
                .key(&key)
                .send()
                .await
                .context("HeadObject of the written specification")?;
            let stored = head.content_length().and_then(|n| u64::try_from(n).ok());
            (written, seconds, stored)
        }
    };
    pool.close().await;
    let (vm_hwm_kb, vm_rss_kb) = crate::child::memory_kb()?;
    Ok(ChildReport {
        seconds,
        rows: written.rows,
        bytes: written.bytes,
        parts: written.parts,
        sha256: written.sha256,
        rated_cost_micros: written.rated_cost_micros,
        stored_bytes,
        vm_hwm_kb,
        vm_rss_kb,
    })
}

fn progress(message: &str) {
    eprintln!("[spec-bench] {message}");
}

fn run_child(url: &str, customer: i64, cycle: NaiveDate, sink: &Sink) -> Result<ChildReport> {
    let exe = std::env::current_exe().context("this program's path")?;
    let output = Command::new(exe)
        .arg("write")
        .arg("--database")
        .arg(url)
        .arg("--customer")
        .arg(customer.to_string())
        .arg("--cycle")
        .arg(cycle.to_string())
        .arg("--sink")
        .arg(serde_json::to_string(sink)?)
        .output()
        .context("run the child")?;
    anyhow::ensure!(
        output.status.success(),
        "the child failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let last = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(last).with_context(|| format!("parse the child's report {last:?}"))
}

async fn create_bucket(emulator: &Emulator) -> Result<String> {
    let s3 = s3_client(&emulator.sdk_config().await);
    let name = format!(
        "tem-spec-bench-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let mut create = s3.create_bucket().bucket(&name);
    if emulator.region != "us-east-1" {
        create = create.create_bucket_configuration(
            aws_sdk_s3::types::CreateBucketConfiguration::builder()
                .location_constraint(aws_sdk_s3::types::BucketLocationConstraint::from(
                    emulator.region.as_str(),
                ))
                .build(),
        );
    }
    create
        .send()
        .await
        .context("create the benchmark's bucket")?;
    Ok(name)
}

async fn delete_objects(emulator: &Emulator, bucket: &str, keys: &[String]) {
    let s3 = s3_client(&emulator.sdk_config().await);
    for key in keys {
        let _ = s3.delete_object().bucket(bucket).key(key).send().await;
    }
    let _ = s3.delete_bucket().bucket(bucket).send().await;
}

pub async fn run(options: Options) -> Result<()> {
    let load_average_start = crate::report::load_average();
    let db = BenchDb::create(&options.database_url).await?;
    progress(&format!("database {} created and migrated", db.name));
    let dataset = data::create(
        &db,
        &data::Spec {
            rows: options.rows,
            other_rows: 0,
            subscriptions: options.subscriptions,
            reference_rows: options.reference_rows,
            seed: options.seed,
        },
    )
    .await?;
    sqlx::query("UPDATE customer SET rate_plan_id = $2 WHERE id = $1")
        .bind(dataset.customer_id)
        .bind(&dataset.rate_plan_id)
        .execute(&db.pool)
        .await
        .context("put the customer on its plan")?;
    progress(&format!(
        "{} + {} CDRs loaded in {:.1} s",
        dataset.rows, dataset.other_customer_rows, dataset.load_seconds
    ));
    let started = Instant::now();
    let sizes = [
        (dataset.other_customer_id, dataset.other_customer_rows),
        (dataset.customer_id, dataset.rows),
    ];
    let mut rated = Vec::new();
    for (customer, rows) in sizes {
        let (totals, _) =
            calculate_totals_with(&db.pool, customer, dataset.cycle, Recalculation::Full)
                .await
                .with_context(|| format!("calculate the cycle of {rows} CDRs"))?;
        rated.push(totals.rated_cost_micros);
    }
    let calculation_seconds = started.elapsed().as_secs_f64();
    progress(&format!(
        "both cycles calculated in {calculation_seconds:.1} s (pricings stored)"
    ));

    let dir = std::env::temp_dir().join(format!("spec-bench-{}", db.name));
    std::fs::create_dir_all(&dir)?;
    let emulator = if options.s3 {
        Some(Emulator::start().context("start the emulator (scripts/emulator.sh start)")?)
    } else {
        None
    };
    let bucket = match &emulator {
        Some(emulator) => Some(create_bucket(emulator).await?),
        None => None,
    };
    let mut cases = Vec::new();
    let mut keys = Vec::new();
    let mut checks = Vec::new();
    for ((customer, rows), rated) in sizes.iter().zip(&rated) {
        let file = dir.join(format!("{rows}-specification.csv.gz"));
        let mut sinks = vec![("file", Sink::File(file.clone()))];
        if let Some(bucket) = &bucket {
            let key = format!(
                "invoices/{customer}/{}/bench-specification.csv.gz",
                dataset.cycle
            );
            keys.push(key.clone());
            sinks.push((
                "s3",
                Sink::S3 {
                    bucket: bucket.clone(),
                    key,
                },
            ));
        }
        for (name, sink) in sinks {
            progress(&format!(
                "writing the specification of {rows} CDRs to {name}"
            ));
            let report = run_child(&db.url, *customer, dataset.cycle, &sink)?;
            progress(&format!(
                "{rows} CDRs to {name}: {:.1} s, {:.1} MiB compressed in {} part(s), peak RSS {:.1} MiB",
                report.seconds,
                report.bytes as f64 / 1048576.0,
                report.parts,
                report.vm_hwm_kb as f64 / 1024.0
            ));
            checks.push((
                format!("{name} {rows}: every CDR written, summing to the totals"),
                report.rows == *rows && report.rated_cost_micros == *rated,
            ));
            if let Some(stored) = report.stored_bytes {
                checks.push((
                    format!("{name} {rows}: S3 holds the bytes written"),
                    stored == report.bytes,
                ));
            }
            cases.push(Case {
                sink: name,
                rows: *rows,
                report,
            });
        }
        let _ = std::fs::remove_file(&file);
    }
    // Both sinks got the same bytes.
    for rows in [dataset.other_customer_rows, dataset.rows] {
        let hashes: Vec<&str> = cases
            .iter()
            .filter(|c| c.rows == rows)
            .map(|c| c.report.sha256.as_str())
            .collect();
        checks.push((
            format!("{rows}: the same bytes in every sink"),
            hashes.windows(2).all(|w| w[0] == w[1]),
        ));
    }
    let mut rss_ratios = Vec::new();
    for sink in ["file", "s3"] {
        let peak = |rows: u64| {
            cases
                .iter()
                .find(|c| c.sink == sink && c.rows == rows)
                .map(|c| c.report.vm_hwm_kb as f64)
        };
        if let (Some(small), Some(large)) = (peak(dataset.other_customer_rows), peak(dataset.rows))
        {
            rss_ratios.push((sink.to_string(), large / small));
        }
    }
    if let (Some(emulator), Some(bucket)) = (&emulator, &bucket) {
        delete_objects(emulator, bucket, &keys).await;
    }
    let _ = std::fs::remove_dir(&dir);
    let summary = Summary {
        rows: dataset.rows,
        reference_rows: dataset.other_customer_rows,
        subscriptions: dataset.subscriptions,
        load_seconds: dataset.load_seconds,
        calculation_seconds,
        load_average_start,
        load_average_end: crate::report::load_average(),
        cases,
        rss_ratios,
        checks,
    };
    if options.keep {
        progress(&format!("database {} kept", db.name));
    } else {
        db.drop_database().await?;
    }
    print(&summary);
    if let Some(path) = &options.json_out {
        std::fs::write(path, serde_json::to_string_pretty(&summary)?)?;
    }
    anyhow::ensure!(summary.checks.iter().all(|(_, ok)| *ok), "a check failed");
    Ok(())
}

pub fn print(summary: &Summary) {
    println!();
    println!(
        "== usage specification: {} and {} CDRs, {} subscriptions ==",
        summary.reference_rows, summary.rows, summary.subscriptions
    );
    println!(
        "load average {} -> {}",
        summary.load_average_start, summary.load_average_end
    );
    println!(
        "{:<6} {:>12} {:>10} {:>12} {:>12} {:>7} {:>14}",
        "sink", "CDRs", "seconds", "CDRs/s", "MiB gzip", "parts", "peak RSS MiB"
    );
    for case in &summary.cases {
        let r = &case.report;
        println!(
            "{:<6} {:>12} {:>10.2} {:>12.0} {:>12.1} {:>7} {:>14.1}",
            case.sink,
            case.rows,
            r.seconds,
            r.rows as f64 / r.seconds.max(1e-9),
            r.bytes as f64 / 1048576.0,
            r.parts,
            r.vm_hwm_kb as f64 / 1024.0
        );
    }
    for (sink, ratio) in &summary.rss_ratios {
        println!(
            "peak RSS ratio {} / {} CDRs, {sink}: {ratio:.3} (goal: at most 1.2, flat)",
            summary.rows, summary.reference_rows
        );
    }
    for (check, ok) in &summary.checks {
        println!("check: {check}: {}", crate::report::yes(*ok));
    }
    crate::report::print_json_summary(summary);
}
