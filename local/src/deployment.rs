//! A deployed stack with its database, and the clients to look at it: what
//! the local run and every emulator test work with.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use aws_sdk_lambda::primitives::Blob;
use serde_json::Value;
use sqlx::PgPool;
use tem_shared::adapters::dynamodb::DynamoTasks;

use crate::emulator::Emulator;
use crate::stack::Stack;

/// The `DatabaseMaxConnections` tier of emulator stacks: the functions'
/// pools and queue concurrencies follow the template's mapping for it.
pub const EMULATOR_CONNECTION_BUDGET: u32 = 50;

pub struct Clients {
    pub sqs: aws_sdk_sqs::Client,
    pub s3: aws_sdk_s3::Client,
    pub dynamodb: aws_sdk_dynamodb::Client,
    pub lambda: aws_sdk_lambda::Client,
    pub secrets: aws_sdk_secretsmanager::Client,
}

pub struct Deployment {
    pub stack: Stack,
    pub pool: PgPool,
    /// Prefix of every secret the stack reads (its `SecretsPrefix`).
    pub secrets_prefix: String,
    pub clients: Clients,
}

/// The answer of a synchronous invocation.
#[derive(Debug)]
pub struct Invocation {
    /// `Some` when the function failed (Lambda's `FunctionError`).
    pub error: Option<String>,
    pub payload: Value,
}

/// A message read from a dead-letter queue, with the reason the runtime gave.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub body: String,
    pub attributes: std::collections::BTreeMap<String, String>,
}

impl Deployment {
    /// Stores the database URL where the functions look for it, then deploys
    /// the template as stack `name` (lowercase; it names the bucket).
    pub async fn create(
        emulator: &Emulator,
        name: &str,
        database_url: &str,
        pool: PgPool,
        parameters: &[(&str, String)],
    ) -> Result<Self> {
        let config = emulator.sdk_config().await;
        let clients = Clients {
            sqs: aws_sdk_sqs::Client::new(&config),
            s3: tem_shared::adapters::s3_client(&config),
            dynamodb: aws_sdk_dynamodb::Client::new(&config),
            lambda: aws_sdk_lambda::Client::new(&config),
            secrets: aws_sdk_secretsmanager::Client::new(&config),
        };
        let mut deployment = Deployment {
            stack: Stack {
                name: name.to_string(),
                outputs: Default::default(),
                emulator: emulator.clone(),
            },
            pool,
            secrets_prefix: name.to_string(),
            clients,
        };
        deployment
            .put_secret(&format!("{name}/database"), database_url)
            .await?;
        // What every emulator stack needs unlike AWS: plain loopback
        // PostgreSQL, the native build of scripts/build.sh, and a budget the
        // shared local server can give every test's stack at once. The
        // caller's parameters come last and win.
        let mut all = vec![
            ("SecretsPrefix", name.to_string()),
            ("ScheduleEnabled", "false".to_string()),
            ("DatabaseSslMode", "disable".to_string()),
            ("Architecture", "x86_64".to_string()),
            (
                "DatabaseMaxConnections",
                EMULATOR_CONNECTION_BUDGET.to_string(),
            ),
        ];
        all.extend(parameters.iter().cloned());
        deployment.stack = Stack::deploy(emulator, name, &all).await?;
        Ok(deployment)
    }

    pub async fn put_secret(&self, name: &str, value: &str) -> Result<()> {
        let created = self
            .clients
            .secrets
            .create_secret()
            .name(name)
            .secret_string(value)
            .send()
            .await;
        if created.is_err() {
            self.clients
                .secrets
                .put_secret_value()
                .secret_id(name)
                .secret_string(value)
                .send()
                .await
                .map_err(|e| anyhow::anyhow!(aws_sdk_secretsmanager::error::DisplayErrorContext(e)))
                .with_context(|| format!("store secret {name}"))?;
        }
        Ok(())
    }

