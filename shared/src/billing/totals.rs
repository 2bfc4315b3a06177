//! CalculateTotals against PostgreSQL: one customer's CDRs of one billing
//! cycle, priced by the standard method (provider cost) or the customer's
//! rate plan, written as totals with lines per subscription, kind and zone.
//! Recalculating replaces the cycle's rows, so it is idempotent.
//!
//! The two methods are built to stay close to the cost of a bare
//! `SELECT ... GROUP BY` over the cycle (`totals-bench` in `bench/` measures
//! it):
//! - **standard**: the lines are that GROUP BY itself, computed by the
//!   database; only the few grouped rows travel. Nothing is stored per CDR:
//!   every CDR is rated at its provider cost.
//! - **rate plan**: the columns rating needs are read with one binary
//!   `COPY ... TO STDOUT`, rated in memory by [`Rater`] (figures only, no
//!   text), and how each CDR was priced is written as a few rows of parallel
//!   arrays (`cycle_rating`, `cycle_rating_chunk`), together with the plan
//!   it was rated with; `billing::explain` turns them into sentences.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::time::Instant;

use bytes::Bytes;
use chrono::{DateTime, Months, NaiveDate, NaiveTime, SecondsFormat, Utc};
use chrono_tz::Tz;
use futures::TryStreamExt;
use serde::Serialize;
use sqlx::{Connection, PgConnection, PgPool};

use crate::billing::customer::{BillingCustomer, CustomerError};
use crate::billing::rating::{RatePlan, Rater, Usage};
use crate::import::format::{Kind, Zone};
use crate::import::normalize::local_to_utc;

/// CDRs per `cycle_rating_chunk` row: large enough that a cycle of a
/// million CDRs is ten inserts, small enough that no single statement nears
/// PostgreSQL's 1 GiB message limit however big a cycle gets.
pub const RATING_CHUNK: usize = 100_000;

#[derive(Debug, thiserror::Error)]
pub enum TotalsError {
    #[error(transparent)]
    Customer(#[from] CustomerError),
    #[error("CDR {id} cannot be rated: {problem}; correct or remove that row of call_detail_record, then recalculate")]
    BadCdr { id: i64, problem: String },
    #[error("reading the cycle's CDRs failed: {0}; retry, and report it if it persists")]
    Read(String),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CycleTotals {
    pub customer_id: i64,
    pub cycle: NaiveDate,
    pub method: &'static str,
    pub rate_plan_id: Option<String>,
    pub cdr_count: i64,
    pub voice_seconds: i64,
    pub data_bytes: i64,
    pub messages: i64,
    pub provider_cost_micros: i64,
    pub rated_cost_micros: i64,
    pub unrated_count: i64,
}

/// The UTC bounds `[start, end)` of the cycle that starts on `cycle` at
/// 00:00 local time and ends at the same point a month later.
pub fn cycle_bounds(cycle: NaiveDate, zone: Tz) -> (DateTime<Utc>, DateTime<Utc>) {
    let start_of = |day: NaiveDate| {
        // Midnight exists on every day in the zones we bill (DST changes at
        // 02:00 or later); fall back to 01:00 if a zone ever skips it.
        local_to_utc(day, NaiveTime::MIN, zone)
            .or_else(|_| local_to_utc(day, NaiveTime::from_hms_opt(1, 0, 0).expect("valid"), zone))
            .expect("01:00 exists")
    };
    let next = cycle + Months::new(1);
    (start_of(cycle), start_of(next))
}

/// The figures of one totals line (or of the totals).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Sums {
    cdr_count: i64,
    voice_seconds: i64,
    data_bytes: i64,
    messages: i64,
    provider_cost_micros: i64,
    rated_cost_micros: i64,
    unrated_count: i64,
}

impl Sums {
    fn add(&mut self, other: &Sums) {
        self.cdr_count += other.cdr_count;
        self.voice_seconds += other.voice_seconds;
        self.data_bytes += other.data_bytes;
        self.messages += other.messages;
        self.provider_cost_micros += other.provider_cost_micros;
        self.rated_cost_micros += other.rated_cost_micros;
        self.unrated_count += other.unrated_count;
    }
}

/// One totals line: subscription, kind, zone and its figures.
struct Line {
    subscription: String,
    kind: &'static str,
    zone: &'static str,
    sums: Sums,
}

fn parse_kind(s: &[u8]) -> Option<Kind> {
    Some(match s {
        b"voice" => Kind::Voice,
        b"sms" => Kind::Sms,
        b"mms" => Kind::Mms,
        b"data" => Kind::Data,
        b"service" => Kind::Service,
        _ => return None,
    })
}

fn parse_zone(s: &[u8]) -> Option<Zone> {
    Some(match s {
        b"home" => Zone::Home,
        b"eu" => Zone::Eu,
        b"world" => Zone::World,
        _ => return None,
    })
}

/// Where one calculation's time went (logged; `totals-bench` prints it).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct TotalsTimings {
    /// Reading the cycle: the GROUP BY (standard) or the COPY (rate plan).
    pub read_seconds: f64,
    /// Sorting and rating in memory (rate plan only).
    pub rate_seconds: f64,
    /// Writing totals, lines and rating, and the commit.
    pub write_seconds: f64,
}

