//! BillingInsight: the anomalies of one customer's billing cycle, read from
//! the totals CalculateTotals wrote, the subscriptions and the CDRs without
//! a customer, and stored in `billing_insight`.
//!
//! [`evaluate`] holds the rules and touches no database; [`detect_insights`]
//! gathers its input through an [`InsightStore`] and replaces the cycle's
//! stored insights with its result in one transaction, so running it again
//! gives the same rows.
//!
//! # Rules
//!
//! - `cost_change`: the rated cost differs from the previous cycle's (the
//!   cycle starting one month earlier, when it has totals) by more than
//!   [`COST_CHANGE_PERCENT`]; a previous cost of 0 with a non-zero cost now
//!   is a change too (without a percentage).
//! - `idle_subscription`: a subscription active on any day of the cycle
//!   with no CDR in it (no totals line), one insight per identifier.
//! - `roaming_share`: roaming (zone other than home) is more than
//!   [`ROAMING_SHARE_PERCENT`] of a positive rated cost.
//! - `unrated_cdrs`: the cycle has CDRs no rate of the plan matched.
//! - `unassigned_cdrs`: CDRs without a customer started within the cycle's
//!   UTC bounds, one insight per provider. They are not known to be this
//!   customer's; they are listed because adding a subscription would make
//!   them so (then `AttachUnassignedCdrs`).

use std::collections::{BTreeMap, BTreeSet};

use async_trait::async_trait;
use chrono::{DateTime, Months, NaiveDate, Utc};
use serde::Serialize;
use serde_json::{json, Value};

use crate::billing::customer::{CustomerError, CustomerSettings};
use crate::billing::rating::round_half_up;
use crate::cdr::cycle_bounds;
use crate::ports::StoreError;

/// A month-on-month change of more than a quarter is beyond normal usage
/// swings of a business fleet and worth a look before the invoice goes out.
pub const COST_CHANGE_PERCENT: i64 = 25;

/// Above a fifth of the cost, roaming is usually a travel policy or a
/// wrongly configured device rather than occasional trips.
pub const ROAMING_SHARE_PERCENT: i64 = 20;

#[derive(Debug, thiserror::Error)]
pub enum InsightError {
    #[error(transparent)]
    Customer(#[from] CustomerError),
    #[error(
        "customer {customer} has no totals for cycle {cycle}; run CalculateTotals for it first"
    )]
    NoTotals { customer: i64, cycle: NaiveDate },
    #[error("database error: {0}")]
    Store(#[from] StoreError),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum InsightKind {
    CostChange,
    IdleSubscription,
    RoamingShare,
    UnratedCdrs,
    UnassignedCdrs,
}

impl InsightKind {
    pub fn as_str(self) -> &'static str {
        match self {
            InsightKind::CostChange => "cost_change",
            InsightKind::IdleSubscription => "idle_subscription",
            InsightKind::RoamingShare => "roaming_share",
            InsightKind::UnratedCdrs => "unrated_cdrs",
            InsightKind::UnassignedCdrs => "unassigned_cdrs",
        }
    }
}

/// One anomaly of a cycle. `subject` names what it is about (subscription
/// identifier or provider), or is empty when it is about the whole cycle.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Insight {
    pub kind: InsightKind,
    pub subject: String,
    pub detail: Value,
}

