//! CSV rows to canonical CDRs, by a provider's [`FormatTemplate`].
//!
//! A row that cannot be read is rejected with its line number and reason
//! while the rows around it load; a file whose header does not match the
//! template, or that cannot be read at all, is a [`FileError`].

use std::borrow::Cow;
use std::cell::Cell;
use std::io::Read;

use chrono::format::{Item, Parsed as ParsedFields, StrftimeItems};
use chrono::{DateTime, NaiveDate, NaiveTime, Offset, TimeZone, Utc};
use sha2::{Digest, Sha256};

use crate::cdr::{Direction, Kind, Zone};
use crate::import::format::{DurationFormat, Encoding, Field, FormatTemplate};
use crate::import::normalize;

/// A line longer than this refuses the file: a record is held in memory
/// whole, and no carrier writes lines anywhere near this long.
pub const MAX_LINE_BYTES: usize = 1 << 20;

/// A record (all its lines, quoted newlines included) longer than this is
/// not read further, so that an unterminated quote cannot make the rest of
/// the file one field held in memory. An unquoted record is one line, so
/// this is the line limit too.
pub const MAX_RECORD_BYTES: usize = MAX_LINE_BYTES;

/// How much of a record that is too long is kept for the rejected file.
const RAW_HEAD_BYTES: usize = 256;

#[derive(Debug, Clone, PartialEq)]
pub struct CdrRow {
    pub external_id: String,
    pub subscription: String,
    pub started_at: DateTime<Utc>,
    pub kind: Kind,
    pub direction: Direction,
    pub destination: String,
    pub roaming_zone: Zone,
    pub duration_seconds: u32,
    pub volume_bytes: u64,
    pub units: u32,
    pub cost_micros: i64,
    /// 1-based line of the source file where the record starts.
    pub line: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Rejected {
    pub line: u64,
    pub reason: String,
    /// The record as read (fields joined by the delimiter, lossily decoded).
    pub raw: String,
}

#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("the file is empty: no header line")]
    Empty,
    #[error(
        "the header does not match the {provider} format: {reason}. Expected columns: {expected}"
    )]
    Header {
        provider: String,
        reason: String,
        expected: String,
    },
    #[error("line {line} is longer than {MAX_LINE_BYTES} bytes; refusing the file")]
    LineTooLong { line: u64 },
    #[error("the file cannot be read near line {line}: {source}")]
    Read {
        line: u64,
        #[source]
        source: std::io::Error,
    },
}

pub enum Parsed {
    Row(Box<CdrRow>),
    Rejected(Rejected),
}

/// Why a parser stopped before the end of its input, after the rows before
/// that point: a quote that never closes leaves no later line that can be
/// trusted to start a record (any newline may be inside the field), so
/// there is no sound point to resume from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stopped {
    /// The line the rejected record starts on.
    pub line: u64,
    pub reason: String,
}

/// Where each canonical field sits in a record.
#[derive(Debug, Default)]
struct Layout {
    columns: usize,
    /// The column of each [`Field`], by its discriminant: looked up a dozen
    /// times per row.
    by_field: [Option<usize>; FIELD_KINDS],
}

/// How many [`Field`]s there are.
const FIELD_KINDS: usize = Field::Cost as usize + 1;

impl Layout {
    fn index(&self, field: Field) -> Option<usize> {
        self.by_field[field as usize]
    }
}

pub struct CsvParser<R: Read> {
    reader: csv::Reader<LineLimit<R>>,
    template: FormatTemplate,
    formats: DateTimeFormats,
    layout: Layout,
    record: csv::ByteRecord,
    stopped: Option<Stopped>,
    /// The last local date converted and its offset from UTC in seconds,
    /// when that day has no daylight-saving change: rows come a day at a
    /// time, and the zone's rules were a tenth of the parse thread.
    day_offset: Cell<Option<(NaiveDate, i32)>>,
}

