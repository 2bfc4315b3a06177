//! The three timed loads: ours (in a child process), `psql \copy`, and one
//! INSERT per row.

use std::io::BufRead;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use chrono::{DateTime, Utc};
use sqlx::{Connection, PgConnection};

use crate::child::ChildReport;
use crate::db::{COLUMNS, OURS};

/// Rows per transaction of the legacy method.
pub const LEGACY_COMMIT_EVERY: u64 = 1_000;

/// Runs `import-bench import-only` on `zip`; returns its report and the
/// wall time of the whole child process (start-up and connect included,
/// like the psql command's).
pub fn our_import(
    zip: &Path,
    url: &str,
    rejects_dir: &Path,
    connections: u32,
) -> Result<(ChildReport, Duration)> {
    let exe = std::env::current_exe().context("find this program")?;
    let started = Instant::now();
    let output = Command::new(&exe)
        .arg("import-only")
        .arg("--zip")
        .arg(zip)
        .arg("--database")
        .arg(url)
        .arg("--rejects-dir")
        .arg(rejects_dir)
        .arg("--connections")
        .arg(connections.to_string())
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("run {} import-only", exe.display()))?;
    let wall = started.elapsed();
    if !output.status.success() {
        bail!("the import child failed ({})", output.status);
    }
    let report: ChildReport = serde_json::from_slice(&output.stdout).with_context(|| {
        format!(
            "parse the child's report {:?}",
            String::from_utf8_lossy(&output.stdout)
        )
    })?;
    Ok((report, wall))
}

fn psql(url: &str, command: &str) -> Result<Duration> {
    let started = Instant::now();
    let output = Command::new("psql")
        .arg(url)
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-c", command])
        // Timestamps out in UTC, as the legacy loader parses them.
        .env("PGTZ", "UTC")
        .stdin(Stdio::null())
        .output()
        .context("run psql (is the PostgreSQL client installed?)")?;
    let elapsed = started.elapsed();
    if !output.status.success() {
        bail!(
            "psql -c {command:?} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(elapsed)
}

/// Our loaded rows, in file order, as a COPY text file (tab-separated,
/// `\N` for NULL) with exactly the importer's columns.
pub fn export_canonical(url: &str, file: &Path) -> Result<()> {
    psql(
        url,
        &format!(
            "\\copy (SELECT {COLUMNS} FROM {OURS} ORDER BY source_line) TO '{}'",
            file.display()
        ),
    )
    .map(|_| ())
    .context("export our rows for the baselines")
}

/// `psql "$URL" -c "\copy table (columns) FROM 'file'"`, timed.
pub fn psql_copy(url: &str, table: &str, file: &Path) -> Result<Duration> {
    psql(
        url,
        &format!("\\copy {table} ({COLUMNS}) FROM '{}'", file.display()),
    )
    .with_context(|| format!("\\copy into {table}"))
}

/// The legacy method: one prepared INSERT per row, committed every
/// [`LEGACY_COMMIT_EVERY`] rows, over one connection. Reads the rows from
/// the COPY text file (parsing it costs well under 1% of the time).
pub async fn legacy_inserts(
    connection: &mut PgConnection,
    table: &str,
    file: &Path,
) -> Result<(u64, Duration)> {
    let sql = format!(
        "INSERT INTO {table} ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)"
    );
    let reader = std::io::BufReader::with_capacity(
        1 << 20,
        std::fs::File::open(file).with_context(|| format!("open {}", file.display()))?,
    );
    let started = Instant::now();
    let mut rows = 0u64;
    let mut tx = connection.begin().await.context("begin")?;
    for line in reader.lines() {
        let line = line.context("read the COPY file")?;
        let f: Vec<&str> = line.split('\t').collect();
        if f.len() != 15 {
            bail!("line {}: expected 15 fields, found {}", rows + 1, f.len());
        }
        let started_at = DateTime::parse_from_str(f[4], "%Y-%m-%d %H:%M:%S%#z")
            .with_context(|| format!("line {}: started_at {:?}", rows + 1, f[4]))?
            .with_timezone(&Utc);
        let customer: Option<i64> = if f[3] == "\\N" {
            None
        } else {
            Some(f[3].parse().context("customer_id")?)
        };
        sqlx::query(&sql)
            .bind(unescape(f[0]))
            .bind(unescape(f[1]))
            .bind(unescape(f[2]))
            .bind(customer)
            .bind(started_at)
            .bind(f[5])
            .bind(f[6])
            .bind(unescape(f[7]))
            .bind(f[8])
            .bind(f[9].parse::<i32>().context("duration_seconds")?)
            .bind(f[10].parse::<i64>().context("volume_bytes")?)
            .bind(f[11].parse::<i32>().context("units")?)
            .bind(f[12].parse::<i64>().context("provider_cost_micros")?)
            .bind(f[13].parse::<i64>().context("import_file_id")?)
            .bind(f[14].parse::<i32>().context("source_line")?)
            .execute(&mut *tx)
            .await
            .with_context(|| format!("insert row {}", rows + 1))?;
        rows += 1;
        if rows.is_multiple_of(LEGACY_COMMIT_EVERY) {
            tx.commit().await.context("commit")?;
            tx = connection.begin().await.context("begin")?;
        }
    }
    tx.commit().await.context("commit")?;
    Ok((rows, started.elapsed()))
}

/// A COPY text value (`\\`, `\t`, `\n`, `\r` escapes).
fn unescape(value: &str) -> String {
    if !value.contains('\\') {
        return value.to_string();
    }
    let mut out = String::with_capacity(value.len());
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('t') => out.push('\t'),
            Some('n') => out.push('\n'),
            Some('r') => out.push('\r'),
            Some(other) => out.push(other),
            None => out.push('\\'),
        }
    }
    out
}
