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

/// The parameters `!Ref`ed anywhere in `value`.
fn parameters_in(template: &Value, value: &Value, found: &mut std::collections::BTreeSet<String>) {
    match value {
        Value::Tagged(t) if t.tag == "Ref" => {
            if let Some(name) = t.value.as_str() {
                if !template["Parameters"][name].is_null() {
                    found.insert(name.to_string());
                }
            }
        }
        Value::Tagged(t) => parameters_in(template, &t.value, found),
        Value::Sequence(items) => items.iter().for_each(|v| parameters_in(template, v, found)),
        Value::Mapping(m) => m.values().for_each(|v| parameters_in(template, v, found)),
        _ => {}
    }
}

/// Every combination of allowed values of the parameters `values` refer to
/// (a parameter without AllowedValues takes its default).
fn assignments(template: &Value, values: &[&Value]) -> Vec<Vec<(String, String)>> {
    let mut names = std::collections::BTreeSet::new();
    for v in values {
        parameters_in(template, v, &mut names);
    }
    let mut all = vec![Vec::new()];
    for name in names {
        let spec = &template["Parameters"][name.as_str()];
        let choices: Vec<String> = match spec["AllowedValues"].as_sequence() {
            Some(values) => values.iter().filter_map(scalar_text).collect(),
            None => spec
                .get("Default")
                .and_then(scalar_text)
                .into_iter()
                .collect(),
        };
        all = all
            .into_iter()
            .flat_map(|a| {
                let name = &name;
                choices.iter().map(move |c| {
                    let mut next = a.clone();
                    next.push((name.clone(), c.clone()));
                    next
                })
            })
            .collect();
    }
    all
}

fn scalar_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// A number written literally, as `!Ref Parameter` or as
/// `!FindInMap [Map, key, key]` over such values.
fn resolved_number(
    template: &Value,
    value: &Value,
    assignment: &[(String, String)],
) -> Option<f64> {
    fn text(template: &Value, value: &Value, assignment: &[(String, String)]) -> Option<String> {
        match value {
            Value::Tagged(t) if t.tag == "Ref" => {
                let name = t.value.as_str()?;
                assignment
                    .iter()
                    .find(|(k, _)| k == name)
                    .map(|(_, v)| v.clone())
            }
            Value::Tagged(t) if t.tag == "FindInMap" => {
                let args = t.value.as_sequence()?;
                let keys: Vec<String> = args
                    .iter()
                    .map(|a| text(template, a, assignment))
                    .collect::<Option<_>>()?;
                let found = &template["Mappings"][keys.first()?.as_str()][keys.get(1)?.as_str()]
                    [keys.get(2)?.as_str()];
                scalar_text(found)
            }
            other => scalar_text(other),
        }
    }
    text(template, value, assignment)?.parse().ok()
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
            let timeout_value = &function["Properties"]["Timeout"];
            let visibility_value = queues
                .iter()
                .find(|(q, _)| *q == queue_id)
                .map(|(_, q)| &q["Properties"]["VisibilityTimeout"])
                .unwrap_or(&Value::Null);
            // Every allowed value of the parameters either one follows.
            for assignment in assignments(template, &[timeout_value, visibility_value]) {
                let timeout =
                    resolved_number(template, timeout_value, &assignment).unwrap_or(global_timeout);
                let visibility =
                    resolved_number(template, visibility_value, &assignment).unwrap_or(30.0);
                if visibility < 6.0 * timeout {
                    let with: Vec<String> = assignment
                        .iter()
                        .map(|(k, v)| format!(" with {k}={v}"))
                        .collect();
                    found.push(format!(
                        "queue {queue_id} has visibility timeout {visibility}s, under 6 x {timeout}s (timeout of {fid}){}",
                        with.concat()
                    ));
                }
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

/// Every statement of a function's inline policies, those under `!If` too.
fn statements(policies: &Value) -> Vec<&Value> {
    fn of(policy: &Value) -> Vec<&Value> {
        match policy {
            Value::Tagged(tagged) if tagged.tag == "If" => tagged
                .value
                .as_sequence()
                .into_iter()
                .flatten()
                .skip(1)
                .flat_map(of)
                .collect(),
            other => other["Statement"]
                .as_sequence()
                .into_iter()
                .flatten()
                .collect(),
        }
    }
    policies
        .as_sequence()
        .into_iter()
        .flatten()
        .flat_map(of)
        .collect()
}

pub fn mapping_mut<'a>(value: &'a mut Value, path: &[&str]) -> &'a mut Value {
    path.iter().fold(value, |v, key| {
        v.get_mut(*key)
            .unwrap_or_else(|| panic!("no {key} in template"))
    })
}

