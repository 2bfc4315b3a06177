//! A cycle's budgets and anomalies evaluated after its calculation (in
//! BillingInsight, which runs once per calculation: a chain whose
//! calculation found another chain's totals skips it, so the chain that
//! made the totals evaluates them).
//!
//! Spending is what an invoice made now would bill (`invoice::billable`:
//! the totals lines and the monthly fees): the whole customer's, a
//! subscription's, or a cost centre's with everything below it, by the
//! assignments valid on the cycle's start (`costs::allocation`). Under the
//! cycle's lock, in one transaction ([`BudgetRun`]), the spending is read,
//! compared with each budget's level last sent, and the new levels, their
//! alerts (outbox) and insights are written together; the alerts are
//! published after the commit ([`super::alerts::publish_pending`]).
//!
//! Anomalies compare each subscription's usage cost with the median of its
//! last three cycles (fees are the same every cycle and would only dilute
//! a jump); they are insights of the cycle, replaced each time, and a
//! subscription newly anomalous is alerted once.

use std::collections::{BTreeMap, BTreeSet};

use async_trait::async_trait;
use chrono::{Months, NaiveDate};
use serde::Serialize;
use serde_json::json;

use super::alerts::{Alert, AlertKind};
use super::anomaly::{anomaly, Anomaly, AnomalyRule};
use super::{evaluate, Budget, BudgetEvent, Level, Scope};
use crate::billing::customer::{CustomerError, CustomerSettings};
use crate::billing::invoice::{billable, UsageLine};
use crate::costs::allocation::{allocate, Assignment, Assignments, Charge};
use crate::costs::tree::{CostNode, CostTree};
use crate::costs::ChargeClass;
use crate::ports::StoreError;

/// A budget version as stored (the one valid on the cycle's start).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredBudget {
    pub valid_from: NaiveDate,
    pub budget: Budget,
}

/// What the evaluation reads of a customer's configuration.
#[derive(Debug, Clone, Default)]
pub struct BudgetConfig {
    /// The customer's code (`customer` attribute; its id when it has none).
    pub customer: String,
    /// Per scope, the version valid on the cycle's start.
    pub budgets: Vec<StoredBudget>,
    /// The anomaly rule valid on the cycle's start.
    pub anomaly: Option<AnomalyRule>,
    /// The cost tree and assignments, read only when a cost-centre budget
    /// needs them.
    pub tree: Vec<CostNode>,
    pub assignments: Vec<Assignment>,
}

/// Reads configuration and starts the locked run of one cycle
/// (`adapters::budgets` on PostgreSQL).
#[async_trait]
pub trait BudgetStore: Send + Sync {
    /// The budgets and rules valid on `cycle` (its start date).
    async fn config(&self, customer_id: i64, cycle: NaiveDate) -> Result<BudgetConfig, StoreError>;
    /// Starts the cycle's evaluation: a transaction holding the cycle's
    /// budget lock until [`BudgetRun::commit`].
    async fn begin(
        &self,
        customer_id: i64,
        cycle: NaiveDate,
    ) -> Result<Box<dyn BudgetRun>, StoreError>;
}

/// One evaluation's transaction.
#[async_trait]
pub trait BudgetRun: Send {
    /// The cycle's totals lines, or `None` without totals.
    async fn usage(&mut self) -> Result<Option<Vec<UsageLine>>, StoreError>;
    /// Per identifier, how many of its subscriptions were active at the
    /// cycle start (the monthly fees; as `GenerateInvoice` counts them).
    async fn fee_counts(&mut self) -> Result<BTreeMap<String, i64>, StoreError>;
    /// Per earlier cycle given, each subscription's usage cost.
    async fn usage_by_subscription(
        &mut self,
        cycles: &[NaiveDate],
    ) -> Result<BTreeMap<NaiveDate, BTreeMap<String, i64>>, StoreError>;
    /// The level last sent per scope for this cycle.
    async fn levels(&mut self) -> Result<BTreeMap<Scope, Level>, StoreError>;
    async fn set_level(
        &mut self,
        scope: &Scope,
        level: Level,
        spent_micros: i64,
    ) -> Result<(), StoreError>;
    /// Writes the alert to the outbox and, under `insight_subject`, as an
    /// insight of the cycle of its kind.
    async fn raise(&mut self, alert: &Alert, insight_subject: &str) -> Result<(), StoreError>;
    /// The subscriptions with an anomaly insight of this cycle.
    async fn anomalous(&mut self) -> Result<BTreeSet<String>, StoreError>;
    /// Replaces the cycle's anomaly insights.
    async fn replace_anomalies(
        &mut self,
        anomalies: &BTreeMap<String, Anomaly>,
    ) -> Result<(), StoreError>;
    async fn commit(self: Box<Self>) -> Result<(), StoreError>;
}

