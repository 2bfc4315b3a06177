//! What applying a file changes: each entry compared field by field with the
//! stored object of the same natural key. Pure; the store loads [`Stored`]
//! and writes what [`diff`] says.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use chrono::NaiveDate;
use serde::Serialize;
use serde_json::Value;

use super::budgets::{budget_fields, budget_label, rules_fields, rules_label};
use super::cost_centres::{assignment_fields, assignment_label, node_fields, node_label};
use super::document::{subscription_label, Document};
use super::parties::{billing_fields, seller_fields, version_label};
use crate::billing::rating::RatePlan;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ObjectKind {
    RatePlan,
    Seller,
    Customer,
    BillingDetails,
    Subscription,
    SyncProfile,
    CostNode,
    CostAssignment,
    Budget,
    AlertRules,
    BuyRate,
}

impl ObjectKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ObjectKind::RatePlan => "rate_plan",
            ObjectKind::Seller => "seller",
            ObjectKind::Customer => "customer",
            ObjectKind::BillingDetails => "billing_details",
            ObjectKind::Subscription => "subscription",
            ObjectKind::SyncProfile => "sync_profile",
            ObjectKind::CostNode => "cost_node",
            ObjectKind::CostAssignment => "cost_assignment",
            ObjectKind::Budget => "budget",
            ObjectKind::AlertRules => "alert_rules",
            ObjectKind::BuyRate => "buy_rate",
        }
    }
}

impl fmt::Display for ObjectKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Created,
    Updated,
    Unchanged,
    /// A stored cost node its customer's tree in the file leaves out (a
    /// tree is applied whole; catalog/cost_centres.rs).
    Removed,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Created => "created",
            Action::Updated => "updated",
            Action::Unchanged => "unchanged",
            Action::Removed => "removed",
        }
    }
}

/// One field's old and new value, as text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldChange {
    pub field: String,
    pub from: String,
    pub to: String,
}

impl FieldChange {
    fn new(field: impl Into<String>, from: impl ToString, to: impl ToString) -> Self {
        Self {
            field: field.into(),
            from: from.to_string(),
            to: to.to_string(),
        }
    }
}

impl fmt::Display for FieldChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {} -> {}", self.field, self.from, self.to)
    }
}

/// What happens to one entry of the file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Change {
    pub object: ObjectKind,
    /// The natural key: plan id, customer code, `provider identifier [from
    /// date]`, profile name.
    pub key: String,
    pub action: Action,
    /// For updates, the fields that change.
    pub fields: Vec<FieldChange>,
}

impl Change {
    pub fn is_change(&self) -> bool {
        self.action != Action::Unchanged
    }

    pub fn changes_field(&self, field: &str) -> bool {
        self.fields.iter().any(|f| f.field == field)
    }
}

/// Counts of a change list.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    pub changed: usize,
    pub created: usize,
    pub updated: usize,
    pub unchanged: usize,
    pub removed: usize,
}