/// Calculates and stores the totals of one customer's cycle.
pub async fn calculate_totals(
    pool: &PgPool,
    customer_id: i64,
    cycle: NaiveDate,
) -> Result<CycleTotals, TotalsError> {
    calculate_totals_timed(pool, customer_id, cycle)
        .await
        .map(|(totals, _)| totals)
}

/// [`calculate_totals`], also saying where the time went.
pub async fn calculate_totals_timed(
    pool: &PgPool,
    customer_id: i64,
    cycle: NaiveDate,
) -> Result<(CycleTotals, TotalsTimings), TotalsError> {
    let mut timings = TotalsTimings::default();
    let customer = BillingCustomer::load(pool, customer_id, cycle).await?;
    let (start, end) = cycle_bounds(cycle, customer.zone);

    let mut tx = pool.begin().await?;
    // Two calculations of the same cycle (two imports at once) run one after
    // the other, and each reads the CDRs only once it holds the lock, so the
    // one that writes last also read last.
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
        .bind(format!("totals:{customer_id}:{cycle}"))
        .execute(&mut *tx)
        .await?;
    let started = Instant::now();
    let (lines, rating) = match &customer.plan {
        None => (
            standard_lines(&mut tx, customer_id, start, end).await?,
            None,
        ),
        Some((_, plan)) => {
            let rows = read_cycle(pool, &mut tx, customer_id, start, end).await?;
            timings.read_seconds = started.elapsed().as_secs_f64();
            let rated = Instant::now();
            let (lines, rating) = rate_rows(plan, rows)?;
            timings.rate_seconds = rated.elapsed().as_secs_f64();
            (lines, Some(rating))
        }
    };
    if rating.is_none() {
        timings.read_seconds = started.elapsed().as_secs_f64();
    }
    let written = Instant::now();
    let mut total = Sums::default();
    for line in &lines {
        total.add(&line.sums);
    }
    let method = if customer.plan.is_some() {
        "rate_plan"
    } else {
        "standard"
    };

    // Deleting the totals also deletes their lines and the cycle's rating
    // (ON DELETE CASCADE), so nothing of an earlier calculation survives,
    // also when the customer changed method since.
    sqlx::query("DELETE FROM totals WHERE customer_id = $1 AND cycle = $2")
        .bind(customer_id)
        .bind(cycle)
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "INSERT INTO totals (customer_id, cycle, method, rate_plan_id, cdr_count, voice_seconds, data_bytes, messages,
                             provider_cost_micros, rated_cost_micros, unrated_count)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
    )
    .bind(customer_id)
    .bind(cycle)
    .bind(method)
    .bind(&customer.plan_id)
    .bind(total.cdr_count)
    .bind(total.voice_seconds)
    .bind(total.data_bytes)
    .bind(total.messages)
    .bind(total.provider_cost_micros)
    .bind(total.rated_cost_micros)
    .bind(total.unrated_count)
    .execute(&mut *tx)
    .await?;
    write_lines(&mut tx, customer_id, cycle, &lines).await?;
    if let (Some(rating), Some((document, _))) = (&rating, &customer.plan) {
        write_rating(
            &mut tx,
            customer_id,
            cycle,
            customer.plan_id.as_deref().unwrap_or_default(),
            document,
            rating,
        )
        .await?;
    }
    tx.commit().await?;
    timings.write_seconds = written.elapsed().as_secs_f64();
    tracing::info!(
        customer_id,
        %cycle,
        method,
        cdrs = total.cdr_count,
        read_s = timings.read_seconds,
        rate_s = timings.rate_seconds,
        write_s = timings.write_seconds,
        "totals calculated"
    );
    let totals = CycleTotals {
        customer_id,
        cycle,
        method,
        rate_plan_id: customer.plan_id,
        cdr_count: total.cdr_count,
        voice_seconds: total.voice_seconds,
        data_bytes: total.data_bytes,
        messages: total.messages,
        provider_cost_micros: total.provider_cost_micros,
        rated_cost_micros: total.rated_cost_micros,
        unrated_count: total.unrated_count,
    };
    Ok((totals, timings))
}

