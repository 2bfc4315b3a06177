//! The usage specification of an invoice (issue 18): one CSV row per rated
//! CDR of the cycle, gzip-compressed, next to the invoice in S3
//! (`invoices/{customer}/{cycle}/{number}-specification.csv.gz`).
//!
//! A cycle may hold ten million CDRs, so nothing here holds the cycle: the
//! CDRs are read a page at a time in consumption order (the order rating
//! used, so the stored per-CDR pricings, also in that order, pair up with
//! them one chunk at a time), each page is written as CSV into the gzip
//! stream, and the compressed bytes leave in parts of [`PART_BYTES`] (a
//! multipart upload on S3). Memory is one page, one pricing chunk and one
//! part, whatever the cycle's size.
//!
//! Amounts are written as exact decimals of micro-euros (six decimals, no
//! rounding) and as micro-euros: rounding each row to cents would make the
//! rows no longer sum to the invoice's rated total, which the invoice itself
//! rounds once (`document::amounts`). The rows sum exactly to the cycle's
//! rated total; the writer checks that against the stored totals and
//! refuses a specification that would disagree with the invoice.
//!
//! Domain code only: the reads go through [`UsageSnapshot`] (one snapshot of
//! one cycle, on PostgreSQL in `adapters::billing::specification`) and the
//! bytes through [`PartUpload`] (S3 multipart in `adapters::s3`, a file in
//! the benchmark).
//!
//! It is written by the SpecifyInvoice chain step after RenderInvoice, for
//! every final invoice that has none ([`specify_cycle`]), and on demand by
//! `temctl invoice specify`.

use std::io::Write;

use async_trait::async_trait;
use chrono::{NaiveDate, SecondsFormat, TimeZone, Utc};
use chrono_tz::Tz;
use flate2::write::GzEncoder;
use flate2::Compression;
use sha2::{Digest, Sha256};

use crate::billing::calculation::{CdrKey, CdrPage, PageRow};
use crate::billing::euros;
use crate::billing::pricings::{PricingChunk, StoredChunk};
use crate::cdr::Kind;
use crate::ports::{PortError, StoreError};

/// The size of every uploaded part but the last: S3 asks at least 5 MiB of
/// every part but the last, and this bounds what the writer holds.
pub const PART_BYTES: usize = 8 * 1024 * 1024;

/// The compressed bytes' buffer: a part, and what one page of rows adds
/// beyond it before it is handed out (a page of 20,000 rows compresses to
/// well under a megabyte).
const BUFFER_BYTES: usize = PART_BYTES + 1024 * 1024;

/// The CSV header. `started_at_utc` is UTC; `started_at_local` is the same
/// instant in the customer's billing time zone, with its UTC offset, which
/// is the zone the cycle's days are counted in.
pub const HEADER: [&str; 12] = [
    "subscription",
    "started_at_utc",
    "started_at_local",
    "kind",
    "zone",
    "destination",
    "quantity",
    "unit",
    "amount_eur",
    "amount_micros",
    "provider",
    "external_id",
];

pub const CONTENT_TYPE: &str = "application/gzip";