/// A totals line as far as the rules need it.
#[derive(Debug, Clone, PartialEq)]
pub struct LineFigures {
    pub subscription: String,
    pub kind: String,
    pub zone: String,
    pub rated_cost_micros: i64,
    pub unrated_count: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ActiveSubscription {
    pub identifier: String,
    pub provider: String,
    pub active_from: NaiveDate,
    pub active_to: Option<NaiveDate>,
}

/// A cycle's totals as far as the rules need them.
#[derive(Debug, Clone, PartialEq)]
pub struct CycleFigures {
    pub rated_cost_micros: i64,
    pub unrated_count: i64,
    /// Ordered by subscription, kind and zone.
    pub lines: Vec<LineFigures>,
}

/// What insights are computed from and where they are kept
/// (`adapters::billing::insight` on PostgreSQL).
#[async_trait]
pub trait InsightStore: Send + Sync {
    /// The cycle's totals and their lines, of the same version even while
    /// CalculateTotals replaces them; `None` when the cycle has no totals.
    async fn totals(
        &self,
        customer_id: i64,
        cycle: NaiveDate,
    ) -> Result<Option<CycleFigures>, StoreError>;
    /// The rated cost of a cycle's totals, when it has totals.
    async fn rated_cost(
        &self,
        customer_id: i64,
        cycle: NaiveDate,
    ) -> Result<Option<i64>, StoreError>;
    /// The customer's subscriptions active on at least one day of
    /// `[from, before)`, ordered by identifier, start and provider.
    async fn active_subscriptions(
        &self,
        customer_id: i64,
        from: NaiveDate,
        before: NaiveDate,
    ) -> Result<Vec<ActiveSubscription>, StoreError>;
    /// CDRs without a customer started within `[from, to)`, per provider.
    async fn unassigned_by_provider(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<BTreeMap<String, i64>, StoreError>;
    /// Replaces the cycle's stored insights with `insights` in one
    /// transaction, after any other replacement of the same cycle. An
    /// insight found again with the same detail keeps its `detected_at`.
    async fn replace_insights(
        &self,
        customer_id: i64,
        cycle: NaiveDate,
        insights: &[Insight],
    ) -> Result<(), StoreError>;
}

/// Everything the rules look at for one (customer, cycle).
#[derive(Debug, Clone, PartialEq)]
pub struct Observations {
    pub cycle: NaiveDate,
    /// UTC bounds `[start, end)` of the cycle.
    pub bounds: (DateTime<Utc>, DateTime<Utc>),
    pub rated_cost_micros: i64,
    pub unrated_count: i64,
    pub lines: Vec<LineFigures>,
    /// The previous cycle's start and rated cost, when it has totals.
    pub previous: Option<(NaiveDate, i64)>,
    /// Subscriptions active on at least one day of the cycle.
    pub active_subscriptions: Vec<ActiveSubscription>,
    /// CDRs without a customer in the cycle's bounds, per provider.
    pub unassigned_by_provider: BTreeMap<String, i64>,
}

/// `part / whole` in percent with one decimal, rounded half up.
fn percent(part: i64, whole: i64) -> f64 {
    let tenths = round_half_up(i128::from(part) * 1000, i128::from(whole).abs());
    tenths as f64 / 10.0
}

/// The insights of one cycle, ordered by kind then subject.
pub fn evaluate(o: &Observations) -> Vec<Insight> {
    let mut found = Vec::new();

    if let Some((previous_cycle, previous)) = o.previous {
        let change = i128::from(o.rated_cost_micros) - i128::from(previous);
        let changed = if previous == 0 {
            o.rated_cost_micros != 0
        } else {
            change.abs() * 100 > i128::from(COST_CHANGE_PERCENT) * i128::from(previous).abs()
        };
        if changed {
            let change_percent = (previous != 0).then(|| {
                percent(
                    i64::try_from(change).unwrap_or(if change > 0 { i64::MAX } else { i64::MIN }),
                    previous,
                )
            });
            found.push(Insight {
                kind: InsightKind::CostChange,
                subject: String::new(),
                detail: json!({
                    "previous_cycle": previous_cycle,
                    "previous_rated_cost_micros": previous,
                    "rated_cost_micros": o.rated_cost_micros,
                    "change_micros": o.rated_cost_micros.saturating_sub(previous),
                    "change_percent": change_percent,
                    "threshold_percent": COST_CHANGE_PERCENT,
                }),
            });
        }
    }

    let used: BTreeSet<&str> = o.lines.iter().map(|l| l.subscription.as_str()).collect();
    let mut idle: BTreeMap<&str, Vec<&ActiveSubscription>> = BTreeMap::new();
    for s in &o.active_subscriptions {
        if !used.contains(s.identifier.as_str()) {
            idle.entry(s.identifier.as_str()).or_default().push(s);
        }
    }
    for (identifier, subscriptions) in idle {
        found.push(Insight {
            kind: InsightKind::IdleSubscription,
            subject: identifier.to_string(),
            detail: json!({
                "subscription": identifier,
                "periods": subscriptions.iter().map(|s| json!({
                    "provider": s.provider,
                    "active_from": s.active_from,
                    "active_to": s.active_to,
                })).collect::<Vec<_>>(),
            }),
        });
    }

    let mut roaming_by_zone: BTreeMap<&str, i64> = BTreeMap::new();
    for line in o.lines.iter().filter(|l| l.zone != "home") {
        *roaming_by_zone.entry(line.zone.as_str()).or_default() += line.rated_cost_micros;
    }
    let roaming: i64 = roaming_by_zone.values().sum();
    if o.rated_cost_micros > 0
        && i128::from(roaming) * 100
            > i128::from(ROAMING_SHARE_PERCENT) * i128::from(o.rated_cost_micros)
    {
        found.push(Insight {
            kind: InsightKind::RoamingShare,
            subject: String::new(),
            detail: json!({
                "roaming_rated_cost_micros": roaming,
                "rated_cost_micros": o.rated_cost_micros,
                "share_percent": percent(roaming, o.rated_cost_micros),
                "by_zone": roaming_by_zone,
                "threshold_percent": ROAMING_SHARE_PERCENT,
            }),
        });
    }

    if o.unrated_count > 0 {
        found.push(Insight {
            kind: InsightKind::UnratedCdrs,
            subject: String::new(),
            detail: json!({
                "unrated_count": o.unrated_count,
                "lines": o.lines.iter().filter(|l| l.unrated_count > 0).map(|l| json!({
                    "subscription": l.subscription,
                    "kind": l.kind,
                    "zone": l.zone,
                    "unrated_count": l.unrated_count,
                })).collect::<Vec<_>>(),
            }),
        });
    }

    for (provider, count) in o.unassigned_by_provider.iter().filter(|(_, n)| **n > 0) {
        found.push(Insight {
            kind: InsightKind::UnassignedCdrs,
            subject: provider.clone(),
            detail: json!({
                "provider": provider,
                "cdr_count": count,
                "from": o.bounds.0,
                "to": o.bounds.1,
            }),
        });
    }

    found.sort_by(|a, b| (a.kind, &a.subject).cmp(&(b.kind, &b.subject)));
    found
}

async fn observe(
    store: &dyn InsightStore,
    customers: &dyn CustomerSettings,
    customer_id: i64,
    cycle: NaiveDate,
) -> Result<Observations, InsightError> {
    let zone = customers.load(customer_id, cycle).await?.zone;
    let bounds = cycle_bounds(cycle, zone);
    // Start days are 1..=28, so the same day exists one month earlier.
    let previous_cycle = cycle - Months::new(1);
    let next_cycle = cycle + Months::new(1);

    let totals = store
        .totals(customer_id, cycle)
        .await?
        .ok_or(InsightError::NoTotals {
            customer: customer_id,
            cycle,
        })?;
    let previous = store.rated_cost(customer_id, previous_cycle).await?;
    let active_subscriptions = store
        .active_subscriptions(customer_id, cycle, next_cycle)
        .await?;
    let unassigned_by_provider = store.unassigned_by_provider(bounds.0, bounds.1).await?;

    Ok(Observations {
        cycle,
        bounds,
        rated_cost_micros: totals.rated_cost_micros,
        unrated_count: totals.unrated_count,
        lines: totals.lines,
        previous: previous.map(|p| (previous_cycle, p)),
        active_subscriptions,
        unassigned_by_provider,
    })
}

/// Recomputes and stores the insights of one customer's cycle, replacing
/// the ones stored before. An insight found again with the same detail
/// keeps its `detected_at`, so repeating the step changes no row.
pub async fn detect_insights(
    store: &dyn InsightStore,
    customers: &dyn CustomerSettings,
    customer_id: i64,
    cycle: NaiveDate,
) -> Result<Vec<Insight>, InsightError> {
    let observations = observe(store, customers, customer_id, cycle).await?;
    let insights = evaluate(&observations);
    store
        .replace_insights(customer_id, cycle, &insights)
        .await?;
    Ok(insights)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(subscription: &str, zone: &str, rated: i64, unrated: i64) -> LineFigures {
        LineFigures {
            subscription: subscription.into(),
            kind: "voice".into(),
            zone: zone.into(),
            rated_cost_micros: rated,
            unrated_count: unrated,
        }
    }

    fn observations(rated: i64, previous: Option<i64>) -> Observations {
        let cycle: NaiveDate = "2025-02-01".parse().unwrap();
        Observations {
            cycle,
            bounds: cycle_bounds(cycle, chrono_tz::Europe::Amsterdam),
            rated_cost_micros: rated,
            unrated_count: 0,
            lines: vec![line("+31611111111", "home", rated, 0)],
            previous: previous.map(|p| ("2025-01-01".parse().unwrap(), p)),
            active_subscriptions: vec![],
            unassigned_by_provider: BTreeMap::new(),
        }
    }

    fn kinds(o: &Observations) -> Vec<InsightKind> {
        evaluate(o).into_iter().map(|i| i.kind).collect()
    }

    #[test]
    fn a_change_of_exactly_a_quarter_is_not_flagged_and_just_over_is() {
        // 1,250,000 against 1,000,000 is +25.0%: not more than 25%.
        assert!(kinds(&observations(1_250_000, Some(1_000_000))).is_empty());
        // 1,250,001 is +25.0001%.
        let found = evaluate(&observations(1_250_001, Some(1_000_000)));
        assert_eq!(found[0].kind, InsightKind::CostChange);
        // A drop counts as much as a rise: 700,000 is -30.0%.
        let found = evaluate(&observations(700_000, Some(1_000_000)));
        assert_eq!(found[0].detail["change_percent"], json!(-30.0));
        assert_eq!(found[0].detail["change_micros"], json!(-300_000));
    }

    #[test]
    fn a_first_cycle_has_no_cost_change_and_a_cycle_after_a_free_one_has() {
        assert!(kinds(&observations(1_000, None)).is_empty());
        assert!(kinds(&observations(0, Some(0))).is_empty());
        let found = evaluate(&observations(1_000, Some(0)));
        assert_eq!(found[0].kind, InsightKind::CostChange);
        assert_eq!(found[0].detail["change_percent"], Value::Null);
    }

    #[test]
    fn roaming_over_a_fifth_of_the_cost_is_flagged_per_zone() {
        let mut o = observations(1_000_000, None);
        // 200,000 of 1,000,000 is exactly 20%: not over.
        o.lines = vec![
            line("+31611111111", "home", 800_000, 0),
            line("+31611111111", "eu", 150_000, 0),
            line("+31622222222", "world", 50_000, 0),
        ];
        assert!(kinds(&o).is_empty());
        // 200,001 of 1,000,001 is 20.00008%.
        o.lines[2].rated_cost_micros = 50_001;
        o.rated_cost_micros = 1_000_001;
        let found = evaluate(&o);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].kind, InsightKind::RoamingShare);
        assert_eq!(
            found[0].detail["by_zone"],
            json!({"eu": 150_000, "world": 50_001})
        );
        assert_eq!(found[0].detail["share_percent"], json!(20.0));
    }

