//! The carrier bill audit (issue 19): each carrier's own invoice for a
//! billing period, compared line by line with what tem knows, so that a
//! customer pays its carriers no more than the contract says.
//!
//! - Usage: per subscription and kind, the carrier's usage charge against
//!   the provider cost of the CDRs tem imported for that period (and, when
//!   the carrier states it, the number of CDRs).
//! - Recurring charges: against the contracted buy rate of the
//!   subscription.
//! - Inventory: billed but never active, billed after termination, billed
//!   twice, active but not billed.
//!
//! Every difference beyond the tolerance is a [`Finding`] with both
//! amounts and its evidence (the file and line, and which CDRs). Pure
//! domain code: parsing the carrier's file and storing findings belong to
//! the adapters.
//!
//! - [`format`] and [`parse`]: each carrier's invoice file, as data, read
//!   streamed with its rejected lines and its totals check.
//! - [`run`]: one file audited and its findings stored, idempotently,
//!   through the [`run::AuditStore`] trait.
//! - [`dispute`]: the findings as operators work them (dispute, credit,
//!   write off) and the dispute report per carrier.

pub mod dispute;
pub mod format;
pub mod parse;
pub mod run;

use std::collections::{BTreeMap, BTreeSet};

use chrono::NaiveDate;
use serde::Serialize;

use crate::costs::ChargeClass;

/// A contracted recurring charge: what the carrier may bill `subscription`
/// on `account` per period, from `valid_from` on (`buy_rates` in `temctl
/// apply`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BuyRate {
    pub provider: String,
    pub account: String,
    pub subscription: String,
    pub valid_from: NaiveDate,
    pub recurring_micros: i64,
}

/// One line of a carrier's invoice, as its format parsed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CarrierLine {
    /// 1-based line of the carrier's file.
    pub line: u32,
    pub subscription: String,
    pub charge: CarrierCharge,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CarrierCharge {
    /// Usage of one kind in the period; `cdrs` when the carrier states
    /// how many records it billed.
    Usage {
        class: ChargeClass,
        amount_micros: i64,
        cdrs: Option<u64>,
    },
    /// The subscription's recurring charge for the period.
    Recurring { amount_micros: i64 },
}

/// A carrier's invoice for one account and period.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CarrierInvoice {
    pub provider: String,
    pub account: String,
    pub invoice_number: String,
    /// The S3 key of the file (`carrier-invoices/...`).
    pub file: String,
    pub period_start: NaiveDate,
    /// Exclusive.
    pub period_end: NaiveDate,
    pub lines: Vec<CarrierLine>,
}

/// What tem knows of one subscription for the period.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Known {
    /// Per kind: the CDRs' provider cost and their number.
    pub usage: BTreeMap<ChargeClass, (i64, u64)>,
    /// The contracted monthly buy rate, when the buy-rate table has one.
    pub buy_rate_micros: Option<i64>,
    /// The subscription's active dates in the inventory.
    pub active_from: Option<NaiveDate>,
    /// Exclusive; `None` while active.
    pub active_to: Option<NaiveDate>,
}

/// How far an amount may differ before it is a finding: the larger of an
/// absolute amount and a share of the expected amount.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tolerance {
    pub micros: i64,
    /// In basis points (100 is 1%).
    pub basis_points: u32,
}

