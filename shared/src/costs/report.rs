//! A cycle's chargeback as text: the tree with each node's rolled-up
//! amount (indented, down to a depth), per charge class when asked, the
//! unallocated amount per subscription, and the invoice's net total with
//! the line that says they agree. `temctl costs show` and the local run
//! print it.

// Writing to a String cannot fail.
#![allow(unused_must_use)]

use std::collections::BTreeMap;
use std::fmt::Write;

use crate::billing::euros;
use crate::costs::cycle::CycleAllocation;
use crate::costs::tree::{CostNode, UNALLOCATED};
use crate::costs::ChargeClass;

/// The tree's nodes in display order (each root, then its children, by
/// code), with their depth from 1, down to `depth`.
pub fn ordered(cycle: &CycleAllocation, depth: Option<usize>) -> Vec<(usize, &CostNode)> {
    let mut children: BTreeMap<Option<&str>, Vec<&CostNode>> = BTreeMap::new();
    for node in cycle.tree.nodes() {
        children
            .entry(node.parent.as_deref())
            .or_default()
            .push(node);
    }
    let mut out = Vec::new();
    // Depth first with an explicit stack: a tree from the database never
    // makes the CLI recurse without bound.
    let mut stack: Vec<(usize, &CostNode)> = children
        .get(&None)
        .into_iter()
        .flatten()
        .rev()
        .map(|n| (1, *n))
        .collect();
    while let Some((level, node)) = stack.pop() {
        if depth.is_some_and(|max| level > max) {
            continue;
        }
        out.push((level, node));
        for child in children
            .get(&Some(node.code.as_str()))
            .into_iter()
            .flatten()
            .rev()
        {
            stack.push((level + 1, child));
        }
    }
    out
}

pub fn render(cycle: &CycleAllocation, depth: Option<usize>, by_class_too: bool) -> String {
    let mut out = String::new();
    let up = cycle.rolled_up();
    let by_class = cycle.rolled_up_by_class();
    writeln!(
        out,
        "cost centres of customer {} {}, cycle {} (invoice #{}, {})",
        cycle.customer.label(),
        cycle.customer.name,
        cycle.cycle,
        cycle.invoice_id,
        cycle.invoice_status
    );
    let nodes = ordered(cycle, depth);
    let label = |level: usize, node: &CostNode| {
        format!("{}{} {}", "  ".repeat(level), node.code, node.name)
    };
    let width = nodes
        .iter()
        .map(|(level, node)| label(*level, node).chars().count())
        .chain([UNALLOCATED.len() + 2, "invoice net total".len()])
        .chain(
            cycle
                .unallocated_by_subscription()
                .keys()
                .map(|s| s.chars().count() + 4),
        )
        .max()
        .unwrap_or(0);
    if nodes.is_empty() {
        writeln!(
            out,
            "  (no cost tree: add cost_centres for this customer with `temctl apply`)"
        );
    }
    for (level, node) in &nodes {
        let amount = up.get(&node.code).copied().unwrap_or(0);
        write!(
            out,
            "{:<width$}  EUR {:>14}",
            label(*level, node),
            euros(amount)
        );
        if by_class_too {
            let parts: Vec<String> = ChargeClass::ALL
                .iter()
                .filter_map(|c| {
                    by_class
                        .get(&(node.code.clone(), *c))
                        .filter(|a| **a != 0)
                        .map(|a| format!("{c} {}", euros(*a)))
                })
                .collect();
            if !parts.is_empty() {
                write!(out, "  ({})", parts.join("; "));
            }
        }
        writeln!(out);
    }
    let unallocated = cycle.unallocated_by_subscription();
    writeln!(
        out,
        "{:<width$}  EUR {:>14}  (subscriptions without an assignment on {})",
        format!("  {UNALLOCATED}"),
        euros(cycle.allocation.unallocated_micros()),
        cycle.cycle
    );
    for (subscription, amount) in &unallocated {
        writeln!(
            out,
            "{:<width$}  EUR {:>14}",
            format!("    {subscription}"),
            euros(*amount)
        );
    }
    let allocated = cycle.allocation.allocated_micros();
    let unallocated_total = cycle.allocation.unallocated_micros();
    writeln!(out, "{:<width$}  EUR {:>14}", "allocated", euros(allocated));
    writeln!(
        out,
        "{:<width$}  EUR {:>14}",
        "unallocated",
        euros(unallocated_total)
    );
    writeln!(
        out,
        "{:<width$}  EUR {:>14}",
        "invoice net total",
        euros(cycle.net_total_micros)
    );
    if allocated + unallocated_total == cycle.net_total_micros {
        writeln!(
            out,
            "allocated + unallocated = invoice net total: they agree to the micro-unit"
        );
    } else {
        // Unreachable: allocate_cycle refuses a chargeback that does not add up.
        writeln!(
            out,
            "allocated + unallocated differs from the invoice net total"
        );
    }
    out
}
