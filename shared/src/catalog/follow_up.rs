//! The work an apply starts: re-rating the open cycles of customers whose
//! pricing changed, attaching CDRs that arrived before their subscription,
//! and issuing the invoices that were blocked for missing billing data once
//! sellers or billing details changed (rather than waiting for the hourly
//! sweep). Which work follows from a change list is pure
//! ([`triggers`], [`open_cycles`], [`rerating`]); sending it goes through
//! the [`QueueSend`] port ([`deliver`]).

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Datelike, Duration, NaiveDate, Utc};
use chrono_tz::Tz;
use serde::Serialize;
use serde_json::Value;

use super::changes::{Action, Change, ObjectKind};
use crate::cdr::cycle_bounds;
use crate::cdr::cycle_of;
use crate::command::{AttachUnassignedCdrs, Cause, Command, CyclePayload};
use crate::envelope::{derived_id, Envelope, Step};
use crate::ports::{OutgoingMessage, QueueSend};
use crate::routing::Router;

/// Days after a cycle's end during which its invoice is still a draft and
/// its totals may change (INVOICE_GRACE_DAYS).
pub const DEFAULT_GRACE_DAYS: u32 = 5;

/// Customer fields whose change re-prices the customer's cycles.
const PRICING_FIELDS: [&str; 3] = ["rate_plan", "billing_cycle_start_day", "time_zone"];

/// What a change list asks for, before the database says which customers
/// and cycles that means.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Triggers {
    /// Plans whose pricing changed (a new name alone prices nothing anew).
    pub plans: BTreeSet<String>,
    /// Customer codes whose plan, cycle start day or time zone changed, with
    /// the reason.
    pub customers: BTreeMap<String, String>,
    /// Subscriptions added or changed.
    pub subscriptions: usize,
    /// Customer codes whose billing details were added or changed.
    pub billing_details: BTreeSet<String>,
    /// Whether a seller's details were added or changed: any customer's
    /// blocked invoice may have waited for them.
    pub sellers: bool,
    /// Customer codes whose budgets or alert rules were added or changed:
    /// their open cycles that have totals are calculated again, so the
    /// budgets are evaluated now (BillingInsight) rather than at the next
    /// import.
    pub budgets: BTreeSet<String>,
}

impl Triggers {
    pub fn is_empty(&self) -> bool {
        self.plans.is_empty()
            && self.customers.is_empty()
            && self.subscriptions == 0
            && self.billing_details.is_empty()
            && !self.sellers
            && self.budgets.is_empty()
    }
}

pub fn triggers(changes: &[Change]) -> Triggers {
    let mut triggers = Triggers::default();
    for change in changes.iter().filter(|c| c.action == Action::Updated) {
        match change.object {
            ObjectKind::RatePlan if change.fields.iter().any(|f| f.field != "name") => {
                triggers.plans.insert(change.key.clone());
            }
            ObjectKind::Customer => {
                let changed: Vec<&str> = PRICING_FIELDS
                    .into_iter()
                    .filter(|field| change.changes_field(field))
                    .collect();
                if !changed.is_empty() {
                    triggers.customers.insert(
                        change.key.clone(),
                        format!("its {} changed", changed.join(" and ")),
                    );
                }
            }
            _ => {}
        }
    }
    for change in changes.iter().filter(|c| c.is_change()) {
        match change.object {
            // The key is `CODE from DATE`.
            ObjectKind::BillingDetails => {
                let code = change.key.split(" from ").next().unwrap_or_default();
                triggers.billing_details.insert(code.to_string());
            }
            ObjectKind::Seller => triggers.sellers = true,
            // The key is `CODE from DATE` or `CODE/scope SUBJECT from DATE`.
            ObjectKind::Budget | ObjectKind::AlertRules => {
                let code = change
                    .key
                    .split(" from ")
                    .next()
                    .unwrap_or_default()
                    .split('/')
                    .next()
                    .unwrap_or_default();
                triggers.budgets.insert(code.to_string());
            }
            _ => {}
        }
    }
    // A new customer has no CDRs to re-rate: attaching gives it its first.
    triggers.subscriptions = changes
        .iter()
        .filter(|c| c.object == ObjectKind::Subscription && c.is_change())
        .count();
    triggers
}

