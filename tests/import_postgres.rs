//! The CDR import against a real PostgreSQL: both fixed formats field by
//! field, rejected rows, unknown subscriptions, and exactly-once loading.

use std::sync::Arc;

use sqlx::{PgPool, Row};
use tem_shared::adapters::maintenance::PgPartitions;
use tem_shared::import::importer::{ImportRequest, ImportSummary, Importer};
use tem_shared::import::source::{MemorySource, RangeRead};
use tem_shared::import::zip::ZipLimits;
use tem_shared::import::LocalRejects;
use tem_shared::maintenance::partitions::{ensure_partitions, PartitionedTable};
use tem_shared::routing::Provider;
use tem_tests::db::fresh;

const ROUTIT_HEADER: &str =
    "Datum;Tijd;Abonnee;Bestemming;Type;Richting;Duur;Volume;Kosten;Zone;Referentie";
const TMOBILE_HEADER: &str = "record_id,msisdn,start_time,event_type,direction,called_number,duration_seconds,data_bytes,units,charge_cents,roaming_zone";

struct Fixture {
    pool: PgPool,
    importer: Importer,
    rejects: tempdir::Dir,
}

mod tempdir {
    pub struct Dir(pub std::path::PathBuf);
    impl Dir {
        pub fn new() -> Self {
            let path =
                std::env::temp_dir().join(format!("tem-test-{}", uuid::Uuid::new_v4().simple()));
            std::fs::create_dir_all(&path).unwrap();
            Dir(path)
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

async fn fixture() -> Fixture {
    let db = fresh().await;
    let rejects = tempdir::Dir::new();
    let importer = Importer::new(
        db.pool.clone(),
        Arc::new(LocalRejects::new(&rejects.0)),
        ZipLimits::default(),
    );
    // One customer (cycle from the 15th) with one known number.
    let customer: i64 = sqlx::query_scalar(
        "INSERT INTO customer (name, billing_cycle_start_day, time_zone) VALUES ('Acme', 15, 'Europe/Amsterdam') RETURNING id",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    for provider in ["routit", "t_mobile"] {
        sqlx::query("INSERT INTO subscription (customer_id, provider, identifier) VALUES ($1, $2, '+31612345678')")
            .bind(customer)
            .bind(provider)
            .execute(&db.pool)
            .await
            .unwrap();
    }
    Fixture {
        pool: db.pool,
        importer,
        rejects,
    }
}

impl Fixture {
    async fn import(&self, provider: Provider, key: &str, bytes: Vec<u8>) -> ImportSummary {
        self.try_import(provider, key, bytes)
            .await
            .expect("import succeeds")
    }

    async fn try_import(
        &self,
        provider: Provider,
        key: &str,
        bytes: Vec<u8>,
    ) -> Result<ImportSummary, tem_shared::import::importer::ImportError> {
        import_on(&self.importer, provider, key, bytes).await
    }

    async fn count(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM call_detail_record")
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }
}

/// Every column of one CDR, as text, for field-by-field comparison.
async fn cdr(pool: &PgPool, external_id: &str) -> Vec<String> {
    let row = sqlx::query(
        "SELECT provider, subscription, customer_id::text AS customer, to_char(started_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS') AS started,
                kind, direction, destination, roaming_zone, duration_seconds, volume_bytes, units, provider_cost_micros, source_line
         FROM call_detail_record WHERE external_id = $1",
    )
    .bind(external_id)
    .fetch_one(pool)
    .await
    .unwrap_or_else(|e| panic!("CDR {external_id}: {e}"));
    vec![
        row.get::<String, _>("provider"),
        row.get::<String, _>("subscription"),
        row.get::<Option<String>, _>("customer")
            .unwrap_or_else(|| "-".into()),
        row.get::<String, _>("started"),
        row.get::<String, _>("kind"),
        row.get::<String, _>("direction"),
        row.get::<String, _>("destination"),
        row.get::<String, _>("roaming_zone"),
        row.get::<i32, _>("duration_seconds").to_string(),
        row.get::<i64, _>("volume_bytes").to_string(),
        row.get::<i32, _>("units").to_string(),
        row.get::<i64, _>("provider_cost_micros").to_string(),
        row.get::<i32, _>("source_line").to_string(),
    ]
}

fn routit_file() -> Vec<u8> {
    // BOM, CRLF, every number form, decimal commas, both DST changes.
    let rows = [
        "30-03-2025;01:59:59;0612345678;0201234567;Spraak;Uitgaand;00:01:01;;0,0125;NL;R-DST-1",
        "30-03-2025;03:00:00;+31612345678;;SMS;Uitgaand;;;0,10;EU;R-DST-2",
        "26-10-2025;02:30:00;0031612345678;;Data;Inkomend;;1,5;1,234567;WERELD;R-DST-3",
        "15-01-2025;00:30:00;0687654321;1244;Dienst;Uitgaand;;;2;NL;R-UNKNOWN",
        "30-03-2025;02:30:00;0612345678;;SMS;Uitgaand;;;0,10;NL;R-GAP",
        "15-01-2025;10:00:00;0612345678;;MMS;Uitgaand;;;0,25;NL",
    ];
    format!("\u{feff}{ROUTIT_HEADER}\r\n{}\r\n", rows.join("\r\n")).into_bytes()
}

#[tokio::test]
async fn a_routit_file_loads_field_by_field_with_utc_times_and_e164_numbers() {
    let f = fixture().await;
    let summary = f
        .import(
            Provider::Routit,
            "inbox/routit/1/2025-03-30/a.csv",
            routit_file(),
        )
        .await;
    assert_eq!(
        (summary.read, summary.loaded, summary.rejected),
        (6, 4, 2),
        "{summary:?}"
    );
    assert_eq!(summary.without_customer, 1);
    let acme = sqlx::query_scalar::<_, i64>("SELECT id FROM customer")
        .fetch_one(&f.pool)
        .await
        .unwrap()
        .to_string();
    // Winter time: 01:59:59 local is 00:59:59 UTC; 03:00 after the jump is 01:00 UTC.
    assert_eq!(
        cdr(&f.pool, "R-DST-1").await,
        [
            "routit",
            "+31612345678",
            &acme,
            "2025-03-30 00:59:59",
            "voice",
            "outgoing",
            "+31201234567",
            "home",
            "61",
            "0",
            "0",
            "12500",
            "2"
        ]
    );
    assert_eq!(
        cdr(&f.pool, "R-DST-2").await,
        [
            "routit",
            "+31612345678",
            &acme,
            "2025-03-30 01:00:00",
            "sms",
            "outgoing",
            "",
            "eu",
            "0",
            "0",
            "1",
            "100000",
            "3"
        ]
    );
    // 02:30 on 26 October happens twice; the first (summer time, UTC+2) is taken.
    // 1,5 KB = 1536 bytes; EUR 1,234567 = 1234567 micro-euros.
    assert_eq!(
        cdr(&f.pool, "R-DST-3").await,
        [
            "routit",
            "+31612345678",
            &acme,
            "2025-10-26 00:30:00",
            "data",
            "incoming",
            "",
            "world",
            "0",
            "1536",
            "0",
            "1234567",
            "4"
        ]
    );
    // An unknown subscription is kept, without a customer.
    assert_eq!(
        cdr(&f.pool, "R-UNKNOWN").await,
        [
            "routit",
            "+31687654321",
            "-",
            "2025-01-14 23:30:00",
            "service",
            "outgoing",
            "1244",
            "home",
            "0",
            "0",
            "0",
            "2000000",
            "5"
        ]
    );
    // The rejected rows are in the rejected CSV with their lines and reasons.
    let rejected = std::fs::read_to_string(
        f.rejects
            .0
            .join("rejected/inbox/routit/1/2025-03-30/a.csv.csv"),
    )
    .unwrap();
    assert!(
        rejected.contains(",6,") && rejected.contains("does not exist"),
        "{rejected}"
    );
    assert!(
        rejected.contains(",7,") && rejected.contains("expected 11 fields, found 10"),
        "{rejected}"
    );
    assert_eq!(
        summary.rejected_key.as_deref(),
        Some("rejected/inbox/routit/1/2025-03-30/a.csv.csv")
    );
    // The touched customer cycles: 30 March and 26 October fall in cycles from the 15th.
    let cycles: Vec<String> = summary.touched.iter().map(|(_, c)| c.to_string()).collect();
    assert_eq!(cycles, vec!["2025-03-15", "2025-10-15"]);
}

#[tokio::test]
async fn a_t_mobile_file_loads_quoted_fields_and_rejects_bad_rows_with_their_lines() {
    let f = fixture().await;
    let text = format!(
        "{TMOBILE_HEADER}\n\
         \"TM-1\",+31612345678,2025-01-20T10:00:00+01:00,VOICE,MO,\"+31 20,123\",90,0,1,1.25,HOME\n\
         TM-2,+31612345678,2025-01-20T10:05:00+01:00,DATA,MT,,0,1048576,0,0.5,ROW\n\
         TM-3,+31612345678,2025-01-20,VOICE,MO,,10,0,1,1,HOME\n\
         TM-4,+31612345678,2025-01-20T10:05:00+01:00,VOICE,MO,,-3,0,1,1,HOME\n\
         TM-5,+31612345678,2025-01-20T10:05:00+01:00,FAX,MO,,3,0,1,1,HOME\n\
         TM-6,+31612345678,2025-01-20T10:05:00+01:00,SMS,MO,,0,0,1,abc,HOME\n\
         TM-7,+31612345678,2025-01-20T10:05:00+01:00,SMS,MO,,0,0,1\n"
    );
    let summary = f
        .import(
            Provider::TMobile,
            "inbox/t_mobile/1/2025-01-20/x.csv",
            text.into_bytes(),
        )
        .await;
    assert_eq!(
        (summary.read, summary.loaded, summary.rejected),
        (7, 2, 5),
        "{summary:?}"
    );
    let acme = sqlx::query_scalar::<_, i64>("SELECT id FROM customer")
        .fetch_one(&f.pool)
        .await
        .unwrap()
        .to_string();
    assert_eq!(
        cdr(&f.pool, "TM-1").await,
        [
            "t_mobile",
            "+31612345678",
            &acme,
            "2025-01-20 09:00:00",
            "voice",
            "outgoing",
            "+31 20,123",
            "home",
            "90",
            "0",
            "1",
            "12500",
            "2"
        ]
    );
    assert_eq!(
        cdr(&f.pool, "TM-2").await,
        [
            "t_mobile",
            "+31612345678",
            &acme,
            "2025-01-20 09:05:00",
            "data",
            "incoming",
            "",
            "world",
            "0",
            "1048576",
            "0",
            "5000",
            "3"
        ]
    );
    let rejected = std::fs::read_to_string(
        f.rejects
            .0
            .join("rejected/inbox/t_mobile/1/2025-01-20/x.csv.csv"),
    )
    .unwrap();
    for (line, reason) in [
        (4, "ISO 8601"),
        (5, "negative"),
        (6, "unknown type"),
        (7, "cost"),
        (8, "expected 11 fields"),
    ] {
        assert!(
            rejected
                .lines()
                .any(|l| l.starts_with(&format!(",{line},")) && l.contains(reason)),
            "line {line} ({reason}) in\n{rejected}"
        );
    }
}

/// A value that parses but that its column cannot hold (units over
/// `integer`, bytes over `bigint`, a NUL in text) is rejected with its line
/// like any bad row, instead of failing the whole file's COPY.
#[tokio::test]
async fn values_beyond_the_columns_are_rejected_with_their_lines_while_the_others_load() {
    let f = fixture().await;
    let text = format!(
        "{TMOBILE_HEADER}\n\
         TM-1,+31612345678,2025-01-20T10:00:00+01:00,VOICE,MO,,90,0,1,1.25,HOME\n\
         TM-2,+31612345678,2025-01-20T10:05:00+01:00,SMS,MO,,0,0,3000000000,0.5,HOME\n\
         TM-3,+31612345678,2025-01-20T10:06:00+01:00,DATA,MO,,0,9999999999999999999,0,0.5,HOME\n\
         TM-4,+31612345678,2025-01-20T10:07:00+01:00,VOICE,MO,+3120\0,10,0,1,1,HOME\n\
         TM-5,+31612345678,2025-01-20T10:08:00+01:00,VOICE,MO,,3,0,1,1,HOME\n"
    );
    let summary = f
        .import(
            Provider::TMobile,
            "inbox/t_mobile/1/2025-01-20/limits.csv",
            text.into_bytes(),
        )
        .await;
    assert_eq!(
        (summary.read, summary.loaded, summary.rejected),
        (5, 2, 3),
        "{summary:?}"
    );
    assert_eq!(
        cdr(&f.pool, "TM-5").await[12],
        "6",
        "TM-5 keeps its source line"
    );
    let rejected = std::fs::read_to_string(
        f.rejects
            .0
            .join("rejected/inbox/t_mobile/1/2025-01-20/limits.csv.csv"),
    )
    .unwrap();
    for (line, reason) in [
        (3, "units 3000000000 is over the limit of 2147483647"),
        (4, "volume 9999999999999999999 bytes is over the limit"),
        (5, "destination contains a NUL character"),
    ] {
        assert!(
            rejected.lines().any(|l| l.starts_with(&format!(",{line},"))
                && l.contains(reason)
                && l.contains(&format!("TM-{}", line - 1))),
            "line {line} ({reason}) with its record in\n{rejected}"
        );
    }
}

#[tokio::test]
async fn the_same_file_twice_loads_once() {
    let f = fixture().await;
    let first = f
        .import(Provider::Routit, "inbox/routit/1/d/a.csv", routit_file())
        .await;
    let second = f
        .import(
            Provider::Routit,
            "inbox/routit/1/d/a-again.csv",
            routit_file(),
        )
        .await;
    assert_eq!(first.loaded, 4);
    assert_eq!(second.status.as_str(), "already_imported");
    assert_eq!(second.loaded, 0);
    assert_eq!(f.count().await, 4);
}

#[tokio::test]
async fn the_same_rows_in_another_file_are_counted_as_duplicates() {
    let f = fixture().await;
    f.import(Provider::Routit, "inbox/routit/1/d/a.csv", routit_file())
        .await;
    let mut other = String::from_utf8(routit_file()).unwrap();
    other.push_str("15-01-2025;11:00:00;0612345678;;SMS;Uitgaand;;;0,10;NL;R-NEW\r\n");
    let summary = f
        .import(
            Provider::Routit,
            "inbox/routit/1/d/b.csv",
            other.into_bytes(),
        )
        .await;
    assert_eq!(
        (summary.loaded, summary.duplicate, summary.rejected),
        (1, 4, 2),
        "{summary:?}"
    );
    assert_eq!(f.count().await, 5);
}

#[tokio::test]
async fn a_row_repeated_inside_one_file_loads_once() {
    let f = fixture().await;
    let row = "15-01-2025;11:00:00;0612345678;;SMS;Uitgaand;;;0,10;NL;R-TWICE";
    let text = format!("{ROUTIT_HEADER}\n{row}\n{row}\n");
    let summary = f.import(Provider::Routit, "k.csv", text.into_bytes()).await;
    assert_eq!((summary.loaded, summary.duplicate), (1, 1));
    assert_eq!(
        cdr(&f.pool, "R-TWICE").await[12],
        "2",
        "the first occurrence is kept"
    );
}

#[tokio::test]
async fn two_concurrent_imports_of_the_same_file_load_it_once() {
    let f = Arc::new(fixture().await);
    let a = tokio::spawn({
        let f = f.clone();
        async move {
            f.import(Provider::Routit, "inbox/a.csv", routit_file())
                .await
        }
    });
    let b = tokio::spawn({
        let f = f.clone();
        async move {
            f.import(Provider::Routit, "inbox/a.csv", routit_file())
                .await
        }
    });
    let (a, b) = (a.await.unwrap(), b.await.unwrap());
    let mut statuses = vec![a.status.as_str(), b.status.as_str()];
    statuses.sort();
    assert_eq!(statuses, ["already_imported", "completed"]);
    assert_eq!(a.loaded + b.loaded, 4);
    assert_eq!(f.count().await, 4);
}

#[tokio::test]
async fn cdrs_of_a_subscription_added_later_are_attached_once_with_their_cycles() {
    let f = fixture().await;
    f.import(Provider::Routit, "inbox/a.csv", routit_file())
        .await;
    let unknown: Option<i64> = sqlx::query_scalar(
        "SELECT customer_id FROM call_detail_record WHERE external_id = 'R-UNKNOWN'",
    )
    .fetch_one(&f.pool)
    .await
    .unwrap();
    assert_eq!(unknown, None);

    // Nothing to attach before the subscription exists.
    let nothing = tem_shared::import::attach::attach_unassigned(&f.pool)
        .await
        .unwrap();
    assert_eq!(nothing.cdrs, 0);

    let late: i64 = sqlx::query_scalar(
        "INSERT INTO customer (name, billing_cycle_start_day) VALUES ('Late', 10) RETURNING id",
    )
    .fetch_one(&f.pool)
    .await
    .unwrap();
    sqlx::query("INSERT INTO subscription (customer_id, provider, identifier, active_from) VALUES ($1, 'routit', '+31687654321', '2025-01-01')")
        .bind(late)
        .execute(&f.pool)
        .await
        .unwrap();
    let attached = tem_shared::import::attach::attach_unassigned(&f.pool)
        .await
        .unwrap();
    assert_eq!(attached.cdrs, 1);
    // 00:30 on 15 January in Amsterdam is in the cycle from 10 January.
    assert_eq!(
        attached.touched,
        vec![(late, "2025-01-10".parse().unwrap())]
    );
    assert_eq!(
        tem_shared::import::attach::attach_unassigned(&f.pool)
            .await
            .unwrap()
            .cdrs,
        0
    );
    let now: Option<i64> = sqlx::query_scalar(
        "SELECT customer_id FROM call_detail_record WHERE external_id = 'R-UNKNOWN'",
    )
    .fetch_one(&f.pool)
    .await
    .unwrap();
    assert_eq!(now, Some(late));
}

#[tokio::test]
async fn duplicates_of_an_earlier_file_count_as_duplicates_and_never_as_without_customer() {
    let f = fixture().await;
    // +31612345678 is Acme's; 0687654321 and 0611111111 belong to nobody.
    let known_a = "15-01-2025;10:00:00;0612345678;;SMS;Uitgaand;;;0,10;NL;K-A";
    let unknown_b = "15-01-2025;10:01:00;0687654321;;SMS;Uitgaand;;;0,10;NL;U-B";
    let unknown_c = "15-01-2025;10:02:00;0687654321;;SMS;Uitgaand;;;0,10;NL;U-C";
    let first = f
        .import(
            Provider::Routit,
            "inbox/routit/1/d/first.csv",
            format!("{ROUTIT_HEADER}\n{known_a}\n{unknown_b}\n{unknown_c}\n").into_bytes(),
        )
        .await;
    assert_eq!(
        (
            first.read,
            first.loaded,
            first.duplicate,
            first.rejected,
            first.without_customer
        ),
        (3, 3, 0, 0, 2),
        "{first:?}"
    );

    // Again A, B and C (duplicates, two of them without customer), one new
    // row without customer, one new row with, and one bad row.
    let new_unknown = "15-01-2025;10:03:00;0611111111;;SMS;Uitgaand;;;0,10;NL;U-D";
    let new_known = "15-01-2025;10:04:00;0612345678;;SMS;Uitgaand;;;0,10;NL;K-E";
    let bad = "15-01-2025;10:05:00;0612345678;;Fax;Uitgaand;;;0,10;NL;K-F";
    let second = f
        .import(
            Provider::Routit,
            "inbox/routit/1/d/second.csv",
            format!(
                "{ROUTIT_HEADER}\n{known_a}\n{unknown_b}\n{new_unknown}\n{unknown_c}\n{new_known}\n{bad}\n"
            )
            .into_bytes(),
        )
        .await;
    assert_eq!(
        (
            second.read,
            second.loaded,
            second.duplicate,
            second.rejected,
            second.without_customer
        ),
        (6, 2, 3, 1, 1),
        "{second:?}"
    );
    assert_eq!(
        second.read,
        second.loaded + second.duplicate + second.rejected
    );
    let stored: (i64, i64, i64, i64, i64) = sqlx::query_as(
        "SELECT rows_read, rows_loaded, rows_duplicate, rows_rejected, rows_without_customer
         FROM import_file WHERE id = $1",
    )
    .bind(second.import_file_id)
    .fetch_one(&f.pool)
    .await
    .unwrap();
    assert_eq!(stored, (6, 2, 3, 1, 1));
    let without: i64 =
        sqlx::query_scalar("SELECT count(*) FROM call_detail_record WHERE customer_id IS NULL")
            .fetch_one(&f.pool)
            .await
            .unwrap();
    assert_eq!(
        without as u64,
        first.without_customer + second.without_customer
    );
}

#[tokio::test]
async fn an_unterminated_quote_rejects_its_row_with_its_line_and_stops_the_file_after_the_good_rows(
) {
    let f = fixture().await;
    let good = |id: &str, minute: u32| {
        format!("{id},+31612345678,2025-01-20T10:{minute:02}:00+01:00,SMS,MO,,0,0,1,1,HOME\n")
    };
    let mut text = format!("{TMOBILE_HEADER}\n");
    for i in 0..5 {
        text.push_str(&good(&format!("Q-{i}"), i));
    }
    // Line 7 opens a quote that never closes, then ~10 MB of rows.
    text.push_str("\"Q-BAD,+31612345678,2025-01-20T10:30:00+01:00,SMS,MO,,0,0,1,1,HOME\n");
    let mut i = 0;
    while text.len() < 10_000_000 {
        text.push_str(&good(&format!("LOST-{i}"), 40));
        i += 1;
    }
    let summary = f
        .import(
            Provider::TMobile,
            "inbox/t_mobile/1/2025-01-20/open-quote.csv",
            text.into_bytes(),
        )
        .await;
    assert_eq!(
        summary.status.as_str(),
        "completed_with_errors",
        "{summary:?}"
    );
    assert_eq!(
        (summary.read, summary.loaded, summary.rejected),
        (6, 5, 1),
        "{summary:?}"
    );
    assert_eq!(f.count().await, 5, "the good rows before it, nothing after");
    assert_eq!(summary.entries.len(), 1, "{summary:?}");
    let outcome = &summary.entries[0].outcome;
    assert!(
        outcome.starts_with(
            "stopped at line 7: unterminated quote starting at line 7: record exceeds 1 MiB"
        ),
        "{outcome}"
    );
    let rejected = std::fs::read_to_string(
        f.rejects
            .0
            .join("rejected/inbox/t_mobile/1/2025-01-20/open-quote.csv.csv"),
    )
    .unwrap();
    // The header, then the one rejected row: its line, the reason, and only
    // the start of the record (256 bytes), not the 10 MB after it.
    assert!(
        rejected.starts_with(
            "entry,line,reason,record\n,7,unterminated quote starting at line 7: record exceeds 1 MiB; the rest of this file is not read,\"\"\"Q-BAD,"
        ),
        "{rejected:.600}"
    );
    assert!(rejected.len() < 600, "{} bytes", rejected.len());
    let (status, rows_loaded, rows_rejected): (String, i64, i64) =
        sqlx::query_as("SELECT status, rows_loaded, rows_rejected FROM import_file WHERE id = $1")
            .bind(summary.import_file_id)
            .fetch_one(&f.pool)
            .await
            .unwrap();
    assert_eq!(
        (status.as_str(), rows_loaded, rows_rejected),
        ("completed_with_errors", 5, 1)
    );
}

/// A `running` row as a dead attempt leaves it; returns its id.
async fn dead_attempt(
    pool: &PgPool,
    key: &str,
    deadline: Option<chrono::DateTime<chrono::Utc>>,
    started_minutes_ago: i64,
) -> i64 {
    sqlx::query_scalar(
        "INSERT INTO import_file (bucket, key, sha256, size_bytes, provider, status, deadline, started_at)
         VALUES ('test', $1, 'x', 1, 'routit', 'running', $2, now() - make_interval(mins => $3::int)) RETURNING id",
    )
    .bind(key)
    .bind(deadline)
    .bind(started_minutes_ago as i32)
    .fetch_one(pool)
    .await
    .unwrap()
}

async fn status_and_error(pool: &PgPool, id: i64) -> (String, Option<String>) {
    let row = sqlx::query("SELECT status, error FROM import_file WHERE id = $1")
        .bind(id)
        .fetch_one(pool)
        .await
        .unwrap();
    (row.get("status"), row.get("error"))
}

#[tokio::test]
async fn a_new_attempt_of_an_object_marks_earlier_attempts_that_died_superseded() {
    let f = fixture().await;
    let key = "inbox/routit/1/d/killed.csv";
    let past = chrono::Utc::now() - chrono::Duration::minutes(5);
    let future = chrono::Utc::now() + chrono::Duration::minutes(5);
    let killed = dead_attempt(&f.pool, key, Some(past), 20).await;
    let undated_old = dead_attempt(&f.pool, key, None, 20).await;
    let undated_recent = dead_attempt(&f.pool, key, None, 2).await;
    let still_running = dead_attempt(&f.pool, key, Some(future), 1).await;
    let other_object = dead_attempt(&f.pool, "inbox/other.csv", Some(past), 20).await;

    let summary = f.import(Provider::Routit, key, routit_file()).await;
    for id in [killed, undated_old] {
        let (status, error) = status_and_error(&f.pool, id).await;
        assert_eq!(status, "superseded");
        assert!(
            error.unwrap().contains(&format!(
                "superseded by import_file {}",
                summary.import_file_id
            )),
            "row {id}"
        );
    }
    for id in [undated_recent, still_running, other_object] {
        assert_eq!(status_and_error(&f.pool, id).await.0, "running", "row {id}");
    }
    let deadline: Option<chrono::DateTime<chrono::Utc>> =
        sqlx::query_scalar("SELECT deadline FROM import_file WHERE id = $1")
            .bind(summary.import_file_id)
            .fetch_one(&f.pool)
            .await
            .unwrap();
    assert_eq!(deadline, None, "the test's import has no deadline");
}

#[tokio::test]
async fn an_import_records_its_deadline() {
    let f = fixture().await;
    let deadline = chrono::DateTime::parse_from_rfc3339("2030-01-01T00:15:00Z")
        .unwrap()
        .with_timezone(&chrono::Utc);
    let request = ImportRequest {
        bucket: "test".into(),
        key: "inbox/dated.csv".into(),
        provider: Provider::Routit,
        profile_id: None,
        deadline: Some(deadline),
    };
    let source: Arc<dyn RangeRead> =
        Arc::new(MemorySource::named("inbox/dated.csv", routit_file()));
    let summary = f.importer.import(source, &request).await.unwrap();
    let stored: Option<chrono::DateTime<chrono::Utc>> =
        sqlx::query_scalar("SELECT deadline FROM import_file WHERE id = $1")
            .bind(summary.import_file_id)
            .fetch_one(&f.pool)
            .await
            .unwrap();
    assert_eq!(stored, Some(deadline));
}

#[tokio::test]
async fn running_imports_past_their_deadline_are_marked_abandoned() {
    let f = fixture().await;
    let now = chrono::Utc::now();
    let dead = dead_attempt(
        &f.pool,
        "a.csv",
        Some(now - chrono::Duration::minutes(1)),
        16,
    )
    .await;
    let alive = dead_attempt(
        &f.pool,
        "b.csv",
        Some(now + chrono::Duration::minutes(1)),
        14,
    )
    .await;
    let undated = dead_attempt(&f.pool, "c.csv", None, 60).await;
    let marked = tem_shared::import::importer::mark_abandoned_imports(&f.pool, now)
        .await
        .unwrap();
    assert_eq!(marked, 1);
    let (status, error) = status_and_error(&f.pool, dead).await;
    assert_eq!(status, "abandoned");
    assert!(error.unwrap().contains("deadline"));
    assert_eq!(status_and_error(&f.pool, alive).await.0, "running");
    assert_eq!(status_and_error(&f.pool, undated).await.0, "running");
    // Running it again finds nothing new.
    assert_eq!(
        tem_shared::import::importer::mark_abandoned_imports(&f.pool, now)
            .await
            .unwrap(),
        0
    );
}

/// Every column's binary COPY encoding read back by PostgreSQL itself:
/// NULL and extreme numbers, times before 2000 and at both ends of what
/// PostgreSQL holds, non-ASCII text and the characters text COPY escapes.
#[tokio::test]
async fn binary_copy_rows_read_back_exactly_as_encoded() {
    use chrono::{DateTime, TimeZone, Utc};
    use tem_shared::cdr::{Direction, Kind, Zone};
    use tem_shared::import::load::{encode, COLUMNS, COPY_HEADER, COPY_TRAILER};
    use tem_shared::import::parse::CdrRow;

    let db = fresh().await;
    let at = |y, mo, d, h, mi, s| Utc.with_ymd_and_hms(y, mo, d, h, mi, s).unwrap();
    let base = CdrRow {
        external_id: String::new(),
        subscription: "+31612345678".into(),
        started_at: at(2025, 3, 30, 1, 59, 59),
        kind: Kind::Voice,
        direction: Direction::Outgoing,
        destination: "+31201234567".into(),
        roaming_zone: Zone::Home,
        duration_seconds: 61,
        volume_bytes: 0,
        units: 0,
        cost_micros: 12_500,
        line: 0,
    };
    let rows: Vec<(CdrRow, Option<i64>, i64)> = vec![
        (base.clone(), Some(1), 1),
        (
            CdrRow {
                external_id: "Ünïcødé €uro 日本 🙂".into(),
                subscription: "línea-Ω".into(),
                destination: "Zürich ☎".into(),
                kind: Kind::Data,
                direction: Direction::Incoming,
                roaming_zone: Zone::World,
                ..base.clone()
            },
            None,
            2,
        ),
        (
            CdrRow {
                external_id: "tab\there\nnewline\rcr\\backslash \\N".into(),
                destination: String::new(),
                kind: Kind::Sms,
                roaming_zone: Zone::Eu,
                ..base.clone()
            },
            Some(0),
            3,
        ),
        (
            CdrRow {
                external_id: "extremes high".into(),
                kind: Kind::Service,
                duration_seconds: i32::MAX as u32,
                volume_bytes: i64::MAX as u64,
                units: i32::MAX as u32,
                cost_micros: i64::MAX,
                line: i32::MAX as u64,
                started_at: at(262_142, 12, 31, 23, 59, 59),
                ..base.clone()
            },
            Some(i64::MAX),
            i64::MAX,
        ),
        (
            CdrRow {
                external_id: "extremes low".into(),
                kind: Kind::Mms,
                duration_seconds: 0,
                cost_micros: i64::MIN,
                started_at: at(-4713, 11, 24, 0, 0, 0),
                ..base.clone()
            },
            Some(i64::MIN),
            i64::MIN,
        ),
        (
            CdrRow {
                external_id: "just before 2000".into(),
                started_at: at(1999, 12, 31, 23, 59, 59) + chrono::Duration::microseconds(999_999),
                cost_micros: -1,
                ..base.clone()
            },
            Some(-1),
            0,
        ),
        (
            CdrRow {
                external_id: "unix epoch".into(),
                started_at: at(1970, 1, 1, 0, 0, 0),
                ..base.clone()
            },
            None,
            -1,
        ),
    ];
    let mut stream = COPY_HEADER.to_vec();
    for (line, (row, customer, file)) in rows.iter().enumerate() {
        let mut row = row.clone();
        row.line = if row.line == 0 {
            line as u64 + 1
        } else {
            row.line
        };
        encode(&mut stream, "routit", &row, *customer, *file).unwrap();
    }
    stream.extend_from_slice(&COPY_TRAILER);

    let mut connection = db.pool.acquire().await.unwrap();
    let mut copy = connection
        .copy_in_raw(&format!(
            "COPY call_detail_record ({COLUMNS}) FROM STDIN (FORMAT binary)"
        ))
        .await
        .unwrap();
    copy.send(stream).await.unwrap();
    assert_eq!(copy.finish().await.unwrap(), rows.len() as u64);

    for (line, (expected, customer, file)) in rows.iter().enumerate() {
        let stored = sqlx::query(
            "SELECT provider, subscription, customer_id, started_at, kind, direction, destination, roaming_zone,
                    duration_seconds, volume_bytes, units, provider_cost_micros, import_file_id, source_line,
                    to_char(started_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US BC') AS shown
             FROM call_detail_record WHERE external_id = $1",
        )
        .bind(&expected.external_id)
        .fetch_one(&db.pool)
        .await
        .unwrap_or_else(|e| panic!("row {:?} is stored: {e}", expected.external_id));
        let what = &expected.external_id;
        let whole_seconds = DateTime::from_timestamp(expected.started_at.timestamp(), 0).unwrap();
        let line = if expected.line == 0 {
            line as i32 + 1
        } else {
            expected.line as i32
        };
        assert_eq!(stored.get::<String, _>("provider"), "routit", "{what}");
        assert_eq!(
            stored.get::<String, _>("subscription"),
            expected.subscription,
            "{what}"
        );
        assert_eq!(
            stored.get::<Option<i64>, _>("customer_id"),
            *customer,
            "{what}"
        );
        assert_eq!(
            stored.get::<DateTime<Utc>, _>("started_at"),
            whole_seconds,
            "{what}"
        );
        assert_eq!(
            stored.get::<String, _>("kind"),
            expected.kind.as_str(),
            "{what}"
        );
        assert_eq!(
            stored.get::<String, _>("direction"),
            expected.direction.as_str(),
            "{what}"
        );
        assert_eq!(
            stored.get::<String, _>("destination"),
            expected.destination,
            "{what}"
        );
        assert_eq!(
            stored.get::<String, _>("roaming_zone"),
            expected.roaming_zone.as_str(),
            "{what}"
        );
        assert_eq!(
            stored.get::<i32, _>("duration_seconds") as u32,
            expected.duration_seconds,
            "{what}"
        );
        assert_eq!(
            stored.get::<i64, _>("volume_bytes") as u64,
            expected.volume_bytes,
            "{what}"
        );
        assert_eq!(
            stored.get::<i32, _>("units") as u32,
            expected.units,
            "{what}"
        );
        assert_eq!(
            stored.get::<i64, _>("provider_cost_micros"),
            expected.cost_micros,
            "{what}"
        );
        assert_eq!(stored.get::<i64, _>("import_file_id"), *file, "{what}");
        assert_eq!(stored.get::<i32, _>("source_line"), line, "{what}");
        // PostgreSQL's own rendering, independent of the client's decoding.
        let shown = stored.get::<String, _>("shown");
        let expected_shown = match expected.external_id.as_str() {
            "extremes high" => "262142-12-31 23:59:59.000000 AD",
            "extremes low" => "4714-11-24 00:00:00.000000 BC",
            "just before 2000" => "1999-12-31 23:59:59.000000 AD",
            "unix epoch" => "1970-01-01 00:00:00.000000 AD",
            _ => "2025-03-30 01:59:59.000000 AD",
        };
        assert_eq!(shown, expected_shown, "{what}");
    }
}

// Monthly partitions (issue 20): call_detail_record is partitioned by the
// UTC month of started_at, with a default partition for months that have
// none yet (migration 0019).

/// Which partition holds each CDR, by external id.
async fn partition_of(pool: &PgPool) -> std::collections::BTreeMap<String, String> {
    sqlx::query_as::<_, (String, String)>(
        "SELECT external_id, tableoid::regclass::text FROM call_detail_record",
    )
    .fetch_all(pool)
    .await
    .unwrap()
    .into_iter()
    .collect()
}

fn day(s: &str) -> chrono::NaiveDate {
    s.parse().unwrap()
}

#[tokio::test]
async fn a_cdr_whose_month_has_no_partition_is_loaded_and_the_maintenance_moves_it_into_its_month()
{
    let f = fixture().await;
    let text = format!(
        "{ROUTIT_HEADER}\n\
         15-01-2025;11:00:00;0612345678;;SMS;Uitgaand;;;0,10;NL;R-OLD\n\
         15-06-2031;11:00:00;0612345678;;SMS;Uitgaand;;;0,20;NL;R-FUTURE\n"
    );
    let summary = f.import(Provider::Routit, "a.csv", text.into_bytes()).await;
    assert_eq!((summary.loaded, summary.rejected), (2, 0), "{summary:?}");
    let before = (cdr(&f.pool, "R-OLD").await, cdr(&f.pool, "R-FUTURE").await);
    let ids_before: Vec<i64> =
        sqlx::query_scalar("SELECT id FROM call_detail_record ORDER BY external_id")
            .fetch_all(&f.pool)
            .await
            .unwrap();
    assert!(
        partition_of(&f.pool)
            .await
            .values()
            .all(|p| p == "call_detail_record_default"),
        "neither month has a partition yet"
    );

    let store = PgPartitions::new(f.pool.clone());
    let report = ensure_partitions(&store, day("2026-12-07")).await.unwrap();
    let made: Vec<(PartitionedTable, String, u64)> = report
        .created
        .iter()
        .map(|c| (c.table, c.month.to_string(), c.rows_moved))
        .collect();
    assert!(
        made.contains(&(PartitionedTable::CallDetailRecord, "2025-01-01".into(), 1)),
        "{made:?}"
    );
    assert!(
        made.contains(&(PartitionedTable::CallDetailRecord, "2031-06-01".into(), 1)),
        "{made:?}"
    );

    let now_in = partition_of(&f.pool).await;
    assert_eq!(now_in["R-OLD"], "call_detail_record_y2025m01");
    assert_eq!(now_in["R-FUTURE"], "call_detail_record_y2031m06");
    assert_eq!(
        (cdr(&f.pool, "R-OLD").await, cdr(&f.pool, "R-FUTURE").await),
        before,
        "every column is as loaded"
    );
    let ids_after: Vec<i64> =
        sqlx::query_scalar("SELECT id FROM call_detail_record ORDER BY external_id")
            .fetch_all(&f.pool)
            .await
            .unwrap();
    assert_eq!(ids_after, ids_before, "the ids the pricings name are kept");

    let again = ensure_partitions(&store, day("2026-12-07")).await.unwrap();
    assert!(
        again.created.is_empty(),
        "a second run creates nothing: {again:?}"
    );
    let changes: i64 =
        sqlx::query_scalar("SELECT count(*) FROM cycle_change WHERE source <> 'import'")
            .fetch_one(&f.pool)
            .await
            .unwrap();
    assert_eq!(changes, 0, "moving rows between partitions is no hand edit");
}

#[tokio::test]
async fn rows_loaded_again_are_duplicates_whichever_partition_holds_them_now() {
    let f = fixture().await;
    // January, March and October 2025: three months, all in the default
    // partition, then moved by the maintenance into three partitions.
    let first = f.import(Provider::Routit, "a.csv", routit_file()).await;
    assert_eq!(first.loaded, 4);
    ensure_partitions(&PgPartitions::new(f.pool.clone()), day("2026-12-07"))
        .await
        .unwrap();
    let months: std::collections::BTreeSet<String> =
        partition_of(&f.pool).await.into_values().collect();
    assert_eq!(months.len(), 3, "{months:?}");

    let mut other = String::from_utf8(routit_file()).unwrap();
    other.push_str("15-02-2025;11:00:00;0612345678;;SMS;Uitgaand;;;0,10;NL;R-NEW\r\n");
    let second = f
        .import(Provider::Routit, "b.csv", other.into_bytes())
        .await;
    assert_eq!(
        (second.loaded, second.duplicate),
        (1, 4),
        "the four rows are refused by their own months' partitions: {second:?}"
    );
    assert_eq!(f.count().await, 5);
    assert_eq!(
        partition_of(&f.pool).await["R-NEW"],
        "call_detail_record_default",
        "February 2025 has no partition until the next run"
    );
}

#[tokio::test]
async fn two_maintenance_runs_at_once_create_each_partition_once() {
    let f = fixture().await;
    let store = PgPartitions::new(f.pool.clone());
    // Half a year on from the migration's months: four new months for each
    // of the two tables.
    let (a, b) = tokio::join!(
        ensure_partitions(&store, day("2027-06-15")),
        ensure_partitions(&store, day("2027-06-15"))
    );
    let mut made: Vec<(PartitionedTable, chrono::NaiveDate)> = a
        .unwrap()
        .created
        .into_iter()
        .chain(b.unwrap().created)
        .map(|c| (c.table, c.month))
        .collect();
    made.sort();
    let mut expected = Vec::new();
    for table in PartitionedTable::ALL {
        for month in ["2027-06-01", "2027-07-01", "2027-08-01", "2027-09-01"] {
            expected.push((table, day(month)));
        }
    }
    expected.sort();
    assert_eq!(made, expected);
}

#[tokio::test]
async fn an_id_sent_again_with_another_start_in_the_same_month_is_a_duplicate_before_and_after_its_partition_exists(
) {
    let f = fixture().await;
    let row = |day: &str| {
        format!("{ROUTIT_HEADER}\n{day};11:00:00;0612345678;;SMS;Uitgaand;;;0,10;NL;R-SAME\n")
    };
    f.import(Provider::Routit, "a.csv", row("15-01-2025").into_bytes())
        .await;
    let in_default = f
        .import(Provider::Routit, "b.csv", row("16-01-2025").into_bytes())
        .await;
    assert_eq!(
        (in_default.loaded, in_default.duplicate),
        (0, 1),
        "{in_default:?}"
    );
    ensure_partitions(&PgPartitions::new(f.pool.clone()), day("2026-12-07"))
        .await
        .unwrap();
    let in_its_month = f
        .import(Provider::Routit, "c.csv", row("17-01-2025").into_bytes())
        .await;
    assert_eq!(
        (in_its_month.loaded, in_its_month.duplicate),
        (0, 1),
        "{in_its_month:?}"
    );
    assert_eq!(
        cdr(&f.pool, "R-SAME").await[3],
        "2025-01-15 10:00:00",
        "the first delivery is kept"
    );
}

/// When an ANALYZE command last analysed `partition` (autovacuum's own
/// analyses are counted apart, so they cannot pass for the import's).
async fn analysed_at(pool: &PgPool, partition: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    sqlx::query_scalar("SELECT last_analyze FROM pg_stat_user_tables WHERE relname = $1")
        .bind(partition)
        .fetch_optional(pool)
        .await
        .unwrap()
        .flatten()
}

#[tokio::test]
async fn a_large_load_analyses_the_months_it_loaded_into_and_a_small_one_does_not() {
    let f = fixture().await;
    let partitions = tem_shared::adapters::maintenance::PgPartitions::new(f.pool.clone());
    tem_shared::maintenance::partitions::ensure_partitions(&partitions, day("2025-03-01"))
        .await
        .unwrap();
    let file = |n: usize, tag: &str| {
        let rows: Vec<String> = (0..n)
            .map(|i| {
                format!(
                    "{:02}-03-2025;{:02}:{:02}:{:02};0612345678;0201234567;Spraak;Uitgaand;00:00:{:02};;0,01;NL;{tag}-{i}",
                    1 + i % 28,
                    i / 3600 % 24,
                    i / 60 % 60,
                    i % 60,
                    i % 60
                )
            })
            .collect();
        format!("{ROUTIT_HEADER}\n{}\n", rows.join("\n")).into_bytes()
    };
    let small = f
        .import(
            Provider::Routit,
            "inbox/routit/1/d/small.csv",
            file(1_000, "S"),
        )
        .await;
    assert_eq!(small.loaded, 1_000);
    assert_eq!(
        analysed_at(&f.pool, "call_detail_record_y2025m03").await,
        None
    );
    let large = tem_shared::import::importer::LARGE_LOAD_ROWS as usize;
    let loaded = f
        .import(
            Provider::Routit,
            "inbox/routit/1/d/large.csv",
            file(large, "L"),
        )
        .await;
    assert_eq!(loaded.loaded, large as u64);
    assert!(
        analysed_at(&f.pool, "call_detail_record_y2025m03")
            .await
            .is_some(),
        "the month's partition is analysed after {large} rows"
    );
}

#[tokio::test]
async fn every_index_of_the_cdr_table_exists_on_the_partitioned_table() {
    let f = fixture().await;
    let indexes: Vec<String> = sqlx::query_scalar(
        "SELECT indexname::text FROM pg_indexes WHERE tablename = 'call_detail_record' ORDER BY 1",
    )
    .fetch_all(&f.pool)
    .await
    .unwrap();
    // The bill-shock rule's partial index (0017) was lost when 0019 made
    // the table partitioned; 0020 makes it again.
    assert_eq!(
        indexes,
        [
            "call_detail_record_customer_started",
            "call_detail_record_unassigned",
            "call_detail_record_world_data"
        ]
    );
}

/// A Routit export of `n` SMS rows of the known number, over March 2025
/// (two of the customer's cycles: it starts on the 15th), ids `{tag}-{i}`.
fn sms_rows(n: usize, tag: &str) -> Vec<String> {
    (0..n)
        .map(|i| {
            format!(
                "{:02}-03-2025;{:02}:{:02}:{:02};0612345678;;SMS;Uitgaand;;;0,10;NL;{tag}-{i}",
                1 + i % 28,
                i / 3600 % 24,
                i / 60 % 60,
                i % 60
            )
        })
        .collect()
}

fn csv_of(rows: &[String]) -> Vec<u8> {
    format!("{ROUTIT_HEADER}\n{}\n", rows.join("\n")).into_bytes()
}

/// An importer that loads every object on two connections when it can.
fn two_writers(f: &Fixture) -> Importer {
    Importer::new(
        f.pool.clone(),
        Arc::new(LocalRejects::new(&f.rejects.0)),
        ZipLimits::default(),
    )
    .with_two_writers_from(0)
}

/// `bytes` imported by `importer` as the object `test/{key}`.
async fn import_on(
    importer: &Importer,
    provider: Provider,
    key: &str,
    bytes: Vec<u8>,
) -> Result<ImportSummary, tem_shared::import::importer::ImportError> {
    let source: Arc<dyn RangeRead> = Arc::new(MemorySource::named(key, bytes));
    let request = ImportRequest {
        bucket: "test".into(),
        key: key.into(),
        provider,
        profile_id: None,
        deadline: None,
    };
    importer.import(source, &request).await
}

async fn import_with(importer: &Importer, key: &str, bytes: Vec<u8>) -> ImportSummary {
    import_on(importer, Provider::Routit, key, bytes)
        .await
        .expect("import succeeds")
}

/// The transactions that wrote the CDRs (their `xmin`s).
async fn writing_transactions(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(DISTINCT xmin::text) FROM call_detail_record")
        .fetch_one(pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_large_file_loads_on_two_connections_each_row_once_with_marks_in_both_transactions() {
    let f = fixture().await;
    let rows = 6_000;
    let summary = import_with(
        &two_writers(&f),
        "inbox/big.csv",
        csv_of(&sms_rows(rows, "B")),
    )
    .await;
    assert_eq!(
        (summary.loaded, summary.duplicate, summary.rejected),
        (rows as u64, 0, 0),
        "{summary:?}"
    );
    let distinct: i64 =
        sqlx::query_scalar("SELECT count(DISTINCT external_id) FROM call_detail_record")
            .fetch_one(&f.pool)
            .await
            .unwrap();
    assert_eq!((f.count().await, distinct), (rows as i64, rows as i64));
    assert_eq!(
        writing_transactions(&f.pool).await,
        2,
        "the rows were written by two transactions"
    );
    let connections: i64 = sqlx::query_scalar(
        "SELECT (details->>'connections')::bigint FROM import_file WHERE id = $1",
    )
    .bind(summary.import_file_id)
    .fetch_one(&f.pool)
    .await
    .unwrap();
    assert_eq!(connections, 2);
    // Each transaction marks every cycle the file touched, so whichever
    // commits alone, a calculation knows where its rows begin.
    let marks: Vec<(chrono::NaiveDate, i64)> = sqlx::query_as(
        "SELECT cycle, count(DISTINCT xmin::text) FROM cycle_change GROUP BY cycle ORDER BY cycle",
    )
    .fetch_all(&f.pool)
    .await
    .unwrap();
    assert_eq!(marks, vec![(day("2025-02-15"), 2), (day("2025-03-15"), 2)]);
}

#[tokio::test]
async fn a_file_whose_first_half_is_loaded_already_loads_its_second_half_once_on_two_connections() {
    // What a retry meets when an import was killed after the second
    // transaction committed and before the import's own did.
    let f = fixture().await;
    let rows = sms_rows(6_000, "H");
    let first = f
        .import(
            Provider::Routit,
            "inbox/first-half.csv",
            csv_of(&rows[..3_000]),
        )
        .await;
    assert_eq!(first.loaded, 3_000);
    let summary = import_with(&two_writers(&f), "inbox/whole.csv", csv_of(&rows)).await;
    assert_eq!(
        (summary.loaded, summary.duplicate),
        (3_000, 3_000),
        "{summary:?}"
    );
    assert_eq!(f.count().await, 6_000);
}

#[tokio::test]
async fn a_zip_entry_that_fails_after_its_rows_were_sent_leaves_none_of_them_on_either_connection()
{
    use std::io::Write;
    let f = fixture().await;
    let good = csv_of(&sms_rows(4_000, "G"));
    let bad = csv_of(&sms_rows(4_000, "X"));
    let mut cursor = std::io::Cursor::new(Vec::new());
    {
        let mut writer = zip::ZipWriter::new(&mut cursor);
        let stored = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored);
        writer.start_file("good.csv", stored).unwrap();
        writer.write_all(&good).unwrap();
        writer.start_file("bad.csv", stored).unwrap();
        writer.write_all(&bad).unwrap();
        writer.finish().unwrap();
    }
    // The second entry's last row changed after its CRC-32 was written:
    // the reader finds out only at the entry's end.
    let mut bytes = cursor.into_inner();
    let last = b"X-3999";
    let at = bytes
        .windows(last.len())
        .rposition(|w| w == last)
        .expect("the last row is stored as written");
    bytes[at] = b'Y';
    let summary = import_with(&two_writers(&f), "inbox/two-entries.zip", bytes).await;
    assert_eq!(summary.status.as_str(), "completed_with_errors");
    assert_eq!(summary.loaded, 4_000, "{summary:?}");
    let failed: Vec<&str> = summary
        .entries
        .iter()
        .filter(|e| e.outcome.starts_with("failed"))
        .map(|e| e.entry.as_str())
        .collect();
    assert_eq!(failed, ["bad.csv"]);
    let kept: Vec<(String, i64)> = sqlx::query_as(
        "SELECT left(external_id, 1), count(*) FROM call_detail_record GROUP BY 1 ORDER BY 1",
    )
    .fetch_all(&f.pool)
    .await
    .unwrap();
    assert_eq!(kept, vec![("G".to_string(), 4_000)]);
    assert_eq!(writing_transactions(&f.pool).await, 2);
}
