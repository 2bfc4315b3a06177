//! BillingInsight and GenerateInvoice against a real PostgreSQL: anomalies
//! of a cycle, and an invoice's life from draft to final to corrections.
//! Totals come from `calculate_totals` over inserted CDRs, as in the chain.
//!
//! Customers bill in Europe/Amsterdam unless a test says otherwise. The
//! March 2025 cycle runs from 2025-02-28 23:00 UTC (00:00 CET on 1 March)
//! to 2025-03-31 22:00 UTC (00:00 CEST on 1 April: summer time started on
//! 30 March), so with a grace of 5 days it closes at 2025-04-05 22:00 UTC.

use chrono::{DateTime, Duration, NaiveDate, Utc};
use serde_json::{json, Value};
use sqlx::PgPool;
use tem_shared::adapters::billing::insight::detect_insights;
use tem_shared::adapters::billing::invoice::{cycles_due_for_finalisation, generate_invoice};
use tem_shared::adapters::totals::calculate_totals;
use tem_shared::billing::customer::CustomerError;
use tem_shared::billing::insight::{Insight, InsightError, InsightKind};
use tem_shared::billing::invoice::{InvoiceError, InvoiceOutcome};
use tem_tests::db::fresh;

fn date(s: &str) -> NaiveDate {
    s.parse().expect("a test date")
}

fn at(s: &str) -> DateTime<Utc> {
    s.parse().expect("a test time")
}

fn grace() -> Duration {
    Duration::days(5)
}

async fn customer(pool: &PgPool, start_day: i16, zone: &str, plan: Option<Value>) -> i64 {
    if let Some(plan) = &plan {
        sqlx::query(
            "INSERT INTO rate_plan (id, name, plan) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
        )
        .bind(plan["id"].as_str().unwrap())
        .bind(plan["name"].as_str().unwrap())
        .bind(plan)
        .execute(pool)
        .await
        .unwrap();
    }
    let id = sqlx::query_scalar(
        "INSERT INTO customer (name, billing_cycle_start_day, time_zone, rate_plan_id)
         VALUES ('c', $1, $2, $3) RETURNING id",
    )
    .bind(start_day)
    .bind(zone)
    .bind(plan.as_ref().map(|p| p["id"].as_str().unwrap().to_string()))
    .fetch_one(pool)
    .await
    .unwrap();
    // A closed cycle's invoice is issued only to a customer with billing
    // details (tests/invoice_postgres.rs covers one without).
    tem_tests::db::insert_billing_details(pool, id).await;
    id
}

async fn subscription(
    pool: &PgPool,
    customer: i64,
    identifier: &str,
    from: &str,
    to: Option<&str>,
) {
    sqlx::query(
        "INSERT INTO subscription (customer_id, provider, identifier, active_from, active_to)
         VALUES ($1, 'routit', $2, $3::date, $4::date)",
    )
    .bind(customer)
    .bind(identifier)
    .bind(from)
    .bind(to)
    .execute(pool)
    .await
    .unwrap();
}

struct Cdr<'a> {
    provider: &'a str,
    id: &'a str,
    subscription: &'a str,
    customer: Option<i64>,
    at: &'a str,
    kind: &'a str,
    zone: &'a str,
    seconds: i32,
    cost: i64,
}

/// A home voice call through Routit.
fn call<'a>(
    customer: i64,
    id: &'a str,
    subscription: &'a str,
    at: &'a str,
    seconds: i32,
    cost: i64,
) -> Cdr<'a> {
    Cdr {
        provider: "routit",
        id,
        subscription,
        customer: Some(customer),
        at,
        kind: "voice",
        zone: "home",
        seconds,
        cost,
    }
}

async fn insert(pool: &PgPool, cdr: Cdr<'_>) {
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO call_detail_record (provider, external_id, subscription, customer_id, started_at, kind, direction,
            destination, roaming_zone, duration_seconds, volume_bytes, units, provider_cost_micros, import_file_id, source_line)
         VALUES ($1, $2, $3, $4, $5::timestamptz, $6, 'outgoing', '+31201234567', $7, $8, 0, $9, $10, 1, 1)
         RETURNING id",
    )
    .bind(cdr.provider)
    .bind(cdr.id)
    .bind(cdr.subscription)
    .bind(cdr.customer)
    .bind(cdr.at)
    .bind(cdr.kind)
    .bind(cdr.zone)
    .bind(cdr.seconds)
    .bind(if matches!(cdr.kind, "sms" | "mms") { 1 } else { 0 })
    .bind(cdr.cost)
    .fetch_one(pool)
    .await
    .unwrap();
    tem_tests::db::mark_imported(pool, &[id]).await;
}

async fn totals(pool: &PgPool, customer: i64, cycle: &str) {
    calculate_totals(pool, customer, date(cycle)).await.unwrap();
}

