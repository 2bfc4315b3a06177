//! Cost centres and chargeback against a real PostgreSQL (issue 19): the
//! tree and assignments as `temctl apply` stores them (a tree applied
//! whole, errors that name the node), and a cycle's draft invoice
//! allocated over the tree to the micro-unit of its net total.
//!
//! The customer bills in Europe/Amsterdam on cycle day 1 without a plan,
//! so each line is the provider cost of its CDRs.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, NaiveDate, Utc};
use sqlx::PgPool;
use tem_shared::adapters::billing::invoice::generate_invoice;
use tem_shared::adapters::costs::cycle_allocation;
use tem_shared::adapters::totals::calculate_totals;
use tem_shared::billing::invoice::InvoiceOutcome;
use tem_shared::catalog::{self, Action, ApplyOptions, CatalogError};
use tem_shared::costs::gl::{gl_csv, gl_rows};
use tem_shared::costs::ChargeClass;
use tem_tests::db::fresh;

fn date(s: &str) -> NaiveDate {
    s.parse().expect("a test date")
}

fn at(s: &str) -> DateTime<Utc> {
    s.parse().expect("a test time")
}

const MARCH: &str = "2025-03-01";
const APRIL: &str = "2025-04-01";

const CUSTOMER: &str = r#"
customers:
  - {code: acme, name: Acme, billing_cycle_start_day: 1}
subscriptions:
  - {identifier: "+31611111111", customer: acme, provider: routit, active_from: 2025-01-01}
  - {identifier: "+31622222222", customer: acme, provider: routit, active_from: 2025-01-01}
  - {identifier: "+31633333333", customer: acme, provider: routit, active_from: 2025-01-01}
"#;

const TREE: &str = r#"
cost_centres:
  - {customer: acme, code: ops, name: Operations, kind: division, gl_codes: {voice: "4800", data: "4810"}}
  - {customer: acme, code: field, name: Field service, kind: cost_centre, parent: ops}
  - {customer: acme, code: office, name: Office, kind: cost_centre, parent: ops}
  - {customer: acme, code: it, name: IT, kind: division, gl_codes: {data: "4820"}}
  - {customer: acme, code: bob, name: Bob, kind: employee, parent: field}
"#;

/// +31611111111: data to IT, the rest to Bob; +31622222222: 60/40 field
/// and office; +31633333333: no assignment.
const ASSIGNMENTS: &str = r#"
cost_assignments:
  - customer: acme
    subscription: "+31611111111"
    valid_from: 2025-01-01
    to: bob
    by_kind: {data: it}
  - customer: acme
    subscription: "+31622222222"
    valid_from: 2025-01-01
    split: [{to: field, percent: 60}, {to: office, percent: 40}]
"#;

async fn apply_with(
    pool: &PgPool,
    text: &str,
    dry_run: bool,
) -> Result<catalog::Applied, CatalogError> {
    let parsed = catalog::parse(text, |_| None);
    if !parsed.is_valid() {
        return Err(CatalogError::Invalid(parsed.problems));
    }
    catalog::apply(
        pool,
        &parsed,
        &ApplyOptions {
            source: "test".into(),
            dry_run,
            now: at("2025-03-01T00:00:00Z"),
            grace: Duration::days(5),
        },
    )
    .await
}

async fn apply(pool: &PgPool, text: &str) -> Result<catalog::Applied, CatalogError> {
    apply_with(pool, text, false).await
}

fn problems(result: Result<catalog::Applied, CatalogError>) -> Vec<String> {
    match result {
        Err(CatalogError::Invalid(problems)) => problems.iter().map(|p| p.with_line()).collect(),
        other => panic!("expected problems, got {other:?}"),
    }
}

async fn customer_id(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT id FROM customer WHERE code = 'acme'")
        .fetch_one(pool)
        .await
        .expect("the customer was applied")
}