/// Subscription, kind, zone, count and the sums of seconds, bytes, units
/// and provider cost.
type GroupRow = (String, String, String, i64, i64, i64, i64, i64);

/// The standard method's lines, grouped by the database: the rated cost of
/// every CDR is its provider cost, and nothing else needs a CDR of its own.
async fn standard_lines(
    tx: &mut PgConnection,
    customer_id: i64,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
) -> Result<Vec<Line>, TotalsError> {
    let rows: Vec<GroupRow> = sqlx::query_as(
        "SELECT subscription, kind, roaming_zone, count(*), sum(duration_seconds)::bigint,
                sum(volume_bytes)::bigint, sum(units)::bigint, sum(provider_cost_micros)::bigint
         FROM call_detail_record
         WHERE customer_id = $1 AND started_at >= $2 AND started_at < $3
         GROUP BY subscription, kind, roaming_zone",
    )
    .bind(customer_id)
    .bind(start)
    .bind(end)
    .fetch_all(&mut *tx)
    .await?;
    rows.into_iter()
        .map(|(subscription, kind, zone, count, seconds, bytes, units, cost)| {
            let (Some(kind), Some(zone)) =
                (parse_kind(kind.as_bytes()), parse_zone(zone.as_bytes()))
            else {
                return Err(TotalsError::Read(format!(
                    "subscription {subscription} has CDRs of kind '{kind}' in zone '{zone}', which billing does not know"
                )));
            };
            Ok(Line {
                subscription,
                kind: kind.as_str(),
                zone: zone.as_str(),
                sums: Sums {
                    cdr_count: count,
                    voice_seconds: if kind == Kind::Voice { seconds } else { 0 },
                    data_bytes: if kind == Kind::Data { bytes } else { 0 },
                    messages: if matches!(kind, Kind::Sms | Kind::Mms) {
                        units
                    } else {
                        0
                    },
                    provider_cost_micros: cost,
                    rated_cost_micros: cost,
                    unrated_count: 0,
                },
            })
        })
        .collect()
}

async fn write_lines(
    tx: &mut PgConnection,
    customer_id: i64,
    cycle: NaiveDate,
    lines: &[Line],
) -> Result<(), TotalsError> {
    let column = |f: fn(&Sums) -> i64| lines.iter().map(|l| f(&l.sums)).collect::<Vec<i64>>();
    sqlx::query(
        "INSERT INTO totals_line (customer_id, cycle, subscription, kind, roaming_zone, cdr_count, voice_seconds,
                                  data_bytes, messages, provider_cost_micros, rated_cost_micros, unrated_count)
         SELECT $1, $2, * FROM UNNEST($3::text[], $4::text[], $5::text[], $6::bigint[], $7::bigint[], $8::bigint[],
                                      $9::bigint[], $10::bigint[], $11::bigint[], $12::bigint[])",
    )
    .bind(customer_id)
    .bind(cycle)
    .bind(lines.iter().map(|l| l.subscription.clone()).collect::<Vec<_>>())
    .bind(lines.iter().map(|l| l.kind).collect::<Vec<_>>())
    .bind(lines.iter().map(|l| l.zone).collect::<Vec<_>>())
    .bind(column(|s| s.cdr_count))
    .bind(column(|s| s.voice_seconds))
    .bind(column(|s| s.data_bytes))
    .bind(column(|s| s.messages))
    .bind(column(|s| s.provider_cost_micros))
    .bind(column(|s| s.rated_cost_micros))
    .bind(column(|s| s.unrated_count))
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// A byte range of [`CycleRows::text`].
#[derive(Debug, Clone, Copy)]
struct Span {
    start: usize,
    len: usize,
}

/// FNV-1a: subscription numbers are looked up once per CDR, and the
/// default SipHash costs more than the rest of decoding a row. The keys are
/// our own data, so flooding is no concern.
struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
}