impl Summary {
    pub fn of(changes: &[Change]) -> Self {
        let mut summary = Summary::default();
        for change in changes {
            match change.action {
                Action::Created => summary.created += 1,
                Action::Updated => summary.updated += 1,
                Action::Unchanged => summary.unchanged += 1,
                Action::Removed => summary.removed += 1,
            }
        }
        summary.changed = summary.created + summary.updated + summary.removed;
        summary
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct StoredPlan {
    pub name: String,
    pub plan: Value,
}

#[derive(Debug, Clone, PartialEq)]
pub struct StoredCustomer {
    pub id: i64,
    pub name: String,
    pub billing_cycle_start_day: u32,
    pub time_zone: String,
    pub rate_plan: Option<String>,
    pub cdr_retention_months: Option<u16>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct StoredSubscription {
    pub id: i64,
    pub customer_id: i64,
    /// The customer's code, or `#id` for a customer without one.
    pub customer: String,
    pub provider: String,
    pub identifier: String,
    pub active_from: NaiveDate,
    pub active_to: Option<NaiveDate>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct StoredProfile {
    pub id: i64,
    pub provider: String,
    pub base_url: String,
    pub credentials_secret: String,
    pub active: bool,
    pub first_period: NaiveDate,
    pub watermark_period: Option<NaiveDate>,
}

/// The stored objects a file names (and, for subscriptions, every stored
/// period of the file's identifiers).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Stored {
    pub rate_plans: BTreeMap<String, StoredPlan>,
    /// By code.
    pub customers: BTreeMap<String, StoredCustomer>,
    pub subscriptions: Vec<StoredSubscription>,
    /// By name.
    pub sync_profiles: BTreeMap<String, StoredProfile>,
    /// Seller versions by (code, valid_from), as [`seller_fields`] lists them.
    pub sellers: BTreeMap<(String, NaiveDate), Vec<(&'static str, String)>>,
    /// Every seller code stored, for references.
    pub seller_codes: std::collections::BTreeSet<String>,
    /// Billing details versions by (customer code, valid_from), as
    /// [`billing_fields`] lists them.
    pub billing_details: BTreeMap<(String, NaiveDate), Vec<(&'static str, String)>>,
    /// The stored cost trees of the customers the file's cost sections
    /// name, by customer code.
    pub cost_trees: BTreeMap<String, Vec<crate::costs::tree::CostNode>>,
    /// Their stored assignments, by customer code.
    pub cost_assignments: BTreeMap<String, Vec<crate::costs::allocation::Assignment>>,
    /// The stored budget versions of the customers the file's `budgets`
    /// name, by (customer code, label), as [`budget_fields`] lists them.
    pub budgets: BTreeMap<String, Vec<(&'static str, String)>>,
    /// The stored alert rule versions, by label, as [`rules_fields`] lists them.
    pub alert_rules: BTreeMap<String, Vec<(&'static str, String)>>,
    /// The stored buy rates of the file's entries, by natural key, with
    /// their recurring charge.
    pub buy_rates: BTreeMap<(String, String, String, NaiveDate), i64>,
}

/// The fields that differ between a stored version and the file's, in the
/// file's field order.
fn version_fields(
    old: &[(&'static str, String)],
    new: &[(&'static str, String)],
) -> Vec<FieldChange> {
    new.iter()
        .map(|(field, to)| {
            let from = old
                .iter()
                .find(|(f, _)| f == field)
                .map(|(_, v)| v.as_str())
                .unwrap_or("none");
            (field, from, to)
        })
        .filter(|(_, from, to)| from != to)
        .map(|(field, from, to)| FieldChange::new(*field, from, to))
        .collect()
}

impl Stored {
    pub fn subscription(
        &self,
        provider: &str,
        identifier: &str,
        active_from: NaiveDate,
    ) -> Option<&StoredSubscription> {
        self.subscriptions.iter().find(|s| {
            s.provider == provider && s.identifier == identifier && s.active_from == active_from
        })
    }
}

fn optional(value: Option<&str>) -> String {
    value.unwrap_or("none").to_string()
}

fn change(object: ObjectKind, key: String, fields: Option<Vec<FieldChange>>) -> Change {
    let action = match &fields {
        None => Action::Created,
        Some(fields) if fields.is_empty() => Action::Unchanged,
        Some(_) => Action::Updated,
    };
    Change {
        object,
        key,
        action,
        fields: fields.unwrap_or_default(),
    }
}

/// Every entry of `document` against `stored`: created, updated (with the
/// fields) or unchanged; in the order the entries are applied.
pub fn diff(document: &Document, stored: &Stored) -> Vec<Change> {
    let mut changes = Vec::new();
    for entry in &document.rate_plans {
        let plan = &entry.plan;
        let fields = stored
            .rate_plans
            .get(&plan.id)
            .map(|old| plan_fields(old, plan));
        changes.push(change(ObjectKind::RatePlan, plan.id.clone(), fields));
    }
    for entry in &document.sellers {
        let d = &entry.details;
        let key = (d.code.clone(), d.valid_from);
        let fields = stored
            .sellers
            .get(&key)
            .map(|old| version_fields(old, &seller_fields(d)));
        changes.push(change(
            ObjectKind::Seller,
            version_label(&d.code, d.valid_from),
            fields,
        ));
    }
    for customer in &document.customers {
        let fields = stored.customers.get(&customer.code).map(|old| {
            let mut fields = Vec::new();
            if old.name != customer.name {
                fields.push(FieldChange::new("name", &old.name, &customer.name));
            }
            if old.billing_cycle_start_day != customer.billing_cycle_start_day {
                fields.push(FieldChange::new(
                    "billing_cycle_start_day",
                    old.billing_cycle_start_day,
                    customer.billing_cycle_start_day,
                ));
            }
            if old.time_zone != customer.time_zone.name() {
                fields.push(FieldChange::new(
                    "time_zone",
                    &old.time_zone,
                    customer.time_zone.name(),
                ));
            }
            if old.rate_plan != customer.rate_plan {
                fields.push(FieldChange::new(
                    "rate_plan",
                    optional(old.rate_plan.as_deref()),
                    optional(customer.rate_plan.as_deref()),
                ));
            }
            if old.cdr_retention_months != customer.cdr_retention_months {
                let text = |m: Option<u16>| m.map_or("(default)".to_string(), |m| m.to_string());
                fields.push(FieldChange::new(
                    "cdr_retention_months",
                    text(old.cdr_retention_months),
                    text(customer.cdr_retention_months),
                ));
            }
            fields
        });
        changes.push(change(ObjectKind::Customer, customer.code.clone(), fields));
    }
    for entry in &document.billing_details {
        let from = entry.details.valid_from.unwrap_or_default();
        let fields = stored
            .billing_details
            .get(&(entry.customer.clone(), from))
            .map(|old| version_fields(old, &billing_fields(&entry.details)));
        changes.push(change(
            ObjectKind::BillingDetails,
            version_label(&entry.customer, from),
            fields,
        ));
    }
    // By natural key, once: looking each entry up in the list would make
    // the diff of n subscriptions O(n²). The first of equal keys wins, as
    // with `Stored::subscription`.
    let mut stored_subscriptions: HashMap<(&str, &str, NaiveDate), &StoredSubscription> =
        HashMap::with_capacity(stored.subscriptions.len());
    for old in &stored.subscriptions {
        stored_subscriptions
            .entry((
                old.provider.as_str(),
                old.identifier.as_str(),
                old.active_from,
            ))
            .or_insert(old);
    }
    for s in &document.subscriptions {
        let provider = s.provider.as_str();
        let fields = stored_subscriptions
            .get(&(provider, s.identifier.as_str(), s.active_from))
            .map(|old| {
                let mut fields = Vec::new();
                if old.customer != s.customer {
                    fields.push(FieldChange::new("customer", &old.customer, &s.customer));
                }
                if old.active_to != s.active_to {
                    fields.push(FieldChange::new(
                        "active_to",
                        optional(old.active_to.map(|d| d.to_string()).as_deref()),
                        optional(s.active_to.map(|d| d.to_string()).as_deref()),
                    ));
                }
                fields
            });
        let key = subscription_label(provider, &s.identifier, s.active_from);
        changes.push(change(ObjectKind::Subscription, key, fields));
    }
    for p in &document.sync_profiles {
        let fields = stored.sync_profiles.get(&p.name).map(|old| {
            let mut fields = Vec::new();
            if old.provider != p.provider.as_str() {
                fields.push(FieldChange::new("provider", &old.provider, p.provider));
            }
            if old.base_url != p.base_url {
                fields.push(FieldChange::new("base_url", &old.base_url, &p.base_url));
            }
            if old.credentials_secret != p.credentials_secret {
                fields.push(FieldChange::new(
                    "credentials_secret",
                    &old.credentials_secret,
                    &p.credentials_secret,
                ));
            }
            if old.active != p.active {
                fields.push(FieldChange::new("active", old.active, p.active));
            }
            if old.first_period != p.first_period {
                fields.push(FieldChange::new(
                    "first_period",
                    old.first_period,
                    p.first_period,
                ));
            }
            if let Some(watermark) = old.watermark_period {
                if watermark < p.first_period {
                    // The watermark is the last period fetched; one before
                    // the new first period would make the next period one
                    // the file says not to fetch.
                    fields.push(FieldChange::new(
                        "watermark_period",
                        watermark,
                        "none (the next period is first_period)",
                    ));
                }
            }
            fields
        });
        changes.push(change(ObjectKind::SyncProfile, p.name.clone(), fields));
    }
    changes.extend(cost_changes(document, stored));
    for b in &document.budgets {
        let label = budget_label(&b.customer, &b.budget.scope, b.valid_from);
        let fields = stored
            .budgets
            .get(&label)
            .map(|old| version_fields(old, &budget_fields(&b.budget)));
        changes.push(change(ObjectKind::Budget, label, fields));
    }
    for r in &document.alert_rules {
        let label = rules_label(&r.customer, r.valid_from);
        let fields = stored
            .alert_rules
            .get(&label)
            .map(|old| version_fields(old, &rules_fields(&r.rules)));
        changes.push(change(ObjectKind::AlertRules, label, fields));
    }
    for entry in &document.buy_rates {
        let r = &entry.rate;
        let key = (
            r.provider.clone(),
            r.account.clone(),
            r.subscription.clone(),
            r.valid_from,
        );
        let fields = stored.buy_rates.get(&key).map(|old| {
            if *old == r.recurring_micros {
                Vec::new()
            } else {
                vec![FieldChange::new(
                    "recurring_micros",
                    old,
                    r.recurring_micros,
                )]
            }
        });
        changes.push(change(
            ObjectKind::BuyRate,
            super::buy_rates::label(r),
            fields,
        ));
    }
    changes
}

/// The fields of a plan that change, compared as the rating core stores
/// them (`rates[voice-nl].price_per_minute_micros: 100000 -> 120000`).
fn plan_fields(old: &StoredPlan, new: &RatePlan) -> Vec<FieldChange> {
    let mut fields = Vec::new();
    let Ok(new_value) = serde_json::to_value(new) else {
        fields.push(FieldChange::new(
            "plan",
            "(stored)",
            "(cannot be represented)",
        ));
        return fields;
    };
    // A plan stored by other means may leave defaults out; compare it as
    // the rating core reads it when it can.
    let old_value = serde_json::from_value::<RatePlan>(old.plan.clone())
        .ok()
        .and_then(|plan| serde_json::to_value(plan).ok())
        .unwrap_or_else(|| old.plan.clone());
    json_diff("", &old_value, &new_value, &mut fields);
    if old.name != new.name && !fields.iter().any(|f| f.field == "name") {
        fields.push(FieldChange::new("name", &old.name, &new.name));
    }
    fields
}

fn text(value: &Value) -> String {
    match value {
        Value::Null => "none".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// Lists of objects with an `id` (rates, bundles) are compared by id, so
/// inserting a rate reads as one added rate rather than every later one
/// changed. Their order matters too (ties between rates, the order bundles
/// are used in), so a new order is a change of its own.
fn ids(items: &[Value]) -> Option<Vec<&str>> {
    items
        .iter()
        .map(|item| item.get("id").and_then(Value::as_str))
        .collect()
}

fn json_diff(path: &str, old: &Value, new: &Value, out: &mut Vec<FieldChange>) {
    match (old, new) {
        (Value::Object(a), Value::Object(b)) => {
            let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
            keys.sort();
            keys.dedup();
            for key in keys {
                let none = Value::Null;
                json_diff(
                    &join(path, key),
                    a.get(key).unwrap_or(&none),
                    b.get(key).unwrap_or(&none),
                    out,
                );
            }
        }
        (Value::Array(a), Value::Array(b)) => match (ids(a), ids(b)) {
            (Some(old_ids), Some(new_ids)) => {
                for (item, id) in b.iter().zip(&new_ids) {
                    let at = format!("{path}[{id}]");
                    match old_ids.iter().position(|old| old == id) {
                        Some(i) => json_diff(&at, &a[i], item, out),
                        None => out.push(FieldChange::new(at, "none", "added")),
                    }
                }
                for id in old_ids.iter().filter(|id| !new_ids.contains(id)) {
                    out.push(FieldChange::new(
                        format!("{path}[{id}]"),
                        "present",
                        "removed",
                    ));
                }
                let kept_old: Vec<&&str> =
                    old_ids.iter().filter(|id| new_ids.contains(id)).collect();
                let kept_new: Vec<&&str> =
                    new_ids.iter().filter(|id| old_ids.contains(id)).collect();
                if kept_old != kept_new {
                    out.push(FieldChange::new(
                        format!("{path} order"),
                        kept_old.iter().map(|s| **s).collect::<Vec<_>>().join(", "),
                        kept_new.iter().map(|s| **s).collect::<Vec<_>>().join(", "),
                    ));
                }
            }
            _ if a != b => out.push(FieldChange::new(path, text(old), text(new))),
            _ => {}
        },
        _ if old != new => out.push(FieldChange::new(path, text(old), text(new))),
        _ => {}
    }
}

/// The file's cost nodes and assignments against the stored ones; then,
/// per customer whose tree the file holds, the stored nodes it leaves out
/// (removed: a tree is applied whole).
fn cost_changes(document: &Document, stored: &Stored) -> Vec<Change> {
    let mut changes = Vec::new();
    for entry in &document.cost_centres {
        let fields = stored
            .cost_trees
            .get(&entry.customer)
            .and_then(|nodes| nodes.iter().find(|n| n.code == entry.node.code))
            .map(|old| version_fields(&node_fields(old), &node_fields(&entry.node)));
        changes.push(change(
            ObjectKind::CostNode,
            node_label(&entry.customer, &entry.node.code),
            fields,
        ));
    }
    let in_file: std::collections::BTreeSet<(&str, &str)> = document
        .cost_centres
        .iter()
        .map(|e| (e.customer.as_str(), e.node.code.as_str()))
        .collect();
    let customers: std::collections::BTreeSet<&str> =
        in_file.iter().map(|(customer, _)| *customer).collect();
    for customer in customers {
        for old in stored.cost_trees.get(customer).into_iter().flatten() {
            if !in_file.contains(&(customer, old.code.as_str())) {
                changes.push(Change {
                    object: ObjectKind::CostNode,
                    key: node_label(customer, &old.code),
                    action: Action::Removed,
                    fields: Vec::new(),
                });
            }
        }
    }
    for entry in &document.cost_assignments {
        let a = &entry.assignment;
        let fields = stored
            .cost_assignments
            .get(&entry.customer)
            .and_then(|list| {
                list.iter()
                    .find(|o| o.subscription == a.subscription && o.valid_from == a.valid_from)
            })
            .map(|old| version_fields(&assignment_fields(old), &assignment_fields(a)));
        changes.push(change(
            ObjectKind::CostAssignment,
            assignment_label(&entry.customer, &a.subscription, a.valid_from),
            fields,
        ));
    }
    changes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::document::parse;
    use serde_json::json;

    const FILE: &str = r#"
rate_plans:
  - id: business
    name: Business
    unit_bytes: 1048576
    rates:
      - {id: voice-nl, kind: voice, prefix: "31", price_per_minute_micros: 100000, first_increment_s: 60, increment_s: 1}
      - {id: sms, kind: sms, price_per_message_micros: 90000}
customers:
  - {code: acme, name: Acme, billing_cycle_start_day: 1, rate_plan: business}
  - {code: new, name: New, billing_cycle_start_day: 1}
subscriptions:
  - {identifier: "+31612345678", customer: acme, provider: routit}
  - {identifier: "+31612345679", customer: acme, provider: routit, active_to: 2025-06-30}
sync_profiles:
  - {name: main, provider: routit, base_url: "http://sim/routit", credentials_secret: tem/r, first_period: 2025-02-01}
"#;

    fn document() -> Document {
        let parsed = parse(FILE, |_| None);
        assert!(parsed.is_valid(), "{:?}", parsed.problems);
        parsed.document
    }

    /// The database exactly as FILE would leave it.
    fn stored_as_in_file() -> Stored {
        let doc = document();
        let mut stored = Stored::default();
        stored.rate_plans.insert(
            "business".into(),
            StoredPlan {
                name: "Business".into(),
                plan: serde_json::to_value(&doc.rate_plans[0].plan).unwrap(),
            },
        );
        for (id, c) in doc.customers.iter().enumerate() {
            stored.customers.insert(
                c.code.clone(),
                StoredCustomer {
                    id: id as i64 + 1,
                    name: c.name.clone(),
                    billing_cycle_start_day: c.billing_cycle_start_day,
                    time_zone: c.time_zone.name().into(),
                    rate_plan: c.rate_plan.clone(),
                    cdr_retention_months: c.cdr_retention_months,
                },
            );
        }
        for (id, s) in doc.subscriptions.iter().enumerate() {
            stored.subscriptions.push(StoredSubscription {
                id: id as i64 + 1,
                customer_id: 1,
                customer: s.customer.clone(),
                provider: s.provider.as_str().into(),
                identifier: s.identifier.clone(),
                active_from: s.active_from,
                active_to: s.active_to,
            });
        }
        stored.sync_profiles.insert(
            "main".into(),
            StoredProfile {
                id: 1,
                provider: "routit".into(),
                base_url: "http://sim/routit".into(),
                credentials_secret: "tem/r".into(),
                active: true,
                first_period: "2025-02-01".parse().unwrap(),
                watermark_period: Some("2025-02-10".parse().unwrap()),
            },
        );
        stored
    }

    fn fields(change: &Change) -> Vec<String> {
        change.fields.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn everything_is_created_in_an_empty_database_in_the_order_it_is_applied() {
        let changes = diff(&document(), &Stored::default());
        let listed: Vec<(ObjectKind, &str, Action)> = changes
            .iter()
            .map(|c| (c.object, c.key.as_str(), c.action))
            .collect();
        assert_eq!(
            listed,
            vec![
                (ObjectKind::RatePlan, "business", Action::Created),
                (ObjectKind::Customer, "acme", Action::Created),
                (ObjectKind::Customer, "new", Action::Created),
                (
                    ObjectKind::Subscription,
                    "routit +31612345678",
                    Action::Created
                ),
                (
                    ObjectKind::Subscription,
                    "routit +31612345679",
                    Action::Created
                ),
                (ObjectKind::SyncProfile, "main", Action::Created),
            ]
        );
        assert_eq!(
            Summary::of(&changes),
            Summary {
                changed: 6,
                created: 6,
                updated: 0,
                unchanged: 0,
                removed: 0
            }
        );
    }

    #[test]
    fn a_database_that_matches_the_file_has_nothing_to_change() {
        let changes = diff(&document(), &stored_as_in_file());
        assert!(
            changes.iter().all(|c| c.action == Action::Unchanged),
            "{changes:#?}"
        );
        assert_eq!(Summary::of(&changes).changed, 0);
    }

    #[test]
    fn updates_list_each_changed_field_with_its_old_and_new_value() {
        let mut stored = stored_as_in_file();
        stored.customers.get_mut("acme").unwrap().rate_plan = None;
        stored.customers.get_mut("acme").unwrap().time_zone = "Europe/London".into();
        stored.subscriptions[1].active_to = None;
        stored.subscriptions[0].customer = "#7".into();
        stored.sync_profiles.get_mut("main").unwrap().first_period = "2025-01-01".parse().unwrap();
        stored
            .sync_profiles
            .get_mut("main")
            .unwrap()
            .watermark_period = Some("2025-01-20".parse().unwrap());

        let changes = diff(&document(), &stored);

        assert_eq!(
            fields(&changes[1]),
            vec![
                "time_zone: Europe/London -> Europe/Amsterdam",
                "rate_plan: none -> business"
            ]
        );
        assert_eq!(changes[2].action, Action::Unchanged);
        assert_eq!(fields(&changes[3]), vec!["customer: #7 -> acme"]);
        assert_eq!(fields(&changes[4]), vec!["active_to: none -> 2025-06-30"]);
        assert_eq!(
            fields(&changes[5]),
            vec![
                "first_period: 2025-01-01 -> 2025-02-01",
                "watermark_period: 2025-01-20 -> none (the next period is first_period)"
            ]
        );
    }

    #[test]
    fn plan_changes_are_named_per_rate_by_id() {
        let mut stored = stored_as_in_file();
        let plan = &mut stored.rate_plans.get_mut("business").unwrap().plan;
        plan["rates"][0]["price_per_minute_micros"] = json!(120000);
        let sms = plan["rates"][1].clone();
        plan["rates"] = json!([
            sms,
            plan["rates"][0].clone(),
            {"id": "old", "kind": "mms", "price_per_message_micros": 1}
        ]);

        let changes = diff(&document(), &stored);

        assert_eq!(
            fields(&changes[0]),
            vec![
                "rates[voice-nl].price_per_minute_micros: 120000 -> 100000",
                "rates[old]: present -> removed",
                "rates order: sms, voice-nl -> voice-nl, sms",
            ]
        );
    }

    #[test]
    fn a_stored_plan_without_its_defaults_is_not_a_change() {
        let mut stored = stored_as_in_file();
        stored.rate_plans.get_mut("business").unwrap().plan = json!({
            "id": "business", "name": "Business", "unit_bytes": 1048576,
            "rates": [
                {"id": "voice-nl", "kind": "voice", "prefix": "31", "price_per_minute_micros": 100000, "first_increment_s": 60, "increment_s": 1},
                {"id": "sms", "kind": "sms", "price_per_message_micros": 90000}
            ]
        });
        assert_eq!(diff(&document(), &stored)[0].action, Action::Unchanged);
    }
}