impl Tolerance {
    pub fn allows(&self, billed: i64, expected: i64) -> bool {
        let off = (i128::from(billed) - i128::from(expected)).abs();
        let share = i128::from(expected).abs() * i128::from(self.basis_points) / 10_000;
        off <= i128::from(self.micros).max(share)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FindingKind {
    /// The carrier billed more usage (or more records) than the CDRs it
    /// delivered: records are missing, or the usage is overcharged.
    MissingCdrs,
    /// The carrier billed less usage than its CDRs cost (in the customer's
    /// disfavour only when it is corrected later: reported all the same).
    UsageUnderbilled,
    /// The recurring charge is over the contracted buy rate.
    RateOvercharged,
    /// The recurring charge is under the contracted buy rate.
    RateUndercharged,
    /// A recurring charge with no buy rate to hold it against.
    NoBuyRate,
    /// Billed but not in the inventory at all.
    BilledNotActive,
    /// Billed for a period after the subscription's termination.
    BilledAfterTermination,
    /// More than one recurring charge (or usage line of a kind) for one
    /// subscription in one invoice.
    BilledTwice,
    /// Active in the inventory through the period but not on the invoice.
    ActiveNotBilled,
    /// The file's stated total is not the sum of its lines.
    TotalsMismatch,
}

impl FindingKind {
    pub const ALL: [FindingKind; 10] = [
        FindingKind::MissingCdrs,
        FindingKind::UsageUnderbilled,
        FindingKind::RateOvercharged,
        FindingKind::RateUndercharged,
        FindingKind::NoBuyRate,
        FindingKind::BilledNotActive,
        FindingKind::BilledAfterTermination,
        FindingKind::BilledTwice,
        FindingKind::ActiveNotBilled,
        FindingKind::TotalsMismatch,
    ];

    /// The name stored in `audit_finding.kind` and printed by `temctl`.
    pub fn as_str(self) -> &'static str {
        match self {
            FindingKind::MissingCdrs => "missing_cdrs",
            FindingKind::UsageUnderbilled => "usage_underbilled",
            FindingKind::RateOvercharged => "rate_overcharged",
            FindingKind::RateUndercharged => "rate_undercharged",
            FindingKind::NoBuyRate => "no_buy_rate",
            FindingKind::BilledNotActive => "billed_not_active",
            FindingKind::BilledAfterTermination => "billed_after_termination",
            FindingKind::BilledTwice => "billed_twice",
            FindingKind::ActiveNotBilled => "active_not_billed",
            FindingKind::TotalsMismatch => "totals_mismatch",
        }
    }
}

impl std::fmt::Display for FindingKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for FindingKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        FindingKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| format!("unknown finding kind {s:?}"))
    }
}

/// Where a finding comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Evidence {
    pub file: String,
    /// The carrier file's lines (empty for something it left out).
    pub lines: Vec<u32>,
    /// Which CDRs: the subscription, kind and period they were summed over
    /// (with their number), when CDRs were compared.
    pub cdrs: Option<CdrSelection>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CdrSelection {
    pub subscription: String,
    pub class: ChargeClass,
    pub from: NaiveDate,
    pub to: NaiveDate,
    pub count: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub kind: FindingKind,
    pub subscription: String,
    pub class: Option<ChargeClass>,
    /// What the carrier billed, and what tem expected (0 where it expected
    /// nothing).
    pub billed_micros: i64,
    pub expected_micros: i64,
    pub evidence: Evidence,
}

impl Finding {
    /// What a successful dispute recovers: the overcharge, never negative.
    pub fn overcharge_micros(&self) -> i64 {
        (self.billed_micros - self.expected_micros).max(0)
    }
}

/// A usage line with its amount and stated number of CDRs.
type UsageLine<'a> = (&'a CarrierLine, i64, Option<u64>);

