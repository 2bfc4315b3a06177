//! `temctl apply` run as a process against a fresh PostgreSQL database.

mod support;

use std::path::Path;
use std::process::{Command, Output};

use chrono::{Months, NaiveDate, Utc};
use serde_json::Value;
use support::{stderr, stdout, TempDir};
use tem_tests::db::fresh;

const PLAN: &str = r#"
rate_plans:
  - id: business
    name: Business
    unit_bytes: 1048576
    monthly_fee_micros: 12500000
    rates:
      - {id: voice-nl, kind: voice, zone: home, prefix: "31", price_per_minute_micros: 100000, first_increment_s: 60, increment_s: 1}
      - {id: sms, kind: sms, price_per_message_micros: 90000}
    bundles:
      - {id: minutes, kinds: [voice], zones: [home], allowance: 6000, scope: per_subscription}
"#;

const REST: &str = r#"
customers:
  - {code: acme, name: Acme Logistics, billing_cycle_start_day: 1, time_zone: Europe/Amsterdam, rate_plan: business}
  - {code: bakker, name: Bakkerij de Vries, billing_cycle_start_day: 15}
subscriptions:
  - {identifier: "+31612345678", customer: acme, provider: routit}
  - {identifier: "+31612345679", customer: bakker, provider: t_mobile, active_from: 2025-01-01, active_to: 2025-12-31}
  - {identifier: LINE-0042, customer: bakker, provider: kpn_een}
sync_profiles:
  - name: routit main
    provider: routit
    base_url: "${TEST_CARRIER_URL}/routit"
    credentials_secret: tem/routit/main
    first_period: 2025-01-01
"#;

fn file() -> String {
    format!("{PLAN}{REST}")
}

/// `temctl` with DATABASE_URL, the placeholder the files use, no queues
/// and `extra` environment variables.
fn temctl(url: &str, cwd: &Path, args: &[&str], extra: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_temctl"));
    command
        .args(args)
        .current_dir(cwd)
        .env("DATABASE_URL", url)
        .env("TEST_CARRIER_URL", "http://carrier.test")
        .env_remove("QUEUE_URL_TOTALS")
        .env_remove("QUEUE_URL_IMPORT")
        .env_remove("INVOICE_GRACE_DAYS");
    for (name, value) in extra {
        command.env(name, value);
    }
    command.output().expect("run temctl")
}

fn json(output: &Output) -> Value {
    let text = stdout(output);
    assert_eq!(
        text.lines().count(),
        1,
        "one JSON object on stdout: {text:?}"
    );
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("stdout is JSON ({e}): {text:?}"))
}