// ------------------------------------------------------------------------
// CloudFormation's view of one deployment: the template in JSON form, with
// parameters, conditions and mappings resolved as CloudFormation would.

use serde_json::Value as Json;
use std::collections::BTreeMap;

/// The template in CloudFormation's JSON form: short-form tags become
/// `{"Fn::If": ...}`, `{"Ref": ...}`, as in the SAM translator's output.
pub fn json_form(value: &Value) -> Json {
    match value {
        Value::Null => Json::Null,
        Value::Bool(b) => Json::Bool(*b),
        Value::Number(n) => serde_json::to_value(n).unwrap_or(Json::Null),
        Value::String(s) => Json::String(s.clone()),
        Value::Sequence(s) => Json::Array(s.iter().map(json_form).collect()),
        Value::Mapping(m) => Json::Object(
            m.iter()
                .filter_map(|(k, v)| Some((k.as_str()?.to_string(), json_form(v))))
                .collect(),
        ),
        Value::Tagged(tagged) => {
            let tag = tagged.tag.to_string();
            let tag = tag.trim_start_matches('!');
            let inner = json_form(&tagged.value);
            let (key, inner) = match (tag, inner) {
                ("Ref", inner) => ("Ref".to_string(), inner),
                ("Condition", inner) => ("Condition".to_string(), inner),
                ("GetAtt", Json::String(s)) => (
                    "Fn::GetAtt".to_string(),
                    Json::Array(
                        s.splitn(2, '.')
                            .map(|p| Json::String(p.to_string()))
                            .collect(),
                    ),
                ),
                (other, inner) => (format!("Fn::{other}"), inner),
            };
            Json::Object([(key, inner)].into_iter().collect())
        }
    }
}

pub fn load_json() -> Json {
    json_form(&load())
}

/// Marks a value `!Ref AWS::NoValue` removed.
const NO_VALUE: &str = "\u{0}AWS::NoValue";

fn scalar(value: &Json) -> String {
    match value {
        Json::String(s) => s.clone(),
        Json::Number(n) => n.to_string(),
        Json::Bool(b) => b.to_string(),
        other => other.to_string(),
    }
}

/// One deployment of a template: its parameter values (defaults, then the
/// given overrides) and what the intrinsic functions resolve to.
pub struct Deployment<'a> {
    template: &'a Json,
    parameters: BTreeMap<String, Json>,
}

