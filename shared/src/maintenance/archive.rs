//! The archive's file format (issue 20): a month of one customer's CDRs as
//! Parquet, every column of `call_detail_record` with its type, so that an
//! archived month can be read by any Parquet reader (pyarrow, DuckDB,
//! Athena) and restored row for row.
//!
//! Written in row groups of [`ROW_GROUP_ROWS`] rows: memory is one row
//! group's columns, whatever the month's size. Compressed with Snappy (pure
//! Rust, and what every Parquet reader reads). Times are UTC microseconds
//! (`TIMESTAMP(MICROS, true)`), money integer micro-units, as stored.

use std::io::Write;
use std::sync::Arc;

use chrono::{DateTime, NaiveDate, Utc};
use parquet::basic::Compression;
use parquet::data_type::{ByteArray, ByteArrayType, Int32Type, Int64Type};
use parquet::errors::ParquetError;
use parquet::file::properties::WriterProperties;
use parquet::file::reader::{ChunkReader, SerializedFileReader};
use parquet::file::writer::SerializedFileWriter;
use parquet::record::reader::RowIter;
use parquet::record::RowAccessor;
use parquet::schema::parser::parse_message_type;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Rows per row group: about 10 MB of column buffers.
pub const ROW_GROUP_ROWS: usize = 65_536;

/// The Parquet schema of an archived CDR: `call_detail_record`'s columns in
/// its order (migration 0019).
pub const CDR_SCHEMA: &str = "message call_detail_record {
  required int64 id;
  required binary provider (STRING);
  required binary external_id (STRING);
  required binary subscription (STRING);
  optional int64 customer_id;
  required int64 started_at (TIMESTAMP(MICROS, true));
  required binary kind (STRING);
  required binary direction (STRING);
  required binary destination (STRING);
  required binary roaming_zone (STRING);
  required int32 duration_seconds;
  required int64 volume_bytes;
  required int32 units;
  required int64 provider_cost_micros;
  required int64 import_file_id;
  required int32 source_line;
}";

/// One archived CDR: every column of `call_detail_record`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchivedCdr {
    pub id: i64,
    pub provider: String,
    pub external_id: String,
    pub subscription: String,
    pub customer_id: Option<i64>,
    pub started_at: DateTime<Utc>,
    pub kind: String,
    pub direction: String,
    pub destination: String,
    pub roaming_zone: String,
    pub duration_seconds: i32,
    pub volume_bytes: i64,
    pub units: i32,
    pub provider_cost_micros: i64,
    pub import_file_id: i64,
    pub source_line: i32,
}

#[derive(Debug, thiserror::Error)]
pub enum ArchiveFileError {
    #[error("the archive file could not be written or read as Parquet ({0}); a partly written file is never referenced by a manifest, so the archive can be run again")]
    Parquet(#[from] ParquetError),
    #[error("archived row {row}: {reason}; the file is not a tem CDR archive or is damaged: restore it from the bucket's previous version")]
    BadRow { row: u64, reason: String },
}

/// The column buffers of one row group.
#[derive(Default)]
struct Columns {
    id: Vec<i64>,
    provider: Vec<ByteArray>,
    external_id: Vec<ByteArray>,
    subscription: Vec<ByteArray>,
    customer_id: Vec<i64>,
    customer_id_defined: Vec<i16>,
    started_at: Vec<i64>,
    kind: Vec<ByteArray>,
    direction: Vec<ByteArray>,
    destination: Vec<ByteArray>,
    roaming_zone: Vec<ByteArray>,
    duration_seconds: Vec<i32>,
    volume_bytes: Vec<i64>,
    units: Vec<i32>,
    provider_cost_micros: Vec<i64>,
    import_file_id: Vec<i64>,
    source_line: Vec<i32>,
}

fn text(s: &str) -> ByteArray {
    ByteArray::from(s.as_bytes().to_vec())
}

impl Columns {
    fn push(&mut self, cdr: &ArchivedCdr) {
        self.id.push(cdr.id);
        self.provider.push(text(&cdr.provider));
        self.external_id.push(text(&cdr.external_id));
        self.subscription.push(text(&cdr.subscription));
        match cdr.customer_id {
            Some(c) => {
                self.customer_id.push(c);
                self.customer_id_defined.push(1);
            }
            None => self.customer_id_defined.push(0),
        }
        self.started_at.push(cdr.started_at.timestamp_micros());
        self.kind.push(text(&cdr.kind));
        self.direction.push(text(&cdr.direction));
        self.destination.push(text(&cdr.destination));
        self.roaming_zone.push(text(&cdr.roaming_zone));
        self.duration_seconds.push(cdr.duration_seconds);
        self.volume_bytes.push(cdr.volume_bytes);
        self.units.push(cdr.units);
        self.provider_cost_micros.push(cdr.provider_cost_micros);
        self.import_file_id.push(cdr.import_file_id);
        self.source_line.push(cdr.source_line);
    }

