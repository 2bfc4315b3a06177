//! Rate-plan rating: the pure pricing core of billing (no database, no AWS).
//!
//! Given a customer's [`RatePlan`] and the CDRs of one billing cycle,
//! [`rate_cycle`] prices every CDR and says how ([`RatedCdr::explanation`]).
//! [`standard`] is the standard calculation (rated cost = provider cost),
//! [`monthly_fees`] the fixed fees and [`summarise`] the totals.
//!
//! Underneath, [`Rater`] prices one CDR at a time into [`Pricing`] figures
//! (rate and bundle as indexes into the plan, billed and covered quantity,
//! cost) without building any text, so a cycle of a million CDRs rates in
//! well under a second; the totals calculation stores those figures, and
//! [`describe`] writes the sentence from them and the plan only when someone
//! asks (`temctl explain`, [`rate_cycle`]).
//!
//! # Rules
//!
//! 1. **Rate matching** ([`find_rate`]). A rate is a candidate for a CDR when
//!    its kind equals the CDR's kind, its zone equals the CDR's zone or is
//!    `None` (any zone), and its prefix is a prefix of the destination's
//!    digits (the ASCII digits of the destination, so `+31 20 123` gives
//!    `3120123`; a short code like `1233` is its own digits; an empty prefix
//!    matches every destination). The longest prefix wins; at equal prefix
//!    length a rate for the CDR's zone beats an "any zone" rate; if that
//!    still ties, the rate listed first in the plan wins.
//! 2. **No matching rate**: the CDR keeps its provider cost, has no rate and
//!    no bundle, consumes no bundle allowance and is flagged `unrated`
//!    (except service CDRs, rule 6).
//! 3. **Voice** ([`billed_seconds`]): a 0-second call bills 0 seconds and
//!    costs nothing (no connect fee). Otherwise the first increment
//!    (`first_increment_s`) is billed, then the rest of the call rounded up
//!    to whole increments of `increment_s`. Cost = connect fee + uncovered
//!    billed seconds x `price_per_minute_micros` / 60.
//! 4. **Data** ([`billed_bytes`]): billed bytes are the volume rounded up to
//!    a whole number of `increment_bytes` (0 stays 0). Cost = uncovered
//!    billed bytes x `price_per_unit_micros` / the plan's `unit_bytes`.
//! 5. **SMS and MMS**: billed messages = `units`; cost = uncovered messages x
//!    `price_per_message_micros`.
//! 6. **Service**: always the provider cost. A matching service rate is
//!    recorded in `rate_id`, but none is needed: a service CDR is *never*
//!    flagged unrated, because "provider cost" *is* the plan's rule for
//!    services, not a fallback (flagging every one-off provider charge as
//!    unrated would drown the real alarms in `BillingInsight`). Bundles never
//!    cover service CDRs.
//! 7. **Bundles**. The CDRs of the cycle are consumed in order of
//!    `started_at` (an instant, so a DST change cannot reorder them), ties by
//!    `provider`, then `external_id`, then `id` — whatever the input order.
//!    A bundle applies to a rated voice, data, SMS or MMS CDR whose kind is
//!    in the bundle's `kinds` and whose zone is in its `zones` (empty = all).
//!    Its allowance (seconds, bytes or messages, in the unit of the CDR's
//!    billed quantity) starts full each cycle, once per subscription
//!    ([`Scope::PerSubscription`]) or once for all of the customer's
//!    subscriptions together ([`Scope::Pooled`]). The increment rules are
//!    applied to the whole CDR first; the applicable bundles, in plan order,
//!    then cover as much of the billed quantity as they have left, and only
//!    the uncovered part is charged. Connect fees are never covered.
//!    `bundle_id` is the first bundle that covered anything; when several
//!    did, the explanation lists each with its share.
//! 8. **Rounding**: each CDR's cost is computed exactly as a fraction
//!    (`i128` numerator / denominator) and rounded half up (towards +inf) to
//!    a whole micro-euro, once per CDR ([`round_half_up`]). Totals are sums
//!    of those rounded per-CDR costs, so a total always equals the sum of
//!    its lines.
//! 9. **Monthly fees**: `monthly_fee_micros` per subscription active at the
//!    cycle start ([`monthly_fees`]).
//!
//! `rate_cycle` is a pure function of the plan and the *set* of CDRs: it
//! returns the results in consumption order, so rating the same CDRs in any
//! input order, or twice, gives identical results.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize, Serializer};

use crate::cdr::{Kind, Zone};

/// A customer's rate plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RatePlan {
    pub id: String,
    pub name: String,
    /// Bytes per data unit that `price_per_unit_micros` is quoted for,
    /// e.g. 1,048,576 for a price per MiB.
    pub unit_bytes: u64,
    #[serde(default)]
    pub rates: Vec<Rate>,
    #[serde(default)]
    pub bundles: Vec<Bundle>,
    /// Fixed fee per subscription active at the cycle start.
    #[serde(default)]
    pub monthly_fee_micros: i64,
}

/// One priced destination of a plan (see rules 1 and 3 to 6).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rate {
    pub id: String,
    #[serde(serialize_with = "ser_kind")]
    pub kind: Kind,
    /// `None` matches any roaming zone.
    #[serde(default, serialize_with = "ser_opt_zone")]
    pub zone: Option<Zone>,
    /// Leading digits of the destination (no `+`); empty matches all.
    #[serde(default)]
    pub prefix: String,
    #[serde(default)]
    pub connect_fee_micros: i64,
    #[serde(default)]
    pub price_per_minute_micros: i64,
    #[serde(default)]
    pub first_increment_s: u32,
    #[serde(default)]
    pub increment_s: u32,
    #[serde(default)]
    pub increment_bytes: u64,
    /// Data price per `RatePlan::unit_bytes`.
    #[serde(default)]
    pub price_per_unit_micros: i64,
    #[serde(default)]
    pub price_per_message_micros: i64,
}

/// Who shares a bundle's allowance within a cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// Each subscription has its own allowance.
    PerSubscription,
    /// One allowance shared by all of the customer's subscriptions.
    Pooled,
}

/// Included seconds, bytes or messages per cycle (rule 7).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bundle {
    pub id: String,
    #[serde(serialize_with = "ser_kinds")]
    pub kinds: Vec<Kind>,
    /// Empty means all zones.
    #[serde(default, serialize_with = "ser_zones")]
    pub zones: Vec<Zone>,
    /// Seconds for voice, bytes for data, messages for SMS/MMS.
    pub allowance: u64,
    pub scope: Scope,
}

/// The fields of a CDR that rating reads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RatingCdr {
    pub id: i64,
    pub provider: String,
    pub external_id: String,
    pub subscription: String,
    pub started_at: DateTime<Utc>,
    #[serde(serialize_with = "ser_kind")]
    pub kind: Kind,
    #[serde(serialize_with = "ser_zone")]
    pub zone: Zone,
    /// E.164 (`+31201234567`) or a short code.
    pub destination: String,
    pub duration_seconds: u32,
    pub volume_bytes: u64,
    pub units: u32,
    pub provider_cost_micros: i64,
}

/// How one CDR was priced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RatedCdr {
    pub cdr_id: i64,
    pub rated_cost_micros: i64,
    pub rate_id: Option<String>,
    /// The first bundle that covered part of the CDR.
    pub bundle_id: Option<String>,
    /// Billed seconds, bytes or messages after increments; for unrated and
    /// service CDRs the recorded quantity (seconds, bytes or units).
    pub billed_quantity: u64,
    /// The part of `billed_quantity` that bundles covered.
    pub covered_quantity: u64,
    pub unrated: bool,
    /// One sentence: rate, increments, bundle coverage and arithmetic.
    pub explanation: String,
}

/// Totals of one set of CDRs: sums of per-CDR values.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    pub cdr_count: u64,
    /// Recorded seconds of voice CDRs (not billed seconds).
    pub voice_seconds: u64,
    /// Recorded bytes of data CDRs (not billed bytes).
    pub data_bytes: u64,
    /// Units of SMS and MMS CDRs.
    pub messages: u64,
    pub provider_cost_micros: i64,
    pub rated_cost_micros: i64,
    pub unrated_count: u64,
}

fn ser_kind<S: Serializer>(kind: &Kind, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(kind.as_str())
}

fn ser_zone<S: Serializer>(zone: &Zone, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(zone.as_str())
}

fn ser_opt_zone<S: Serializer>(zone: &Option<Zone>, s: S) -> Result<S::Ok, S::Error> {
    match zone {
        Some(zone) => s.serialize_some(zone.as_str()),
        None => s.serialize_none(),
    }
}

