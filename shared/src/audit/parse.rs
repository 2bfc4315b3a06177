//! Reading a carrier invoice file with its provider's format
//! ([`super::format`]), streamed record by record: a malformed line is
//! rejected with its line number and reason while the good lines are kept,
//! and the file's stated total is held against the lines read (a
//! difference is a [`FindingKind::TotalsMismatch`] finding, never a
//! refusal). Only a file whose columns or header record are missing is
//! refused as a whole: without its account and period it cannot be
//! audited at all. Also the writer of such files, for the simulator, the
//! tests and the benchmark.

use std::collections::BTreeMap;
use std::io::Read;

use chrono::{Days, NaiveDate};
use serde::{Deserialize, Serialize};

use super::format::{CarrierFormat, Column, PeriodEnd, Record};
use super::{CarrierCharge, CarrierInvoice, CarrierLine, Evidence, Finding, FindingKind};
use crate::costs::ChargeClass;
use crate::import::normalize::{scaled_decimal, subscription_id};

/// A line of the file that was not read, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RejectedLine {
    /// 1-based; 0 for the file as a whole (no total record).
    pub line: u32,
    pub reason: String,
}

/// A carrier invoice file as read: its good lines, its rejected ones and
/// its stated total.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CarrierFile {
    pub invoice: CarrierInvoice,
    pub rejected: Vec<RejectedLine>,
    /// The total record's amount and line.
    pub stated_total: Option<(u32, i64)>,
    /// The sum of the usage and recurring lines read.
    pub lines_total: i64,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum CarrierFileError {
    #[error("{file}: the first line lacks the columns {missing}; a {provider} carrier invoice has the columns {expected}")]
    MissingColumns {
        file: String,
        provider: String,
        missing: String,
        expected: String,
    },
    #[error("{file}: no valid header record (account, invoice number and period); the file cannot be audited without one: ask the carrier for the complete file ({} lines rejected: {})", rejected.len(), rejected.iter().take(3).map(|r| format!("line {}: {}", r.line, r.reason)).collect::<Vec<_>>().join("; "))]
    NoHeader {
        file: String,
        rejected: Vec<RejectedLine>,
    },
    #[error("reading {file}: {reason}; fetch the file again")]
    Read { file: String, reason: String },
}

