//! `fanout-bench`: one sync-manager run over many profiles against the AWS
//! emulator (issue 17, item 5). The run is the function's own domain code
//! and adapters, in this process: `SyncManager` over `PgProfiles`,
//! `DynamoTasks`, `SqsQueues` and `PgRunLog`, wired as
//! functions/sync-manager/src/main.rs wires them. In-process, because the
//! calls are counted by an interceptor on the SDK clients the adapters get
//! (a deployed function's calls could only be read back from the
//! emulator's log), and because the time is the run's alone: no invoke,
//! no awscli, and the release build rather than the debug build the
//! emulator runs.
//!
//! Every round gets its own resources: a fresh migrated database with the
//! profiles, and in the emulator the seven provider queues and the tasks
//! table, created from `TasksTable` in infra/template.yaml (keys and
//! indexes as deployed). After the run the queues are drained and every
//! message counted, and the tasks counted in the table.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use aws_sdk_dynamodb::config::interceptors::{
    AfterDeserializationInterceptorContextRef, BeforeTransmitInterceptorContextRef,
};
use aws_sdk_dynamodb::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, GlobalSecondaryIndex, KeySchemaElement,
    KeyType, Projection, ProjectionType, ScalarAttributeType, Select,
};
use aws_sdk_sqs::operation::send_message_batch::SendMessageBatchOutput;
use chrono::Utc;
use serde::Serialize;
use serde_json::Value;
use tem_local::emulator::{repo_root, Emulator, EmulatorKind};
use tem_shared::adapters::dynamodb::DynamoTasks;
use tem_shared::adapters::postgres::{PgProfiles, PgRunLog};
use tem_shared::adapters::sqs::SqsQueues;
use tem_shared::routing::{Provider, Router};
use tem_shared::sync::manager::{RunSummary, SyncManager};
use tem_shared::sync::profile::ProfileSelection;

use crate::db::BenchDb;
use crate::report::Goal;

/// The goals of issue 17, item 5.
pub const GOAL_MESSAGES_PER_CALL: f64 = 9.5;
pub const GOAL_RUN_SECONDS: f64 = 10.0;

pub struct Options {
    pub profiles: u32,
    pub runs: u32,
    /// The sync-manager's pool (`ManagerPool` of the template's budgets: 2).
    pub pool: u32,
    pub database_url: String,
    pub keep: bool,
}

/// The SDK calls of one client, counted as they are sent (every attempt,
/// retries included) by an interceptor.
#[derive(Debug, Default)]
pub struct Calls {
    /// Requests by operation (the `X-Amz-Target` header of the JSON
    /// protocols DynamoDB and SQS speak: `DynamoDB_20120810.PutItem`).
    by_operation: Mutex<BTreeMap<String, u64>>,
    /// Entries in the SendMessageBatch requests sent.
    batch_entries: AtomicU64,
    /// Entries SQS answered as sent, and as failed.
    batch_successful: AtomicU64,
    batch_failed: AtomicU64,
    /// Sizes of the SendMessageBatch requests: size -> requests.
    batch_sizes: Mutex<BTreeMap<usize, u64>>,
    /// Per operation, when its first request went out and its last answer
    /// came back: the run's phases as the calls show them.
    spans: Mutex<BTreeMap<String, (Instant, Instant)>>,
}

impl Calls {
    fn reset(&self) {
        self.by_operation.lock().expect("calls lock").clear();
        self.batch_sizes.lock().expect("calls lock").clear();
        self.spans.lock().expect("calls lock").clear();
        for counter in [
            &self.batch_entries,
            &self.batch_successful,
            &self.batch_failed,
        ] {
            counter.store(0, Ordering::SeqCst);
        }
    }

    fn operations(&self) -> BTreeMap<String, u64> {
        self.by_operation.lock().expect("calls lock").clone()
    }

