//! The operators' tools end to end (issue 10): `temctl failed` and `temctl
//! task` as processes against a stack deployed into the emulator, the ops
//! watch through its function, the real functions on their queues.

use std::collections::BTreeMap;
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use chrono::Utc;
use serde_json::{json, Value};
use tem_local::deployment::wait_for;
use tem_local::emulator::repo_root;
use tem_shared::adapters::dynamodb::DynamoIdempotency;
use tem_shared::envelope::{Envelope, Step};
use tem_shared::ports::{IdempotencyStore, TaskStore};
use tem_shared::tasks::{NewTask, TaskStatus};
use tem_tests::db::insert_business_customer;
use tem_tests::stack::{deploy, deploy_with, sent_task, yesterday, TestStack};

const TIMEOUT: Duration = Duration::from_secs(180);

/// temctl, built once per test process (without the variables cargo sets
/// for this test binary, which would make the nested build rebuild ring).
fn temctl_path() -> std::path::PathBuf {
    static BUILT: OnceLock<std::path::PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let mut build = Command::new("cargo");
            build
                .args(["build", "-p", "temctl"])
                .current_dir(repo_root());
            for (key, _) in std::env::vars_os() {
                let key = key.to_string_lossy().to_string();
                if key == "CARGO"
                    || key.starts_with("CARGO_PKG_")
                    || key.starts_with("CARGO_MANIFEST")
                    || [
                        "CARGO_CRATE_NAME",
                        "CARGO_BIN_NAME",
                        "CARGO_PRIMARY_PACKAGE",
                        "CARGO_TARGET_TMPDIR",
                    ]
                    .contains(&key.as_str())
                {
                    build.env_remove(&key);
                }
            }
            let output = build.output().expect("run cargo build -p temctl");
            assert!(
                output.status.success(),
                "cargo build -p temctl failed:\n{}",
                String::from_utf8_lossy(&output.stderr)
            );
            let target = std::env::var("CARGO_TARGET_DIR")
                .map(std::path::PathBuf::from)
                .unwrap_or_else(|_| repo_root().join("target"));
            target.join("debug/temctl")
        })
        .clone()
}

/// `temctl ARGS` against the stack: its database, its name, the emulator.
fn temctl_command(stack: &TestStack, args: &[&str]) -> Command {
    let mut command = Command::new(temctl_path());
    command
        .args(args)
        .envs(&stack.deployment.stack.emulator.env)
        .env(
            "AWS_ENDPOINT_URL",
            &stack.deployment.stack.emulator.endpoint,
        )
        .env("AWS_REGION", &stack.deployment.stack.emulator.region)
        .env("DATABASE_URL", &stack.db.url)
        .env("TEM_STACK", &stack.deployment.stack.name)
        .env_remove("AWS_PROFILE")
        .stdin(Stdio::null());
    command
}

fn temctl(stack: &TestStack, args: &[&str]) -> Output {
    temctl_command(stack, args).output().expect("run temctl")
}

fn ok_json(stack: &TestStack, args: &[&str]) -> Value {
    let output = temctl(stack, args);
    assert!(
        output.status.success(),
        "temctl {args:?} failed ({:?}):\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "temctl {args:?} printed no JSON ({e}):\n{}",
            String::from_utf8_lossy(&output.stdout)
        )
    })
}

async fn failure_row(stack: &TestStack, provider: &str) -> Option<(String, String, String)> {
    sqlx::query_as("SELECT id, status, error_kind FROM failed_message WHERE provider = $1")
        .bind(provider)
        .fetch_optional(&stack.db.pool)
        .await
        .unwrap()
}

async fn task_status(stack: &TestStack, task_id: &str, status: TaskStatus) {
    wait_for(
        &format!("task {task_id} to be {status}"),
        TIMEOUT,
        || async { Ok(stack.task(task_id).await.filter(|t| t.status == status)) },
    )
    .await
    .unwrap();
}

