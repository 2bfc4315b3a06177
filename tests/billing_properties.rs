//! Property tests of the totals calculation against a real PostgreSQL: for
//! random cycles and random sequences of changes, the incremental
//! calculation equals a full recalculation, and both equal the pure rating
//! oracle (`billing::rating`), per CDR and in every total and line.
//!
//! A case is a random rate plan (rates with prefixes, pooled and
//! per-subscription bundles) or none, a first file of CDRs over a few
//! subscriptions (with equal `started_at`s, and CDRs on local midnights and
//! just outside the cycle), and a random sequence of changes: a file at the
//! end of the cycle, in the middle ("late file") or before all others; a
//! file of CDRs without a customer, then attached; a hand edit in SQL of a
//! CDR's cost, duration or `started_at` (also across the cycle's bounds); a
//! deleted CDR; a plan edit, a move to another plan, to no plan or back; a
//! change of the customer's time zone; or nothing at all. Every change is
//! followed by a calculation, and then everything is compared.
//!
//! Each case has two customers that receive the same changes: one is only
//! ever calculated incrementally, so its stored state is the chain of
//! incremental calculations; the other only in full. Calculating one
//! customer both ways would let each full calculation repair what the
//! incremental chain left behind.
//!
//! CI runs a fixed set of cases (fixed seed, [`CASES`] cases, well under a
//! minute). To run more, or others:
//!
//! ```text
//! PROPTEST_CASES=500 cargo test -p tem-tests --test billing_properties
//! PROPTEST_RNG_SEED=12345 cargo test -p tem-tests --test billing_properties
//! ```
//!
//! A failure is shrunk to a smallest case (fewest CDRs and changes) and
//! printed (`PROPTEST_MAX_SHRINK_TIME=<ms>` bounds the shrinking). proptest
//! also stores the failing case's seed in
//! `tests/billing_properties.proptest-regressions`, and runs it first from
//! then on: commit that file with the fix.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, NaiveDate, TimeZone, Utc};
use chrono_tz::Tz;
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{RngSeed, TestCaseError, TestRunner};
use sqlx::{PgPool, Row};
use tem_shared::adapters::billing::pricings;
use tem_shared::adapters::totals::{calculate_totals, calculate_totals_with};
use tem_shared::billing::calculation::Recalculation;
use tem_shared::billing::rating::{
    rate_cycle, standard, summarise, Bundle, Rate, RatePlan, RatedCdr, RatingCdr, Scope, Totals,
};
use tem_shared::billing::totals::CycleTotals;
use tem_shared::cdr::changes::{self, ChangeSource, ChangedCycles};
use tem_shared::cdr::{Kind, Zone};
use tem_shared::import::attach::attach_unassigned;
use tem_tests::db::fresh;

/// Cases CI runs (`PROPTEST_CASES` overrides).
const CASES: u32 = 24;

/// The seed CI runs with (`PROPTEST_RNG_SEED` overrides).
const SEED: u64 = 11;

/// March 2025, billed on day 1: in Amsterdam the cycle holds the switch to
/// summer time (30 March), so it has a 23-hour day.
const CYCLE: (i32, u32, u32) = (2025, 3, 1);

const ZONES: [&str; 3] = ["Europe/Amsterdam", "Europe/London", "America/New_York"];

/// `started_at` positions across a window; few, so that equal instants are
/// common.
const GRID: i64 = 48;

const MIB: u64 = 1_048_576;

const KINDS: [Kind; 5] = [Kind::Voice, Kind::Sms, Kind::Mms, Kind::Data, Kind::Service];
const CDR_ZONES: [Zone; 3] = [Zone::Home, Zone::Eu, Zone::World];
const PREFIXES: [&str; 5] = ["", "31", "316", "44", "1233"];
const DESTINATIONS: [&str; 5] = [
    "+31612345678",
    "+31201234567",
    "+442071234567",
    "1233",
    "+4915112345678",
];
/// Subscriptions per customer.
const SUBSCRIPTIONS: usize = 4;
const PROVIDERS: [&str; 2] = ["kpn", "routit"];

// ---- the two calculations and the mark ----

/// The normal calculation, which may reuse what the last one stored.
async fn incremental(pool: &PgPool, customer: i64, cycle: NaiveDate) -> CycleTotals {
    calculate_totals(pool, customer, cycle)
        .await
        .expect("the incremental calculation succeeds")
}