    fn len(&self) -> usize {
        self.id.len()
    }
}

/// A Parquet file of `schema` with the archive's settings: both files of a
/// month are written alike.
fn file_writer<W: Write + Send>(
    sink: W,
    schema: &str,
) -> Result<SerializedFileWriter<W>, ArchiveFileError> {
    let properties = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_created_by("tem archive".into())
        .build();
    Ok(SerializedFileWriter::new(
        sink,
        Arc::new(parse_message_type(schema)?),
        Arc::new(properties),
    )?)
}

/// Writes archived CDRs into one Parquet file, a row group at a time.
pub struct CdrArchiveWriter<W: Write + Send> {
    writer: SerializedFileWriter<W>,
    columns: Columns,
    rows: u64,
}

impl<W: Write + Send> CdrArchiveWriter<W> {
    pub fn new(sink: W) -> Result<Self, ArchiveFileError> {
        Ok(Self {
            writer: file_writer(sink, CDR_SCHEMA)?,
            columns: Columns::default(),
            rows: 0,
        })
    }

    pub fn push(&mut self, cdr: &ArchivedCdr) -> Result<(), ArchiveFileError> {
        self.columns.push(cdr);
        self.rows += 1;
        if self.columns.len() >= ROW_GROUP_ROWS {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), ArchiveFileError> {
        if self.columns.len() == 0 {
            return Ok(());
        }
        let c = std::mem::take(&mut self.columns);
        let mut group = self.writer.next_row_group()?;
        let mut index = 0;
        while let Some(mut column) = group.next_column()? {
            match index {
                0 => column.typed::<Int64Type>().write_batch(&c.id, None, None)?,
                1 => column
                    .typed::<ByteArrayType>()
                    .write_batch(&c.provider, None, None)?,
                2 => column
                    .typed::<ByteArrayType>()
                    .write_batch(&c.external_id, None, None)?,
                3 => column
                    .typed::<ByteArrayType>()
                    .write_batch(&c.subscription, None, None)?,
                4 => column.typed::<Int64Type>().write_batch(
                    &c.customer_id,
                    Some(&c.customer_id_defined),
                    None,
                )?,
                5 => column
                    .typed::<Int64Type>()
                    .write_batch(&c.started_at, None, None)?,
                6 => column
                    .typed::<ByteArrayType>()
                    .write_batch(&c.kind, None, None)?,
                7 => column
                    .typed::<ByteArrayType>()
                    .write_batch(&c.direction, None, None)?,
                8 => column
                    .typed::<ByteArrayType>()
                    .write_batch(&c.destination, None, None)?,
                9 => column
                    .typed::<ByteArrayType>()
                    .write_batch(&c.roaming_zone, None, None)?,
                10 => column
                    .typed::<Int32Type>()
                    .write_batch(&c.duration_seconds, None, None)?,
                11 => column
                    .typed::<Int64Type>()
                    .write_batch(&c.volume_bytes, None, None)?,
                12 => column
                    .typed::<Int32Type>()
                    .write_batch(&c.units, None, None)?,
                13 => {
                    column
                        .typed::<Int64Type>()
                        .write_batch(&c.provider_cost_micros, None, None)?
                }
                14 => column
                    .typed::<Int64Type>()
                    .write_batch(&c.import_file_id, None, None)?,
                15 => column
                    .typed::<Int32Type>()
                    .write_batch(&c.source_line, None, None)?,
                _ => unreachable!("CDR_SCHEMA has 16 columns"),
            };
            column.close()?;
            index += 1;
        }
        group.close()?;
        Ok(())
    }

    /// Writes the last row group and the footer; returns the sink and the
    /// rows written.
    pub fn finish(mut self) -> Result<(W, u64), ArchiveFileError> {
        self.flush()?;
        let sink = self.writer.into_inner()?;
        Ok((sink, self.rows))
    }
}

/// Reads an archive file's CDRs back, in the order they were written.
pub fn read_cdrs<R: ChunkReader + 'static>(
    file: R,
) -> Result<impl Iterator<Item = Result<ArchivedCdr, ArchiveFileError>>, ArchiveFileError> {
    let reader = SerializedFileReader::new(file)?;
    // The owning iterator: the rows outlive this function.
    let rows = RowIter::from_file_into(Box::new(reader));
    Ok(rows.enumerate().map(|(n, row)| {
        let row = row?;
        let bad = |reason: String| ArchiveFileError::BadRow {
            row: n as u64 + 1,
            reason,
        };
        let string = |i: usize| row.get_string(i).cloned().map_err(|e| bad(e.to_string()));
        let micros = row
            .get_timestamp_micros(5)
            .map_err(|e| bad(e.to_string()))?;
        Ok(ArchivedCdr {
            id: row.get_long(0).map_err(|e| bad(e.to_string()))?,
            provider: string(1)?,
            external_id: string(2)?,
            subscription: string(3)?,
            customer_id: if row.is_null(4).map_err(|e| bad(e.to_string()))? {
                None
            } else {
                Some(row.get_long(4).map_err(|e| bad(e.to_string()))?)
            },
            started_at: DateTime::from_timestamp_micros(micros)
                .ok_or_else(|| bad(format!("started_at {micros} µs is out of range")))?,
            kind: string(6)?,
            direction: string(7)?,
            destination: string(8)?,
            roaming_zone: string(9)?,
            duration_seconds: row.get_int(10).map_err(|e| bad(e.to_string()))?,
            volume_bytes: row.get_long(11).map_err(|e| bad(e.to_string()))?,
            units: row.get_int(12).map_err(|e| bad(e.to_string()))?,
            provider_cost_micros: row.get_long(13).map_err(|e| bad(e.to_string()))?,
            import_file_id: row.get_long(14).map_err(|e| bad(e.to_string()))?,
            source_line: row.get_int(15).map_err(|e| bad(e.to_string()))?,
        })
    }))
}

/// The SHA-256 of a month's CDRs in the archive's order: each row's
/// columns, each with its length, so that no two different rows or orders
/// hash alike. Recorded in the manifest at archive time and checked again
/// over the rows a restore brings back.
#[derive(Clone, Default)]
pub struct RowDigest {
    hasher: Sha256,
    rows: u64,
}

impl RowDigest {
    pub fn add(&mut self, cdr: &ArchivedCdr) {
        let h = &mut self.hasher;
        let mut text = |s: &str| {
            h.update((s.len() as u64).to_le_bytes());
            h.update(s.as_bytes());
        };
        text(&cdr.provider);
        text(&cdr.external_id);
        text(&cdr.subscription);
        text(&cdr.kind);
        text(&cdr.direction);
        text(&cdr.destination);
        text(&cdr.roaming_zone);
        h.update(cdr.id.to_le_bytes());
        match cdr.customer_id {
            Some(c) => {
                h.update([1]);
                h.update(c.to_le_bytes());
            }
            None => h.update([0]),
        }
        h.update(cdr.started_at.timestamp_micros().to_le_bytes());
        h.update(cdr.duration_seconds.to_le_bytes());
        h.update(cdr.volume_bytes.to_le_bytes());
        h.update(cdr.units.to_le_bytes());
        h.update(cdr.provider_cost_micros.to_le_bytes());
        h.update(cdr.import_file_id.to_le_bytes());
        h.update(cdr.source_line.to_le_bytes());
        self.rows += 1;
    }

