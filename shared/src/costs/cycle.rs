//! One cycle's chargeback: the customer's invoice for the cycle (its draft
//! or final main invoice), its lines as [`Charge`]s, allocated over the
//! tree by the assignments valid on the cycle's start, and checked to add
//! up to the invoice's net total to the micro-unit.
//!
//! The store is a narrow trait ([`CostStore`]); its PostgreSQL
//! implementation is `adapters::costs`. Corrections are not allocated yet:
//! the main invoice is what a cycle's chargeback shows.

use std::collections::BTreeMap;

use async_trait::async_trait;
use chrono::NaiveDate;
use serde::Serialize;

use crate::costs::allocation::{
    allocate, Allocation, Assignment, AssignmentError, Assignments, Charge,
};
use crate::costs::tree::{CostNode, CostTree, TreeError};
use crate::costs::ChargeClass;
use crate::ports::StoreError;

/// A customer as the chargeback names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CostCustomer {
    pub id: i64,
    pub code: Option<String>,
    pub name: String,
}

impl CostCustomer {
    pub fn label(&self) -> String {
        match &self.code {
            Some(code) => format!("{code} (#{})", self.id),
            None => format!("#{}", self.id),
        }
    }
}

/// One line of an invoice, as the chargeback reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvoiceCharge {
    pub subscription: String,
    pub class: ChargeClass,
    pub amount_micros: i64,
    /// The line's VAT category (`S`, `AE`, ...) once the invoice is final.
    pub vat_category: Option<String>,
}

/// The invoice of a cycle, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CycleInvoice {
    pub id: i64,
    /// `draft` or `final`.
    pub status: String,
    /// The invoice row's `total_micros` (rated cost plus fees, before VAT).
    pub total_micros: i64,
    pub lines: Vec<InvoiceCharge>,
}

/// What the chargeback reads.
#[async_trait]
pub trait CostStore: Send + Sync {
    /// The customer by numeric id or code; several when the text is the
    /// id of one and the code of another.
    async fn customers(&self, id_or_code: &str) -> Result<Vec<CostCustomer>, StoreError>;
    async fn tree(&self, customer_id: i64) -> Result<Vec<CostNode>, StoreError>;
    async fn assignments(&self, customer_id: i64) -> Result<Vec<Assignment>, StoreError>;
    /// The cycle's main invoice (sequence 0), draft or final.
    async fn invoice(
        &self,
        customer_id: i64,
        cycle: NaiveDate,
    ) -> Result<Option<CycleInvoice>, StoreError>;
}

#[derive(Debug, thiserror::Error)]
pub enum CostsError {
    #[error("no customer has the id or code {0:?}; name a customer by its numeric id or its code")]
    UnknownCustomer(String),
    #[error("{0:?} names more than one customer (the id of one, the code of another); give the code, or the id of the other")]
    Ambiguous(String),
    #[error("customer {customer} has no invoice for the cycle {cycle}; it is made by GenerateInvoice after the cycle's totals (invoke the totals function with {{\"customer_id\": {id}, \"cycle\": \"{cycle}\"}})")]
    NoInvoice {
        customer: String,
        id: i64,
        cycle: NaiveDate,
    },
    #[error("the stored cost tree of customer {customer} is invalid: {source}; apply the customer's whole tree again with `temctl apply`")]
    StoredTree { customer: String, source: TreeError },
    #[error("the stored cost assignments of customer {customer} are invalid: {source}; apply them again with `temctl apply`")]
    StoredAssignments {
        customer: String,
        source: AssignmentError,
    },
    /// Never expected: the allocation keeps every micro-unit, and an
    /// invoice's total is the sum of its lines. Reported rather than shown
    /// wrong, so that a chargeback that does not add up never reaches a
    /// ledger.
    #[error("the chargeback of invoice {invoice} does not add up: allocated {allocated} + unallocated {unallocated} micro-units, its lines sum to {lines} and the invoice states {stated}; report this as a bug with the invoice id")]
    Inconsistent {
        invoice: i64,
        allocated: i64,
        unallocated: i64,
        lines: i64,
        stated: i64,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A cycle's chargeback, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CycleAllocation {
    pub customer: CostCustomer,
    pub cycle: NaiveDate,
    pub invoice_id: i64,
    pub invoice_status: String,
    /// The sum of the invoice's lines (= its stated total), micro-units.
    pub net_total_micros: i64,
    pub tree: CostTree,
    pub allocation: Allocation,
    /// The same allocation per VAT category (`""` when the invoice is a
    /// draft and has none yet), for the general ledger.
    pub by_vat: BTreeMap<String, Allocation>,
}

impl CycleAllocation {
    /// Each node's amount with everything below it.
    pub fn rolled_up(&self) -> BTreeMap<String, i64> {
        self.tree.roll_up(&self.allocation.booked_per_node())
    }

