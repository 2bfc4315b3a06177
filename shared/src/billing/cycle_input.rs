//! The stored input of a rate-plan cycle: a compact copy of the columns
//! rating reads, kept between calculations in `cycle_input`.
//!
//! Why: rating has to see every CDR of the cycle, and PostgreSQL spends far
//! longer turning a million rows into their wire form than the rating takes
//! (`totals-bench` measures both). A cycle is recalculated after every
//! import into it, and between two calculations most of its CDRs stay as
//! they were, so the calculation keeps what it read, compressed, and reads
//! from the table only what changed.
//!
//! It is never trusted blindly. Each calculation first asks PostgreSQL, in
//! one aggregate over the cycle, for a fingerprint per import file (the
//! number of CDRs, the sum of their ids and the sum of their `xmin`, the
//! transaction that wrote each row version). A file whose fingerprint equals
//! the stored one is taken from the copy; a new or changed file (a late
//! import, CDRs attached to a customer, a row corrected by hand) is read
//! again from the table, and a file that is gone is dropped. A copy that is
//! missing, unreadable, of other cycle bounds (the customer's time zone or
//! start day changed) or mostly out of date is ignored and the cycle read in
//! full. The table stays the only source of truth: deleting every row of
//! `cycle_input` changes no figure, only the time the next calculation takes.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{PgConnection, PgPool, Row};

use crate::billing::cycle_rows::{
    read_cycle, read_files, CdrRow, CycleRows, FileSum, Span, SPARE_CONNECTION_WAIT,
};
use crate::billing::encoding::{put_bytes, put_varint, seal, unseal, zigzag, Reader};
use crate::billing::totals::TotalsError;
use crate::import::format::{Kind, Zone};

/// The first bytes of an encoded copy; a new layout gets a new tag, and a
/// copy with another tag is read again from the table.
const TAG: &[u8; 8] = b"TEMCIN01";

/// A bigger copy is not stored: the cycle is then read in full every time,
/// which is slower but stays within PostgreSQL's 1 GiB value limit.
const MAX_STORED_BYTES: usize = 512 << 20;

/// Where a calculation's CDRs came from (logged; `totals-bench` prints it).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum InputSource {
    /// The whole cycle from `call_detail_record`.
    #[default]
    Table,
    /// All of it from the stored copy.
    Stored,
    /// The stored copy, with these files read again from the table.
    StoredAndFiles { files: usize, cdrs: usize },
}

/// The cycle's CDRs and what to store of them after the calculation.
pub(crate) struct CycleInput {
    pub rows: CycleRows,
    pub source: InputSource,
    pub store: Store,
}

/// What the stored copy needs after a calculation. The copy is kept in
/// segments (rows of `cycle_input`), each holding whole import files, so
/// that after an import only the new file is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Store {
    /// It is right as it is.
    Nothing,
    /// Replace every segment with one holding all rows.
    Everything,
    /// Remove the `stale` segments and add one segment `next` holding
    /// these files' rows (the files read again, and the still-right files
    /// of the removed segments).
    Segment {
        stale: Vec<i32>,
        next: i32,
        files: BTreeSet<i64>,
    },
}

/// More segments than this are merged into one when the next segment is
/// written: each costs a row to read and a decode to start.
const MAX_SEGMENTS: usize = 12;

/// One import file's CDRs in the cycle, as PostgreSQL sums them now.
struct FileNow {
    sum: FileSum,
    first: DateTime<Utc>,
    last: DateTime<Utc>,
}

/// PostgreSQL's binary timestamptz: microseconds since 2000-01-01 UTC.
fn pg_micros(at: DateTime<Utc>) -> i64 {
    const PG_EPOCH_FROM_UNIX_MICROS: i64 = 946_684_800_000_000;
    at.timestamp_micros() - PG_EPOCH_FROM_UNIX_MICROS
}

