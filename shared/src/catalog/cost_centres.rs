//! The `cost_centres` and `cost_assignments` sections of an apply file:
//! each customer's organisation as a tree of cost nodes, and where each
//! subscription's charges go from a date on (issue 19; the rules of the
//! tree and of a split are in `costs/`).
//!
//! ```yaml
//! cost_centres:                       # natural key: (customer, code)
//!   - customer: acme
//!     code: ops
//!     name: Operations
//!     kind: division                  # division, department, cost_centre or employee
//!     gl_codes: {voice: "4800", data: "4810", fee: "4890"}   # optional, inherited below
//!   - {customer: acme, code: field, name: Field service, kind: cost_centre, parent: ops}
//! cost_assignments:                   # natural key: (customer, subscription, valid_from)
//!   - customer: acme
//!     subscription: "+31612345678"    # the identifier, as in `subscriptions`
//!     valid_from: 2025-01-01
//!     to: field                       # the whole amount to one node, or:
//!     # split: [{to: field, percent: 60}, {to: office, percent: 40}]   # percents sum to 100
//!     by_kind:                        # optional: per charge class, a node or a split
//!       data: office
//!       voice: [{to: field, percent: 50}, {to: office, percent: 50}]
//! ```
//!
//! # A tree is applied whole
//!
//! When a file has `cost_centres` entries for a customer, they are that
//! customer's whole tree: stored nodes of that customer the file leaves
//! out are removed (listed as `removed` by the apply and its `--dry-run`).
//! A tree is only valid as a whole (a parent removed elsewhere would leave
//! its children hanging), so merging a partial tree into a stored one
//! would make the stored tree depend on the order of applies. A customer
//! without `cost_centres` entries in the file keeps its stored tree.
//! Assignments are versions, as billing details are: each entry is
//! created or updated, others are left alone; every assignment of the
//! customer, stored or in the file, must fit the tree after the apply.

use std::collections::{BTreeMap, BTreeSet};

use chrono::NaiveDate;
use serde::Deserialize;

use super::changes::Stored;
use super::document::Document;
use super::{Problem, Section};
use crate::costs::allocation::{Assignment, AssignmentError, Assignments, Share};
use crate::costs::tree::{CostNode, CostTree, NodeKind, TreeError};
use crate::costs::ChargeClass;

/// A node of a customer's tree and where it is in the file.
#[derive(Debug, Clone, PartialEq)]
pub struct CostNodeEntry {
    pub at: usize,
    /// The customer's code.
    pub customer: String,
    pub node: CostNode,
}

/// A version of a subscription's assignment and where it is in the file.
#[derive(Debug, Clone, PartialEq)]
pub struct CostAssignmentEntry {
    pub at: usize,
    pub customer: String,
    pub assignment: Assignment,
}

/// The required fields of a `cost_centres` entry.
pub const NODE_REQUIRED: &[&str] = &["customer", "code", "name", "kind"];

