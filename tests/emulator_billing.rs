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
use tem_tests::stack::{deploy, sent_task, yesterday};

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

#[tokio::test(flavor = "multi_thread")]
async fn a_closed_cycle_from_the_console_is_finalised_and_its_documents_and_specification_written_to_the_bucket_with_their_hashes(
) {
    let stack = deploy().await;
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
    let objects = stack.deployment.objects("invoices/").await.unwrap();
    assert_eq!(
        objects,
        documents
            .iter()
            .map(|d| (d.1.clone(), d.3))
            .collect::<Vec<_>>(),
        "the recorded objects are in the bucket"
    );
}