/// Reads the CDRs of the cycle `[start, end)`, from the stored copy where
/// it is still right and from the table where it is not.
pub(crate) async fn load(
    pool: &PgPool,
    tx: &mut PgConnection,
    customer_id: i64,
    cycle: chrono::NaiveDate,
    (start, end): (DateTime<Utc>, DateTime<Utc>),
) -> Result<CycleInput, TotalsError> {
    match from_stored(pool, tx, customer_id, cycle, (start, end)).await? {
        Some(input) => Ok(input),
        None => Ok(CycleInput {
            rows: read_cycle(pool, tx, customer_id, start, end).await?,
            source: InputSource::Table,
            store: Store::Everything,
        }),
    }
}

/// [`load`] from the stored copy and what changed since; `None` when the
/// cycle is better read in full.
async fn from_stored(
    pool: &PgPool,
    tx: &mut PgConnection,
    customer_id: i64,
    cycle: chrono::NaiveDate,
    (start, end): (DateTime<Utc>, DateTime<Utc>),
) -> Result<Option<CycleInput>, TotalsError> {
    let stored_segments: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM cycle_input WHERE customer_id = $1 AND cycle = $2",
    )
    .bind(customer_id)
    .bind(cycle)
    .fetch_one(&mut *tx)
    .await?;
    if stored_segments == 0 {
        return Ok(None);
    }
    // Fetching and decoding the segments takes about as long as PostgreSQL
    // takes for the fingerprints: do both at once. Segments are written
    // only under the calculation's lock, so a spare connection may fetch
    // them; without one the transaction fetches them first.
    let bounds = (pg_micros(start), pg_micros(end));
    let decode_all =
        move |segments| tokio::task::spawn_blocking(move || decode_segments(segments, bounds));
    let spare = tokio::time::timeout(SPARE_CONNECTION_WAIT, pool.acquire())
        .await
        .ok()
        .and_then(Result::ok);
    let (decoded, now) = match spare {
        Some(mut connection) => {
            let loading = tokio::spawn(async move {
                let segments = fetch_segments(&mut connection, customer_id, cycle).await?;
                Ok::<_, sqlx::Error>(decode_all(segments).await)
            });
            let now = files_now(tx, customer_id, start, end).await;
            let loaded = loading
                .await
                .map_err(|e| TotalsError::Read(format!("the segment reader stopped: {e}")))??;
            (loaded, now)
        }
        None => {
            let segments = fetch_segments(tx, customer_id, cycle).await?;
            let decoding = decode_all(segments);
            let now = files_now(tx, customer_id, start, end).await;
            (decoding.await, now)
        }
    };
    let decoded = decoded.unwrap_or_else(|e| Err(format!("the decoder stopped: {e}")));
    let now = now?;
    let (stored, homes) = match decoded {
        Ok(Some(decoded)) => decoded,
        // Stored with other cycle bounds: the customer's time zone or start
        // day changed since.
        Ok(None) => return Ok(None),
        Err(problem) => {
            tracing::warn!(customer_id, %cycle, problem, "stored cycle input unreadable; reading the table");
            return Ok(None);
        }
    };
    let stale: Vec<i64> = now
        .iter()
        .filter(|(file, current)| stored.files.get(file) != Some(&current.sum))
        .map(|(file, _)| *file)
        .collect();
    let gone: Vec<i64> = stored
        .files
        .keys()
        .filter(|file| !now.contains_key(file))
        .copied()
        .collect();
    if stale.is_empty() && gone.is_empty() {
        return Ok(Some(CycleInput {
            rows: stored,
            source: InputSource::Stored,
            store: Store::Nothing,
        }));
    }
    let total: i64 = now.values().map(|f| f.sum.count).sum();
    let to_read: i64 = stale.iter().map(|file| now[file].sum.count).sum();
    if to_read * 2 > total {
        // Mostly new: one full read is cheaper than the copy plus most of it.
        return Ok(None);
    }
    let mut rows = stored;
    let keep: BTreeSet<i64> = now
        .keys()
        .filter(|file| !stale.contains(file))
        .copied()
        .collect();
    rows.retain_files(&keep);
    if !stale.is_empty() {
        // Only the time span of the stale files: a late file of one day is
        // found in that day's part of the index.
        let first = stale.iter().map(|f| now[f].first).min().unwrap_or(start);
        let last = stale.iter().map(|f| now[f].last).max().unwrap_or(end);
        let until = (last + chrono::Duration::microseconds(1)).min(end);
        let fresh = read_files(tx, customer_id, first.max(start), until, &stale).await?;
        rows.absorb(fresh);
    }
    // The segments that held a changed or removed file are written again
    // without it, together with the files read again.
    let dirty: BTreeSet<i32> = stale
        .iter()
        .chain(&gone)
        .filter_map(|file| homes.get(file).copied())
        .collect();
    let mut files: BTreeSet<i64> = stale.iter().copied().collect();
    files.extend(
        homes
            .iter()
            .filter(|(file, home)| dirty.contains(home) && keep.contains(file))
            .map(|(file, _)| *file),
    );
    let segments: BTreeSet<i32> = homes.values().copied().collect();
    let store = if segments.len() - dirty.len() + 1 > MAX_SEGMENTS {
        Store::Everything
    } else {
        Store::Segment {
            stale: dirty.into_iter().collect(),
            next: segments.last().map_or(0, |last| last + 1),
            files,
        }
    };
    Ok(Some(CycleInput {
        rows,
        source: InputSource::StoredAndFiles {
            files: stale.len(),
            cdrs: usize::try_from(to_read).unwrap_or(usize::MAX),
        },
        store,
    }))
}