/// Reads a carrier invoice of `provider` from `input` (the S3 key `file`
/// goes into the evidence of every finding).
pub fn read_carrier_invoice<R: Read>(
    input: R,
    format: &CarrierFormat,
    file: &str,
) -> Result<CarrierFile, CarrierFileError> {
    let read_error = |e: csv::Error| CarrierFileError::Read {
        file: file.to_string(),
        reason: e.to_string(),
    };
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(format.delimiter as u8)
        .quote(format.quote as u8)
        .has_headers(false)
        .flexible(true)
        .from_reader(input);
    let mut record = csv::ByteRecord::new();
    // The header row: column positions by field.
    let mut at: BTreeMap<Column, usize> = BTreeMap::new();
    if reader.read_byte_record(&mut record).map_err(read_error)? {
        for (i, name) in record.iter().enumerate() {
            let name = String::from_utf8_lossy(name);
            let name = name.trim_start_matches('\u{feff}').trim();
            if let Some(column) = format.columns.get(name) {
                at.insert(*column, i);
            }
        }
    }
    let missing: Vec<&str> = format
        .columns
        .iter()
        .filter(|(_, c)| **c != Column::Cdrs && !at.contains_key(c))
        .map(|(name, _)| name.as_str())
        .collect();
    if !missing.is_empty() {
        return Err(CarrierFileError::MissingColumns {
            file: file.to_string(),
            provider: format.provider.clone(),
            missing: missing.join(", "),
            expected: format
                .columns
                .keys()
                .cloned()
                .collect::<Vec<_>>()
                .join(&format.delimiter.to_string()),
        });
    }

    let mut rejected = Vec::new();
    let mut header: Option<(u32, Header)> = None;
    let mut lines = Vec::new();
    let mut stated_total: Option<(u32, i64)> = None;
    let mut lines_total: i64 = 0;
    loop {
        match reader.read_byte_record(&mut record) {
            Ok(true) => {}
            Ok(false) => break,
            Err(e) => {
                // A record the CSV reader cannot frame: reported at its line,
                // and the reading goes on with the next one.
                let line = e
                    .position()
                    .map_or(0, |p| u32::try_from(p.line()).unwrap_or(u32::MAX));
                rejected.push(RejectedLine {
                    line,
                    reason: e.to_string(),
                });
                continue;
            }
        }
        let line = record
            .position()
            .map_or(0, |p| u32::try_from(p.line()).unwrap_or(u32::MAX));
        if record.iter().all(|f| f.iter().all(u8::is_ascii_whitespace)) {
            continue;
        }
        let row = Row {
            record: &record,
            at: &at,
        };
        match row.read(format) {
            Err(reason) => rejected.push(RejectedLine { line, reason }),
            Ok(Parsed::Header(h)) => match &header {
                None => header = Some((line, h)),
                Some((_, kept)) if *kept == h => {}
                Some((first, _)) => rejected.push(RejectedLine {
                    line,
                    reason: format!(
                        "a second header record that differs from the one on line {first}"
                    ),
                }),
            },
            Ok(Parsed::Line(subscription, charge)) => {
                let amount = match charge {
                    CarrierCharge::Usage { amount_micros, .. }
                    | CarrierCharge::Recurring { amount_micros } => amount_micros,
                };
                match lines_total.checked_add(amount) {
                    Some(sum) => {
                        lines_total = sum;
                        lines.push(CarrierLine {
                            line,
                            subscription,
                            charge,
                        });
                    }
                    None => rejected.push(RejectedLine {
                        line,
                        reason: "the amount makes the invoice's sum overflow".into(),
                    }),
                }
            }
            Ok(Parsed::Total(amount)) => match stated_total {
                None => stated_total = Some((line, amount)),
                Some((first, _)) => rejected.push(RejectedLine {
                    line,
                    reason: format!("a second total record (the first is on line {first})"),
                }),
            },
        }
    }
    let Some((_, header)) = header else {
        return Err(CarrierFileError::NoHeader {
            file: file.to_string(),
            rejected,
        });
    };
    if stated_total.is_none() {
        rejected.push(RejectedLine {
            line: 0,
            reason: "the file has no total record, so whether its lines add up is unknown".into(),
        });
    }
    Ok(CarrierFile {
        invoice: CarrierInvoice {
            provider: format.provider.clone(),
            account: header.account,
            invoice_number: header.invoice_number,
            file: file.to_string(),
            period_start: header.period_start,
            period_end: header.period_end,
            lines,
        },
        rejected,
        stated_total,
        lines_total,
    })
}