/// A calculation from the CDR table alone.
async fn full(pool: &PgPool, customer: i64, cycle: NaiveDate) -> CycleTotals {
    calculate_totals_with(pool, customer, cycle, Recalculation::Full)
        .await
        .expect("the full calculation succeeds")
        .0
}

/// Marks the cycle changed from `changed_from`, as the importer does in the
/// transaction that loads a file.
async fn mark(
    tx: &mut sqlx::PgConnection,
    customer: i64,
    cycle: NaiveDate,
    changed_from: DateTime<Utc>,
) {
    let mut changed = ChangedCycles::default();
    changed.touch(customer, cycle, changed_from);
    changes::mark(tx, &changed, ChangeSource::Import)
        .await
        .expect("mark the cycle");
}

// ---- what a case is ----

/// Where in a window a CDR starts.
#[derive(Debug, Clone, Copy)]
enum When {
    /// Position `0..=GRID` across the window (both ends included, so a file
    /// placed after the others can start on the last one's instant).
    Grid(i64),
    /// Local midnight of the cycle's day `0..31` (a rating checkpoint),
    /// kept inside the window.
    Midnight(u32),
    /// One second before the cycle: not in it.
    BeforeCycle,
    /// The cycle's end: already the next cycle.
    AtEnd,
}

#[derive(Debug, Clone)]
struct CdrSpec {
    at: When,
    provider: &'static str,
    /// Which of the customer's subscriptions ([`subscription`]).
    subscription: usize,
    kind: Kind,
    zone: Zone,
    destination: &'static str,
    seconds: i32,
    bytes: i64,
    units: i32,
    cost: i64,
}

/// Where a file's CDRs fall against those already loaded.
#[derive(Debug, Clone, Copy)]
enum Placement {
    /// From the latest CDR so far to the cycle's end (the daily case).
    End,
    /// Anywhere in the cycle (a late file).
    Middle,
    /// From the cycle's start to the earliest CDR so far.
    Before,
}

#[derive(Debug, Clone)]
enum Change {
    Import {
        placement: Placement,
        cdrs: Vec<CdrSpec>,
    },
    /// A file whose subscriptions were not known when it was loaded (no
    /// customer), then attached (`attach_unassigned`).
    Attach {
        placement: Placement,
        cdrs: Vec<CdrSpec>,
    },
    EditCost {
        cdr: Index,
        cost: i64,
    },
    EditDuration {
        cdr: Index,
        seconds: i32,
    },
    EditStart {
        cdr: Index,
        at: When,
    },
    Delete {
        cdr: Index,
    },
    /// A new plan document (edited in place, or as another plan the
    /// customers move to), or no plan.
    Plan {
        plan: Option<RatePlan>,
        another: bool,
    },
    TimeZone(&'static str),
    /// A calculation with nothing changed.
    Nothing,
}

#[derive(Debug, Clone)]
struct Case {
    plan: Option<RatePlan>,
    first_file: Vec<CdrSpec>,
    changes: Vec<Change>,
}

// ---- strategies ----

fn any_rate() -> impl Strategy<Value = Rate> {
    (
        prop::sample::select(KINDS.to_vec()),
        prop::option::of(prop::sample::select(CDR_ZONES.to_vec())),
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
                id: String::new(),
                kind,
                zone,
                prefix: prefix.to_string(),
                connect_fee_micros: connect,
                price_per_minute_micros: ppm,
                first_increment_s: first,
                increment_s: inc,
                increment_bytes: inc_bytes,
                price_per_unit_micros: ppu,
                price_per_message_micros: ppmsg,
            },
        )
}

fn any_bundle() -> impl Strategy<Value = Bundle> {
    (
        prop::sample::subsequence(vec![Kind::Voice, Kind::Sms, Kind::Mms, Kind::Data], 1..=2),
        prop::sample::subsequence(CDR_ZONES.to_vec(), 0..=2),
        0..1_000u64,
        prop::sample::select(vec![Scope::Pooled, Scope::PerSubscription]),
    )
        .prop_map(|(kinds, zones, per_mille, scope)| {
            // An allowance in the unit of its first kind, up to about what
            // a few CDRs use, so bundles run out within a cycle.
            let most = match kinds[0] {
                Kind::Data => 8 * MIB,
                Kind::Voice => 1_800,
                _ => 12,
            };
            Bundle {
                id: String::new(),
                kinds,
                zones,
                allowance: most * per_mille / 1_000,
                scope,
            }
        })
}