fn ser_kinds<S: Serializer>(kinds: &[Kind], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(kinds.iter().map(|k| k.as_str()))
}

fn ser_zones<S: Serializer>(zones: &[Zone], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(zones.iter().map(|z| z.as_str()))
}

/// The rate that prices a CDR (rule 1): same kind, zone equal or any, prefix
/// of the destination's digits; longest prefix, then specific zone, then
/// plan order.
pub fn find_rate<'p>(
    plan: &'p RatePlan,
    kind: Kind,
    zone: Zone,
    destination: &str,
) -> Option<&'p Rate> {
    best_rate_of_destination(
        plan.rates.iter().enumerate(),
        kind,
        zone,
        destination.as_bytes(),
    )
    .map(|index| &plan.rates[index])
}

/// Rule 1 over `rates` (with their index in the plan, in plan order) for a
/// destination as stored: its digits are compared in place, without
/// collecting them first.
fn best_rate_of_destination<'p>(
    rates: impl Iterator<Item = (usize, &'p Rate)>,
    kind: Kind,
    zone: Zone,
    destination: &[u8],
) -> Option<usize> {
    let mut best: Option<(usize, (usize, bool))> = None;
    for (index, rate) in rates {
        if rate.kind != kind
            || rate.zone.is_some_and(|z| z != zone)
            || !digits_start_with(destination, rate.prefix.as_bytes())
        {
            continue;
        }
        let score = (rate.prefix.len(), rate.zone.is_some());
        // Strictly greater: the first rate in plan order wins a full tie.
        if best.is_none_or(|(_, b)| score > b) {
            best = Some((index, score));
        }
    }
    best.map(|(index, _)| index)
}

/// Whether the ASCII digits of `destination` start with `prefix`.
fn digits_start_with(destination: &[u8], prefix: &[u8]) -> bool {
    let mut digits = destination.iter().filter(|b| b.is_ascii_digit());
    prefix.iter().all(|p| digits.next() == Some(p))
}

/// Billed seconds of a call (rule 3): 0 for 0 s; else the first increment,
/// then whole increments of `increment_s` (0 is treated as 1) for the rest.
pub fn billed_seconds(rate: &Rate, duration_seconds: u32) -> u64 {
    let d = u64::from(duration_seconds);
    if d == 0 {
        return 0;
    }
    let first = u64::from(rate.first_increment_s);
    if d <= first {
        return first;
    }
    first + round_up(d - first, u64::from(rate.increment_s))
}

/// Billed bytes of a data session (rule 4): the volume rounded up to whole
/// `increment_bytes` (0 is treated as 1); 0 stays 0.
pub fn billed_bytes(rate: &Rate, volume_bytes: u64) -> u64 {
    round_up(volume_bytes, rate.increment_bytes)
}

fn round_up(quantity: u64, increment: u64) -> u64 {
    let increment = increment.max(1);
    quantity.div_ceil(increment).saturating_mul(increment)
}

/// `numerator / denominator` rounded half up (towards +inf): 2.5 -> 3,
/// 2.49 -> 2, -2.5 -> -2. `denominator` must be positive.
pub fn round_half_up(numerator: i128, denominator: i128) -> i128 {
    assert!(denominator > 0, "denominator must be positive");
    (2 * numerator + denominator).div_euclid(2 * denominator)
}

/// Fixed fees of a cycle: the plan's monthly fee per subscription active at
/// the cycle start.
pub fn monthly_fees(plan: &RatePlan, active_subscriptions_at_cycle_start: usize) -> i64 {
    let count = i64::try_from(active_subscriptions_at_cycle_start).unwrap_or(i64::MAX);
    plan.monthly_fee_micros.saturating_mul(count)
}

/// The order bundles are consumed in (rule 7). Anything that rates CDRs
/// outside [`rate_cycle`] (the totals calculation) must feed [`Rater`] in
/// this order: `started_at`, then `provider`, `external_id` and `id`, the
/// strings compared byte by byte.
pub fn consumption_cmp(a: &RatingCdr, b: &RatingCdr) -> std::cmp::Ordering {
    (a.started_at, &a.provider, &a.external_id, a.id).cmp(&(
        b.started_at,
        &b.provider,
        &b.external_id,
        b.id,
    ))
}

fn consumption_order(cdrs: &[RatingCdr]) -> Vec<&RatingCdr> {
    let mut order: Vec<&RatingCdr> = cdrs.iter().collect();
    order.sort_by(|a, b| consumption_cmp(a, b));
    order
}

/// The sentence of the standard calculation for one CDR.
pub fn describe_standard(cdr: &RatingCdr) -> String {
    format!(
        "{} CDR {}: standard calculation, rated at the provider cost of {} micro-euros.",
        cdr.kind.as_str(),
        cdr.id,
        cdr.provider_cost_micros
    )
}

/// Standard calculation: every CDR's rated cost is its provider cost.
/// Results are in consumption order, like [`rate_cycle`].
pub fn standard(cdrs: &[RatingCdr]) -> Vec<RatedCdr> {
    consumption_order(cdrs)
        .into_iter()
        .map(|cdr| RatedCdr {
            cdr_id: cdr.id,
            rated_cost_micros: cdr.provider_cost_micros,
            rate_id: None,
            bundle_id: None,
            billed_quantity: recorded_quantity(cdr),
            covered_quantity: 0,
            unrated: false,
            explanation: describe_standard(cdr),
        })
        .collect()
}

/// Rates the CDRs of one customer in one cycle under `plan`, with every
/// bundle starting full. Results are in consumption order (rule 7): sorted
/// by `started_at`, `provider`, `external_id`, `id`.
pub fn rate_cycle(plan: &RatePlan, cdrs: &[RatingCdr]) -> Vec<RatedCdr> {
    let mut rater = Rater::new(plan);
    let mut numbers: HashMap<&str, usize> = HashMap::new();
    consumption_order(cdrs)
        .into_iter()
        .map(|cdr| {
            let next = numbers.len();
            let subscription = *numbers.entry(cdr.subscription.as_str()).or_insert(next);
            let pricing = rater.rate(&cdr.usage(subscription));
            RatedCdr {
                cdr_id: cdr.id,
                rated_cost_micros: pricing.rated_cost_micros,
                rate_id: pricing
                    .rate
                    .and_then(|i| plan.rates.get(i))
                    .map(|r| r.id.clone()),
                bundle_id: pricing
                    .bundle
                    .and_then(|i| plan.bundles.get(i))
                    .map(|b| b.id.clone()),
                billed_quantity: pricing.billed_quantity,
                covered_quantity: pricing.covered_quantity,
                unrated: pricing.unrated,
                explanation: describe(plan, cdr, &pricing, rater.shares()),
            }
        })
        .collect()
}

/// Sums per-CDR values: usage and provider cost from `cdrs`, rated cost and
/// unrated count from `rated` (the rating of the same CDRs).
pub fn summarise(cdrs: &[RatingCdr], rated: &[RatedCdr]) -> Totals {
    let mut totals = Totals::default();
    for cdr in cdrs {
        totals.cdr_count += 1;
        match cdr.kind {
            Kind::Voice => totals.voice_seconds += u64::from(cdr.duration_seconds),
            Kind::Data => totals.data_bytes += cdr.volume_bytes,
            Kind::Sms | Kind::Mms => totals.messages += u64::from(cdr.units),
            Kind::Service => {}
        }
        totals.provider_cost_micros += cdr.provider_cost_micros;
    }
    for line in rated {
        totals.rated_cost_micros += line.rated_cost_micros;
        totals.unrated_count += u64::from(line.unrated);
    }
    totals
}

fn recorded_quantity(cdr: &RatingCdr) -> u64 {
    match cdr.kind {
        Kind::Voice => u64::from(cdr.duration_seconds),
        Kind::Data => cdr.volume_bytes,
        Kind::Sms | Kind::Mms | Kind::Service => u64::from(cdr.units),
    }
}

impl RatingCdr {
    /// What [`Rater::rate`] reads of this CDR; `subscription` is the
    /// caller's number for `self.subscription`.
    pub fn usage(&self, subscription: usize) -> Usage<'_> {
        Usage {
            subscription,
            kind: self.kind,
            zone: self.zone,
            destination: self.destination.as_bytes(),
            duration_seconds: self.duration_seconds,
            volume_bytes: self.volume_bytes,
            units: self.units,
            provider_cost_micros: self.provider_cost_micros,
        }
    }
}