    /// Each node's amount with everything below it, per charge class.
    pub fn rolled_up_by_class(&self) -> BTreeMap<(String, ChargeClass), i64> {
        let mut out = BTreeMap::new();
        for class in ChargeClass::ALL {
            let own: BTreeMap<String, i64> = self
                .allocation
                .booked
                .iter()
                .filter(|((_, c), _)| *c == class)
                .map(|((node, _), amount)| (node.clone(), *amount))
                .collect();
            if own.is_empty() {
                continue;
            }
            for (node, amount) in self.tree.roll_up(&own) {
                out.insert((node, class), amount);
            }
        }
        out
    }

    /// Per subscription, what had no assignment on the cycle's start.
    pub fn unallocated_by_subscription(&self) -> BTreeMap<String, i64> {
        let mut out = BTreeMap::new();
        for ((subscription, _), amount) in &self.allocation.unallocated {
            *out.entry(subscription.clone()).or_insert(0) += amount;
        }
        out
    }
}

/// Finds the customer named by `id_or_code`.
pub async fn find_customer(
    store: &dyn CostStore,
    id_or_code: &str,
) -> Result<CostCustomer, CostsError> {
    let mut found = store.customers(id_or_code).await?;
    match found.len() {
        0 => Err(CostsError::UnknownCustomer(id_or_code.to_string())),
        1 => Ok(found.remove(0)),
        _ => Err(CostsError::Ambiguous(id_or_code.to_string())),
    }
}

/// Allocates the invoice of `customer`'s cycle starting `cycle`.
pub async fn allocate_cycle(
    store: &dyn CostStore,
    customer: CostCustomer,
    cycle: NaiveDate,
) -> Result<CycleAllocation, CostsError> {
    let tree =
        CostTree::new(store.tree(customer.id).await?).map_err(|source| CostsError::StoredTree {
            customer: customer.label(),
            source,
        })?;
    let assignments =
        Assignments::new(&tree, store.assignments(customer.id).await?).map_err(|source| {
            CostsError::StoredAssignments {
                customer: customer.label(),
                source,
            }
        })?;
    let Some(invoice) = store.invoice(customer.id, cycle).await? else {
        return Err(CostsError::NoInvoice {
            customer: customer.label(),
            id: customer.id,
            cycle,
        });
    };
    let (allocation, by_vat) = allocate_invoice(&assignments, cycle, &invoice.lines);
    let lines: i64 = invoice.lines.iter().map(|l| l.amount_micros).sum();
    if allocation.total_micros() != lines || lines != invoice.total_micros {
        return Err(CostsError::Inconsistent {
            invoice: invoice.id,
            allocated: allocation.allocated_micros(),
            unallocated: allocation.unallocated_micros(),
            lines,
            stated: invoice.total_micros,
        });
    }
    Ok(CycleAllocation {
        customer,
        cycle,
        invoice_id: invoice.id,
        invoice_status: invoice.status,
        net_total_micros: lines,
        tree,
        allocation,
        by_vat,
    })
}

/// The invoice's lines summed per subscription, class and VAT category
/// (a subscription's usage of one kind in several zones is one charge, so
/// a split rounds once per class, not once per zone), then allocated per
/// VAT category and merged. Each charge is split on its own, so the merge
/// is the allocation of all of them.
pub fn allocate_invoice(
    assignments: &Assignments,
    cycle_start: NaiveDate,
    lines: &[InvoiceCharge],
) -> (Allocation, BTreeMap<String, Allocation>) {
    let mut grouped: BTreeMap<String, BTreeMap<(String, ChargeClass), i64>> = BTreeMap::new();
    for line in lines {
        let vat = line.vat_category.clone().unwrap_or_default();
        *grouped
            .entry(vat)
            .or_default()
            .entry((line.subscription.clone(), line.class))
            .or_insert(0) += line.amount_micros;
    }
    let mut all = Allocation::default();
    let mut by_vat = BTreeMap::new();
    for (vat, charges) in grouped {
        let charges: Vec<Charge> = charges
            .into_iter()
            .map(|((subscription, class), amount_micros)| Charge {
                subscription,
                class,
                amount_micros,
            })
            .collect();
        let part = allocate(assignments, cycle_start, &charges);
        for (key, amount) in &part.booked {
            *all.booked.entry(key.clone()).or_insert(0) += amount;
        }
        for (key, amount) in &part.unallocated {
            *all.unallocated.entry(key.clone()).or_insert(0) += amount;
        }
        by_vat.insert(vat, part);
    }
    (all, by_vat)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::costs::allocation::Share;
    use crate::costs::tree::NodeKind;
    use std::sync::Mutex;

    struct Fake {
        nodes: Vec<CostNode>,
        assignments: Vec<Assignment>,
        invoice: Mutex<Option<CycleInvoice>>,
    }

    #[async_trait]
    impl CostStore for Fake {
        async fn customers(&self, _: &str) -> Result<Vec<CostCustomer>, StoreError> {
            Ok(vec![customer()])
        }
        async fn tree(&self, _: i64) -> Result<Vec<CostNode>, StoreError> {
            Ok(self.nodes.clone())
        }
        async fn assignments(&self, _: i64) -> Result<Vec<Assignment>, StoreError> {
            Ok(self.assignments.clone())
        }
        async fn invoice(&self, _: i64, _: NaiveDate) -> Result<Option<CycleInvoice>, StoreError> {
            Ok(self.invoice.lock().map(|i| i.clone()).unwrap_or(None))
        }
    }

    fn customer() -> CostCustomer {
        CostCustomer {
            id: 1,
            code: Some("acme".into()),
            name: "Acme".into(),
        }
    }

    fn day(s: &str) -> NaiveDate {
        s.parse().unwrap()
    }

    fn line(subscription: &str, class: ChargeClass, amount_micros: i64) -> InvoiceCharge {
        InvoiceCharge {
            subscription: subscription.into(),
            class,
            amount_micros,
            vat_category: Some("S".into()),
        }
    }

    fn fake(total: i64, lines: Vec<InvoiceCharge>) -> Fake {
        let node = |code: &str, parent: Option<&str>| CostNode {
            code: code.into(),
            name: code.into(),
            kind: NodeKind::CostCentre,
            parent: parent.map(str::to_string),
            gl_codes: BTreeMap::new(),
        };
        Fake {
            nodes: vec![
                node("ops", None),
                node("a", Some("ops")),
                node("b", Some("ops")),
            ],
            assignments: vec![Assignment {
                subscription: "s1".into(),
                valid_from: day("2025-01-01"),
                default: vec![
                    Share {
                        node: "a".into(),
                        weight: 60,
                    },
                    Share {
                        node: "b".into(),
                        weight: 40,
                    },
                ],
                by_class: BTreeMap::new(),
            }],
            invoice: Mutex::new(Some(CycleInvoice {
                id: 7,
                status: "draft".into(),
                total_micros: total,
                lines,
            })),
        }
    }

    #[tokio::test]
    async fn a_60_40_split_and_an_unassigned_subscription_add_up_to_the_invoice_total() {
        let store = fake(
            1_000_005,
            vec![
                line("s1", ChargeClass::Voice, 5),
                line("s1", ChargeClass::Fee, 900_000),
                line("s2", ChargeClass::Data, 100_000),
            ],
        );
        let got = allocate_cycle(&store, customer(), day("2025-03-01"))
            .await
            .unwrap();
        assert_eq!(got.net_total_micros, 1_000_005);
        let up = got.rolled_up();
        assert_eq!((up["a"], up["b"], up["ops"]), (540_003, 360_002, 900_005));
        assert_eq!(
            got.unallocated_by_subscription(),
            BTreeMap::from([("s2".to_string(), 100_000)])
        );
        assert_eq!(got.allocation.total_micros(), got.net_total_micros);
    }

    #[tokio::test]
    async fn an_invoice_whose_stated_total_differs_from_its_lines_is_an_inconsistency_not_a_chargeback(
    ) {
        let store = fake(1_000, vec![line("s1", ChargeClass::Voice, 999)]);
        let err = allocate_cycle(&store, customer(), day("2025-03-01"))
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                CostsError::Inconsistent {
                    lines: 999,
                    stated: 1_000,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[tokio::test]
    async fn a_cycle_without_an_invoice_says_how_to_make_one() {
        let store = fake(0, vec![]);
        *store.invoice.lock().unwrap() = None;
        let err = allocate_cycle(&store, customer(), day("2025-03-01"))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("GenerateInvoice"), "{err}");
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(crate::proptest_config::fixed(256, 0x5eed_0019_c057_0002))]

            #[test]
            fn invoice_lines_in_any_vat_categories_allocate_to_their_sum_and_each_category_to_its_own(
                lines in prop::collection::vec(
                    (0usize..4, prop::sample::select(ChargeClass::ALL.to_vec()),
                     -10_000_000_000i64..10_000_000_000, prop::sample::select(vec!["S", "AE", "Z", ""])),
                    0..40,
                ),
                weights in (1u32..100, 1u32..100),
            ) {
                let store = fake(0, vec![]);
                let tree = CostTree::new(store.nodes.clone()).unwrap();
                let mut assignment = store.assignments[0].clone();
                assignment.default[0].weight = weights.0;
                assignment.default[1].weight = weights.1;
                assignment.by_class.insert(ChargeClass::Data, vec![Share { node: "ops".into(), weight: 1 }]);
                let assignments = Assignments::new(&tree, vec![assignment]).unwrap();
                let lines: Vec<InvoiceCharge> = lines
                    .into_iter()
                    .map(|(s, class, amount_micros, vat)| InvoiceCharge {
                        subscription: format!("s{s}"),
                        class,
                        amount_micros,
                        vat_category: (!vat.is_empty()).then(|| vat.to_string()),
                    })
                    .collect();
                let (all, by_vat) = allocate_invoice(&assignments, day("2025-03-01"), &lines);
                let sum: i64 = lines.iter().map(|l| l.amount_micros).sum();
                prop_assert_eq!(all.total_micros(), sum);
                for (vat, part) in &by_vat {
                    let own: i64 = lines
                        .iter()
                        .filter(|l| l.vat_category.clone().unwrap_or_default() == *vat)
                        .map(|l| l.amount_micros)
                        .sum();
                    prop_assert_eq!(part.total_micros(), own, "VAT category {:?}", vat);
                }
                let up = tree.roll_up(&all.booked_per_node());
                prop_assert_eq!(up["ops"], all.allocated_micros());
            }
        }
    }
}
