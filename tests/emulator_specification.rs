//! The usage specification (issue 18) against the real PostgreSQL and the
//! emulator's S3: written from a finalised invoice's cycle, read back from
//! the bucket (gunzip, CSV), it holds exactly the cycle's CDRs in
//! consumption order with their rated amounts, which sum to the invoice's
//! rated total; a cycle bigger than one part goes up as a multipart upload
//! and reads back whole; a cycle whose totals are not current writes
//! nothing.

use std::io::Read;

use chrono::{DateTime, Duration, NaiveDate, Utc};
use flate2::read::MultiGzDecoder;
use sqlx::PgPool;
use tem_shared::adapters::billing::invoice::generate_invoice;
use tem_shared::adapters::billing::specification::{record, write_cycle};
use tem_shared::adapters::s3::S3MultipartUpload;
use tem_shared::adapters::totals::calculate_totals;
use tem_shared::billing::euros;
use tem_shared::billing::invoice::InvoiceOutcome;
use tem_shared::billing::specification::{object_key, SpecificationError, CONTENT_TYPE, HEADER};
use tem_tests::db::{fresh, insert_billing_details, insert_business_customer, mark_imported};
use tem_tests::stack::own_bucket;

const MARCH: &str = "2025-03-01";

fn march() -> NaiveDate {
    MARCH.parse().unwrap()
}

async fn object(s3: &aws_sdk_s3::Client, bucket: &str, key: &str) -> Vec<u8> {
    s3.get_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .expect("the specification is in the bucket")
        .body
        .collect()
        .await
        .unwrap()
        .to_vec()
}

fn rows_of(gzip: &[u8]) -> Vec<csv::StringRecord> {
    let mut text = String::new();
    MultiGzDecoder::new(gzip).read_to_string(&mut text).unwrap();
    let mut reader = csv::Reader::from_reader(text.as_bytes());
    assert_eq!(
        reader.headers().unwrap().iter().collect::<Vec<_>>(),
        HEADER.to_vec()
    );
    reader.records().map(|r| r.unwrap()).collect()
}

/// A CDR of `+31612345678`: external id, start, kind, destination,
/// quantity (in the kind's unit) and the provider's cost.
type Cdr<'a> = (&'a str, &'a str, &'a str, &'a str, i64, i64);

async fn insert_cdr(pool: &PgPool, customer: i64, cdr: Cdr<'_>) -> i64 {
    let (external_id, started_at, kind, destination, quantity, cost) = cdr;
    sqlx::query_scalar(
        "INSERT INTO call_detail_record (provider, external_id, subscription, customer_id, started_at, kind, direction,
            destination, roaming_zone, duration_seconds, volume_bytes, units, provider_cost_micros, import_file_id, source_line)
         VALUES ('routit', $1, '+31612345678', $2, $3::timestamptz, $4, 'outgoing', $5,
                 CASE WHEN $4 = 'data' THEN 'eu' ELSE 'home' END,
                 CASE WHEN $4 = 'voice' THEN $6 ELSE 0 END, CASE WHEN $4 = 'data' THEN $6 ELSE 0 END,
                 CASE WHEN $4 IN ('sms', 'mms') THEN $6 ELSE 0 END, $7, 1, 1)
         RETURNING id",
    )
    .bind(external_id)
    .bind(customer)
    .bind(started_at)
    .bind(kind)
    .bind(destination)
    .bind(quantity)
    .bind(cost)
    .fetch_one(pool)
    .await
    .expect("insert a CDR")
}