    #[test]
    fn a_subscription_is_idle_only_without_any_line_and_is_listed_once() {
        let mut o = observations(1_000, None);
        let active = |identifier: &str, provider: &str| ActiveSubscription {
            identifier: identifier.into(),
            provider: provider.into(),
            active_from: "2024-01-01".parse().unwrap(),
            active_to: None,
        };
        o.active_subscriptions = vec![
            active("+31611111111", "kpn"),
            active("+31633333333", "kpn"),
            active("+31633333333", "routit"),
        ];
        let found = evaluate(&o);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].subject, "+31633333333");
        assert_eq!(found[0].detail["periods"].as_array().unwrap().len(), 2);
    }

    #[test]
    fn insights_come_ordered_by_kind_then_subject() {
        let mut o = observations(1_000, Some(100));
        o.unrated_count = 1;
        o.lines[0].unrated_count = 1;
        o.unassigned_by_provider = [("vodafone".to_string(), 2), ("kpn".to_string(), 1)]
            .into_iter()
            .collect();
        let found = evaluate(&o);
        let keys: Vec<(InsightKind, &str)> =
            found.iter().map(|i| (i.kind, i.subject.as_str())).collect();
        assert_eq!(
            keys,
            vec![
                (InsightKind::CostChange, ""),
                (InsightKind::UnratedCdrs, ""),
                (InsightKind::UnassignedCdrs, "kpn"),
                (InsightKind::UnassignedCdrs, "vodafone"),
            ]
        );
    }
}
