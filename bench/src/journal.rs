//! `journal-bench`: what the step journal (issue 10) costs the chain
//! runtime. The same messages run through the real `ChainRuntime` twice in
//! one run on one PostgreSQL server: once with the PostgreSQL journal and
//! failure log the functions use (two statements per attempt), once with
//! journals that do nothing. The queues, idempotency records and tasks are
//! in memory in both, so the difference is the journal's alone.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{ensure, Result};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::json;
use tem_shared::adapters::journal::{PgFailureLog, PgStepJournal};
use tem_shared::envelope::{Envelope, Step};
use tem_shared::ports::{
    Claim, FailedSend, FailureLog, FailureRecord, HandoffChange, IdempotencyStore, OutgoingMessage,
    PortError, QueueSend, QueueVisibility, StepEnd, StepJournal, StepStart, TaskCreation,
    TaskStore,
};
use tem_shared::routing::Router;
use tem_shared::runtime::{
    ChainRuntime, Delivery, Disposition, IncomingMessage, RuntimePorts, RuntimeSettings, StepError,
    StepHandler, StepOutcome,
};
use tem_shared::tasks::{NewTask, SyncTask, TaskProgress, TaskStatus};

use crate::db::BenchDb;

pub struct Options {
    pub messages: u32,
    pub batch: u32,
    pub pool: u32,
    pub runs: u32,
    pub database_url: String,
    pub keep: bool,
}

#[derive(Debug, Serialize)]
pub struct Round {
    pub journal: &'static str,
    pub seconds: f64,
    pub per_message_ms: f64,
}

#[derive(Debug, Serialize)]
pub struct Summary {
    pub messages: u32,
    pub batch: u32,
    pub rounds: Vec<Round>,
    pub best_without_s: f64,
    pub best_with_s: f64,
    /// The journal's cost per message: best with minus best without.
    pub journal_ms_per_message: f64,
    pub step_run_rows: i64,
}

pub async fn run(options: Options) -> Result<Summary> {
    let db = BenchDb::create(&options.database_url).await?;
    let pool = tem_shared::adapters::postgres::connect(&db.url, options.pool).await?;
    let journaled = (
        Arc::new(PgStepJournal::new(pool.clone())) as Arc<dyn StepJournal>,
        Arc::new(PgFailureLog::new(pool.clone())) as Arc<dyn FailureLog>,
    );
    let silent = (
        Arc::new(Silent) as Arc<dyn StepJournal>,
        Arc::new(Silent) as Arc<dyn FailureLog>,
    );
    let mut rounds = Vec::new();
    for round in 0..options.runs {
        // Alternate the order, so neither always runs on a warmer server.
        let order = if round % 2 == 0 {
            [("none", &silent), ("postgres", &journaled)]
        } else {
            [("postgres", &journaled), ("none", &silent)]
        };
        for (name, (journal, failures)) in order {
            let seconds = time_messages(
                journal.clone(),
                failures.clone(),
                &format!("r{round}-{name}"),
                &options,
            )
            .await?;
            rounds.push(Round {
                journal: name,
                seconds,
                per_message_ms: seconds * 1000.0 / f64::from(options.messages),
            });
        }
    }
    let best = |name: &str| {
        rounds
            .iter()
            .filter(|r| r.journal == name)
            .map(|r| r.seconds)
            .fold(f64::INFINITY, f64::min)
    };
    let (without, with) = (best("none"), best("postgres"));
    let step_run_rows: i64 =
        sqlx::query_scalar("SELECT count(*) FROM step_run WHERE outcome = 'completed'")
            .fetch_one(&pool)
            .await?;
    // Every journaled message is one completed attempt, nothing more.
    ensure!(
        step_run_rows == i64::from(options.messages) * i64::from(options.runs),
        "expected one completed step_run per journaled message, found {step_run_rows}"
    );
    pool.close().await;
    if !options.keep {
        db.drop_database().await?;
    }
    Ok(Summary {
        messages: options.messages,
        batch: options.batch,
        best_without_s: without,
        best_with_s: with,
        journal_ms_per_message: (with - without) * 1000.0 / f64::from(options.messages),
        rounds,
        step_run_rows,
    })
}

/// Runs `messages` envelopes in SQS-sized batches, one batch after the
/// other as one function instance would, and times the whole.
async fn time_messages(
    journal: Arc<dyn StepJournal>,
    failures: Arc<dyn FailureLog>,
    prefix: &str,
    options: &Options,
) -> Result<f64> {
    let runtime = ChainRuntime::new(
        Arc::new(Done),
        Router::new(BTreeMap::new()),
        RuntimePorts {
            queues: Arc::new(Nowhere),
            visibility: Arc::new(Nowhere),
            idempotency: Arc::new(Claims::default()),
            tasks: Arc::new(NoTasks),
            journal,
            failures,
        },
        RuntimeSettings {
            source_queue_url: Some("https://sqs.bench/000000000000/tem-bench-queue".into()),
            pool_connections: options.pool,
            function_name: "journal-bench".into(),
            ..RuntimeSettings::default()
        },
    );
    let now = Utc::now();
    let deadline = now + chrono::Duration::minutes(15);
    let started = Instant::now();
    for first in (0..options.messages).step_by(options.batch as usize) {
        let batch: Vec<IncomingMessage> = (first..(first + options.batch).min(options.messages))
            .map(|i| {
                let id = format!("{prefix}-{i}");
                let envelope = Envelope::root(
                    id.clone(),
                    Step::BackupTotals,
                    json!({"customer_id": 1, "cycle": "2026-12-01", "provider": "routit"}),
                    vec![],
                    None,
                    now,
                );
                IncomingMessage {
                    message_id: id,
                    body: envelope.to_body(),
                    receive_count: 1,
                    receipt_handle: Some(format!("handle-{i}")),
                }
            })
            .collect();
        let reports = runtime.process_batch(batch, deadline).await;
        ensure!(
            reports
                .iter()
                .all(|r| r.disposition == Disposition::Completed),
            "a message did not complete: {:?}",
            reports
                .iter()
                .find(|r| r.disposition != Disposition::Completed)
        );
    }
    Ok(started.elapsed().as_secs_f64())
}

