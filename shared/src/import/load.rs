//! Bulk loading parsed rows into `call_detail_record` with COPY.
//!
//! The parser runs on a blocking thread and hands encoded COPY chunks to the
//! connection through a bounded channel, so memory stays flat whatever the
//! file size. Two modes:
//! - [`LoadMode::Direct`]: COPY straight into `call_detail_record`. As fast
//!   as a plain `\copy`; a row that already exists makes the COPY fail with a
//!   unique violation, and the caller then loads the file again with
//! - [`LoadMode::Deduplicate`]: COPY into a temporary table, then insert
//!   what is not there yet. Slower, and only needed when rows repeat.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::sync::Arc;

use chrono::{DateTime, Datelike, NaiveDate, Timelike, Utc};
use chrono_tz::Tz;
use sqlx::{PgConnection, PgPool, Row};
use tokio::sync::mpsc;

use crate::cdr::changes::ChangedCycles;
use crate::cdr::{cycle_of, BadTimeZone};
use crate::import::format::FormatTemplate;
use crate::import::parse::{CdrRow, CsvParser, FileError, Parsed, Rejected, Stopped};

pub const COLUMNS: &str = "provider, external_id, subscription, customer_id, started_at, kind, direction, destination, \
                       roaming_zone, duration_seconds, volume_bytes, units, provider_cost_micros, import_file_id, source_line";
/// Encoded rows per message to the COPY writer.
const CHUNK_BYTES: usize = 128 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadMode {
    Direct,
    Deduplicate,
}

