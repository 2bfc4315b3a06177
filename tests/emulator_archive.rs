//! The archive of months past their retention (issue 20) against the real
//! PostgreSQL and the emulator's S3: archived then restored, a month gives
//! back every row, column and checksum; an archive killed after its files
//! were written and before the drop, or after the drop, finishes on a
//! rerun with nothing lost or doubled; a cycle with a draft invoice keeps
//! its month; an independent reader (DuckDB) reads the archived CDRs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Duration, NaiveDate, Utc};
use sqlx::PgPool;
use tem_shared::adapters::billing::invoice::generate_invoice;
use tem_shared::adapters::billing::PgCalculator;
use tem_shared::adapters::maintenance::{PgArchive, PgPartitions};
use tem_shared::adapters::s3::{S3Documents, S3Objects, S3Uploads};
use tem_shared::adapters::totals::calculate_totals;
use tem_shared::billing::calculation::Recalculation;
use tem_shared::billing::handler::CycleCalculator;
use tem_shared::billing::invoice::InvoiceOutcome;
use tem_shared::billing::totals::TotalsError;
use tem_shared::maintenance::archive::Manifest;
use tem_shared::maintenance::partitions::ensure_partitions;
use tem_shared::maintenance::retention::{ArchiveState, Blocker, RetentionPolicy};
use tem_shared::maintenance::run::{
    archive_expired, restore_month, ArchiveReport, ArchiveSettings, ArchiveStore, MonthRows,
    MonthRowsSink, Removal,
};
use tem_shared::maintenance::MaintenanceError;
use tem_shared::ports::StoreError;
use tem_tests::db::{
    fresh, insert_billing_details, insert_business_customer, insert_customer_on_plan, mark_imported,
};
use tem_tests::stack::own_bucket;
use tokio::sync::Notify;

fn day(s: &str) -> NaiveDate {
    s.parse().unwrap()
}

/// The day the maintenance runs: with 24 months kept, everything before
/// December 2024 is past retention.
fn today() -> NaiveDate {
    day("2026-12-07")
}

async fn insert_cdr(pool: &PgPool, customer: i64, n: usize, at: &str) -> i64 {
    let kind = ["voice", "sms", "data", "voice"][n % 4];
    sqlx::query_scalar(
        "INSERT INTO call_detail_record (provider, external_id, subscription, customer_id, started_at, kind, direction,
            destination, roaming_zone, duration_seconds, volume_bytes, units, provider_cost_micros, import_file_id, source_line)
         VALUES ('routit', $1, $2, $3, $4::timestamptz, $5, 'outgoing', $6,
                 CASE WHEN $5 = 'data' THEN 'eu' ELSE 'home' END,
                 CASE WHEN $5 = 'voice' THEN $7 ELSE 0 END, CASE WHEN $5 = 'data' THEN $7 * 1000 ELSE 0 END,
                 CASE WHEN $5 = 'sms' THEN 1 ELSE 0 END, $8, 1, $9)
         RETURNING id",
    )
    .bind(format!("{customer}-{at}-{n}"))
    .bind(format!("+3161234{customer:04}"))
    .bind(customer)
    .bind(at)
    .bind(kind)
    .bind(format!("dest \"{n}\", ünïcode"))
    .bind(17 + n as i64 * 7)
    .bind(1_000 + n as i64 * 13)
    .bind(n as i32 + 2)
    .fetch_one(pool)
    .await
    .expect("insert a CDR")
}

/// CDRs of a customer in a month: `count` of them spread over its days.
async fn cdrs_in(pool: &PgPool, customer: i64, month: &str, count: usize) -> Vec<i64> {
    let mut ids = Vec::new();
    for n in 0..count {
        let at = format!(
            "{month}-{:02}T{:02}:{:02}:07.123456Z",
            2 + n % 26,
            n % 24,
            n % 60
        );
        ids.push(insert_cdr(pool, customer, n, &at).await);
    }
    ids
}

async fn final_invoice(pool: &PgPool, customer: i64, cycle: &str) {
    calculate_totals(pool, customer, day(cycle)).await.unwrap();
    let after_grace = day(cycle).and_hms_opt(0, 0, 0).unwrap().and_utc() + Duration::days(40);
    let outcome = generate_invoice(pool, customer, day(cycle), after_grace, Duration::days(5))
        .await
        .unwrap();
    assert!(
        matches!(outcome, InvoiceOutcome::Finalised { .. }),
        "{outcome:?}"
    );
}

struct Seeded {
    acme: i64,
    globex: i64,
}