/// A step that does nothing and ends its chain.
struct Done;

#[async_trait]
impl StepHandler for Done {
    async fn handle(&self, _: &Envelope, _: Delivery) -> Result<StepOutcome, StepError> {
        Ok(StepOutcome::done(json!({})))
    }
}

/// Journals that record nothing.
struct Silent;

#[async_trait]
impl StepJournal for Silent {
    async fn started(&self, _: &StepStart) -> Result<i64, PortError> {
        Ok(0)
    }
    async fn finished(&self, _: i64, _: &StepEnd) -> Result<(), PortError> {
        Ok(())
    }
}

#[async_trait]
impl FailureLog for Silent {
    async fn record(&self, _: &FailureRecord) -> Result<(), PortError> {
        Ok(())
    }
    async fn resolved(&self, _: &str, _: &str, _: DateTime<Utc>) -> Result<bool, PortError> {
        Ok(false)
    }
}

/// Queues that accept everything (nothing is sent: the chain ends).
struct Nowhere;

#[async_trait]
impl QueueSend for Nowhere {
    async fn send_all(
        &self,
        _: &str,
        _: Vec<OutgoingMessage>,
    ) -> Result<Vec<FailedSend>, PortError> {
        Ok(vec![])
    }
}

#[async_trait]
impl QueueVisibility for Nowhere {
    async fn set_visibility(&self, _: &str, _: &str, _: i32) -> Result<(), PortError> {
        Ok(())
    }
}

/// Idempotency records in memory.
#[derive(Default)]
struct Claims(Mutex<HashMap<String, bool>>);

#[async_trait]
impl IdempotencyStore for Claims {
    async fn claim(
        &self,
        id: &str,
        _: DateTime<Utc>,
        _: DateTime<Utc>,
    ) -> Result<Claim, PortError> {
        let mut claims = self.0.lock().expect("claims lock");
        Ok(match claims.insert(id.to_string(), false) {
            Some(true) => Claim::Completed {
                outcome: String::new(),
            },
            _ => Claim::Acquired {
                after_dead_letter: false,
            },
        })
    }
    async fn complete(&self, id: &str, _: &str, _: DateTime<Utc>) -> Result<(), PortError> {
        self.0
            .lock()
            .expect("claims lock")
            .insert(id.to_string(), true);
        Ok(())
    }
    async fn release(&self, id: &str) -> Result<(), PortError> {
        self.0.lock().expect("claims lock").remove(id);
        Ok(())
    }
    async fn dead_lettered(&self, _: &str, _: &str, _: DateTime<Utc>) -> Result<(), PortError> {
        Ok(())
    }
}

/// The benchmark's messages belong to no task.
struct NoTasks;

#[async_trait]
impl TaskStore for NoTasks {
    async fn create(&self, _: &NewTask, _: Option<&str>) -> Result<TaskCreation, PortError> {
        Ok(TaskCreation::Created)
    }
    async fn get(&self, _: &str) -> Result<Option<SyncTask>, PortError> {
        Ok(None)
    }
    async fn current_for_profile(&self, _: i64) -> Result<Option<SyncTask>, PortError> {
        Ok(None)
    }
    async fn mark_running(&self, _: &str, _: DateTime<Utc>) -> Result<(), PortError> {
        Ok(())
    }
    async fn branch_done(
        &self,
        _: &str,
        _: &str,
        _: u32,
        _: HandoffChange<'_>,
        _: DateTime<Utc>,
    ) -> Result<Option<TaskProgress>, PortError> {
        Ok(None)
    }
    async fn mark_failed(
        &self,
        _: &str,
        _: &str,
        _: &str,
        _: DateTime<Utc>,
    ) -> Result<(), PortError> {
        Ok(())
    }
    async fn reopen(
        &self,
        _: &str,
        _: &str,
        _: DateTime<Utc>,
    ) -> Result<Option<TaskStatus>, PortError> {
        Ok(None)
    }
    async fn adoptable(&self, _: &str, _: &str, _: &str) -> Result<bool, PortError> {
        Ok(false)
    }
}

/// The one-screen report.
pub fn print(summary: &Summary) {
    println!(
        "journal-bench: {} messages in batches of {}, the real ChainRuntime, in-memory queues, claims and tasks",
        summary.messages, summary.batch
    );
    println!(
        "{:<10} {:>9} {:>14}",
        "journal", "seconds", "ms per message"
    );
    for r in &summary.rounds {
        println!(
            "{:<10} {:>9.3} {:>14.3}",
            r.journal, r.seconds, r.per_message_ms
        );
    }
    println!(
        "best: none {:.3} s, postgres {:.3} s; the journal costs {:.3} ms per message; {} step_run rows checked",
        summary.best_without_s,
        summary.best_with_s,
        summary.journal_ms_per_message,
        summary.step_run_rows
    );
}