    /// Each operation's span in seconds from `start`: (first sent, last answered).
    fn spans(&self, start: Instant) -> BTreeMap<String, (f64, f64)> {
        self.spans
            .lock()
            .expect("calls lock")
            .iter()
            .map(|(op, (first, last))| {
                let at = |t: &Instant| t.saturating_duration_since(start).as_secs_f64();
                (op.clone(), (at(first), at(last)))
            })
            .collect()
    }

    fn span(&self, operation: &str, at: Instant) {
        let mut spans = self.spans.lock().expect("calls lock");
        let span = spans.entry(operation.to_string()).or_insert((at, at));
        span.0 = span.0.min(at);
        span.1 = span.1.max(at);
    }
}

/// The operation named in a request's `X-Amz-Target` header.
fn target_of(request: &aws_sdk_dynamodb::config::http::HttpRequest) -> String {
    request
        .headers()
        .get("x-amz-target")
        .map(operation)
        .unwrap_or("(no X-Amz-Target)")
        .to_string()
}

#[derive(Debug, Clone)]
struct CountCalls(Arc<Calls>);

/// The operation of a request of a JSON-protocol service, from its target
/// header (`AmazonSQS.SendMessageBatch` -> `SendMessageBatch`).
fn operation(target: &str) -> &str {
    target.rsplit('.').next().unwrap_or(target)
}

