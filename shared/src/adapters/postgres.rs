//! PostgreSQL: sync profiles, their watermarks, and the record of every
//! sync-manager run.

use async_trait::async_trait;
use chrono::NaiveDate;
use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgSslMode};
use sqlx::Row;

use crate::config::{DatabaseTarget, Endpoint, SslMode};

use crate::ports::{PortError, ProfileStore, RunLog};
use crate::sync::manager::RunSummary;
use crate::sync::profile::{ProfileSelection, SyncProfile, WatermarkAdvance};

/// The embedded migrations (`migrations/` at the repository root).
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// Every database failure is worth another attempt: the totals steps have
/// always retried them (serialization failures, deadlocks, a lost
/// connection, a pool timeout), and a constraint that refuses a write
/// fails the same way each time until the retries run out.
impl From<sqlx::Error> for crate::ports::StoreError {
    fn from(e: sqlx::Error) -> Self {
        crate::ports::StoreError::retryable(e)
    }
}

/// Why the pool's connect options cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum ConnectOptionsError {
    // sqlx's URL errors name the part, never the URL (which holds the password).
    #[error("the database URL is not a valid PostgreSQL URL ({0}); percent-encode special characters in the password, or use the JSON secret form")]
    BadUrl(String),
}

/// Builds the connect options from the parsed target and the TLS settings,
/// with sqlx's builder (never a formatted URL, so any password works).
/// `ssl_mode` wins over the URL's `sslmode`; `ca_pem` (the bundle from
/// `DATABASE_CA_SECRET_ID`) wins over the URL's `sslrootcert`.
pub fn connect_options(
    target: &DatabaseTarget,
    endpoint: &Endpoint,
    ssl_mode: Option<SslMode>,
    ca_pem: Option<&str>,
) -> Result<PgConnectOptions, ConnectOptionsError> {
    let mut options = match target {
        DatabaseTarget::Url(url) => {
            let mut options = PgConnectOptions::from_str(url)
                .map_err(|e| ConnectOptionsError::BadUrl(e.to_string()))?;
            if let Some(host) = &endpoint.host {
                options = options.host(host);
            }
            if let Some(port) = endpoint.port {
                options = options.port(port);
            }
            if let Some(dbname) = &endpoint.dbname {
                options = options.database(dbname);
            }
            options
        }
        // The endpoint already completed the parts.
        DatabaseTarget::Parts {
            host,
            port,
            dbname,
            username,
            password,
        } => PgConnectOptions::new_without_pgpass()
            .host(host)
            .port(*port)
            .database(dbname)
            .username(username)
            .password(password.expose()),
    };
    let ssl_mode = ssl_mode.or_else(|| loopback_default(target, options.get_host()));
    if let Some(mode) = ssl_mode {
        options = options.ssl_mode(match mode {
            SslMode::Disable => PgSslMode::Disable,
            SslMode::Prefer => PgSslMode::Prefer,
            SslMode::Require => PgSslMode::Require,
            SslMode::VerifyCa => PgSslMode::VerifyCa,
            SslMode::VerifyFull => PgSslMode::VerifyFull,
        });
    }
    if let Some(pem) = ca_pem {
        options = options.ssl_root_cert_from_pem(pem.as_bytes().to_vec());
    }
    Ok(options)
}

/// Local runs stay on plain loopback: with no sslmode anywhere (not in the
/// URL, not in DATABASE_SSL_MODE, not in PGSSLMODE) and a loopback host,
/// TLS would protect nothing, so it is `disable` instead of sqlx's `prefer`
/// (which would use TLS whenever the server has it on).
fn loopback_default(target: &DatabaseTarget, host: &str) -> Option<SslMode> {
    let explicit = match target {
        DatabaseTarget::Url(url) => url.contains("sslmode=") || url.contains("ssl-mode="),
        DatabaseTarget::Parts { .. } => false,
    };
    let loopback = host == "localhost"
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    (!explicit && loopback && std::env::var_os("PGSSLMODE").is_none()).then_some(SslMode::Disable)
}

/// A small pool: a Lambda instance handles one batch at a time, and many
/// instances share the server's connection limit. The acquire timeout is
/// long on purpose: the chain runtime runs no more records at once than the
/// pool serves, so a wait is only for a connection being opened.
pub async fn connect_with(
    options: PgConnectOptions,
    max_connections: u32,
    acquire_timeout: Duration,
) -> Result<PgPool, sqlx::Error> {
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(acquire_timeout)
        .connect_with(options)
        .await
}

