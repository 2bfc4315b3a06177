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
        Router::new(queues)
            .with_pipeline_queues(
                self.optional("QUEUE_URL_IMPORT"),
                self.optional("QUEUE_URL_TOTALS"),
            )
            .with_maintenance_queue(self.optional("QUEUE_URL_MAINTENANCE"))
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
            pool_connections: self
                .parsed("DATABASE_MAX_CONNECTIONS", defaults.pool_connections)?
                .max(1),
            max_postpone_age: chrono::Duration::minutes(self.parsed(
                "MAX_POSTPONE_MINUTES",
                defaults.max_postpone_age.num_minutes(),
            )?),
            postpone_backoff: Backoff {
                base: Duration::from_secs(self.parsed(
                    "POSTPONE_BASE_SECONDS",
                    defaults.postpone_backoff.base.as_secs(),
                )?),
                cap: Duration::from_secs(self.parsed(
                    "POSTPONE_CAP_SECONDS",
                    defaults.postpone_backoff.cap.as_secs(),
                )?),
            },
            function_name: self
                .optional("AWS_LAMBDA_FUNCTION_NAME")
                .unwrap_or(defaults.function_name),
            step_record_ttl: chrono::Duration::days(
                self.parsed("STEP_RECORD_TTL_DAYS", defaults.step_record_ttl.num_days())?,
            ),
            failure_retention: failure_retention(self)?,
        })
    }
}

/// `FAILED_MESSAGE_RETENTION_DAYS`: how long a failure stays retryable. A
/// failure must outlive its DLQ copy, which SQS keeps at most 14 days.
pub fn failure_retention<F: Fn(&str) -> Option<String>>(
    env: &Env<F>,
) -> Result<chrono::Duration, ConfigError> {
    let days = env.parsed(
        "FAILED_MESSAGE_RETENTION_DAYS",
        crate::runtime::DEFAULT_FAILURE_RETENTION_DAYS,
    )?;
    if days < 14 {
        return Err(ConfigError::Invalid {
            name: "FAILED_MESSAGE_RETENTION_DAYS",
            value: days.to_string(),
            reason: "must be at least 14 (days), the longest SQS keeps the DLQ copy".into(),
        });
    }
    Ok(chrono::Duration::days(days))
}

/// Where the database credentials come from: `DATABASE_URL` directly (local
/// runs, temctl), or a Secrets Manager secret (`DATABASE_SECRET_ID`,
/// deployed) holding a URL or the RDS JSON form (see [`parse_database_secret`]).
#[derive(Clone, PartialEq)]
pub enum DatabaseSource {
    Url(String),
    Secret(String),
}

impl std::fmt::Debug for DatabaseSource {
    // A URL may carry the password: never print it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DatabaseSource::Url(_) => f.write_str("Url(<redacted>)"),
            DatabaseSource::Secret(id) => f.debug_tuple("Secret").field(id).finish(),
        }
    }
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

/// PostgreSQL's `sslmode` values that sqlx implements (`allow` is not).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// Plain TCP only (a local loopback server).
    Disable,
    /// TLS when the server offers it, without checking its certificate;
    /// plain otherwise. sqlx's default when nothing says otherwise.
    Prefer,
    /// TLS always, without checking the certificate.
    Require,
    /// TLS, with a certificate signed by a trusted CA.
    VerifyCa,
    /// TLS, with a certificate signed by a trusted CA that names the host.
    VerifyFull,
}

impl FromStr for SslMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "disable" => Ok(SslMode::Disable),
            "prefer" => Ok(SslMode::Prefer),
            "require" => Ok(SslMode::Require),
            "verify-ca" => Ok(SslMode::VerifyCa),
            "verify-full" => Ok(SslMode::VerifyFull),
            _ => Err("use one of disable, prefer, require, verify-ca, verify-full".into()),
        }
    }
}

/// A password that never appears in logs or `Debug` output.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(String);

