//! The tasks `status` counts (ops::status::TaskOverview), read by a Scan of
//! the tasks table's `task#` items.
//!
//! A stand-in until the table's `open-index` and `day-index` (contract 3)
//! and the ops-side `TaskAdmin` queries exist: those answer the same two
//! questions with a Query each and replace this adapter. A Scan reads the
//! whole table (finished tasks expire after their TTL, so it stays small),
//! which is acceptable for an operator's status call, not for a hot path.

use async_trait::async_trait;
use aws_sdk_dynamodb::error::DisplayErrorContext;
use aws_sdk_dynamodb::types::AttributeValue;
use aws_sdk_dynamodb::Client;
use chrono::{DateTime, Utc};

use crate::adapters::dynamodb::DynamoTasks;
use crate::ops::status::TaskOverview;
use crate::ports::PortError;
use crate::tasks::SyncTask;

/// A task item as the task store reads it. Outside the adapter's impl
/// blocks: this adapter only scans, it never calls the task store's own
/// operations (tests/support/permissions.rs reads the blocks).
fn parse_task(item: &std::collections::HashMap<String, AttributeValue>) -> Option<SyncTask> {
    DynamoTasks::parse_task(item)
}

pub struct DynamoTaskOverview {
    client: Client,
    table: String,
}

impl DynamoTaskOverview {
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        Self {
            client,
            table: table.into(),
        }
    }

    async fn all_tasks(&self) -> Result<Vec<SyncTask>, PortError> {
        let mut tasks = Vec::new();
        let mut start = None;
        loop {
            let page = self
                .client
                .scan()
                .table_name(&self.table)
                .filter_expression("begins_with(pk, :task)")
                .expression_attribute_values(":task", AttributeValue::S("task#".into()))
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(|e| PortError::new("dynamodb Scan tasks", DisplayErrorContext(e)))?;
            tasks.extend(page.items().iter().filter_map(parse_task));
            match page.last_evaluated_key() {
                Some(key) if !key.is_empty() => start = Some(key.clone()),
                _ => break,
            }
        }
        Ok(tasks)
    }
}

#[async_trait]
impl TaskOverview for DynamoTaskOverview {
    async fn tasks_created_between(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<SyncTask>, PortError> {
        Ok(self
            .all_tasks()
            .await?
            .into_iter()
            .filter(|t| t.created_at >= from && t.created_at < to)
            .collect())
    }

    async fn open_tasks(&self, created_before: DateTime<Utc>) -> Result<Vec<SyncTask>, PortError> {
        Ok(self
            .all_tasks()
            .await?
            .into_iter()
            .filter(|t| {
                matches!(t.status.as_str(), "pending" | "running") && t.created_at < created_before
            })
            .collect())
    }
}
