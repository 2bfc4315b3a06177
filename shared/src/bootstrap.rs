//! What every function builds once at cold start: AWS clients, the
//! database pool and the stores over them.

use std::sync::Arc;

use sqlx::PgPool;

use crate::adapters::dynamodb::{DynamoIdempotency, DynamoTasks};
use crate::adapters::postgres;
use crate::adapters::secrets::SecretsManager;
use crate::adapters::sqs::SqsQueues;
use crate::config::{ConfigError, DatabaseSource, Env, PlatformConfig};
use crate::ports::SecretGet;
use crate::runtime::{ChainRuntime, StepHandler};

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot read the database URL from secret {secret}: {reason}; check DATABASE_SECRET_ID and the function's secret policy")]
    DatabaseSecret { secret: String, reason: String },
    #[error("cannot connect to PostgreSQL: {0}; check that the server is reachable and DATABASE_URL is right")]
    Database(#[source] sqlx::Error),
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
        let database_url = match &config.database {
            DatabaseSource::Url(url) => url.clone(),
            DatabaseSource::Secret(secret) => {
                secrets
                    .secret_string(secret)
                    .await
                    .map_err(|e| StartupError::DatabaseSecret {
                        secret: secret.clone(),
                        reason: e.to_string(),
                    })?
            }
        };
        let pool = postgres::connect(&database_url, env.parsed("DATABASE_MAX_CONNECTIONS", 2)?)
            .await
            .map_err(StartupError::Database)?;
        let dynamo = aws_sdk_dynamodb::Client::new(&aws);
        Ok(Self {
            queues: Arc::new(SqsQueues::new(aws_sdk_sqs::Client::new(&aws))),
            tasks: Arc::new(DynamoTasks::new(
                dynamo.clone(),
                &config.tasks_table,
                config.task_ttl,
            )),
            idempotency: Arc::new(DynamoIdempotency::new(
                dynamo,
                &config.idempotency_table,
                config.idempotency_ttl,
            )),
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
            self.queues.clone(),
            self.queues.clone(),
            self.idempotency.clone(),
            self.tasks.clone(),
            env.runtime_settings()?,
        ))
    }
}
