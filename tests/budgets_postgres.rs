//! Budgets and alerts against a real PostgreSQL (issue 19): `budgets` and
//! `alert_rules` as `temctl apply` stores them; the level of a budget kept
//! per cycle by the totals function's BillingInsight step, so a threshold
//! crossed once is alerted once and a correction resolves it once, each
//! alert in the outbox and listed as an insight; the anomaly rule; and the
//! bill-shock rule firing within one import through cdr-import's handler.
//!
//! No alert topic here: alerts stay in `alert_outbox` (the emulator test
//! publishes them to SNS).

use std::sync::Arc;

use chrono::{DateTime, Duration, NaiveDate, Utc};
use serde_json::{json, Value};
use sqlx::PgPool;
use tem_shared::adapters::billing::stores;
use tem_shared::adapters::budgets::PgBudgets;
use tem_shared::adapters::totals::calculate_totals;
use tem_shared::billing::handler::Totals;
use tem_shared::budgets::alerts::AlertOutbox;
use tem_shared::catalog::{self, ApplyOptions, CatalogError};
use tem_shared::command::{Command, ImportCdrFile};
use tem_shared::envelope::{Envelope, Step};
use tem_shared::import::handler::{BillShockAlerts, CdrImport, ObjectSource};
use tem_shared::import::importer::Importer;
use tem_shared::import::source::{MemorySource, RangeRead};
use tem_shared::import::zip::ZipLimits;
use tem_shared::import::LocalRejects;
use tem_shared::runtime::{Delivery, StepHandler};
use tem_tests::db::fresh;

fn date(s: &str) -> NaiveDate {
    s.parse().expect("a test date")
}

fn at(s: &str) -> DateTime<Utc> {
    s.parse().expect("a test time")
}

const MARCH: &str = "2025-03-01";

const CUSTOMER: &str = r#"
customers:
  - {code: acme, name: Acme, billing_cycle_start_day: 1}
subscriptions:
  - {identifier: "+31611111111", customer: acme, provider: routit, active_from: 2025-01-01}
  - {identifier: "+31622222222", customer: acme, provider: routit, active_from: 2025-01-01}
cost_centres:
  - {customer: acme, code: ops, name: Operations, kind: division}
  - {customer: acme, code: field, name: Field, kind: cost_centre, parent: ops}
cost_assignments:
  - {customer: acme, subscription: "+31611111111", valid_from: 2025-01-01, to: field}
"#;

/// EUR 10 per cycle for the customer, EUR 4 for the field cost centre.
const BUDGETS: &str = r#"
budgets:
  - customer: acme
    valid_from: 2025-01-01
    amount_micros: 10000000
    thresholds: [80, 100, 150]
  - {customer: acme, valid_from: 2025-01-01, amount_micros: 4000000, thresholds: [100], cost_centre: field}
alert_rules:
  - {customer: acme, valid_from: 2025-01-01, bill_shock_limit_micros: 50000000}
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

async fn customer_id(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT id FROM customer WHERE code = 'acme'")
        .fetch_one(pool)
        .await
        .expect("the customer was applied")
}

/// One home voice CDR of `subscription` costing `cost` micro-units.
async fn usage(pool: &PgPool, customer: i64, subscription: &str, cost: i64, external: &str) -> i64 {
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO call_detail_record (provider, external_id, subscription, customer_id, started_at, kind, direction,
            destination, roaming_zone, duration_seconds, volume_bytes, units, provider_cost_micros, import_file_id, source_line)
         VALUES ('routit', $1, $2, $3, '2025-03-10 10:00:00+00', 'voice', 'outgoing', '+31201234567', 'home',
                 60, 0, 0, $4, 1, 1)
         RETURNING id",
    )
    .bind(external)
    .bind(subscription)
    .bind(customer)
    .bind(cost)
    .fetch_one(pool)
    .await
    .expect("insert a CDR");
    tem_tests::db::mark_imported(pool, &[id]).await;
    id
}

/// CalculateTotals, then the BillingInsight step as the totals function
/// runs it.
async fn calculate_and_evaluate(pool: &PgPool, customer: i64, cycle: &str) {
    calculate_totals(pool, customer, date(cycle))
        .await
        .expect("totals");
    let handler = Totals::new(stores(pool.clone()), Duration::days(5));
    let message = Envelope::root(
        format!("insight-{}", uuid::Uuid::new_v4().simple()),
        Step::BillingInsight,
        json!({"customer_id": customer, "cycle": cycle, "cause": "import"}),
        vec![],
        None,
        Utc::now(),
    );
    handler
        .handle(
            &message,
            Delivery {
                receive_count: 1,
                deadline: Utc::now() + Duration::minutes(5),
            },
        )
        .await
        .expect("BillingInsight succeeds");
}

