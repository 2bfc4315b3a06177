//! CalculateTotals against a real PostgreSQL: the standard method, a rate
//! plan, lines that add up to the totals, cycle bounds, idempotence, the
//! stored per-CDR pricing, and `explain_cdr` reading it back.

use std::collections::{BTreeMap, HashMap};

use serde_json::json;
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use tem_shared::adapters::billing::explain::explain_cdr;
use tem_shared::adapters::billing::pricings;
use tem_shared::adapters::totals::{calculate_totals, calculate_totals_with};
use tem_shared::billing::calculation::{Calculation, Recalculation};
use tem_shared::billing::explain::{CdrRef, ExplainError, TotalsState};
use tem_shared::billing::pricings::Pricings;
use tem_shared::billing::rating::{rate_cycle, RatePlan, RatingCdr};
use tem_shared::billing::totals::CycleTotals;
use tem_shared::cdr::{Kind, Zone};
use tem_tests::db::{fresh, mark_imported};

async fn customer(pool: &PgPool, start_day: i16, plan: Option<serde_json::Value>) -> i64 {
    if let Some(plan) = &plan {
        sqlx::query("INSERT INTO rate_plan (id, name, plan) VALUES ($1, $1, $2)")
            .bind(plan["id"].as_str().unwrap())
            .bind(plan)
            .execute(pool)
            .await
            .unwrap();
    }
    sqlx::query_scalar(
        "INSERT INTO customer (name, billing_cycle_start_day, rate_plan_id) VALUES ('c', $1, $2) RETURNING id",
    )
    .bind(start_day)
    .bind(plan.as_ref().map(|p| p["id"].as_str().unwrap().to_string()))
    .fetch_one(pool)
    .await
    .unwrap()
}

#[allow(clippy::too_many_arguments)]
async fn cdr(
    pool: &PgPool,
    customer: i64,
    id: &str,
    subscription: &str,
    at: &str,
    kind: &str,
    seconds: i32,
    cost: i64,
) {
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO call_detail_record (provider, external_id, subscription, customer_id, started_at, kind, direction,
            destination, roaming_zone, duration_seconds, volume_bytes, units, provider_cost_micros, import_file_id, source_line)
         VALUES ('routit', $1, $2, $3, $4::timestamptz, $5, 'outgoing', '+31201234567', 'home', $6, 0, $7, $8, 1, 1)
         RETURNING id",
    )
    .bind(id)
    .bind(subscription)
    .bind(customer)
    .bind(at)
    .bind(kind)
    .bind(seconds)
    .bind(if kind == "sms" { 1 } else { 0 })
    .bind(cost)
    .fetch_one(pool)
    .await
    .unwrap();
    mark_imported(pool, &[id]).await;
}

