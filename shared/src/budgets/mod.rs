//! The TEM core's alerts (issue 19): budgets with several thresholds,
//! evaluated incrementally after every calculation; the bill-shock rule on
//! roaming data outside the EU, evaluated on import; and the anomaly of a
//! subscription whose cycle costs several times its usual.
//!
//! Pure domain code: the level already raised comes in, the event to send
//! and the new level go out; the store is to keep the level and the event
//! in one transaction, so that an alert crossed once is sent once.

pub mod alerts;
pub mod anomaly;
pub mod bill_shock;
pub mod cycle;
pub mod import;

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

/// What a budget watches, per cycle.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(tag = "scope", content = "id", rename_all = "snake_case")]
pub enum Scope {
    Customer,
    CostCentre(String),
    Subscription(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Budget {
    pub scope: Scope,
    /// Per cycle, in micro-units; positive.
    pub amount_micros: i64,
    /// Percentages of the amount, e.g. 80, 100 and 150.
    pub thresholds: BTreeSet<u32>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BudgetError {
    #[error("budget of {0:?}: the amount must be positive (micro-units); set it above 0")]
    Amount(Scope),
    #[error("budget of {0:?}: no thresholds; give at least one percentage, such as 80 or 100")]
    NoThresholds(Scope),
    #[error("budget of {0:?}: threshold 0% would alert on every cycle; use a positive percentage")]
    ZeroThreshold(Scope),
}

impl Budget {
    pub fn new(
        scope: Scope,
        amount_micros: i64,
        thresholds: impl IntoIterator<Item = u32>,
    ) -> Result<Self, BudgetError> {
        let thresholds: BTreeSet<u32> = thresholds.into_iter().collect();
        if amount_micros <= 0 {
            return Err(BudgetError::Amount(scope));
        }
        if thresholds.is_empty() {
            return Err(BudgetError::NoThresholds(scope));
        }
        if thresholds.contains(&0) {
            return Err(BudgetError::ZeroThreshold(scope));
        }
        Ok(Budget {
            scope,
            amount_micros,
            thresholds,
        })
    }

    /// Whether `spent` reaches `threshold` percent of the amount (exactly,
    /// in integers: 80% of 10.00 is reached by 8.00, not by 7.999999).
    pub fn reached(&self, spent_micros: i64, threshold: u32) -> bool {
        i128::from(spent_micros) * 100 >= i128::from(self.amount_micros) * i128::from(threshold)
    }
}

/// A change of a budget's alert level, to send once. The level is the
/// highest threshold reached: a rise alerts at the new level (a jump past
/// several thresholds sends one alert, at the highest), a fall resolves
/// the level that was raised, saying where spending is now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum BudgetEvent {
    /// Spending reached `threshold`, the new level.
    Alert {
        threshold: u32,
        spent_micros: i64,
        budget_micros: i64,
    },
    /// Spending fell back under `threshold`, the level that had alerted (a
    /// correction); `level` is the threshold still reached, if any.
    Resolved {
        threshold: u32,
        level: Option<u32>,
        spent_micros: i64,
        budget_micros: i64,
    },
}

/// A budget's alert level for one cycle: the highest threshold alerted
/// and not resolved.
pub type Level = Option<u32>;

/// The highest threshold `spent` reaches.
pub fn level_of(budget: &Budget, spent_micros: i64) -> Level {
    budget
        .thresholds
        .iter()
        .rev()
        .copied()
        .find(|&t| budget.reached(spent_micros, t))
}

/// Compares this calculation's spending with the level raised before:
/// the same level sends nothing (a coalesced or repeated calculation), a
/// higher one alerts, a lower one resolves. Returns the event, if any, and
/// the level to keep.
pub fn evaluate(budget: &Budget, spent_micros: i64, raised: Level) -> (Option<BudgetEvent>, Level) {
    let now = level_of(budget, spent_micros);
    let event = match (raised, now) {
        (before, Some(threshold)) if before.is_none_or(|b| threshold > b) => {
            Some(BudgetEvent::Alert {
                threshold,
                spent_micros,
                budget_micros: budget.amount_micros,
            })
        }
        (Some(threshold), level) if level.is_none_or(|l| l < threshold) => {
            Some(BudgetEvent::Resolved {
                threshold,
                level,
                spent_micros,
                budget_micros: budget.amount_micros,
            })
        }
        _ => None,
    };
    (event, now)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget() -> Budget {
        Budget::new(Scope::Customer, 100_000_000, [80, 100, 150]).unwrap()
    }

    fn kind(event: &Option<BudgetEvent>) -> Option<(bool, u32)> {
        event.as_ref().map(|e| match e {
            BudgetEvent::Alert { threshold, .. } => (true, *threshold),
            BudgetEvent::Resolved { threshold, .. } => (false, *threshold),
        })
    }

    #[test]
    fn crossing_80_then_100_then_correcting_under_80_sends_two_alerts_and_one_resolution() {
        let b = budget();
        let (e, level) = evaluate(&b, 85_000_000, None);
        assert_eq!(kind(&e), Some((true, 80)));
        // The same spending again (a coalesced calculation) sends nothing.
        let (e, level) = evaluate(&b, 85_000_000, level);
        assert_eq!(e, None);
        let (e, level) = evaluate(&b, 101_000_000, level);
        assert_eq!(kind(&e), Some((true, 100)));
        let (e, level) = evaluate(&b, 79_000_000, level);
        assert_eq!(
            e,
            Some(BudgetEvent::Resolved {
                threshold: 100,
                level: None,
                spent_micros: 79_000_000,
                budget_micros: 100_000_000
            })
        );
        assert_eq!(level, None);
        let (e, _) = evaluate(&b, 79_000_000, level);
        assert_eq!(e, None, "resolved once");
    }

    #[test]
    fn falling_to_a_lower_threshold_resolves_the_higher_level_and_keeps_the_lower() {
        let (e, level) = evaluate(&budget(), 120_000_000, Some(150));
        assert!(matches!(
            e,
            Some(BudgetEvent::Resolved {
                threshold: 150,
                level: Some(100),
                ..
            })
        ));
        assert_eq!(level, Some(100));
    }

    #[test]
    fn a_threshold_is_reached_exactly_at_its_percentage() {
        let b = budget();
        assert!(b.reached(80_000_000, 80));
        assert!(!b.reached(79_999_999, 80));
        assert!(b.reached(150_000_000, 150));
        assert!(!b.reached(i64::MIN, 1));
        assert!(b.reached(i64::MAX, 150));
    }

    #[test]
    fn a_jump_past_every_threshold_alerts_once_at_the_highest() {
        let (e, level) = evaluate(&budget(), 200_000_000, None);
        assert_eq!(kind(&e), Some((true, 150)));
        assert_eq!(level, Some(150));
    }

    #[test]
    fn a_budget_needs_a_positive_amount_and_positive_thresholds() {
        assert_eq!(
            Budget::new(Scope::Customer, 0, [80]),
            Err(BudgetError::Amount(Scope::Customer))
        );
        assert!(matches!(
            Budget::new(Scope::Subscription("s".into()), 1, []),
            Err(BudgetError::NoThresholds(_))
        ));
        assert!(matches!(
            Budget::new(Scope::CostCentre("cc".into()), 1, [0, 80]),
            Err(BudgetError::ZeroThreshold(_))
        ));
    }
}