/// One CDR as rating needs it; strings live in [`CycleRows::text`] so a
/// million CDRs are a few allocations, not millions.
#[derive(Debug, Clone, Copy)]
struct CdrRow {
    id: i64,
    /// PostgreSQL's binary timestamptz (microseconds since 2000-01-01 UTC):
    /// only ever compared.
    started_at: i64,
    provider: Span,
    external_id: Span,
    /// Index into [`CycleRows::subscriptions`].
    subscription: u32,
    kind: Kind,
    zone: Zone,
    destination: Span,
    duration_seconds: u32,
    volume_bytes: u64,
    units: u32,
    provider_cost_micros: i64,
}

/// The CDRs of one cycle, as read.
#[derive(Default)]
struct CycleRows {
    rows: Vec<CdrRow>,
    text: Vec<u8>,
    subscriptions: Vec<String>,
    numbers: HashMap<Box<[u8]>, u32, BuildHasherDefault<Fnv>>,
}

impl CycleRows {
    fn span(&mut self, bytes: &[u8]) -> Span {
        let start = self.text.len();
        self.text.extend_from_slice(bytes);
        Span {
            start,
            len: bytes.len(),
        }
    }

    fn text(&self, span: Span) -> &[u8] {
        &self.text[span.start..span.start + span.len]
    }

    /// Appends another part's rows, renumbering its subscriptions.
    fn absorb(&mut self, part: CycleRows) {
        if self.rows.is_empty() && self.text.is_empty() {
            *self = part;
            return;
        }
        let shift = self.text.len();
        self.text.extend_from_slice(&part.text);
        let renumber: Vec<u32> = part
            .subscriptions
            .iter()
            .map(|name| {
                let next = self.subscriptions.len() as u32;
                *self
                    .numbers
                    .entry(name.as_bytes().into())
                    .or_insert_with(|| {
                        self.subscriptions.push(name.clone());
                        next
                    })
            })
            .collect();
        let moved = |span: Span| Span {
            start: span.start + shift,
            len: span.len,
        };
        self.rows.extend(part.rows.into_iter().map(|row| CdrRow {
            provider: moved(row.provider),
            external_id: moved(row.external_id),
            destination: moved(row.destination),
            subscription: renumber[row.subscription as usize],
            ..row
        }));
    }

    fn subscription(&mut self, bytes: &[u8]) -> Result<u32, String> {
        if let Some(&number) = self.numbers.get(bytes) {
            return Ok(number);
        }
        let name = std::str::from_utf8(bytes)
            .map_err(|_| "its subscription is not UTF-8".to_string())?
            .to_string();
        let number = u32::try_from(self.subscriptions.len())
            .map_err(|_| "the cycle has more than 4 billion subscriptions".to_string())?;
        self.subscriptions.push(name);
        self.numbers.insert(bytes.into(), number);
        Ok(number)
    }
}

/// The columns the rate-plan method reads, in the order its decoder expects
/// them (public for `totals-bench`, which times reading them alone).
pub const READ_COLUMNS: &str =
    "id, started_at, provider, external_id, subscription, kind, roaming_zone, destination, \
                            duration_seconds, volume_bytes, units, provider_cost_micros";
const FIELDS: i16 = 12;

/// Connections reading one cycle at once, when the pool has them to spare.
const READERS: usize = 2;

/// How long to wait for a spare connection before reading alone.
const SPARE_CONNECTION_WAIT: std::time::Duration = std::time::Duration::from_millis(50);