async fn line_sums(pool: &PgPool, customer: i64, cycle: &str) -> (i64, i64, i64) {
    sqlx::query_as(
        "SELECT sum(cdr_count)::bigint, sum(provider_cost_micros)::bigint, sum(rated_cost_micros)::bigint
         FROM totals_line WHERE customer_id = $1 AND cycle = $2::date",
    )
    .bind(customer)
    .bind(cycle)
    .fetch_one(pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn the_standard_method_sums_provider_costs_of_exactly_the_cycles_cdrs() {
    let db = fresh().await;
    let c = customer(&db.pool, 15, None).await;
    // Cycle 2025-01-15 runs from 2025-01-14 23:00 UTC to 2025-02-14 23:00 UTC (Amsterdam, winter).
    cdr(
        &db.pool,
        c,
        "before",
        "+31611111111",
        "2025-01-14 22:59:59+00",
        "voice",
        60,
        1_000,
    )
    .await;
    cdr(
        &db.pool,
        c,
        "first",
        "+31611111111",
        "2025-01-14 23:00:00+00",
        "voice",
        61,
        20_000,
    )
    .await;
    cdr(
        &db.pool,
        c,
        "sms",
        "+31622222222",
        "2025-02-01 10:00:00+00",
        "sms",
        0,
        100_000,
    )
    .await;
    cdr(
        &db.pool,
        c,
        "last",
        "+31611111111",
        "2025-02-14 22:59:59+00",
        "voice",
        5,
        3_000,
    )
    .await;
    cdr(
        &db.pool,
        c,
        "after",
        "+31611111111",
        "2025-02-14 23:00:00+00",
        "voice",
        5,
        7_000,
    )
    .await;

    let totals = calculate_totals(&db.pool, c, "2025-01-15".parse().unwrap())
        .await
        .unwrap();
    assert_eq!(totals.method, "standard");
    assert_eq!(
        (totals.cdr_count, totals.voice_seconds, totals.messages),
        (3, 66, 1)
    );
    assert_eq!(
        (totals.provider_cost_micros, totals.rated_cost_micros),
        (123_000, 123_000)
    );
    assert_eq!(
        line_sums(&db.pool, c, "2025-01-15").await,
        (3, 123_000, 123_000)
    );

    // Recalculating gives the same rows.
    let again = calculate_totals(&db.pool, c, "2025-01-15".parse().unwrap())
        .await
        .unwrap();
    assert_eq!(again, totals);
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM totals")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(rows, 1);
    // The CDR on the cycle's last second is in it; the next one starts the next cycle.
    let next = calculate_totals(&db.pool, c, "2025-02-15".parse().unwrap())
        .await
        .unwrap();
    assert_eq!((next.cdr_count, next.provider_cost_micros), (1, 7_000));
}

#[tokio::test]
async fn a_rate_plan_prices_each_cdr_records_how_and_the_lines_add_up() {
    let db = fresh().await;
    let plan = json!({
        "id": "business", "name": "Business", "unit_bytes": 1_048_576, "monthly_fee_micros": 0,
        "rates": [
            {"id": "voice-nl", "kind": "voice", "zone": "home", "prefix": "31", "connect_fee_micros": 0,
             "price_per_minute_micros": 60_000, "first_increment_s": 60, "increment_s": 1}
        ],
        "bundles": []
    });
    let c = customer(&db.pool, 1, Some(plan)).await;
    // 61 s at 60/1 bills 61 s: 61 x 60,000 / 60 = 61,000 micro-euros.
    cdr(
        &db.pool,
        c,
        "call",
        "+31611111111",
        "2025-03-10 10:00:00+00",
        "voice",
        61,
        5_000,
    )
    .await;
    // No SMS rate: unrated, keeps its provider cost of 100,000.
    cdr(
        &db.pool,
        c,
        "sms",
        "+31611111111",
        "2025-03-10 11:00:00+00",
        "sms",
        0,
        100_000,
    )
    .await;

    let totals = calculate_totals(&db.pool, c, "2025-03-01".parse().unwrap())
        .await
        .unwrap();
    assert_eq!(totals.method, "rate_plan");
    assert_eq!(totals.rate_plan_id.as_deref(), Some("business"));
    assert_eq!(
        (
            totals.rated_cost_micros,
            totals.provider_cost_micros,
            totals.unrated_count
        ),
        (161_000, 105_000, 1)
    );
    assert_eq!(
        line_sums(&db.pool, c, "2025-03-01").await,
        (2, 105_000, 161_000)
    );
    // The stored pricing of the call: 61,000 by the plan's first rate (index 0).
    let stored = pricings::read(&db.pool, c, "2025-03-01".parse().unwrap())
        .await
        .unwrap();
    let call: i64 =
        sqlx::query_scalar("SELECT id FROM call_detail_record WHERE external_id = 'call'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    let at = stored.position_of(call).unwrap();
    assert_eq!(
        (
            stored.rated_cost_micros[at],
            stored.rate[at],
            stored.billed_quantity[at]
        ),
        (61_000, 0, 61)
    );
    let rated_sum: i64 = stored.rated_cost_micros.iter().sum();
    assert_eq!(rated_sum, totals.rated_cost_micros);
    assert_eq!(
        calculate_totals(&db.pool, c, "2025-03-01".parse().unwrap())
            .await
            .unwrap(),
        totals
    );
}

#[tokio::test]
async fn a_date_that_is_not_a_cycle_start_is_refused() {
    let db = fresh().await;
    let c = customer(&db.pool, 15, None).await;
    let err = calculate_totals(&db.pool, c, "2025-01-01".parse().unwrap())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("day 15"), "{err}");
    assert!(
        calculate_totals(&db.pool, 999, "2025-01-15".parse().unwrap())
            .await
            .is_err()
    );
}

/// A CDR with the destination and zone given (the helper above fixes them).
#[allow(clippy::too_many_arguments)]
async fn cdr_to(
    pool: &PgPool,
    customer: i64,
    external_id: &str,
    subscription: &str,
    at: &str,
    kind: &str,
    zone: &str,
    destination: &str,
    quantity: i64,
    cost: i64,
) -> i64 {
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO call_detail_record (provider, external_id, subscription, customer_id, started_at, kind, direction,
            destination, roaming_zone, duration_seconds, volume_bytes, units, provider_cost_micros, import_file_id, source_line)
         VALUES ('routit', $1, $2, $3, $4::timestamptz, $5, 'outgoing', $6, $7,
                 CASE WHEN $5 = 'voice' THEN $8::int ELSE 0 END, CASE WHEN $5 = 'data' THEN $8 ELSE 0 END,
                 CASE WHEN $5 IN ('sms', 'mms', 'service') THEN $8::int ELSE 0 END, $9, 1, 1)
         RETURNING id",
    )
    .bind(external_id)
    .bind(subscription)
    .bind(customer)
    .bind(at)
    .bind(kind)
    .bind(destination)
    .bind(zone)
    .bind(quantity)
    .bind(cost)
    .fetch_one(pool)
    .await
    .unwrap();
    mark_imported(pool, &[id]).await;
    id
}

/// Voice 60/1 at 60,000 per minute (1,000 per second) with a 5,000 connect
/// fee, data at 1,000,000 per MiB in 1 KiB increments, no SMS rate; a 100 s
/// per-subscription voice bundle, then a 60 s pooled one, and a 1 MiB data
/// bundle.
fn bundled_plan() -> serde_json::Value {
    json!({
        "id": "bundled", "name": "Bundled", "unit_bytes": 1_048_576, "monthly_fee_micros": 0,
        "rates": [
            {"id": "voice", "kind": "voice", "prefix": "", "connect_fee_micros": 5_000,
             "price_per_minute_micros": 60_000, "first_increment_s": 60, "increment_s": 1},
            {"id": "data", "kind": "data", "prefix": "", "increment_bytes": 1024,
             "price_per_unit_micros": 1_000_000}
        ],
        "bundles": [
            {"id": "line-minutes", "kinds": ["voice"], "allowance": 100, "scope": "per_subscription"},
            {"id": "pool-minutes", "kinds": ["voice"], "allowance": 60, "scope": "pooled"},
            {"id": "data-mib", "kinds": ["data"], "allowance": 1_048_576, "scope": "pooled"}
        ]
    })
}

/// Six CDRs of two subscriptions in March 2025 (cycle 2025-03-01); the ids
/// of call 2 (covered by both voice bundles) and of the SMS (unrated).
async fn bundled_cycle(pool: &PgPool, c: i64) -> (i64, i64) {
    // s1 09:00, 70 s: billed 70, line bundle covers 70 (30 left): 5,000.
    cdr_to(
        pool,
        c,
        "v1",
        "+31611111111",
        "2025-03-10 09:00:00+00",
        "voice",
        "home",
        "+31201234567",
        70,
        1,
    )
    .await;
    // s1 10:00, 90 s: billed 90; line covers 30 (0 left), pool 60 (0 left):
    // connect fee only, 5,000.
    let split = cdr_to(
        pool,
        c,
        "v2",
        "+31611111111",
        "2025-03-10 10:00:00+00",
        "voice",
        "home",
        "+31201234567",
        90,
        1,
    )
    .await;
    // s2 11:00, 120 s: own line bundle 100 (0 left), pool used up; 20 s
    // charged: 5,000 + 20,000 = 25,000.
    cdr_to(
        pool,
        c,
        "v3",
        "+31622222222",
        "2025-03-10 11:00:00+00",
        "voice",
        "eu",
        "+32470123456",
        120,
        1,
    )
    .await;
    // Data 1,500 bytes -> 2,048 billed, all covered: 0.
    cdr_to(
        pool,
        c,
        "d1",
        "+31622222222",
        "2025-03-11 08:00:00+00",
        "data",
        "home",
        "",
        1_500,
        7,
    )
    .await;
    // SMS: no rate, unrated at its provider cost 90,000.
    let sms = cdr_to(
        pool,
        c,
        "s1",
        "+31611111111",
        "2025-03-12 08:00:00+00",
        "sms",
        "home",
        "+31612345678",
        1,
        90_000,
    )
    .await;
    // s1 again, 30 s: both bundles used up: 5,000 + 60 x 1,000 = 65,000.
    cdr_to(
        pool,
        c,
        "v4",
        "+31611111111",
        "2025-03-20 08:00:00+00",
        "voice",
        "home",
        "+31201234567",
        30,
        1,
    )
    .await;
    (split, sms)
}

/// Everything stored about the cycle's pricing, in a comparable form.
async fn stored_pricing(pool: &PgPool, c: i64) -> Pricings {
    pricings::read(pool, c, "2025-03-01".parse().unwrap())
        .await
        .unwrap()
}

#[tokio::test]
async fn the_stored_per_cdr_results_add_up_to_the_totals_and_their_lines() {
    let db = fresh().await;
    let c = customer(&db.pool, 1, Some(bundled_plan())).await;
    bundled_cycle(&db.pool, c).await;

    let totals = calculate_totals(&db.pool, c, "2025-03-01".parse().unwrap())
        .await
        .unwrap();

    // 5,000 + 5,000 + 25,000 + 0 + 90,000 + 65,000 = 190,000; 1 unrated.
    assert_eq!(
        (
            totals.cdr_count,
            totals.rated_cost_micros,
            totals.unrated_count
        ),
        (6, 190_000, 1)
    );
    // Per line, the stored figures joined to their CDRs give the line.
    let stored = stored_pricing(&db.pool, c).await;
    let cdrs: HashMap<i64, (String, String, String)> = sqlx::query_as(
        "SELECT id, subscription, kind, roaming_zone FROM call_detail_record WHERE customer_id = $1",
    )
    .bind(c)
    .fetch_all(&db.pool)
    .await
    .unwrap()
    .into_iter()
    .map(|(id, subscription, kind, zone)| (id, (subscription, kind, zone)))
    .collect();
    let mut from_pricings: BTreeMap<(String, String, String), (i64, i64, i64)> = BTreeMap::new();
    for i in 0..stored.len() {
        let key = cdrs[&stored.cdr_id[i]].clone();
        let unrated = stored.rate[i] < 0 && key.1 != "service";
        let line = from_pricings.entry(key).or_default();
        line.0 += 1;
        line.1 += stored.rated_cost_micros[i];
        line.2 += i64::from(unrated);
    }
    let from_lines: BTreeMap<(String, String, String), (i64, i64, i64)> = sqlx::query_as(
        "SELECT subscription, kind, roaming_zone, cdr_count, rated_cost_micros, unrated_count
         FROM totals_line WHERE customer_id = $1",
    )
    .bind(c)
    .fetch_all(&db.pool)
    .await
    .unwrap()
    .into_iter()
    .map(
        |(s, k, z, n, rated, unrated): (String, String, String, i64, i64, i64)| {
            ((s, k, z), (n, rated, unrated))
        },
    )
    .collect();
    assert_eq!(from_pricings, from_lines);
    assert_eq!(
        (
            stored.len() as i64,
            stored.rated_cost_micros.iter().sum::<i64>()
        ),
        (totals.cdr_count, totals.rated_cost_micros)
    );
    // The call both voice bundles covered is recorded with its two shares.
    let chunks = pricings::read_chunks(&db.pool, c, "2025-03-01".parse().unwrap(), None)
        .await
        .unwrap();
    let splits: Vec<(u64, i32, i64)> = chunks
        .iter()
        .flat_map(|(_, first, chunk)| {
            chunk
                .splits
                .iter()
                .map(move |s| (first + u64::from(s.index), s.bundle, s.covered))
        })
        .collect();
    assert_eq!(splits, vec![(1, 0, 30), (1, 1, 60)]);

    // Recalculating in full stores exactly the same figures.
    let before = stored_pricing(&db.pool, c).await;
    let (again, _) = calculate_totals_with(
        &db.pool,
        c,
        "2025-03-01".parse().unwrap(),
        Recalculation::Full,
    )
    .await
    .unwrap();
    assert_eq!(again, totals);
    assert_eq!(stored_pricing(&db.pool, c).await, before);
}

#[tokio::test]
async fn a_pool_of_one_connection_calculates_a_cycle_of_several_pages_as_a_pool_that_reads_ahead() {
    let db = fresh().await;
    let c = customer(&db.pool, 1, Some(bundled_plan())).await;
    bundled_cycle(&db.pool, c).await;
    // Two and a half pages of CDRs of 50 numbers, two to a second (so a
    // page may end between CDRs of the same start), after the six above.
    let ids: Vec<i64> = sqlx::query_scalar(
        "INSERT INTO call_detail_record (provider, external_id, subscription, customer_id, started_at, kind, direction,
            destination, roaming_zone, duration_seconds, volume_bytes, units, provider_cost_micros, import_file_id, source_line)
         SELECT 'routit', 'g' || i, '+3161' || lpad((i % 50)::text, 7, '0'), $1,
                '2025-03-21 00:00:00+00'::timestamptz + (i / 2) * interval '30 seconds',
                'voice', 'outgoing', '+31201234567', 'home', i % 400, 0, 0, i % 1000, 1, i
         FROM generate_series(1, 50000) i
         RETURNING id",
    )
    .bind(c)
    .fetch_all(&db.pool)
    .await
    .unwrap();
    mark_imported(&db.pool, &ids).await;
    // A Lambda's pool may hold one connection: the calculation needs no
    // other, and reads every page on its own transaction.
    let alone = PgPoolOptions::new()
        .max_connections(1)
        .connect(&db.url)
        .await
        .unwrap();

    let first = calculate_totals(&alone, c, "2025-03-01".parse().unwrap())
        .await
        .unwrap();
    let stored_alone = stored_pricing(&db.pool, c).await;
    let (second, report) = calculate_totals_with(
        &db.pool,
        c,
        "2025-03-01".parse().unwrap(),
        Recalculation::Full,
    )
    .await
    .unwrap();

    assert_eq!(report.calculation, Calculation::Full);
    assert_eq!(report.cdrs_read, 50_006);
    assert_eq!(first, second);
    assert_eq!(first.cdr_count, 50_006);
    assert_eq!(stored_pricing(&db.pool, c).await, stored_alone);
    assert_eq!(stored_alone.len(), 50_006);
}

