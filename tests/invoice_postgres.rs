//! Issuing invoices against a real PostgreSQL (issue 18): the parties as
//! `temctl apply` stores them, VAT from effective-dated rates, the gapless
//! number series under concurrency and rollback, and a customer missing
//! billing data whose invoice stays a draft that `temctl status` reports.
//!
//! Customers bill in Europe/Amsterdam on cycle day 1. Their March 2025
//! cycle closes, with 5 days of grace, at 2025-04-05 22:00 UTC; an invoice
//! finalised at 2025-04-06 10:00 UTC is issued on 2025-04-06.

use chrono::{DateTime, Duration, NaiveDate, Utc};
use serde_json::{json, Value};
use sqlx::PgPool;
use tem_shared::adapters::billing::invoice::{cycles_due_for_finalisation, generate_invoice};
use tem_shared::adapters::status::PgStatus;
use tem_shared::adapters::totals::calculate_totals;
use tem_shared::billing::invoice::InvoiceOutcome;
use tem_shared::catalog::{self, ApplyOptions, CatalogError, FollowUp};
use tem_shared::ops::status::StatusStore;
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

const MARCH: &str = "2025-03-01";

const SELLER: &str = r#"
sellers:
  - code: tem
    valid_from: 2020-01-01
    legal_name: TEM Services B.V.
    address: {street: Kade 1, city: Utrecht, postcode: 3511 AA, country: NL}
    kvk: "12345678"
    vat_number: NL123456789B01
    iban: NL91ABNA0417164300
    bic: ABNANL2A
    payment_terms_days: 30
    peppol: {scheme: "0106", id: "12345678"}
    invoice_number_format: "{year}-{seq:06}"
"#;

/// The seller, and per code a customer with billing details from 2020:
/// Dutch, except `brussels`, a Belgian business (reverse charge), and
/// `newyork`, configured as outside the scope of VAT.
fn parties_file(codes: &[&str]) -> String {
    let mut text = SELLER.to_string();
    text.push_str("customers:\n");
    for code in codes {
        text.push_str(&format!(
            "  - {{code: {code}, name: {code}, billing_cycle_start_day: 1}}\n"
        ));
    }
    text.push_str("billing_details:\n");
    for code in codes {
        let (country, vat, peppol) = match *code {
            "brussels" => (
                "BE",
                "\n    vat_number: BE0123456749",
                r#"{scheme: "0208", id: "0123456749"}"#,
            ),
            // Outside the EU: its services are configured as outside scope.
            "newyork" => (
                "US",
                "\n    vat_category: O",
                r#"{scheme: "0060", id: "123456789"}"#,
            ),
            _ => (
                "NL",
                "\n    vat_number: NL987654321B01",
                r#"{scheme: "0106", id: "87654321"}"#,
            ),
        };
        text.push_str(&format!(
            "  - customer: {code}\n    valid_from: 2020-01-01\n    seller: tem\n    legal_name: {code} B.V.\n    address: {{street: Havenweg 2, city: Rotterdam, postcode: 3011 AA, country: {country}}}{vat}\n    peppol: {peppol}\n    invoice_email: ap@{code}.example\n"
        ));
    }
    text
}

async fn apply(pool: &PgPool, text: &str) -> Result<catalog::Applied, CatalogError> {
    let parsed = catalog::parse(text, |_| None);
    if !parsed.is_valid() {
        return Err(CatalogError::Invalid(parsed.problems));
    }
    catalog::apply(
        pool,
        &parsed,
        &ApplyOptions {
            source: "test".into(),
            dry_run: false,
            now: at("2025-03-01T00:00:00Z"),
            grace: grace(),
        },
    )
    .await
}

async fn customer_id(pool: &PgPool, code: &str) -> i64 {
    sqlx::query_scalar("SELECT id FROM customer WHERE code = $1")
        .bind(code)
        .fetch_one(pool)
        .await
        .expect("the customer was applied")
}