fn any_plan() -> impl Strategy<Value = RatePlan> {
    (
        prop::collection::vec(any_rate(), 0..10),
        prop::collection::vec(any_bundle(), 0..4),
    )
        .prop_map(|(mut rates, mut bundles)| {
            for (i, rate) in rates.iter_mut().enumerate() {
                rate.id = format!("r{i}");
            }
            for (i, bundle) in bundles.iter_mut().enumerate() {
                bundle.id = format!("b{i}");
            }
            RatePlan {
                id: String::new(),
                name: "Property plan".to_string(),
                unit_bytes: MIB,
                rates,
                bundles,
                monthly_fee_micros: 0,
            }
        })
}

/// Mostly a rate plan, sometimes none (the standard method).
fn any_plan_or_none() -> impl Strategy<Value = Option<RatePlan>> {
    prop_oneof![1 => Just(None), 4 => any_plan().prop_map(Some)]
}

fn any_when_in_window() -> impl Strategy<Value = When> {
    prop_oneof![
        6 => (0..=GRID).prop_map(When::Grid),
        1 => (0..31u32).prop_map(When::Midnight),
    ]
}

fn any_cdr(at: impl Strategy<Value = When>) -> impl Strategy<Value = CdrSpec> {
    (
        at,
        prop::sample::select(PROVIDERS.to_vec()),
        0..SUBSCRIPTIONS,
        prop::sample::select(KINDS.to_vec()),
        prop::sample::select(CDR_ZONES.to_vec()),
        prop::sample::select(DESTINATIONS.to_vec()),
        0..400i32,
        0..(3 * MIB as i64),
        0..4i32,
        0..1_000_000i64,
    )
        .prop_map(
            |(at, provider, subscription, kind, zone, destination, seconds, bytes, units, cost)| {
                CdrSpec {
                    at,
                    provider,
                    subscription,
                    kind,
                    zone,
                    destination,
                    seconds: if kind == Kind::Voice { seconds } else { 0 },
                    bytes: if kind == Kind::Data { bytes } else { 0 },
                    units: if kind == Kind::Voice || kind == Kind::Data {
                        0
                    } else {
                        units
                    },
                    cost,
                }
            },
        )
}

fn any_placement() -> impl Strategy<Value = Placement> {
    prop::sample::select(vec![Placement::End, Placement::Middle, Placement::Before])
}

fn any_change() -> impl Strategy<Value = Change> {
    let file = || prop::collection::vec(any_cdr(any_when_in_window()), 1..12);
    prop_oneof![
        3 => (any_placement(), file())
            .prop_map(|(placement, cdrs)| Change::Import { placement, cdrs }),
        1 => (any_placement(), file())
            .prop_map(|(placement, cdrs)| Change::Attach { placement, cdrs }),
        2 => (any::<Index>(), 0..1_000_000i64).prop_map(|(cdr, cost)| Change::EditCost { cdr, cost }),
        1 => (any::<Index>(), 0..400i32).prop_map(|(cdr, seconds)| Change::EditDuration { cdr, seconds }),
        2 => (
            any::<Index>(),
            prop_oneof![8 => any_when_in_window(), 1 => Just(When::BeforeCycle), 1 => Just(When::AtEnd)],
        )
            .prop_map(|(cdr, at)| Change::EditStart { cdr, at }),
        2 => any::<Index>().prop_map(|cdr| Change::Delete { cdr }),
        2 => (any_plan_or_none(), any::<bool>()).prop_map(|(plan, another)| Change::Plan { plan, another }),
        1 => prop::sample::select(ZONES.to_vec()).prop_map(Change::TimeZone),
        1 => Just(Change::Nothing),
    ]
}

fn any_case() -> impl Strategy<Value = Case> {
    let first_cdr = any_cdr(prop_oneof![
        20 => any_when_in_window(),
        1 => Just(When::BeforeCycle),
        1 => Just(When::AtEnd),
    ]);
    (
        any_plan_or_none(),
        prop::collection::vec(first_cdr, 0..40),
        prop::collection::vec(any_change(), 1..8),
    )
        .prop_map(|(plan, first_file, changes)| Case {
            plan,
            first_file,
            changes,
        })
}

// ---- the database side ----

/// Subscription `k` of a customer: numbers differ between customers, so
/// that attaching finds each CDR's one customer.
fn subscription(customer: i64, k: usize) -> String {
    format!("+3162{customer:06}{k}")
}

/// The `k` of [`subscription`], to compare the twins' lines.
fn subscription_index(identifier: &str) -> usize {
    identifier[identifier.len() - 1..]
        .parse()
        .expect("a subscription of this test")
}