/// The required fields of a `cost_assignments` entry (and `to` or `split`).
pub const ASSIGNMENT_REQUIRED: &[&str] = &["customer", "subscription", "valid_from"];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct NodeSpec {
    pub(super) customer: String,
    code: String,
    name: String,
    kind: NodeKind,
    #[serde(default)]
    parent: Option<String>,
    #[serde(default)]
    gl_codes: BTreeMap<ChargeClass, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ShareSpec {
    to: String,
    percent: u32,
}

/// A charge class's rule: one node, or a percentage split.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum RuleSpec {
    Node(String),
    Split(Vec<ShareSpec>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AssignmentSpec {
    pub(super) customer: String,
    subscription: String,
    valid_from: NaiveDate,
    #[serde(default)]
    to: Option<String>,
    #[serde(default)]
    split: Option<Vec<ShareSpec>>,
    #[serde(default)]
    by_kind: BTreeMap<ChargeClass, RuleSpec>,
}

type Found = Vec<(String, String)>;

fn key(found: &mut Found, field: &str, value: &str) {
    if value.trim().is_empty() {
        found.push((field.into(), "must not be empty".into()));
    } else if value.trim() != value {
        found.push((
            field.into(),
            format!("{value:?} starts or ends with a space"),
        ));
    }
}

/// The node of a `cost_centres` entry, and the problems it has on its own
/// (the tree's rules need the customer's other nodes: see the store).
pub(super) fn node(spec: NodeSpec) -> (CostNodeEntry, Found) {
    let mut found = Found::new();
    key(&mut found, ".customer", &spec.customer);
    key(&mut found, ".code", &spec.code);
    if spec.code == crate::costs::tree::UNALLOCATED {
        found.push((
            ".code".into(),
            format!(
                "{:?} is reserved for charges without an assignment; choose another code",
                spec.code
            ),
        ));
    }
    key(&mut found, ".name", &spec.name);
    if let Some(parent) = &spec.parent {
        key(&mut found, ".parent", parent);
    }
    for (class, code) in &spec.gl_codes {
        key(&mut found, &format!(".gl_codes.{class}"), code);
    }
    let entry = CostNodeEntry {
        at: 0,
        customer: spec.customer,
        node: CostNode {
            code: spec.code,
            name: spec.name,
            kind: spec.kind,
            parent: spec.parent,
            gl_codes: spec.gl_codes,
        },
    };
    (entry, found)
}

/// The shares of a split, checked: each percent above 0, together exactly
/// 100 (a percentage split that does not add up would silently scale).
fn split_shares(found: &mut Found, field: &str, split: &[ShareSpec]) -> Vec<Share> {
    if split.is_empty() {
        found.push((field.into(), "must name at least one {to, percent}".into()));
    }
    for (i, share) in split.iter().enumerate() {
        key(found, &format!("{field}[{i}].to"), &share.to);
        if share.percent == 0 {
            found.push((
                format!("{field}[{i}].percent"),
                "must be above 0; leave the share out instead".into(),
            ));
        }
    }
    let sum: u64 = split.iter().map(|s| u64::from(s.percent)).sum();
    if !split.is_empty() && sum != 100 {
        found.push((
            field.into(),
            format!("percents sum to {sum}; they must sum to exactly 100"),
        ));
    }
    split
        .iter()
        .map(|s| Share {
            node: s.to.clone(),
            weight: s.percent,
        })
        .collect()
}

fn whole(node: &str) -> Vec<Share> {
    vec![Share {
        node: node.to_string(),
        weight: 100,
    }]
}

/// The assignment of a `cost_assignments` entry and its own problems
/// (whether its nodes exist needs the customer's tree: see the store).
pub(super) fn assignment(spec: AssignmentSpec) -> (CostAssignmentEntry, Found) {
    let mut found = Found::new();
    key(&mut found, ".customer", &spec.customer);
    if let Err(message) = super::document::check_identifier(&spec.subscription) {
        found.push((".subscription".into(), message));
    }
    let default = match (&spec.to, &spec.split) {
        (Some(to), None) => {
            key(&mut found, ".to", to);
            whole(to)
        }
        (None, Some(split)) => split_shares(&mut found, ".split", split),
        (Some(_), Some(_)) => {
            found.push((
                ".to".into(),
                "give either `to` (the whole amount) or `split`, not both".into(),
            ));
            Vec::new()
        }
        (None, None) => {
            found.push((
                ".to".into(),
                "is required and missing (or give `split: [{to: CODE, percent: 60}, ...]`)".into(),
            ));
            Vec::new()
        }
    };
    let mut by_class = BTreeMap::new();
    for (class, rule) in &spec.by_kind {
        let field = format!(".by_kind.{class}");
        let shares = match rule {
            RuleSpec::Node(to) => {
                key(&mut found, &field, to);
                whole(to)
            }
            RuleSpec::Split(split) => split_shares(&mut found, &field, split),
        };
        by_class.insert(*class, shares);
    }
    let entry = CostAssignmentEntry {
        at: 0,
        customer: spec.customer,
        assignment: Assignment {
            subscription: spec.subscription,
            valid_from: spec.valid_from,
            default,
            by_class,
        },
    };
    (entry, found)
}

/// How a node is named in changes: `acme/field`.
pub fn node_label(customer: &str, code: &str) -> String {
    format!("{customer}/{code}")
}

/// How an assignment is named in changes: `acme/+31612345678 from 2025-01-01`.
pub fn assignment_label(customer: &str, subscription: &str, valid_from: NaiveDate) -> String {
    format!("{customer}/{subscription} from {valid_from}")
}

fn kind_str(kind: NodeKind) -> &'static str {
    match kind {
        NodeKind::Division => "division",
        NodeKind::Department => "department",
        NodeKind::CostCentre => "cost_centre",
        NodeKind::Employee => "employee",
    }
}

pub fn parse_kind(kind: &str) -> Option<NodeKind> {
    [
        NodeKind::Division,
        NodeKind::Department,
        NodeKind::CostCentre,
        NodeKind::Employee,
    ]
    .into_iter()
    .find(|k| kind_str(*k) == kind)
}

pub fn kind_name(kind: NodeKind) -> &'static str {
    kind_str(kind)
}

