//! The template rules hold for infra/template.yaml, and each rule really
//! fails when the template breaks it.

use serde_json::{json, Value as Json};
use serde_yaml::Value;
use tem_tests::template::{
    budget_violations, function_connections, load, load_json, mapping_mut, translated, violations,
    Deployment,
};

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
fn a_visibility_under_six_timeouts_for_any_allowed_provider_timeout_is_caught() {
    // Only the crash test's 5 s timeout maps to a visibility too short.
    let mut template = load();
    *mapping_mut(
        &mut template,
        &["Mappings", "ProviderSyncTimeout", "5", "VisibilityTimeout"],
    ) = Value::from(29);
    let found = violations(&template);
    assert_eq!(found.len(), 7, "one per provider queue: {found:?}");
    assert!(
        found[0].contains("29s") && found[0].contains("with ProviderSyncTimeoutSeconds=5"),
        "{found:?}"
    );
    // An allowed value with no visibility of its own is caught too.
    let mut template = load();
    mapping_mut(&mut template, &["Mappings", "ProviderSyncTimeout"])
        .as_mapping_mut()
        .unwrap()
        .remove("15");
    assert!(violations(&template)
        .iter()
        .any(|v| v.contains("with ProviderSyncTimeoutSeconds=15")));
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

/// The EventBridge rules of the translated template and the state each has
/// in a deployment with `ScheduleEnabled`.
fn schedule_states(translated: &Json, schedule_enabled: &str) -> Vec<(String, Json)> {
    let deployment = Deployment::new(translated, &[("ScheduleEnabled", schedule_enabled)]);
    translated["Resources"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(_, r)| r["Type"] == "AWS::Events::Rule")
        .map(|(id, r)| (id.clone(), deployment.resolve(&r["Properties"]["State"])))
        .collect()
}

#[test]
fn the_translated_schedules_are_disabled_exactly_when_schedule_enabled_is_false() {
    let translated = translated();
    let schedules = load_json()["Resources"]
        .as_object()
        .unwrap()
        .values()
        .flat_map(|r| {
            r["Properties"]["Events"]
                .as_object()
                .cloned()
                .unwrap_or_default()
        })
        .filter(|(_, e)| e["Type"] == "Schedule")
        .count();
    assert_eq!(
        schedules, 4,
        "sync-manager's, the invoice sweep's, the ops watch's and the daily maintenance's"
    );
    for (enabled, want) in [("false", "DISABLED"), ("true", "ENABLED")] {
        let states = schedule_states(&translated, enabled);
        assert_eq!(states.len(), schedules, "one rule per schedule: {states:?}");
        for (id, state) in states {
            assert_eq!(
                state,
                json!(want),
                "rule {id} with ScheduleEnabled={enabled}"
            );
        }
    }
}

#[test]
fn a_schedule_enabled_through_enabled_and_if_is_caught_as_always_on() {
    // The defect of the issue: SAM reads `Enabled: !If [...]` as true.
    let text = std::fs::read_to_string(tem_tests::template::TEMPLATE)
        .unwrap()
        .replace(
            "State: !If [ScheduleOn, ENABLED, DISABLED]",
            "Enabled: !If [ScheduleOn, true, false]",
        );
    let dir = std::env::temp_dir().join(format!("tem-template-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("template.yaml");
    std::fs::write(&path, text).unwrap();
    let translated = tem_tests::template::translated_file(&path);
    let states = schedule_states(&translated, "false");
    assert_eq!(states.len(), 4);
    assert!(
        states.iter().all(|(_, s)| s == "ENABLED"),
        "the old form stays on: {states:?}"
    );
}

#[test]
fn every_connection_budget_tier_holds_every_function_and_the_operators() {
    let found = budget_violations(&load_json());
    assert!(found.is_empty(), "{}", found.join("\n"));
}

#[test]
fn the_budget_counts_pool_times_concurrency_per_function() {
    let template = load_json();
    let deployment = Deployment::new(&template, &[("DatabaseMaxConnections", "50")]);
    let of = |id: &str| function_connections(&deployment, id, &template["Resources"][id]).unwrap();
    assert_eq!(of("CdrImportFunction"), (4.0, 2.0));
    // The queue's 5 and the hourly sweep's 1.
    assert_eq!(of("TotalsFunction"), (6.0, 2.0));
    assert_eq!(of("SyncManagerFunction"), (1.0, 2.0));
    assert_eq!(of("RoutitSyncFunction"), (2.0, 1.0));
    let reserved = Deployment::new(
        &template,
        &[
            ("DatabaseMaxConnections", "50"),
            ("ReservedConcurrencyEnabled", "true"),
        ],
    );
    let of = |id: &str| function_connections(&reserved, id, &template["Resources"][id]).unwrap();
    assert_eq!(of("TotalsFunction"), (6.0, 2.0));
    assert_eq!(of("SyncManagerFunction"), (1.0, 2.0));
}

#[test]
fn a_tier_over_its_budget_is_caught() {
    let mut template = load_json();
    template["Mappings"]["ConnectionBudget"]["30"]["ImportConcurrency"] = json!(5);
    let found = budget_violations(&template).join("\n");
    assert!(
        found.contains("tier 30 (reserved concurrency false) needs")
            && found.contains("CdrImportFunction 5x2"),
        "{found}"
    );
    assert!(
        found.contains("tier 30 (reserved concurrency true)"),
        "{found}"
    );
    assert!(!found.contains("tier 50"), "{found}");

    // A pool size set by hand past the mapping breaks it too.
    let mut template = load_json();
    template["Resources"]["TelfortSyncFunction"]["Properties"]["Environment"]["Variables"]
        ["DATABASE_MAX_CONNECTIONS"] = json!("10");
    let found = budget_violations(&template).join("\n");
    assert!(found.contains("TelfortSyncFunction 2x10"), "{found}");
}

#[test]
fn a_queue_without_maximum_concurrency_is_caught_as_unbounded() {
    let mut template = load_json();
    template["Resources"]["YielderSyncFunction"]["Properties"]["Events"]["Queue"]["Properties"]
        .as_object_mut()
        .unwrap()
        .remove("ScalingConfig");
    let found = budget_violations(&template).join("\n");
    assert!(
        found.contains(
            "function YielderSyncFunction event Queue has no ScalingConfig.MaximumConcurrency"
        ),
        "{found}"
    );

    // AWS's minimum is 2.
    let mut template = load_json();
    template["Mappings"]["ConnectionBudget"]["30"]["ProviderConcurrency"] = json!(1);
    let found = budget_violations(&template).join("\n");
    assert!(
        found.contains("MaximumConcurrency 1; AWS allows 2 to 1000"),
        "{found}"
    );
}

mod permissions {
    use serde_yaml::Value;
    use tem_tests::permissions::{load_list, permission_violations, sources};
    use tem_tests::template::{load, mapping_mut};

    #[test]
    fn every_call_the_code_makes_is_listed_and_granted_and_nothing_else_is() {
        let found = permission_violations(&load(), &load_list(), &sources());
        assert!(found.is_empty(), "{}", found.join("\n"));
    }

    #[test]
    fn a_missing_grant_is_caught() {
        // The HeadObject case: without ListBucket a gone export is a 403.
        let mut template = load();
        let statements = mapping_mut(
            &mut template,
            &["Resources", "CdrImportFunction", "Properties", "Policies"],
        )[0]["Statement"]
            .as_sequence_mut()
            .unwrap();
        statements.retain(|s| s["Sid"].as_str() != Some("TellGoneExportsApart"));
        let found = permission_violations(&template, &load_list(), &sources());
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].starts_with("function CdrImportFunction needs s3:ListBucket on arn:"),
            "{found:?}"
        );
    }

    #[test]
    fn an_unused_grant_is_caught() {
        let mut template = load();
        let statements = mapping_mut(
            &mut template,
            &["Resources", "TotalsFunction", "Properties", "Policies"],
        )[0]["Statement"]
            .as_sequence_mut()
            .unwrap();
        statements.push(
            serde_yaml::from_str(
                "{Sid: Extra, Effect: Allow, Action: [dynamodb:Scan], Resource: !GetAtt TasksTable.Arn}",
            )
            .unwrap(),
        );
        let found = permission_violations(&template, &load_list(), &sources());
        assert_eq!(
            found,
            ["function TotalsFunction is granted dynamodb:Scan on TasksTable.Arn, which infra/permissions.yaml does not list as called"]
        );
    }

    #[test]
    fn a_new_sdk_call_in_an_adapter_is_caught_until_it_is_listed_and_granted() {
        let mut code = sources();
        let s3 = code.get_mut("shared/src/adapters/s3.rs").unwrap();
        // S3Rejects (used by cdr-import only) lists versions instead of writing.
        *s3 = s3.replacen(
            "            .put_object()\n            .bucket(&self.bucket)",
            "            .list_object_versions()\n            .bucket(&self.bucket)",
            1,
        );
        let found = permission_violations(&load(), &load_list(), &code).join("\n");
        assert!(
            found.contains("adapter S3Rejects calls s3 list_object_versions, which infra/permissions.yaml does not map"),
            "{found}"
        );
        // Mapped, it is still missing from the functions that use it.
        let mut list = load_list();
        list["operations"]["s3"]["list_object_versions"] =
            serde_yaml::from_str("[s3:ListBucketVersions]").unwrap();
        let found = permission_violations(&load(), &list, &code).join("\n");
        assert!(
            found.contains("calls s3:ListBucketVersions (adapter S3Rejects list_object_versions), which infra/permissions.yaml does not list"),
            "{found}"
        );
    }

    #[test]
    fn an_adapter_a_function_reaches_but_does_not_list_is_caught() {
        let mut list = load_list();
        let uses = list["functions"]["CdrImportFunction"]["uses"]
            .as_sequence_mut()
            .unwrap();
        uses.retain(|u| u.as_str() != Some("S3Notifications"));
        let found = permission_violations(&load(), &list, &sources());
        assert!(
            found
                .iter()
                .any(|f| f.contains("function CdrImportFunction reaches adapter S3Notifications")),
            "{found:?}"
        );
        let _ = Value::Null;
    }

    #[test]
    fn the_ops_function_reaches_the_adapters_its_stores_hold() {
        // The ops main names no adapter: bootstrap's Ops holds them.
        let mut list = load_list();
        let uses = list["functions"]["OpsFunction"]["uses"]
            .as_sequence_mut()
            .unwrap();
        uses.retain(|u| u.as_str() != Some("SqsQueueStats"));
        let found = permission_violations(&load(), &list, &sources());
        assert!(
            found
                .iter()
                .any(|f| f.contains("function OpsFunction reaches adapter SqsQueueStats")),
            "{found:?}"
        );
        // Without the field, the listed adapter is one nothing reaches.
        let mut code = sources();
        let bootstrap = code.get_mut("shared/src/bootstrap.rs").unwrap();
        *bootstrap = bootstrap.replacen("    queue_stats: SqsQueueStats,\n", "", 1);
        let found = permission_violations(&load(), &load_list(), &code).join("\n");
        assert!(
            found.contains(
                "function OpsFunction lists adapter SqsQueueStats, which functions/ops/src/main.rs never reaches"
            ),
            "{found}"
        );
    }
}

/// The monitoring rules: every queue and every DLQ has a depth alarm, every
/// monitoring point of the runbook (ops::status::MONITORING_POINTS) has its
/// alarm, every queue-driven function a failure-rate alarm, every alarm
/// notifies AlarmTopic, and the dashboard names every function.
mod monitoring {
    use serde_yaml::Value;
    use tem_shared::ops::status::MONITORING_POINTS;
    use tem_tests::template::{load, mapping_mut};

    fn resources(template: &Value) -> Vec<(String, &Value)> {
        template["Resources"]
            .as_mapping()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.as_str().unwrap().to_string(), v))
            .collect()
    }

    fn of_type<'a>(template: &'a Value, kind: &str) -> Vec<(String, &'a Value)> {
        resources(template)
            .into_iter()
            .filter(|(_, r)| r["Type"].as_str() == Some(kind))
            .collect()
    }

    /// `!Ref X` -> X; `!GetAtt X.Attr` -> X.Attr.
    fn tagged<'a>(value: &'a Value, tag: &str) -> Option<&'a str> {
        match value {
            Value::Tagged(t) if t.tag == tag => t.value.as_str(),
            _ => None,
        }
    }

    fn number(value: &Value) -> Option<f64> {
        value
            .as_f64()
            .or_else(|| value.as_str().and_then(|s| s.parse().ok()))
    }

    /// Whether an alarm's metric (or one of its metric-math inputs) has the
    /// dimension `name` = `!Ref`/`!GetAtt` of `target`.
    fn has_dimension(alarm: &Value, name: &str, tag: &str, target: &str) -> bool {
        let matches = |dimensions: &Value| {
            dimensions.as_sequence().is_some_and(|ds| {
                ds.iter().any(|d| {
                    d["Name"].as_str() == Some(name) && tagged(&d["Value"], tag) == Some(target)
                })
            })
        };
        let properties = &alarm["Properties"];
        matches(&properties["Dimensions"])
            || properties["Metrics"].as_sequence().is_some_and(|ms| {
                ms.iter()
                    .any(|m| matches(&m["MetricStat"]["Metric"]["Dimensions"]))
            })
    }

    pub fn violations(template: &Value) -> Vec<String> {
        let mut found = Vec::new();
        let alarms = of_type(template, "AWS::CloudWatch::Alarm");
        let queues = of_type(template, "AWS::SQS::Queue");
        let dlqs: Vec<String> = queues
            .iter()
            .filter_map(|(_, q)| {
                tagged(
                    &q["Properties"]["RedrivePolicy"]["deadLetterTargetArn"],
                    "GetAtt",
                )
                .map(|t| t.trim_end_matches(".Arn").to_string())
            })
            .collect();
        for (id, _) in &queues {
            let dlq = dlqs.contains(id);
            let limit = if dlq { 0.0 } else { 1000.0 };
            let alarmed = alarms.iter().any(|(_, a)| {
                let p = &a["Properties"];
                p["MetricName"].as_str() == Some("ApproximateNumberOfMessagesVisible")
                    && has_dimension(a, "QueueName", "GetAtt", &format!("{id}.QueueName"))
                    && number(&p["Threshold"]).is_some_and(|t| t <= limit)
                    && p["ComparisonOperator"].as_str() == Some("GreaterThanThreshold")
            });
            if !alarmed {
                let kind = if dlq { "DLQ" } else { "queue" };
                found.push(format!(
                    "{kind} {id} has no alarm on ApproximateNumberOfMessagesVisible over {limit}"
                ));
            }
        }
        for (point, name, alarm) in MONITORING_POINTS {
            let present = alarms
                .iter()
                .any(|(id, _)| id == alarm || id.ends_with(alarm));
            if !present {
                found.push(format!(
                    "monitoring point {point} ({name}) has no alarm {alarm}"
                ));
            }
        }
        for (fid, function) in of_type(template, "AWS::Serverless::Function") {
            let queue_driven = function["Properties"]["Events"]
                .as_mapping()
                .is_some_and(|events| events.values().any(|e| e["Type"].as_str() == Some("SQS")));
            let alarmed = alarms.iter().any(|(id, a)| {
                id.ends_with("FailureRateAlarm") && has_dimension(a, "Function", "Ref", &fid)
            });
            if queue_driven && !alarmed {
                found.push(format!("function {fid} has no failure-rate alarm"));
            }
        }
        for (id, alarm) in &alarms {
            let notifies = alarm["Properties"]["AlarmActions"]
                .as_sequence()
                .is_some_and(|actions| {
                    actions
                        .iter()
                        .any(|a| tagged(a, "Ref") == Some("AlarmTopic"))
                });
            if !notifies {
                found.push(format!("alarm {id} does not notify AlarmTopic"));
            }
        }
        let dashboards = of_type(template, "AWS::CloudWatch::Dashboard");
        if dashboards.is_empty() {
            found.push("the template has no dashboard".into());
        }
        for (id, dashboard) in &dashboards {
            let body = tagged(&dashboard["Properties"]["DashboardBody"], "Sub").unwrap_or("");
            for (fid, _) in of_type(template, "AWS::Serverless::Function") {
                if !body.contains(&format!("${{{fid}}}")) {
                    found.push(format!("dashboard {id} does not name function {fid}"));
                }
            }
        }
        found
    }

    fn remove(template: &mut Value, id: &str) {
        template["Resources"]
            .as_mapping_mut()
            .unwrap()
            .remove(id)
            .unwrap_or_else(|| panic!("no {id}"));
    }

    #[test]
    fn every_queue_dlq_monitoring_point_and_function_has_its_alarm_and_a_dashboard_names_every_function(
    ) {
        let found = violations(&load());
        assert!(found.is_empty(), "{}", found.join("\n"));
    }

    #[test]
    fn a_dlq_or_a_queue_without_its_depth_alarm_is_caught() {
        let mut template = load();
        remove(&mut template, "RoutitDlqDepthAlarm");
        assert_eq!(
            violations(&template),
            ["DLQ RoutitDlq has no alarm on ApproximateNumberOfMessagesVisible over 0"]
        );
        let mut template = load();
        *mapping_mut(
            &mut template,
            &[
                "Resources",
                "ImportQueueDepthAlarm",
                "Properties",
                "Threshold",
            ],
        ) = Value::from(5000);
        assert_eq!(
            violations(&template),
            ["queue ImportQueue has no alarm on ApproximateNumberOfMessagesVisible over 1000"]
        );
    }

    #[test]
    fn a_monitoring_point_without_its_alarm_is_caught() {
        let mut template = load();
        remove(&mut template, "TotalsDurationAlarm");
        assert_eq!(
            violations(&template),
            ["monitoring point 6 (totals duration) has no alarm TotalsDurationAlarm"]
        );
        let mut template = load();
        remove(&mut template, "SyncManagerMissedRunsAlarm");
        assert_eq!(
            violations(&template),
            ["monitoring point 1 (sync-manager runs) has no alarm SyncManagerMissedRunsAlarm"]
        );
    }

    #[test]
    fn a_queue_driven_function_without_a_failure_rate_alarm_is_caught() {
        let mut template = load();
        remove(&mut template, "TotalsFailureRateAlarm");
        assert_eq!(
            violations(&template),
            ["function TotalsFunction has no failure-rate alarm"]
        );
    }

    #[test]
    fn an_alarm_that_notifies_nobody_is_caught() {
        let mut template = load();
        *mapping_mut(
            &mut template,
            &[
                "Resources",
                "RoutingFailuresAlarm",
                "Properties",
                "AlarmActions",
            ],
        ) = Value::Sequence(vec![]);
        assert_eq!(
            violations(&template),
            ["alarm RoutingFailuresAlarm does not notify AlarmTopic"]
        );
    }

    #[test]
    fn a_dashboard_that_leaves_out_a_function_is_caught() {
        let mut template = load();
        let body = mapping_mut(
            &mut template,
            &["Resources", "Dashboard", "Properties", "DashboardBody"],
        );
        let Value::Tagged(tagged) = body else {
            panic!("DashboardBody is a !Sub string")
        };
        let text = tagged
            .value
            .as_str()
            .unwrap()
            .replace("${OpsFunction}", "tem-ops");
        tagged.value = Value::from(text);
        assert_eq!(
            violations(&template),
            ["dashboard Dashboard does not name function OpsFunction"]
        );
    }
}