/// Acme (kept 24 months, the default) with invoiced cycles in January and
/// February 2024, and CDRs of last month; Globex (kept 36 months) with
/// CDRs in January 2024 too, so January's partition holds a customer who
/// stays and February's only one who goes.
async fn seed(pool: &PgPool) -> Seeded {
    let acme = insert_business_customer(pool).await;
    insert_billing_details(pool, acme).await;
    let globex = insert_customer_on_plan(pool, "Globex", "business").await;
    sqlx::query("UPDATE customer SET cdr_retention_months = 36 WHERE id = $1")
        .bind(globex)
        .execute(pool)
        .await
        .unwrap();
    let mut ids = cdrs_in(pool, acme, "2024-01", 40).await;
    ids.extend(cdrs_in(pool, acme, "2024-02", 25).await);
    ids.extend(cdrs_in(pool, acme, "2026-11", 5).await);
    ids.extend(cdrs_in(pool, globex, "2024-01", 10).await);
    mark_imported(pool, &ids).await;
    // The months had no partitions: the maintenance makes them, as a
    // database migrated from before the partitions would have them.
    ensure_partitions(&PgPartitions::new(pool.clone()), today())
        .await
        .unwrap();
    final_invoice(pool, acme, "2024-01-01").await;
    final_invoice(pool, acme, "2024-02-01").await;
    // And the pricings' partitions, as the chain's first step does before
    // the archive.
    ensure_partitions(&PgPartitions::new(pool.clone()), today())
        .await
        .unwrap();
    Seeded { acme, globex }
}

/// Per (customer, month): the CDRs' count and a checksum of every column.
async fn cdr_months(pool: &PgPool) -> BTreeMap<(i64, NaiveDate), (i64, String)> {
    let rows: Vec<(i64, NaiveDate, i64, String)> = sqlx::query_as(
        "SELECT customer_id, date_trunc('month', started_at AT TIME ZONE 'UTC')::date, count(*),
                md5(string_agg(c::text, '|' ORDER BY id))
         FROM call_detail_record c GROUP BY 1, 2",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    rows.into_iter()
        .map(|(c, m, n, sum)| ((c, m), (n, sum)))
        .collect()
}

/// Per (customer, cycle): the pricings' and checkpoints' checksums.
async fn pricing_cycles(pool: &PgPool) -> BTreeMap<(i64, NaiveDate), String> {
    let rows: Vec<(i64, NaiveDate, String)> = sqlx::query_as(
        "SELECT customer_id, cycle, md5(string_agg(t, '|' ORDER BY t)) FROM (
             SELECT customer_id, cycle, r::text AS t FROM rating_chunk r
             UNION ALL SELECT customer_id, cycle, k::text FROM rating_checkpoint k) x
         GROUP BY 1, 2",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    rows.into_iter().map(|(c, m, sum)| ((c, m), sum)).collect()
}

fn settings(bucket: &str) -> ArchiveSettings {
    ArchiveSettings {
        bucket: bucket.to_string(),
        default_retention_months: 24,
        today: today(),
        now: Utc::now(),
        stop_after: None,
    }
}

struct Objects {
    uploads: S3Uploads,
    put: S3Objects,
    documents: S3Documents,
}

fn objects(s3: &aws_sdk_s3::Client) -> Objects {
    Objects {
        uploads: S3Uploads::new(s3.clone()),
        put: S3Objects::new(s3.clone()),
        documents: S3Documents::new(s3.clone()),
    }
}

async fn archive(
    store: &dyn ArchiveStore,
    objects: &Objects,
    bucket: &str,
) -> Result<ArchiveReport, MaintenanceError> {
    archive_expired(store, &objects.uploads, &objects.put, &settings(bucket)).await
}

fn workdir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tem-restore-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn restore(pool: &PgPool, objects: &Objects, customer: i64, month: &str) {
    let report = restore_month(
        &PgArchive::new(pool.clone()),
        &objects.documents,
        Some(customer),
        day(month),
        Utc::now() + Duration::days(30),
        &workdir(),
    )
    .await
    .unwrap();
    assert_eq!(report.cdr_rows, report.cdrs_inserted, "{report:?}");
}

async fn partitions(pool: &PgPool) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
         WHERE i.inhparent = 'call_detail_record'::regclass ORDER BY 1",
    )
    .fetch_all(pool)
    .await
    .unwrap()
}

async fn state(pool: &PgPool, customer: i64, month: &str) -> Option<String> {
    sqlx::query_scalar("SELECT state FROM cdr_archive WHERE customer_id = $1 AND month = $2")
        .bind(customer)
        .bind(day(month))
        .fetch_optional(pool)
        .await
        .unwrap()
}

