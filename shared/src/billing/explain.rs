//! How one CDR was priced (`temctl explain --cdr ID`): customer, cycle,
//! method, rate with its figures, billed quantity, bundle coverage with each
//! bundle's share, the arithmetic and the rated cost, and whether the stored
//! totals are current.
//!
//! Nothing here re-rates: the figures are the ones the last calculation
//! stored (`billing::pricings`), read with the plan snapshot it was rated
//! with (`cycle_rating.plan`). Only the sentence and the bundle shares are
//! rebuilt; the shares by replaying the bundle walk with what the bundles had
//! used before this CDR, summed from the stored figures of the CDRs before it.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::str::FromStr;

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};
use chrono_tz::Tz;
use serde::Serialize;

use crate::billing::calculation::RatingState;
use crate::billing::customer::CustomerError;
use crate::billing::pricings::{self, Pricings, PricingsError, PricingsStore};
use crate::billing::rating::{
    arithmetic, describe, describe_standard, replay_shares, scope_text, unit_of, Pricing, Rate,
    RatePlan, RatingCdr, Scope,
};
use crate::cdr::cycle_bounds;
use crate::cdr::cycle_of;
use crate::cdr::{Kind, Zone};
use crate::ports::StoreError;

/// A CDR as an operator names it: `PROVIDER:EXTERNAL_ID` (its key, found
/// through the primary key) or its numeric `id` (no index: a scan of the
/// table, which every import would otherwise pay for).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CdrRef {
    Id(i64),
    Key {
        provider: String,
        external_id: String,
    },
}

impl FromStr for CdrRef {
    type Err = ExplainError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let text = s.trim();
        if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
            return text
                .parse()
                .map(CdrRef::Id)
                .map_err(|_| ExplainError::BadReference(s.to_string()));
        }
        // Provider names have no colon; an external id may.
        match text.split_once(':') {
            Some((provider, external_id)) if !provider.is_empty() && !external_id.is_empty() => {
                Ok(CdrRef::Key {
                    provider: provider.to_string(),
                    external_id: external_id.to_string(),
                })
            }
            _ => Err(ExplainError::BadReference(s.to_string())),
        }
    }
}

impl fmt::Display for CdrRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CdrRef::Id(id) => write!(f, "{id}"),
            CdrRef::Key {
                provider,
                external_id,
            } => write!(f, "{provider}:{external_id}"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    #[error("'{0}' does not name a CDR: give PROVIDER:EXTERNAL_ID (e.g. routit:RT25000000001) or the CDR's numeric id")]
    BadReference(String),
    #[error("there is no CDR {0}; check the provider and external id (or the id) against call_detail_record")]
    UnknownCdr(String),
    #[error("the stored rating of customer {customer}, cycle {cycle} cannot be read ({problem}); recalculate the cycle's totals")]
    BadRating {
        customer: i64,
        cycle: NaiveDate,
        problem: String,
    },
    #[error(transparent)]
    Customer(#[from] CustomerError),
    #[error("database error: {0}")]
    Store(#[from] StoreError),
}

/// The CDR as recorded.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CdrFacts {
    pub id: i64,
    pub provider: String,
    pub external_id: String,
    pub subscription: String,
    pub started_at: DateTime<Utc>,
    pub kind: String,
    pub direction: String,
    pub destination: String,
    pub roaming_zone: String,
    pub duration_seconds: i64,
    pub volume_bytes: i64,
    pub units: i64,
    pub provider_cost_micros: i64,
}

/// One bundle's part in covering the CDR.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BundleShare {
    pub id: String,
    /// `per-subscription` or `pooled`.
    pub scope: &'static str,
    pub allowance: u64,
    /// What it covered of this CDR (0: it applied but was used up).
    pub covered: u64,
    /// What it had left after this CDR.
    pub left: u64,
}

/// How the CDR was priced.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PricingDetail {
    pub rated_cost_micros: i64,
    /// The rate, with its figures as in the plan it was rated with.
    pub rate: Option<Rate>,
    /// `60/1 s`, `1024 bytes`, `per message`; `None` without a rate.
    pub increments: Option<String>,
    pub billed_quantity: u64,
    pub covered_quantity: u64,
    /// `s`, `bytes` or `messages`.
    pub unit: &'static str,
    pub bundles: Vec<BundleShare>,
    /// E.g. `5000 connect + 50 s x 60000/60 = 55000`; `None` when the CDR
    /// kept its provider cost.
    pub arithmetic: Option<String>,
    pub unrated: bool,
    /// Place in the cycle's consumption order (0-based), rate plans only.
    pub position: Option<u64>,
}