impl Password {
    pub fn new(password: impl Into<String>) -> Self {
        Self(password.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Where to connect and as whom, before sqlx sees it.
#[derive(Clone, PartialEq)]
pub enum DatabaseTarget {
    /// A `postgres://` URL, left for sqlx to parse (it decodes percent-escaped
    /// passwords; nothing here formats a URL by hand). The host, port and
    /// name overrides still apply on top of it.
    Url(String),
    /// The parts of a JSON secret, completed by the environment.
    Parts {
        host: String,
        port: u16,
        dbname: String,
        username: String,
        password: Password,
    },
}

impl std::fmt::Debug for DatabaseTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DatabaseTarget::Url(_) => f.write_str("Url(<redacted>)"),
            DatabaseTarget::Parts {
                host,
                port,
                dbname,
                username,
                ..
            } => f
                .debug_struct("Parts")
                .field("host", host)
                .field("port", port)
                .field("dbname", dbname)
                .field("username", username)
                .field("password", &"<redacted>")
                .finish(),
        }
    }
}

/// `DATABASE_HOST`, `DATABASE_PORT`, `DATABASE_NAME`: the endpoint when the
/// secret does not hold it (an RDS-managed master secret holds only
/// `username` and `password`), or another endpoint than the one it names
/// (an RDS Proxy in front of the instance the secret was made for).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Endpoint {
    pub host: Option<String>,
    pub port: Option<u16>,
    pub dbname: Option<String>,
}

/// Why a database secret (or `DATABASE_URL`) cannot be used. The messages
/// name fields, never values: a value may be the password.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum DatabaseSecretError {
    #[error("it is neither a postgres:// URL nor a JSON object; store either postgres://USER:PASSWORD@HOST:5432/DBNAME or the RDS JSON form {{\"username\", \"password\", \"host\", \"port\", \"dbname\"}}")]
    NotRecognised,
    #[error("it looks like JSON but does not parse ({0}); store the RDS JSON form {{\"username\", \"password\", \"host\", \"port\", \"dbname\"}}")]
    BadJson(String),
    #[error("its JSON has no \"{field}\"; {fix}")]
    Missing {
        field: &'static str,
        fix: &'static str,
    },
    #[error("its \"{field}\" must be {expected}")]
    WrongType {
        field: &'static str,
        expected: &'static str,
    },
    #[error("it is for engine {0:?}; tem needs PostgreSQL (engine \"postgres\" or \"aurora-postgresql\")")]
    NotPostgres(String),
}

