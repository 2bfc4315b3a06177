//! Provider format templates: how one carrier writes its CSV, as data
//! (`formats/{provider}.yaml`, compiled into the binaries).
//!
//! Fields of a template:
//! - `delimiter`, `quote`: single ASCII characters; quoting follows RFC 4180.
//! - `encoding`: `utf-8` (a BOM is allowed) or `windows-1252` (Latin-1).
//! - `columns`: header name -> canonical field. Every column must be in the
//!   header (in any order); a missing one refuses the file. Without an
//!   `external_id` column, a hash of the normalised record is the key.
//! - `date_format` + `time_format` (chrono formats, local time) or
//!   `datetime_format` (`rfc3339` or a chrono format with an offset).
//! - `time_zone`: IANA zone of local times (DST-aware).
//! - `decimal_separator`: `,` or `.` for volume and cost.
//! - `duration`: `hms` (HH:MM:SS) or `seconds`.
//! - `volume_unit_bytes`: bytes per volume unit (1024 for kilobytes).
//! - `cost_unit_micros`: micro-euros per cost unit (1,000,000 for euros,
//!   10,000 for cents).
//! - `kinds`, `directions`, `zones`: provider values -> canonical values.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::cdr::{Direction, Kind, Zone};
use crate::routing::Provider;

/// The canonical field a provider column maps to. `Cost` stays last: the
/// parser sizes its per-field table by it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Field {
    ExternalId,
    Subscription,
    StartedAt,
    Date,
    Time,
    Kind,
    Direction,
    Destination,
    RoamingZone,
    Duration,
    Volume,
    Units,
    Cost,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DurationFormat {
    Hms,
    Seconds,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum Encoding {
    #[serde(rename = "utf-8")]
    Utf8,
    #[serde(rename = "windows-1252")]
    Windows1252,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FormatTemplate {
    pub provider: String,
    pub delimiter: char,
    pub quote: char,
    pub encoding: Encoding,
    pub columns: BTreeMap<String, Field>,
    #[serde(default)]
    pub date_format: Option<String>,
    #[serde(default)]
    pub time_format: Option<String>,
    #[serde(default)]
    pub datetime_format: Option<String>,
    pub time_zone: chrono_tz::Tz,
    pub decimal_separator: char,
    pub duration: DurationFormat,
    pub volume_unit_bytes: u64,
    pub cost_unit_micros: i64,
    pub kinds: BTreeMap<String, Kind>,
    pub directions: BTreeMap<String, Direction>,
    pub zones: BTreeMap<String, Zone>,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum FormatError {
    #[error("format template for {provider} is invalid: {reason}")]
    Invalid { provider: String, reason: String },
    #[error("no format template for provider {0:?}; add formats/{0}.yaml")]
    Unknown(String),
}

const TEMPLATES: [(&str, &str); 7] = [
    ("kpn_sp16", include_str!("../../../formats/kpn_sp16.yaml")),
    ("kpn_een", include_str!("../../../formats/kpn_een.yaml")),
    ("vodafone", include_str!("../../../formats/vodafone.yaml")),
    ("t_mobile", include_str!("../../../formats/t_mobile.yaml")),
    ("routit", include_str!("../../../formats/routit.yaml")),
    ("yielder", include_str!("../../../formats/yielder.yaml")),
    ("telfort", include_str!("../../../formats/telfort.yaml")),
];

impl FormatTemplate {
    /// The template compiled in for `provider`.
    pub fn for_provider(provider: Provider) -> Result<Self, FormatError> {
        let (_, text) = TEMPLATES
            .iter()
            .find(|(name, _)| *name == provider.as_str())
            .ok_or_else(|| FormatError::Unknown(provider.as_str().into()))?;
        Self::parse(provider.as_str(), text)
    }

    pub fn parse(provider: &str, text: &str) -> Result<Self, FormatError> {
        let invalid = |reason: String| FormatError::Invalid {
            provider: provider.to_string(),
            reason,
        };
        let template: FormatTemplate =
            serde_yaml::from_str(text).map_err(|e| invalid(e.to_string()))?;
        template.validate().map_err(invalid)?;
        Ok(template)
    }

    fn validate(&self) -> Result<(), String> {
        if !self.delimiter.is_ascii() || !self.quote.is_ascii() {
            return Err("delimiter and quote must be ASCII characters".into());
        }
        if !matches!(self.decimal_separator, ',' | '.') {
            return Err("decimal_separator must be ',' or '.'".into());
        }
        let has = |field: Field| self.columns.values().any(|f| *f == field);
        // Without an external id column the natural key is a content hash.
        for required in [
            Field::Subscription,
            Field::Kind,
            Field::Direction,
            Field::Cost,
        ] {
            if !has(required) {
                return Err(format!("no column maps to {required:?}"));
            }
        }
        match (&self.datetime_format, has(Field::StartedAt), has(Field::Date) && has(Field::Time)) {
            (Some(_), true, false) => {}
            (None, false, true) if self.date_format.is_some() && self.time_format.is_some() => {}
            _ => {
                return Err(
                    "give either a started_at column with datetime_format, or date and time columns with date_format and time_format"
                        .into(),
                )
            }
        }
        if self.volume_unit_bytes == 0 || self.cost_unit_micros <= 0 {
            return Err("volume_unit_bytes and cost_unit_micros must be positive".into());
        }
        Ok(())
    }

    /// The header names in the template, for error messages.
    pub fn expected_header(&self) -> String {
        self.columns
            .keys()
            .cloned()
            .collect::<Vec<_>>()
            .join(&self.delimiter.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_provider_has_a_valid_template() {
        for provider in Provider::ALL {
            let template = FormatTemplate::for_provider(provider).unwrap();
            assert_eq!(template.provider, provider.as_str());
        }
    }

    #[test]
    fn the_routit_template_is_the_agreed_format() {
        let t = FormatTemplate::for_provider(Provider::Routit).unwrap();
        assert_eq!((t.delimiter, t.decimal_separator), (';', ','));
        assert_eq!(t.columns.len(), 11);
        assert_eq!(t.time_zone, chrono_tz::Europe::Amsterdam);
        assert_eq!(t.kinds["Dienst"], Kind::Service);
        assert_eq!(t.zones["WERELD"], Zone::World);
    }

    #[test]
    fn a_template_without_a_time_source_is_rejected_with_the_reason() {
        let text =
            include_str!("../../../formats/routit.yaml").replace("time_format: \"%H:%M:%S\"\n", "");
        let err = FormatTemplate::parse("routit", &text).unwrap_err();
        assert!(
            err.to_string().contains("date_format and time_format"),
            "{err}"
        );
    }

    #[test]
    fn a_misspelled_template_field_is_rejected() {
        let text = include_str!("../../../formats/routit.yaml").replace("delimiter:", "delimter:");
        assert!(FormatTemplate::parse("routit", &text).is_err());
    }
}