    pub fn rows(&self) -> u64 {
        self.rows
    }

    pub fn hex(self) -> String {
        hex::encode(self.hasher.finalize())
    }
}

/// The Parquet schema of a month's cycle data: the rows of the customer's
/// cycles that start in the month (pricings, checkpoints, totals, their
/// lines and history), each as its table's name and the row as JSON
/// (`row_to_json`), which PostgreSQL turns back into the same row on a
/// restore (`jsonb_populate_record`). The CDRs have their typed columns
/// for an analyst's reader; these rows are tem's own bookkeeping.
pub const CYCLE_ROWS_SCHEMA: &str = "message cycle_rows {
  required binary table_name (STRING);
  required int64 customer_id;
  required int32 cycle (DATE);
  required binary row (STRING);
}";

/// One row of a cycle table, as archived.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CycleRow {
    pub table: String,
    pub customer_id: i64,
    pub cycle: NaiveDate,
    /// The row as `row_to_json` made it.
    pub row: String,
}

fn epoch() -> NaiveDate {
    NaiveDate::from_ymd_opt(1970, 1, 1).expect("a valid date")
}

/// Writes cycle rows into one Parquet file, a row group at a time.
pub struct CycleRowsWriter<W: Write + Send> {
    writer: SerializedFileWriter<W>,
    table: Vec<ByteArray>,
    customer_id: Vec<i64>,
    cycle: Vec<i32>,
    row: Vec<ByteArray>,
    bytes: usize,
    rows: u64,
}