/// The two customers of a case: same CDRs, same changes.
struct Twins {
    incremental: i64,
    full: i64,
}

impl Twins {
    fn both(&self) -> [i64; 2] {
        [self.incremental, self.full]
    }
}

/// What the test knows of the case as it goes.
struct State {
    twins: Twins,
    cycle: NaiveDate,
    zone: Tz,
    /// The plan row the customers are on, and its document.
    plan: Option<(String, RatePlan)>,
    /// Plans created so far (names new plan rows).
    plans_made: usize,
    /// CDRs loaded so far (numbers external ids, the same in both twins).
    cdrs_made: usize,
}

fn local_midnight(day: NaiveDate, zone: Tz) -> DateTime<Utc> {
    zone.from_local_datetime(&day.and_hms_opt(0, 0, 0).expect("midnight exists"))
        .earliest()
        .expect("these zones have every midnight")
        .with_timezone(&Utc)
}

/// The cycle's `[start, end)`, worked out here and not by the code under
/// test.
fn cycle_bounds(cycle: NaiveDate, zone: Tz) -> (DateTime<Utc>, DateTime<Utc>) {
    (
        local_midnight(cycle, zone),
        local_midnight(cycle + chrono::Months::new(1), zone),
    )
}

impl State {
    fn bounds(&self) -> (DateTime<Utc>, DateTime<Utc>) {
        cycle_bounds(self.cycle, self.zone)
    }

    /// The instant of `when` inside `[low, high]` (the cycle's own bounds
    /// for the two outside it).
    fn instant(&self, when: When, low: DateTime<Utc>, high: DateTime<Utc>) -> DateTime<Utc> {
        let (start, end) = self.bounds();
        match when {
            When::Grid(k) => low + Duration::seconds((high - low).num_seconds() * k / GRID),
            When::Midnight(day) => {
                let day = self.cycle + chrono::Days::new(day.into());
                local_midnight(day, self.zone).clamp(low, high)
            }
            When::BeforeCycle => start - Duration::seconds(1),
            When::AtEnd => end,
        }
    }
}

async fn new_plan_row(pool: &PgPool, state: &mut State, plan: &RatePlan) -> (String, RatePlan) {
    state.plans_made += 1;
    let id = format!("props-{}-{}", state.twins.incremental, state.plans_made);
    let plan = RatePlan {
        id: id.clone(),
        ..plan.clone()
    };
    sqlx::query("INSERT INTO rate_plan (id, name, plan) VALUES ($1, $1, $2)")
        .bind(&id)
        .bind(serde_json::to_value(&plan).expect("a plan is JSON"))
        .execute(pool)
        .await
        .expect("insert the rate plan");
    (id, plan)
}

async fn put_customers_on(pool: &PgPool, state: &State) {
    sqlx::query("UPDATE customer SET rate_plan_id = $1 WHERE id = ANY($2)")
        .bind(state.plan.as_ref().map(|(id, _)| id.clone()))
        .bind(state.twins.both().to_vec())
        .execute(pool)
        .await
        .expect("move the customers to the plan");
}

async fn start_case(pool: &PgPool, plan: &Option<RatePlan>) -> State {
    let mut ids = Vec::new();
    for _ in 0..2 {
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO customer (name, billing_cycle_start_day, time_zone) VALUES ('props', 1, $1) RETURNING id",
        )
        .bind(ZONES[0])
        .fetch_one(pool)
        .await
        .expect("insert a customer");
        for k in 0..SUBSCRIPTIONS {
            for provider in PROVIDERS {
                sqlx::query("INSERT INTO subscription (customer_id, provider, identifier) VALUES ($1, $2, $3)")
                    .bind(id)
                    .bind(provider)
                    .bind(subscription(id, k))
                    .execute(pool)
                    .await
                    .expect("insert a subscription");
            }
        }
        ids.push(id);
    }
    let (year, month, day) = CYCLE;
    let mut state = State {
        twins: Twins {
            incremental: ids[0],
            full: ids[1],
        },
        cycle: NaiveDate::from_ymd_opt(year, month, day).expect("a date"),
        zone: ZONES[0].parse().expect("an IANA zone"),
        plan: None,
        plans_made: 0,
        cdrs_made: 0,
    };
    if let Some(plan) = plan {
        state.plan = Some(new_plan_row(pool, &mut state, plan).await);
        put_customers_on(pool, &state).await;
    }
    state
}

