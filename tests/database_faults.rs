//! PostgreSQL restarted in the middle of an import, and in the middle of a
//! totals calculation (issue 9, faults item 4). Each runs against a
//! database of a throwaway cluster of the test's own, never the machine's
//! shared server. The restart comes once the work holds its advisory lock
//! (the import's load transaction, the calculation's transaction), so it
//! lands between the start and the commit. The first attempt must fail
//! with an error the runtime retries (and counts: it is no pool wait), and
//! the retry must leave exactly what an undisturbed run leaves on the same
//! data in a second database of the same cluster.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use serde_json::json;
use sqlx::{Connection, PgConnection, PgPool, Row};
use tem_shared::adapters::billing::{pricings, stores};
use tem_shared::adapters::totals::calculate_totals;
use tem_shared::billing::handler::Totals;
use tem_shared::billing::totals::CycleTotals;
use tem_shared::bootstrap::connect_database;
use tem_shared::config::{DatabaseConfig, DatabaseSource, Endpoint, SslMode};
use tem_shared::envelope::{Envelope, Step};
use tem_shared::import::importer::{ImportRequest, ImportSummary, Importer};
use tem_shared::import::source::{MemorySource, RangeRead};
use tem_shared::import::zip::ZipLimits;
use tem_shared::import::LocalRejects;
use tem_shared::ports::{PortError, SecretGet};
use tem_shared::routing::Provider;
use tem_shared::runtime::{Delivery, StepError, StepHandler, POOL_TIMED_OUT};
use tem_tests::cluster::{Cluster, ClusterSettings};

const ROWS: usize = 200_000;

struct Secrets(HashMap<String, String>);

#[async_trait]
impl SecretGet for Secrets {
    async fn secret_string(&self, secret_id: &str) -> Result<String, PortError> {
        self.0
            .get(secret_id)
            .cloned()
            .ok_or_else(|| PortError::new("secretsmanager GetSecretValue", "not found"))
    }
}

/// A cluster with TLS only, and two migrated databases on it.
struct Setup {
    cluster: Arc<Cluster>,
    disturbed: PgPool,
    calm: PgPool,
}

async fn admin(cluster: &Cluster) -> PgConnection {
    PgConnection::connect(&cluster.url("postgres", "?sslmode=require"))
        .await
        .expect("admin connection to the throwaway cluster")
}

/// The pool of `database` as a function opens it: RDS JSON secret, CA
/// secret, verify-full.
async fn function_pool(cluster: &Cluster, database: &str) -> PgPool {
    let store = Secrets(HashMap::from([
        ("db".to_string(), cluster.json_secret("localhost", database)),
        ("ca".to_string(), cluster.ca_pem.clone()),
    ]));
    let config = DatabaseConfig {
        source: DatabaseSource::Secret("db".into()),
        ssl_mode: Some(SslMode::VerifyFull),
        ca_secret: Some("ca".into()),
        endpoint: Endpoint::default(),
        max_connections: 3,
        acquire_timeout: Duration::from_secs(30),
    };
    connect_database(&config, &store)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

async fn setup() -> Setup {
    let cluster = Arc::new(Cluster::start(ClusterSettings {
        ssl: true,
        ssl_only: true,
    }));
    let mut admin = admin(&cluster).await;
    for name in ["disturbed", "calm"] {
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await
            .unwrap();
    }
    let disturbed = function_pool(&cluster, "disturbed").await;
    let calm = function_pool(&cluster, "calm").await;
    for pool in [&disturbed, &calm] {
        tem_shared::adapters::postgres::MIGRATOR
            .run(pool)
            .await
            .expect("migrations apply");
    }
    Setup {
        cluster,
        disturbed,
        calm,
    }
}

/// Restarts the cluster as soon as `database` has a granted advisory lock
/// (the work is inside its transaction); bounded to two minutes.
fn restart_when_locked(
    cluster: Arc<Cluster>,
    database: &'static str,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut watcher = admin(&cluster).await;
        let started = std::time::Instant::now();
        loop {
            let locked: bool = sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM pg_locks l JOIN pg_database d ON d.oid = l.database
                 WHERE l.locktype = 'advisory' AND l.granted AND d.datname = $1)",
            )
            .bind(database)
            .fetch_one(&mut watcher)
            .await
            .expect("watch pg_locks");
            if locked {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "the work never took its lock"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        drop(watcher);
        let restarting = cluster.clone();
        tokio::task::spawn_blocking(move || restarting.restart())
            .await
            .unwrap();
    })
}