/// Moves every message of a DLQ back to its source queue with its body
/// unchanged, as the console's "Start DLQ redrive" does.
async fn redrive_by_hand(stack: &TestStack, dlq: &str, queue: &str) -> usize {
    let sqs = &stack.deployment.clients.sqs;
    let mut moved = 0;
    loop {
        let received = sqs
            .receive_message()
            .queue_url(stack.deployment.output(dlq))
            .max_number_of_messages(10)
            .wait_time_seconds(0)
            .send()
            .await
            .unwrap();
        let messages = received.messages.unwrap_or_default();
        if messages.is_empty() {
            return moved;
        }
        for m in messages {
            stack
                .deployment
                .send_raw(queue, m.body().unwrap())
                .await
                .unwrap();
            sqs.delete_message()
                .queue_url(stack.deployment.output(dlq))
                .receipt_handle(m.receipt_handle().unwrap())
                .send()
                .await
                .unwrap();
            moved += 1;
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_carrier_failing_on_every_attempt_is_listed_and_after_the_fix_a_retry_or_a_console_redrive_completes_its_task(
) {
    let stack = deploy().await;
    let start = yesterday().to_string();
    let retried = stack.profile("t_mobile", true, &start, None).await;
    let redriven = stack.profile("kpn_sp16", true, &start, None).await;
    for provider in ["t_mobile", "kpn_sp16"] {
        stack
            .sim_behaviour(provider, json!({"fail_with": 503}))
            .await;
    }
    let summary = stack.schedule_tick("tick-failing").await;
    let retried_task = sent_task(&summary, retried);
    let redriven_task = sent_task(&summary, redriven);
    task_status(&stack, &retried_task, TaskStatus::Failed).await;
    task_status(&stack, &redriven_task, TaskStatus::Failed).await;
    let (id, _, _) = wait_for("the failure record", TIMEOUT, || async {
        Ok(failure_row(&stack, "t_mobile").await)
    })
    .await
    .unwrap();

    let listed = ok_json(
        &stack,
        &["failed", "list", "--provider", "t_mobile", "--json"],
    );
    let rows = listed["failed"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "{listed}");
    assert_eq!(rows[0]["id"], id.as_str());
    assert_eq!(rows[0]["attempts"], 5, "{listed}");
    assert_eq!(rows[0]["step"], "SyncProfile");
    assert_eq!(rows[0]["task_id"], retried_task.as_str());
    assert!(
        rows[0]["error"].as_str().unwrap().contains("503"),
        "{listed}"
    );
    let text = temctl(&stack, &["failed", "list", "--provider", "t_mobile"]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains(&id) && text.contains("503"), "{text}");
    let shown = temctl(&stack, &["failed", "show", &id]);
    let shown = String::from_utf8_lossy(&shown.stdout);
    assert!(
        shown.contains("chain still to run: SyncProfile") && shown.contains("attempts recorded:"),
        "{shown}"
    );

    // The carrier is fixed; one failure is retried with temctl, the other
    // moved back from its DLQ unchanged, as the console's redrive does.
    for provider in ["t_mobile", "kpn_sp16"] {
        stack.sim_behaviour(provider, json!({})).await;
    }
    let report = ok_json(&stack, &["failed", "retry", &id, "--json"]);
    assert_eq!(report["retried"], json!([id]), "{report}");
    assert_eq!(
        redrive_by_hand(&stack, "KpnSp16DlqUrl", "KpnSp16QueueUrl").await,
        1
    );

    task_status(&stack, &retried_task, TaskStatus::Completed).await;
    task_status(&stack, &redriven_task, TaskStatus::Completed).await;
    let task = stack.task(&retried_task).await.unwrap();
    assert!(task.failed_ids.is_empty(), "{task:?}");
    assert!(
        task.notes.iter().any(|n| n.contains("reopened")),
        "{task:?}"
    );
    assert_eq!(failure_row(&stack, "t_mobile").await.unwrap().1, "retried");
    // The console redrive's failure is resolved when its message completes.
    wait_for("the redriven failure to be resolved", TIMEOUT, || async {
        Ok(failure_row(&stack, "kpn_sp16")
            .await
            .filter(|r| r.1 == "retried"))
    })
    .await
    .unwrap();
    assert!(stack
        .deployment
        .drain("TMobileDlqUrl")
        .await
        .unwrap()
        .is_empty());
    stack.finish().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_carrier_slower_than_the_function_timeout_is_redriven_by_sqs_and_the_watch_fails_its_task_with_the_reason(
) {
    // provider-sync times out after 3 s while the carrier call may take 30:
    // five receives 18 s apart (the queue's visibility, 6x) before SQS
    // moves the message.
    let stack = deploy_with(&[
        ("ProviderSyncTimeoutSeconds", "3".to_string()),
        ("HttpTimeoutSeconds", "30".to_string()),
    ])
    .await;
    let profile = stack
        .profile("t_mobile", true, &yesterday().to_string(), None)
        .await;
    stack
        .sim_behaviour("t_mobile", json!({"delay_ms": 20_000}))
        .await;
    let summary = stack.schedule_tick("tick-slow").await;
    let task_id = sent_task(&summary, profile);

    // The schedule runs the watch every minute; the test runs it itself.
    let report = wait_for(
        "the watch to find the redriven message",
        Duration::from_secs(420),
        || async {
            let run = stack
                .deployment
                .invoke("OpsWatchFunctionName", &json!({"command": "watch"}))
                .await?;
            assert_eq!(run.error, None, "the watch failed: {}", run.payload);
            let report = run.payload["report"].clone();
            if report["failures_recorded"]
                .as_array()
                .is_some_and(|a| !a.is_empty())
            {
                return Ok(Some(report));
            }
            tokio::time::sleep(Duration::from_secs(10)).await;
            Ok(None)
        },
    )
    .await
    .unwrap();
    assert_eq!(report["redriven"], 1, "{report}");
    assert_eq!(report["tasks_failed"], json!([task_id]), "{report}");

    let task = stack.task(&task_id).await.unwrap();
    assert_eq!(task.status, TaskStatus::Failed, "{task:?}");
    let reason = task.error.clone().unwrap_or_default();
    assert!(
        reason.contains("crashed, timed out or ran out of memory"),
        "{task:?}"
    );
    let listed = ok_json(&stack, &["failed", "list", "--kind", "redriven", "--json"]);
    let rows = listed["failed"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "{listed}");
    let id = rows[0]["id"].as_str().unwrap().to_string();
    assert_eq!(rows[0]["provider"], "t_mobile", "{listed}");

    // Retryable: with the carrier fast again the branch completes.
    stack.sim_behaviour("t_mobile", json!({})).await;
    let retry = ok_json(&stack, &["failed", "retry", &id, "--json"]);
    assert_eq!(retry["retried"], json!([id]), "{retry}");
    task_status(&stack, &task_id, TaskStatus::Completed).await;
    stack.finish().await.unwrap();
}

/// `n` failures of AttachUnassignedCdrs (a step that finds nothing to do
/// and completes), recorded as the runtime records them: a failure row, a
/// DLQ copy and a dead-lettered idempotency record each.
async fn seed_failures(stack: &TestStack, n: usize, task_id: Option<&str>) -> Vec<String> {
    let queue = stack.deployment.output("ImportQueueUrl").to_string();
    let dlq = stack.deployment.output("ImportDlqUrl").to_string();
    let idempotency = DynamoIdempotency::new(
        stack.deployment.clients.dynamodb.clone(),
        stack.deployment.output("IdempotencyTableName"),
        chrono::Duration::days(1),
    );
    let now = Utc::now();
    let mut ids = Vec::new();
    let mut bodies = Vec::new();
    for i in 0..n {
        let id = format!("seeded-{i:05}");
        let mut envelope = Envelope::root(
            &id,
            Step::AttachUnassignedCdrs,
            json!({}),
            vec![],
            task_id.map(str::to_string),
            now,
        );
        envelope.attempt = 5;
        let body = envelope.to_body();
        sqlx::query(
            "INSERT INTO failed_message (id, queue, queue_url, dlq_url, function_name, step, task_id, \
                 trace_id, body, error_kind, error, attempts, failed_at, expires_at) \
             VALUES ($1, $2, $3, $4, 'cdr-import', 'AttachUnassignedCdrs', $5, $1, $6, 'seeded', \
                 'database unavailable', 5, $7, $7 + interval '30 days')",
        )
        .bind(&id)
        .bind(tem_shared::ops::settings::queue_name_of(&queue))
        .bind(&queue)
        .bind(&dlq)
        .bind(task_id)
        .bind(&body)
        .bind(now)
        .execute(&stack.db.pool)
        .await
        .unwrap();
        idempotency
            .dead_lettered(&id, "database unavailable", now)
            .await
            .unwrap();
        bodies.push(body);
        ids.push(id);
    }
    for chunk in bodies.chunks(10) {
        let entries = chunk
            .iter()
            .enumerate()
            .map(|(i, body)| {
                aws_sdk_sqs::types::SendMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .message_body(body)
                    .build()
                    .unwrap()
            })
            .collect();
        stack
            .deployment
            .clients
            .sqs
            .send_message_batch()
            .queue_url(&dlq)
            .set_entries(Some(entries))
            .send()
            .await
            .unwrap();
    }
    ids
}

async fn status_counts(stack: &TestStack) -> BTreeMap<String, i64> {
    sqlx::query_as::<_, (String, i64)>(
        "SELECT status, count(*) FROM failed_message WHERE error_kind = 'seeded' GROUP BY status",
    )
    .fetch_all(&stack.db.pool)
    .await
    .unwrap()
    .into_iter()
    .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn remove_refuses_without_confirmation_and_with_yes_removes_and_notes_it_on_the_task() {
    let stack = deploy().await;
    let period = yesterday();
    stack
        .deployment
        .tasks()
        .create(
            &NewTask {
                task_id: "task-removed".into(),
                profile_id: 1,
                provider: "routit".into(),
                period,
                created_at: Utc::now(),
            },
            None,
        )
        .await
        .unwrap();
    let ids = seed_failures(&stack, 2, Some("task-removed")).await;

    let refused = temctl(&stack, &["failed", "remove", &ids[0]]);
    assert_eq!(refused.status.code(), Some(2));
    let why = String::from_utf8_lossy(&refused.stderr);
    assert!(why.contains("--yes"), "{why}");
    assert_eq!(status_counts(&stack).await["failed"], 2);

    let removed = ok_json(&stack, &["failed", "remove", &ids[0], "--yes", "--json"]);
    assert_eq!(removed["removed"], json!([ids[0]]), "{removed}");
    assert_eq!(removed["dlq_deleted"], 1, "{removed}");
    let counts = status_counts(&stack).await;
    assert_eq!((counts["failed"], counts["removed"]), (1, 1));
    let task = stack.task("task-removed").await.unwrap();
    assert!(
        task.notes
            .iter()
            .any(|n| n.contains(&format!("removed message {} by an operator", ids[0]))),
        "{task:?}"
    );
    // The other failure's DLQ copy stays.
    let left = stack.deployment.drain("ImportDlqUrl").await.unwrap();
    assert_eq!(left.len(), 1);
    assert!(left[0].body.contains(&ids[1]));
    stack.finish().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bulk_retry_of_a_thousand_failures_interrupted_midway_and_run_again_runs_each_exactly_once_more(
) {
    let stack = deploy().await;
    let ids = seed_failures(&stack, 1000, None).await;

    let mut first = temctl_command(
        &stack,
        &["failed", "retry", "--all", "--kind", "seeded", "--json"],
    )
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    let at_kill = wait_for(
        "the retry to be under way",
        Duration::from_secs(60),
        || async {
            let retried = status_counts(&stack)
                .await
                .get("retried")
                .copied()
                .unwrap_or(0);
            Ok((retried >= 200).then_some(retried))
        },
    )
    .await
    .unwrap();
    first.kill().unwrap();
    first.wait().unwrap();
    let after_kill = status_counts(&stack).await;
    assert!(
        after_kill.get("failed").copied().unwrap_or(0) > 0,
        "the first run was interrupted midway (retried {at_kill} when killed): {after_kill:?}"
    );

    let again = ok_json(
        &stack,
        &["failed", "retry", "--all", "--kind", "seeded", "--json"],
    );
    let counts = status_counts(&stack).await;
    assert_eq!(counts.get("retried"), Some(&1000), "{counts:?} {again}");

    // Every message ran once more: one completed attempt per id, none lost,
    // none twice (a copy sent by both runs is deduplicated by its id).
    let completed = wait_for("every retried message to complete", TIMEOUT, || async {
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT message_id, count(*) FROM step_run WHERE outcome = 'completed' \
                 AND message_id LIKE 'seeded-%' GROUP BY message_id",
        )
        .fetch_all(&stack.db.pool)
        .await?;
        Ok((rows.len() == ids.len()).then_some(rows))
    })
    .await
    .unwrap();
    assert!(
        completed.iter().all(|(_, n)| *n == 1),
        "some ran twice: {:?}",
        completed
            .iter()
            .filter(|(_, n)| *n != 1)
            .collect::<Vec<_>>()
    );
    // Give a late duplicate the time to run, then look again.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let twice: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT message_id FROM step_run WHERE outcome = 'completed' \
             AND message_id LIKE 'seeded-%' GROUP BY message_id HAVING count(*) > 1) t",
    )
    .fetch_one(&stack.db.pool)
    .await
    .unwrap();
    assert_eq!(twice, 0);
    let duplicates: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM step_run WHERE outcome = 'duplicate' AND message_id LIKE 'seeded-%'",
    )
    .fetch_one(&stack.db.pool)
    .await
    .unwrap();
    println!(
        "killed the first run at {at_kill} retried ({after_kill:?} after the kill); \
         the second run retried {}, skipped {}; {duplicates} copies sent twice were deduplicated",
        again["retried"].as_array().map_or(0, Vec::len),
        again["skipped"].as_array().map_or(0, Vec::len),
    );
    assert!(stack
        .deployment
        .drain("ImportDlqUrl")
        .await
        .unwrap()
        .is_empty());
    stack.finish().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn task_show_on_a_completed_sync_prints_every_step_in_order_with_durations() {
    let stack = deploy().await;
    let pool = &stack.db.pool;
    let acme = insert_business_customer(pool).await;
    sqlx::query("INSERT INTO subscription (customer_id, provider, identifier) VALUES ($1, 't_mobile', '+31612340000')")
        .bind(acme)
        .execute(pool)
        .await
        .unwrap();
    let profile = stack
        .profile("t_mobile", true, &yesterday().to_string(), None)
        .await;
    let summary = stack.schedule_tick("tick-timeline").await;
    let task_id = sent_task(&summary, profile);
    let task = stack.finished_task(&task_id, TIMEOUT).await;
    assert_eq!(task.status, TaskStatus::Completed, "{task:?}");

    let output = temctl(&stack, &["task", "show", &task_id]);
    let text = String::from_utf8_lossy(&output.stdout).to_string();
    println!("{text}");
    assert!(
        output.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let mut at = 0;
    for step in [
        "SyncProfile",
        "ImportCdrFile",
        "DispatchTotals",
        "CalculateTotals",
        "GenerateInvoice",
    ] {
        let found = text[at..]
            .find(step)
            .unwrap_or_else(|| panic!("{step} after position {at} in:\n{text}"));
        at += found;
    }
    for line in text
        .lines()
        .filter(|l| l.contains("completed") && !l.starts_with("task "))
    {
        assert!(
            line.contains("ms ") || line.contains("s "),
            "a step without a duration: {line}\n{text}"
        );
    }
    let timeline = ok_json(&stack, &["task", "show", &task_id, "--json"]);
    assert_eq!(timeline["steps"][0]["step"], "SyncProfile", "{timeline}");
    assert_eq!(
        timeline["steps"][0]["children"][0]["step"], "ImportCdrFile",
        "{timeline}"
    );
    stack.finish().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn the_watch_marks_a_task_unfinished_past_its_limit_stalled_and_a_dead_import_abandoned_and_task_list_finds_the_task(
) {
    let stack = deploy().await;
    let tasks = stack.deployment.tasks();
    for (id, age) in [("old-task", 150), ("young-task", 10)] {
        tasks
            .create(
                &NewTask {
                    task_id: id.into(),
                    profile_id: if id == "old-task" { 1 } else { 2 },
                    provider: "routit".into(),
                    period: yesterday(),
                    created_at: Utc::now() - chrono::Duration::minutes(age),
                },
                None,
            )
            .await
            .unwrap();
        tasks.mark_running(id, Utc::now()).await.unwrap();
    }

    // An import attempt whose process died: running, its deadline passed.
    sqlx::query(
        "INSERT INTO import_file (bucket, key, sha256, size_bytes, provider, status, deadline) \
         VALUES ('b', 'inbox/routit/x.zip', 'h', 1, 'routit', 'running', now() - interval '1 hour')",
    )
    .execute(&stack.db.pool)
    .await
    .unwrap();

    let run = stack
        .deployment
        .invoke("OpsWatchFunctionName", &json!({"command": "watch"}))
        .await
        .unwrap();
    assert_eq!(run.error, None, "{}", run.payload);
    assert_eq!(
        run.payload["report"]["imports_abandoned"], 1,
        "{}",
        run.payload
    );
    assert_eq!(
        run.payload["report"]["tasks_stalled"],
        json!(["old-task"]),
        "{}",
        run.payload
    );
    assert_eq!(
        run.payload["report"]["errors"],
        json!([]),
        "{}",
        run.payload
    );
    let old = stack.task("old-task").await.unwrap();
    assert_eq!(old.status, TaskStatus::Stalled, "{old:?}");
    assert!(old.notes.iter().any(|n| n.contains("stalled")), "{old:?}");
    assert_eq!(
        stack.task("young-task").await.unwrap().status,
        TaskStatus::Running
    );
    // A second run finds nothing more to do.
    let again = stack
        .deployment
        .invoke("OpsWatchFunctionName", &json!({"command": "watch"}))
        .await
        .unwrap();
    assert_eq!(
        again.payload["report"]["tasks_stalled"],
        json!([]),
        "{}",
        again.payload
    );

    let listed = ok_json(
        &stack,
        &[
            "task", "list", "--status", "stalled", "--since", "1d", "--json",
        ],
    );
    let found: Vec<&str> = listed["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t["task_id"].as_str())
        .collect();
    assert_eq!(found, vec!["old-task"], "{listed}");
    let all = ok_json(&stack, &["task", "list", "--since", "1d", "--json"]);
    assert_eq!(all["tasks"].as_array().unwrap().len(), 2, "{all}");
    stack.finish().await.unwrap();
}
