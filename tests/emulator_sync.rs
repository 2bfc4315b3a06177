//! The master sync and chain execution, end to end: the SAM template
//! deployed into the emulator, the real function binaries on their queues,
//! PostgreSQL, and the carrier simulator.

use std::time::Duration;

use chrono::{Datelike, Utc};
use serde_json::{json, Value};
use tem_local::deployment::wait_for;
use tem_shared::envelope::{Envelope, Step};
use tem_shared::ports::TaskStore;
use tem_shared::tasks::{NewTask, TaskStatus};
use tem_tests::db::unmigrated;
use tem_tests::stack::{deploy, deploy_onto, sent_task, yesterday};

/// A bound on waiting, not a measure: a healthy chain takes seconds, but
/// on a 2-core machine under load 9 (other builds beside the suite) one
/// sync's chain once took over 90 s; a timeout only fails a test, so it is
/// generous.
const TIMEOUT: Duration = Duration::from_secs(180);

fn ids(list: &Value) -> Vec<i64> {
    let mut ids: Vec<i64> = list
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["profile_id"].as_i64())
        .collect();
    ids.sort();
    ids
}

#[tokio::test(flavor = "multi_thread")]
async fn the_template_deploys_every_function_queue_table_and_the_bucket() {
    let stack = deploy().await;
    let d = &stack.deployment;
    // Every page: the emulator holds the functions of other tests' stacks too.
    let functions: Vec<String> = d
        .clients
        .lambda
        .list_functions()
        .into_paginator()
        .items()
        .send()
        .collect::<Result<Vec<_>, _>>()
        .await
        .unwrap()
        .iter()
        .filter_map(|f| f.function_name().map(str::to_string))
        .collect();
    for key in [
        "SyncManagerFunctionName",
        "CdrImportFunctionName",
        "TotalsFunctionName",
        "OpsFunctionName",
        "OpsWatchFunctionName",
        "KpnSp16SyncFunctionName",
        "KpnEenSyncFunctionName",
        "VodafoneSyncFunctionName",
        "TMobileSyncFunctionName",
        "RoutitSyncFunctionName",
        "YielderSyncFunctionName",
        "TelfortSyncFunctionName",
    ] {
        assert!(
            functions.contains(&d.output(key).to_string()),
            "{key} not deployed"
        );
    }
    for queue in [
        "RoutitQueueUrl",
        "RoutitDlqUrl",
        "ImportQueueUrl",
        "ImportDlqUrl",
    ] {
        assert!(d.output(queue).starts_with("http"), "{queue}");
    }
    assert!(d.objects("inbox/").await.unwrap().is_empty());
    // The stack is deployed with ScheduleEnabled=false: every rule exists,
    // disabled, so no schedule fires in the emulator.
    let mut rules: Vec<String> = serde_json::from_str::<Value>(
        &d.stack
            .aws(&[
                "events",
                "list-rules",
                "--name-prefix",
                &d.stack.name,
                "--output",
                "json",
            ])
            .unwrap(),
    )
    .unwrap()["Rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["Name"].as_str().unwrap().to_string())
        .collect();
    rules.sort();
    assert_eq!(
        rules.len(),
        4,
        "the master sync, the invoice sweep, the ops watch and the daily maintenance: {rules:?}"
    );
    for rule in &rules {
        let described: Value = serde_json::from_str(
            &d.stack
                .aws(&[
                    "events",
                    "describe-rule",
                    "--name",
                    rule,
                    "--output",
                    "json",
                ])
                .unwrap(),
        )
        .unwrap();
        assert_eq!(described["State"], "DISABLED", "rule {rule}: {described}");
    }
    stack.finish().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_schedule_tick_sends_each_active_profile_exactly_one_sync_profile() {
    let stack = deploy().await;
    let period = yesterday();
    let start = period.to_string();
    let routit = stack.profile("routit", true, &start, None).await;
    let t_mobile = stack.profile("t_mobile", true, &start, None).await;
    let inactive = stack.profile("vodafone", false, &start, None).await;
    let busy = stack.profile("kpn_een", true, &start, None).await;
    let unknown = stack.profile("ben", true, &start, None).await;
    // kpn_een's previous task is still running.
    let tasks = stack.deployment.tasks();
    let running = NewTask {
        task_id: "earlier-run".into(),
        profile_id: busy,
        provider: "kpn_een".into(),
        period,
        created_at: Utc::now(),
    };
    tasks.create(&running, None).await.unwrap();
    tasks.mark_running("earlier-run", Utc::now()).await.unwrap();

    let summary = stack.schedule_tick("tick-1").await;

    assert_eq!(ids(&summary["sent"]), vec![routit, t_mobile], "{summary}");
    assert_eq!(ids(&summary["skipped"]), vec![busy], "{summary}");
    assert!(summary["skipped"][0]["reason"]
        .as_str()
        .unwrap()
        .contains("earlier-run"));
    assert_eq!(ids(&summary["failures"]), vec![unknown], "{summary}");
    assert!(summary["failures"][0]["reason"]
        .as_str()
        .unwrap()
        .contains("unknown provider"));
    for profile in [routit, t_mobile] {
        let task = stack
            .finished_task(&sent_task(&summary, profile), TIMEOUT)
            .await;
        assert_eq!(task.status, TaskStatus::Completed, "{task:?}");
        assert_eq!(stack.watermark(profile).await, Some(period));
    }
    // Exactly one export per active profile, none for the others.
    assert_eq!(stack.sim_hits("t_mobile:export").await, 1);
    assert_eq!(stack.sim_hits("routit:request").await, 1);
    assert_eq!(stack.sim_hits("routit:download").await, 1);
    assert_eq!(stack.sim_hits("vodafone:export").await, 0);
    assert_eq!(stack.sim_hits("kpn_een:export").await, 0);
    let objects = stack.deployment.objects("inbox/").await.unwrap();
    assert_eq!(objects.len(), 2, "{objects:?}");
    assert!(objects[0]
        .0
        .starts_with(&format!("inbox/routit/{routit}/{period}/")));
    assert_eq!(
        objects[1].0,
        format!("inbox/t_mobile/{t_mobile}/{period}/t_mobile-{period}.zip")
    );
    assert_eq!(stack.watermark(inactive).await, None);

    // The run is recorded, so a missed run can be detected.
    let (seen, sent, skipped, failures): (i32, i32, i32, i32) =
        sqlx::query_as("SELECT profiles_seen, sent, skipped, failures FROM sync_run")
            .fetch_one(&stack.db.pool)
            .await
            .unwrap();
    assert_eq!((seen, sent, skipped, failures), (4, 2, 1, 1));
    stack.finish().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_provider_ends_in_its_dlq_after_the_retries_while_the_others_complete() {
    let stack = deploy().await;
    let start = yesterday().to_string();
    let failing = stack.profile("t_mobile", true, &start, None).await;
    let healthy = stack.profile("kpn_sp16", true, &start, None).await;
    stack
        .sim_behaviour("t_mobile", json!({"fail_with": 503}))
        .await;

    let summary = stack.schedule_tick("tick-fail").await;

    let ok = stack
        .finished_task(&sent_task(&summary, healthy), TIMEOUT)
        .await;
    assert_eq!(ok.status, TaskStatus::Completed);
    let failed = stack
        .finished_task(&sent_task(&summary, failing), TIMEOUT)
        .await;
    assert_eq!(failed.status, TaskStatus::Failed);
    assert!(
        failed.error.as_deref().unwrap().contains("503"),
        "{failed:?}"
    );

    let dead = stack.deployment.drain("TMobileDlqUrl").await.unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}");
    let attributes = &dead[0].attributes;
    assert_eq!(attributes["tem-attempts"], "5");
    assert_eq!(attributes["tem-error-kind"], "retries_exhausted");
    assert!(attributes["tem-error"].contains("503"), "{attributes:?}");
    assert!(attributes["tem-failed-at"]
        .parse::<chrono::DateTime<Utc>>()
        .is_ok());
    assert_eq!(
        Envelope::parse(&dead[0].body).unwrap().step,
        Step::SyncProfile
    );
    assert_eq!(stack.sim_hits("t_mobile:export").await, 5);
    assert_eq!(stack.watermark(failing).await, None);
    let queue_url = stack.deployment.output("TMobileQueueUrl").to_string();
    let queue_name = queue_url.rsplit('/').next().unwrap();
    assert!(
        attributes["tem-source-queue"].ends_with(queue_name),
        "{attributes:?}"
    );
    assert!(!attributes["tem-function"].is_empty());

    // The failure is recorded to be listed and retried, and the task knows
    // which of its messages failed.
    let message_id = Envelope::parse(&dead[0].body).unwrap().id;
    let row: (String, String, i32, Option<String>) = sqlx::query_as(
        "SELECT status, error_kind, attempts, task_id FROM failed_message WHERE id = $1",
    )
    .bind(&message_id)
    .fetch_one(&stack.db.pool)
    .await
    .unwrap();
    assert_eq!(
        row,
        (
            "failed".into(),
            "retries_exhausted".into(),
            5,
            Some(failed.task_id.clone())
        )
    );
    assert_eq!(failed.failed_ids, vec![message_id]);
    stack.finish().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn an_export_copied_or_put_by_hand_with_a_finished_tasks_id_leaves_that_task_as_it_finished()
{
    let stack = deploy().await;
    let start = yesterday().to_string();
    let profile = stack.profile("kpn_sp16", true, &start, None).await;
    let summary = stack.schedule_tick("tick-copies").await;
    let task_id = sent_task(&summary, profile);
    let done = stack.finished_task(&task_id, TIMEOUT).await;
    assert_eq!((done.status, done.outstanding), (TaskStatus::Completed, 0));
    let objects = stack.deployment.objects("inbox/kpn_sp16/").await.unwrap();
    assert_eq!(objects.len(), 1, "{objects:?}");
    let original = &objects[0].0;
    let bucket = stack.deployment.output("CdrBucketName").to_string();
    let s3 = &stack.deployment.clients.s3;

    // A copy within the bucket (to import it again) keeps the metadata.
    let copy = format!("inbox/kpn_sp16/{profile}/{start}/again.zip");
    s3.copy_object()
        .bucket(&bucket)
        .copy_source(format!("{bucket}/{original}"))
        .key(&copy)
        .send()
        .await
        .expect("copy the export");
    let head = s3
        .head_object()
        .bucket(&bucket)
        .key(&copy)
        .send()
        .await
        .unwrap();
    assert_eq!(
        head.metadata().and_then(|m| m.get("tem-task-id")),
        Some(&task_id)
    );
    // An object put by hand naming the finished task, whose import fails.
    let by_hand = format!("inbox/kpn_sp16/{profile}/{start}/by-hand.zip");
    s3.put_object()
        .bucket(&bucket)
        .key(&by_hand)
        .metadata("tem-task-id", &task_id)
        .body(b"not a zip".to_vec().into())
        .send()
        .await
        .expect("put the object by hand");

    for key in [&copy, &by_hand] {
        wait_for(&format!("the import of {key}"), TIMEOUT, || async {
            let status: Option<String> = sqlx::query_scalar(
                "SELECT status FROM import_file WHERE key = $1 AND status <> 'running' LIMIT 1",
            )
            .bind(key)
            .fetch_optional(&stack.db.pool)
            .await?;
            Ok(status)
        })
        .await
        .unwrap();
    }
    let dead = wait_for("the dead letter", TIMEOUT, || async {
        let dead = stack.deployment.drain("ImportDlqUrl").await?;
        Ok((!dead.is_empty()).then_some(dead))
    })
    .await
    .unwrap();
    assert_eq!(dead[0].attributes["tem-error-kind"], "permanent");

    let after = stack.task(&task_id).await.unwrap();
    assert_eq!(after.status, TaskStatus::Completed, "{after:?}");
    assert_eq!(after.outstanding, 0);
    assert_eq!(after.finished_at, done.finished_at);
    assert!(after.failed_ids.is_empty(), "{after:?}");
    // Both imports ran on their own, not as part of the task.
    let adopted: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM step_run WHERE task_id = $1 AND step = 'ImportCdrFile'",
    )
    .bind(&task_id)
    .fetch_one(&stack.db.pool)
    .await
    .unwrap();
    assert_eq!(adopted, 1, "only the original's import counts on the task");
    stack.finish().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn the_routit_chain_requests_polls_until_ready_downloads_and_completes_only_after_the_last_step(
) {
    let stack = deploy().await;
    // The last day of last month: provider-sync also fetches the month's
    // carrier invoice, which the import function then audits.
    let month = yesterday().with_day(1).unwrap() - chrono::Months::new(1);
    let period = yesterday().with_day(1).unwrap() - chrono::Duration::days(1);
    let routit = stack
        .profile("routit", true, &period.to_string(), None)
        .await;
    stack
        .sim_behaviour("routit", json!({"not_ready_polls": 3}))
        .await;

    let summary = stack.schedule_tick("tick-routit").await;
    let task_id = sent_task(&summary, routit);

    // While the export is not ready, the chain is under way: the task runs
    // and nothing has landed.
    wait_for("the first status poll", TIMEOUT, || async {
        Ok((stack.sim_hits("routit:status").await >= 1).then_some(()))
    })
    .await
    .unwrap();
    let midway = stack.task(&task_id).await.unwrap();
    assert_eq!(midway.status, TaskStatus::Running);
    assert_eq!(midway.outstanding, 1);
    assert_eq!(stack.sim_hits("routit:download").await, 0);
    assert!(stack
        .deployment
        .objects("inbox/routit/")
        .await
        .unwrap()
        .is_empty());

    let done = stack.finished_task(&task_id, TIMEOUT).await;
    assert_eq!(done.status, TaskStatus::Completed, "{done:?}");
    assert_eq!(done.outstanding, 0);
    // Request once, 3 x pending + 1 x ready, download once.
    assert_eq!(stack.sim_hits("routit:request").await, 1);
    assert_eq!(stack.sim_hits("routit:status").await, 4);
    assert_eq!(stack.sim_hits("routit:download").await, 1);
    let objects = stack.deployment.objects("inbox/routit/").await.unwrap();
    assert_eq!(objects.len(), 1);
    let key = &objects[0].0;
    assert!(
        key.starts_with(&format!("inbox/routit/{routit}/{period}/rt-")) && key.ends_with(".zip"),
        "{key}"
    );
    assert_eq!(stack.watermark(routit).await, Some(period));

    // Every attempt of the chain is journaled under one trace, and the
    // import continued the download's hand-off of this very object. The
    // task completes inside the import's step, and its journal row is
    // finished just after: wait for that row rather than race it.
    let runs = wait_for("the import's journal outcome", TIMEOUT, || async {
        let runs: Vec<(String, String, Option<String>, Option<String>)> = sqlx::query_as(
            "SELECT step, trace_id, outcome, handoff FROM step_run WHERE task_id = $1 ORDER BY started_at",
        )
        .bind(&task_id)
        .fetch_all(&stack.db.pool)
        .await?;
        let finished = runs
            .iter()
            .any(|r| r.0 == "ImportCdrFile" && r.2.is_some());
        Ok(finished.then_some(runs))
    })
    .await
    .unwrap();
    for step in [
        "SyncProfile",
        "RoutitRequestExport",
        "RoutitPollExport",
        "RoutitDownloadExport",
        "ImportCdrFile",
    ] {
        assert!(
            runs.iter()
                .any(|r| r.0 == step && r.2.as_deref() == Some("completed")),
            "no completed {step} in {runs:?}"
        );
    }
    assert!(runs.iter().all(|r| r.1 == runs[0].1), "one trace: {runs:?}");
    let token = format!("s3://{}/{key}", stack.deployment.output("CdrBucketName"));
    let import = runs
        .iter()
        .find(|r| r.0 == "ImportCdrFile" && r.2.as_deref() == Some("completed"))
        .unwrap();
    assert_eq!(import.3.as_deref(), Some(token.as_str()));

    // The month's carrier invoice was stored and audited: the simulator's
    // 50 subscribers are in no inventory here, so each is billed but not
    // active.
    assert_eq!(stack.sim_hits("routit:carrier-invoice").await, 1);
    let invoice_key = format!("carrier-invoices/routit/{routit}/{month}.csv");
    let findings = wait_for("the carrier invoice's audit", TIMEOUT, || async {
        let rows: Vec<(String, String)> = sqlx::query_as(
            "SELECT i.account, a.kind FROM audit_finding a
             JOIN carrier_invoice i ON i.id = a.carrier_invoice_id WHERE i.file_key = $1",
        )
        .bind(&invoice_key)
        .fetch_all(&stack.db.pool)
        .await?;
        Ok((rows.len() >= 50).then_some(rows))
    })
    .await
    .unwrap();
    assert_eq!(findings.len(), 50);
    assert!(
        findings
            .iter()
            .all(|(account, kind)| account == "SIM-routit" && kind == "billed_not_active"),
        "{findings:?}"
    );
    stack.finish().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn every_message_delivered_twice_gives_the_same_final_state_as_once() {
    let stack = deploy().await;
    let period = yesterday();
    let routit = stack
        .profile("routit", true, &period.to_string(), None)
        .await;
    let t_mobile = stack
        .profile("t_mobile", true, &period.to_string(), None)
        .await;
    let by_hand = stack
        .profile("yielder", false, &period.to_string(), None)
        .await;

    // The schedule's event delivered twice.
    let first = stack.schedule_tick("tick-twice").await;
    let second = stack.schedule_tick("tick-twice").await;
    assert_eq!(
        first["sent"], second["sent"],
        "the same tasks and message ids"
    );

    // A SyncProfile sent twice on purpose to the provider's queue.
    let task = NewTask {
        task_id: "by-hand".into(),
        profile_id: by_hand,
        provider: "yielder".into(),
        period,
        created_at: Utc::now(),
    };
    stack.deployment.tasks().create(&task, None).await.unwrap();
    let envelope = Envelope::root(
        "by-hand-sync",
        Step::SyncProfile,
        json!({"provider": "yielder", "profile_id": by_hand, "period": period}),
        vec![],
        Some("by-hand".into()),
        Utc::now(),
    );
    for _ in 0..2 {
        stack
            .deployment
            .send_raw("YielderQueueUrl", &envelope.to_body())
            .await
            .unwrap();
    }

    for task_id in [
        sent_task(&first, routit),
        sent_task(&first, t_mobile),
        "by-hand".to_string(),
    ] {
        let task = stack.finished_task(&task_id, TIMEOUT).await;
        assert_eq!(
            (task.status, task.outstanding),
            (TaskStatus::Completed, 0),
            "{task:?}"
        );
    }
    // Let any straggling duplicate be processed before counting.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(stack.sim_hits("routit:request").await, 1);
    assert_eq!(stack.sim_hits("routit:download").await, 1);
    assert_eq!(stack.sim_hits("t_mobile:export").await, 1);
    assert_eq!(stack.sim_hits("yielder:export").await, 1);
    assert_eq!(stack.deployment.objects("inbox/").await.unwrap().len(), 3);
    for profile in [routit, t_mobile, by_hand] {
        assert_eq!(stack.watermark(profile).await, Some(period));
    }
    let (runs, deliveries): (i64, i32) =
        sqlx::query_as("SELECT count(*) OVER (), deliveries FROM sync_run")
            .fetch_one(&stack.db.pool)
            .await
            .unwrap();
    assert_eq!((runs, deliveries), (1, 2));
    stack.finish().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_malformed_body_and_an_unknown_step_go_straight_to_the_dlq_with_the_reason() {
    let stack = deploy().await;
    let mut unknown = serde_json::to_value(Envelope::root(
        "rocket-1",
        Step::SyncProfile,
        json!({"provider": "routit", "profile_id": 1, "period": "2025-01-01"}),
        vec![],
        None,
        Utc::now(),
    ))
    .unwrap();
    unknown["step"] = json!("LaunchRocket");
    stack
        .deployment
        .send_raw("RoutitQueueUrl", "this is not json")
        .await
        .unwrap();
    stack
        .deployment
        .send_raw("RoutitQueueUrl", &unknown.to_string())
        .await
        .unwrap();

    let seen = std::sync::Mutex::new(Vec::new());
    wait_for("two dead letters", TIMEOUT, || async {
        let drained = stack.deployment.drain("RoutitDlqUrl").await?;
        let mut seen = seen.lock().unwrap();
        seen.extend(drained);
        Ok((seen.len() >= 2).then_some(()))
    })
    .await
    .unwrap();
    let mut dead = seen.into_inner().unwrap();
    dead.sort_by_key(|d| d.body.len());
    assert_eq!(dead[0].body, "this is not json");
    assert!(
        dead[0].attributes["tem-error"].contains("not a JSON object"),
        "{:?}",
        dead[0]
    );
    assert!(
        dead[1].attributes["tem-error"].contains("unknown step \"LaunchRocket\""),
        "{:?}",
        dead[1]
    );
    for d in &dead {
        assert_eq!(d.attributes["tem-attempts"], "1", "never retried");
        assert_eq!(d.attributes["tem-error-kind"], "invalid");
    }
    stack.finish().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn every_file_in_events_invokes_successfully() {
    let stack = deploy().await;
    // The sample events name profiles 1 (routit) and 2 (t_mobile), and an
    // export in the sample bucket, which here is the stack's.
    assert_eq!(stack.profile("routit", true, "2025-01-14", None).await, 1);
    assert_eq!(stack.profile("t_mobile", true, "2025-01-14", None).await, 2);
    // ... and customer 1 (totals events).
    sqlx::query("INSERT INTO customer (name, billing_cycle_start_day) VALUES ('Acme', 1)")
        .execute(&stack.db.pool)
        .await
        .unwrap();
    let bucket = stack.deployment.output("CdrBucketName").to_string();
    let export = provider_sim::export_zip("routit", "2025-01-14".parse().unwrap(), 5).unwrap();
    stack
        .deployment
        .clients
        .s3
        .put_object()
        .bucket(&bucket)
        .key("inbox/routit/1/2025-01-14/rt 20250114.zip")
        .body(export.into())
        .send()
        .await
        .unwrap();

    let events = tem_local::emulator::repo_root().join("events");
    // Every folder of events/ must be named here: a new function's events
    // cannot be left out unnoticed.
    let functions = [
        ("sync-manager", "SyncManagerFunctionName"),
        ("provider-sync", "RoutitSyncFunctionName"),
        ("cdr-import", "CdrImportFunctionName"),
        ("totals", "TotalsFunctionName"),
        ("ops", "OpsFunctionName"),
        ("maintenance", "MaintenanceFunctionName"),
    ];
    let mut dirs: Vec<String> = std::fs::read_dir(&events)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    dirs.sort();
    let mut named: Vec<String> = functions.iter().map(|(d, _)| d.to_string()).collect();
    named.sort();
    assert_eq!(dirs, named, "every folder of events/ has its function");
    let mut invoked = 0;
    for (dir, function) in functions {
        let mut files: Vec<_> = std::fs::read_dir(events.join(dir))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        for file in files {
            let text = std::fs::read_to_string(&file)
                .unwrap()
                .replace("tem-cdr-000000000000-eu-west-1", &bucket);
            let event: Value = serde_json::from_str(&text).unwrap();
            let answer = stack.deployment.invoke(function, &event).await.unwrap();
            let name = file.display();
            let placeholder = ["PUT-THE-MESSAGE-ID-HERE", "PUT-THE-INVOICE-NUMBER-HERE"]
                .into_iter()
                .find(|p| text.contains(p));
            if let Some(placeholder) = placeholder {
                // A template for an operator's id: on a stack with no
                // failures (or no such invoice) it fails saying which id it
                // did not find.
                let said = format!("{:?} {}", answer.error, answer.payload);
                assert!(
                    answer.error.is_some() && said.contains(placeholder),
                    "{name}: {said}"
                );
                invoked += 1;
                continue;
            }
            assert_eq!(answer.error, None, "{name}: {}", answer.payload);
            if event.get("Records").is_some() {
                assert_eq!(answer.payload["batchItemFailures"], json!([]), "{name}");
            } else if dir == "totals" && event.get("detail-type").is_some() {
                // The invoice sweep says how many cycles were due.
                assert!(answer.payload["due"].is_u64(), "{name}: {}", answer.payload);
            } else if dir == "maintenance" && event.get("detail-type").is_some() {
                // The daily schedule starts a run on the maintenance queue.
                assert!(
                    answer.payload["started"]
                        .as_str()
                        .is_some_and(|id| id.starts_with("maintenance:schedule:")),
                    "{name}: {}",
                    answer.payload
                );
            } else if dir == "ops" && event["command"] == "status" {
                // The monitoring points, each with its state.
                assert!(
                    answer.payload["state"].is_string(),
                    "{name}: {}",
                    answer.payload
                );
                assert!(
                    answer.payload["checks"]
                        .as_array()
                        .is_some_and(|c| c.iter().any(|c| c["point"] == 1)),
                    "{name}: {}",
                    answer.payload
                );
            } else if dir == "ops" && event["command"] != "migrate" {
                // The other commands answer with their own name; the lists
                // are lists.
                assert_eq!(
                    answer.payload["command"], event["command"],
                    "{name}: {}",
                    answer.payload
                );
                for list in ["failed", "tasks", "invoices"] {
                    if let Some(rows) = answer.payload.get(list) {
                        assert!(rows.is_array(), "{name}: {}", answer.payload);
                    }
                }
            } else if dir == "ops" {
                // The stack's database is migrated already: nothing to apply.
                assert_eq!(answer.payload["applied"], json!([]), "{name}");
                assert!(
                    !answer.payload["already_applied"]
                        .as_array()
                        .unwrap()
                        .is_empty(),
                    "{name}: {}",
                    answer.payload
                );
            } else if dir == "sync-manager" {
                assert_eq!(
                    answer.payload["failures"],
                    json!([]),
                    "{name}: {}",
                    answer.payload
                );
            } else {
                assert!(
                    matches!(
                        answer.payload["disposition"].as_str(),
                        Some("completed" | "duplicate")
                    ),
                    "{name}: {}",
                    answer.payload
                );
            }
            invoked += 1;
        }
    }
    let files: usize = dirs
        .iter()
        .map(|dir| std::fs::read_dir(events.join(dir)).unwrap().count())
        .sum();
    assert_eq!(invoked, files, "every file in events/ was invoked");
    // The sample notification and console command imported the export (once).
    let (status, read): (String, i64) = sqlx::query_as(
        "SELECT status, rows_read FROM import_file WHERE key = 'inbox/routit/1/2025-01-14/rt 20250114.zip' AND rows_read > 0",
    )
    .fetch_one(&stack.db.pool)
    .await
    .unwrap();
    assert_eq!((status.as_str(), read), ("completed", 5));
    stack.finish().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn the_ops_migrate_command_builds_the_schema_of_an_empty_database_once() {
    let stack = deploy_onto(unmigrated().await, &[]).await;
    let migrations: Vec<i64> = tem_shared::adapters::postgres::MIGRATOR
        .iter()
        .filter(|m| !m.migration_type.is_down_migration())
        .map(|m| m.version)
        .collect();
    let table_exists = |name: &'static str| {
        let pool = stack.db.pool.clone();
        async move {
            sqlx::query_scalar::<_, bool>("SELECT to_regclass($1) IS NOT NULL")
                .bind(name)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    assert!(
        !table_exists("sync_profile").await,
        "the database starts empty"
    );

    let event: Value = serde_json::from_str(
        &std::fs::read_to_string(
            tem_local::emulator::repo_root().join("events/ops/console-migrate.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let first = stack
        .deployment
        .invoke("OpsFunctionName", &event)
        .await
        .unwrap();
    assert_eq!(first.error, None, "{}", first.payload);
    let applied: Vec<i64> = first.payload["applied"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["version"].as_i64().unwrap())
        .collect();
    assert_eq!(applied, migrations, "{}", first.payload);
    assert_eq!(first.payload["already_applied"], json!([]));
    for table in ["sync_profile", "import_file", "customer"] {
        assert!(table_exists(table).await, "{table} exists after migrate");
    }
    let recorded: Vec<i64> =
        sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success ORDER BY version")
            .fetch_all(&stack.db.pool)
            .await
            .unwrap();
    assert_eq!(recorded, migrations);

    let second = stack
        .deployment
        .invoke("OpsFunctionName", &event)
        .await
        .unwrap();
    assert_eq!(second.error, None, "{}", second.payload);
    assert_eq!(second.payload["applied"], json!([]), "{}", second.payload);
    assert_eq!(second.payload["already_applied"], json!(migrations));

    let unknown = stack
        .deployment
        .invoke("OpsFunctionName", &json!({"command": "migrat"}))
        .await
        .unwrap();
    assert!(unknown.error.is_some(), "{}", unknown.payload);
    let message = unknown.payload["errorMessage"].as_str().unwrap_or_default();
    assert!(
        message.contains("unknown ops command") && message.contains("migrate"),
        "{}",
        unknown.payload
    );
    stack.finish().await.unwrap();
}
