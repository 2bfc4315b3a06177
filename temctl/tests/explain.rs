//! `temctl explain` run as a process against a fresh PostgreSQL database.

mod support;

use serde_json::{json, Value};
use sqlx::PgPool;
use support::{stderr, stdout, temctl, TempDir};
use tem_shared::adapters::totals::calculate_totals;
use tem_tests::db::fresh;

/// A customer on a plan: voice 60/1 at 60,000 per minute with a 5,000
/// connect fee, and a 100 s voice bundle per subscription.
async fn customer_on_plan(pool: &PgPool) -> i64 {
    let plan = json!({
        "id": "minutes", "name": "Minutes", "unit_bytes": 1_048_576,
        "rates": [{"id": "voice", "kind": "voice", "prefix": "31", "connect_fee_micros": 5_000,
                   "price_per_minute_micros": 60_000, "first_increment_s": 60, "increment_s": 1}],
        "bundles": [{"id": "line-minutes", "kinds": ["voice"], "allowance": 100, "scope": "per_subscription"}]
    });
    sqlx::query("INSERT INTO rate_plan (id, name, plan) VALUES ('minutes', 'Minutes', $1)")
        .bind(&plan)
        .execute(pool)
        .await
        .unwrap();
    sqlx::query_scalar(
        "INSERT INTO customer (name, billing_cycle_start_day, rate_plan_id) VALUES ('Acme', 1, 'minutes') RETURNING id",
    )
    .fetch_one(pool)
    .await
    .unwrap()
}

async fn call(pool: &PgPool, customer: i64, external_id: &str, at: &str, seconds: i32) -> i64 {
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO call_detail_record (provider, external_id, subscription, customer_id, started_at, kind, direction,
            destination, roaming_zone, duration_seconds, volume_bytes, units, provider_cost_micros, import_file_id, source_line)
         VALUES ('routit', $1, '+31611111111', $2, $3::timestamptz, 'voice', 'outgoing', '+31201234567', 'home',
                 $4, 0, 0, 2500, 1, 1)
         RETURNING id",
    )
    .bind(external_id)
    .bind(customer)
    .bind(at)
    .bind(seconds)
    .fetch_one(pool)
    .await
    .unwrap();
    // Marked as the importer marks what it loads.
    sqlx::query(
        "INSERT INTO cycle_change (customer_id, cycle, changed_from, source)
         SELECT customer_id, '2025-03-01', started_at, 'import' FROM call_detail_record WHERE id = $1",
    )
    .bind(id)
    .execute(pool)
    .await
    .unwrap();
    id
}

/// Two calls in the cycle 2025-03-01: 70 s (covered, 30 s left), then
/// 90 s: 30 s covered, 60 s charged: 5,000 + 60 x 60,000 / 60 = 65,000.
async fn rated_cycle(pool: &PgPool) -> i64 {
    let customer = customer_on_plan(pool).await;
    call(pool, customer, "A1", "2025-03-10 09:00:00+00", 70).await;
    let second = call(pool, customer, "A2", "2025-03-10 10:00:00+00", 90).await;
    calculate_totals(pool, customer, "2025-03-01".parse().unwrap())
        .await
        .unwrap();
    second
}

#[tokio::test]
async fn explain_prints_the_rate_the_bundle_share_the_arithmetic_and_that_the_totals_are_current() {
    let db = fresh().await;
    rated_cycle(&db.pool).await;
    let dir = TempDir::new();

    let output = temctl(Some(&db.url), &dir.0, &["explain", "--cdr", "routit:A2"]);

    assert!(output.status.success(), "stderr: {}", stderr(&output));
    let text = stdout(&output);
    for expected in [
        "CDR routit:A2 (id ",
        "cycle 2025-03-01, rate plan 'minutes'",
        "rate 'voice': voice in zone any, prefix '31'; connect fee 5000, 60000 per minute, increments 60/1 s",
        "billed 90 s, of which bundles covered 30 s",
        "bundle 'line-minutes' (per-subscription, 100 s per cycle): covered 30 s, 0 left after this CDR",
        "arithmetic: 5000 connect + 60 s x 60000/60 = 65000 micro-euros",
        "rated cost: 0.065000 EUR (65000 micro-euros)",
        "totals: current",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
}

#[tokio::test]
async fn explain_json_is_one_object_with_the_stored_figures() {
    let db = fresh().await;
    let id = rated_cycle(&db.pool).await;
    let dir = TempDir::new();

    let output = temctl(
        Some(&db.url),
        &dir.0,
        &["explain", "--cdr", &id.to_string(), "--json"],
    );

    assert!(output.status.success(), "stderr: {}", stderr(&output));
    let text = stdout(&output);
    assert_eq!(text.lines().count(), 1, "{text}");
    let value: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(value["cdr"]["external_id"], "A2");
    assert_eq!(value["method"], "rate_plan");
    assert_eq!(value["pricing"]["rated_cost_micros"], 65_000);
    assert_eq!(value["pricing"]["billed_quantity"], 90);
    assert_eq!(value["pricing"]["bundles"][0]["id"], "line-minutes");
    assert_eq!(value["pricing"]["bundles"][0]["covered"], 30);
    assert_eq!(value["totals"]["state"], "current");
}

#[tokio::test]
async fn explain_of_an_unknown_cdr_fails_with_exit_code_1_naming_it() {
    let db = fresh().await;
    let dir = TempDir::new();

    let output = temctl(
        Some(&db.url),
        &dir.0,
        &["explain", "--cdr", "routit:missing"],
    );

    assert_eq!(output.status.code(), Some(1));
    assert_eq!(
        stderr(&output),
        "error: there is no CDR routit:missing; check the provider and external id (or the id) against call_detail_record\n"
    );
}

#[tokio::test]
async fn a_cdr_reference_that_is_neither_a_key_nor_an_id_is_a_usage_error() {
    let dir = TempDir::new();

    let output = temctl(None, &dir.0, &["explain", "--cdr", "A2"]);

    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("give PROVIDER:EXTERNAL_ID"),
        "{}",
        stderr(&output)
    );
}