/// (kind, scope, threshold) of every outbox row, oldest first.
async fn outbox(pool: &PgPool) -> Vec<(String, String, String)> {
    sqlx::query_as(
        "SELECT kind, coalesce(attributes->>'scope', ''), coalesce(attributes->>'threshold', '')
         FROM alert_outbox ORDER BY created_at, id",
    )
    .fetch_all(pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn budgets_and_alert_rules_apply_once_and_a_dry_run_writes_nothing() {
    let db = fresh().await;
    apply_with(&db.pool, CUSTOMER, false).await.unwrap();
    // March has totals, February none.
    let customer = customer_id(&db.pool).await;
    usage(&db.pool, customer, "+31611111111", 1_000_000, "t").await;
    calculate_totals(&db.pool, customer, date(MARCH))
        .await
        .unwrap();
    let dry = apply_with(&db.pool, BUDGETS, true).await.unwrap();
    assert_eq!(dry.summary.created, 3, "{:#?}", dry.changes);
    let count = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT (SELECT count(*) FROM budget) + (SELECT count(*) FROM alert_rule)",
        )
        .fetch_one(&db.pool)
        .await
        .unwrap()
    };
    assert_eq!(count().await, 0, "a dry run writes nothing");
    let first = apply_with(&db.pool, BUDGETS, false).await.unwrap();
    assert_eq!(first.summary.created, 3);
    assert_eq!(count().await, 3);
    // The open cycle with totals is calculated again, so the budgets
    // apply now.
    let rerates: Vec<(String, NaiveDate, String)> = first
        .follow_ups
        .iter()
        .filter_map(|f| match f {
            catalog::FollowUp::Rerate {
                customer,
                cycle,
                reason,
                ..
            } => Some((customer.clone(), *cycle, reason.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(
        rerates,
        vec![(
            "acme".to_string(),
            date(MARCH),
            "its budgets or alert rules changed".to_string()
        )]
    );
    let again = apply_with(&db.pool, BUDGETS, false).await.unwrap();
    assert_eq!(again.summary.changed, 0, "{:#?}", again.changes);
    assert!(again.follow_ups.is_empty(), "{:?}", again.follow_ups);

    let raised = BUDGETS.replace("thresholds: [80, 100, 150]", "thresholds: [90, 100]");
    let changed = apply_with(&db.pool, &raised, false).await.unwrap();
    let updated: Vec<(String, String)> = changed
        .changes
        .iter()
        .filter(|c| c.is_change())
        .map(|c| (c.key.clone(), format!("{:?}", c.fields)))
        .collect();
    assert_eq!(updated.len(), 1, "{updated:?}");
    assert_eq!(updated[0].0, "acme from 2025-01-01");
    assert!(updated[0].1.contains("80,100,150"), "{updated:?}");
    let stored: Vec<i32> =
        sqlx::query_scalar("SELECT thresholds FROM budget WHERE scope = 'customer'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(stored, vec![90, 100]);
}

#[tokio::test]
async fn a_cost_centre_budget_naming_no_node_of_the_tree_is_refused_with_its_line() {
    let db = fresh().await;
    apply_with(&db.pool, CUSTOMER, false).await.unwrap();
    let text = "budgets:\n  - customer: acme\n    valid_from: 2025-01-01\n    amount_micros: 1\n    thresholds: [100]\n    cost_centre: feild\n";
    let problems = match apply_with(&db.pool, text, false).await {
        Err(CatalogError::Invalid(problems)) => {
            problems.iter().map(|p| p.with_line()).collect::<Vec<_>>()
        }
        other => panic!("expected problems, got {other:?}"),
    };
    assert_eq!(
        problems,
        vec![
            r#"budgets[0].cost_centre: customer "acme" has no cost centre "feild"; add it under cost_centres or budget another node (line 2)"#
        ]
    );
}

#[tokio::test]
async fn crossing_80_then_100_then_a_correction_under_80_records_two_alerts_and_one_resolution() {
    let db = fresh().await;
    apply_with(&db.pool, &format!("{CUSTOMER}{BUDGETS}"), false)
        .await
        .unwrap();
    let customer = customer_id(&db.pool).await;

    // EUR 8.50 of EUR 10: 85%, and EUR 8.50 on field's EUR 4 (212%: one
    // alert at its only threshold).
    usage(&db.pool, customer, "+31611111111", 8_500_000, "a").await;
    calculate_and_evaluate(&db.pool, customer, MARCH).await;
    assert_eq!(
        outbox(&db.pool).await,
        vec![
            ("budget_alert".into(), "cost_centre".into(), "100".into()),
            ("budget_alert".into(), "customer".into(), "80".into()),
        ]
    );
    // The same totals evaluated again (a retried step) send nothing.
    calculate_and_evaluate(&db.pool, customer, MARCH).await;
    assert_eq!(outbox(&db.pool).await.len(), 2);

    // EUR 10.10: 101%. The other subscription has no assignment: field
    // stays where it was.
    let late = usage(&db.pool, customer, "+31622222222", 1_600_000, "b").await;
    calculate_and_evaluate(&db.pool, customer, MARCH).await;
    // A correction: the CDR is removed (the delete trigger marks the
    // cycle) and a second one lowers the first: EUR 7.50, under 80%.
    sqlx::query("DELETE FROM call_detail_record WHERE id = $1")
        .bind(late)
        .execute(&db.pool)
        .await
        .unwrap();
    sqlx::query(
        "UPDATE call_detail_record SET provider_cost_micros = 7500000 WHERE external_id = 'a'",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    calculate_and_evaluate(&db.pool, customer, MARCH).await;
    calculate_and_evaluate(&db.pool, customer, MARCH).await;

    let customer_events: Vec<(String, String)> = outbox(&db.pool)
        .await
        .into_iter()
        .filter(|(_, scope, _)| scope == "customer")
        .map(|(kind, _, threshold)| (kind, threshold))
        .collect();
    assert_eq!(
        customer_events,
        vec![
            ("budget_alert".into(), "80".into()),
            ("budget_alert".into(), "100".into()),
            ("budget_resolved".into(), "100".into()),
        ]
    );
    let resolved: Value = sqlx::query_scalar(
        "SELECT body FROM alert_outbox WHERE kind = 'budget_resolved' AND attributes->>'scope' = 'customer'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(resolved["spent_micros"], json!(7_500_000));
    assert_eq!(resolved["level"], Value::Null);
    assert_eq!(resolved["customer"], json!("acme"));

    let level: Option<i32> = sqlx::query_scalar(
        "SELECT level FROM budget_level WHERE customer_id = $1 AND scope = 'customer'",
    )
    .bind(customer)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(level, None);

    // Each alert is an insight of the cycle, kept by BillingInsight's own
    // replacement of its kinds.
    let insights: Vec<(String, String)> = sqlx::query_as(
        "SELECT kind, subject FROM billing_insight WHERE kind LIKE 'budget%' ORDER BY kind, subject",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        insights,
        vec![
            ("budget_alert".into(), "cost_centre field 100%".into()),
            ("budget_alert".into(), "customer 100%".into()),
            ("budget_alert".into(), "customer 80%".into()),
            ("budget_resolved".into(), "customer 100%".into()),
        ]
    );

    // The outbox hands each row out once while it is claimed, oldest first.
    let store = PgBudgets::new(db.pool.clone());
    let claimed = store.claim(customer, 50).await.unwrap();
    // Field's EUR 7.50 is still over its EUR 4: no resolution there.
    assert_eq!(claimed.len(), 4);
    assert_eq!(claimed[1].attributes["threshold"], "80");
    assert_eq!(
        claimed[3].kind,
        tem_shared::budgets::alerts::AlertKind::BudgetResolved
    );
    assert!(store.claim(customer, 50).await.unwrap().is_empty());
    store.published(&claimed[0].id, "m-1").await.unwrap();
    let pending: i64 =
        sqlx::query_scalar("SELECT count(*) FROM alert_outbox WHERE published_at IS NULL")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(pending, 3);
}

#[tokio::test]
async fn a_subscription_over_three_times_its_usual_is_an_anomaly_alerted_once() {
    let db = fresh().await;
    let rules = "alert_rules:\n  - {customer: acme, valid_from: 2024-01-01, anomaly_k_percent: 300, anomaly_floor_micros: 1000000}\n";
    apply_with(&db.pool, &format!("{CUSTOMER}{rules}"), false)
        .await
        .unwrap();
    let customer = customer_id(&db.pool).await;
    for (cycle, cost) in [
        ("2024-12-01", 2_000_000),
        ("2025-01-01", 1_000_000),
        ("2025-02-01", 3_000_000),
    ] {
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO call_detail_record (provider, external_id, subscription, customer_id, started_at, kind, direction,
                destination, roaming_zone, duration_seconds, volume_bytes, units, provider_cost_micros, import_file_id, source_line)
             VALUES ('routit', $1, '+31611111111', $2, ($1::date + interval '10 days')::timestamptz, 'voice', 'outgoing',
                     '+31201234567', 'home', 60, 0, 0, $3, 1, 1) RETURNING id",
        )
        .bind(cycle)
        .bind(customer)
        .bind(cost)
        .fetch_one(&db.pool)
        .await
        .unwrap();
        tem_tests::db::mark_imported(&db.pool, &[id]).await;
        calculate_totals(&db.pool, customer, date(cycle))
            .await
            .unwrap();
    }
    // The median of 2, 1 and 3 is 2: the limit is 6. EUR 6 is not over it.
    usage(&db.pool, customer, "+31611111111", 6_000_000, "m").await;
    calculate_and_evaluate(&db.pool, customer, MARCH).await;
    assert!(outbox(&db.pool).await.is_empty());
    sqlx::query(
        "UPDATE call_detail_record SET provider_cost_micros = 6000001 WHERE external_id = 'm'",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    calculate_and_evaluate(&db.pool, customer, MARCH).await;
    calculate_and_evaluate(&db.pool, customer, MARCH).await;
    assert_eq!(
        outbox(&db.pool).await,
        vec![("anomaly".into(), String::new(), String::new())]
    );
    let detail: Value = sqlx::query_scalar(
        "SELECT detail FROM billing_insight WHERE kind = 'anomaly' AND subject = '+31611111111'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        detail,
        json!({"subscription": "+31611111111", "cost_micros": 6_000_001, "median_micros": 2_000_000, "limit_micros": 6_000_000})
    );
}

struct Memory(Vec<u8>);

impl ObjectSource for Memory {
    fn open(&self, _bucket: &str, key: &str) -> Arc<dyn RangeRead> {
        Arc::new(MemorySource::named(key, self.0.clone()))
    }
}

/// An ImportCdrFile of `bytes` through cdr-import's handler, with the
/// bill-shock rule on PostgreSQL and no topic.
async fn import(pool: &PgPool, key: &str, bytes: Vec<u8>) {
    let rejects =
        std::env::temp_dir().join(format!("tem-budgets-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&rejects).unwrap();
    let budgets = Arc::new(PgBudgets::new(pool.clone()));
    let handler = CdrImport::new(
        Importer::new(
            pool.clone(),
            Arc::new(LocalRejects::new(&rejects)),
            ZipLimits::default(),
        ),
        Arc::new(Memory(bytes)),
        pool.clone(),
    )
    .with_bill_shock(BillShockAlerts {
        store: budgets.clone(),
        outbox: budgets,
        publisher: None,
    });
    let message = Envelope::start(
        format!("import-{key}"),
        Command::ImportCdrFile(ImportCdrFile {
            bucket: "test".into(),
            key: key.into(),
            etag: None,
            size: None,
            provider: None,
            profile_id: None,
            error: None,
        }),
        vec![],
        None,
        Utc::now(),
    );
    handler
        .handle(
            &message,
            Delivery {
                receive_count: 1,
                deadline: Utc::now() + Duration::minutes(5),
            },
        )
        .await
        .expect("the import succeeds");
    let _ = std::fs::remove_dir_all(&rejects);
}

fn routit(rows: &[&str]) -> Vec<u8> {
    format!(
        "Datum;Tijd;Abonnee;Bestemming;Type;Richting;Duur;Volume;Kosten;Zone;Referentie\n{}\n",
        rows.join("\n")
    )
    .into_bytes()
}

#[tokio::test]
async fn roaming_data_outside_the_eu_over_the_limit_within_a_day_alerts_within_one_import_once() {
    let db = fresh().await;
    apply_with(&db.pool, &format!("{CUSTOMER}{BUDGETS}"), false)
        .await
        .unwrap();
    // EUR 30 + 25 of world data within 14 hours (limit EUR 50), EU data
    // that does not count, and a later CDR of another kind.
    import(
        &db.pool,
        "inbox/routit/1/2025-03-11/a.csv",
        routit(&[
            "10-03-2025;08:00:00;0031611111111;;Data;Uitgaand;;1024;30,00;WERELD;S-1",
            "10-03-2025;22:00:00;0031611111111;;Data;Uitgaand;;1024;25,00;WERELD;S-2",
            "10-03-2025;23:00:00;0031611111111;;Data;Uitgaand;;1024;90,00;EU;S-3",
            "11-03-2025;06:00:00;0031622222222;;Data;Uitgaand;;1024;10,00;WERELD;S-4",
        ]),
    )
    .await;
    let rows: Vec<(String, Value, Value)> =
        sqlx::query_as("SELECT kind, attributes, body FROM alert_outbox")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
    let (kind, attributes, body) = &rows[0];
    assert_eq!(kind, "bill_shock");
    assert_eq!(attributes["subscription"], json!("+31611111111"));
    assert_eq!(attributes["level"], json!("alert"));
    assert_eq!(attributes["threshold"], json!("50000000"));
    assert_eq!(body["amount_micros"], json!(55_000_000));
    // 22:00 in Amsterdam is 21:00 UTC: the newest roaming CDR it saw.
    assert_eq!(
        attributes["newest_cdr_at"],
        json!("2025-03-10T21:00:00+00:00")
    );
    let insight: (NaiveDate, String) =
        sqlx::query_as("SELECT cycle, subject FROM billing_insight WHERE kind = 'bill_shock'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(insight, (date(MARCH), "+31611111111".to_string()));

    // A late file of the same day adds to the same episode: no new alert.
    import(
        &db.pool,
        "inbox/routit/1/2025-03-12/b.csv",
        routit(&["10-03-2025;12:00:00;0031611111111;;Data;Uitgaand;;1024;5,00;WERELD;S-5"]),
    )
    .await;
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM alert_outbox")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(count, 1);
}

/// A publisher that fails until told otherwise, recording what it sent:
/// SNS unavailable, then back (the port's double; the emulator test
/// publishes through the real one).
#[derive(Default)]
struct Flaky {
    up: std::sync::atomic::AtomicBool,
    sent: std::sync::Mutex<Vec<String>>,
}

#[async_trait::async_trait]
impl tem_shared::budgets::alerts::AlertPublisher for Flaky {
    async fn publish(
        &self,
        alert: &tem_shared::budgets::alerts::Alert,
    ) -> Result<String, tem_shared::budgets::alerts::PublishError> {
        if !self.up.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(tem_shared::budgets::alerts::PublishError {
                id: alert.id.clone(),
                reason: "sns unavailable".into(),
                retryable: true,
            });
        }
        self.sent.lock().unwrap().push(alert.id.clone());
        Ok(format!("m-{}", alert.id))
    }
}

#[tokio::test]
async fn an_sns_outage_does_not_hold_up_billing_insight_and_the_hourly_sweep_publishes_what_waited()
{
    let db = fresh().await;
    apply_with(&db.pool, &format!("{CUSTOMER}{BUDGETS}"), false)
        .await
        .unwrap();
    let customer = customer_id(&db.pool).await;
    usage(&db.pool, customer, "+31622222222", 8_500_000, "o").await;
    calculate_totals(&db.pool, customer, date(MARCH))
        .await
        .unwrap();
    let publisher = Arc::new(Flaky::default());
    let handler =
        Totals::new(stores(db.pool.clone()), Duration::days(5)).with_alerts(publisher.clone());
    let message = Envelope::root(
        "insight-outage",
        Step::BillingInsight,
        json!({"customer_id": customer, "cycle": MARCH, "cause": "import"}),
        vec![],
        None,
        Utc::now(),
    );
    handler
        .handle(
            &message,
            Delivery {
                receive_count: 1,
                deadline: Utc::now() + Duration::minutes(5),
            },
        )
        .await
        .expect("BillingInsight succeeds while SNS is down");
    let pending = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM alert_outbox WHERE published_at IS NULL")
            .fetch_one(&db.pool)
            .await
            .unwrap()
    };
    assert_eq!(pending().await, 1);
    assert!(publisher.sent.lock().unwrap().is_empty());

    // The claim of the failed attempt lapses; the sweep then sends it once.
    sqlx::query("UPDATE alert_outbox SET claimed_until = now() - interval '1 second'")
        .execute(&db.pool)
        .await
        .unwrap();
    publisher
        .up
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let outbox = PgBudgets::new(db.pool.clone());
    let sent = tem_shared::budgets::alerts::publish_all_pending(&outbox, publisher.as_ref()).await;
    assert_eq!(sent, 1);
    assert_eq!(pending().await, 0);
    assert_eq!(
        tem_shared::budgets::alerts::publish_all_pending(&outbox, publisher.as_ref()).await,
        0,
        "published once"
    );
    let message_id: String = sqlx::query_scalar("SELECT message_id FROM alert_outbox")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(
        message_id,
        format!("m-{}", publisher.sent.lock().unwrap()[0])
    );
}