#[derive(Debug, thiserror::Error)]
pub enum SpecificationError {
    #[error("customer {customer_id} has no totals for cycle {cycle}; calculate them first (invoke the totals function with {{\"customer_id\": {customer_id}, \"cycle\": \"{cycle}\"}})")]
    NoTotals { customer_id: i64, cycle: NaiveDate },
    #[error("customer {customer_id}'s cycle {cycle} has changes its totals do not include yet ({why}); let the pending calculation run (or invoke the totals function for the cycle) and write the specification again")]
    NotCurrent {
        customer_id: i64,
        cycle: NaiveDate,
        why: String,
    },
    #[error("customer {customer_id}'s time zone '{zone}' is not an IANA zone; correct it with temctl apply")]
    BadTimeZone { customer_id: i64, zone: String },
    #[error("the stored pricings of customer {customer_id}'s cycle {cycle} are damaged ({problem}); recalculate the cycle's totals with cause rerating")]
    Damaged {
        customer_id: i64,
        cycle: NaiveDate,
        problem: String,
    },
    #[error("the specification's rows sum to {rows} micro-euros but the cycle's totals say {totals}; recalculate the cycle's totals with cause rerating and write it again")]
    TotalMismatch { rows: i64, totals: i64 },
    #[error("reading the cycle's CDRs failed: {0}; retry, and report it if it persists")]
    Read(String),
    #[error("database error: {0}")]
    Store(#[from] StoreError),
    #[error("writing the specification failed: {0}; retry (nothing partial is kept)")]
    Upload(#[from] PortError),
    #[error("compressing the specification failed: {0}; retry, and report it if it persists")]
    Compress(#[from] std::io::Error),
}

impl SpecificationError {
    /// Whether another attempt may succeed without anyone changing data.
    pub fn is_retryable(&self) -> bool {
        match self {
            SpecificationError::Store(e) => e.retryable,
            SpecificationError::Upload(_) | SpecificationError::Read(_) => true,
            _ => false,
        }
    }
}

/// How the cycle was rated, as its stored totals say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RatedBy {
    /// Per-CDR pricings are stored (`rating_chunk`).
    RatePlan,
    /// The provider's cost is the rated amount.
    Standard,
}

/// What a specification needs to know of its cycle before reading CDRs.
#[derive(Debug, Clone, PartialEq)]
pub struct UsageCycle {
    pub time_zone: String,
    pub rated_by: RatedBy,
    /// The totals' rated cost and CDR count.
    pub rated_cost_micros: i64,
    pub cdr_count: i64,
    /// Change marks the totals do not include yet.
    pub pending_changes: i64,
    /// The time zone the totals were rated in (`cycle_state`), when known.
    pub rated_time_zone: Option<String>,
}

/// One cycle's CDRs and pricings, read in one snapshot.
#[async_trait]
pub trait UsageSnapshot: Send {
    /// The cycle's totals and settings; `None` without totals.
    async fn cycle(&mut self) -> Result<Option<UsageCycle>, SpecificationError>;
    /// The next page of the cycle's CDRs after `after` (the page before's
    /// last instant) in consumption order, whole instants only, into
    /// `page`; an empty page ends the cycle.
    async fn page(
        &mut self,
        zone: Tz,
        after: Option<CdrKey>,
        page: &mut CdrPage,
    ) -> Result<(), SpecificationError>;
    /// The next stored pricing chunk in consumption order, `None` after the
    /// last.
    async fn next_chunk(&mut self) -> Result<Option<StoredChunk>, SpecificationError>;
}

/// Where the compressed bytes go, a part at a time.
#[async_trait]
pub trait PartUpload: Send {
    /// One part of [`PART_BYTES`] (every part but the last).
    async fn part(&mut self, bytes: Vec<u8>) -> Result<(), PortError>;
    /// The last part (possibly the only one, possibly empty); the object
    /// exists once this returns.
    async fn complete(&mut self, last: Vec<u8>) -> Result<(), PortError>;
    /// Gives up: nothing of the object stays.
    async fn abort(&mut self);
}

/// What was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    pub rows: u64,
    pub rated_cost_micros: i64,
    /// The compressed object's size and SHA-256 (hex).
    pub bytes: u64,
    pub sha256: String,
    pub parts: u32,
}

/// The object key of a specification: next to the invoice's documents,
/// under its number (a draft's under `draft-{invoice id}`). Characters
/// outside `A-Za-z0-9._-` in a number (a configurable format) become `_`,
/// so a key never grows a folder.
pub fn object_key(
    customer_id: i64,
    cycle: NaiveDate,
    number: Option<&str>,
    invoice_id: i64,
) -> String {
    let name = match number {
        Some(number) => number
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                    c
                } else {
                    '_'
                }
            })
            .collect(),
        None => format!("draft-{invoice_id}"),
    };
    format!("invoices/{customer_id}/{cycle}/{name}-specification.csv.gz")
}

