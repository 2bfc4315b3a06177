//! Typed configuration, read once from the environment at cold start.
//! A missing or malformed setting is a [`ConfigError`] naming the variable.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::time::Duration;

use crate::retry::Backoff;
use crate::routing::{Provider, Router};
use crate::runtime::RuntimeSettings;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ConfigError {
    #[error(
        "environment variable {0} is required; the SAM template sets it for deployed functions"
    )]
    Missing(&'static str),
    #[error("environment variable {name} = {value:?} is invalid: {reason}")]
    Invalid {
        name: &'static str,
        value: String,
        reason: String,
    },
}

/// Reads settings from a key-value source (the process environment in
/// production, a map in tests).
pub struct Env<F: Fn(&str) -> Option<String>> {
    lookup: F,
}

impl Env<fn(&str) -> Option<String>> {
    pub fn process() -> Self {
        Env {
            lookup: |key| std::env::var(key).ok().filter(|v| !v.is_empty()),
        }
    }
}

impl<F: Fn(&str) -> Option<String>> Env<F> {
    pub fn from_fn(lookup: F) -> Self {
        Env { lookup }
    }

    pub fn optional(&self, name: &str) -> Option<String> {
        (self.lookup)(name)
    }

    pub fn required(&self, name: &'static str) -> Result<String, ConfigError> {
        self.optional(name).ok_or(ConfigError::Missing(name))
    }

    pub fn parsed<T: FromStr>(&self, name: &'static str, default: T) -> Result<T, ConfigError>
    where
        T::Err: std::fmt::Display,
    {
        match self.optional(name) {
            None => Ok(default),
            Some(value) => value.parse().map_err(|e: T::Err| ConfigError::Invalid {
                name,
                reason: e.to_string(),
                value,
            }),
        }
    }

    /// Queue URLs of every provider that has `QUEUE_URL_{PROVIDER}` set.
    pub fn router(&self) -> Router {
        let queues: BTreeMap<Provider, String> = Provider::ALL
            .into_iter()
            .filter_map(|p| Some((p, self.optional(&format!("QUEUE_URL_{}", p.env_key()))?)))
            .collect();
        Router::new(queues).with_pipeline_queues(
            self.optional("QUEUE_URL_IMPORT"),
            self.optional("QUEUE_URL_TOTALS"),
        )
    }

    /// Settings of the chain runtime for a function consuming one queue.
    pub fn runtime_settings(&self) -> Result<RuntimeSettings, ConfigError> {
        let defaults = RuntimeSettings::default();
        Ok(RuntimeSettings {
            source_queue_url: self.optional("SOURCE_QUEUE_URL"),
            dlq_url: self.optional("DLQ_URL"),
            max_chain_depth: self.parsed("MAX_CHAIN_DEPTH", defaults.max_chain_depth)?,
            max_requeues: self.parsed("MAX_REQUEUES", defaults.max_requeues)?,
            max_attempts: self.parsed("MAX_ATTEMPTS", defaults.max_attempts)?,
            backoff: Backoff {
                base: Duration::from_secs(
                    self.parsed("BACKOFF_BASE_SECONDS", defaults.backoff.base.as_secs())?,
                ),
                cap: Duration::from_secs(
                    self.parsed("BACKOFF_CAP_SECONDS", defaults.backoff.cap.as_secs())?,
                ),
            },
        })
    }
}

/// Where the database URL comes from: `DATABASE_URL` directly (local runs),
/// or a Secrets Manager secret holding it (`DATABASE_SECRET_ID`, deployed).
#[derive(Debug, Clone, PartialEq)]
pub enum DatabaseSource {
    Url(String),
    Secret(String),
}

impl DatabaseSource {
    pub fn from_env<F: Fn(&str) -> Option<String>>(env: &Env<F>) -> Result<Self, ConfigError> {
        if let Some(url) = env.optional("DATABASE_URL") {
            return Ok(DatabaseSource::Url(url));
        }
        env.optional("DATABASE_SECRET_ID")
            .map(DatabaseSource::Secret)
            .ok_or(ConfigError::Missing("DATABASE_URL or DATABASE_SECRET_ID"))
    }
}

/// Settings shared by every function: tables and operational limits.
#[derive(Debug, Clone)]
pub struct PlatformConfig {
    pub tasks_table: String,
    pub idempotency_table: String,
    pub idempotency_ttl: chrono::Duration,
    pub task_ttl: chrono::Duration,
    pub database: DatabaseSource,
}

impl PlatformConfig {
    pub fn from_env<F: Fn(&str) -> Option<String>>(env: &Env<F>) -> Result<Self, ConfigError> {
        Ok(Self {
            tasks_table: env.required("TASKS_TABLE")?,
            idempotency_table: env.required("IDEMPOTENCY_TABLE")?,
            idempotency_ttl: chrono::Duration::hours(env.parsed("IDEMPOTENCY_TTL_HOURS", 24)?),
            task_ttl: chrono::Duration::days(env.parsed("TASK_TTL_DAYS", 30)?),
            database: DatabaseSource::from_env(env)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> Env<impl Fn(&str) -> Option<String>> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Env::from_fn(move |k| map.get(k).cloned())
    }

    #[test]
    fn a_missing_setting_names_the_variable() {
        let err = PlatformConfig::from_env(&env(&[])).unwrap_err();
        assert_eq!(err, ConfigError::Missing("TASKS_TABLE"));
        assert!(err.to_string().contains("TASKS_TABLE"));
    }

    #[test]
    fn a_malformed_number_names_the_variable_and_value() {
        let err = env(&[("MAX_ATTEMPTS", "five")])
            .runtime_settings()
            .unwrap_err();
        assert!(
            matches!(&err, ConfigError::Invalid { name: "MAX_ATTEMPTS", value, .. } if value == "five")
        );
    }

    #[test]
    fn the_database_url_wins_over_the_secret() {
        assert_eq!(
            DatabaseSource::from_env(&env(&[
                ("DATABASE_URL", "postgres://x"),
                ("DATABASE_SECRET_ID", "s")
            ]))
            .unwrap(),
            DatabaseSource::Url("postgres://x".into())
        );
        assert_eq!(
            DatabaseSource::from_env(&env(&[("DATABASE_SECRET_ID", "s")])).unwrap(),
            DatabaseSource::Secret("s".into())
        );
    }

    #[test]
    fn provider_queues_come_from_their_own_variables() {
        let router = env(&[("QUEUE_URL_ROUTIT", "http://q/r")]).router();
        assert_eq!(
            router.provider_queue(Provider::Routit).unwrap(),
            "http://q/r"
        );
        assert!(router.provider_queue(Provider::KpnEen).is_err());
    }
}
