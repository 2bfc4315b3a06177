//! DynamoDB: idempotency records and sync tasks.
//!
//! Tables (see infra/template.yaml):
//! - idempotency: key `id`; `status` in_progress|completed|dead_lettered,
//!   `expires_at` (epoch seconds, the Lambda deadline while in progress),
//!   `outcome`, `ttl`. A dead-lettered id may be claimed again (a retry).
//! - tasks: key `pk`; `task#{id}` items hold a task, `profile#{id}` items
//!   point at the profile's current task. A task item also has `created_ms`
//!   and `day` (for the `day-index`), `open` while unfinished (the sparse
//!   `open-index`), `done_ids`, `failed_ids`, `handoffs` (string sets) and
//!   `notes` (a list of operator-visible lines).

use std::collections::HashMap;

use async_trait::async_trait;
use aws_sdk_dynamodb::error::{DisplayErrorContext, SdkError};
use aws_sdk_dynamodb::types::{
    AttributeValue, KeysAndAttributes, Put, ReturnValue, TransactWriteItem,
};
use aws_sdk_dynamodb::Client;
use chrono::{DateTime, Duration, NaiveDate, Utc};
use futures::{stream, StreamExt};

use crate::ports::{
    Claim, HandoffChange, IdempotencyStore, PortError, TaskCreation, TaskFanOut, TaskStore,
};
use crate::tasks::{NewTask, SyncTask, TaskProgress, TaskStatus};

pub(crate) type Item = HashMap<String, AttributeValue>;

pub(crate) fn s(value: impl Into<String>) -> AttributeValue {
    AttributeValue::S(value.into())
}

pub(crate) fn n(value: impl ToString) -> AttributeValue {
    AttributeValue::N(value.to_string())
}

pub(crate) fn get_s<'a>(item: &'a Item, key: &str) -> Option<&'a str> {
    item.get(key)
        .and_then(|v| v.as_s().ok())
        .map(String::as_str)
}

pub(crate) fn get_n(item: &Item, key: &str) -> Option<i64> {
    item.get(key)
        .and_then(|v| v.as_n().ok())
        .and_then(|v| v.parse().ok())
}

fn get_time(item: &Item, key: &str) -> Option<DateTime<Utc>> {
    get_s(item, key).and_then(|v| v.parse().ok())
}

fn get_ss(item: &Item, key: &str) -> Vec<String> {
    item.get(key)
        .and_then(|v| v.as_ss().ok())
        .cloned()
        .unwrap_or_default()
}

fn get_list_of_s(item: &Item, key: &str) -> Vec<String> {
    item.get(key)
        .and_then(|v| v.as_l().ok())
        .map(|values| {
            values
                .iter()
                .filter_map(|v| v.as_s().ok().cloned())
                .collect()
        })
        .unwrap_or_default()
}

fn ss(value: &str) -> AttributeValue {
    AttributeValue::Ss(vec![value.to_string()])
}

/// The value of the sparse `open` attribute (the `open-index` hash key).
const OPEN: &str = "open";

pub(crate) fn port_error<E, R>(operation: &'static str) -> impl FnOnce(SdkError<E, R>) -> PortError
where
    E: std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    move |e| PortError::new(operation, DisplayErrorContext(e))
}

/// Whether an SDK error is a failed condition (an expected race, not a fault).
pub(crate) fn is_condition_failure<E, R>(error: &SdkError<E, R>) -> bool
where
    E: aws_sdk_dynamodb::error::ProvideErrorMetadata,
{
    error.as_service_error().and_then(|e| e.code()) == Some("ConditionalCheckFailedException")
}

#[derive(Debug, Clone)]
pub struct DynamoIdempotency {
    client: Client,
    table: String,
    ttl: Duration,
    /// How long a dead-lettered record is kept: as long as its failure is
    /// retryable, so the retry still reopens the task and resolves it.
    dead_letter_ttl: Duration,
}

impl DynamoIdempotency {
    pub fn new(client: Client, table: impl Into<String>, ttl: Duration) -> Self {
        Self {
            client,
            table: table.into(),
            ttl,
            dead_letter_ttl: Duration::days(crate::runtime::DEFAULT_FAILURE_RETENTION_DAYS),
        }
    }

    pub fn with_dead_letter_ttl(mut self, ttl: Duration) -> Self {
        self.dead_letter_ttl = ttl;
        self
    }
}