/// Reads the cycle's CDRs with binary COPY: about half the time of fetching
/// them as rows. PostgreSQL spends most of it turning values into their
/// wire form, one backend per query, so with connections to spare the cycle
/// is split in time and read by [`READERS`] backends at once, all on one
/// snapshot taken after the calculation's lock. Without spare connections
/// (a Lambda's small pool) the calculation's own transaction reads it all.
async fn read_cycle(
    pool: &PgPool,
    tx: &mut PgConnection,
    customer_id: i64,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
) -> Result<CycleRows, TotalsError> {
    let mut spare = Vec::with_capacity(READERS);
    while spare.len() < READERS {
        match tokio::time::timeout(SPARE_CONNECTION_WAIT, pool.acquire()).await {
            Ok(Ok(connection)) => spare.push(connection),
            _ => break,
        }
    }
    if spare.len() < 2 {
        // One spare connection does not help (the calculation's own
        // transaction cannot share a snapshot); give it back at once.
        drop(spare);
        return read_part(tx, customer_id, start, end).await;
    }
    let snapshot: String = sqlx::query_scalar("SELECT pg_export_snapshot()")
        .fetch_one(&mut *tx)
        .await?;
    // SET TRANSACTION SNAPSHOT takes no parameters either; the id is
    // PostgreSQL's own (hex digits and dashes), checked before use.
    if snapshot.is_empty() || !snapshot.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-') {
        return Err(TotalsError::Read(format!(
            "unexpected snapshot id {snapshot:?}"
        )));
    }
    let parts = spare.len() as i32;
    let span = end - start;
    let mut readers = Vec::with_capacity(spare.len());
    for (i, mut connection) in spare.into_iter().enumerate() {
        let i = i as i32;
        let from = start + span * i / parts;
        let to = if i + 1 == parts {
            end
        } else {
            start + span * (i + 1) / parts
        };
        let snapshot = snapshot.clone();
        readers.push(tokio::spawn(async move {
            let result = read_on_snapshot(&mut connection, &snapshot, customer_id, from, to).await;
            if result.is_err() {
                // It may have stopped inside the COPY: close the connection
                // rather than hand it back to the pool in that state.
                connection.close_on_drop();
            }
            result
        }));
    }
    let mut merged = CycleRows::default();
    for reader in readers {
        let part = reader
            .await
            .map_err(|e| TotalsError::Read(format!("a reader stopped: {e}")))??;
        merged.absorb(part);
    }
    Ok(merged)
}

/// Reads the CDRs of `[from, to)` in a transaction of its own that sees
/// the exported `snapshot`.
async fn read_on_snapshot(
    connection: &mut PgConnection,
    snapshot: &str,
    customer_id: i64,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<CycleRows, TotalsError> {
    let mut reader = connection
        .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .await?;
    sqlx::query(&format!("SET TRANSACTION SNAPSHOT '{snapshot}'"))
        .execute(&mut *reader)
        .await?;
    let rows = read_part(&mut reader, customer_id, from, to).await?;
    reader.commit().await?;
    Ok(rows)
}

/// Reads the CDRs of `[from, to)` with one binary COPY.
async fn read_part(
    connection: &mut PgConnection,
    customer_id: i64,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<CycleRows, TotalsError> {
    // COPY takes no parameters; the values are an integer and two
    // timestamps we format ourselves, so nothing foreign reaches the SQL.
    let sql = format!(
        "COPY (SELECT {READ_COLUMNS} FROM call_detail_record
               WHERE customer_id = {customer_id} AND started_at >= '{}' AND started_at < '{}')
         TO STDOUT (FORMAT binary)",
        from.to_rfc3339_opts(SecondsFormat::Micros, true),
        to.to_rfc3339_opts(SecondsFormat::Micros, true),
    );
    let mut decoder = BinaryRows::default();
    let mut out = CycleRows::default();
    let mut stream = connection.copy_out_raw(&sql).await?;
    while let Some(chunk) = stream.try_next().await? {
        decoder.feed(chunk, &mut out)?;
    }
    drop(stream);
    decoder.finish()?;
    Ok(out)
}

/// Decoder of PostgreSQL's binary COPY format for [`READ_COLUMNS`]. The
/// server sends a row per message; a row split over messages is buffered.
#[derive(Default)]
struct BinaryRows {
    pending: Vec<u8>,
    header_seen: bool,
    trailer_seen: bool,
}

const SIGNATURE: &[u8] = b"PGCOPY\n\xff\r\n\0";

/// A cursor over one buffer; `None` means "the buffer ends here".
struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let slice = self.bytes.get(self.at..self.at.checked_add(n)?)?;
        self.at += n;
        Some(slice)
    }

    fn i16(&mut self) -> Option<i16> {
        self.take(2).map(|b| i16::from_be_bytes([b[0], b[1]]))
    }

    fn i32(&mut self) -> Option<i32> {
        self.take(4)
            .map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
}

/// What decoding one row found.
enum Step {
    Row(RawRow),
    Trailer,
    /// The buffer ends inside the row: wait for more.
    Incomplete,
}

/// One row's fields, borrowed from the buffer as byte ranges.
struct RawRow {
    fields: [(usize, usize); FIELDS as usize],
}