async fn insights(pool: &PgPool, customer: i64, cycle: &str) -> Vec<Insight> {
    detect_insights(pool, customer, date(cycle)).await.unwrap()
}

fn of_kind(found: &[Insight], kind: InsightKind) -> Vec<&Insight> {
    found.iter().filter(|i| i.kind == kind).collect()
}

/// Every stored insight row of a cycle, as JSON, in key order.
async fn stored_insights(pool: &PgPool, customer: i64, cycle: &str) -> Vec<Value> {
    sqlx::query_scalar(
        "SELECT to_jsonb(b) FROM billing_insight b WHERE customer_id = $1 AND cycle = $2::date
         ORDER BY kind, subject",
    )
    .bind(customer)
    .bind(cycle)
    .fetch_all(pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn a_cycle_thirty_percent_dearer_than_the_previous_is_flagged_and_ten_percent_dearer_is_not()
{
    let db = fresh().await;
    let c = customer(&db.pool, 1, "Europe/Amsterdam", None).await;
    let s = "+31611111111";
    // January 1,000,000; February 1,300,000 (+30%); March 1,430,000 (+10%
    // on February: 130,000 / 1,300,000).
    insert(
        &db.pool,
        call(c, "jan", s, "2025-01-10 10:00:00+00", 60, 1_000_000),
    )
    .await;
    insert(
        &db.pool,
        call(c, "feb", s, "2025-02-10 10:00:00+00", 60, 1_300_000),
    )
    .await;
    insert(
        &db.pool,
        call(c, "mar", s, "2025-03-10 10:00:00+00", 60, 1_430_000),
    )
    .await;
    for cycle in ["2025-01-01", "2025-02-01", "2025-03-01"] {
        totals(&db.pool, c, cycle).await;
    }

    // The first cycle has no previous totals to compare with.
    assert!(insights(&db.pool, c, "2025-01-01").await.is_empty());

    let february = insights(&db.pool, c, "2025-02-01").await;
    assert_eq!(february.len(), 1, "{february:?}");
    assert_eq!(february[0].kind, InsightKind::CostChange);
    assert_eq!(
        february[0].detail,
        json!({
            "previous_cycle": "2025-01-01",
            "previous_rated_cost_micros": 1_000_000,
            "rated_cost_micros": 1_300_000,
            "change_micros": 300_000,
            "change_percent": 30.0,
            "threshold_percent": 25,
        })
    );

    assert!(insights(&db.pool, c, "2025-03-01").await.is_empty());
    assert_eq!(stored_insights(&db.pool, c, "2025-03-01").await.len(), 0);
    let stored = stored_insights(&db.pool, c, "2025-02-01").await;
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0]["kind"], "cost_change");
    assert_eq!(stored[0]["detail"]["change_percent"], json!(30.0));
}

#[tokio::test]
async fn a_subscription_active_in_the_cycle_without_cdrs_is_listed_as_idle() {
    let db = fresh().await;
    let c = customer(&db.pool, 1, "Europe/Amsterdam", None).await;
    // Cycle 2025-01-01 covers the dates 1 to 31 January.
    subscription(&db.pool, c, "+31611111111", "2024-01-01", None).await; // used
    subscription(&db.pool, c, "+31622222222", "2024-01-01", None).await; // idle
    subscription(
        &db.pool,
        c,
        "+31633333333",
        "2024-01-01",
        Some("2024-12-31"),
    )
    .await; // ended before
    subscription(&db.pool, c, "+31644444444", "2025-01-20", None).await; // started mid-cycle, idle
    subscription(&db.pool, c, "+31655555555", "2025-02-01", None).await; // starts next cycle
    subscription(
        &db.pool,
        c,
        "+31666666666",
        "2024-06-01",
        Some("2025-01-01"),
    )
    .await; // its last day is the first, idle
    insert(
        &db.pool,
        call(c, "a", "+31611111111", "2025-01-10 10:00:00+00", 60, 1_000),
    )
    .await;
    totals(&db.pool, c, "2025-01-01").await;

    let found = insights(&db.pool, c, "2025-01-01").await;
    let idle: Vec<&str> = of_kind(&found, InsightKind::IdleSubscription)
        .iter()
        .map(|i| i.subject.as_str())
        .collect();
    assert_eq!(idle, vec!["+31622222222", "+31644444444", "+31666666666"]);
    assert_eq!(found.len(), 3);
    assert_eq!(
        found[1].detail,
        json!({"subscription": "+31644444444",
               "periods": [{"provider": "routit", "active_from": "2025-01-20", "active_to": null}]})
    );
}