/// Whether the stored totals of the CDR's cycle are current.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum TotalsState {
    /// The stored totals include this CDR and every other CDR of the cycle.
    Current { calculated_at: DateTime<Utc> },
    /// CDRs of the cycle changed after the last calculation (an import, an
    /// attach, a hand edit or a deletion marked it): its figures may change
    /// at the next one.
    NotCurrent {
        calculated_at: DateTime<Utc>,
        pending_changes: i64,
        /// The earliest `started_at` the changes touched.
        changed_from: DateTime<Utc>,
    },
    /// The CDR arrived after the last calculation (or there was none yet).
    NotYetRated {
        calculated_at: Option<DateTime<Utc>>,
    },
    /// The customer's method or plan changed after the last calculation.
    PlanChanged {
        calculated_at: DateTime<Utc>,
        rated_with: String,
        now: String,
    },
    /// The CDR's subscription belongs to no customer (yet).
    NoCustomer,
}

impl TotalsState {
    /// One sentence for people.
    pub fn message(&self) -> String {
        match self {
            TotalsState::Current { calculated_at } => format!(
                "current: the totals calculated at {calculated_at} include this CDR and every other CDR of the cycle"
            ),
            TotalsState::NotCurrent {
                calculated_at,
                pending_changes,
                changed_from,
            } => format!(
                "not current: {pending_changes} change(s) to the cycle's CDRs from {changed_from} on came after the calculation at {calculated_at}; totals recalculation pending"
            ),
            TotalsState::NotYetRated {
                calculated_at: Some(at),
            } => format!(
                "not yet rated; totals recalculation pending (the CDR arrived after the calculation at {at})"
            ),
            TotalsState::NotYetRated {
                calculated_at: None,
            } => "not yet rated; totals recalculation pending (the cycle has no totals yet)".into(),
            TotalsState::PlanChanged {
                calculated_at,
                rated_with,
                now,
            } => format!(
                "rated at {calculated_at} with {rated_with}, but the customer is now on {now}; re-rating pending"
            ),
            TotalsState::NoCustomer => "in no totals: the CDR's subscription belongs to no customer yet; once it is added (temctl apply), the CDR is attached and its cycle recalculated".into(),
        }
    }
}

/// How one CDR was priced, and whether that is what the totals say.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CdrExplanation {
    pub cdr: CdrFacts,
    pub customer_id: Option<i64>,
    pub cycle: Option<NaiveDate>,
    /// `standard` or `rate_plan`: the method of the stored totals, or the
    /// customer's method when the CDR is not rated yet.
    pub method: Option<String>,
    pub rate_plan_id: Option<String>,
    /// `None` when the CDR is not (yet) in a stored rating.
    pub pricing: Option<PricingDetail>,
    pub totals: TotalsState,
    /// `totals.message()`, for JSON readers.
    pub status: String,
    /// The whole story in one sentence.
    pub explanation: String,
    /// Anything that did not add up while explaining (should stay empty).
    pub warnings: Vec<String>,
}

/// A customer's settings as stored, unchecked: an explanation reports a
/// customer whose settings changed or broke rather than failing on them.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredCustomer {
    pub start_day: i16,
    pub time_zone: String,
    pub rate_plan_id: Option<String>,
    pub plan: Option<serde_json::Value>,
}

/// What the last calculation of a cycle stored about how it rated: the
/// totals' method and plan, and the settings it rated with (`None` where
/// the cycle has no `cycle_state`).
#[derive(Debug, Clone, PartialEq)]
pub struct StoredRating {
    pub method: String,
    pub rate_plan_id: Option<String>,
    pub calculated_at: DateTime<Utc>,
    pub plan: Option<serde_json::Value>,
    pub time_zone: Option<String>,
    pub start_day: Option<i16>,
}

