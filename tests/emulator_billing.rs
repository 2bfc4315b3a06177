//! The whole billing path in the emulator: a schedule tick syncs a carrier,
//! the export is imported through its S3 notification, and the import's
//! DispatchTotals runs CalculateTotals, BackupTotals, BillingInsight and
//! GenerateInvoice in that order; the sync task completes only after the
//! last of them.

use std::time::Duration;

use chrono::{DateTime, NaiveDate, Utc};
use tem_shared::cdr::cycle_of;
use tem_shared::tasks::TaskStatus;
use tem_tests::db::insert_business_customer;
use tem_tests::stack::{deploy, sent_task, yesterday, TestStack};

const TIMEOUT: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread")]
async fn a_synced_export_is_totalled_insighted_and_invoiced_before_its_task_completes() {
    let stack = deploy().await;
    let pool = &stack.db.pool;
    let period = yesterday();
    let acme = insert_business_customer(pool).await;
    // The simulator's t_mobile export has 20 calls from +31612340000..19 of
    // 30+i seconds; Acme has the first five numbers and one idle line.
    for number in (0..5)
        .map(|i| format!("+3161234{i:04}"))
        .chain(["+31612349999".to_string()])
    {
        sqlx::query("INSERT INTO subscription (customer_id, provider, identifier) VALUES ($1, 't_mobile', $2)")
            .bind(acme)
            .bind(number)
            .execute(pool)
            .await
            .unwrap();
    }
    let profile = stack
        .profile("t_mobile", true, &period.to_string(), None)
        .await;

    let summary = stack.schedule_tick("tick-billing").await;
    let task = stack
        .finished_task(&sent_task(&summary, profile), TIMEOUT)
        .await;
    assert_eq!(
        (task.status, task.outstanding),
        (TaskStatus::Completed, 0),
        "{task:?}"
    );
    let task_done = task.finished_at.expect("a finished task has a time");

    // The calls start at 00:00..00:19 +01:00 on the period's day.
    let first_call: DateTime<Utc> = format!("{period}T00:00:00+01:00").parse().unwrap();
    let cycle: NaiveDate = cycle_of(first_call, 1, chrono_tz::Europe::Amsterdam);

    // CalculateTotals: 5 calls of 30..34 s, each billed one minute at 0.10.
    let (count, rated, calculated_at): (i64, i64, DateTime<Utc>) = sqlx::query_as(
        "SELECT cdr_count, rated_cost_micros, calculated_at FROM totals WHERE customer_id = $1 AND cycle = $2",
    )
    .bind(acme)
    .bind(cycle)
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!((count, rated), (5, 500_000));

    // BackupTotals: version 1, caused by the import.
    let (version, cause, recorded_at): (i32, String, DateTime<Utc>) = sqlx::query_as(
        "SELECT version, cause, recorded_at FROM totals_history WHERE customer_id = $1 AND cycle = $2",
    )
    .bind(acme)
    .bind(cycle)
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!((version, cause.as_str()), (1, "import"));

    // BillingInsight: the idle line, and the other 15 calls without a customer.
    let insights: Vec<(String, String, DateTime<Utc>)> = sqlx::query_as(
        "SELECT kind, subject, detected_at FROM billing_insight WHERE customer_id = $1 AND cycle = $2 ORDER BY kind, subject",
    )
    .bind(acme)
    .bind(cycle)
    .fetch_all(pool)
    .await
    .unwrap();
    let kinds: Vec<(&str, &str)> = insights
        .iter()
        .map(|(k, s, _)| (k.as_str(), s.as_str()))
        .collect();
    assert!(
        kinds.contains(&("idle_subscription", "+31612349999")),
        "{kinds:?}"
    );
    assert!(
        kinds.contains(&("unassigned_cdrs", "t_mobile")),
        "{kinds:?}"
    );

    // GenerateInvoice: a draft of the open cycle, rated cost plus 6 line fees.
    let (status, invoice_rated, fees, total, lines_sum, invoiced_at): (
        String,
        i64,
        i64,
        i64,
        i64,
        DateTime<Utc>,
    ) = sqlx::query_as(
        "SELECT i.status, i.rated_cost_micros, i.fees_micros, i.total_micros,
                (SELECT sum(amount_micros)::bigint FROM invoice_line l WHERE l.invoice_id = i.id), i.updated_at
         FROM invoice i WHERE customer_id = $1 AND cycle = $2",
    )
    .bind(acme)
    .bind(cycle)
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(status, "draft");
    assert_eq!(
        (invoice_rated, fees, total, lines_sum),
        (500_000, 15_000_000, 15_500_000, 15_500_000)
    );

    // In order, and the task finished after the last step.
    let detected_at = insights.iter().map(|(_, _, at)| *at).max().unwrap();
    assert!(calculated_at <= recorded_at, "totals before their backup");
    assert!(recorded_at <= detected_at, "backup before the insights");
    assert!(detected_at <= invoiced_at, "insights before the invoice");
    assert!(
        invoiced_at <= task_done,
        "the task completes after the invoice ({invoiced_at} > {task_done})"
    );
    stack.finish().await.unwrap();
}