/// Reads a database secret's SecretString: a `postgres://` (or
/// `postgresql://`) URL, or the RDS JSON form with `username`, `password`
/// and optionally `host`, `port`, `dbname` (and `engine`,
/// `dbInstanceIdentifier`, ... which are ignored). The endpoint's
/// `DATABASE_HOST`/`DATABASE_PORT`/`DATABASE_NAME`, when set, win over what
/// the secret says, so one secret serves an instance and its RDS Proxy.
pub fn parse_database_secret(
    secret: &str,
    endpoint: &Endpoint,
) -> Result<DatabaseTarget, DatabaseSecretError> {
    let text = secret.trim();
    if text.starts_with("postgres://") || text.starts_with("postgresql://") {
        return Ok(DatabaseTarget::Url(text.to_string()));
    }
    if !text.starts_with('{') {
        return Err(DatabaseSecretError::NotRecognised);
    }
    // Through `Value`, not a typed struct: serde's type errors quote the
    // offending value, and that value may be the password.
    let value: serde_json::Value = serde_json::from_str(text).map_err(|e| {
        DatabaseSecretError::BadJson(format!("line {}, column {}", e.line(), e.column()))
    })?;
    let object = value
        .as_object()
        .ok_or(DatabaseSecretError::NotRecognised)?;
    let string = |field: &'static str| -> Result<Option<String>, DatabaseSecretError> {
        match object.get(field) {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(serde_json::Value::String(s)) if s.is_empty() => Ok(None),
            Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(DatabaseSecretError::WrongType {
                field,
                expected: "a string",
            }),
        }
    };
    if let Some(engine) = string("engine")? {
        if !matches!(engine.as_str(), "postgres" | "aurora-postgresql") {
            return Err(DatabaseSecretError::NotPostgres(engine));
        }
    }
    let username = string("username")?.ok_or(DatabaseSecretError::Missing {
        field: "username",
        fix: "add the database user to the secret",
    })?;
    let password = string("password")?.ok_or(DatabaseSecretError::Missing {
        field: "password",
        fix: "add the user's password to the secret",
    })?;
    let host = match &endpoint.host {
        Some(host) => host.clone(),
        None => string("host")?.ok_or(DatabaseSecretError::Missing {
            field: "host",
            fix: "an RDS-managed secret holds only username and password: set DATABASE_HOST to the instance or RDS Proxy endpoint (template parameter), or add \"host\" to the secret",
        })?,
    };
    let port =
        match endpoint.port {
            Some(port) => port,
            None => match object.get("port") {
                None | Some(serde_json::Value::Null) => 5432,
                Some(serde_json::Value::Number(n)) => n
                    .as_u64()
                    .and_then(|p| u16::try_from(p).ok())
                    .filter(|p| *p > 0)
                    .ok_or(DatabaseSecretError::WrongType {
                        field: "port",
                        expected: "a port number (1-65535)",
                    })?,
                Some(serde_json::Value::String(s)) => {
                    s.trim().parse().ok().filter(|p| *p > 0).ok_or(
                        DatabaseSecretError::WrongType {
                            field: "port",
                            expected: "a port number (1-65535)",
                        },
                    )?
                }
                Some(_) => {
                    return Err(DatabaseSecretError::WrongType {
                        field: "port",
                        expected: "a port number (1-65535)",
                    })
                }
            },
        };
    let dbname = match &endpoint.dbname {
        Some(name) => name.clone(),
        None => string("dbname")?.ok_or(DatabaseSecretError::Missing {
            field: "dbname",
            fix: "set DATABASE_NAME to the database tem's migrations ran in, or add \"dbname\" to the secret",
        })?,
    };
    Ok(DatabaseTarget::Parts {
        host,
        port,
        dbname,
        username,
        password: Password::new(password),
    })
}

/// Why a CA bundle secret cannot be used.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("secret {secret} (DATABASE_CA_SECRET_ID) holds no PEM certificate; store the PEM bundle itself (for RDS, https://truststore.pki.rds.amazonaws.com/REGION/REGION-bundle.pem) as the secret's string")]
pub struct CaBundleError {
    pub secret: String,
}

/// Checks that a CA secret's SecretString is a PEM bundle. The certificates
/// themselves are parsed by rustls at connect time.
pub fn parse_ca_bundle(secret_id: &str, text: &str) -> Result<String, CaBundleError> {
    if text.contains("-----BEGIN CERTIFICATE-----") && text.contains("-----END CERTIFICATE-----") {
        Ok(text.trim().to_string() + "\n")
    } else {
        Err(CaBundleError {
            secret: secret_id.to_string(),
        })
    }
}

/// Everything the database pool is built from, besides the secrets' values.
#[derive(Debug, Clone, PartialEq)]
pub struct DatabaseConfig {
    pub source: DatabaseSource,
    /// `DATABASE_SSL_MODE`: overrides the URL's `sslmode`; `None` keeps the
    /// URL's, or sqlx's default `prefer`.
    pub ssl_mode: Option<SslMode>,
    /// `DATABASE_CA_SECRET_ID`: a secret holding the PEM CA bundle to trust
    /// (in addition to the public web roots compiled in).
    pub ca_secret: Option<String>,
    pub endpoint: Endpoint,
    /// `DATABASE_MAX_CONNECTIONS` (default 2): the pool size of one instance.
    pub max_connections: u32,
    /// `DATABASE_ACQUIRE_TIMEOUT_SECONDS` (default 5): how long a record may
    /// wait for a connection (including opening it) before it is put back
    /// unattempted. A record never waits for a sibling's connection (the
    /// runtime runs no more records than the pool has connections, and a
    /// step holds one at a time), so a healthy wait is at most a read-ahead
    /// page (about 50 ms) or opening a connection (about 25 ms measured on
    /// a loaded 2-core machine); 5 s is far past both and still short
    /// enough that a wait costs seconds, not the half minute it used to.
    pub acquire_timeout: Duration,
}