#[derive(Debug, thiserror::Error)]
pub enum BudgetsError {
    #[error(transparent)]
    Customer(#[from] CustomerError),
    #[error("database error: {0}")]
    Store(#[from] StoreError),
    #[error(
        "customer {customer} cycle {cycle}: the charges overflow 64 bits; report this as a bug"
    )]
    Overflow { customer: i64, cycle: NaiveDate },
}

/// What one evaluation did.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct BudgetOutcome {
    /// Per budget evaluated: scope, spending, level.
    pub evaluated: Vec<(Scope, i64, Level)>,
    /// The alerts raised (written to the outbox).
    pub raised: Vec<Alert>,
    pub anomalies: BTreeMap<String, Anomaly>,
    /// Cost-centre budgets skipped, with why (a tree that is not valid).
    pub skipped: Vec<String>,
}

/// The insight subject of a budget level: `customer 80%`,
/// `cost_centre field 100%`.
pub fn level_subject(scope: &Scope, threshold: u32) -> String {
    match scope {
        Scope::Customer => format!("customer {threshold}%"),
        Scope::CostCentre(code) => format!("cost_centre {code} {threshold}%"),
        Scope::Subscription(id) => format!("subscription {id} {threshold}%"),
    }
}

fn scope_parts(scope: &Scope) -> (&'static str, &str) {
    match scope {
        Scope::Customer => ("customer", ""),
        Scope::CostCentre(code) => ("cost_centre", code),
        Scope::Subscription(id) => ("subscription", id),
    }
}

/// The charges of the cycle as an invoice made now would bill them.
fn charges(
    usage: &[UsageLine],
    plan: Option<&crate::billing::rating::RatePlan>,
    fee_counts: &BTreeMap<String, i64>,
) -> Option<Vec<Charge>> {
    let billable = billable(usage, plan, fee_counts)?;
    Some(
        billable
            .lines
            .into_iter()
            .map(|l| Charge {
                class: l.kind.parse().unwrap_or(ChargeClass::Service),
                subscription: l.subscription,
                amount_micros: l.amount_micros,
            })
            .collect(),
    )
}

/// Each budget's spending: `None` for a cost-centre budget whose tree or
/// assignments are not valid (the reason in `skipped`).
fn spending(
    config: &BudgetConfig,
    cycle: NaiveDate,
    charges: &[Charge],
    skipped: &mut Vec<String>,
) -> Vec<(Budget, i64)> {
    let total: i64 = charges.iter().map(|c| c.amount_micros).sum();
    let needs_tree = config
        .budgets
        .iter()
        .any(|b| matches!(b.budget.scope, Scope::CostCentre(_)));
    let rolled_up = if needs_tree {
        let built = CostTree::new(config.tree.clone())
            .map_err(|e| e.to_string())
            .and_then(|tree| {
                let assignments = Assignments::new(&tree, config.assignments.clone())
                    .map_err(|e| e.to_string())?;
                Ok(tree.roll_up(&allocate(&assignments, cycle, charges).booked_per_node()))
            });
        match built {
            Ok(up) => Some(up),
            Err(e) => {
                skipped.push(format!(
                    "the cost tree or assignments are not valid ({e}); apply them again with temctl apply"
                ));
                None
            }
        }
    } else {
        None
    };
    let mut out = Vec::new();
    for StoredBudget { budget, .. } in &config.budgets {
        let spent = match &budget.scope {
            Scope::Customer => Some(total),
            Scope::Subscription(id) => Some(
                charges
                    .iter()
                    .filter(|c| &c.subscription == id)
                    .map(|c| c.amount_micros)
                    .sum(),
            ),
            Scope::CostCentre(code) => match &rolled_up {
                Some(up) => match up.get(code) {
                    Some(amount) => Some(*amount),
                    None => {
                        skipped.push(format!(
                            "budget of cost centre {code}: no such node in the customer's tree; apply the tree or the budget again"
                        ));
                        None
                    }
                },
                None => None,
            },
        };
        if let Some(spent) = spent {
            out.push((budget.clone(), spent));
        }
    }
    out
}