impl BinaryRows {
    fn feed(&mut self, chunk: Bytes, out: &mut CycleRows) -> Result<(), TotalsError> {
        if self.pending.is_empty() {
            let used = self.decode(&chunk, out)?;
            self.pending.extend_from_slice(&chunk[used..]);
        } else {
            self.pending.extend_from_slice(&chunk);
            let pending = std::mem::take(&mut self.pending);
            let used = self.decode(&pending, out)?;
            self.pending = pending;
            self.pending.drain(..used);
        }
        Ok(())
    }

    fn finish(&self) -> Result<(), TotalsError> {
        if !self.trailer_seen || !self.pending.is_empty() {
            return Err(TotalsError::Read(
                "the COPY stream ended before its trailer".into(),
            ));
        }
        Ok(())
    }

    /// Decodes every complete row of `bytes`; returns how many bytes it used.
    fn decode(&mut self, bytes: &[u8], out: &mut CycleRows) -> Result<usize, TotalsError> {
        let mut used = 0;
        if !self.header_seen {
            let mut cursor = Cursor { bytes, at: 0 };
            let (Some(signature), Some(_flags), Some(extension)) =
                (cursor.take(SIGNATURE.len()), cursor.i32(), cursor.i32())
            else {
                return Ok(0);
            };
            if signature != SIGNATURE {
                return Err(TotalsError::Read("not a binary COPY stream".into()));
            }
            let Some(_) = cursor.take(usize::try_from(extension).unwrap_or(usize::MAX)) else {
                return Ok(0);
            };
            self.header_seen = true;
            used = cursor.at;
        }
        loop {
            if self.trailer_seen {
                if used < bytes.len() {
                    return Err(TotalsError::Read("data after the COPY trailer".into()));
                }
                return Ok(used);
            }
            let mut cursor = Cursor { bytes, at: used };
            match Self::row(&mut cursor)? {
                Step::Incomplete => return Ok(used),
                Step::Trailer => self.trailer_seen = true,
                Step::Row(raw) => push_row(out, bytes, &raw)?,
            }
            used = cursor.at;
        }
    }

    fn row(cursor: &mut Cursor<'_>) -> Result<Step, TotalsError> {
        let Some(count) = cursor.i16() else {
            return Ok(Step::Incomplete);
        };
        if count == -1 {
            return Ok(Step::Trailer);
        }
        if count != FIELDS {
            return Err(TotalsError::Read(format!(
                "a row has {count} fields, expected {FIELDS}"
            )));
        }
        let mut fields = [(0, 0); FIELDS as usize];
        for field in &mut fields {
            let Some(len) = cursor.i32() else {
                return Ok(Step::Incomplete);
            };
            // Every column read is NOT NULL, so -1 (NULL) is refused too.
            let len = usize::try_from(len)
                .map_err(|_| TotalsError::Read("a NOT NULL column came back NULL".into()))?;
            let start = cursor.at;
            if cursor.take(len).is_none() {
                return Ok(Step::Incomplete);
            }
            *field = (start, len);
        }
        Ok(Step::Row(RawRow { fields }))
    }
}

fn int<const N: usize>(bytes: &[u8], (start, len): (usize, usize)) -> Option<[u8; N]> {
    if len != N {
        return None;
    }
    bytes.get(start..start + N)?.try_into().ok()
}