/// A row group of cycle rows closes at this many bytes of JSON: pricing
/// chunks are large, and memory must not follow the month's size.
const CYCLE_GROUP_BYTES: usize = 32 << 20;

impl<W: Write + Send> CycleRowsWriter<W> {
    pub fn new(sink: W) -> Result<Self, ArchiveFileError> {
        Ok(Self {
            writer: file_writer(sink, CYCLE_ROWS_SCHEMA)?,
            table: Vec::new(),
            customer_id: Vec::new(),
            cycle: Vec::new(),
            row: Vec::new(),
            bytes: 0,
            rows: 0,
        })
    }

    pub fn push(&mut self, row: &CycleRow) -> Result<(), ArchiveFileError> {
        self.table.push(text(&row.table));
        self.customer_id.push(row.customer_id);
        self.cycle.push(
            (row.cycle - epoch())
                .num_days()
                .try_into()
                .unwrap_or(i32::MAX),
        );
        self.row.push(text(&row.row));
        self.bytes += row.row.len();
        self.rows += 1;
        if self.table.len() >= ROW_GROUP_ROWS || self.bytes >= CYCLE_GROUP_BYTES {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), ArchiveFileError> {
        if self.table.is_empty() {
            return Ok(());
        }
        let mut group = self.writer.next_row_group()?;
        let mut index = 0;
        while let Some(mut column) = group.next_column()? {
            match index {
                0 => column
                    .typed::<ByteArrayType>()
                    .write_batch(&self.table, None, None)?,
                1 => column
                    .typed::<Int64Type>()
                    .write_batch(&self.customer_id, None, None)?,
                2 => column
                    .typed::<Int32Type>()
                    .write_batch(&self.cycle, None, None)?,
                3 => column
                    .typed::<ByteArrayType>()
                    .write_batch(&self.row, None, None)?,
                _ => unreachable!("CYCLE_ROWS_SCHEMA has 4 columns"),
            };
            column.close()?;
            index += 1;
        }
        group.close()?;
        self.table.clear();
        self.customer_id.clear();
        self.cycle.clear();
        self.row.clear();
        self.bytes = 0;
        Ok(())
    }

    pub fn finish(mut self) -> Result<(W, u64), ArchiveFileError> {
        self.flush()?;
        let sink = self.writer.into_inner()?;
        Ok((sink, self.rows))
    }
}

/// Reads an archive's cycle rows back, in the order they were written.
pub fn read_cycle_rows<R: ChunkReader + 'static>(
    file: R,
) -> Result<impl Iterator<Item = Result<CycleRow, ArchiveFileError>>, ArchiveFileError> {
    let reader = SerializedFileReader::new(file)?;
    let rows = RowIter::from_file_into(Box::new(reader));
    Ok(rows.enumerate().map(|(n, row)| {
        let row = row?;
        let bad = |reason: String| ArchiveFileError::BadRow {
            row: n as u64 + 1,
            reason,
        };
        // The row API has no date accessor: the column's Field is read.
        let days = match row.get_column_iter().nth(2).map(|(_, field)| field) {
            Some(parquet::record::Field::Date(days)) => *days,
            other => return Err(bad(format!("cycle is {other:?}, not a DATE"))),
        };
        Ok(CycleRow {
            table: row.get_string(0).cloned().map_err(|e| bad(e.to_string()))?,
            customer_id: row.get_long(1).map_err(|e| bad(e.to_string()))?,
            cycle: epoch()
                .checked_add_signed(chrono::Duration::days(days.into()))
                .ok_or_else(|| bad(format!("cycle {days} days is out of range")))?,
            row: row.get_string(3).cloned().map_err(|e| bad(e.to_string()))?,
        })
    }))
}