async fn manifest(s3: &aws_sdk_s3::Client, bucket: &str, customer: i64, month: &str) -> Manifest {
    let key = format!("archive/{customer}/{}/manifest.json", &month[..7]);
    let body = s3
        .get_object()
        .bucket(bucket)
        .key(&key)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{key} is in the bucket: {e:?}"))
        .body
        .collect()
        .await
        .unwrap()
        .to_vec();
    serde_json::from_slice(&body).unwrap()
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the repository")
        .to_path_buf()
}

#[tokio::test]
async fn an_archived_then_restored_month_gives_back_every_row_column_and_checksum() {
    let db = fresh().await;
    let pool = &db.pool;
    let Seeded { acme, globex } = seed(pool).await;
    let before = cdr_months(pool).await;
    let pricings_before = pricing_cycles(pool).await;
    assert!(pricings_before.contains_key(&(acme, day("2024-01-01"))));
    let (s3, bucket) = own_bucket("tem-archive").await;
    let objects = objects(&s3);

    let report = archive(&PgArchive::new(pool.clone()), &objects, &bucket)
        .await
        .unwrap();
    let written: Vec<(Option<i64>, NaiveDate, u64)> = report
        .written
        .iter()
        .map(|w| (w.customer_id, w.month, w.cdr_rows))
        .collect();
    assert_eq!(
        written,
        vec![
            (Some(acme), day("2024-01-01"), 40),
            (Some(acme), day("2024-02-01"), 25)
        ]
    );
    assert!(report.kept.is_empty(), "{:?}", report.kept);
    // January's partition holds Globex, who stays: Acme's rows are deleted.
    // February's held only Acme: it is dropped, with its pricings' partition.
    assert_eq!(report.removed[&day("2024-01-01")].rows_deleted, 40);
    assert_eq!(
        report.removed[&day("2024-02-01")].partitions_dropped,
        vec![
            "call_detail_record_y2024m02".to_string(),
            "rating_chunk_y2024m02".to_string()
        ]
    );
    let after = cdr_months(pool).await;
    assert!(!after.contains_key(&(acme, day("2024-01-01"))));
    assert!(!after.contains_key(&(acme, day("2024-02-01"))));
    assert_eq!(
        after[&(globex, day("2024-01-01"))],
        before[&(globex, day("2024-01-01"))]
    );
    assert_eq!(
        after[&(acme, day("2026-11-01"))],
        before[&(acme, day("2026-11-01"))]
    );
    assert!(!partitions(pool)
        .await
        .contains(&"call_detail_record_y2024m02".to_string()));
    let pricings_after = pricing_cycles(pool).await;
    assert!(!pricings_after.contains_key(&(acme, day("2024-01-01"))));
    assert_eq!(
        state(pool, acme, "2024-01-01").await.as_deref(),
        Some("removed")
    );

    // The manifest describes the files; DuckDB reads the CDRs' file.
    let january = manifest(&s3, &bucket, acme, "2024-01-01").await;
    assert_eq!(january.cdrs.rows, 40);
    assert_eq!(january.cycles, vec![day("2024-01-01")]);
    assert!(january.cycle_rows.rows >= 3, "{january:?}");
    let file = workdir().join("cdrs.parquet");
    let bytes = s3
        .get_object()
        .bucket(&bucket)
        .key(&january.cdrs.key)
        .send()
        .await
        .unwrap()
        .body
        .collect()
        .await
        .unwrap()
        .to_vec();
    std::fs::write(&file, &bytes).unwrap();
    let out = std::process::Command::new(repo().join("scripts/parquet-read.sh"))
        .arg(&file)
        .output()
        .expect("run scripts/parquet-read.sh");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let read: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(read["rows"].as_array().unwrap().len(), 40);
    assert_eq!(read["columns"].as_array().unwrap().len(), 16);

    // A late CDR cannot re-bill an archived cycle from what is left.
    let calculator = PgCalculator::new(pool.clone());
    let refused = calculator
        .calculate(acme, day("2024-02-01"), Recalculation::Full, None)
        .await
        .err();
    assert!(
        matches!(&refused, Some(TotalsError::Archived { month, .. }) if month == "2024-01"),
        "{refused:?}"
    );

    // Restored, every month is as it was: counts, every column, pricings.
    restore(pool, &objects, acme, "2024-01-01").await;
    restore(pool, &objects, acme, "2024-02-01").await;
    assert_eq!(cdr_months(pool).await, before);
    assert_eq!(pricing_cycles(pool).await, pricings_before);
    assert_eq!(
        state(pool, acme, "2024-02-01").await.as_deref(),
        Some("restored")
    );
    let invoiced: i64 = sqlx::query_scalar(
        "SELECT rated_cost_micros FROM invoice WHERE customer_id = $1 AND cycle = '2024-02-01'",
    )
    .bind(acme)
    .fetch_one(pool)
    .await
    .unwrap();
    let (totals, _) = calculator
        .calculate(acme, day("2024-02-01"), Recalculation::Full, None)
        .await
        .unwrap();
    assert_eq!(
        totals.rated_cost_micros, invoiced,
        "the restored cycle rates as invoiced"
    );
    // A restore run again adds nothing.
    restore_month(
        &PgArchive::new(pool.clone()),
        &objects.documents,
        Some(acme),
        day("2024-01-01"),
        Utc::now() + Duration::days(30),
        &workdir(),
    )
    .await
    .map(|r| assert_eq!(r.cdrs_inserted, 0))
    .unwrap();
    assert_eq!(cdr_months(pool).await, before);
    // Restored months are held for the dispute: the next run leaves them.
    let again = archive(&PgArchive::new(pool.clone()), &objects, &bucket)
        .await
        .unwrap();
    assert!(again.written.is_empty());
    assert_eq!(again.held, 2);
    assert_eq!(cdr_months(pool).await, before);
}

