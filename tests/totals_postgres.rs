//! CalculateTotals against a real PostgreSQL: the standard method, a rate
//! plan, lines that add up to the totals, cycle bounds, idempotence.

use serde_json::json;
use sqlx::PgPool;
use tem_shared::billing::totals::calculate_totals;
use tem_tests::db::fresh;

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
    sqlx::query(
        "INSERT INTO call_detail_record (provider, external_id, subscription, customer_id, started_at, kind, direction,
            destination, roaming_zone, duration_seconds, volume_bytes, units, provider_cost_micros, import_file_id, source_line)
         VALUES ('routit', $1, $2, $3, $4::timestamptz, $5, 'outgoing', '+31201234567', 'home', $6, 0, $7, $8, 1, 1)",
    )
    .bind(id)
    .bind(subscription)
    .bind(customer)
    .bind(at)
    .bind(kind)
    .bind(seconds)
    .bind(if kind == "sms" { 1 } else { 0 })
    .bind(cost)
    .execute(pool)
    .await
    .unwrap();
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
    let (cost, rate, billed): (i64, i32, i64) = sqlx::query_as(
        "SELECT u.cost, u.rate, u.billed
         FROM cycle_rating_chunk k,
              unnest(k.cdr_id, k.rated_cost_micros, k.rate, k.billed_quantity) AS u(id, cost, rate, billed)
         JOIN call_detail_record c ON c.id = u.id
         WHERE c.external_id = 'call'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!((cost, rate, billed), (61_000, 0, 61));
    let rated_sum: i64 = sqlx::query_scalar(
        "SELECT sum(u.cost)::bigint FROM cycle_rating_chunk k, unnest(k.rated_cost_micros) AS u(cost)",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
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