/// A byte sink the Parquet writer owns and the uploader drains: the
/// writer is synchronous, the upload async, and this hands full parts
/// from one to the other without holding the whole file.
#[derive(Clone, Default)]
pub struct SharedBuffer(Arc<std::sync::Mutex<Vec<u8>>>);

impl SharedBuffer {
    pub fn len(&self) -> usize {
        self.0.lock().map(|b| b.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Everything written so far, leaving the buffer empty.
    pub fn take(&self) -> Vec<u8> {
        self.0
            .lock()
            .map(|mut b| std::mem::take(&mut *b))
            .unwrap_or_default()
    }
}

impl Write for SharedBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .map_err(|_| std::io::Error::other("archive buffer poisoned"))?
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// One archive file as written: its key, rows, size and SHA-256.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArchivedFile {
    pub key: String,
    pub rows: u64,
    pub bytes: u64,
    pub sha256: String,
}

/// The manifest beside a customer's month (`manifest.json`): what the
/// month's files hold, for a restore and for anyone reading the archive
/// without tem.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// `tem-cdr-archive/1`.
    pub format: String,
    pub customer_id: Option<i64>,
    /// The month's first day; the CDRs started in it (UTC).
    pub month: NaiveDate,
    /// The customer's cycles that start in the month, whose pricings and
    /// totals `cycles` holds.
    pub cycles: Vec<NaiveDate>,
    pub cdrs: ArchivedFile,
    pub cycle_rows: ArchivedFile,
    /// [`RowDigest`] of the CDRs.
    pub cdr_rows_sha256: String,
    pub max_cdr_id: Option<i64>,
    pub retention_months: u16,
    pub written_at: DateTime<Utc>,
}

pub const MANIFEST_FORMAT: &str = "tem-cdr-archive/1";