async fn fetch_segments(
    connection: &mut PgConnection,
    customer_id: i64,
    cycle: chrono::NaiveDate,
) -> Result<Vec<(i32, Vec<u8>)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT segment, data FROM cycle_input WHERE customer_id = $1 AND cycle = $2 ORDER BY segment",
    )
    .bind(customer_id)
    .bind(cycle)
    .fetch_all(connection)
    .await
}

/// Every segment decoded into one set of rows, with the segment each
/// import file is in; `None` when one was stored with other cycle bounds.
#[allow(clippy::type_complexity)]
fn decode_segments(
    segments: Vec<(i32, Vec<u8>)>,
    bounds: (i64, i64),
) -> Result<Option<(CycleRows, BTreeMap<i64, i32>)>, String> {
    let mut rows = CycleRows::default();
    let mut homes = BTreeMap::new();
    for (segment, data) in segments {
        let stored = decode(&data).map_err(|problem| format!("segment {segment}: {problem}"))?;
        if stored.bounds != bounds {
            return Ok(None);
        }
        for file in stored.rows.files.keys() {
            if homes.insert(*file, segment).is_some() {
                return Err(format!("file {file} is in two segments"));
            }
        }
        rows.absorb(stored.rows);
    }
    Ok(Some((rows, homes)))
}

/// The fingerprint of each import file's CDRs in the cycle, in one
/// aggregate (run in parallel by PostgreSQL).
async fn files_now(
    tx: &mut PgConnection,
    customer_id: i64,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
) -> Result<BTreeMap<i64, FileNow>, TotalsError> {
    // One parallel worker, not the default two: on a small server the
    // segments are decoded meanwhile, and three processes plus the decoder
    // on two cores only wait for each other.
    sqlx::query("SET LOCAL max_parallel_workers_per_gather = 1")
        .execute(&mut *tx)
        .await?;
    let rows = sqlx::query(
        "SELECT import_file_id, count(*) AS count, sum(id)::text AS id_sum,
                sum(xmin::text::bigint)::text AS xmin_sum, min(started_at) AS first, max(started_at) AS last
         FROM call_detail_record
         WHERE customer_id = $1 AND started_at >= $2 AND started_at < $3
         GROUP BY import_file_id",
    )
    .bind(customer_id)
    .bind(start)
    .bind(end)
    .fetch_all(&mut *tx)
    .await?;
    let mut files = BTreeMap::new();
    for row in rows {
        let number = |column: &str| -> Result<i128, TotalsError> {
            let text: String = row.try_get(column)?;
            text.parse()
                .map_err(|_| TotalsError::Read(format!("{column} '{text}' is not an integer")))
        };
        files.insert(
            row.try_get::<i64, _>("import_file_id")?,
            FileNow {
                sum: FileSum {
                    count: row.try_get("count")?,
                    id_sum: number("id_sum")?,
                    xmin_sum: number("xmin_sum")?,
                },
                first: row.try_get("first")?,
                last: row.try_get("last")?,
            },
        );
    }
    Ok(files)
}

