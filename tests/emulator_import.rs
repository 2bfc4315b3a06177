//! The CDR import path in the emulator: an export put into the bucket is
//! imported through the S3 notification, recorded, and chains
//! `DispatchTotals` for every (customer, cycle) it touched, which the totals
//! function turns into totals and a history version; a carrier invoice
//! put under carrier-invoices/ is audited (AuditCarrierInvoice).

use std::collections::BTreeSet;
use std::io::Write;
use std::time::Duration;

use serde_json::Value;
use tem_local::deployment::wait_for;
use tem_tests::stack::{deploy, TestStack};

const TIMEOUT: Duration = Duration::from_secs(90);
const HEADER: &str =
    "Datum;Tijd;Abonnee;Bestemming;Type;Richting;Duur;Volume;Kosten;Zone;Referentie";

fn zipped(name: &str, csv: &str) -> Vec<u8> {
    let mut cursor = std::io::Cursor::new(Vec::new());
    let mut writer = zip::ZipWriter::new(&mut cursor);
    writer
        .start_file(name, zip::write::SimpleFileOptions::default())
        .unwrap();
    writer.write_all(csv.as_bytes()).unwrap();
    writer.finish().unwrap();
    cursor.into_inner()
}

/// Two customers with cycles starting on the 1st and the 15th.
async fn customers(stack: &TestStack) -> (i64, i64) {
    let mut ids = Vec::new();
    for (name, day, number) in [
        ("Acme", 1i16, "+31611111111"),
        ("Bakker", 15, "+31622222222"),
    ] {
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO customer (name, billing_cycle_start_day) VALUES ($1, $2) RETURNING id",
        )
        .bind(name)
        .bind(day)
        .fetch_one(&stack.db.pool)
        .await
        .unwrap();
        sqlx::query("INSERT INTO subscription (customer_id, provider, identifier) VALUES ($1, 'routit', $2)")
            .bind(id)
            .bind(number)
            .execute(&stack.db.pool)
            .await
            .unwrap();
        ids.push(id);
    }
    (ids[0], ids[1])
}

async fn put(stack: &TestStack, key: &str, bytes: Vec<u8>) {
    stack
        .deployment
        .clients
        .s3
        .put_object()
        .bucket(stack.deployment.output("CdrBucketName"))
        .key(key)
        .body(bytes.into())
        .send()
        .await
        .expect("put the export");
}

async fn import_file(stack: &TestStack, key: &str) -> Value {
    wait_for(&format!("the import of {key}"), TIMEOUT, || async {
        let row: Option<Value> = sqlx::query_scalar(
            "SELECT to_jsonb(f) FROM import_file f WHERE key = $1 AND status <> 'running' ORDER BY id DESC LIMIT 1",
        )
        .bind(key)
        .fetch_optional(&stack.db.pool)
        .await?;
        Ok(row)
    })
    .await
    .unwrap()
}

/// The (customer, cycle) pairs with totals, once `expected` of them exist.
async fn totals(stack: &TestStack, expected: usize) -> BTreeSet<(i64, String, i64)> {
    wait_for(
        &format!("{expected} customer cycles with totals"),
        TIMEOUT,
        || async {
            let rows: Vec<(i64, String, i64)> = sqlx::query_as(
                "SELECT customer_id, cycle::text, cdr_count FROM totals ORDER BY 1, 2",
            )
            .fetch_all(&stack.db.pool)
            .await?;
            Ok((rows.len() >= expected).then(|| rows.into_iter().collect()))
        },
    )
    .await
    .unwrap()
}

