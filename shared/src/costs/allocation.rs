//! Chargeback: a cycle's charges (each subscription's rated usage per
//! class and its fees) split over the customer's cost tree.
//!
//! # Rules
//!
//! - A subscription's assignment is the one valid on the cycle's start
//!   date (the latest `valid_from` on or before it), as the invoice's fees
//!   take the subscriptions active on that date: one cycle, one owner.
//! - An assignment sends each charge class to a list of shares (nodes with
//!   positive weights): its rule for that class when it has one, else its
//!   default. One share is the whole amount; a percentage split is weights
//!   that sum to 100 (the catalog checks that; here weights are relative).
//! - A split is exact: each share gets the floor of its proportional part
//!   (of the amount's magnitude), and the micro-units left over (fewer than
//!   the shares) go one each to the shares with the largest remainders,
//!   the earlier-listed share first on a tie (the largest remainder
//!   method). A negative amount (a correction) is split as its magnitude
//!   and negated, so a charge and its reversal cancel share by share.
//! - A charge of a subscription with no assignment goes to
//!   [`UNALLOCATED`](super::tree::UNALLOCATED), kept per subscription so an
//!   operator sees which to assign. Nothing is dropped: the allocated and
//!   unallocated amounts always sum to the charges' total, which is the
//!   invoice's net total.

use std::collections::BTreeMap;

use chrono::NaiveDate;
use serde::{Deserialize, Serialize};

use crate::costs::tree::CostTree;
use crate::costs::ChargeClass;

/// One node's part of a split.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Share {
    pub node: String,
    pub weight: u32,
}

/// Where one subscription's charges go from `valid_from` on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignment {
    pub subscription: String,
    pub valid_from: NaiveDate,
    /// Every class without a rule of its own.
    pub default: Vec<Share>,
    #[serde(default)]
    pub by_class: BTreeMap<ChargeClass, Vec<Share>>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AssignmentError {
    #[error("subscription {subscription} (from {valid_from}): share of node {node:?}, which is not in the customer's cost tree; add the node or assign another")]
    UnknownNode {
        subscription: String,
        valid_from: NaiveDate,
        node: String,
    },
    #[error("subscription {subscription} (from {valid_from}): {what} has no shares; name at least one node")]
    NoShares {
        subscription: String,
        valid_from: NaiveDate,
        what: String,
    },
    #[error("subscription {subscription} (from {valid_from}): share of node {node:?} has weight 0; give it a positive weight or leave it out")]
    ZeroWeight {
        subscription: String,
        valid_from: NaiveDate,
        node: String,
    },
    #[error("subscription {subscription} has two assignments from {valid_from}; keep one")]
    Twice {
        subscription: String,
        valid_from: NaiveDate,
    },
}

/// A customer's assignments, checked against its tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignments {
    /// Per subscription, by `valid_from`.
    by_subscription: BTreeMap<String, BTreeMap<NaiveDate, Assignment>>,
}

impl Assignments {
    pub fn new(tree: &CostTree, list: Vec<Assignment>) -> Result<Self, AssignmentError> {
        let mut by_subscription: BTreeMap<String, BTreeMap<NaiveDate, Assignment>> =
            BTreeMap::new();
        for a in list {
            let rules = std::iter::once(("its default".to_string(), &a.default)).chain(
                a.by_class
                    .iter()
                    .map(|(class, shares)| (format!("its {class} rule"), shares)),
            );
            for (what, shares) in rules {
                if shares.is_empty() {
                    return Err(AssignmentError::NoShares {
                        subscription: a.subscription.clone(),
                        valid_from: a.valid_from,
                        what,
                    });
                }
                for share in shares {
                    if !tree.contains(&share.node) {
                        return Err(AssignmentError::UnknownNode {
                            subscription: a.subscription.clone(),
                            valid_from: a.valid_from,
                            node: share.node.clone(),
                        });
                    }
                    if share.weight == 0 {
                        return Err(AssignmentError::ZeroWeight {
                            subscription: a.subscription.clone(),
                            valid_from: a.valid_from,
                            node: share.node.clone(),
                        });
                    }
                }
            }
            let dated = by_subscription.entry(a.subscription.clone()).or_default();
            if dated.contains_key(&a.valid_from) {
                return Err(AssignmentError::Twice {
                    subscription: a.subscription,
                    valid_from: a.valid_from,
                });
            }
            dated.insert(a.valid_from, a);
        }
        Ok(Assignments { by_subscription })
    }

