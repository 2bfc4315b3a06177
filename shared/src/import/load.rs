//! Bulk loading parsed rows into `call_detail_record` with binary COPY.
//!
//! Two stages overlap: a blocking thread inflates, parses, resolves and
//! encodes rows in PostgreSQL's binary COPY format (so the server parses no
//! text), and hands chunks through a bounded channel to the connections,
//! which send them while the next chunk is made. Memory stays flat whatever
//! the file size. Two modes:
//! - [`LoadMode::Direct`]: COPY straight into `call_detail_record`, on the
//!   import's transaction and, for a large object, on a second one at once
//!   (see [`Writers`]); a row that already exists makes the COPY fail with
//!   a unique violation, and the caller then loads the file again with
//! - [`LoadMode::Deduplicate`]: COPY into a temporary table, then insert
//!   what is not there yet. Slower, and only needed when rows repeat.

use std::io::Read;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, NaiveDate, Utc};
use chrono_tz::Tz;
use rustc_hash::FxHashMap;
use sqlx::{PgConnection, PgPool, Row};
use tokio::sync::mpsc;
use tracing::debug;

use crate::cdr::changes::ChangedCycles;
use crate::cdr::{cycle_of_local, BadTimeZone};
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
    // Looked up once per row: FxHash, several times cheaper than SipHash on
    // short keys (perf of a 1M import: SipHash was 7% of the parse thread).
    subscriptions: FxHashMap<String, Vec<Subscription>>,
    customers: FxHashMap<i64, (u32, Tz)>,
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
            // One conversion to the customer's zone serves both.
            let local = at.with_timezone(&zone).date_naive();
            let active = s.from <= local && s.to.is_none_or(|to| local <= to);
            active.then(|| (s.customer_id, cycle_of_local(local, day)))
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
    /// The earliest and latest `started_at` of the rows sent: the months
    /// whose partitions a large load analyses.
    pub span: Option<(DateTime<Utc>, DateTime<Utc>)>,
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

/// The transactions a load writes through: the import's own, and for a
/// large object loaded directly a second one on a spare connection. One
/// backend's COPY into `call_detail_record` sets the import's pace (its
/// index maintenance, not the client, is most of the work); two backends
/// share it (bench/README.md, "Two COPYs"). The second transaction commits
/// just before the import's own, with its own marks: exactly-once still
/// rests on the natural key, so an import killed between the two commits is
/// completed by its retry, which skips the rows already there.
pub struct Writers<'c> {
    pub main: &'c mut PgConnection,
    pub helper: Option<&'c mut PgConnection>,
}

impl Writers<'_> {
    /// Runs `sql` (a savepoint command) on every transaction.
    pub async fn execute_all(&mut self, sql: &str) -> Result<(), sqlx::Error> {
        sqlx::query(sql).execute(&mut *self.main).await?;
        if let Some(helper) = self.helper.as_deref_mut() {
            sqlx::query(sql).execute(helper).await?;
        }
        Ok(())
    }
}