/// Connections the pool could lend now: idle ones and room to open more,
/// less `acquiring`, those the caller is already taking. A borrower that
/// counts only these (the totals' slice readers, the import's second
/// writer) never takes a connection a waiting record needs.
pub fn spare_connections(pool: &PgPool, acquiring: usize) -> usize {
    let max = pool.options().get_max_connections() as usize;
    let room = max.saturating_sub(pool.size() as usize);
    (pool.num_idle() + room).saturating_sub(acquiring)
}

/// A pool on a URL (temctl, local runs and tests).
pub async fn connect(database_url: &str, max_connections: u32) -> Result<PgPool, sqlx::Error> {
    let options = connect_options(
        &DatabaseTarget::Url(database_url.to_string()),
        &Endpoint::default(),
        None,
        None,
    )
    .map_err(|e| sqlx::Error::Configuration(e.to_string().into()))?;
    connect_with(options, max_connections, Duration::from_secs(10)).await
}

/// What to tell the operator about a failed connection, by its cause.
/// `ca_secret` is `DATABASE_CA_SECRET_ID` when set.
pub fn connect_advice(error: &sqlx::Error, ca_secret: Option<&str>) -> String {
    let text = error.to_string();
    let database_code = match error {
        sqlx::Error::Database(db) => db.code().map(|c| c.to_string()),
        _ => None,
    };
    if text.contains("UnknownIssuer") || text.contains("UnknownCA") || text.contains("BadSignature")
    {
        return match ca_secret {
            Some(secret) => format!("the server's certificate is not signed by the CA in DATABASE_CA_SECRET_ID ({secret}); store the RDS bundle for your region there (https://truststore.pki.rds.amazonaws.com/REGION/REGION-bundle.pem)"),
            None => "the server's certificate is not signed by a CA this build trusts; store the CA bundle (for RDS, the bundle of your region) in a secret and set DATABASE_CA_SECRET_ID (template parameter DatabaseCaSecretName), or add sslrootcert=/path to DATABASE_URL".into(),
        };
    }
    if text.contains("NotValidForName") {
        return "the server's certificate does not name the host connected to; connect by the name in the certificate (the RDS or RDS Proxy endpoint, not an IP address or a CNAME), or use DATABASE_SSL_MODE=verify-ca".into();
    }
    if text.contains("Expired") || text.contains("NotValidYet") {
        return "the server's certificate is outside its validity period; rotate the server certificate (RDS: modify the instance's certificate authority)".into();
    }
    if text.contains("server does not support TLS") {
        return "the server does not offer TLS; turn ssl on at the server, or, only for a database on loopback, set DATABASE_SSL_MODE=disable".into();
    }
    if matches!(error, sqlx::Error::Tls(_)) {
        return match ca_secret {
            Some(secret) => format!("the TLS handshake failed; check that DATABASE_CA_SECRET_ID ({secret}) holds PEM certificates only"),
            None => "the TLS handshake failed; check DATABASE_SSL_MODE and the server's TLS settings".into(),
        };
    }
    if database_code.as_deref() == Some("28000") && text.contains("no encryption") {
        return "the server accepts only encrypted connections; set DATABASE_SSL_MODE=verify-full (or require)".into();
    }
    if matches!(database_code.as_deref(), Some("28P01") | Some("28000")) {
        return "the server refused the credentials; check username and password in the database secret".into();
    }
    if database_code.as_deref() == Some("3D000") {
        return "the database does not exist; check dbname in the secret or DATABASE_NAME".into();
    }
    if matches!(error, sqlx::Error::PoolTimedOut | sqlx::Error::Io(_)) {
        return "the server is not reachable; check host and port, and that the function's subnets and security group reach the database (VpcSubnetIds, VpcSecurityGroupIds)".into();
    }
    "check the database secret (or DATABASE_URL) and that the server is reachable".into()
}

fn db_error(operation: &'static str) -> impl FnOnce(sqlx::Error) -> PortError {
    move |e| PortError::new(operation, e)
}

