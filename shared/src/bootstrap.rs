//! What every function builds once at cold start: AWS clients, the
//! database pool and the stores over them; for the ops function also the
//! operators' stores ([`Ops`]).

use std::collections::BTreeMap;
use std::sync::Arc;

use sqlx::PgPool;

use crate::adapters::billing::invoice_view::PgInvoiceView;
use crate::adapters::dynamodb::{DynamoIdempotency, DynamoTasks};
use crate::adapters::journal::{PgFailureLog, PgStepJournal};
use crate::adapters::operations::{PgAbandonedImports, PgFailures, PgStepHistory};
use crate::adapters::postgres;
use crate::adapters::s3::S3Documents;
use crate::adapters::secrets::SecretsManager;
use crate::adapters::sqs::{SqsDeadLetters, SqsQueueStats, SqsQueues};
use crate::adapters::status::PgStatus;
use crate::adapters::task_admin::DynamoTaskAdmin;
use crate::config::{
    parse_ca_bundle, parse_database_secret, CaBundleError, ConfigError, DatabaseConfig,
    DatabaseSecretError, DatabaseSource, Env, PlatformConfig,
};
use crate::ops::console::{Console, InvoicePorts};
use crate::ops::failed::FailedPorts;
use crate::ops::settings::OpsSettings;
use crate::ops::status::{self, StatusReport, ThresholdError, Thresholds};
use crate::ops::watch::WatchSettings;
use crate::ports::SecretGet;
use crate::runtime::{ChainRuntime, RuntimePorts, StepHandler};

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot read secret {secret} ({variable}): {reason}; check the secret's name and the function's secretsmanager:GetSecretValue policy")]
    SecretUnreadable {
        variable: &'static str,
        secret: String,
        reason: String,
    },
    #[error("the database credentials in {from} cannot be used: {reason}")]
    DatabaseSecret {
        from: String,
        reason: DatabaseSecretError,
    },
    #[error(transparent)]
    CaBundle(#[from] CaBundleError),
    #[error(transparent)]
    ConnectOptions(#[from] postgres::ConnectOptionsError),
    #[error("cannot connect to PostgreSQL at {target}: {source}; {advice}")]
    Database {
        target: String,
        advice: String,
        #[source]
        source: sqlx::Error,
    },
}

/// The pool of one function instance, from its [`DatabaseConfig`]: the
/// secrets are read through `secrets`, the credentials parsed, and the pool
/// opened with the TLS settings. Tests call it too, so they connect the way
/// the functions do.
pub async fn connect_database(
    config: &DatabaseConfig,
    secrets: &dyn SecretGet,
) -> Result<PgPool, StartupError> {
    let read = |variable: &'static str, secret: String| async move {
        secrets
            .secret_string(&secret)
            .await
            .map_err(|e| StartupError::SecretUnreadable {
                variable,
                secret,
                reason: e.to_string(),
            })
    };
    let (text, from) = match &config.source {
        DatabaseSource::Url(url) => (url.clone(), "DATABASE_URL".to_string()),
        DatabaseSource::Secret(secret) => (
            read("DATABASE_SECRET_ID", secret.clone()).await?,
            format!("secret {secret} (DATABASE_SECRET_ID)"),
        ),
    };
    let target = parse_database_secret(&text, &config.endpoint)
        .map_err(|reason| StartupError::DatabaseSecret { from, reason })?;
    let ca = match &config.ca_secret {
        Some(secret) => Some(parse_ca_bundle(
            secret,
            &read("DATABASE_CA_SECRET_ID", secret.clone()).await?,
        )?),
        None => None,
    };
    let options =
        postgres::connect_options(&target, &config.endpoint, config.ssl_mode, ca.as_deref())?;
    let target = format!(
        "{}:{}/{}",
        options.get_host(),
        options.get_port(),
        options.get_database().unwrap_or("(default database)")
    );
    postgres::connect_with(options, config.max_connections, config.acquire_timeout)
        .await
        .map_err(|source| StartupError::Database {
            advice: postgres::connect_advice(&source, config.ca_secret.as_deref()),
            target,
            source,
        })
}

pub struct Platform {
    pub config: PlatformConfig,
    pub aws: aws_config::SdkConfig,
    pub pool: PgPool,
    pub queues: Arc<SqsQueues>,
    pub tasks: Arc<DynamoTasks>,
    pub idempotency: Arc<DynamoIdempotency>,
    pub secrets: Arc<SecretsManager>,
}