/// Where a customer's month lies in the bucket: `archive/{customer}/{YYYY-MM}/`
/// (`none` for the CDRs without a customer).
pub fn month_prefix(customer_id: Option<i64>, month: NaiveDate) -> String {
    let who = customer_id.map_or_else(|| "none".to_string(), |c| c.to_string());
    format!("archive/{who}/{}/", month.format("%Y-%m"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cdr(n: i64) -> ArchivedCdr {
        ArchivedCdr {
            id: n,
            provider: "routit".into(),
            external_id: format!("R-{n}"),
            subscription: "+31612345678".into(),
            customer_id: (n % 3 != 0).then_some(7),
            started_at: DateTime::from_timestamp_micros(1_740_000_000_000_000 + n * 1_000_001)
                .unwrap(),
            kind: ["voice", "sms", "data"][n as usize % 3].into(),
            direction: "outgoing".into(),
            destination: format!("\"quoted\", ünïcode {n}"),
            roaming_zone: "eu".into(),
            duration_seconds: (n % 600) as i32,
            volume_bytes: n * 1_048_577,
            units: 1,
            provider_cost_micros: -n * 12_345,
            import_file_id: 42,
            source_line: n as i32 + 1,
        }
    }

    #[test]
    fn cdrs_written_over_several_row_groups_read_back_equal_and_in_order() {
        let rows: Vec<ArchivedCdr> = (0..(ROW_GROUP_ROWS as i64 + 10)).map(cdr).collect();
        let mut writer = CdrArchiveWriter::new(Vec::new()).unwrap();
        for r in &rows {
            writer.push(r).unwrap();
        }
        let (bytes, written) = writer.finish().unwrap();
        assert_eq!(written, rows.len() as u64);
        let back: Vec<ArchivedCdr> = read_cdrs(bytes::Bytes::from(bytes))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(back.len(), rows.len());
        assert!(back == rows, "a row differs after the round trip");
    }

    #[test]
    fn an_empty_month_is_a_valid_file_with_no_rows() {
        let (bytes, written) = CdrArchiveWriter::new(Vec::new()).unwrap().finish().unwrap();
        assert_eq!(written, 0);
        assert_eq!(read_cdrs(bytes::Bytes::from(bytes)).unwrap().count(), 0);
    }

    #[test]
    fn cycle_rows_read_back_as_written_with_their_dates() {
        let rows: Vec<CycleRow> = (0..3)
            .map(|n| CycleRow {
                table: "totals".into(),
                customer_id: 7,
                cycle: NaiveDate::from_ymd_opt(2024, 1, 1).unwrap() + chrono::Duration::days(n),
                row: format!("{{\"n\": {n}, \"text\": \"ünïcode\"}}"),
            })
            .collect();
        let mut writer = CycleRowsWriter::new(Vec::new()).unwrap();
        for row in &rows {
            writer.push(row).unwrap();
        }
        let (bytes, n) = writer.finish().unwrap();
        assert_eq!(n, 3);
        let back: Vec<CycleRow> = read_cycle_rows(bytes::Bytes::from(bytes))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(back, rows);
    }

    #[test]
    fn the_row_digest_changes_with_any_column_and_with_the_order() {
        let digest = |rows: &[ArchivedCdr]| {
            let mut d = RowDigest::default();
            rows.iter().for_each(|r| d.add(r));
            d.hex()
        };
        let (a, b) = (cdr(1), cdr(2));
        let mut changed = a.clone();
        changed.source_line += 1;
        assert_ne!(
            digest(&[a.clone(), b.clone()]),
            digest(&[b.clone(), a.clone()])
        );
        assert_ne!(digest(std::slice::from_ref(&a)), digest(&[changed]));
        assert_eq!(digest(&[a.clone(), b.clone()]), digest(&[a, b]));
    }

    #[test]
    fn a_file_that_is_not_parquet_is_an_error_not_a_panic() {
        let e = read_cdrs(bytes::Bytes::from_static(b"PK\x03\x04 not parquet")).err();
        assert!(matches!(e, Some(ArchiveFileError::Parquet(_))), "{e:?}");
    }
}