/// Compares `invoice` with `known` (per subscription of the provider's
/// account for the period). Findings come out in a stable order
/// (subscription, kind, class), so an audit run again gives the same list.
pub fn audit(
    invoice: &CarrierInvoice,
    known: &BTreeMap<String, Known>,
    tolerance: Tolerance,
) -> Vec<Finding> {
    let mut findings = Vec::new();
    let evidence = |lines: Vec<u32>, cdrs: Option<CdrSelection>| Evidence {
        file: invoice.file.clone(),
        lines,
        cdrs,
    };
    // Lines per subscription and charge (usage per class; recurring).
    let mut usage: BTreeMap<(&str, ChargeClass), Vec<UsageLine>> = BTreeMap::new();
    let mut recurring: BTreeMap<&str, Vec<(&CarrierLine, i64)>> = BTreeMap::new();
    for line in &invoice.lines {
        match line.charge {
            CarrierCharge::Usage {
                class,
                amount_micros,
                cdrs,
            } => usage
                .entry((line.subscription.as_str(), class))
                .or_default()
                .push((line, amount_micros, cdrs)),
            CarrierCharge::Recurring { amount_micros } => recurring
                .entry(line.subscription.as_str())
                .or_default()
                .push((line, amount_micros)),
        }
    }
    // Per billed subscription, its lines and billed amount, in one pass
    // (an invoice of 50,000 subscriptions has some 300,000 lines).
    let mut billed: BTreeMap<&str, (Vec<u32>, i64)> = BTreeMap::new();
    for l in &invoice.lines {
        let (lines, amount) = billed.entry(l.subscription.as_str()).or_default();
        lines.push(l.line);
        *amount += match l.charge {
            CarrierCharge::Usage { amount_micros, .. }
            | CarrierCharge::Recurring { amount_micros } => amount_micros,
        };
    }

    // Inventory of what was billed.
    for (&subscription, (lines, amount)) in &billed {
        let (lines, amount) = (lines.clone(), *amount);
        match known
            .get(subscription)
            .and_then(|k| k.active_from.map(|f| (f, k.active_to)))
        {
            None => findings.push(Finding {
                kind: FindingKind::BilledNotActive,
                subscription: subscription.to_string(),
                class: None,
                billed_micros: amount,
                expected_micros: 0,
                evidence: evidence(lines, None),
            }),
            Some((from, to)) => {
                let ended_before = to.is_some_and(|to| to <= invoice.period_start);
                let starts_after = from >= invoice.period_end;
                if ended_before || starts_after {
                    findings.push(Finding {
                        kind: FindingKind::BilledAfterTermination,
                        subscription: subscription.to_string(),
                        class: None,
                        billed_micros: amount,
                        expected_micros: 0,
                        evidence: evidence(lines, None),
                    });
                }
            }
        }
    }

    // Recurring charges against the buy rate, and charged twice.
    for (&subscription, lines) in &recurring {
        let Some(k) = known.get(subscription).filter(|k| k.active_from.is_some()) else {
            continue; // already a BilledNotActive finding
        };
        if lines.len() > 1 {
            let extra: i64 = lines.iter().skip(1).map(|(_, a)| a).sum();
            findings.push(Finding {
                kind: FindingKind::BilledTwice,
                subscription: subscription.to_string(),
                class: Some(ChargeClass::Fee),
                billed_micros: lines.iter().map(|(_, a)| a).sum(),
                expected_micros: lines.iter().map(|(_, a)| a).sum::<i64>() - extra,
                evidence: evidence(lines.iter().map(|(l, _)| l.line).collect(), None),
            });
        }
        let (first, amount) = lines[0];
        match k.buy_rate_micros {
            None => findings.push(Finding {
                kind: FindingKind::NoBuyRate,
                subscription: subscription.to_string(),
                class: Some(ChargeClass::Fee),
                billed_micros: amount,
                expected_micros: 0,
                evidence: evidence(vec![first.line], None),
            }),
            Some(rate) if !tolerance.allows(amount, rate) => findings.push(Finding {
                kind: if amount > rate {
                    FindingKind::RateOvercharged
                } else {
                    FindingKind::RateUndercharged
                },
                subscription: subscription.to_string(),
                class: Some(ChargeClass::Fee),
                billed_micros: amount,
                expected_micros: rate,
                evidence: evidence(vec![first.line], None),
            }),
            Some(_) => {}
        }
    }

    // Usage against the CDRs, per subscription and kind; also kinds tem has
    // CDRs of that the carrier did not bill.
    let mut keys: BTreeSet<(&str, ChargeClass)> = usage.keys().copied().collect();
    for (subscription, k) in known {
        for class in k.usage.keys() {
            keys.insert((subscription.as_str(), *class));
        }
    }
    for (subscription, class) in keys {
        let Some(k) = known.get(subscription).filter(|k| k.active_from.is_some()) else {
            continue; // already a BilledNotActive finding
        };
        let (expected, count) = k.usage.get(&class).copied().unwrap_or((0, 0));
        let lines = usage
            .get(&(subscription, class))
            .cloned()
            .unwrap_or_default();
        let billed_amount: i64 = lines.iter().map(|(_, a, _)| a).sum();
        let billed_cdrs: Option<u64> = lines.iter().map(|(_, _, c)| *c).sum();
        let selection = CdrSelection {
            subscription: subscription.to_string(),
            class,
            from: invoice.period_start,
            to: invoice.period_end,
            count,
        };
        let line_numbers: Vec<u32> = lines.iter().map(|(l, _, _)| l.line).collect();
        if lines.len() > 1 {
            findings.push(Finding {
                kind: FindingKind::BilledTwice,
                subscription: subscription.to_string(),
                class: Some(class),
                billed_micros: billed_amount,
                expected_micros: expected,
                evidence: evidence(line_numbers.clone(), Some(selection.clone())),
            });
            continue;
        }
        let more_records = billed_cdrs.is_some_and(|b| b > count);
        if !tolerance.allows(billed_amount, expected) || more_records {
            findings.push(Finding {
                kind: if billed_amount > expected || more_records {
                    FindingKind::MissingCdrs
                } else {
                    FindingKind::UsageUnderbilled
                },
                subscription: subscription.to_string(),
                class: Some(class),
                billed_micros: billed_amount,
                expected_micros: expected,
                evidence: evidence(line_numbers, Some(selection)),
            });
        }
    }

    // Active through the period, but not billed at all.
    for (subscription, k) in known {
        let Some(from) = k.active_from else { continue };
        let active =
            from < invoice.period_end && k.active_to.is_none_or(|to| to > invoice.period_start);
        if active && !billed.contains_key(subscription.as_str()) {
            findings.push(Finding {
                kind: FindingKind::ActiveNotBilled,
                subscription: subscription.clone(),
                class: None,
                billed_micros: 0,
                expected_micros: k.buy_rate_micros.unwrap_or(0),
                evidence: evidence(Vec::new(), None),
            });
        }
    }

    findings.sort_by(|a, b| {
        (&a.subscription, a.kind, a.class).cmp(&(&b.subscription, b.kind, b.class))
    });
    findings
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day(s: &str) -> NaiveDate {
        s.parse().unwrap()
    }

    fn usage(
        line: u32,
        sub: &str,
        class: ChargeClass,
        amount: i64,
        cdrs: Option<u64>,
    ) -> CarrierLine {
        CarrierLine {
            line,
            subscription: sub.into(),
            charge: CarrierCharge::Usage {
                class,
                amount_micros: amount,
                cdrs,
            },
        }
    }

    fn fee(line: u32, sub: &str, amount: i64) -> CarrierLine {
        CarrierLine {
            line,
            subscription: sub.into(),
            charge: CarrierCharge::Recurring {
                amount_micros: amount,
            },
        }
    }

    fn known(usage: &[(ChargeClass, i64, u64)], rate: i64, to: Option<&str>) -> Known {
        Known {
            usage: usage.iter().map(|&(c, a, n)| (c, (a, n))).collect(),
            buy_rate_micros: Some(rate),
            active_from: Some(day("2024-01-01")),
            active_to: to.map(day),
        }
    }

    const TOLERANCE: Tolerance = Tolerance {
        micros: 10_000,
        basis_points: 0,
    };

    /// The planted differences, each once, and one rounding
    /// difference under the tolerance.
    #[test]
    fn planted_differences_are_found_exactly_and_a_rounding_difference_is_not() {
        use ChargeClass::*;
        let invoice = CarrierInvoice {
            provider: "kpn_een".into(),
            account: "A-1".into(),
            invoice_number: "K-2025-03".into(),
            file: "carrier-invoices/kpn_een/A-1/2025-03.csv".into(),
            period_start: day("2025-03-01"),
            period_end: day("2025-04-01"),
            lines: vec![
                // Fine, but for a rounding difference of 0.004.
                usage(2, "+31600000001", Voice, 12_344_000, Some(40)),
                fee(3, "+31600000001", 15_000_000),
                // Missing CDRs: billed 50 records, tem has 45.
                usage(4, "+31600000002", Data, 9_000_000, Some(50)),
                // Overcharged rate: 17.50 against a buy rate of 15.00.
                fee(5, "+31600000002", 17_500_000),
                // Billed after its termination on 2025-02-15.
                fee(6, "+31600000003", 15_000_000),
                // Billed twice.
                fee(7, "+31600000004", 15_000_000),
                fee(8, "+31600000004", 15_000_000),
            ],
        };
        let known = BTreeMap::from([
            (
                "+31600000001".to_string(),
                known(&[(Voice, 12_340_000, 40)], 15_000_000, None),
            ),
            (
                "+31600000002".to_string(),
                known(&[(Data, 8_100_000, 45)], 15_000_000, None),
            ),
            (
                "+31600000003".to_string(),
                known(&[], 15_000_000, Some("2025-02-15")),
            ),
            ("+31600000004".to_string(), known(&[], 15_000_000, None)),
        ]);
        let findings = audit(&invoice, &known, TOLERANCE);
        let got: Vec<(&str, FindingKind, i64, i64, Vec<u32>)> = findings
            .iter()
            .map(|f| {
                (
                    f.subscription.as_str(),
                    f.kind,
                    f.billed_micros,
                    f.expected_micros,
                    f.evidence.lines.clone(),
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                (
                    "+31600000002",
                    FindingKind::MissingCdrs,
                    9_000_000,
                    8_100_000,
                    vec![4]
                ),
                (
                    "+31600000002",
                    FindingKind::RateOvercharged,
                    17_500_000,
                    15_000_000,
                    vec![5]
                ),
                (
                    "+31600000003",
                    FindingKind::BilledAfterTermination,
                    15_000_000,
                    0,
                    vec![6]
                ),
                (
                    "+31600000004",
                    FindingKind::BilledTwice,
                    30_000_000,
                    15_000_000,
                    vec![7, 8]
                ),
            ]
        );
        let missing = &findings[0];
        assert_eq!(missing.evidence.cdrs.as_ref().map(|c| c.count), Some(45));
        assert_eq!(missing.overcharge_micros(), 900_000);
        // Run again: the same findings in the same order.
        assert_eq!(audit(&invoice, &known, TOLERANCE), findings);
    }

    #[test]
    fn an_unknown_subscription_and_an_active_one_not_billed_are_inventory_findings() {
        let invoice = CarrierInvoice {
            provider: "vodafone".into(),
            account: "V".into(),
            invoice_number: "1".into(),
            file: "f".into(),
            period_start: day("2025-03-01"),
            period_end: day("2025-04-01"),
            lines: vec![fee(2, "+31699999999", 10_000_000)],
        };
        let known = BTreeMap::from([("+31600000001".to_string(), known(&[], 15_000_000, None))]);
        let kinds: Vec<(String, FindingKind)> = audit(&invoice, &known, TOLERANCE)
            .into_iter()
            .map(|f| (f.subscription, f.kind))
            .collect();
        assert_eq!(
            kinds,
            vec![
                ("+31600000001".to_string(), FindingKind::ActiveNotBilled),
                ("+31699999999".to_string(), FindingKind::BilledNotActive),
            ]
        );
    }

    #[test]
    fn a_share_tolerance_allows_a_proportional_difference() {
        let t = Tolerance {
            micros: 0,
            basis_points: 100,
        };
        assert!(t.allows(101_000_000, 100_000_000));
        assert!(!t.allows(101_000_001, 100_000_000));
        assert!(TOLERANCE.allows(-5_000, 0));
    }
}