/// The unit of a CDR's recorded quantity.
pub fn unit(kind: Kind) -> &'static str {
    match kind {
        Kind::Voice => "seconds",
        Kind::Data => "bytes",
        Kind::Sms | Kind::Mms => "messages",
        Kind::Service => "units",
    }
}

/// The quantity as recorded on the CDR, in [`unit`].
pub fn quantity(row: &PageRow) -> u64 {
    match row.kind {
        Kind::Voice => u64::from(row.duration_seconds),
        Kind::Data => row.volume_bytes,
        _ => u64::from(row.units),
    }
}

/// Writes CSV rows into a gzip stream, handing out the compressed bytes a
/// part at a time. Pure: no I/O but the buffers it owns.
pub struct Encoder {
    gzip: GzEncoder<Vec<u8>>,
    /// The CSV text of rows not yet compressed (one page at most).
    csv: Option<csv::Writer<Vec<u8>>>,
    hash: Sha256,
    bytes: u64,
    pub rows: u64,
    pub rated_cost_micros: i64,
}

impl Default for Encoder {
    fn default() -> Self {
        Self::new()
    }
}

fn csv_writer(buffer: Vec<u8>) -> csv::Writer<Vec<u8>> {
    csv::WriterBuilder::new()
        .has_headers(false)
        .terminator(csv::Terminator::CRLF)
        .from_writer(buffer)
}

impl Encoder {
    pub fn new() -> Self {
        let mut encoder = Self {
            gzip: GzEncoder::new(Vec::with_capacity(BUFFER_BYTES), Compression::fast()),
            csv: Some(csv_writer(Vec::with_capacity(1 << 20))),
            hash: Sha256::new(),
            bytes: 0,
            rows: 0,
            rated_cost_micros: 0,
        };
        encoder.record(HEADER);
        encoder
    }

    fn record<I, T>(&mut self, fields: I)
    where
        I: IntoIterator<Item = T>,
        T: AsRef<[u8]>,
    {
        if let Some(csv) = &mut self.csv {
            // Writing into a Vec cannot fail.
            let _ = csv.write_record(fields);
        }
    }

    /// Appends one CDR's row.
    pub fn row(&mut self, page: &CdrPage, row: &PageRow, zone: Tz, amount_micros: i64) {
        let started = Utc
            .timestamp_micros(row.started_at)
            .single()
            .unwrap_or_default();
        let utc = started.to_rfc3339_opts(SecondsFormat::AutoSi, true);
        let local = started
            .with_timezone(&zone)
            .to_rfc3339_opts(SecondsFormat::AutoSi, false);
        let quantity = quantity(row).to_string();
        let amount = euros(amount_micros);
        let micros = amount_micros.to_string();
        self.record([
            page.text(row.subscription),
            utc.as_bytes(),
            local.as_bytes(),
            row.kind.as_str().as_bytes(),
            row.zone.as_str().as_bytes(),
            page.text(row.destination),
            quantity.as_bytes(),
            unit(row.kind).as_bytes(),
            amount.as_bytes(),
            micros.as_bytes(),
            page.text(row.provider),
            page.text(row.external_id),
        ]);
        self.rows += 1;
        self.rated_cost_micros = self.rated_cost_micros.saturating_add(amount_micros);
    }

    /// Moves the CSV text written so far into the gzip stream.
    fn compress_rows(&mut self) -> std::io::Result<()> {
        if let Some(csv) = self.csv.take() {
            let mut text = csv
                .into_inner()
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            self.gzip.write_all(&text)?;
            text.clear();
            self.csv = Some(csv_writer(text));
        }
        Ok(())
    }

