//! Bad input never panics, never half-loads, and always says why; a run
//! killed or cut off in the middle and then retried loads exactly once.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use sqlx::PgPool;
use tem_shared::import::importer::{ImportError, ImportRequest, ImportSummary, Importer};
use tem_shared::import::source::{MemorySource, RangeRead, SourceError};
use tem_shared::import::zip::ZipLimits;
use tem_shared::import::LocalRejects;
use tem_shared::routing::Provider;
use tem_tests::db::fresh;

const HEADER: &str =
    "Datum;Tijd;Abonnee;Bestemming;Type;Richting;Duur;Volume;Kosten;Zone;Referentie";

fn rows(prefix: &str, n: usize) -> String {
    let mut text = format!("{HEADER}\r\n");
    for i in 0..n {
        text.push_str(&format!(
            "15-01-2025;10:{:02}:{:02};0612345678;;SMS;Uitgaand;;;0,10;NL;{prefix}{i}\r\n",
            (i / 60) % 60,
            i % 60
        ));
    }
    text
}

fn zip(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut cursor = std::io::Cursor::new(Vec::new());
    let mut writer = zip::ZipWriter::new(&mut cursor);
    for (name, data) in entries {
        if name.ends_with('/') {
            writer
                .add_directory(*name, zip::write::SimpleFileOptions::default())
                .unwrap();
            continue;
        }
        writer
            .start_file(
                *name,
                zip::write::SimpleFileOptions::default()
                    .compression_method(zip::CompressionMethod::Deflated),
            )
            .unwrap();
        writer.write_all(data).unwrap();
    }
    writer.finish().unwrap();
    cursor.into_inner()
}

/// Sets the "encrypted" flag of the first entry in both its headers.
fn mark_first_entry_encrypted(mut bytes: Vec<u8>) -> Vec<u8> {
    bytes[6] |= 1;
    let central = bytes.windows(4).position(|w| w == b"PK\x01\x02").unwrap();
    bytes[central + 8] |= 1;
    bytes
}

struct Fixture {
    pool: PgPool,
    importer: Importer,
    _rejects: std::path::PathBuf,
}

async fn fixture_with(limits: ZipLimits) -> Fixture {
    let db = fresh().await;
    let dir = std::env::temp_dir().join(format!("tem-corpus-{}", uuid::Uuid::new_v4().simple()));
    Fixture {
        importer: Importer::new(db.pool.clone(), Arc::new(LocalRejects::new(&dir)), limits),
        pool: db.pool,
        _rejects: dir,
    }
}

async fn fixture() -> Fixture {
    fixture_with(ZipLimits::default()).await
}

impl Fixture {
    async fn import_source(
        &self,
        source: Arc<dyn RangeRead>,
        key: &str,
    ) -> Result<ImportSummary, ImportError> {
        let request = ImportRequest {
            bucket: "test".into(),
            key: key.into(),
            provider: Provider::Routit,
            profile_id: None,
            deadline: None,
        };
        self.importer.import(source, &request).await
    }

    async fn import(&self, key: &str, bytes: Vec<u8>) -> Result<ImportSummary, ImportError> {
        self.import_source(Arc::new(MemorySource::named(key, bytes)), key)
            .await
    }

    async fn count(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM call_detail_record")
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }

    async fn last_file(&self) -> (String, Option<String>) {
        sqlx::query_as("SELECT status, error FROM import_file ORDER BY id DESC LIMIT 1")
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }
}

/// The import fails permanently, says `expected`, loads nothing and records why.
async fn refused(f: &Fixture, key: &str, bytes: Vec<u8>, expected: &str) {
    let before = f.count().await;
    let err = f
        .import(key, bytes)
        .await
        .expect_err("the import is refused");
    assert!(!err.is_retryable(), "{err}");
    assert!(err.to_string().contains(expected), "{key}: {err}");
    assert_eq!(f.count().await, before, "{key}: nothing loaded");
    let (status, error) = f.last_file().await;
    assert_eq!(status, "failed");
    assert!(error.unwrap().contains(expected));
}