fn push_row(out: &mut CycleRows, bytes: &[u8], raw: &RawRow) -> Result<(), TotalsError> {
    let f = &raw.fields;
    let text = |i: usize| &bytes[f[i].0..f[i].0 + f[i].1];
    let bad =
        |what: &str| TotalsError::Read(format!("column {what} has an unexpected binary form"));
    let id = i64::from_be_bytes(int::<8>(bytes, f[0]).ok_or_else(|| bad("id"))?);
    let problem = |problem: String| TotalsError::BadCdr { id, problem };
    let started_at = i64::from_be_bytes(int::<8>(bytes, f[1]).ok_or_else(|| bad("started_at"))?);
    let kind = parse_kind(text(5)).ok_or_else(|| {
        problem(format!(
            "kind '{}' is not voice, sms, mms, data or service",
            String::from_utf8_lossy(text(5))
        ))
    })?;
    let zone = parse_zone(text(6)).ok_or_else(|| {
        problem(format!(
            "roaming zone '{}' is not home, eu or world",
            String::from_utf8_lossy(text(6))
        ))
    })?;
    let duration =
        i32::from_be_bytes(int::<4>(bytes, f[8]).ok_or_else(|| bad("duration_seconds"))?);
    let volume = i64::from_be_bytes(int::<8>(bytes, f[9]).ok_or_else(|| bad("volume_bytes"))?);
    let units = i32::from_be_bytes(int::<4>(bytes, f[10]).ok_or_else(|| bad("units"))?);
    let cost =
        i64::from_be_bytes(int::<8>(bytes, f[11]).ok_or_else(|| bad("provider_cost_micros"))?);
    let negative = |what: &str, value: i64| problem(format!("{what} is negative ({value})"));
    let row = CdrRow {
        id,
        started_at,
        provider: out.span(text(2)),
        external_id: out.span(text(3)),
        subscription: out.subscription(text(4)).map_err(problem)?,
        kind,
        zone,
        destination: out.span(text(7)),
        duration_seconds: u32::try_from(duration)
            .map_err(|_| negative("duration_seconds", duration.into()))?,
        volume_bytes: u64::try_from(volume).map_err(|_| negative("volume_bytes", volume))?,
        units: u32::try_from(units).map_err(|_| negative("units", units.into()))?,
        provider_cost_micros: cost,
    };
    out.rows.push(row);
    Ok(())
}

/// How each CDR of a cycle was priced, as the parallel arrays stored in
/// `cycle_rating_chunk`, in consumption order.
#[derive(Debug, Default)]
struct Rating {
    cdr_id: Vec<i64>,
    rated_cost_micros: Vec<i64>,
    rate: Vec<i32>,
    bundle: Vec<i32>,
    billed_quantity: Vec<i64>,
    covered_quantity: Vec<i64>,
    split_position: Vec<i32>,
    split_bundle: Vec<i32>,
    split_covered: Vec<i64>,
}

fn index_i32(index: Option<usize>) -> i32 {
    index.and_then(|i| i32::try_from(i).ok()).unwrap_or(-1)
}

fn quantity_i64(quantity: u64) -> i64 {
    i64::try_from(quantity).unwrap_or(i64::MAX)
}