impl Platform {
    pub async fn connect<F: Fn(&str) -> Option<String>>(
        env: &Env<F>,
    ) -> Result<Self, StartupError> {
        let config = PlatformConfig::from_env(env)?;
        let aws = crate::adapters::aws_config().await;
        let secrets = Arc::new(SecretsManager::new(aws_sdk_secretsmanager::Client::new(
            &aws,
        )));
        let pool = connect_database(&config.database, secrets.as_ref()).await?;
        let dynamo = aws_sdk_dynamodb::Client::new(&aws);
        Ok(Self {
            queues: Arc::new(SqsQueues::new(aws_sdk_sqs::Client::new(&aws))),
            tasks: Arc::new(DynamoTasks::new(
                dynamo.clone(),
                &config.tasks_table,
                config.task_ttl,
            )),
            idempotency: Arc::new(
                DynamoIdempotency::new(dynamo, &config.idempotency_table, config.idempotency_ttl)
                    .with_dead_letter_ttl(config.failure_retention),
            ),
            secrets,
            pool,
            aws,
            config,
        })
    }

    /// The chain runtime of a queue-driven function around its step handler,
    /// with the queues, stores and settings of this platform.
    pub fn chain_runtime<F: Fn(&str) -> Option<String>>(
        &self,
        env: &Env<F>,
        handler: Arc<dyn StepHandler>,
    ) -> Result<ChainRuntime, ConfigError> {
        Ok(ChainRuntime::new(
            handler,
            env.router(),
            RuntimePorts {
                queues: self.queues.clone(),
                visibility: self.queues.clone(),
                idempotency: self.idempotency.clone(),
                tasks: self.tasks.clone(),
                journal: Arc::new(PgStepJournal::new(self.pool.clone())),
                failures: Arc::new(PgFailureLog::new(self.pool.clone())),
            },
            env.runtime_settings()?,
        ))
    }
}

/// What the ops function works with besides its platform: the stack's
/// queues and tables, and the stores of failures, step history, DLQs, tasks
/// and status, built once at cold start.
pub struct Ops {
    pub settings: OpsSettings,
    pub watch: WatchSettings,
    /// From the environment; a console `status` event may override some.
    pub thresholds: Thresholds,
    failures: PgFailures,
    history: PgStepHistory,
    imports: PgAbandonedImports,
    dead_letters: SqsDeadLetters,
    task_admin: DynamoTaskAdmin,
    status: PgStatus,
    queue_stats: SqsQueueStats,
    invoice_view: PgInvoiceView,
    documents: S3Documents,
}

impl Ops {
    pub fn new<F: Fn(&str) -> Option<String>>(
        platform: &Platform,
        env: &Env<F>,
    ) -> Result<Self, OpsStartupError> {
        let settings = OpsSettings::from_env(env)?;
        Ok(Self {
            watch: WatchSettings::from_env(env)?,
            thresholds: Thresholds::from_lookup(|name| env.optional(name))?,
            failures: PgFailures::new(platform.pool.clone()),
            history: PgStepHistory::new(platform.pool.clone()),
            imports: PgAbandonedImports::new(platform.pool.clone()),
            dead_letters: SqsDeadLetters::from_config(&platform.aws),
            task_admin: DynamoTaskAdmin::from_config(&platform.aws, &settings.tasks_table),
            status: PgStatus::new(platform.pool.clone()),
            queue_stats: SqsQueueStats::new(aws_sdk_sqs::Client::new(&platform.aws)),
            invoice_view: PgInvoiceView::new(platform.pool.clone()),
            documents: S3Documents::new(crate::adapters::s3_client(&platform.aws)),
            settings,
        })
    }

    /// The failed-message, task and watch commands over these stores.
    pub fn console<'a>(&'a self, platform: &'a Platform) -> Console<'a> {
        Console {
            failed: FailedPorts {
                failures: &self.failures,
                history: &self.history,
                send: platform.queues.as_ref(),
                receive: &self.dead_letters,
                delete: &self.dead_letters,
                release: &self.dead_letters,
                tasks: &self.task_admin,
            },
            imports: &self.imports,
            tasks: platform.tasks.as_ref(),
            idempotency: platform.idempotency.as_ref(),
            settings: &self.settings,
            watch: &self.watch,
            invoices: InvoicePorts {
                view: &self.invoice_view,
                documents: &self.documents,
            },
        }
    }

    /// The monitoring points, with the thresholds named in `set` overridden.
    pub async fn status(
        &self,
        set: &BTreeMap<String, String>,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<StatusReport, ThresholdError> {
        let mut thresholds = self.thresholds.clone();
        for (name, value) in set {
            thresholds.set(name, value)?;
        }
        Ok(status::status(
            &self.status,
            &self.queue_stats,
            &self.task_admin,
            &self.settings,
            &thresholds,
            now,
        )
        .await)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum OpsStartupError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Thresholds(#[from] ThresholdError),
}