/// One CDR of `kind` costing `cost` micro-units on `day`.
async fn usage(pool: &PgPool, customer: i64, subscription: &str, kind: &str, cost: i64, day: &str) {
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO call_detail_record (provider, external_id, subscription, customer_id, started_at, kind, direction,
            destination, roaming_zone, duration_seconds, volume_bytes, units, provider_cost_micros, import_file_id, source_line)
         VALUES ('routit', $1, $2, $3, ($4 || ' 10:00:00+00')::timestamptz, $5, 'outgoing', '+31201234567', 'home',
                 CASE WHEN $5 = 'voice' THEN 60 ELSE 0 END, CASE WHEN $5 = 'data' THEN 1048576 ELSE 0 END, 0, $6, 1, 1)
         RETURNING id",
    )
    .bind(format!("{subscription}-{kind}-{day}-{cost}"))
    .bind(subscription)
    .bind(customer)
    .bind(day)
    .bind(kind)
    .bind(cost)
    .fetch_one(pool)
    .await
    .expect("insert a CDR");
    tem_tests::db::mark_imported(pool, &[id]).await;
}

/// The cycle's totals and its draft invoice (the cycle is still open).
async fn draft(pool: &PgPool, customer: i64, cycle: &str) -> i64 {
    calculate_totals(pool, customer, date(cycle))
        .await
        .expect("totals");
    let now = date(cycle).and_hms_opt(12, 0, 0).expect("noon").and_utc() + Duration::days(10);
    match generate_invoice(pool, customer, date(cycle), now, Duration::days(5))
        .await
        .expect("GenerateInvoice succeeds")
    {
        InvoiceOutcome::DraftWritten { total_micros, .. } => total_micros,
        other => panic!("expected a draft, got {other:?}"),
    }
}

#[tokio::test]
async fn apply_stores_a_tree_and_assignments_and_a_second_apply_changes_nothing() {
    let db = fresh().await;
    let text = format!("{CUSTOMER}{TREE}{ASSIGNMENTS}");
    let first = apply(&db.pool, &text).await.unwrap();
    assert_eq!(first.summary.created, 1 + 3 + 5 + 2, "{:#?}", first.changes);
    let again = apply(&db.pool, &text).await.unwrap();
    assert_eq!(again.summary.changed, 0, "{:#?}", again.changes);

    let stored: Vec<(String, Option<String>, String)> =
        sqlx::query_as("SELECT code, parent_code, gl_codes::text FROM cost_node ORDER BY code")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(stored.len(), 5);
    assert_eq!(
        stored[4],
        (
            "ops".to_string(),
            None,
            r#"{"data": "4810", "voice": "4800"}"#.to_string()
        )
    );
}

#[tokio::test]
async fn a_tree_is_applied_whole_so_a_node_left_out_is_removed_and_a_dry_run_only_shows_it() {
    let db = fresh().await;
    apply(&db.pool, &format!("{CUSTOMER}{TREE}")).await.unwrap();
    let without_bob = TREE.replace(
        "  - {customer: acme, code: bob, name: Bob, kind: employee, parent: field}\n",
        "",
    );
    let renamed = without_bob.replace("name: Office,", "name: Head office,");

    let dry = apply_with(&db.pool, &renamed, true).await.unwrap();
    let changed: Vec<(String, Action)> = dry
        .changes
        .iter()
        .filter(|c| c.is_change())
        .map(|c| (c.key.clone(), c.action))
        .collect();
    assert_eq!(
        changed,
        vec![
            ("acme/office".to_string(), Action::Updated),
            ("acme/bob".to_string(), Action::Removed),
        ]
    );
    assert_eq!(dry.summary.removed, 1);
    let count = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM cost_node")
            .fetch_one(&db.pool)
            .await
            .unwrap()
    };
    assert_eq!(count().await, 5, "a dry run writes nothing");

    let applied = apply(&db.pool, &renamed).await.unwrap();
    assert_eq!(applied.summary.changed, 2);
    assert_eq!(count().await, 4);
}