/// Loads one CSV stream inside the caller's transactions. A [`FileError`]
/// aborts the COPY, so nothing of this stream stays in them.
pub async fn load_csv(
    writers: &mut Writers<'_>,
    csv: CsvOpen,
    input: &LoadInput<'_>,
    rejects: &mut (dyn RejectSink + Send),
    mode: LoadMode,
) -> Result<LoadReport, LoadError> {
    let connection = &mut *writers.main;
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

    // Two chunks ahead for each COPY.
    let (sender, receiver) = mpsc::channel::<Vec<u8>>(4);
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

    let sql = format!("COPY {target} ({COLUMNS}) FROM STDIN (FORMAT binary)");
    let mut copies = vec![connection.copy_in_raw(&sql).await?];
    if mode == LoadMode::Direct {
        if let Some(helper) = writers.helper.as_deref_mut() {
            copies.push(helper.copy_in_raw(&sql).await?);
        }
    }
    // Each COPY takes the next chunk when it is free, so a slower backend
    // never holds the other back.
    let chunks = tokio::sync::Mutex::new(receiver);
    let started = Instant::now();
    let streams = copies.len();
    let pumps = futures::future::join_all(copies.into_iter().map(|copy| pump(copy, &chunks)));
    let rejected = async {
        let mut failed = None;
        while let Some(r) = reject_receiver.recv().await {
            if let Err(e) = rejects.reject(&r) {
                failed.get_or_insert(e);
            }
        }
        failed
    };
    let (pumped, reject_error) = tokio::join!(pumps, rejected);
    let parsed = parser
        .await
        .map_err(|e| LoadError::Database(sqlx::Error::Protocol(e.to_string())))?;
    let streamed = started.elapsed();
    let mut copies = Vec::with_capacity(pumped.len());
    let mut copy_error = None;
    let mut sending = Duration::ZERO;
    for (copy, sent, error) in pumped {
        sending += sent;
        copy_error = copy_error.or(error);
        copies.push(copy);
    }
    let (error, message) = match (copy_error, parsed, reject_error) {
        (Some(e), _, _) => (LoadError::from_copy(e), "the load failed".to_string()),
        (None, Err(e), _) => {
            let message = e.to_string();
            (e, message)
        }
        (None, Ok(_), Some(e)) => (
            LoadError::Rejects(e),
            "rejected rows could not be written".to_string(),
        ),
        (None, Ok((report, parser_waited)), None) => {
            let copied = end_copies(copies).await.map_err(LoadError::from_copy)?;
            // Which side set the pace: a parser that waited long was ahead
            // of the server; a send loop that spent little time sending
            // waited for rows.
            debug!(
                rows = copied,
                streams,
                streamed_ms = streamed.as_millis() as u64,
                parser_waited_ms = parser_waited.as_millis() as u64,
                sending_ms = sending.as_millis() as u64,
                finish_ms = (started.elapsed() - streamed).as_millis() as u64,
                "COPY streamed"
            );
            return count_loaded(connection, report, copied, mode).await;
        }
    };
    for copy in copies {
        let _ = copy.abort(message.clone()).await;
    }
    Err(error)
}

/// Ends every COPY, failed or not, so that no connection is left with an
/// error its next statement would meet; the rows copied, or the first
/// failure (a unique violation shows here, not while sending).
async fn end_copies(
    copies: Vec<sqlx::postgres::PgCopyIn<&mut PgConnection>>,
) -> Result<u64, sqlx::Error> {
    let mut copied = 0;
    let mut failed = None;
    for mut copy in copies {
        let sent = copy.send(COPY_TRAILER.as_slice()).await.map(|_| ());
        let finished = match sent {
            Ok(()) => copy.finish().await,
            Err(e) => {
                let _ = copy.abort("the load failed").await;
                Err(e)
            }
        };
        match finished {
            Ok(rows) => copied += rows,
            Err(e) => {
                failed.get_or_insert(e);
            }
        }
    }
    match failed {
        Some(e) => Err(e),
        None => Ok(copied),
    }
}

/// Sends chunks from the parser to one COPY until the parser is done or the
/// COPY fails. Returns the COPY, the time spent sending and the failure.
async fn pump<'c>(
    mut copy: sqlx::postgres::PgCopyIn<&'c mut PgConnection>,
    chunks: &tokio::sync::Mutex<mpsc::Receiver<Vec<u8>>>,
) -> (
    sqlx::postgres::PgCopyIn<&'c mut PgConnection>,
    Duration,
    Option<sqlx::Error>,
) {
    let mut sending = Duration::ZERO;
    if let Err(e) = copy.send(COPY_HEADER.as_slice()).await {
        chunks.lock().await.close();
        return (copy, sending, Some(e));
    }
    loop {
        let chunk = chunks.lock().await.recv().await;
        let Some(chunk) = chunk else {
            return (copy, sending, None);
        };
        let send = Instant::now();
        let sent = copy.send(chunk).await;
        sending += send.elapsed();
        if let Err(e) = sent {
            // The parser stops at its next chunk; the other COPY ends with it.
            chunks.lock().await.close();
            return (copy, sending, Some(e));
        }
    }
}

