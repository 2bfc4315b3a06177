//! The DynamoDB adapters' rules against the emulator's DynamoDB, on tables
//! made like the template's (no stack deploy): a task's count never goes
//! below zero, a finished task never changes except through a retry, an
//! import counts only while its hand-off is open, and a dead-lettered
//! message id may be claimed again.

use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, GlobalSecondaryIndex, KeySchemaElement,
    KeyType, Projection, ProjectionType, ScalarAttributeType,
};
use chrono::{Duration, Utc};
use tem_shared::adapters::dynamodb::{DynamoIdempotency, DynamoTasks};
use tem_shared::ports::{Claim, HandoffChange, IdempotencyStore, TaskStore};
use tem_shared::tasks::{NewTask, TaskStatus};
use tem_tests::stack::emulator;

async fn client() -> aws_sdk_dynamodb::Client {
    aws_sdk_dynamodb::Client::new(&emulator().sdk_config().await)
}

fn key(name: &str, kind: KeyType) -> KeySchemaElement {
    KeySchemaElement::builder()
        .attribute_name(name)
        .key_type(kind)
        .build()
        .unwrap()
}

fn attribute(name: &str, kind: ScalarAttributeType) -> AttributeDefinition {
    AttributeDefinition::builder()
        .attribute_name(name)
        .attribute_type(kind)
        .build()
        .unwrap()
}

fn index(name: &str, hash: &str) -> GlobalSecondaryIndex {
    GlobalSecondaryIndex::builder()
        .index_name(name)
        .key_schema(key(hash, KeyType::Hash))
        .key_schema(key("created_ms", KeyType::Range))
        .projection(
            Projection::builder()
                .projection_type(ProjectionType::All)
                .build(),
        )
        .build()
        .unwrap()
}

/// A tasks table as infra/template.yaml declares it.
async fn tasks_table(client: &aws_sdk_dynamodb::Client) -> String {
    let name = format!("tasks-{}", uuid::Uuid::new_v4().simple());
    client
        .create_table()
        .table_name(&name)
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(attribute("pk", ScalarAttributeType::S))
        .attribute_definitions(attribute("open", ScalarAttributeType::S))
        .attribute_definitions(attribute("day", ScalarAttributeType::S))
        .attribute_definitions(attribute("created_ms", ScalarAttributeType::N))
        .key_schema(key("pk", KeyType::Hash))
        .global_secondary_indexes(index("open-index", "open"))
        .global_secondary_indexes(index("day-index", "day"))
        .send()
        .await
        .expect("create the tasks table");
    name
}

async fn idempotency_table(client: &aws_sdk_dynamodb::Client) -> String {
    let name = format!("idem-{}", uuid::Uuid::new_v4().simple());
    client
        .create_table()
        .table_name(&name)
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(attribute("id", ScalarAttributeType::S))
        .key_schema(key("id", KeyType::Hash))
        .send()
        .await
        .expect("create the idempotency table");
    name
}

async fn new_task(tasks: &DynamoTasks, id: &str) {
    tasks
        .create(
            &NewTask {
                task_id: id.into(),
                profile_id: 1,
                provider: "routit".into(),
                period: "2025-01-01".parse().unwrap(),
                created_at: Utc::now(),
            },
            None,
        )
        .await
        .unwrap();
}

/// The task ids the open-index holds.
async fn open_tasks(client: &aws_sdk_dynamodb::Client, table: &str) -> Vec<String> {
    client
        .query()
        .table_name(table)
        .index_name("open-index")
        .key_condition_expression("#open = :open")
        .expression_attribute_names("#open", "open")
        .expression_attribute_values(":open", AttributeValue::S("open".into()))
        .send()
        .await
        .expect("query the open-index")
        .items()
        .iter()
        .filter_map(|i| i.get("task_id")?.as_s().ok().cloned())
        .collect()
}

const TOKEN: &str = "s3://cdr/inbox/routit/1/2025-01-01/e1.zip";

#[tokio::test]
async fn an_import_counts_only_through_an_open_hand_off_and_a_finished_task_stays_finished() {
    let client = client().await;
    let table = tasks_table(&client).await;
    let tasks = DynamoTasks::new(client.clone(), &table, Duration::days(1));
    new_task(&tasks, "t1").await;
    assert_eq!(open_tasks(&client, &table).await, vec!["t1".to_string()]);

    let sync = tasks
        .branch_done("t1", "sync", 1, HandoffChange::Opens(TOKEN), Utc::now())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(sync.outstanding, 1);
    assert!(tasks.adoptable("t1", TOKEN, "import").await.unwrap());
    assert!(!tasks
        .adoptable("t1", "s3://cdr/copy.zip", "copy")
        .await
        .unwrap());

    // An import of another object never counts, even if it names the task.
    let copy = tasks
        .branch_done(
            "t1",
            "copy",
            0,
            HandoffChange::Closes("s3://cdr/copy.zip"),
            Utc::now(),
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!((copy.outstanding, copy.status), (1, TaskStatus::Pending));

    let import = tasks
        .branch_done("t1", "import", 0, HandoffChange::Closes(TOKEN), Utc::now())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (import.outstanding, import.status),
        (0, TaskStatus::Completed)
    );
    let completed = tasks.get("t1").await.unwrap().unwrap();
    assert!(open_tasks(&client, &table).await.is_empty());
    // The hand-off is closed; the import that closed it is still adopted.
    assert!(!tasks.adoptable("t1", TOKEN, "by-hand").await.unwrap());
    assert!(tasks.adoptable("t1", TOKEN, "import").await.unwrap());

    let later = Utc::now() + Duration::hours(1);
    tasks
        .branch_done("t1", "late", 0, HandoffChange::None, later)
        .await
        .unwrap();
    tasks
        .mark_failed("t1", "late", "late failure", later)
        .await
        .unwrap();
    let task = tasks.get("t1").await.unwrap().unwrap();
    assert_eq!(task.status, TaskStatus::Completed);
    assert_eq!(task.outstanding, 0);
    assert_eq!(task.finished_at, completed.finished_at);
    assert!(task.failed_ids.is_empty());
}