type StoredLines = BTreeMap<(String, String, String), (Vec<i64>, i64)>;

/// The lines' figures, without who wrote them.
fn figures(lines: &StoredLines) -> BTreeMap<&(String, String, String), &Vec<i64>> {
    lines.iter().map(|(key, (sums, _))| (key, sums)).collect()
}

/// Every stored line of the cycle with its figures, and the transaction
/// that last wrote it (`xmin`): a line written again, even with the same
/// figures, gets a new one.
async fn stored_lines(
    pool: &PgPool,
    c: i64,
) -> BTreeMap<(String, String, String), (Vec<i64>, i64)> {
    sqlx::query_as(
        "SELECT subscription, kind, roaming_zone,
                ARRAY[cdr_count, voice_seconds, data_bytes, messages, provider_cost_micros, rated_cost_micros,
                      unrated_count],
                xmin::text::bigint
         FROM totals_line WHERE customer_id = $1 AND cycle = '2025-03-01'",
    )
    .bind(c)
    .fetch_all(pool)
    .await
    .unwrap()
    .into_iter()
    .map(
        |(s, k, z, sums, written): (String, String, String, Vec<i64>, i64)| {
            ((s, k, z), (sums, written))
        },
    )
    .collect()
}

#[tokio::test]
async fn a_full_recalculation_updates_changed_lines_deletes_vanished_ones_adds_new_ones_and_leaves_unchanged_ones_unwritten(
) {
    let db = fresh().await;
    let c = customer(&db.pool, 1, Some(bundled_plan())).await;
    bundled_cycle(&db.pool, c).await;
    in_full(&db.pool, c).await;
    let before = stored_lines(&db.pool, c).await;
    let line = |s: &str, k: &str, z: &str| (s.to_string(), k.to_string(), z.to_string());
    let (s1_voice, s1_sms) = (
        line("+31611111111", "voice", "home"),
        line("+31611111111", "sms", "home"),
    );
    let (s2_voice, s2_data) = (
        line("+31622222222", "voice", "eu"),
        line("+31622222222", "data", "home"),
    );
    let s3_data = line("+31633333333", "data", "home");
    assert_eq!(
        before.keys().cloned().collect::<Vec<_>>(),
        [&s1_sms, &s1_voice, &s2_data, &s2_voice].map(Clone::clone)
    );

    // s2's call lasts 150 s instead of 120 s (its own bundle still covers
    // 100 s, the pooled one was used up before it): only its line changes.
    // s1's only SMS is deleted: its line vanishes. A third subscription's
    // data comes in, covered by what is left of the data bundle: a new line.
    sql(
        &db.pool,
        "UPDATE call_detail_record SET duration_seconds = 150 WHERE external_id = 'v3'",
    )
    .await;
    sql(
        &db.pool,
        "DELETE FROM call_detail_record WHERE external_id = 's1'",
    )
    .await;
    cdr_to(
        &db.pool,
        c,
        "d3",
        "+31633333333",
        "2025-03-25 08:00:00+00",
        "data",
        "home",
        "",
        1_000,
        3,
    )
    .await;
    in_full(&db.pool, c).await;
    let after = stored_lines(&db.pool, c).await;

    assert_eq!(
        after.keys().cloned().collect::<Vec<_>>(),
        [&s1_voice, &s2_data, &s2_voice, &s3_data].map(Clone::clone)
    );
    for unchanged in [&s1_voice, &s2_data] {
        assert_eq!(
            after[unchanged], before[unchanged],
            "{unchanged:?} written again"
        );
    }
    assert_ne!(after[&s2_voice].0, before[&s2_voice].0);
    assert_ne!(after[&s2_voice].1, before[&s2_voice].1);

    // Exactly the lines a calculation with no stored lines makes.
    sql(&db.pool, "DELETE FROM totals_line").await;
    in_full(&db.pool, c).await;
    let from_scratch = stored_lines(&db.pool, c).await;
    assert_eq!(figures(&after), figures(&from_scratch));
}