impl<'a> Deployment<'a> {
    pub fn new(template: &'a Json, overrides: &[(&str, &str)]) -> Self {
        let mut parameters = BTreeMap::new();
        for (name, spec) in template["Parameters"].as_object().into_iter().flatten() {
            let value = overrides
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.to_string())
                .or_else(|| spec.get("Default").map(scalar))
                .unwrap_or_default();
            let value = if spec["Type"].as_str() == Some("CommaDelimitedList") {
                Json::Array(
                    value
                        .split(',')
                        .map(|s| Json::String(s.trim().to_string()))
                        .collect(),
                )
            } else {
                Json::String(value)
            };
            parameters.insert(name.clone(), value);
        }
        for (name, _) in overrides {
            assert!(
                parameters.contains_key(*name),
                "parameter {name} is not in the template"
            );
        }
        Self {
            template,
            parameters,
        }
    }

    pub fn condition(&self, name: &str) -> bool {
        let definition = &self.template["Conditions"][name];
        assert!(!definition.is_null(), "no condition {name}");
        self.truth(definition)
    }

    fn truth(&self, value: &Json) -> bool {
        match self.resolve(value) {
            Json::Bool(b) => b,
            Json::String(s) => s == "true",
            other => panic!("not a condition value: {other}"),
        }
    }

    /// `value` with every parameter reference, condition, `Fn::If`,
    /// `Fn::FindInMap`, `Fn::Join` of literals and `AWS::NoValue` resolved;
    /// resource references stay as they are.
    pub fn resolve(&self, value: &Json) -> Json {
        let resolved = self.resolve_inner(value);
        if resolved.as_str() == Some(NO_VALUE) {
            Json::Null
        } else {
            resolved
        }
    }

    fn resolve_inner(&self, value: &Json) -> Json {
        match value {
            Json::Array(items) => Json::Array(
                items
                    .iter()
                    .map(|v| self.resolve_inner(v))
                    .filter(|v| v.as_str() != Some(NO_VALUE))
                    .collect(),
            ),
            Json::Object(map) if map.len() == 1 => {
                let (key, arg) = map.iter().next().unwrap();
                let args = arg.as_array();
                let at = |i: usize| self.resolve_inner(&args.expect("intrinsic arguments")[i]);
                match key.as_str() {
                    "Ref" => match arg.as_str() {
                        Some("AWS::NoValue") => Json::String(NO_VALUE.into()),
                        Some(name) => self
                            .parameters
                            .get(name)
                            .cloned()
                            .unwrap_or_else(|| value.clone()),
                        None => value.clone(),
                    },
                    "Condition" => Json::Bool(self.condition(arg.as_str().unwrap_or_default())),
                    "Fn::If" => {
                        let name = args.expect("Fn::If arguments")[0]
                            .as_str()
                            .unwrap_or_default();
                        if self.condition(name) {
                            at(1)
                        } else {
                            at(2)
                        }
                    }
                    "Fn::Equals" => Json::Bool(scalar(&at(0)) == scalar(&at(1))),
                    "Fn::Not" => Json::Bool(!self.truth(&at(0))),
                    "Fn::And" => {
                        Json::Bool((0..args.map_or(0, Vec::len)).all(|i| self.truth(&at(i))))
                    }
                    "Fn::Or" => {
                        Json::Bool((0..args.map_or(0, Vec::len)).any(|i| self.truth(&at(i))))
                    }
                    "Fn::FindInMap" => {
                        let (map, first, second) = (at(0), at(1), at(2));
                        let found = &self.template["Mappings"][scalar(&map)][scalar(&first)]
                            [scalar(&second)];
                        assert!(!found.is_null(), "no mapping entry {map}/{first}/{second}");
                        found.clone()
                    }
                    "Fn::Join" => match (at(0), at(1)) {
                        (Json::String(sep), Json::Array(parts))
                            if parts.iter().all(Json::is_string) =>
                        {
                            Json::String(parts.iter().map(scalar).collect::<Vec<_>>().join(&sep))
                        }
                        (sep, parts) => {
                            serde_json::json!({ "Fn::Join": [sep, parts] })
                        }
                    },
                    _ => Json::Object(
                        [(key.clone(), self.resolve_inner(arg))]
                            .into_iter()
                            .collect(),
                    ),
                }
            }
            Json::Object(map) => Json::Object(
                map.iter()
                    .map(|(k, v)| (k.clone(), self.resolve_inner(v)))
                    .filter(|(_, v)| v.as_str() != Some(NO_VALUE))
                    .collect(),
            ),
            other => other.clone(),
        }
    }
}

// ------------------------------------------------------------------------
// The SAM translation, by the pinned aws-sam-translator.

const REPO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

/// The template as the pinned aws-sam-translator (scripts/requirements.txt,
/// in .venv) translates it: what CloudFormation deploys.
pub fn translated() -> Json {
    translated_file(std::path::Path::new(TEMPLATE))
}