    pub fn output(&self, key: &str) -> &str {
        self.stack.output(key)
    }

    /// The real task store over the stack's table.
    pub fn tasks(&self) -> DynamoTasks {
        DynamoTasks::new(
            self.clients.dynamodb.clone(),
            self.output("TasksTableName"),
            chrono::Duration::days(1),
        )
    }

    /// Invokes a function synchronously; `function` is an output key such
    /// as `SyncManagerFunctionName`.
    pub async fn invoke(&self, function: &str, payload: &Value) -> Result<Invocation> {
        let output = self
            .clients
            .lambda
            .invoke()
            .function_name(self.output(function))
            .payload(Blob::new(serde_json::to_vec(payload)?))
            .send()
            .await
            .map_err(|e| anyhow::anyhow!(aws_sdk_lambda::error::DisplayErrorContext(e)))
            .with_context(|| format!("invoke {function}"))?;
        let payload = output
            .payload()
            .map(|p| serde_json::from_slice(p.as_ref()).unwrap_or(Value::Null))
            .unwrap_or(Value::Null);
        Ok(Invocation {
            error: output.function_error().map(str::to_string),
            payload,
        })
    }

    /// Sends a raw body to a queue (output key such as `RoutitQueueUrl`).
    pub async fn send_raw(&self, queue: &str, body: &str) -> Result<()> {
        self.clients
            .sqs
            .send_message()
            .queue_url(self.output(queue))
            .message_body(body)
            .send()
            .await
            .map_err(|e| anyhow::anyhow!(aws_sdk_sqs::error::DisplayErrorContext(e)))?;
        Ok(())
    }

    /// Reads (and deletes) what is on a dead-letter queue now.
    pub async fn drain(&self, queue: &str) -> Result<Vec<DeadLetter>> {
        let url = self.output(queue).to_string();
        let mut found = Vec::new();
        loop {
            let received = self
                .clients
                .sqs
                .receive_message()
                .queue_url(&url)
                .max_number_of_messages(10)
                .message_attribute_names("All")
                .wait_time_seconds(0)
                .send()
                .await
                .map_err(|e| anyhow::anyhow!(aws_sdk_sqs::error::DisplayErrorContext(e)))?;
            let messages = received.messages.unwrap_or_default();
            if messages.is_empty() {
                return Ok(found);
            }
            for m in messages {
                if let Some(handle) = m.receipt_handle() {
                    let _ = self
                        .clients
                        .sqs
                        .delete_message()
                        .queue_url(&url)
                        .receipt_handle(handle)
                        .send()
                        .await;
                }
                found.push(DeadLetter {
                    body: m.body().unwrap_or_default().to_string(),
                    attributes: m
                        .message_attributes()
                        .into_iter()
                        .flatten()
                        .map(|(k, v)| (k.clone(), v.string_value().unwrap_or_default().to_string()))
                        .collect(),
                });
            }
        }
    }

    /// Keys and sizes of the objects in the CDR bucket under `prefix`.
    pub async fn objects(&self, prefix: &str) -> Result<Vec<(String, i64)>> {
        let listed = self
            .clients
            .s3
            .list_objects_v2()
            .bucket(self.output("CdrBucketName"))
            .prefix(prefix)
            .send()
            .await
            .map_err(|e| anyhow::anyhow!(aws_sdk_s3::error::DisplayErrorContext(e)))?;
        let mut objects: Vec<(String, i64)> = listed
            .contents()
            .iter()
            .filter_map(|o| Some((o.key()?.to_string(), o.size().unwrap_or(0))))
            .collect();
        objects.sort();
        Ok(objects)
    }
}

/// Polls `check` until it returns `Some`, or fails after `timeout` with
/// what was last seen.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>>>,
{
    let start = std::time::Instant::now();
    loop {
        if let Some(value) = check().await? {
            return Ok(value);
        }
        if start.elapsed() > timeout {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