/// The load's counts once its rows are copied: in Deduplicate mode the
/// staged rows not yet in the table are inserted here.
async fn count_loaded(
    connection: &mut PgConnection,
    mut report: LoadReport,
    copied: u64,
    mode: LoadMode,
) -> Result<LoadReport, LoadError> {
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
                   -- No conflict target: the unique index is each month's
                   -- partition's own (migration 0019).
                   ON CONFLICT DO NOTHING
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

/// The parser side: rows to binary COPY, in chunks. A row the table cannot
/// hold (see [`encode`]) is rejected with its line and reason like a row
/// that does not parse.
fn parse_and_encode(
    csv: Box<dyn Read + Send>,
    template: &FormatTemplate,
    provider: &str,
    import_file_id: i64,
    resolver: &Resolver,
    sender: &mpsc::Sender<Vec<u8>>,
    rejects: &mpsc::Sender<Rejected>,
) -> Result<(LoadReport, Duration), LoadError> {
    let mut parser = CsvParser::new(csv, template)?;
    // Time spent waiting for room in the channel: the COPY was behind.
    let mut waited = Duration::ZERO;
    let mut report = LoadReport::default();
    // Rows only: each COPY sends its own header and trailer.
    let mut chunk = Vec::with_capacity(CHUNK_BYTES + 4096);
    while let Some(next) = parser.next_row() {
        report.read += 1;
        let rejected = match next? {
            Parsed::Row(row) => {
                let customer = resolver.resolve(&row.subscription, row.started_at);
                match encode(
                    &mut chunk,
                    provider,
                    &row,
                    customer.map(|c| c.0),
                    import_file_id,
                ) {
                    Ok(()) => {
                        report.span = Some(match report.span {
                            Some((from, to)) => (from.min(row.started_at), to.max(row.started_at)),
                            None => (row.started_at, row.started_at),
                        });
                        match customer {
                            Some((customer, cycle)) => {
                                report.touched.touch(customer, cycle, row.started_at);
                            }
                            None => report.without_customer += 1,
                        }
                        None
                    }
                    Err(reason) => Some(Rejected {
                        line: row.line,
                        reason,
                        raw: parser.raw_record(),
                    }),
                }
            }
            Parsed::Rejected(rejected) => Some(rejected),
        };
        if let Some(rejected) = rejected {
            report.rejected += 1;
            if rejects.blocking_send(rejected).is_err() {
                return Ok((report, waited));
            }
        }
        if chunk.len() >= CHUNK_BYTES {
            let full = std::mem::replace(&mut chunk, Vec::with_capacity(CHUNK_BYTES + 4096));
            let send = Instant::now();
            let sent = sender.blocking_send(full);
            waited += send.elapsed();
            if sent.is_err() {
                // The COPY side stopped; it reports why.
                return Ok((report, waited));
            }
        }
    }
    if !chunk.is_empty() {
        let _ = sender.blocking_send(chunk);
    }
    report.stopped = parser.stopped().cloned();
    Ok((report, waited))
}

/// The start of a binary COPY stream: the signature, the flags (no OIDs)
/// and an empty header extension.
pub const COPY_HEADER: [u8; 19] = *b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";
/// The end of a binary COPY stream: a field count of -1.
pub const COPY_TRAILER: [u8; 2] = (-1i16).to_be_bytes();
/// Fields per row: the columns of [`COLUMNS`].
const FIELDS: i16 = 15;
/// PostgreSQL's epoch, 2000-01-01 00:00 UTC, in Unix seconds.
const POSTGRES_EPOCH: i64 = 946_684_800;
/// The earliest `timestamptz` PostgreSQL accepts (4714-11-24 00:00 BC,
/// Julian day 0), in microseconds from its epoch.
const EARLIEST_TIMESTAMP: i64 = -211_813_488_000_000_000;

/// One row in binary COPY format, in the column order of [`COLUMNS`]:
/// text as UTF-8, `bigint` and `integer` as big-endian two's complement,
/// `started_at` as microseconds from 2000-01-01 UTC in whole seconds (as the
/// text format wrote it), `customer_id` NULL when unknown.
///
/// A value the column cannot hold (over `integer`'s 2^31 - 1, a time before
/// 4714 BC, a NUL character in text) would fail the whole COPY; it is
/// returned as the row's rejection reason instead, and nothing is written.
pub fn encode(
    out: &mut Vec<u8>,
    provider: &str,
    row: &CdrRow,
    customer: Option<i64>,
    import_file_id: i64,
) -> Result<(), String> {
    let integer = |value: u64, what: &str| {
        i32::try_from(value)
            .map_err(|_| format!("{what} {value} is over the limit of {}", i32::MAX))
    };
    let duration = integer(u64::from(row.duration_seconds), "duration (seconds)")?;
    let units = integer(u64::from(row.units), "units")?;
    let line = integer(row.line, "line number")?;
    let volume = i64::try_from(row.volume_bytes).map_err(|_| {
        format!(
            "volume {} bytes is over the limit of {}",
            row.volume_bytes,
            i64::MAX
        )
    })?;
    let started_at = (row.started_at.timestamp() - POSTGRES_EPOCH)
        .checked_mul(1_000_000)
        .filter(|micros| *micros >= EARLIEST_TIMESTAMP)
        .ok_or_else(|| format!("start time {} is before 4714 BC", row.started_at))?;
    for (what, value) in [
        ("record id", row.external_id.as_str()),
        ("subscription", row.subscription.as_str()),
        ("destination", row.destination.as_str()),
    ] {
        if value.as_bytes().contains(&0) {
            return Err(format!("{what} contains a NUL character"));
        }
    }

    out.extend_from_slice(&FIELDS.to_be_bytes());
    text(out, provider);
    text(out, &row.external_id);
    text(out, &row.subscription);
    match customer {
        Some(id) => bigint(out, id),
        None => out.extend_from_slice(&(-1i32).to_be_bytes()),
    }
    bigint(out, started_at);
    text(out, row.kind.as_str());
    text(out, row.direction.as_str());
    text(out, &row.destination);
    text(out, row.roaming_zone.as_str());
    int(out, duration);
    bigint(out, volume);
    int(out, units);
    bigint(out, row.cost_micros);
    bigint(out, import_file_id);
    int(out, line);
    Ok(())
}

fn text(out: &mut Vec<u8>, value: &str) {
    // A CSV record is at most 1 MiB, so a field's length fits.
    out.extend_from_slice(&(value.len() as i32).to_be_bytes());
    out.extend_from_slice(value.as_bytes());
}

fn bigint(out: &mut Vec<u8>, value: i64) {
    out.extend_from_slice(&8i32.to_be_bytes());
    out.extend_from_slice(&value.to_be_bytes());
}

fn int(out: &mut Vec<u8>, value: i32) {
    out.extend_from_slice(&4i32.to_be_bytes());
    out.extend_from_slice(&value.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cdr::{Direction, Kind, Zone};
    use chrono::TimeZone;

    fn row() -> CdrRow {
        CdrRow {
            external_id: "R1".into(),
            subscription: "+31612345678".into(),
            started_at: Utc.with_ymd_and_hms(2000, 1, 1, 0, 0, 1).unwrap(),
            kind: Kind::Voice,
            direction: Direction::Outgoing,
            destination: "+3120".into(),
            roaming_zone: Zone::Home,
            duration_seconds: 61,
            volume_bytes: 0,
            units: 0,
            cost_micros: -5,
            line: 2,
        }
    }

    /// Splits one encoded row into its fields (`None` for NULL).
    fn fields(mut bytes: &[u8]) -> Vec<Option<Vec<u8>>> {
        let count = i16::from_be_bytes([bytes[0], bytes[1]]);
        bytes = &bytes[2..];
        let mut fields = Vec::new();
        for _ in 0..count {
            let len = i32::from_be_bytes(bytes[..4].try_into().unwrap());
            bytes = &bytes[4..];
            if len < 0 {
                fields.push(None);
            } else {
                fields.push(Some(bytes[..len as usize].to_vec()));
                bytes = &bytes[len as usize..];
            }
        }
        assert!(bytes.is_empty(), "nothing follows the last field");
        fields
    }

    #[test]
    fn a_row_is_fifteen_fields_with_big_endian_numbers_and_microseconds_since_2000() {
        let mut out = Vec::new();
        encode(&mut out, "routit", &row(), None, 7).unwrap();
        let f = fields(&out);
        assert_eq!(f.len(), COLUMNS.split(',').count());
        assert_eq!(f[0].as_deref(), Some(&b"routit"[..]));
        assert_eq!(f[1].as_deref(), Some(&b"R1"[..]));
        assert_eq!(f[3], None, "an unknown customer is NULL");
        assert_eq!(f[4].as_deref(), Some(&1_000_000i64.to_be_bytes()[..]));
        assert_eq!(f[5].as_deref(), Some(&b"voice"[..]));
        assert_eq!(f[9].as_deref(), Some(&61i32.to_be_bytes()[..]));
        assert_eq!(f[12].as_deref(), Some(&(-5i64).to_be_bytes()[..]));
        assert_eq!(f[13].as_deref(), Some(&7i64.to_be_bytes()[..]));
        assert_eq!(f[14].as_deref(), Some(&2i32.to_be_bytes()[..]));
    }

    #[test]
    fn times_before_2000_are_negative_and_fractions_of_a_second_are_dropped() {
        let mut out = Vec::new();
        let mut early = row();
        early.started_at = Utc.with_ymd_and_hms(1999, 12, 31, 23, 59, 59).unwrap()
            + chrono::Duration::milliseconds(999);
        encode(&mut out, "routit", &early, Some(3), 1).unwrap();
        let f = fields(&out);
        assert_eq!(f[3].as_deref(), Some(&3i64.to_be_bytes()[..]));
        assert_eq!(f[4].as_deref(), Some(&(-1_000_000i64).to_be_bytes()[..]));
    }

    #[test]
    fn values_the_columns_cannot_hold_are_reasons_and_write_nothing() {
        let cases: Vec<(CdrRow, &str)> = vec![
            (
                CdrRow {
                    units: 3_000_000_000,
                    ..row()
                },
                "units 3000000000 is over the limit of 2147483647",
            ),
            (
                CdrRow {
                    duration_seconds: u32::MAX,
                    ..row()
                },
                "duration (seconds) 4294967295 is over the limit",
            ),
            (
                CdrRow {
                    volume_bytes: u64::MAX,
                    ..row()
                },
                "volume 18446744073709551615 bytes is over the limit",
            ),
            (
                CdrRow {
                    line: 1 << 31,
                    ..row()
                },
                "line number 2147483648 is over the limit",
            ),
            (
                CdrRow {
                    started_at: Utc.with_ymd_and_hms(-4713, 11, 23, 23, 59, 59).unwrap(),
                    ..row()
                },
                "is before 4714 BC",
            ),
            (
                CdrRow {
                    destination: "a\0b".into(),
                    ..row()
                },
                "destination contains a NUL character",
            ),
        ];
        for (row, reason) in cases {
            let mut out = Vec::new();
            let error = encode(&mut out, "routit", &row, None, 1).unwrap_err();
            assert!(error.contains(reason), "{error:?} should say {reason:?}");
            assert!(out.is_empty(), "nothing written for {reason:?}");
        }
        let mut earliest = row();
        earliest.started_at = Utc.with_ymd_and_hms(-4713, 11, 24, 0, 0, 0).unwrap();
        let mut out = Vec::new();
        encode(&mut out, "routit", &earliest, None, 1).unwrap();
        assert_eq!(
            fields(&out)[4].as_deref(),
            Some(&EARLIEST_TIMESTAMP.to_be_bytes()[..])
        );
    }

    #[test]
    fn the_stream_starts_with_the_binary_copy_signature_and_ends_with_minus_one() {
        assert_eq!(&COPY_HEADER[..11], b"PGCOPY\n\xff\r\n\0");
        assert_eq!(&COPY_HEADER[11..], &[0u8; 8]);
        assert_eq!(COPY_TRAILER, [0xff, 0xff]);
    }
}