impl CarrierFile {
    /// The finding when the file's stated total is not the sum of the
    /// lines read (rejected lines count as not read, so a rejected charge
    /// line also shows here).
    pub fn totals_finding(&self) -> Option<Finding> {
        let (line, stated) = self.stated_total?;
        (stated != self.lines_total).then(|| Finding {
            kind: FindingKind::TotalsMismatch,
            subscription: String::new(),
            class: None,
            billed_micros: stated,
            expected_micros: self.lines_total,
            evidence: Evidence {
                file: self.invoice.file.clone(),
                lines: vec![line],
                cdrs: None,
            },
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Header {
    account: String,
    invoice_number: String,
    period_start: NaiveDate,
    period_end: NaiveDate,
}

enum Parsed {
    Header(Header),
    Line(String, CarrierCharge),
    Total(i64),
}

struct Row<'a> {
    record: &'a csv::ByteRecord,
    at: &'a BTreeMap<Column, usize>,
}

impl Row<'_> {
    /// The field's text, trimmed; empty when the line is short.
    fn get(&self, column: Column) -> Result<&str, String> {
        let Some(i) = self.at.get(&column) else {
            return Ok("");
        };
        let bytes = self.record.get(*i).unwrap_or_default();
        std::str::from_utf8(bytes)
            .map(str::trim)
            .map_err(|_| format!("{column:?} is not valid UTF-8"))
    }

    fn required(&self, column: Column) -> Result<&str, String> {
        let value = self.get(column)?;
        if value.is_empty() {
            return Err(format!("{} is empty", column_name(column)));
        }
        Ok(value)
    }

    fn amount(&self, format: &CarrierFormat) -> Result<i64, String> {
        let raw = self.required(Column::Amount)?;
        scaled_decimal(raw, format.decimal_separator, format.amount_unit_micros)
            .map_err(|e| format!("amount: {e}"))
    }

    fn read(&self, format: &CarrierFormat) -> Result<Parsed, String> {
        let value = self.required(Column::Record)?;
        let record = format.records.get(value).ok_or_else(|| {
            format!(
                "unknown record type {value:?}; expected one of {}",
                format
                    .records
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })?;
        match record {
            Record::Header => {
                let date = |column: Column| -> Result<NaiveDate, String> {
                    let raw = self.required(column)?;
                    NaiveDate::parse_from_str(raw, &format.date_format).map_err(|_| {
                        format!(
                            "{}: {raw:?} is not a date in the format {:?}",
                            column_name(column),
                            format.date_format
                        )
                    })
                };
                let period_start = date(Column::PeriodStart)?;
                let mut period_end = date(Column::PeriodEnd)?;
                if format.period_end == PeriodEnd::Inclusive {
                    period_end = period_end
                        .checked_add_days(Days::new(1))
                        .ok_or("period_end is out of range")?;
                }
                if period_end <= period_start {
                    return Err(format!(
                        "the period ends ({period_end}) before it starts ({period_start})"
                    ));
                }
                Ok(Parsed::Header(Header {
                    account: self.required(Column::Account)?.to_string(),
                    invoice_number: self.required(Column::InvoiceNumber)?.to_string(),
                    period_start,
                    period_end,
                }))
            }
            Record::Usage => {
                let subscription = subscription_id(self.required(Column::Subscription)?)?;
                let charge = self.required(Column::Charge)?;
                let class = *format.charges.get(charge).ok_or_else(|| {
                    format!(
                        "unknown charge {charge:?}; expected one of {}",
                        format
                            .charges
                            .keys()
                            .cloned()
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                })?;
                let cdrs = match self.get(Column::Cdrs)? {
                    "" => None,
                    raw => Some(
                        raw.parse::<u64>()
                            .map_err(|_| format!("cdrs: {raw:?} is not a whole number"))?,
                    ),
                };
                Ok(Parsed::Line(
                    subscription,
                    CarrierCharge::Usage {
                        class,
                        amount_micros: self.amount(format)?,
                        cdrs,
                    },
                ))
            }
            Record::Recurring => {
                let subscription = subscription_id(self.required(Column::Subscription)?)?;
                Ok(Parsed::Line(
                    subscription,
                    CarrierCharge::Recurring {
                        amount_micros: self.amount(format)?,
                    },
                ))
            }
            Record::Total => Ok(Parsed::Total(self.amount(format)?)),
        }
    }
}

fn column_name(column: Column) -> &'static str {
    match column {
        Column::Record => "record",
        Column::Account => "account",
        Column::InvoiceNumber => "invoice_number",
        Column::PeriodStart => "period_start",
        Column::PeriodEnd => "period_end",
        Column::Subscription => "subscription",
        Column::Charge => "charge",
        Column::Cdrs => "cdrs",
        Column::Amount => "amount",
    }
}

/// Writes `invoice` as its provider's carrier invoice file, with
/// `stated_total` as the total record (the lines' sum when `None`): what
/// the simulator serves and the tests and benchmark plant differences in.
pub fn write_carrier_invoice(
    format: &CarrierFormat,
    invoice: &CarrierInvoice,
    stated_total: Option<i64>,
) -> String {
    let order = [
        Column::Record,
        Column::Account,
        Column::InvoiceNumber,
        Column::PeriodStart,
        Column::PeriodEnd,
        Column::Subscription,
        Column::Charge,
        Column::Cdrs,
        Column::Amount,
    ];
    let columns: Vec<Column> = order
        .into_iter()
        .filter(|c| format.header_of(*c).is_some())
        .collect();
    let mut writer = csv::WriterBuilder::new()
        .delimiter(format.delimiter as u8)
        .quote(format.quote as u8)
        .from_writer(Vec::new());
    let mut row = |values: &[(Column, String)]| {
        let fields: Vec<&str> = columns
            .iter()
            .map(|c| {
                values
                    .iter()
                    .find(|(v, _)| v == c)
                    .map_or("", |(_, s)| s.as_str())
            })
            .collect();
        // Writing into a Vec cannot fail.
        let _ = writer.write_record(&fields);
    };
    row(&columns
        .iter()
        .map(|c| (*c, format.header_of(*c).unwrap_or_default().to_string()))
        .collect::<Vec<_>>());
    let end = match format.period_end {
        PeriodEnd::Exclusive => invoice.period_end,
        PeriodEnd::Inclusive => invoice.period_end.pred_opt().unwrap_or(invoice.period_end),
    };
    row(&[
        (Column::Record, format.record_value(Record::Header).into()),
        (Column::Account, invoice.account.clone()),
        (Column::InvoiceNumber, invoice.invoice_number.clone()),
        (
            Column::PeriodStart,
            invoice.period_start.format(&format.date_format).to_string(),
        ),
        (
            Column::PeriodEnd,
            end.format(&format.date_format).to_string(),
        ),
    ]);
    let mut sum = 0i64;
    for line in &invoice.lines {
        match line.charge {
            CarrierCharge::Usage {
                class,
                amount_micros,
                cdrs,
            } => {
                sum += amount_micros;
                row(&[
                    (Column::Record, format.record_value(Record::Usage).into()),
                    (Column::Subscription, line.subscription.clone()),
                    (
                        Column::Charge,
                        format
                            .charge_value(class)
                            .unwrap_or(class.as_str())
                            .to_string(),
                    ),
                    (
                        Column::Cdrs,
                        cdrs.map(|n| n.to_string()).unwrap_or_default(),
                    ),
                    (Column::Amount, format.amount_text(amount_micros)),
                ]);
            }
            CarrierCharge::Recurring { amount_micros } => {
                sum += amount_micros;
                row(&[
                    (
                        Column::Record,
                        format.record_value(Record::Recurring).into(),
                    ),
                    (Column::Subscription, line.subscription.clone()),
                    (Column::Amount, format.amount_text(amount_micros)),
                ]);
            }
        }
    }
    row(&[
        (Column::Record, format.record_value(Record::Total).into()),
        (
            Column::Amount,
            format.amount_text(stated_total.unwrap_or(sum)),
        ),
    ]);
    let bytes = writer.into_inner().unwrap_or_default();
    String::from_utf8(bytes).unwrap_or_default()
}

/// The usage kinds a carrier file can bill.
pub const USAGE_CLASSES: [ChargeClass; 5] = [
    ChargeClass::Voice,
    ChargeClass::Sms,
    ChargeClass::Mms,
    ChargeClass::Data,
    ChargeClass::Service,
];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::Provider;

    fn day(s: &str) -> NaiveDate {
        s.parse().unwrap()
    }

    fn invoice() -> CarrierInvoice {
        CarrierInvoice {
            provider: "routit".into(),
            account: "R-100".into(),
            invoice_number: "2025-03-0001".into(),
            file: "carrier-invoices/routit/R-100/2025-03-01.csv".into(),
            period_start: day("2025-03-01"),
            period_end: day("2025-04-01"),
            lines: vec![
                CarrierLine {
                    line: 3,
                    subscription: "+31612300001".into(),
                    charge: CarrierCharge::Usage {
                        class: ChargeClass::Voice,
                        amount_micros: 12_345_000,
                        cdrs: Some(40),
                    },
                },
                CarrierLine {
                    line: 4,
                    subscription: "+31612300001".into(),
                    charge: CarrierCharge::Recurring {
                        amount_micros: 15_000_000,
                    },
                },
            ],
        }
    }

    #[test]
    fn a_written_invoice_reads_back_the_same_in_every_providers_format() {
        for provider in Provider::ALL {
            let format = CarrierFormat::for_provider(provider).unwrap();
            let mut expected = invoice();
            expected.provider = provider.as_str().into();
            let text = write_carrier_invoice(&format, &expected, None);
            let read = read_carrier_invoice(text.as_bytes(), &format, &expected.file).unwrap();
            assert_eq!(read.invoice, expected, "{provider}:\n{text}");
            assert_eq!(read.rejected, vec![], "{provider}");
            assert_eq!(read.stated_total, Some((5, 27_345_000)));
            assert_eq!(read.totals_finding(), None);
        }
    }

    #[test]
    fn malformed_lines_are_rejected_with_their_line_and_reason_and_the_rest_is_kept() {
        let format = CarrierFormat::for_provider(Provider::Routit).unwrap();
        let text = "Recordsoort;Klantnummer;Factuurnummer;Periode van;Periode tot en met;Nummer;Soort;Aantal;Bedrag\n\
            Kop;R-100;F-1;01-03-2025;31-03-2025;;;;\n\
            Verbruik;;;;;0612300001;Bellen;40;12,345\n\
            Verbruik;;;;;0612300001;Fax;1;1,00\n\
            Abonnement;;;;;0612300001;;;vijftien\n\
            Onbekend;;;;;;;;\n\
            Abonnement;;;;;;;;15\n\
            Verbruik;;;;;0612300002;Data;x;2,00\n\
            Abonnement;;;;;0612300002;;;15\n\
            Totaal;;;;;;;;27,345\n";
        let read = read_carrier_invoice(text.as_bytes(), &format, "f.csv").unwrap();
        assert_eq!(read.invoice.period_end, day("2025-04-01"));
        assert_eq!(
            read.invoice
                .lines
                .iter()
                .map(|l| l.line)
                .collect::<Vec<_>>(),
            vec![3, 9]
        );
        let rejected: Vec<(u32, &str)> = read
            .rejected
            .iter()
            .map(|r| (r.line, r.reason.as_str()))
            .collect();
        assert_eq!(rejected.len(), 5, "{rejected:?}");
        assert_eq!(rejected[0].0, 4);
        assert!(
            rejected[0].1.contains("unknown charge \"Fax\""),
            "{rejected:?}"
        );
        assert!(rejected[1].1.starts_with("amount:"), "{rejected:?}");
        assert!(
            rejected[2].1.contains("unknown record type"),
            "{rejected:?}"
        );
        assert_eq!(rejected[3], (7, "subscription is empty"));
        assert!(rejected[4].1.contains("cdrs"), "{rejected:?}");
        // The stated total equals the two good lines here.
        assert_eq!(read.totals_finding(), None);
    }

    #[test]
    fn a_total_that_does_not_add_up_is_a_finding_with_its_line() {
        let format = CarrierFormat::for_provider(Provider::Vodafone).unwrap();
        let text = write_carrier_invoice(&format, &invoice(), Some(30_000_000));
        let read = read_carrier_invoice(text.as_bytes(), &format, "f.csv").unwrap();
        let finding = read.totals_finding().unwrap();
        assert_eq!(finding.kind, FindingKind::TotalsMismatch);
        assert_eq!(
            (finding.billed_micros, finding.expected_micros),
            (30_000_000, 27_345_000)
        );
        assert_eq!(finding.evidence.lines, vec![5]);
    }

    #[test]
    fn a_file_without_its_header_record_or_columns_is_refused_with_what_to_do() {
        let format = CarrierFormat::for_provider(Provider::Vodafone).unwrap();
        let text = write_carrier_invoice(&format, &invoice(), None);
        let headless: String = text
            .lines()
            .filter(|l| !l.starts_with("H,"))
            .map(|l| format!("{l}\n"))
            .collect();
        let err = read_carrier_invoice(headless.as_bytes(), &format, "f.csv").unwrap_err();
        assert!(matches!(err, CarrierFileError::NoHeader { .. }), "{err}");
        let err = read_carrier_invoice("a,b\n1,2\n".as_bytes(), &format, "f.csv").unwrap_err();
        assert!(err.to_string().contains("lacks the columns"), "{err}");
        let err = read_carrier_invoice(&b""[..], &format, "f.csv").unwrap_err();
        assert!(matches!(err, CarrierFileError::MissingColumns { .. }));
    }

    #[test]
    fn a_file_without_a_total_record_says_so_as_a_rejection() {
        let format = CarrierFormat::for_provider(Provider::Vodafone).unwrap();
        let text = write_carrier_invoice(&format, &invoice(), None);
        let untotalled: String = text
            .lines()
            .filter(|l| !l.starts_with("T,"))
            .map(|l| format!("{l}\n"))
            .collect();
        let read = read_carrier_invoice(untotalled.as_bytes(), &format, "f.csv").unwrap();
        assert_eq!(read.invoice.lines.len(), 2);
        assert_eq!(read.rejected.len(), 1);
        assert_eq!(read.rejected[0].line, 0);
    }
}
