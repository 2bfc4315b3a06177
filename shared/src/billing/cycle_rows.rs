//! Reading one customer's cycle for rating: the columns rating needs, with
//! binary COPY, into [`CycleRows`], a compact in-memory form (strings in one
//! buffer, subscriptions numbered) that is also what `billing::cycle_input`
//! stores between calculations.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{BuildHasherDefault, Hasher};

use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use futures::TryStreamExt;
use sqlx::{Connection, PgConnection, PgPool};

use crate::billing::totals::TotalsError;
use crate::import::format::{Kind, Zone};

pub(crate) fn parse_kind(s: &[u8]) -> Option<Kind> {
    Some(match s {
        b"voice" => Kind::Voice,
        b"sms" => Kind::Sms,
        b"mms" => Kind::Mms,
        b"data" => Kind::Data,
        b"service" => Kind::Service,
        _ => return None,
    })
}

pub(crate) fn parse_zone(s: &[u8]) -> Option<Zone> {
    Some(match s {
        b"home" => Zone::Home,
        b"eu" => Zone::Eu,
        b"world" => Zone::World,
        _ => return None,
    })
}

/// A byte range of [`CycleRows::text`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Span {
    pub start: usize,
    pub len: usize,
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
pub(crate) struct CdrRow {
    pub id: i64,
    /// PostgreSQL's binary timestamptz (microseconds since 2000-01-01 UTC):
    /// only ever compared.
    pub started_at: i64,
    pub provider: Span,
    pub external_id: Span,
    /// Index into [`CycleRows::subscriptions`].
    pub subscription: u32,
    pub kind: Kind,
    pub zone: Zone,
    pub destination: Span,
    pub duration_seconds: u32,
    pub volume_bytes: u64,
    pub units: u32,
    pub provider_cost_micros: i64,
    /// The import file it came from: the unit in which a stored copy of the
    /// cycle is checked against the table (`billing::cycle_input`).
    pub file: i64,
}

/// The CDRs of one cycle, as read.
#[derive(Default)]
pub(crate) struct CycleRows {
    pub rows: Vec<CdrRow>,
    pub text: Vec<u8>,
    pub subscriptions: Vec<String>,
    numbers: HashMap<Box<[u8]>, u32, BuildHasherDefault<Fnv>>,
    /// Per import file, the fingerprint of its rows here.
    pub files: BTreeMap<i64, FileSum>,
}

/// What identifies the set of one import file's CDRs in a cycle, as
/// PostgreSQL can sum it too: their number, the sum of their ids and the
/// sum of their `xmin` (the transaction that wrote each row version), so an
/// added, removed or updated row changes it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct FileSum {
    pub count: i64,
    pub id_sum: i128,
    pub xmin_sum: i128,
}

impl FileSum {
    pub fn add(&mut self, other: &FileSum) {
        self.count += other.count;
        self.id_sum += other.id_sum;
        self.xmin_sum += other.xmin_sum;
    }
}

impl CycleRows {
    pub fn span(&mut self, bytes: &[u8]) -> Span {
        let start = self.text.len();
        self.text.extend_from_slice(bytes);
        Span {
            start,
            len: bytes.len(),
        }
    }

    pub fn text(&self, span: Span) -> &[u8] {
        &self.text[span.start..span.start + span.len]
    }