/// What rating reads of one CDR, borrowed, so that rating a million CDRs
/// allocates nothing per CDR.
#[derive(Debug, Clone, Copy)]
pub struct Usage<'a> {
    /// A small number the caller gives each subscription of the cycle
    /// (0, 1, 2, ...): per-subscription bundles keep one allowance per
    /// number, in a vector indexed by it.
    pub subscription: usize,
    pub kind: Kind,
    pub zone: Zone,
    /// The destination as stored; only its ASCII digits matter (rule 1).
    pub destination: &'a [u8],
    pub duration_seconds: u32,
    pub volume_bytes: u64,
    pub units: u32,
    pub provider_cost_micros: i64,
}

/// How one CDR was priced, as figures: what the totals calculation stores.
/// [`describe`] turns them into the sentence of [`RatedCdr::explanation`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pricing {
    pub rated_cost_micros: i64,
    /// Index of the rate in `plan.rates`.
    pub rate: Option<usize>,
    /// Index in `plan.bundles` of the first bundle that covered part of it.
    pub bundle: Option<usize>,
    pub billed_quantity: u64,
    pub covered_quantity: u64,
    pub unrated: bool,
}

/// One applicable bundle's part in pricing a CDR: what it covered and what
/// it had left afterwards (covered 0: it was used up).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Share {
    /// Index in `plan.bundles`.
    pub bundle: usize,
    pub covered: u64,
    pub left: u64,
}

/// Where a bundle's used allowance is kept while covering one CDR.
trait Allowances {
    fn spent(&mut self, bundle: usize, scope: Scope) -> &mut u64;
}

/// Rating state of one cycle: rates CDRs one at a time, in consumption
/// order ([`consumption_cmp`]), with every bundle starting full.
/// What [`Rater::prepare`] found for one CDR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prepared {
    rate: Option<usize>,
}

pub struct Rater<'p> {
    plan: &'p RatePlan,
    /// Indexes of the plan's rates per kind (rule 1 only looks at rates of
    /// the CDR's kind), in plan order.
    rates_by_kind: [Vec<usize>; 5],
    /// Used allowance per bundle: one counter when pooled, one per
    /// subscription number otherwise.
    spent: Vec<Vec<u64>>,
    shares: Vec<Share>,
}

fn kind_slot(kind: Kind) -> usize {
    match kind {
        Kind::Voice => 0,
        Kind::Sms => 1,
        Kind::Mms => 2,
        Kind::Data => 3,
        Kind::Service => 4,
    }
}

struct Counters<'a> {
    spent: &'a mut [Vec<u64>],
    subscription: usize,
}

impl Allowances for Counters<'_> {
    fn spent(&mut self, bundle: usize, scope: Scope) -> &mut u64 {
        let counters = &mut self.spent[bundle];
        let slot = match scope {
            Scope::Pooled => 0,
            Scope::PerSubscription => self.subscription,
        };
        if counters.len() <= slot {
            counters.resize(slot + 1, 0);
        }
        &mut counters[slot]
    }
}

impl<'p> Rater<'p> {
    pub fn new(plan: &'p RatePlan) -> Self {
        let mut rates_by_kind: [Vec<usize>; 5] = Default::default();
        for (index, rate) in plan.rates.iter().enumerate() {
            rates_by_kind[kind_slot(rate.kind)].push(index);
        }
        Self {
            plan,
            rates_by_kind,
            spent: vec![Vec::new(); plan.bundles.len()],
            shares: Vec::new(),
        }
    }

    /// A rater that continues where an earlier one stopped: `spent` is what
    /// [`Rater::spent`] said then (a rating checkpoint).
    pub fn resume(plan: &'p RatePlan, mut spent: Vec<Vec<u64>>) -> Self {
        spent.resize(plan.bundles.len(), Vec::new());
        Self {
            spent,
            ..Self::new(plan)
        }
    }

    /// Used allowance per bundle of the plan: one counter when pooled, one
    /// per subscription number otherwise (missing numbers used nothing).
    pub fn spent(&self) -> &[Vec<u64>] {
        &self.spent
    }

    /// Prices the next CDR in consumption order (rules 1 to 8), consuming
    /// bundle allowance. [`Rater::shares`] then tells which bundles took
    /// part.
    pub fn rate(&mut self, cdr: &Usage<'_>) -> Pricing {
        let prepared = self.prepare(cdr);
        self.rate_prepared(cdr, prepared)
    }

    /// The part of rating a CDR that does not depend on any other CDR: its
    /// rate (rule 1). It only reads the plan, so the CDRs of a cycle can be
    /// prepared on several threads before [`Rater::rate_prepared`] walks
    /// them in consumption order.
    pub fn prepare(&self, cdr: &Usage<'_>) -> Prepared {
        let plan = self.plan;
        Prepared {
            rate: best_rate_of_destination(
                self.rates_by_kind[kind_slot(cdr.kind)]
                    .iter()
                    .map(|&i| (i, &plan.rates[i])),
                cdr.kind,
                cdr.zone,
                cdr.destination,
            ),
        }
    }

    /// [`Rater::rate`] of a CDR [`Rater::prepare`] prepared.
    pub fn rate_prepared(&mut self, cdr: &Usage<'_>, prepared: Prepared) -> Pricing {
        self.shares.clear();
        let plan = self.plan;
        let rate_index = prepared.rate;
        let rate = match rate_index {
            Some(index) if cdr.kind != Kind::Service => &plan.rates[index],
            // Rules 2 and 6: provider cost; only a non-service CDR without
            // a rate is unrated.
            _ => {
                return Pricing {
                    rated_cost_micros: cdr.provider_cost_micros,
                    rate: rate_index,
                    bundle: None,
                    billed_quantity: match cdr.kind {
                        Kind::Voice => u64::from(cdr.duration_seconds),
                        Kind::Data => cdr.volume_bytes,
                        _ => u64::from(cdr.units),
                    },
                    covered_quantity: 0,
                    unrated: cdr.kind != Kind::Service,
                }
            }
        };
        let billed = billed_quantity(
            rate,
            cdr.kind,
            cdr.duration_seconds,
            cdr.volume_bytes,
            cdr.units,
        );
        let mut counters = Counters {
            spent: &mut self.spent,
            subscription: cdr.subscription,
        };
        let (covered, bundle) = cover(
            plan,
            cdr.kind,
            cdr.zone,
            billed,
            &mut counters,
            &mut self.shares,
        );
        let (numerator, denominator) =
            cost_fraction(plan, rate, cdr.kind, cdr.duration_seconds, billed - covered);
        Pricing {
            rated_cost_micros: clamp_i64(round_half_up(numerator, denominator)),
            rate: rate_index,
            bundle,
            billed_quantity: billed,
            covered_quantity: covered,
            unrated: false,
        }
    }

    /// The applicable bundles of the last rated CDR, in plan order, each
    /// with what it covered and had left; empty when nothing was billed or
    /// no bundle applies.
    pub fn shares(&self) -> &[Share] {
        &self.shares
    }
}

fn clamp_i64(value: i128) -> i64 {
    i64::try_from(value).unwrap_or(if value < 0 { i64::MIN } else { i64::MAX })
}

/// Billed seconds, bytes or messages under `rate` (rules 3 to 5).
fn billed_quantity(rate: &Rate, kind: Kind, seconds: u32, bytes: u64, units: u32) -> u64 {
    match kind {
        Kind::Voice => billed_seconds(rate, seconds),
        Kind::Data => billed_bytes(rate, bytes),
        _ => u64::from(units),
    }
}

/// The exact cost as `numerator / denominator` (rules 3 to 5): connect fee
/// (voice longer than 0 s) plus the uncovered quantity at the rate's price.
fn cost_fraction(
    plan: &RatePlan,
    rate: &Rate,
    kind: Kind,
    seconds: u32,
    uncovered: u64,
) -> (i128, i128) {
    let uncovered = i128::from(uncovered);
    match kind {
        Kind::Voice => {
            let connect = if seconds > 0 {
                rate.connect_fee_micros
            } else {
                0
            };
            (
                i128::from(connect) * 60 + uncovered * i128::from(rate.price_per_minute_micros),
                60,
            )
        }
        Kind::Data => (
            uncovered * i128::from(rate.price_per_unit_micros),
            i128::from(plan.unit_bytes.max(1)),
        ),
        _ => (uncovered * i128::from(rate.price_per_message_micros), 1),
    }
}

