//! `temctl costs show` run as a process against a fresh PostgreSQL
//! database: a tree and assignments applied with `temctl apply`, a draft
//! invoice's lines, and the chargeback printed as a tree, JSON and a
//! general-ledger CSV.

mod support;

use serde_json::Value;
use sqlx::PgPool;
use support::{stderr, stdout, temctl, TempDir};
use tem_tests::db::fresh;

const FILE: &str = r#"
customers:
  - {code: acme, name: Acme, billing_cycle_start_day: 1}
cost_centres:
  - {customer: acme, code: ops, name: Operations, kind: division, gl_codes: {voice: "4800", fee: "4890"}}
  - {customer: acme, code: field, name: Field, kind: cost_centre, parent: ops}
  - {customer: acme, code: bob, name: Bob, kind: employee, parent: field}
  - {customer: acme, code: it, name: IT, kind: division, gl_codes: {data: "4820"}}
cost_assignments:
  - customer: acme
    subscription: "+31611111111"
    valid_from: 2025-01-01
    to: bob
    by_kind: {data: it}
"#;

/// Applies [`FILE`] and stores a draft invoice for January 2025 with lines
/// of +31611111111 (voice 1.25, data 2.00 in two zones, fee 10.00) and of
/// the unassigned +31699999999 (voice 0.50): 13.75 in all.
async fn with_invoice(pool: &PgPool, url: &str, dir: &TempDir) {
    let file = dir.write("costs.yaml", FILE.as_bytes());
    let output = temctl(Some(url), &dir.0, &["apply", "-f", file.to_str().unwrap()]);
    assert!(output.status.success(), "stderr: {}", stderr(&output));
    // The database checks an invoice's lines against its total at commit.
    let mut tx = pool.begin().await.unwrap();
    let invoice: i64 = sqlx::query_scalar(
        "INSERT INTO invoice (customer_id, cycle, kind, status, sequence, rated_cost_micros, fees_micros,
             total_micros, totals_calculated_at)
         SELECT id, '2025-01-01', 'invoice', 'draft', 0, 3750000, 10000000, 13750000, now()
         FROM customer WHERE code = 'acme' RETURNING id",
    )
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    let lines = [
        ("+31611111111", "voice", "home", 1_250_000_i64),
        ("+31611111111", "data", "home", 1_500_000),
        ("+31611111111", "data", "eu", 500_000),
        ("+31611111111", "fee", "", 10_000_000),
        ("+31699999999", "voice", "home", 500_000),
    ];
    for (no, (subscription, kind, zone, amount)) in lines.iter().enumerate() {
        sqlx::query(
            "INSERT INTO invoice_line (invoice_id, line_no, description, subscription, kind, zone, quantity, amount_micros)
             VALUES ($1, $2, 'x', $3, $4, $5, '1', $6)",
        )
        .bind(invoice)
        .bind(i32::try_from(no + 1).unwrap())
        .bind(subscription)
        .bind(kind)
        .bind(zone)
        .bind(amount)
        .execute(&mut *tx)
        .await
        .unwrap();
    }
    tx.commit().await.unwrap();
}

#[tokio::test]
async fn costs_show_prints_the_rolled_up_tree_the_unallocated_subscription_and_that_the_totals_agree(
) {
    let db = fresh().await;
    let dir = TempDir::new();
    with_invoice(&db.pool, &db.url, &dir).await;

    let output = temctl(
        Some(&db.url),
        &dir.0,
        &["costs", "show", "acme", "2025-01-01", "--by-class"],
    );
    assert!(output.status.success(), "stderr: {}", stderr(&output));
    let text = stdout(&output);
    let columns = |code: &str| -> Vec<String> {
        text.lines()
            .find(|l| l.trim_start().starts_with(code))
            .unwrap_or_else(|| panic!("a line for {code} in:\n{text}"))
            .split_whitespace()
            .map(str::to_string)
            .collect()
    };
    assert_eq!(
        columns("ops")[..4],
        ["ops", "Operations", "EUR", "11.250000"]
    );
    assert_eq!(columns("bob")[..4], ["bob", "Bob", "EUR", "11.250000"]);
    assert_eq!(columns("it ")[..4], ["it", "IT", "EUR", "2.000000"]);
    assert!(
        text.contains("(voice 1.250000; fee 10.000000)"),
        "per class:\n{text}"
    );
    assert_eq!(columns("+31699999999"), ["+31699999999", "EUR", "0.500000"]);
    assert_eq!(
        columns("invoice net total"),
        ["invoice", "net", "total", "EUR", "13.750000"]
    );
    assert_eq!(columns("allocated")[..3], ["allocated", "EUR", "13.250000"]);
    assert!(
        text.contains("allocated + unallocated = invoice net total: they agree to the micro-unit"),
        "{text}"
    );
    // Bob is a level below field, which is below ops.
    let indent = |code: &str| {
        let line = text
            .lines()
            .find(|l| l.trim_start().starts_with(code))
            .unwrap();
        line.len() - line.trim_start().len()
    };
    assert_eq!((indent("ops"), indent("field"), indent("bob")), (2, 4, 6));

    let shallow = temctl(
        Some(&db.url),
        &dir.0,
        &["costs", "show", "acme", "2025-01-01", "--depth", "1"],
    );
    let shallow = stdout(&shallow);
    assert!(shallow.contains("ops Operations"), "{shallow}");
    assert!(
        !shallow.contains("bob Bob"),
        "depth 1 shows the roots only:\n{shallow}"
    );
}

