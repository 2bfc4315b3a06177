//! A subscription whose cycle costs more than `k` times the median of its
//! last three cycles, and more than a floor (so that a line going from
//! 0.10 to 0.50 is no anomaly).

use serde::Serialize;

/// The rule's settings: `k` in percent (300 is three times) and the floor
/// in micro-units.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AnomalyRule {
    pub k_percent: u32,
    pub floor_micros: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Anomaly {
    pub cost_micros: i64,
    pub median_micros: i64,
    /// max(floor, k x median): what the cost exceeded.
    pub limit_micros: i64,
}

/// `previous` holds the subscription's earlier cycles' costs, newest
/// first. With fewer than three there is no usual to compare with, so no
/// anomaly (a new line's first cycles are not anomalies).
pub fn anomaly(rule: AnomalyRule, cost_micros: i64, previous: &[i64]) -> Option<Anomaly> {
    if previous.len() < 3 {
        return None;
    }
    let mut last = [previous[0], previous[1], previous[2]];
    last.sort_unstable();
    let median = last[1];
    let scaled = i128::from(median.max(0)) * i128::from(rule.k_percent) / 100;
    let limit = i64::try_from(scaled)
        .unwrap_or(i64::MAX)
        .max(rule.floor_micros);
    (cost_micros > limit).then_some(Anomaly {
        cost_micros,
        median_micros: median,
        limit_micros: limit,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const RULE: AnomalyRule = AnomalyRule {
        k_percent: 300,
        floor_micros: 5_000_000,
    };

    #[test]
    fn a_cycle_over_three_times_the_median_of_the_last_three_is_an_anomaly() {
        // Median of 10, 12 and 40 is 12: the limit is 36.
        let got = anomaly(RULE, 36_000_001, &[40_000_000, 10_000_000, 12_000_000, 1]);
        assert_eq!(
            got,
            Some(Anomaly {
                cost_micros: 36_000_001,
                median_micros: 12_000_000,
                limit_micros: 36_000_000
            })
        );
        assert_eq!(
            anomaly(RULE, 36_000_000, &[40_000_000, 10_000_000, 12_000_000]),
            None
        );
    }

    #[test]
    fn small_amounts_under_the_floor_and_new_lines_are_no_anomaly() {
        assert_eq!(anomaly(RULE, 4_000_000, &[100_000, 100_000, 100_000]), None);
        assert!(anomaly(RULE, 6_000_000, &[100_000, 100_000, 100_000]).is_some());
        assert_eq!(anomaly(RULE, 900_000_000, &[1, 1]), None);
    }
}
