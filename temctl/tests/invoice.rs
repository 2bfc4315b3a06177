//! `temctl invoice` run as a process against a fresh PostgreSQL database
//! and the emulator's S3: list with filters, show with lines, VAT, parties
//! and documents, the usage specification written and downloaded (and as a
//! presigned URL), a clear error for a document not written yet, and a
//! draft's preview that takes no number.

mod support;

use std::io::Read;
use std::path::Path;
use std::process::{Command, Output};

use chrono::{DateTime, Duration, NaiveDate, Utc};
use serde_json::Value;
use sha2::Digest;
use sqlx::PgPool;
use support::{stderr, stdout, TempDir};
use tem_shared::adapters::billing::invoice::generate_invoice;
use tem_shared::adapters::s3_client;
use tem_shared::adapters::totals::calculate_totals;
use tem_shared::billing::document::pdf::{win_ansi, PREVIEW_WATERMARK};
use tem_shared::billing::invoice::InvoiceOutcome;
use tem_tests::db::{
    fresh, insert_billing_details, insert_business_customer, insert_customer_on_plan, mark_imported,
};
use tem_tests::stack::emulator;

fn march() -> NaiveDate {
    "2025-03-01".parse().unwrap()
}

/// `temctl` with DATABASE_URL and the emulator's AWS environment.
fn temctl(url: &str, cwd: &Path, args: &[&str]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_temctl"));
    command
        .args(args)
        .current_dir(cwd)
        .env("DATABASE_URL", url)
        .env_remove("TEM_STACK")
        .env_remove("TEM_INVOICE_BUCKET");
    for (key, value) in &emulator().env {
        command.env(key, value);
    }
    command.output().expect("run temctl")
}

/// Two calls of `customer`'s line in March (61 s and 600 s: 0.20 and 1.00
/// on the plan), calculated.
async fn march_usage(pool: &PgPool, customer: i64, line: &str) {
    sqlx::query(
        "INSERT INTO subscription (customer_id, provider, identifier, active_from) VALUES ($1, 'routit', $2, '2025-01-01')",
    )
    .bind(customer)
    .bind(line)
    .execute(pool)
    .await
    .unwrap();
    let ids: Vec<i64> = sqlx::query_scalar(
        "INSERT INTO call_detail_record (provider, external_id, subscription, customer_id, started_at, kind, direction,
            destination, roaming_zone, duration_seconds, volume_bytes, units, provider_cost_micros, import_file_id, source_line)
         SELECT 'routit', $2 || '-' || n, $2, $1, '2025-03-10T10:00:00Z'::timestamptz + n * interval '1 hour', 'voice',
                'outgoing', '+31201234567', 'home', CASE n WHEN 1 THEN 61 ELSE 600 END, 0, 0, 1, 1, 1
         FROM generate_series(1, 2) AS n RETURNING id",
    )
    .bind(customer)
    .bind(line)
    .fetch_all(pool)
    .await
    .unwrap();
    mark_imported(pool, &ids).await;
    calculate_totals(pool, customer, march()).await.unwrap();
}

async fn generate(pool: &PgPool, customer: i64, now: &str) -> InvoiceOutcome {
    let now: DateTime<Utc> = now.parse().unwrap();
    generate_invoice(pool, customer, march(), now, Duration::days(5))
        .await
        .unwrap()
}

async fn bucket() -> String {
    let s3 = s3_client(&emulator().sdk_config().await);
    let name = format!("tem-temctl-{}", uuid::Uuid::new_v4().simple());
    let region = emulator().region;
    let mut create = s3.create_bucket().bucket(&name);
    if region != "us-east-1" {
        create = create.create_bucket_configuration(
            aws_sdk_s3::types::CreateBucketConfiguration::builder()
                .location_constraint(aws_sdk_s3::types::BucketLocationConstraint::from(
                    region.as_str(),
                ))
                .build(),
        );
    }
    create.send().await.unwrap();
    name
}