/// Rates the cycle's CDRs in consumption order and sums the lines.
fn rate_rows(plan: &RatePlan, mut cycle: CycleRows) -> Result<(Vec<Line>, Rating), TotalsError> {
    if i32::try_from(cycle.rows.len()).is_err() {
        return Err(TotalsError::Read(format!(
            "the cycle has {} CDRs, more than one rating can hold (2^31)",
            cycle.rows.len()
        )));
    }
    // Rule 7's order: by instant first (16-byte keys sort fast), then each
    // run of equal instants by provider, external id and id.
    let rows = std::mem::take(&mut cycle.rows);
    let mut order: Vec<(i64, u32)> = rows
        .iter()
        .enumerate()
        .map(|(i, row)| (row.started_at, i as u32))
        .collect();
    order.sort_unstable();
    let mut run = 0;
    while run < order.len() {
        let instant = order[run].0;
        let mut next = run + 1;
        while next < order.len() && order[next].0 == instant {
            next += 1;
        }
        if next - run > 1 {
            order[run..next].sort_unstable_by(|&(_, a), &(_, b)| {
                let (a, b) = (&rows[a as usize], &rows[b as usize]);
                cycle
                    .text(a.provider)
                    .cmp(cycle.text(b.provider))
                    .then_with(|| cycle.text(a.external_id).cmp(cycle.text(b.external_id)))
                    .then(a.id.cmp(&b.id))
            });
        }
        run = next;
    }
    let n = rows.len();
    let mut rating = Rating {
        cdr_id: Vec::with_capacity(n),
        rated_cost_micros: Vec::with_capacity(n),
        rate: Vec::with_capacity(n),
        bundle: Vec::with_capacity(n),
        billed_quantity: Vec::with_capacity(n),
        covered_quantity: Vec::with_capacity(n),
        ..Rating::default()
    };
    // Lines in a dense table: subscription x kind x zone.
    const KINDS: usize = 5;
    const ZONES: usize = 3;
    let mut sums = vec![Sums::default(); cycle.subscriptions.len() * KINDS * ZONES];
    let kind_index = |k: Kind| match k {
        Kind::Voice => 0,
        Kind::Sms => 1,
        Kind::Mms => 2,
        Kind::Data => 3,
        Kind::Service => 4,
    };
    let zone_index = |z: Zone| match z {
        Zone::Home => 0,
        Zone::Eu => 1,
        Zone::World => 2,
    };
    let mut rater = Rater::new(plan);
    for (position, &(_, index)) in order.iter().enumerate() {
        let row = &rows[index as usize];
        let pricing = rater.rate(&Usage {
            subscription: row.subscription as usize,
            kind: row.kind,
            zone: row.zone,
            destination: cycle.text(row.destination),
            duration_seconds: row.duration_seconds,
            volume_bytes: row.volume_bytes,
            units: row.units,
            provider_cost_micros: row.provider_cost_micros,
        });
        rating.cdr_id.push(row.id);
        rating.rated_cost_micros.push(pricing.rated_cost_micros);
        rating.rate.push(index_i32(pricing.rate));
        rating.bundle.push(index_i32(pricing.bundle));
        rating
            .billed_quantity
            .push(quantity_i64(pricing.billed_quantity));
        rating
            .covered_quantity
            .push(quantity_i64(pricing.covered_quantity));
        let shares = rater.shares();
        if shares.iter().filter(|s| s.covered > 0).count() > 1 {
            for share in shares.iter().filter(|s| s.covered > 0) {
                rating.split_position.push(position as i32);
                rating.split_bundle.push(index_i32(Some(share.bundle)));
                rating.split_covered.push(quantity_i64(share.covered));
            }
        }
        let line = &mut sums[(row.subscription as usize * KINDS + kind_index(row.kind)) * ZONES
            + zone_index(row.zone)];
        line.cdr_count += 1;
        match row.kind {
            Kind::Voice => line.voice_seconds += i64::from(row.duration_seconds),
            Kind::Data => line.data_bytes += quantity_i64(row.volume_bytes),
            Kind::Sms | Kind::Mms => line.messages += i64::from(row.units),
            Kind::Service => {}
        }
        line.provider_cost_micros += row.provider_cost_micros;
        line.rated_cost_micros += pricing.rated_cost_micros;
        line.unrated_count += i64::from(pricing.unrated);
    }

    const ALL_KINDS: [Kind; KINDS] = [Kind::Voice, Kind::Sms, Kind::Mms, Kind::Data, Kind::Service];
    const ALL_ZONES: [Zone; ZONES] = [Zone::Home, Zone::Eu, Zone::World];
    let mut lines = Vec::new();
    for (index, line) in sums.iter().enumerate() {
        if line.cdr_count == 0 {
            continue;
        }
        let subscription = index / (KINDS * ZONES);
        lines.push(Line {
            subscription: cycle.subscriptions[subscription].clone(),
            kind: ALL_KINDS[index / ZONES % KINDS].as_str(),
            zone: ALL_ZONES[index % ZONES].as_str(),
            sums: *line,
        });
    }
    Ok((lines, rating))
}

async fn write_rating(
    tx: &mut PgConnection,
    customer_id: i64,
    cycle: NaiveDate,
    plan_id: &str,
    plan: &serde_json::Value,
    rating: &Rating,
) -> Result<(), TotalsError> {
    sqlx::query(
        "INSERT INTO cycle_rating (customer_id, cycle, rate_plan_id, plan, cdr_count, split_position, split_bundle,
                                   split_covered)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(customer_id)
    .bind(cycle)
    .bind(plan_id)
    .bind(plan)
    .bind(rating.cdr_id.len() as i64)
    .bind(&rating.split_position)
    .bind(&rating.split_bundle)
    .bind(&rating.split_covered)
    .execute(&mut *tx)
    .await?;
    let n = rating.cdr_id.len();
    for (chunk, first) in (0..n).step_by(RATING_CHUNK).enumerate() {
        let range = first..(first + RATING_CHUNK).min(n);
        sqlx::query(
            "INSERT INTO cycle_rating_chunk (customer_id, cycle, chunk, first_position, cdr_id, rated_cost_micros, rate,
                                             bundle, billed_quantity, covered_quantity)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(customer_id)
        .bind(cycle)
        .bind(chunk as i32)
        .bind(first as i32)
        .bind(&rating.cdr_id[range.clone()])
        .bind(&rating.rated_cost_micros[range.clone()])
        .bind(&rating.rate[range.clone()])
        .bind(&rating.bundle[range.clone()])
        .bind(&rating.billed_quantity[range.clone()])
        .bind(&rating.covered_quantity[range])
        .execute(&mut *tx)
        .await?;
    }
    Ok(())
}
