//! `import-bench import-only`: our import of one ZIP, alone in its process,
//! so its peak memory (`VmHWM`) is the import's and not the generator's.
//! Prints one JSON object on stdout.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use sqlx::postgres::PgPoolOptions;
use tem_shared::import::importer::{ImportRequest, Importer};
use tem_shared::import::source::{FileSource, RangeRead};
use tem_shared::import::zip::ZipLimits;
use tem_shared::import::LocalRejects;
use tem_shared::routing::Provider;

/// What the child reports to the parent.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChildReport {
    pub status: String,
    pub read: u64,
    pub loaded: u64,
    pub duplicate: u64,
    pub rejected: u64,
    pub without_customer: u64,
    pub rejected_key: Option<String>,
    /// Time inside `Importer::import`.
    pub import_ms: f64,
    /// Peak resident set size of the process, in KiB.
    pub vm_hwm_kb: u64,
    /// Resident set size at the end, in KiB.
    pub vm_rss_kb: u64,
}

/// Imports `zip` with a pool of `connections` (the importer loads on two
/// when the pool has a second to spare).
pub async fn import_only(
    zip: &Path,
    database: &str,
    rejects_dir: &Path,
    connections: u32,
) -> Result<ChildReport> {
    let pool = PgPoolOptions::new()
        .max_connections(connections)
        .connect(database)
        .await
        .with_context(|| format!("connect to {database}"))?;
    std::fs::create_dir_all(rejects_dir)
        .with_context(|| format!("create {}", rejects_dir.display()))?;
    let importer = Importer::new(
        pool.clone(),
        Arc::new(LocalRejects::new(rejects_dir)),
        ZipLimits::default(),
    );
    let source: Arc<dyn RangeRead> =
        Arc::new(FileSource::open(zip).with_context(|| format!("open {}", zip.display()))?);
    let file_name = zip
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "export.zip".into());
    let request = ImportRequest {
        bucket: "bench".into(),
        key: format!("inbox/routit/bench/{file_name}"),
        provider: Provider::Routit,
        profile_id: None,
        deadline: None,
    };
    let started = Instant::now();
    let summary = importer
        .import(source, &request)
        .await
        .with_context(|| format!("import {}", zip.display()))?;
    let import_ms = started.elapsed().as_secs_f64() * 1000.0;
    pool.close().await;
    let (vm_hwm_kb, vm_rss_kb) = memory_kb().context("read /proc/self/status")?;
    Ok(ChildReport {
        status: summary.status.as_str().to_string(),
        read: summary.read,
        loaded: summary.loaded,
        duplicate: summary.duplicate,
        rejected: summary.rejected,
        without_customer: summary.without_customer,
        rejected_key: summary.rejected_key,
        import_ms,
        vm_hwm_kb,
        vm_rss_kb,
    })
}

/// `VmHWM` and `VmRSS` of this process, in KiB.
pub fn memory_kb() -> Result<(u64, u64)> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let field = |name: &str| -> Result<u64> {
        let line = status
            .lines()
            .find(|l| l.starts_with(name))
            .with_context(|| format!("no {name} in /proc/self/status"))?;
        line.trim_start_matches(name)
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .with_context(|| format!("parse {line:?}"))
    };
    Ok((field("VmHWM:")?, field("VmRSS:")?))
}
