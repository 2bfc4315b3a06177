//! `temctl status` on a stack deployed into the emulator (issue 10, items 4
//! and 5): OK when healthy; CRITICAL with exit code 2 for a queue holding
//! more than 1,000 messages and for a DLQ holding one; and a real
//! invocation's log lines are valid EMF.

use std::process::{Command, Output};

use aws_sdk_lambda::primitives::Blob;
use aws_sdk_lambda::types::LogType;
use base64::Engine;
use chrono::Utc;
use serde_json::{json, Value};
use tem_local::emulator::Emulator;
use tem_shared::envelope::{Envelope, Step};
use tem_tests::stack::{deploy, TestStack};

/// `temctl status --json --stack NAME` against the stack: its database and
/// the emulator's AWS endpoint; the queues and tables come from the stack's
/// outputs.
fn status(stack: &TestStack) -> (Output, Value) {
    let emulator = Emulator::start().expect("the emulator runs");
    let d = &stack.deployment;
    let mut command = Command::new(env!("CARGO_BIN_EXE_temctl"));
    command
        .args(["status", "--json", "--stack", &d.stack.name])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DATABASE_URL", &stack.db.url)
        .envs(&emulator.env);
    let output = command.output().expect("run temctl status");
    let report: Value = serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "temctl status --json prints JSON ({e}): {}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    });
    (output, report)
}

fn check<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no check {name}: {report:#}"))
}

/// Invokes a function with its log tail and returns the EMF documents in it.
async fn emf_lines(stack: &TestStack, function: &str, payload: &Value) -> Vec<Value> {
    let d = &stack.deployment;
    let output = d
        .clients
        .lambda
        .invoke()
        .function_name(d.output(function))
        .log_type(LogType::Tail)
        .payload(Blob::new(serde_json::to_vec(payload).unwrap()))
        .send()
        .await
        .expect("invoke");
    assert!(output.function_error().is_none(), "{function} failed");
    let tail = base64::engine::general_purpose::STANDARD
        .decode(output.log_result().expect("a log tail"))
        .unwrap();
    String::from_utf8_lossy(&tail)
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|doc| doc.get("_aws").is_some())
        .collect()
}

/// The EMF specification's rules, on one parsed document.
fn assert_valid_emf(doc: &Value) {
    let aws = &doc["_aws"];
    let now = Utc::now().timestamp_millis();
    let ts = aws["Timestamp"].as_i64().expect("Timestamp in epoch ms");
    assert!((now - ts).abs() < 600_000, "Timestamp {ts} is now");
    for directive in aws["CloudWatchMetrics"].as_array().unwrap() {
        assert_eq!(directive["Namespace"], "tem");
        for set in directive["Dimensions"].as_array().unwrap() {
            let set = set.as_array().unwrap();
            assert!(set.len() <= 30);
            for name in set {
                assert!(
                    doc[name.as_str().unwrap()].is_string(),
                    "dimension {name}: {doc}"
                );
            }
        }
        let metrics = directive["Metrics"].as_array().unwrap();
        assert!(!metrics.is_empty() && metrics.len() <= 100);
        for metric in metrics {
            let name = metric["Name"].as_str().unwrap();
            let unit = metric["Unit"].as_str().unwrap();
            let expected = if ["StepDuration", "ChainLatency", "TotalsDuration"].contains(&name) {
                "Milliseconds"
            } else if ["MessageFailureRate", "TaskFailureShare"].contains(&name) {
                "Percent"
            } else {
                "Count"
            };
            assert_eq!(unit, expected, "{name}");
            let value = &doc[name];
            assert!(
                value.is_number()
                    || value
                        .as_array()
                        .is_some_and(|a| a.iter().all(Value::is_number)),
                "{name} = {value}"
            );
        }
    }
}