#[async_trait]
impl IdempotencyStore for DynamoIdempotency {
    async fn claim(
        &self,
        message_id: &str,
        now: DateTime<Utc>,
        expires_at: DateTime<Utc>,
    ) -> Result<Claim, PortError> {
        let put = self
            .client
            .put_item()
            .table_name(&self.table)
            .item("id", s(message_id))
            .item("status", s("in_progress"))
            .item("expires_at", n(expires_at.timestamp()))
            .item("ttl", n((now + self.ttl).timestamp()))
            .condition_expression(
                "attribute_not_exists(id) OR (#status = :in_progress AND expires_at < :now) \
                 OR #status = :dead_lettered",
            )
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":in_progress", s("in_progress"))
            .expression_attribute_values(":dead_lettered", s("dead_lettered"))
            .expression_attribute_values(":now", n(now.timestamp()))
            .return_values(ReturnValue::AllOld)
            .send()
            .await;
        match put {
            Ok(output) => {
                let after_dead_letter = output
                    .attributes
                    .as_ref()
                    .and_then(|old| get_s(old, "status"))
                    == Some("dead_lettered");
                return Ok(Claim::Acquired { after_dead_letter });
            }
            Err(e) if is_condition_failure(&e) => {}
            Err(e) => return Err(port_error("dynamodb PutItem idempotency")(e)),
        }
        let item = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("id", s(message_id))
            .consistent_read(true)
            .send()
            .await
            .map_err(port_error("dynamodb GetItem idempotency"))?
            .item
            .unwrap_or_default();
        Ok(match get_s(&item, "status") {
            Some("completed") => Claim::Completed {
                outcome: get_s(&item, "outcome").unwrap_or("").to_string(),
            },
            _ => Claim::InProgress {
                expires_at: get_n(&item, "expires_at")
                    .and_then(|t| DateTime::from_timestamp(t, 0))
                    .unwrap_or(now + Duration::seconds(1)),
            },
        })
    }

    async fn complete(
        &self,
        message_id: &str,
        outcome: &str,
        now: DateTime<Utc>,
    ) -> Result<(), PortError> {
        self.client
            .put_item()
            .table_name(&self.table)
            .item("id", s(message_id))
            .item("status", s("completed"))
            .item("outcome", s(outcome))
            .item("completed_at", s(now.to_rfc3339()))
            .item("ttl", n((now + self.ttl).timestamp()))
            .send()
            .await
            .map_err(port_error("dynamodb PutItem idempotency"))?;
        Ok(())
    }

    async fn release(&self, message_id: &str) -> Result<(), PortError> {
        let result = self
            .client
            .delete_item()
            .table_name(&self.table)
            .key("id", s(message_id))
            .condition_expression("#status = :in_progress")
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":in_progress", s("in_progress"))
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(e) if is_condition_failure(&e) => Ok(()),
            Err(e) => Err(port_error("dynamodb DeleteItem idempotency")(e)),
        }
    }

    async fn dead_lettered(
        &self,
        message_id: &str,
        reason: &str,
        now: DateTime<Utc>,
    ) -> Result<(), PortError> {
        let result = self
            .client
            .put_item()
            .table_name(&self.table)
            .item("id", s(message_id))
            .item("status", s("dead_lettered"))
            .item("outcome", s(format!("dead-lettered: {reason}")))
            .item("failed_at", s(now.to_rfc3339()))
            .item(
                "ttl",
                n((now + self.dead_letter_ttl.max(self.ttl)).timestamp()),
            )
            .condition_expression("attribute_not_exists(id) OR #status <> :completed")
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":completed", s("completed"))
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            // It completed after all (a redelivery that succeeded): keep that.
            Err(e) if is_condition_failure(&e) => Ok(()),
            Err(e) => Err(port_error("dynamodb PutItem idempotency dead-lettered")(e)),
        }
    }
}

/// An item with the condition of its put.
struct ConditionalPut {
    item: Item,
    condition: String,
    values: Item,
}

/// Profiles per `TransactWriteItems` of [`TaskFanOut::create_all`]: two
/// puts each, and a transaction holds at most 100 actions.
const PROFILES_PER_TRANSACTION: usize = 50;
/// Keys per `BatchGetItem`, DynamoDB's limit.
const KEYS_PER_BATCH_GET: usize = 100;
/// Calls of one batch read or creation in flight at once.
const CALLS_AT_ONCE: usize = 8;
/// Rounds of asking again for the keys a `BatchGetItem` left unprocessed.
const BATCH_GET_ROUNDS: u32 = 5;