/// Subscriptions and customers, to attach each CDR to its customer and
/// billing cycle. Loaded once per import; its size depends on the number of
/// subscriptions, not on the file.
/// Why the customers and subscriptions could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ResolverError {
    #[error(transparent)]
    TimeZone(#[from] BadTimeZone),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}

#[derive(Debug, Default)]
pub struct Resolver {
    subscriptions: HashMap<String, Vec<Subscription>>,
    customers: HashMap<i64, (u32, Tz)>,
}

#[derive(Debug, Clone)]
struct Subscription {
    customer_id: i64,
    from: NaiveDate,
    to: Option<NaiveDate>,
}

impl Resolver {
    /// A customer whose time zone is not an IANA name is an error naming
    /// it: its rows' cycles cannot be known, and guessing a zone would bill
    /// them in the wrong cycle.
    pub async fn load(pool: &PgPool, provider: &str) -> Result<Self, ResolverError> {
        let mut resolver = Resolver::default();
        for row in sqlx::query("SELECT id, billing_cycle_start_day, time_zone FROM customer")
            .fetch_all(pool)
            .await?
        {
            let zone: String = row.try_get("time_zone")?;
            let day: i16 = row.try_get("billing_cycle_start_day")?;
            let id: i64 = row.try_get("id")?;
            let parsed: Tz = BadTimeZone::parse(id, &zone)?;
            resolver.customers.insert(id, (day as u32, parsed));
        }
        for row in sqlx::query(
            "SELECT identifier, customer_id, active_from, active_to FROM subscription WHERE provider = $1",
        )
        .bind(provider)
        .fetch_all(pool)
        .await?
        {
            resolver
                .subscriptions
                .entry(row.try_get("identifier")?)
                .or_default()
                .push(Subscription {
                    customer_id: row.try_get("customer_id")?,
                    from: row.try_get("active_from")?,
                    to: row.try_get("active_to")?,
                });
        }
        Ok(resolver)
    }

    /// The customer and billing cycle of a CDR, if its subscription is known
    /// and active on the CDR's date.
    pub fn resolve(&self, subscription: &str, at: DateTime<Utc>) -> Option<(i64, NaiveDate)> {
        let candidates = self.subscriptions.get(subscription)?;
        candidates.iter().find_map(|s| {
            let (day, zone) = self.customers.get(&s.customer_id).copied()?;
            let local = at.with_timezone(&zone).date_naive();
            let active = s.from <= local && s.to.is_none_or(|to| local <= to);
            active.then(|| (s.customer_id, cycle_of(at, day, zone)))
        })
    }
}

/// Where rejected rows go (a CSV: line, reason, record).
pub trait RejectSink: Send {
    fn reject(&mut self, rejected: &Rejected) -> std::io::Result<()>;
}

/// Rejected rows as CSV in a temporary file, uploaded when the import ends.
pub struct RejectFile {
    writer: csv::Writer<std::fs::File>,
    pub path: std::path::PathBuf,
    pub count: u64,
    /// The ZIP entry being read; empty for a plain CSV.
    entry: String,
}

impl RejectFile {
    pub fn create() -> std::io::Result<Self> {
        let path = std::env::temp_dir().join(format!(
            "tem-rejected-{}.csv",
            uuid::Uuid::new_v4().simple()
        ));
        let mut writer = csv::Writer::from_writer(std::fs::File::create(&path)?);
        writer.write_record(["entry", "line", "reason", "record"])?;
        Ok(Self {
            writer,
            path,
            count: 0,
            entry: String::new(),
        })
    }

    pub fn set_entry(&mut self, entry: &str) {
        self.entry = entry.to_string();
    }

    /// Flushes and returns the file's path, or `None` (and removes it) when
    /// nothing was rejected.
    pub fn finish(mut self) -> std::io::Result<Option<std::path::PathBuf>> {
        self.writer.flush()?;
        if self.count == 0 {
            let _ = std::fs::remove_file(&self.path);
            return Ok(None);
        }
        Ok(Some(self.path.clone()))
    }
}

impl RejectSink for RejectFile {
    fn reject(&mut self, rejected: &Rejected) -> std::io::Result<()> {
        self.count += 1;
        self.writer
            .write_record([
                self.entry.as_str(),
                &rejected.line.to_string(),
                &rejected.reason,
                &rejected.raw,
            ])
            .map_err(std::io::Error::other)
    }
}

/// What one load did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LoadReport {
    pub read: u64,
    pub loaded: u64,
    pub duplicate: u64,
    pub rejected: u64,
    /// Loaded rows (not duplicates) whose subscription has no customer on
    /// the row's date. `read = loaded + duplicate + rejected`.
    pub without_customer: u64,
    /// Every (customer, cycle start) a row belongs to, with the earliest
    /// `started_at` of its rows (what the import marks for billing).
    pub touched: ChangedCycles,
    /// Why the parser stopped before the end (a quote that never closes):
    /// the rows before it are loaded, the record it stopped at is rejected.
    pub stopped: Option<Stopped>,
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    File(#[from] FileError),
    /// Direct mode met a row that exists already; load again deduplicating.
    #[error("rows already exist; load again with deduplication")]
    ExistingRows,
    #[error("database error during the load: {0}")]
    Database(#[from] sqlx::Error),
    #[error("could not write the rejected rows: {0}")]
    Rejects(std::io::Error),
}

impl LoadError {
    fn from_copy(e: sqlx::Error) -> Self {
        match &e {
            sqlx::Error::Database(db) if db.code().as_deref() == Some("23505") => {
                LoadError::ExistingRows
            }
            _ => LoadError::Database(e),
        }
    }
}

pub struct LoadInput<'a> {
    pub provider: &'a str,
    pub import_file_id: i64,
    pub template: &'a FormatTemplate,
    pub resolver: Arc<Resolver>,
}

/// Opens the CSV stream. It runs on the parser's blocking thread, because
/// opening may already read (a gzip header) and reads block.
pub type CsvOpen = Box<dyn FnOnce() -> Box<dyn Read + Send> + Send>;

/// Loads one CSV stream inside the caller's transaction. A [`FileError`]
/// aborts the COPY, so nothing of this stream stays in the transaction.
pub async fn load_csv(
    connection: &mut PgConnection,
    csv: CsvOpen,
    input: &LoadInput<'_>,
    rejects: &mut (dyn RejectSink + Send),
    mode: LoadMode,
) -> Result<LoadReport, LoadError> {
    let target = match mode {
        LoadMode::Direct => "call_detail_record",
        LoadMode::Deduplicate => {
            sqlx::query(
                "CREATE TEMP TABLE IF NOT EXISTS cdr_staging
                 (LIKE call_detail_record INCLUDING DEFAULTS EXCLUDING IDENTITY) ON COMMIT DROP",
            )
            .execute(&mut *connection)
            .await?;
            sqlx::query("ALTER TABLE cdr_staging DROP COLUMN IF EXISTS id")
                .execute(&mut *connection)
                .await?;
            sqlx::query("TRUNCATE cdr_staging")
                .execute(&mut *connection)
                .await?;
            "cdr_staging"
        }
    };

    let (sender, mut receiver) = mpsc::channel::<Vec<u8>>(2);
    let (reject_sender, mut reject_receiver) = mpsc::channel::<Rejected>(64);
    let template = input.template.clone();
    let resolver = input.resolver.clone();
    let provider = input.provider.to_string();
    let import_file_id = input.import_file_id;
    let parser = tokio::task::spawn_blocking(move || {
        parse_and_encode(
            csv(),
            &template,
            &provider,
            import_file_id,
            &resolver,
            &sender,
            &reject_sender,
        )
    });

    let mut copy = connection
        .copy_in_raw(&format!("COPY {target} ({COLUMNS}) FROM STDIN"))
        .await?;
    let mut copy_error = None;
    let mut reject_error = None;
    let mut rejects_done = false;
    loop {
        tokio::select! {
            chunk = receiver.recv() => match chunk {
                Some(chunk) => {
                    if let Err(e) = copy.send(chunk).await {
                        copy_error = Some(e);
                        break;
                    }
                }
                None => break,
            },
            rejected = reject_receiver.recv(), if !rejects_done => match rejected {
                Some(r) => {
                    if let Err(e) = rejects.reject(&r) {
                        reject_error.get_or_insert(e);
                    }
                }
                None => rejects_done = true,
            },
        }
    }
    // The channel is closed once the parser ends; hand on late rejects.
    drop(receiver);
    while let Some(r) = reject_receiver.recv().await {
        if let Err(e) = rejects.reject(&r) {
            reject_error.get_or_insert(e);
        }
    }
    let parsed = parser
        .await
        .map_err(|e| LoadError::Database(sqlx::Error::Protocol(e.to_string())))?;
    if let Some(e) = copy_error {
        let _ = copy.abort("the load failed").await;
        return Err(LoadError::from_copy(e));
    }
    let mut report = match parsed {
        Ok(report) => report,
        Err(e) => {
            let _ = copy.abort(e.to_string()).await;
            return Err(e);
        }
    };
    if let Some(e) = reject_error {
        let _ = copy.abort("rejected rows could not be written").await;
        return Err(LoadError::Rejects(e));
    }
    let copied = copy.finish().await.map_err(LoadError::from_copy)?;
    match mode {
        // Every parsed row was copied, so the parser's count of rows
        // without a customer is the count of loaded ones.
        LoadMode::Direct => report.loaded = copied,
        LoadMode::Deduplicate => {
            // Only the rows actually inserted count: a duplicate is neither
            // loaded nor "without customer", whatever its subscription.
            let inserted = sqlx::query(&format!(
                "WITH inserted AS (
                   INSERT INTO call_detail_record ({COLUMNS})
                   SELECT DISTINCT ON (provider, external_id) {COLUMNS} FROM cdr_staging
                   ORDER BY provider, external_id, source_line
                   ON CONFLICT (provider, external_id) DO NOTHING
                   RETURNING customer_id)
                 SELECT count(*) AS loaded,
                        count(*) FILTER (WHERE customer_id IS NULL) AS without_customer
                 FROM inserted"
            ))
            .fetch_one(&mut *connection)
            .await?;
            report.loaded = inserted.try_get::<i64, _>("loaded")? as u64;
            report.without_customer = inserted.try_get::<i64, _>("without_customer")? as u64;
        }
    }
    report.duplicate = copied - report.loaded;
    Ok(report)
}