fn schedule_event() -> Value {
    json!({
        "version": "0",
        "id": uuid::Uuid::new_v4().to_string(),
        "detail-type": "Scheduled Event",
        "source": "aws.events",
        "time": Utc::now().to_rfc3339(),
        "resources": ["arn:aws:events:eu-west-1:000000000000:rule/tem-MasterSync"],
        "detail": {}
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn status_is_ok_on_a_healthy_stack_and_critical_for_a_deep_queue_and_a_dlq_message() {
    let stack = deploy().await;
    let d = &stack.deployment;

    // A sync-manager run just now (no profiles: nothing to send), whose
    // log tail carries its run metrics as EMF.
    let docs = emf_lines(&stack, "SyncManagerFunctionName", &schedule_event()).await;
    let run = docs
        .iter()
        .find(|doc| doc.get("SyncRuns").is_some())
        .unwrap_or_else(|| panic!("no SyncRuns EMF line in {docs:?}"));
    assert_valid_emf(run);
    assert_eq!(run["SyncRuns"], 1.0);
    assert_eq!(run["FanOutSent"], 0.0);

    let (output, report) = status(&stack);
    assert_eq!(report["state"], "OK", "{report:#}");
    assert_eq!(output.status.code(), Some(0));
    assert_eq!(check(&report, "sync-manager runs")["state"], "OK");
    // The console's status command (events/ops/console-status.json) answers
    // the same report.
    let console: Value =
        serde_json::from_str(include_str!("../../events/ops/console-status.json")).unwrap();
    let ops = d.invoke("OpsFunctionName", &console).await.unwrap();
    assert!(ops.error.is_none(), "{:#}", ops.payload);
    assert_eq!(ops.payload["state"], "OK", "{:#}", ops.payload);
    assert_eq!(check(&ops.payload, "sync-manager runs")["state"], "OK");

    // A DLQ holding one message.
    d.send_raw("RoutitDlqUrl", r#"{"left":"by hand"}"#)
        .await
        .unwrap();
    let (output, report) = status(&stack);
    assert_eq!(output.status.code(), Some(2), "{report:#}");
    assert_eq!(report["state"], "CRITICAL");
    let dlq = check(&report, "queue depth routit dlq");
    assert_eq!(
        (dlq["state"].clone(), dlq["value"].clone()),
        (json!("CRITICAL"), json!(1))
    );
    d.drain("RoutitDlqUrl").await.unwrap();
    let (output, _) = status(&stack);
    assert_eq!(output.status.code(), Some(0));

    // 1,001 messages waiting on the import queue (delayed, so that the
    // import function does not take them while status looks).
    let url = d.output("ImportQueueUrl").to_string();
    for batch in 0..101 {
        let entries = (0..10)
            .filter(|i| batch * 10 + i < 1001)
            .map(|i| {
                aws_sdk_sqs::types::SendMessageBatchRequestEntry::builder()
                    .id(format!("m{i}"))
                    .message_body(r#"{"waiting":true}"#)
                    .delay_seconds(900)
                    .build()
                    .unwrap()
            })
            .collect::<Vec<_>>();
        d.clients
            .sqs
            .send_message_batch()
            .queue_url(&url)
            .set_entries(Some(entries))
            .send()
            .await
            .unwrap();
    }
    let (output, report) = status(&stack);
    assert_eq!(output.status.code(), Some(2), "{report:#}");
    let import = check(&report, "queue depth import");
    assert_eq!(import["state"], "CRITICAL");
    assert_eq!(import["value"], 1001);
    d.clients
        .sqs
        .purge_queue()
        .queue_url(&url)
        .send()
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_queue_driven_functions_step_metrics_are_valid_emf() {
    let stack = deploy().await;
    let envelope = Envelope::root(
        uuid::Uuid::new_v4().to_string(),
        Step::AttachUnassignedCdrs,
        json!({}),
        vec![],
        None,
        Utc::now(),
    );
    let payload: Value = serde_json::from_str(&envelope.to_body()).unwrap();
    let docs = emf_lines(&stack, "CdrImportFunctionName", &payload).await;
    let step = docs
        .iter()
        .find(|doc| doc.get("MessagesProcessed").is_some())
        .unwrap_or_else(|| panic!("no step metrics in {docs:?}"));
    assert_valid_emf(step);
    assert_eq!(step["Step"], "AttachUnassignedCdrs");
    assert_eq!(
        step["Function"],
        stack.deployment.output("CdrImportFunctionName")
    );
    assert_eq!(step["MessagesProcessed"], 1.0);
    assert_eq!(step["MessagesFailed"], 0.0);
    assert_eq!(
        step["_aws"]["CloudWatchMetrics"][0]["Dimensions"],
        json!([["Function"], ["Function", "Step"]])
    );
    assert!(step["StepDuration"].is_number());
    assert_eq!(step["MessageFailureRate"], 0.0);
}