#[tokio::test]
async fn a_failed_task_reopens_when_its_last_failed_message_runs_again_then_completes() {
    let client = client().await;
    let table = tasks_table(&client).await;
    let tasks = DynamoTasks::new(client.clone(), &table, Duration::days(1));
    new_task(&tasks, "t2").await;
    tasks
        .branch_done("t2", "root", 2, HandoffChange::None, Utc::now())
        .await
        .unwrap();
    tasks
        .mark_failed("t2", "a", "a: broken", Utc::now())
        .await
        .unwrap();
    tasks
        .mark_failed("t2", "b", "b: broken", Utc::now())
        .await
        .unwrap();
    let failed = tasks.get("t2").await.unwrap().unwrap();
    assert_eq!(failed.status, TaskStatus::Failed);
    assert_eq!(failed.error.as_deref(), Some("a: broken"));
    let mut ids = failed.failed_ids.clone();
    ids.sort();
    assert_eq!(ids, vec!["a".to_string(), "b".to_string()]);
    assert!(open_tasks(&client, &table).await.is_empty());

    // One of two failed messages retried: still failed.
    assert_eq!(
        tasks.reopen("t2", "a", Utc::now()).await.unwrap(),
        Some(TaskStatus::Failed)
    );
    assert_eq!(
        tasks.reopen("t2", "b", Utc::now()).await.unwrap(),
        Some(TaskStatus::Running)
    );
    let reopened = tasks.get("t2").await.unwrap().unwrap();
    assert_eq!(
        (reopened.status, reopened.finished_at, reopened.error),
        (TaskStatus::Running, None, None)
    );
    assert!(reopened.failed_ids.is_empty());
    assert_eq!(reopened.notes.len(), 1);
    assert!(reopened.notes[0].ends_with("reopened: message b runs again"));
    assert_eq!(open_tasks(&client, &table).await, vec!["t2".to_string()]);

    for id in ["a", "b"] {
        tasks
            .branch_done("t2", id, 0, HandoffChange::None, Utc::now())
            .await
            .unwrap();
    }
    let done = tasks.get("t2").await.unwrap().unwrap();
    assert_eq!((done.status, done.outstanding), (TaskStatus::Completed, 0));
    assert_eq!(tasks.reopen("nobody", "x", Utc::now()).await.unwrap(), None);
}

#[tokio::test]
async fn a_task_is_listed_by_its_day() {
    let client = client().await;
    let table = tasks_table(&client).await;
    let tasks = DynamoTasks::new(client.clone(), &table, Duration::days(1));
    new_task(&tasks, "t3").await;
    let day = Utc::now().format("%Y-%m-%d").to_string();
    let items = client
        .query()
        .table_name(&table)
        .index_name("day-index")
        .key_condition_expression("#day = :day")
        .expression_attribute_names("#day", "day")
        .expression_attribute_values(":day", AttributeValue::S(day))
        .send()
        .await
        .expect("query the day-index")
        .items
        .unwrap_or_default();
    assert_eq!(items.len(), 1);
    assert!(items[0].get("created_ms").unwrap().as_n().is_ok());
}

#[tokio::test]
async fn a_dead_lettered_id_is_claimed_again_but_a_completed_one_never() {
    let client = client().await;
    let table = idempotency_table(&client).await;
    let store = DynamoIdempotency::new(client, &table, Duration::days(1));
    let now = Utc::now();
    let deadline = now + Duration::minutes(15);
    assert_eq!(
        store.claim("m1", now, deadline).await.unwrap(),
        Claim::Acquired {
            after_dead_letter: false
        }
    );
    assert!(matches!(
        store.claim("m1", now, deadline).await.unwrap(),
        Claim::InProgress { .. }
    ));
    store
        .dead_lettered("m1", "carrier down", now)
        .await
        .unwrap();
    assert_eq!(
        store.claim("m1", now, deadline).await.unwrap(),
        Claim::Acquired {
            after_dead_letter: true
        }
    );
    store.complete("m1", "completed", now).await.unwrap();
    store.dead_lettered("m1", "late", now).await.unwrap();
    assert!(matches!(
        store.claim("m1", now, deadline).await.unwrap(),
        Claim::Completed { .. }
    ));
}