/// A node's fields as text, for the diff: stored and file versions compare
/// equal exactly when the apply would write nothing.
pub fn node_fields(node: &CostNode) -> Vec<(&'static str, String)> {
    let gl = node
        .gl_codes
        .iter()
        .map(|(class, code)| format!("{class}={code}"))
        .collect::<Vec<_>>()
        .join(",");
    vec![
        ("name", node.name.clone()),
        ("kind", kind_str(node.kind).to_string()),
        (
            "parent",
            node.parent.clone().unwrap_or_else(|| "none".into()),
        ),
        ("gl_codes", if gl.is_empty() { "none".into() } else { gl }),
    ]
}

fn shares_text(shares: &[Share]) -> String {
    match shares {
        [one] if one.weight == 100 => one.node.clone(),
        _ => shares
            .iter()
            .map(|s| format!("{} {}%", s.node, s.weight))
            .collect::<Vec<_>>()
            .join(", "),
    }
}

/// An assignment's fields as text, for the diff.
pub fn assignment_fields(a: &Assignment) -> Vec<(&'static str, String)> {
    let by_kind = a
        .by_class
        .iter()
        .map(|(class, shares)| format!("{class}: {}", shares_text(shares)))
        .collect::<Vec<_>>()
        .join("; ");
    vec![
        ("to", shares_text(&a.default)),
        (
            "by_kind",
            if by_kind.is_empty() {
                "none".into()
            } else {
                by_kind
            },
        ),
    ]
}

/// The rules a customer's nodes and assignments follow together, once the
/// stored ones are known: its tree (the file's when the file has one, the
/// stored one otherwise) is a valid [`CostTree`], and every assignment of
/// the customer, in the file or stored and not replaced by the file, sends
/// its charges to nodes of that tree.
pub(super) fn tree_problems(document: &Document, stored: &Stored) -> Vec<Problem> {
    let mut problems = Vec::new();
    let customers: BTreeSet<&str> = document
        .cost_centres
        .iter()
        .map(|e| e.customer.as_str())
        .chain(
            document
                .cost_assignments
                .iter()
                .map(|e| e.customer.as_str()),
        )
        .collect();
    for customer in customers {
        let entries: Vec<&CostNodeEntry> = document
            .cost_centres
            .iter()
            .filter(|e| e.customer == customer)
            .collect();
        let nodes: Vec<CostNode> = if entries.is_empty() {
            stored.cost_trees.get(customer).cloned().unwrap_or_default()
        } else {
            entries.iter().map(|e| e.node.clone()).collect()
        };
        let at_node = |code: &str| {
            entries
                .iter()
                .find(|e| e.node.code == code)
                .or(entries.first())
                .map(|e| e.at)
        };
        let tree = match CostTree::new(nodes) {
            Ok(tree) => tree,
            // Reported by the file's duplicate keys already.
            Err(TreeError::Duplicate(_)) | Err(TreeError::BadCode(_)) => continue,
            Err(e) => {
                let node = match &e {
                    TreeError::UnknownParent { node, .. } => node.clone(),
                    TreeError::Cycle(nodes) => nodes.first().cloned().unwrap_or_default(),
                    TreeError::BelowEmployee { child, .. } => child.clone(),
                    TreeError::Duplicate(code) | TreeError::BadCode(code) => code.clone(),
                };
                if let Some(at) = at_node(&node) {
                    problems.push(Problem::at(
                        Section::CostCentres,
                        at,
                        ".parent",
                        e.to_string(),
                    ));
                }
                continue;
            }
        };
        let in_file: Vec<&CostAssignmentEntry> = document
            .cost_assignments
            .iter()
            .filter(|e| e.customer == customer)
            .collect();
        for entry in &in_file {
            if let Err(e) = Assignments::new(&tree, vec![entry.assignment.clone()]) {
                let field = assignment_error_field(&entry.assignment, &e);
                problems.push(Problem::at(
                    Section::CostAssignments,
                    entry.at,
                    &field,
                    e.to_string(),
                ));
            }
        }
        // Stored versions the file does not replace must fit the new tree
        // too: a node removed from under them would strand their charges.
        let kept = stored
            .cost_assignments
            .get(customer)
            .into_iter()
            .flatten()
            .filter(|old| {
                !in_file.iter().any(|e| {
                    e.assignment.subscription == old.subscription
                        && e.assignment.valid_from == old.valid_from
                })
            });
        for old in kept {
            if let Err(e) = Assignments::new(&tree, vec![old.clone()]) {
                if let Some(at) = entries.first().map(|e| e.at) {
                    problems.push(Problem::at(
                        Section::CostCentres,
                        at,
                        ".code",
                        format!(
                            "the stored assignment {} no longer fits this tree: {e}; keep the node, or give that assignment anew in cost_assignments",
                            assignment_label(customer, &old.subscription, old.valid_from)
                        ),
                    ));
                }
            }
        }
    }
    problems
}

