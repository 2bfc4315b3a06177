//! The carrier drivers against the simulator over real HTTP: what a carrier's
//! answers mean for retries.

use std::time::Duration;

use chrono::NaiveDate;
use serde_json::json;
use tem_shared::command::{Command, RoutitExport, SyncPeriod};
use tem_shared::envelope::Step;
use tem_shared::routing::Provider;
use tem_shared::runtime::StepError;
use tem_shared::sync::drivers::{driver_for, Access, Credentials, HttpClient, Progress, Start};

const TOKEN: &str = "driver-test-token";

fn day() -> NaiveDate {
    "2025-03-30".parse().unwrap()
}

/// One step of a Routit export of `day()`, with the export id handed on so far.
fn routit(step: Step, export_id: Option<&str>) -> Command {
    let export = RoutitExport {
        sync: SyncPeriod {
            provider: Provider::Routit,
            profile_id: 1,
            period: day(),
        },
        reference: "task-9".into(),
        export_id: export_id.map(str::to_string),
    };
    Command::routit(step, export).expect("a Routit step")
}

fn access(sim: &provider_sim::SimHandle, provider: &str, token: &str) -> Access {
    Access {
        base_url: sim.base_url(provider),
        credentials: Credentials::Token {
            token: token.into(),
        },
    }
}

async fn control(sim: &provider_sim::SimHandle, provider: &str, behaviour: serde_json::Value) {
    reqwest::Client::new()
        .put(format!("http://{}/_control/{provider}", sim.addr))
        .json(&behaviour)
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap();
}

async fn sim() -> provider_sim::SimHandle {
    provider_sim::start("127.0.0.1:0".parse().unwrap(), TOKEN)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_direct_carrier_export_is_fetched_with_its_export_id() {
    let sim = sim().await;
    let driver = driver_for(Provider::TMobile, HttpClient::new(Duration::from_secs(5)));
    let Start::Fetched(export) = driver
        .start(&access(&sim, "t_mobile", TOKEN), day(), "r")
        .await
        .unwrap()
    else {
        panic!("t_mobile fetches at once");
    };
    assert_eq!(export.export_id, "t_mobile-2025-03-30");
    assert_eq!(
        export.bytes,
        provider_sim::export_zip("t_mobile", day(), 20).unwrap()
    );
}

#[tokio::test]
async fn basic_credentials_work_too() {
    let sim = sim().await;
    let driver = driver_for(Provider::Telfort, HttpClient::new(Duration::from_secs(5)));
    let access = Access {
        base_url: sim.base_url("telfort"),
        credentials: Credentials::Basic {
            username: "acme".into(),
            password: TOKEN.into(),
        },
    };
    assert!(matches!(
        driver.start(&access, day(), "r").await.unwrap(),
        Start::Fetched(_)
    ));
}

#[tokio::test]
async fn wrong_credentials_are_permanent_and_say_where_to_look() {
    let sim = sim().await;
    let driver = driver_for(Provider::Vodafone, HttpClient::new(Duration::from_secs(5)));
    let err = driver
        .start(&access(&sim, "vodafone", "wrong"), day(), "r")
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StepError::Permanent(reason) if reason.contains("401") && reason.contains("credentials")),
        "{err:?}"
    );
}

#[tokio::test]
async fn carrier_errors_and_slow_answers_are_retryable() {
    let sim = sim().await;
    let driver = driver_for(
        Provider::KpnSp16,
        HttpClient::new(Duration::from_millis(500)),
    );
    control(&sim, "kpn_sp16", json!({"fail_with": 503})).await;
    let err = driver
        .start(&access(&sim, "kpn_sp16", TOKEN), day(), "r")
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StepError::Retryable(reason) if reason.contains("503")),
        "{err:?}"
    );

    control(&sim, "kpn_sp16", json!({"delay_ms": 2000})).await;
    let err = driver
        .start(&access(&sim, "kpn_sp16", TOKEN), day(), "r")
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StepError::Retryable(reason) if reason.contains("unreachable")),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_carrier_that_cannot_be_reached_at_all_is_retryable() {
    let driver = driver_for(
        Provider::Yielder,
        HttpClient::new(Duration::from_millis(500)),
    );
    let access = Access {
        base_url: "http://127.0.0.1:9/yielder".into(),
        credentials: Credentials::Token {
            token: TOKEN.into(),
        },
    };
    assert!(matches!(
        driver.start(&access, day(), "r").await.unwrap_err(),
        StepError::Retryable(_)
    ));
}