#[tokio::test]
async fn roaming_over_a_fifth_of_the_rated_cost_is_flagged() {
    let db = fresh().await;
    let c = customer(&db.pool, 1, "Europe/Amsterdam", None).await;
    let s = "+31611111111";
    // January: home 700,000, EU 200,000, world 100,000: roaming is 300,000
    // of 1,000,000 = 30%.
    insert(
        &db.pool,
        call(c, "h", s, "2025-01-10 10:00:00+00", 60, 700_000),
    )
    .await;
    insert(
        &db.pool,
        Cdr {
            zone: "eu",
            ..call(c, "e", s, "2025-01-11 10:00:00+00", 60, 200_000)
        },
    )
    .await;
    insert(
        &db.pool,
        Cdr {
            zone: "world",
            ..call(c, "w", s, "2025-01-12 10:00:00+00", 60, 100_000)
        },
    )
    .await;
    // February: home 850,000, EU 150,000: 15%.
    insert(
        &db.pool,
        call(c, "h2", s, "2025-02-10 10:00:00+00", 60, 850_000),
    )
    .await;
    insert(
        &db.pool,
        Cdr {
            zone: "eu",
            ..call(c, "e2", s, "2025-02-11 10:00:00+00", 60, 150_000)
        },
    )
    .await;
    totals(&db.pool, c, "2025-01-01").await;
    totals(&db.pool, c, "2025-02-01").await;

    let january = insights(&db.pool, c, "2025-01-01").await;
    assert_eq!(january.len(), 1, "{january:?}");
    assert_eq!(january[0].kind, InsightKind::RoamingShare);
    assert_eq!(
        january[0].detail["roaming_rated_cost_micros"],
        json!(300_000)
    );
    assert_eq!(january[0].detail["share_percent"], json!(30.0));
    assert_eq!(
        january[0].detail["by_zone"],
        json!({"eu": 200_000, "world": 100_000})
    );
    // February is flat on January (1,000,000 both), so nothing at all.
    assert!(insights(&db.pool, c, "2025-02-01").await.is_empty());
}

#[tokio::test]
async fn cdrs_no_rate_matched_are_flagged_as_unrated() {
    let db = fresh().await;
    let plan = json!({
        "id": "voice-only", "name": "Voice only", "unit_bytes": 1_048_576,
        "rates": [{"id": "voice", "kind": "voice", "prefix": "", "price_per_minute_micros": 60_000,
                   "first_increment_s": 60, "increment_s": 1}]
    });
    let c = customer(&db.pool, 1, "Europe/Amsterdam", Some(plan)).await;
    let s = "+31611111111";
    insert(
        &db.pool,
        call(c, "call", s, "2025-01-10 10:00:00+00", 60, 5_000),
    )
    .await;
    // No SMS rate in the plan: two unrated CDRs.
    insert(
        &db.pool,
        Cdr {
            kind: "sms",
            ..call(c, "sms1", s, "2025-01-10 11:00:00+00", 0, 100_000)
        },
    )
    .await;
    insert(
        &db.pool,
        Cdr {
            kind: "sms",
            ..call(c, "sms2", s, "2025-01-10 12:00:00+00", 0, 100_000)
        },
    )
    .await;
    totals(&db.pool, c, "2025-01-01").await;

    let found = insights(&db.pool, c, "2025-01-01").await;
    let unrated = of_kind(&found, InsightKind::UnratedCdrs);
    assert_eq!(unrated.len(), 1, "{found:?}");
    assert_eq!(
        unrated[0].detail,
        json!({"unrated_count": 2,
               "lines": [{"subscription": s, "kind": "sms", "zone": "home", "unrated_count": 2}]})
    );
}

#[tokio::test]
async fn cdrs_without_a_customer_in_the_cycle_are_counted_per_provider() {
    let db = fresh().await;
    let c = customer(&db.pool, 1, "Europe/Amsterdam", None).await;
    insert(
        &db.pool,
        call(
            c,
            "own",
            "+31611111111",
            "2025-01-10 10:00:00+00",
            60,
            1_000,
        ),
    )
    .await;
    let unknown = |provider, id, at| Cdr {
        provider,
        customer: None,
        ..call(0, id, "+31699999999", at, 60, 1_000)
    };
    // The January cycle is [2024-12-31 23:00 UTC, 2025-01-31 23:00 UTC).
    insert(
        &db.pool,
        unknown("routit", "r-first", "2024-12-31 23:00:00+00"),
    )
    .await;
    insert(
        &db.pool,
        unknown("routit", "r-mid", "2025-01-15 12:00:00+00"),
    )
    .await;
    insert(
        &db.pool,
        unknown("kpn_grip", "k-last", "2025-01-31 22:59:59+00"),
    )
    .await;
    insert(
        &db.pool,
        unknown("routit", "r-before", "2024-12-31 22:59:59+00"),
    )
    .await;
    insert(
        &db.pool,
        unknown("kpn_grip", "k-after", "2025-01-31 23:00:00+00"),
    )
    .await;
    totals(&db.pool, c, "2025-01-01").await;

    let found = insights(&db.pool, c, "2025-01-01").await;
    let counts: Vec<(&str, &Value)> = of_kind(&found, InsightKind::UnassignedCdrs)
        .iter()
        .map(|i| (i.subject.as_str(), &i.detail["cdr_count"]))
        .collect();
    assert_eq!(counts, vec![("kpn_grip", &json!(1)), ("routit", &json!(2))]);
    assert_eq!(found.len(), 2);
    assert_eq!(found[0].detail["from"], json!("2024-12-31T23:00:00Z"));
}

