//! A customer's organisation as a tree (a forest: several divisions may
//! stand side by side) of cost nodes, each with a code unique within the
//! customer. Built once from the configuration and checked then, so that
//! allocating over it can never fail.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::costs::ChargeClass;

/// The code of the place where charges of a subscription with no
/// assignment on the cycle's start go. It is reserved: no node may use it.
pub const UNALLOCATED: &str = "UNALLOCATED";

/// What a node stands for. Only employees are constrained: they are the
/// leaves a subscription's user is, so nothing hangs below them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeKind {
    Division,
    Department,
    CostCentre,
    Employee,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CostNode {
    pub code: String,
    pub name: String,
    pub kind: NodeKind,
    pub parent: Option<String>,
    /// General-ledger accounts per charge class; a class without one takes
    /// the nearest ancestor's.
    #[serde(default)]
    pub gl_codes: BTreeMap<ChargeClass, String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TreeError {
    #[error("cost node code {0:?} appears twice; give each node of a customer its own code")]
    Duplicate(String),
    #[error("cost node {node:?} names parent {parent:?}, which is not a node of this customer; add it or correct the parent")]
    UnknownParent { node: String, parent: String },
    #[error("cost nodes {0:?} form a cycle through their parents; one of them must hang from another node or be a root")]
    Cycle(Vec<String>),
    #[error("cost node {child:?} hangs below employee {employee:?}; employees are leaves, hang it from their cost centre instead")]
    BelowEmployee { child: String, employee: String },
    #[error("cost node code {0:?} is empty or reserved; choose another code")]
    BadCode(String),
}

/// A validated tree: every parent exists, no cycles, no node below an
/// employee, codes unique and not reserved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CostTree {
    nodes: BTreeMap<String, CostNode>,
}

impl CostTree {
    pub fn new(nodes: Vec<CostNode>) -> Result<Self, TreeError> {
        let mut by_code = BTreeMap::new();
        for node in nodes {
            if node.code.trim().is_empty() || node.code == UNALLOCATED {
                return Err(TreeError::BadCode(node.code));
            }
            if by_code.contains_key(&node.code) {
                return Err(TreeError::Duplicate(node.code));
            }
            by_code.insert(node.code.clone(), node);
        }
        for node in by_code.values() {
            if let Some(parent) = &node.parent {
                let Some(up) = by_code.get(parent) else {
                    return Err(TreeError::UnknownParent {
                        node: node.code.clone(),
                        parent: parent.clone(),
                    });
                };
                if up.kind == NodeKind::Employee {
                    return Err(TreeError::BelowEmployee {
                        child: node.code.clone(),
                        employee: up.code.clone(),
                    });
                }
            }
        }
        let tree = CostTree { nodes: by_code };
        for code in tree.nodes.keys() {
            // A path longer than the number of nodes has repeated one.
            let mut path = vec![code.clone()];
            let mut at = tree.nodes[code].parent.clone();
            while let Some(parent) = at {
                if path.contains(&parent) {
                    let from = path.iter().position(|c| *c == parent).unwrap_or(0);
                    let mut cycle = path[from..].to_vec();
                    cycle.sort();
                    return Err(TreeError::Cycle(cycle));
                }
                path.push(parent.clone());
                at = tree.nodes[&parent].parent.clone();
            }
        }
        Ok(tree)
    }

    pub fn contains(&self, code: &str) -> bool {
        self.nodes.contains_key(code)
    }

    pub fn node(&self, code: &str) -> Option<&CostNode> {
        self.nodes.get(code)
    }

    pub fn nodes(&self) -> impl Iterator<Item = &CostNode> {
        self.nodes.values()
    }

    pub fn roots(&self) -> impl Iterator<Item = &CostNode> {
        self.nodes.values().filter(|n| n.parent.is_none())
    }

    /// `code` and its ancestors up to its root, nearest first.
    pub fn path(&self, code: &str) -> Vec<&CostNode> {
        let mut out = Vec::new();
        let mut at = self.nodes.get(code);
        while let Some(node) = at {
            out.push(node);
            at = node.parent.as_ref().and_then(|p| self.nodes.get(p));
        }
        out
    }

    /// 1 for a root, 2 for its children, and so on (0 for no such node).
    pub fn depth(&self, code: &str) -> usize {
        self.path(code).len()
    }

    /// The general-ledger account of a charge class at `code`: its own, or
    /// its nearest ancestor's.
    pub fn gl_code(&self, code: &str, class: ChargeClass) -> Option<&str> {
        self.path(code)
            .into_iter()
            .find_map(|n| n.gl_codes.get(&class))
            .map(String::as_str)
    }

