//! DynamoDB: the operator's side of sync tasks ([`TaskAdmin`]) on the tasks
//! table the runtime writes through [`DynamoTasks`]: notes, stalled tasks,
//! and the two indexes that list tasks without a scan (`open-index`, sparse
//! over unfinished tasks; `day-index`, by the UTC day a task was created).
//! Its own type beside `DynamoTasks`, so that only the ops function is
//! granted dynamodb:Query (infra/permissions.yaml counts calls per adapter
//! type).

use async_trait::async_trait;
use aws_sdk_dynamodb::types::AttributeValue;
use chrono::{DateTime, Duration, Utc};

use crate::adapters::dynamodb::{get_s, is_condition_failure, n, port_error, s, DynamoTasks, Item};
use crate::ports::{PortError, TaskAdmin};
use crate::tasks::{SyncTask, TaskStatus};

#[derive(Debug, Clone)]
pub struct DynamoTaskAdmin {
    client: aws_sdk_dynamodb::Client,
    table: String,
}

impl DynamoTaskAdmin {
    pub fn new(client: aws_sdk_dynamodb::Client, table: impl Into<String>) -> Self {
        Self {
            client,
            table: table.into(),
        }
    }

    pub fn from_config(config: &aws_config::SdkConfig, table: impl Into<String>) -> Self {
        Self::new(aws_sdk_dynamodb::Client::new(config), table)
    }
}

#[async_trait]
impl TaskAdmin for DynamoTaskAdmin {
    async fn note(&self, task_id: &str, text: &str, now: DateTime<Utc>) -> Result<(), PortError> {
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", DynamoTasks::task_key(task_id))
            .update_expression(
                "SET notes = list_append(if_not_exists(notes, :empty), :line), updated_at = :now",
            )
            .condition_expression("attribute_exists(pk)")
            .expression_attribute_values(":empty", AttributeValue::L(vec![]))
            .expression_attribute_values(":line", AttributeValue::L(vec![s(text)]))
            .expression_attribute_values(":now", s(now.to_rfc3339()))
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            // The task expired (TTL) or never existed: nothing to note on.
            Err(e) if is_condition_failure(&e) => Ok(()),
            Err(e) => Err(port_error("dynamodb UpdateItem task note")(e)),
        }
    }

    async fn mark_stalled(
        &self,
        task_id: &str,
        reason: &str,
        now: DateTime<Utc>,
    ) -> Result<bool, PortError> {
        let line = format!("{} stalled: {reason}", now.format("%Y-%m-%dT%H:%M:%SZ"));
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", DynamoTasks::task_key(task_id))
            .update_expression(
                "SET #status = :stalled, #error = :reason, updated_at = :now, \
                 notes = list_append(if_not_exists(notes, :empty), :line) REMOVE #open",
            )
            .condition_expression("#status IN (:pending, :running)")
            .expression_attribute_names("#status", "status")
            .expression_attribute_names("#error", "error")
            .expression_attribute_names("#open", "open")
            .expression_attribute_values(":stalled", s("stalled"))
            .expression_attribute_values(":pending", s(TaskStatus::Pending.as_str()))
            .expression_attribute_values(":running", s(TaskStatus::Running.as_str()))
            .expression_attribute_values(":reason", s(reason))
            .expression_attribute_values(":now", s(now.to_rfc3339()))
            .expression_attribute_values(":empty", AttributeValue::L(vec![]))
            .expression_attribute_values(":line", AttributeValue::L(vec![s(line)]))
            .send()
            .await;
        match result {
            Ok(_) => Ok(true),
            Err(e) if is_condition_failure(&e) => Ok(false),
            Err(e) => Err(port_error("dynamodb UpdateItem task stalled")(e)),
        }
    }

    async fn open_tasks(&self, created_before: DateTime<Utc>) -> Result<Vec<SyncTask>, PortError> {
        let items = query_all(
            self,
            "open-index",
            "open",
            "#k = :open AND created_ms < :before",
            vec![
                (":open", s("open")),
                (":before", n(created_before.timestamp_millis())),
            ],
        )
        .await?;
        Ok(tasks_of(&items))
    }

    async fn tasks_created_between(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<SyncTask>, PortError> {
        let mut tasks = Vec::new();
        let mut day = from.date_naive();
        while day <= to.date_naive() {
            let items = query_all(
                self,
                "day-index",
                "day",
                "#k = :day AND created_ms BETWEEN :from AND :to",
                vec![
                    (":day", s(day.to_string())),
                    (":from", n(from.timestamp_millis())),
                    // BETWEEN is inclusive; the range is half-open.
                    (":to", n(to.timestamp_millis() - 1)),
                ],
            )
            .await?;
            tasks.extend(tasks_of(&items));
            day += Duration::days(1);
        }
        tasks.sort_by_key(|t| t.created_at);
        Ok(tasks)
    }
}

/// Every page of one index query. Below the impl on purpose: the
/// permission check reads a block's calls up to the next impl, so this
/// Query counts as TaskAdmin's.
async fn query_all(
    admin: &DynamoTaskAdmin,
    index: &str,
    key_attribute: &str,
    key_condition: &str,
    values: Vec<(&str, AttributeValue)>,
) -> Result<Vec<Item>, PortError> {
    let mut items = Vec::new();
    let mut start = None;
    loop {
        let mut query = admin
            .client
            .query()
            .table_name(&admin.table)
            .index_name(index)
            .key_condition_expression(key_condition)
            .expression_attribute_names("#k", key_attribute)
            .set_exclusive_start_key(start.take());
        for (name, value) in &values {
            query = query.expression_attribute_values(*name, value.clone());
        }
        let output = query
            .send()
            .await
            .map_err(port_error("dynamodb Query tasks"))?;
        items.extend(output.items.unwrap_or_default());
        match output.last_evaluated_key {
            Some(key) if !key.is_empty() => start = Some(key),
            _ => return Ok(items),
        }
    }
}

fn tasks_of(items: &[Item]) -> Vec<SyncTask> {
    items
        .iter()
        .filter(|i| get_s(i, "pk").is_some_and(|pk| pk.starts_with("task#")))
        .filter_map(DynamoTasks::parse_task)
        .collect()
}
