//! The daily maintenance against a real PostgreSQL (issue 20): a month of
//! CDRs written to its archive file and read back, by our reader and by an
//! independent one (DuckDB, `scripts/parquet-read.sh`).

use std::path::{Path, PathBuf};
use std::process::Command;

use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};
use serde_json::Value;
use sqlx::{PgPool, Row};
use tem_shared::adapters::maintenance::write_month_cdrs;
use tem_shared::maintenance::archive::{read_cdrs, ArchivedCdr, CdrArchiveWriter};
use tem_tests::db::fresh;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the repository")
        .to_path_buf()
}

/// Two customers' CDRs around January 2025, and CDRs without a customer:
/// values that a text format would have to escape, the extremes of each
/// column, and instants at the month's edges.
async fn seed(pool: &PgPool) -> (i64, i64) {
    let mut customers = Vec::new();
    for name in ["Acme", "Globex"] {
        customers.push(
            sqlx::query_scalar::<_, i64>(
                "INSERT INTO customer (name, billing_cycle_start_day, time_zone) VALUES ($1, 1, 'Europe/Amsterdam') RETURNING id",
            )
            .bind(name)
            .fetch_one(pool)
            .await
            .unwrap(),
        );
    }
    let (acme, globex) = (customers[0], customers[1]);
    let rows: Vec<(Option<i64>, &str, &str, &str, i64)> = vec![
        (
            Some(acme),
            "A-first",
            "2025-01-01 00:00:00+00",
            "+31201234567",
            12_345,
        ),
        (
            Some(acme),
            "A-quotes",
            "2025-01-15 12:34:56.789012+00",
            "say \"hi\", then; go\nnext line",
            -1,
        ),
        (
            Some(acme),
            "A-unicode",
            "2025-01-20 08:00:00+00",
            "Zürich ☎ 東京",
            0,
        ),
        (
            Some(acme),
            "A-last",
            "2025-01-31 23:59:59.999999+00",
            "",
            i64::MAX / 2,
        ),
        (
            Some(acme),
            "A-february",
            "2025-02-01 00:00:00+00",
            "+3120",
            5,
        ),
        (
            Some(acme),
            "A-december",
            "2024-12-31 23:59:59.999999+00",
            "+3120",
            5,
        ),
        (
            Some(globex),
            "G-january",
            "2025-01-10 10:00:00+00",
            "+3120",
            7,
        ),
        (None, "N-january", "2025-01-11 11:00:00+00", "+3120", 9),
    ];
    for (i, (customer, id, at, destination, cost)) in rows.into_iter().enumerate() {
        sqlx::query(
            "INSERT INTO call_detail_record (provider, external_id, subscription, customer_id, started_at, kind, direction,
                destination, roaming_zone, duration_seconds, volume_bytes, units, provider_cost_micros, import_file_id, source_line)
             VALUES ('routit', $1, '+31612345678', $2, $3::timestamptz, $4, 'outgoing', $5, 'world', $6, $7, 1, $8, 77, $9)",
        )
        .bind(id)
        .bind(customer)
        .bind(at)
        .bind(["voice", "sms", "data", "service"][i % 4])
        .bind(destination)
        .bind((i as i32) * 61)
        .bind(if i % 4 == 2 { i64::MAX } else { 0 })
        .bind(cost)
        .bind(i as i32 + 2)
        .execute(pool)
        .await
        .unwrap();
    }
    (acme, globex)
}