#[tokio::test]
async fn routit_requests_are_idempotent_by_reference_and_polls_report_readiness() {
    let sim = sim().await;
    control(&sim, "routit", json!({"not_ready_polls": 1})).await;
    let driver = driver_for(Provider::Routit, HttpClient::new(Duration::from_secs(5)));
    let access = access(&sim, "routit", TOKEN);
    let request = routit(Step::RoutitRequestExport, None);
    let first = driver.step(&request, &access).await.unwrap();
    let again = driver.step(&request, &access).await.unwrap();
    assert_eq!(first, again, "a retried request returns the same export");
    let Progress::Output(output) = first else {
        panic!("request hands on the export id")
    };
    let poll = routit(Step::RoutitPollExport, Some(&output.export_id));

    assert_eq!(
        driver.step(&poll, &access).await.unwrap(),
        Progress::NotReady
    );
    assert_eq!(
        driver.step(&poll, &access).await.unwrap(),
        Progress::Output(output.clone())
    );
    let Progress::Fetched(export) = driver
        .step(
            &routit(Step::RoutitDownloadExport, Some(&output.export_id)),
            &access,
        )
        .await
        .unwrap()
    else {
        panic!("download fetches the export");
    };
    assert_eq!(export.export_id, output.export_id);
    assert_eq!(
        export.bytes,
        provider_sim::export_zip("routit", day(), 20).unwrap()
    );
}

#[tokio::test]
async fn a_routit_step_without_its_export_id_is_a_permanent_error() {
    let sim = sim().await;
    let driver = driver_for(Provider::Routit, HttpClient::new(Duration::from_secs(5)));
    let err = driver
        .step(
            &routit(Step::RoutitPollExport, None),
            &access(&sim, "routit", TOKEN),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StepError::Permanent(reason) if reason.contains("export_id")),
        "{err:?}"
    );
}

#[tokio::test]
async fn every_carriers_invoice_is_fetched_and_reads_with_its_format_adding_up_to_its_total() {
    use tem_shared::audit::format::CarrierFormat;
    use tem_shared::audit::parse::read_carrier_invoice;

    let sim = sim().await;
    let http = HttpClient::new(Duration::from_secs(5));
    let month: NaiveDate = "2025-03-01".parse().unwrap();
    for provider in Provider::ALL {
        let name = provider.as_str();
        control(&sim, name, json!({"rows": 30, "subscribers": 4})).await;
        let bytes = http
            .carrier_invoice(&access(&sim, name, TOKEN), month)
            .await
            .expect("the invoice is fetched")
            .expect("the simulator issues it");
        let format = CarrierFormat::for_provider(provider).unwrap();
        let file = read_carrier_invoice(bytes.as_slice(), &format, "k").unwrap();
        assert_eq!(file.rejected, vec![], "{name}");
        assert_eq!(file.totals_finding(), None, "{name}");
        assert_eq!(file.invoice.account, format!("SIM-{name}"));
        assert_eq!(
            (file.invoice.period_start, file.invoice.period_end),
            (month, "2025-04-01".parse().unwrap()),
            "{name}"
        );
        // Four subscribers, each with a usage and a recurring line.
        assert_eq!(file.invoice.lines.len(), 8, "{name}");
        // 30 rows a day over 31 days.
        let records: u64 = file
            .invoice
            .lines
            .iter()
            .filter_map(|l| match l.charge {
                tem_shared::audit::CarrierCharge::Usage { cdrs, .. } => cdrs,
                _ => None,
            })
            .sum();
        assert_eq!(records, 30 * 31, "{name}");
    }
    // Not a month's first day: refused, permanently.
    let err = http
        .carrier_invoice(&access(&sim, "kpn_een", TOKEN), day())
        .await
        .unwrap_err();
    assert!(matches!(err, StepError::Permanent(_)), "{err}");
}