const PROFILE_COLUMNS: &str =
    "id, name, provider, base_url, credentials_secret, active, first_period, watermark_period";

fn profile_from_row(row: &sqlx::postgres::PgRow) -> Result<SyncProfile, sqlx::Error> {
    Ok(SyncProfile {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        provider: row.try_get("provider")?,
        base_url: row.try_get("base_url")?,
        credentials_secret: row.try_get("credentials_secret")?,
        active: row.try_get("active")?,
        first_period: row.try_get("first_period")?,
        watermark: row.try_get("watermark_period")?,
    })
}

#[derive(Debug, Clone)]
pub struct PgProfiles {
    pool: PgPool,
}

impl PgProfiles {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }
}

#[async_trait]
impl ProfileStore for PgProfiles {
    async fn profiles(&self, selection: &ProfileSelection) -> Result<Vec<SyncProfile>, PortError> {
        let filter = match selection {
            ProfileSelection::All => "active",
            ProfileSelection::Ids(_) => "id = ANY($1)",
            ProfileSelection::Providers(_) => "active AND provider = ANY($1)",
        };
        let sql = format!("SELECT {PROFILE_COLUMNS} FROM sync_profile WHERE {filter} ORDER BY id");
        let query = match selection {
            ProfileSelection::All => sqlx::query(&sql),
            ProfileSelection::Ids(ids) => sqlx::query(&sql).bind(ids),
            ProfileSelection::Providers(providers) => sqlx::query(&sql).bind(providers),
        };
        let rows = query
            .fetch_all(&self.pool)
            .await
            .map_err(db_error("postgres select sync_profile"))?;
        rows.iter()
            .map(profile_from_row)
            .collect::<Result<_, _>>()
            .map_err(db_error("postgres read sync_profile"))
    }

    async fn profile(&self, profile_id: i64) -> Result<Option<SyncProfile>, PortError> {
        let row = sqlx::query(&format!(
            "SELECT {PROFILE_COLUMNS} FROM sync_profile WHERE id = $1"
        ))
        .bind(profile_id)
        .fetch_optional(&self.pool)
        .await
        .map_err(db_error("postgres select sync_profile"))?;
        row.as_ref()
            .map(profile_from_row)
            .transpose()
            .map_err(db_error("postgres read sync_profile"))
    }

    async fn advance_watermark(
        &self,
        profile_id: i64,
        period: NaiveDate,
    ) -> Result<WatermarkAdvance, PortError> {
        // Moves only from the period just before, or from nothing to the
        // first period: never twice, never over a gap.
        let advanced = sqlx::query(
            "UPDATE sync_profile SET watermark_period = $2, updated_at = now()
             WHERE id = $1
               AND ((watermark_period IS NULL AND first_period = $2)
                    OR watermark_period = $2 - 1)",
        )
        .bind(profile_id)
        .bind(period)
        .execute(&self.pool)
        .await
        .map_err(db_error("postgres update watermark"))?
        .rows_affected();
        if advanced == 1 {
            return Ok(WatermarkAdvance::Advanced);
        }
        let watermark: Option<NaiveDate> =
            sqlx::query_scalar("SELECT watermark_period FROM sync_profile WHERE id = $1")
                .bind(profile_id)
                .fetch_optional(&self.pool)
                .await
                .map_err(db_error("postgres select watermark"))?
                .flatten();
        Ok(match watermark {
            Some(w) if w >= period => WatermarkAdvance::AlreadyThere,
            other => WatermarkAdvance::WouldSkip { watermark: other },
        })
    }
}

#[derive(Debug, Clone)]
pub struct PgRunLog {
    pool: PgPool,
}

impl PgRunLog {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }
}