/// The month's rows as PostgreSQL has them, in the archive's order.
async fn month_rows(pool: &PgPool, customer: Option<i64>, month: &str) -> Vec<ArchivedCdr> {
    sqlx::query(
        "SELECT * FROM call_detail_record
         WHERE started_at >= $1::date AT TIME ZONE 'UTC'
           AND started_at < ($1::date + interval '1 month') AT TIME ZONE 'UTC'
           AND customer_id IS NOT DISTINCT FROM $2
         ORDER BY started_at, provider, external_id, id",
    )
    .bind(month)
    .bind(customer)
    .fetch_all(pool)
    .await
    .unwrap()
    .iter()
    .map(|r| ArchivedCdr {
        id: r.get("id"),
        provider: r.get("provider"),
        external_id: r.get("external_id"),
        subscription: r.get("subscription"),
        customer_id: r.get("customer_id"),
        started_at: r.get("started_at"),
        kind: r.get("kind"),
        direction: r.get("direction"),
        destination: r.get("destination"),
        roaming_zone: r.get("roaming_zone"),
        duration_seconds: r.get("duration_seconds"),
        volume_bytes: r.get("volume_bytes"),
        units: r.get("units"),
        provider_cost_micros: r.get("provider_cost_micros"),
        import_file_id: r.get("import_file_id"),
        source_line: r.get("source_line"),
    })
    .collect()
}

async fn archive_to_file(pool: &PgPool, customer: Option<i64>, month: &str, path: &Path) -> u64 {
    let file = std::fs::File::create(path).unwrap();
    let mut writer = CdrArchiveWriter::new(file).unwrap();
    let month: NaiveDate = month.parse().unwrap();
    let written = write_month_cdrs(pool, customer, month, &mut writer)
        .await
        .unwrap();
    let (_, rows) = writer.finish().unwrap();
    assert_eq!(rows, written);
    written
}

/// What DuckDB reads from an archive file.
fn duckdb_read(path: &Path) -> Value {
    let out = Command::new(repo().join("scripts/parquet-read.sh"))
        .arg(path)
        .output()
        .expect("scripts/parquet-read.sh runs (bash, python3 with venv)");
    assert!(
        out.status.success(),
        "parquet-read failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("parquet-read prints JSON")
}

fn iso(at: &DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Micros, true)
}