#[derive(Debug, Clone)]
pub struct DynamoTasks {
    pub(crate) client: Client,
    pub(crate) table: String,
    /// How long finished tasks stay visible.
    ttl: Duration,
}

impl DynamoTasks {
    pub fn new(client: Client, table: impl Into<String>, ttl: Duration) -> Self {
        Self {
            client,
            table: table.into(),
            ttl,
        }
    }

    pub(crate) fn task_key(task_id: &str) -> AttributeValue {
        s(Self::task_pk(task_id))
    }

    fn profile_key(profile_id: i64) -> AttributeValue {
        s(Self::profile_pk(profile_id))
    }

    fn task_pk(task_id: &str) -> String {
        format!("task#{task_id}")
    }

    fn profile_pk(profile_id: i64) -> String {
        format!("profile#{profile_id}")
    }

    async fn get_item(&self, key: AttributeValue) -> Result<Option<Item>, PortError> {
        Ok(self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", key)
            .consistent_read(true)
            .send()
            .await
            .map_err(port_error("dynamodb GetItem task"))?
            .item)
    }

    pub(crate) fn parse_task(item: &Item) -> Option<SyncTask> {
        Some(SyncTask {
            task_id: get_s(item, "task_id")?.to_string(),
            profile_id: get_n(item, "profile_id")?,
            provider: get_s(item, "provider")?.to_string(),
            period: get_s(item, "period")?.parse::<NaiveDate>().ok()?,
            status: get_s(item, "status")?.parse().ok()?,
            created_at: get_time(item, "created_at")?,
            started_at: get_time(item, "started_at"),
            finished_at: get_time(item, "finished_at"),
            outstanding: get_n(item, "outstanding").unwrap_or(0),
            error: get_s(item, "error").map(str::to_string),
            notes: get_list_of_s(item, "notes"),
            failed_ids: get_ss(item, "failed_ids"),
        })
    }

    /// The put that makes `task` its profile's current task: allowed when
    /// the profile has none, has this one already (a redelivered run), or
    /// still has the one read before (`previous_task_id`).
    fn pointer_put(task: &NewTask, previous_task_id: Option<&str>) -> ConditionalPut {
        let mut condition = "attribute_not_exists(pk) OR current_task_id = :new".to_string();
        let mut values = HashMap::from([(":new".to_string(), s(&task.task_id))]);
        if let Some(previous) = previous_task_id {
            condition.push_str(" OR current_task_id = :previous");
            values.insert(":previous".to_string(), s(previous));
        }
        ConditionalPut {
            item: HashMap::from([
                ("pk".to_string(), Self::profile_key(task.profile_id)),
                ("current_task_id".to_string(), s(&task.task_id)),
                ("updated_at".to_string(), s(task.created_at.to_rfc3339())),
            ]),
            condition,
            values,
        }
    }

    /// The put of the task item itself, unless it exists.
    fn task_put(&self, task: &NewTask) -> ConditionalPut {
        let item = [
            ("pk", Self::task_key(&task.task_id)),
            ("task_id", s(&task.task_id)),
            ("profile_id", n(task.profile_id)),
            ("provider", s(&task.provider)),
            ("period", s(task.period.to_string())),
            ("status", s(TaskStatus::Pending.as_str())),
            ("created_at", s(task.created_at.to_rfc3339())),
            ("outstanding", n(1)),
            ("created_ms", n(task.created_at.timestamp_millis())),
            ("day", s(task.created_at.format("%Y-%m-%d").to_string())),
            (OPEN, s(OPEN)),
            ("ttl", n((task.created_at + self.ttl).timestamp())),
        ];
        ConditionalPut {
            item: item.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
            condition: "attribute_not_exists(pk)".to_string(),
            values: HashMap::new(),
        }
    }

    async fn progress(&self, task_id: &str) -> Result<Option<TaskProgress>, PortError> {
        Ok(self.get(task_id).await?.map(|task| TaskProgress {
            outstanding: task.outstanding,
            status: task.status,
        }))
    }
}