    /// Compresses the rows written so far; returns a full part when the
    /// compressed bytes reached [`PART_BYTES`] (the rest stays for the
    /// next part).
    pub fn flush(&mut self) -> std::io::Result<Option<Vec<u8>>> {
        self.compress_rows()?;
        if self.gzip.get_ref().len() < PART_BYTES {
            return Ok(None);
        }
        // The part is copied out at its exact size and the buffer kept:
        // every part is then one allocation of the same size, which the
        // allocator hands back for the next, where buffers handed out and
        // grown again fragmented the heap (peak RSS grew with the cycle).
        let out = self.gzip.get_mut();
        let part = out[..PART_BYTES].to_vec();
        out.drain(..PART_BYTES);
        self.hash.update(&part);
        self.bytes += part.len() as u64;
        Ok(Some(part))
    }

    /// Ends the gzip stream: the last part (whatever is left, which may be
    /// a little over [`PART_BYTES`]; S3 takes any size for the last part),
    /// and the whole object's size and SHA-256.
    pub fn finish(mut self) -> std::io::Result<(Vec<u8>, u64, String)> {
        self.compress_rows()?;
        let last = self.gzip.finish()?;
        self.hash.update(&last);
        let bytes = self.bytes + last.len() as u64;
        Ok((last, bytes, hex::encode(self.hash.finalize())))
    }
}

/// Pairs a cycle's CDRs, in consumption order, with the rated amounts of
/// its stored pricings, a chunk at a time.
struct Amounts {
    chunk: PricingChunk,
    next: usize,
}

impl Amounts {
    async fn of(
        &mut self,
        snapshot: &mut dyn UsageSnapshot,
        cdr_id: i64,
        damaged: &(dyn Fn(String) -> SpecificationError + Sync),
    ) -> Result<i64, SpecificationError> {
        if self.next >= self.chunk.len() {
            let stored = snapshot
                .next_chunk()
                .await?
                .ok_or_else(|| damaged(format!("CDR {cdr_id} has no stored pricing")))?;
            self.chunk = PricingChunk::decode(&stored.pricings).map_err(damaged)?;
            self.next = 0;
            if self.chunk.is_empty() {
                return Err(damaged("a stored chunk holds no CDR".into()));
            }
        }
        let pricings = &self.chunk.pricings;
        if pricings.cdr_id[self.next] != cdr_id {
            return Err(damaged(format!(
                "CDR {cdr_id} meets the pricing of CDR {} in consumption order",
                pricings.cdr_id[self.next]
            )));
        }
        let amount = pricings.rated_cost_micros[self.next];
        self.next += 1;
        Ok(amount)
    }
}

/// Writes the specification of customer `customer_id`'s cycle `cycle` from
/// `snapshot` to `upload`. On any failure the upload is aborted.
pub async fn write(
    snapshot: &mut dyn UsageSnapshot,
    upload: &mut dyn PartUpload,
    customer_id: i64,
    cycle: NaiveDate,
) -> Result<Written, SpecificationError> {
    let mut parts = 0u32;
    let result = stream(snapshot, upload, customer_id, cycle, &mut parts).await;
    match result {
        Ok((last, rows, rated, bytes, sha256)) => {
            if let Err(e) = upload.complete(last).await {
                upload.abort().await;
                return Err(e.into());
            }
            Ok(Written {
                rows,
                rated_cost_micros: rated,
                bytes,
                sha256,
                parts: parts + 1,
            })
        }
        Err(e) => {
            upload.abort().await;
            Err(e)
        }
    }
}

type Streamed = (Vec<u8>, u64, i64, u64, String);

