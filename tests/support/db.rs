//! One fresh PostgreSQL database per test, migrated with the project's
//! migrations (or left empty, for the migration tests). Databases are
//! named `tem_test_*`; `.ci/run` drops leftovers.

use sqlx::postgres::{PgConnectOptions, PgPool};
use sqlx::{ConnectOptions, Connection};
use std::str::FromStr;

pub fn server_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

pub struct TestDb {
    pub pool: PgPool,
    pub url: String,
    pub name: String,
}

/// A new database with every migration applied.
pub async fn fresh() -> TestDb {
    let db = unmigrated().await;
    tem_shared::adapters::postgres::MIGRATOR
        .run(&db.pool)
        .await
        .expect("migrations apply to an empty database");
    db
}

/// A new, empty database: what a first deploy migrates (the ops function).
pub async fn unmigrated() -> TestDb {
    let server =
        PgConnectOptions::from_str(&server_url()).expect("DATABASE_URL is a PostgreSQL URL");
    let name = format!("tem_test_{}", uuid::Uuid::new_v4().simple());
    let mut admin = server.clone().database("postgres").connect().await.expect(
        "PostgreSQL is reachable at DATABASE_URL (default postgres://postgres@127.0.0.1:5432)",
    );
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut admin)
        .await
        .expect("create the test database");
    admin.close().await.ok();
    let options = server.database(&name);
    let url = options.to_url_lossy().to_string();
    let pool = PgPool::connect_with(options)
        .await
        .expect("connect to the test database");
    TestDb { pool, url, name }
}

/// Inserts a sync profile and returns its id.
pub async fn insert_profile(
    pool: &PgPool,
    provider: &str,
    base_url: &str,
    secret: &str,
    active: bool,
    first_period: &str,
    watermark: Option<&str>,
) -> i64 {
    sqlx::query_scalar(
        "INSERT INTO sync_profile (name, provider, base_url, credentials_secret, active, first_period, watermark_period)
         VALUES ($1, $2, $3, $4, $5, $6::date, $7::date) RETURNING id",
    )
    // Profile names are unique (migration 0007); tests insert several per provider.
    .bind(format!("{provider} account {}", uuid::Uuid::new_v4().simple()))
    .bind(provider)
    .bind(base_url)
    .bind(secret)
    .bind(active)
    .bind(first_period)
    .bind(watermark)
    .fetch_one(pool)
    .await
    .expect("insert sync profile")
}

pub async fn watermark(pool: &PgPool, profile_id: i64) -> Option<chrono::NaiveDate> {
    sqlx::query_scalar("SELECT watermark_period FROM sync_profile WHERE id = $1")
        .bind(profile_id)
        .fetch_one(pool)
        .await
        .expect("read watermark")
}

/// The billing tests' customer: Acme, cycle day 1, on the rate plan
/// `business` (voice 0.10 a minute per started minute, 2.50 a month per
/// line). Returns Acme's id.
pub async fn insert_business_customer(pool: &PgPool) -> i64 {
    let plan = serde_json::json!({
        "id": "business", "name": "Business", "unit_bytes": 1_048_576,
        "monthly_fee_micros": 2_500_000,
        "rates": [{"id": "voice", "kind": "voice", "price_per_minute_micros": 100_000,
                   "first_increment_s": 60, "increment_s": 60}],
    });
    sqlx::query("INSERT INTO rate_plan (id, name, plan) VALUES ('business', 'Business', $1)")
        .bind(&plan)
        .execute(pool)
        .await
        .unwrap();
    sqlx::query_scalar(
        "INSERT INTO customer (name, billing_cycle_start_day, rate_plan_id) VALUES ('Acme', 1, 'business') RETURNING id",
    )
    .fetch_one(pool)
    .await
    .unwrap()
}

/// Marks the cycles of the given CDRs as changed, as the importer marks the
/// rows it loads: tests insert CDRs with SQL, which no trigger marks (see
/// migrations/0010_incremental_totals.sql).
pub async fn mark_imported(pool: &PgPool, ids: &[i64]) {
    sqlx::query(
        "INSERT INTO cycle_change (customer_id, cycle, changed_from, source)
         SELECT r.customer_id, billing_cycle_of(r.started_at, c.billing_cycle_start_day, c.time_zone),
                min(r.started_at), 'import'
         FROM call_detail_record r JOIN customer c ON c.id = r.customer_id
         WHERE r.id = ANY($1)
         GROUP BY 1, 2",
    )
    .bind(ids)
    .execute(pool)
    .await
    .expect("mark the inserted CDRs' cycles");
}

/// Another customer on a plan that is already there (e.g. a second one on
/// `business` after [`insert_business_customer`]): cycle day 1, Amsterdam.
/// Returns its id.
pub async fn insert_customer_on_plan(pool: &PgPool, name: &str, plan_id: &str) -> i64 {
    sqlx::query_scalar(
        "INSERT INTO customer (name, billing_cycle_start_day, rate_plan_id) VALUES ($1, 1, $2) RETURNING id",
    )
    .bind(name)
    .bind(plan_id)
    .fetch_one(pool)
    .await
    .expect("insert the customer (its plan must exist)")
}

/// The tests' seller `tem`: Dutch, 30 days, numbers `{year}-{seq:06}`,
/// valid since 2020. Inserting it again changes nothing.
pub async fn insert_seller(pool: &PgPool) {
    sqlx::query(
        "INSERT INTO seller_details (seller_code, valid_from, legal_name, street, city, postcode, country,
             kvk, vat_number, iban, bic, payment_terms_days, peppol_scheme, peppol_id, invoice_number_format)
         VALUES ('tem', '2020-01-01', 'TEM Services B.V.', 'Kade 1', 'Utrecht', '3511 AA', 'NL',
                 '12345678', 'NL123456789B01', 'NL91ABNA0417164300', 'ABNANL2A', 30, '0106', '12345678',
                 '{year}-{seq:06}')
         ON CONFLICT DO NOTHING",
    )
    .execute(pool)
    .await
    .expect("insert the tests' seller");
}

/// Complete billing details for `customer` valid since 2020, invoiced by
/// the seller `tem` (inserted if missing): a Dutch business, so its lines
/// bill the standard rate.
pub async fn insert_billing_details(pool: &PgPool, customer: i64) {
    insert_seller(pool).await;
    sqlx::query(
        "INSERT INTO customer_billing_details (customer_id, valid_from, seller_code, legal_name, street, city,
             postcode, country, vat_number, peppol_scheme, peppol_id, invoice_email)
         VALUES ($1, '2020-01-01', 'tem', 'Customer ' || $1, 'Havenweg 2', 'Rotterdam', '3011 AA', 'NL',
                 'NL987654321B01', '0106', '87654321', 'ap@customer.example')",
    )
    .bind(customer)
    .execute(pool)
    .await
    .expect("insert billing details");
}
