//! Where our import's time goes: its stages run alone, each timed.
//!
//! The importer hashes the object, then inflates, parses, resolves and
//! encodes on a blocking thread while the async side sends the encoded
//! chunks to COPY. These stages are rebuilt here from the importer's public
//! parts and `load::encode`.

use std::io::{Read, Write};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use futures::StreamExt;
use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use tem_shared::import::format::FormatTemplate;
use tem_shared::import::load::{Resolver, COPY_HEADER, COPY_TRAILER};
use tem_shared::import::parse::{CsvParser, Parsed};
use tem_shared::import::source::{chunks, FileSource, RangeRead};
use tem_shared::import::zip::{ZipArchive, ZipLimits};
use tem_shared::routing::Provider;

use crate::db::COLUMNS;

#[derive(Debug, Clone, Serialize)]
pub struct Phase {
    pub name: String,
    pub seconds: f64,
    pub note: String,
}

fn phase(name: &str, took: Duration, note: String) -> Phase {
    Phase {
        name: name.into(),
        seconds: took.as_secs_f64(),
        note,
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Depth {
    Inflate,
    Parse,
    ParseResolveEncode,
}

pub async fn run(zip: &Path, pool: &PgPool, copy_file: Option<&Path>) -> Result<Vec<Phase>> {
    // The rows as the importer encodes them, for a COPY of them alone.
    let binary_file = copy_file.map(|f| f.with_extension("binary"));
    let mut phases = Vec::new();
    let source: Arc<dyn RangeRead> =
        Arc::new(FileSource::open(zip).with_context(|| format!("open {}", zip.display()))?);
    let size = source.len().await.context("size")?;

    // 1. The sha256 pass, as the importer reads it (8 MiB ranged reads).
    let started = Instant::now();
    let mut hasher = Sha256::new();
    let mut stream = std::pin::pin!(chunks(source.clone(), 0, size, 8 << 20));
    while let Some(chunk) = stream.next().await {
        hasher.update(&chunk.context("read for sha256")?);
    }
    let digest = hex::encode(hasher.finalize());
    phases.push(phase(
        "sha256 of the ZIP",
        started.elapsed(),
        format!("{size} bytes, {}…", &digest[..12]),
    ));

    let resolver = Arc::new(
        Resolver::load(pool, Provider::Routit.as_str())
            .await
            .context("load the resolver")?,
    );
    for (name, depth) in [
        ("inflate only (ZIP reader)", Depth::Inflate),
        ("inflate + parse (no DB)", Depth::Parse),
        (
            "inflate + parse + resolve + encode (no DB)",
            Depth::ParseResolveEncode,
        ),
    ] {
        let started = Instant::now();
        let keep = binary_file
            .clone()
            .filter(|_| depth == Depth::ParseResolveEncode);
        let note = read_through(source.clone(), resolver.clone(), depth, keep).await?;
        phases.push(phase(name, started.elapsed(), note));
    }

    // 4. COPY of ready rows through sqlx: the server's part alone, text
    //    (what \copy sends) and binary (what the importer sends).
    if let Some(file) = copy_file {
        let (rows, took) = sqlx_copy(pool, file, "").await?;
        phases.push(phase(
            "COPY of the canonical text file via sqlx (256 KiB messages)",
            took,
            format!("{rows} rows into a fresh table like ours"),
        ));
    }
    if let Some(file) = &binary_file {
        let (rows, took) = sqlx_copy(pool, file, " (FORMAT binary)").await?;
        let _ = std::fs::remove_file(file);
        phases.push(phase(
            "COPY of our encoded binary rows via sqlx (256 KiB messages)",
            took,
            format!("{rows} rows into a fresh table like ours"),
        ));
    }
    Ok(phases)
}

async fn read_through(
    source: Arc<dyn RangeRead>,
    resolver: Arc<Resolver>,
    depth: Depth,
    keep: Option<std::path::PathBuf>,
) -> Result<String> {
    let limits = ZipLimits::default();
    let archive = ZipArchive::open(source, limits)
        .await
        .context("open the ZIP")?;
    let entry = archive
        .entries()
        .first()
        .context("the ZIP has no entry")?
        .clone();
    let reader = archive.reader(&entry, 4);
    let template = FormatTemplate::for_provider(Provider::Routit).context("routit template")?;
    tokio::task::spawn_blocking(move || -> Result<String> {
        let mut reader = reader;
        if depth == Depth::Inflate {
            let mut buf = vec![0u8; 256 * 1024];
            let mut total = 0u64;
            loop {
                let n = reader.read(&mut buf).context("inflate")?;
                if n == 0 {
                    break;
                }
                total += n as u64;
            }
            return Ok(format!("{total} bytes of CSV"));
        }
        let mut parser = CsvParser::new(reader, &template).context("header")?;
        let (mut rows, mut rejected, mut encoded) = (0u64, 0u64, 0u64);
        let mut chunk = Vec::with_capacity(256 * 1024 + 4096);
        let mut kept = match &keep {
            Some(path) => Some(std::io::BufWriter::new(
                std::fs::File::create(path)
                    .with_context(|| format!("create {}", path.display()))?,
            )),
            None => None,
        };
        chunk.extend_from_slice(&COPY_HEADER);
        while let Some(next) = parser.next_row() {
            match next.context("parse")? {
                Parsed::Row(row) => {
                    rows += 1;
                    if depth == Depth::ParseResolveEncode {
                        let customer = resolver.resolve(&row.subscription, row.started_at);
                        tem_shared::import::load::encode(
                            &mut chunk,
                            "routit",
                            &row,
                            customer.map(|c| c.0),
                            1,
                        )
                        .map_err(|reason| anyhow::anyhow!("line {}: {reason}", row.line))?;
                        if chunk.len() >= 256 * 1024 {
                            encoded += chunk.len() as u64;
                            if let Some(kept) = &mut kept {
                                kept.write_all(&chunk).context("write the encoded rows")?;
                            }
                            chunk = Vec::with_capacity(256 * 1024 + 4096);
                        }
                    }
                }
                Parsed::Rejected(_) => rejected += 1,
            }
        }
        chunk.extend_from_slice(&COPY_TRAILER);
        encoded += chunk.len() as u64;
        if let Some(mut kept) = kept {
            kept.write_all(&chunk).context("write the encoded rows")?;
            kept.flush().context("write the encoded rows")?;
        }
        Ok(if depth == Depth::ParseResolveEncode {
            format!("{rows} rows, {rejected} rejected, {encoded} bytes of binary COPY")
        } else {
            format!("{rows} rows, {rejected} rejected")
        })
    })
    .await
    .context("join the reader")?
}

/// The rows of `file` COPYed into a fresh table like ours; returns the rows
/// and the time of the COPY alone (not the table's creation or the
/// CHECKPOINT before it).
async fn sqlx_copy(pool: &PgPool, file: &Path, options: &str) -> Result<(u64, Duration)> {
    let mut connection = pool.acquire().await.context("connection")?;
    sqlx::query("DROP TABLE IF EXISTS cdr_copy_sqlx")
        .execute(&mut *connection)
        .await?;
    // Partitioned like ours, with its month's partition and key.
    for statement in [
        "CREATE TABLE cdr_copy_sqlx (LIKE call_detail_record INCLUDING ALL) PARTITION BY RANGE (started_at)",
        "CREATE TABLE cdr_copy_sqlx_default PARTITION OF cdr_copy_sqlx DEFAULT",
        "CREATE UNIQUE INDEX ON cdr_copy_sqlx_default (provider, external_id)",
        "SELECT tem_create_month_partition('cdr_copy_sqlx', '2025-03-01')",
        "ALTER TABLE cdr_copy_sqlx_default SET (autovacuum_enabled = false)",
        "ALTER TABLE cdr_copy_sqlx_y2025m03 SET (autovacuum_enabled = false)",
    ] {
        sqlx::query(statement)
            .execute(&mut *connection)
            .await
            .with_context(|| format!("create cdr_copy_sqlx: {statement}"))?;
    }
    // As before every measured load (skipped without the right to).
    let _ = sqlx::query("CHECKPOINT").execute(&mut *connection).await;
    let mut input =
        std::fs::File::open(file).with_context(|| format!("open {}", file.display()))?;
    let started = Instant::now();
    let mut copy = connection
        .copy_in_raw(&format!(
            "COPY cdr_copy_sqlx ({COLUMNS}) FROM STDIN{options}"
        ))
        .await
        .context("start COPY")?;
    loop {
        let mut buf = vec![0u8; 256 * 1024];
        let n = input.read(&mut buf).context("read the COPY file")?;
        if n == 0 {
            break;
        }
        buf.truncate(n);
        copy.send(buf).await.context("send COPY data")?;
    }
    let rows = copy.finish().await.context("finish COPY")?;
    let took = started.elapsed();
    sqlx::query("DROP TABLE cdr_copy_sqlx")
        .execute(&mut *connection)
        .await?;
    if rows == 0 {
        bail!("the sqlx COPY loaded nothing");
    }
    Ok((rows, took))
}