#[async_trait]
impl TaskStore for DynamoTasks {
    async fn create(
        &self,
        task: &NewTask,
        previous_task_id: Option<&str>,
    ) -> Result<TaskCreation, PortError> {
        let pointer = Self::pointer_put(task, previous_task_id);
        let put = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(pointer.item))
            .condition_expression(pointer.condition)
            .set_expression_attribute_values(Some(pointer.values))
            .send()
            .await;
        match put {
            Ok(_) => {}
            Err(e) if is_condition_failure(&e) => {
                let current = self
                    .get_item(Self::profile_key(task.profile_id))
                    .await?
                    .and_then(|item| get_s(&item, "current_task_id").map(str::to_string))
                    .unwrap_or_default();
                return Ok(TaskCreation::Superseded {
                    current_task_id: current,
                });
            }
            Err(e) => return Err(port_error("dynamodb PutItem profile pointer")(e)),
        }
        let task_put = self.task_put(task);
        let put = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(task_put.item))
            .condition_expression(task_put.condition)
            .send()
            .await;
        match put {
            Ok(_) => Ok(TaskCreation::Created),
            Err(e) if is_condition_failure(&e) => Ok(TaskCreation::AlreadyExists),
            Err(e) => Err(port_error("dynamodb PutItem task")(e)),
        }
    }

    async fn get(&self, task_id: &str) -> Result<Option<SyncTask>, PortError> {
        Ok(self
            .get_item(Self::task_key(task_id))
            .await?
            .as_ref()
            .and_then(Self::parse_task))
    }

    async fn current_for_profile(&self, profile_id: i64) -> Result<Option<SyncTask>, PortError> {
        let Some(pointer) = self.get_item(Self::profile_key(profile_id)).await? else {
            return Ok(None);
        };
        match get_s(&pointer, "current_task_id") {
            Some(task_id) => self.get(task_id).await,
            None => Ok(None),
        }
    }

    async fn mark_running(&self, task_id: &str, now: DateTime<Utc>) -> Result<(), PortError> {
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", Self::task_key(task_id))
            .update_expression("SET #status = :running, started_at = :now")
            .condition_expression("#status = :pending")
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":running", s(TaskStatus::Running.as_str()))
            .expression_attribute_values(":pending", s(TaskStatus::Pending.as_str()))
            .expression_attribute_values(":now", s(now.to_rfc3339()))
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(e) if is_condition_failure(&e) => Ok(()),
            Err(e) => Err(port_error("dynamodb UpdateItem task running")(e)),
        }
    }

    async fn branch_done(
        &self,
        task_id: &str,
        message_id: &str,
        new_branches: u32,
        handoff: HandoffChange<'_>,
        now: DateTime<Utc>,
    ) -> Result<Option<TaskProgress>, PortError> {
        // One atomic update counts the branch and remembers the message id,
        // so a redelivered message can never count twice, a branch never
        // counts on a task with none outstanding (the count stays >= 0), and
        // an import counts only while its hand-off is open.
        let delta = i64::from(new_branches) - 1;
        let mut update =
            "SET outstanding = outstanding + :delta, updated_at = :now ADD done_ids :ids"
                .to_string();
        let mut condition = "attribute_exists(pk) AND outstanding > :zero \
                             AND NOT contains(done_ids, :id)"
            .to_string();
        let mut request = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", Self::task_key(task_id));
        match handoff {
            HandoffChange::None => {}
            HandoffChange::Opens(token) => {
                update.push_str(", handoffs :token");
                request = request.expression_attribute_values(":token", ss(token));
            }
            HandoffChange::Closes(token) => {
                update.push_str(" DELETE handoffs :token");
                condition.push_str(" AND contains(handoffs, :token_s)");
                request = request
                    .expression_attribute_values(":token", ss(token))
                    .expression_attribute_values(":token_s", s(token));
            }
        }
        let result = request
            .update_expression(update)
            .condition_expression(condition)
            .expression_attribute_values(":delta", n(delta))
            .expression_attribute_values(":zero", n(0))
            .expression_attribute_values(":now", s(now.to_rfc3339()))
            .expression_attribute_values(":ids", ss(message_id))
            .expression_attribute_values(":id", s(message_id))
            .return_values(ReturnValue::AllNew)
            .send()
            .await;
        let (outstanding, status) = match result {
            Ok(output) => {
                let item = output.attributes.unwrap_or_default();
                (
                    get_n(&item, "outstanding").unwrap_or(0),
                    get_s(&item, "status").and_then(|v| v.parse::<TaskStatus>().ok()),
                )
            }
            Err(e) if is_condition_failure(&e) => return self.progress(task_id).await,
            Err(e) => return Err(port_error("dynamodb UpdateItem task branch")(e)),
        };
        let status = status.unwrap_or(TaskStatus::Running);
        if outstanding > 0 || !status.may_complete() {
            return Ok(Some(TaskProgress {
                outstanding,
                status,
            }));
        }
        // Completion only from an unfinished status: a failed task waits for
        // its retry, a completed one keeps its finish time.
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", Self::task_key(task_id))
            .update_expression("SET #status = :completed, finished_at = :now REMOVE #open")
            .condition_expression(
                "#status IN (:pending, :running, :stalled) AND outstanding <= :zero",
            )
            .expression_attribute_names("#status", "status")
            .expression_attribute_names("#open", OPEN)
            .expression_attribute_values(":completed", s(TaskStatus::Completed.as_str()))
            .expression_attribute_values(":pending", s(TaskStatus::Pending.as_str()))
            .expression_attribute_values(":running", s(TaskStatus::Running.as_str()))
            .expression_attribute_values(":stalled", s(TaskStatus::Stalled.as_str()))
            .expression_attribute_values(":zero", n(0))
            .expression_attribute_values(":now", s(now.to_rfc3339()))
            .send()
            .await;
        match result {
            Ok(_) => Ok(Some(TaskProgress {
                outstanding,
                status: TaskStatus::Completed,
            })),
            Err(e) if is_condition_failure(&e) => self.progress(task_id).await,
            Err(e) => Err(port_error("dynamodb UpdateItem task completed")(e)),
        }
    }

    async fn mark_failed(
        &self,
        task_id: &str,
        message_id: &str,
        reason: &str,
        now: DateTime<Utc>,
    ) -> Result<(), PortError> {
        // The first failure's time and reason stay; later ones only add
        // their message id.
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", Self::task_key(task_id))
            .update_expression(
                "SET #status = :failed, finished_at = if_not_exists(finished_at, :now), \
                 #error = if_not_exists(#error, :reason), updated_at = :now \
                 REMOVE #open ADD failed_ids :ids",
            )
            .condition_expression("attribute_exists(pk) AND #status <> :completed")
            .expression_attribute_names("#status", "status")
            .expression_attribute_names("#error", "error")
            .expression_attribute_names("#open", OPEN)
            .expression_attribute_values(":failed", s(TaskStatus::Failed.as_str()))
            .expression_attribute_values(":completed", s(TaskStatus::Completed.as_str()))
            .expression_attribute_values(":now", s(now.to_rfc3339()))
            .expression_attribute_values(":reason", s(reason))
            .expression_attribute_values(":ids", ss(message_id))
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            // No such task (nothing to fail), or it completed (it stays so).
            Err(e) if is_condition_failure(&e) => Ok(()),
            Err(e) => Err(port_error("dynamodb UpdateItem task failed")(e)),
        }
    }

    async fn reopen(
        &self,
        task_id: &str,
        message_id: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<TaskStatus>, PortError> {
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", Self::task_key(task_id))
            .update_expression("SET updated_at = :now DELETE failed_ids :ids")
            .condition_expression("attribute_exists(pk)")
            .expression_attribute_values(":now", s(now.to_rfc3339()))
            .expression_attribute_values(":ids", ss(message_id))
            .return_values(ReturnValue::AllNew)
            .send()
            .await;
        let item = match result {
            Ok(output) => output.attributes.unwrap_or_default(),
            Err(e) if is_condition_failure(&e) => return Ok(None),
            Err(e) => return Err(port_error("dynamodb UpdateItem task reopen")(e)),
        };
        let status = get_s(&item, "status").and_then(|v| v.parse::<TaskStatus>().ok());
        if status != Some(TaskStatus::Failed) || !get_ss(&item, "failed_ids").is_empty() {
            return Ok(status);
        }
        let note = AttributeValue::L(vec![s(crate::tasks::reopened_note(message_id, now))]);
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", Self::task_key(task_id))
            .update_expression(
                "SET #status = :running, #open = :open, updated_at = :now, \
                 notes = list_append(if_not_exists(notes, :empty), :note) \
                 REMOVE finished_at, #error",
            )
            .condition_expression(
                "#status = :failed AND (attribute_not_exists(failed_ids) OR size(failed_ids) = :zero)",
            )
            .expression_attribute_names("#status", "status")
            .expression_attribute_names("#open", OPEN)
            .expression_attribute_names("#error", "error")
            .expression_attribute_values(":running", s(TaskStatus::Running.as_str()))
            .expression_attribute_values(":failed", s(TaskStatus::Failed.as_str()))
            .expression_attribute_values(":open", s(OPEN))
            .expression_attribute_values(":now", s(now.to_rfc3339()))
            .expression_attribute_values(":empty", AttributeValue::L(vec![]))
            .expression_attribute_values(":note", note)
            .expression_attribute_values(":zero", n(0))
            .send()
            .await;
        match result {
            Ok(_) => Ok(Some(TaskStatus::Running)),
            // Another message failed meanwhile: the task stays failed.
            Err(e) if is_condition_failure(&e) => Ok(self.get(task_id).await?.map(|t| t.status)),
            Err(e) => Err(port_error("dynamodb UpdateItem task reopened")(e)),
        }
    }

    async fn adoptable(
        &self,
        task_id: &str,
        token: &str,
        message_id: &str,
    ) -> Result<bool, PortError> {
        Ok(self
            .get_item(Self::task_key(task_id))
            .await?
            .is_some_and(|item| {
                get_ss(&item, "handoffs").iter().any(|t| t == token)
                    || get_ss(&item, "done_ids").iter().any(|id| id == message_id)
            }))
    }
}