#[tokio::test]
async fn running_insights_twice_gives_the_same_rows_and_a_resolved_insight_disappears() {
    let db = fresh().await;
    let c = customer(&db.pool, 1, "Europe/Amsterdam", None).await;
    subscription(&db.pool, c, "+31611111111", "2024-01-01", None).await;
    subscription(&db.pool, c, "+31622222222", "2024-01-01", None).await;
    insert(
        &db.pool,
        call(
            c,
            "dec",
            "+31611111111",
            "2024-12-10 10:00:00+00",
            60,
            100_000,
        ),
    )
    .await;
    // January: +100% on December, and all of it roaming; +31622222222 idle;
    // one Routit CDR without a customer.
    insert(
        &db.pool,
        Cdr {
            zone: "eu",
            ..call(
                c,
                "jan",
                "+31611111111",
                "2025-01-10 10:00:00+00",
                60,
                200_000,
            )
        },
    )
    .await;
    insert(
        &db.pool,
        Cdr {
            customer: None,
            ..call(0, "x", "+31699999999", "2025-01-11 10:00:00+00", 60, 1)
        },
    )
    .await;
    totals(&db.pool, c, "2024-12-01").await;
    totals(&db.pool, c, "2025-01-01").await;

    let first = insights(&db.pool, c, "2025-01-01").await;
    let kinds: Vec<InsightKind> = first.iter().map(|i| i.kind).collect();
    assert_eq!(
        kinds,
        vec![
            InsightKind::CostChange,
            InsightKind::IdleSubscription,
            InsightKind::RoamingShare,
            InsightKind::UnassignedCdrs,
        ]
    );
    let rows = stored_insights(&db.pool, c, "2025-01-01").await;
    assert_eq!(rows.len(), 4);

    let second = insights(&db.pool, c, "2025-01-01").await;
    assert_eq!(second, first);
    // Same rows, detected_at included.
    assert_eq!(stored_insights(&db.pool, c, "2025-01-01").await, rows);

    // A home call on the idle subscription: January is now 300,000
    // (+200% still), roaming 200,000 / 300,000 = 66.7%, nobody idle.
    insert(
        &db.pool,
        call(
            c,
            "jan2",
            "+31622222222",
            "2025-01-12 10:00:00+00",
            60,
            100_000,
        ),
    )
    .await;
    totals(&db.pool, c, "2025-01-01").await;
    let third = insights(&db.pool, c, "2025-01-01").await;
    assert!(of_kind(&third, InsightKind::IdleSubscription).is_empty());
    assert_eq!(
        of_kind(&third, InsightKind::RoamingShare)[0].detail["share_percent"],
        json!(66.7)
    );
    let after = stored_insights(&db.pool, c, "2025-01-01").await;
    let stored_kinds: Vec<&str> = after.iter().map(|r| r["kind"].as_str().unwrap()).collect();
    assert_eq!(
        stored_kinds,
        vec!["cost_change", "roaming_share", "unassigned_cdrs"]
    );
    // The unassigned count did not change, so its row is untouched.
    assert_eq!(after[2], rows[3]);
}

#[tokio::test]
async fn insights_need_the_cycles_totals() {
    let db = fresh().await;
    let c = customer(&db.pool, 1, "Europe/Amsterdam", None).await;
    let err = detect_insights(&db.pool, c, date("2025-01-01"))
        .await
        .unwrap_err();
    assert!(matches!(err, InsightError::NoTotals { .. }), "{err}");
    assert!(err.to_string().contains("CalculateTotals"), "{err}");
    let err = detect_insights(&db.pool, c, date("2025-01-02"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, InsightError::Customer(CustomerError::NotACycle { .. })),
        "{err}"
    );
}

/// A plan with a 5 euro monthly fee and one voice rate of 0.06 euro per
/// minute, billed per second after a first minute (60/1).
fn fee_plan() -> Value {
    json!({
        "id": "business", "name": "Business", "unit_bytes": 1_048_576, "monthly_fee_micros": 5_000_000,
        "rates": [{"id": "voice", "kind": "voice", "prefix": "", "price_per_minute_micros": 60_000,
                   "first_increment_s": 60, "increment_s": 1}]
    })
}

