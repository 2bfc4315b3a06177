//! The carrier bill audit against a real PostgreSQL (issue 19): buy rates
//! and subscriptions as `temctl apply` stores them, CDRs loaded by the
//! importer from a kpn_een export, and a kpn_een carrier invoice with
//! planted differences audited, imported again, and corrected.

use std::sync::Arc;

use chrono::{Duration, NaiveDate};
use sqlx::PgPool;
use tem_shared::adapters::audit::PgAudit;
use tem_shared::audit::dispute::{
    change_status, DisputeError, FindingFilter, FindingStore, Status, StatusChange,
};
use tem_shared::audit::format::CarrierFormat;
use tem_shared::audit::parse::write_carrier_invoice;
use tem_shared::audit::run::{audit_carrier_invoice, AuditReport, DEFAULT_TOLERANCE};
use tem_shared::audit::{CarrierCharge, CarrierInvoice, CarrierLine, FindingKind};
use tem_shared::catalog::{self, Action, ApplyOptions, CatalogError};
use tem_shared::costs::ChargeClass;
use tem_shared::import::importer::{ImportRequest, Importer};
use tem_shared::import::source::{MemorySource, RangeRead};
use tem_shared::import::zip::ZipLimits;
use tem_shared::import::LocalRejects;
use tem_shared::routing::Provider;
use tem_tests::db::fresh;

const ONE: &str = "+31600000001";
const TWO: &str = "+31600000002";
const THREE: &str = "+31600000003";
const FOUR: &str = "+31600000004";
const FILE: &str = "carrier-invoices/kpn_een/K-1/2025-03-01.csv";

/// Four subscriptions on kpn_een account K-1 at 15.00 a month; THREE was
/// terminated in February; TWO's rate rises from April (not this period's).
const CATALOG: &str = r#"
customers:
  - {code: acme, name: Acme, billing_cycle_start_day: 1}
subscriptions:
  - {identifier: "+31600000001", customer: acme, provider: kpn_een, active_from: 2024-01-01}
  - {identifier: "+31600000002", customer: acme, provider: kpn_een, active_from: 2024-01-01}
  - {identifier: "+31600000003", customer: acme, provider: kpn_een, active_from: 2024-01-01, active_to: 2025-02-14}
  - {identifier: "+31600000004", customer: acme, provider: kpn_een, active_from: 2024-01-01}
buy_rates:
  - {provider: kpn_een, account: K-1, subscription: "+31600000001", valid_from: 2024-01-01, recurring_micros: 15000000}
  - {provider: kpn_een, account: K-1, subscription: "+31600000002", valid_from: 2024-01-01, recurring_micros: 15000000}
  - {provider: kpn_een, account: K-1, subscription: "+31600000002", valid_from: 2025-04-01, recurring_micros: 17500000}
  - {provider: kpn_een, account: K-1, subscription: "+31600000003", valid_from: 2024-01-01, recurring_micros: 15000000}
  - {provider: kpn_een, account: K-1, subscription: "+31600000004", valid_from: 2024-01-01, recurring_micros: 15000000}
"#;

async fn apply(pool: &PgPool, text: &str) -> Result<catalog::Applied, CatalogError> {
    let parsed = catalog::parse(text, |_| None);
    if !parsed.is_valid() {
        return Err(CatalogError::Invalid(parsed.problems));
    }
    catalog::apply(
        pool,
        &parsed,
        &ApplyOptions {
            source: "test".into(),
            dry_run: false,
            now: "2025-03-01T00:00:00Z".parse().expect("a time"),
            grace: Duration::days(5),
        },
    )
    .await
}