#[tokio::test]
async fn a_file_that_is_not_a_zip_is_refused() {
    refused(
        &fixture().await,
        "inbox/x.zip",
        b"this is no archive at all, just text".to_vec(),
        "not a ZIP file",
    )
    .await;
}

#[tokio::test]
async fn a_truncated_zip_is_refused() {
    let good = zip(&[("a.csv", rows("T", 200).as_bytes())]);
    let cut = good[..good.len() - 30].to_vec();
    refused(&fixture().await, "inbox/cut.zip", cut, "truncated").await;
}

#[tokio::test]
async fn an_empty_object_is_refused() {
    let f = fixture().await;
    refused(&f, "inbox/empty.zip", vec![], "empty").await;
    refused(&f, "inbox/empty.csv", vec![], "empty").await;
}

#[tokio::test]
async fn encrypted_and_path_traversal_entries_are_refused_while_the_good_entry_loads() {
    let f = fixture().await;
    let encrypted = mark_first_entry_encrypted(zip(&[("secret.csv", rows("E", 3).as_bytes())]));
    refused(&f, "inbox/enc.zip", encrypted, "encrypted").await;

    let archive = zip(&[
        ("../evil.csv", rows("X", 3).as_bytes()),
        ("/abs.csv", rows("Y", 3).as_bytes()),
        ("docs/", b""),
        ("readme.txt", b"hello"),
        ("good.csv", rows("G", 5).as_bytes()),
    ]);
    let summary = f.import("inbox/mixed.zip", archive).await.unwrap();
    assert_eq!(summary.status.as_str(), "completed_with_errors");
    assert_eq!((summary.loaded, f.count().await), (5, 5));
    let outcome = |name: &str| {
        summary
            .entries
            .iter()
            .find(|e| e.entry == name)
            .unwrap()
            .outcome
            .clone()
    };
    assert!(
        outcome("../evil.csv").starts_with("refused"),
        "{:?}",
        summary.entries
    );
    assert!(outcome("/abs.csv").starts_with("refused"));
    assert!(outcome("docs/").starts_with("skipped"));
    assert!(outcome("readme.txt").starts_with("skipped"));
    assert!(outcome("good.csv").starts_with("loaded 5"));
}

#[tokio::test]
async fn a_zip_bomb_is_stopped_at_the_limit() {
    let f = fixture_with(ZipLimits {
        max_entry_uncompressed: 10 << 20,
        ..ZipLimits::default()
    })
    .await;
    let mut bomb = rows("B", 1).into_bytes();
    bomb.extend(std::iter::repeat_n(b'\n', 50 << 20));
    refused(
        &f,
        "inbox/bomb.zip",
        zip(&[("bomb.csv", &bomb)]),
        "no entry could be imported",
    )
    .await;
}

#[tokio::test]
async fn a_wrong_header_or_delimiter_is_refused_with_the_expected_columns() {
    let f = fixture().await;
    refused(
        &f,
        "inbox/h.csv",
        b"Date;Time;Number\n1;2;3\n".to_vec(),
        "missing",
    )
    .await;
    let commas = rows("C", 2).replace(';', ",");
    refused(
        &f,
        "inbox/d.csv",
        commas.into_bytes(),
        "is the delimiter ';'?",
    )
    .await;
}

#[tokio::test]
async fn latin1_where_utf8_is_declared_rejects_those_rows_only() {
    let f = fixture().await;
    let mut bytes = rows("L", 2).into_bytes();
    bytes.extend_from_slice(
        b"15-01-2025;11:00:00;0612345678;Caf\xe9;SMS;Uitgaand;;;0,10;NL;LATIN\r\n",
    );
    let summary = f.import("inbox/latin.csv", bytes).await.unwrap();
    assert_eq!((summary.loaded, summary.rejected), (2, 1));
}