/// A customer without a plan, with one call of `cost` micro-units in
/// March and its March totals calculated. Returns its id.
async fn with_march_usage(pool: &PgPool, customer: i64, cost: i64) -> i64 {
    let subscription = format!("+3161{customer:07}");
    sqlx::query(
        "INSERT INTO subscription (customer_id, provider, identifier, active_from)
         VALUES ($1, 'routit', $2, '2025-01-01')",
    )
    .bind(customer)
    .bind(&subscription)
    .execute(pool)
    .await
    .unwrap();
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO call_detail_record (provider, external_id, subscription, customer_id, started_at, kind, direction,
            destination, roaming_zone, duration_seconds, volume_bytes, units, provider_cost_micros, import_file_id, source_line)
         VALUES ('routit', $1, $2, $3, '2025-03-10 10:00:00+00', 'voice', 'outgoing', '+31201234567', 'home', 60, 0, 0, $4, 1, 1)
         RETURNING id",
    )
    .bind(format!("call-{customer}"))
    .bind(&subscription)
    .bind(customer)
    .bind(cost)
    .fetch_one(pool)
    .await
    .unwrap();
    tem_tests::db::mark_imported(pool, &[id]).await;
    calculate_totals(pool, customer, date(MARCH)).await.unwrap();
    customer
}

async fn generate(pool: &PgPool, customer: i64, now: &str) -> InvoiceOutcome {
    generate_invoice(pool, customer, date(MARCH), at(now), grace())
        .await
        .expect("GenerateInvoice succeeds")
}

fn number_of(outcome: &InvoiceOutcome) -> String {
    match outcome {
        InvoiceOutcome::Finalised { number, .. }
        | InvoiceOutcome::CorrectionCreated { number, .. } => number.clone(),
        other => panic!("expected a final invoice, got {other:?}"),
    }
}