async fn count(pool: &sqlx::PgPool, table: &str) -> i64 {
    sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
        .fetch_one(pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_file_applies_and_a_second_apply_reports_0_changed() {
    let db = fresh().await;
    let dir = TempDir::new();
    dir.write("catalog.yaml", file().as_bytes());

    let first = temctl(&db.url, &dir.0, &["apply", "-f", "catalog.yaml"], &[]);

    assert!(first.status.success(), "stderr: {}", stderr(&first));
    let text = stdout(&first);
    assert!(
        text.contains("7 changed (7 created, 0 updated), 0 unchanged"),
        "{text}"
    );
    assert!(
        text.contains("objects in the database but not in the file were left alone"),
        "{text}"
    );
    let (plan, day, zone, name): (Option<String>, i16, String, String) = sqlx::query_as(
        "SELECT rate_plan_id, billing_cycle_start_day, time_zone, name FROM customer WHERE code = 'acme'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        (plan.as_deref(), day, zone.as_str(), name.as_str()),
        (Some("business"), 1, "Europe/Amsterdam", "Acme Logistics")
    );
    let stored: Value = sqlx::query_scalar("SELECT plan FROM rate_plan WHERE id = 'business'")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    let plan: tem_shared::billing::rating::RatePlan = serde_json::from_value(stored).unwrap();
    assert_eq!(plan.bundles[0].allowance, 6000);
    assert_eq!(plan.monthly_fee_micros, 12_500_000);
    let (owner, to): (String, Option<NaiveDate>) = sqlx::query_as(
        "SELECT c.code, s.active_to FROM subscription s JOIN customer c ON c.id = s.customer_id
         WHERE s.provider = 't_mobile' AND s.identifier = '+31612345679' AND s.active_from = '2025-01-01'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!((owner.as_str(), to), ("bakker", "2025-12-31".parse().ok()));
    let base_url: String =
        sqlx::query_scalar("SELECT base_url FROM sync_profile WHERE name = 'routit main'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(
        base_url, "http://carrier.test/routit",
        "the placeholder was filled in"
    );
    // New subscriptions may own CDRs that arrived before them.
    assert!(
        text.contains("attach CDRs without a customer: 3 subscription(s) added or changed"),
        "{text}"
    );
    assert!(
        text.contains(
            "not sent (QUEUE_URL_IMPORT is not set); invoke the cdr-import function with {"
        ),
        "{text}"
    );
    assert!(stderr(&first).starts_with(
        "warning: 1 follow-up message(s) not sent because QUEUE_URL_IMPORT is not set"
    ));

    let second = temctl(&db.url, &dir.0, &["apply", "-f", "catalog.yaml"], &[]);

    assert!(second.status.success(), "stderr: {}", stderr(&second));
    let text = stdout(&second);
    assert!(
        text.contains("0 changed (0 created, 0 updated), 7 unchanged"),
        "{text}"
    );
    assert!(!text.contains("follow-up"), "nothing to follow up: {text}");
    assert_eq!(stderr(&second), "");
    assert_eq!(count(&db.pool, "customer").await, 2);
    assert_eq!(count(&db.pool, "subscription").await, 3);
    assert_eq!(
        count(&db.pool, "catalog_apply").await,
        1,
        "only the apply that changed something is recorded"
    );
}

#[tokio::test]
async fn an_update_lists_the_changed_fields_and_leaves_objects_outside_the_file_alone() {
    let db = fresh().await;
    let dir = TempDir::new();
    dir.write("catalog.yaml", file().as_bytes());
    assert!(
        temctl(&db.url, &dir.0, &["apply", "-f", "catalog.yaml"], &[])
            .status
            .success()
    );
    let changed = file()
        .replace(
            "name: Bakkerij de Vries, billing_cycle_start_day: 15",
            "name: Bakkerij De Vries BV, billing_cycle_start_day: 15",
        )
        .replace(
            "  - {identifier: LINE-0042, customer: bakker, provider: kpn_een}\n",
            "",
        );
    dir.write("catalog.yaml", changed.as_bytes());

    let output = temctl(
        &db.url,
        &dir.0,
        &["apply", "-f", "catalog.yaml", "--json"],
        &[],
    );

    assert!(output.status.success(), "stderr: {}", stderr(&output));
    let result = json(&output);
    assert_eq!(result["changed"], 1);
    assert_eq!(result["unchanged"], 5);
    let bakker = result["changes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["key"] == "bakker")
        .unwrap();
    assert_eq!(bakker["action"], "updated");
    assert_eq!(
        bakker["fields"],
        serde_json::json!([{"field": "name", "from": "Bakkerij de Vries", "to": "Bakkerij De Vries BV"}])
    );
    assert_eq!(
        result["follow_up"],
        serde_json::json!([]),
        "a new name re-rates nothing"
    );
    assert_eq!(
        count(&db.pool, "subscription").await,
        3,
        "the line left out of the file stays"
    );
}

#[tokio::test]
async fn a_dry_run_prints_the_changes_and_writes_nothing() {
    let db = fresh().await;
    let dir = TempDir::new();
    dir.write("catalog.yaml", file().as_bytes());

    let output = temctl(
        &db.url,
        &dir.0,
        &["apply", "-f", "catalog.yaml", "--dry-run"],
        &[],
    );

    assert!(output.status.success(), "stderr: {}", stderr(&output));
    let text = stdout(&output);
    assert!(
        text.contains("(dry run: nothing is written or sent)"),
        "{text}"
    );
    assert!(text.contains("customer     acme"), "{text}");
    assert!(
        text.contains("7 changed (7 created, 0 updated), 0 unchanged, dry run: rolled back"),
        "{text}"
    );
    assert!(text.contains("would be sent"), "{text}");
    assert_eq!(
        stderr(&output),
        "",
        "a dry run sends nothing, so nothing is left unsent"
    );
    for table in [
        "customer",
        "subscription",
        "rate_plan",
        "sync_profile",
        "catalog_apply",
    ] {
        assert_eq!(count(&db.pool, table).await, 0, "{table}");
    }

    let real = temctl(&db.url, &dir.0, &["apply", "-f", "catalog.yaml"], &[]);
    assert!(
        stdout(&real).contains("7 changed (7 created"),
        "the dry run left nothing behind"
    );
}

#[tokio::test]
async fn a_file_with_several_mistakes_reports_each_with_its_field_path_and_writes_nothing() {
    let db = fresh().await;
    let dir = TempDir::new();
    let broken = file()
        .replace("billing_cycle_start_day: 15", "billing_cycle_start_day: 31")
        .replace(
            "first_increment_s: 60, increment_s: 1",
            "first_increment_s: 60, increment_s: 0",
        )
        .replace(
            "customer: bakker, provider: kpn_een",
            "customer: ghost, provider: kpn_een",
        )
        .replace("provider: t_mobile", "provider: tmobile")
        .replace("identifier: \"+31612345678\"", "identifier: \"0612345678\"")
        .replace("time_zone: Europe/Amsterdam", "time_zone: Europe/Amsterdm");
    dir.write("catalog.yaml", broken.as_bytes());

    let output = temctl(&db.url, &dir.0, &["apply", "-f", "catalog.yaml"], &[]);

    assert_eq!(output.status.code(), Some(1));
    assert_eq!(stdout(&output), "");
    let err = stderr(&output);
    assert!(
        err.starts_with("error: catalog.yaml: 6 problem(s), nothing was written:\n"),
        "{err}"
    );
    for expected in [
        "rate_plans[0].rates[0].increment_s: must be > 0 for voice",
        "customers[0].time_zone: \"Europe/Amsterdm\" is not an IANA time zone name",
        "customers[1].billing_cycle_start_day: 31 is not between 1 and 28",
        "subscriptions[0].identifier: \"0612345678\" looks like a phone number but is not E.164",
        "subscriptions[1].provider: \"tmobile\" is not a known provider; known providers: ",
        "subscriptions[2].customer: no customer \"ghost\" in this file or the database",
    ] {
        assert!(err.contains(expected), "{expected:?} in:\n{err}");
    }
    for table in ["customer", "subscription", "rate_plan", "sync_profile"] {
        assert_eq!(
            count(&db.pool, table).await,
            0,
            "{table}: not even the valid entries"
        );
    }
}

#[tokio::test]
async fn an_unknown_field_is_an_error_naming_its_path() {
    let db = fresh().await;
    let dir = TempDir::new();
    let with_typo = file().replace(
        "price_per_message_micros: 90000",
        "price_per_message: 90000",
    );
    dir.write("catalog.yaml", with_typo.as_bytes());

    let output = temctl(&db.url, &dir.0, &["apply", "-f", "catalog.yaml"], &[]);

    assert_eq!(output.status.code(), Some(1));
    let err = stderr(&output);
    assert!(
        err.contains("  rate_plans[0].rates[1].price_per_message: unknown field; expected one of "),
        "{err}"
    );
    assert!(
        err.contains("price_per_message_micros"),
        "the right name is offered: {err}"
    );
    assert_eq!(count(&db.pool, "rate_plan").await, 0);
}

#[tokio::test]
async fn an_unset_placeholder_is_an_error_naming_the_variable() {
    let db = fresh().await;
    let dir = TempDir::new();
    dir.write("catalog.yaml", file().as_bytes());

    let output = temctl(
        &db.url,
        &dir.0,
        &["apply", "-f", "catalog.yaml"],
        &[("TEST_CARRIER_URL", "")],
    );

    assert_eq!(output.status.code(), Some(1));
    let err = stderr(&output);
    assert!(
        err.contains(
            "${TEST_CARRIER_URL} is not set; set the environment variable TEST_CARRIER_URL"
        ),
        "{err}"
    );
    assert_eq!(count(&db.pool, "sync_profile").await, 0);
}

async fn totals_row(pool: &sqlx::PgPool, customer: i64, cycle: NaiveDate) {
    sqlx::query(
        "INSERT INTO totals (customer_id, cycle, method, rate_plan_id, cdr_count, voice_seconds, data_bytes, messages,
                             provider_cost_micros, rated_cost_micros, unrated_count)
         VALUES ($1, $2, 'rate_plan', 'business', 1, 60, 0, 0, 100000, 100000, 0)",
    )
    .bind(customer)
    .bind(cycle)
    .execute(pool)
    .await
    .unwrap();
}

#[tokio::test]
async fn a_changed_rate_plan_lists_the_open_cycles_to_rerate_but_not_a_cycle_long_past() {
    let db = fresh().await;
    let dir = TempDir::new();
    dir.write("catalog.yaml", file().as_bytes());
    assert!(
        temctl(&db.url, &dir.0, &["apply", "-f", "catalog.yaml"], &[])
            .status
            .success()
    );
    let acme: i64 = sqlx::query_scalar("SELECT id FROM customer WHERE code = 'acme'")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    let current = tem_shared::cdr::cycle_of(Utc::now(), 1, chrono_tz::Europe::Amsterdam);
    let previous = current - Months::new(1);
    let long_past: NaiveDate = "2020-01-01".parse().unwrap();
    for cycle in [long_past, previous] {
        totals_row(&db.pool, acme, cycle).await;
    }
    // A grace period longer than a month keeps the previous cycle open
    // whatever the day the test runs on.
    let grace = [("INVOICE_GRACE_DAYS", "40")];
    dir.write(
        "catalog.yaml",
        file()
            .replace(
                "price_per_minute_micros: 100000",
                "price_per_minute_micros: 120000",
            )
            .as_bytes(),
    );

    let dry = temctl(
        &db.url,
        &dir.0,
        &["apply", "-f", "catalog.yaml", "--dry-run", "--json"],
        &grace,
    );
    let output = temctl(&db.url, &dir.0, &["apply", "-f", "catalog.yaml"], &grace);

    assert!(output.status.success(), "stderr: {}", stderr(&output));
    let text = stdout(&output);
    assert!(
        text.contains("updated (rates[voice-nl].price_per_minute_micros: 100000 -> 120000)"),
        "{text}"
    );
    for cycle in [previous, current] {
        let line =
            format!("re-rate customer acme (#{acme}) cycle {cycle}: rate plan business changed");
        assert!(text.contains(&line), "{line:?} in:\n{text}");
        let console = format!(
            "not sent (QUEUE_URL_TOTALS is not set); invoke the totals function with {{\"cause\":\"rerating\",\"customer_id\":{acme},\"cycle\":\"{cycle}\"}}"
        );
        assert!(text.contains(&console), "{console:?} in:\n{text}");
    }
    assert!(
        !text.contains("2020-01-01"),
        "a cycle long past is not re-rated:\n{text}"
    );
    assert!(
        !text.contains("re-rate customer bakker"),
        "a customer on no plan is not re-rated:\n{text}"
    );
    assert!(
        stderr(&output).starts_with("warning: 2 follow-up message(s) not sent because QUEUE_URL_TOTALS is not set; the data is applied"),
        "{}",
        stderr(&output)
    );

    assert!(dry.status.success(), "stderr: {}", stderr(&dry));
    let planned: Vec<(String, String)> = json(&dry)["follow_up"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["step"].as_str().unwrap().to_string(),
                f["cycle"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        planned,
        vec![
            ("DispatchTotals".to_string(), previous.to_string()),
            ("DispatchTotals".to_string(), current.to_string())
        ],
        "a dry run lists the same follow-up"
    );
}

#[tokio::test]
async fn moving_a_customer_to_another_plan_rerates_its_open_cycles() {
    let db = fresh().await;
    let dir = TempDir::new();
    // A second entry of the same section.
    let second_plan = PLAN
        .replace("\nrate_plans:\n", "\n")
        .replace("id: business", "id: budget")
        .replace("name: Business", "name: Budget");
    dir.write(
        "catalog.yaml",
        format!("{PLAN}{second_plan}{REST}").as_bytes(),
    );
    assert!(
        temctl(&db.url, &dir.0, &["apply", "-f", "catalog.yaml"], &[])
            .status
            .success()
    );
    dir.write(
        "catalog.yaml",
        format!("{PLAN}{second_plan}{REST}")
            .replace("rate_plan: business}", "rate_plan: budget}")
            .as_bytes(),
    );

    let output = temctl(
        &db.url,
        &dir.0,
        &["apply", "-f", "catalog.yaml", "--json"],
        &[],
    );

    assert!(output.status.success(), "stderr: {}", stderr(&output));
    let result = json(&output);
    let current = tem_shared::cdr::cycle_of(Utc::now(), 1, chrono_tz::Europe::Amsterdam);
    let follow_up = &result["follow_up"][0];
    assert_eq!(follow_up["step"], "DispatchTotals");
    assert_eq!(follow_up["customer"], "acme");
    assert_eq!(follow_up["cycle"], current.to_string());
    assert_eq!(follow_up["reason"], "its rate_plan changed");
    assert_eq!(follow_up["status"], "not_sent");
    assert_eq!(follow_up["problem"], "QUEUE_URL_TOTALS is not set");
    assert_eq!(result["follow_up"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn a_period_next_to_a_stored_one_applies_and_one_sharing_a_day_is_refused() {
    let db = fresh().await;
    let dir = TempDir::new();
    let customers = "customers:\n  - {code: acme, name: Acme, billing_cycle_start_day: 1}\n  - {code: bakker, name: Bakker, billing_cycle_start_day: 1}\n";
    dir.write(
        "first.yaml",
        format!("{customers}subscriptions:\n  - {{identifier: \"+31612345678\", customer: acme, provider: routit, active_to: 2025-03-31}}\n").as_bytes(),
    );
    let first = temctl(&db.url, &dir.0, &["apply", "-f", "first.yaml"], &[]);
    assert!(first.status.success(), "stderr: {}", stderr(&first));

    // Starts the day after the stored period ends: adjacent, not overlapping.
    dir.write(
        "next.yaml",
        format!("{customers}subscriptions:\n  - {{identifier: \"+31612345678\", customer: bakker, provider: routit, active_from: 2025-04-01}}\n").as_bytes(),
    );
    let next = temctl(&db.url, &dir.0, &["apply", "-f", "next.yaml"], &[]);
    assert!(next.status.success(), "stderr: {}", stderr(&next));

    // Starts on the stored period's last day: overlaps acme's, and within
    // the file it overlaps its own second entry too.
    dir.write(
        "clash.yaml",
        format!("{customers}subscriptions:\n  - {{identifier: \"+31612345678\", customer: bakker, provider: routit, active_from: 2025-03-31, active_to: 2025-03-31}}\n  - {{identifier: \"+31612345678\", customer: acme, provider: routit, active_from: 2025-03-15, active_to: 2025-03-31}}\n").as_bytes(),
    );
    let clash = temctl(&db.url, &dir.0, &["apply", "-f", "clash.yaml"], &[]);
    assert!(!clash.status.success());
    let err = stderr(&clash);
    assert!(
        err.contains("subscriptions[0]: routit +31612345678 overlaps the database's subscription of customer acme (1970-01-01 to 2025-03-31)"),
        "{err}"
    );
    assert!(
        err.contains("subscriptions[1]: routit +31612345678 overlaps subscriptions[0] (2025-03-31 to 2025-03-31)"),
        "{err}"
    );
    assert!(
        err.contains("subscriptions[1]: routit +31612345678 overlaps the database's subscription of customer acme"),
        "{err}"
    );
    assert!(
        !err.contains("customer bakker"),
        "bakker's stored period starts after: {err}"
    );
    assert_eq!(count(&db.pool, "subscription").await, 2, "nothing written");
}

#[tokio::test]
async fn a_file_larger_than_one_write_batch_applies_every_row_and_then_changes_nothing() {
    let db = fresh().await;
    let dir = TempDir::new();
    let n = 23_456;
    let mut text = String::from("customers:\n");
    for c in 0..7 {
        text.push_str(&format!(
            "  - {{code: c{c}, name: Customer {c}, billing_cycle_start_day: {}}}\n",
            c + 1
        ));
    }
    text.push_str("subscriptions:\n");
    for i in 0..n {
        let to = if i % 3 == 0 {
            ", active_to: 2025-12-31"
        } else {
            ""
        };
        text.push_str(&format!(
            "  - {{identifier: \"+3161{i:07}\", customer: c{}, provider: routit{to}}}\n",
            i % 7
        ));
    }
    dir.write("big.yaml", text.as_bytes());
    let first = temctl(&db.url, &dir.0, &["apply", "--json", "-f", "big.yaml"], &[]);
    assert!(first.status.success(), "stderr: {}", stderr(&first));
    assert_eq!(json(&first)["created"], n + 7);
    assert_eq!(count(&db.pool, "subscription").await, n as i64);
    let (owner, to): (String, Option<NaiveDate>) = sqlx::query_as(
        "SELECT c.code, s.active_to FROM subscription s JOIN customer c ON c.id = s.customer_id
         WHERE s.identifier = '+31610012345'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!((owner.as_str(), to), ("c4", "2025-12-31".parse().ok()));

    let again = temctl(&db.url, &dir.0, &["apply", "--json", "-f", "big.yaml"], &[]);
    assert!(again.status.success(), "stderr: {}", stderr(&again));
    let again = json(&again);
    assert_eq!(
        (again["changed"].as_u64(), again["unchanged"].as_u64()),
        (Some(0), Some(n + 7))
    );

    // One subscription moves to another customer: exactly one update.
    let moved = text.replace(
        "identifier: \"+31610012345\", customer: c4",
        "identifier: \"+31610012345\", customer: c5",
    );
    dir.write("big.yaml", moved.as_bytes());
    let update = temctl(&db.url, &dir.0, &["apply", "--json", "-f", "big.yaml"], &[]);
    assert!(update.status.success(), "stderr: {}", stderr(&update));
    assert_eq!(json(&update)["updated"], 1);
    let owner: String = sqlx::query_scalar(
        "SELECT c.code FROM subscription s JOIN customer c ON c.id = s.customer_id WHERE s.identifier = '+31610012345'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(owner, "c5");
}