#[tokio::test]
async fn the_specification_in_s3_reads_back_as_the_cycles_cdrs_and_sums_to_the_invoices_rated_total(
) {
    let db = fresh().await;
    let pool = &db.pool;
    let acme = insert_business_customer(pool).await;
    insert_billing_details(pool, acme).await;
    sqlx::query(
        "INSERT INTO subscription (customer_id, provider, identifier, active_from) VALUES ($1, 'routit', '+31612345678', '2025-01-01')",
    )
    .bind(acme)
    .execute(pool)
    .await
    .unwrap();
    let mut ids = Vec::new();
    // Two calls at the same instant (consumption order: external id), a
    // destination with a comma and quotes, an SMS the plan does not rate
    // and a data session; the plan bills voice at 0.10 a started minute,
    // so the 61 s call costs 0.20, whatever the provider charged.
    for cdr in [
        (
            "c-2",
            "2025-03-10T10:00:00Z",
            "voice",
            "+31201234567",
            61,
            9,
        ),
        (
            "c-1",
            "2025-03-10T10:00:00Z",
            "voice",
            "+31301234567",
            30,
            9,
        ),
        (
            "c-3",
            "2025-03-11T23:30:00Z",
            "voice",
            "Hotel \"Rio\", Lisbon",
            600,
            9,
        ),
        (
            "s-1",
            "2025-03-12T08:00:00Z",
            "sms",
            "+31612000000",
            1,
            50_000,
        ),
        (
            "d-1",
            "2025-03-31T21:59:59Z",
            "data",
            "internet",
            5_000_000,
            123_456,
        ),
    ] {
        ids.push(insert_cdr(pool, acme, cdr).await);
    }
    mark_imported(pool, &ids).await;
    calculate_totals(pool, acme, march()).await.unwrap();
    let now: DateTime<Utc> = "2025-04-06T10:00:00Z".parse().unwrap();
    let outcome = generate_invoice(pool, acme, march(), now, Duration::days(5))
        .await
        .unwrap();
    let InvoiceOutcome::Finalised {
        invoice_id, number, ..
    } = outcome
    else {
        panic!("the closed cycle's invoice is final: {outcome:?}")
    };
    let invoice_rated: i64 =
        sqlx::query_scalar("SELECT rated_cost_micros FROM invoice WHERE id = $1")
            .bind(invoice_id)
            .fetch_one(pool)
            .await
            .unwrap();

    let (s3, bucket) = own_bucket("tem-spec").await;
    let key = object_key(acme, march(), Some(&number), invoice_id);
    assert_eq!(
        key,
        format!("invoices/{acme}/2025-03-01/{number}-specification.csv.gz")
    );
    let mut upload = S3MultipartUpload::new(s3.clone(), &bucket, &key, CONTENT_TYPE);
    let written = write_cycle(pool, &mut upload, acme, march()).await.unwrap();
    record(pool, invoice_id, &bucket, &key, &written)
        .await
        .unwrap();

    let bytes = object(&s3, &bucket, &key).await;
    assert_eq!(written.bytes, bytes.len() as u64);
    let recorded: String =
        sqlx::query_scalar("SELECT sha256 FROM invoice_specification WHERE invoice_id = $1")
            .bind(invoice_id)
            .fetch_one(pool)
            .await
            .unwrap();
    use sha2::Digest;
    assert_eq!(recorded, hex::encode(sha2::Sha256::digest(&bytes)));

    let rows = rows_of(&bytes);
    let external: Vec<&str> = rows.iter().map(|r| &r[11]).collect();
    assert_eq!(external, ["c-1", "c-2", "c-3", "s-1", "d-1"]);
    let expected: Vec<(String, String, String, String, String, String)> = sqlx::query_as(
        "SELECT subscription, kind, roaming_zone, destination, provider, external_id
         FROM call_detail_record WHERE customer_id = $1
         ORDER BY started_at, provider COLLATE \"C\", external_id COLLATE \"C\"",
    )
    .bind(acme)
    .fetch_all(pool)
    .await
    .unwrap();
    let read: Vec<(String, String, String, String, String, String)> = rows
        .iter()
        .map(|r| {
            (
                r[0].to_string(),
                r[3].to_string(),
                r[4].to_string(),
                r[5].to_string(),
                r[10].to_string(),
                r[11].to_string(),
            )
        })
        .collect();
    assert_eq!(read, expected);
    assert_eq!(&rows[2][5], "Hotel \"Rio\", Lisbon");

    // Times: UTC, and Amsterdam's local time with its offset; the last
    // second of March in Amsterdam is still the March cycle.
    assert_eq!(
        (&rows[0][1], &rows[0][2]),
        ("2025-03-10T10:00:00Z", "2025-03-10T11:00:00+01:00")
    );
    assert_eq!(
        (&rows[4][1], &rows[4][2]),
        ("2025-03-31T21:59:59Z", "2025-03-31T23:59:59+02:00")
    );
    let quantities: Vec<(&str, &str)> = rows.iter().map(|r| (&r[6], &r[7])).collect();
    assert_eq!(
        quantities,
        [
            ("30", "seconds"),
            ("61", "seconds"),
            ("600", "seconds"),
            ("1", "messages"),
            ("5000000", "bytes")
        ]
    );

    // Amounts are the rate plan's, exact, as decimals and micro-euros.
    let micros: Vec<i64> = rows.iter().map(|r| r[9].parse().unwrap()).collect();
    assert_eq!(&micros[..3], &[100_000, 200_000, 1_000_000]);
    for row in &rows {
        assert_eq!(row[8], euros(row[9].parse().unwrap()), "{row:?}");
    }
    let sum: i64 = micros.iter().sum();
    assert_eq!(sum, invoice_rated);
    assert_eq!(written.rated_cost_micros, invoice_rated);
    assert_eq!(written.rows, 5);

    // Writing it again gives the same bytes (a retry replaces nothing
    // that differs).
    let mut again = S3MultipartUpload::new(s3.clone(), &bucket, &key, CONTENT_TYPE);
    let rewritten = write_cycle(pool, &mut again, acme, march()).await.unwrap();
    assert_eq!(rewritten.sha256, written.sha256);

    // A late CDR waiting for its calculation: the totals are not the
    // cycle's, so nothing is written.
    let late_cdr = ("late", "2025-03-20T12:00:00Z", "voice", "+31", 5, 1);
    let late = insert_cdr(pool, acme, late_cdr).await;
    mark_imported(pool, &[late]).await;
    let stale_key = format!("invoices/{acme}/2025-03-01/stale-specification.csv.gz");
    let mut stale = S3MultipartUpload::new(s3.clone(), &bucket, &stale_key, CONTENT_TYPE);
    let err = write_cycle(pool, &mut stale, acme, march())
        .await
        .unwrap_err();
    assert!(
        matches!(err, SpecificationError::NotCurrent { .. }),
        "{err}"
    );
    assert!(
        err.to_string().contains("invoke the totals function"),
        "{err}"
    );
    let head = s3
        .head_object()
        .bucket(&bucket)
        .key(&stale_key)
        .send()
        .await;
    assert!(head.is_err(), "no object for a refused specification");
}