pub fn translated_file(template: &std::path::Path) -> Json {
    let python = std::path::Path::new(REPO).join(".venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing; create it with scripts/emulator.sh venv",
        python.display()
    );
    let output = std::process::Command::new(&python)
        .arg(format!("{REPO}/scripts/sam-translate.py"))
        .arg(template)
        .output()
        .expect("run scripts/sam-translate.py");
    assert!(
        output.status.success(),
        "the SAM translation failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("the translation is JSON")
}

// ------------------------------------------------------------------------
// The connection budget.

fn json_number(value: &Json) -> Option<f64> {
    match value {
        Json::Number(n) => n.as_f64(),
        Json::String(s) => s.parse().ok(),
        _ => None,
    }
}

/// Seconds between two runs of a `rate(...)` schedule.
fn rate_seconds(expression: &str) -> Option<f64> {
    let inner = expression.strip_prefix("rate(")?.strip_suffix(')')?;
    let (n, unit) = inner.split_once(' ')?;
    let n: f64 = n.parse().ok()?;
    let unit = match unit.trim_end_matches('s') {
        "minute" => 60.0,
        "hour" => 3600.0,
        "day" => 86400.0,
        _ => return None,
    };
    Some(n * unit)
}

/// How many PostgreSQL connections one function can hold at once in this
/// deployment: (concurrency, pool size), or why it is unbounded.
pub fn function_connections(
    deployment: &Deployment,
    id: &str,
    function: &Json,
) -> Result<(f64, f64), String> {
    let template = deployment.template;
    let properties = deployment.resolve(&function["Properties"]);
    let globals = deployment.resolve(&template["Globals"]["Function"]);
    let pool = json_number(&properties["Environment"]["Variables"]["DATABASE_MAX_CONNECTIONS"])
        .or_else(|| json_number(&globals["Environment"]["Variables"]["DATABASE_MAX_CONNECTIONS"]))
        // shared/src/bootstrap.rs's default.
        .unwrap_or(2.0);
    let timeout = json_number(&properties["Timeout"])
        .or_else(|| json_number(&globals["Timeout"]))
        .unwrap_or(3.0);
    if let Some(reserved) = json_number(&properties["ReservedConcurrentExecutions"]) {
        return Ok((reserved, pool));
    }
    let mut concurrency = 0.0;
    let mut events = 0;
    for (name, event) in properties["Events"].as_object().into_iter().flatten() {
        events += 1;
        match event["Type"].as_str() {
            Some("SQS") => {
                let max = json_number(&event["Properties"]["ScalingConfig"]["MaximumConcurrency"])
                    .ok_or_else(|| format!(
                        "function {id} event {name} has no ScalingConfig.MaximumConcurrency: its connections are unbounded"
                    ))?;
                if !(2.0..=1000.0).contains(&max) {
                    return Err(format!(
                        "function {id} event {name} has MaximumConcurrency {max}; AWS allows 2 to 1000"
                    ));
                }
                concurrency += max;
            }
            Some("Schedule") | Some("ScheduleV2") => {
                let expression = event["Properties"]["Schedule"]
                    .as_str()
                    .or_else(|| event["Properties"]["ScheduleExpression"].as_str())
                    .unwrap_or_default();
                match rate_seconds(expression) {
                    Some(period) if period >= timeout => concurrency += 1.0,
                    _ => {
                        return Err(format!(
                            "function {id} schedule {name} ({expression}) can overlap its own runs (timeout {timeout}s): count it by reserved concurrency"
                        ))
                    }
                }
            }
            other => {
                return Err(format!(
                    "function {id} event {name} of type {other:?} is not counted by the connection budget"
                ))
            }
        }
    }
    if events == 0 {
        // Invoked only from the console, one at a time.
        concurrency = 1.0;
    }
    Ok((concurrency, pool))
}

/// The connection budget's rule, for every allowed `DatabaseMaxConnections`
/// with and without reserved concurrency:
/// sum over functions of (concurrency x pool size) + OperatorReserve <= tier.
pub fn budget_violations(template: &Json) -> Vec<String> {
    let mut found = Vec::new();
    let tiers: Vec<String> = template["Parameters"]["DatabaseMaxConnections"]["AllowedValues"]
        .as_array()
        .into_iter()
        .flatten()
        .map(scalar)
        .collect();
    if tiers.is_empty() {
        found.push("parameter DatabaseMaxConnections has no AllowedValues (tiers)".into());
    }
    for tier in &tiers {
        for reserve in ["false", "true"] {
            let deployment = Deployment::new(
                template,
                &[
                    ("DatabaseMaxConnections", tier),
                    ("ReservedConcurrencyEnabled", reserve),
                ],
            );
            let budget: f64 = tier.parse().unwrap_or(0.0);
            let operators =
                json_number(&template["Mappings"]["ConnectionBudget"][tier]["OperatorReserve"])
                    .unwrap_or(0.0);
            let mut total = operators;
            let mut parts = vec![format!("operators {operators}")];
            for (id, resource) in template["Resources"].as_object().into_iter().flatten() {
                if resource["Type"].as_str() != Some("AWS::Serverless::Function") {
                    continue;
                }
                match function_connections(&deployment, id, resource) {
                    Ok((concurrency, pool)) => {
                        total += concurrency * pool;
                        parts.push(format!("{id} {concurrency}x{pool}"));
                    }
                    Err(e) => found.push(format!("tier {tier}: {e}")),
                }
            }
            if total > budget {
                found.push(format!(
                    "tier {tier} (reserved concurrency {reserve}) needs {total} connections: {}",
                    parts.join(" + ")
                ));
            }
        }
    }
    found
}