/// What an explanation reads (`adapters::billing::explain` on PostgreSQL),
/// besides the pricings. Each read stands alone: an explanation takes no
/// snapshot and no lock.
#[async_trait]
pub trait ExplainStore: Send + Sync {
    /// The CDR as recorded, and its customer if it has one.
    async fn cdr(&self, cdr: &CdrRef) -> Result<Option<(CdrFacts, Option<i64>)>, StoreError>;
    async fn customer(&self, customer_id: i64) -> Result<StoredCustomer, StoreError>;
    /// `None` when the cycle has no totals.
    async fn rating(
        &self,
        customer_id: i64,
        cycle: NaiveDate,
    ) -> Result<Option<StoredRating>, StoreError>;
    /// How many change marks the cycle has, and the earliest `started_at`
    /// they touched.
    async fn pending_changes(
        &self,
        customer_id: i64,
        cycle: NaiveDate,
    ) -> Result<(i64, Option<DateTime<Utc>>), StoreError>;
    /// The latest start of a segment with stored pricings at or before `at`.
    async fn segment_at(
        &self,
        customer_id: i64,
        cycle: NaiveDate,
        at: DateTime<Utc>,
    ) -> Result<Option<DateTime<Utc>>, StoreError>;
    /// The ids of the customer's CDRs of `subscription` started within
    /// `[from, to]`.
    async fn subscription_cdrs(
        &self,
        customer_id: i64,
        subscription: &str,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<HashSet<i64>, StoreError>;
    /// The rating checkpoint at `at`, encoded.
    async fn checkpoint(
        &self,
        customer_id: i64,
        cycle: NaiveDate,
        at: DateTime<Utc>,
    ) -> Result<Option<Vec<u8>>, StoreError>;
}

fn kind_of(s: &str) -> Kind {
    match s {
        "voice" => Kind::Voice,
        "sms" => Kind::Sms,
        "mms" => Kind::Mms,
        "data" => Kind::Data,
        _ => Kind::Service,
    }
}

fn zone_of(s: &str) -> Zone {
    match s {
        "eu" => Zone::Eu,
        "world" => Zone::World,
        _ => Zone::Home,
    }
}

fn to_u64(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

fn rating_cdr(cdr: &CdrFacts) -> RatingCdr {
    RatingCdr {
        id: cdr.id,
        provider: cdr.provider.clone(),
        external_id: cdr.external_id.clone(),
        subscription: cdr.subscription.clone(),
        started_at: cdr.started_at,
        kind: kind_of(&cdr.kind),
        zone: zone_of(&cdr.roaming_zone),
        destination: cdr.destination.clone(),
        duration_seconds: u32::try_from(cdr.duration_seconds).unwrap_or(0),
        volume_bytes: to_u64(cdr.volume_bytes),
        units: u32::try_from(cdr.units).unwrap_or(0),
        provider_cost_micros: cdr.provider_cost_micros,
    }
}

fn recorded_quantity(cdr: &RatingCdr) -> u64 {
    match cdr.kind {
        Kind::Voice => u64::from(cdr.duration_seconds),
        Kind::Data => cdr.volume_bytes,
        _ => u64::from(cdr.units),
    }
}

/// Explains how `cdr` was priced by the last totals calculation of its
/// cycle.
pub async fn explain_cdr(
    store: &dyn ExplainStore,
    stored_pricings: &dyn PricingsStore,
    cdr: &CdrRef,
) -> Result<CdrExplanation, ExplainError> {
    let (facts, customer_id) = store
        .cdr(cdr)
        .await?
        .ok_or_else(|| ExplainError::UnknownCdr(cdr.to_string()))?;
    let rating = rating_cdr(&facts);
    let Some(customer_id) = customer_id else {
        let totals = TotalsState::NoCustomer;
        return Ok(CdrExplanation {
            explanation: format!(
                "{} CDR {} of subscription {}: not priced, {}.",
                rating.kind.as_str(),
                facts.id,
                facts.subscription,
                "its subscription belongs to no customer yet"
            ),
            status: totals.message(),
            cdr: facts,
            customer_id: None,
            cycle: None,
            method: None,
            rate_plan_id: None,
            pricing: None,
            totals,
            warnings: Vec::new(),
        });
    };

    let customer = store.customer(customer_id).await?;
    let day = customer.start_day;
    let zone_name = customer.time_zone;
    let zone: Tz = zone_name.parse().map_err(|_| CustomerError::BadTimeZone {
        customer: customer_id,
        zone: zone_name.clone(),
    })?;
    let current_plan = customer.rate_plan_id;
    let current_document = customer.plan;
    let cycle = cycle_of(facts.started_at, u32::try_from(day).unwrap_or(1), zone);

    let stored = store.rating(customer_id, cycle).await?;
    // The same marks the next calculation restarts from.
    let (pending, changed_from) = store.pending_changes(customer_id, cycle).await?;
    let current_method = if current_plan.is_some() {
        "rate_plan"
    } else {
        "standard"
    };
    let describe_method = |method: &str, plan: Option<&str>| match (method, plan) {
        ("rate_plan", Some(plan)) => format!("rate plan '{plan}'"),
        _ => "the standard method".to_string(),
    };

    let mut explanation = CdrExplanation {
        cdr: facts.clone(),
        customer_id: Some(customer_id),
        cycle: Some(cycle),
        method: Some(current_method.to_string()),
        rate_plan_id: current_plan.clone(),
        pricing: None,
        totals: TotalsState::NotYetRated {
            calculated_at: None,
        },
        status: String::new(),
        explanation: String::new(),
        warnings: Vec::new(),
    };
    let Some(stored) = stored else {
        explanation.explanation = format!(
            "{} CDR {}: not yet rated; totals recalculation pending.",
            rating.kind.as_str(),
            facts.id
        );
        explanation.status = explanation.totals.message();
        return Ok(explanation);
    };
    let StoredRating {
        method,
        rate_plan_id: stored_plan,
        calculated_at,
        plan: rated_document,
        time_zone: rated_zone,
        start_day: rated_day,
    } = stored;
    explanation.method = Some(method.clone());
    explanation.rate_plan_id = stored_plan.clone();
    let settings_changed = rated_zone.as_deref() != Some(zone_name.as_str())
        || rated_day != Some(day)
        || (method == "rate_plan" && rated_document != current_document);
    let freshness = || {
        if (method.as_str(), stored_plan.as_deref()) != (current_method, current_plan.as_deref())
            || settings_changed
        {
            TotalsState::PlanChanged {
                calculated_at,
                rated_with: describe_method(&method, stored_plan.as_deref()),
                now: describe_method(current_method, current_plan.as_deref()),
            }
        } else if let (true, Some(changed_from)) = (pending > 0, changed_from) {
            TotalsState::NotCurrent {
                calculated_at,
                pending_changes: pending,
                changed_from,
            }
        } else {
            TotalsState::Current { calculated_at }
        }
    };

    if method != "rate_plan" {
        let billed = recorded_quantity(&rating);
        explanation.pricing = Some(PricingDetail {
            rated_cost_micros: facts.provider_cost_micros,
            rate: None,
            increments: None,
            billed_quantity: billed,
            covered_quantity: 0,
            unit: unit_of(rating.kind),
            bundles: Vec::new(),
            arithmetic: None,
            unrated: false,
            position: None,
        });
        explanation.explanation = describe_standard(&rating);
        explanation.totals = freshness();
        explanation.status = explanation.totals.message();
        return Ok(explanation);
    }

    let bad = |problem: String| ExplainError::BadRating {
        customer: customer_id,
        cycle,
        problem,
    };
    // The CDR's segment of the cycle as the calculation cut it: its
    // pricings follow the checkpoint at its start (or the cycle's start).
    let rated_zone: Tz = rated_zone
        .as_deref()
        .and_then(|z| z.parse().ok())
        .unwrap_or(zone);
    let (cycle_start, _) = cycle_bounds(cycle, rated_zone);
    let segment = store
        .segment_at(customer_id, cycle, facts.started_at)
        .await?
        .unwrap_or(cycle_start);
    let chunks = pricings::read_chunks(stored_pricings, customer_id, cycle, Some(segment))
        .await
        .map_err(|e| match e {
            PricingsError::Store(e) => ExplainError::Store(e),
            PricingsError::Damaged { problem, .. } => bad(problem),
        })?;
    let mut stored = Pricings::default();
    let mut split_rows: (Vec<i32>, Vec<i32>, Vec<i64>) = Default::default();
    let first_position = chunks.first().map(|(_, first, _)| *first).unwrap_or(0);
    for (_, _, chunk) in &chunks {
        let offset = stored.len() as i32;
        for split in &chunk.splits {
            split_rows.0.push(offset + split.index as i32);
            split_rows.1.push(split.bundle);
            split_rows.2.push(split.covered);
        }
        stored.append(&chunk.pricings);
    }
    let found = stored.position_of(facts.id);
    let (Some(plan_document), Some(position)) = (rated_document.clone(), found) else {
        explanation.totals = TotalsState::NotYetRated {
            calculated_at: Some(calculated_at),
        };
        explanation.status = explanation.totals.message();
        explanation.explanation = format!(
            "{} CDR {}: not yet rated; totals recalculation pending.",
            rating.kind.as_str(),
            facts.id
        );
        return Ok(explanation);
    };
    let plan: RatePlan = serde_json::from_value(plan_document)
        .map_err(|e| bad(format!("its plan snapshot does not parse: {e}")))?;
    let rate_index = stored.rate[position];
    let bundle_index = stored.bundle[position];
    let pricing = Pricing {
        rated_cost_micros: stored.rated_cost_micros[position],
        rate: usize::try_from(rate_index).ok(),
        bundle: usize::try_from(bundle_index).ok(),
        billed_quantity: to_u64(stored.billed_quantity[position]),
        covered_quantity: to_u64(stored.covered_quantity[position]),
        unrated: rate_index < 0 && rating.kind != Kind::Service,
    };
    if pricing.rate.is_some_and(|i| i >= plan.rates.len())
        || pricing.bundle.is_some_and(|i| i >= plan.bundles.len())
    {
        return Err(bad(format!(
            "CDR {} names rate {rate_index} or bundle {bundle_index}, which its plan snapshot lacks",
            facts.id
        )));
    }

    let shares = if pricing.billed_quantity > 0
        && pricing.rate.is_some()
        && rating.kind != Kind::Service
        && !plan.bundles.is_empty()
    {
        let splits = Splits::new(split_rows.0, split_rows.1, split_rows.2);
        let needs_subscription = plan
            .bundles
            .iter()
            .any(|b| b.scope == Scope::PerSubscription);
        let same_subscription: HashSet<i64> = if needs_subscription {
            store
                .subscription_cdrs(customer_id, &facts.subscription, segment, facts.started_at)
                .await?
        } else {
            HashSet::new()
        };
        // What the bundles had used when the segment began...
        let mut used = vec![0u64; plan.bundles.len()];
        if segment > cycle_start {
            let bytes = store.checkpoint(customer_id, cycle, segment).await?;
            let Some(bytes) = bytes else {
                return Err(bad(format!("the checkpoint at {segment} is missing")));
            };
            let at_start = RatingState::decode(&bytes).map_err(bad)?;
            let number = at_start.subscriptions.get(&facts.subscription);
            for (index, bundle) in plan.bundles.iter().enumerate() {
                let slot = match bundle.scope {
                    Scope::Pooled => Some(0),
                    Scope::PerSubscription => number.map(|n| n as usize),
                };
                used[index] = slot
                    .and_then(|slot| at_start.spent.get(index)?.get(slot).copied())
                    .unwrap_or(0);
            }
        }
        // ...plus what the CDRs before this one in the segment used.
        let in_segment = used_before(&plan, position, &stored, &splits, |id| {
            same_subscription.contains(&id)
        });
        for (total, more) in used.iter_mut().zip(in_segment) {
            *total += more;
        }
        replay_shares(
            &plan,
            rating.kind,
            rating.zone,
            pricing.billed_quantity,
            &used,
        )
    } else {
        Vec::new()
    };
    let replayed: u64 = shares.iter().map(|s| s.covered).sum();
    if replayed != pricing.covered_quantity {
        explanation.warnings.push(format!(
            "the stored figures say bundles covered {} {}, replaying them gives {replayed}; recalculate the cycle's totals",
            pricing.covered_quantity,
            unit_of(rating.kind)
        ));
    }
    let rate = pricing.rate.and_then(|i| plan.rates.get(i)).cloned();
    explanation.pricing = Some(PricingDetail {
        rated_cost_micros: pricing.rated_cost_micros,
        increments: rate.as_ref().map(|r| match rating.kind {
            Kind::Voice => format!("{}/{} s", r.first_increment_s, r.increment_s),
            Kind::Data => format!("{} bytes", r.increment_bytes),
            _ => "per message".into(),
        }),
        rate,
        billed_quantity: pricing.billed_quantity,
        covered_quantity: pricing.covered_quantity,
        unit: unit_of(rating.kind),
        bundles: shares
            .iter()
            .filter_map(|share| {
                let bundle = plan.bundles.get(share.bundle)?;
                Some(BundleShare {
                    id: bundle.id.clone(),
                    scope: scope_text(bundle.scope),
                    allowance: bundle.allowance,
                    covered: share.covered,
                    left: share.left,
                })
            })
            .collect(),
        arithmetic: arithmetic(&plan, &rating, &pricing),
        unrated: pricing.unrated,
        position: Some(first_position + position as u64),
    });
    if let Some(arithmetic) = arithmetic(&plan, &rating, &pricing) {
        let tail = arithmetic.rsplit(' ').next().unwrap_or_default();
        if tail != pricing.rated_cost_micros.to_string() {
            explanation.warnings.push(format!(
                "the arithmetic gives {tail} but {} is stored; recalculate the cycle's totals",
                pricing.rated_cost_micros
            ));
        }
    }
    explanation.explanation = describe(&plan, &rating, &pricing, &shares);
    explanation.totals = freshness();
    explanation.status = explanation.totals.message();
    Ok(explanation)
}

/// The shares of CDRs that several bundles covered, by position.
#[derive(Debug, Default)]
struct Splits(HashMap<usize, Vec<(usize, u64)>>);

impl Splits {
    fn new(positions: Vec<i32>, bundles: Vec<i32>, covered: Vec<i64>) -> Self {
        let mut map: HashMap<usize, Vec<(usize, u64)>> = HashMap::new();
        for ((position, bundle), covered) in positions.into_iter().zip(bundles).zip(covered) {
            if let (Ok(position), Ok(bundle)) = (usize::try_from(position), usize::try_from(bundle))
            {
                map.entry(position)
                    .or_default()
                    .push((bundle, to_u64(covered)));
            }
        }
        Self(map)
    }
}

/// Per bundle of `plan`, what it had used before `position` in the
/// allowance this CDR draws on: all earlier coverage for a pooled bundle,
/// the coverage of earlier CDRs of the same subscription for a
/// per-subscription one.
fn used_before(
    plan: &RatePlan,
    position: usize,
    before: &Pricings,
    splits: &Splits,
    same_subscription: impl Fn(i64) -> bool,
) -> Vec<u64> {
    let mut used = vec![0u64; plan.bundles.len()];
    let end = position.min(before.cdr_id.len());
    for q in 0..end {
        let mut add = |bundle: usize, covered: u64| {
            let Some(b) = plan.bundles.get(bundle) else {
                return;
            };
            if b.scope == Scope::Pooled || same_subscription(before.cdr_id[q]) {
                used[bundle] += covered;
            }
        };
        if let Some(shares) = splits.0.get(&q) {
            for &(bundle, covered) in shares {
                add(bundle, covered);
            }
        } else if let (Some(&bundle), Some(&covered)) =
            (before.bundle.get(q), before.covered_quantity.get(q))
        {
            if let (Ok(bundle), true) = (usize::try_from(bundle), covered > 0) {
                add(bundle, to_u64(covered));
            }
        }
    }
    used
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::billing::rating::{Bundle, Rater, Share, Usage};

    /// The shares of the CDR at `position`, rebuilt the way `explain_cdr`
    /// does from stored figures: (id, subscription, kind, zone, billed) per
    /// CDR, (first bundle, covered) per CDR, and the split shares.
    fn replay_from_figures(
        plan: &RatePlan,
        cdrs: &[(i64, usize, Kind, Zone, u64)],
        figures: &[(Option<usize>, u64)],
        split_shares: &[(usize, usize, u64)],
        position: usize,
    ) -> Vec<Share> {
        let before = Pricings {
            cdr_id: cdrs.iter().map(|c| c.0).collect(),
            bundle: figures
                .iter()
                .map(|f| f.0.map_or(-1, |b| b as i32))
                .collect(),
            covered_quantity: figures.iter().map(|f| f.1 as i64).collect(),
            ..Pricings::default()
        };
        let splits = Splits::new(
            split_shares.iter().map(|s| s.0 as i32).collect(),
            split_shares.iter().map(|s| s.1 as i32).collect(),
            split_shares.iter().map(|s| s.2 as i64).collect(),
        );
        let subscription = cdrs[position].1;
        let used = used_before(plan, position, &before, &splits, |id| {
            cdrs.iter()
                .find(|c| c.0 == id)
                .is_some_and(|c| c.1 == subscription)
        });
        let (_, _, kind, zone, billed) = cdrs[position];
        replay_shares(plan, kind, zone, billed, &used)
    }

    #[test]
    fn a_cdr_is_named_by_provider_and_external_id_or_by_its_id() {
        assert_eq!("42".parse::<CdrRef>().unwrap(), CdrRef::Id(42));
        assert_eq!(
            "routit:RT:7".parse::<CdrRef>().unwrap(),
            CdrRef::Key {
                provider: "routit".into(),
                external_id: "RT:7".into()
            }
        );
        for bad in ["", "routit", ":x", "routit:", "99999999999999999999"] {
            let err = bad.parse::<CdrRef>().unwrap_err();
            assert!(
                err.to_string().contains("PROVIDER:EXTERNAL_ID"),
                "{bad}: {err}"
            );
        }
    }

    fn bundle(id: &str, kinds: &[Kind], zones: &[Zone], allowance: u64, scope: Scope) -> Bundle {
        Bundle {
            id: id.into(),
            kinds: kinds.to_vec(),
            zones: zones.to_vec(),
            allowance,
            scope,
        }
    }

    #[test]
    fn replaying_the_stored_figures_gives_the_shares_rating_saw() {
        // Voice at 60/1 for everything; bundles overlap so that CDRs are
        // split between bundles, per subscription and pooled, and run out.
        let plan = RatePlan {
            id: "p".into(),
            name: "p".into(),
            unit_bytes: 1_048_576,
            rates: vec![serde_json::from_value(serde_json::json!({
                "id": "v", "kind": "voice", "prefix": "", "price_per_minute_micros": 60_000,
                "first_increment_s": 60, "increment_s": 1
            }))
            .unwrap()],
            bundles: vec![
                bundle(
                    "line",
                    &[Kind::Voice],
                    &[Zone::Home],
                    200,
                    Scope::PerSubscription,
                ),
                bundle("pool", &[Kind::Voice], &[], 500, Scope::Pooled),
                bundle("eu", &[Kind::Voice], &[Zone::Eu], 90, Scope::Pooled),
            ],
            monthly_fee_micros: 0,
        };
        let mut rater = Rater::new(&plan);
        let mut cdrs = Vec::new();
        let mut figures = Vec::new();
        let mut rated_shares = Vec::new();
        let mut splits = Vec::new();
        // A fixed pseudo-random mix: 3 subscriptions, home and EU, 0-200 s.
        let mut x: u64 = 7;
        for position in 0..60usize {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let subscription = (x >> 33) as usize % 3;
            let zone = if (x >> 40).is_multiple_of(4) {
                Zone::Eu
            } else {
                Zone::Home
            };
            let seconds = ((x >> 20) % 200) as u32;
            let pricing = rater.rate(&Usage {
                subscription,
                kind: Kind::Voice,
                zone,
                destination: b"+31201234567",
                duration_seconds: seconds,
                volume_bytes: 0,
                units: 0,
                provider_cost_micros: 0,
            });
            let shares = rater.shares().to_vec();
            if shares.iter().filter(|s| s.covered > 0).count() > 1 {
                for s in shares.iter().filter(|s| s.covered > 0) {
                    splits.push((position, s.bundle, s.covered));
                }
            }
            cdrs.push((
                1000 + position as i64,
                subscription,
                Kind::Voice,
                zone,
                pricing.billed_quantity,
            ));
            figures.push((pricing.bundle, pricing.covered_quantity));
            rated_shares.push(shares);
        }
        assert!(
            !splits.is_empty(),
            "the mix splits some CDRs between bundles"
        );
        assert!(
            rated_shares.iter().flatten().any(|s| s.covered == 0),
            "and uses some bundles up"
        );
        for (position, expected) in rated_shares.iter().enumerate() {
            let replayed = replay_from_figures(&plan, &cdrs, &figures, &splits, position);
            assert_eq!(&replayed, expected, "position {position}");
        }
    }
}
