//! A burst of exports put into the bucket at once, on the smallest
//! connection budget: every export is imported exactly once, and PostgreSQL
//! never sees more connections from the stack than the budget.
//!
//! The size is `TEM_BURST_EXPORTS` (default 1,000, the burst; its
//! imports took 75 s here on 2 busy cores, so CI runs the full size). Only
//! cdr-import touches the database here: on the 30 tier that is 2 concurrent
//! batches with a pool of 2 each, so about 4 connections are expected.

use std::io::Write;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, PgPool};
use tem_tests::db::server_url;
use tem_tests::stack::deploy_with;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

/// The smallest `DatabaseMaxConnections` tier: what the stack may hold at once.
const BUDGET: i64 = 30;
const ROWS_PER_EXPORT: i64 = 3;
const PUTS_AT_ONCE: usize = 50;
const IMPORT_TIMEOUT: Duration = Duration::from_secs(600);
const SAMPLE_EVERY: Duration = Duration::from_millis(150);
/// The test's own connections carry this name, so the sampler leaves them out.
const OBSERVER: &str = "tem-burst-observer";
const HEADER: &str =
    "Datum;Tijd;Abonnee;Bestemming;Type;Richting;Duur;Volume;Kosten;Zone;Referentie";

fn exports() -> usize {
    std::env::var("TEM_BURST_EXPORTS")
        .ok()
        .map(|v| v.parse().expect("TEM_BURST_EXPORTS is a number of exports"))
        .unwrap_or(1000)
}

/// A Routit export of a few SMS of numbers without a subscription (so no
/// totals are chained), with external ids unique to export `n`.
fn export(n: usize) -> Vec<u8> {
    let mut csv = format!("{HEADER}\r\n");
    for row in 0..ROWS_PER_EXPORT {
        csv.push_str(&format!(
            "14-01-2025;10:{:02}:00;06{:08};;SMS;Uitgaand;;;0,10;NL;BURST-{n}-{row}\r\n",
            row,
            90_000_000 + n
        ));
    }
    let mut cursor = std::io::Cursor::new(Vec::new());
    let mut writer = zip::ZipWriter::new(&mut cursor);
    writer
        .start_file("cdr.csv", zip::write::SimpleFileOptions::default())
        .unwrap();
    writer.write_all(csv.as_bytes()).unwrap();
    writer.finish().unwrap();
    cursor.into_inner()
}

fn key(n: usize) -> String {
    format!("inbox/routit/1/2025-01-14/burst {n:05}.zip")
}

/// Counts, until `stop`, the connections to `database` that are not the
/// test's own, through a connection to another database (`postgres`), and
/// keeps the largest count.
fn sample_connections(
    database: String,
    stop: Arc<AtomicBool>,
    max: Arc<AtomicI64>,
) -> tokio::task::JoinHandle<usize> {
    tokio::spawn(async move {
        let mut sampler = PgConnectOptions::from_str(&server_url())
            .unwrap()
            .database("postgres")
            .application_name(OBSERVER)
            .connect()
            .await
            .expect("the sampler connects to the postgres database");
        let mut samples = 0;
        while !stop.load(Ordering::Relaxed) {
            let count: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND application_name <> $2",
            )
            .bind(&database)
            .bind(OBSERVER)
            .fetch_one(&mut sampler)
            .await
            .expect("sample pg_stat_activity");
            max.fetch_max(count, Ordering::Relaxed);
            samples += 1;
            tokio::time::sleep(SAMPLE_EVERY).await;
        }
        samples
    })
}

