//! `temctl totals` run as a process against a fresh PostgreSQL database.

mod support;

use serde_json::{json, Value};
use sqlx::PgPool;
use support::{stderr, stdout, temctl, TempDir};
use tem_tests::db::fresh;

/// subscription, kind, zone, then the figures of a totals line in column order.
type Line = (
    &'static str,
    &'static str,
    &'static str,
    i64,
    i64,
    i64,
    i64,
    i64,
    i64,
    i64,
);

/// Customer `acme` (cycles from the 1st) with totals for January 2025:
/// two lines whose sums are the totals.
async fn with_totals(pool: &PgPool) -> i64 {
    let customer: i64 = sqlx::query_scalar(
        "INSERT INTO customer (code, name, billing_cycle_start_day, time_zone) VALUES ('acme', 'Acme Logistics', 1, 'Europe/Amsterdam') RETURNING id",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    let lines: [Line; 2] = [
        (
            "+31612345678",
            "voice",
            "home",
            3_i64,
            185_i64,
            0_i64,
            0_i64,
            37_500_i64,
            1_234_567_i64,
            0_i64,
        ),
        (
            "+31612345679",
            "data",
            "eu",
            2,
            0,
            5_242_880,
            0,
            1_000_000,
            265_433,
            1,
        ),
    ];
    let sum = |f: fn(&Line) -> i64| -> i64 { lines.iter().map(f).sum() };
    sqlx::query(
        "INSERT INTO totals (customer_id, cycle, method, rate_plan_id, cdr_count, voice_seconds, data_bytes, messages,
                             provider_cost_micros, rated_cost_micros, unrated_count)
         VALUES ($1, '2025-01-01', 'rate_plan', 'business', $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(customer)
    .bind(sum(|l| l.3))
    .bind(sum(|l| l.4))
    .bind(sum(|l| l.5))
    .bind(sum(|l| l.6))
    .bind(sum(|l| l.7))
    .bind(sum(|l| l.8))
    .bind(sum(|l| l.9))
    .execute(pool)
    .await
    .unwrap();
    for l in lines {
        sqlx::query(
            "INSERT INTO totals_line (customer_id, cycle, subscription, kind, roaming_zone, cdr_count, voice_seconds,
                                      data_bytes, messages, provider_cost_micros, rated_cost_micros, unrated_count)
             VALUES ($1, '2025-01-01', $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        )
        .bind(customer)
        .bind(l.0)
        .bind(l.1)
        .bind(l.2)
        .bind(l.3)
        .bind(l.4)
        .bind(l.5)
        .bind(l.6)
        .bind(l.7)
        .bind(l.8)
        .bind(l.9)
        .execute(pool)
        .await
        .unwrap();
    }
    customer
}

#[tokio::test]
async fn totals_print_the_figures_in_euros_and_a_line_per_subscription_kind_and_zone() {
    let db = fresh().await;
    with_totals(&db.pool).await;
    let dir = TempDir::new();

    let output = temctl(
        Some(&db.url),
        &dir.0,
        &["totals", "--customer", "acme", "--cycle", "2025-01-01"],
    );

    assert!(output.status.success(), "stderr: {}", stderr(&output));
    let text = stdout(&output);
    for expected in [
        "totals of customer acme (#1) Acme Logistics, cycle 2025-01-01 (2024-12-31 23:00 to 2025-01-31 23:00 UTC",
        "  method          rate_plan (plan business)",
        "  CDRs            5",
        "  voice seconds   185",
        "  data bytes      5242880",
        "  provider cost   EUR 1.037500",
        "  rated cost      EUR 1.500000",
        "  unrated         1",
        "lines (2)",
    ] {
        assert!(text.contains(expected), "{expected:?} in:\n{text}");
    }
    let voice = text
        .lines()
        .find(|l| l.contains("+31612345678"))
        .expect("a line for the voice subscription");
    let columns: Vec<&str> = voice.split_whitespace().collect();
    assert_eq!(
        columns,
        vec![
            "+31612345678",
            "voice",
            "home",
            "3",
            "185",
            "0",
            "0",
            "0.037500",
            "1.234567",
            "0"
        ]
    );
}

#[tokio::test]
async fn json_output_is_one_object_with_the_totals_and_lines_and_the_id_works_as_well_as_the_code()
{
    let db = fresh().await;
    let customer = with_totals(&db.pool).await;
    let dir = TempDir::new();

    let output = temctl(
        Some(&db.url),
        &dir.0,
        &[
            "totals",
            "--customer",
            &customer.to_string(),
            "--cycle",
            "2025-01-01",
            "--json",
        ],
    );

    assert!(output.status.success(), "stderr: {}", stderr(&output));
    let text = stdout(&output);
    assert_eq!(text.lines().count(), 1, "{text}");
    let value: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(value["customer_id"], customer);
    assert_eq!(value["customer_code"], "acme");
    assert_eq!(value["method"], "rate_plan");
    assert_eq!(value["cycle_start"], "2024-12-31T23:00:00Z");
    assert_eq!(value["totals"]["rated_cost_micros"], 1_500_000);
    assert_eq!(value["totals"]["rated_cost_eur"], "1.500000");
    let lines = value["lines"].as_array().unwrap();
    assert_eq!(lines.len(), 2);
    let rated: i64 = lines
        .iter()
        .map(|l| l["rated_cost_micros"].as_i64().unwrap())
        .sum();
    assert_eq!(
        json!(rated),
        value["totals"]["rated_cost_micros"],
        "the lines sum to the totals"
    );
    assert_eq!(lines[1]["roaming_zone"], "eu");
    assert_eq!(lines[1]["rated_cost_eur"], "0.265433");
}

#[tokio::test]
async fn a_cycle_without_totals_exits_1_naming_the_console_command_that_calculates_it() {
    let db = fresh().await;
    let customer = with_totals(&db.pool).await;
    let dir = TempDir::new();

    let output = temctl(
        Some(&db.url),
        &dir.0,
        &["totals", "--customer", "acme", "--cycle", "2025-02-01"],
    );

    assert_eq!(output.status.code(), Some(1));
    assert_eq!(stdout(&output), "");
    assert_eq!(
        stderr(&output).trim_end(),
        format!("error: customer acme (#{customer}) has no totals for the cycle 2025-02-01; calculate them by invoking the totals function with {{\"customer_id\":{customer},\"cycle\":\"2025-02-01\"}}")
    );
}

#[tokio::test]
async fn a_date_that_is_not_a_cycle_start_names_the_cycle_it_lies_in() {
    let db = fresh().await;
    with_totals(&db.pool).await;
    let dir = TempDir::new();

    let output = temctl(
        Some(&db.url),
        &dir.0,
        &["totals", "--customer", "acme", "--cycle", "2025-01-15"],
    );

    assert_eq!(output.status.code(), Some(1));
    let err = stderr(&output);
    assert!(
        err.contains("2025-01-15 is not a cycle of customer acme (#1): its cycles start on day 1; 2025-01-15 lies in the cycle 2025-01-01"),
        "{err}"
    );
}

#[tokio::test]
async fn an_unknown_customer_is_an_error_naming_what_was_given() {
    let db = fresh().await;
    with_totals(&db.pool).await;
    let dir = TempDir::new();

    let output = temctl(
        Some(&db.url),
        &dir.0,
        &["totals", "--customer", "nobody", "--cycle", "2025-01-01"],
    );

    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("no customer has the id or code \"nobody\""),
        "{}",
        stderr(&output)
    );
}