/// Console-started cycles on one deployed stack (a deploy costs more than
/// the checks): the closed cycle's invoice, document and chargeback, then
/// the budget alerts and a bill shock through the alert topic.
#[tokio::test(flavor = "multi_thread")]
async fn console_cycles_finalise_and_render_invoices_and_alert_budget_levels_and_bill_shock_through_sns(
) {
    let stack = deploy().await;
    a_closed_cycle_from_the_console_is_finalised_and_its_ubl_written_to_the_bucket_with_its_hash(
        &stack,
    )
    .await;
    let queue_url =
        a_budget_crossing_80_then_100_then_corrected_under_80_sends_exactly_two_alerts_and_one_resolution(
            &stack,
        )
        .await;
    an_imported_file_with_roaming_data_over_the_limit_sends_a_bill_shock_with_the_newest_cdr_time(
        &stack, &queue_url,
    )
    .await;
    the_maintenance_chain_from_the_console_archives_the_invoiced_month_past_its_retention(&stack)
        .await;
    stack.finish().await.unwrap();
}

/// The deployed maintenance function, started from the console for a day
/// 27 months after March 2025: its first step runs in the invocation, the
/// rest on its own queue; the invoiced month goes to archive/ and its
/// CDRs leave the database, and the run is recorded finished.
async fn the_maintenance_chain_from_the_console_archives_the_invoiced_month_past_its_retention(
    stack: &TestStack,
) {
    let pool = &stack.db.pool;
    let acme: i64 = sqlx::query_scalar(
        "SELECT customer_id FROM call_detail_record WHERE external_id = 'c1' AND provider = 't_mobile'",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    let answer = stack
        .deployment
        .invoke(
            "MaintenanceFunctionName",
            &serde_json::json!({"command": "maintenance", "today": "2027-06-10"}),
        )
        .await
        .unwrap();
    assert_eq!(answer.error, None, "{}", answer.payload);
    let finished: Option<DateTime<Utc>> =
        tem_local::deployment::wait_for("the maintenance run", TIMEOUT, || async {
            let at: Option<DateTime<Utc>> = sqlx::query_scalar(
                "SELECT max(finished_at) FROM maintenance_run WHERE today = '2027-06-10'",
            )
            .fetch_one(pool)
            .await?;
            Ok::<_, anyhow::Error>(at.map(Some))
        })
        .await
        .unwrap();
    assert!(finished.is_some());
    let (state, rows): (String, i64) = sqlx::query_as(
        "SELECT state, cdr_rows FROM cdr_archive WHERE customer_id = $1 AND month = '2025-03-01'",
    )
    .bind(acme)
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!((state.as_str(), rows), ("removed", 1));
    let left: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM call_detail_record WHERE customer_id = $1 AND started_at < '2025-04-01'",
    )
    .bind(acme)
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(left, 0);
    let archived = stack
        .deployment
        .objects(&format!("archive/{acme}/2025-03/"))
        .await
        .unwrap();
    let names: Vec<&str> = archived
        .iter()
        .map(|(k, _)| k.rsplit('/').next().unwrap_or_default())
        .collect();
    for file in ["cdrs.parquet", "cycles.parquet", "manifest.json"] {
        assert!(names.contains(&file), "{file} in {archived:?}");
    }
    let report: serde_json::Value =
        sqlx::query_scalar("SELECT report FROM maintenance_run WHERE today = '2027-06-10'")
            .fetch_one(pool)
            .await
            .unwrap();
    for part in ["partitions", "archive", "housekeeping"] {
        assert!(report.get(part).is_some(), "{part} in {report}");
    }
}

