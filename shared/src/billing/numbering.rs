//! Invoice numbers: a seller's format (`{year}-{seq:06}` gives
//! `2026-000123`) applied to the next value of a gapless counter.
//!
//! # Why a counter row and not a sequence
//!
//! Dutch VAT law asks for one unbroken series per seller. A PostgreSQL
//! sequence hands out values outside transactions, so a finalisation that
//! rolls back after `nextval` leaves a hole. tem keeps one counter row per
//! seller (and per year when the format has `{year}`: the series restarts
//! each year) and takes a number with
//! `INSERT ... ON CONFLICT DO UPDATE SET last = last + 1 RETURNING last`
//! in the finalisation's own transaction: the row stays locked until that
//! transaction ends, so a second finalisation waits for the first, and a
//! rollback returns the number with everything else. The number is taken
//! as the last write before the commit, which keeps the lock short.
//!
//! A number is taken only when an invoice becomes final (and by a
//! correction, final at once), never by a draft.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    #[error("{0:?} has no {{seq}} (the counter), e.g. \"{{year}}-{{seq:06}}\"")]
    NoSequence(String),
    #[error("{0:?} has {{seq}} more than once")]
    TwoSequences(String),
    #[error("{format:?} has an unknown placeholder {{{placeholder}}}; use {{year}}, {{seq}} or {{seq:0N}} with N from 1 to 12")]
    UnknownPlaceholder { format: String, placeholder: String },
    #[error(
        "{format:?} has {character:?}; outside placeholders use letters, digits and - / . _ only"
    )]
    BadCharacter { format: String, character: char },
    #[error("{0:?} has an unclosed {{")]
    Unclosed(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Year,
    Seq { width: usize },
}

/// A parsed invoice number format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NumberFormat {
    parts: Vec<Part>,
}

impl NumberFormat {
    pub fn parse(format: &str) -> Result<Self, FormatError> {
        let mut parts = Vec::new();
        let mut text = String::new();
        let mut chars = format.chars();
        while let Some(c) = chars.next() {
            if c != '{' {
                if !(c.is_ascii_alphanumeric() || "-/._".contains(c)) {
                    return Err(FormatError::BadCharacter {
                        format: format.into(),
                        character: c,
                    });
                }
                text.push(c);
                continue;
            }
            let mut placeholder = String::new();
            let mut closed = false;
            for c in chars.by_ref() {
                if c == '}' {
                    closed = true;
                    break;
                }
                placeholder.push(c);
            }
            if !closed {
                return Err(FormatError::Unclosed(format.into()));
            }
            if !text.is_empty() {
                parts.push(Part::Text(std::mem::take(&mut text)));
            }
            let unknown = || FormatError::UnknownPlaceholder {
                format: format.into(),
                placeholder: placeholder.clone(),
            };
            parts.push(match placeholder.as_str() {
                "year" => Part::Year,
                "seq" => Part::Seq { width: 1 },
                p => {
                    let width = p
                        .strip_prefix("seq:0")
                        .and_then(|w| w.parse::<usize>().ok())
                        .filter(|w| (1..=12).contains(w))
                        .ok_or_else(unknown)?;
                    Part::Seq { width }
                }
            });
        }
        if !text.is_empty() {
            parts.push(Part::Text(text));
        }
        match parts
            .iter()
            .filter(|p| matches!(p, Part::Seq { .. }))
            .count()
        {
            0 => Err(FormatError::NoSequence(format.into())),
            1 => Ok(Self { parts }),
            _ => Err(FormatError::TwoSequences(format.into())),
        }
    }

    /// Whether the series restarts each year (the format has `{year}`).
    pub fn per_year(&self) -> bool {
        self.parts.contains(&Part::Year)
    }

    /// The counter a number of `year` is taken from: the year, or 0 for a
    /// format without `{year}` (one series for ever).
    pub fn counter_year(&self, year: i32) -> i32 {
        if self.per_year() {
            year
        } else {
            0
        }
    }

    /// The number `seq` of `year`: `{year}-{seq:06}` with 2026 and 123 is
    /// `2026-000123`. A counter past the width just gets longer.
    pub fn render(&self, year: i32, seq: i64) -> String {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Year => out.push_str(&year.to_string()),
                Part::Seq { width } => out.push_str(&format!("{seq:0width$}")),
            }
        }
        out
    }
}

impl fmt::Display for NumberFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for part in &self.parts {
            match part {
                Part::Text(t) => f.write_str(t)?,
                Part::Year => f.write_str("{year}")?,
                Part::Seq { width: 1 } => f.write_str("{seq}")?,
                Part::Seq { width } => write!(f, "{{seq:0{width}}}")?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_year_and_a_zero_padded_counter_give_the_usual_dutch_number() {
        let format = NumberFormat::parse("{year}-{seq:06}").unwrap();
        assert_eq!(format.render(2026, 123), "2026-000123");
        assert_eq!(format.render(2026, 1_234_567), "2026-1234567");
        assert!(format.per_year());
        assert_eq!(format.counter_year(2026), 2026);
        assert_eq!(format.to_string(), "{year}-{seq:06}");
    }

    #[test]
    fn a_format_without_a_year_is_one_series_for_ever() {
        let format = NumberFormat::parse("INV{seq}").unwrap();
        assert_eq!(format.render(2026, 7), "INV7");
        assert_eq!(format.counter_year(2026), 0);
    }

    #[test]
    fn a_format_needs_exactly_one_counter_and_known_placeholders() {
        assert!(matches!(
            NumberFormat::parse("{year}"),
            Err(FormatError::NoSequence(_))
        ));
        assert!(matches!(
            NumberFormat::parse("{seq}-{seq}"),
            Err(FormatError::TwoSequences(_))
        ));
        assert!(matches!(
            NumberFormat::parse("{month}-{seq}"),
            Err(FormatError::UnknownPlaceholder { .. })
        ));
        assert!(matches!(
            NumberFormat::parse("{seq:013}"),
            Err(FormatError::UnknownPlaceholder { .. })
        ));
        assert!(matches!(
            NumberFormat::parse("A {seq}"),
            Err(FormatError::BadCharacter { character: ' ', .. })
        ));
        assert!(matches!(
            NumberFormat::parse("{seq"),
            Err(FormatError::Unclosed(_))
        ));
    }
}