#[tokio::test]
async fn a_ten_megabyte_line_refuses_its_entry_and_loads_nothing_from_it() {
    let f = fixture().await;
    let mut long = rows("LONG", 3);
    long.push_str(&"x".repeat(10 << 20));
    long.push_str("\r\n");
    refused(
        &f,
        "inbox/long.csv",
        long.clone().into_bytes(),
        "longer than",
    )
    .await;

    // Inside a ZIP, the other entry still loads.
    let archive = zip(&[
        ("long.csv", long.as_bytes()),
        ("fine.csv", rows("F", 4).as_bytes()),
    ]);
    let summary = f.import("inbox/long.zip", archive).await.unwrap();
    assert_eq!(
        (summary.status.as_str(), summary.loaded, f.count().await),
        ("completed_with_errors", 4, 4)
    );
}

/// A source whose loading reads fail (as a dropped connection would) at
/// `fail_after`; the whole-object read of the hash pass still succeeds.
struct CutOff {
    inner: MemorySource,
    fail_after: u64,
    size: u64,
}

#[async_trait]
impl RangeRead for CutOff {
    async fn len(&self) -> Result<u64, SourceError> {
        self.inner.len().await
    }
    async fn read_range(&self, offset: u64, len: u64) -> Result<Bytes, SourceError> {
        if len < self.size && offset < self.fail_after && offset + len > self.fail_after {
            return Err(SourceError::Io {
                what: "cut-off source".into(),
                message: "connection reset".into(),
            });
        }
        self.inner.read_range(offset, len).await
    }
    fn describe(&self) -> String {
        "cut-off source".into()
    }
}

/// A source that takes its time, so a run can be killed in the middle.
struct Slow(MemorySource);

#[async_trait]
impl RangeRead for Slow {
    async fn len(&self) -> Result<u64, SourceError> {
        self.0.len().await
    }
    async fn read_range(&self, offset: u64, len: u64) -> Result<Bytes, SourceError> {
        tokio::time::sleep(Duration::from_millis(20)).await;
        self.0.read_range(offset, len).await
    }
    fn describe(&self) -> String {
        "slow source".into()
    }
}

#[tokio::test]
async fn a_source_cut_off_mid_import_loads_nothing_and_the_retry_loads_everything_once() {
    let f = fixture().await;
    let bytes = zip(&[
        ("a.csv", rows("A", 20_000).as_bytes()),
        ("b.csv", rows("B", 20_000).as_bytes()),
    ]);
    let size = bytes.len() as u64;
    // The hash pass reads everything in one go; cut the second, loading pass.
    let cut = Arc::new(CutOff {
        inner: MemorySource::named("k", bytes.clone()),
        fail_after: size / 2,
        size,
    });
    let err = f
        .import_source(cut, "inbox/k.zip")
        .await
        .expect_err("a cut-off read fails");
    assert!(err.is_retryable(), "{err}");
    assert_eq!(f.count().await, 0);
    assert_eq!(f.last_file().await.0, "failed");

    let summary = f.import("inbox/k.zip", bytes).await.unwrap();
    assert_eq!((summary.loaded, f.count().await), (40_000, 40_000));
}

#[tokio::test]
async fn a_run_killed_in_the_middle_and_retried_ends_in_exactly_the_same_rows() {
    let f = Arc::new(fixture().await);
    let bytes = zip(&[("a.csv", rows("K", 30_000).as_bytes())]);
    let killed = tokio::spawn({
        let f = f.clone();
        let slow = Arc::new(Slow(MemorySource::named("k", bytes.clone())));
        async move { f.import_source(slow, "inbox/kill.zip").await }
    });
    // Let it hash and start loading, then kill it.
    tokio::time::sleep(Duration::from_millis(300)).await;
    killed.abort();
    assert!(killed.await.unwrap_err().is_cancelled());
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        f.count().await,
        0,
        "the killed run's transaction rolled back"
    );
    assert_eq!(
        f.last_file().await.0,
        "running",
        "the run was killed after it started"
    );

    let summary = f.import("inbox/kill.zip", bytes).await.unwrap();
    assert_eq!((summary.loaded, f.count().await), (30_000, 30_000));
}