/// A date and a time format (strftime), each with its items parsed once
/// per file rather than once per row.
struct DateTimeFormats {
    date: (String, Option<Vec<Item<'static>>>),
    time: (String, Option<Vec<Item<'static>>>),
}

impl DateTimeFormats {
    fn of(template: &FormatTemplate) -> Self {
        let items = |format: &str| {
            (
                format.to_string(),
                StrftimeItems::new(format).parse_to_owned().ok(),
            )
        };
        Self {
            date: items(template.date_format.as_deref().unwrap_or("%Y-%m-%d")),
            time: items(template.time_format.as_deref().unwrap_or("%H:%M:%S")),
        }
    }
}

/// What `NaiveDate::parse_from_str` and `NaiveTime::parse_from_str` do,
/// with the format's items parsed before. A format whose items do not
/// parse matches nothing.
fn parse_with(
    (_, items): &(String, Option<Vec<Item<'static>>>),
    text: &str,
) -> chrono::format::ParseResult<ParsedFields> {
    let mut parsed = ParsedFields::new();
    match items {
        Some(items) => chrono::format::parse(&mut parsed, text, items.iter())?,
        None => chrono::format::parse(&mut parsed, text, [Item::Error].iter())?,
    }
    Ok(parsed)
}

impl<R: Read> CsvParser<R> {
    /// Reads and checks the header.
    pub fn new(input: R, template: &FormatTemplate) -> Result<Self, FileError> {
        let mut reader = csv::ReaderBuilder::new()
            .delimiter(template.delimiter as u8)
            .quote(template.quote as u8)
            .has_headers(false)
            .flexible(true)
            // The record-size scan hands on 64 KiB at a time; the reader's
            // default 8 KiB buffer took it in eight copies.
            .buffer_capacity(64 * 1024)
            .from_reader(LineLimit::new(
                input,
                template.delimiter as u8,
                template.quote as u8,
            ));
        let mut header = csv::ByteRecord::new();
        match reader.read_byte_record(&mut header) {
            Ok(true) => {}
            Ok(false) => return Err(FileError::Empty),
            Err(e) => return Err(read_error(e, 1)),
        }
        let layout = layout(&header, template)?;
        Ok(Self {
            reader,
            template: template.clone(),
            formats: DateTimeFormats::of(template),
            layout,
            record: csv::ByteRecord::new(),
            stopped: None,
            day_offset: Cell::new(None),
        })
    }

    /// Why the parser stopped before the end of the input, if it did (the
    /// record it stopped at was returned as rejected).
    pub fn stopped(&self) -> Option<&Stopped> {
        self.stopped.as_ref()
    }

    /// The longest record read so far, in bytes (at most
    /// [`MAX_RECORD_BYTES`] + 1): what the parser held of one record.
    pub fn largest_record_bytes(&self) -> usize {
        self.reader.get_ref().largest_record
    }

    /// The next row, or `None` at the end of the file (or after the record
    /// the parser [stopped](Self::stopped) at).
    pub fn next_row(&mut self) -> Option<Result<Parsed, FileError>> {
        if self.stopped.is_some() {
            return None;
        }
        loop {
            let line = self.reader.position().line() + 1;
            match self.reader.read_byte_record(&mut self.record) {
                Ok(false) => return None,
                Err(e) => {
                    if let Some(open) = unterminated_quote(&e) {
                        return Some(Ok(Parsed::Rejected(self.stop(open))));
                    }
                    return Some(Err(read_error(e, line)));
                }
                Ok(true) => {}
            }
            let line = self.record.position().map(|p| p.line()).unwrap_or(line);
            if self.record.len() == 1 && self.record[0].iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            if let Some(open) = self.reader.get_ref().eof_in_quote {
                // This record is the one the input ended in when it spans
                // that record's first byte (its reported start may lie
                // before, at empty lines the reader skipped).
                let start = self.record.position().map_or(0, |p| p.byte());
                let end = self.reader.position().byte();
                if (start..end).contains(&open.record_byte) {
                    // The file ends inside a quote: this record swallowed
                    // every line after it, so its fields mean nothing.
                    let reason = format!(
                        "unterminated quote starting at line {}: the file ends inside it",
                        open.quote_line
                    );
                    return Some(Ok(Parsed::Rejected(Rejected {
                        line: open.record_line,
                        reason,
                        raw: self.raw_head(),
                    })));
                }
            }
            return Some(Ok(match self.row(line) {
                Ok(row) => Parsed::Row(Box::new(row)),
                Err(reason) => Parsed::Rejected(Rejected {
                    line,
                    reason,
                    raw: self.raw(),
                }),
            }));
        }
    }

    /// Rejects the record that outgrew [`MAX_RECORD_BYTES`] inside a quote
    /// and stops: see [`Stopped`].
    fn stop(&mut self, open: OpenQuote) -> Rejected {
        let reason = format!(
            "unterminated quote starting at line {}: record exceeds {} MiB; the rest of this file is not read",
            open.quote_line,
            MAX_RECORD_BYTES >> 20
        );
        let rejected = Rejected {
            line: open.record_line,
            reason: reason.clone(),
            raw: self.raw_head(),
        };
        self.stopped = Some(Stopped {
            line: open.record_line,
            reason,
        });
        rejected
    }

    /// The start of the current record as read, for a record whose fields
    /// cannot be trusted.
    fn raw_head(&self) -> String {
        let head = &self.reader.get_ref().head;
        let mut raw = String::from_utf8_lossy(head).into_owned();
        if head.len() == RAW_HEAD_BYTES {
            raw.push_str("...");
        }
        raw
    }

    /// The record last returned, as read (fields joined by the delimiter):
    /// for a row the loader rejects after parsing.
    pub fn raw_record(&self) -> String {
        self.raw()
    }

    fn raw(&self) -> String {
        let parts: Vec<String> = self
            .record
            .iter()
            .map(|f| String::from_utf8_lossy(f).into_owned())
            .collect();
        parts.join(&self.template.delimiter.to_string())
    }

    /// A field as text, trimmed; borrowed from the record unless it had to
    /// be decoded (a row is a dozen fields, and a file millions of rows).
    fn field(&self, field: Field) -> Result<Option<Cow<'_, str>>, String> {
        let Some(index) = self.layout.index(field) else {
            return Ok(None);
        };
        let bytes = &self.record[index];
        Ok(Some(match self.template.encoding {
            Encoding::Utf8 => Cow::Borrowed(
                std::str::from_utf8(bytes)
                    .map_err(|_| {
                        "field is not valid UTF-8 (the format declares utf-8; is the file Latin-1?)"
                            .to_string()
                    })?
                    .trim(),
            ),
            Encoding::Windows1252 => {
                match encoding_rs::WINDOWS_1252
                    .decode_without_bom_handling(bytes)
                    .0
                {
                    Cow::Borrowed(text) => Cow::Borrowed(text.trim()),
                    Cow::Owned(text) => Cow::Owned(text.trim().to_string()),
                }
            }
        }))
    }

    fn required(&self, field: Field, name: &str) -> Result<Cow<'_, str>, String> {
        match self.field(field)? {
            Some(v) if !v.is_empty() => Ok(v),
            _ => Err(format!("{name} is empty")),
        }
    }

    fn lookup<T: Copy>(
        map: &std::collections::BTreeMap<String, T>,
        value: &str,
        what: &str,
    ) -> Result<T, String> {
        map.get(value).copied().ok_or_else(|| {
            let known: Vec<&str> = map.keys().map(String::as_str).collect();
            format!(
                "unknown {what} {value:?} (expected one of {})",
                known.join(", ")
            )
        })
    }

    fn row(&self, line: u64) -> Result<CdrRow, String> {
        if self.record.len() != self.layout.columns {
            return Err(format!(
                "expected {} fields, found {} (is a delimiter missing or a quote unbalanced?)",
                self.layout.columns,
                self.record.len()
            ));
        }
        let t = &self.template;
        let kind = Self::lookup(&t.kinds, &self.required(Field::Kind, "type")?, "type")?;
        let direction = Self::lookup(
            &t.directions,
            &self.required(Field::Direction, "direction")?,
            "direction",
        )?;
        let roaming_zone = match self.field(Field::RoamingZone)? {
            Some(z) if !z.is_empty() => Self::lookup(&t.zones, &z, "zone")?,
            _ => Zone::Home,
        };
        let subscription =
            normalize::subscription_id(&self.required(Field::Subscription, "subscription")?)?;
        let started_at = self.started_at()?;
        let destination = self
            .field(Field::Destination)?
            .map(|d| normalize::destination(&d))
            .unwrap_or_default();
        let duration_seconds = match self.field(Field::Duration)?.filter(|d| !d.is_empty()) {
            Some(d) => match t.duration {
                DurationFormat::Hms => normalize::hms_seconds(&d)?,
                DurationFormat::Seconds => normalize::whole_seconds(&d)?,
            },
            None if kind == Kind::Voice => return Err("voice record without a duration".into()),
            None => 0,
        };
        let volume_bytes = match self.field(Field::Volume)?.filter(|v| !v.is_empty()) {
            Some(v) => normalize::rounded_decimal(&v, t.decimal_separator, t.volume_unit_bytes)
                .map_err(|e| format!("volume: {e}"))?,
            None => 0,
        };
        let units = match self.field(Field::Units)?.filter(|u| !u.is_empty()) {
            Some(u) => u
                .parse::<u32>()
                .map_err(|_| format!("units {u:?} is not a whole non-negative number"))?,
            // Without a units column a message counts as one.
            None if matches!(kind, Kind::Sms | Kind::Mms) => 1,
            None => 0,
        };
        let cost_micros = normalize::scaled_decimal(
            &self.required(Field::Cost, "cost")?,
            t.decimal_separator,
            t.cost_unit_micros,
        )
        .map_err(|e| format!("cost: {e}"))?;
        let mut row = CdrRow {
            external_id: String::new(),
            subscription,
            started_at,
            kind,
            direction,
            destination,
            roaming_zone,
            duration_seconds,
            volume_bytes,
            units,
            cost_micros,
            line,
        };
        row.external_id = match self.field(Field::ExternalId)? {
            Some(id) if !id.is_empty() => id.into_owned(),
            Some(_) => return Err("record id is empty".into()),
            None => content_id(&row),
        };
        Ok(row)
    }

    fn started_at(&self) -> Result<DateTime<Utc>, String> {
        let t = &self.template;
        if let Some(format) = &t.datetime_format {
            let raw = self.required(Field::StartedAt, "start time")?;
            let parsed = if format == "rfc3339" {
                DateTime::parse_from_rfc3339(&raw)
            } else {
                DateTime::parse_from_str(&raw, format)
            };
            return parsed
                .map(|d| d.with_timezone(&Utc))
                .map_err(|_| format!("start time {raw:?} is not ISO 8601 with an offset"));
        }
        let date_raw = self.required(Field::Date, "date")?;
        let time_raw = self.required(Field::Time, "time")?;
        let date = parse_with(&self.formats.date, &date_raw)
            .and_then(|parsed| parsed.to_naive_date())
            .map_err(|_| format!("date {date_raw:?} does not match {}", self.formats.date.0))?;
        let time = parse_with(&self.formats.time, &time_raw)
            .and_then(|parsed| parsed.to_naive_time())
            .map_err(|_| format!("time {time_raw:?} does not match {}", self.formats.time.0))?;
        self.local_to_utc(date, time)
    }

    /// [`crate::cdr::local_to_utc`] in the format's zone, with the offset
    /// of a day that has one offset from its first second to its last
    /// remembered for the next row.
    fn local_to_utc(&self, date: NaiveDate, time: NaiveTime) -> Result<DateTime<Utc>, String> {
        let zone = self.template.time_zone;
        if let Some((day, offset)) = self.day_offset.get() {
            // Checked: a date at the end of chrono's range is input too.
            let utc = (day == date)
                .then(|| {
                    date.and_time(time)
                        .checked_sub_signed(chrono::Duration::seconds(offset.into()))
                })
                .flatten();
            if let Some(utc) = utc {
                return Ok(Utc.from_utc_datetime(&utc));
            }
        }
        let offset_at = |time: NaiveTime| {
            zone.offset_from_local_datetime(&date.and_time(time))
                .single()
                .map(|offset| offset.fix().local_minus_utc())
        };
        let last = NaiveTime::from_hms_opt(23, 59, 59).unwrap_or(NaiveTime::MIN);
        match (offset_at(NaiveTime::MIN), offset_at(last)) {
            (Some(first), Some(last)) if first == last => {
                self.day_offset.set(Some((date, first)));
            }
            _ => self.day_offset.set(None),
        }
        crate::cdr::local_to_utc(date, time, zone)
    }
}

/// A natural key for providers without record ids: a hash of the
/// normalised record, so the same record always gets the same key.
fn content_id(row: &CdrRow) -> String {
    let mut hasher = Sha256::new();
    hasher.update(format!(
        "{}|{}|{}|{}|{}|{}|{}|{}|{}|{}",
        row.subscription,
        row.started_at.timestamp(),
        row.kind.as_str(),
        row.direction.as_str(),
        row.destination,
        row.roaming_zone.as_str(),
        row.duration_seconds,
        row.volume_bytes,
        row.units,
        row.cost_micros
    ));
    format!("h:{}", hex::encode(&hasher.finalize()[..16]))
}

fn layout(header: &csv::ByteRecord, template: &FormatTemplate) -> Result<Layout, FileError> {
    let names: Vec<String> = header
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let text = String::from_utf8_lossy(f);
            let text = if i == 0 {
                text.trim_start_matches('\u{feff}')
            } else {
                &text
            };
            text.trim().to_string()
        })
        .collect();
    let header_error = |reason: String| FileError::Header {
        provider: template.provider.clone(),
        reason,
        expected: template.expected_header(),
    };
    let mut by_field = [None; FIELD_KINDS];
    let mut missing = Vec::new();
    for (column, field) in &template.columns {
        match names.iter().position(|n| n == column) {
            // The first column of a field counts.
            Some(index) => {
                by_field[*field as usize].get_or_insert(index);
            }
            None => missing.push(column.as_str()),
        }
    }
    if !missing.is_empty() {
        let mut reason = format!(
            "missing {}; found {:?}",
            missing.join(", "),
            names.join(" | ")
        );
        if names.len() == 1 {
            reason.push_str(&format!(" (is the delimiter {:?}?)", template.delimiter));
        }
        return Err(header_error(reason));
    }
    Ok(Layout {
        columns: names.len(),
        by_field,
    })
}