/// The fan-out's reads and creations, many profiles per call: pointers and
/// tasks read with `BatchGetItem` (consistent reads, 100 keys a call), and
/// the pointer and task puts of 50 profiles in one `TransactWriteItems`,
/// with the conditions `create` uses. A transaction is all or nothing: when
/// one condition fails (a redelivered run, a concurrent one), none of its
/// puts happened, and its profiles are created one by one with `create`,
/// which answers for each. Only sync-manager does this (and is granted
/// BatchGetItem); the other functions use [`TaskStore`] alone.
#[async_trait]
impl TaskFanOut for DynamoTasks {
    async fn current_for_profiles(
        &self,
        profile_ids: &[i64],
    ) -> Vec<Result<Option<SyncTask>, PortError>> {
        /// The items of `keys` (at most 100 `pk`s) that exist, by `pk`.
        async fn batch_get(
            client: &Client,
            table: &str,
            keys: Vec<String>,
        ) -> Result<HashMap<String, Item>, PortError> {
            let mut found = HashMap::new();
            let mut pending: Vec<Item> = keys
                .into_iter()
                .map(|pk| HashMap::from([("pk".to_string(), s(pk))]))
                .collect();
            for round in 1..=BATCH_GET_ROUNDS {
                let keys = KeysAndAttributes::builder()
                    .set_keys(Some(pending))
                    .consistent_read(true)
                    .build()
                    .map_err(|e| PortError::new("dynamodb BatchGetItem keys", e))?;
                let output = client
                    .batch_get_item()
                    .request_items(table, keys)
                    .send()
                    .await
                    .map_err(port_error("dynamodb BatchGetItem tasks"))?;
                for item in output
                    .responses
                    .and_then(|mut r| r.remove(table))
                    .into_iter()
                    .flatten()
                {
                    if let Some(pk) = get_s(&item, "pk") {
                        found.insert(pk.to_string(), item);
                    }
                }
                pending = output
                    .unprocessed_keys
                    .and_then(|mut u| u.remove(table))
                    .map(|k| k.keys)
                    .unwrap_or_default();
                if pending.is_empty() {
                    return Ok(found);
                }
                tokio::time::sleep(std::time::Duration::from_millis(50 * u64::from(round))).await;
            }
            Err(PortError::new(
                "dynamodb BatchGetItem tasks",
                format!(
                    "{} keys still unprocessed after {BATCH_GET_ROUNDS} rounds",
                    pending.len()
                ),
            ))
        }
        /// Each chunk of keys read at once; every key with its chunk's result.
        async fn read_all(
            client: &Client,
            table: &str,
            keys: Vec<String>,
        ) -> HashMap<String, Result<Option<Item>, PortError>> {
            let chunks: Vec<Vec<String>> = keys
                .chunks(KEYS_PER_BATCH_GET)
                .map(<[String]>::to_vec)
                .collect();
            let read: Vec<(Vec<String>, Result<HashMap<String, Item>, PortError>)> =
                stream::iter(chunks)
                    .map(|chunk| async move {
                        let result = batch_get(client, table, chunk.clone()).await;
                        (chunk, result)
                    })
                    .buffer_unordered(CALLS_AT_ONCE)
                    .collect()
                    .await;
            let mut by_key = HashMap::new();
            for (chunk, result) in read {
                for key in chunk {
                    let answer = match &result {
                        Ok(items) => Ok(items.get(&key).cloned()),
                        Err(e) => Err(e.clone()),
                    };
                    by_key.insert(key, answer);
                }
            }
            by_key
        }

        let mut unique: Vec<i64> = profile_ids.to_vec();
        unique.sort_unstable();
        unique.dedup();
        let pointer_keys: Vec<String> = unique.iter().map(|id| Self::profile_pk(*id)).collect();
        let pointers = read_all(&self.client, &self.table, pointer_keys).await;
        let current_of = |id: i64| -> Result<Option<String>, PortError> {
            match pointers.get(&Self::profile_pk(id)) {
                Some(Ok(item)) => Ok(item
                    .as_ref()
                    .and_then(|i| get_s(i, "current_task_id"))
                    .map(str::to_string)),
                Some(Err(e)) => Err(e.clone()),
                None => Ok(None),
            }
        };
        let mut task_keys: Vec<String> = unique
            .iter()
            .filter_map(|id| current_of(*id).ok().flatten())
            .map(|task_id| Self::task_pk(&task_id))
            .collect();
        task_keys.sort_unstable();
        task_keys.dedup();
        let tasks = read_all(&self.client, &self.table, task_keys).await;
        profile_ids
            .iter()
            .map(|id| {
                let Some(task_id) = current_of(*id)? else {
                    return Ok(None);
                };
                match tasks.get(&Self::task_pk(&task_id)) {
                    Some(Ok(item)) => Ok(item.as_ref().and_then(Self::parse_task)),
                    Some(Err(e)) => Err(e.clone()),
                    None => Ok(None),
                }
            })
            .collect()
    }

