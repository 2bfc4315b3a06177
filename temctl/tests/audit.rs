//! `temctl audit` run as a process against a fresh PostgreSQL database:
//! subscriptions and buy rates applied with `temctl apply`, CDRs loaded
//! with `temctl import`, a kpn_een carrier invoice audited with `temctl
//! audit import`, its findings listed, shown, disputed and resolved, and
//! the dispute report written.

mod support;

use serde_json::Value;
use support::{stderr, stdout, temctl, TempDir};
use tem_tests::db::fresh;

const CATALOG: &str = r#"
customers:
  - {code: acme, name: Acme, billing_cycle_start_day: 1}
subscriptions:
  - {identifier: "+31600000001", customer: acme, provider: kpn_een, active_from: 2024-01-01}
  - {identifier: "+31600000002", customer: acme, provider: kpn_een, active_from: 2024-01-01, active_to: 2025-02-14}
buy_rates:
  - {provider: kpn_een, account: K-1, subscription: "+31600000001", valid_from: 2024-01-01, recurring_micros: 15000000}
  - {provider: kpn_een, account: K-1, subscription: "+31600000002", valid_from: 2024-01-01, recurring_micros: 15000000}
"#;

/// ONE's three March calls cost 1.50 in all.
const CDRS: &str = "record_id,msisdn,start_time,event_type,direction,called_number,duration_seconds,data_bytes,units,charge_cents,roaming_zone
c1,0600000001,2025-03-02T10:00:00+01:00,VOICE,MO,+31201234567,60,0,0,50,HOME
c2,0600000001,2025-03-03T10:00:00+01:00,VOICE,MO,+31201234567,60,0,0,50,HOME
c3,0600000001,2025-03-04T10:00:00+01:00,VOICE,MO,+31201234567,60,0,0,50,HOME
";

/// KPN bills ONE's voice at 2.00 for 4 calls and 17.50 a month (rate
/// 15.00), and TWO after its termination.
const INVOICE: &str = "record_type,account,invoice_number,period_start,period_end,msisdn,charge_type,record_count,amount_cents
HDR,K-1,KPN-2025-03,2025-03-01,2025-04-01,,,,
USG,,,,,+31600000001,VOICE,4,200
REC,,,,,+31600000001,,,1750
REC,,,,,+31600000002,,,1500
TOT,,,,,,,,3450
";

#[tokio::test]
async fn audit_finds_disputes_resolves_and_reports_a_carriers_overcharges() {
    let db = fresh().await;
    let dir = TempDir::new();
    let url = Some(db.url.as_str());
    let catalog = dir.write("catalog.yaml", CATALOG.as_bytes());
    let output = temctl(url, &dir.0, &["apply", "-f", catalog.to_str().unwrap()]);
    assert!(output.status.success(), "stderr: {}", stderr(&output));
    let cdrs = dir.write("march.csv", CDRS.as_bytes());
    let output = temctl(
        url,
        &dir.0,
        &[
            "import",
            "--provider",
            "kpn_een",
            "--json",
            cdrs.to_str().unwrap(),
        ],
    );
    assert!(output.status.success(), "stderr: {}", stderr(&output));

    let invoice = dir.write("2025-03.csv", INVOICE.as_bytes());
    let output = temctl(
        url,
        &dir.0,
        &[
            "audit",
            "import",
            "--provider",
            "kpn_een",
            invoice.to_str().unwrap(),
        ],
    );
    assert!(output.status.success(), "stderr: {}", stderr(&output));
    let text = stdout(&output);
    assert!(
        text.contains(
            "3 findings (3 new, 0 updated, 0 no longer found); overcharge to claim 18.000000"
        ),
        "{text}"
    );

    let output = temctl(url, &dir.0, &["audit", "list", "--json"]);
    assert!(output.status.success(), "stderr: {}", stderr(&output));
    let findings: Vec<Value> = stdout(&output)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    let kinds: Vec<(&str, &str)> = findings
        .iter()
        .map(|f| {
            (
                f["subscription"].as_str().unwrap(),
                f["kind"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        vec![
            ("+31600000001", "missing_cdrs"),
            ("+31600000001", "rate_overcharged"),
            ("+31600000002", "billed_after_termination"),
        ]
    );
    let id = |i: usize| findings[i]["id"].as_i64().unwrap().to_string();

    let output = temctl(url, &dir.0, &["audit", "show", &id(0)]);
    let text = stdout(&output);
    assert!(
        text.contains("billed 2.000000, expected 1.500000, overcharge 0.500000"),
        "{text}"
    );
    assert!(
        text.contains("evidence: carrier-invoices/kpn_een/2025-03.csv line(s) 3"),
        "{text}"
    );
    assert!(text.contains("CDRs held: 3"), "{text}");
    assert!(text.contains("SELECT * FROM call_detail_record WHERE provider = 'kpn_een' AND subscription = '+31600000001' AND kind = 'voice'"), "{text}");

    let output = temctl(
        url,
        &dir.0,
        &["audit", "dispute", &id(1), "--note", "ticket 42"],
    );
    assert!(output.status.success(), "stderr: {}", stderr(&output));
    assert_eq!(
        stdout(&output),
        format!("finding {} disputed: claim 2.500000 from kpn_een\n", id(1))
    );
    let output = temctl(
        url,
        &dir.0,
        &["audit", "resolve", &id(1), "--credited", "2.50"],
    );
    assert!(output.status.success(), "stderr: {}", stderr(&output));
    assert_eq!(
        stdout(&output),
        format!("finding {} credited: recovered 2.500000\n", id(1))
    );
    let output = temctl(url, &dir.0, &["audit", "resolve", &id(2), "--written-off"]);
    assert!(output.status.success(), "stderr: {}", stderr(&output));

    // Only the open finding with an overcharge is left to claim.
    let output = temctl(
        url,
        &dir.0,
        &["audit", "report", "kpn_een", "--period", "2025-03-01"],
    );
    assert!(output.status.success(), "stderr: {}", stderr(&output));
    let report = stdout(&output);
    let rows: Vec<&str> = report.lines().collect();
    assert_eq!(rows.len(), 2, "{report}");
    assert!(rows[0].starts_with("finding,provider,account,"), "{report}");
    assert_eq!(
        rows[1],
        format!("{},kpn_een,K-1,KPN-2025-03,2025-03-01,2025-03-31,+31600000001,missing_cdrs,voice,2.000000,1.500000,0.500000,open,carrier-invoices/kpn_een/2025-03.csv,3,3,", id(0))
    );

    // Wrong uses say what to do.
    let output = temctl(url, &dir.0, &["audit", "resolve", &id(1), "--written-off"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("is credited already"),
        "{}",
        stderr(&output)
    );
    let output = temctl(
        url,
        &dir.0,
        &["audit", "resolve", &id(0), "--credited", "2,50"],
    );
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("write euros with a point"),
        "{}",
        stderr(&output)
    );
    let output = temctl(url, &dir.0, &["audit", "show", "999999"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("temctl audit list"),
        "{}",
        stderr(&output)
    );
}