#[tokio::test]
async fn json_and_the_gl_csv_hold_the_same_amounts_as_the_invoice() {
    let db = fresh().await;
    let dir = TempDir::new();
    with_invoice(&db.pool, &db.url, &dir).await;

    let output = temctl(
        Some(&db.url),
        &dir.0,
        &["costs", "show", "acme", "2025-01-01", "--json"],
    );
    assert!(output.status.success(), "stderr: {}", stderr(&output));
    let value: Value = serde_json::from_str(&stdout(&output)).unwrap();
    assert_eq!(value["net_total_micros"], 13_750_000);
    assert_eq!(value["allocated_micros"], 13_250_000);
    assert_eq!(value["unallocated_micros"], 500_000);
    assert_eq!(value["agrees"], true);
    assert_eq!(value["nodes"][0]["code"], "it");
    assert_eq!(value["nodes"][1]["code"], "ops");
    assert_eq!(value["nodes"][1]["by_class_micros"]["fee"], 10_000_000);

    let output = temctl(
        Some(&db.url),
        &dir.0,
        &["costs", "show", "acme", "2025-01-01", "--gl-csv"],
    );
    assert!(output.status.success(), "stderr: {}", stderr(&output));
    assert_eq!(
        stdout(&output),
        "cost_centre,gl_code,charge_class,vat_category,amount\n\
         UNALLOCATED,,voice,,0.500000\n\
         bob,4800,voice,,1.250000\n\
         bob,4890,fee,,10.000000\n\
         it,4820,data,,2.000000\n"
    );
}

#[tokio::test]
async fn a_cycle_without_an_invoice_exits_1_saying_how_to_make_one() {
    let db = fresh().await;
    let dir = TempDir::new();
    with_invoice(&db.pool, &db.url, &dir).await;
    let output = temctl(
        Some(&db.url),
        &dir.0,
        &["costs", "show", "acme", "2025-02-01"],
    );
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output)
            .contains("has no invoice for the cycle 2025-02-01; it is made by GenerateInvoice"),
        "{}",
        stderr(&output)
    );
}

/// `temctl insights` (beside `costs`: both answer issue 19's "where does
/// the money go"): a budget alert recorded for the cycle is listed with the
/// rules' insights, filtered by kind, as text and JSON.
#[tokio::test]
async fn insights_lists_a_budget_alert_beside_the_rules_insights_and_filters_by_kind() {
    let db = fresh().await;
    let dir = TempDir::new();
    with_invoice(&db.pool, &db.url, &dir).await;
    sqlx::query(
        "INSERT INTO billing_insight (customer_id, cycle, kind, subject, detail)
         SELECT id, '2025-01-01', k, s, '{\"threshold\": 80}'::jsonb FROM customer,
                (VALUES ('budget_alert', 'customer 80%'), ('idle_subscription', '+31622222222')) AS v(k, s)
         WHERE code = 'acme'",
    )
    .execute(&db.pool)
    .await
    .unwrap();

    let output = temctl(Some(&db.url), &dir.0, &["insights", "--customer", "acme"]);
    assert!(output.status.success(), "stderr: {}", stderr(&output));
    let text = stdout(&output);
    assert!(text.contains("budget_alert"), "{text}");
    assert!(text.contains("customer 80%"), "{text}");
    assert!(text.contains("idle_subscription"), "{text}");

    let output = temctl(
        Some(&db.url),
        &dir.0,
        &["insights", "--kind", "budget_alert", "--json"],
    );
    assert!(output.status.success(), "stderr: {}", stderr(&output));
    let rows: Vec<Value> = stdout(&output)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["customer"], "acme");
    assert_eq!(rows[0]["cycle"], "2025-01-01");
    assert_eq!(rows[0]["detail"]["threshold"], 80);

    let output = temctl(Some(&db.url), &dir.0, &["insights", "--kind", "budget"]);
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("unknown insight kind"),
        "{}",
        stderr(&output)
    );
}
