//! A cycle's chargeback as general-ledger rows: per cost node (where an
//! amount was booked, not rolled up, so a ledger never counts it twice),
//! general-ledger account, charge class and VAT category, the net amount.
//!
//! The CSV's amounts are euros with exactly 6 decimals: the micro-units
//! themselves, so the rows sum to the invoice's net total to the
//! micro-unit; rounding to cents is the ledger's choice, not ours. The
//! charges of subscriptions without an assignment are rows of the cost
//! centre `UNALLOCATED`, with no GL code. A VAT category is empty while
//! the invoice is a draft (it is set when the invoice becomes final).

use std::collections::BTreeMap;

use serde::Serialize;

use crate::billing::euros;
use crate::costs::cycle::CycleAllocation;
use crate::costs::tree::UNALLOCATED;
use crate::costs::ChargeClass;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GlRow {
    pub cost_centre: String,
    /// Empty when neither the node nor an ancestor has one for the class.
    pub gl_code: String,
    pub charge_class: ChargeClass,
    pub vat_category: String,
    pub amount_micros: i64,
}

/// The ledger rows of a cycle's chargeback, sorted by cost centre, GL
/// code, class and VAT category; rows of zero are left out.
pub fn gl_rows(cycle: &CycleAllocation) -> Vec<GlRow> {
    let mut sums: BTreeMap<(String, String, ChargeClass, String), i64> = BTreeMap::new();
    for (vat, allocation) in &cycle.by_vat {
        for ((node, class), amount) in &allocation.booked {
            let gl = cycle.tree.gl_code(node, *class).unwrap_or_default();
            *sums
                .entry((node.clone(), gl.to_string(), *class, vat.clone()))
                .or_insert(0) += amount;
        }
        for ((_, class), amount) in &allocation.unallocated {
            *sums
                .entry((UNALLOCATED.to_string(), String::new(), *class, vat.clone()))
                .or_insert(0) += amount;
        }
    }
    sums.into_iter()
        .filter(|(_, amount)| *amount != 0)
        .map(
            |((cost_centre, gl_code, charge_class, vat_category), amount_micros)| GlRow {
                cost_centre,
                gl_code,
                charge_class,
                vat_category,
                amount_micros,
            },
        )
        .collect()
}

/// A CSV field, quoted when it holds a comma, a quote or a line break.
fn field(value: &str) -> String {
    if value.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", value.replace('"', "\"\""))
    } else {
        value.to_string()
    }
}

/// The rows as CSV with a header line.
pub fn gl_csv(rows: &[GlRow]) -> String {
    let mut out = String::from("cost_centre,gl_code,charge_class,vat_category,amount\n");
    for row in rows {
        out.push_str(&format!(
            "{},{},{},{},{}\n",
            field(&row.cost_centre),
            field(&row.gl_code),
            row.charge_class,
            field(&row.vat_category),
            euros(row.amount_micros)
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::costs::allocation::{Assignment, Assignments, Share};
    use crate::costs::cycle::{allocate_invoice, CostCustomer, InvoiceCharge};
    use crate::costs::tree::{CostNode, CostTree, NodeKind};
    use chrono::NaiveDate;

    #[test]
    fn rows_take_the_inherited_gl_code_keep_vat_apart_and_put_unassigned_charges_on_unallocated() {
        let day = NaiveDate::from_ymd_opt(2025, 3, 1).unwrap();
        let tree = CostTree::new(vec![
            CostNode {
                code: "ops".into(),
                name: "Ops".into(),
                kind: NodeKind::Division,
                parent: None,
                gl_codes: BTreeMap::from([(ChargeClass::Voice, "4800".into())]),
            },
            CostNode {
                code: "a,b".into(),
                name: "A".into(),
                kind: NodeKind::CostCentre,
                parent: Some("ops".into()),
                gl_codes: BTreeMap::new(),
            },
        ])
        .unwrap();
        let assignments = Assignments::new(
            &tree,
            vec![Assignment {
                subscription: "s1".into(),
                valid_from: day,
                default: vec![Share {
                    node: "a,b".into(),
                    weight: 100,
                }],
                by_class: BTreeMap::new(),
            }],
        )
        .unwrap();
        let line = |s: &str, vat: &str, amount_micros| InvoiceCharge {
            subscription: s.into(),
            class: ChargeClass::Voice,
            amount_micros,
            vat_category: Some(vat.into()),
        };
        let lines = [
            line("s1", "S", 1_000_000),
            line("s1", "AE", 250),
            line("s9", "S", 3),
        ];
        let (allocation, by_vat) = allocate_invoice(&assignments, day, &lines);
        let cycle = CycleAllocation {
            customer: CostCustomer {
                id: 1,
                code: None,
                name: "x".into(),
            },
            cycle: day,
            invoice_id: 1,
            invoice_status: "final".into(),
            net_total_micros: 1_000_253,
            tree,
            allocation,
            by_vat,
        };
        let rows = gl_rows(&cycle);
        assert_eq!(rows.iter().map(|r| r.amount_micros).sum::<i64>(), 1_000_253);
        assert_eq!(
            gl_csv(&rows),
            "cost_centre,gl_code,charge_class,vat_category,amount\n\
             UNALLOCATED,,voice,S,0.000003\n\
             \"a,b\",4800,voice,AE,0.000250\n\
             \"a,b\",4800,voice,S,1.000000\n"
        );
    }
}