async fn a_closed_cycle_from_the_console_is_finalised_and_its_ubl_written_to_the_bucket_with_its_hash(
    stack: &TestStack,
) {
    let pool = &stack.db.pool;
    let acme = insert_business_customer(pool).await;
    tem_tests::db::insert_billing_details(pool, acme).await;
    sqlx::query("INSERT INTO subscription (customer_id, provider, identifier, active_from) VALUES ($1, 't_mobile', '+31612340000', '2025-01-01')")
        .bind(acme)
        .execute(pool)
        .await
        .unwrap();
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO call_detail_record (provider, external_id, subscription, customer_id, started_at, kind, direction,
            destination, roaming_zone, duration_seconds, volume_bytes, units, provider_cost_micros, import_file_id, source_line)
         VALUES ('t_mobile', 'c1', '+31612340000', $1, '2025-03-10 10:00:00+00', 'voice', 'outgoing', '+31201234567',
                 'home', 90, 0, 0, 0, 1, 1)
         RETURNING id",
    )
    .bind(acme)
    .fetch_one(pool)
    .await
    .unwrap();
    tem_tests::db::mark_imported(pool, &[id]).await;
    // A cost tree: RenderInvoice stores the chargeback and its GL CSV.
    sqlx::query(
        "INSERT INTO cost_node (customer_id, code, name, kind, gl_codes)
         VALUES ($1, 'ops', 'Operations', 'division', '{\"voice\": \"4800\"}')",
    )
    .bind(acme)
    .execute(pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO cost_assignment (customer_id, subscription, valid_from, shares)
         VALUES ($1, '+31612340000', '2025-01-01', '[{\"node\": \"ops\", \"weight\": 100}]')",
    )
    .bind(acme)
    .execute(pool)
    .await
    .unwrap();

    // March 2025 closed long ago: the chain the console starts finalises
    // the invoice, RenderInvoice writes its documents, the UBL and then
    // the PDF, and SpecifyInvoice its usage specification.
    let answer = stack
        .deployment
        .invoke(
            "TotalsFunctionName",
            &serde_json::json!({"customer_id": acme, "cycle": "2025-03-01"}),
        )
        .await
        .unwrap();
    assert_eq!(answer.error, None, "{}", answer.payload);
    let documents: Vec<(String, String, String, i64)> =
        tem_local::deployment::wait_for("the invoice's documents", TIMEOUT, || async {
            let rows: Vec<(String, String, String, i64)> = sqlx::query_as(
                "SELECT i.number, d.key, d.sha256, d.size_bytes
                 FROM invoice_document d JOIN invoice i ON i.id = d.invoice_id
                 WHERE i.customer_id = $1
                 UNION ALL
                 SELECT i.number, s.key, s.sha256, s.size_bytes
                 FROM invoice_specification s JOIN invoice i ON i.id = s.invoice_id
                 WHERE i.customer_id = $1
",
            )
            .bind(acme)
            .fetch_all(pool)
            .await
            .map_err(anyhow::Error::from)?;
            // In S3's order: by the key's bytes.
            let mut rows = rows;
            rows.sort_by(|a, b| a.1.cmp(&b.1));
            Ok::<_, anyhow::Error>((rows.len() == 3).then_some(rows))
        })
        .await
        .unwrap();
    let number = &documents[0].0;
    let keys: Vec<&str> = documents.iter().map(|d| d.1.as_str()).collect();
    assert_eq!(
        keys,
        [
            format!("invoices/{acme}/2025-03-01/{number}-specification.csv.gz"),
            format!("invoices/{acme}/2025-03-01/{number}.pdf"),
            format!("invoices/{acme}/2025-03-01/{number}.xml"),
        ]
    );
    assert!(documents.iter().all(|d| d.2.len() == 64));
    // The same step stored the chargeback and wrote its GL CSV beside it.
    let (gl_key, gl_size, net, rows): (String, i64, i64, i64) =
        tem_local::deployment::wait_for("the chargeback", TIMEOUT, || async {
            sqlx::query_as(
                "SELECT g.key, g.size_bytes, g.net_total_micros,
                        (SELECT count(*) FROM cost_allocation a WHERE a.invoice_id = g.invoice_id)
                 FROM gl_export g JOIN invoice i ON i.id = g.invoice_id WHERE i.customer_id = $1",
            )
            .bind(acme)
            .fetch_optional(pool)
            .await
            .map_err(anyhow::Error::from)
        })
        .await
        .unwrap();
    assert_eq!(
        gl_key,
        format!("invoices/{acme}/2025-03-01/{number}-gl.csv")
    );
    // 90 s billed as two minutes at 0.10, and the monthly fee of 2.50.
    assert_eq!((net, rows), (2_700_000, 2));
    let mut expected: Vec<(String, i64)> = documents.iter().map(|d| (d.1.clone(), d.3)).collect();
    expected.push((gl_key.clone(), gl_size));
    // In S3's order: by the key's bytes.
    expected.sort();
    let objects = stack.deployment.objects("invoices/").await.unwrap();
    assert_eq!(objects, expected, "the recorded objects are in the bucket");
    let csv = stack
        .deployment
        .clients
        .s3
        .get_object()
        .bucket(stack.deployment.output("CdrBucketName"))
        .key(&gl_key)
        .send()
        .await
        .unwrap()
        .body
        .collect()
        .await
        .unwrap()
        .into_bytes();
    let csv = String::from_utf8(csv.to_vec()).unwrap();
    assert!(csv.contains("ops,4800,voice,"), "{csv}");
    assert!(csv.contains("ops,,fee,"), "{csv}");

    // The same cycle once more: its documents and chargeback are stored,
    // so the second RenderInvoice writes and records nothing new.
    let answer = stack
        .deployment
        .invoke(
            "TotalsFunctionName",
            &serde_json::json!({"customer_id": acme, "cycle": "2025-03-01"}),
        )
        .await
        .unwrap();
    assert_eq!(answer.error, None, "{}", answer.payload);
    tem_local::deployment::wait_for("the second RenderInvoice", TIMEOUT, || async {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM step_run WHERE step = 'RenderInvoice' AND outcome = 'completed'",
        )
        .fetch_one(pool)
        .await?;
        Ok::<_, anyhow::Error>((n >= 2).then_some(()))
    })
    .await
    .unwrap();
    let exports: i64 = sqlx::query_scalar("SELECT count(*) FROM gl_export")
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(exports, 1);
    assert_eq!(
        stack.deployment.objects("invoices/").await.unwrap(),
        objects,
        "nothing written again"
    );
}

