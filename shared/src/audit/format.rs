//! Carrier invoice formats: how one carrier writes its invoice
//! specification, as data (`formats/carrier_invoices/{provider}.yaml`,
//! compiled into the binaries), so that a carrier changing a column name
//! or its decimal separator is a change of data, as with the CDR formats
//! (`import::format`).
//!
//! A carrier invoice is one CSV file per account and billing period, one
//! record per line, the record's type in a column of its own:
//! - `header`: the account, the invoice number and the period (once);
//! - `usage`: a subscription's usage charge of one kind, and optionally the
//!   number of records it billed;
//! - `recurring`: a subscription's recurring charge for the period;
//! - `total`: the invoice's total, which must equal the sum of the usage
//!   and recurring lines (a difference is a finding, not a refusal).
//!
//! Fields of a template:
//! - `delimiter`, `quote`: single ASCII characters; quoting follows RFC 4180.
//! - `decimal_separator`: `,` or `.`; `amount_unit_micros`: micro-euros per
//!   amount unit (1,000,000 for euros, 10,000 for cents).
//! - `date_format`: a chrono date format; `period_end`: `inclusive` (the
//!   period's last day) or `exclusive` (the day after it).
//! - `columns`: header name -> field (`record`, `account`,
//!   `invoice_number`, `period_start`, `period_end`, `subscription`,
//!   `charge`, `cdrs`, `amount`); every field but `cdrs` is required.
//! - `records`: the record column's values -> record type; `charges`: the
//!   charge column's values -> the usage kind (`voice`, `sms`, `mms`,
//!   `data`, `service`).

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::costs::ChargeClass;
use crate::routing::Provider;

/// The field a carrier invoice column maps to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Column {
    Record,
    Account,
    InvoiceNumber,
    PeriodStart,
    PeriodEnd,
    Subscription,
    Charge,
    Cdrs,
    Amount,
}

/// What a line of the file is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Record {
    Header,
    Usage,
    Recurring,
    Total,
}