    /// Each node's amount with everything below it: `own` holds the
    /// amounts booked on nodes themselves.
    pub fn roll_up(&self, own: &BTreeMap<String, i64>) -> BTreeMap<String, i64> {
        let mut out: BTreeMap<String, i64> = self.nodes.keys().map(|c| (c.clone(), 0)).collect();
        for (code, amount) in own {
            for node in self.path(code) {
                if let Some(sum) = out.get_mut(&node.code) {
                    *sum += amount;
                }
            }
        }
        out
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn node(code: &str, kind: NodeKind, parent: Option<&str>) -> CostNode {
        CostNode {
            code: code.into(),
            name: code.to_uppercase(),
            kind,
            parent: parent.map(str::to_string),
            gl_codes: BTreeMap::new(),
        }
    }

    fn org() -> Vec<CostNode> {
        vec![
            node("sales", NodeKind::Division, None),
            node("sales-nl", NodeKind::Department, Some("sales")),
            node("cc-100", NodeKind::CostCentre, Some("sales-nl")),
            node("alice", NodeKind::Employee, Some("cc-100")),
            node("it", NodeKind::Division, None),
        ]
    }

    #[test]
    fn a_forest_of_divisions_is_a_tree_with_paths_and_depths() {
        let tree = CostTree::new(org()).unwrap();
        let path: Vec<&str> = tree.path("alice").iter().map(|n| n.code.as_str()).collect();
        assert_eq!(path, ["alice", "cc-100", "sales-nl", "sales"]);
        assert_eq!(
            (tree.depth("alice"), tree.depth("it"), tree.depth("x")),
            (4, 1, 0)
        );
        let roots: Vec<&str> = tree.roots().map(|n| n.code.as_str()).collect();
        assert_eq!(roots, ["it", "sales"]);
    }

    #[test]
    fn an_unknown_parent_a_duplicate_a_reserved_code_and_a_node_below_an_employee_are_refused() {
        let mut nodes = org();
        nodes.push(node("x", NodeKind::CostCentre, Some("nowhere")));
        assert_eq!(
            CostTree::new(nodes).unwrap_err(),
            TreeError::UnknownParent {
                node: "x".into(),
                parent: "nowhere".into()
            }
        );
        let mut nodes = org();
        nodes.push(node("it", NodeKind::Department, None));
        assert_eq!(
            CostTree::new(nodes).unwrap_err(),
            TreeError::Duplicate("it".into())
        );
        let mut nodes = org();
        nodes.push(node(UNALLOCATED, NodeKind::CostCentre, None));
        assert!(matches!(CostTree::new(nodes), Err(TreeError::BadCode(_))));
        let mut nodes = org();
        nodes.push(node("phone", NodeKind::CostCentre, Some("alice")));
        assert!(matches!(
            CostTree::new(nodes),
            Err(TreeError::BelowEmployee { .. })
        ));
    }

    #[test]
    fn parents_that_go_round_in_a_cycle_are_refused_and_named() {
        let nodes = vec![
            node("a", NodeKind::Department, Some("c")),
            node("b", NodeKind::Department, Some("a")),
            node("c", NodeKind::Department, Some("b")),
            node("root", NodeKind::Division, None),
        ];
        assert_eq!(
            CostTree::new(nodes).unwrap_err(),
            TreeError::Cycle(vec!["a".into(), "b".into(), "c".into()])
        );
    }

    #[test]
    fn a_gl_code_is_inherited_from_the_nearest_ancestor_that_has_one() {
        let mut nodes = org();
        nodes[0].gl_codes.insert(ChargeClass::Data, "4810".into());
        nodes[2].gl_codes.insert(ChargeClass::Data, "4811".into());
        nodes[0].gl_codes.insert(ChargeClass::Voice, "4800".into());
        let tree = CostTree::new(nodes).unwrap();
        assert_eq!(tree.gl_code("alice", ChargeClass::Data), Some("4811"));
        assert_eq!(tree.gl_code("alice", ChargeClass::Voice), Some("4800"));
        assert_eq!(tree.gl_code("alice", ChargeClass::Fee), None);
    }

    #[test]
    fn a_roll_up_adds_every_node_s_amount_to_all_its_ancestors() {
        let tree = CostTree::new(org()).unwrap();
        let own = BTreeMap::from([
            ("alice".to_string(), 700),
            ("cc-100".to_string(), 300),
            ("it".to_string(), 5),
        ]);
        let up = tree.roll_up(&own);
        assert_eq!(up["sales"], 1000);
        assert_eq!(up["sales-nl"], 1000);
        assert_eq!(up["cc-100"], 1000);
        assert_eq!(up["alice"], 700);
        assert_eq!(up["it"], 5);
    }
}