/// A customer's CDRs: in the cycle only, or all of them (in the order they
/// were loaded, the same in both twins).
async fn cdrs_of(
    pool: &PgPool,
    customer: i64,
    cycle_only: Option<(DateTime<Utc>, DateTime<Utc>)>,
) -> Vec<RatingCdr> {
    let rows = sqlx::query(
        "SELECT id, provider, external_id, subscription, started_at, kind, roaming_zone, destination,
                duration_seconds, volume_bytes, units, provider_cost_micros
         FROM call_detail_record
         WHERE customer_id = $1 AND ($2::timestamptz IS NULL OR (started_at >= $2 AND started_at < $3))
         ORDER BY id",
    )
    .bind(customer)
    .bind(cycle_only.map(|(start, _)| start))
    .bind(cycle_only.map(|(_, end)| end))
    .fetch_all(pool)
    .await
    .expect("read the CDRs back");
    rows.iter()
        .map(|row| {
            let kind: String = row.get("kind");
            let zone: String = row.get("roaming_zone");
            RatingCdr {
                id: row.get("id"),
                provider: row.get("provider"),
                external_id: row.get("external_id"),
                subscription: row.get("subscription"),
                started_at: row.get("started_at"),
                kind: serde_json::from_value(serde_json::json!(kind)).expect("a known kind"),
                zone: serde_json::from_value(serde_json::json!(zone)).expect("a known zone"),
                destination: row.get("destination"),
                duration_seconds: row.get::<i32, _>("duration_seconds") as u32,
                volume_bytes: row.get::<i64, _>("volume_bytes") as u64,
                units: row.get::<i32, _>("units") as u32,
                provider_cost_micros: row.get("provider_cost_micros"),
            }
        })
        .collect()
}

/// Whose CDRs a file holds, as the importer found them.
#[derive(Clone, Copy, PartialEq)]
enum Owner {
    Customer,
    /// Subscriptions not known yet: no customer until attached.
    Unknown,
}

/// Loads a file of CDRs into both twins, and marks each one's cycle from
/// the file's earliest CDR in it, as the importer does.
async fn insert_file(
    pool: &PgPool,
    state: &mut State,
    placement: Placement,
    file: &[CdrSpec],
    owner: Owner,
) {
    let (start, end) = state.bounds();
    let last = end - Duration::seconds(1);
    let loaded = cdrs_of(pool, state.twins.incremental, Some((start, end))).await;
    let earliest = loaded.iter().map(|c| c.started_at).min();
    let latest = loaded.iter().map(|c| c.started_at).max();
    let (low, high) = match placement {
        Placement::End => (latest.unwrap_or(start), last),
        Placement::Middle => (start, last),
        Placement::Before => (start, earliest.unwrap_or(last)),
    };
    let times: Vec<DateTime<Utc>> = file
        .iter()
        .map(|c| state.instant(c.at, low, high))
        .collect();
    let first_number = state.cdrs_made;
    state.cdrs_made += file.len();
    for customer in state.twins.both() {
        let mut tx = pool.begin().await.expect("begin");
        let import_file: i64 = sqlx::query_scalar(
            "INSERT INTO import_file (bucket, key, sha256, size_bytes, provider, status)
             VALUES ('props', $1, 'none', 0, 'routit', 'completed') RETURNING id",
        )
        .bind(format!("customer-{customer}/file-{first_number}"))
        .fetch_one(&mut *tx)
        .await
        .expect("insert the import file");
        for (line, (cdr, at)) in file.iter().zip(&times).enumerate() {
            sqlx::query(
                "INSERT INTO call_detail_record (provider, external_id, subscription, customer_id, started_at, kind,
                    direction, destination, roaming_zone, duration_seconds, volume_bytes, units, provider_cost_micros,
                    import_file_id, source_line)
                 VALUES ($1, $2, $3, $4, $5, $6, 'outgoing', $7, $8, $9, $10, $11, $12, $13, $14)",
            )
            .bind(cdr.provider)
            // The same order of external ids in both twins.
            .bind(format!("c{customer}-{:06}", first_number + line))
            .bind(subscription(customer, cdr.subscription))
            .bind((owner == Owner::Customer).then_some(customer))
            .bind(at)
            .bind(cdr.kind.as_str())
            .bind(cdr.destination)
            .bind(cdr.zone.as_str())
            .bind(cdr.seconds)
            .bind(cdr.bytes)
            .bind(cdr.units)
            .bind(cdr.cost)
            .bind(import_file)
            .bind(line as i32 + 1)
            .execute(&mut *tx)
            .await
            .expect("insert a CDR");
        }
        let earliest = times.iter().filter(|t| **t >= start && **t < end).min();
        if let (Some(from), Owner::Customer) = (earliest, owner) {
            mark(&mut tx, customer, state.cycle, *from).await;
        }
        tx.commit().await.expect("commit the file");
    }
}