/// Versions in the totals history of one cycle: (version, cause, cdr_count).
async fn history(
    stack: &TestStack,
    customer: i64,
    cycle: &str,
    versions: usize,
) -> Vec<(i32, String, i64)> {
    wait_for(
        &format!("{versions} history versions of {customer}/{cycle}"),
        TIMEOUT,
        || async {
            let rows: Vec<(i32, String, i64)> = sqlx::query_as(
                "SELECT version, cause, (figures->>'cdr_count')::bigint FROM totals_history
             WHERE customer_id = $1 AND cycle = $2::date ORDER BY version",
            )
            .bind(customer)
            .bind(cycle)
            .fetch_all(&stack.db.pool)
            .await?;
            Ok((rows.len() >= versions).then_some(rows))
        },
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_export_put_into_the_bucket_is_imported_and_chains_dispatch_totals_per_customer_cycle() {
    let stack = deploy().await;
    let (acme, bakker) = customers(&stack).await;
    let csv = format!(
        "{HEADER}\r\n\
         14-01-2025;10:00:00;0611111111;;SMS;Uitgaand;;;0,10;NL;N1\r\n\
         02-02-2025;10:00:00;0611111111;;SMS;Uitgaand;;;0,10;NL;N2\r\n\
         14-01-2025;10:00:00;0622222222;;SMS;Uitgaand;;;0,10;NL;N3\r\n\
         14-01-2025;11:00:00;0622222222;;SMS;Uitgaand;;;0,10;NL;N4\r\n\
         14-01-2025;11:00:00;0633333333;;SMS;Uitgaand;;;0,10;NL;N5\r\n\
         14-01-2025;25:00:00;0611111111;;SMS;Uitgaand;;;0,10;NL;BAD\r\n"
    );
    let key = "inbox/routit/1/2025-01-14/export 1.zip";
    put(&stack, key, zipped("cdr.csv", &csv)).await;

    let file = import_file(&stack, key).await;
    assert_eq!(file["status"], "completed", "{file}");
    assert_eq!(
        (
            &file["rows_read"],
            &file["rows_loaded"],
            &file["rows_rejected"],
            &file["rows_without_customer"]
        ),
        (&6.into(), &5.into(), &1.into(), &1.into()),
        "{file}"
    );
    assert_eq!(file["sha256"].as_str().unwrap().len(), 64);
    assert_eq!(file["provider"], "routit");
    assert_eq!(file["profile_id"], 1);
    let rejected_key = "rejected/inbox/routit/1/2025-01-14/export 1.zip.csv";
    assert!(
        file["rejected_key"]
            .as_str()
            .unwrap()
            .ends_with(rejected_key),
        "{file}"
    );
    assert_eq!(
        stack.deployment.objects("rejected/").await.unwrap().len(),
        1
    );

    // DispatchTotals ran for exactly the touched customer cycles, then
    // CalculateTotals and BackupTotals in order.
    let touched = totals(&stack, 3).await;
    assert_eq!(
        touched,
        BTreeSet::from([
            (acme, "2025-01-01".to_string(), 1),
            (acme, "2025-02-01".to_string(), 1),
            (bakker, "2024-12-15".to_string(), 2),
        ])
    );
    assert_eq!(
        history(&stack, bakker, "2024-12-15", 1).await,
        vec![(1, "import".to_string(), 2)]
    );

    // The same content under another key: recorded, nothing loaded, nothing recalculated.
    put(
        &stack,
        "inbox/routit/1/2025-01-14/copy.zip",
        zipped("cdr.csv", &csv),
    )
    .await;
    let copy = import_file(&stack, "inbox/routit/1/2025-01-14/copy.zip").await;
    assert_eq!(copy["rows_loaded"], 0, "{copy}");
    assert!(copy["details"]["already_imported_as"].is_number(), "{copy}");
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM call_detail_record")
        .fetch_one(&stack.db.pool)
        .await
        .unwrap();
    assert_eq!(count, 5);

    // A late CDR for a past cycle recalculates it and records a new version.
    let late =
        format!("{HEADER}\r\n20-12-2024;09:00:00;0622222222;;SMS;Uitgaand;;;0,10;NL;LATE\r\n");
    put(
        &stack,
        "inbox/routit/1/2024-12-20/late.zip",
        zipped("late.csv", &late),
    )
    .await;
    let versions = history(&stack, bakker, "2024-12-15", 2).await;
    assert_eq!(
        versions,
        vec![
            (1, "import".to_string(), 2),
            (2, "late_cdrs".to_string(), 3)
        ]
    );
    assert_eq!(
        history(&stack, acme, "2025-01-01", 1).await.len(),
        1,
        "other cycles untouched"
    );

    // A carrier's own invoice under carrier-invoices/ is audited, not
    // imported: Routit bills +31611111111 two SMS in January for 0.30
    // where tem holds one CDR of 0.10.
    let invoice = "Recordsoort;Klantnummer;Factuurnummer;Periode van;Periode tot en met;Nummer;Soort;Aantal;Bedrag\r\n\
        Kop;R-1;F-2025-01;01-01-2025;31-01-2025;;;;\r\n\
        Verbruik;;;;;0611111111;SMS;2;0,30\r\n\
        Totaal;;;;;;;;0,30\r\n";
    let invoice_key = "carrier-invoices/routit/1/2025-01-01.csv";
    put(&stack, invoice_key, invoice.as_bytes().to_vec()).await;
    let findings = wait_for("the carrier audit's findings", TIMEOUT, || async {
        let rows: Vec<(String, String, i64, i64, Option<i64>)> = sqlx::query_as(
            "SELECT a.kind, a.subscription, a.billed_micros, a.expected_micros, a.cdr_count
             FROM audit_finding a JOIN carrier_invoice i ON i.id = a.carrier_invoice_id
             WHERE i.file_key = $1 ORDER BY a.kind",
        )
        .bind(invoice_key)
        .fetch_all(&stack.db.pool)
        .await?;
        Ok((!rows.is_empty()).then_some(rows))
    })
    .await
    .unwrap();
    assert_eq!(
        findings,
        vec![(
            "missing_cdrs".to_string(),
            "+31611111111".to_string(),
            300_000,
            100_000,
            Some(1)
        )]
    );
    let imports: i64 =
        sqlx::query_scalar("SELECT count(*) FROM import_file WHERE key LIKE 'carrier-invoices/%'")
            .fetch_one(&stack.db.pool)
            .await
            .unwrap();
    assert_eq!(imports, 0, "a carrier invoice is not a CDR import");
    stack.finish().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn an_object_that_is_not_a_zip_goes_to_the_import_dlq_with_the_reason() {
    let stack = deploy().await;
    put(
        &stack,
        "inbox/routit/1/2025-01-14/broken.zip",
        b"not a zip at all".to_vec(),
    )
    .await;
    let file = import_file(&stack, "inbox/routit/1/2025-01-14/broken.zip").await;
    assert_eq!(file["status"], "failed");
    assert!(
        file["error"].as_str().unwrap().contains("not a ZIP file"),
        "{file}"
    );
    let dead = wait_for("the dead letter", TIMEOUT, || async {
        let dead = stack.deployment.drain("ImportDlqUrl").await?;
        Ok((!dead.is_empty()).then_some(dead))
    })
    .await
    .unwrap();
    assert_eq!(dead[0].attributes["tem-error-kind"], "permanent");
    assert!(dead[0].attributes["tem-error"].contains("not a ZIP file"));
    assert_eq!(dead[0].attributes["tem-attempts"], "1");
    stack.finish().await.unwrap();
}