/// A customer whose cycles are to be re-rated, as stored after the apply.
#[derive(Debug, Clone, PartialEq)]
pub struct RerateCandidate {
    pub customer_id: i64,
    /// The code, or `#id`.
    pub customer: String,
    pub billing_cycle_start_day: u32,
    pub time_zone: Tz,
    /// Cycles that have a `totals` row.
    pub cycles_with_totals: Vec<NaiveDate>,
    pub reason: String,
}

/// The cycles whose totals may still change: those with totals whose end
/// plus the grace period is still to come, and the cycle containing `now`.
/// A totals row named under an earlier cycle start day is mapped onto the
/// cycles (under the current start day) that cover it, up to the current
/// one, since CalculateTotals only accepts cycle starts.
pub fn open_cycles(
    start_day: u32,
    zone: Tz,
    cycles_with_totals: &[NaiveDate],
    now: DateTime<Utc>,
    grace: Duration,
) -> Vec<NaiveDate> {
    let current = cycle_of(now, start_day, zone);
    let mut open = BTreeSet::from([current]);
    for &cycle in cycles_with_totals {
        let (start, end) = cycle_bounds(cycle, zone);
        if end + grace <= now {
            continue;
        }
        if cycle.day() == start_day {
            open.insert(cycle);
        } else {
            for at in [start, end - Duration::seconds(1)] {
                let renamed = cycle_of(at, start_day, zone);
                if renamed <= current {
                    open.insert(renamed);
                }
            }
        }
    }
    open.into_iter().collect()
}

/// One re-rating per open cycle of each candidate.
pub fn rerating(
    candidates: &[RerateCandidate],
    now: DateTime<Utc>,
    grace: Duration,
) -> Vec<FollowUp> {
    let mut follow_ups = Vec::new();
    for c in candidates {
        for cycle in open_cycles(
            c.billing_cycle_start_day,
            c.time_zone,
            &c.cycles_with_totals,
            now,
            grace,
        ) {
            follow_ups.push(FollowUp::Rerate {
                customer_id: c.customer_id,
                customer: c.customer.clone(),
                cycle,
                reason: c.reason.clone(),
            });
        }
    }
    follow_ups
}

/// One message an apply sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "step")]
pub enum FollowUp {
    /// Recalculate a cycle with the new pricing.
    #[serde(rename = "DispatchTotals")]
    Rerate {
        customer_id: i64,
        customer: String,
        cycle: NaiveDate,
        reason: String,
    },
    /// Give customer-less CDRs the customer of a new subscription.
    #[serde(rename = "AttachUnassignedCdrs")]
    AttachUnassigned { subscriptions: usize },
    /// Issue a closed cycle's draft that was blocked for missing billing
    /// data, now that billing data changed.
    #[serde(rename = "GenerateInvoice")]
    IssueBlocked {
        customer_id: i64,
        customer: String,
        cycle: NaiveDate,
    },
}

/// What to invoke from the console when a message could not be sent.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ConsoleCommand {
    pub function: &'static str,
    pub event: Value,
}

impl FollowUp {
    pub fn step(&self) -> Step {
        match self {
            FollowUp::Rerate { .. } => Step::DispatchTotals,
            FollowUp::AttachUnassigned { .. } => Step::AttachUnassignedCdrs,
            FollowUp::IssueBlocked { .. } => Step::GenerateInvoice,
        }
    }