    /// The assignment of `subscription` valid on `day`.
    pub fn valid_on(&self, subscription: &str, day: NaiveDate) -> Option<&Assignment> {
        self.by_subscription
            .get(subscription)?
            .range(..=day)
            .next_back()
            .map(|(_, a)| a)
    }
}

/// One amount of a cycle to allocate: a subscription's charges of one class.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Charge {
    pub subscription: String,
    pub class: ChargeClass,
    pub amount_micros: i64,
}

/// A cycle's charges over the tree.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Allocation {
    /// Per node and class, what was booked on the node itself.
    pub booked: BTreeMap<(String, ChargeClass), i64>,
    /// Per subscription and class, what had no assignment.
    pub unallocated: BTreeMap<(String, ChargeClass), i64>,
}

impl Allocation {
    pub fn allocated_micros(&self) -> i64 {
        self.booked.values().sum()
    }

    pub fn unallocated_micros(&self) -> i64 {
        self.unallocated.values().sum()
    }

    /// Allocated plus unallocated: always the charges' total.
    pub fn total_micros(&self) -> i64 {
        self.allocated_micros() + self.unallocated_micros()
    }

    /// What was booked on each node itself, all classes together.
    pub fn booked_per_node(&self) -> BTreeMap<String, i64> {
        let mut out = BTreeMap::new();
        for ((node, _), amount) in &self.booked {
            *out.entry(node.clone()).or_insert(0) += amount;
        }
        out
    }
}

/// Splits `charges` of the cycle starting `cycle_start` over the tree the
/// assignments were checked against.
pub fn allocate(
    assignments: &Assignments,
    cycle_start: NaiveDate,
    charges: &[Charge],
) -> Allocation {
    let mut out = Allocation::default();
    for charge in charges {
        let Some(assignment) = assignments.valid_on(&charge.subscription, cycle_start) else {
            *out.unallocated
                .entry((charge.subscription.clone(), charge.class))
                .or_insert(0) += charge.amount_micros;
            continue;
        };
        let shares = assignment
            .by_class
            .get(&charge.class)
            .unwrap_or(&assignment.default);
        let weights: Vec<u32> = shares.iter().map(|s| s.weight).collect();
        for (share, part) in shares.iter().zip(split(charge.amount_micros, &weights)) {
            *out.booked
                .entry((share.node.clone(), charge.class))
                .or_insert(0) += part;
        }
    }
    out
}