/// What the runtime makes of a failed attempt's text: a retry that counts.
fn counts_as_a_retried_attempt(reason: &str) {
    assert!(
        !reason.contains(POOL_TIMED_OUT),
        "a restart is a real failed attempt, not a pool wait: {reason}"
    );
}

// ---------------------------------------------------------------- import

const ROUTIT_HEADER: &str =
    "Datum;Tijd;Abonnee;Bestemming;Type;Richting;Duur;Volume;Kosten;Zone;Referentie";

/// A Routit export of `ROWS` rows: known and unknown numbers, every kind,
/// some rows rejected (bad type) and some repeated (duplicates).
fn big_routit_file() -> Vec<u8> {
    let kinds = ["Spraak", "SMS", "Data", "MMS", "Teleport"];
    let zones = ["NL", "EU", "WERELD"];
    let mut out = format!("{ROUTIT_HEADER}\r\n");
    for i in 0..ROWS {
        // Duplicates: every 1,000th row repeats the reference of the row before.
        let reference = if i % 1000 == 999 { i - 1 } else { i };
        let day = 15 + (i % 28) as u32;
        let (month, day) = if day > 31 { (2, day - 31) } else { (1, day) };
        out.push_str(&format!(
            "{day:02}-{month:02}-2025;{:02}:{:02}:{:02};06{:08};0201234567;{};Uitgaand;00:{:02}:{:02};{};{},{:04};{};R-{reference}\r\n",
            (i / 3600) % 24,
            (i / 60) % 60,
            i % 60,
            10_000 + i % 20,
            kinds[if i % 997 == 0 { 4 } else { i % 4 }],
            (i / 60) % 60,
            i % 60,
            if i % 4 == 2 { format!("{},5", i % 7) } else { String::new() },
            i % 3,
            i % 10_000,
            zones[i % 3],
        ));
    }
    out.into_bytes()
}

async fn customer_with_numbers(pool: &PgPool) {
    let customer: i64 = sqlx::query_scalar(
        "INSERT INTO customer (name, billing_cycle_start_day, time_zone) VALUES ('Acme', 15, 'Europe/Amsterdam') RETURNING id",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    // Half of the 20 numbers are known.
    for n in 0..10 {
        sqlx::query("INSERT INTO subscription (customer_id, provider, identifier) VALUES ($1, 'routit', $2)")
            .bind(customer)
            .bind(format!("+316{:08}", 10_000 + n))
            .execute(pool)
            .await
            .unwrap();
    }
}

async fn import(
    pool: &PgPool,
    bytes: &[u8],
    rejects: &std::path::Path,
) -> Result<ImportSummary, tem_shared::import::importer::ImportError> {
    let importer = Importer::new(
        pool.clone(),
        Arc::new(LocalRejects::new(rejects)),
        ZipLimits::default(),
    );
    let key = "inbox/routit/1/2025-02-01/big.csv";
    let source: Arc<dyn RangeRead> = Arc::new(MemorySource::named(key, bytes.to_vec()));
    importer
        .import(
            source,
            &ImportRequest {
                bucket: "test".into(),
                key: key.into(),
                provider: Provider::Routit,
                profile_id: None,
                deadline: None,
            },
        )
        .await
}

/// Every CDR without its generated id and file id, in a fixed order.
async fn all_cdrs(pool: &PgPool) -> Vec<String> {
    sqlx::query(
        "SELECT concat_ws('|', provider, external_id, subscription, customer_id, started_at, kind, direction,
                destination, roaming_zone, duration_seconds, volume_bytes, units, provider_cost_micros, source_line) AS r
         FROM call_detail_record ORDER BY provider, external_id",
    )
    .fetch_all(pool)
    .await
    .unwrap()
    .iter()
    .map(|row| row.get::<String, _>("r"))
    .collect()
}