async fn stream(
    snapshot: &mut dyn UsageSnapshot,
    upload: &mut dyn PartUpload,
    customer_id: i64,
    cycle: NaiveDate,
    parts: &mut u32,
) -> Result<Streamed, SpecificationError> {
    let usage = snapshot
        .cycle()
        .await?
        .ok_or(SpecificationError::NoTotals { customer_id, cycle })?;
    let not_current = |why: String| SpecificationError::NotCurrent {
        customer_id,
        cycle,
        why,
    };
    if usage.pending_changes > 0 {
        return Err(not_current(format!(
            "{} change mark(s) wait for a calculation",
            usage.pending_changes
        )));
    }
    if let Some(rated) = &usage.rated_time_zone {
        if rated != &usage.time_zone {
            return Err(not_current(format!(
                "rated in {rated}, the customer bills in {} now",
                usage.time_zone
            )));
        }
    }
    let zone: Tz = usage
        .time_zone
        .parse()
        .map_err(|_| SpecificationError::BadTimeZone {
            customer_id,
            zone: usage.time_zone.clone(),
        })?;
    let damaged = |problem: String| SpecificationError::Damaged {
        customer_id,
        cycle,
        problem,
    };

    let mut encoder = Encoder::new();
    let mut amounts = Amounts {
        chunk: PricingChunk::default(),
        next: 0,
    };
    let mut page = CdrPage::default();
    let mut after = None;
    loop {
        snapshot.page(zone, after, &mut page).await?;
        if page.rows.is_empty() {
            break;
        }
        for row in &page.rows {
            let amount = match usage.rated_by {
                RatedBy::Standard => row.provider_cost_micros,
                RatedBy::RatePlan => amounts.of(snapshot, row.id, &damaged).await?,
            };
            encoder.row(&page, row, zone, amount);
        }
        if let Some(part) = encoder.flush()? {
            upload.part(part).await?;
            *parts += 1;
        }
        if !page.more {
            break;
        }
        after = page.last_key();
    }
    if usage.rated_by == RatedBy::RatePlan
        && (amounts.next < amounts.chunk.len() || snapshot.next_chunk().await?.is_some())
    {
        return Err(damaged(
            "pricings are stored for CDRs the cycle no longer holds".into(),
        ));
    }
    let cdr_count = i64::try_from(encoder.rows).unwrap_or(i64::MAX);
    if cdr_count != usage.cdr_count {
        return Err(not_current(format!(
            "the cycle holds {cdr_count} CDRs, its totals {}",
            usage.cdr_count
        )));
    }
    if encoder.rated_cost_micros != usage.rated_cost_micros {
        return Err(SpecificationError::TotalMismatch {
            rows: encoder.rated_cost_micros,
            totals: usage.rated_cost_micros,
        });
    }
    let rows = encoder.rows;
    let rated = encoder.rated_cost_micros;
    let (last, bytes, sha256) = encoder.finish()?;
    Ok((last, rows, rated, bytes, sha256))
}

/// Starts the upload of one object: a new [`PartUpload`] per key (an S3
/// multipart upload in `adapters::s3::S3Uploads`).
pub trait UploadStarter: Send + Sync {
    fn start(&self, bucket: &str, key: &str) -> Box<dyn PartUpload>;
}

/// What the SpecifyInvoice step reads and records
/// (`adapters::billing::specification::PgSpecifications`).
#[async_trait]
pub trait SpecificationStore: Send + Sync {
    /// The final invoices of the cycle without a recorded specification:
    /// id and number, in sequence order.
    async fn without_specification(
        &self,
        customer_id: i64,
        cycle: NaiveDate,
    ) -> Result<Vec<(i64, String)>, StoreError>;
    /// Writes the cycle's specification to `upload` from one snapshot.
    async fn write(
        &self,
        upload: &mut dyn PartUpload,
        customer_id: i64,
        cycle: NaiveDate,
    ) -> Result<Written, SpecificationError>;
    /// Records a written specification on its invoice.
    async fn record(
        &self,
        invoice_id: i64,
        bucket: &str,
        key: &str,
        written: &Written,
    ) -> Result<(), StoreError>;
}

/// A specification the step wrote and recorded.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Specified {
    pub invoice_id: i64,
    pub key: String,
    pub sha256: String,
    pub rows: u64,
    pub bytes: u64,
}