/// (finished, all) import_file rows.
async fn progress(observer: &PgPool) -> (i64, i64) {
    sqlx::query_as("SELECT count(*) FILTER (WHERE status <> 'running'), count(*) FROM import_file")
        .fetch_one(observer)
        .await
        .expect("read import progress")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_burst_of_exports_on_the_smallest_budget_is_imported_once_each_within_the_connection_budget(
) {
    let total = exports();
    let stack = deploy_with(&[("DatabaseMaxConnections", BUDGET.to_string())]).await;
    // The test's own pool would count against the stack's budget: close it
    // and look through connections the sampler leaves out.
    stack.db.pool.close().await;
    let observer = PgPoolOptions::new()
        .max_connections(1)
        .connect_with(
            PgConnectOptions::from_str(&stack.db.url)
                .unwrap()
                .application_name(OBSERVER),
        )
        .await
        .expect("the observer connects to the test database");

    let stop = Arc::new(AtomicBool::new(false));
    let max_seen = Arc::new(AtomicI64::new(0));
    let sampler = sample_connections(stack.db.name.clone(), stop.clone(), max_seen.clone());

    let started = Instant::now();
    let bucket = stack.deployment.output("CdrBucketName").to_string();
    let at_once = Arc::new(Semaphore::new(PUTS_AT_ONCE));
    let mut puts = JoinSet::new();
    for n in 0..total {
        let s3 = stack.deployment.clients.s3.clone();
        let bucket = bucket.clone();
        let at_once = at_once.clone();
        puts.spawn(async move {
            let _slot = at_once.acquire_owned().await.unwrap();
            s3.put_object()
                .bucket(bucket)
                .key(key(n))
                .body(export(n).into())
                .send()
                .await
                .map_err(|e| {
                    format!(
                        "put {}: {}",
                        key(n),
                        aws_sdk_s3::error::DisplayErrorContext(e)
                    )
                })
        });
    }
    while let Some(put) = puts.join_next().await {
        put.unwrap().unwrap();
    }
    let put_time = started.elapsed();
    println!("burst: {total} exports put in {put_time:?}");

    let mut last_log = Instant::now();
    loop {
        let (finished, all) = progress(&observer).await;
        if finished >= total as i64 && finished == all {
            break;
        }
        if last_log.elapsed() > Duration::from_secs(10) {
            println!(
                "burst: {finished}/{total} imports finished ({all} rows) after {:?}, max connections so far {}",
                started.elapsed(),
                max_seen.load(Ordering::Relaxed)
            );
            last_log = Instant::now();
        }
        assert!(
            started.elapsed() < IMPORT_TIMEOUT,
            "only {finished} of {total} imports finished after {IMPORT_TIMEOUT:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let import_time = started.elapsed();
    // A late redelivery would add a row or a connection after the last
    // import: give it a moment to show.
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    let samples = sampler.await.unwrap();
    let max = max_seen.load(Ordering::Relaxed);
    println!(
        "burst: {total} exports imported in {import_time:?} (puts {put_time:?}); \
         max connections {max} of budget {BUDGET} over {samples} samples"
    );

    let (files, keys, completed, loaded, duplicate, rejected): (i64, i64, i64, i64, i64, i64) =
        sqlx::query_as(
            "SELECT count(*), count(DISTINCT key), count(*) FILTER (WHERE status = 'completed'),
                    sum(rows_loaded)::bigint, sum(rows_duplicate)::bigint, sum(rows_rejected)::bigint
             FROM import_file",
        )
        .fetch_one(&observer)
        .await
        .unwrap();
    let expected_rows = total as i64 * ROWS_PER_EXPORT;
    assert_eq!(
        (files, keys, completed),
        (total as i64, total as i64, total as i64),
        "one completed import_file row per export"
    );
    assert_eq!(
        (loaded, duplicate, rejected),
        (expected_rows, 0, 0),
        "every row loaded once"
    );
    let (cdrs, external_ids, files_with_rows): (i64, i64, i64) = sqlx::query_as(
        "SELECT count(*), count(DISTINCT external_id), count(DISTINCT import_file_id)
         FROM call_detail_record WHERE external_id LIKE 'BURST-%'",
    )
    .fetch_one(&observer)
    .await
    .unwrap();
    assert_eq!(
        (cdrs, external_ids, files_with_rows),
        (expected_rows, expected_rows, total as i64)
    );
    let expected_keys: Vec<String> = (0..total).map(key).collect();
    let mut imported: Vec<String> = sqlx::query_scalar("SELECT key FROM import_file")
        .fetch_all(&observer)
        .await
        .unwrap();
    imported.sort();
    assert_eq!(imported, expected_keys, "each key imported once");

    assert!(max > 0, "the sampler saw the stack's connections");
    assert!(
        max <= BUDGET,
        "the stack held {max} connections, over its budget of {BUDGET}"
    );
    let dead = stack.deployment.drain("ImportDlqUrl").await.unwrap();
    assert!(dead.is_empty(), "dead letters: {dead:?}");

    observer.close().await;
    stack.finish().await.unwrap();
}
