//! The `budgets` and `alert_rules` sections of an apply file (issue 19):
//! what a customer may spend per cycle, on the whole, per cost centre or
//! per subscription, with the percentages to alert at; and the customer's
//! bill-shock and anomaly rules. The rules themselves are in `budgets/`.
//!
//! ```yaml
//! budgets:                            # natural key: (customer, scope, valid_from)
//!   - customer: acme
//!     valid_from: 2025-01-01          # the version valid on a cycle's start applies to it
//!     amount_micros: 500000000        # per cycle: EUR 500
//!     thresholds: [80, 100, 150]      # percent of the amount
//!     # the whole customer unless one of:
//!     cost_centre: field              # a node of the customer's cost tree, or
//!     # subscription: "+31612345678"
//! alert_rules:                        # natural key: (customer, valid_from)
//!   - customer: acme
//!     valid_from: 2025-01-01
//!     bill_shock_limit_micros: 50000000   # roaming data outside the EU per
//!                                          # subscription within a day (provider cost)
//!     anomaly_k_percent: 300              # a subscription's cycle over 3x the
//!     anomaly_floor_micros: 5000000       # median of its last three, and over EUR 5
//! ```
//!
//! Both are versions, as billing details are: each entry is created or
//! updated, others are left alone. A budget is ended by a later version
//! of itself (there is no removal yet).

use chrono::NaiveDate;
use serde::Deserialize;

use crate::budgets::{Budget, Scope};

/// A budget version and where it is in the file.
#[derive(Debug, Clone, PartialEq)]
pub struct BudgetEntry {
    pub at: usize,
    pub customer: String,
    pub valid_from: NaiveDate,
    pub budget: Budget,
}

/// A customer's alert rules from a date on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AlertRules {
    pub bill_shock_limit_micros: Option<i64>,
    /// `(k_percent, floor_micros)`.
    pub anomaly: Option<(u32, i64)>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AlertRuleEntry {
    pub at: usize,
    pub customer: String,
    pub valid_from: NaiveDate,
    pub rules: AlertRules,
}

/// The required fields of a `budgets` entry.
pub const BUDGET_REQUIRED: &[&str] = &["customer", "valid_from", "amount_micros", "thresholds"];