#[tokio::test]
async fn an_instant_with_more_cdrs_than_a_page_is_read_whole_and_every_cdr_is_rated_in_consumption_order(
) {
    let db = fresh().await;
    let c = customer(&db.pool, 1, Some(bundled_plan())).await;
    bundled_cycle(&db.pool, c).await;
    // 15,000 CDRs, five to a second, then 25,000 of one number at one
    // instant, inserted in the reverse of their consumption order (external
    // ids count down, two providers), so the bundles' shares depend on it.
    let ids: Vec<i64> = sqlx::query_scalar(
        "INSERT INTO call_detail_record (provider, external_id, subscription, customer_id, started_at, kind, direction,
            destination, roaming_zone, duration_seconds, volume_bytes, units, provider_cost_micros, import_file_id, source_line)
         SELECT CASE WHEN i % 3 = 0 THEN 'kpn' ELSE 'routit' END, 'e' || lpad((40000 - i)::text, 6, '0'),
                '+3161' || lpad(CASE WHEN i > 15000 THEN 99 ELSE i % 40 END::text, 7, '0'), $1,
                CASE WHEN i > 15000 THEN '2025-03-25 12:00:00+00'::timestamptz
                     ELSE '2025-03-21 00:00:00+00'::timestamptz + (i / 5) * interval '1 second' END,
                'voice', 'outgoing', '+31201234567', 'home', 1 + i % 97, 0, 0, i % 1000, 1, i
         FROM generate_series(1, 40000) i
         RETURNING id",
    )
    .bind(c)
    .fetch_all(&db.pool)
    .await
    .unwrap();
    mark_imported(&db.pool, &ids).await;

    let (totals, report) = calculate_totals_with(
        &db.pool,
        c,
        "2025-03-01".parse().unwrap(),
        Recalculation::Full,
    )
    .await
    .unwrap();

    assert_eq!(report.cdrs_read, 40_006);
    assert_eq!(totals.cdr_count, 40_006);
    let plan: RatePlan = serde_json::from_value(bundled_plan()).unwrap();
    let expected: BTreeMap<i64, i64> = rate_cycle(&plan, &rating_cdrs(&db.pool).await)
        .into_iter()
        .map(|r| (r.cdr_id, r.rated_cost_micros))
        .collect();
    let stored = stored_pricing(&db.pool, c).await;
    let got: BTreeMap<i64, i64> = stored
        .cdr_id
        .iter()
        .copied()
        .zip(stored.rated_cost_micros.iter().copied())
        .collect();
    assert_eq!(got.len(), 40_006, "one pricing per CDR, none twice");
    let wrong: Vec<_> = expected
        .iter()
        .filter(|(id, cost)| got.get(id) != Some(cost))
        .take(5)
        .collect();
    assert!(
        wrong.is_empty(),
        "priced otherwise than in consumption order: {wrong:?}"
    );
    assert_eq!(totals.rated_cost_micros, expected.values().sum::<i64>());
}

#[tokio::test]
async fn explain_of_a_bundle_covered_cdr_names_each_bundle_and_its_share() {
    let db = fresh().await;
    let c = customer(&db.pool, 1, Some(bundled_plan())).await;
    let (split, _) = bundled_cycle(&db.pool, c).await;
    calculate_totals(&db.pool, c, "2025-03-01".parse().unwrap())
        .await
        .unwrap();

    let e = explain_cdr(&db.pool, &CdrRef::Id(split)).await.unwrap();

    assert_eq!(
        (e.customer_id, e.cycle.map(|d| d.to_string())),
        (Some(c), Some("2025-03-01".into()))
    );
    assert_eq!(e.method.as_deref(), Some("rate_plan"));
    let p = e.pricing.clone().unwrap();
    // 90 s at 60/1: billed 90; line-minutes covers 30 (the 30 left after
    // the 70 s call), pool-minutes the other 60; only the 5,000 connect fee.
    assert_eq!(p.rate.as_ref().map(|r| r.id.as_str()), Some("voice"));
    assert_eq!(
        (p.billed_quantity, p.covered_quantity, p.rated_cost_micros),
        (90, 90, 5_000)
    );
    let shares: Vec<(&str, u64, u64)> = p
        .bundles
        .iter()
        .map(|b| (b.id.as_str(), b.covered, b.left))
        .collect();
    assert_eq!(shares, [("line-minutes", 30, 0), ("pool-minutes", 60, 0)]);
    assert_eq!(
        p.arithmetic.as_deref(),
        Some("5000 connect + 0 s x 60000/60 = 5000")
    );
    assert!(
        matches!(e.totals, TotalsState::Current { .. }),
        "{:?}",
        e.totals
    );
    assert!(e.warnings.is_empty(), "{:?}", e.warnings);
    // The sentence is the one the rating core writes for the same CDRs.
    let plan: RatePlan = serde_json::from_value(bundled_plan()).unwrap();
    let cdrs = rating_cdrs(&db.pool).await;
    let expected = rate_cycle(&plan, &cdrs)
        .into_iter()
        .find(|r| r.cdr_id == split)
        .unwrap();
    assert_eq!(e.explanation, expected.explanation);
    assert!(
        e.explanation.contains("bundle 'line-minutes' covered 30 s")
            && e.explanation.contains("bundle 'pool-minutes' covered 60 s"),
        "{}",
        e.explanation
    );
    // Named by its key, the same CDR explains the same way.
    let by_key = explain_cdr(&db.pool, &"routit:v2".parse::<CdrRef>().unwrap())
        .await
        .unwrap();
    assert_eq!(by_key, e);
}

#[tokio::test]
async fn explain_of_a_standard_customers_cdr_says_it_is_rated_at_the_provider_cost() {
    let db = fresh().await;
    let c = customer(&db.pool, 1, None).await;
    let id = cdr_to(
        &db.pool,
        c,
        "call",
        "+31611111111",
        "2025-03-10 09:00:00+00",
        "voice",
        "home",
        "+31201234567",
        61,
        12_345,
    )
    .await;
    calculate_totals(&db.pool, c, "2025-03-01".parse().unwrap())
        .await
        .unwrap();

    let e = explain_cdr(&db.pool, &CdrRef::Id(id)).await.unwrap();

    assert_eq!(e.method.as_deref(), Some("standard"));
    let p = e.pricing.unwrap();
    assert_eq!(
        (p.rated_cost_micros, p.billed_quantity, p.rate),
        (12_345, 61, None)
    );
    assert!(
        e.explanation.contains("standard calculation")
            && e.explanation.contains("provider cost of 12345 micro-euros"),
        "{}",
        e.explanation
    );
    assert!(matches!(e.totals, TotalsState::Current { .. }));
}

#[tokio::test]
async fn a_cdr_that_arrived_after_the_calculation_is_not_yet_rated_and_the_totals_are_pending() {
    let db = fresh().await;
    let c = customer(&db.pool, 1, Some(bundled_plan())).await;
    bundled_cycle(&db.pool, c).await;
    calculate_totals(&db.pool, c, "2025-03-01".parse().unwrap())
        .await
        .unwrap();
    let late = cdr_to(
        &db.pool,
        c,
        "late",
        "+31611111111",
        "2025-03-05 09:00:00+00",
        "voice",
        "home",
        "+31201234567",
        10,
        1,
    )
    .await;

    let e = explain_cdr(&db.pool, &CdrRef::Id(late)).await.unwrap();

    assert!(
        matches!(
            e.totals,
            TotalsState::NotYetRated {
                calculated_at: Some(_)
            }
        ),
        "{:?}",
        e.totals
    );
    assert!(
        e.status
            .contains("not yet rated; totals recalculation pending"),
        "{}",
        e.status
    );
    assert_eq!(e.pricing, None);
    // The CDRs that were rated now say their pricing is not current: the
    // import marked the cycle from the late call on.
    let other = explain_cdr(&db.pool, &"routit:v1".parse().unwrap())
        .await
        .unwrap();
    match other.totals {
        TotalsState::NotCurrent {
            pending_changes: 1,
            changed_from,
            ..
        } => assert_eq!(changed_from.to_rfc3339(), "2025-03-05T09:00:00+00:00"),
        ref unexpected => panic!("{unexpected:?}"),
    }
    assert!(other.status.starts_with("not current"), "{}", other.status);
    // After recalculating, the late call is rated first in the cycle and
    // takes 60 s (billed) of s1's line bundle.
    calculate_totals(&db.pool, c, "2025-03-01".parse().unwrap())
        .await
        .unwrap();
    let e = explain_cdr(&db.pool, &CdrRef::Id(late)).await.unwrap();
    let p = e.pricing.unwrap();
    assert_eq!(
        (p.position, p.covered_quantity, p.rated_cost_micros),
        (Some(0), 60, 5_000)
    );
    assert!(matches!(e.totals, TotalsState::Current { .. }));
}

