//! One deployed stack per test: its own database, secrets prefix, queues,
//! tables, bucket and carrier simulator, so tests run side by side.

use std::sync::OnceLock;
use std::time::Duration;

use anyhow::Result;
use chrono::NaiveDate;
use serde_json::{json, Value};
use tem_local::deployment::{wait_for, Deployment, Invocation};
use tem_local::emulator::Emulator;
use tem_shared::ports::TaskStore;
use tem_shared::tasks::SyncTask;

use crate::db::{fresh, insert_profile, TestDb};

pub const TOKEN: &str = "test-sim-token";

pub fn emulator() -> Emulator {
    static EMULATOR: OnceLock<Emulator> = OnceLock::new();
    EMULATOR
        .get_or_init(|| Emulator::start().expect("the emulator starts (scripts/emulator.sh start)"))
        .clone()
}

/// An S3 client on the emulator and a new bucket of the test's own,
/// named `{prefix}-{uuid}`, for tests that need S3 but no stack.
pub async fn own_bucket(prefix: &str) -> (aws_sdk_s3::Client, String) {
    let s3 = tem_shared::adapters::s3_client(&emulator().sdk_config().await);
    let name = format!("{prefix}-{}", uuid::Uuid::new_v4().simple());
    let region = emulator().region;
    let mut create = s3.create_bucket().bucket(&name);
    if region != "us-east-1" {
        create = create.create_bucket_configuration(
            aws_sdk_s3::types::CreateBucketConfiguration::builder()
                .location_constraint(aws_sdk_s3::types::BucketLocationConstraint::from(
                    region.as_str(),
                ))
                .build(),
        );
    }
    create.send().await.expect("create the test's bucket");
    (s3, name)
}

pub struct TestStack {
    pub deployment: Deployment,
    pub db: TestDb,
    pub sim: provider_sim::SimHandle,
    http: reqwest::Client,
}

/// Deploys a fresh stack with fast retries and polls, and no schedule (tests
/// send the schedule's event themselves).
pub async fn deploy() -> TestStack {
    deploy_with(&[]).await
}

pub async fn deploy_with(extra: &[(&str, String)]) -> TestStack {
    deploy_onto(fresh().await, extra).await
}

/// Deploys a stack over the given database (e.g. an unmigrated one).
pub async fn deploy_onto(db: TestDb, extra: &[(&str, String)]) -> TestStack {
    let sim = provider_sim::start(emulator().serve_addr(), TOKEN)
        .await
        .expect("the simulator starts");
    let name = format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
    let mut params = vec![
        ("ScheduleEnabled", "false".to_string()),
        ("BackoffBaseSeconds", "1".to_string()),
        ("PollDelaySeconds", "1".to_string()),
        ("HttpTimeoutSeconds", "5".to_string()),
    ];
    params.extend(extra.iter().cloned());
    // The functions reach the database and the simulator by the emulator's
    // function host (127.0.0.1 for MiniStack, which runs them locally).
    let function_db_url = emulator().for_functions(&db.url);
    let deployment = Deployment::create(
        &emulator(),
        &name,
        &function_db_url,
        db.pool.clone(),
        &params,
    )
    .await
    .expect("the template deploys into the emulator");
    TestStack {
        deployment,
        db,
        sim,
        http: reqwest::Client::new(),
    }
}

impl TestStack {
    /// A sync profile of `provider` at the simulator, with its credentials in
    /// the stack's Secrets Manager.
    pub async fn profile(
        &self,
        provider: &str,
        active: bool,
        first_period: &str,
        watermark: Option<&str>,
    ) -> i64 {
        let secret = format!(
            "{}/{provider}/{}",
            self.deployment.secrets_prefix,
            uuid::Uuid::new_v4().simple()
        );
        self.deployment
            .put_secret(&secret, &json!({ "token": TOKEN }).to_string())
            .await
            .expect("store the credentials");
        insert_profile(
            &self.db.pool,
            provider,
            &emulator().for_functions(&self.sim.base_url(provider)),
            &secret,
            active,
            first_period,
            watermark,
        )
        .await
    }

    pub async fn sim_behaviour(&self, provider: &str, behaviour: Value) {
        self.http
            .put(format!("http://{}/_control/{provider}", self.sim.addr))
            .json(&behaviour)
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .expect("simulator control");
    }