fn read_error(e: csv::Error, line: u64) -> FileError {
    match e.into_kind() {
        csv::ErrorKind::Io(io) => match io
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<LineTooLong>())
        {
            Some(too_long) => FileError::LineTooLong { line: too_long.0 },
            None => FileError::Read { line, source: io },
        },
        other => FileError::Read {
            line,
            source: std::io::Error::other(format!("{other:?}")),
        },
    }
}

/// The quote a record outgrew [`MAX_RECORD_BYTES`] in, if that is the error.
fn unterminated_quote(e: &csv::Error) -> Option<OpenQuote> {
    match e.kind() {
        csv::ErrorKind::Io(io) => io.get_ref()?.downcast_ref::<OpenQuote>().copied(),
        _ => None,
    }
}

#[derive(Debug)]
struct LineTooLong(u64);

impl std::fmt::Display for LineTooLong {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {} is longer than {MAX_LINE_BYTES} bytes", self.0)
    }
}

impl std::error::Error for LineTooLong {}

/// A record still inside a quote: where the record and the quote start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct OpenQuote {
    record_line: u64,
    quote_line: u64,
    /// Offset of the record's first byte in the reader's input.
    record_byte: u64,
}

impl std::fmt::Display for OpenQuote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "unterminated quote starting at line {}: record exceeds {MAX_RECORD_BYTES} bytes",
            self.quote_line
        )
    }
}