/// Stores what `store` says of the cycle's rows (in consumption `order`).
pub(crate) async fn store(
    tx: &mut PgConnection,
    customer_id: i64,
    cycle: chrono::NaiveDate,
    (start, end): (DateTime<Utc>, DateTime<Utc>),
    rows: &CycleRows,
    order: &[u32],
    store: &Store,
) -> Result<(), TotalsError> {
    let bounds = (pg_micros(start), pg_micros(end));
    let (segment, data, files) = match store {
        Store::Nothing => return Ok(()),
        Store::Everything => {
            sqlx::query("DELETE FROM cycle_input WHERE customer_id = $1 AND cycle = $2")
                .bind(customer_id)
                .bind(cycle)
                .execute(&mut *tx)
                .await?;
            (0, encode(rows, order, bounds, None), rows.files.len())
        }
        Store::Segment { stale, next, files } => {
            sqlx::query(
                "DELETE FROM cycle_input WHERE customer_id = $1 AND cycle = $2 AND segment = ANY($3)",
            )
            .bind(customer_id)
            .bind(cycle)
            .bind(stale)
            .execute(&mut *tx)
            .await?;
            if files.is_empty() {
                // Only removed files: nothing new to hold.
                return Ok(());
            }
            (*next, encode(rows, order, bounds, Some(files)), files.len())
        }
    };
    if data.len() > MAX_STORED_BYTES {
        // Too big to keep: every segment goes, and the cycle is read in
        // full next time.
        tracing::warn!(customer_id, %cycle, bytes = data.len(), "cycle input too big to store; it will be read in full");
        sqlx::query("DELETE FROM cycle_input WHERE customer_id = $1 AND cycle = $2")
            .bind(customer_id)
            .bind(cycle)
            .execute(&mut *tx)
            .await?;
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO cycle_input (customer_id, cycle, segment, cdr_count, import_files, data)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(customer_id)
    .bind(cycle)
    .bind(segment)
    .bind(count_in(rows, store) as i64)
    .bind(files as i32)
    .bind(data)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// The number of rows a segment written for `store` holds.
fn count_in(rows: &CycleRows, store: &Store) -> usize {
    match store {
        Store::Segment { files, .. } => files
            .iter()
            .filter_map(|file| rows.files.get(file))
            .map(|sum| sum.count as usize)
            .sum(),
        _ => rows.rows.len(),
    }
}

/// A decoded copy.
pub(crate) struct Stored {
    /// The cycle bounds it was read with, as [`pg_micros`].
    pub bounds: (i64, i64),
    pub rows: CycleRows,
}

const KINDS: [Kind; 5] = [Kind::Voice, Kind::Sms, Kind::Mms, Kind::Data, Kind::Service];
const ZONES: [Zone; 3] = [Zone::Home, Zone::Eu, Zone::World];

fn kind_zone(kind: Kind, zone: Zone) -> u8 {
    let k = KINDS.iter().position(|k| *k == kind).unwrap_or(0) as u8;
    let z = ZONES.iter().position(|z| *z == zone).unwrap_or(0) as u8;
    k * 3 + z
}

/// Encodes the rows in `order`, column by column (deltas of ids and times
/// as varints, providers and files as numbers), then compresses with lz4:
/// about 20 bytes per CDR.
/// With `only`, just the rows of those import files (a segment).
pub(crate) fn encode(
    rows: &CycleRows,
    order: &[u32],
    bounds: (i64, i64),
    only: Option<&BTreeSet<i64>>,
) -> Vec<u8> {
    let wanted = |file: &i64| only.is_none_or(|only| only.contains(file));
    let n = order.len();
    let mut head = Vec::with_capacity(1024);
    head.extend_from_slice(TAG);
    head.extend_from_slice(&bounds.0.to_le_bytes());
    head.extend_from_slice(&bounds.1.to_le_bytes());
    let files: Vec<(&i64, &FileSum)> = rows.files.iter().filter(|(f, _)| wanted(f)).collect();
    let file_numbers: BTreeMap<i64, u64> = files
        .iter()
        .enumerate()
        .map(|(i, (file, _))| (**file, i as u64))
        .collect();
    put_varint(&mut head, files.len() as u64);
    for (file, sum) in files {
        put_varint(&mut head, zigzag(*file));
        put_varint(&mut head, sum.count as u64);
        head.extend_from_slice(&sum.id_sum.to_le_bytes());
        head.extend_from_slice(&sum.xmin_sum.to_le_bytes());
    }
    put_varint(&mut head, rows.subscriptions.len() as u64);
    for name in &rows.subscriptions {
        put_bytes(&mut head, name.as_bytes());
    }
    let mut providers: Vec<&[u8]> = Vec::new();
    let mut columns: [Vec<u8>; 9] = std::array::from_fn(|_| Vec::with_capacity(n * 3));
    let mut text = Vec::with_capacity(n * 24);
    let (mut last_id, mut last_at) = (0i64, 0i64);
    let mut written = 0usize;
    for &index in order {
        let row = &rows.rows[index as usize];
        if !wanted(&row.file) {
            continue;
        }
        written += 1;
        put_varint(&mut columns[0], zigzag(row.id.wrapping_sub(last_id)));
        put_varint(
            &mut columns[1],
            zigzag(row.started_at.wrapping_sub(last_at)),
        );
        (last_id, last_at) = (row.id, row.started_at);
        put_varint(
            &mut columns[2],
            file_numbers.get(&row.file).copied().unwrap_or(0),
        );
        put_varint(&mut columns[3], u64::from(row.subscription));
        columns[4].push(kind_zone(row.kind, row.zone));
        let provider = rows.text(row.provider);
        let number = match providers.iter().position(|p| *p == provider) {
            Some(number) => number,
            None => {
                providers.push(provider);
                providers.len() - 1
            }
        };
        put_varint(&mut columns[5], number as u64);
        put_bytes(&mut text, rows.text(row.external_id));
        put_bytes(&mut text, rows.text(row.destination));
        put_varint(&mut columns[6], u64::from(row.duration_seconds));
        put_varint(&mut columns[6], row.volume_bytes);
        put_varint(&mut columns[7], u64::from(row.units));
        put_varint(&mut columns[8], zigzag(row.provider_cost_micros));
    }
    put_varint(&mut head, providers.len() as u64);
    for provider in &providers {
        put_bytes(&mut head, provider);
    }
    put_varint(&mut head, written as u64);
    let mut all: Vec<&[u8]> = columns.iter().map(Vec::as_slice).collect();
    all.push(&text);
    seal(head, &all)
}

/// Decodes [`encode`]'s output; any inconsistency is an error, never a
/// panic, and makes the calculation read the table instead.
pub(crate) fn decode(compressed: &[u8]) -> Result<Stored, String> {
    let raw = unseal(compressed)?;
    let mut head = Reader::new(&raw);
    if head.take(TAG.len())? != TAG {
        return Err("another layout".into());
    }
    let bounds = (
        i64::from_le_bytes(head.fixed()?),
        i64::from_le_bytes(head.fixed()?),
    );
    let mut out = CycleRows::default();
    let mut files = Vec::new();
    for _ in 0..head.varint()? {
        let file = head.signed()?;
        let sum = FileSum {
            count: i64::try_from(head.varint()?).map_err(|_| "a count is too big")?,
            id_sum: i128::from_le_bytes(head.fixed()?),
            xmin_sum: i128::from_le_bytes(head.fixed()?),
        };
        out.files.insert(file, sum);
        files.push(file);
    }
    for _ in 0..head.varint()? {
        let name = head.bytes()?;
        out.subscription(name)?;
    }
    // Strings stay where they are in `raw`, which becomes the rows' text.
    let span = |(start, len): (usize, usize)| Span { start, len };
    let mut providers = Vec::new();
    for _ in 0..head.varint()? {
        providers.push(span(head.range()?));
    }
    let n = head.usize()?;
    let [mut ids, mut ats, mut file_numbers, mut subscriptions, mut kind_zones, mut provider_numbers, mut quantities, mut units, mut costs, mut text] =
        head.columns::<10>()?;
    out.rows.reserve_exact(n);
    let mut counts = vec![0i64; files.len()];
    let (mut id, mut at) = (0i64, 0i64);
    for _ in 0..n {
        id = id.wrapping_add(ids.signed()?);
        at = at.wrapping_add(ats.signed()?);
        let file_number = file_numbers.usize()?;
        let file = *files.get(file_number).ok_or("a file number out of range")?;
        counts[file_number] += 1;
        let subscription = subscriptions.u32()?;
        if subscription as usize >= out.subscriptions.len() {
            return Err("a subscription number out of range".into());
        }
        let kind_zone = kind_zones.take(1)?[0] as usize;
        let (kind, zone) = (
            *KINDS.get(kind_zone / 3).ok_or("a kind out of range")?,
            ZONES[kind_zone % 3],
        );
        let provider: Span = *providers
            .get(provider_numbers.usize()?)
            .ok_or("a provider number out of range")?;
        let external_id = span(text.range()?);
        let destination = span(text.range()?);
        out.rows.push(CdrRow {
            id,
            started_at: at,
            provider,
            external_id,
            subscription,
            kind,
            zone,
            destination,
            duration_seconds: quantities.u32()?,
            volume_bytes: quantities.varint()?,
            units: units.u32()?,
            provider_cost_micros: costs.signed()?,
            file,
        });
    }
    for (file, count) in files.iter().zip(counts) {
        if out.files[file].count != count {
            return Err(format!(
                "file {file} holds {count} CDRs, its fingerprint says {}",
                out.files[file].count
            ));
        }
    }
    out.text = raw;
    Ok(Stored { bounds, rows: out })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(rows: &mut CycleRows, id: i64, at: i64, subscription: &str, file: i64) -> CdrRow {
        CdrRow {
            id,
            started_at: at,
            provider: rows.span(if id % 2 == 0 { b"routit" } else { b"kpn" }),
            external_id: rows.span(format!("X{id}").as_bytes()),
            subscription: rows.subscription(subscription.as_bytes()).unwrap(),
            kind: KINDS[id as usize % 5],
            zone: ZONES[id as usize % 3],
            destination: rows.span(format!("+3161234{id:04}").as_bytes()),
            duration_seconds: (id * 7) as u32,
            volume_bytes: (id as u64) << 33,
            units: id as u32 % 3,
            provider_cost_micros: 1_000 - id * 300,
            file,
        }
    }

    /// Every field of every row, in order, with its strings.
    fn flat(rows: &CycleRows, order: &[u32]) -> Vec<String> {
        order
            .iter()
            .map(|&i| {
                let r = &rows.rows[i as usize];
                format!(
                    "{} {} {} {} {} {:?} {:?} {} {} {} {} {} {}",
                    r.id,
                    r.started_at,
                    String::from_utf8_lossy(rows.text(r.provider)),
                    String::from_utf8_lossy(rows.text(r.external_id)),
                    rows.subscriptions[r.subscription as usize],
                    r.kind,
                    r.zone,
                    String::from_utf8_lossy(rows.text(r.destination)),
                    r.duration_seconds,
                    r.volume_bytes,
                    r.units,
                    r.provider_cost_micros,
                    r.file
                )
            })
            .collect()
    }

    fn sample() -> CycleRows {
        let mut rows = CycleRows::default();
        for (id, at, subscription, file) in [
            (5, 900, "+31611111111", 2),
            (3, -50, "+31622222222", 1),
            (9, 900, "+31611111111", 1),
            (4, 1 << 40, "+31633333333", 7),
        ] {
            let r = row(&mut rows, id, at, subscription, file);
            rows.files.entry(file).or_default().add(&FileSum {
                count: 1,
                id_sum: id.into(),
                xmin_sum: 1_000 + i128::from(id),
            });
            rows.rows.push(r);
        }
        rows
    }

    #[test]
    fn a_stored_input_decodes_to_the_same_rows_in_consumption_order() {
        let rows = sample();
        let order = rows.consumption_order();
        let stored = decode(&encode(&rows, &order, (-7, 99), None)).unwrap();
        assert_eq!(stored.bounds, (-7, 99));
        assert_eq!(stored.rows.files, rows.files);
        let identity: Vec<u32> = (0..rows.rows.len() as u32).collect();
        assert_eq!(flat(&stored.rows, &identity), flat(&rows, &order));
        assert_eq!(stored.rows.consumption_order(), identity);
    }

    #[test]
    fn a_segment_holds_only_its_files_rows_and_fingerprints() {
        let rows = sample();
        let order = rows.consumption_order();
        let only: BTreeSet<i64> = [1, 7].into();
        let stored = decode(&encode(&rows, &order, (0, 1), Some(&only))).unwrap();
        assert_eq!(
            stored.rows.files.keys().copied().collect::<BTreeSet<_>>(),
            only
        );
        let kept: Vec<u32> = order
            .iter()
            .copied()
            .filter(|&i| only.contains(&rows.rows[i as usize].file))
            .collect();
        let identity: Vec<u32> = (0..kept.len() as u32).collect();
        assert_eq!(flat(&stored.rows, &identity), flat(&rows, &kept));
    }

    #[test]
    fn a_damaged_stored_input_is_an_error_not_a_panic() {
        let rows = sample();
        let order = rows.consumption_order();
        let good = encode(&rows, &order, (0, 1), None);
        let raw = unseal(&good).unwrap();
        // Cut short, flipped bytes, another tag: each an error.
        for cut in [0, 4, raw.len() / 2, raw.len() - 1] {
            let bad = lz4_flex::compress_prepend_size(&raw[..cut]);
            assert!(decode(&bad).is_err(), "cut at {cut}");
        }
        for at in 8..raw.len() {
            let mut flipped = raw.clone();
            flipped[at] ^= 0xff;
            let _ = decode(&lz4_flex::compress_prepend_size(&flipped));
        }
        let mut other = raw.clone();
        other[..8].copy_from_slice(b"TEMCIN99");
        assert!(decode(&lz4_flex::compress_prepend_size(&other)).is_err());
        assert!(decode(b"\x01\x02").is_err());
    }

    #[test]
    fn a_file_count_that_disagrees_with_the_rows_is_refused() {
        let mut rows = sample();
        let order = rows.consumption_order();
        rows.files.get_mut(&1).unwrap().count = 3;
        let problem = decode(&encode(&rows, &order, (0, 1), None)).err().unwrap();
        assert!(problem.contains("file 1 holds 2 CDRs"), "{problem}");
    }
}
