use super::*;
use crate::envelope::Step;
use crate::ops::fakes::{row, World};
use serde_json::json;

const Q: &str = "https://sqs/tem-RoutitQueue";
const DLQ: &str = "https://sqs/tem-RoutitDlq";

fn envelope_body(id: &str, attempt: u32) -> String {
    let mut e = Envelope::root(
        id,
        Step::SyncProfile,
        json!({"provider": "routit"}),
        vec![crate::envelope::ChainLink {
            step: Step::ImportCdrFile,
            payload: json!({}),
        }],
        Some("task-1".into()),
        Utc::now(),
    );
    e.attempt = attempt;
    e.to_body()
}

/// `n` open failures, each with its DLQ copy.
fn failures(world: &World, n: usize) -> Vec<String> {
    let at = Utc::now() - Duration::minutes(10);
    (0..n)
        .map(|i| {
            let id = format!("msg-{i:04}");
            let body = envelope_body(&id, 3);
            world.add_row(row(&id, Q, DLQ, &body, at));
            world.put(DLQ, &body, &[("tem-error", "503")], at);
            id
        })
        .collect()
}

fn options() -> RetryOptions {
    RetryOptions {
        by: "alice".into(),
        ..RetryOptions::default()
    }
}

async fn all_rows(world: &World, status: &str) -> Vec<FailedMessage> {
    let selection = FailedSelection {
        status: Some(status.into()),
        ..FailedSelection::default()
    };
    world
        .find(&selection.filter(None, Utc::now()).unwrap())
        .await
        .unwrap()
}

#[tokio::test]
async fn a_retry_sends_each_open_failure_once_with_its_attempts_reset_and_deletes_its_dlq_copy() {
    let world = World::default();
    let ids = failures(&world, 25);
    let rows = all_rows(&world, "failed").await;

    let report = retry(world.ports(), rows, &options(), Utc::now())
        .await
        .unwrap();

    assert_eq!(report.retried.len(), 25);
    assert_eq!(report.dlq_deleted, 25);
    assert_eq!(world.depth(DLQ), 0);
    let sent = world.sent.lock().unwrap().clone();
    assert_eq!(sent.len(), 25);
    assert_eq!(*world.send_calls.lock().unwrap(), 3, "ten per call");
    for (queue, message) in &sent {
        assert_eq!(queue, Q);
        assert_eq!(Envelope::parse(&message.body).unwrap().attempt, 0);
    }
    let r = world.row(&ids[0]);
    assert_eq!(r.status, FailureStatus::Retried);
    assert_eq!(r.retries, 1);
    assert_eq!(r.resolved_by.as_deref(), Some("alice"));
}

