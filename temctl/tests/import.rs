//! `temctl import` run as a process against a fresh PostgreSQL database.

mod support;

use serde_json::Value;
use support::{cdr_count, routit_csv, stderr, stdout, temctl, zip_of, TempDir};
use tem_tests::db::fresh;

const SMS: &str = "15-01-2025;10:00:00;0612345678;;SMS;Uitgaand;;;0,10;NL;A1";
const CALL: &str =
    "16-01-2025;09:30:00;+31612345678;0201234567;Spraak;Uitgaand;00:01:05;;0,0125;NL;A2";
const UNKNOWN_NUMBER: &str = "17-01-2025;12:00:00;0687654321;;SMS;Uitgaand;;;0,10;EU;A3";
const BAD_DATE: &str = "32-01-2025;10:00:00;0612345678;;SMS;Uitgaand;;;0,10;NL;A4";

/// One customer (cycle from the 15th) owning +31612345678 at routit.
async fn with_customer(pool: &sqlx::PgPool) -> i64 {
    let customer: i64 = sqlx::query_scalar(
        "INSERT INTO customer (name, billing_cycle_start_day, time_zone) VALUES ('Acme', 15, 'Europe/Amsterdam') RETURNING id",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    sqlx::query("INSERT INTO subscription (customer_id, provider, identifier) VALUES ($1, 'routit', '+31612345678')")
        .bind(customer)
        .execute(pool)
        .await
        .unwrap();
    customer
}

/// stdout must be exactly one JSON object.
fn json_summary(output: &std::process::Output) -> Value {
    let text = stdout(output);
    let value: Value = serde_json::from_str(text.trim_end())
        .unwrap_or_else(|e| panic!("stdout is one JSON value ({e}): {text:?}"));
    assert!(value.is_object(), "{value}");
    assert_eq!(text.lines().count(), 1, "nothing else on stdout: {text:?}");
    value
}

#[tokio::test]
async fn a_routit_csv_imports_with_json_counts_matching_the_rows_in_the_database() {
    let db = fresh().await;
    let customer = with_customer(&db.pool).await;
    let dir = TempDir::new();
    dir.write("jan.csv", &routit_csv(&[SMS, CALL, UNKNOWN_NUMBER]));

    let output = temctl(
        Some(&db.url),
        &dir.0,
        &["import", "--provider", "routit", "jan.csv", "--json"],
    );

    assert!(output.status.success(), "stderr: {}", stderr(&output));
    let summary = json_summary(&output);
    assert_eq!(summary["status"], "completed");
    assert_eq!(summary["read"], 3);
    assert_eq!(summary["loaded"], 3);
    assert_eq!(summary["duplicate"], 0);
    assert_eq!(summary["rejected"], 0);
    assert_eq!(summary["without_customer"], 1);
    assert_eq!(
        summary["touched"],
        serde_json::json!([[customer, "2025-01-15"]])
    );
    assert_eq!(summary["rejected_key"], Value::Null);
    assert_eq!(cdr_count(&db.pool).await, 3);
    let (bucket, key, status): (String, String, String) =
        sqlx::query_as("SELECT bucket, key, status FROM import_file")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(
        (bucket.as_str(), key.as_str(), status.as_str()),
        ("local", "jan.csv", "completed")
    );
    assert_eq!(stderr(&output), "", "no progress bar without a terminal");
}

#[tokio::test]
async fn importing_the_same_file_again_reports_already_imported_and_adds_nothing() {
    let db = fresh().await;
    let dir = TempDir::new();
    dir.write("jan.csv", &routit_csv(&[SMS, CALL]));
    let args = ["import", "--provider", "routit", "jan.csv", "--json"];

    let first = temctl(Some(&db.url), &dir.0, &args);
    assert!(first.status.success(), "stderr: {}", stderr(&first));
    let second = temctl(Some(&db.url), &dir.0, &args);

    assert!(second.status.success(), "stderr: {}", stderr(&second));
    let summary = json_summary(&second);
    assert_eq!(summary["status"], "already_imported");
    assert_eq!(summary["loaded"], 0);
    assert_eq!(cdr_count(&db.pool).await, 2);
}

#[tokio::test]
async fn a_zip_export_imports_its_csv_entries() {
    let db = fresh().await;
    let dir = TempDir::new();
    dir.write(
        "export.zip",
        &zip_of("cdr/jan.csv", &routit_csv(&[SMS, CALL])),
    );

    let output = temctl(
        Some(&db.url),
        &dir.0,
        &[
            "import",
            "--provider",
            "routit",
            "export.zip",
            "--json",
            "--profile-id",
            "7",
        ],
    );

    assert!(output.status.success(), "stderr: {}", stderr(&output));
    let summary = json_summary(&output);
    assert_eq!(summary["status"], "completed");
    assert_eq!(summary["loaded"], 2);
    assert_eq!(summary["entries"][0]["entry"], "cdr/jan.csv");
    assert_eq!(cdr_count(&db.pool).await, 2);
    let profile: Option<i64> = sqlx::query_scalar("SELECT profile_id FROM import_file")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(profile, Some(7));
}

#[tokio::test]
async fn rejected_rows_still_exit_zero_and_land_in_the_rejects_folder_whose_path_is_printed() {
    let db = fresh().await;
    let dir = TempDir::new();
    dir.write("jan.csv", &routit_csv(&[SMS, BAD_DATE]));

    let output = temctl(
        Some(&db.url),
        &dir.0,
        &[
            "import",
            "--provider",
            "routit",
            "jan.csv",
            "--rejects-dir",
            "out",
        ],
    );

    assert!(output.status.success(), "stderr: {}", stderr(&output));
    let text = stdout(&output);
    for expected in [
        "status            completed",
        "read              2 rows",
        "loaded            1",
        "rejected          1",
        "without customer  1",
        "customer cycles   0",
        "rows/s",
    ] {
        assert!(text.contains(expected), "{expected:?} in:\n{text}");
    }
    let rejects = dir.0.join("out/rejected/jan.csv.csv");
    assert!(
        text.contains(&format!("rejected rows in  {}", "out/rejected/jan.csv.csv")),
        "{text}"
    );
    let rejected = std::fs::read_to_string(&rejects).expect("the rejected-rows CSV exists");
    assert!(
        rejected.contains("A4") || rejected.contains("32-01-2025"),
        "{rejected}"
    );
    assert_eq!(cdr_count(&db.pool).await, 1);
}

#[tokio::test]
async fn a_file_given_with_dot_dot_cannot_put_its_rejects_outside_the_rejects_folder() {
    let db = fresh().await;
    let dir = TempDir::new();
    std::fs::create_dir_all(dir.0.join("work")).unwrap();
    dir.write("jan.csv", &routit_csv(&[BAD_DATE, SMS]));

    let output = temctl(
        Some(&db.url),
        &dir.0.join("work"),
        &[
            "import",
            "--provider",
            "routit",
            "../jan.csv",
            "--rejects-dir",
            "out",
            "--json",
        ],
    );

    assert!(output.status.success(), "stderr: {}", stderr(&output));
    assert_eq!(
        json_summary(&output)["rejected_key"],
        "out/rejected/jan.csv.csv"
    );
    assert!(dir.0.join("work/out/rejected/jan.csv.csv").is_file());
}

#[tokio::test]
async fn a_missing_file_fails_with_exit_code_1_naming_the_file() {
    let db = fresh().await;
    let dir = TempDir::new();

    let output = temctl(
        Some(&db.url),
        &dir.0,
        &["import", "--provider", "routit", "nope.zip"],
    );

    assert_eq!(output.status.code(), Some(1));
    assert_eq!(stderr(&output).trim_end(), "error: file nope.zip not found");
    assert_eq!(stdout(&output), "");
}

#[tokio::test]
async fn a_file_that_is_not_an_export_fails_with_exit_code_1_and_the_importers_reason() {
    let db = fresh().await;
    let dir = TempDir::new();
    dir.write("broken.zip", b"PK\x03\x04 this is not really a zip");

    let output = temctl(
        Some(&db.url),
        &dir.0,
        &["import", "--provider", "routit", "broken.zip", "--json"],
    );

    assert_eq!(output.status.code(), Some(1));
    let err = stderr(&output);
    assert!(
        err.starts_with("error: ") && err.contains("broken.zip"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert_eq!(stdout(&output), "", "no JSON when the import failed");
    assert_eq!(cdr_count(&db.pool).await, 0);
}

#[tokio::test]
async fn an_unknown_provider_is_a_usage_error_listing_the_known_providers() {
    let dir = TempDir::new();
    dir.write("jan.csv", &routit_csv(&[SMS]));

    let output = temctl(
        Some("postgres://nobody@127.0.0.1:1/none"),
        &dir.0,
        &["import", "--provider", "kpn", "jan.csv"],
    );

    assert_eq!(output.status.code(), Some(2));
    let err = stderr(&output);
    assert!(err.contains("unknown provider \"kpn\""), "{err}");
    assert!(err.contains("routit") && err.contains("t_mobile"), "{err}");
}

#[tokio::test]
async fn a_missing_database_url_is_a_usage_error_that_says_to_set_it() {
    let dir = TempDir::new();
    dir.write("jan.csv", &routit_csv(&[SMS]));

    let output = temctl(None, &dir.0, &["import", "--provider", "routit", "jan.csv"]);

    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).starts_with("error: DATABASE_URL is not set; set it to"),
        "{}",
        stderr(&output)
    );
}

#[tokio::test]
async fn an_unmigrated_database_is_refused_with_a_hint_to_run_migrate() {
    let (pool, url) = support::empty_database().await;
    let dir = TempDir::new();
    dir.write("jan.csv", &routit_csv(&[SMS]));

    let output = temctl(
        Some(&url),
        &dir.0,
        &["import", "--provider", "routit", "jan.csv"],
    );

    assert_eq!(output.status.code(), Some(1));
    let err = stderr(&output);
    assert!(
        err.contains("no call_detail_record table; run `temctl migrate` first"),
        "{err}"
    );
    let tables: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(tables, 0, "nothing was migrated behind the operator's back");
}