    /// Appends another part's rows, renumbering its subscriptions.
    pub fn absorb(&mut self, part: CycleRows) {
        if self.rows.is_empty() && self.text.is_empty() {
            *self = part;
            return;
        }
        for (file, sum) in &part.files {
            self.files.entry(*file).or_default().add(sum);
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

    pub fn subscription(&mut self, bytes: &[u8]) -> Result<u32, String> {
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
     duration_seconds, volume_bytes, units, provider_cost_micros, import_file_id, xmin";
const FIELDS: i16 = 14;

/// Connections reading one cycle at once, when the pool has them to spare.
const READERS: usize = 2;

/// The most connections one calculation holds at once: its transaction and
/// the spare readers (the stored-input path takes one spare, the table
/// path up to [`READERS`], never both at once). The chain runtime sizes a
/// batch's concurrency by it.
pub(crate) const CONNECTIONS_PER_CALCULATION: u32 = 1 + READERS as u32;

/// How long to wait for a spare connection before reading alone.
pub(crate) const SPARE_CONNECTION_WAIT: std::time::Duration = std::time::Duration::from_millis(50);

/// Reads the cycle's CDRs with binary COPY: about half the time of fetching
/// them as rows. PostgreSQL spends most of it turning values into their
/// wire form, one backend per query, so with connections to spare the cycle
/// is split in time and read by [`READERS`] backends at once, all on one
/// snapshot taken after the calculation's lock. Without spare connections
/// (a Lambda's small pool) the calculation's own transaction reads it all.
pub(crate) async fn read_cycle(
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
        return read_part(tx, customer_id, start, end, None).await;
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
    let rows = read_part(&mut reader, customer_id, from, to, None).await?;
    reader.commit().await?;
    Ok(rows)
}

/// Reads only the CDRs of `[from, to)` that came from the given import
/// files, in the calculation's own transaction.
pub(crate) async fn read_files(
    tx: &mut PgConnection,
    customer_id: i64,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    files: &[i64],
) -> Result<CycleRows, TotalsError> {
    read_part(tx, customer_id, from, to, Some(files)).await
}

/// Reads the CDRs of `[from, to)`, of the given import files or all, with
/// one binary COPY.
async fn read_part(
    connection: &mut PgConnection,
    customer_id: i64,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    files: Option<&[i64]>,
) -> Result<CycleRows, TotalsError> {
    // COPY takes no parameters; the values are integers and two timestamps
    // we format ourselves, so nothing foreign reaches the SQL.
    let only_files = match files {
        None => String::new(),
        Some(files) => {
            let list: Vec<String> = files.iter().map(i64::to_string).collect();
            format!("AND import_file_id IN ({})", list.join(","))
        }
    };
    let sql = format!(
        "COPY (SELECT {READ_COLUMNS} FROM call_detail_record
               WHERE customer_id = {customer_id} AND started_at >= '{}' AND started_at < '{}' {only_files})
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
// A row's field offsets stay on the stack; boxing them would allocate once
// per CDR.
#[allow(clippy::large_enum_variant)]
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
    let file = i64::from_be_bytes(int::<8>(bytes, f[12]).ok_or_else(|| bad("import_file_id"))?);
    let xmin = u32::from_be_bytes(int::<4>(bytes, f[13]).ok_or_else(|| bad("xmin"))?);
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
        file,
    };
    out.files.entry(file).or_default().add(&FileSum {
        count: 1,
        id_sum: id.into(),
        xmin_sum: xmin.into(),
    });
    out.rows.push(row);
    Ok(())
}

impl CycleRows {
    /// Keeps only the rows of the given import files.
    pub fn retain_files(&mut self, keep: &BTreeSet<i64>) {
        self.rows.retain(|row| keep.contains(&row.file));
        self.files.retain(|file, _| keep.contains(file));
    }

    /// The positions of the rows in bundle consumption order: by
    /// `started_at`, then provider, external id and id (rule 7 of the
    /// README's rating rules).
    pub fn consumption_order(&self) -> Vec<u32> {
        // By instant first (16-byte keys sort fast), then each run of equal
        // instants by provider, external id and id.
        let rows = &self.rows;
        let mut order: Vec<(i64, u32)> = rows
            .iter()
            .enumerate()
            .map(|(i, row)| (row.started_at, i as u32))
            .collect();
        // The stable sort finds the sorted runs the stored segments already
        // are and merges them, instead of sorting from scratch.
        order.sort();
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
                    self.text(a.provider)
                        .cmp(self.text(b.provider))
                        .then_with(|| self.text(a.external_id).cmp(self.text(b.external_id)))
                        .then(a.id.cmp(&b.id))
                });
            }
            run = next;
        }
        order.into_iter().map(|(_, i)| i).collect()
    }
}
