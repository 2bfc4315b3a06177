//! `temctl migrate` run as a process.

mod support;

use support::{stderr, stdout, temctl, TempDir};

async fn has_cdr_table(pool: &sqlx::PgPool) -> bool {
    sqlx::query_scalar("SELECT to_regclass('call_detail_record') IS NOT NULL")
        .fetch_one(pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn migrate_creates_the_tables_on_an_empty_database_and_then_has_nothing_to_do() {
    let (pool, url) = support::empty_database().await;
    let dir = TempDir::new();
    assert!(!has_cdr_table(&pool).await);

    let first = temctl(Some(&url), &dir.0, &["migrate"]);

    assert!(first.status.success(), "stderr: {}", stderr(&first));
    assert!(has_cdr_table(&pool).await);
    let total = tem_shared::adapters::postgres::MIGRATOR.iter().count();
    assert!(
        stdout(&first).contains(&format!(
            "{total} migration(s) applied now, {total} in total"
        )),
        "{}",
        stdout(&first)
    );

    let second = temctl(Some(&url), &dir.0, &["migrate"]);

    assert!(second.status.success(), "stderr: {}", stderr(&second));
    assert!(
        stdout(&second).contains("0 migration(s) applied now"),
        "{}",
        stdout(&second)
    );
}

#[tokio::test]
async fn migrate_without_database_url_is_a_usage_error() {
    let dir = TempDir::new();

    let output = temctl(None, &dir.0, &["migrate"]);

    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("DATABASE_URL is not set"),
        "{}",
        stderr(&output)
    );
}

#[tokio::test]
async fn an_unreachable_database_fails_with_exit_code_1_naming_the_server_but_not_the_password() {
    let dir = TempDir::new();

    let output = temctl(
        Some("postgres://ops:s3cret@127.0.0.1:1/tem"),
        &dir.0,
        &["migrate"],
    );

    assert_eq!(output.status.code(), Some(1));
    let err = stderr(&output);
    assert!(
        err.starts_with("error: cannot connect to PostgreSQL at 127.0.0.1:1/tem: "),
        "{err}"
    );
    assert!(!err.contains("s3cret"), "{err}");
}