#[tokio::test]
async fn a_cycle_bigger_than_one_part_goes_up_in_parts_and_reads_back_whole() {
    let db = fresh().await;
    let pool = &db.pool;
    let customer: i64 = sqlx::query_scalar(
        "INSERT INTO customer (name, billing_cycle_start_day) VALUES ('Big', 1) RETURNING id",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    // Hashes as destinations and ids: text gzip cannot shrink much, so
    // 250,000 rows are more than one 8 MiB part.
    const N: i64 = 250_000;
    sqlx::query(
        "INSERT INTO call_detail_record (provider, external_id, subscription, customer_id, started_at, kind, direction,
            destination, roaming_zone, duration_seconds, volume_bytes, units, provider_cost_micros, import_file_id, source_line)
         SELECT 'routit', md5(i::text) || md5((i * 7)::text), '+3161' || lpad((i % 1000)::text, 7, '0'), $1,
                '2025-03-01T00:00:00+01'::timestamptz + i * interval '9 seconds', 'voice', 'outgoing',
                md5((i * 3)::text), 'home', i % 300, 0, 0, (i % 977) * 1013 - 5000, 1, 1
         FROM generate_series(1, $2) AS i",
    )
    .bind(customer)
    .bind(N)
    .execute(pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO cycle_change (customer_id, cycle, changed_from, source) VALUES ($1, '2025-03-01', '2025-02-28T23:00:00Z', 'import')",
    )
    .bind(customer)
    .execute(pool)
    .await
    .unwrap();
    let totals = calculate_totals(pool, customer, march()).await.unwrap();
    assert_eq!(totals.cdr_count, N);

    let (s3, bucket) = own_bucket("tem-spec").await;
    let key = object_key(customer, march(), None, 1);
    let mut upload = S3MultipartUpload::new(s3.clone(), &bucket, &key, CONTENT_TYPE);
    let written = write_cycle(pool, &mut upload, customer, march())
        .await
        .unwrap();
    assert!(written.parts >= 2, "{written:?}");

    let bytes = object(&s3, &bucket, &key).await;
    assert_eq!(written.bytes, bytes.len() as u64);
    let rows = rows_of(&bytes);
    assert_eq!(rows.len() as i64, N);
    // The standard method bills the provider's cost.
    let sum: i64 = rows.iter().map(|r| r[9].parse::<i64>().unwrap()).sum();
    assert_eq!(sum, totals.rated_cost_micros);
    assert_eq!(sum, totals.provider_cost_micros);
    let uploads = s3
        .list_multipart_uploads()
        .bucket(&bucket)
        .send()
        .await
        .unwrap();
    assert!(uploads.uploads().is_empty(), "no upload is left open");
}