/// Where in an assignment entry the node an error names was given.
fn assignment_error_field(a: &Assignment, e: &AssignmentError) -> String {
    let node = match e {
        AssignmentError::UnknownNode { node, .. } | AssignmentError::ZeroWeight { node, .. } => {
            node
        }
        _ => return String::new(),
    };
    if a.default.iter().any(|s| &s.node == node) {
        return if a.default.len() == 1 {
            ".to".into()
        } else {
            ".split".into()
        };
    }
    a.by_class
        .iter()
        .find(|(_, shares)| shares.iter().any(|s| &s.node == node))
        .map(|(class, _)| format!(".by_kind.{class}"))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use crate::catalog::parse;

    fn problems(text: &str) -> Vec<String> {
        parse(text, |_| None)
            .problems
            .iter()
            .map(|p| p.with_line())
            .collect()
    }

    #[test]
    fn every_missing_field_of_a_node_and_an_assignment_is_named_with_its_line() {
        let text =
            "cost_centres:\n  - code: ops\n    name: Ops\ncost_assignments:\n  - customer: acme\n";
        assert_eq!(
            problems(text),
            vec![
                "cost_centres[0].customer: is required and missing (line 2)",
                "cost_centres[0].kind: is required and missing (line 2)",
                "cost_assignments[0].subscription: is required and missing (line 5)",
                "cost_assignments[0].valid_from: is required and missing (line 5)",
            ]
        );
    }

    #[test]
    fn a_split_whose_percents_do_not_sum_to_100_names_the_sum() {
        let text = r#"
cost_assignments:
  - customer: acme
    subscription: "+31612345678"
    valid_from: 2025-01-01
    split: [{to: a, percent: 60}, {to: b, percent: 30}]
    by_kind:
      data: [{to: a, percent: 70}, {to: b, percent: 40}]
"#;
        assert_eq!(
            problems(text),
            vec![
                "cost_assignments[0].split: percents sum to 90; they must sum to exactly 100 (line 3)",
                "cost_assignments[0].by_kind.data: percents sum to 110; they must sum to exactly 100 (line 3)",
            ]
        );
    }

    #[test]
    fn an_assignment_needs_either_to_or_split_and_not_both() {
        let both = "cost_assignments:\n  - {customer: acme, subscription: \"+31612345678\", valid_from: 2025-01-01, to: a, split: [{to: a, percent: 100}]}\n";
        assert_eq!(
            problems(both),
            vec!["cost_assignments[0].to: give either `to` (the whole amount) or `split`, not both (line 2)"]
        );
        let neither = "cost_assignments:\n  - {customer: acme, subscription: \"+31612345678\", valid_from: 2025-01-01}\n";
        assert_eq!(
            problems(neither),
            vec!["cost_assignments[0].to: is required and missing (or give `split: [{to: CODE, percent: 60}, ...]`) (line 2)"]
        );
    }

    #[test]
    fn a_valid_tree_and_assignment_are_read_with_whole_amounts_as_one_share_of_100() {
        let text = r#"
cost_centres:
  - {customer: acme, code: ops, name: Ops, kind: division, gl_codes: {data: "4810"}}
  - {customer: acme, code: field, name: Field, kind: cost_centre, parent: ops}
cost_assignments:
  - customer: acme
    subscription: "+31612345678"
    valid_from: 2025-01-01
    to: field
    by_kind: {data: [{to: ops, percent: 60}, {to: field, percent: 40}]}
"#;
        let parsed = parse(text, |_| None);
        assert!(parsed.is_valid(), "{:?}", parsed.problems);
        let doc = parsed.document;
        assert_eq!(doc.cost_centres.len(), 2);
        assert_eq!(doc.cost_centres[1].node.parent.as_deref(), Some("ops"));
        let a = &doc.cost_assignments[0].assignment;
        assert_eq!(a.default[0].weight, 100);
        assert_eq!(
            a.by_class[&crate::costs::ChargeClass::Data]
                .iter()
                .map(|s| (s.node.as_str(), s.weight))
                .collect::<Vec<_>>(),
            vec![("ops", 60), ("field", 40)]
        );
    }
}
