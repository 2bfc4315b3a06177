//! Sync profiles: one carrier account to pull usage from, with the
//! watermark of the last period fetched.
//!
//! A period is one UTC day of usage. A period is due once it is over, and
//! periods are fetched strictly in order: the watermark only moves from a
//! period to the next one, so none is fetched twice or skipped.

use chrono::NaiveDate;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SyncProfile {
    pub id: i64,
    pub name: String,
    /// Kept as text: a profile may name a provider this build does not know,
    /// which is then reported as a routing failure rather than dropped.
    pub provider: String,
    pub base_url: String,
    /// Secrets Manager id of the carrier credentials.
    pub credentials_secret: String,
    pub active: bool,
    pub first_period: NaiveDate,
    pub watermark: Option<NaiveDate>,
}

impl SyncProfile {
    /// The next period to fetch, if it is complete by `today`.
    pub fn due_period(&self, today: NaiveDate) -> Option<NaiveDate> {
        let next = match self.watermark {
            Some(watermark) => watermark.succ_opt()?,
            None => self.first_period,
        };
        (next < today).then_some(next)
    }

    /// Whether `period` has been fetched already.
    pub fn has_fetched(&self, period: NaiveDate) -> bool {
        self.watermark.is_some_and(|w| w >= period)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub enum ProfileSelection {
    All,
    Ids(Vec<i64>),
    Providers(Vec<String>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatermarkAdvance {
    /// Moved to the period.
    Advanced,
    /// Already at or past the period (a retried run).
    AlreadyThere,
    /// Moving would skip periods; the watermark is elsewhere.
    WouldSkip { watermark: Option<NaiveDate> },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day(s: &str) -> NaiveDate {
        s.parse().unwrap()
    }

    fn profile(watermark: Option<&str>) -> SyncProfile {
        SyncProfile {
            id: 1,
            name: "p".into(),
            provider: "routit".into(),
            base_url: "http://x".into(),
            credentials_secret: "s".into(),
            active: true,
            first_period: day("2025-01-01"),
            watermark: watermark.map(day),
        }
    }

    #[test]
    fn a_new_profile_starts_at_its_first_period() {
        assert_eq!(
            profile(None).due_period(day("2025-01-05")),
            Some(day("2025-01-01"))
        );
    }

    #[test]
    fn the_next_period_follows_the_watermark() {
        assert_eq!(
            profile(Some("2025-01-03")).due_period(day("2025-01-05")),
            Some(day("2025-01-04"))
        );
    }

    #[test]
    fn today_is_not_due_until_it_is_over() {
        assert_eq!(
            profile(Some("2025-01-04")).due_period(day("2025-01-05")),
            None
        );
        assert_eq!(profile(None).due_period(day("2025-01-01")), None);
    }

    #[test]
    fn fetched_means_at_or_before_the_watermark() {
        let p = profile(Some("2025-01-03"));
        assert!(p.has_fetched(day("2025-01-03")));
        assert!(p.has_fetched(day("2025-01-01")));
        assert!(!p.has_fetched(day("2025-01-04")));
        assert!(!profile(None).has_fetched(day("2025-01-01")));
    }
}
