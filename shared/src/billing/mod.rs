//! Billing cycles.
//!
//! A cycle starts at 00:00 local time on the customer's start day (1..=28)
//! and ends at the same point one month later; a CDR belongs to the cycle
//! containing its start time in the customer's time zone; a cycle is named
//! by its start date.

pub mod calculation;
pub mod changes;
pub mod customer;
mod encoding;
pub mod explain;
pub mod handler;
pub mod history;
pub mod insight;
pub mod invoice;
pub mod pricings;
pub mod rating;
pub mod sweep;
pub mod totals;

use chrono::{DateTime, Datelike, NaiveDate, Utc};
use chrono_tz::Tz;

/// Micro-units as euros with all six decimals, exactly (no float).
pub fn euros(micros: i64) -> String {
    let sign = if micros < 0 { "-" } else { "" };
    let abs = micros.unsigned_abs();
    format!("{sign}{}.{:06}", abs / 1_000_000, abs % 1_000_000)
}

/// The start date of the cycle containing `at` for a customer.
pub fn cycle_of(at: DateTime<Utc>, start_day: u32, zone: Tz) -> NaiveDate {
    let local = at.with_timezone(&zone).date_naive();
    let day = start_day.clamp(1, 28);
    if local.day() >= day {
        NaiveDate::from_ymd_opt(local.year(), local.month(), day)
            .expect("day 1..=28 exists in every month")
    } else {
        let previous = local.with_day(1).expect("day 1 exists") - chrono::Duration::days(1);
        NaiveDate::from_ymd_opt(previous.year(), previous.month(), day)
            .expect("day 1..=28 exists in every month")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn euros_show_every_micro_unit_exactly() {
        assert_eq!(euros(0), "0.000000");
        assert_eq!(euros(1), "0.000001");
        assert_eq!(euros(12_500_000), "12.500000");
        assert_eq!(euros(-1_234_567), "-1.234567");
        assert_eq!(euros(i64::MIN), "-9223372036854.775808");
    }

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn a_cdr_belongs_to_the_cycle_starting_on_or_before_its_local_date() {
        let ams = chrono_tz::Europe::Amsterdam;
        assert_eq!(
            cycle_of(at("2025-01-20T10:00:00Z"), 15, ams).to_string(),
            "2025-01-15"
        );
        assert_eq!(
            cycle_of(at("2025-01-10T10:00:00Z"), 15, ams).to_string(),
            "2024-12-15"
        );
        assert_eq!(
            cycle_of(at("2025-03-01T10:00:00Z"), 1, ams).to_string(),
            "2025-03-01"
        );
    }

    #[test]
    fn the_cycle_boundary_is_local_midnight() {
        let ams = chrono_tz::Europe::Amsterdam;
        // 23:30 UTC on 14 January is 00:30 on the 15th in Amsterdam.
        assert_eq!(
            cycle_of(at("2025-01-14T23:30:00Z"), 15, ams).to_string(),
            "2025-01-15"
        );
        assert_eq!(
            cycle_of(at("2025-01-14T22:59:59Z"), 15, ams).to_string(),
            "2024-12-15"
        );
    }
}