impl std::error::Error for OpenQuote {}

/// Where a record is, byte by byte, following the CSV reader's own rules
/// (csv-core with its defaults: a quote opens a field only at its start, a
/// doubled quote inside is a literal one, CR or LF ends a record outside
/// quotes, empty lines are no record), so that a record's size is known
/// before the reader buffers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scan {
    StartRecord,
    StartField,
    InField,
    InQuotes,
    /// A quote inside quotes: the closing one, or the first of a pair.
    QuoteInQuotes,
}

/// Refuses input with a record over [`MAX_RECORD_BYTES`] before the CSV
/// reader buffers it whole (a long line, or a quote that never closes), and
/// turns CRLF into LF (the CSV reader counts lines one short after a
/// CR-terminated record).
struct LineLimit<R> {
    inner: R,
    line: u64,
    /// A CR at the end of the previous read, not yet known to precede LF.
    pending_cr: bool,
    input: Vec<u8>,
    ready: Vec<u8>,
    position: usize,
    delimiter: u8,
    quote: u8,
    scan: Scan,
    record_bytes: usize,
    record_line: u64,
    record_byte: u64,
    quote_line: u64,
    /// Bytes handed on so far (after CRLF became LF).
    output_bytes: u64,
    /// The first [`RAW_HEAD_BYTES`] of the current record.
    head: Vec<u8>,
    largest_record: usize,
    /// Set when the input ends inside a quote.
    eof_in_quote: Option<OpenQuote>,
}

impl<R> LineLimit<R> {
    fn new(inner: R, delimiter: u8, quote: u8) -> Self {
        Self {
            inner,
            line: 1,
            pending_cr: false,
            input: vec![0; 64 * 1024],
            ready: Vec::with_capacity(64 * 1024),
            position: 0,
            delimiter,
            quote,
            scan: Scan::StartRecord,
            record_bytes: 0,
            record_line: 1,
            record_byte: 0,
            quote_line: 1,
            output_bytes: 0,
            head: Vec::with_capacity(RAW_HEAD_BYTES),
            largest_record: 0,
            eof_in_quote: None,
        }
    }

