//! The template rules hold for infra/template.yaml, and each rule really
//! fails when the template breaks it.

use serde_yaml::Value;
use tem_tests::template::{load, mapping_mut, violations};

#[test]
fn the_template_keeps_every_rule() {
    let found = violations(&load());
    assert!(
        found.is_empty(),
        "template rules broken:\n{}",
        found.join("\n")
    );
}

#[test]
fn every_provider_has_a_queue_a_dlq_and_a_sync_function() {
    let template = load();
    for name in [
        "KpnSp16", "KpnEen", "Vodafone", "TMobile", "Routit", "Yielder", "Telfort",
    ] {
        for suffix in ["Queue", "Dlq", "SyncFunction"] {
            assert!(
                template["Resources"]
                    .get(format!("{name}{suffix}"))
                    .is_some(),
                "missing {name}{suffix}"
            );
        }
    }
}

#[test]
fn an_sqs_event_without_partial_batch_responses_is_caught() {
    let mut template = load();
    let event = mapping_mut(
        &mut template,
        &[
            "Resources",
            "RoutitSyncFunction",
            "Properties",
            "Events",
            "Queue",
            "Properties",
        ],
    );
    event
        .as_mapping_mut()
        .unwrap()
        .remove("FunctionResponseTypes");
    let found = violations(&template);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0].contains("RoutitSyncFunction") && found[0].contains("ReportBatchItemFailures")
    );
}

#[test]
fn a_queue_without_a_dlq_or_with_too_few_receives_is_caught() {
    let mut template = load();
    mapping_mut(&mut template, &["Resources", "VodafoneQueue", "Properties"])
        .as_mapping_mut()
        .unwrap()
        .remove("RedrivePolicy");
    *mapping_mut(
        &mut template,
        &[
            "Resources",
            "TelfortQueue",
            "Properties",
            "RedrivePolicy",
            "maxReceiveCount",
        ],
    ) = Value::from(2);
    let found = violations(&template).join("\n");
    assert!(
        found.contains("queue VodafoneQueue has no dead-letter queue"),
        "{found}"
    );
    assert!(
        found.contains("queue TelfortQueue has maxReceiveCount"),
        "{found}"
    );
}

#[test]
fn a_visibility_timeout_under_six_function_timeouts_is_caught() {
    let mut template = load();
    *mapping_mut(
        &mut template,
        &[
            "Resources",
            "KpnEenQueue",
            "Properties",
            "VisibilityTimeout",
        ],
    ) = Value::from(359);
    let found = violations(&template);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].contains("KpnEenQueue") && found[0].contains("359"));

    // Raising a function's timeout breaks the rule too.
    let mut template = load();
    mapping_mut(
        &mut template,
        &["Resources", "YielderSyncFunction", "Properties"],
    )
    .as_mapping_mut()
    .unwrap()
    .insert("Timeout".into(), Value::from(90));
    assert!(violations(&template)
        .iter()
        .any(|v| v.contains("YielderQueue")));
}

#[test]
fn a_wildcard_resource_in_a_policy_is_caught() {
    let mut template = load();
    let statement = &mut mapping_mut(
        &mut template,
        &["Resources", "SyncManagerFunction", "Properties", "Policies"],
    )[0]["Statement"][0];
    statement["Resource"] = Value::from("*");
    let found = violations(&template);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].contains("SyncManagerFunction") && found[0].contains("wildcard"));
}
