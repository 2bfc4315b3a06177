//! The TEM core's first question: where does a customer's telecom money go
//! inside its own organisation (issue 19).
//!
//! - [`tree`]: a customer's organisation as a tree of cost nodes (division
//!   -> department -> cost centre -> employee, any depth), validated once.
//! - [`allocation`]: each subscription's charges of a cycle split over the
//!   tree by its effective-dated assignment (whole, per charge class, or by
//!   weights), exact to the micro-unit.
//!
//! - [`cycle`]: a cycle's invoice allocated through a narrow store trait,
//!   checked to add up to the invoice's net total.
//! - [`gl`]: the chargeback as general-ledger rows and CSV.
//! - [`export`]: a final invoice's chargeback stored by the chain, its GL
//!   CSV beside the invoice in S3.
//! - [`report`]: the chargeback as text (temctl, the local run).
//!
//! Pure domain code: no database, no AWS; the catalog and the chain steps
//! feed it.

pub mod allocation;
pub mod cycle;
pub mod export;
pub mod gl;
pub mod report;
pub mod tree;

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::cdr::Kind;

/// What a charge is for, as split rules and general-ledger codes see it:
/// the usage of one CDR kind, or a recurring fee.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChargeClass {
    Voice,
    Sms,
    Mms,
    Data,
    Service,
    Fee,
}

impl ChargeClass {
    pub const ALL: [ChargeClass; 6] = [
        ChargeClass::Voice,
        ChargeClass::Sms,
        ChargeClass::Mms,
        ChargeClass::Data,
        ChargeClass::Service,
        ChargeClass::Fee,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ChargeClass::Voice => "voice",
            ChargeClass::Sms => "sms",
            ChargeClass::Mms => "mms",
            ChargeClass::Data => "data",
            ChargeClass::Service => "service",
            ChargeClass::Fee => "fee",
        }
    }
}

impl From<Kind> for ChargeClass {
    fn from(kind: Kind) -> Self {
        match kind {
            Kind::Voice => ChargeClass::Voice,
            Kind::Sms => ChargeClass::Sms,
            Kind::Mms => ChargeClass::Mms,
            Kind::Data => ChargeClass::Data,
            Kind::Service => ChargeClass::Service,
        }
    }
}

impl fmt::Display for ChargeClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ChargeClass {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ChargeClass::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or_else(|| {
                format!("unknown charge class {s:?}; use voice, sms, mms, data, service or fee")
            })
    }
}