#[tokio::test]
async fn a_bad_tree_and_bad_assignments_are_refused_with_errors_that_name_the_node() {
    let db = fresh().await;
    apply(&db.pool, CUSTOMER).await.unwrap();
    let bad_tree = r#"
cost_centres:
  - {customer: acme, code: ops, name: Operations, kind: division}
  - {customer: acme, code: bob, name: Bob, kind: employee, parent: ops}
  - {customer: acme, code: phone, name: Phone, kind: cost_centre, parent: bob}
"#;
    assert_eq!(
        problems(apply(&db.pool, bad_tree).await),
        vec![
            "cost_centres[2].parent: cost node \"phone\" hangs below employee \"bob\"; employees are leaves, hang it from their cost centre instead (line 5)"
        ]
    );
    let unknown_parent = "cost_centres:\n  - {customer: acme, code: ops, name: Ops, kind: division, parent: nowhere}\n";
    assert_eq!(
        problems(apply(&db.pool, unknown_parent).await),
        vec!["cost_centres[0].parent: cost node \"ops\" names parent \"nowhere\", which is not a node of this customer; add it or correct the parent (line 2)"]
    );

    apply(&db.pool, TREE).await.unwrap();
    let bad_assignment = r#"
cost_assignments:
  - customer: acme
    subscription: "+31611111111"
    valid_from: 2025-01-01
    to: bob
    by_kind: {voice: [{to: field, percent: 50}, {to: sales, percent: 50}]}
"#;
    assert_eq!(
        problems(apply(&db.pool, bad_assignment).await),
        vec!["cost_assignments[0].by_kind.voice: subscription +31611111111 (from 2025-01-01): share of node \"sales\", which is not in the customer's cost tree; add the node or assign another (line 3)"]
    );

    // A stored assignment to a node the new tree leaves out is named too.
    apply(&db.pool, ASSIGNMENTS).await.unwrap();
    let no_bob = TREE.replace(
        "  - {customer: acme, code: bob, name: Bob, kind: employee, parent: field}\n",
        "",
    );
    let found = problems(apply(&db.pool, &no_bob).await);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0].starts_with("cost_centres[0].code: the stored assignment acme/+31611111111 from 2025-01-01 no longer fits this tree"),
        "{found:?}"
    );
}

#[tokio::test]
async fn a_draft_invoice_is_allocated_exactly_with_a_kind_split_and_a_60_40_split() {
    let db = fresh().await;
    apply(&db.pool, &format!("{CUSTOMER}{TREE}{ASSIGNMENTS}"))
        .await
        .unwrap();
    let customer = customer_id(&db.pool).await;
    usage(
        &db.pool,
        customer,
        "+31611111111",
        "voice",
        1_000_000,
        "2025-03-03",
    )
    .await;
    usage(
        &db.pool,
        customer,
        "+31611111111",
        "data",
        2_500_000,
        "2025-03-04",
    )
    .await;
    // 0.333333 in 60/40: 199,999.8 and 133,333.2 become 200,000 and 133,333.
    usage(
        &db.pool,
        customer,
        "+31622222222",
        "voice",
        333_333,
        "2025-03-05",
    )
    .await;
    usage(
        &db.pool,
        customer,
        "+31633333333",
        "sms",
        70_000,
        "2025-03-06",
    )
    .await;
    let total = draft(&db.pool, customer, MARCH).await;
    assert_eq!(total, 3_903_333);

    let got = cycle_allocation(&db.pool, "acme", date(MARCH))
        .await
        .unwrap();
    assert_eq!(got.invoice_status, "draft");
    assert_eq!(got.net_total_micros, total);
    assert_eq!(
        got.allocation.allocated_micros() + got.allocation.unallocated_micros(),
        total
    );
    let up = got.rolled_up();
    assert_eq!(up["it"], 2_500_000, "data of +31611111111 goes to IT");
    assert_eq!(up["bob"], 1_000_000, "its voice to Bob");
    assert_eq!(up["field"], 1_000_000 + 200_000, "Bob's and 60%");
    assert_eq!(up["office"], 133_333, "40%");
    assert_eq!(up["ops"], 1_333_333);
    assert_eq!(
        got.unallocated_by_subscription(),
        BTreeMap::from([("+31633333333".to_string(), 70_000)])
    );
    let by_class = got.rolled_up_by_class();
    assert_eq!(
        by_class[&("ops".to_string(), ChargeClass::Voice)],
        1_333_333
    );

    let rows = gl_rows(&got);
    assert_eq!(rows.iter().map(|r| r.amount_micros).sum::<i64>(), total);
    let csv = gl_csv(&rows);
    assert!(csv.contains("\nit,4820,data,,2.500000\n"), "{csv}");
    assert!(csv.contains("\noffice,4800,voice,,0.133333\n"), "{csv}");
    assert!(csv.contains("\nUNALLOCATED,,sms,,0.070000\n"), "{csv}");
}