/// The totals chain of `cycle` started from the console, as an operator
/// would, and waited for: until `published` alerts of the customer are
/// marked published.
async fn run_cycle(stack: &TestStack, customer: i64, published: i64) {
    let answer = stack
        .deployment
        .invoke(
            "TotalsFunctionName",
            &serde_json::json!({"customer_id": customer, "cycle": "2025-03-01"}),
        )
        .await
        .unwrap();
    assert_eq!(answer.error, None, "{}", answer.payload);
    let pool = &stack.db.pool;
    tem_local::deployment::wait_for("the alerts published", TIMEOUT, || async {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM alert_outbox WHERE customer_id = $1 AND published_at IS NOT NULL",
        )
        .bind(customer)
        .fetch_one(pool)
        .await?;
        Ok::<_, anyhow::Error>((n >= published).then_some(()))
    })
    .await
    .unwrap();
}

/// Every message on the queue within `wait` after the last one arrived:
/// (the SNS notification's attributes as name -> value, its message).
async fn received(
    sqs: &aws_sdk_sqs::Client,
    queue_url: &str,
    wait: Duration,
) -> Vec<(
    std::collections::BTreeMap<String, String>,
    serde_json::Value,
)> {
    let mut out = Vec::new();
    let mut quiet_since = std::time::Instant::now();
    while quiet_since.elapsed() < wait {
        let got = sqs
            .receive_message()
            .queue_url(queue_url)
            .max_number_of_messages(10)
            .wait_time_seconds(1)
            .send()
            .await
            .unwrap();
        for message in got.messages() {
            // SNS to SQS without raw delivery: the notification's JSON.
            let note: serde_json::Value =
                serde_json::from_str(message.body().unwrap_or_default()).unwrap();
            let attributes = note["MessageAttributes"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| {
                            (
                                k.clone(),
                                v["Value"].as_str().unwrap_or_default().to_string(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            let body: serde_json::Value =
                serde_json::from_str(note["Message"].as_str().unwrap_or_default()).unwrap();
            out.push((attributes, body));
            sqs.delete_message()
                .queue_url(queue_url)
                .receipt_handle(message.receipt_handle().unwrap_or_default())
                .send()
                .await
                .unwrap();
            quiet_since = std::time::Instant::now();
        }
    }
    out
}

/// Answers the URL of the queue subscribed to the alert topic.
async fn a_budget_crossing_80_then_100_then_corrected_under_80_sends_exactly_two_alerts_and_one_resolution(
    stack: &TestStack,
) -> String {
    let pool = &stack.db.pool;
    // A queue subscribed to the stack's alert topic, as a subscriber would.
    let config = tem_tests::stack::emulator().sdk_config().await;
    let sns = aws_sdk_sns::Client::new(&config);
    let sqs = &stack.deployment.clients.sqs;
    let queue_url = sqs
        .create_queue()
        .queue_name(format!("{}-alerts", stack.deployment.stack.name))
        .send()
        .await
        .unwrap()
        .queue_url()
        .unwrap()
        .to_string();
    let queue_arn = sqs
        .get_queue_attributes()
        .queue_url(&queue_url)
        .attribute_names(aws_sdk_sqs::types::QueueAttributeName::QueueArn)
        .send()
        .await
        .unwrap()
        .attributes()
        .and_then(|a| a.get(&aws_sdk_sqs::types::QueueAttributeName::QueueArn))
        .unwrap()
        .clone();
    sns.subscribe()
        .topic_arn(stack.deployment.output("BudgetAlertTopicArn"))
        .protocol("sqs")
        .endpoint(queue_arn)
        .send()
        .await
        .unwrap();

    // EUR 10 a cycle, alerts at 80, 100 and 150%.
    let text = r#"
customers:
  - {code: budgeted, name: Budgeted, billing_cycle_start_day: 1}
subscriptions:
  - {identifier: "+31655550000", customer: budgeted, provider: t_mobile, active_from: 2025-01-01}
budgets:
  - {customer: budgeted, valid_from: 2025-01-01, amount_micros: 10000000, thresholds: [80, 100, 150]}
"#;
    let parsed = tem_shared::catalog::parse(text, |_| None);
    assert!(parsed.is_valid(), "{:?}", parsed.problems);
    tem_shared::catalog::apply(
        pool,
        &parsed,
        &tem_shared::catalog::ApplyOptions {
            source: "test".into(),
            dry_run: false,
            now: Utc::now(),
            grace: chrono::Duration::days(5),
        },
    )
    .await
    .unwrap();
    let customer: i64 = sqlx::query_scalar("SELECT id FROM customer WHERE code = 'budgeted'")
        .fetch_one(pool)
        .await
        .unwrap();
    let cdr = |external: &'static str, cost: i64| async move {
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO call_detail_record (provider, external_id, subscription, customer_id, started_at, kind, direction,
                destination, roaming_zone, duration_seconds, volume_bytes, units, provider_cost_micros, import_file_id, source_line)
             VALUES ('t_mobile', $1, '+31655550000', $2, '2025-03-10 10:00:00+00', 'voice', 'outgoing', '+31201234567',
                     'home', 60, 0, 0, $3, 1, 1)
             RETURNING id",
        )
        .bind(external)
        .bind(customer)
        .bind(cost)
        .fetch_one(pool)
        .await
        .unwrap();
        tem_tests::db::mark_imported(pool, &[id]).await;
        id
    };

    // 85%, then 101%, then a correction (one CDR gone, the other lowered):
    // 75%.
    cdr("b1", 8_500_000).await;
    run_cycle(stack, customer, 1).await;
    let late = cdr("b2", 1_600_000).await;
    run_cycle(stack, customer, 2).await;
    sqlx::query("DELETE FROM call_detail_record WHERE id = $1")
        .bind(late)
        .execute(pool)
        .await
        .unwrap();
    sqlx::query(
        "UPDATE call_detail_record SET provider_cost_micros = 7500000 WHERE external_id = 'b1'",
    )
    .execute(pool)
    .await
    .unwrap();
    run_cycle(stack, customer, 3).await;
    // The same totals once more (an operator's repeat): nothing to send.
    let answer = stack
        .deployment
        .invoke(
            "TotalsFunctionName",
            &serde_json::json!({"customer_id": customer, "cycle": "2025-03-01"}),
        )
        .await
        .unwrap();
    assert_eq!(answer.error, None, "{}", answer.payload);

    let messages = received(sqs, &queue_url, Duration::from_secs(2)).await;
    let seen: Vec<(&str, &str, &str, &str, &str)> = messages
        .iter()
        .map(|(a, _)| {
            let get = |k: &str| a.get(k).map(String::as_str).unwrap_or("");
            (
                get("customer"),
                get("level"),
                get("threshold"),
                get("scope"),
                get("kind"),
            )
        })
        .collect();
    assert_eq!(
        seen,
        vec![
            ("budgeted", "alert", "80", "customer", "budget_alert"),
            ("budgeted", "alert", "100", "customer", "budget_alert"),
            ("budgeted", "resolved", "100", "customer", "budget_resolved"),
        ],
        "exactly three messages, in order"
    );
    assert_eq!(messages[2].1["spent_micros"], serde_json::json!(7_500_000));
    assert_eq!(messages[2].1["cycle"], serde_json::json!("2025-03-01"));
    let ids: Vec<String> = sqlx::query_scalar(
        "SELECT id FROM alert_outbox WHERE customer_id = $1 ORDER BY created_at",
    )
    .bind(customer)
    .fetch_all(pool)
    .await
    .unwrap();
    let bodies: Vec<&str> = messages
        .iter()
        .map(|(_, b)| b["alert_id"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(bodies, ids, "each message carries its outbox id");
    queue_url
}

async fn an_imported_file_with_roaming_data_over_the_limit_sends_a_bill_shock_with_the_newest_cdr_time(
    stack: &TestStack,
    queue_url: &str,
) {
    let pool = &stack.db.pool;
    let text = r#"
customers:
  - {code: roamer, name: Roamer, billing_cycle_start_day: 1}
subscriptions:
  - {identifier: "+31655550001", customer: roamer, provider: t_mobile, active_from: 2025-01-01}
alert_rules:
  - {customer: roamer, valid_from: 2020-01-01, bill_shock_limit_micros: 50000000}
"#;
    let parsed = tem_shared::catalog::parse(text, |_| None);
    assert!(parsed.is_valid(), "{:?}", parsed.problems);
    tem_shared::catalog::apply(
        pool,
        &parsed,
        &tem_shared::catalog::ApplyOptions {
            source: "test".into(),
            dry_run: false,
            now: Utc::now(),
            grace: chrono::Duration::days(5),
        },
    )
    .await
    .unwrap();
    // EUR 30 + 30 of data outside the EU within six hours: over EUR 50.
    let csv = "record_id,msisdn,start_time,event_type,direction,called_number,duration_seconds,data_bytes,units,charge_cents,roaming_zone\n\
               R-1,+31655550001,2025-04-02T08:00:00+02:00,DATA,MO,,0,1048576,0,3000,ROW\n\
               R-2,+31655550001,2025-04-02T14:00:00+02:00,DATA,MO,,0,1048576,0,3000,ROW\n";
    stack
        .deployment
        .clients
        .s3
        .put_object()
        .bucket(stack.deployment.output("CdrBucketName"))
        .key("inbox/t_mobile/1/2025-04-02/roaming.csv")
        .body(csv.as_bytes().to_vec().into())
        .send()
        .await
        .unwrap();
    let sqs = &stack.deployment.clients.sqs;
    let mut messages = Vec::new();
    let deadline = std::time::Instant::now() + TIMEOUT;
    while messages.is_empty() && std::time::Instant::now() < deadline {
        messages = received(sqs, queue_url, Duration::from_secs(2)).await;
    }
    let shocks: Vec<_> = messages
        .iter()
        .filter(|(a, _)| a.get("kind").map(String::as_str) == Some("bill_shock"))
        .collect();
    assert_eq!(shocks.len(), 1, "{messages:?}");
    let (attributes, body) = shocks[0];
    assert_eq!(attributes["customer"], "roamer");
    assert_eq!(attributes["subscription"], "+31655550001");
    assert_eq!(attributes["level"], "alert");
    assert_eq!(attributes["newest_cdr_at"], "2025-04-02T12:00:00+00:00");
    assert_eq!(body["amount_micros"], serde_json::json!(60_000_000));
}