    /// The environment variable naming the queue that runs it.
    pub fn queue_variable(&self) -> &'static str {
        match self {
            FollowUp::Rerate { .. } | FollowUp::IssueBlocked { .. } => "QUEUE_URL_TOTALS",
            FollowUp::AttachUnassigned { .. } => "QUEUE_URL_IMPORT",
        }
    }

    /// The command this follow-up sends.
    pub fn command(&self) -> Command {
        match self {
            FollowUp::Rerate {
                customer_id, cycle, ..
            } => Command::DispatchTotals(CyclePayload::new(*customer_id, *cycle, Cause::Rerating)),
            FollowUp::AttachUnassigned { .. } => {
                Command::AttachUnassignedCdrs(AttachUnassignedCdrs {})
            }
            // As the sweep sends it: the cycle has closed.
            FollowUp::IssueBlocked {
                customer_id, cycle, ..
            } => Command::GenerateInvoice(CyclePayload::new(
                *customer_id,
                *cycle,
                Cause::CycleClosed,
            )),
        }
    }

    /// Its command's payload, as it goes on the wire.
    pub fn payload(&self) -> Value {
        self.command().payload()
    }

    /// Derived from the apply's revision and the content, so sending the
    /// same apply's work twice is deduplicated, and a later apply's is not.
    pub fn message_id(&self, revision: i64) -> String {
        let revision = revision.to_string();
        match self {
            FollowUp::Rerate {
                customer_id, cycle, ..
            } => derived_id(&[
                "catalog-apply",
                &revision,
                Step::DispatchTotals.as_str(),
                &customer_id.to_string(),
                &cycle.to_string(),
            ]),
            FollowUp::AttachUnassigned { .. } => derived_id(&[
                "catalog-apply",
                &revision,
                Step::AttachUnassignedCdrs.as_str(),
            ]),
            FollowUp::IssueBlocked {
                customer_id, cycle, ..
            } => derived_id(&[
                "catalog-apply",
                &revision,
                Step::GenerateInvoice.as_str(),
                &customer_id.to_string(),
                &cycle.to_string(),
            ]),
        }
    }

    pub fn envelope(&self, revision: i64, now: DateTime<Utc>) -> Envelope {
        Envelope::start(self.message_id(revision), self.command(), vec![], None, now)
    }

    /// The console event that does the same: the totals function takes a
    /// bare cycle, cdr-import an envelope (`events/`).
    pub fn console(&self, revision: Option<i64>, now: DateTime<Utc>) -> ConsoleCommand {
        match self {
            FollowUp::Rerate { .. } => ConsoleCommand {
                function: "totals",
                event: self.payload(),
            },
            FollowUp::AttachUnassigned { .. } => {
                let envelope = self.envelope(revision.unwrap_or(0), now);
                ConsoleCommand {
                    function: "cdr-import",
                    event: serde_json::to_value(&envelope).unwrap_or_default(),
                }
            }
            // The totals function's bare cycle is a DispatchTotals; a
            // GenerateInvoice goes as a whole envelope.
            FollowUp::IssueBlocked { .. } => {
                let envelope = self.envelope(revision.unwrap_or(0), now);
                ConsoleCommand {
                    function: "totals",
                    event: serde_json::to_value(&envelope).unwrap_or_default(),
                }
            }
        }
    }

    /// One line for people: what and why.
    pub fn describe(&self) -> String {
        match self {
            FollowUp::Rerate {
                customer_id,
                customer,
                cycle,
                reason,
            } => format!("re-rate customer {customer} (#{customer_id}) cycle {cycle}: {reason}"),
            FollowUp::AttachUnassigned { subscriptions } => format!(
                "attach CDRs without a customer: {subscriptions} subscription(s) added or changed"
            ),
            FollowUp::IssueBlocked {
                customer_id,
                customer,
                cycle,
            } => format!(
                "issue the invoice of customer {customer} (#{customer_id}) cycle {cycle}: it was blocked for missing billing data"
            ),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum DeliveryOutcome {
    Sent {
        queue: String,
    },
    NotSent {
        problem: String,
    },
    /// `--dry-run`: what would be sent.
    DryRun,
}

/// What became of one follow-up.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Delivery {
    #[serde(flatten)]
    pub follow_up: FollowUp,
    pub message_id: Option<String>,
    #[serde(flatten)]
    pub outcome: DeliveryOutcome,
    pub console: ConsoleCommand,
}

impl Delivery {
    pub fn is_sent(&self) -> bool {
        matches!(self.outcome, DeliveryOutcome::Sent { .. })
    }
}

/// Sends each follow-up to its queue (`router`), as envelopes of apply
/// `revision`. A follow-up whose queue is not configured, or that the queue
/// refused, is returned as not sent, with the reason and its console
/// command; `queues: None` sends nothing. `revision: None` (a dry run)
/// sends nothing either.
pub async fn deliver(
    follow_ups: &[FollowUp],
    revision: Option<i64>,
    now: DateTime<Utc>,
    router: &Router,
    queues: Option<&dyn QueueSend>,
) -> Vec<Delivery> {
    let mut deliveries: Vec<Delivery> = follow_ups
        .iter()
        .map(|f| Delivery {
            follow_up: f.clone(),
            message_id: revision.map(|r| f.message_id(r)),
            outcome: DeliveryOutcome::DryRun,
            console: f.console(revision, now),
        })
        .collect();
    let Some(revision) = revision else {
        return deliveries;
    };
    let mut by_queue: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (i, delivery) in deliveries.iter_mut().enumerate() {
        let f = &delivery.follow_up;
        match router.queue_for(f.step(), &f.payload()) {
            Ok(queue) if queues.is_some() => by_queue.entry(queue.to_string()).or_default().push(i),
            Ok(_) => {
                delivery.outcome = DeliveryOutcome::NotSent {
                    problem: "no queue client was given to send with".into(),
                }
            }
            Err(_) => {
                delivery.outcome = DeliveryOutcome::NotSent {
                    problem: format!("{} is not set", f.queue_variable()),
                }
            }
        }
    }
    let Some(queues) = queues else {
        return deliveries;
    };
    for (queue, members) in by_queue {
        let messages: Vec<OutgoingMessage> = members
            .iter()
            .map(|&i| {
                let envelope = deliveries[i].follow_up.envelope(revision, now);
                OutgoingMessage::new(envelope.id.clone(), envelope.to_body())
            })
            .collect();
        let failed = match queues.send_all(&queue, messages).await {
            Ok(failed) => failed
                .into_iter()
                .map(|f| (f.id, f.reason))
                .collect::<BTreeMap<_, _>>(),
            Err(e) => members
                .iter()
                .filter_map(|&i| Some((deliveries[i].message_id.clone()?, e.to_string())))
                .collect(),
        };
        for i in members {
            let delivery = &mut deliveries[i];
            let reason = delivery.message_id.as_ref().and_then(|id| failed.get(id));
            delivery.outcome = match reason {
                Some(reason) => DeliveryOutcome::NotSent {
                    problem: format!("the queue refused it: {reason}"),
                },
                None => DeliveryOutcome::Sent {
                    queue: queue.clone(),
                },
            };
        }
    }
    deliveries
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::changes::FieldChange;
    use crate::fakes::FakeQueues;
    use serde_json::json;

    fn date(s: &str) -> NaiveDate {
        s.parse().unwrap()
    }

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    const AMS: Tz = chrono_tz::Europe::Amsterdam;

    fn updated(object: ObjectKind, key: &str, fields: &[&str]) -> Change {
        Change {
            object,
            key: key.into(),
            action: Action::Updated,
            fields: fields
                .iter()
                .map(|f| FieldChange {
                    field: f.to_string(),
                    from: "a".into(),
                    to: "b".into(),
                })
                .collect(),
        }
    }

    #[test]
    fn a_budget_or_alert_rule_created_or_changed_names_its_customer_for_recalculation() {
        let created = |object, key: &str| Change {
            object,
            key: key.into(),
            action: Action::Created,
            fields: vec![],
        };
        let t = triggers(&[
            created(ObjectKind::Budget, "acme/cost_centre field from 2025-01-01"),
            created(ObjectKind::AlertRules, "bakker from 2025-01-01"),
            updated(ObjectKind::Budget, "acme from 2025-01-01", &["thresholds"]),
            Change {
                action: Action::Unchanged,
                ..created(ObjectKind::Budget, "stadsbeheer from 2025-01-01")
            },
        ]);
        assert_eq!(
            t.budgets.iter().map(String::as_str).collect::<Vec<_>>(),
            ["acme", "bakker"]
        );
        assert!(t.customers.is_empty(), "no re-pricing: {:?}", t.customers);
    }

    #[test]
    fn open_cycles_are_the_current_one_and_those_still_within_the_grace_period() {
        let with_totals = [date("2024-11-01"), date("2025-01-01"), date("2025-02-01")];
        // Now: 3 March 2025, 12:00 in Amsterdam. February's cycle ended at
        // 1 March 00:00 local; + 5 days grace = 6 March: still open.
        // January's ended 1 February (+5 = 6 February): closed.
        let open = open_cycles(
            1,
            AMS,
            &with_totals,
            at("2025-03-03T11:00:00Z"),
            Duration::days(5),
        );
        assert_eq!(open, vec![date("2025-02-01"), date("2025-03-01")]);
    }

    #[test]
    fn a_cycle_closes_exactly_when_its_end_plus_grace_has_passed() {
        let with_totals = [date("2025-02-01")];
        // The February cycle ends 2025-03-01 00:00 CET = 2025-02-28T23:00Z;
        // with 5 days grace it is open until 2025-03-05T23:00Z.
        let just_before = at("2025-03-05T22:59:59Z");
        let at_end = at("2025-03-05T23:00:00Z");
        assert!(
            open_cycles(1, AMS, &with_totals, just_before, Duration::days(5))
                .contains(&date("2025-02-01"))
        );
        assert!(
            !open_cycles(1, AMS, &with_totals, at_end, Duration::days(5))
                .contains(&date("2025-02-01"))
        );
    }

    #[test]
    fn the_current_cycle_is_open_even_without_totals_and_follows_the_start_day() {
        assert_eq!(
            open_cycles(15, AMS, &[], at("2025-03-03T11:00:00Z"), Duration::days(5)),
            vec![date("2025-02-15")]
        );
    }

    #[test]
    fn totals_named_under_an_earlier_start_day_map_onto_the_current_cycles() {
        // The customer moved from day 15 to day 1; the open cycle from 15
        // February is covered by the cycles of 1 February and 1 March.
        let open = open_cycles(
            1,
            AMS,
            &[date("2025-02-15")],
            at("2025-03-10T10:00:00Z"),
            Duration::days(5),
        );
        assert_eq!(open, vec![date("2025-02-01"), date("2025-03-01")]);
    }

    #[test]
    fn pricing_changes_trigger_rerating_and_subscription_changes_trigger_attaching() {
        let changes = vec![
            updated(ObjectKind::RatePlan, "renamed", &["name"]),
            updated(
                ObjectKind::RatePlan,
                "repriced",
                &["rates[v].price_per_minute_micros"],
            ),
            updated(ObjectKind::Customer, "acme", &["name"]),
            updated(ObjectKind::Customer, "bakker", &["rate_plan", "time_zone"]),
            updated(
                ObjectKind::Subscription,
                "routit +31612345678",
                &["active_to"],
            ),
            Change {
                object: ObjectKind::Subscription,
                key: "routit +31612345679".into(),
                action: Action::Created,
                fields: vec![],
            },
            Change {
                object: ObjectKind::Customer,
                key: "new".into(),
                action: Action::Created,
                fields: vec![],
            },
        ];
        let t = triggers(&changes);
        assert_eq!(t.plans, BTreeSet::from(["repriced".to_string()]));
        assert_eq!(
            t.customers,
            BTreeMap::from([(
                "bakker".to_string(),
                "its rate_plan and time_zone changed".to_string()
            )])
        );
        assert_eq!(t.subscriptions, 2);
        assert!(triggers(&changes[..1]).is_empty());
    }

    #[test]
    fn rerating_lists_every_open_cycle_of_every_candidate() {
        let candidate = |id: i64, day: u32, cycles: &[&str]| RerateCandidate {
            customer_id: id,
            customer: format!("c{id}"),
            billing_cycle_start_day: day,
            time_zone: AMS,
            cycles_with_totals: cycles.iter().map(|c| date(c)).collect(),
            reason: "rate plan p changed".into(),
        };
        let follow_ups = rerating(
            &[
                candidate(1, 1, &["2024-06-01", "2025-02-01"]),
                candidate(2, 15, &[]),
            ],
            at("2025-03-03T11:00:00Z"),
            Duration::days(5),
        );
        let listed: Vec<String> = follow_ups.iter().map(FollowUp::describe).collect();
        assert_eq!(
            listed,
            vec![
                "re-rate customer c1 (#1) cycle 2025-02-01: rate plan p changed",
                "re-rate customer c1 (#1) cycle 2025-03-01: rate plan p changed",
                "re-rate customer c2 (#2) cycle 2025-02-15: rate plan p changed",
            ]
        );
    }

    fn rerate() -> FollowUp {
        FollowUp::Rerate {
            customer_id: 7,
            customer: "acme".into(),
            cycle: date("2025-02-01"),
            reason: "r".into(),
        }
    }

    #[test]
    fn message_ids_depend_on_the_apply_and_the_content_only() {
        let other_cycle = FollowUp::Rerate {
            customer_id: 7,
            customer: "acme".into(),
            cycle: date("2025-03-01"),
            reason: "r".into(),
        };
        assert_eq!(rerate().message_id(3), rerate().message_id(3));
        assert_ne!(rerate().message_id(3), rerate().message_id(4));
        assert_ne!(rerate().message_id(3), other_cycle.message_id(3));
        let envelope = rerate().envelope(3, at("2025-03-03T11:00:00Z"));
        assert_eq!(envelope.step, Step::DispatchTotals);
        assert_eq!(
            envelope.payload,
            json!({"customer_id": 7, "cycle": "2025-02-01", "cause": "rerating"})
        );
        assert_eq!(Envelope::parse(&envelope.to_body()).unwrap(), envelope);
    }

    fn router(totals: Option<&str>, import: Option<&str>) -> Router {
        Router::default().with_pipeline_queues(import.map(Into::into), totals.map(Into::into))
    }

    #[tokio::test]
    async fn follow_ups_go_to_their_queues_as_envelopes() {
        let queues = FakeQueues::default();
        let work = [rerate(), FollowUp::AttachUnassigned { subscriptions: 2 }];
        let now = at("2025-03-03T11:00:00Z");

        let deliveries = deliver(
            &work,
            Some(3),
            now,
            &router(Some("q/totals"), Some("q/import")),
            Some(&queues),
        )
        .await;

        assert!(deliveries.iter().all(Delivery::is_sent), "{deliveries:#?}");
        let totals = queues.on("q/totals");
        assert_eq!(totals.len(), 1);
        assert_eq!(
            Envelope::parse(&totals[0].body).unwrap(),
            rerate().envelope(3, now)
        );
        let import = queues.on("q/import");
        assert_eq!(
            Envelope::parse(&import[0].body).unwrap().step,
            Step::AttachUnassignedCdrs
        );
    }

    #[tokio::test]
    async fn changed_billing_data_issues_blocked_invoices_through_the_totals_queue() {
        let created = |object, key: &str| Change {
            object,
            key: key.into(),
            action: Action::Created,
            fields: vec![],
        };
        let found = triggers(&[
            created(ObjectKind::BillingDetails, "acme from 2025-01-01"),
            updated(ObjectKind::Customer, "bakker", &["name"]),
        ]);
        assert_eq!(found.billing_details, BTreeSet::from(["acme".to_string()]));
        assert!(!found.sellers && !found.is_empty());
        assert!(triggers(&[created(ObjectKind::Seller, "tem from 2025-01-01")]).sellers);

        let issue = FollowUp::IssueBlocked {
            customer_id: 7,
            customer: "acme".into(),
            cycle: date("2025-03-01"),
        };
        let queues = FakeQueues::default();
        let now = at("2025-04-06T10:00:00Z");
        let deliveries = deliver(
            std::slice::from_ref(&issue),
            Some(4),
            now,
            &router(Some("q/totals"), Some("q/import")),
            Some(&queues),
        )
        .await;
        assert!(deliveries[0].is_sent(), "{deliveries:#?}");
        let sent = Envelope::parse(&queues.on("q/totals")[0].body).unwrap();
        assert_eq!(
            sent.command().unwrap(),
            Command::GenerateInvoice(CyclePayload::new(7, date("2025-03-01"), Cause::CycleClosed))
        );
        // Another apply's follow-up is a new message; the same apply's is not.
        assert_eq!(issue.message_id(4), sent.id);
        assert_ne!(issue.message_id(5), sent.id);
        assert_eq!(deliveries[0].console.function, "totals");
        assert_eq!(deliveries[0].console.event["step"], "GenerateInvoice");
        assert!(issue
            .describe()
            .contains("blocked for missing billing data"));
    }

    #[tokio::test]
    async fn without_a_queue_the_follow_up_is_returned_with_its_console_command() {
        let queues = FakeQueues::default();
        let work = [rerate(), FollowUp::AttachUnassigned { subscriptions: 1 }];
        let now = at("2025-03-03T11:00:00Z");

        let deliveries = deliver(
            &work,
            Some(3),
            now,
            &router(None, Some("q/import")),
            Some(&queues),
        )
        .await;

        assert_eq!(
            deliveries[0].outcome,
            DeliveryOutcome::NotSent {
                problem: "QUEUE_URL_TOTALS is not set".into()
            }
        );
        assert_eq!(deliveries[0].console.function, "totals");
        assert_eq!(
            deliveries[0].console.event,
            json!({"customer_id": 7, "cycle": "2025-02-01", "cause": "rerating"})
        );
        assert!(deliveries[1].is_sent());
        assert!(queues.on("q/totals").is_empty());
    }

    #[tokio::test]
    async fn a_queue_that_fails_leaves_its_follow_ups_not_sent() {
        let queues = FakeQueues::default();
        queues.broken.lock().unwrap().insert("q/totals".into());

        let deliveries = deliver(
            &[rerate()],
            Some(3),
            Utc::now(),
            &router(Some("q/totals"), None),
            Some(&queues),
        )
        .await;

        assert!(
            matches!(&deliveries[0].outcome, DeliveryOutcome::NotSent { problem } if problem.contains("queue unavailable")),
            "{deliveries:?}"
        );
    }

    #[tokio::test]
    async fn a_dry_run_sends_nothing() {
        let queues = FakeQueues::default();
        let deliveries = deliver(
            &[rerate()],
            None,
            Utc::now(),
            &router(Some("q/totals"), None),
            Some(&queues),
        )
        .await;
        assert_eq!(deliveries[0].outcome, DeliveryOutcome::DryRun);
        assert_eq!(deliveries[0].message_id, None);
        assert!(queues.on("q/totals").is_empty());
    }
}
