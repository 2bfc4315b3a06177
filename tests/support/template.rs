//! Rules every version of infra/template.yaml must keep, checked over the
//! parsed template so that no later edit silently breaks them.

use serde_yaml::Value;

pub const TEMPLATE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../infra/template.yaml");

pub fn load() -> Value {
    let text = std::fs::read_to_string(TEMPLATE).expect("infra/template.yaml is readable");
    serde_yaml::from_str(&text).expect("infra/template.yaml is valid YAML")
}

/// The logical id a `!Ref X` / `!GetAtt X.Arn` points at.
fn referenced_id(value: &Value) -> Option<String> {
    match value {
        Value::Tagged(tagged) => {
            let inner = tagged.value.as_str()?;
            Some(inner.split('.').next()?.to_string())
        }
        Value::Mapping(m) => {
            let (k, v) = m.iter().next()?;
            match k.as_str()? {
                "Ref" => v.as_str().map(str::to_string),
                "Fn::GetAtt" => match v {
                    Value::Sequence(s) => s.first()?.as_str().map(str::to_string),
                    Value::String(s) => s.split('.').next().map(str::to_string),
                    _ => None,
                },
                _ => None,
            }
        }
        _ => None,
    }
}

fn number(value: &Value) -> Option<f64> {
    match value {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

fn resources(template: &Value) -> Vec<(String, &Value)> {
    template["Resources"]
        .as_mapping()
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.as_str()?.to_string(), v)))
                .collect()
        })
        .unwrap_or_default()
}

fn of_type<'a>(template: &'a Value, kind: &str) -> Vec<(String, &'a Value)> {
    resources(template)
        .into_iter()
        .filter(|(_, r)| r["Type"].as_str() == Some(kind))
        .collect()
}

/// Every broken rule, as a sentence naming the resource.
pub fn violations(template: &Value) -> Vec<String> {
    let mut found = Vec::new();
    let queues = of_type(template, "AWS::SQS::Queue");
    let functions = of_type(template, "AWS::Serverless::Function");
    let global_timeout = number(&template["Globals"]["Function"]["Timeout"]).unwrap_or(3.0);

    let dlqs: Vec<String> = queues
        .iter()
        .filter_map(|(_, q)| {
            referenced_id(&q["Properties"]["RedrivePolicy"]["deadLetterTargetArn"])
        })
        .collect();

    for (id, queue) in &queues {
        if dlqs.contains(id) {
            continue;
        }
        let redrive = &queue["Properties"]["RedrivePolicy"];
        match referenced_id(&redrive["deadLetterTargetArn"]) {
            None => found.push(format!("queue {id} has no dead-letter queue")),
            Some(target) if !queues.iter().any(|(q, _)| *q == target) => found.push(format!(
                "queue {id} names dead-letter queue {target}, which is not a queue"
            )),
            Some(_) => {}
        }
        match number(&redrive["maxReceiveCount"]) {
            Some(n) if n >= 5.0 => {}
            other => found.push(format!("queue {id} has maxReceiveCount {other:?}, below 5")),
        }
    }

    for (fid, function) in &functions {
        let timeout = number(&function["Properties"]["Timeout"]).unwrap_or(global_timeout);
        let Some(events) = function["Properties"]["Events"].as_mapping() else {
            continue;
        };
        for (name, event) in events {
            if event["Type"].as_str() != Some("SQS") {
                continue;
            }
            let name = name.as_str().unwrap_or("?");
            let types = event["Properties"]["FunctionResponseTypes"].as_sequence();
            if !types.is_some_and(|t| {
                t.iter()
                    .any(|v| v.as_str() == Some("ReportBatchItemFailures"))
            }) {
                found.push(format!(
                    "function {fid} event {name} does not use ReportBatchItemFailures"
                ));
            }
            let Some(queue_id) = referenced_id(&event["Properties"]["Queue"]) else {
                found.push(format!(
                    "function {fid} event {name} does not reference a queue of this template"
                ));
                continue;
            };
            let visibility = queues
                .iter()
                .find(|(q, _)| *q == queue_id)
                .and_then(|(_, q)| number(&q["Properties"]["VisibilityTimeout"]))
                .unwrap_or(30.0);
            if visibility < 6.0 * timeout {
                found.push(format!(
                    "queue {queue_id} has visibility timeout {visibility}s, under 6 x {timeout}s (timeout of {fid})"
                ));
            }
        }
        for statement in statements(&function["Properties"]["Policies"]) {
            let resources = match &statement["Resource"] {
                Value::Sequence(s) => s.clone(),
                other => vec![other.clone()],
            };
            if resources.iter().any(|r| r.as_str() == Some("*")) {
                found.push(format!(
                    "function {fid} has a policy statement with a wildcard resource: {}",
                    serde_yaml::to_string(statement).unwrap_or_default().trim()
                ));
            }
        }
        if let Some(policies) = function["Properties"]["Policies"].as_sequence() {
            for policy in policies {
                if let Some(name) = policy.as_str() {
                    found.push(format!(
                        "function {fid} uses managed policy {name}; use least-privilege statements"
                    ));
                }
            }
        }
    }
    found
}

fn statements(policies: &Value) -> Vec<&Value> {
    policies
        .as_sequence()
        .into_iter()
        .flatten()
        .filter_map(|p| p["Statement"].as_sequence())
        .flatten()
        .collect()
}

pub fn mapping_mut<'a>(value: &'a mut Value, path: &[&str]) -> &'a mut Value {
    path.iter().fold(value, |v, key| {
        v.get_mut(*key)
            .unwrap_or_else(|| panic!("no {key} in template"))
    })
}