#[tokio::test]
async fn explain_of_an_unknown_cdr_is_a_clear_error() {
    let db = fresh().await;

    let by_id = explain_cdr(&db.pool, &CdrRef::Id(424_242))
        .await
        .unwrap_err();
    let by_key = explain_cdr(&db.pool, &"routit:nope".parse().unwrap())
        .await
        .unwrap_err();

    assert!(matches!(by_id, ExplainError::UnknownCdr(_)), "{by_id}");
    assert_eq!(
        by_id.to_string(),
        "there is no CDR 424242; check the provider and external id (or the id) against call_detail_record"
    );
    assert!(
        by_key
            .to_string()
            .starts_with("there is no CDR routit:nope;"),
        "{by_key}"
    );
    let bad = "routit".parse::<CdrRef>().unwrap_err();
    assert!(
        bad.to_string().contains("give PROVIDER:EXTERNAL_ID"),
        "{bad}"
    );
}

#[tokio::test]
async fn switching_a_customer_to_the_standard_method_removes_the_stored_rating() {
    let db = fresh().await;
    let c = customer(&db.pool, 1, Some(bundled_plan())).await;
    let (split, _) = bundled_cycle(&db.pool, c).await;
    calculate_totals(&db.pool, c, "2025-03-01".parse().unwrap())
        .await
        .unwrap();
    sqlx::query("UPDATE customer SET rate_plan_id = NULL WHERE id = $1")
        .bind(c)
        .execute(&db.pool)
        .await
        .unwrap();

    // Before recalculating, explain says the plan changed.
    let pending = explain_cdr(&db.pool, &CdrRef::Id(split)).await.unwrap();
    assert!(
        matches!(pending.totals, TotalsState::PlanChanged { .. }),
        "{:?}",
        pending.totals
    );
    let totals = calculate_totals(&db.pool, c, "2025-03-01".parse().unwrap())
        .await
        .unwrap();

    assert_eq!(totals.method, "standard");
    let ratings: i64 = sqlx::query_scalar("SELECT count(*) FROM rating_chunk")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(ratings, 0);
    let e = explain_cdr(&db.pool, &CdrRef::Id(split)).await.unwrap();
    assert_eq!(e.pricing.map(|p| p.rated_cost_micros), Some(1));
}

#[tokio::test]
async fn explain_of_a_cdr_without_a_customer_says_it_is_in_no_totals() {
    let db = fresh().await;
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO call_detail_record (provider, external_id, subscription, customer_id, started_at, kind, direction,
            destination, roaming_zone, duration_seconds, volume_bytes, units, provider_cost_micros, import_file_id, source_line)
         VALUES ('routit', 'orphan', '+31699999999', NULL, '2025-03-10 09:00:00+00', 'sms', 'outgoing', '+31612345678',
                 'home', 0, 0, 1, 75000, 1, 1)
         RETURNING id",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();

    let e = explain_cdr(&db.pool, &CdrRef::Id(id)).await.unwrap();

    assert_eq!((e.customer_id, e.cycle, e.pricing), (None, None, None));
    assert_eq!(e.totals, TotalsState::NoCustomer);
    assert!(e.status.contains("belongs to no customer"), "{}", e.status);
}

async fn calculate_from(pool: &PgPool, c: i64) -> (CycleTotals, Calculation) {
    let (totals, report) = calculate_totals_with(
        pool,
        c,
        "2025-03-01".parse().unwrap(),
        Recalculation::Incremental,
    )
    .await
    .unwrap();
    (totals, report.calculation)
}

async fn sql(pool: &PgPool, statement: &str) {
    sqlx::query(statement).execute(pool).await.unwrap();
}

/// The totals and pricings a full recalculation gives (which also leaves
/// the cycle as an incremental one would: current, with its checkpoints).
async fn in_full(pool: &PgPool, c: i64) -> (CycleTotals, Pricings) {
    let (totals, report) =
        calculate_totals_with(pool, c, "2025-03-01".parse().unwrap(), Recalculation::Full)
            .await
            .unwrap();
    assert_eq!(report.calculation, Calculation::Full);
    (totals, stored_pricing(pool, c).await)
}

fn at(s: &str) -> chrono::DateTime<chrono::Utc> {
    s.parse().unwrap()
}

#[tokio::test]
async fn a_recalculation_restarts_at_the_checkpoint_before_the_earliest_change_and_equals_a_full_one(
) {
    let db = fresh().await;
    let c = customer(&db.pool, 1, Some(bundled_plan())).await;
    bundled_cycle(&db.pool, c).await;

    let (first, how) = calculate_from(&db.pool, c).await;
    assert_eq!(how, Calculation::Full);
    let stored_first = stored_pricing(&db.pool, c).await;
    let (again, how) = calculate_from(&db.pool, c).await;
    assert_eq!(how, Calculation::AlreadyCurrent);
    assert_eq!(again, first);
    assert_eq!(stored_pricing(&db.pool, c).await, stored_first);

    // A file after the others (21 March): rating restarts right after the
    // cycle's last CDR (the call of the 20th), reading only the new one.
    cdr_to(
        &db.pool,
        c,
        "v8",
        "+31622222222",
        "2025-03-21 09:00:00+00",
        "voice",
        "home",
        "+31201234567",
        10,
        1,
    )
    .await;
    let (appended, how) = calculate_from(&db.pool, c).await;
    assert_eq!(
        how,
        Calculation::FromCheckpoint {
            from: at("2025-03-20T08:00:00.000001Z")
        }
    );
    assert_eq!(appended.cdr_count, 7);
    let stored_appended = stored_pricing(&db.pool, c).await;
    assert_eq!(
        in_full(&db.pool, c).await,
        (appended.clone(), stored_appended)
    );

    // A late file with a call before all others: it consumes the line
    // bundle first, so every later call is priced differently. No
    // checkpoint lies before it: the whole cycle is read again.
    let early = cdr_to(
        &db.pool,
        c,
        "v0",
        "+31611111111",
        "2025-03-02 09:00:00+00",
        "voice",
        "home",
        "+31201234567",
        50,
        1,
    )
    .await;
    let (late, how) = calculate_from(&db.pool, c).await;
    assert_eq!(how, Calculation::Full);
    assert_eq!(late.cdr_count, 8);
    assert_ne!(late.rated_cost_micros, appended.rated_cost_micros);
    let stored_late = stored_pricing(&db.pool, c).await;
    assert_eq!(stored_late.cdr_id[0], early);
    assert_eq!(in_full(&db.pool, c).await, (late.clone(), stored_late));

    // A call corrected by hand in SQL: the trigger marks its cycle from the
    // call on (20 March), and rating restarts at a checkpoint before it.
    sql(
        &db.pool,
        "UPDATE call_detail_record SET duration_seconds = 95 WHERE external_id = 'v4'",
    )
    .await;
    let (corrected, how) = calculate_from(&db.pool, c).await;
    match how {
        Calculation::FromCheckpoint { from } => assert!(
            from > at("2025-03-02T09:00:00Z") && from <= at("2025-03-20T08:00:00Z"),
            "{from}"
        ),
        other => panic!("{other:?}"),
    }
    // 95 s instead of 30 s (billed as the 60 s first increment), nothing
    // covered: 35 more seconds at 1,000.
    assert_eq!(corrected.rated_cost_micros, late.rated_cost_micros + 35_000);
    let stored_corrected = stored_pricing(&db.pool, c).await;
    assert_eq!(
        in_full(&db.pool, c).await,
        (corrected.clone(), stored_corrected)
    );

    // A deleted CDR disappears from the totals too.
    sql(
        &db.pool,
        "DELETE FROM call_detail_record WHERE external_id = 's1'",
    )
    .await;
    let (deleted, how) = calculate_from(&db.pool, c).await;
    assert!(matches!(how, Calculation::FromCheckpoint { .. }), "{how:?}");
    assert_eq!(deleted.cdr_count, 7);
    assert_eq!(deleted.unrated_count, 0);
    let stored_deleted = stored_pricing(&db.pool, c).await;
    assert_eq!(
        in_full(&db.pool, c).await,
        (deleted.clone(), stored_deleted)
    );
    let (_, how) = calculate_from(&db.pool, c).await;
    assert_eq!(how, Calculation::AlreadyCurrent);
}