/// The parser side: rows to COPY text, in chunks.
fn parse_and_encode(
    csv: Box<dyn Read + Send>,
    template: &FormatTemplate,
    provider: &str,
    import_file_id: i64,
    resolver: &Resolver,
    sender: &mpsc::Sender<Vec<u8>>,
    rejects: &mpsc::Sender<Rejected>,
) -> Result<LoadReport, LoadError> {
    let mut parser = CsvParser::new(csv, template)?;
    let mut report = LoadReport::default();
    let mut chunk = Vec::with_capacity(CHUNK_BYTES + 4096);
    let import_file_id = import_file_id.to_string();
    while let Some(next) = parser.next_row() {
        report.read += 1;
        match next? {
            Parsed::Row(row) => {
                let customer = resolver.resolve(&row.subscription, row.started_at);
                match customer {
                    Some((customer, cycle)) => {
                        report.touched.touch(customer, cycle, row.started_at);
                    }
                    None => report.without_customer += 1,
                }
                encode(
                    &mut chunk,
                    provider,
                    &row,
                    customer.map(|c| c.0),
                    &import_file_id,
                );
                if chunk.len() >= CHUNK_BYTES {
                    let full =
                        std::mem::replace(&mut chunk, Vec::with_capacity(CHUNK_BYTES + 4096));
                    if sender.blocking_send(full).is_err() {
                        // The COPY side stopped; it reports why.
                        return Ok(report);
                    }
                }
            }
            Parsed::Rejected(rejected) => {
                report.rejected += 1;
                if rejects.blocking_send(rejected).is_err() {
                    return Ok(report);
                }
            }
        }
    }
    if !chunk.is_empty() {
        let _ = sender.blocking_send(chunk);
    }
    report.stopped = parser.stopped().cloned();
    Ok(report)
}

/// One row in COPY's text format, in the column order of [`COLUMNS`].
pub fn encode(
    out: &mut Vec<u8>,
    provider: &str,
    row: &CdrRow,
    customer: Option<i64>,
    import_file_id: &str,
) {
    text(out, provider);
    out.push(b'\t');
    text(out, &row.external_id);
    out.push(b'\t');
    text(out, &row.subscription);
    out.push(b'\t');
    match customer {
        Some(id) => {
            let _ = write!(out, "{id}");
        }
        None => out.extend_from_slice(b"\\N"),
    }
    out.push(b'\t');
    timestamp(out, row.started_at);
    let _ = write!(out, "\t{}\t{}\t", row.kind.as_str(), row.direction.as_str());
    text(out, &row.destination);
    let _ = writeln!(
        out,
        "\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
        row.roaming_zone.as_str(),
        row.duration_seconds,
        row.volume_bytes,
        row.units,
        row.cost_micros,
        import_file_id,
        row.line
    );
}

fn timestamp(out: &mut Vec<u8>, at: DateTime<Utc>) {
    let _ = write!(
        out,
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}+00",
        at.year(),
        at.month(),
        at.day(),
        at.hour(),
        at.minute(),
        at.second()
    );
}

/// A text value with COPY's escapes.
fn text(out: &mut Vec<u8>, value: &str) {
    for byte in value.bytes() {
        match byte {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\t' => out.extend_from_slice(b"\\t"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            other => out.push(other),
        }
    }
}