    fn push(&mut self, byte: u8) -> std::io::Result<()> {
        self.ready.push(byte);
        self.output_bytes += 1;
        let terminator = byte == b'\n' || byte == b'\r';
        if self.scan == Scan::StartRecord {
            if terminator {
                // Empty lines are no record.
                if byte == b'\n' {
                    self.line += 1;
                }
                return Ok(());
            }
            self.scan = Scan::StartField;
            self.record_line = self.line;
            self.record_byte = self.output_bytes - 1;
            self.record_bytes = 0;
            self.head.clear();
        }
        self.record_bytes += 1;
        if self.head.len() < RAW_HEAD_BYTES {
            self.head.push(byte);
        }
        self.scan = match self.scan {
            Scan::InQuotes if byte == self.quote => Scan::QuoteInQuotes,
            Scan::InQuotes => Scan::InQuotes,
            Scan::QuoteInQuotes if byte == self.quote => Scan::InQuotes,
            Scan::StartField if byte == self.quote => {
                self.quote_line = self.line;
                Scan::InQuotes
            }
            _ if byte == self.delimiter => Scan::StartField,
            _ if terminator => Scan::StartRecord,
            _ => Scan::InField,
        };
        if byte == b'\n' {
            self.line += 1;
        }
        self.largest_record = self.largest_record.max(self.record_bytes);
        if self.record_bytes > MAX_RECORD_BYTES {
            return Err(self.record_too_large());
        }
        Ok(())
    }

    fn fill(&mut self) -> std::io::Result<bool>
    where
        R: Read,
    {
        self.ready.clear();
        self.position = 0;
        let n = self.inner.read(&mut self.input)?;
        if n == 0 {
            if std::mem::take(&mut self.pending_cr) {
                self.push(b'\r')?;
            }
            if matches!(self.scan, Scan::InQuotes) {
                self.eof_in_quote = Some(OpenQuote {
                    record_line: self.record_line,
                    quote_line: self.quote_line,
                    record_byte: self.record_byte,
                });
            }
            return Ok(!self.ready.is_empty());
        }
        let mut i = 0;
        while i < n {
            // Inside a record, the bytes up to the next quote or line end
            // change nothing but the counts and, outside quotes, whether a
            // field has just begun (the run ends with the delimiter): taken
            // as one run, found with memchr (perf of a 1M import: a scan
            // that also stopped at every delimiter was a tenth of the parse
            // thread).
            if !self.pending_cr
                && matches!(self.scan, Scan::StartField | Scan::InField | Scan::InQuotes)
            {
                let run =
                    memchr::memchr3(self.quote, b'\n', b'\r', &self.input[i..n]).unwrap_or(n - i);
                if run > 0 {
                    self.push_plain(i, run)?;
                    if self.scan != Scan::InQuotes {
                        self.scan = if self.input[i + run - 1] == self.delimiter {
                            Scan::StartField
                        } else {
                            Scan::InField
                        };
                    }
                    i += run;
                    continue;
                }
            }
            let byte = self.input[i];
            i += 1;
            if std::mem::take(&mut self.pending_cr) && byte != b'\n' {
                self.push(b'\r')?;
            }
            if byte == b'\r' {
                self.pending_cr = true;
                continue;
            }
            self.push(byte)?;
        }
        Ok(true)
    }

    /// Why the current record outgrew [`MAX_RECORD_BYTES`]: a quote that
    /// never closes, or a line too long.
    fn record_too_large(&self) -> std::io::Error {
        if self.scan == Scan::InQuotes {
            return std::io::Error::other(OpenQuote {
                record_line: self.record_line,
                quote_line: self.quote_line,
                record_byte: self.record_byte,
            });
        }
        std::io::Error::other(LineTooLong(self.line))
    }

    /// [`Self::push`] of `input[from..from + len]`, bytes inside a record
    /// that are neither the quote nor a line end, but for the scan state,
    /// which the caller sets.
    fn push_plain(&mut self, from: usize, len: usize) -> std::io::Result<()> {
        let bytes = &self.input[from..from + len];
        self.ready.extend_from_slice(bytes);
        self.output_bytes += len as u64;
        self.record_bytes += len;
        let room = RAW_HEAD_BYTES.saturating_sub(self.head.len());
        self.head.extend_from_slice(&bytes[..room.min(len)]);
        self.largest_record = self.largest_record.max(self.record_bytes);
        if self.record_bytes > MAX_RECORD_BYTES {
            // As push would have found at the first byte over the limit.
            self.record_bytes = MAX_RECORD_BYTES + 1;
            self.largest_record = self.largest_record.min(MAX_RECORD_BYTES + 1);
            return Err(self.record_too_large());
        }
        Ok(())
    }
}