impl Intercept for CountCalls {
    fn name(&self) -> &'static str {
        "fanout-bench call counter"
    }

    fn read_before_transmit(
        &self,
        context: &BeforeTransmitInterceptorContextRef<'_>,
        _: &RuntimeComponents,
        _: &mut ConfigBag,
    ) -> Result<(), aws_sdk_dynamodb::error::BoxError> {
        let request = context.request();
        let target = target_of(request);
        self.0.span(&target, Instant::now());
        if target == "SendMessageBatch" {
            // The entries this request really carries, from its body.
            let entries = request
                .body()
                .bytes()
                .and_then(|b| serde_json::from_slice::<Value>(b).ok())
                .and_then(|v| v["Entries"].as_array().map(Vec::len))
                .unwrap_or(0);
            self.0
                .batch_entries
                .fetch_add(entries as u64, Ordering::SeqCst);
            *self
                .0
                .batch_sizes
                .lock()
                .expect("calls lock")
                .entry(entries)
                .or_default() += 1;
        }
        *self
            .0
            .by_operation
            .lock()
            .expect("calls lock")
            .entry(target)
            .or_default() += 1;
        Ok(())
    }

    fn read_after_deserialization(
        &self,
        context: &AfterDeserializationInterceptorContextRef<'_>,
        _: &RuntimeComponents,
        _: &mut ConfigBag,
    ) -> Result<(), aws_sdk_dynamodb::error::BoxError> {
        if let Ok(output) = context.output_or_error() {
            // The operation of the answer, for those sync-manager calls
            // (an error ends no span).
            use aws_sdk_dynamodb::operation as ddb;
            let operation = if output.downcast_ref::<SendMessageBatchOutput>().is_some() {
                Some("SendMessageBatch")
            } else if output
                .downcast_ref::<ddb::batch_get_item::BatchGetItemOutput>()
                .is_some()
            {
                Some("BatchGetItem")
            } else if output
                .downcast_ref::<ddb::transact_write_items::TransactWriteItemsOutput>()
                .is_some()
            {
                Some("TransactWriteItems")
            } else if output
                .downcast_ref::<ddb::get_item::GetItemOutput>()
                .is_some()
            {
                Some("GetItem")
            } else if output
                .downcast_ref::<ddb::put_item::PutItemOutput>()
                .is_some()
            {
                Some("PutItem")
            } else if output
                .downcast_ref::<ddb::update_item::UpdateItemOutput>()
                .is_some()
            {
                Some("UpdateItem")
            } else {
                None
            };
            if let Some(operation) = operation {
                self.0.span(operation, Instant::now());
            }
            if let Some(batch) = output.downcast_ref::<SendMessageBatchOutput>() {
                self.0
                    .batch_successful
                    .fetch_add(batch.successful().len() as u64, Ordering::SeqCst);
                self.0
                    .batch_failed
                    .fetch_add(batch.failed().len() as u64, Ordering::SeqCst);
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Round {
    pub seconds: f64,
    pub profiles_seen: usize,
    pub sent: usize,
    pub skipped: usize,
    pub failures: usize,
    pub send_message_batch_calls: u64,
    /// Entries in those calls (each attempt's, from its request body).
    pub batch_entries: u64,
    /// Entries SQS answered as sent / failed.
    pub batch_successful: u64,
    pub batch_failed: u64,
    /// batch_entries / send_message_batch_calls.
    pub messages_per_call: f64,
    /// SendMessageBatch requests by their number of entries.
    pub batch_sizes: BTreeMap<usize, u64>,
    pub sqs_calls: BTreeMap<String, u64>,
    pub dynamodb_calls: BTreeMap<String, u64>,
    pub dynamodb_calls_total: u64,
    /// Messages received back from the queues (distinct envelope ids).
    pub messages_on_queues: u64,
    pub messages_by_provider: BTreeMap<String, u64>,
    /// `task#` items in the tasks table.
    pub tasks_in_table: u64,
    /// `sent` of the run's `sync_run` row.
    pub sync_run_sent: i32,
    /// Per operation, seconds from the run's start to its first request
    /// and to its last answer.
    pub spans: BTreeMap<String, (f64, f64)>,
    /// CPU seconds the emulator's process spent during the run (MiniStack,
    /// one Python process: what bounds the run on a quiet machine).
    pub emulator_cpu_seconds: Option<f64>,
    /// What the run wrote to stdout: its EMF metric lines.
    pub emf_lines: u64,
    pub emf_bytes: u64,
}

/// Standard output pointed at a temporary file while it lives (the
/// process's file descriptor 1, which `metrics::Emf::emit` writes to).
struct StdoutAside {
    saved: std::os::fd::RawFd,
    file: std::fs::File,
    path: std::path::PathBuf,
}

impl StdoutAside {
    fn new() -> Result<Self> {
        use std::io::Write;
        use std::os::fd::AsRawFd;
        let path = std::env::temp_dir().join(format!("fanout-bench-{}.out", std::process::id()));
        let file =
            std::fs::File::create(&path).with_context(|| format!("create {}", path.display()))?;
        std::io::stdout().flush()?;
        // SAFETY: dup and dup2 on descriptors this process owns; nothing
        // else closes 1 meanwhile.
        let saved = unsafe { libc::dup(1) };
        ensure!(saved >= 0, "dup(1): {}", std::io::Error::last_os_error());
        ensure!(
            unsafe { libc::dup2(file.as_raw_fd(), 1) } >= 0,
            "dup2: {}",
            std::io::Error::last_os_error()
        );
        Ok(Self { saved, file, path })
    }

    /// Points stdout back; the lines and bytes written meanwhile.
    fn restore(self) -> Result<(u64, u64)> {
        use std::io::Write;
        std::io::stdout().flush()?;
        // SAFETY: as in new; `saved` is ours and closed once.
        unsafe {
            libc::dup2(self.saved, 1);
            libc::close(self.saved);
        }
        drop(self.file);
        let text = std::fs::read(&self.path)?;
        std::fs::remove_file(&self.path).ok();
        let lines = text.iter().filter(|b| **b == b'\n').count() as u64;
        Ok((lines, text.len() as u64))
    }
}

#[derive(Debug, Serialize)]
pub struct Summary {
    pub profiles: u32,
    pub providers: usize,
    pub mode: &'static str,
    pub emulator: String,
    pub load_average_before: String,
    pub load_average_after: String,
    pub rounds: Vec<Round>,
    pub best_seconds: f64,
    pub median_seconds: f64,
    pub goals: Vec<Goal>,
    pub all_goals_met: bool,
    pub checks_passed: bool,
}

pub async fn run(options: Options) -> Result<Summary> {
    let emulator = Emulator::start().context("start the emulator (scripts/emulator.sh start)")?;
    let sdk = emulator.sdk_config().await;
    // MiniStack's process, to read its CPU time (not known for another emulator).
    let emulator_pid = match emulator.kind {
        EmulatorKind::MiniStack => emulator
            .env
            .get("EMULATOR_PID")
            .and_then(|p| p.parse().ok()),
        EmulatorKind::External => None,
    };
    let load_average_before = crate::report::load_average();
    let mut rounds = Vec::new();
    for round in 0..options.runs {
        eprintln!(
            "fanout-bench: round {} of {}: seeding {} profiles ...",
            round + 1,
            options.runs,
            options.profiles
        );
        rounds.push(run_round(&sdk, emulator_pid, &options).await?);
        let r = rounds.last().expect("just pushed");
        eprintln!(
            "fanout-bench: round {}: {:.3} s, {} SendMessageBatch calls, {:.2} messages per call",
            round + 1,
            r.seconds,
            r.send_message_batch_calls,
            r.messages_per_call
        );
    }
    let mut times: Vec<f64> = rounds.iter().map(|r| r.seconds).collect();
    times.sort_by(f64::total_cmp);
    let best_seconds = times[0];
    let median_seconds = times[times.len() / 2];
    // The worst round's batching: every round sends the same messages.
    let messages_per_call = rounds
        .iter()
        .map(|r| r.messages_per_call)
        .fold(f64::INFINITY, f64::min);
    let goals = vec![
        Goal::at_least(
            "messages per SendMessageBatch call (worst round)",
            messages_per_call,
            GOAL_MESSAGES_PER_CALL,
            "messages",
        ),
        Goal::at_most(
            "sync-manager run (median round)",
            median_seconds,
            GOAL_RUN_SECONDS,
            "s",
            true,
        ),
    ];
    let expected = u64::from(options.profiles);
    let checks_passed = rounds.iter().all(|r| {
        r.sent as u64 == expected
            && r.failures == 0
            && r.skipped == 0
            && r.messages_on_queues == expected
            && r.tasks_in_table == expected
            && r.batch_successful == expected
            && r.sync_run_sent as u64 == expected
    });
    Ok(Summary {
        profiles: options.profiles,
        providers: Provider::ALL.len(),
        mode: "in-process: SyncManager with PgProfiles, DynamoTasks, SqsQueues, PgRunLog (as functions/sync-manager wires them)",
        emulator: emulator.endpoint.clone(),
        load_average_before,
        load_average_after: crate::report::load_average(),
        all_goals_met: goals.iter().all(|g| g.met),
        rounds,
        best_seconds,
        median_seconds,
        goals,
        checks_passed,
    })
}

/// The names of one round's resources: short, unique, lowercase.
fn prefix() -> String {
    format!("fb{}", &uuid::Uuid::new_v4().simple().to_string()[..8])
}

/// User and system CPU seconds of a process so far (Linux `/proc`).
fn emulator_cpu(pid: Option<u32>) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", pid?)).ok()?;
    // The fields after the command's closing parenthesis; utime and stime
    // are the 14th and 15th of the whole line.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    // SAFETY: sysconf only reads a system constant.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (per_second > 0).then(|| ticks / per_second as f64)
}

async fn run_round(
    sdk: &aws_config::SdkConfig,
    emulator_pid: Option<u32>,
    options: &Options,
) -> Result<Round> {
    let prefix = prefix();
    let dynamodb = aws_sdk_dynamodb::Client::new(sdk);
    let sqs = aws_sdk_sqs::Client::new(sdk);

    // The emulator's side: the tasks table as the template defines it, and
    // one queue per provider.
    let table = format!("{prefix}-tasks");
    create_tasks_table(&dynamodb, &table).await?;
    let mut queues = BTreeMap::new();
    for provider in Provider::ALL {
        let url = sqs
            .create_queue()
            .queue_name(format!("{prefix}-{}", provider.as_str().replace('_', "-")))
            .send()
            .await
            .map_err(|e| anyhow::anyhow!(aws_sdk_sqs::error::DisplayErrorContext(e)))
            .context("create a provider queue")?
            .queue_url
            .context("CreateQueue answered no URL")?;
        queues.insert(provider, url);
    }

    // PostgreSQL's side: a fresh database with the profiles, all due.
    let db = BenchDb::create(&options.database_url).await?;
    seed_profiles(&db, options.profiles).await?;
    let pool = tem_shared::adapters::postgres::connect(&db.url, options.pool)
        .await
        .context("connect the sync-manager's pool")?;

    // The adapters get clients that count every request they send.
    let dynamodb_calls = Arc::new(Calls::default());
    let sqs_calls = Arc::new(Calls::default());
    let counted_dynamodb = aws_sdk_dynamodb::Client::from_conf(
        aws_sdk_dynamodb::config::Builder::from(sdk)
            .interceptor(CountCalls(dynamodb_calls.clone()))
            .build(),
    );
    let counted_sqs = aws_sdk_sqs::Client::from_conf(
        aws_sdk_sqs::config::Builder::from(sdk)
            .interceptor(CountCalls(sqs_calls.clone()))
            .build(),
    );
    let manager = SyncManager::new(
        Arc::new(PgProfiles::new(pool.clone())),
        Arc::new(DynamoTasks::new(
            counted_dynamodb,
            &table,
            chrono::Duration::days(1),
        )),
        Arc::new(SqsQueues::new(counted_sqs)),
        Arc::new(PgRunLog::new(pool.clone())),
        Router::new(queues.clone()),
        chrono::Duration::minutes(60),
    );
    dynamodb_calls.reset();
    sqs_calls.reset();
    let run_key = format!("{prefix}-tick");
    // The run writes its metrics to stdout as EMF lines, as in Lambda; they
    // go to a file, so they are written (and cost what they cost) without
    // burying the report.
    let emf = StdoutAside::new()?;
    let cpu_before = emulator_cpu(emulator_pid);
    let started = Instant::now();
    let summary = manager
        .run(&ProfileSelection::All, &run_key, "schedule", Utc::now())
        .await;
    let seconds = started.elapsed().as_secs_f64();
    let emulator_cpu_seconds = cpu_before
        .zip(emulator_cpu(emulator_pid))
        .map(|(a, b)| b - a);
    let (emf_lines, emf_bytes) = emf.restore()?;
    let summary = summary.context("the sync-manager run")?;

    // What arrived, counted by reading it back.
    let sync_run_sent: i32 = sqlx::query_scalar("SELECT sent FROM sync_run WHERE id = $1")
        .bind(&summary.run_id)
        .fetch_one(&pool)
        .await
        .context("read the run's sync_run row")?;
    let messages_by_provider = drain_queues(&sqs, &queues).await?;
    let tasks_in_table = count_tasks(&dynamodb, &table).await?;

    let operations = sqs_calls.operations();
    let send_message_batch_calls = operations.get("SendMessageBatch").copied().unwrap_or(0);
    let batch_entries = sqs_calls.batch_entries.load(Ordering::SeqCst);
    let dynamodb_operations = dynamodb_calls.operations();
    let mut spans = sqs_calls.spans(started);
    spans.extend(dynamodb_calls.spans(started));
    let round = Round {
        seconds,
        profiles_seen: summary.profiles_seen,
        sent: summary.sent.len(),
        skipped: summary.skipped.len(),
        failures: summary.failures.len(),
        send_message_batch_calls,
        batch_entries,
        batch_successful: sqs_calls.batch_successful.load(Ordering::SeqCst),
        batch_failed: sqs_calls.batch_failed.load(Ordering::SeqCst),
        messages_per_call: if send_message_batch_calls == 0 {
            0.0
        } else {
            batch_entries as f64 / send_message_batch_calls as f64
        },
        batch_sizes: sqs_calls.batch_sizes.lock().expect("calls lock").clone(),
        sqs_calls: operations,
        dynamodb_calls_total: dynamodb_operations.values().sum(),
        dynamodb_calls: dynamodb_operations,
        messages_on_queues: messages_by_provider.values().sum(),
        messages_by_provider,
        tasks_in_table,
        sync_run_sent,
        emf_lines,
        emf_bytes,
        spans,
        emulator_cpu_seconds,
    };
    report_problems(&summary);

    pool.close().await;
    if options.keep {
        eprintln!(
            "fanout-bench: kept database {}, table {table} and queues {prefix}-*",
            db.name
        );
    } else {
        db.drop_database().await?;
        for url in queues.values() {
            let _ = sqs.delete_queue().queue_url(url).send().await;
        }
        let _ = dynamodb.delete_table().table_name(&table).send().await;
    }
    Ok(round)
}

/// The first few skipped and failed profiles, so a broken run says why.
fn report_problems(summary: &RunSummary) {
    for note in summary.failures.iter().chain(&summary.skipped).take(5) {
        eprintln!(
            "fanout-bench: profile {} ({}) not sent: {}",
            note.profile_id, note.provider, note.reason
        );
    }
}

/// `profiles` active profiles, spread evenly over the providers, each due
/// for yesterday (no watermark, first period yesterday).
async fn seed_profiles(db: &BenchDb, profiles: u32) -> Result<()> {
    let providers: Vec<&str> = Provider::ALL.iter().map(|p| p.as_str()).collect();
    let yesterday = Utc::now().date_naive() - chrono::Duration::days(1);
    sqlx::query(
        "INSERT INTO sync_profile (name, provider, base_url, credentials_secret, active, first_period)
         SELECT 'bench account ' || i, ($2::text[])[1 + i % cardinality($2::text[])],
                'http://carrier.invalid', 'bench/credentials', true, $3
         FROM generate_series(0, $1 - 1) AS i",
    )
    .bind(i64::from(profiles))
    .bind(&providers)
    .bind(yesterday)
    .execute(&db.pool)
    .await
    .context("insert the profiles")?;
    Ok(())
}

/// The `TasksTable` of infra/template.yaml, created under `name`: its
/// billing mode, attributes, key and global secondary indexes.
async fn create_tasks_table(client: &aws_sdk_dynamodb::Client, name: &str) -> Result<()> {
    let path = repo_root().join("infra/template.yaml");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
    let template: serde_yaml::Value =
        serde_yaml::from_str(&text).with_context(|| format!("parse {}", path.display()))?;
    let properties = &template["Resources"]["TasksTable"]["Properties"];
    let text_of = |value: &serde_yaml::Value, key: &str| -> Result<String> {
        value[key]
            .as_str()
            .map(str::to_string)
            .with_context(|| format!("TasksTable: {key} missing in {value:?}"))
    };
    let key_schema = |value: &serde_yaml::Value| -> Result<Vec<KeySchemaElement>> {
        value
            .as_sequence()
            .context("TasksTable: a KeySchema is a list")?
            .iter()
            .map(|k| {
                Ok(KeySchemaElement::builder()
                    .attribute_name(text_of(k, "AttributeName")?)
                    .key_type(KeyType::from(text_of(k, "KeyType")?.as_str()))
                    .build()?)
            })
            .collect()
    };
    ensure!(
        properties["BillingMode"].as_str() == Some("PAY_PER_REQUEST"),
        "TasksTable: expected BillingMode PAY_PER_REQUEST"
    );
    let mut create = client
        .create_table()
        .table_name(name)
        .billing_mode(BillingMode::PayPerRequest)
        .set_key_schema(Some(key_schema(&properties["KeySchema"])?));
    for attribute in properties["AttributeDefinitions"]
        .as_sequence()
        .context("TasksTable: AttributeDefinitions is a list")?
    {
        create = create.attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name(text_of(attribute, "AttributeName")?)
                .attribute_type(ScalarAttributeType::from(
                    text_of(attribute, "AttributeType")?.as_str(),
                ))
                .build()?,
        );
    }
    for index in properties["GlobalSecondaryIndexes"]
        .as_sequence()
        .into_iter()
        .flatten()
    {
        create = create.global_secondary_indexes(
            GlobalSecondaryIndex::builder()
                .index_name(text_of(index, "IndexName")?)
                .set_key_schema(Some(key_schema(&index["KeySchema"])?))
                .projection(
                    Projection::builder()
                        .projection_type(ProjectionType::from(
                            text_of(&index["Projection"], "ProjectionType")?.as_str(),
                        ))
                        .build(),
                )
                .build()?,
        );
    }
    create
        .send()
        .await
        .map_err(|e| anyhow::anyhow!(aws_sdk_dynamodb::error::DisplayErrorContext(e)))
        .with_context(|| format!("create table {name}"))?;
    Ok(())
}

/// Receives every message from the queues (all at once, one task per
/// queue) and counts them per provider, each envelope id once; fails on a
/// message that is not a `SyncProfile` for that queue's provider, or on an
/// id seen twice.
async fn drain_queues(
    sqs: &aws_sdk_sqs::Client,
    queues: &BTreeMap<Provider, String>,
) -> Result<BTreeMap<String, u64>> {
    let mut drains = tokio::task::JoinSet::new();
    for (provider, url) in queues {
        let (sqs, url, provider) = (sqs.clone(), url.clone(), *provider);
        drains.spawn(async move {
            let mut ids = BTreeSet::new();
            let mut empty_receives = 0;
            // An empty answer twice in a row: the queue is drained (the
            // messages received stay hidden for ten minutes).
            while empty_receives < 2 {
                let received = sqs
                    .receive_message()
                    .queue_url(&url)
                    .max_number_of_messages(10)
                    .visibility_timeout(600)
                    .wait_time_seconds(0)
                    .send()
                    .await
                    .map_err(|e| anyhow::anyhow!(aws_sdk_sqs::error::DisplayErrorContext(e)))
                    .context("ReceiveMessage")?;
                let messages = received.messages.unwrap_or_default();
                if messages.is_empty() {
                    empty_receives += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
                empty_receives = 0;
                for message in messages {
                    let body: Value = serde_json::from_str(message.body().unwrap_or_default())
                        .context("a message body is JSON")?;
                    ensure!(
                        body["step"] == "SyncProfile"
                            && body["payload"]["provider"] == provider.as_str(),
                        "{} queue holds a message that is no SyncProfile of it: {body}",
                        provider.as_str()
                    );
                    let id = body["id"].as_str().unwrap_or_default().to_string();
                    if !ids.insert(id.clone()) {
                        bail!("message {id} arrived twice on {}", provider.as_str());
                    }
                }
            }
            Ok::<_, anyhow::Error>((provider.as_str().to_string(), ids.len() as u64))
        });
    }
    let mut counts = BTreeMap::new();
    while let Some(drained) = drains.join_next().await {
        let (provider, count) = drained.context("a drain task")??;
        counts.insert(provider, count);
    }
    Ok(counts)
}

/// The `task#` items of the tasks table (a counting scan, page by page).
async fn count_tasks(client: &aws_sdk_dynamodb::Client, table: &str) -> Result<u64> {
    let mut count = 0u64;
    let mut start = None;
    loop {
        let page = client
            .scan()
            .table_name(table)
            .filter_expression("begins_with(pk, :task)")
            .expression_attribute_values(":task", AttributeValue::S("task#".into()))
            .select(Select::Count)
            .set_exclusive_start_key(start)
            .send()
            .await
            .map_err(|e| anyhow::anyhow!(aws_sdk_dynamodb::error::DisplayErrorContext(e)))
            .context("scan the tasks table")?;
        count += page.count as u64;
        match page.last_evaluated_key {
            Some(key) if !key.is_empty() => start = Some(key),
            _ => return Ok(count),
        }
    }
}

/// The one-screen report.
pub fn print(summary: &Summary) {
    println!();
    println!(
        "fanout-bench: one sync-manager run over {} active profiles of {} providers",
        summary.profiles, summary.providers
    );
    println!("  run:      {}", summary.mode);
    println!(
        "  emulator: {} (MiniStack unless AWS_ENDPOINT_URL names another)",
        summary.emulator
    );
    println!(
        "  load average: {} before, {} after",
        summary.load_average_before, summary.load_average_after
    );
    println!();
    println!(
        "{:<6} {:>8} {:>6} {:>5} {:>5} {:>9} {:>9} {:>8} {:>9} {:>9} {:>7}",
        "round",
        "seconds",
        "sent",
        "skip",
        "fail",
        "SMB calls",
        "messages",
        "msg/call",
        "DDB calls",
        "on queues",
        "tasks"
    );
    for (i, r) in summary.rounds.iter().enumerate() {
        println!(
            "{:<6} {:>8.3} {:>6} {:>5} {:>5} {:>9} {:>9} {:>8.2} {:>9} {:>9} {:>7}",
            i + 1,
            r.seconds,
            r.sent,
            r.skipped,
            r.failures,
            r.send_message_batch_calls,
            r.batch_entries,
            r.messages_per_call,
            r.dynamodb_calls_total,
            r.messages_on_queues,
            r.tasks_in_table
        );
    }
    println!();
    if let Some(r) = summary.rounds.last() {
        let list = |calls: &BTreeMap<String, u64>| {
            calls
                .iter()
                .map(|(op, n)| format!("{op} {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        println!("last round, calls by operation:");
        println!("  SQS:      {}", list(&r.sqs_calls));
        println!("  DynamoDB: {}", list(&r.dynamodb_calls));
        println!(
            "  SendMessageBatch sizes (entries: calls): {}",
            r.batch_sizes
                .iter()
                .map(|(size, n)| format!("{size}: {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        println!(
            "  SQS answered {} entries sent, {} failed; sync_run.sent {}",
            r.batch_successful, r.batch_failed, r.sync_run_sent
        );
        println!(
            "  the run's stdout (EMF metrics, set aside): {} lines, {:.1} KiB",
            r.emf_lines,
            r.emf_bytes as f64 / 1024.0
        );
        println!(
            "  phases (s from the run's start: first request .. last answer): {}",
            r.spans
                .iter()
                .map(|(op, (first, last))| format!("{op} {first:.2}..{last:.2}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        if let Some(cpu) = r.emulator_cpu_seconds {
            println!("  the emulator's CPU time during the run: {cpu:.2} s");
        }
        println!(
            "  messages received back per provider: {}",
            r.messages_by_provider
                .iter()
                .map(|(p, n)| format!("{p} {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    println!();
    println!(
        "best {:.3} s, median {:.3} s over {} round(s)",
        summary.best_seconds,
        summary.median_seconds,
        summary.rounds.len()
    );
    for goal in &summary.goals {
        println!(
            "goal {:<50} {:>9.3} {} against {} {}: {} (margin {:+.1}%)",
            goal.goal,
            goal.actual,
            goal.unit,
            if goal.unit == "s" { "<" } else { ">=" },
            goal.target,
            if goal.met { "MET" } else { "MISSED" },
            goal.margin_percent
        );
    }
    println!(
        "checks: {} (every profile sent, none skipped or failed; every message received back once; one task per profile; sync_run recorded)",
        if summary.checks_passed { "passed" } else { "FAILED" }
    );
}