fn counts(s: &ImportSummary) -> (u64, u64, u64, u64, u64, Vec<(i64, chrono::NaiveDate)>) {
    (
        s.read,
        s.loaded,
        s.duplicate,
        s.rejected,
        s.without_customer,
        s.touched.clone(),
    )
}

#[tokio::test]
async fn an_import_cut_by_a_restart_is_retried_and_ends_as_an_undisturbed_import() {
    let setup = setup().await;
    let rejects =
        std::env::temp_dir().join(format!("tem-faults-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&rejects).unwrap();
    let file = big_routit_file();
    for pool in [&setup.disturbed, &setup.calm] {
        customer_with_numbers(pool).await;
    }

    let restart = restart_when_locked(setup.cluster.clone(), "disturbed");
    let first = import(&setup.disturbed, &file, &rejects).await;
    restart.await.unwrap();
    let error = first.expect_err("the restart cut the first attempt");
    eprintln!("first import attempt: {error}");
    assert!(error.is_retryable(), "{error}");
    counts_as_a_retried_attempt(&error.to_string());
    // Nothing of the cut attempt stayed.
    assert!(all_cdrs(&setup.disturbed).await.is_empty());

    let retried = import(&setup.disturbed, &file, &rejects)
        .await
        .expect("the retry after the restart succeeds");
    let undisturbed = import(&setup.calm, &file, &rejects).await.unwrap();
    assert_eq!(counts(&retried), counts(&undisturbed));
    assert!(retried.loaded > 150_000 && retried.duplicate > 0 && retried.rejected > 0);
    let (rows, expected) = (
        all_cdrs(&setup.disturbed).await,
        all_cdrs(&setup.calm).await,
    );
    assert_eq!(rows.len(), expected.len());
    assert!(rows == expected, "the retried import's rows differ");
    let _ = std::fs::remove_dir_all(&rejects);
}

// ---------------------------------------------------------------- totals

fn bundled_plan() -> serde_json::Value {
    json!({
        "id": "bundled", "name": "Bundled", "unit_bytes": 1_048_576, "monthly_fee_micros": 0,
        "rates": [
            {"id": "voice", "kind": "voice", "prefix": "", "connect_fee_micros": 5_000,
             "price_per_minute_micros": 60_000, "first_increment_s": 60, "increment_s": 1},
            {"id": "data", "kind": "data", "prefix": "", "increment_bytes": 1024,
             "price_per_unit_micros": 1_000_000}
        ],
        "bundles": [
            {"id": "line-minutes", "kinds": ["voice"], "allowance": 100, "scope": "per_subscription"},
            {"id": "pool-minutes", "kinds": ["voice"], "allowance": 6000, "scope": "pooled"},
            {"id": "data-mib", "kinds": ["data"], "allowance": 104_857_600, "scope": "pooled"}
        ]
    })
}

/// A rate-plan customer with `ROWS` CDRs in March 2025 over 50 lines and
/// four import files.
async fn rate_plan_cycle(pool: &PgPool) -> i64 {
    let plan = bundled_plan();
    sqlx::query("INSERT INTO rate_plan (id, name, plan) VALUES ('bundled', 'Bundled', $1)")
        .bind(&plan)
        .execute(pool)
        .await
        .unwrap();
    let customer: i64 = sqlx::query_scalar(
        "INSERT INTO customer (name, billing_cycle_start_day, rate_plan_id) VALUES ('c', 1, 'bundled') RETURNING id",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO call_detail_record (provider, external_id, subscription, customer_id, started_at, kind, direction,
            destination, roaming_zone, duration_seconds, volume_bytes, units, provider_cost_micros, import_file_id, source_line)
         SELECT 'routit', 'T-' || i, '+316' || lpad((i % 50)::text, 8, '0'), $1,
                timestamptz '2025-03-01 00:00:00+00' + i * interval '12 seconds',
                (ARRAY['voice', 'data', 'sms'])[1 + i % 3], 'outgoing', '+31201234567',
                (ARRAY['home', 'eu', 'world'])[1 + (i / 3) % 3],
                CASE WHEN i % 3 = 0 THEN 10 + i % 300 ELSE 0 END,
                CASE WHEN i % 3 = 1 THEN 1000 + i % 100000 ELSE 0 END,
                CASE WHEN i % 3 = 2 THEN 1 ELSE 0 END,
                1000 + i % 5000, 1 + i % 4, i
         FROM generate_series(1, $2) AS i",
    )
    .bind(customer)
    .bind(ROWS as i32)
    .execute(pool)
    .await
    .unwrap();
    customer
}

async fn lines(pool: &PgPool, customer: i64) -> Vec<String> {
    sqlx::query(
        "SELECT concat_ws('|', subscription, kind, roaming_zone, cdr_count, voice_seconds, data_bytes, messages,
                provider_cost_micros, rated_cost_micros, unrated_count) AS r
         FROM totals_line WHERE customer_id = $1 ORDER BY subscription, kind, roaming_zone",
    )
    .bind(customer)
    .fetch_all(pool)
    .await
    .unwrap()
    .iter()
    .map(|row| row.get::<String, _>("r"))
    .collect()
}

#[tokio::test]
async fn a_totals_calculation_cut_by_a_restart_is_retried_and_ends_as_an_undisturbed_one() {
    let setup = setup().await;
    let cycle: chrono::NaiveDate = "2025-03-01".parse().unwrap();
    let customer = rate_plan_cycle(&setup.disturbed).await;
    assert_eq!(rate_plan_cycle(&setup.calm).await, customer);

    // Through the totals function's step handler: its error mapping is
    // what the runtime retries.
    let handler = Totals::new(stores(setup.disturbed.clone()), chrono::Duration::days(5));
    let envelope = Envelope::root(
        "calc-1",
        Step::CalculateTotals,
        json!({"customer_id": customer, "cycle": cycle, "cause": "import"}),
        vec![],
        None,
        Utc::now(),
    );
    let delivery = |attempt| Delivery {
        receive_count: attempt,
        deadline: Utc::now() + chrono::Duration::minutes(5),
    };
    let restart = restart_when_locked(setup.cluster.clone(), "disturbed");
    let first = handler.handle(&envelope, delivery(1)).await;
    restart.await.unwrap();
    match first {
        Err(StepError::Retryable(reason)) => {
            eprintln!("first calculation attempt: {reason}");
            counts_as_a_retried_attempt(&reason)
        }
        other => panic!("the restart should have cut the calculation retryably: {other:?}"),
    }
    handler
        .handle(&envelope, delivery(2))
        .await
        .expect("the retry after the restart succeeds");

    // What the retry stored, against an undisturbed calculation's.
    let stored = |pool: PgPool| async move {
        let totals: String = sqlx::query_scalar(
            "SELECT concat_ws('|', method, rate_plan_id, cdr_count, voice_seconds, data_bytes, messages,
                    provider_cost_micros, rated_cost_micros, unrated_count)
             FROM totals WHERE customer_id = $1 AND cycle = $2",
        )
        .bind(customer)
        .bind(cycle)
        .fetch_one(&pool)
        .await
        .unwrap();
        let pricing = pricings::read(&pool, customer, cycle).await.unwrap();
        (totals, lines(&pool, customer).await, pricing)
    };
    let retried = stored(setup.disturbed.clone()).await;
    let undisturbed: CycleTotals = calculate_totals(&setup.calm, customer, cycle)
        .await
        .unwrap();
    assert_eq!(undisturbed.cdr_count, ROWS as i64);
    assert!(undisturbed.rated_cost_micros > 0 && undisturbed.unrated_count > 0);
    let expected = stored(setup.calm.clone()).await;
    assert_eq!(retried.0, expected.0);
    assert_eq!(retried.1, expected.1);
    assert!(retried.2 == expected.2, "the per-CDR pricings differ");
}