impl<R: Read> Read for LineLimit<R> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.position == self.ready.len() {
            if !self.fill()? {
                return Ok(0);
            }
        }
        let n = out.len().min(self.ready.len() - self.position);
        out[..n].copy_from_slice(&self.ready[self.position..self.position + n]);
        self.position += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::Provider;

    fn parse(provider: Provider, text: &[u8]) -> Result<(Vec<CdrRow>, Vec<Rejected>), FileError> {
        let template = FormatTemplate::for_provider(provider).unwrap();
        let mut parser = CsvParser::new(text, &template)?;
        let (mut rows, mut rejected) = (Vec::new(), Vec::new());
        while let Some(next) = parser.next_row() {
            match next? {
                Parsed::Row(row) => rows.push(*row),
                Parsed::Rejected(r) => rejected.push(r),
            }
        }
        Ok((rows, rejected))
    }

    const ROUTIT_HEADER: &str =
        "Datum;Tijd;Abonnee;Bestemming;Type;Richting;Duur;Volume;Kosten;Zone;Referentie";

    #[test]
    fn a_routit_voice_row_becomes_a_canonical_cdr() {
        let text = format!("\u{feff}{ROUTIT_HEADER}\r\n15-01-2025;14:03:07;0612345678;0201234567;Spraak;Uitgaand;00:02:05;;0,0125;NL;RT1\r\n");
        let (rows, rejected) = parse(Provider::Routit, text.as_bytes()).unwrap();
        assert!(rejected.is_empty(), "{rejected:?}");
        let row = &rows[0];
        assert_eq!(row.external_id, "RT1");
        assert_eq!(row.subscription, "+31612345678");
        assert_eq!(row.started_at.to_rfc3339(), "2025-01-15T13:03:07+00:00");
        assert_eq!(
            (row.kind, row.direction, row.roaming_zone),
            (Kind::Voice, Direction::Outgoing, Zone::Home)
        );
        assert_eq!(row.destination, "+31201234567");
        assert_eq!(
            (row.duration_seconds, row.volume_bytes, row.units),
            (125, 0, 0)
        );
        assert_eq!(row.cost_micros, 12_500);
        assert_eq!(row.line, 2);
    }

    #[test]
    fn local_times_around_both_daylight_saving_changes_convert_as_the_zone_rules_say() {
        let zone: chrono_tz::Tz = "Europe/Amsterdam".parse().unwrap();
        let times = [
            ("29-03-2025", "23:59:59"),
            ("30-03-2025", "00:00:00"),
            ("30-03-2025", "01:59:59"),
            ("30-03-2025", "03:00:00"),
            ("30-03-2025", "12:00:00"),
            ("31-03-2025", "00:00:01"),
            ("31-03-2025", "22:30:00"),
            ("25-10-2025", "12:00:00"),
            ("26-10-2025", "01:59:59"),
            ("26-10-2025", "02:30:00"),
            ("26-10-2025", "03:00:00"),
            ("27-10-2025", "02:30:00"),
            ("27-10-2025", "02:30:01"),
        ];
        let mut text = format!("{ROUTIT_HEADER}\r\n");
        for (i, (date, time)) in times.iter().enumerate() {
            text.push_str(&format!(
                "{date};{time};0612345678;0201234567;Spraak;Uitgaand;00:00:05;;0,01;NL;T{i}\r\n"
            ));
        }
        // The hour skipped when summer time starts is still refused.
        text.push_str(
            "30-03-2025;02:30:00;0612345678;0201234567;Spraak;Uitgaand;00:00:05;;0,01;NL;GAP\r\n",
        );
        let (rows, rejected) = parse(Provider::Routit, text.as_bytes()).unwrap();
        assert_eq!(rows.len(), times.len(), "{rejected:?}");
        for (row, (date, time)) in rows.iter().zip(times) {
            let expected = crate::cdr::local_to_utc(
                NaiveDate::parse_from_str(date, "%d-%m-%Y").unwrap(),
                NaiveTime::parse_from_str(time, "%H:%M:%S").unwrap(),
                zone,
            )
            .unwrap();
            assert_eq!(row.started_at, expected, "{date} {time}");
        }
        assert_eq!(rows[5].started_at.to_rfc3339(), "2025-03-30T22:00:01+00:00");
        assert_eq!(
            rows[12].started_at.to_rfc3339(),
            "2025-10-27T01:30:01+00:00"
        );
        assert_eq!(rejected.len(), 1);
        assert!(
            rejected[0].reason.contains("does not exist"),
            "{}",
            rejected[0].reason
        );
    }

    #[test]
    fn dates_at_the_ends_of_chronos_range_are_rows_or_rejections_not_panics() {
        let mut text = format!("{ROUTIT_HEADER}\r\n");
        // The earliest date chrono parses, at midnight: a UTC offset east
        // of Greenwich takes it out of range. Twice, for the remembered day.
        let dates = [
            ("01-01--262143", "23:59:59"),
            ("01-01--262143", "00:00:00"),
            ("01-01--262143", "00:00:00"),
            ("31-12-262142", "23:59:59"),
        ];
        for (i, (date, time)) in dates.iter().enumerate() {
            text.push_str(&format!(
                "{date};{time};0612345678;0201234567;Spraak;Uitgaand;00:00:05;;0,01;NL;E{i}\r\n"
            ));
        }
        let (rows, rejected) = parse(Provider::Routit, text.as_bytes()).unwrap();
        assert_eq!(
            rows.len() + rejected.len(),
            dates.len(),
            "{rows:?} {rejected:?}"
        );
    }

    #[test]
    fn bad_routit_rows_are_rejected_with_line_and_reason_while_good_ones_load() {
        let text = format!(
            "{ROUTIT_HEADER}\n\
             15-01-2025;10:00:00;0612345678;;SMS;Uitgaand;;;0,10;EU;A\n\
             32-01-2025;10:00:00;0612345678;;SMS;Uitgaand;;;0,10;NL;B\n\
             15-01-2025;10:00:00;0612345678;;Spraak;Uitgaand;-00:00:05;;0,10;NL;C\n\
             15-01-2025;10:00:00;0612345678;;Fax;Uitgaand;;;0,10;NL;D\n\
             15-01-2025;10:00:00;0612345678;;SMS;Uitgaand;;0,10;NL;E\n\
             15-01-2025;10:00:00;0612345678;;SMS;Uitgaand;;;gratis;NL;F\n\
             15-01-2025;10:00:00;0612345678;;Data;Inkomend;;2048,5;0,50;WERELD;G\n"
        );
        let (rows, rejected) = parse(Provider::Routit, text.as_bytes()).unwrap();
        assert_eq!(
            rows.iter()
                .map(|r| r.external_id.as_str())
                .collect::<Vec<_>>(),
            vec!["A", "G"]
        );
        assert_eq!(rows[0].units, 1);
        assert_eq!(rows[1].volume_bytes, 2_097_664);
        let reasons: Vec<(u64, &str)> = rejected
            .iter()
            .map(|r| (r.line, r.reason.as_str()))
            .collect();
        assert_eq!(reasons.len(), 5, "{reasons:?}");
        assert!(
            reasons[0].0 == 3 && reasons[0].1.contains("date"),
            "{reasons:?}"
        );
        assert!(
            reasons[1].0 == 4 && reasons[1].1.contains("negative"),
            "{reasons:?}"
        );
        assert!(
            reasons[2].0 == 5 && reasons[2].1.contains("unknown type \"Fax\""),
            "{reasons:?}"
        );
        assert!(
            reasons[3].0 == 6 && reasons[3].1.contains("expected 11 fields, found 10"),
            "{reasons:?}"
        );
        assert!(
            reasons[4].0 == 7 && reasons[4].1.contains("cost"),
            "{reasons:?}"
        );
    }

    #[test]
    fn a_t_mobile_row_with_quotes_and_an_offset_becomes_a_canonical_cdr() {
        let text = "record_id,msisdn,start_time,event_type,direction,called_number,duration_seconds,data_bytes,units,charge_cents,roaming_zone\n\
                    \"TM,1\",+31612345678,2025-03-30T03:15:00+02:00,VOICE,MT,\"+32 2 123 45 67\",61,0,1,1.25,EU\n";
        let (rows, rejected) = parse(Provider::TMobile, text.as_bytes()).unwrap();
        assert!(rejected.is_empty(), "{rejected:?}");
        let row = &rows[0];
        assert_eq!(row.external_id, "TM,1");
        assert_eq!(row.started_at.to_rfc3339(), "2025-03-30T01:15:00+00:00");
        assert_eq!(
            (row.kind, row.direction, row.roaming_zone),
            (Kind::Voice, Direction::Incoming, Zone::Eu)
        );
        assert_eq!(row.destination, "+3221234567");
        assert_eq!(
            (row.duration_seconds, row.units, row.cost_micros),
            (61, 1, 12_500)
        );
    }

    #[test]
    fn a_wrong_header_or_delimiter_refuses_the_file_and_names_the_cause() {
        let err = parse(Provider::Routit, b"Datum,Tijd,Abonnee\n1,2,3\n")
            .err()
            .unwrap();
        assert!(err.to_string().contains("is the delimiter ';'?"), "{err}");
        let err = parse(Provider::Routit, b"Datum;Tijd\n").err().unwrap();
        assert!(err.to_string().contains("missing"), "{err}");
        assert!(matches!(
            parse(Provider::Routit, b"").err().unwrap(),
            FileError::Empty
        ));
    }

    #[test]
    fn latin1_text_in_a_utf8_format_rejects_the_row() {
        let mut text = format!("{ROUTIT_HEADER}\n").into_bytes();
        text.extend_from_slice(
            b"15-01-2025;10:00:00;0612345678;caf\xe9;SMS;Uitgaand;;;0,10;NL;A\n",
        );
        let (rows, rejected) = parse(Provider::Routit, &text).unwrap();
        assert!(rows.is_empty());
        assert!(rejected[0].reason.contains("UTF-8"), "{rejected:?}");
    }

    #[test]
    fn a_ten_megabyte_line_refuses_the_file_with_its_line_number() {
        let mut text =
            format!("{ROUTIT_HEADER}\n15-01-2025;10:00:00;0612345678;;SMS;Uitgaand;;;0,10;NL;A\n");
        text.push_str(&"x".repeat(10 << 20));
        let err = parse(Provider::Routit, text.as_bytes()).err().unwrap();
        assert!(matches!(err, FileError::LineTooLong { line: 3 }), "{err}");
    }
}