/// The required fields of an `alert_rules` entry.
pub const RULE_REQUIRED: &[&str] = &["customer", "valid_from"];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct BudgetSpec {
    pub(super) customer: String,
    valid_from: NaiveDate,
    // Wide, so a negative amount or threshold is reported as such rather
    // than as a type error.
    amount_micros: i64,
    thresholds: Vec<i64>,
    #[serde(default)]
    cost_centre: Option<String>,
    #[serde(default)]
    subscription: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RuleSpec {
    pub(super) customer: String,
    valid_from: NaiveDate,
    #[serde(default)]
    bill_shock_limit_micros: Option<i64>,
    #[serde(default)]
    anomaly_k_percent: Option<i64>,
    #[serde(default)]
    anomaly_floor_micros: Option<i64>,
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

/// The budget of a `budgets` entry, and its problems.
pub(super) fn budget(spec: BudgetSpec) -> (Option<BudgetEntry>, Found) {
    let mut found = Found::new();
    key(&mut found, ".customer", &spec.customer);
    let scope = match (spec.cost_centre, spec.subscription) {
        (None, None) => Scope::Customer,
        (Some(code), None) => {
            key(&mut found, ".cost_centre", &code);
            Scope::CostCentre(code)
        }
        (None, Some(identifier)) => {
            if let Err(message) = super::document::check_identifier(&identifier) {
                found.push((".subscription".into(), message));
            }
            Scope::Subscription(identifier)
        }
        (Some(_), Some(_)) => {
            found.push((
                ".cost_centre".into(),
                "give either `cost_centre` or `subscription` (or neither, for the whole customer), not both".into(),
            ));
            Scope::Customer
        }
    };
    if spec.amount_micros <= 0 {
        found.push((
            ".amount_micros".into(),
            format!(
                "{} is not a positive amount; give the budget per cycle in micro-units (500000000 is EUR 500)",
                spec.amount_micros
            ),
        ));
    }
    if spec.thresholds.is_empty() {
        found.push((
            ".thresholds".into(),
            "must name at least one percentage, such as [80, 100]".into(),
        ));
    }
    let mut thresholds = Vec::new();
    for (i, t) in spec.thresholds.iter().enumerate() {
        match u32::try_from(*t) {
            Ok(t) if t > 0 && t <= 10_000 => thresholds.push(t),
            _ => found.push((
                format!(".thresholds[{i}]"),
                format!("{t} is not a percentage between 1 and 10000"),
            )),
        }
    }
    let mut sorted = thresholds.clone();
    sorted.sort_unstable();
    sorted.dedup();
    if sorted.len() != thresholds.len() {
        found.push((
            ".thresholds".into(),
            "names a percentage twice; give each once".into(),
        ));
    }
    if !found.is_empty() {
        return (None, found);
    }
    match Budget::new(scope, spec.amount_micros, thresholds) {
        Ok(budget) => (
            Some(BudgetEntry {
                at: 0,
                customer: spec.customer,
                valid_from: spec.valid_from,
                budget,
            }),
            found,
        ),
        Err(e) => {
            found.push((String::new(), e.to_string()));
            (None, found)
        }
    }
}

/// The rules of an `alert_rules` entry, and their problems.
pub(super) fn rules(spec: RuleSpec) -> (Option<AlertRuleEntry>, Found) {
    let mut found = Found::new();
    key(&mut found, ".customer", &spec.customer);
    if let Some(limit) = spec.bill_shock_limit_micros.filter(|l| *l <= 0) {
        found.push((
            ".bill_shock_limit_micros".into(),
            format!("{limit} is not a positive amount; leave the field out for no bill-shock rule"),
        ));
    }
    let anomaly = match (spec.anomaly_k_percent, spec.anomaly_floor_micros) {
        (None, None) => None,
        (Some(k), Some(floor)) => {
            let k = match u32::try_from(k) {
                Ok(k) if k > 100 => Some(k),
                _ => {
                    found.push((
                        ".anomaly_k_percent".into(),
                        format!(
                            "{k} is not a percentage above 100 (300 is three times the median)"
                        ),
                    ));
                    None
                }
            };
            if floor < 0 {
                found.push((
                    ".anomaly_floor_micros".into(),
                    format!("{floor} is negative; give 0 or more micro-units"),
                ));
            }
            k.map(|k| (k, floor))
        }
        (Some(_), None) => {
            found.push((
                ".anomaly_floor_micros".into(),
                "is required with anomaly_k_percent (a floor keeps tiny amounts from alerting; 0 for none)".into(),
            ));
            None
        }
        (None, Some(_)) => {
            found.push((
                ".anomaly_k_percent".into(),
                "is required with anomaly_floor_micros (300 is three times the median)".into(),
            ));
            None
        }
    };
    if spec.bill_shock_limit_micros.is_none()
        && spec.anomaly_k_percent.is_none()
        && spec.anomaly_floor_micros.is_none()
    {
        found.push((
            String::new(),
            "sets no rule; give bill_shock_limit_micros or anomaly_k_percent with anomaly_floor_micros".into(),
        ));
    }
    if !found.is_empty() {
        return (None, found);
    }
    (
        Some(AlertRuleEntry {
            at: 0,
            customer: spec.customer,
            valid_from: spec.valid_from,
            rules: AlertRules {
                bill_shock_limit_micros: spec.bill_shock_limit_micros,
                anomaly,
            },
        }),
        found,
    )
}

/// The stored form of a scope: (`customer` | `cost_centre` | `subscription`, subject).
pub fn scope_key(scope: &Scope) -> (&'static str, &str) {
    match scope {
        Scope::Customer => ("customer", ""),
        Scope::CostCentre(code) => ("cost_centre", code),
        Scope::Subscription(identifier) => ("subscription", identifier),
    }
}

/// A scope from its stored form.
pub fn scope_from(kind: &str, subject: &str) -> Option<Scope> {
    match kind {
        "customer" => Some(Scope::Customer),
        "cost_centre" => Some(Scope::CostCentre(subject.to_string())),
        "subscription" => Some(Scope::Subscription(subject.to_string())),
        _ => None,
    }
}

/// How a budget is named in changes: `acme from 2025-01-01`,
/// `acme/cost_centre field from 2025-01-01`.
pub fn budget_label(customer: &str, scope: &Scope, valid_from: NaiveDate) -> String {
    match scope_key(scope) {
        ("customer", _) => format!("{customer} from {valid_from}"),
        (kind, subject) => format!("{customer}/{kind} {subject} from {valid_from}"),
    }
}

/// How a customer's alert rules are named in changes: `acme from 2025-01-01`.
pub fn rules_label(customer: &str, valid_from: NaiveDate) -> String {
    format!("{customer} from {valid_from}")
}

/// A budget's fields as text, for the diff.
pub fn budget_fields(b: &Budget) -> Vec<(&'static str, String)> {
    vec![
        ("amount_micros", b.amount_micros.to_string()),
        (
            "thresholds",
            b.thresholds
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(","),
        ),
    ]
}

/// Alert rules' fields as text, for the diff.
pub fn rules_fields(r: &AlertRules) -> Vec<(&'static str, String)> {
    let none = || "none".to_string();
    vec![
        (
            "bill_shock_limit_micros",
            r.bill_shock_limit_micros
                .map(|l| l.to_string())
                .unwrap_or_else(none),
        ),
        (
            "anomaly_k_percent",
            r.anomaly.map(|(k, _)| k.to_string()).unwrap_or_else(none),
        ),
        (
            "anomaly_floor_micros",
            r.anomaly.map(|(_, f)| f.to_string()).unwrap_or_else(none),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use crate::budgets::Scope;
    use crate::catalog::parse;

    fn problems(text: &str) -> Vec<String> {
        parse(text, |_| None)
            .problems
            .iter()
            .map(|p| p.with_line())
            .collect()
    }

    #[test]
    fn every_missing_field_of_a_budget_and_a_rule_is_named_with_its_line() {
        let text = "budgets:\n  - customer: acme\n    thresholds: [80]\nalert_rules:\n  - bill_shock_limit_micros: 5\n";
        assert_eq!(
            problems(text),
            vec![
                "budgets[0].valid_from: is required and missing (line 2)",
                "budgets[0].amount_micros: is required and missing (line 2)",
                "alert_rules[0].customer: is required and missing (line 5)",
                "alert_rules[0].valid_from: is required and missing (line 5)",
            ]
        );
    }

    #[test]
    fn bad_amounts_thresholds_and_scopes_are_named_at_their_field() {
        let text = r#"
budgets:
  - customer: acme
    valid_from: 2025-01-01
    amount_micros: 0
    thresholds: [80, 0, 80]
    cost_centre: ops
    subscription: "+31612345678"
alert_rules:
  - {customer: acme, valid_from: 2025-01-01, anomaly_k_percent: 300}
  - {customer: acme, valid_from: 2025-02-01}
"#;
        assert_eq!(
            problems(text),
            vec![
                "budgets[0].cost_centre: give either `cost_centre` or `subscription` (or neither, for the whole customer), not both (line 3)",
                "budgets[0].amount_micros: 0 is not a positive amount; give the budget per cycle in micro-units (500000000 is EUR 500) (line 3)",
                "budgets[0].thresholds[1]: 0 is not a percentage between 1 and 10000 (line 3)",
                "budgets[0].thresholds: names a percentage twice; give each once (line 3)",
                "alert_rules[0].anomaly_floor_micros: is required with anomaly_k_percent (a floor keeps tiny amounts from alerting; 0 for none) (line 10)",
                "alert_rules[1]: sets no rule; give bill_shock_limit_micros or anomaly_k_percent with anomaly_floor_micros (line 11)",
            ]
        );
    }

    #[test]
    fn a_valid_budget_per_scope_and_rules_are_read() {
        let text = r#"
budgets:
  - {customer: acme, valid_from: 2025-01-01, amount_micros: 100000000, thresholds: [150, 80, 100]}
  - {customer: acme, valid_from: 2025-01-01, amount_micros: 5000000, thresholds: [100], cost_centre: field}
  - {customer: acme, valid_from: 2025-01-01, amount_micros: 5000000, thresholds: [100], subscription: "+31612345678"}
alert_rules:
  - {customer: acme, valid_from: 2025-01-01, bill_shock_limit_micros: 50000000, anomaly_k_percent: 300, anomaly_floor_micros: 5000000}
"#;
        let parsed = parse(text, |_| None);
        assert!(parsed.is_valid(), "{:?}", parsed.problems);
        let doc = parsed.document;
        let b = &doc.budgets[0].budget;
        assert_eq!(b.scope, Scope::Customer);
        assert_eq!(
            b.thresholds.iter().copied().collect::<Vec<_>>(),
            [80, 100, 150]
        );
        assert_eq!(
            doc.budgets[1].budget.scope,
            Scope::CostCentre("field".into())
        );
        assert_eq!(
            doc.budgets[2].budget.scope,
            Scope::Subscription("+31612345678".into())
        );
        assert_eq!(doc.alert_rules[0].rules.anomaly, Some((300, 5_000_000)));
        assert_eq!(
            doc.alert_rules[0].rules.bill_shock_limit_micros,
            Some(50_000_000)
        );
    }

    #[test]
    fn the_same_budget_version_twice_is_a_duplicate() {
        let text = r#"
budgets:
  - {customer: acme, valid_from: 2025-01-01, amount_micros: 1, thresholds: [100]}
  - {customer: acme, valid_from: 2025-01-01, amount_micros: 2, thresholds: [100]}
"#;
        let found = problems(text);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].starts_with("budgets[1]"), "{found:?}");
    }
}