type Edit = sqlx::query::Query<'static, sqlx::Postgres, sqlx::postgres::PgArguments>;

/// Runs the statement `sql_for` makes for a CDR id on the same CDR of both
/// twins: the `pick`th loaded, if any.
async fn edit(pool: &PgPool, state: &State, pick: Index, sql_for: impl Fn(i64) -> Edit) {
    for customer in state.twins.both() {
        let all = cdrs_of(pool, customer, None).await;
        if all.is_empty() {
            return;
        }
        sql_for(all[pick.index(all.len())].id)
            .execute(pool)
            .await
            .expect("edit the CDR by hand");
    }
}

async fn apply(pool: &PgPool, state: &mut State, change: &Change) {
    match change {
        Change::Import { placement, cdrs } => {
            insert_file(pool, state, *placement, cdrs, Owner::Customer).await
        }
        Change::Attach { placement, cdrs } => {
            insert_file(pool, state, *placement, cdrs, Owner::Unknown).await;
            let attached = attach_unassigned(pool).await.expect("attach the CDRs");
            // Every CDR of the file, in both twins, found its customer.
            assert_eq!(attached.cdrs, 2 * cdrs.len() as u64);
        }
        Change::EditCost { cdr, cost } => {
            let cost = *cost;
            edit(pool, state, *cdr, |id| {
                sqlx::query("UPDATE call_detail_record SET provider_cost_micros = $2 WHERE id = $1")
                    .bind(id)
                    .bind(cost)
            })
            .await;
        }
        Change::EditDuration { cdr, seconds } => {
            let seconds = *seconds;
            edit(pool, state, *cdr, |id| {
                sqlx::query("UPDATE call_detail_record SET duration_seconds = $2 WHERE id = $1")
                    .bind(id)
                    .bind(seconds)
            })
            .await;
        }
        Change::EditStart { cdr, at } => {
            let (start, end) = state.bounds();
            let at = state.instant(*at, start, end - Duration::seconds(1));
            edit(pool, state, *cdr, |id| {
                sqlx::query("UPDATE call_detail_record SET started_at = $2 WHERE id = $1")
                    .bind(id)
                    .bind(at)
            })
            .await;
        }
        Change::Delete { cdr } => {
            edit(pool, state, *cdr, |id| {
                sqlx::query("DELETE FROM call_detail_record WHERE id = $1").bind(id)
            })
            .await;
        }
        Change::Plan { plan: None, .. } => {
            state.plan = None;
            put_customers_on(pool, state).await;
        }
        Change::Plan {
            plan: Some(plan),
            another,
        } => match state.plan.clone() {
            Some((id, _)) if !another => {
                let plan = RatePlan {
                    id: id.clone(),
                    ..plan.clone()
                };
                sqlx::query("UPDATE rate_plan SET plan = $2, updated_at = now() WHERE id = $1")
                    .bind(&id)
                    .bind(serde_json::to_value(&plan).expect("a plan is JSON"))
                    .execute(pool)
                    .await
                    .expect("edit the plan");
                state.plan = Some((id, plan));
            }
            _ => {
                state.plan = Some(new_plan_row(pool, state, plan).await);
                put_customers_on(pool, state).await;
            }
        },
        Change::TimeZone(zone) => {
            sqlx::query("UPDATE customer SET time_zone = $1 WHERE id = ANY($2)")
                .bind(zone)
                .bind(state.twins.both().to_vec())
                .execute(pool)
                .await
                .expect("change the time zone");
            state.zone = zone.parse().expect("an IANA zone");
        }
        Change::Nothing => {}
    }
}

// ---- the comparison ----

/// The figures of a total or a line.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Figures {
    cdr_count: i64,
    voice_seconds: i64,
    data_bytes: i64,
    messages: i64,
    provider_cost_micros: i64,
    rated_cost_micros: i64,
    unrated_count: i64,
}

impl From<Totals> for Figures {
    fn from(t: Totals) -> Self {
        Figures {
            cdr_count: t.cdr_count as i64,
            voice_seconds: t.voice_seconds as i64,
            data_bytes: t.data_bytes as i64,
            messages: t.messages as i64,
            provider_cost_micros: t.provider_cost_micros,
            rated_cost_micros: t.rated_cost_micros,
            unrated_count: t.unrated_count as i64,
        }
    }
}