/// Where the test's archive dies.
#[derive(Clone, Copy, PartialEq)]
enum Kill {
    /// Its files are written and recorded; the removal never starts.
    BeforeRemoval,
    /// The first removal committed; nothing after it runs.
    AfterRemoval,
}

/// The real store, with a process that dies at `kill`: the archive's task
/// stops there, mid-await, as a killed Lambda would, and is aborted.
struct Dying {
    store: PgArchive,
    kill: Kill,
    reached: Arc<Notify>,
}

impl Dying {
    async fn die(&self) -> ! {
        self.reached.notify_one();
        std::future::pending::<()>().await;
        unreachable!("the test aborts the task")
    }
}

#[async_trait]
impl ArchiveStore for Dying {
    async fn retention(&self, default_months: u16) -> Result<RetentionPolicy, StoreError> {
        self.store.retention(default_months).await
    }
    async fn months_with_rows(&self, before: NaiveDate) -> Result<Vec<MonthRows>, StoreError> {
        self.store.months_with_rows(before).await
    }
    async fn state(
        &self,
        customer: Option<i64>,
        month: NaiveDate,
    ) -> Result<Option<ArchiveState>, StoreError> {
        self.store.state(customer, month).await
    }
    async fn blockers(
        &self,
        customer: Option<i64>,
        month: NaiveDate,
    ) -> Result<Vec<Blocker>, StoreError> {
        self.store.blockers(customer, month).await
    }
    async fn cycles(
        &self,
        customer: Option<i64>,
        month: NaiveDate,
    ) -> Result<Vec<NaiveDate>, StoreError> {
        self.store.cycles(customer, month).await
    }
    async fn read_month(
        &self,
        customer: Option<i64>,
        month: NaiveDate,
        sink: &mut dyn MonthRowsSink,
    ) -> Result<(), MaintenanceError> {
        self.store.read_month(customer, month, sink).await
    }
    async fn record_written(
        &self,
        bucket: &str,
        manifest_key: &str,
        manifest: &Manifest,
    ) -> Result<(), StoreError> {
        self.store
            .record_written(bucket, manifest_key, manifest)
            .await
    }
    async fn remove(&self, month: NaiveDate) -> Result<Removal, StoreError> {
        match self.kill {
            Kill::BeforeRemoval => self.die().await,
            Kill::AfterRemoval => {
                self.store.remove(month).await?;
                self.die().await
            }
        }
    }
}