/// The March 2025 set-up shared by the invoice tests. Subscriptions
/// +31611111111 (since January) and +31622222222 (from 1 March) are active
/// at the cycle start, +31633333333 starts on 15 March and is not charged:
/// fees 2 x 5,000,000 = 10,000,000. Calls: 61 s on ...111 bills 61 s =
/// 61,000; 30 s on ...333 bills the first 60 s = 60,000. Rated 121,000;
/// total 10,121,000.
async fn march_customer(pool: &PgPool) -> i64 {
    let c = customer(pool, 1, "Europe/Amsterdam", Some(fee_plan())).await;
    subscription(pool, c, "+31611111111", "2025-01-01", None).await;
    subscription(pool, c, "+31622222222", "2025-03-01", None).await;
    subscription(pool, c, "+31633333333", "2025-03-15", None).await;
    insert(
        pool,
        call(c, "m1", "+31611111111", "2025-03-10 10:00:00+00", 61, 1_000),
    )
    .await;
    insert(
        pool,
        call(c, "m2", "+31633333333", "2025-03-20 10:00:00+00", 30, 1_000),
    )
    .await;
    totals(pool, c, "2025-03-01").await;
    c
}

#[derive(Debug, PartialEq, sqlx::FromRow)]
struct Line {
    line_no: i32,
    subscription: String,
    kind: String,
    zone: String,
    quantity: String,
    amount_micros: i64,
}

async fn lines(pool: &PgPool, invoice: i64) -> Vec<Line> {
    sqlx::query_as(
        "SELECT line_no, subscription, kind, zone, quantity, amount_micros FROM invoice_line
         WHERE invoice_id = $1 ORDER BY line_no",
    )
    .bind(invoice)
    .fetch_all(pool)
    .await
    .unwrap()
}

/// (kind, status, sequence, rated, fees, total) of an invoice.
async fn head(pool: &PgPool, invoice: i64) -> (String, String, i32, i64, i64, i64) {
    sqlx::query_as(
        "SELECT kind, status, sequence, rated_cost_micros, fees_micros, total_micros FROM invoice WHERE id = $1",
    )
    .bind(invoice)
    .fetch_one(pool)
    .await
    .unwrap()
}

/// The invoice row and its lines as stored, to prove nothing changed.
async fn snapshot(pool: &PgPool, invoice: i64) -> Value {
    sqlx::query_scalar(
        "SELECT jsonb_build_object('invoice', to_jsonb(i),
                'lines', (SELECT jsonb_agg(to_jsonb(l) ORDER BY l.line_no) FROM invoice_line l WHERE l.invoice_id = i.id))
         FROM invoice i WHERE i.id = $1",
    )
    .bind(invoice)
    .fetch_one(pool)
    .await
    .unwrap()
}

async fn invoice_count(pool: &PgPool, customer: i64) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM invoice WHERE customer_id = $1")
        .bind(customer)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// Total = sum of lines = rated + fees, for every invoice of a customer.
async fn assert_invoices_add_up(pool: &PgPool, customer: i64) {
    let broken: Vec<(i64, i64, i64, i64, i64)> = sqlx::query_as(
        "SELECT i.id, i.total_micros, coalesce(sum(l.amount_micros), 0)::bigint, i.rated_cost_micros, i.fees_micros
         FROM invoice i LEFT JOIN invoice_line l ON l.invoice_id = i.id
         WHERE i.customer_id = $1
         GROUP BY i.id
         HAVING i.total_micros <> coalesce(sum(l.amount_micros), 0) OR i.total_micros <> i.rated_cost_micros + i.fees_micros",
    )
    .bind(customer)
    .fetch_all(pool)
    .await
    .unwrap();
    assert!(broken.is_empty(), "{broken:?}");
}

async fn generate(pool: &PgPool, customer: i64, now: &str) -> InvoiceOutcome {
    generate_invoice(pool, customer, date("2025-03-01"), at(now), grace())
        .await
        .unwrap()
}

#[tokio::test]
async fn a_draft_for_an_open_cycle_totals_its_rated_cost_plus_fees_of_subscriptions_active_at_cycle_start(
) {
    let db = fresh().await;
    let c = march_customer(&db.pool).await;

    let outcome = generate(&db.pool, c, "2025-03-20T12:00:00Z").await;
    let InvoiceOutcome::DraftWritten {
        invoice_id,
        created,
        rated_cost_micros,
        fees_micros,
        total_micros,
        closes_at,
    } = outcome
    else {
        panic!("expected a draft, got {outcome:?}");
    };
    assert!(created);
    assert_eq!(
        (rated_cost_micros, fees_micros, total_micros),
        (121_000, 10_000_000, 10_121_000)
    );
    assert_eq!(closes_at, at("2025-04-05T22:00:00Z"));
    assert_eq!(
        head(&db.pool, invoice_id).await,
        (
            "invoice".into(),
            "draft".into(),
            0,
            121_000,
            10_000_000,
            10_121_000
        )
    );
    let got: Vec<(String, String, i64)> = lines(&db.pool, invoice_id)
        .await
        .into_iter()
        .map(|l| (l.subscription, l.kind, l.amount_micros))
        .collect();
    assert_eq!(
        got,
        vec![
            ("+31611111111".into(), "voice".into(), 61_000),
            ("+31611111111".into(), "fee".into(), 5_000_000),
            ("+31622222222".into(), "fee".into(), 5_000_000),
            ("+31633333333".into(), "voice".into(), 60_000),
        ]
    );
    assert_invoices_add_up(&db.pool, c).await;
}