/// What an invoice was issued with, as stored.
async fn issued(pool: &PgPool, customer: i64) -> Value {
    sqlx::query_scalar(
        "SELECT jsonb_build_object('status', status, 'number', number, 'issue_date', issue_date,
                'due_date', due_date, 'net_cents', net_cents, 'vat_cents', vat_cents,
                'payable_cents', payable_cents, 'breakdown', vat_breakdown,
                'buyer', buyer_details->>'legal_name', 'seller', seller_details->>'legal_name',
                'blocked_reason', blocked_reason,
                'lines', (SELECT jsonb_agg(jsonb_build_array(vat_category, vat_rate_bp, net_cents) ORDER BY line_no)
                          FROM invoice_line WHERE invoice_id = i.id))
         FROM invoice i WHERE customer_id = $1 AND cycle = $2::date AND sequence = 0",
    )
    .bind(customer)
    .bind(MARCH)
    .fetch_one(pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn apply_stores_party_versions_names_every_missing_field_and_a_second_apply_changes_nothing()
{
    let db = fresh().await;
    let text = parties_file(&["acme"]);
    let first = apply(&db.pool, &text).await.unwrap();
    assert_eq!(first.summary.created, 3, "{:#?}", first.changes);
    let again = apply(&db.pool, &text).await.unwrap();
    assert_eq!(again.summary.changed, 0, "{:#?}", again.changes);

    // A new version from July: a new row; the first stays for earlier invoices.
    let moved = format!(
        "{text}  - customer: acme\n    valid_from: 2025-07-01\n    seller: tem\n    legal_name: Acme Holding B.V.\n    address: {{street: Kade 9, city: Delft, postcode: 2611 AA, country: NL}}\n    peppol: {{scheme: \"0106\", id: \"87654321\"}}\n    invoice_email: ap@acme.example\n    payment_terms_days: 14\n"
    );
    let applied = apply(&db.pool, &moved).await.unwrap();
    let created: Vec<&str> = applied
        .changes
        .iter()
        .filter(|c| c.is_change())
        .map(|c| c.key.as_str())
        .collect();
    assert_eq!(created, vec!["acme from 2025-07-01"]);
    let versions: Vec<(NaiveDate, String, Option<i32>)> = sqlx::query_as(
        "SELECT valid_from, legal_name, payment_terms_days FROM customer_billing_details ORDER BY valid_from",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        versions,
        vec![
            (date("2020-01-01"), "acme B.V.".into(), None),
            (date("2025-07-01"), "Acme Holding B.V.".into(), Some(14)),
        ]
    );

    // A version missing its e-mail and with a bad IBAN is refused whole,
    // each problem at its path, and nothing is written.
    let broken = text
        .replace("    invoice_email: ap@acme.example\n", "")
        .replace("NL91ABNA0417164300", "NL91ABNA0417164309")
        .replace("legal_name: acme B.V.", "legal_name: Acme Renamed B.V.");
    let Err(CatalogError::Invalid(problems)) = apply(&db.pool, &broken).await else {
        panic!("a broken file must be refused");
    };
    // Each problem also carries the line its entry starts on.
    let entry_line = broken
        .lines()
        .position(|l| l == "  - customer: acme")
        .map(|i| i + 1);
    assert_eq!(problems.get(1).and_then(|p| p.line), entry_line);
    let problems: Vec<String> = problems.iter().map(ToString::to_string).collect();
    assert_eq!(problems.len(), 2, "{problems:#?}");
    assert!(problems[0].starts_with("sellers[0].iban:"), "{problems:?}");
    assert_eq!(
        problems[1],
        "billing_details[0].invoice_email: is required and missing"
    );
    let name: String = sqlx::query_scalar(
        "SELECT legal_name FROM customer_billing_details WHERE valid_from = '2020-01-01'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(name, "acme B.V.");
}

#[tokio::test]
async fn an_invoice_is_issued_with_the_details_valid_on_its_issue_date_and_21_percent_vat() {
    let db = fresh().await;
    apply(&db.pool, &parties_file(&["acme"])).await.unwrap();
    // A version that starts the day after the issue date is not used.
    let later = format!(
        "{}  - customer: acme\n    valid_from: 2025-04-07\n    seller: tem\n    legal_name: Acme Later B.V.\n    address: {{street: Kade 9, city: Delft, postcode: 2611 AA, country: NL}}\n    peppol: {{scheme: \"0106\", id: \"87654321\"}}\n    invoice_email: ap@acme.example\n",
        parties_file(&["acme"])
    );
    apply(&db.pool, &later).await.unwrap();
    let acme = with_march_usage(&db.pool, customer_id(&db.pool, "acme").await, 12_345_678).await;

    // Drafts carry no number.
    assert!(matches!(
        generate(&db.pool, acme, "2025-03-20T00:00:00Z").await,
        InvoiceOutcome::DraftWritten { .. }
    ));
    assert_eq!(issued(&db.pool, acme).await["number"], Value::Null);

    let outcome = generate(&db.pool, acme, "2025-04-06T10:00:00Z").await;
    assert_eq!(number_of(&outcome), "2025-000001");
    // The call costs 12.345678: 12.35 net, 21% of it 2.5935 -> 2.59.
    assert_eq!(
        issued(&db.pool, acme).await,
        json!({
            "status": "final", "number": "2025-000001",
            "issue_date": "2025-04-06", "due_date": "2025-05-06",
            "net_cents": 1235, "vat_cents": 259, "payable_cents": 1494,
            "breakdown": [{"vat": {"category": "S", "rate": 2100},
                           "taxable_cents": 1235, "vat_cents": 259, "exemption": null}],
            "buyer": "acme B.V.", "seller": "TEM Services B.V.",
            "blocked_reason": null,
            "lines": [["S", 2100, 1235]],
        })
    );
}

#[tokio::test]
async fn an_eu_business_abroad_is_reverse_charged_with_the_legal_note_and_a_configured_category_wins(
) {
    let db = fresh().await;
    apply(&db.pool, &parties_file(&["brussels", "newyork"]))
        .await
        .unwrap();
    let newyork =
        with_march_usage(&db.pool, customer_id(&db.pool, "newyork").await, 10_000_000).await;
    generate(&db.pool, newyork, "2025-04-06T10:00:00Z").await;
    let stored = issued(&db.pool, newyork).await;
    assert_eq!(stored["lines"], json!([["O", 0, 1000]]));
    assert_eq!(
        stored["breakdown"][0]["exemption"]["code"].as_str(),
        Some("VATEX-EU-O")
    );
    let brussels = with_march_usage(
        &db.pool,
        customer_id(&db.pool, "brussels").await,
        10_000_000,
    )
    .await;
    generate(&db.pool, brussels, "2025-04-06T10:00:00Z").await;
    let stored = issued(&db.pool, brussels).await;
    assert_eq!(stored["lines"], json!([["AE", 0, 1000]]));
    assert_eq!(
        stored["breakdown"],
        json!([{"vat": {"category": "AE", "rate": 0}, "taxable_cents": 1000, "vat_cents": 0,
                "exemption": {"code": "VATEX-EU-AE", "reason": "Reverse charge / BTW verlegd"}}])
    );
    assert_eq!(
        (
            stored["vat_cents"].as_i64(),
            stored["payable_cents"].as_i64()
        ),
        (Some(0), Some(1000))
    );
}

#[tokio::test]
async fn a_rate_change_applies_to_invoices_issued_on_or_after_its_date_only() {
    let db = fresh().await;
    apply(&db.pool, &parties_file(&["before", "after"]))
        .await
        .unwrap();
    // The standard rate rises to 23% on 2025-04-07.
    sqlx::query(
        "INSERT INTO vat_rate (country, code, valid_from, category, rate_bp)
         VALUES ('NL', 'standard', '2025-04-07', 'S', 2300)",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let before =
        with_march_usage(&db.pool, customer_id(&db.pool, "before").await, 10_000_000).await;
    let after = with_march_usage(&db.pool, customer_id(&db.pool, "after").await, 10_000_000).await;

    // 2025-04-06 23:59 in Amsterdam is 21:59 UTC: still the old rate.
    generate(&db.pool, before, "2025-04-06T21:59:59Z").await;
    generate(&db.pool, after, "2025-04-06T22:00:00Z").await;
    let (old, new) = (
        issued(&db.pool, before).await,
        issued(&db.pool, after).await,
    );
    assert_eq!(
        (
            old["issue_date"].as_str(),
            old["lines"][0][1].as_i64(),
            old["vat_cents"].as_i64()
        ),
        (Some("2025-04-06"), Some(2100), Some(210))
    );
    assert_eq!(
        (
            new["issue_date"].as_str(),
            new["lines"][0][1].as_i64(),
            new["vat_cents"].as_i64()
        ),
        (Some("2025-04-07"), Some(2300), Some(230))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_finalisations_on_separate_connections_number_1_to_n_without_duplicates_or_gaps()
{
    const N: usize = 16;
    let db = fresh().await;
    let codes: Vec<String> = (0..N).map(|i| format!("c{i:02}")).collect();
    let refs: Vec<&str> = codes.iter().map(String::as_str).collect();
    apply(&db.pool, &parties_file(&refs)).await.unwrap();
    let mut customers = Vec::new();
    for code in &codes {
        customers
            .push(with_march_usage(&db.pool, customer_id(&db.pool, code).await, 1_000_000).await);
    }
    // One connection per finalisation, all started together.
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(N as u32)
        .min_connections(N as u32)
        .connect(&db.url)
        .await
        .unwrap();
    let start = std::sync::Arc::new(tokio::sync::Barrier::new(N));
    let mut runs = tokio::task::JoinSet::new();
    for customer in customers.clone() {
        let (pool, start) = (pool.clone(), start.clone());
        runs.spawn(async move {
            start.wait().await;
            generate_invoice(
                &pool,
                customer,
                date(MARCH),
                at("2025-04-06T10:00:00Z"),
                grace(),
            )
            .await
        });
    }
    let mut numbers = Vec::new();
    while let Some(run) = runs.join_next().await {
        numbers.push(number_of(&run.unwrap().unwrap()));
    }
    numbers.sort();
    let expected: Vec<String> = (1..=N).map(|n| format!("2025-{n:06}")).collect();
    assert_eq!(numbers, expected);
    let stored: Vec<i64> = sqlx::query_scalar(
        "SELECT number_seq FROM invoice WHERE status = 'final' ORDER BY number_seq",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(stored, (1..=N as i64).collect::<Vec<_>>());
}

#[tokio::test]
async fn a_finalisation_that_fails_after_taking_a_number_consumes_none() {
    let db = fresh().await;
    apply(&db.pool, &parties_file(&["fails", "next"]))
        .await
        .unwrap();
    let fails = with_march_usage(&db.pool, customer_id(&db.pool, "fails").await, 1_000_000).await;
    let next = with_march_usage(&db.pool, customer_id(&db.pool, "next").await, 1_000_000).await;
    // The database refuses to make `fails`'s invoice final: the run takes
    // its number first (numbering.rs), then this UPDATE fails and the
    // transaction rolls back.
    sqlx::raw_sql(&format!(
        "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN RAISE EXCEPTION 'disk full (test) after taking number %',
             (SELECT last_number FROM invoice_number_counter); END $$;
         CREATE TRIGGER refuse_final BEFORE UPDATE ON invoice FOR EACH ROW
             WHEN (NEW.customer_id = {fails} AND NEW.status = 'final') EXECUTE FUNCTION refuse();"
    ))
    .execute(&db.pool)
    .await
    .unwrap();

    let err = generate_invoice(
        &db.pool,
        fails,
        date(MARCH),
        at("2025-04-06T10:00:00Z"),
        grace(),
    )
    .await
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("disk full (test) after taking number 1"),
        "{err}"
    );
    let counter: Option<i64> = sqlx::query_scalar("SELECT last_number FROM invoice_number_counter")
        .fetch_optional(&db.pool)
        .await
        .unwrap();
    assert_eq!(counter, None, "the rolled-back run took no number");
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM invoice WHERE customer_id = $1")
        .bind(fails)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(rows, 0, "nothing of the failed run survived");

    assert_eq!(
        number_of(&generate(&db.pool, next, "2025-04-06T10:00:00Z").await),
        "2025-000001"
    );
    sqlx::query("DROP TRIGGER refuse_final ON invoice")
        .execute(&db.pool)
        .await
        .unwrap();
    assert_eq!(
        number_of(&generate(&db.pool, fails, "2025-04-06T10:05:00Z").await),
        "2025-000002"
    );
}

#[tokio::test]
async fn a_customer_missing_billing_data_keeps_a_draft_naming_the_fields_until_they_are_applied() {
    let db = fresh().await;
    apply(
        &db.pool,
        &format!(
            "{SELLER}customers:\n  - {{code: acme, name: Acme, billing_cycle_start_day: 1}}\n"
        ),
    )
    .await
    .unwrap();
    let acme = with_march_usage(&db.pool, customer_id(&db.pool, "acme").await, 1_000_000).await;

    // No billing details at all: every required field is named.
    let outcome = generate(&db.pool, acme, "2025-04-06T10:00:00Z").await;
    let InvoiceOutcome::Blocked {
        invoice_id,
        correction: false,
        missing,
    } = outcome
    else {
        panic!("expected a blocked draft, got {outcome:?}");
    };
    assert_eq!(missing.len(), 1);
    assert!(
        missing[0].contains("no billing details valid on 2025-04-06")
            && missing[0].contains("legal_name")
            && missing[0].contains("invoice_email"),
        "{missing:?}"
    );
    let stored = issued(&db.pool, acme).await;
    assert_eq!(
        (stored["status"].as_str(), &stored["number"]),
        (Some("draft"), &Value::Null)
    );
    assert_eq!(stored["blocked_reason"].as_str(), Some(missing[0].as_str()));
    // Still due, so the hourly sweep tries again; and reported by status.
    assert_eq!(
        cycles_due_for_finalisation(&db.pool, at("2025-04-06T11:00:00Z"), grace())
            .await
            .unwrap(),
        vec![(acme, date(MARCH))]
    );
    let blocked = PgStatus::new(db.pool.clone())
        .blocked_invoices()
        .await
        .unwrap();
    assert_eq!(blocked.len(), 1);
    assert_eq!(
        (blocked[0].customer_id, blocked[0].cycle),
        (acme, date(MARCH))
    );
    assert_eq!(blocked[0].since, at("2025-04-06T10:00:00Z"));

    // Details written by hand without an e-mail or postcode: those two are named.
    sqlx::query(
        "INSERT INTO customer_billing_details (customer_id, valid_from, seller_code, legal_name, street, city, country,
             peppol_scheme, peppol_id)
         VALUES ($1, '2020-01-01', 'tem', 'Acme B.V.', 'Havenweg 2', 'Rotterdam', 'NL', '0106', '87654321')",
    )
    .bind(acme)
    .execute(&db.pool)
    .await
    .unwrap();
    let InvoiceOutcome::Blocked { missing, .. } =
        generate(&db.pool, acme, "2025-04-06T11:00:00Z").await
    else {
        panic!("still blocked");
    };
    assert_eq!(
        missing,
        vec![
            "billing details of customer 1 valid from 2020-01-01: address.postcode is missing",
            "billing details of customer 1 valid from 2020-01-01: invoice_email is missing",
        ]
        .into_iter()
        .map(|m| m.replace("customer 1", &format!("customer {acme}")))
        .collect::<Vec<_>>()
    );
    let counter: Option<i64> = sqlx::query_scalar("SELECT last_number FROM invoice_number_counter")
        .fetch_optional(&db.pool)
        .await
        .unwrap();
    assert_eq!(counter, None, "a blocked draft takes no number");

    // Once the details are applied (over the hand-written version), the
    // next run issues it: nothing was lost.
    let applied = apply(&db.pool, &parties_file(&["acme"])).await.unwrap();
    // The apply asks for the blocked invoice at once (its GenerateInvoice
    // goes to the totals queue), without waiting for the hourly sweep.
    assert_eq!(
        applied.follow_ups,
        vec![FollowUp::IssueBlocked {
            customer_id: acme,
            customer: "acme".into(),
            cycle: date(MARCH),
        }]
    );
    let outcome = generate(&db.pool, acme, "2025-04-06T12:00:00Z").await;
    assert_eq!(
        outcome,
        InvoiceOutcome::Finalised {
            invoice_id,
            from_draft: true,
            total_micros: 1_000_000,
            number: "2025-000001".into(),
        }
    );
    assert_eq!(issued(&db.pool, acme).await["blocked_reason"], Value::Null);
    assert!(PgStatus::new(db.pool.clone())
        .blocked_invoices()
        .await
        .unwrap()
        .is_empty());
}

#[tokio::test]
async fn a_correction_that_cannot_be_issued_writes_nothing_and_is_issued_once_the_data_is_back() {
    let db = fresh().await;
    apply(&db.pool, &parties_file(&["acme"])).await.unwrap();
    let acme = with_march_usage(&db.pool, customer_id(&db.pool, "acme").await, 1_000_000).await;
    assert_eq!(
        number_of(&generate(&db.pool, acme, "2025-04-06T10:00:00Z").await),
        "2025-000001"
    );
    // A late call, and meanwhile the billing details were removed by hand.
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO call_detail_record (provider, external_id, subscription, customer_id, started_at, kind, direction,
            destination, roaming_zone, duration_seconds, volume_bytes, units, provider_cost_micros, import_file_id, source_line)
         SELECT 'routit', 'late', identifier, customer_id, '2025-03-30 10:00:00+00', 'voice', 'outgoing', '+31201234567',
                'home', 60, 0, 0, 500000, 1, 2
         FROM subscription WHERE customer_id = $1
         RETURNING id",
    )
    .bind(acme)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    tem_tests::db::mark_imported(&db.pool, &[id]).await;
    calculate_totals(&db.pool, acme, date(MARCH)).await.unwrap();
    sqlx::query("DELETE FROM customer_billing_details WHERE customer_id = $1")
        .bind(acme)
        .execute(&db.pool)
        .await
        .unwrap();

    let outcome = generate(&db.pool, acme, "2025-04-10T10:00:00Z").await;
    assert!(
        matches!(
            outcome,
            InvoiceOutcome::Blocked {
                correction: true,
                ..
            }
        ),
        "{outcome:?}"
    );
    let invoices: i64 = sqlx::query_scalar("SELECT count(*) FROM invoice WHERE customer_id = $1")
        .bind(acme)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(invoices, 1, "no correction row without its parties");

    apply(&db.pool, &parties_file(&["acme"])).await.unwrap();
    let outcome = generate(&db.pool, acme, "2025-04-10T11:00:00Z").await;
    let InvoiceOutcome::CorrectionCreated {
        total_micros,
        number,
        ..
    } = outcome
    else {
        panic!("expected the correction, got {outcome:?}");
    };
    assert_eq!((total_micros, number.as_str()), (500_000, "2025-000002"));
}
