//! The `buy_rates` section of an apply file: what each carrier may bill a
//! subscription as its recurring charge, from a date on (issue 19). The
//! carrier bill audit (`audit/`) holds each carrier invoice's recurring
//! charges against the version valid on the invoice period's first day,
//! and lists the subscriptions an account has a rate for as what that
//! account's invoice should bill.
//!
//! ```yaml
//! buy_rates:                         # natural key: (provider, account, subscription, valid_from)
//!   - provider: kpn_een
//!     account: "KPN-1001"            # the carrier's account the line is billed on
//!     subscription: "+31612345678"   # the identifier, as in `subscriptions`
//!     valid_from: 2025-01-01
//!     recurring_micros: 15000000     # per carrier period, in micro-euros
//! ```
//!
//! Rates are versions, as billing details are: each entry is created or
//! updated, others are left alone.

use chrono::NaiveDate;
use serde::Deserialize;

use crate::audit::BuyRate;
use crate::routing::Provider;

/// A buy rate and where it is in the file.
#[derive(Debug, Clone, PartialEq)]
pub struct BuyRateEntry {
    pub at: usize,
    pub rate: BuyRate,
}

/// The required fields of a `buy_rates` entry.
pub const REQUIRED: &[&str] = &[
    "provider",
    "account",
    "subscription",
    "valid_from",
    "recurring_micros",
];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct BuyRateSpec {
    provider: String,
    account: String,
    subscription: String,
    valid_from: NaiveDate,
    // Wide, so a negative amount is reported as such rather than as a type error.
    recurring_micros: i128,
}

type Found = Vec<(String, String)>;

/// The rate of a `buy_rates` entry, and its problems.
pub(super) fn buy_rate(spec: BuyRateSpec) -> (Option<BuyRateEntry>, Found) {
    let mut found = Found::new();
    let provider = match spec.provider.parse::<Provider>() {
        Ok(p) => Some(p),
        Err(_) => {
            found.push((
                ".provider".into(),
                format!(
                    "{:?} is not a known provider; known providers: {}",
                    spec.provider,
                    Provider::ALL.map(Provider::as_str).join(", ")
                ),
            ));
            None
        }
    };
    if spec.account.trim().is_empty() {
        found.push((".account".into(), "must not be empty".into()));
    } else if spec.account.trim() != spec.account {
        found.push((
            ".account".into(),
            format!("{:?} starts or ends with a space", spec.account),
        ));
    }
    if let Err(message) = super::document::check_identifier(&spec.subscription) {
        found.push((".subscription".into(), message));
    }
    let amount = match i64::try_from(spec.recurring_micros) {
        Ok(a) if a >= 0 => Some(a),
        Ok(_) => {
            found.push((
                ".recurring_micros".into(),
                format!(
                    "{} is negative; a buy rate is what the carrier may bill, 0 or more",
                    spec.recurring_micros
                ),
            ));
            None
        }
        Err(_) => {
            found.push((
                ".recurring_micros".into(),
                format!("{} is too large", spec.recurring_micros),
            ));
            None
        }
    };
    let entry = match (provider, amount) {
        (Some(provider), Some(recurring_micros)) if found.is_empty() => Some(BuyRateEntry {
            at: 0,
            rate: BuyRate {
                provider: provider.as_str().to_string(),
                account: spec.account,
                subscription: spec.subscription,
                valid_from: spec.valid_from,
                recurring_micros,
            },
        }),
        _ => None,
    };
    (entry, found)
}

/// How a rate is named in changes: `kpn_een KPN-1001 +31612345678 from 2025-01-01`.
pub fn label(rate: &BuyRate) -> String {
    format!(
        "{} {} {} from {}",
        rate.provider, rate.account, rate.subscription, rate.valid_from
    )
}

#[cfg(test)]
mod tests {
    use crate::catalog::parse;

    fn problems(text: &str) -> Vec<String> {
        parse(text, |_| None)
            .problems
            .iter()
            .map(|p| p.with_line())
            .collect()
    }

    #[test]
    fn a_buy_rate_is_read_with_its_natural_key_and_amount() {
        let parsed = parse(
            "buy_rates:\n  - {provider: kpn_een, account: K-1, subscription: \"+31612345678\", valid_from: 2025-01-01, recurring_micros: 15000000}\n",
            |_| None,
        );
        assert!(parsed.is_valid(), "{:?}", parsed.problems);
        let rate = &parsed.document.buy_rates[0].rate;
        assert_eq!(
            (rate.provider.as_str(), rate.recurring_micros),
            ("kpn_een", 15_000_000)
        );
        assert_eq!(
            super::label(rate),
            "kpn_een K-1 +31612345678 from 2025-01-01"
        );
    }

    #[test]
    fn every_missing_field_is_named_with_the_line_of_its_entry() {
        let found = problems(
            "buy_rates:\n  - provider: kpn_een\n    account: K-1\n    subscription: \"+31612345678\"\n    valid_from: 2025-01-01\n    recurring_micros: 1\n  - provider: kpn_een\n    valid_from: 2025-01-01\n",
        );
        assert_eq!(
            found,
            vec![
                "buy_rates[1].account: is required and missing (line 7)",
                "buy_rates[1].subscription: is required and missing (line 7)",
                "buy_rates[1].recurring_micros: is required and missing (line 7)",
            ]
        );
    }

    #[test]
    fn a_negative_rate_an_unknown_provider_and_a_national_number_are_refused() {
        let found = problems(
            "buy_rates:\n  - {provider: kpn, account: K-1, subscription: \"0612345678\", valid_from: 2025-01-01, recurring_micros: -5}\n",
        );
        assert_eq!(found.len(), 3, "{found:?}");
        assert!(found[0].starts_with("buy_rates[0].provider: \"kpn\" is not a known provider"));
        assert!(found[1].contains("write \"+31612345678\""), "{found:?}");
        assert!(found[2].contains("-5 is negative"), "{found:?}");
    }

    #[test]
    fn the_same_rate_twice_in_a_file_is_refused() {
        let entry = "  - {provider: kpn_een, account: K-1, subscription: \"+31612345678\", valid_from: 2025-01-01, recurring_micros: 1}\n";
        let found = problems(&format!("buy_rates:\n{entry}{entry}"));
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].starts_with("buy_rates[1]: "), "{found:?}");
    }
}