#[async_trait]
impl RunLog for PgRunLog {
    async fn record_run(&self, run: &RunSummary) -> Result<(), PortError> {
        let details = serde_json::to_value(run).map_err(|e| PortError::new("encode run", e))?;
        // A run delivered twice is recorded once, with its latest outcome.
        sqlx::query(
            "INSERT INTO sync_run (id, trigger, started_at, finished_at, profiles_seen, sent, skipped, failures, details)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
             ON CONFLICT (id) DO UPDATE SET finished_at = EXCLUDED.finished_at,
               profiles_seen = EXCLUDED.profiles_seen, sent = EXCLUDED.sent,
               skipped = EXCLUDED.skipped, failures = EXCLUDED.failures, details = EXCLUDED.details,
               deliveries = sync_run.deliveries + 1",
        )
        .bind(&run.run_id)
        .bind(&run.trigger)
        .bind(run.started_at)
        .bind(run.finished_at)
        .bind(run.profiles_seen as i32)
        .bind(run.sent.len() as i32)
        .bind(run.skipped.len() as i32)
        .bind(run.failures.len() as i32)
        .bind(details)
        .execute(&self.pool)
        .await
        .map_err(db_error("postgres insert sync_run"))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Password;

    #[test]
    fn the_runtime_knows_the_pool_timeout_by_sqlx_own_text() {
        assert_eq!(
            sqlx::Error::PoolTimedOut.to_string(),
            crate::runtime::POOL_TIMED_OUT
        );
    }

    #[test]
    fn json_parts_become_options_without_a_url_so_any_password_works() {
        let target = DatabaseTarget::Parts {
            host: "db.internal".into(),
            port: 6432,
            dbname: "tem".into(),
            username: "tem_app".into(),
            password: Password::new("p@ss/w:rd?#%"),
        };
        let options = connect_options(
            &target,
            &Endpoint::default(),
            Some(SslMode::VerifyFull),
            None,
        )
        .unwrap();
        assert_eq!(options.get_host(), "db.internal");
        assert_eq!(options.get_port(), 6432);
        assert_eq!(options.get_database(), Some("tem"));
        assert_eq!(options.get_username(), "tem_app");
        assert!(matches!(options.get_ssl_mode(), PgSslMode::VerifyFull));
    }

    #[test]
    fn the_ssl_mode_setting_wins_over_the_url_and_the_endpoint_over_its_host() {
        let target = DatabaseTarget::Url("postgres://u:p@instance:5432/tem?sslmode=disable".into());
        let endpoint = Endpoint {
            host: Some("proxy".into()),
            ..Endpoint::default()
        };
        let options = connect_options(&target, &endpoint, Some(SslMode::Require), None).unwrap();
        assert!(matches!(options.get_ssl_mode(), PgSslMode::Require));
        assert_eq!(options.get_host(), "proxy");
        let kept = connect_options(&target, &Endpoint::default(), None, None).unwrap();
        assert!(matches!(kept.get_ssl_mode(), PgSslMode::Disable));
        assert_eq!(kept.get_host(), "instance");
    }

    #[test]
    fn a_loopback_url_without_sslmode_stays_plain_and_any_other_keeps_sqlx_default() {
        let mode = |url: &str| {
            connect_options(
                &DatabaseTarget::Url(url.into()),
                &Endpoint::default(),
                None,
                None,
            )
            .unwrap()
            .get_ssl_mode()
        };
        if std::env::var_os("PGSSLMODE").is_some() {
            return;
        }
        assert!(matches!(
            mode("postgres://postgres@127.0.0.1:5432/x"),
            PgSslMode::Disable
        ));
        assert!(matches!(
            mode("postgres://postgres@localhost/x"),
            PgSslMode::Disable
        ));
        assert!(matches!(
            mode("postgres://postgres@127.0.0.1/x?sslmode=require"),
            PgSslMode::Require
        ));
        assert!(matches!(
            mode("postgres://u@db.example/x"),
            PgSslMode::Prefer
        ));
    }

    #[test]
    fn a_bad_url_error_does_not_quote_the_url() {
        let target = DatabaseTarget::Url("postgres://u:secretpw@host:notaport/db".into());
        let err = connect_options(&target, &Endpoint::default(), None, None).unwrap_err();
        assert!(!err.to_string().contains("secretpw"), "{err}");
    }

    #[test]
    fn a_certificate_from_an_unknown_ca_is_explained_by_the_ca_secret() {
        let error = sqlx::Error::Tls("invalid peer certificate: UnknownIssuer".into());
        let advice = connect_advice(&error, Some("tem/rds-ca"));
        assert!(
            advice.contains("DATABASE_CA_SECRET_ID (tem/rds-ca)"),
            "{advice}"
        );
        assert!(advice.contains("RDS bundle"), "{advice}");
        assert!(connect_advice(&error, None).contains("set DATABASE_CA_SECRET_ID"));
    }
}
