//! Customer cycles: a cycle starts at 00:00 local time on the customer's
//! start day (1..=28) and ends at the same point one month later; a CDR
//! belongs to the cycle containing its start time in the customer's time
//! zone; a cycle is named by its start date.

use chrono::offset::LocalResult;
use chrono::{DateTime, Datelike, Months, NaiveDate, NaiveDateTime, NaiveTime, TimeZone, Utc};
use chrono_tz::Tz;

/// A customer's time zone that is not an IANA name: its CDRs' cycles cannot
/// be known, and guessing a zone would bill them in the wrong cycle.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("customer {customer} has time zone {zone:?}, which is not an IANA zone name; correct the customer's time_zone with temctl apply")]
pub struct BadTimeZone {
    pub customer: i64,
    pub zone: String,
}

impl BadTimeZone {
    /// The customer's zone, or the error naming the customer.
    pub fn parse(customer: i64, zone: &str) -> Result<Tz, BadTimeZone> {
        zone.parse().map_err(|_| BadTimeZone {
            customer,
            zone: zone.to_string(),
        })
    }
}

/// The start date of the cycle containing `at` for a customer.
pub fn cycle_of(at: DateTime<Utc>, start_day: u32, zone: Tz) -> NaiveDate {
    cycle_of_local(at.with_timezone(&zone).date_naive(), start_day)
}

/// The start date of the cycle containing the local date `local`, for a
/// caller that has converted to the customer's zone already.
pub fn cycle_of_local(local: NaiveDate, start_day: u32) -> NaiveDate {
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

/// A local date and time in `zone` to UTC. A time that does not exist (the
/// hour skipped when DST starts) is refused; a time that exists twice (the
/// hour repeated when DST ends) is taken as the first, summer-time one.
pub fn local_to_utc(date: NaiveDate, time: NaiveTime, zone: Tz) -> Result<DateTime<Utc>, String> {
    let local = NaiveDateTime::new(date, time);
    match zone.from_local_datetime(&local) {
        LocalResult::Single(t) => Ok(t.with_timezone(&Utc)),
        LocalResult::Ambiguous(first, _) => Ok(first.with_timezone(&Utc)),
        LocalResult::None => Err(format!(
            "{local} does not exist in {zone} (skipped when daylight saving time starts)"
        )),
    }
}

/// The UTC bounds `[start, end)` of the cycle that starts on `cycle` at
/// 00:00 local time and ends at the same point a month later.
pub fn cycle_bounds(cycle: NaiveDate, zone: Tz) -> (DateTime<Utc>, DateTime<Utc>) {
    let start_of = |day: NaiveDate| {
        // Midnight exists on every day in the zones we bill (DST changes at
        // 02:00 or later); fall back to 01:00 if a zone ever skips it.
        local_to_utc(day, NaiveTime::MIN, zone)
            .or_else(|_| local_to_utc(day, NaiveTime::from_hms_opt(1, 0, 0).expect("valid"), zone))
            .expect("01:00 exists")
    };
    let next = cycle + Months::new(1);
    (start_of(cycle), start_of(next))
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn amsterdam_times_convert_to_utc_across_dst() {
        let zone = chrono_tz::Europe::Amsterdam;
        let at = |d: &str, t: &str| local_to_utc(d.parse().unwrap(), t.parse().unwrap(), zone);
        // Winter time is UTC+1, summer time UTC+2.
        assert_eq!(
            at("2025-01-15", "12:00:00").unwrap().to_rfc3339(),
            "2025-01-15T11:00:00+00:00"
        );
        assert_eq!(
            at("2025-07-15", "12:00:00").unwrap().to_rfc3339(),
            "2025-07-15T10:00:00+00:00"
        );
        // 30 March 2025: 02:00 jumps to 03:00.
        assert_eq!(
            at("2025-03-30", "01:59:59").unwrap().to_rfc3339(),
            "2025-03-30T00:59:59+00:00"
        );
        assert!(at("2025-03-30", "02:30:00")
            .unwrap_err()
            .contains("does not exist"));
        assert_eq!(
            at("2025-03-30", "03:00:00").unwrap().to_rfc3339(),
            "2025-03-30T01:00:00+00:00"
        );
        // 26 October 2025: 03:00 goes back to 02:00; 02:30 happens twice.
        assert_eq!(
            at("2025-10-26", "02:30:00").unwrap().to_rfc3339(),
            "2025-10-26T00:30:00+00:00"
        );
        assert_eq!(
            at("2025-10-26", "03:00:00").unwrap().to_rfc3339(),
            "2025-10-26T02:00:00+00:00"
        );
    }
}