/// Covers up to `quantity` from the applicable bundles in plan order,
/// recording each applicable bundle's share. Returns the covered total and
/// the first bundle that covered anything.
fn cover(
    plan: &RatePlan,
    kind: Kind,
    zone: Zone,
    quantity: u64,
    allowances: &mut impl Allowances,
    shares: &mut Vec<Share>,
) -> (u64, Option<usize>) {
    if quantity == 0 {
        return (0, None);
    }
    let mut left = quantity;
    let mut first = None;
    for (index, bundle) in plan.bundles.iter().enumerate() {
        if left == 0 {
            break;
        }
        if !bundle.kinds.contains(&kind)
            || !(bundle.zones.is_empty() || bundle.zones.contains(&zone))
        {
            continue;
        }
        let spent = allowances.spent(index, bundle.scope);
        let remaining = bundle.allowance.saturating_sub(*spent);
        let take = remaining.min(left);
        *spent += take;
        left -= take;
        if take > 0 {
            first.get_or_insert(index);
        }
        shares.push(Share {
            bundle: index,
            covered: take,
            left: remaining - take,
        });
    }
    (quantity - left, first)
}

struct Before<'a>(&'a mut [u64]);

impl Allowances for Before<'_> {
    fn spent(&mut self, bundle: usize, _scope: Scope) -> &mut u64 {
        &mut self.0[bundle]
    }
}

/// The bundle shares of one CDR rebuilt from stored figures: `used_before`
/// holds, per bundle of the plan, the allowance this CDR's subscription (or
/// the pool) had used before it. The same walk as rating, so the result is
/// what rating saw.
pub fn replay_shares(
    plan: &RatePlan,
    kind: Kind,
    zone: Zone,
    billed_quantity: u64,
    used_before: &[u64],
) -> Vec<Share> {
    let mut used = used_before.to_vec();
    used.resize(plan.bundles.len(), 0);
    let mut shares = Vec::new();
    if kind != Kind::Service {
        cover(
            plan,
            kind,
            zone,
            billed_quantity,
            &mut Before(&mut used),
            &mut shares,
        );
    }
    shares
}

/// The unit of a CDR's billed quantity.
pub fn unit_of(kind: Kind) -> &'static str {
    match kind {
        Kind::Voice => "s",
        Kind::Data => "bytes",
        _ => "messages",
    }
}

/// The arithmetic of a rated CDR's cost, e.g. `5000 connect + 50 s x
/// 60000/60 = 55000`, from its figures; `None` when it kept the provider
/// cost (no rate, or a service).
pub fn arithmetic(plan: &RatePlan, cdr: &RatingCdr, pricing: &Pricing) -> Option<String> {
    let rate = pricing
        .rate
        .and_then(|i| plan.rates.get(i))
        .filter(|_| cdr.kind != Kind::Service)?;
    let uncovered = pricing
        .billed_quantity
        .saturating_sub(pricing.covered_quantity);
    let (numerator, denominator) =
        cost_fraction(plan, rate, cdr.kind, cdr.duration_seconds, uncovered);
    let formula = match cdr.kind {
        Kind::Voice => {
            let connect = if cdr.duration_seconds > 0 {
                rate.connect_fee_micros
            } else {
                0
            };
            format!(
                "{connect} connect + {uncovered} s x {}/60",
                rate.price_per_minute_micros
            )
        }
        Kind::Data => format!(
            "{uncovered} bytes x {}/{}",
            rate.price_per_unit_micros,
            plan.unit_bytes.max(1)
        ),
        _ => format!("{uncovered} messages x {}", rate.price_per_message_micros),
    };
    let cost = clamp_i64(round_half_up(numerator, denominator));
    let exact = if numerator % denominator == 0 {
        format!("{}", numerator / denominator)
    } else {
        format!("{numerator}/{denominator}, rounded half up to {cost}")
    };
    Some(format!("{formula} = {exact}"))
}

/// The sentence that explains how one CDR was priced (rate, increments,
/// bundle coverage, arithmetic), from its figures, the bundles' shares and
/// the plan it was rated with. Built on demand: rating itself only keeps
/// the figures.
pub fn describe(plan: &RatePlan, cdr: &RatingCdr, pricing: &Pricing, shares: &[Share]) -> String {
    let kind = cdr.kind.as_str();
    let head = format!(
        "{kind} CDR {} ({}, zone {}, to '{}')",
        cdr.id,
        quantity_text(cdr),
        cdr.zone.as_str(),
        cdr.destination
    );
    let rate = pricing.rate.and_then(|i| plan.rates.get(i));
    let (Some(rate), Some(arithmetic)) = (rate, arithmetic(plan, cdr, pricing)) else {
        return match (rate, cdr.kind == Kind::Service) {
            (Some(rate), _) => format!(
                "{head}: service rate '{}' ({}) keeps the provider cost of {} micro-euros.",
                rate.id,
                rate_text(rate),
                cdr.provider_cost_micros
            ),
            (None, true) => format!(
                "{head}: services are charged at the provider cost of {} micro-euros.",
                cdr.provider_cost_micros
            ),
            (None, false) => format!(
                "{head}: no rate of plan '{}' matches, so it is unrated at the provider cost of {} micro-euros.",
                plan.id, cdr.provider_cost_micros
            ),
        };
    };
    let unit = unit_of(cdr.kind);
    let billing = match cdr.kind {
        Kind::Voice => format!(
            "increments {}/{} s",
            rate.first_increment_s, rate.increment_s
        ),
        Kind::Data => format!("increments of {} bytes", rate.increment_bytes),
        _ => "per message".to_string(),
    };
    let notes: Vec<String> = shares
        .iter()
        .filter_map(|share| {
            let bundle = plan.bundles.get(share.bundle)?;
            let scope = scope_text(bundle.scope);
            Some(if share.covered > 0 {
                format!(
                    "{scope} bundle '{}' covered {} {unit} ({} of {} left)",
                    bundle.id, share.covered, share.left, bundle.allowance
                )
            } else {
                format!("{scope} bundle '{}' was used up", bundle.id)
            })
        })
        .collect();
    let bundles = if notes.is_empty() {
        String::new()
    } else {
        format!("; {}", notes.join(", "))
    };
    format!(
        "{head} priced by rate '{}' ({}): billed {} {unit} ({billing}){bundles}; {arithmetic} micro-euros.",
        rate.id,
        rate_text(rate),
        pricing.billed_quantity,
    )
}

/// `per-subscription` or `pooled`.
pub fn scope_text(scope: Scope) -> &'static str {
    match scope {
        Scope::PerSubscription => "per-subscription",
        Scope::Pooled => "pooled",
    }
}

fn quantity_text(cdr: &RatingCdr) -> String {
    match cdr.kind {
        Kind::Voice => format!("{} s", cdr.duration_seconds),
        Kind::Data => format!("{} bytes", cdr.volume_bytes),
        Kind::Sms | Kind::Mms | Kind::Service => format!("{} units", cdr.units),
    }
}

