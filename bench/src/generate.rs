//! A synthetic Routit usage export: `;`-delimited CSV with CRLF line ends,
//! deflated into a ZIP, written in a stream (never held in memory).
//!
//! Rows are deterministic for a given seed: the first 50,000 rows of a
//! 1,000,000-row file are the 50,000-row file.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use anyhow::{Context, Result};
use chrono::{Datelike, Duration, NaiveDate, NaiveDateTime, Timelike};
use zip::write::SimpleFileOptions;
use zip::CompressionMethod;

pub const HEADER: &str =
    "Datum;Tijd;Abonnee;Bestemming;Type;Richting;Duur;Volume;Kosten;Zone;Referentie";
/// The name of the CSV inside the ZIP.
pub const ENTRY_NAME: &str = "routit_usage_2025-03.csv";
/// One unknown number for every this many known ones (their CDRs load
/// without a customer).
const UNKNOWN_PER_KNOWN: u32 = 20;
const FLUSH_BYTES: usize = 256 * 1024;

/// SplitMix64: small, fast and reproducible; quality is ample for test data.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// True with probability `percent`/100.
    pub fn percent(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// The nine digits after +31 of subscriber `k` (a 06 mobile number).
fn subscriber_digits(k: u32) -> String {
    format!("6{:08}", 20_000_000 + u64::from(k) * 37)
}

/// The E.164 numbers of the first `known` subscribers, as the subscription
/// table stores them.
pub fn known_subscriptions(known: u32) -> Vec<String> {
    (0..known)
        .map(|k| format!("+31{}", subscriber_digits(k)))
        .collect()
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Generated {
    pub rows: u64,
    pub csv_bytes: u64,
    pub zip_bytes: u64,
    /// Rows whose subscriber is one of the seeded subscriptions.
    pub rows_known_subscriber: u64,
}

/// Writes a ZIP with one deflated CSV entry of `rows` rows to `path`.
pub fn write_zip(path: &Path, rows: u64, known: u32, seed: u64) -> Result<Generated> {
    let file = File::create(path).with_context(|| format!("create {}", path.display()))?;
    let mut zip = zip::ZipWriter::new(BufWriter::with_capacity(1 << 20, file));
    let options = SimpleFileOptions::default()
        .compression_method(CompressionMethod::Deflated)
        .large_file(false);
    zip.start_file(ENTRY_NAME, options)
        .context("start the ZIP entry")?;

    let mut rows_gen = RowGenerator::new(rows, known, seed);
    let mut buf = Vec::with_capacity(FLUSH_BYTES + 512);
    buf.extend_from_slice(HEADER.as_bytes());
    buf.extend_from_slice(b"\r\n");
    let mut csv_bytes = 0u64;
    for i in 0..rows {
        rows_gen.row(i, &mut buf);
        if buf.len() >= FLUSH_BYTES {
            zip.write_all(&buf).context("write to the ZIP entry")?;
            csv_bytes += buf.len() as u64;
            buf.clear();
        }
    }
    zip.write_all(&buf).context("write to the ZIP entry")?;
    csv_bytes += buf.len() as u64;
    let mut inner = zip.finish().context("finish the ZIP")?;
    inner.flush().context("flush the ZIP")?;
    drop(inner);
    let zip_bytes = std::fs::metadata(path)
        .with_context(|| format!("stat {}", path.display()))?
        .len();
    Ok(Generated {
        rows,
        csv_bytes,
        zip_bytes,
        rows_known_subscriber: rows_gen.known_rows,
    })
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Voice,
    Sms,
    Mms,
    Data,
    Service,
}

#[derive(Clone, Copy, PartialEq)]
enum Zone {
    Nl,
    Eu,
    World,
}

struct RowGenerator {
    rng: Rng,
    known: u32,
    total_subscribers: u32,
    start: NaiveDateTime,
    /// Seconds of the month per row.
    step: f64,
    known_rows: u64,
}

impl RowGenerator {
    fn new(rows: u64, known: u32, seed: u64) -> Self {
        let start = NaiveDate::from_ymd_opt(2025, 3, 1)
            .and_then(|d| d.and_hms_opt(0, 0, 0))
            .expect("a valid date");
        // March 2025 (31 days, with the change to summer time on the 30th),
        // spread over a 1,000,000-row month whatever the row count, so the
        // first rows of a big file are the rows of a small one.
        let month = 31.0 * 86_400.0;
        Self {
            rng: Rng::new(seed),
            known: known.max(1),
            total_subscribers: known.max(1) + (known / UNKNOWN_PER_KNOWN).max(1),
            start,
            step: month / rows.max(1_000_000) as f64,
            known_rows: 0,
        }
    }

    /// Appends row `i` (CRLF-terminated) to `out`.
    fn row(&mut self, i: u64, out: &mut Vec<u8>) {
        let rng = &mut self.rng;
        // Chronological, like a carrier export.
        let offset = (i as f64 * self.step) as i64 + rng.below(3) as i64;
        let mut at = self.start + Duration::seconds(offset);
        // 02:00-03:00 on 30 March does not exist in Europe/Amsterdam.
        if at.date() == NaiveDate::from_ymd_opt(2025, 3, 30).expect("date") && at.hour() == 2 {
            at += Duration::hours(1);
        }

        let subscriber = rng.below(u64::from(self.total_subscribers)) as u32;
        if subscriber < self.known {
            self.known_rows += 1;
        }
        let digits = subscriber_digits(subscriber);
        let abonnee = match rng.below(100) {
            0..=59 => format!("0{digits}"),
            60..=84 => format!("+31{digits}"),
            _ => format!("0031{digits}"),
        };

        let kind = match rng.below(100) {
            0..=44 => Kind::Voice,
            45..=64 => Kind::Sms,
            65..=66 => Kind::Mms,
            67..=96 => Kind::Data,
            _ => Kind::Service,
        };
        let zone = match rng.below(100) {
            0..=84 => Zone::Nl,
            85..=96 => Zone::Eu,
            _ => Zone::World,
        };
        let outgoing = match kind {
            Kind::Data | Kind::Service => true,
            _ => rng.percent(70),
        };

        let destination = match kind {
            Kind::Data => String::new(),
            Kind::Service => ["1244", "0900-8844", "Spotify", "1200"][rng.below(4) as usize].into(),
            _ => destination(rng, zone),
        };

        let (duur, volume, cost_micros) = match kind {
            Kind::Voice => {
                let seconds = match rng.below(100) {
                    0..=39 => 1 + rng.below(60),
                    40..=94 => 1 + rng.below(900),
                    _ => 900 + rng.below(6300),
                };
                let per_second = match (zone, outgoing) {
                    (Zone::Nl, true) => 250,
                    (Zone::Eu, true) => 500,
                    (Zone::World, true) => 15_000,
                    (Zone::World, false) => 5_000,
                    _ => 0,
                };
                let duur = format!(
                    "{:02}:{:02}:{:02}",
                    seconds / 3600,
                    seconds / 60 % 60,
                    seconds % 60
                );
                (duur, String::new(), seconds * per_second)
            }
            Kind::Sms | Kind::Mms => {
                let cost = match (kind, zone, outgoing) {
                    (_, _, false) => 0,
                    (Kind::Mms, _, _) => 250_000,
                    (_, Zone::World, _) => 350_000,
                    _ => 75_000,
                };
                (String::new(), String::new(), cost)
            }
            Kind::Data => {
                // Tenths of a kilobyte, up to 50 MB per session.
                let tenths = match rng.below(100) {
                    0..=59 => rng.below(20_000),
                    60..=94 => rng.below(500_000),
                    _ => rng.below(5_000_000) / 10 * 10,
                };
                let volume = if tenths % 10 == 0 {
                    format!("{}", tenths / 10)
                } else {
                    format!("{},{}", tenths / 10, tenths % 10)
                };
                let micros_per_kb = match zone {
                    Zone::Nl => 10,
                    Zone::Eu => 10,
                    Zone::World => 5_000,
                };
                (String::new(), volume, tenths * micros_per_kb / 10)
            }
            Kind::Service => (
                String::new(),
                String::new(),
                500_000 + rng.below(9) * 250_000,
            ),
        };

        let line = format!(
            "{:02}-{:02}-{};{:02}:{:02}:{:02};{abonnee};{destination};{};{};{duur};{volume};{};{};RT25{:09}\r\n",
            at.day(),
            at.month(),
            at.year(),
            at.hour(),
            at.minute(),
            at.second(),
            match kind {
                Kind::Voice => "Spraak",
                Kind::Sms => "SMS",
                Kind::Mms => "MMS",
                Kind::Data => "Data",
                Kind::Service => "Dienst",
            },
            if outgoing { "Uitgaand" } else { "Inkomend" },
            euros(cost_micros),
            match zone {
                Zone::Nl => "NL",
                Zone::Eu => "EU",
                Zone::World => "WERELD",
            },
            i + 1,
        );
        out.extend_from_slice(line.as_bytes());
    }
}

/// A called number in one of the forms a carrier writes.
fn destination(rng: &mut Rng, zone: Zone) -> String {
    let n = rng.below(100_000_000);
    match zone {
        Zone::Nl => match rng.below(4) {
            0 => format!("06{n:08}"),
            1 => format!("+316{n:08}"),
            2 => format!("020{:07}", n % 10_000_000),
            _ => format!("00316{n:08}"),
        },
        Zone::Eu => match rng.below(3) {
            0 => format!("+324{n:08}"),
            1 => format!("+4915{n:08}"),
            _ => format!("00336{n:08}"),
        },
        Zone::World => match rng.below(2) {
            0 => format!("+1212{:07}", n % 10_000_000),
            _ => format!("+90532{:07}", n % 10_000_000),
        },
    }
}

/// Micro-euros as Routit writes euros: decimal comma, 2 to 6 decimals.
fn euros(micros: u64) -> String {
    let whole = micros / 1_000_000;
    let mut fraction = format!("{:06}", micros % 1_000_000);
    while fraction.len() > 2 && fraction.ends_with('0') {
        fraction.pop();
    }
    format!("{whole},{fraction}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn euros_are_written_like_routit() {
        assert_eq!(euros(12_500), "0,0125");
        assert_eq!(euros(100_000), "0,10");
        assert_eq!(euros(0), "0,00");
        assert_eq!(euros(1_234_567), "1,234567");
    }

    #[test]
    fn small_file_is_the_start_of_a_big_one() {
        let mut small = Vec::new();
        let mut big = Vec::new();
        let mut a = RowGenerator::new(50_000, 100, 7);
        let mut b = RowGenerator::new(1_000_000, 100, 7);
        for i in 0..1000 {
            a.row(i, &mut small);
            b.row(i, &mut big);
        }
        assert_eq!(small, big);
    }
}