impl From<&CycleTotals> for Figures {
    fn from(t: &CycleTotals) -> Self {
        Figures {
            cdr_count: t.cdr_count,
            voice_seconds: t.voice_seconds,
            data_bytes: t.data_bytes,
            messages: t.messages,
            provider_cost_micros: t.provider_cost_micros,
            rated_cost_micros: t.rated_cost_micros,
            unrated_count: t.unrated_count,
        }
    }
}

fn figures_of(row: &sqlx::postgres::PgRow) -> Figures {
    Figures {
        cdr_count: row.get("cdr_count"),
        voice_seconds: row.get("voice_seconds"),
        data_bytes: row.get("data_bytes"),
        messages: row.get("messages"),
        provider_cost_micros: row.get("provider_cost_micros"),
        rated_cost_micros: row.get("rated_cost_micros"),
        unrated_count: row.get("unrated_count"),
    }
}

/// The stored totals: method, plan and figures.
type StoredTotals = (String, Option<String>, Figures);

/// A line's subscription ([`subscription_index`]), kind and zone.
type LineKey = (usize, String, String);

/// Lines by subscription, kind and zone.
type Lines = BTreeMap<LineKey, Figures>;

async fn stored(pool: &PgPool, customer: i64, cycle: NaiveDate) -> (StoredTotals, Lines) {
    let row = sqlx::query("SELECT * FROM totals WHERE customer_id = $1 AND cycle = $2")
        .bind(customer)
        .bind(cycle)
        .fetch_one(pool)
        .await
        .expect("the calculation stored the totals");
    let totals = (row.get("method"), row.get("rate_plan_id"), figures_of(&row));
    let lines = sqlx::query("SELECT * FROM totals_line WHERE customer_id = $1 AND cycle = $2")
        .bind(customer)
        .bind(cycle)
        .fetch_all(pool)
        .await
        .expect("read the lines")
        .iter()
        .map(|row| {
            let key = (
                subscription_index(row.get("subscription")),
                row.get("kind"),
                row.get("roaming_zone"),
            );
            (key, figures_of(row))
        })
        .collect();
    (totals, lines)
}

/// One CDR's pricing, as comparable between the oracle and the store.
#[derive(Debug, PartialEq, Eq)]
struct Priced {
    cdr_id: i64,
    rated_cost_micros: i64,
    rate: Option<String>,
    bundle: Option<String>,
    billed_quantity: u64,
    covered_quantity: u64,
}

impl From<&RatedCdr> for Priced {
    fn from(r: &RatedCdr) -> Self {
        Priced {
            cdr_id: r.cdr_id,
            rated_cost_micros: r.rated_cost_micros,
            rate: r.rate_id.clone(),
            bundle: r.bundle_id.clone(),
            billed_quantity: r.billed_quantity,
            covered_quantity: r.covered_quantity,
        }
    }
}