#[tokio::test]
async fn regenerating_the_draft_after_more_cdrs_updates_the_same_invoice() {
    let db = fresh().await;
    let c = march_customer(&db.pool).await;
    let InvoiceOutcome::DraftWritten { invoice_id, .. } =
        generate(&db.pool, c, "2025-03-20T12:00:00Z").await
    else {
        panic!("expected a draft");
    };

    // 120 s on +31622222222: 120,000 more; total 10,241,000.
    insert(
        &db.pool,
        call(
            c,
            "m3",
            "+31622222222",
            "2025-03-25 10:00:00+00",
            120,
            1_000,
        ),
    )
    .await;
    totals(&db.pool, c, "2025-03-01").await;
    let outcome = generate(&db.pool, c, "2025-03-26T12:00:00Z").await;
    assert_eq!(
        outcome,
        InvoiceOutcome::DraftWritten {
            invoice_id,
            created: false,
            rated_cost_micros: 241_000,
            fees_micros: 10_000_000,
            total_micros: 10_241_000,
            closes_at: at("2025-04-05T22:00:00Z"),
        }
    );
    assert_eq!(invoice_count(&db.pool, c).await, 1);
    let lines = lines(&db.pool, invoice_id).await;
    assert_eq!(lines.len(), 5);
    assert_eq!(
        lines[2],
        Line {
            line_no: 3,
            subscription: "+31622222222".into(),
            kind: "voice".into(),
            zone: "home".into(),
            quantity: "1 call, 120 s".into(),
            amount_micros: 120_000,
        }
    );
    assert_invoices_add_up(&db.pool, c).await;
}

#[tokio::test]
async fn after_cycle_end_plus_grace_the_invoice_is_final_and_late_changes_become_corrections() {
    let db = fresh().await;
    let c = march_customer(&db.pool).await;
    let InvoiceOutcome::DraftWritten { invoice_id, .. } =
        generate(&db.pool, c, "2025-03-20T12:00:00Z").await
    else {
        panic!("expected a draft");
    };

    // One second before closing the cycle is still open.
    assert!(matches!(
        generate(&db.pool, c, "2025-04-05T21:59:59Z").await,
        InvoiceOutcome::DraftWritten { created: false, .. }
    ));
    assert_eq!(
        generate(&db.pool, c, "2025-04-05T22:00:00Z").await,
        InvoiceOutcome::Finalised {
            invoice_id,
            from_draft: true,
            total_micros: 10_121_000,
            number: "2025-000001".into(),
        }
    );
    let (_, status, ..) = head(&db.pool, invoice_id).await;
    assert_eq!(status, "final");
    let finalised_at: DateTime<Utc> =
        sqlx::query_scalar("SELECT finalised_at FROM invoice WHERE id = $1")
            .bind(invoice_id)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(finalised_at, at("2025-04-05T22:00:00Z"));
    let final_invoice = snapshot(&db.pool, invoice_id).await;

    // Unchanged totals: nothing to correct.
    assert_eq!(
        generate(&db.pool, c, "2025-04-06T00:00:00Z").await,
        InvoiceOutcome::Unchanged {
            invoice_id,
            corrections: 0
        }
    );

    // A late CDR on the cycle's last second: 10 s bills the first 60 s =
    // 60,000 on +31611111111's voice line (61,000 -> 121,000).
    insert(
        &db.pool,
        call(
            c,
            "late",
            "+31611111111",
            "2025-03-31 21:59:59+00",
            10,
            1_000,
        ),
    )
    .await;
    totals(&db.pool, c, "2025-03-01").await;
    let outcome = generate(&db.pool, c, "2025-04-10T08:00:00Z").await;
    let InvoiceOutcome::CorrectionCreated {
        invoice_id: of,
        correction_id,
        sequence,
        total_micros,
        number,
    } = outcome
    else {
        panic!("expected a correction, got {outcome:?}");
    };
    assert_eq!((of, sequence, total_micros), (invoice_id, 1, 60_000));
    // A correction is final at once: it takes the next number.
    assert_eq!(number, "2025-000002");
    assert_eq!(
        head(&db.pool, correction_id).await,
        ("correction".into(), "final".into(), 1, 60_000, 0, 60_000)
    );
    assert_eq!(
        lines(&db.pool, correction_id).await,
        vec![Line {
            line_no: 1,
            subscription: "+31611111111".into(),
            kind: "voice".into(),
            zone: "home".into(),
            quantity: "now 2 calls, 71 s".into(),
            amount_micros: 60_000,
        }]
    );
    assert_eq!(snapshot(&db.pool, invoice_id).await, final_invoice);

    // Generating again finds everything billed: no second correction.
    assert_eq!(
        generate(&db.pool, c, "2025-04-10T08:05:00Z").await,
        InvoiceOutcome::Unchanged {
            invoice_id,
            corrections: 1
        }
    );
    assert_eq!(invoice_count(&db.pool, c).await, 2);

    // A subscription added late but active since February: one more fee
    // of 5,000,000, billed as correction 2.
    subscription(&db.pool, c, "+31644444444", "2025-02-01", None).await;
    let outcome = generate(&db.pool, c, "2025-04-11T08:00:00Z").await;
    let InvoiceOutcome::CorrectionCreated {
        correction_id: second,
        sequence: 2,
        total_micros: 5_000_000,
        ..
    } = outcome
    else {
        panic!("expected correction 2 of 5,000,000, got {outcome:?}");
    };
    assert_eq!(
        head(&db.pool, second).await,
        (
            "correction".into(),
            "final".into(),
            2,
            0,
            5_000_000,
            5_000_000
        )
    );
    assert_eq!(snapshot(&db.pool, invoice_id).await, final_invoice);

    // Final + corrections bill what the cycle is worth now:
    // 10,121,000 + 60,000 + 5,000,000 = rated 181,000 + fees 15,000,000.
    let billed: i64 =
        sqlx::query_scalar("SELECT sum(total_micros)::bigint FROM invoice WHERE customer_id = $1")
            .bind(c)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(billed, 15_181_000);
    assert_invoices_add_up(&db.pool, c).await;

    // The database refuses to change a final invoice or its lines.
    let update = sqlx::query("UPDATE invoice SET total_micros = total_micros + 1, rated_cost_micros = rated_cost_micros + 1 WHERE id = $1")
        .bind(invoice_id)
        .execute(&db.pool)
        .await;
    assert!(update.unwrap_err().to_string().contains("is final"));
    let delete = sqlx::query("DELETE FROM invoice_line WHERE invoice_id = $1")
        .bind(correction_id)
        .execute(&db.pool)
        .await;
    assert!(delete.unwrap_err().to_string().contains("is final"));
}