/// Counts the bytes each thread has allocated, so a test can see how much
/// memory the parser held at its peak while it ran on the test's thread.
#[cfg(test)]
mod counting_allocator {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;

    struct Counting;

    #[global_allocator]
    static ALLOCATOR: Counting = Counting;

    thread_local! {
        static LIVE: Cell<isize> = const { Cell::new(0) };
        static PEAK: Cell<isize> = const { Cell::new(0) };
    }

    fn note(delta: isize) {
        let _ = LIVE.try_with(|live| {
            let now = live.get() + delta;
            live.set(now);
            let _ = PEAK.try_with(|peak| peak.set(peak.get().max(now)));
        });
    }

    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            let p = unsafe { System.alloc(layout) };
            if !p.is_null() {
                note(layout.size() as isize);
            }
            p
        }

        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            unsafe { System.dealloc(ptr, layout) };
            note(-(layout.size() as isize));
        }

        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            let p = unsafe { System.realloc(ptr, layout, new_size) };
            if !p.is_null() {
                note(new_size as isize - layout.size() as isize);
            }
            p
        }
    }

    /// The most this thread had allocated at once while `f` ran, above
    /// what it had when `f` started.
    pub fn peak_during<T>(f: impl FnOnce() -> T) -> (T, usize) {
        let base = LIVE.with(Cell::get);
        PEAK.with(|p| p.set(base));
        let out = f();
        let peak = PEAK.with(Cell::get);
        (out, (peak - base).max(0) as usize)
    }
}

#[cfg(test)]
mod record_limit_tests {
    use super::*;
    use crate::routing::Provider;

    const HEADER: &str =
        "record_id,msisdn,start_time,event_type,direction,called_number,duration_seconds,data_bytes,units,charge_cents,roaming_zone";

    fn good(id: &str) -> String {
        format!("{id},+31612345678,2025-01-20T10:00:00+01:00,SMS,MO,,0,0,1,1,HOME\n")
    }