/// What the pure oracle says of a customer's cycle as the table holds it,
/// compared with what `totals` returned and stored, per CDR, in the totals
/// and in every line. Returns the stored totals and lines.
async fn check_against_the_oracle(
    pool: &PgPool,
    state: &State,
    customer: i64,
    returned: &CycleTotals,
) -> Result<(StoredTotals, Lines), TestCaseError> {
    let cdrs = cdrs_of(pool, customer, Some(state.bounds())).await;
    let plan = state.plan.as_ref().map(|(_, plan)| plan);
    let rated = match plan {
        Some(plan) => rate_cycle(plan, &cdrs),
        None => standard(&cdrs),
    };
    let method = if plan.is_some() {
        "rate_plan"
    } else {
        "standard"
    };
    let expected = (
        method.to_string(),
        state.plan.as_ref().map(|(id, _)| id.clone()),
        Figures::from(summarise(&cdrs, &rated)),
    );
    let (totals, lines) = stored(pool, customer, state.cycle).await;
    prop_assert_eq!(&totals, &expected, "customer {}: stored totals", customer);
    prop_assert_eq!(
        Figures::from(returned),
        expected.2,
        "customer {}: returned totals",
        customer
    );
    prop_assert_eq!(returned.customer_id, customer);
    prop_assert_eq!(returned.cycle, state.cycle);
    prop_assert_eq!(&returned.rate_plan_id, &expected.1);

    let mut groups: BTreeMap<LineKey, (Vec<RatingCdr>, Vec<RatedCdr>)> = BTreeMap::new();
    for (cdr, priced) in cdrs
        .iter()
        .map(|c| (c, rated.iter().find(|r| r.cdr_id == c.id)))
    {
        let key = (
            subscription_index(&cdr.subscription),
            cdr.kind.as_str().to_string(),
            cdr.zone.as_str().to_string(),
        );
        let group = groups.entry(key).or_default();
        group.0.push(cdr.clone());
        group.1.extend(priced.cloned());
    }
    let expected_lines: Lines = groups
        .into_iter()
        .map(|(key, (cdrs, rated))| (key, Figures::from(summarise(&cdrs, &rated))))
        .collect();
    prop_assert_eq!(&lines, &expected_lines, "customer {}: lines", customer);

    if let Some(plan) = plan {
        let stored = pricings::read(pool, customer, state.cycle)
            .await
            .expect("read the pricings");
        let name = |names: Vec<&String>, index: i32| {
            usize::try_from(index)
                .ok()
                .and_then(|i| names.get(i).map(|s| s.to_string()))
        };
        let stored: Vec<Priced> = (0..stored.len())
            .map(|i| Priced {
                cdr_id: stored.cdr_id[i],
                rated_cost_micros: stored.rated_cost_micros[i],
                rate: name(plan.rates.iter().map(|r| &r.id).collect(), stored.rate[i]),
                bundle: name(
                    plan.bundles.iter().map(|b| &b.id).collect(),
                    stored.bundle[i],
                ),
                billed_quantity: stored.billed_quantity[i] as u64,
                covered_quantity: stored.covered_quantity[i] as u64,
            })
            .collect();
        let expected: Vec<Priced> = rated.iter().map(Priced::from).collect();
        prop_assert_eq!(
            stored,
            expected,
            "customer {}: pricings in consumption order",
            customer
        );
    }
    Ok((totals, lines))
}

/// Calculates both twins (one incrementally, one in full) and compares
/// them with each other and with the oracle.
async fn calculate_and_compare(
    pool: &PgPool,
    state: &State,
    step: &str,
) -> Result<(), TestCaseError> {
    let twins = &state.twins;
    let by_increment = incremental(pool, twins.incremental, state.cycle).await;
    let in_full = full(pool, twins.full, state.cycle).await;
    let (inc_totals, inc_lines) =
        check_against_the_oracle(pool, state, twins.incremental, &by_increment)
            .await
            .map_err(|e| TestCaseError::fail(format!("after {step}, incremental: {e}")))?;
    let (full_totals, full_lines) = check_against_the_oracle(pool, state, twins.full, &in_full)
        .await
        .map_err(|e| TestCaseError::fail(format!("after {step}, full: {e}")))?;
    prop_assert_eq!(inc_totals, full_totals, "after {}: totals", step);
    prop_assert_eq!(inc_lines, full_lines, "after {}: lines", step);
    Ok(())
}

async fn run_case(pool: &PgPool, case: Case) -> Result<(), TestCaseError> {
    let mut state = start_case(pool, &case.plan).await;
    insert_file(
        pool,
        &mut state,
        Placement::Middle,
        &case.first_file,
        Owner::Customer,
    )
    .await;
    calculate_and_compare(pool, &state, "the first file").await?;
    for (n, change) in case.changes.iter().enumerate() {
        apply(pool, &mut state, change).await;
        calculate_and_compare(pool, &state, &format!("change {n} ({change:?})")).await?;
    }
    Ok(())
}

/// The same cases on every run (CI), unless the environment asks for more
/// (`PROPTEST_CASES`) or others (`PROPTEST_RNG_SEED`).
fn config() -> ProptestConfig {
    let from_env = ProptestConfig::default();
    ProptestConfig {
        cases: if std::env::var_os("PROPTEST_CASES").is_some() {
            from_env.cases
        } else {
            CASES
        },
        rng_seed: if std::env::var_os("PROPTEST_RNG_SEED").is_some() {
            from_env.rng_seed
        } else {
            RngSeed::Fixed(SEED)
        },
        source_file: Some(file!()),
        ..from_env
    }
}

#[test]
fn the_incremental_calculation_equals_a_full_one_and_the_oracle_after_any_changes() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let db = runtime.block_on(fresh());
    // proptest's runner is synchronous: each case drives the database on
    // the one runtime the pool belongs to.
    let mut runner = TestRunner::new(config());
    let result = runner.run(&any_case(), |case| {
        runtime.block_on(run_case(&db.pool, case))
    });
    if let Err(failure) = result {
        panic!("{failure}");
    }
}