impl DatabaseConfig {
    pub fn from_env<F: Fn(&str) -> Option<String>>(env: &Env<F>) -> Result<Self, ConfigError> {
        let ssl_mode = match env.optional("DATABASE_SSL_MODE") {
            None => None,
            Some(value) => Some(value.parse().map_err(|reason| ConfigError::Invalid {
                name: "DATABASE_SSL_MODE",
                value,
                reason,
            })?),
        };
        let port =
            match env.optional("DATABASE_PORT") {
                None => None,
                Some(value) => Some(value.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(
                    || ConfigError::Invalid {
                        name: "DATABASE_PORT",
                        value,
                        reason: "use a port number (1-65535)".into(),
                    },
                )?),
            };
        let max_connections: u32 = env.parsed("DATABASE_MAX_CONNECTIONS", 2)?;
        if max_connections == 0 {
            return Err(ConfigError::Invalid {
                name: "DATABASE_MAX_CONNECTIONS",
                value: "0".into(),
                reason: "a function needs at least one connection".into(),
            });
        }
        Ok(Self {
            source: DatabaseSource::from_env(env)?,
            ssl_mode,
            ca_secret: env.optional("DATABASE_CA_SECRET_ID"),
            endpoint: Endpoint {
                host: env.optional("DATABASE_HOST"),
                port,
                dbname: env.optional("DATABASE_NAME"),
            },
            max_connections,
            acquire_timeout: Duration::from_secs(
                env.parsed("DATABASE_ACQUIRE_TIMEOUT_SECONDS", 5u64)?,
            ),
        })
    }
}

/// Settings shared by every function: tables and operational limits.
#[derive(Debug, Clone)]
pub struct PlatformConfig {
    pub tasks_table: String,
    pub idempotency_table: String,
    pub idempotency_ttl: chrono::Duration,
    pub task_ttl: chrono::Duration,
    /// How long dead-lettered idempotency records are kept (as long as
    /// their failures stay retryable).
    pub failure_retention: chrono::Duration,
    pub database: DatabaseConfig,
}

