//! Bill shock: roaming data outside the EU that costs more than a limit
//! within one day of CDR start times, evaluated on import so the alert
//! does not wait for the cycle. Carrier data arrives late (a day's export
//! the next morning, roaming records often days later), so an alert also
//! says how new the newest CDR it saw was.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Utc};
use serde::Serialize;

use crate::cdr::{Kind, Zone};

/// One CDR as the rule sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageCdr {
    pub subscription: String,
    pub started_at: DateTime<Utc>,
    pub kind: Kind,
    pub zone: Zone,
    pub amount_micros: i64,
}

/// A subscription's costliest day of roaming data outside the EU, over
/// the limit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Shock {
    pub subscription: String,
    /// The first and last CDR start of the costliest window (less than a
    /// day apart).
    pub window_start: DateTime<Utc>,
    pub window_end: DateTime<Utc>,
    pub amount_micros: i64,
    pub limit_micros: i64,
    /// The newest CDR start of this subscription in what was evaluated:
    /// what the carrier had delivered when the alert was raised.
    pub newest_cdr_at: DateTime<Utc>,
}

/// Per subscription, the costliest window of `cdrs` (world-zone data, start
/// times less than a day apart) when it costs more than `limit_micros`.
/// `cdrs` should hold each touched subscription's CDRs from a day before
/// the import's earliest to a day after its latest, so that a window an
/// import completes is seen whole.
pub fn bill_shocks(cdrs: &[UsageCdr], limit_micros: i64) -> Vec<Shock> {
    let mut per_subscription: BTreeMap<&str, Vec<&UsageCdr>> = BTreeMap::new();
    let mut newest: BTreeMap<&str, DateTime<Utc>> = BTreeMap::new();
    for cdr in cdrs {
        let at = newest.entry(&cdr.subscription).or_insert(cdr.started_at);
        *at = (*at).max(cdr.started_at);
        if cdr.kind == Kind::Data && cdr.zone == Zone::World {
            per_subscription
                .entry(&cdr.subscription)
                .or_default()
                .push(cdr);
        }
    }
    let day = Duration::days(1);
    let mut out = Vec::new();
    for (subscription, mut list) in per_subscription {
        list.sort_by_key(|c| c.started_at);
        let mut best: Option<(i64, usize, usize)> = None;
        let mut left = 0;
        let mut sum: i64 = 0;
        for (right, cdr) in list.iter().enumerate() {
            sum = sum.saturating_add(cdr.amount_micros);
            while cdr.started_at - list[left].started_at >= day {
                sum = sum.saturating_sub(list[left].amount_micros);
                left += 1;
            }
            if best.is_none_or(|(b, _, _)| sum > b) {
                best = Some((sum, left, right));
            }
        }
        if let Some((amount, l, r)) = best.filter(|(amount, _, _)| *amount > limit_micros) {
            out.push(Shock {
                subscription: subscription.to_string(),
                window_start: list[l].started_at,
                window_end: list[r].started_at,
                amount_micros: amount,
                limit_micros,
                newest_cdr_at: newest[subscription],
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cdr(sub: &str, at: &str, kind: Kind, zone: Zone, amount: i64) -> UsageCdr {
        UsageCdr {
            subscription: sub.into(),
            started_at: at.parse().unwrap(),
            kind,
            zone,
            amount_micros: amount,
        }
    }

    #[test]
    fn world_data_over_the_limit_within_a_day_is_a_shock_and_says_how_new_the_data_is() {
        let cdrs = [
            cdr(
                "a",
                "2025-03-10T08:00:00Z",
                Kind::Data,
                Zone::World,
                30_000_000,
            ),
            cdr(
                "a",
                "2025-03-10T20:00:00Z",
                Kind::Data,
                Zone::World,
                30_000_000,
            ),
            cdr(
                "a",
                "2025-03-11T07:59:59Z",
                Kind::Data,
                Zone::World,
                45_000_000,
            ),
            // EU data and world voice do not count.
            cdr(
                "a",
                "2025-03-10T09:00:00Z",
                Kind::Data,
                Zone::Eu,
                99_000_000,
            ),
            cdr(
                "a",
                "2025-03-12T09:00:00Z",
                Kind::Voice,
                Zone::World,
                99_000_000,
            ),
        ];
        let shocks = bill_shocks(&cdrs, 100_000_000);
        assert_eq!(
            shocks,
            vec![Shock {
                subscription: "a".into(),
                window_start: "2025-03-10T08:00:00Z".parse().unwrap(),
                window_end: "2025-03-11T07:59:59Z".parse().unwrap(),
                amount_micros: 105_000_000,
                limit_micros: 100_000_000,
                newest_cdr_at: "2025-03-12T09:00:00Z".parse().unwrap(),
            }]
        );
    }

    #[test]
    fn the_same_costs_spread_over_more_than_a_day_are_no_shock() {
        let cdrs = [
            cdr(
                "a",
                "2025-03-10T08:00:00Z",
                Kind::Data,
                Zone::World,
                60_000_000,
            ),
            cdr(
                "a",
                "2025-03-11T08:00:00Z",
                Kind::Data,
                Zone::World,
                60_000_000,
            ),
        ];
        assert!(bill_shocks(&cdrs, 100_000_000).is_empty());
        // Exactly at the limit is no shock either: over it is.
        let cdrs = [cdr(
            "b",
            "2025-03-10T08:00:00Z",
            Kind::Data,
            Zone::World,
            100_000_000,
        )];
        assert!(bill_shocks(&cdrs, 100_000_000).is_empty());
    }
}