/// Whether the stated period end is its last day or the day after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PeriodEnd {
    Inclusive,
    Exclusive,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CarrierFormat {
    pub provider: String,
    pub delimiter: char,
    pub quote: char,
    pub decimal_separator: char,
    pub amount_unit_micros: i64,
    pub date_format: String,
    pub period_end: PeriodEnd,
    pub columns: BTreeMap<String, Column>,
    pub records: BTreeMap<String, Record>,
    pub charges: BTreeMap<String, ChargeClass>,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum CarrierFormatError {
    #[error("carrier invoice format for {provider} is invalid: {reason}")]
    Invalid { provider: String, reason: String },
    #[error("no carrier invoice format for provider {0:?}; add formats/carrier_invoices/{0}.yaml")]
    Unknown(String),
}

const TEMPLATES: [(&str, &str); 7] = [
    (
        "kpn_sp16",
        include_str!("../../../formats/carrier_invoices/kpn_sp16.yaml"),
    ),
    (
        "kpn_een",
        include_str!("../../../formats/carrier_invoices/kpn_een.yaml"),
    ),
    (
        "vodafone",
        include_str!("../../../formats/carrier_invoices/vodafone.yaml"),
    ),
    (
        "t_mobile",
        include_str!("../../../formats/carrier_invoices/t_mobile.yaml"),
    ),
    (
        "routit",
        include_str!("../../../formats/carrier_invoices/routit.yaml"),
    ),
    (
        "yielder",
        include_str!("../../../formats/carrier_invoices/yielder.yaml"),
    ),
    (
        "telfort",
        include_str!("../../../formats/carrier_invoices/telfort.yaml"),
    ),
];

impl CarrierFormat {
    /// The format compiled in for `provider`.
    pub fn for_provider(provider: Provider) -> Result<Self, CarrierFormatError> {
        Self::named(provider.as_str())
    }

    /// The format compiled in for the provider named `name`.
    pub fn named(name: &str) -> Result<Self, CarrierFormatError> {
        let (_, text) = TEMPLATES
            .iter()
            .find(|(provider, _)| *provider == name)
            .ok_or_else(|| CarrierFormatError::Unknown(name.into()))?;
        Self::parse(name, text)
    }

    pub fn parse(provider: &str, text: &str) -> Result<Self, CarrierFormatError> {
        let invalid = |reason: String| CarrierFormatError::Invalid {
            provider: provider.to_string(),
            reason,
        };
        let format: CarrierFormat =
            serde_yaml::from_str(text).map_err(|e| invalid(e.to_string()))?;
        format.validate().map_err(invalid)?;
        Ok(format)
    }

    fn validate(&self) -> Result<(), String> {
        if !self.delimiter.is_ascii() || !self.quote.is_ascii() {
            return Err("delimiter and quote must be ASCII characters".into());
        }
        if !matches!(self.decimal_separator, ',' | '.') {
            return Err("decimal_separator must be ',' or '.'".into());
        }
        if self.amount_unit_micros <= 0 {
            return Err("amount_unit_micros must be positive".into());
        }
        for required in [
            Column::Record,
            Column::Account,
            Column::InvoiceNumber,
            Column::PeriodStart,
            Column::PeriodEnd,
            Column::Subscription,
            Column::Charge,
            Column::Amount,
        ] {
            let count = self.columns.values().filter(|c| **c == required).count();
            if count != 1 {
                return Err(format!(
                    "exactly one column must map to {required:?} ({count} do)"
                ));
            }
        }
        for record in [
            Record::Header,
            Record::Usage,
            Record::Recurring,
            Record::Total,
        ] {
            if !self.records.values().any(|r| *r == record) {
                return Err(format!("no record value maps to {record:?}"));
            }
        }
        if self.charges.values().any(|c| *c == ChargeClass::Fee) {
            return Err(
                "charges name usage kinds; recurring charges have a record of their own".into(),
            );
        }
        if chrono::NaiveDate::from_ymd_opt(2025, 3, 1)
            .map(|d| d.format(&self.date_format).to_string())
            .is_none_or(|s| chrono::NaiveDate::parse_from_str(&s, &self.date_format).is_err())
        {
            return Err(format!(
                "date_format {:?} does not read back the dates it writes",
                self.date_format
            ));
        }
        Ok(())
    }

    /// The header name of `column` (None for `cdrs` when the carrier
    /// leaves it out).
    pub fn header_of(&self, column: Column) -> Option<&str> {
        self.columns
            .iter()
            .find(|(_, c)| **c == column)
            .map(|(name, _)| name.as_str())
    }

    /// The value the file writes for `record`.
    pub fn record_value(&self, record: Record) -> &str {
        self.records
            .iter()
            .find(|(_, r)| **r == record)
            .map(|(value, _)| value.as_str())
            .unwrap_or_default()
    }

    /// The value the file writes for usage of `class`.
    pub fn charge_value(&self, class: ChargeClass) -> Option<&str> {
        self.charges
            .iter()
            .find(|(_, c)| **c == class)
            .map(|(value, _)| value.as_str())
    }

    /// `micros` in the file's amount unit and decimal separator, exactly
    /// (as many decimals as the unit needs, trailing zeros dropped).
    pub fn amount_text(&self, micros: i64) -> String {
        let unit = self.amount_unit_micros;
        let sign = if micros < 0 { "-" } else { "" };
        let abs = micros.unsigned_abs();
        let unit = unit.unsigned_abs();
        let whole = abs / unit;
        let rest = abs % unit;
        if rest == 0 {
            return format!("{sign}{whole}");
        }
        let digits = unit.to_string().len() - 1;
        let fraction = format!("{rest:0digits$}");
        format!(
            "{sign}{whole}{}{}",
            self.decimal_separator,
            fraction.trim_end_matches('0')
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_provider_has_a_valid_carrier_invoice_format() {
        for provider in Provider::ALL {
            let format = CarrierFormat::for_provider(provider).unwrap();
            assert_eq!(format.provider, provider.as_str());
        }
    }

    #[test]
    fn a_format_without_an_amount_column_is_rejected_with_the_reason() {
        let text = TEMPLATES[4].1.replace("  Bedrag: amount\n", "");
        let err = CarrierFormat::parse("routit", &text).unwrap_err();
        assert!(err.to_string().contains("Amount"), "{err}");
    }

    #[test]
    fn amounts_are_written_exactly_in_the_unit_and_separator_of_the_format() {
        let routit = CarrierFormat::for_provider(Provider::Routit).unwrap();
        assert_eq!(routit.amount_text(12_345_000), "12,345");
        assert_eq!(routit.amount_text(-1_500_000), "-1,5");
        assert_eq!(routit.amount_text(7_000_000), "7");
        let kpn = CarrierFormat::for_provider(Provider::KpnEen).unwrap();
        assert_eq!(kpn.amount_text(12_345_000), "1234.5");
        assert_eq!(kpn.amount_text(1), "0.0001");
    }
}