impl PlatformConfig {
    pub fn from_env<F: Fn(&str) -> Option<String>>(env: &Env<F>) -> Result<Self, ConfigError> {
        Ok(Self {
            tasks_table: env.required("TASKS_TABLE")?,
            idempotency_table: env.required("IDEMPOTENCY_TABLE")?,
            idempotency_ttl: chrono::Duration::hours(env.parsed("IDEMPOTENCY_TTL_HOURS", 24)?),
            task_ttl: chrono::Duration::days(env.parsed("TASK_TTL_DAYS", 30)?),
            failure_retention: failure_retention(env)?,
            database: DatabaseConfig::from_env(env)?,
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
    fn the_runtime_reads_its_function_name_and_retention_settings() {
        let settings = env(&[
            ("AWS_LAMBDA_FUNCTION_NAME", "tem-RoutitSyncFunction"),
            ("STEP_RECORD_TTL_DAYS", "7"),
            ("FAILED_MESSAGE_RETENTION_DAYS", "21"),
        ])
        .runtime_settings()
        .unwrap();
        assert_eq!(settings.function_name, "tem-RoutitSyncFunction");
        assert_eq!(settings.step_record_ttl, chrono::Duration::days(7));
        assert_eq!(settings.failure_retention, chrono::Duration::days(21));
        let defaults = env(&[]).runtime_settings().unwrap();
        assert_eq!(defaults.function_name, "local");
        assert_eq!(defaults.failure_retention, chrono::Duration::days(30));
    }

    #[test]
    fn a_failure_retention_shorter_than_the_dlq_keeps_messages_is_refused() {
        let err = env(&[("FAILED_MESSAGE_RETENTION_DAYS", "13")])
            .runtime_settings()
            .unwrap_err();
        assert!(err.to_string().contains("at least 14"), "{err}");
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

    fn no_endpoint() -> Endpoint {
        Endpoint::default()
    }

    #[test]
    fn a_url_secret_is_kept_whole_for_sqlx_to_parse() {
        let url = "postgres://tem:p%40ss@db.example:6432/tem?sslmode=require";
        assert_eq!(
            parse_database_secret(&format!("  {url}\n"), &no_endpoint()).unwrap(),
            DatabaseTarget::Url(url.into())
        );
        assert!(matches!(
            parse_database_secret("postgresql://x@h/d", &no_endpoint()).unwrap(),
            DatabaseTarget::Url(_)
        ));
    }

    #[test]
    fn the_rds_console_json_form_gives_every_part() {
        let secret = r#"{"username":"tem","password":"p@ss:/w{rd}\"","engine":"postgres",
            "host":"tem.abc.eu-west-1.rds.amazonaws.com","port":5432,"dbname":"tem",
            "dbInstanceIdentifier":"tem"}"#;
        assert_eq!(
            parse_database_secret(secret, &no_endpoint()).unwrap(),
            DatabaseTarget::Parts {
                host: "tem.abc.eu-west-1.rds.amazonaws.com".into(),
                port: 5432,
                dbname: "tem".into(),
                username: "tem".into(),
                password: Password::new("p@ss:/w{rd}\""),
            }
        );
    }

    #[test]
    fn a_managed_secret_of_only_username_and_password_is_completed_by_the_environment() {
        let secret = r#"{"username":"postgres","password":"pw"}"#;
        let endpoint = Endpoint {
            host: Some("proxy.proxy-abc.eu-west-1.rds.amazonaws.com".into()),
            port: None,
            dbname: Some("tem".into()),
        };
        let DatabaseTarget::Parts {
            host, port, dbname, ..
        } = parse_database_secret(secret, &endpoint).unwrap()
        else {
            panic!("parts expected");
        };
        assert_eq!(
            (host.as_str(), port, dbname.as_str()),
            ("proxy.proxy-abc.eu-west-1.rds.amazonaws.com", 5432, "tem")
        );
    }

    #[test]
    fn the_environment_endpoint_wins_over_the_secret_so_a_proxy_can_stand_in_front() {
        let secret =
            r#"{"username":"u","password":"p","host":"instance","port":"5433","dbname":"a"}"#;
        let endpoint = Endpoint {
            host: Some("proxy".into()),
            port: Some(5432),
            dbname: Some("b".into()),
        };
        let DatabaseTarget::Parts {
            host, port, dbname, ..
        } = parse_database_secret(secret, &endpoint).unwrap()
        else {
            panic!("parts expected");
        };
        assert_eq!((host.as_str(), port, dbname.as_str()), ("proxy", 5432, "b"));
        // A string port, as some tools store it, is read too.
        let DatabaseTarget::Parts { port, .. } =
            parse_database_secret(secret, &no_endpoint()).unwrap()
        else {
            panic!("parts expected");
        };
        assert_eq!(port, 5433);
    }

    #[test]
    fn a_secret_without_a_host_says_to_set_database_host() {
        let err = parse_database_secret(r#"{"username":"u","password":"p"}"#, &no_endpoint())
            .unwrap_err();
        assert!(matches!(
            err,
            DatabaseSecretError::Missing { field: "host", .. }
        ));
        assert!(err.to_string().contains("DATABASE_HOST"), "{err}");
        let err = parse_database_secret(
            r#"{"username":"u","password":"p","host":"h"}"#,
            &no_endpoint(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("DATABASE_NAME"), "{err}");
    }

    #[test]
    fn a_secret_without_credentials_names_the_missing_field() {
        for (secret, field) in [
            (r#"{"password":"p","host":"h","dbname":"d"}"#, "username"),
            (r#"{"username":"u","host":"h","dbname":"d"}"#, "password"),
        ] {
            assert!(matches!(
                parse_database_secret(secret, &no_endpoint()).unwrap_err(),
                DatabaseSecretError::Missing { field: f, .. } if f == field
            ));
        }
    }

    #[test]
    fn errors_never_quote_the_password() {
        let password = "s3cr3t-Value";
        for secret in [
            format!(r#"{{"username":"u","password":{{"p":"{password}"}}}}"#),
            format!(r#"{{"username":"u","password":"{password}","port":"x{password}"}}"#),
            format!(r#"{{"username":"u","password":"{password}""#),
            format!("mysql://u:{password}@h/d"),
        ] {
            let err = parse_database_secret(&secret, &no_endpoint()).unwrap_err();
            assert!(!err.to_string().contains(password), "{err}");
            assert!(!format!("{err:?}").contains(password), "{err:?}");
        }
        let target = parse_database_secret(
            &format!(r#"{{"username":"u","password":"{password}","host":"h","dbname":"d"}}"#),
            &no_endpoint(),
        )
        .unwrap();
        assert!(!format!("{target:?}").contains(password));
        let url = DatabaseSource::Url(format!("postgres://u:{password}@h/d"));
        assert!(!format!("{url:?}").contains(password));
    }

    #[test]
    fn a_secret_for_another_engine_or_of_another_shape_is_refused() {
        assert_eq!(
            parse_database_secret(
                r#"{"engine":"mysql","username":"u","password":"p"}"#,
                &no_endpoint()
            )
            .unwrap_err(),
            DatabaseSecretError::NotPostgres("mysql".into())
        );
        assert_eq!(
            parse_database_secret("hunter2", &no_endpoint()).unwrap_err(),
            DatabaseSecretError::NotRecognised
        );
        assert!(matches!(
            parse_database_secret(
                r#"{"username":"u","password":"p","host":"h","port":70000}"#,
                &no_endpoint()
            )
            .unwrap_err(),
            DatabaseSecretError::WrongType { field: "port", .. }
        ));
    }

    #[test]
    fn a_ca_secret_must_hold_a_pem_certificate() {
        let pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----";
        assert!(parse_ca_bundle("ca", pem).unwrap().ends_with("-----\n"));
        let err = parse_ca_bundle("tem/rds-ca", "arn:aws:...").unwrap_err();
        assert!(err.to_string().contains("tem/rds-ca"), "{err}");
        assert!(err.to_string().contains("DATABASE_CA_SECRET_ID"), "{err}");
    }

    #[test]
    fn the_database_settings_read_their_variables() {
        let config = DatabaseConfig::from_env(&env(&[
            ("DATABASE_SECRET_ID", "tem/db"),
            ("DATABASE_SSL_MODE", "Verify-Full"),
            ("DATABASE_CA_SECRET_ID", "tem/rds-ca"),
            ("DATABASE_HOST", "proxy"),
            ("DATABASE_PORT", "6432"),
            ("DATABASE_MAX_CONNECTIONS", "3"),
        ]))
        .unwrap();
        assert_eq!(config.ssl_mode, Some(SslMode::VerifyFull));
        assert_eq!(config.ca_secret.as_deref(), Some("tem/rds-ca"));
        assert_eq!(config.endpoint.port, Some(6432));
        assert_eq!(config.endpoint.dbname, None);
        assert_eq!(config.max_connections, 3);
        assert_eq!(config.acquire_timeout, Duration::from_secs(5));
        let defaults = DatabaseConfig::from_env(&env(&[("DATABASE_URL", "postgres://x")])).unwrap();
        assert_eq!((defaults.ssl_mode, defaults.max_connections), (None, 2));
    }

    #[test]
    fn a_wrong_ssl_mode_or_pool_size_names_the_variable_and_the_choices() {
        let err = DatabaseConfig::from_env(&env(&[
            ("DATABASE_URL", "postgres://x"),
            ("DATABASE_SSL_MODE", "allow"),
        ]))
        .unwrap_err();
        assert!(
            matches!(
                &err,
                ConfigError::Invalid {
                    name: "DATABASE_SSL_MODE",
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("verify-full"), "{err}");
        let err = DatabaseConfig::from_env(&env(&[
            ("DATABASE_URL", "postgres://x"),
            ("DATABASE_MAX_CONNECTIONS", "0"),
        ]))
        .unwrap_err();
        assert!(matches!(
            err,
            ConfigError::Invalid {
                name: "DATABASE_MAX_CONNECTIONS",
                ..
            }
        ));
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