/// The March CDRs, as kpn_een exports them: ONE's 40 calls cost 12.34,
/// TWO's 45 sessions 8.10. Outside the period: a February call, and a
/// call at 00:30 on 1 April in Amsterdam (still 31 March in UTC).
fn cdr_export() -> Vec<u8> {
    let mut csv = String::from("record_id,msisdn,start_time,event_type,direction,called_number,duration_seconds,data_bytes,units,charge_cents,roaming_zone\n");
    for i in 0..40 {
        csv.push_str(&format!(
            "v{i},0600000001,2025-03-{:02}T10:00:00+01:00,VOICE,MO,+31201234567,60,0,0,30.85,HOME\n",
            1 + i % 28
        ));
    }
    for i in 0..45 {
        csv.push_str(&format!(
            "d{i},0600000002,2025-03-{:02}T12:00:00+01:00,DATA,MO,internet,0,1048576,0,18,HOME\n",
            1 + i % 28
        ));
    }
    csv.push_str(
        "feb,0600000001,2025-02-27T10:00:00+01:00,VOICE,MO,+31201234567,60,0,0,100,HOME\n",
    );
    csv.push_str(
        "apr,0600000001,2025-04-01T00:30:00+02:00,VOICE,MO,+31201234567,60,0,0,100,HOME\n",
    );
    csv.into_bytes()
}

struct Fixture {
    pool: PgPool,
    audit: PgAudit,
    _rejects: TempDir,
}

struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn fixture() -> Fixture {
    let db = fresh().await;
    apply(&db.pool, CATALOG).await.expect("the catalog applies");
    let dir = std::env::temp_dir().join(format!("tem-audit-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("a temp dir");
    let importer = Importer::new(
        db.pool.clone(),
        Arc::new(LocalRejects::new(&dir)),
        ZipLimits::default(),
    );
    let key = "inbox/kpn_een/1/2025-03-31/export.csv";
    let source: Arc<dyn RangeRead> = Arc::new(MemorySource::named(key, cdr_export()));
    let summary = importer
        .import(
            source,
            &ImportRequest {
                bucket: "test".into(),
                key: key.into(),
                provider: Provider::KpnEen,
                profile_id: None,
                deadline: None,
            },
        )
        .await
        .expect("the CDR export imports");
    assert_eq!(summary.loaded, 87, "{summary:?}");
    Fixture {
        audit: PgAudit::new(db.pool.clone()),
        pool: db.pool,
        _rejects: TempDir(dir),
    }
}

fn day(s: &str) -> NaiveDate {
    s.parse().expect("a test date")
}

fn usage(sub: &str, class: ChargeClass, amount: i64, cdrs: u64) -> CarrierLine {
    CarrierLine {
        line: 0,
        subscription: sub.into(),
        charge: CarrierCharge::Usage {
            class,
            amount_micros: amount,
            cdrs: Some(cdrs),
        },
    }
}

fn fee(sub: &str, amount: i64) -> CarrierLine {
    CarrierLine {
        line: 0,
        subscription: sub.into(),
        charge: CarrierCharge::Recurring {
            amount_micros: amount,
        },
    }
}

/// KPN's March invoice for K-1 with the planted differences: ONE's usage
/// is 0.004 over its CDRs (under the one-cent tolerance); TWO is billed 50
/// data records for 9.00 where tem holds 45 for 8.10, and 17.50 against
/// its 15.00 rate; THREE is billed after its termination; FOUR twice.
fn planted() -> CarrierInvoice {
    CarrierInvoice {
        provider: "kpn_een".into(),
        account: "K-1".into(),
        invoice_number: "KPN-2025-03-0001".into(),
        file: FILE.into(),
        period_start: day("2025-03-01"),
        period_end: day("2025-04-01"),
        lines: vec![
            usage(ONE, ChargeClass::Voice, 12_344_000, 40), // line 3
            fee(ONE, 15_000_000),                           // 4
            usage(TWO, ChargeClass::Data, 9_000_000, 50),   // 5
            fee(TWO, 17_500_000),                           // 6
            fee(THREE, 15_000_000),                         // 7
            fee(FOUR, 15_000_000),                          // 8
            fee(FOUR, 15_000_000),                          // 9
        ],
    }
}

/// The same invoice as KPN corrected it: TWO's data and rate as agreed.
fn corrected() -> CarrierInvoice {
    let mut invoice = planted();
    invoice.invoice_number = "KPN-2025-03-0001-C".into();
    invoice.lines[2] = usage(TWO, ChargeClass::Data, 8_100_000, 45);
    invoice.lines[3] = fee(TWO, 15_000_000);
    invoice
}

fn file_of(invoice: &CarrierInvoice) -> String {
    let format = CarrierFormat::named("kpn_een").expect("the kpn_een format");
    write_carrier_invoice(&format, invoice, None)
}

async fn run(f: &Fixture, text: &str) -> AuditReport {
    audit_carrier_invoice(
        &f.audit,
        "kpn_een",
        FILE,
        text.as_bytes(),
        DEFAULT_TOLERANCE,
    )
    .await
    .expect("the audit runs")
}

type Row = (String, FindingKind, Option<ChargeClass>, i64, i64, Vec<u32>);

async fn current(f: &Fixture) -> Vec<Row> {
    f.audit
        .findings(&FindingFilter::default())
        .await
        .expect("findings list")
        .into_iter()
        .map(|s| {
            (
                s.subscription,
                s.kind,
                s.class,
                s.billed_micros,
                s.expected_micros,
                s.lines,
            )
        })
        .collect()
}

async fn count(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.expect(sql)
}

fn planted_rows() -> Vec<Row> {
    use ChargeClass::*;
    vec![
        (
            TWO.into(),
            FindingKind::MissingCdrs,
            Some(Data),
            9_000_000,
            8_100_000,
            vec![5],
        ),
        (
            TWO.into(),
            FindingKind::RateOvercharged,
            Some(Fee),
            17_500_000,
            15_000_000,
            vec![6],
        ),
        (
            THREE.into(),
            FindingKind::BilledAfterTermination,
            None,
            15_000_000,
            0,
            vec![7],
        ),
        (
            FOUR.into(),
            FindingKind::BilledTwice,
            Some(Fee),
            30_000_000,
            15_000_000,
            vec![8, 9],
        ),
    ]
}

#[tokio::test]
async fn a_carrier_invoice_with_planted_differences_finds_exactly_those_and_not_the_rounding() {
    let f = fixture().await;
    let report = run(&f, &file_of(&planted())).await;
    assert_eq!(report.rejected, vec![]);
    assert_eq!(report.lines, 7);
    assert_eq!(current(&f).await, planted_rows());
    assert_eq!(report.recorded.findings_created, 4);
    // The overcharge to claim: 0.90 of data, 2.50 of rate, 15.00 after
    // termination and 15.00 twice.
    assert_eq!(report.overcharge_micros(), 33_400_000);

    // The evidence: the CDRs summed (their number and window, in UTC for
    // the Amsterdam period) and the file's lines.
    let stored = f
        .audit
        .findings(&FindingFilter::default())
        .await
        .expect("findings list");
    let missing = &stored[0];
    assert_eq!(missing.cdr_count, Some(45));
    assert_eq!(missing.file_key, FILE);
    assert_eq!(
        missing.cdr_from.map(|t| t.to_rfc3339()),
        Some("2025-02-28T23:00:00+00:00".into())
    );
    assert_eq!(
        missing.cdr_to.map(|t| t.to_rfc3339()),
        Some("2025-03-31T22:00:00+00:00".into())
    );
    let query = missing.cdr_query().expect("a CDR query for usage");
    let held = count(
        &f.pool,
        &query
            .replace("SELECT *", "SELECT count(*)")
            .replace(" ORDER BY started_at", ""),
    )
    .await;
    assert_eq!(held, 45, "{query}");
    assert_eq!(
        count(
            &f.pool,
            "SELECT count(*) FROM carrier_invoice WHERE superseded_by IS NULL"
        )
        .await,
        1
    );
}

#[tokio::test]
async fn reimporting_an_invoice_adds_nothing_and_a_corrected_one_supersedes_its_findings() {
    let f = fixture().await;
    let first = run(&f, &file_of(&planted())).await;
    let ids: Vec<i64> = f
        .audit
        .findings(&FindingFilter::default())
        .await
        .expect("list")
        .iter()
        .map(|s| s.id)
        .collect();
    let rate = ids[1];
    change_status(
        &f.audit,
        rate,
        &StatusChange::Dispute {
            note: Some("claimed with KPN".into()),
        },
    )
    .await
    .expect("an open finding is disputed");

    // The same file again: the same invoice, the same findings.
    let again = run(&f, &file_of(&planted())).await;
    assert_eq!(again.invoice_id, first.invoice_id);
    assert!(again.recorded.reimported);
    assert_eq!(again.recorded.findings_created, 0);
    assert_eq!(again.recorded.findings_removed, 0);
    assert_eq!(
        count(&f.pool, "SELECT count(*) FROM audit_finding").await,
        4
    );
    assert_eq!(
        count(&f.pool, "SELECT count(*) FROM carrier_invoice").await,
        1
    );
    let listed = f
        .audit
        .findings(&FindingFilter::default())
        .await
        .expect("list");
    assert_eq!(listed.iter().map(|s| s.id).collect::<Vec<_>>(), ids);
    assert_eq!(listed[1].status, Status::Disputed);

    // The corrected invoice: TWO's differences are gone; the first
    // invoice's four findings stay, superseded by it.
    let corrected = run(&f, &file_of(&corrected())).await;
    assert_ne!(corrected.invoice_id, first.invoice_id);
    assert_eq!(corrected.recorded.superseded, vec![first.invoice_id]);
    let rows = planted_rows();
    assert_eq!(current(&f).await, vec![rows[2].clone(), rows[3].clone()]);
    let all = f
        .audit
        .findings(&FindingFilter {
            include_superseded: true,
            ..FindingFilter::default()
        })
        .await
        .expect("list");
    assert_eq!(all.len(), 6);
    let old: Vec<_> = all.iter().filter(|s| ids.contains(&s.id)).collect();
    assert_eq!(old.len(), 4);
    assert!(old
        .iter()
        .all(|s| s.superseded_by == Some(corrected.invoice_id)));
    assert_eq!(
        old.iter().find(|s| s.id == rate).map(|s| s.status),
        Some(Status::Disputed)
    );
    let refused = change_status(&f.audit, rate, &StatusChange::WrittenOff { note: None })
        .await
        .expect_err("a superseded finding does not change");
    assert!(
        matches!(refused, DisputeError::Superseded { .. }),
        "{refused}"
    );
    assert_eq!(
        count(
            &f.pool,
            &format!(
                "SELECT count(*) FROM carrier_invoice WHERE id = {} AND superseded_by = {}",
                first.invoice_id, corrected.invoice_id
            )
        )
        .await,
        1
    );

    // The first file fetched once more: superseded, so nothing changes.
    let late = run(&f, &file_of(&planted())).await;
    assert_eq!(late.superseded_by, Some(corrected.invoice_id));
    assert_eq!(
        count(&f.pool, "SELECT count(*) FROM audit_finding").await,
        6
    );
    assert_eq!(current(&f).await.len(), 2);
}

#[tokio::test]
async fn an_unknown_subscription_a_malformed_line_and_a_wrong_total_become_findings_and_rejections()
{
    let f = fixture().await;
    let mut invoice = corrected();
    invoice.lines.push(fee("+31699999999", 9_000_000)); // line 10
    let format = CarrierFormat::named("kpn_een").expect("format");
    let text = write_carrier_invoice(&format, &invoice, Some(999_999_999));
    // A line the carrier wrote wrong, after line 5.
    let mut lines: Vec<&str> = text.lines().collect();
    lines.insert(5, "USG,,,,,+31600000001,VOICE,3,twelve");
    let text = lines.join("\n") + "\n";
    let report = run(&f, &text).await;
    assert_eq!(report.rejected.len(), 1);
    assert_eq!(report.rejected[0].line, 6);
    assert!(
        report.rejected[0].reason.starts_with("amount:"),
        "{:?}",
        report.rejected
    );
    let kinds: Vec<(String, FindingKind)> = current(&f)
        .await
        .into_iter()
        .map(|(sub, kind, ..)| (sub, kind))
        .collect();
    assert_eq!(
        kinds,
        vec![
            (String::new(), FindingKind::TotalsMismatch),
            (THREE.into(), FindingKind::BilledAfterTermination),
            (FOUR.into(), FindingKind::BilledTwice),
            ("+31699999999".into(), FindingKind::BilledNotActive),
        ]
    );
    let stored: Vec<serde_json::Value> = sqlx::query_scalar("SELECT rejected FROM carrier_invoice")
        .fetch_all(&f.pool)
        .await
        .expect("rejected lines are stored");
    assert_eq!(stored[0][0]["line"], 6);
}

#[tokio::test]
async fn buy_rates_apply_idempotently_and_a_changed_rate_is_an_update() {
    let f = fixture().await;
    let again = apply(&f.pool, CATALOG).await.expect("applies again");
    assert!(again.changes.iter().all(|c| c.action == Action::Unchanged));
    let raised = CATALOG.replace(
        "valid_from: 2025-04-01, recurring_micros: 17500000",
        "valid_from: 2025-04-01, recurring_micros: 18000000",
    );
    let applied = apply(&f.pool, &raised).await.expect("applies");
    let updated: Vec<String> = applied
        .changes
        .iter()
        .filter(|c| c.action == Action::Updated)
        .map(|c| format!("{} {}: {}", c.object, c.key, c.fields[0]))
        .collect();
    assert_eq!(
        updated,
        vec!["buy_rate kpn_een K-1 +31600000002 from 2025-04-01: recurring_micros: 17500000 -> 18000000"]
    );
    assert_eq!(
        count(
            &f.pool,
            "SELECT recurring_micros FROM buy_rate WHERE valid_from = '2025-04-01'"
        )
        .await,
        18_000_000
    );
}

/// The bucket as the step sees it: one carrier invoice object.
struct OneObject(Vec<u8>);

impl tem_shared::import::handler::ObjectSource for OneObject {
    fn open(&self, bucket: &str, key: &str) -> Arc<dyn RangeRead> {
        Arc::new(MemorySource::named(
            format!("s3://{bucket}/{key}"),
            self.0.clone(),
        ))
    }
}

#[tokio::test]
async fn the_s3_notification_of_a_carrier_invoice_runs_the_audit_step_on_the_import_function() {
    use tem_shared::import::handler::{Auditing, CdrImport};
    use tem_shared::import::notification::{adapt_body, Adapted};
    use tem_shared::runtime::{Delivery, StepHandler};

    let f = fixture().await;
    let key = "carrier-invoices/kpn_een/1/2025-03-01.csv";
    let notification = serde_json::json!({"Records": [{
        "eventSource": "aws:s3",
        "s3": {"bucket": {"name": "cdr"}, "object": {"key": key, "size": 10, "eTag": "e1"}}
    }]});
    let Adapted::Envelope(body) = adapt_body(&notification.to_string(), chrono::Utc::now()) else {
        panic!("a notification becomes an envelope");
    };
    let envelope = tem_shared::envelope::Envelope::parse(&body).expect("an envelope");
    let handler = CdrImport::new(
        Importer::new(
            f.pool.clone(),
            Arc::new(LocalRejects::new(std::env::temp_dir())),
            ZipLimits::default(),
        ),
        Arc::new(OneObject(file_of(&planted()).into_bytes())),
        f.pool.clone(),
    )
    .with_audit(Auditing {
        store: Arc::new(PgAudit::new(f.pool.clone())),
        tolerance: DEFAULT_TOLERANCE,
    });
    let delivery = || Delivery {
        receive_count: 1,
        deadline: chrono::Utc::now() + Duration::minutes(5),
    };
    handler
        .handle(&envelope, delivery())
        .await
        .expect("the audit step succeeds");
    assert_eq!(current(&f).await, planted_rows());
    let file_key: String = sqlx::query_scalar("SELECT file_key FROM carrier_invoice")
        .fetch_one(&f.pool)
        .await
        .expect("one carrier invoice");
    assert_eq!(file_key, key);
    // Redelivered: the same findings, no more.
    handler
        .handle(&envelope, delivery())
        .await
        .expect("the audit step succeeds again");
    assert_eq!(
        count(&f.pool, "SELECT count(*) FROM audit_finding").await,
        4
    );
}
