//! CSV rows to canonical CDRs, by a provider's [`FormatTemplate`].
//!
//! A row that cannot be read is rejected with its line number and reason
//! while the rows around it load; a file whose header does not match the
//! template, or that cannot be read at all, is a [`FileError`].

use std::io::Read;

use chrono::{DateTime, NaiveDate, NaiveTime, Utc};
use sha2::{Digest, Sha256};

use crate::import::format::{
    Direction, DurationFormat, Encoding, Field, FormatTemplate, Kind, Zone,
};
use crate::import::normalize;

/// A line longer than this refuses the file: a record is held in memory
/// whole, and no carrier writes lines anywhere near this long.
pub const MAX_LINE_BYTES: usize = 1 << 20;

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

/// Where each canonical field sits in a record.
#[derive(Debug, Default)]
struct Layout {
    columns: usize,
    fields: Vec<(Field, usize)>,
}

impl Layout {
    fn index(&self, field: Field) -> Option<usize> {
        self.fields
            .iter()
            .find(|(f, _)| *f == field)
            .map(|(_, i)| *i)
    }
}

pub struct CsvParser<R: Read> {
    reader: csv::Reader<LineLimit<R>>,
    template: FormatTemplate,
    layout: Layout,
    record: csv::ByteRecord,
}

impl<R: Read> CsvParser<R> {
    /// Reads and checks the header.
    pub fn new(input: R, template: &FormatTemplate) -> Result<Self, FileError> {
        let mut reader = csv::ReaderBuilder::new()
            .delimiter(template.delimiter as u8)
            .quote(template.quote as u8)
            .has_headers(false)
            .flexible(true)
            .from_reader(LineLimit::new(input));
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
            layout,
            record: csv::ByteRecord::new(),
        })
    }

    /// The next row, or `None` at the end of the file.
    pub fn next_row(&mut self) -> Option<Result<Parsed, FileError>> {
        loop {
            let line = self.reader.position().line() + 1;
            match self.reader.read_byte_record(&mut self.record) {
                Ok(false) => return None,
                Err(e) => return Some(Err(read_error(e, line))),
                Ok(true) => {}
            }
            let line = self.record.position().map(|p| p.line()).unwrap_or(line);
            if self.record.len() == 1 && self.record[0].iter().all(u8::is_ascii_whitespace) {
                continue;
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

    fn raw(&self) -> String {
        let parts: Vec<String> = self
            .record
            .iter()
            .map(|f| String::from_utf8_lossy(f).into_owned())
            .collect();
        parts.join(&self.template.delimiter.to_string())
    }

    fn field(&self, field: Field) -> Result<Option<String>, String> {
        let Some(index) = self.layout.index(field) else {
            return Ok(None);
        };
        let bytes = &self.record[index];
        let text = match self.template.encoding {
            Encoding::Utf8 => std::str::from_utf8(bytes)
                .map_err(|_| {
                    "field is not valid UTF-8 (the format declares utf-8; is the file Latin-1?)"
                        .to_string()
                })?
                .to_string(),
            Encoding::Windows1252 => encoding_rs::WINDOWS_1252
                .decode_without_bom_handling(bytes)
                .0
                .into_owned(),
        };
        Ok(Some(text.trim().to_string()))
    }

    fn required(&self, field: Field, name: &str) -> Result<String, String> {
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
            Some(id) if !id.is_empty() => id,
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
        let date_format = t.date_format.as_deref().unwrap_or("%Y-%m-%d");
        let time_format = t.time_format.as_deref().unwrap_or("%H:%M:%S");
        let date = NaiveDate::parse_from_str(&date_raw, date_format)
            .map_err(|_| format!("date {date_raw:?} does not match {date_format}"))?;
        let time = NaiveTime::parse_from_str(&time_raw, time_format)
            .map_err(|_| format!("time {time_raw:?} does not match {time_format}"))?;
        normalize::local_to_utc(date, time, t.time_zone)
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
    let mut fields = Vec::new();
    let mut missing = Vec::new();
    for (column, field) in &template.columns {
        match names.iter().position(|n| n == column) {
            Some(index) => fields.push((*field, index)),
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
        fields,
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

#[derive(Debug)]
struct LineTooLong(u64);

impl std::fmt::Display for LineTooLong {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {} is longer than {MAX_LINE_BYTES} bytes", self.0)
    }
}

impl std::error::Error for LineTooLong {}

/// Refuses input with a line over [`MAX_LINE_BYTES`] before the CSV reader
/// buffers it whole, and turns CRLF into LF (the CSV reader counts lines
/// one short after a CR-terminated record).
struct LineLimit<R> {
    inner: R,
    line: u64,
    since_newline: usize,
    /// A CR at the end of the previous read, not yet known to precede LF.
    pending_cr: bool,
    input: Vec<u8>,
    ready: Vec<u8>,
    position: usize,
}

impl<R> LineLimit<R> {
    fn new(inner: R) -> Self {
        Self {
            inner,
            line: 1,
            since_newline: 0,
            pending_cr: false,
            input: vec![0; 64 * 1024],
            ready: Vec::with_capacity(64 * 1024),
            position: 0,
        }
    }

    fn push(&mut self, byte: u8) -> std::io::Result<()> {
        self.ready.push(byte);
        if byte == b'\n' {
            self.line += 1;
            self.since_newline = 0;
        } else {
            self.since_newline += 1;
            if self.since_newline > MAX_LINE_BYTES {
                return Err(std::io::Error::other(LineTooLong(self.line)));
            }
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
            return Ok(!self.ready.is_empty());
        }
        for i in 0..n {
            let byte = self.input[i];
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