#[tokio::test]
async fn an_operator_lists_shows_specifies_downloads_and_presigns_an_invoice_and_previews_a_draft()
{
    let db = fresh().await;
    let pool = &db.pool;
    let dir = TempDir::new();
    // acme: final (billing details); beta: blocked (none); gamma: a draft
    // of an open cycle.
    let acme = insert_business_customer(pool).await;
    insert_billing_details(pool, acme).await;
    march_usage(pool, acme, "+31611111111").await;
    let InvoiceOutcome::Finalised {
        number, invoice_id, ..
    } = generate(pool, acme, "2025-04-06T10:00:00Z").await
    else {
        panic!("acme's invoice is final")
    };
    let beta = insert_customer_on_plan(pool, "Beta", "business").await;
    march_usage(pool, beta, "+31622222222").await;
    generate(pool, beta, "2025-04-06T10:00:00Z").await;
    let gamma = insert_customer_on_plan(pool, "Gamma", "business").await;
    insert_billing_details(pool, gamma).await;
    march_usage(pool, gamma, "+31633333333").await;
    assert!(matches!(
        generate(pool, gamma, "2025-03-20T10:00:00Z").await,
        InvoiceOutcome::DraftWritten { .. }
    ));

    // list, and its filters
    let all = temctl(&db.url, &dir.0, &["invoice", "list"]);
    assert!(all.status.success(), "{}", stderr(&all));
    let text = stdout(&all);
    assert!(text.contains(&number), "{text}");
    assert!(text.contains("BLOCKED: customer"), "{text}");
    assert!(text.contains("3 invoice(s)"), "{text}");
    let drafts = temctl(
        &db.url,
        &dir.0,
        &["invoice", "list", "--status", "draft", "--json"],
    );
    let rows: Value = serde_json::from_str(&stdout(&drafts)).unwrap();
    let customers: Vec<i64> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["customer_id"].as_i64().unwrap())
        .collect();
    assert_eq!(customers, [beta, gamma]);
    let mine = temctl(
        &db.url,
        &dir.0,
        &["invoice", "list", "--customer", &acme.to_string(), "--json"],
    );
    let rows: Value = serde_json::from_str(&stdout(&mine)).unwrap();
    assert_eq!(rows.as_array().unwrap().len(), 1);
    assert_eq!(rows[0]["number"], number.as_str());
    let bad = temctl(&db.url, &dir.0, &["invoice", "list", "--status", "sent"]);
    assert_eq!(bad.status.code(), Some(2));

    // show: lines, VAT, totals, parties, no documents yet
    let show = temctl(&db.url, &dir.0, &["invoice", "show", &number]);
    assert!(show.status.success(), "{}", stderr(&show));
    let text = stdout(&show);
    for expected in [
        format!("invoice {number} (id {invoice_id})"),
        "seller: TEM Services B.V.".to_string(),
        format!("buyer: Customer {acme}"),
        "+31611111111".to_string(),
        "VAT breakdown:".to_string(),
        "  S    21.00%  taxable         3.70  VAT         0.78".to_string(),
        "net 3.70 EUR, VAT 0.78 EUR, amount due 4.48 EUR".to_string(),
        "amount due".to_string(),
        "usage specification: none yet".to_string(),
    ] {
        assert!(text.contains(&expected), "missing {expected:?} in:\n{text}");
    }

    // a document not written yet: which, and how to make it
    let missing = temctl(
        &db.url,
        &dir.0,
        &["invoice", "download", &number, "--what", "specification"],
    );
    assert_eq!(missing.status.code(), Some(1));
    let text = stderr(&missing);
    assert!(
        text.contains("has no usage specification yet")
            && text.contains(&format!("temctl invoice specify {invoice_id}")),
        "{text}"
    );
    let pdf = temctl(
        &db.url,
        &dir.0,
        &["invoice", "download", &number, "--what", "pdf"],
    );
    assert_eq!(pdf.status.code(), Some(1));
    assert!(stderr(&pdf).contains("has no PDF yet"), "{}", stderr(&pdf));

    // specify, then show names it, download and presign fetch it
    let bucket = bucket().await;
    let specify = temctl(
        &db.url,
        &dir.0,
        &["invoice", "specify", &number, "--bucket", &bucket],
    );
    assert!(specify.status.success(), "{}", stderr(&specify));
    let key = format!("invoices/{acme}/2025-03-01/{number}-specification.csv.gz");
    assert!(stdout(&specify).contains(&key), "{}", stdout(&specify));
    let show = temctl(&db.url, &dir.0, &["invoice", "show", &number, "--json"]);
    let detail: Value = serde_json::from_str(&stdout(&show)).unwrap();
    let document = &detail["documents"][0];
    assert_eq!(document["key"], key.as_str());
    let recorded = document["sha256"].as_str().unwrap().to_string();

    let download = temctl(
        &db.url,
        &dir.0,
        &[
            "invoice",
            "download",
            &invoice_id.to_string(),
            "--what",
            "specification",
        ],
    );
    assert!(download.status.success(), "{}", stderr(&download));
    let file = dir.0.join(format!("{number}-specification.csv.gz"));
    let bytes = std::fs::read(&file).expect("written under the key's file name");
    assert_eq!(hex::encode(sha2::Sha256::digest(&bytes)), recorded);
    let mut text = String::new();
    flate2::read::MultiGzDecoder::new(&bytes[..])
        .read_to_string(&mut text)
        .unwrap();
    assert_eq!(text.lines().count(), 3, "a header and two calls:\n{text}");

    let presign = temctl(
        &db.url,
        &dir.0,
        &[
            "invoice",
            "download",
            &number,
            "--what",
            "specification",
            "--presign",
            "--expires",
            "120",
        ],
    );
    assert!(presign.status.success(), "{}", stderr(&presign));
    let url = stdout(&presign).trim().to_string();
    assert!(url.contains("X-Amz-Expires=120"), "{url}");
    let fetched = reqwest::get(&url).await.unwrap();
    assert!(fetched.status().is_success(), "{}", fetched.status());
    assert_eq!(fetched.bytes().await.unwrap().to_vec(), bytes);
    let too_long = temctl(
        &db.url,
        &dir.0,
        &[
            "invoice",
            "download",
            &number,
            "--what",
            "specification",
            "--presign",
            "--expires",
            "604801",
        ],
    );
    assert_eq!(too_long.status.code(), Some(2));
    assert!(
        stderr(&too_long).contains("7 days"),
        "{}",
        stderr(&too_long)
    );

    // the UBL RenderInvoice recorded is shown beside the specification,
    // and downloaded from its key
    let ubl_key = format!("invoices/{acme}/2025-03-01/{number}.xml");
    let ubl = b"<Invoice/>".to_vec();
    s3_client(&emulator().sdk_config().await)
        .put_object()
        .bucket(&bucket)
        .key(&ubl_key)
        .body(ubl.clone().into())
        .send()
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO invoice_document (invoice_id, format, document_type, bucket, key, sha256, size_bytes)
         VALUES ($1, 'ubl', 'invoice', $2, $3, $4, $5)",
    )
    .bind(invoice_id)
    .bind(&bucket)
    .bind(&ubl_key)
    .bind(hex::encode(sha2::Sha256::digest(&ubl)))
    .bind(ubl.len() as i64)
    .execute(pool)
    .await
    .unwrap();
    let show = temctl(&db.url, &dir.0, &["invoice", "show", &number]);
    assert!(
        stdout(&show).contains(&format!("UBL document: s3://{bucket}/{ubl_key}")),
        "{}",
        stdout(&show)
    );
    let download = temctl(
        &db.url,
        &dir.0,
        &["invoice", "download", &number, "--what", "ubl"],
    );
    assert!(download.status.success(), "{}", stderr(&download));
    assert_eq!(
        std::fs::read(dir.0.join(format!("{number}.xml"))).unwrap(),
        ubl
    );

    // a preview: marked, no number, and no number taken
    let counter = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT coalesce(sum(last_number), 0)::bigint FROM invoice_number_counter",
        )
        .fetch_one(pool)
        .await
        .unwrap()
    };
    let before = counter().await;
    let preview = temctl(
        &db.url,
        &dir.0,
        &["invoice", "preview", &gamma.to_string(), "2025-03-01"],
    );
    assert!(preview.status.success(), "{}", stderr(&preview));
    let text = stdout(&preview);
    assert!(
        text.starts_with("PREVIEW - NOT AN INVOICE (no number"),
        "{text}"
    );
    assert!(
        text.contains("amount due") && text.contains("(PREVIEW)"),
        "{text}"
    );
    // 0.20 + 1.00 of calls and the 2.50 monthly fee, 21% VAT: 3.70 + 0.78.
    assert!(
        text.contains("net 3.70 EUR, VAT 0.78 EUR, amount due 4.48 EUR"),
        "{text}"
    );
    assert_eq!(counter().await, before, "a preview takes no number");

    // the preview as documents: the UBL with its PREVIEW note and no
    // number, the PDF watermarked on every page; still no number taken,
    // and nothing written to S3
    let ubl_file = dir.0.join("preview.xml");
    let documents = temctl(
        &db.url,
        &dir.0,
        &[
            "invoice",
            "preview",
            &gamma.to_string(),
            "2025-03-01",
            "--ubl",
            ubl_file.to_str().unwrap(),
            "--pdf",
            "-",
        ],
    );
    assert!(documents.status.success(), "{}", stderr(&documents));
    assert!(
        stderr(&documents).contains("preview UBL (not an invoice, numbered DRAFT) written to"),
        "{}",
        stderr(&documents)
    );
    let xml = std::fs::read_to_string(&ubl_file).unwrap();
    for expected in [
        "<cbc:ID>DRAFT</cbc:ID>",
        "<cbc:Note>PREVIEW \u{2014} NOT AN INVOICE: a draft as it would be issued now",
        "<cbc:PayableAmount currencyID=\"EUR\">4.48</cbc:PayableAmount>",
    ] {
        assert!(xml.contains(expected), "{expected} missing in\n{xml}");
    }
    let pdf = &documents.stdout;
    assert!(pdf.starts_with(b"%PDF-"), "the PDF alone is on stdout");
    let watermark = format!("<{}>", hex::encode_upper(win_ansi(PREVIEW_WATERMARK)));
    let pages = pdf.windows(9).filter(|w| w == b"/MediaBox").count();
    let marked = inflated_streams(pdf)
        .iter()
        .filter(|c| {
            c.windows(watermark.len())
                .any(|w| w == watermark.as_bytes())
        })
        .count();
    assert!(pages >= 1);
    assert_eq!(marked, pages, "every page carries the watermark");
    assert_eq!(counter().await, before, "a preview takes no number");
    let written = s3_client(&emulator().sdk_config().await)
        .list_objects_v2()
        .bucket(&bucket)
        .prefix(format!("invoices/{gamma}/"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        written.key_count(),
        Some(0),
        "a preview writes nothing to S3"
    );
    let refused = temctl(
        &db.url,
        &dir.0,
        &[
            "invoice",
            "preview",
            &beta.to_string(),
            "2025-03-01",
            "--pdf",
            "beta.pdf",
        ],
    );
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        stderr(&refused).contains("could not be issued now, so it has no preview documents"),
        "{}",
        stderr(&refused)
    );
    assert!(!dir.0.join("beta.pdf").exists());
    let blocked = temctl(
        &db.url,
        &dir.0,
        &["invoice", "preview", &beta.to_string(), "2025-03-01"],
    );
    assert!(blocked.status.success(), "{}", stderr(&blocked));
    assert!(
        stdout(&blocked).contains("could not be issued now")
            && stdout(&blocked).contains("billing details"),
        "{}",
        stdout(&blocked)
    );
    let none = temctl(
        &db.url,
        &dir.0,
        &["invoice", "preview", &acme.to_string(), "2025-03-01"],
    );
    assert_eq!(none.status.code(), Some(1));
    assert!(
        stderr(&none).contains("has no draft invoice"),
        "{}",
        stderr(&none)
    );
}

/// The content streams of a PDF that tem wrote (pdf-writer, deflated).
fn inflated_streams(pdf: &[u8]) -> Vec<Vec<u8>> {
    let find = |hay: &[u8], needle: &[u8]| hay.windows(needle.len()).position(|w| w == needle);
    let mut out = Vec::new();
    let mut at = 0;
    while let Some(p) = find(&pdf[at..], b">>\nstream\n") {
        let start = at + p + 10;
        let end = start + find(&pdf[start..], b"\nendstream").expect("a stream ends");
        let mut inflated = Vec::new();
        flate2::read::ZlibDecoder::new(&pdf[start..end])
            .read_to_end(&mut inflated)
            .expect("a content stream inflates");
        out.push(inflated);
        at = end;
    }
    out
}