#[tokio::test]
async fn a_reassignment_from_april_moves_april_s_charges_and_leaves_march_where_it_was() {
    let db = fresh().await;
    apply(&db.pool, &format!("{CUSTOMER}{TREE}{ASSIGNMENTS}"))
        .await
        .unwrap();
    let moved = r#"
cost_assignments:
  - {customer: acme, subscription: "+31622222222", valid_from: 2025-04-01, to: office}
"#;
    let applied = apply(&db.pool, moved).await.unwrap();
    assert_eq!(applied.summary.created, 1);
    let customer = customer_id(&db.pool).await;
    usage(
        &db.pool,
        customer,
        "+31622222222",
        "voice",
        1_000_000,
        "2025-03-10",
    )
    .await;
    usage(
        &db.pool,
        customer,
        "+31622222222",
        "voice",
        500_000,
        "2025-04-10",
    )
    .await;
    draft(&db.pool, customer, MARCH).await;
    draft(&db.pool, customer, APRIL).await;

    let march = cycle_allocation(&db.pool, "acme", date(MARCH))
        .await
        .unwrap();
    let up = march.rolled_up();
    assert_eq!((up["field"], up["office"]), (600_000, 400_000));
    let april = cycle_allocation(&db.pool, &customer.to_string(), date(APRIL))
        .await
        .unwrap();
    let up = april.rolled_up();
    assert_eq!((up["field"], up["office"]), (0, 500_000));
    assert_eq!(april.net_total_micros, 500_000);
}

const PARTIES: &str = r#"
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
billing_details:
  - customer: acme
    valid_from: 2020-01-01
    seller: tem
    legal_name: Acme B.V.
    address: {street: Havenweg 2, city: Rotterdam, postcode: 3011 AA, country: NL}
    vat_number: NL987654321B01
    peppol: {scheme: "0106", id: "87654321"}
    invoice_email: ap@acme.example
"#;

#[tokio::test]
async fn a_final_invoice_s_ledger_rows_carry_the_vat_category_of_its_lines() {
    let db = fresh().await;
    apply(&db.pool, &format!("{CUSTOMER}{PARTIES}{TREE}{ASSIGNMENTS}"))
        .await
        .unwrap();
    let customer = customer_id(&db.pool).await;
    usage(
        &db.pool,
        customer,
        "+31622222222",
        "voice",
        1_000_000,
        "2025-03-05",
    )
    .await;
    calculate_totals(&db.pool, customer, date(MARCH))
        .await
        .expect("totals");
    // After the cycle and its 5 days of grace: the invoice becomes final.
    let outcome = generate_invoice(
        &db.pool,
        customer,
        date(MARCH),
        at("2025-04-07T10:00:00Z"),
        Duration::days(5),
    )
    .await
    .expect("GenerateInvoice succeeds");
    assert!(
        matches!(outcome, InvoiceOutcome::Finalised { .. }),
        "{outcome:?}"
    );

    let got = cycle_allocation(&db.pool, "acme", date(MARCH))
        .await
        .unwrap();
    assert_eq!(got.invoice_status, "final");
    assert_eq!(
        gl_csv(&gl_rows(&got)),
        "cost_centre,gl_code,charge_class,vat_category,amount\n\
         field,4800,voice,S,0.600000\n\
         office,4800,voice,S,0.400000\n"
    );
}

#[tokio::test]
async fn a_cycle_without_an_invoice_is_an_error_that_says_how_to_make_one() {
    let db = fresh().await;
    apply(&db.pool, &format!("{CUSTOMER}{TREE}")).await.unwrap();
    let err = cycle_allocation(&db.pool, "acme", date(MARCH))
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("has no invoice for the cycle 2025-03-01"),
        "{err}"
    );
    let err = cycle_allocation(&db.pool, "nobody", date(MARCH))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("no customer has the id or code"),
        "{err}"
    );
}