/// `amount` in parts proportional to `weights` (all positive), summing to
/// `amount` exactly: the largest remainder method on its magnitude.
pub fn split(amount: i64, weights: &[u32]) -> Vec<i64> {
    let total: i128 = weights.iter().map(|&w| i128::from(w)).sum();
    if weights.is_empty() || total == 0 {
        return Vec::new();
    }
    let magnitude = i128::from(amount).abs();
    let mut parts: Vec<i128> = Vec::with_capacity(weights.len());
    let mut remainders: Vec<(i128, usize)> = Vec::with_capacity(weights.len());
    for (i, &w) in weights.iter().enumerate() {
        let exact = magnitude * i128::from(w);
        parts.push(exact / total);
        remainders.push((exact % total, i));
    }
    let left = magnitude - parts.iter().sum::<i128>();
    // Largest remainder first; on a tie the earlier share.
    remainders.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    for &(_, i) in remainders.iter().take(left as usize) {
        parts[i] += 1;
    }
    let sign = if amount < 0 { -1 } else { 1 };
    parts
        .into_iter()
        // Each part is at most the amount's magnitude, so it fits.
        .map(|p| i64::try_from(sign * p).unwrap_or(0))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::costs::tree::tests::node;
    use crate::costs::tree::{CostNode, NodeKind};
    use proptest::prelude::*;

    fn day(s: &str) -> NaiveDate {
        s.parse().unwrap()
    }

    fn share(node: &str, weight: u32) -> Share {
        Share {
            node: node.into(),
            weight,
        }
    }

    fn tree() -> CostTree {
        CostTree::new(vec![
            node("ops", NodeKind::Division, None),
            node("field", NodeKind::CostCentre, Some("ops")),
            node("office", NodeKind::CostCentre, Some("ops")),
            node("bob", NodeKind::Employee, Some("field")),
        ])
        .unwrap()
    }

    #[test]
    fn a_third_each_gives_the_left_over_micro_unit_to_the_first_share() {
        assert_eq!(split(100, &[1, 1, 1]), vec![34, 33, 33]);
        assert_eq!(split(-100, &[1, 1, 1]), vec![-34, -33, -33]);
        assert_eq!(split(2, &[1, 1, 1]), vec![1, 1, 0]);
        // 60/40 of 0.000005: 3 and 2 micro-units, exactly.
        assert_eq!(split(5, &[60, 40]), vec![3, 2]);
        // The larger remainder wins over the earlier share.
        assert_eq!(split(10, &[1, 2]), vec![3, 7]);
        assert_eq!(
            split(i64::MAX, &[1, 1])
                .iter()
                .map(|&p| i128::from(p))
                .sum::<i128>(),
            i128::from(i64::MAX)
        );
        assert_eq!(
            split(i64::MIN + 1, &[3, 1]).iter().sum::<i64>(),
            i64::MIN + 1
        );
    }

    #[test]
    fn data_goes_to_one_cost_centre_and_the_rest_to_another() {
        let a = Assignments::new(
            &tree(),
            vec![Assignment {
                subscription: "+31611111111".into(),
                valid_from: day("2025-01-01"),
                default: vec![share("office", 1)],
                by_class: BTreeMap::from([(ChargeClass::Data, vec![share("field", 1)])]),
            }],
        )
        .unwrap();
        let charges = [
            Charge {
                subscription: "+31611111111".into(),
                class: ChargeClass::Data,
                amount_micros: 2_500_000,
            },
            Charge {
                subscription: "+31611111111".into(),
                class: ChargeClass::Voice,
                amount_micros: 1_000_000,
            },
            Charge {
                subscription: "+31611111111".into(),
                class: ChargeClass::Fee,
                amount_micros: 15_000_000,
            },
        ];
        let got = allocate(&a, day("2025-03-01"), &charges);
        assert_eq!(
            got.booked,
            BTreeMap::from([
                (("field".to_string(), ChargeClass::Data), 2_500_000),
                (("office".to_string(), ChargeClass::Voice), 1_000_000),
                (("office".to_string(), ChargeClass::Fee), 15_000_000),
            ])
        );
        let up = tree().roll_up(&got.booked_per_node());
        assert_eq!(up["ops"], 18_500_000);
    }

    #[test]
    fn the_assignment_valid_on_the_cycle_start_decides_and_none_means_unallocated() {
        let a = Assignments::new(
            &tree(),
            vec![
                Assignment {
                    subscription: "s1".into(),
                    valid_from: day("2025-01-01"),
                    default: vec![share("office", 1)],
                    by_class: BTreeMap::new(),
                },
                Assignment {
                    subscription: "s1".into(),
                    valid_from: day("2025-03-01"),
                    default: vec![share("bob", 1)],
                    by_class: BTreeMap::new(),
                },
            ],
        )
        .unwrap();
        let charge = |s: &str| Charge {
            subscription: s.into(),
            class: ChargeClass::Voice,
            amount_micros: 7,
        };
        let feb = allocate(&a, day("2025-02-01"), &[charge("s1")]);
        assert_eq!(
            feb.booked_per_node(),
            BTreeMap::from([("office".to_string(), 7)])
        );
        let mar = allocate(&a, day("2025-03-01"), &[charge("s1"), charge("s2")]);
        assert_eq!(
            mar.booked_per_node(),
            BTreeMap::from([("bob".to_string(), 7)])
        );
        assert_eq!(
            mar.unallocated,
            BTreeMap::from([(("s2".to_string(), ChargeClass::Voice), 7)])
        );
        assert_eq!(mar.total_micros(), 14);
        let before = allocate(&a, day("2024-12-01"), &[charge("s1")]);
        assert_eq!(before.unallocated_micros(), 7, "no assignment yet");
    }

    #[test]
    fn an_assignment_to_an_unknown_node_with_no_shares_or_a_zero_weight_is_refused() {
        let bad = |default: Vec<Share>| Assignment {
            subscription: "s1".into(),
            valid_from: day("2025-01-01"),
            default,
            by_class: BTreeMap::new(),
        };
        assert!(matches!(
            Assignments::new(&tree(), vec![bad(vec![share("nowhere", 1)])]),
            Err(AssignmentError::UnknownNode { node, .. }) if node == "nowhere"
        ));
        assert!(matches!(
            Assignments::new(&tree(), vec![bad(vec![])]),
            Err(AssignmentError::NoShares { .. })
        ));
        assert!(matches!(
            Assignments::new(&tree(), vec![bad(vec![share("office", 0)])]),
            Err(AssignmentError::ZeroWeight { .. })
        ));
        assert!(matches!(
            Assignments::new(
                &tree(),
                vec![bad(vec![share("office", 1)]), bad(vec![share("bob", 1)])]
            ),
            Err(AssignmentError::Twice { .. })
        ));
    }

    /// A random forest: node i hangs from an earlier node or is a root.
    fn forest() -> impl Strategy<Value = Vec<CostNode>> {
        prop::collection::vec((any::<bool>(), any::<prop::sample::Index>()), 1..25).prop_map(
            |spec| {
                spec.iter()
                    .enumerate()
                    .map(|(i, (root, parent))| {
                        let parent = (i > 0 && !root).then(|| format!("n{}", parent.index(i)));
                        node(&format!("n{i}"), NodeKind::CostCentre, parent.as_deref())
                    })
                    .collect()
            },
        )
    }

    fn shares(nodes: usize) -> impl Strategy<Value = Vec<Share>> {
        prop::collection::vec((0..nodes, 1u32..=10_000), 1..5).prop_map(|v| {
            v.into_iter()
                .map(|(n, weight)| share(&format!("n{n}"), weight))
                .collect()
        })
    }

    fn class() -> impl Strategy<Value = ChargeClass> {
        prop::sample::select(ChargeClass::ALL.to_vec())
    }

    fn case() -> impl Strategy<Value = (Vec<CostNode>, Vec<Assignment>, Vec<Charge>)> {
        forest().prop_flat_map(|nodes| {
            let n = nodes.len();
            let assignment = (
                0usize..12,
                0i64..90,
                shares(n),
                prop::collection::btree_map(class(), shares(n), 0..3),
            )
                .prop_map(|(s, days, default, by_class)| Assignment {
                    subscription: format!("s{s}"),
                    valid_from: NaiveDate::from_ymd_opt(2025, 1, 1).unwrap()
                        + chrono::Duration::days(days),
                    default,
                    by_class,
                });
            let charge = (
                0usize..14,
                class(),
                -1_000_000_000_000i64..=1_000_000_000_000,
            )
                .prop_map(|(s, class, amount_micros)| Charge {
                    subscription: format!("s{s}"),
                    class,
                    amount_micros,
                });
            (
                Just(nodes),
                prop::collection::vec(assignment, 0..20),
                prop::collection::vec(charge, 0..60),
            )
        })
    }

    proptest! {
        #![proptest_config(crate::proptest_config::fixed(512, 0x5eed_0019_c057_0001))]

        #[test]
        fn random_trees_assignments_and_splits_allocate_the_net_total_exactly(
            (nodes, list, charges) in case(),
            start in 0i64..120,
        ) {
            let tree = CostTree::new(nodes).unwrap();
            // Two assignments of one subscription from one day: keep the first.
            let mut seen = std::collections::BTreeSet::new();
            let list: Vec<Assignment> = list
                .into_iter()
                .filter(|a| seen.insert((a.subscription.clone(), a.valid_from)))
                .collect();
            let assignments = Assignments::new(&tree, list).unwrap();
            let cycle_start = NaiveDate::from_ymd_opt(2025, 1, 1).unwrap() + chrono::Duration::days(start);
            let got = allocate(&assignments, cycle_start, &charges);
            let net_total: i64 = charges.iter().map(|c| c.amount_micros).sum();
            prop_assert_eq!(got.total_micros(), net_total);
            // The roots' roll-ups hold everything allocated.
            let up = tree.roll_up(&got.booked_per_node());
            let roots: i64 = tree.roots().map(|r| up[&r.code]).sum();
            prop_assert_eq!(roots, got.allocated_micros());
            // Each charge class is kept whole too.
            for class in ChargeClass::ALL {
                let charged: i64 = charges.iter().filter(|c| c.class == class).map(|c| c.amount_micros).sum();
                let booked: i64 = got.booked.iter().filter(|((_, c), _)| *c == class).map(|(_, a)| a).sum::<i64>()
                    + got.unallocated.iter().filter(|((_, c), _)| *c == class).map(|(_, a)| a).sum::<i64>();
                prop_assert_eq!(booked, charged, "class {}", class);
            }
        }

        #[test]
        fn every_part_of_a_split_is_within_one_micro_unit_of_its_exact_share(
            amount in any::<i64>().prop_filter("i64::MIN has no magnitude", |a| *a != i64::MIN),
            weights in prop::collection::vec(1u32..=u32::MAX, 1..8),
        ) {
            let parts = split(amount, &weights);
            prop_assert_eq!(parts.iter().map(|&p| i128::from(p)).sum::<i128>(), i128::from(amount));
            let total: i128 = weights.iter().map(|&w| i128::from(w)).sum();
            for (part, w) in parts.iter().zip(&weights) {
                // |part - amount * w / total| < 1, in integers.
                let off = (i128::from(*part) * total - i128::from(amount) * i128::from(*w)).abs();
                prop_assert!(off < total, "part {} of weight {} in {}", part, w, total);
            }
        }
    }
}
