//! `temctl status` keeps the monitoring-plugin exit codes even when it
//! cannot evaluate anything: a usage error or a stack it cannot find is
//! UNKNOWN (3), never 2, which a scheduler would read as CRITICAL.

use std::process::Command;

use serde_json::Value;

fn temctl(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_temctl"))
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .output()
        .expect("run temctl")
}

#[test]
fn an_unknown_threshold_is_a_usage_error_with_exit_code_unknown() {
    let output = temctl(&["status", "--set", "NO_SUCH=1"]);
    assert_eq!(output.status.code(), Some(3));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("NO_SUCH") && stderr.contains("STATUS_QUEUE_DEPTH_CRITICAL"),
        "{stderr}"
    );
}

#[test]
fn without_a_stack_the_json_status_is_unknown_and_says_what_to_pass() {
    let output = temctl(&["status", "--json"]);
    assert_eq!(output.status.code(), Some(3));
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["state"], "UNKNOWN");
    assert_eq!(report["exit_code"], 3);
    assert!(
        report["error"].as_str().unwrap().contains("--stack"),
        "{report}"
    );
}

#[test]
fn other_commands_keep_exit_code_two_for_usage_errors() {
    assert_eq!(temctl(&["import"]).status.code(), Some(2));
}