#[tokio::test]
async fn a_damaged_checkpoint_or_another_time_zone_rates_the_cycle_in_full() {
    let db = fresh().await;
    let c = customer(&db.pool, 1, Some(bundled_plan())).await;
    bundled_cycle(&db.pool, c).await;
    let (first, _) = calculate_from(&db.pool, c).await;

    sql(
        &db.pool,
        "UPDATE rating_checkpoint SET state = '\\x0102'::bytea",
    )
    .await;
    sql(
        &db.pool,
        "UPDATE call_detail_record SET provider_cost_micros = provider_cost_micros WHERE external_id = 'v4'",
    )
    .await;
    let (damaged, how) = calculate_from(&db.pool, c).await;
    assert_eq!((damaged, how), (first.clone(), Calculation::Full));
    let (_, how) = calculate_from(&db.pool, c).await;
    assert_eq!(
        how,
        Calculation::AlreadyCurrent,
        "the checkpoints were written again"
    );

    // Another time zone moves the cycle's bounds: nothing stored fits.
    sql(
        &db.pool,
        &format!("UPDATE customer SET time_zone = 'America/New_York' WHERE id = {c}"),
    )
    .await;
    let (moved, how) = calculate_from(&db.pool, c).await;
    assert_eq!(how, Calculation::Full);
    assert_eq!(in_full(&db.pool, c).await.0, moved);
}

async fn calculations(pool: &PgPool, c: i64) -> i64 {
    sqlx::query_scalar("SELECT calculations FROM cycle_state WHERE customer_id = $1")
        .bind(c)
        .fetch_one(pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn seven_calculations_of_one_cycle_at_once_calculate_at_most_twice_and_agree() {
    let db = fresh().await;
    let c = customer(&db.pool, 1, Some(bundled_plan())).await;
    bundled_cycle(&db.pool, c).await;
    let burst = |pool: PgPool| async move {
        let runs: Vec<_> = (0..7)
            .map(|_| {
                let pool = pool.clone();
                tokio::spawn(async move {
                    calculate_totals_with(
                        &pool,
                        c,
                        "2025-03-01".parse().unwrap(),
                        Recalculation::Incremental,
                    )
                    .await
                    .unwrap()
                })
            })
            .collect();
        let mut out = Vec::new();
        for run in runs {
            out.push(run.await.unwrap());
        }
        out
    };
    let worked = |results: &[(
        CycleTotals,
        tem_shared::billing::calculation::CalculationReport,
    )]| {
        results
            .iter()
            .filter(|(_, report)| report.calculation != Calculation::AlreadyCurrent)
            .count()
    };
    // The cycle's first calculations: none has a state to find yet.
    let firsts = burst(db.pool.clone()).await;
    assert_eq!(worked(&firsts), 1, "{firsts:?}");
    assert_eq!(calculations(&db.pool, c).await, 1);
    let first = firsts[0].0.clone();
    // A burst: one import, then seven DispatchTotals' calculations at once
    // (each on its own connection), and the same seven again.
    cdr_to(
        &db.pool,
        c,
        "v8",
        "+31622222222",
        "2025-03-21 09:00:00+00",
        "voice",
        "home",
        "+31201234567",
        10,
        1,
    )
    .await;
    let mut results = burst(db.pool.clone()).await;
    results.extend(burst(db.pool.clone()).await);

    assert_eq!(
        worked(&results),
        1,
        "one calculation, the others found it current"
    );
    assert_eq!(calculations(&db.pool, c).await, 2);
    assert!(results.iter().all(|(t, _)| *t == results[0].0));
    assert_eq!(results[0].0.cdr_count, first.cdr_count + 1);
    assert_eq!(in_full(&db.pool, c).await.0, results[0].0);
}

#[tokio::test]
async fn seven_first_calculations_of_a_cycle_at_once_calculate_once_and_none_fails() {
    // The first run of a cycle has no cycle_state row yet for the waiting
    // calculations to find changed: they must still start again on a fresh
    // snapshot (and find the cycle current) rather than fail on the first
    // one's rows. Once with the import's marks, once without any (a cycle
    // whose CDRs were never marked, calculated from the console).
    for marked in [true, false] {
        let db = fresh().await;
        let c = customer(&db.pool, 1, Some(bundled_plan())).await;
        bundled_cycle(&db.pool, c).await;
        // A call on the cycle's first day: its segment's pricings are the
        // first rows a calculation writes.
        cdr(
            &db.pool,
            c,
            "first-day",
            "+31633333333",
            "2025-03-01 10:00:00+00",
            "voice",
            30,
            1,
        )
        .await;
        if !marked {
            sql(&db.pool, "DELETE FROM cycle_change").await;
        }
        // All seven take their snapshots while the cycle's lock is held
        // here, and run when it is released.
        let mut holder = db.pool.begin().await.unwrap();
        sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
            .bind(format!("totals:{c}:2025-03-01"))
            .execute(&mut *holder)
            .await
            .unwrap();
        let runs: Vec<_> = (0..7)
            .map(|_| {
                let pool = db.pool.clone();
                tokio::spawn(async move {
                    calculate_totals_with(
                        &pool,
                        c,
                        "2025-03-01".parse().unwrap(),
                        Recalculation::Incremental,
                    )
                    .await
                })
            })
            .collect();
        loop {
            let waiting: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted",
            )
            .fetch_one(&db.pool)
            .await
            .unwrap();
            if waiting == 7 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        holder.rollback().await.unwrap();
        let mut results = Vec::new();
        for run in runs {
            match run.await.unwrap() {
                Ok(done) => results.push(done),
                Err(e) => panic!("a calculation of the burst failed (marked: {marked}): {e}"),
            }
        }
        let worked = results
            .iter()
            .filter(|(_, report)| report.calculation != Calculation::AlreadyCurrent)
            .count();
        assert_eq!(worked, 1, "one calculation, the others found it current");
        assert_eq!(calculations(&db.pool, c).await, 1);
        assert!(results.iter().all(|(t, _)| *t == results[0].0));
        assert_eq!(in_full(&db.pool, c).await.0, results[0].0);
    }
}

#[tokio::test]
async fn a_hand_edit_a_deleted_cdr_and_a_late_file_are_not_current_until_the_next_calculation() {
    let db = fresh().await;
    let c = customer(&db.pool, 1, Some(bundled_plan())).await;
    bundled_cycle(&db.pool, c).await;
    let cycle: chrono::NaiveDate = "2025-03-01".parse().unwrap();
    calculate_totals(&db.pool, c, cycle).await.unwrap();
    let state = |key: &'static str| {
        let pool = db.pool.clone();
        async move {
            explain_cdr(&pool, &key.parse().unwrap())
                .await
                .unwrap()
                .totals
        }
    };
    assert!(matches!(
        state("routit:v4").await,
        TotalsState::Current { .. }
    ));

    // A hand edit of one CDR's cost in SQL (the SMS, which no rate prices:
    // it keeps its provider cost).
    sql(
        &db.pool,
        "UPDATE call_detail_record SET provider_cost_micros = 123456 WHERE external_id = 's1'",
    )
    .await;
    assert!(matches!(
        state("routit:v1").await,
        TotalsState::NotCurrent { .. }
    ));
    let edited = calculate_totals(&db.pool, c, cycle).await.unwrap();
    let explained = explain_cdr(&db.pool, &"routit:s1".parse().unwrap())
        .await
        .unwrap();
    assert!(matches!(explained.totals, TotalsState::Current { .. }));
    assert_eq!(explained.pricing.unwrap().rated_cost_micros, 123_456);

    // A deleted CDR.
    sql(
        &db.pool,
        "DELETE FROM call_detail_record WHERE external_id = 'v4'",
    )
    .await;
    assert!(matches!(
        state("routit:v1").await,
        TotalsState::NotCurrent { .. }
    ));
    let deleted = calculate_totals(&db.pool, c, cycle).await.unwrap();
    assert_eq!(deleted.cdr_count, edited.cdr_count - 1);
    assert!(matches!(
        state("routit:v1").await,
        TotalsState::Current { .. }
    ));

    // A late file before all others.
    let early = cdr_to(
        &db.pool,
        c,
        "v0",
        "+31611111111",
        "2025-03-01 09:00:00+00",
        "voice",
        "home",
        "+31201234567",
        50,
        1,
    )
    .await;
    assert!(matches!(
        state("routit:v1").await,
        TotalsState::NotCurrent { .. }
    ));
    assert!(matches!(
        explain_cdr(&db.pool, &CdrRef::Id(early))
            .await
            .unwrap()
            .totals,
        TotalsState::NotYetRated { .. }
    ));
    let late = calculate_totals(&db.pool, c, cycle).await.unwrap();
    assert_eq!(late.cdr_count, deleted.cdr_count + 1);
    let first = explain_cdr(&db.pool, &CdrRef::Id(early)).await.unwrap();
    assert!(matches!(first.totals, TotalsState::Current { .. }));
    assert_eq!(first.pricing.unwrap().position, Some(0));
    assert_eq!(in_full(&db.pool, c).await.0, late);
}

/// A CDR inserted by hand: INSERT has no trigger, so no writer marks it.
async fn unmarked_cdr(pool: &PgPool, c: i64, id: &str, at: &str, cost: i64) {
    sqlx::query(
        "INSERT INTO call_detail_record (provider, external_id, subscription, customer_id, started_at, kind, direction,
            destination, roaming_zone, duration_seconds, volume_bytes, units, provider_cost_micros, import_file_id, source_line)
         VALUES ('routit', $1, '+31611111111', $2, $3::timestamptz, 'voice', 'outgoing', '+31201234567', 'home', 60, 0, 0, $4, 1, 1)",
    )
    .bind(id)
    .bind(c)
    .bind(at)
    .bind(cost)
    .execute(pool)
    .await
    .unwrap();
}