    /// Every row, rejected row and the stop, of `text`.
    fn read_all(text: &[u8]) -> (Vec<String>, Vec<Rejected>, Option<Stopped>, usize) {
        let template = FormatTemplate::for_provider(Provider::TMobile).unwrap();
        let mut parser = CsvParser::new(text, &template).unwrap();
        let (mut rows, mut rejected) = (Vec::new(), Vec::new());
        while let Some(next) = parser.next_row() {
            match next.unwrap() {
                Parsed::Row(row) => rows.push(row.external_id),
                Parsed::Rejected(r) => rejected.push(r),
            }
        }
        (
            rows,
            rejected,
            parser.stopped().cloned(),
            parser.largest_record_bytes(),
        )
    }

    #[test]
    fn an_unterminated_quote_before_ten_megabytes_rejects_its_row_and_stops_with_memory_bounded() {
        let mut text = format!("{HEADER}\n{}{}", good("A"), good("B"));
        // Line 4 opens a quote that never closes; 10 MB of rows follow.
        text.push_str("\"C,+31612345678,2025-01-20T10:00:00+01:00,SMS,MO,,0,0,1,1,HOME\n");
        while text.len() < 10_000_000 {
            text.push_str(&good("LOST"));
        }
        let input = text.into_bytes();
        let ((rows, rejected, stopped, largest), peak) =
            counting_allocator::peak_during(|| read_all(&input));

        assert_eq!(rows, vec!["A", "B"], "the rows before it load");
        assert_eq!(rejected.len(), 1, "{rejected:?}");
        assert_eq!(rejected[0].line, 4);
        assert_eq!(
            rejected[0].reason,
            "unterminated quote starting at line 4: record exceeds 1 MiB; the rest of this file is not read"
        );
        assert!(
            rejected[0].raw.starts_with("\"C,+31612345678"),
            "{:?}",
            rejected[0].raw
        );
        assert!(
            rejected[0].raw.len() < 300,
            "only the record's start is kept"
        );
        assert_eq!(stopped.map(|s| s.line), Some(4));
        assert_eq!(largest, MAX_RECORD_BYTES + 1);
        // The record is held up to the limit, never the 10 MB after it.
        assert!(peak < 4 << 20, "peak {peak} bytes while reading 10 MB");
    }

    #[test]
    fn a_file_ending_inside_a_quote_rejects_that_record_with_the_quote_line() {
        let text = format!(
            "{HEADER}\n{}\n\n{}\"D,+31612345678,2025-01-20T10:00:00+01:00,SMS,MO,,0,0,1,1,HOME\n{}",
            good("A").trim_end(),
            good("B"),
            good("SWALLOWED")
        );
        let (rows, rejected, stopped, _) = read_all(text.as_bytes());
        assert_eq!(rows, vec!["A", "B"]);
        assert_eq!(rejected.len(), 1, "{rejected:?}");
        assert_eq!(rejected[0].line, 5);
        assert_eq!(
            rejected[0].reason,
            "unterminated quote starting at line 5: the file ends inside it"
        );
        assert_eq!(stopped, None, "the end of the file, not a stop");
    }

    #[test]
    fn quoted_fields_with_newlines_and_doubled_quotes_still_read_and_count_as_one_record() {
        let text = format!(
            "{HEADER}\n\"A\"\"1\",+31612345678,2025-01-20T10:00:00+01:00,SMS,MO,\"+31 20\n123 4567\",0,0,1,1,HOME\n{}",
            good("B")
        );
        let (rows, rejected, stopped, largest) = read_all(text.as_bytes());
        assert!(rejected.is_empty(), "{rejected:?}");
        assert_eq!(rows, vec!["A\"1", "B"]);
        assert_eq!(stopped, None);
        assert_eq!(
            largest,
            HEADER.len() + 1,
            "the header is the longest record"
        );
    }

    #[test]
    fn a_quote_inside_an_unquoted_field_is_a_literal_and_opens_nothing() {
        let text = format!(
            "{HEADER}\nA5\"x,+31612345678,2025-01-20T10:00:00+01:00,SMS,MO,,0,0,1,1,HOME\n{}",
            good("B")
        );
        let (rows, rejected, _, _) = read_all(text.as_bytes());
        assert!(rejected.is_empty(), "{rejected:?}");
        assert_eq!(rows, vec!["A5\"x", "B"]);
    }
}

#[cfg(test)]
mod natural_key_tests {
    use super::*;

    #[test]
    fn rows_without_a_record_id_get_a_stable_content_key() {
        let text = include_str!("../../../formats/t_mobile.yaml")
            .replace("  record_id: external_id\n", "");
        let template = FormatTemplate::parse("t_mobile", &text).unwrap();
        let csv = "record_id,msisdn,start_time,event_type,direction,called_number,duration_seconds,data_bytes,units,charge_cents,roaming_zone\n\
                   x,+31612345678,2025-01-20T10:00:00+01:00,SMS,MO,,0,0,1,1,HOME\n\
                   y,+31612345678,2025-01-20T10:00:00+01:00,SMS,MO,,0,0,1,1,HOME\n\
                   z,+31612345678,2025-01-20T10:00:01+01:00,SMS,MO,,0,0,1,1,HOME\n";
        let mut parser = CsvParser::new(csv.as_bytes(), &template).unwrap();
        let mut ids = Vec::new();
        while let Some(Ok(Parsed::Row(row))) = parser.next_row() {
            ids.push(row.external_id);
        }
        assert_eq!(ids.len(), 3);
        assert!(ids[0].starts_with("h:"));
        assert_eq!(ids[0], ids[1], "the same record gets the same key");
        assert_ne!(ids[0], ids[2]);
    }
}