#[tokio::test]
async fn a_customers_month_is_archived_with_every_column_and_reads_back_equal() {
    let db = fresh().await;
    let (acme, _) = seed(&db.pool).await;
    let dir = tempfile_dir();
    let path = dir.join("acme-2025-01.parquet");
    let written = archive_to_file(&db.pool, Some(acme), "2025-01-01", &path).await;

    let expected = month_rows(&db.pool, Some(acme), "2025-01-01").await;
    let ids: Vec<&str> = expected.iter().map(|r| r.external_id.as_str()).collect();
    assert_eq!(
        ids,
        ["A-first", "A-quotes", "A-unicode", "A-last"],
        "only Acme's January, both edges of the month included"
    );
    assert_eq!(written, 4);

    let ours: Vec<ArchivedCdr> = read_cdrs(std::fs::File::open(&path).unwrap())
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(ours, expected);

    let theirs = duckdb_read(&path);
    let columns: Vec<(String, String)> = theirs["columns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c[0].as_str().unwrap().into(), c[1].as_str().unwrap().into()))
        .collect();
    assert_eq!(columns[0], ("id".into(), "BIGINT".into()));
    assert_eq!(columns[4], ("customer_id".into(), "BIGINT".into()));
    assert_eq!(
        columns[5],
        ("started_at".into(), "TIMESTAMP WITH TIME ZONE".into())
    );
    assert_eq!(columns[10], ("duration_seconds".into(), "INTEGER".into()));
    assert_eq!(columns.len(), 16);
    let rows = theirs["rows"].as_array().unwrap();
    assert_eq!(rows.len(), expected.len());
    for (row, cdr) in rows.iter().zip(&expected) {
        let as_seen = serde_json::json!([
            cdr.id,
            cdr.provider,
            cdr.external_id,
            cdr.subscription,
            cdr.customer_id,
            iso(&cdr.started_at),
            cdr.kind,
            cdr.direction,
            cdr.destination,
            cdr.roaming_zone,
            cdr.duration_seconds,
            cdr.volume_bytes,
            cdr.units,
            cdr.provider_cost_micros,
            cdr.import_file_id,
            cdr.source_line
        ]);
        assert_eq!(
            row, &as_seen,
            "DuckDB reads {} differently",
            cdr.external_id
        );
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn the_cdrs_without_a_customer_are_a_month_of_their_own() {
    let db = fresh().await;
    seed(&db.pool).await;
    let dir = tempfile_dir();
    let path = dir.join("none-2025-01.parquet");
    assert_eq!(
        archive_to_file(&db.pool, None, "2025-01-01", &path).await,
        1
    );
    let theirs = duckdb_read(&path);
    assert_eq!(theirs["rows"][0][2], "N-january");
    assert_eq!(
        theirs["rows"][0][4],
        Value::Null,
        "customer_id is null, not 0"
    );
    let _ = std::fs::remove_dir_all(dir);
}

fn tempfile_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tem-archive-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Deletes nothing, remembers what it was asked to delete.
#[derive(Default)]
struct Deletes(std::sync::Mutex<Vec<String>>);

#[async_trait::async_trait]
impl tem_shared::maintenance::housekeeping::ObjectDelete for Deletes {
    async fn delete_object(
        &self,
        bucket: &str,
        key: &str,
    ) -> Result<(), tem_shared::ports::PortError> {
        self.0.lock().unwrap().push(format!("{bucket}/{key}"));
        Ok(())
    }
}

#[tokio::test]
async fn the_housekeeping_prunes_only_what_expired_in_batches_and_forgets_expired_rejected_files() {
    use tem_shared::adapters::maintenance::PgHousekeeping;
    use tem_shared::maintenance::housekeeping::{housekeeping, HousekeepingSettings};
    let db = fresh().await;
    let pool = &db.pool;
    let now = Utc::now();
    // 7 expired step runs and 2 live ones; 3 expired failed messages and 1 live.
    for (n, expires) in (0..9).map(|n| (n, if n < 7 { "-1 day" } else { "+1 day" })) {
        sqlx::query(
            "INSERT INTO step_run (message_id, attempt, step, function_name, trace_id, depth,
                                   chain_started_at, started_at, expires_at)
             VALUES ($1, 1, 'ImportCdrFile', 'f', 't', 0, now(), now(), now() + $2::interval)",
        )
        .bind(format!("m{n}"))
        .bind(expires)
        .execute(pool)
        .await
        .unwrap();
    }
    for (n, expires) in (0..4).map(|n| (n, if n < 3 { "-1 day" } else { "+1 day" })) {
        sqlx::query(
            "INSERT INTO failed_message (id, queue, queue_url, dlq_url, body, error_kind, error,
                                         attempts, failed_at, expires_at)
             VALUES ($1, 'q', 'u', 'd', '{}', 'permanent', 'e', 1, now(), now() + $2::interval)",
        )
        .bind(format!("f{n}"))
        .bind(expires)
        .execute(pool)
        .await
        .unwrap();
    }
    // Catalog applies of 500 and 10 days ago; an alert published 100 days
    // ago, one published yesterday, one never published.
    for days in [500, 10] {
        sqlx::query(
            "INSERT INTO catalog_apply (applied_at, source, sha256, changed, changes)
             VALUES (now() - make_interval(days => $1), 'catalog.yaml', 'x', 1, '[]')",
        )
        .bind(days)
        .execute(pool)
        .await
        .unwrap();
    }
    let customer: i64 = sqlx::query_scalar(
        "INSERT INTO customer (name, billing_cycle_start_day, time_zone) VALUES ('Acme', 1, 'Europe/Amsterdam') RETURNING id",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    for (id, published) in [("old", Some(100)), ("new", Some(1)), ("pending", None)] {
        sqlx::query(
            "INSERT INTO alert_outbox (id, customer_id, kind, attributes, body, published_at)
             VALUES ($1, $2, 'budget_alert', '{}', '{}', now() - make_interval(days => $3))",
        )
        .bind(id)
        .bind(customer)
        .bind(published)
        .execute(pool)
        .await
        .unwrap();
    }
    // Imports with rejected-row files: one finished 100 days ago, one today.
    for (key, days) in [("rejected/old.csv", 100), ("rejected/new.csv", 0)] {
        sqlx::query(
            "INSERT INTO import_file (bucket, key, sha256, size_bytes, provider, status, rejected_key, finished_at)
             VALUES ('cdr', $1, 'x', 1, 'routit', 'completed_with_errors', $1, now() - make_interval(days => $2))",
        )
        .bind(key)
        .bind(days)
        .execute(pool)
        .await
        .unwrap();
    }

    let deletes = Deletes::default();
    let settings = HousekeepingSettings {
        batch: 2,
        ..HousekeepingSettings::default()
    };
    let report = housekeeping(&PgHousekeeping::new(pool.clone()), &deletes, &settings, now)
        .await
        .unwrap();
    assert_eq!(report.pruned["step_run"], 7);
    assert_eq!(report.pruned["failed_message"], 3);
    assert_eq!(report.pruned["catalog_apply"], 1);
    assert_eq!(report.pruned["alert_outbox"], 1);
    assert_eq!(report.rejected_files, 1);
    assert_eq!(
        *deletes.0.lock().unwrap(),
        vec!["cdr/rejected/old.csv".to_string()]
    );
    let left: (i64, i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM step_run), (SELECT count(*) FROM failed_message),
                (SELECT count(*) FROM catalog_apply), (SELECT count(*) FROM alert_outbox)",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(left, (2, 1, 1, 2));
    let named: Vec<Option<String>> =
        sqlx::query_scalar("SELECT rejected_key FROM import_file ORDER BY key")
            .fetch_all(pool)
            .await
            .unwrap();
    assert_eq!(named, vec![Some("rejected/new.csv".to_string()), None]);
    assert_eq!(report.analysed, vec!["call_detail_record", "rating_chunk"]);
}

#[tokio::test]
async fn an_open_audit_finding_keeps_its_month_from_the_archive_and_a_resolved_one_does_not() {
    use tem_shared::adapters::maintenance::PgArchive;
    use tem_shared::maintenance::retention::Blocker;
    use tem_shared::maintenance::run::ArchiveStore;
    let db = fresh().await;
    let pool = &db.pool;
    let invoice: i64 = sqlx::query_scalar(
        "INSERT INTO carrier_invoice (provider, account, invoice_number, period_start, period_end, file_key,
                                      content_sha256, lines_read, lines_total_micros)
         VALUES ('kpn_een', 'A1', 'K-1', '2024-03-01', '2024-03-31', 'carrier-invoices/k.csv', 'x', 3, 0)
         RETURNING id",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO audit_finding (carrier_invoice_id, kind, subscription, billed_micros, expected_micros, file_key, status)
         VALUES ($1, 'rate_overcharged', '+31612345678', 2, 1, 'k', 'disputed')",
    )
    .bind(invoice)
    .execute(pool)
    .await
    .unwrap();
    let archive = PgArchive::new(pool.clone());
    let march: NaiveDate = "2024-03-01".parse().unwrap();
    assert_eq!(
        archive.blockers(None, march).await.unwrap(),
        vec![Blocker::UnfinishedAudit {
            carrier_invoice_id: invoice,
            open_findings: 1
        }]
    );
    assert!(archive
        .blockers(None, "2024-05-01".parse().unwrap())
        .await
        .unwrap()
        .is_empty());
    sqlx::query(
        "UPDATE audit_finding SET status = 'credited', resolved_at = now(), recovered_micros = 1",
    )
    .execute(pool)
    .await
    .unwrap();
    assert!(archive.blockers(None, march).await.unwrap().is_empty());
}