async fn killed_then_rerun(kill: Kill) {
    let db = fresh().await;
    let pool = &db.pool;
    let Seeded { acme, .. } = seed(pool).await;
    let before = cdr_months(pool).await;
    let pricings_before = pricing_cycles(pool).await;
    let (s3, bucket) = own_bucket("tem-archive").await;
    let reached = Arc::new(Notify::new());
    let dying = Dying {
        store: PgArchive::new(pool.clone()),
        kill,
        reached: reached.clone(),
    };
    let task = {
        let (s3, bucket) = (s3.clone(), bucket.clone());
        tokio::spawn(async move {
            let objects = objects(&s3);
            archive(&dying, &objects, &bucket).await
        })
    };
    reached.notified().await;
    task.abort();
    assert!(task.await.unwrap_err().is_cancelled());

    // Killed after January's files: January is written (kill before the
    // removal, its rows all here) or removed (kill after it); February is
    // untouched either way.
    let january = state(pool, acme, "2024-01-01").await;
    match kill {
        Kill::BeforeRemoval => {
            assert_eq!(january.as_deref(), Some("written"));
            assert_eq!(cdr_months(pool).await, before);
        }
        Kill::AfterRemoval => {
            assert_eq!(january.as_deref(), Some("removed"));
            assert!(!cdr_months(pool)
                .await
                .contains_key(&(acme, day("2024-01-01"))));
        }
    }
    assert_eq!(state(pool, acme, "2024-02-01").await, None);

    // The rerun finishes: both months removed, January not written twice
    // when its files were already recorded.
    let objects = objects(&s3);
    let rerun = archive(&PgArchive::new(pool.clone()), &objects, &bucket)
        .await
        .unwrap();
    let months: Vec<NaiveDate> = rerun.written.iter().map(|w| w.month).collect();
    assert_eq!(months, vec![day("2024-02-01")]);
    assert_eq!(
        state(pool, acme, "2024-01-01").await.as_deref(),
        Some("removed")
    );
    assert_eq!(
        state(pool, acme, "2024-02-01").await.as_deref(),
        Some("removed")
    );
    let after = cdr_months(pool).await;
    assert!(!after.contains_key(&(acme, day("2024-01-01"))));
    assert!(!after.contains_key(&(acme, day("2024-02-01"))));
    let january = manifest(&s3, &bucket, acme, "2024-01-01").await;
    assert_eq!(january.cdrs.rows, 40);

    // Nothing lost, nothing doubled: restored, every row is back once.
    restore(pool, &objects, acme, "2024-01-01").await;
    restore(pool, &objects, acme, "2024-02-01").await;
    assert_eq!(cdr_months(pool).await, before);
    assert_eq!(pricing_cycles(pool).await, pricings_before);
}

#[tokio::test]
async fn an_archive_killed_after_its_files_and_before_the_drop_finishes_on_a_rerun_with_nothing_lost_or_doubled(
) {
    killed_then_rerun(Kill::BeforeRemoval).await;
}

#[tokio::test]
async fn an_archive_killed_after_the_drop_finishes_on_a_rerun_with_nothing_lost_or_doubled() {
    killed_then_rerun(Kill::AfterRemoval).await;
}

#[tokio::test]
async fn a_month_whose_cycle_has_a_draft_invoice_is_not_archived() {
    let db = fresh().await;
    let pool = &db.pool;
    let acme = insert_business_customer(pool).await;
    insert_billing_details(pool, acme).await;
    let mut ids = cdrs_in(pool, acme, "2024-01", 12).await;
    ids.extend(cdrs_in(pool, acme, "2024-02", 6).await);
    mark_imported(pool, &ids).await;
    ensure_partitions(&PgPartitions::new(pool.clone()), today())
        .await
        .unwrap();
    final_invoice(pool, acme, "2024-01-01").await;
    // February's invoice is written inside its grace period: a draft.
    calculate_totals(pool, acme, day("2024-02-01"))
        .await
        .unwrap();
    let in_grace: DateTime<Utc> = "2024-03-02T10:00:00Z".parse().unwrap();
    let outcome = generate_invoice(pool, acme, day("2024-02-01"), in_grace, Duration::days(5))
        .await
        .unwrap();
    assert!(
        matches!(outcome, InvoiceOutcome::DraftWritten { .. }),
        "{outcome:?}"
    );
    let before = cdr_months(pool).await;
    let (s3, bucket) = own_bucket("tem-archive").await;
    let objects = objects(&s3);

    let report = archive(&PgArchive::new(pool.clone()), &objects, &bucket)
        .await
        .unwrap();
    // January overlaps February's cycle too (its first day in Amsterdam is
    // January's last evening in UTC): both months stay.
    assert!(report.written.is_empty(), "{:?}", report.written);
    let kept: Vec<NaiveDate> = report.kept.iter().map(|k| k.month).collect();
    assert_eq!(kept, vec![day("2024-01-01"), day("2024-02-01")]);
    assert!(
        report.kept[1].reasons[0].contains("cycle 2024-02-01 has draft invoice"),
        "{:?}",
        report.kept
    );
    assert_eq!(cdr_months(pool).await, before);
    assert_eq!(state(pool, acme, "2024-02-01").await, None);
    let listed = s3
        .list_objects_v2()
        .bucket(&bucket)
        .send()
        .await
        .unwrap()
        .key_count()
        .unwrap_or(0);
    assert_eq!(listed, 0, "nothing of a kept month is written");
}