#[tokio::test]
async fn a_gzipped_csv_imports_and_a_gzip_bomb_is_stopped() {
    let f = fixture_with(ZipLimits {
        max_entry_uncompressed: 1 << 20,
        ..ZipLimits::default()
    })
    .await;
    let gz = |bytes: &[u8]| {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder.write_all(bytes).unwrap();
        encoder.finish().unwrap()
    };
    let summary = f
        .import("inbox/a.csv.gz", gz(rows("GZ", 50).as_bytes()))
        .await
        .unwrap();
    assert_eq!((summary.loaded, f.count().await), (50, 50));

    let mut bomb = rows("BOMB", 1).into_bytes();
    bomb.extend(std::iter::repeat_n(b'\n', 5 << 20));
    refused(&f, "inbox/bomb.csv.gz", gz(&bomb), "exceeds the limit").await;
    assert_eq!(f.count().await, 50);
}

#[tokio::test]
async fn a_zip_after_a_self_extractor_stub_loads_exactly_its_rows() {
    let f = fixture().await;
    let archive = zip(&[
        ("a.csv", rows("SFX-A", 150).as_bytes()),
        ("b.csv", rows("SFX-B", 75).as_bytes()),
    ]);
    // A 4 KiB stub, then one larger than the reader's 64 KiB tail window.
    for (n, prefix_len) in [(0, 4096usize), (1, 300_000)] {
        let mut bytes = b"MZ\x90\x00".to_vec();
        bytes.resize(prefix_len, b's');
        bytes.extend_from_slice(&archive);
        // Different stubs, so the second is not "already imported".
        bytes[4] = n;
        let summary = f
            .import(&format!("inbox/routit/1/d/sfx-{n}.zip"), bytes)
            .await
            .unwrap_or_else(|e| panic!("prefix {prefix_len}: {e}"));
        assert_eq!(summary.status.as_str(), "completed", "{summary:?}");
        assert_eq!(summary.read, 225, "{summary:?}");
        let expected_new = if n == 0 { 225 } else { 0 };
        assert_eq!(summary.loaded, expected_new, "{summary:?}");
    }
    assert_eq!(f.count().await, 225);
    let distinct: i64 = sqlx::query_scalar(
        "SELECT count(DISTINCT external_id) FROM call_detail_record WHERE external_id LIKE 'SFX-%'",
    )
    .fetch_one(&f.pool)
    .await
    .unwrap();
    assert_eq!(distinct, 225);
}

#[tokio::test]
async fn an_unterminated_quote_in_one_entry_stops_that_entry_while_the_next_entry_loads() {
    let f = fixture().await;
    let mut bad = rows("OPEN", 3);
    bad.push_str("\"15-01-2025;11:00:00;0612345678;;SMS;Uitgaand;;;0,10;NL;OPEN-X\r\n");
    bad.push_str(&rows("LOST", 40_000));
    let archive = zip(&[
        ("a.csv", bad.as_bytes()),
        ("b.csv", rows("NEXT", 20).as_bytes()),
    ]);
    let summary = f
        .import("inbox/routit/1/d/open-quote.zip", archive)
        .await
        .unwrap();
    assert_eq!(
        summary.status.as_str(),
        "completed_with_errors",
        "{summary:?}"
    );
    assert_eq!((summary.loaded, summary.rejected), (23, 1), "{summary:?}");
    let a = &summary.entries[0];
    assert_eq!(a.entry, "a.csv");
    assert!(
        a.outcome.starts_with(
            "stopped at line 5: unterminated quote starting at line 5: record exceeds 1 MiB"
        ),
        "{}",
        a.outcome
    );
    assert!(
        a.outcome.contains("loaded 3 of the 3 rows before it"),
        "{}",
        a.outcome
    );
    assert_eq!(summary.entries[1].outcome, "loaded 20 of 20 rows");
    let lost: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM call_detail_record WHERE external_id LIKE 'LOST%' OR external_id LIKE 'OPEN-X%'",
    )
    .fetch_one(&f.pool)
    .await
    .unwrap();
    assert_eq!(lost, 0);
}