fn rate_text(rate: &Rate) -> String {
    format!(
        "prefix '{}', zone {}",
        rate.prefix,
        rate.zone.map_or("any", Zone::as_str)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MIB: u64 = 1_048_576;

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    fn rate(id: &str, kind: Kind, zone: Option<Zone>, prefix: &str) -> Rate {
        Rate {
            id: id.to_string(),
            kind,
            zone,
            prefix: prefix.to_string(),
            connect_fee_micros: 0,
            price_per_minute_micros: 0,
            first_increment_s: 1,
            increment_s: 1,
            increment_bytes: 1,
            price_per_unit_micros: 0,
            price_per_message_micros: 0,
        }
    }

    fn voice(id: &str, zone: Option<Zone>, prefix: &str, first: u32, inc: u32, ppm: i64) -> Rate {
        Rate {
            first_increment_s: first,
            increment_s: inc,
            price_per_minute_micros: ppm,
            ..rate(id, Kind::Voice, zone, prefix)
        }
    }

    fn bundle(id: &str, kinds: &[Kind], zones: &[Zone], allowance: u64, scope: Scope) -> Bundle {
        Bundle {
            id: id.to_string(),
            kinds: kinds.to_vec(),
            zones: zones.to_vec(),
            allowance,
            scope,
        }
    }

    fn plan(rates: Vec<Rate>, bundles: Vec<Bundle>) -> RatePlan {
        RatePlan {
            id: "plan".to_string(),
            name: "Test plan".to_string(),
            unit_bytes: MIB,
            rates,
            bundles,
            monthly_fee_micros: 0,
        }
    }

    /// A CDR with no usage; tests set what they need.
    fn cdr(id: i64, subscription: &str, started_at: &str, kind: Kind, zone: Zone) -> RatingCdr {
        RatingCdr {
            id,
            provider: "kpn".to_string(),
            external_id: format!("x{id}"),
            subscription: subscription.to_string(),
            started_at: at(started_at),
            kind,
            zone,
            destination: "+31201234567".to_string(),
            duration_seconds: 0,
            volume_bytes: 0,
            units: 0,
            provider_cost_micros: 0,
        }
    }

    fn call(id: i64, subscription: &str, started_at: &str, seconds: u32) -> RatingCdr {
        RatingCdr {
            duration_seconds: seconds,
            ..cdr(id, subscription, started_at, Kind::Voice, Zone::Home)
        }
    }

    fn rate_one_cdr(plan: &RatePlan, cdr: RatingCdr) -> RatedCdr {
        rate_cycle(plan, &[cdr]).remove(0)
    }

    /// (billed seconds, rated cost) of a single home call of `seconds`.
    fn priced_call(plan: &RatePlan, seconds: u32) -> (u64, i64) {
        let rated = rate_one_cdr(plan, call(1, "s1", "2025-01-20T10:00:00Z", seconds));
        (rated.billed_quantity, rated.rated_cost_micros)
    }

    #[test]
    fn voice_at_60_1_bills_a_full_first_minute_then_per_second() {
        // 0.12 EUR/min = 120,000 micro-euros per minute = 2,000 per second.
        let p = plan(vec![voice("v", None, "", 60, 1, 120_000)], vec![]);
        // 0 s: a 0-second call bills nothing: 0 s, 0.
        assert_eq!(priced_call(&p, 0), (0, 0));
        // 1 s: first increment 60 s: 60 x 120,000 / 60 = 120,000.
        assert_eq!(priced_call(&p, 1), (60, 120_000));
        // 30 s: still inside the first increment: 60 s, 120,000.
        assert_eq!(priced_call(&p, 30), (60, 120_000));
        // 31 s: inside the first increment: 60 s, 120,000.
        assert_eq!(priced_call(&p, 31), (60, 120_000));
        // 60 s: exactly the first increment: 60 s, 120,000.
        assert_eq!(priced_call(&p, 60), (60, 120_000));
        // 61 s: 60 + ceil(1/1) x 1 = 61 s; 61 x 120,000 / 60 = 122,000.
        assert_eq!(priced_call(&p, 61), (61, 122_000));
    }

    #[test]
    fn voice_at_30_30_bills_whole_half_minutes() {
        let p = plan(vec![voice("v", None, "", 30, 30, 120_000)], vec![]);
        // 0 s: 0 s, 0.
        assert_eq!(priced_call(&p, 0), (0, 0));
        // 1 s: first increment 30 s; 30 x 120,000 / 60 = 60,000.
        assert_eq!(priced_call(&p, 1), (30, 60_000));
        // 30 s: exactly the first increment: 30 s, 60,000.
        assert_eq!(priced_call(&p, 30), (30, 60_000));
        // 31 s: 30 + ceil(1/30) x 30 = 60 s; 60 x 120,000 / 60 = 120,000.
        assert_eq!(priced_call(&p, 31), (60, 120_000));
        // 60 s: 30 + ceil(30/30) x 30 = 60 s; 120,000.
        assert_eq!(priced_call(&p, 60), (60, 120_000));
        // 61 s: 30 + ceil(31/30) x 30 = 90 s; 90 x 120,000 / 60 = 180,000.
        assert_eq!(priced_call(&p, 61), (90, 180_000));
    }

    #[test]
    fn a_connect_fee_is_added_to_every_call_longer_than_zero_seconds() {
        let mut v = voice("v", None, "", 60, 1, 120_000);
        v.connect_fee_micros = 15_000;
        let p = plan(vec![v], vec![]);
        // 0 s: no call, no connect fee: 0.
        assert_eq!(priced_call(&p, 0), (0, 0));
        // 1 s: 15,000 + 60 x 120,000 / 60 = 135,000.
        assert_eq!(priced_call(&p, 1), (60, 135_000));
    }

    #[test]
    fn the_longest_matching_prefix_wins() {
        // 60 s calls at 60/1 cost exactly the per-minute price of their rate.
        let p = plan(
            vec![
                voice("all", None, "", 60, 1, 300_000),
                voice("nl", None, "31", 60, 1, 120_000),
                voice("nl-mobile", None, "316", 60, 1, 240_000),
                voice("nl-3162", None, "3162", 60, 1, 999_000),
                Rate {
                    price_per_message_micros: 1,
                    ..rate("sms-nl-mobile", Kind::Sms, None, "3161")
                },
            ],
            vec![],
        );
        let to = |destination: &str| {
            rate_one_cdr(
                &p,
                RatingCdr {
                    destination: destination.to_string(),
                    ..call(1, "s1", "2025-01-20T10:00:00Z", 60)
                },
            )
        };
        // +31612345678: digits 31612345678; "", "31" and "316" match,
        // "3162" does not, "3161" is an SMS rate; "316" is longest:
        // 60 x 240,000 / 60 = 240,000.
        let mobile = to("+31612345678");
        assert_eq!(mobile.rate_id.as_deref(), Some("nl-mobile"));
        assert_eq!(mobile.rated_cost_micros, 240_000);
        // +31201234567: "" and "31" match; "31" wins: 120,000.
        let fixed = to("+31201234567");
        assert_eq!(fixed.rate_id.as_deref(), Some("nl"));
        assert_eq!(fixed.rated_cost_micros, 120_000);
        // +4915112345678: only "" matches: 300,000.
        let german = to("+4915112345678");
        assert_eq!(german.rate_id.as_deref(), Some("all"));
        assert_eq!(german.rated_cost_micros, 300_000);
    }

    #[test]
    fn a_zone_specific_rate_beats_any_zone_at_equal_prefix_and_any_zone_is_the_fallback() {
        let p = plan(
            vec![
                voice("any", None, "", 60, 1, 100_000),
                voice("eu", Some(Zone::Eu), "", 60, 1, 200_000),
                voice("nl-any", None, "31", 60, 1, 50_000),
            ],
            vec![],
        );
        let from = |zone: Zone, destination: &str| {
            rate_one_cdr(
                &p,
                RatingCdr {
                    zone,
                    destination: destination.to_string(),
                    ..call(1, "s1", "2025-01-20T10:00:00Z", 60)
                },
            )
        };
        // EU call to +44: "any" and "eu" both match with prefix "" (length
        // 0); the EU-specific one wins: 60 x 200,000 / 60 = 200,000.
        let eu = from(Zone::Eu, "+442071234567");
        assert_eq!(eu.rate_id.as_deref(), Some("eu"));
        assert_eq!(eu.rated_cost_micros, 200_000);
        // World call to +44: only the any-zone rate matches: 100,000.
        let world = from(Zone::World, "+442071234567");
        assert_eq!(world.rate_id.as_deref(), Some("any"));
        assert_eq!(world.rated_cost_micros, 100_000);
        // EU call to +31: the longer prefix "31" (any zone) beats the
        // EU-specific "" rate, because prefix length comes first: 50,000.
        let eu_to_nl = from(Zone::Eu, "+31201234567");
        assert_eq!(eu_to_nl.rate_id.as_deref(), Some("nl-any"));
        assert_eq!(eu_to_nl.rated_cost_micros, 50_000);
    }

    #[test]
    fn a_bundle_running_out_in_the_middle_of_a_call_charges_only_the_rest() {
        // 60/1 at 60,000 per minute (1,000 per second), connect fee 5,000,
        // 160 s bundle per subscription. The input order is reversed: the
        // bundle is consumed in order of started_at.
        let mut v = voice("v", None, "", 60, 1, 60_000);
        v.connect_fee_micros = 5_000;
        let p = plan(
            vec![v],
            vec![bundle(
                "min",
                &[Kind::Voice],
                &[],
                160,
                Scope::PerSubscription,
            )],
        );
        let rated = rate_cycle(
            &p,
            &[
                call(3, "s1", "2025-01-20T11:00:00Z", 30),
                call(2, "s1", "2025-01-20T10:00:00Z", 150),
                call(1, "s1", "2025-01-20T09:00:00Z", 40),
            ],
        );
        let ids: Vec<i64> = rated.iter().map(|r| r.cdr_id).collect();
        assert_eq!(ids, [1, 2, 3]);
        // 09:00, 40 s: billed 60 s, all covered (100 s left); only the
        // connect fee: 5,000.
        assert_eq!(
            (rated[0].billed_quantity, rated[0].covered_quantity),
            (60, 60)
        );
        assert_eq!(rated[0].rated_cost_micros, 5_000);
        assert_eq!(rated[0].bundle_id.as_deref(), Some("min"));
        // 10:00, 150 s: billed 60 + 90 = 150 s; the bundle covers its last
        // 100 s; 5,000 + 50 x 60,000 / 60 = 5,000 + 50,000 = 55,000.
        assert_eq!(
            (rated[1].billed_quantity, rated[1].covered_quantity),
            (150, 100)
        );
        assert_eq!(rated[1].rated_cost_micros, 55_000);
        assert_eq!(rated[1].bundle_id.as_deref(), Some("min"));
        // 11:00, 30 s: billed 60 s, bundle empty; 5,000 + 60,000 = 65,000.
        assert_eq!(
            (rated[2].billed_quantity, rated[2].covered_quantity),
            (60, 0)
        );
        assert_eq!(rated[2].rated_cost_micros, 65_000);
        assert_eq!(rated[2].bundle_id, None);
        assert!(
            rated[1].explanation.contains("covered 100 s")
                && rated[1]
                    .explanation
                    .contains("5000 connect + 50 s x 60000/60 = 55000"),
            "{}",
            rated[1].explanation
        );
    }

    #[test]
    fn a_pooled_bundle_is_shared_by_the_subscriptions_and_a_per_subscription_bundle_is_not() {
        // 60/1 at 60,000 per minute, no connect fee, 120 s bundle.
        let calls = [
            call(1, "s1", "2025-01-20T09:00:00Z", 90),
            call(2, "s2", "2025-01-20T10:00:00Z", 90),
        ];
        let with = |scope| {
            let p = plan(
                vec![voice("v", None, "", 60, 1, 60_000)],
                vec![bundle("min", &[Kind::Voice], &[], 120, scope)],
            );
            rate_cycle(&p, &calls)
        };
        // Pooled: s1's 90 s are covered (30 s left in the pool); s2's 90 s
        // get 30 s covered, 60 s charged: 60 x 60,000 / 60 = 60,000.
        let pooled = with(Scope::Pooled);
        assert_eq!(
            (pooled[0].covered_quantity, pooled[0].rated_cost_micros),
            (90, 0)
        );
        assert_eq!(
            (pooled[1].covered_quantity, pooled[1].rated_cost_micros),
            (30, 60_000)
        );
        // Per subscription: each has its own 120 s; both calls are free.
        let own = with(Scope::PerSubscription);
        assert_eq!((own[0].covered_quantity, own[0].rated_cost_micros), (90, 0));
        assert_eq!((own[1].covered_quantity, own[1].rated_cost_micros), (90, 0));
    }

    #[test]
    fn several_bundles_are_used_in_plan_order_and_only_for_their_kinds_and_zones() {
        // 60/1 at 60,000 per minute (1,000/s). "home" covers 60 s of home
        // calls, "any" 120 s in all zones, "data" is for data only.
        let p = plan(
            vec![voice("v", None, "", 60, 1, 60_000)],
            vec![
                bundle("data", &[Kind::Data], &[], 1_000_000, Scope::Pooled),
                bundle("home", &[Kind::Voice], &[Zone::Home], 60, Scope::Pooled),
                bundle("any", &[Kind::Voice], &[], 120, Scope::Pooled),
            ],
        );
        let roaming = RatingCdr {
            zone: Zone::Eu,
            ..call(2, "s1", "2025-01-20T10:00:00Z", 100)
        };
        let rated = rate_cycle(&p, &[call(1, "s1", "2025-01-20T09:00:00Z", 150), roaming]);
        // 09:00 home 150 s: "home" covers 60, then "any" 90 (30 left):
        // covered 150, cost 0; bundle_id is the first that covered.
        assert_eq!(
            (rated[0].covered_quantity, rated[0].rated_cost_micros),
            (150, 0)
        );
        assert_eq!(rated[0].bundle_id.as_deref(), Some("home"));
        // 10:00 EU 100 s: "home" does not apply; "any" covers 30 s; 70 s
        // charged: 70 x 60,000 / 60 = 70,000.
        assert_eq!(
            (rated[1].covered_quantity, rated[1].rated_cost_micros),
            (30, 70_000)
        );
        assert_eq!(rated[1].bundle_id.as_deref(), Some("any"));
    }

    #[test]
    fn data_rounds_up_to_the_increment_and_is_priced_per_unit() {
        // Increment 1 KiB, 1.000000 EUR per MiB (1,000,000 micro-euros).
        let data_rate = Rate {
            increment_bytes: 1024,
            price_per_unit_micros: 1_000_000,
            ..rate("d", Kind::Data, None, "")
        };
        let session = |id, bytes| RatingCdr {
            volume_bytes: bytes,
            destination: String::new(),
            ..cdr(id, "s1", "2025-01-20T10:00:00Z", Kind::Data, Zone::Home)
        };
        let p = plan(vec![data_rate.clone()], vec![]);
        let priced = |bytes| {
            let r = rate_one_cdr(&p, session(1, bytes));
            (r.billed_quantity, r.rated_cost_micros)
        };
        // 0 bytes stay 0: 0.
        assert_eq!(priced(0), (0, 0));
        // 1,500 bytes -> ceil(1500/1024) x 1024 = 2,048 billed;
        // 2,048 x 1,000,000 / 1,048,576 = 1,953.125 -> 1,953.
        assert_eq!(priced(1_500), (2_048, 1_953));
        // 1,024 bytes -> 1,024; 1,024,000,000 / 1,048,576 = 976.5625 -> 977.
        assert_eq!(priced(1_024), (1_024, 977));
        // 1 MiB -> 1,048,576 billed -> exactly 1,000,000.
        assert_eq!(priced(MIB), (MIB, 1_000_000));
        // With a 1,000-byte data bundle: 1,500 bytes bill 2,048, 1,000
        // covered, 1,048 charged: 1,048,000,000 / 1,048,576 = 999.45 -> 999.
        let p = plan(
            vec![data_rate],
            vec![bundle("mb", &[Kind::Data], &[], 1_000, Scope::Pooled)],
        );
        let r = rate_one_cdr(&p, session(1, 1_500));
        assert_eq!((r.billed_quantity, r.covered_quantity), (2_048, 1_000));
        assert_eq!(r.rated_cost_micros, 999);
    }

    #[test]
    fn messages_are_priced_per_unit_and_bundles_count_messages() {
        // SMS 90,000 per message, MMS 250,000; a 2-message pooled bundle
        // for SMS and MMS.
        let p = plan(
            vec![
                Rate {
                    price_per_message_micros: 90_000,
                    ..rate("sms", Kind::Sms, None, "")
                },
                Rate {
                    price_per_message_micros: 250_000,
                    ..rate("mms", Kind::Mms, None, "")
                },
            ],
            vec![bundle(
                "msg",
                &[Kind::Sms, Kind::Mms],
                &[],
                2,
                Scope::Pooled,
            )],
        );
        let sms = RatingCdr {
            units: 3,
            ..cdr(1, "s1", "2025-01-20T09:00:00Z", Kind::Sms, Zone::Home)
        };
        let mms = RatingCdr {
            units: 1,
            ..cdr(2, "s1", "2025-01-20T10:00:00Z", Kind::Mms, Zone::Home)
        };
        let rated = rate_cycle(&p, &[mms, sms]);
        // SMS x3 at 09:00: 2 covered, 1 x 90,000 = 90,000.
        assert_eq!(
            (rated[0].billed_quantity, rated[0].covered_quantity),
            (3, 2)
        );
        assert_eq!(rated[0].rated_cost_micros, 90_000);
        // MMS x1 at 10:00: bundle empty; 1 x 250,000 = 250,000.
        assert_eq!(
            (rated[1].billed_quantity, rated[1].covered_quantity),
            (1, 0)
        );
        assert_eq!(rated[1].rated_cost_micros, 250_000);
    }

    #[test]
    fn each_cdr_is_rounded_half_up_once_and_totals_add_the_rounded_lines() {
        // 1/1 increments, 1-second calls: cost = price per minute / 60.
        // 150,030 / 60 = 2,500.5 exactly -> rounds up to 2,501.
        let half = plan(vec![voice("v", None, "", 1, 1, 150_030)], vec![]);
        assert_eq!(priced_call(&half, 1), (1, 2_501));
        // 150,029 / 60 = 2,500.4833.. -> rounds down to 2,500.
        let below = plan(vec![voice("v", None, "", 1, 1, 150_029)], vec![]);
        assert_eq!(priced_call(&below, 1), (1, 2_500));
        // Two such calls: each line rounds to 2,501, so the total is 5,002
        // (not 2 x 2,500.5 = 5,001 rounded once).
        let cdrs = [
            call(1, "s1", "2025-01-20T09:00:00Z", 1),
            call(2, "s1", "2025-01-20T10:00:00Z", 1),
        ];
        let rated = rate_cycle(&half, &cdrs);
        assert_eq!(summarise(&cdrs, &rated).rated_cost_micros, 5_002);
        // The rounding helper itself: 5/2 = 2.5 -> 3; 249/100 -> 2;
        // -5/2 = -2.5 -> -2 (half up is towards +inf); -251/100 -> -3.
        assert_eq!(round_half_up(5, 2), 3);
        assert_eq!(round_half_up(249, 100), 2);
        assert_eq!(round_half_up(-5, 2), -2);
        assert_eq!(round_half_up(-251, 100), -3);
    }

    #[test]
    fn a_cdr_no_rate_matches_is_unrated_at_provider_cost_and_uses_no_bundle() {
        // Only a voice rate for +31; a 60 s voice bundle.
        let p = plan(
            vec![voice("nl", None, "31", 60, 1, 60_000)],
            vec![bundle(
                "min",
                &[Kind::Voice, Kind::Sms],
                &[],
                60,
                Scope::Pooled,
            )],
        );
        let uk = RatingCdr {
            destination: "+442071234567".to_string(),
            provider_cost_micros: 123_456,
            ..call(1, "s1", "2025-01-20T09:00:00Z", 60)
        };
        let sms = RatingCdr {
            units: 1,
            provider_cost_micros: 7_000,
            ..cdr(2, "s1", "2025-01-20T09:30:00Z", Kind::Sms, Zone::Home)
        };
        let nl = call(3, "s1", "2025-01-20T10:00:00Z", 60);
        let cdrs = [uk, sms, nl];
        let rated = rate_cycle(&p, &cdrs);
        // +44 voice: no prefix matches -> provider cost 123,456, unrated.
        assert!(rated[0].unrated);
        assert_eq!(rated[0].rated_cost_micros, 123_456);
        assert_eq!(
            (rated[0].rate_id.clone(), rated[0].bundle_id.clone()),
            (None, None)
        );
        // SMS: the plan has no SMS rate -> provider cost 7,000, unrated.
        assert!(rated[1].unrated);
        assert_eq!(rated[1].rated_cost_micros, 7_000);
        // The +31 call at 10:00 still finds the full 60 s bundle: cost 0.
        assert!(!rated[2].unrated);
        assert_eq!(
            (rated[2].covered_quantity, rated[2].rated_cost_micros),
            (60, 0)
        );
        assert_eq!(summarise(&cdrs, &rated).unrated_count, 2);
    }

    #[test]
    fn service_cdrs_keep_their_provider_cost_and_are_never_unrated() {
        let service = RatingCdr {
            units: 1,
            destination: "Roaming pack".to_string(),
            provider_cost_micros: 4_990_000,
            ..cdr(1, "s1", "2025-01-20T09:00:00Z", Kind::Service, Zone::Home)
        };
        let bundle_for_services = bundle("svc", &[Kind::Service], &[], 10, Scope::Pooled);
        // With a service rate: provider cost 4,990,000, the rate noted.
        let with_rate = plan(
            vec![rate("svc", Kind::Service, None, "")],
            vec![bundle_for_services.clone()],
        );
        let r = rate_one_cdr(&with_rate, service.clone());
        assert_eq!(r.rated_cost_micros, 4_990_000);
        assert_eq!(r.rate_id.as_deref(), Some("svc"));
        assert!(!r.unrated);
        // Bundles never cover services.
        assert_eq!((r.covered_quantity, r.bundle_id), (0, None));
        // Without a service rate: still provider cost, and not unrated.
        let without = plan(vec![], vec![bundle_for_services]);
        let r = rate_one_cdr(&without, service);
        assert_eq!(r.rated_cost_micros, 4_990_000);
        assert_eq!(r.rate_id, None);
        assert!(!r.unrated);
    }

    #[test]
    fn the_standard_calculation_is_the_provider_cost_and_fees_are_per_active_subscription() {
        let cdrs = [
            RatingCdr {
                provider_cost_micros: 300,
                ..call(2, "s1", "2025-01-20T10:00:00Z", 60)
            },
            RatingCdr {
                provider_cost_micros: 200,
                ..call(1, "s2", "2025-01-20T09:00:00Z", 30)
            },
        ];
        let rated = standard(&cdrs);
        // In consumption order: CDR 1 (09:00) at 200, CDR 2 (10:00) at 300.
        assert_eq!(rated[0].cdr_id, 1);
        assert_eq!(rated[0].rated_cost_micros, 200);
        assert_eq!(rated[1].rated_cost_micros, 300);
        let totals = summarise(&cdrs, &rated);
        // 2 CDRs, 60 + 30 = 90 s, 300 + 200 = 500 provider and rated.
        assert_eq!(
            totals,
            Totals {
                cdr_count: 2,
                voice_seconds: 90,
                provider_cost_micros: 500,
                rated_cost_micros: 500,
                ..Totals::default()
            }
        );
        // 3 subscriptions x 5.000000 EUR = 15,000,000 micro-euros.
        let mut p = plan(vec![], vec![]);
        p.monthly_fee_micros = 5_000_000;
        assert_eq!(monthly_fees(&p, 3), 15_000_000);
        assert_eq!(monthly_fees(&p, 0), 0);
    }

    #[test]
    fn on_a_dst_day_bundles_follow_the_instant_and_the_cycle_follows_local_midnight() {
        use crate::cdr::cycle_of;
        let ams = chrono_tz::Europe::Amsterdam;
        // Start day 26; on 2025-10-26 Amsterdam goes from CEST (+02:00) to
        // CET (+01:00) at 03:00 CEST = 01:00 UTC.
        // Last second of the cycle starting 2025-09-26: local 2025-10-25
        // 23:59:59 CEST = 21:59:59 UTC -> cycle 2025-09-26.
        assert_eq!(
            cycle_of(at("2025-10-25T21:59:59Z"), 26, ams).to_string(),
            "2025-09-26"
        );
        // Local 2025-10-26 00:00:00 CEST = 22:00:00 UTC -> cycle 2025-10-26.
        assert_eq!(
            cycle_of(at("2025-10-25T22:00:00Z"), 26, ams).to_string(),
            "2025-10-26"
        );
        // Local 02:30 happens twice that night: 00:30 UTC (CEST) and
        // 01:30 UTC (CET); both are in cycle 2025-10-26.
        for utc in ["2025-10-26T00:30:00Z", "2025-10-26T01:30:00Z"] {
            assert_eq!(cycle_of(at(utc), 26, ams).to_string(), "2025-10-26");
        }
        // Rating uses the instant: the CET 02:30 call is listed first but
        // the CEST 02:30 call (an hour earlier) consumes the 60 s bundle.
        // 60/1 at 60,000/min: first call 90 s billed 90, 60 covered, 30 x
        // 1,000 = 30,000; second call 60 s, nothing left: 60,000. The
        // duration is the recorded seconds, unaffected by the clock change.
        let p = plan(
            vec![voice("v", None, "", 60, 1, 60_000)],
            vec![bundle("min", &[Kind::Voice], &[], 60, Scope::Pooled)],
        );
        let rated = rate_cycle(
            &p,
            &[
                call(2, "s1", "2025-10-26T01:30:00Z", 60),
                call(1, "s1", "2025-10-26T00:30:00Z", 90),
            ],
        );
        assert_eq!((rated[0].cdr_id, rated[0].rated_cost_micros), (1, 30_000));
        assert_eq!((rated[1].cdr_id, rated[1].rated_cost_micros), (2, 60_000));
    }

    #[test]
    fn ties_on_started_at_are_broken_by_provider_then_external_id() {
        // Same instant; the 60 s pooled bundle goes to provider "a" first,
        // then within provider "b" to external id "1" before "2".
        let p = plan(
            vec![voice("v", None, "", 60, 1, 60_000)],
            vec![bundle("min", &[Kind::Voice], &[], 60, Scope::Pooled)],
        );
        let mk = |id, provider: &str, external_id: &str| RatingCdr {
            provider: provider.to_string(),
            external_id: external_id.to_string(),
            ..call(id, "s1", "2025-01-20T10:00:00Z", 60)
        };
        let rated = rate_cycle(&p, &[mk(3, "b", "2"), mk(2, "b", "1"), mk(1, "a", "9")]);
        let order: Vec<(i64, i64)> = rated
            .iter()
            .map(|r| (r.cdr_id, r.rated_cost_micros))
            .collect();
        // a/9 covered (0); b/1 and b/2 at 60 x 60,000 / 60 = 60,000.
        assert_eq!(order, [(1, 0), (2, 60_000), (3, 60_000)]);
    }

    #[test]
    fn plans_and_results_round_trip_through_json() {
        let mut r = voice("eu", Some(Zone::Eu), "31", 60, 1, 1);
        r.connect_fee_micros = 2;
        let p = plan(
            vec![r],
            vec![bundle(
                "b",
                &[Kind::Voice, Kind::Sms],
                &[Zone::Home],
                9,
                Scope::PerSubscription,
            )],
        );
        let json = serde_json::to_string(&p).unwrap();
        assert!(
            json.contains("\"kind\":\"voice\"") && json.contains("\"scope\":\"per_subscription\"")
        );
        assert_eq!(serde_json::from_str::<RatePlan>(&json).unwrap(), p);
        let c = call(1, "s1", "2025-01-20T10:00:00Z", 5);
        let json = serde_json::to_string(&c).unwrap();
        assert_eq!(serde_json::from_str::<RatingCdr>(&json).unwrap(), c);
    }

    // ---- property tests (proptest: shrinking, a fixed seed in CI) ----
    //
    // `PROPTEST_CASES=5000 cargo test -p tem-shared --lib billing::rating`
    // runs more cases; `PROPTEST_RNG_SEED=<n>` other ones. A failure prints
    // the smallest plan and CDRs it shrank to.

    const KINDS: [Kind; 5] = [Kind::Voice, Kind::Sms, Kind::Mms, Kind::Data, Kind::Service];
    const ZONES: [Zone; 3] = [Zone::Home, Zone::Eu, Zone::World];
    const PREFIXES: [&str; 5] = ["", "31", "316", "44", "1233"];
    const DESTINATIONS: [&str; 5] = [
        "+31612345678",
        "+31201234567",
        "+442071234567",
        "1233",
        "+4915112345678",
    ];

    fn any_kind() -> impl Strategy<Value = Kind> {
        prop::sample::select(KINDS.to_vec())
    }

    fn any_zone() -> impl Strategy<Value = Zone> {
        prop::sample::select(ZONES.to_vec())
    }

    /// A rate of any kind, zone (or any zone) and prefix; its id is set by
    /// [`any_plan`] from its position.
    fn any_rate() -> impl Strategy<Value = Rate> {
        (
            any_kind(),
            prop::option::of(any_zone()),
            prop::sample::select(PREFIXES.to_vec()),
            0..20_000i64,
            0..500_000i64,
            prop::sample::select(vec![0u32, 1, 30, 60]),
            prop::sample::select(vec![1u32, 30, 60]),
            prop::sample::select(vec![1u64, 1024, 10_240]),
            0..5_000_000i64,
            0..300_000i64,
        )
            .prop_map(
                |(kind, zone, prefix, connect, ppm, first, inc, inc_bytes, ppu, ppmsg)| Rate {
                    connect_fee_micros: connect,
                    price_per_minute_micros: ppm,
                    first_increment_s: first,
                    increment_s: inc,
                    increment_bytes: inc_bytes,
                    price_per_unit_micros: ppu,
                    price_per_message_micros: ppmsg,
                    ..rate("", kind, zone, prefix)
                },
            )
    }

    /// A pooled or per-subscription bundle of one kind, for some zones
    /// (none listed: all), with an allowance in that kind's unit.
    fn any_bundle() -> impl Strategy<Value = Bundle> {
        any_kind().prop_flat_map(|kind| {
            let allowance = match kind {
                Kind::Data => 0..5 * MIB,
                Kind::Voice => 0..3_600,
                _ => 0..20,
            };
            (
                prop::sample::subsequence(ZONES.to_vec(), 0..=ZONES.len()),
                allowance,
                prop::sample::select(vec![Scope::Pooled, Scope::PerSubscription]),
            )
                .prop_map(move |(zones, allowance, scope)| {
                    bundle("", &[kind], &zones, allowance, scope)
                })
        })
    }

    fn any_plan() -> impl Strategy<Value = RatePlan> {
        (
            prop::collection::vec(any_rate(), 0..12),
            prop::collection::vec(any_bundle(), 0..4),
        )
            .prop_map(|(mut rates, mut bundles)| {
                for (i, rate) in rates.iter_mut().enumerate() {
                    rate.id = format!("r{i}");
                }
                for (i, bundle) in bundles.iter_mut().enumerate() {
                    bundle.id = format!("b{i}");
                }
                plan(rates, bundles)
            })
    }

    /// CDRs of one cycle, each of any kind with the usage that kind has.
    /// Few distinct instants, providers and external ids, so that ties in
    /// consumption order happen often.
    fn any_cdrs() -> impl Strategy<Value = Vec<RatingCdr>> {
        let one = (
            any_kind(),
            any_zone(),
            prop::sample::select(vec!["s1", "s2", "s3"]),
            0..10u32,
            prop::sample::select(vec!["kpn", "vodafone"]),
            0..5u32,
            prop::sample::select(DESTINATIONS.to_vec()),
            0..400u32,
            0..3 * MIB,
            0..4u32,
            0..1_000_000i64,
        );
        prop::collection::vec(one, 0..40).prop_map(|cdrs| {
            cdrs.into_iter()
                .enumerate()
                .map(
                    |(
                        id,
                        (
                            kind,
                            zone,
                            subscription,
                            minute,
                            provider,
                            external,
                            destination,
                            seconds,
                            bytes,
                            units,
                            cost,
                        ),
                    )| RatingCdr {
                        provider: provider.to_string(),
                        external_id: format!("e{external}"),
                        destination: destination.to_string(),
                        duration_seconds: if kind == Kind::Voice { seconds } else { 0 },
                        volume_bytes: if kind == Kind::Data { bytes } else { 0 },
                        units: if matches!(kind, Kind::Sms | Kind::Mms | Kind::Service) {
                            units
                        } else {
                            0
                        },
                        provider_cost_micros: cost,
                        ..cdr(
                            id as i64,
                            subscription,
                            &format!("2025-01-20T10:{minute:02}:00Z"),
                            kind,
                            zone,
                        )
                    },
                )
                .collect()
        })
    }

    proptest! {
        #![proptest_config(crate::proptest_config::fixed(300, 4))]

        #[test]
        fn property_totals_equal_the_sum_of_the_per_cdr_values(
            p in any_plan(),
            cdrs in any_cdrs(),
        ) {
            for rated in [rate_cycle(&p, &cdrs), standard(&cdrs)] {
                let totals = summarise(&cdrs, &rated);
                prop_assert_eq!(rated.len(), cdrs.len());
                prop_assert_eq!(
                    totals.rated_cost_micros,
                    rated.iter().map(|r| r.rated_cost_micros).sum::<i64>()
                );
                prop_assert_eq!(
                    totals.provider_cost_micros,
                    cdrs.iter().map(|c| c.provider_cost_micros).sum::<i64>()
                );
                prop_assert_eq!(totals.cdr_count, cdrs.len() as u64);
                prop_assert_eq!(
                    totals.unrated_count,
                    rated.iter().filter(|r| r.unrated).count() as u64
                );
                for r in &rated {
                    prop_assert!(r.covered_quantity <= r.billed_quantity);
                    prop_assert!(r.rated_cost_micros >= 0, "{}", r.explanation);
                    prop_assert!(!r.explanation.is_empty());
                }
            }
            // Per kind, bundles never cover more than their allowances:
            // pooled ones once, per-subscription ones once per subscription.
            let rated = rate_cycle(&p, &cdrs);
            let mut subscriptions: Vec<&str> =
                cdrs.iter().map(|c| c.subscription.as_str()).collect();
            subscriptions.sort();
            subscriptions.dedup();
            for kind in KINDS {
                let allowances: u64 = p
                    .bundles
                    .iter()
                    .filter(|b| b.kinds.contains(&kind))
                    .map(|b| match b.scope {
                        Scope::Pooled => b.allowance,
                        Scope::PerSubscription => b.allowance * subscriptions.len() as u64,
                    })
                    .sum();
                let covered: u64 = rated
                    .iter()
                    .filter(|r| cdrs.iter().any(|c| c.id == r.cdr_id && c.kind == kind))
                    .map(|r| r.covered_quantity)
                    .sum();
                prop_assert!(covered <= allowances, "{kind:?}: {covered} > {allowances}");
            }
        }

        #[test]
        fn property_rating_is_independent_of_the_import_order(
            (p, cdrs, shuffled) in (any_plan(), any_cdrs()).prop_flat_map(|(p, cdrs)| {
                (Just(p), Just(cdrs.clone()), Just(cdrs).prop_shuffle())
            }),
        ) {
            prop_assert_eq!(rate_cycle(&p, &shuffled), rate_cycle(&p, &cdrs));
            let mut reversed = shuffled.clone();
            reversed.reverse();
            prop_assert_eq!(standard(&shuffled), standard(&reversed));
        }

        #[test]
        fn property_rating_twice_changes_nothing(p in any_plan(), cdrs in any_cdrs()) {
            let first = rate_cycle(&p, &cdrs);
            let second = rate_cycle(&p, &cdrs);
            prop_assert_eq!(&first, &second);
            prop_assert_eq!(summarise(&cdrs, &first), summarise(&cdrs, &second));
        }
    }
}
