//! TLS to PostgreSQL, against a throwaway cluster with `ssl = on`, a CA made
//! for the test and a pg_hba.conf that accepts only `hostssl`. Every
//! connection goes through the functions' own path: the database secret
//! (RDS JSON form or URL) and the CA secret read through `SecretGet`,
//! parsed by `config`, built into options by the postgres adapter.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::PgPool;
use tem_shared::bootstrap::{connect_database, StartupError};
use tem_shared::config::{DatabaseConfig, DatabaseSource, Endpoint, SslMode};
use tem_shared::ports::{PortError, SecretGet};
use tem_tests::cluster::{Cluster, ClusterSettings};

/// Secrets Manager as a map, as the deployed functions see it.
struct Secrets(HashMap<String, String>);

#[async_trait]
impl SecretGet for Secrets {
    async fn secret_string(&self, secret_id: &str) -> Result<String, PortError> {
        self.0.get(secret_id).cloned().ok_or_else(|| {
            PortError::new("secretsmanager GetSecretValue", "ResourceNotFoundException")
        })
    }
}

const DB_SECRET: &str = "tem/database";
const CA_SECRET: &str = "tem/rds-ca";

fn tls_cluster() -> Cluster {
    Cluster::start(ClusterSettings {
        ssl: true,
        ssl_only: true,
    })
}

fn config(ssl_mode: Option<SslMode>, ca: bool) -> DatabaseConfig {
    DatabaseConfig {
        source: DatabaseSource::Secret(DB_SECRET.into()),
        ssl_mode,
        ca_secret: ca.then(|| CA_SECRET.to_string()),
        endpoint: Endpoint::default(),
        max_connections: 1,
        acquire_timeout: Duration::from_secs(10),
    }
}

fn secrets(database: String, ca_pem: &str) -> Secrets {
    Secrets(HashMap::from([
        (DB_SECRET.to_string(), database),
        (CA_SECRET.to_string(), ca_pem.to_string()),
    ]))
}

async fn encrypted(pool: &PgPool) -> bool {
    sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        .fetch_one(pool)
        .await
        .expect("pg_stat_ssl answers")
}

fn refused(result: Result<PgPool, StartupError>) -> String {
    match result {
        Ok(_) => panic!("the connection should have been refused"),
        Err(e) => e.to_string(),
    }
}

#[tokio::test]
async fn verify_full_with_the_ca_from_the_ca_secret_connects_encrypted_with_an_rds_json_secret() {
    let cluster = tls_cluster();
    for host in ["localhost", "127.0.0.1"] {
        let store = secrets(cluster.json_secret(host, "postgres"), &cluster.ca_pem);
        let pool = connect_database(&config(Some(SslMode::VerifyFull), true), &store)
            .await
            .unwrap_or_else(|e| panic!("verify-full to {host}: {e}"));
        assert!(encrypted(&pool).await, "{host}");
        pool.close().await;
    }
}

#[tokio::test]
async fn a_wrong_ca_fails_clearly_naming_the_ca_secret() {
    let cluster = tls_cluster();
    let store = secrets(
        cluster.json_secret("localhost", "postgres"),
        &cluster.other_ca_pem,
    );
    let message = refused(connect_database(&config(Some(SslMode::VerifyFull), true), &store).await);
    assert!(
        message.contains("not signed by the CA in DATABASE_CA_SECRET_ID (tem/rds-ca)"),
        "{message}"
    );
    assert!(message.contains("RDS bundle"), "{message}");
    // Without any CA configured, the advice is to configure one.
    let message =
        refused(connect_database(&config(Some(SslMode::VerifyFull), false), &store).await);
    assert!(message.contains("set DATABASE_CA_SECRET_ID"), "{message}");
}

#[tokio::test]
async fn require_encrypts_without_a_ca() {
    let cluster = tls_cluster();
    let store = Secrets(HashMap::from([(
        DB_SECRET.to_string(),
        cluster.json_secret("127.0.0.1", "postgres"),
    )]));
    let pool = connect_database(&config(Some(SslMode::Require), false), &store)
        .await
        .expect("require needs no CA");
    assert!(encrypted(&pool).await);
}

#[tokio::test]
async fn a_plain_connection_is_refused_by_a_hostssl_only_server_with_advice() {
    let cluster = tls_cluster();
    let store = secrets(cluster.json_secret("127.0.0.1", "postgres"), "");
    let message = refused(connect_database(&config(Some(SslMode::Disable), false), &store).await);
    assert!(message.contains("no encryption"), "{message}");
    assert!(
        message.contains("accepts only encrypted connections; set DATABASE_SSL_MODE=verify-full"),
        "{message}"
    );
    // A loopback URL without sslmode stays plain too (local runs): refused here.
    let url_config = DatabaseConfig {
        source: DatabaseSource::Url(cluster.url("postgres", "")),
        ..config(None, false)
    };
    let message = refused(connect_database(&url_config, &store).await);
    assert!(message.contains("no encryption"), "{message}");
}

#[tokio::test]
async fn a_url_with_sslrootcert_verifies_and_database_ssl_mode_overrides_its_sslmode() {
    let cluster = tls_cluster();
    let store = Secrets(HashMap::new());
    let url = cluster.url(
        "postgres",
        &format!(
            "?sslmode=verify-full&sslrootcert={}",
            cluster.ca_file.display()
        ),
    );
    let pool = connect_database(
        &DatabaseConfig {
            source: DatabaseSource::Url(url.clone()),
            ..config(None, false)
        },
        &store,
    )
    .await
    .expect("verify-full with the URL's sslrootcert");
    assert!(encrypted(&pool).await);
    // DATABASE_SSL_MODE=disable wins over the URL's verify-full: refused.
    let message = refused(
        connect_database(
            &DatabaseConfig {
                source: DatabaseSource::Url(url),
                ..config(Some(SslMode::Disable), false)
            },
            &store,
        )
        .await,
    );
    assert!(message.contains("no encryption"), "{message}");
}

#[tokio::test]
async fn a_ca_secret_that_is_not_pem_is_refused_before_connecting() {
    let cluster = tls_cluster();
    let store = secrets(
        cluster.json_secret("localhost", "postgres"),
        "arn:aws:acm:...",
    );
    let message = refused(connect_database(&config(Some(SslMode::VerifyFull), true), &store).await);
    assert!(message.contains("holds no PEM certificate"), "{message}");
}

#[tokio::test]
async fn prefer_falls_back_to_plain_on_a_server_without_tls_and_encrypts_on_one_with_it() {
    let plain = Cluster::start(ClusterSettings {
        ssl: false,
        ssl_only: false,
    });
    let store = secrets(plain.json_secret("127.0.0.1", "postgres"), "");
    let pool = connect_database(&config(Some(SslMode::Prefer), false), &store)
        .await
        .expect("prefer connects to a server without TLS");
    assert!(!encrypted(&pool).await);
    let tls = tls_cluster();
    let store = secrets(tls.json_secret("127.0.0.1", "postgres"), "");
    let pool = connect_database(&config(Some(SslMode::Prefer), false), &store)
        .await
        .expect("prefer connects to a server with TLS");
    assert!(encrypted(&pool).await);
}