#[tokio::test]
async fn a_calculate_totals_caused_by_a_rerating_rates_the_whole_cycle_and_an_import_only_what_changed(
) {
    use tem_shared::billing::handler::Totals;
    use tem_shared::command::{Cause, Command, CyclePayload};
    use tem_shared::envelope::Envelope;
    use tem_shared::runtime::{Delivery, StepHandler};

    let db = fresh().await;
    let c = customer(&db.pool, 1, Some(bundled_plan())).await;
    bundled_cycle(&db.pool, c).await;
    let cycle = "2025-03-01".parse().unwrap();
    let handler = Totals::new(
        tem_shared::adapters::billing::stores(db.pool.clone()),
        chrono::Duration::days(3),
    );
    let run = |cause: Cause| {
        let handler = &handler;
        async move {
            let now = chrono::Utc::now();
            let message = Envelope::start(
                format!("calc-{}", cause.as_str()),
                Command::CalculateTotals(CyclePayload::new(c, cycle, cause)),
                vec![],
                None,
                now,
            );
            let delivery = Delivery {
                receive_count: 1,
                deadline: now + chrono::Duration::minutes(5),
            };
            handler.handle(&message, delivery).await.unwrap();
        }
    };
    run(Cause::Import).await;
    let before = line_sums(&db.pool, c, "2025-03-01").await;

    unmarked_cdr(&db.pool, c, "by-hand", "2025-03-20 10:00:00+00", 123_456).await;
    run(Cause::Import).await;
    assert_eq!(
        line_sums(&db.pool, c, "2025-03-01").await,
        before,
        "an incremental calculation reads only what a writer marked"
    );

    run(Cause::Rerating).await;
    let after = line_sums(&db.pool, c, "2025-03-01").await;
    assert_eq!(after.0, before.0 + 1, "the re-rating counted the CDR");
    assert_eq!(after.1, before.1 + 123_456);
    assert_eq!(in_full(&db.pool, c).await.0.cdr_count, after.0);
}

// --- connections: a step holds at most one (issue 17) ---

/// The totals handler on a pool of `connections`, as the totals function
/// builds it, with a short acquire timeout so a step that waits for a
/// connection its own caller holds fails in seconds instead of hanging.
async fn totals_on_pool(url: &str, connections: u32) -> tem_shared::billing::handler::Totals {
    let pool = PgPoolOptions::new()
        .max_connections(connections)
        .acquire_timeout(std::time::Duration::from_secs(3))
        .connect(url)
        .await
        .unwrap();
    tem_shared::billing::handler::Totals::new(
        tem_shared::adapters::billing::stores(pool),
        chrono::Duration::days(3),
    )
}

/// Runs one step of `customer`'s March 2025 cycle, caused by an import.
async fn run_step(
    handler: &tem_shared::billing::handler::Totals,
    step: fn(tem_shared::command::CyclePayload) -> tem_shared::command::Command,
    customer: i64,
    run: &str,
) -> Result<(), String> {
    step_outcome(handler, step, customer, run).await.map(|_| ())
}

/// [`run_step`], with what the step answered; the message id is
/// `{run}-{step}-{customer}`, so the same `run` is the same message again.
async fn step_outcome(
    handler: &tem_shared::billing::handler::Totals,
    step: fn(tem_shared::command::CyclePayload) -> tem_shared::command::Command,
    customer: i64,
    run: &str,
) -> Result<tem_shared::runtime::StepOutcome, String> {
    use tem_shared::command::{Cause, CyclePayload};
    use tem_shared::envelope::Envelope;
    use tem_shared::runtime::{Delivery, StepHandler};
    let now = chrono::Utc::now();
    let command = step(CyclePayload::new(
        customer,
        "2025-03-01".parse().unwrap(),
        Cause::Import,
    ));
    let name = command.step().to_string();
    let message = Envelope::start(
        format!("{run}-{name}-{customer}"),
        command,
        vec![],
        None,
        now,
    );
    let delivery = Delivery {
        receive_count: 1,
        deadline: now + chrono::Duration::minutes(5),
    };
    handler
        .handle(&message, delivery)
        .await
        .map_err(|e| format!("{name} of customer {customer}: {e}"))
}