/// The SpecifyInvoice step: writes and records the specification of each
/// final invoice of the cycle that has none, next to its documents. A
/// cycle whose invoices all have one costs one read. Idempotent: the
/// specification of an unchanged cycle is the same bytes under the same
/// key, so a run that dies between the upload and the record writes it
/// again and records it.
pub async fn specify_cycle(
    store: &dyn SpecificationStore,
    uploads: &dyn UploadStarter,
    bucket: &str,
    customer_id: i64,
    cycle: NaiveDate,
) -> Result<Vec<Specified>, SpecificationError> {
    let mut specified = Vec::new();
    for (invoice_id, number) in store.without_specification(customer_id, cycle).await? {
        let key = object_key(customer_id, cycle, Some(&number), invoice_id);
        let mut upload = uploads.start(bucket, &key);
        let written = store.write(upload.as_mut(), customer_id, cycle).await?;
        store.record(invoice_id, bucket, &key, &written).await?;
        specified.push(Specified {
            invoice_id,
            key,
            sha256: written.sha256,
            rows: written.rows,
            bytes: written.bytes,
        });
    }
    Ok(specified)
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use flate2::read::MultiGzDecoder;

    use super::*;
    use crate::billing::pricings::Pricings;
    use crate::cdr::Zone;

    fn page_of(rows: &[(i64, &str, &str, i64)]) -> CdrPage {
        // (id, subscription, destination, cost); one CDR a minute from
        // 2025-03-30 00:59 UTC, across the Dutch change to summer time.
        let mut page = CdrPage::default();
        for (i, (id, subscription, destination, cost)) in rows.iter().enumerate() {
            let subscription = page.span(subscription.as_bytes());
            let destination = page.span(destination.as_bytes());
            let provider = page.span(b"routit");
            let external_id = page.span(format!("x{id}").as_bytes());
            page.rows.push(PageRow {
                id: *id,
                started_at: 1_743_296_340_000_000 + i as i64 * 60_000_000,
                provider,
                external_id,
                subscription,
                kind: Kind::Voice,
                zone: Zone::Home,
                destination,
                duration_seconds: 61,
                volume_bytes: 0,
                units: 0,
                provider_cost_micros: *cost,
            });
        }
        page
    }

    fn gunzip(bytes: &[u8]) -> String {
        let mut text = String::new();
        MultiGzDecoder::new(bytes)
            .read_to_string(&mut text)
            .unwrap();
        text
    }

    #[test]
    fn a_row_states_utc_and_local_time_the_unit_and_the_exact_amount_and_escapes_commas_and_quotes()
    {
        let page = page_of(&[
            (1, "+31612345678", "Hotel \"Rio\", Lisbon", -1_234_567),
            (2, "+31612345678", "+3120", 10),
        ]);
        let mut encoder = Encoder::new();
        for row in &page.rows {
            encoder.row(
                &page,
                row,
                chrono_tz::Europe::Amsterdam,
                row.provider_cost_micros,
            );
        }
        assert_eq!(encoder.flush().unwrap(), None, "a few rows make no part");
        let (last, bytes, sha256) = encoder.finish().unwrap();
        assert_eq!(bytes, last.len() as u64);
        assert_eq!(sha256, hex::encode(Sha256::digest(&last)));
        let text = gunzip(&last);
        let lines: Vec<&str> = text.split("\r\n").collect();
        assert_eq!(lines[0], HEADER.join(","));
        assert_eq!(
            lines[1],
            "+31612345678,2025-03-30T00:59:00Z,2025-03-30T01:59:00+01:00,voice,home,\"Hotel \"\"Rio\"\", Lisbon\",61,seconds,-1.234567,-1234567,routit,x1"
        );
        assert!(
            lines[2].starts_with("+31612345678,2025-03-30T01:00:00Z,2025-03-30T03:00:00+02:00,"),
            "{}",
            lines[2]
        );
        assert!(lines[2].contains(",0.000010,10,"), "{}", lines[2]);
        // The csv crate reads the escaped field back whole.
        let mut reader = csv::Reader::from_reader(text.as_bytes());
        let first = reader.records().next().unwrap().unwrap();
        assert_eq!(&first[5], "Hotel \"Rio\", Lisbon");
    }

    #[test]
    fn compressed_output_leaves_in_parts_of_the_part_size_that_join_into_one_stream() {
        let mut encoder = Encoder::new();
        let mut parts = Vec::new();
        // Random-looking destinations so that gzip cannot shrink them away.
        let mut seed = 7u64;
        let mut expected_rows = 0;
        while parts.len() < 2 {
            let rows: Vec<(i64, String)> = (0..2_000)
                .map(|i| {
                    seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                    (i, format!("{seed:x}{:x}", seed.rotate_left(17)))
                })
                .collect();
            let refs: Vec<(i64, &str, &str, i64)> = rows
                .iter()
                .map(|(i, d)| (*i, "+31600000000", d.as_str(), 1))
                .collect();
            let page = page_of(&refs);
            for row in &page.rows {
                encoder.row(&page, row, chrono_tz::UTC, 1);
                expected_rows += 1;
            }
            if let Some(part) = encoder.flush().unwrap() {
                assert_eq!(part.len(), PART_BYTES);
                parts.push(part);
            }
        }
        let (last, bytes, sha256) = encoder.finish().unwrap();
        parts.push(last);
        let whole: Vec<u8> = parts.concat();
        assert_eq!(bytes, whole.len() as u64);
        assert_eq!(sha256, hex::encode(Sha256::digest(&whole)));
        let text = gunzip(&whole);
        assert_eq!(
            text.split("\r\n").filter(|l| !l.is_empty()).count(),
            expected_rows + 1
        );
    }

    /// A snapshot of one page and the pricings given.
    struct Fake {
        usage: UsageCycle,
        pages: Vec<CdrPage>,
        chunks: Vec<StoredChunk>,
    }

    #[async_trait]
    impl UsageSnapshot for Fake {
        async fn cycle(&mut self) -> Result<Option<UsageCycle>, SpecificationError> {
            Ok(Some(self.usage.clone()))
        }
        async fn page(
            &mut self,
            _zone: Tz,
            _after: Option<CdrKey>,
            page: &mut CdrPage,
        ) -> Result<(), SpecificationError> {
            *page = if self.pages.is_empty() {
                CdrPage::default()
            } else {
                self.pages.remove(0)
            };
            page.more = !self.pages.is_empty();
            Ok(())
        }
        async fn next_chunk(&mut self) -> Result<Option<StoredChunk>, SpecificationError> {
            Ok((!self.chunks.is_empty()).then(|| self.chunks.remove(0)))
        }
    }

    #[derive(Default)]
    struct Upload {
        parts: Vec<Vec<u8>>,
        completed: bool,
        aborted: bool,
    }

    #[async_trait]
    impl PartUpload for Upload {
        async fn part(&mut self, bytes: Vec<u8>) -> Result<(), PortError> {
            self.parts.push(bytes);
            Ok(())
        }
        async fn complete(&mut self, last: Vec<u8>) -> Result<(), PortError> {
            self.parts.push(last);
            self.completed = true;
            Ok(())
        }
        async fn abort(&mut self) {
            self.aborted = true;
        }
    }

    fn chunk(ids: &[i64], costs: &[i64]) -> StoredChunk {
        let mut pricings = Pricings::default();
        for (id, cost) in ids.iter().zip(costs) {
            pricings.cdr_id.push(*id);
            pricings.rated_cost_micros.push(*cost);
            pricings.rate.push(0);
            pricings.bundle.push(-1);
            pricings.billed_quantity.push(60);
            pricings.covered_quantity.push(0);
        }
        let chunk = PricingChunk {
            pricings,
            splits: Vec::new(),
        };
        StoredChunk {
            segment: Utc::now(),
            first_position: 0,
            cdr_count: ids.len() as i32,
            pricings: chunk.encode(),
        }
    }

    fn rate_plan_cycle(rated: i64, count: i64) -> UsageCycle {
        UsageCycle {
            time_zone: "Europe/Amsterdam".into(),
            rated_by: RatedBy::RatePlan,
            rated_cost_micros: rated,
            cdr_count: count,
            pending_changes: 0,
            rated_time_zone: Some("Europe/Amsterdam".into()),
        }
    }

    fn cycle() -> NaiveDate {
        NaiveDate::from_ymd_opt(2025, 3, 1).unwrap()
    }

    #[tokio::test]
    async fn rate_plan_rows_take_the_stored_pricing_of_their_cdr_across_chunks_and_pages() {
        let mut fake = Fake {
            usage: rate_plan_cycle(111 + 222 + 333, 3),
            pages: vec![
                page_of(&[(5, "+316", "+31", 9)]),
                page_of(&[(6, "+316", "+31", 9), (9, "+316", "+31", 9)]),
            ],
            chunks: vec![chunk(&[5, 6], &[111, 222]), chunk(&[9], &[333])],
        };
        let mut upload = Upload::default();
        let written = write(&mut fake, &mut upload, 1, cycle()).await.unwrap();
        assert_eq!((written.rows, written.rated_cost_micros), (3, 666));
        assert!(upload.completed && !upload.aborted);
        let text = gunzip(&upload.parts.concat());
        let amounts: Vec<&str> = text
            .lines()
            .skip(1)
            .map(|l| l.split(',').nth(9).unwrap())
            .collect();
        assert_eq!(amounts, ["111", "222", "333"]);
    }

    #[tokio::test]
    async fn pricings_of_other_cdrs_a_wrong_total_or_pending_changes_abort_the_upload_with_what_to_do(
    ) {
        let cases: Vec<(Fake, &str)> = vec![
            (
                Fake {
                    usage: rate_plan_cycle(111, 1),
                    pages: vec![page_of(&[(5, "+316", "+31", 9)])],
                    chunks: vec![chunk(&[4], &[111])],
                },
                "recalculate",
            ),
            (
                Fake {
                    usage: rate_plan_cycle(111, 1),
                    pages: vec![page_of(&[(5, "+316", "+31", 9)])],
                    chunks: vec![chunk(&[5, 7], &[111, 1])],
                },
                "no longer holds",
            ),
            (
                Fake {
                    usage: rate_plan_cycle(112, 1),
                    pages: vec![page_of(&[(5, "+316", "+31", 9)])],
                    chunks: vec![chunk(&[5], &[111])],
                },
                "sum to 111 micro-euros but the cycle's totals say 112",
            ),
            (
                Fake {
                    usage: UsageCycle {
                        pending_changes: 2,
                        ..rate_plan_cycle(111, 1)
                    },
                    pages: vec![],
                    chunks: vec![],
                },
                "2 change mark(s) wait",
            ),
        ];
        for (mut fake, says) in cases {
            let mut upload = Upload::default();
            let err = write(&mut fake, &mut upload, 1, cycle()).await.unwrap_err();
            assert!(err.to_string().contains(says), "{err}");
            assert!(upload.aborted && !upload.completed, "{err}");
        }
    }

    #[test]
    fn a_key_sits_next_to_the_invoice_and_never_grows_a_folder() {
        assert_eq!(
            object_key(42, cycle(), Some("2026-000123"), 7),
            "invoices/42/2025-03-01/2026-000123-specification.csv.gz"
        );
        assert_eq!(
            object_key(42, cycle(), Some("TEM/2026 12"), 7),
            "invoices/42/2025-03-01/TEM_2026_12-specification.csv.gz"
        );
        assert_eq!(
            object_key(42, cycle(), None, 7),
            "invoices/42/2025-03-01/draft-7-specification.csv.gz"
        );
    }
}