    async fn create_all(
        &self,
        tasks: &[(NewTask, Option<String>)],
    ) -> Vec<Result<TaskCreation, PortError>> {
        let put = |put: ConditionalPut| -> Result<TransactWriteItem, PortError> {
            let put = Put::builder()
                .table_name(&self.table)
                .set_item(Some(put.item))
                .condition_expression(put.condition)
                .set_expression_attribute_values((!put.values.is_empty()).then_some(put.values))
                .build()
                .map_err(|e| PortError::new("dynamodb transaction put", e))?;
            Ok(TransactWriteItem::builder().put(put).build())
        };
        let transaction = |chunk: &[(NewTask, Option<String>)]| {
            let mut items = Vec::with_capacity(chunk.len() * 2);
            for (task, previous) in chunk {
                items.push(put(Self::pointer_put(task, previous.as_deref()))?);
                items.push(put(self.task_put(task))?);
            }
            Ok::<_, PortError>(items)
        };
        let chunks: Vec<Vec<(NewTask, Option<String>)>> = tasks
            .chunks(PROFILES_PER_TRANSACTION)
            .map(<[_]>::to_vec)
            .collect();
        let created: Vec<Vec<Result<TaskCreation, PortError>>> = stream::iter(chunks)
            .map(|chunk| async move {
                // A profile twice in one transaction would be refused whole.
                let mut profiles: Vec<i64> = chunk.iter().map(|(t, _)| t.profile_id).collect();
                profiles.sort_unstable();
                profiles.dedup();
                if profiles.len() == chunk.len() {
                    if let Ok(items) = transaction(&chunk) {
                        let sent = self
                            .client
                            .transact_write_items()
                            .set_transact_items(Some(items))
                            .send()
                            .await;
                        match sent {
                            Ok(_) => {
                                return chunk.iter().map(|_| Ok(TaskCreation::Created)).collect()
                            }
                            Err(e) => tracing::debug!(
                                error = %DisplayErrorContext(e),
                                "task transaction not written; creating its tasks one by one"
                            ),
                        }
                    }
                }
                let mut one_by_one = Vec::with_capacity(chunk.len());
                for (task, previous) in &chunk {
                    one_by_one.push(self.create(task, previous.as_deref()).await);
                }
                one_by_one
            })
            .buffered(CALLS_AT_ONCE)
            .collect()
            .await;
        created.into_iter().flatten().collect()
    }
}