#[tokio::test]
async fn rows_already_retried_are_not_sent_again() {
    let world = World::default();
    failures(&world, 12);
    let rows = all_rows(&world, "failed").await;
    let first = RetryOptions {
        stop_after: Some(5),
        ..options()
    };
    // Interrupted after the first batch of ten.
    let report = retry(world.ports(), rows, &first, Utc::now())
        .await
        .unwrap();
    assert_eq!(report.retried.len(), 10);

    // Run again over every row, as `--all --status any` would.
    let again = retry(
        world.ports(),
        all_rows(&world, "any").await,
        &options(),
        Utc::now(),
    )
    .await
    .unwrap();

    assert_eq!(again.retried.len(), 2);
    assert_eq!(again.skipped.len(), 10);
    assert!(again.skipped.iter().all(|s| s.reason == "already retried"));
    let sent = world.sent.lock().unwrap().clone();
    let mut ids: Vec<&str> = sent.iter().map(|(_, m)| m.id.as_str()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(
        (sent.len(), ids.len()),
        (12, 12),
        "each message sent exactly once"
    );
}

#[tokio::test]
async fn a_refused_send_leaves_its_row_failed_and_its_dlq_copy_in_place() {
    let world = World::default();
    let ids = failures(&world, 3);
    world.refuse.lock().unwrap().push(ids[1].clone());

    let report = retry(
        world.ports(),
        all_rows(&world, "failed").await,
        &options(),
        Utc::now(),
    )
    .await
    .unwrap();

    assert_eq!(report.retried, vec![ids[0].clone(), ids[2].clone()]);
    assert_eq!(report.failed.len(), 1);
    assert_eq!(world.row(&ids[1]).status, FailureStatus::Failed);
    assert_eq!(world.depth(DLQ), 1, "the open failure's copy stays");
    assert_eq!(world.visible(DLQ), 1, "and is given back, not left hidden");
}

#[tokio::test]
async fn an_unreachable_queue_leaves_every_row_failed() {
    let world = World::default();
    let ids = failures(&world, 4);
    *world.send_down.lock().unwrap() = true;

    let report = retry(
        world.ports(),
        all_rows(&world, "failed").await,
        &options(),
        Utc::now(),
    )
    .await
    .unwrap();

    assert!(report.retried.is_empty());
    assert_eq!(report.failed.len(), 4);
    for id in &ids {
        assert_eq!(world.row(id).status, FailureStatus::Failed);
    }
    assert_eq!(world.depth(DLQ), 4);
}

#[tokio::test]
async fn a_dry_run_sends_and_changes_nothing() {
    let world = World::default();
    failures(&world, 3);
    let report = retry(
        world.ports(),
        all_rows(&world, "failed").await,
        &RetryOptions {
            dry_run: true,
            ..options()
        },
        Utc::now(),
    )
    .await
    .unwrap();
    assert_eq!(report.retried.len(), 3);
    assert!(world.sent.lock().unwrap().is_empty());
    assert_eq!(all_rows(&world, "failed").await.len(), 3);
}

#[test]
fn a_retried_body_that_is_not_an_envelope_is_sent_unchanged() {
    let notification = r#"{"Records":[{"s3":{}}]}"#;
    assert_eq!(retry_body(notification), notification);
    let body = envelope_body("x", 4);
    let again: Value = serde_json::from_str(&retry_body(&body)).unwrap();
    assert_eq!(again["attempt"], 0);
    assert_eq!(again["id"], "x");
}

#[test]
fn an_envelope_field_this_build_does_not_know_survives_a_retry() {
    let mut value: Value = serde_json::from_str(&envelope_body("x", 2)).unwrap();
    value["handoff"] = json!("s3://b/k");
    let again: Value = serde_json::from_str(&retry_body(&value.to_string())).unwrap();
    assert_eq!(again["handoff"], "s3://b/k");
}

#[tokio::test]
async fn a_dlq_copy_newer_than_its_rows_resolution_is_a_new_failure_and_stays() {
    let world = World::default();
    let at = Utc::now() - Duration::hours(1);
    let body = envelope_body("again", 0);
    let mut r = row("again", Q, DLQ, &body, at);
    r.status = FailureStatus::Retried;
    r.resolved_at = Some(at);
    world.add_row(r);
    world.put(DLQ, &body, &[], at - Duration::minutes(5)); // the old copy
    world.put(DLQ, &body, &[], Utc::now()); // failed again since

    let sweep = sweep_dlq(world.ports(), DLQ, 100).await.unwrap();

    assert_eq!((sweep.seen, sweep.deleted), (2, 1));
    assert_eq!(world.visible(DLQ), 1);
}

#[tokio::test]
async fn a_dlq_message_without_a_row_is_reported_and_given_back() {
    let world = World::default();
    let id = world.put(DLQ, "not json", &[], Utc::now());

    let sweep = sweep_dlq(world.ports(), DLQ, 100).await.unwrap();

    assert_eq!(sweep.unrecorded.len(), 1);
    assert_eq!(failure_id(&sweep.unrecorded[0]), format!("sqs:{id}"));
    assert_eq!(world.visible(DLQ), 1);
}

#[tokio::test]
async fn remove_marks_the_rows_deletes_the_copies_and_notes_the_task() {
    let world = World::default();
    let ids = failures(&world, 2);

    let report = remove(
        world.ports(),
        all_rows(&world, "failed").await,
        "bob",
        Utc::now(),
    )
    .await
    .unwrap();

    assert_eq!(report.removed, ids);
    assert_eq!(world.depth(DLQ), 0);
    assert_eq!(world.row(&ids[0]).status, FailureStatus::Removed);
    let notes = world.notes.lock().unwrap().clone();
    assert_eq!(notes.len(), 2);
    assert_eq!(notes[0].0, "task-1");
    assert!(notes[0]
        .1
        .contains(&format!("removed message {} by an operator (bob)", ids[0])));
}

#[tokio::test]
async fn show_gives_the_envelope_the_chain_still_to_run_and_the_attempts() {
    let world = World::default();
    failures(&world, 1);
    let detail = show(world.ports(), "msg-0000").await.unwrap().unwrap();
    assert_eq!(detail.chain, vec!["SyncProfile", "ImportCdrFile"]);
    assert_eq!(detail.envelope.unwrap()["id"], "msg-0000");
    assert!(show(world.ports(), "nope").await.unwrap().is_none());
}

#[test]
fn ages_read_as_a_number_and_a_unit() {
    assert_eq!(parse_age("2h"), Ok(Duration::hours(2)));
    assert_eq!(parse_age("90s"), Ok(Duration::seconds(90)));
    assert_eq!(parse_age("1d"), Ok(Duration::days(1)));
    assert!(matches!(
        parse_age("2 hours"),
        Err(SelectionError::BadAge(_))
    ));
    assert!(matches!(parse_age("h"), Err(SelectionError::BadAge(_))));
    assert_eq!(human_age(45), "45s");
    assert_eq!(human_age(3 * 3600 + 300), "3h05m");
    assert_eq!(human_age(2 * 86_400 + 4 * 3600), "2d04h");
}

#[test]
fn a_queue_filter_by_tems_name_stands_for_its_url_too() {
    let settings = OpsSettings {
        queues: vec![QueuePair {
            name: "routit".into(),
            url: Q.into(),
            dlq_url: DLQ.into(),
        }],
        tasks_table: "t".into(),
        idempotency_table: "i".into(),
    };
    let now = Utc::now();
    let filter = FailedSelection {
        queue: Some("routit".into()),
        since: Some("2h".into()),
        ..FailedSelection::default()
    }
    .filter(Some(&settings), now)
    .unwrap();
    assert_eq!(filter.queue_urls, vec![Q.to_string()]);
    assert_eq!(filter.since, Some(now - Duration::hours(2)));
    assert_eq!(filter.statuses, vec![FailureStatus::Failed]);
}

#[test]
fn retry_and_remove_refuse_a_selection_that_names_nothing() {
    let none = FailedSelection::default();
    assert_eq!(
        none.require_named("retry"),
        Err(SelectionError::NothingNamed { action: "retry" })
    );
    let all = FailedSelection {
        all: true,
        provider: Some("routit".into()),
        ..FailedSelection::default()
    };
    assert_eq!(all.require_named("retry"), Ok(()));
}

#[test]
fn stats_count_per_queue_step_provider_and_kind_with_the_oldest_age() {
    let now = Utc::now();
    let mut a = row("a", Q, DLQ, "{}", now - Duration::hours(3));
    let b = row("b", Q, DLQ, "{}", now - Duration::hours(1));
    a.failure.provider = None;
    a.failure.error_kind = "redriven".into();
    let stats = stats_of(&[a, b], now);
    assert_eq!(stats.total, 2);
    assert_eq!(stats.by_queue["tem-RoutitQueue"], 2);
    assert_eq!(stats.by_provider["(none)"], 1);
    assert_eq!(stats.by_kind["redriven"], 1);
    assert_eq!(stats.oldest_age_seconds, Some(3 * 3600));
}

#[test]
fn a_list_row_shows_the_first_line_of_the_error_and_the_age() {
    let now = Utc::now();
    let r = FailureRow::of(&row("a", Q, DLQ, "{}", now - Duration::minutes(5)), now);
    assert_eq!(r.error, "carrier answered 503");
    assert_eq!(r.age_seconds, 300);
}