/// The alert of a budget event.
fn budget_alert(
    customer_id: i64,
    customer: &str,
    cycle: NaiveDate,
    scope: &Scope,
    event: &BudgetEvent,
) -> (Alert, String) {
    let (kind, threshold) = match event {
        BudgetEvent::Alert { threshold, .. } => (AlertKind::BudgetAlert, *threshold),
        BudgetEvent::Resolved { threshold, .. } => (AlertKind::BudgetResolved, *threshold),
    };
    let (scope_name, subject) = scope_parts(scope);
    let mut body = serde_json::to_value(event).unwrap_or_else(|_| json!({}));
    if let serde_json::Value::Object(map) = &mut body {
        map.insert("cycle".into(), json!(cycle));
        map.insert("scope".into(), json!(scope_name));
        map.insert("subject".into(), json!(subject));
    }
    let alert = Alert::new(customer_id, customer, kind, body)
        .with("threshold", threshold)
        .with("scope", scope_name)
        .with("subject", subject)
        .with("cycle", cycle);
    (alert, level_subject(scope, threshold))
}

/// Evaluates the cycle's budgets and anomalies and records what changed
/// (see the module docs). Publishing is the caller's, after this returns.
pub async fn evaluate_cycle(
    store: &dyn BudgetStore,
    customers: &dyn CustomerSettings,
    customer_id: i64,
    cycle: NaiveDate,
) -> Result<BudgetOutcome, BudgetsError> {
    let mut outcome = BudgetOutcome::default();
    let config = store.config(customer_id, cycle).await?;
    if config.budgets.is_empty() && config.anomaly.is_none() {
        return Ok(outcome);
    }
    let settings = customers.load(customer_id, cycle).await?;
    let plan = settings.plan.as_ref().map(|(_, plan)| plan);

    let mut run = store.begin(customer_id, cycle).await?;
    let Some(usage) = run.usage().await? else {
        // No totals (yet): nothing is spent that a budget could see.
        return Ok(outcome);
    };
    let fee_counts = if plan.is_some() {
        run.fee_counts().await?
    } else {
        BTreeMap::new()
    };
    let charges = charges(&usage, plan, &fee_counts).ok_or(BudgetsError::Overflow {
        customer: customer_id,
        cycle,
    })?;

    let levels = run.levels().await?;
    for (budget, spent) in spending(&config, cycle, &charges, &mut outcome.skipped) {
        let raised = levels.get(&budget.scope).copied().flatten();
        let (event, level) = evaluate(&budget, spent, raised);
        if let Some(event) = &event {
            let (alert, subject) =
                budget_alert(customer_id, &config.customer, cycle, &budget.scope, event);
            run.raise(&alert, &subject).await?;
            outcome.raised.push(alert);
        }
        if event.is_some() || !levels.contains_key(&budget.scope) || raised != level {
            run.set_level(&budget.scope, level, spent).await?;
        }
        outcome.evaluated.push((budget.scope.clone(), spent, level));
    }

    if let Some(rule) = config.anomaly {
        // Start days are 1..=28, so the same day exists in earlier months.
        let earlier: Vec<NaiveDate> = (1..=3).map(|m| cycle - Months::new(m)).collect();
        let history = run.usage_by_subscription(&earlier).await?;
        let mut now: BTreeMap<&str, i64> = BTreeMap::new();
        for line in &usage {
            *now.entry(line.subscription.as_str()).or_insert(0) += line.rated_cost_micros;
        }
        for (subscription, cost) in now {
            let previous: Vec<i64> = earlier
                .iter()
                .filter_map(|c| history.get(c))
                .map(|costs| costs.get(subscription).copied().unwrap_or(0))
                .collect();
            if let Some(found) = anomaly(rule, cost, &previous) {
                outcome.anomalies.insert(subscription.to_string(), found);
            }
        }
        let before = run.anomalous().await?;
        run.replace_anomalies(&outcome.anomalies).await?;
        for (subscription, found) in &outcome.anomalies {
            if before.contains(subscription) {
                continue;
            }
            let alert = Alert::new(
                customer_id,
                &config.customer,
                AlertKind::Anomaly,
                json!({
                    "cycle": cycle,
                    "subscription": subscription,
                    "cost_micros": found.cost_micros,
                    "median_micros": found.median_micros,
                    "limit_micros": found.limit_micros,
                    "k_percent": rule.k_percent,
                    "floor_micros": rule.floor_micros,
                }),
            )
            .with("subscription", subscription)
            .with("cycle", cycle);
            // The anomaly insight itself is the replaced one above; the
            // alert goes to the outbox only.
            run.raise(&alert, "").await?;
            outcome.raised.push(alert);
        }
    }
    run.commit().await?;
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::costs::allocation::Share;
    use crate::costs::tree::NodeKind;

    fn line(subscription: &str, kind: &str, cost: i64) -> UsageLine {
        UsageLine {
            subscription: subscription.into(),
            kind: kind.into(),
            zone: "home".into(),
            cdr_count: 1,
            voice_seconds: 0,
            data_bytes: 0,
            messages: 0,
            rated_cost_micros: cost,
        }
    }

    fn node(code: &str, parent: Option<&str>) -> CostNode {
        CostNode {
            code: code.into(),
            name: code.into(),
            kind: NodeKind::CostCentre,
            parent: parent.map(str::to_string),
            gl_codes: BTreeMap::new(),
        }
    }

    #[test]
    fn spending_is_the_customer_total_a_subscription_s_part_and_a_cost_centre_rolled_up() {
        let cycle: NaiveDate = "2025-03-01".parse().unwrap();
        let charges = charges(
            &[line("a", "voice", 1_000), line("b", "data", 3_000)],
            None,
            &BTreeMap::new(),
        )
        .unwrap();
        let budget = |scope| StoredBudget {
            valid_from: cycle,
            budget: Budget::new(scope, 1, [100]).unwrap(),
        };
        let config = BudgetConfig {
            customer: "acme".into(),
            budgets: vec![
                budget(Scope::Customer),
                budget(Scope::Subscription("b".into())),
                budget(Scope::CostCentre("ops".into())),
                budget(Scope::CostCentre("nowhere".into())),
            ],
            anomaly: None,
            tree: vec![node("ops", None), node("field", Some("ops"))],
            assignments: vec![Assignment {
                subscription: "a".into(),
                valid_from: "2025-01-01".parse().unwrap(),
                default: vec![Share {
                    node: "field".into(),
                    weight: 100,
                }],
                by_class: BTreeMap::new(),
            }],
        };
        let mut skipped = Vec::new();
        let got: Vec<i64> = spending(&config, cycle, &charges, &mut skipped)
            .into_iter()
            .map(|(_, s)| s)
            .collect();
        // The customer 4,000; b 3,000; ops holds field's 1,000 (b has no
        // assignment); "nowhere" is skipped, saying why.
        assert_eq!(got, vec![4_000, 3_000, 1_000]);
        assert_eq!(skipped.len(), 1);
        assert!(skipped[0].contains("nowhere"), "{skipped:?}");
    }

    #[test]
    fn a_budget_event_becomes_an_alert_with_level_threshold_and_scope_attributes() {
        let cycle: NaiveDate = "2025-03-01".parse().unwrap();
        let event = BudgetEvent::Resolved {
            threshold: 100,
            level: None,
            spent_micros: 70,
            budget_micros: 100,
        };
        let (alert, subject) =
            budget_alert(3, "acme", cycle, &Scope::CostCentre("field".into()), &event);
        assert_eq!(subject, "cost_centre field 100%");
        assert_eq!(alert.attributes["level"], "resolved");
        assert_eq!(alert.attributes["threshold"], "100");
        assert_eq!(alert.attributes["scope"], "cost_centre");
        assert_eq!(alert.attributes["subject"], "field");
        assert_eq!(alert.attributes["cycle"], "2025-03-01");
        assert_eq!(alert.body["spent_micros"], json!(70));
        assert_eq!(alert.body["event"], json!("resolved"));
    }
}
