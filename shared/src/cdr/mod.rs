//! The CDR vocabulary every part of tem shares: what a call detail record
//! is (its kind, direction and roaming zone), which customer cycle it
//! belongs to, and the marks of changed cycles. Import, billing and the
//! catalog all use it; it uses none of them.

pub mod changes;
pub mod cycle;

pub use cycle::{cycle_bounds, cycle_of, cycle_of_local, local_to_utc, BadTimeZone};

use serde::Deserialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Voice,
    Sms,
    Mms,
    Data,
    Service,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Voice => "voice",
            Kind::Sms => "sms",
            Kind::Mms => "mms",
            Kind::Data => "data",
            Kind::Service => "service",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    Outgoing,
    Incoming,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Outgoing => "outgoing",
            Direction::Incoming => "incoming",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Zone {
    Home,
    Eu,
    World,
}

impl Zone {
    pub fn as_str(self) -> &'static str {
        match self {
            Zone::Home => "home",
            Zone::Eu => "eu",
            Zone::World => "world",
        }
    }
}