    /// How often each simulator endpoint was called, e.g. `routit:download`.
    pub async fn sim_hits(&self, endpoint: &str) -> u64 {
        let stats: Value = self
            .http
            .get(format!("http://{}/_stats", self.sim.addr))
            .send()
            .await
            .expect("simulator stats")
            .json()
            .await
            .expect("stats are JSON");
        stats[endpoint].as_u64().unwrap_or(0)
    }

    /// Sends sync-manager the schedule's event with the given event id.
    pub async fn schedule_tick(&self, event_id: &str) -> Value {
        let event = json!({
            "version": "0", "id": event_id, "detail-type": "Scheduled Event", "source": "aws.events",
            "account": "000000000000", "time": chrono::Utc::now(), "region": "eu-west-1",
            "resources": [], "detail": {}
        });
        let Invocation { error, payload } = self
            .deployment
            .invoke("SyncManagerFunctionName", &event)
            .await
            .expect("invoke sync-manager");
        assert_eq!(error, None, "sync-manager failed: {payload}");
        payload
    }

    pub async fn task(&self, task_id: &str) -> Option<SyncTask> {
        self.deployment
            .tasks()
            .get(task_id)
            .await
            .expect("read the task")
    }

    /// Waits until the task is completed or failed.
    pub async fn finished_task(&self, task_id: &str, timeout: Duration) -> SyncTask {
        wait_for(&format!("task {task_id} to finish"), timeout, || async {
            Ok(self.task(task_id).await.filter(|t| t.status.is_finished()))
        })
        .await
        .unwrap()
    }

    pub async fn watermark(&self, profile_id: i64) -> Option<NaiveDate> {
        crate::db::watermark(&self.db.pool, profile_id).await
    }

    /// Sends bodies to a queue (output key such as `TotalsQueueUrl`) in
    /// SendMessageBatch calls of ten, all calls at once, as the runtime
    /// sends a chain's fan-out.
    pub async fn send_batches(&self, queue: &str, bodies: &[String]) {
        let url = self.deployment.output(queue).to_string();
        let mut sends = tokio::task::JoinSet::new();
        for chunk in bodies.chunks(10) {
            let entries = chunk
                .iter()
                .enumerate()
                .map(|(i, body)| {
                    aws_sdk_sqs::types::SendMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .message_body(body)
                        .build()
                        .expect("a batch entry has an id and a body")
                })
                .collect();
            let send = self
                .deployment
                .clients
                .sqs
                .send_message_batch()
                .queue_url(&url)
                .set_entries(Some(entries));
            sends.spawn(send.send());
        }
        while let Some(sent) = sends.join_next().await {
            let sent = sent.expect("the send task runs").expect("SendMessageBatch");
            assert!(
                sent.failed().is_empty(),
                "some sends failed: {:?}",
                sent.failed()
            );
        }
    }

    /// Messages on a queue (output key) that are visible, in flight or
    /// delayed: 0 once everything sent to it was acknowledged.
    pub async fn queue_depth(&self, queue: &str) -> u64 {
        use aws_sdk_sqs::types::QueueAttributeName as A;
        let attributes = self
            .deployment
            .clients
            .sqs
            .get_queue_attributes()
            .queue_url(self.deployment.output(queue))
            .attribute_names(A::ApproximateNumberOfMessages)
            .attribute_names(A::ApproximateNumberOfMessagesNotVisible)
            .attribute_names(A::ApproximateNumberOfMessagesDelayed)
            .send()
            .await
            .expect("GetQueueAttributes")
            .attributes
            .unwrap_or_default();
        attributes
            .values()
            .map(|v| v.parse::<u64>().unwrap_or(0))
            .sum()
    }

    /// Removes the stack (and stops its function processes).
    pub async fn finish(self) -> Result<()> {
        self.deployment.stack.delete().await
    }
}

/// The task id sync-manager reported for a profile.
pub fn sent_task(summary: &Value, profile_id: i64) -> String {
    summary["sent"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|s| s["profile_id"] == profile_id)
        .and_then(|s| s["task_id"].as_str())
        .unwrap_or_else(|| panic!("profile {profile_id} was not sent: {summary}"))
        .to_string()
}

pub fn yesterday() -> NaiveDate {
    chrono::Utc::now().date_naive() - chrono::Duration::days(1)
}
