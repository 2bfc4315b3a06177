//! Which customer months are past their retention, and which of them may
//! go: the pure decisions of the archive (`maintenance::run` does the work).
//!
//! A month of CDRs is a calendar month in UTC, as the partitions are. A
//! customer keeps `months` of CDRs: a month goes once all of it is older
//! than that, i.e. the first month kept is the month `months` before this
//! one's day. With 24 months on 2026-12-07, November 2024 goes and
//! December 2024 stays.

use std::collections::BTreeMap;

use chrono::{DateTime, Months, NaiveDate, Utc};
use serde::Serialize;

use crate::maintenance::partitions::month_of;

/// The stack's default when neither the customer nor the deployment
/// (CDR_RETENTION_MONTHS) says otherwise: two years, longer than a bill
/// can usually be contested. Traffic data may be kept only as long as a
/// bill can be, so a contract or the law may ask for less: set it per
/// customer.
pub const DEFAULT_RETENTION_MONTHS: u16 = 24;

/// How long CDRs are kept: the stack's default, and each customer's own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetentionPolicy {
    pub default_months: u16,
    pub per_customer: BTreeMap<i64, u16>,
}

impl RetentionPolicy {
    pub fn months_for(&self, customer: Option<i64>) -> u16 {
        customer
            .and_then(|c| self.per_customer.get(&c).copied())
            .unwrap_or(self.default_months)
    }

    /// The first month a customer keeps on `today`: earlier months are
    /// past retention.
    pub fn first_kept_month(&self, customer: Option<i64>, today: NaiveDate) -> NaiveDate {
        first_kept_month(today, self.months_for(customer))
    }

    /// The latest first-kept month over every customer: no month from it
    /// on is past anyone's retention, so the search for expired months
    /// reads only the partitions before it.
    pub fn latest_first_kept_month(&self, today: NaiveDate) -> NaiveDate {
        let shortest = self
            .per_customer
            .values()
            .copied()
            .chain([self.default_months])
            .min()
            .unwrap_or(self.default_months);
        first_kept_month(today, shortest)
    }
}

pub fn first_kept_month(today: NaiveDate, months: u16) -> NaiveDate {
    month_of(today)
        .checked_sub_months(Months::new(u32::from(months)))
        .unwrap_or(NaiveDate::MIN)
}

/// Why a month past its retention stays for now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Blocker {
    /// A cycle of the customer that overlaps the month has a draft
    /// invoice (or a draft correction): its CDRs may still change it.
    DraftInvoice { cycle: NaiveDate, invoice_id: i64 },
    /// A cycle that overlaps the month was calculated but never invoiced.
    NotInvoiced { cycle: NaiveDate },
    /// A carrier invoice of the month has findings still open or in
    /// dispute: their evidence is the month's CDRs.
    UnfinishedAudit {
        carrier_invoice_id: i64,
        open_findings: u64,
    },
    /// The month was archived and its rows removed, and rows of it came
    /// in since (a late file). Restore the month (`temctl archive
    /// restore`); the next run archives it again with them.
    RowsAfterRemoval { rows: u64 },
}

impl Blocker {
    pub fn describe(&self) -> String {
        match self {
            Blocker::DraftInvoice { cycle, invoice_id } => {
                format!("cycle {cycle} has draft invoice {invoice_id}")
            }
            Blocker::NotInvoiced { cycle } => format!("cycle {cycle} is not invoiced yet"),
            Blocker::UnfinishedAudit {
                carrier_invoice_id,
                open_findings,
            } => format!(
                "carrier invoice {carrier_invoice_id} has {open_findings} open or disputed findings"
            ),
            Blocker::RowsAfterRemoval { rows } => format!(
                "{rows} CDRs arrived after the month was archived; restore it with `temctl archive restore` to archive them with it"
            ),
        }
    }
}

/// Where a customer's month is in the archive (`cdr_archive`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ArchiveState {
    /// Files and manifest in S3; rows still in the database.
    Written,
    /// Rows removed from the database.
    Removed,
    /// Brought back by a restore; kept until the date.
    Restored { keep_until: DateTime<Utc> },
}

/// What the archive does with one expired customer month.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Write its files, then remove its rows.
    Write,
    /// Its files are written (an earlier run stopped before the removal):
    /// remove its rows.
    Remove,
    /// Leave it this run, for the reasons given.
    Keep(Vec<Blocker>),
    /// Restored for a dispute: leave it until then.
    Held { until: DateTime<Utc> },
}

/// The decision for one customer month past its retention that still has
/// rows, from its archive state and its blockers.
pub fn decide(state: Option<ArchiveState>, blockers: Vec<Blocker>, now: DateTime<Utc>) -> Decision {
    match state {
        Some(ArchiveState::Restored { keep_until }) if keep_until > now => {
            Decision::Held { until: keep_until }
        }
        _ if !blockers.is_empty() => Decision::Keep(blockers),
        Some(ArchiveState::Written) => Decision::Remove,
        // Rows in a removed month arrived after it went; blockers() names
        // them, so this is reached only by a store that did not.
        Some(ArchiveState::Removed) => Decision::Keep(vec![]),
        Some(ArchiveState::Restored { .. }) | None => Decision::Write,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn day(s: &str) -> NaiveDate {
        s.parse().unwrap()
    }

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 12, 7, 3, 0, 0).unwrap()
    }

    #[test]
    fn with_24_months_november_two_years_ago_goes_and_december_stays() {
        assert_eq!(first_kept_month(day("2026-12-07"), 24), day("2024-12-01"));
        assert_eq!(first_kept_month(day("2026-12-31"), 1), day("2026-11-01"));
    }

    #[test]
    fn a_customer_s_own_retention_wins_over_the_default() {
        let policy = RetentionPolicy {
            default_months: 24,
            per_customer: BTreeMap::from([(7, 6)]),
        };
        assert_eq!(
            policy.first_kept_month(Some(7), day("2026-12-07")),
            day("2026-06-01")
        );
        assert_eq!(
            policy.first_kept_month(Some(8), day("2026-12-07")),
            day("2024-12-01")
        );
        assert_eq!(
            policy.first_kept_month(None, day("2026-12-07")),
            day("2024-12-01")
        );
        assert_eq!(
            policy.latest_first_kept_month(day("2026-12-07")),
            day("2026-06-01")
        );
    }

    #[test]
    fn a_blocked_month_is_kept_even_when_its_files_are_written() {
        let blocker = Blocker::DraftInvoice {
            cycle: day("2024-10-01"),
            invoice_id: 3,
        };
        assert_eq!(
            decide(Some(ArchiveState::Written), vec![blocker.clone()], now()),
            Decision::Keep(vec![blocker])
        );
    }

    #[test]
    fn a_month_whose_files_are_written_is_removed_without_writing_again() {
        assert_eq!(
            decide(Some(ArchiveState::Written), vec![], now()),
            Decision::Remove
        );
        assert_eq!(decide(None, vec![], now()), Decision::Write);
    }

    #[test]
    fn a_restored_month_is_held_until_its_date_then_archived_again() {
        let until = now() + chrono::Duration::days(1);
        let held = Some(ArchiveState::Restored { keep_until: until });
        assert_eq!(decide(held, vec![], now()), Decision::Held { until });
        let past = Some(ArchiveState::Restored {
            keep_until: now() - chrono::Duration::days(1),
        });
        assert_eq!(decide(past, vec![], now()), Decision::Write);
    }
}