// --- a chain owes the backup and insights only of the totals it made ---

#[tokio::test]
async fn a_chain_whose_calculation_finds_another_chains_totals_current_goes_straight_to_its_invoice(
) {
    use tem_shared::command::Command;
    use tem_shared::envelope::Step;
    use tem_shared::runtime::StepOutcome;
    let db = fresh().await;
    let c = customer(&db.pool, 1, Some(bundled_plan())).await;
    bundled_cycle(&db.pool, c).await;
    let handler = totals_on_pool(&db.url, 2).await;
    // Two carriers' imports of one sync: the first chain's calculation
    // rates the cycle, the second finds it current.
    let first = step_outcome(&handler, Command::CalculateTotals, c, "kpn")
        .await
        .unwrap();
    assert!(
        matches!(first, StepOutcome::Continue { ref next, .. } if next.is_empty()),
        "the calculating chain continues as it was fixed: {first:?}"
    );
    let second = step_outcome(&handler, Command::CalculateTotals, c, "routit")
        .await
        .unwrap();
    assert!(
        matches!(
            second,
            StepOutcome::SkipTo {
                until: Step::GenerateInvoice
            }
        ),
        "the chain that found the first one's totals owes only its invoice: {second:?}"
    );
    let made_by: Option<String> =
        sqlx::query_scalar("SELECT calculated_by FROM cycle_state WHERE customer_id = $1")
            .bind(c)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(
        made_by.as_deref(),
        Some(format!("kpn-CalculateTotals-{c}").as_str())
    );
}

#[tokio::test]
async fn a_calculation_retried_after_its_commit_still_owes_its_backup_and_insights() {
    use tem_shared::command::Command;
    use tem_shared::runtime::StepOutcome;
    let db = fresh().await;
    let c = customer(&db.pool, 1, Some(bundled_plan())).await;
    bundled_cycle(&db.pool, c).await;
    let handler = totals_on_pool(&db.url, 2).await;
    step_outcome(&handler, Command::CalculateTotals, c, "kpn")
        .await
        .unwrap();
    // The same message again (its acknowledgement was lost after the
    // commit): the cycle is current, made by this very message.
    let again = step_outcome(&handler, Command::CalculateTotals, c, "kpn")
        .await
        .unwrap();
    assert!(
        matches!(again, StepOutcome::Continue { ref next, .. } if next.is_empty()),
        "a retry of the calculating message keeps the whole chain: {again:?}"
    );
}

#[tokio::test]
async fn totals_made_outside_the_chains_leave_the_next_chain_its_backup() {
    use tem_shared::command::Command;
    use tem_shared::runtime::StepOutcome;
    let db = fresh().await;
    let c = customer(&db.pool, 1, Some(bundled_plan())).await;
    bundled_cycle(&db.pool, c).await;
    // temctl or a benchmark rates the cycle in-process and backs up nothing.
    calculate_totals(&db.pool, c, "2025-03-01".parse().unwrap())
        .await
        .unwrap();
    let handler = totals_on_pool(&db.url, 2).await;
    let outcome = step_outcome(&handler, Command::CalculateTotals, c, "kpn")
        .await
        .unwrap();
    assert!(
        matches!(outcome, StepOutcome::Continue { ref next, .. } if next.is_empty()),
        "totals of an unknown maker are backed up by the chain that finds them: {outcome:?}"
    );
}

#[tokio::test]
async fn every_step_of_the_totals_chain_finishes_on_a_pool_of_one_connection() {
    use tem_shared::command::Command;
    let db = fresh().await;
    let c = customer(&db.pool, 1, Some(bundled_plan())).await;
    bundled_cycle(&db.pool, c).await;
    let handler = totals_on_pool(&db.url, 1).await;
    let chain: [fn(_) -> Command; 5] = [
        Command::DispatchTotals,
        Command::CalculateTotals,
        Command::BackupTotals,
        Command::BillingInsight,
        Command::GenerateInvoice,
    ];
    // The second run is a late import of an ended cycle: the backup then
    // also reads the customer, which is where a second connection was taken.
    for run in ["first", "late"] {
        if run == "late" {
            cdr(
                &db.pool,
                c,
                "late-1",
                "+31611111111",
                "2025-03-30 12:00:00+00",
                "voice",
                30,
                1,
            )
            .await;
        }
        for step in chain {
            run_step(&handler, step, c, run).await.unwrap();
        }
    }
    let versions: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM totals_history WHERE customer_id = $1 AND cause = 'late_cdrs'",
    )
    .bind(c)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(versions, 1, "the late import's backup says late_cdrs");
}

#[tokio::test]
async fn the_local_runs_three_cycles_back_up_at_once_on_the_totals_pool_without_waiting_for_a_connection(
) {
    use futures::StreamExt;
    use tem_shared::command::Command;
    // scripts/local-run.sh: three customers whose cycles a late import
    // changed; the totals function on its smallest pool (2, tier 30) runs
    // as many records at once as it has connections.
    let db = fresh().await;
    let mut customers = vec![];
    for i in 0..3 {
        let mut plan = bundled_plan();
        plan["id"] = json!(format!("bundled-{i}"));
        let c = customer(&db.pool, 1, Some(plan)).await;
        cdr(
            &db.pool,
            c,
            &format!("a-{c}"),
            "+31611111111",
            "2025-03-10 09:00:00+00",
            "voice",
            70,
            1,
        )
        .await;
        customers.push(c);
    }
    let handler = totals_on_pool(&db.url, 2).await;
    for run in ["first", "late"] {
        for &c in &customers {
            if run == "late" {
                cdr(
                    &db.pool,
                    c,
                    &format!("b-{c}"),
                    "+31611111111",
                    "2025-03-30 09:00:00+00",
                    "voice",
                    70,
                    1,
                )
                .await;
            }
            run_step(&handler, Command::CalculateTotals, c, run)
                .await
                .unwrap();
        }
        let backups: Vec<Result<(), String>> = futures::stream::iter(customers.iter())
            .map(|&c| run_step(&handler, Command::BackupTotals, c, run))
            .buffered(2)
            .collect()
            .await;
        let failed: Vec<&String> = backups.iter().filter_map(|r| r.as_ref().err()).collect();
        assert!(failed.is_empty(), "{run}: {failed:?}");
    }
}

/// Every CDR of the database, as the pure rating core takes them.
async fn rating_cdrs(pool: &PgPool) -> Vec<RatingCdr> {
    sqlx::query_as::<_, (i64, String, String, String, chrono::DateTime<chrono::Utc>, String, String, String, i32, i64, i32, i64)>(
        "SELECT id, provider, external_id, subscription, started_at, kind, roaming_zone, destination,
                duration_seconds, volume_bytes, units, provider_cost_micros FROM call_detail_record",
    )
    .fetch_all(pool)
    .await
    .unwrap()
    .into_iter()
    .map(|r| RatingCdr {
        id: r.0,
        provider: r.1,
        external_id: r.2,
        subscription: r.3,
        started_at: r.4,
        kind: match r.5.as_str() {
            "voice" => Kind::Voice,
            "data" => Kind::Data,
            _ => Kind::Sms,
        },
        zone: if r.6 == "eu" { Zone::Eu } else { Zone::Home },
        destination: r.7,
        duration_seconds: r.8 as u32,
        volume_bytes: r.9 as u64,
        units: r.10 as u32,
        provider_cost_micros: r.11,
    })
    .collect()
}