#[tokio::test]
async fn a_closed_cycle_without_a_draft_is_finalised_at_once() {
    let db = fresh().await;
    let c = march_customer(&db.pool).await;
    let outcome = generate(&db.pool, c, "2025-05-01T00:00:00Z").await;
    let InvoiceOutcome::Finalised {
        invoice_id,
        from_draft: false,
        total_micros: 10_121_000,
        ..
    } = outcome
    else {
        panic!("expected a final invoice made at once, got {outcome:?}");
    };
    assert_eq!(
        head(&db.pool, invoice_id).await,
        (
            "invoice".into(),
            "final".into(),
            0,
            121_000,
            10_000_000,
            10_121_000
        )
    );
    assert_eq!(lines(&db.pool, invoice_id).await.len(), 4);
    assert_invoices_add_up(&db.pool, c).await;
}

/// Runs `n` GenerateInvoice calls of the March cycle at once.
async fn generate_concurrently(
    pool: &PgPool,
    customer: i64,
    now: &str,
    n: usize,
) -> Vec<InvoiceOutcome> {
    let mut runs = tokio::task::JoinSet::new();
    for _ in 0..n {
        let pool = pool.clone();
        let now = at(now);
        runs.spawn(async move {
            generate_invoice(&pool, customer, date("2025-03-01"), now, grace()).await
        });
    }
    let mut outcomes = Vec::new();
    while let Some(run) = runs.join_next().await {
        outcomes.push(
            run.expect("the run does not panic")
                .expect("the run succeeds"),
        );
    }
    outcomes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_runs_finalise_once_and_bill_a_late_change_once() {
    let db = fresh().await;
    let c = march_customer(&db.pool).await;
    generate(&db.pool, c, "2025-03-20T12:00:00Z").await;

    let closed = "2025-04-06T00:00:00Z";
    let outcomes = generate_concurrently(&db.pool, c, closed, 4).await;
    let finalised = outcomes
        .iter()
        .filter(|o| {
            matches!(
                o,
                InvoiceOutcome::Finalised {
                    from_draft: true,
                    ..
                }
            )
        })
        .count();
    let unchanged = outcomes
        .iter()
        .filter(|o| matches!(o, InvoiceOutcome::Unchanged { corrections: 0, .. }))
        .count();
    assert_eq!((finalised, unchanged), (1, 3), "{outcomes:?}");

    // A late 60 s call on +31622222222: 60,000.
    insert(
        &db.pool,
        call(
            c,
            "late",
            "+31622222222",
            "2025-03-30 10:00:00+00",
            60,
            1_000,
        ),
    )
    .await;
    totals(&db.pool, c, "2025-03-01").await;
    let outcomes = generate_concurrently(&db.pool, c, closed, 4).await;
    let corrected = outcomes
        .iter()
        .filter(|o| {
            matches!(
                o,
                InvoiceOutcome::CorrectionCreated {
                    sequence: 1,
                    total_micros: 60_000,
                    ..
                }
            )
        })
        .count();
    let unchanged = outcomes
        .iter()
        .filter(|o| matches!(o, InvoiceOutcome::Unchanged { corrections: 1, .. }))
        .count();
    assert_eq!((corrected, unchanged), (1, 3), "{outcomes:?}");
    assert_eq!(invoice_count(&db.pool, c).await, 2);
    assert_invoices_add_up(&db.pool, c).await;
}

/// A customer with a draft for `cycle` (written while it was open).
async fn customer_with_draft(pool: &PgPool, start_day: i16, zone: &str, cycle: &str) -> i64 {
    let c = customer(pool, start_day, zone, None).await;
    draft(pool, c, cycle).await;
    c
}

async fn draft(pool: &PgPool, customer: i64, cycle: &str) {
    totals(pool, customer, cycle).await;
    let outcome = generate_invoice(
        pool,
        customer,
        date(cycle),
        at("2025-01-01T00:00:00Z"),
        grace(),
    )
    .await
    .unwrap();
    assert!(
        matches!(outcome, InvoiceOutcome::DraftWritten { .. }),
        "{outcome:?}"
    );
}

#[tokio::test]
async fn cycles_due_for_finalisation_lists_exactly_the_closed_drafts() {
    let db = fresh().await;
    // March cycles (start day 1), each ending at local midnight of 1 April,
    // plus 5 days of grace:
    // - Auckland (NZDT, +13): ends 2025-03-31 11:00 UTC, closes 2025-04-05 11:00 UTC;
    // - Amsterdam (CEST, +2): ends 2025-03-31 22:00 UTC, closes 2025-04-05 22:00 UTC;
    // - Los Angeles (PDT, -7): ends 2025-04-01 07:00 UTC, closes 2025-04-06 07:00 UTC.
    let auckland = customer_with_draft(&db.pool, 1, "Pacific/Auckland", "2025-03-01").await;
    let amsterdam = customer_with_draft(&db.pool, 1, "Europe/Amsterdam", "2025-03-01").await;
    let los_angeles = customer_with_draft(&db.pool, 1, "America/Los_Angeles", "2025-03-01").await;
    // Amsterdam's April cycle is open until 2025-05-05 22:00 UTC.
    draft(&db.pool, amsterdam, "2025-04-01").await;
    // A mid-month cycle 2025-03-15 ends 2025-04-14 22:00 UTC: open.
    customer_with_draft(&db.pool, 15, "Europe/Amsterdam", "2025-03-15").await;
    // A February invoice already final is not due again.
    let finished = customer(&db.pool, 1, "Europe/Amsterdam", None).await;
    totals(&db.pool, finished, "2025-02-01").await;
    generate_invoice(
        &db.pool,
        finished,
        date("2025-02-01"),
        at("2025-04-01T00:00:00Z"),
        grace(),
    )
    .await
    .unwrap();

    let due = |now: &'static str| {
        let pool = db.pool.clone();
        async move {
            cycles_due_for_finalisation(&pool, at(now), grace())
                .await
                .unwrap()
        }
    };
    let march = date("2025-03-01");
    assert_eq!(due("2025-04-05T10:59:59Z").await, vec![]);
    assert_eq!(due("2025-04-05T11:00:00Z").await, vec![(auckland, march)]);
    assert_eq!(
        due("2025-04-05T22:00:00Z").await,
        vec![(auckland, march), (amsterdam, march)]
    );
    assert_eq!(
        due("2025-04-06T07:00:00Z").await,
        vec![(auckland, march), (amsterdam, march), (los_angeles, march)]
    );

    // Once finalised, a cycle is no longer due.
    let outcome = generate_invoice(
        &db.pool,
        amsterdam,
        march,
        at("2025-04-06T07:00:00Z"),
        grace(),
    )
    .await
    .unwrap();
    assert!(
        matches!(outcome, InvoiceOutcome::Finalised { .. }),
        "{outcome:?}"
    );
    assert_eq!(
        due("2025-04-06T07:00:00Z").await,
        vec![(auckland, march), (los_angeles, march)]
    );
}

#[tokio::test]
async fn an_invoice_needs_the_cycles_totals_and_a_real_cycle_start() {
    let db = fresh().await;
    let c = customer(&db.pool, 1, "Europe/Amsterdam", None).await;
    let err = generate_invoice(
        &db.pool,
        c,
        date("2025-03-01"),
        at("2025-03-20T00:00:00Z"),
        grace(),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, InvoiceError::NoTotals { .. }), "{err}");
    let err = generate_invoice(
        &db.pool,
        c,
        date("2025-03-02"),
        at("2025-03-20T00:00:00Z"),
        grace(),
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("day 1"), "{err}");
    assert_eq!(invoice_count(&db.pool, c).await, 0);
}
