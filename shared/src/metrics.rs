//! CloudWatch Embedded Metric Format (EMF): metrics written as one JSON
//! line on stdout, which Lambda sends to CloudWatch Logs and CloudWatch
//! turns into metrics, without a PutMetricData call (no IAM grant, no
//! network round trip on the message path).
//!
//! A small writer rather than `metrics_cloudwatch_embedded`: that crate is a
//! global recorder behind the `metrics` facade, flushed by its own Lambda
//! `run` wrapper, and gives each label set one dimension set. tem's step
//! metrics need two dimension sets over the same values ([Function, Step]
//! for the failure-rate alarm, [Step, Provider] for the dashboard), emitted
//! right after a batch, and testable without global state.
//!
//! Specification: <https://docs.aws.amazon.com/AmazonCloudWatch/latest/monitoring/CloudWatch_Embedded_Metric_Format_Specification.html>.

use std::collections::BTreeMap;
use std::io::Write;

use chrono::{DateTime, Utc};
use serde_json::{json, Map, Value};

use crate::runtime::{Disposition, MessageReport};

/// The namespace when `METRICS_NAMESPACE` is not set; the template's alarms
/// and dashboard read this one.
pub const DEFAULT_NAMESPACE: &str = "tem";
/// EMF allows at most 100 metrics per directive...
pub const MAX_METRICS: usize = 100;
/// ...at most 30 dimensions per dimension set...
pub const MAX_DIMENSIONS: usize = 30;
/// ...and at most 100 values in one metric's array.
pub const MAX_VALUES: usize = 100;

/// The units tem uses (CloudWatch's `StandardUnit` spelling).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Count,
    Milliseconds,
    Percent,
}

impl Unit {
    pub fn as_str(self) -> &'static str {
        match self {
            Unit::Count => "Count",
            Unit::Milliseconds => "Milliseconds",
            Unit::Percent => "Percent",
        }
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EmfError {
    #[error("an EMF document holds at most {MAX_METRICS} metrics; split the metrics over several documents")]
    TooManyMetrics,
    #[error("an EMF dimension set holds at most {MAX_DIMENSIONS} dimensions")]
    TooManyDimensions,
    #[error("dimension {0:?} is in a dimension set but has no value; set it with .dimension()")]
    MissingDimension(String),
    #[error("metric {0:?} was added with two units")]
    UnitConflict(String),
}

/// The namespace from `METRICS_NAMESPACE`, or [`DEFAULT_NAMESPACE`].
pub fn namespace_from_env() -> String {
    std::env::var("METRICS_NAMESPACE")
        .ok()
        .filter(|n| !n.trim().is_empty())
        .unwrap_or_else(|| DEFAULT_NAMESPACE.to_string())
}

/// The function's name, as Lambda sets it (`local` outside Lambda).
pub fn function_name_from_env() -> String {
    std::env::var("AWS_LAMBDA_FUNCTION_NAME").unwrap_or_else(|_| "local".to_string())
}

/// One EMF document: dimension values, the dimension sets over them, and
/// metrics with their values (several values of one metric become an array,
/// which CloudWatch aggregates as separate samples).
#[derive(Debug, Clone, PartialEq)]
pub struct Emf {
    namespace: String,
    timestamp: DateTime<Utc>,
    dimensions: BTreeMap<String, String>,
    dimension_sets: Vec<Vec<String>>,
    metrics: Vec<(String, Unit, Vec<f64>)>,
}

impl Emf {
    pub fn new(namespace: impl Into<String>, timestamp: DateTime<Utc>) -> Self {
        Self {
            namespace: namespace.into(),
            timestamp,
            dimensions: BTreeMap::new(),
            dimension_sets: Vec::new(),
            metrics: Vec::new(),
        }
    }

    pub fn dimension(mut self, name: &str, value: &str) -> Self {
        self.dimensions.insert(name.to_string(), value.to_string());
        self
    }

    pub fn dimension_set(mut self, names: &[&str]) -> Self {
        self.dimension_sets
            .push(names.iter().map(|n| n.to_string()).collect());
        self
    }

    /// Adds one sample of a metric.
    pub fn add(&mut self, name: &str, unit: Unit, value: f64) -> &mut Self {
        match self.metrics.iter_mut().find(|(n, _, _)| n == name) {
            Some((_, u, values)) if *u == unit => values.push(value),
            // A unit conflict is reported by to_json, not hidden here.
            Some(_) => self.metrics.push((name.to_string(), unit, vec![value])),
            None => self.metrics.push((name.to_string(), unit, vec![value])),
        }
        self
    }

    pub fn is_empty(&self) -> bool {
        self.metrics.is_empty()
    }

    /// The document as the specification describes it: `_aws` with the
    /// timestamp in epoch milliseconds and one directive, each dimension and
    /// metric as a top-level member.
    pub fn to_json(&self) -> Result<Value, EmfError> {
        let mut names: Vec<&str> = Vec::new();
        for (name, unit, _) in &self.metrics {
            if self.metrics.iter().any(|(n, u, _)| n == name && u != unit) {
                return Err(EmfError::UnitConflict(name.clone()));
            }
            if !names.contains(&name.as_str()) {
                names.push(name);
            }
        }
        if names.len() > MAX_METRICS {
            return Err(EmfError::TooManyMetrics);
        }
        for set in &self.dimension_sets {
            if set.len() > MAX_DIMENSIONS {
                return Err(EmfError::TooManyDimensions);
            }
            if let Some(missing) = set.iter().find(|d| !self.dimensions.contains_key(*d)) {
                return Err(EmfError::MissingDimension(missing.clone()));
            }
        }
        let mut document = Map::new();
        document.insert(
            "_aws".into(),
            json!({
                "Timestamp": self.timestamp.timestamp_millis(),
                "CloudWatchMetrics": [{
                    "Namespace": self.namespace,
                    "Dimensions": self.dimension_sets,
                    "Metrics": self.metrics.iter()
                        .map(|(name, unit, _)| json!({"Name": name, "Unit": unit.as_str()}))
                        .collect::<Vec<_>>(),
                }],
            }),
        );
        for (name, value) in &self.dimensions {
            document.insert(name.clone(), Value::String(value.clone()));
        }
        for (name, _, values) in &self.metrics {
            let value = match values.as_slice() {
                [one] => json!(one),
                many => json!(many),
            };
            document.insert(name.clone(), value);
        }
        Ok(Value::Object(document))
    }

    /// The documents to print: one per 100 samples of the longest metric,
    /// since EMF caps a metric's array at 100 values.
    pub fn split(&self) -> Vec<Emf> {
        let longest = self
            .metrics
            .iter()
            .map(|(_, _, v)| v.len())
            .max()
            .unwrap_or(0);
        if longest <= MAX_VALUES {
            return vec![self.clone()];
        }
        (0..longest.div_ceil(MAX_VALUES))
            .map(|chunk| {
                let mut part = self.clone();
                part.metrics = self
                    .metrics
                    .iter()
                    .filter_map(|(name, unit, values)| {
                        let slice: Vec<f64> = values
                            .iter()
                            .skip(chunk * MAX_VALUES)
                            .take(MAX_VALUES)
                            .copied()
                            .collect();
                        (!slice.is_empty()).then(|| (name.clone(), *unit, slice))
                    })
                    .collect();
                part
            })
            .collect()
    }

    /// Prints the document as one line on stdout. One `write_all` under the
    /// stdout lock, like the tracing subscriber's own lines, so a metrics
    /// line is never interleaved with a log line. A document that breaks
    /// the specification is logged, not printed: metrics never fail a step.
    pub fn emit(&self) {
        for part in self.split() {
            match part.to_json() {
                Ok(document) => {
                    let mut line = document.to_string();
                    line.push('\n');
                    let stdout = std::io::stdout();
                    let mut lock = stdout.lock();
                    let _ = lock.write_all(line.as_bytes());
                    let _ = lock.flush();
                }
                Err(e) => tracing::warn!(error = %e, "metrics not emitted"),
            }
        }
    }
}

/// The tasks-failed alarm without metric math: sync-manager emits a
/// TaskFailureShare sample of 0 per task it starts, the runtime one of 100
/// per task it fails, so the Average is 100 f / (c + f) for c started and f
/// failed tasks, and "failed over 10% of started" (f / c > 0.1) is an
/// Average over 100 x 0.1 / 1.1 = 9.09.
pub const TASK_FAILURE_SHARE_ALARM: f64 = 100.0 * 0.1 / 1.1;

/// A document with one metric set on the given dimensions: the common case
/// of domain metrics (`CdrsLoaded` per provider, `FanOutSent`, ...). A
/// name given several times becomes several samples.
pub fn emit_counts(dimensions: &[(&str, &str)], counts: &[(&str, Unit, f64)]) {
    let mut emf = Emf::new(namespace_from_env(), Utc::now());
    for (name, value) in dimensions {
        emf = emf.dimension(name, value);
    }
    let names: Vec<&str> = dimensions.iter().map(|(n, _)| *n).collect();
    emf = emf.dimension_set(&names);
    for (name, unit, value) in counts {
        emf.add(name, *unit, *value);
    }
    emf.emit();
}

/// The step metrics of one batch: per (step, provider), the messages
/// processed, failed, retried and dead-lettered, each attempt's duration and,
/// for completed steps, the chain's latency (now - the chain's start).
/// Dimension sets [Function] (the failure-rate alarm per function),
/// [Function, Step] (the dashboard and `status`'s per-step rate) and, when
/// the provider is known, [Step, Provider].
pub fn step_metrics(
    namespace: &str,
    function: &str,
    reports: &[MessageReport],
    now: DateTime<Utc>,
) -> Vec<Emf> {
    let mut groups: BTreeMap<(String, Option<String>), Vec<&MessageReport>> = BTreeMap::new();
    for report in reports {
        let step = report.step.clone().unwrap_or_else(|| "unknown".to_string());
        let provider = report.provider.clone().filter(|p| !p.is_empty());
        groups.entry((step, provider)).or_default().push(report);
    }
    let tasks_failed = reports
        .iter()
        .filter(|r| r.disposition == Disposition::DeadLettered && r.task_id.is_some())
        .count();
    let mut documents: Vec<Emf> = groups
        .into_iter()
        .map(|((step, provider), reports)| {
            let mut emf = Emf::new(namespace, now)
                .dimension("Function", function)
                .dimension("Step", &step)
                .dimension_set(&["Function"])
                .dimension_set(&["Function", "Step"]);
            if let Some(provider) = &provider {
                emf = emf
                    .dimension("Provider", provider)
                    .dimension_set(&["Step", "Provider"]);
            }
            let count =
                |f: &dyn Fn(&MessageReport) -> bool| reports.iter().filter(|r| f(r)).count() as f64;
            let failed = count(&|r| {
                matches!(
                    r.disposition,
                    Disposition::Retry | Disposition::DeadLettered
                )
            });
            let retried = count(&|r| r.disposition == Disposition::Retry);
            let dead = count(&|r| r.disposition == Disposition::DeadLettered);
            // One sample per message, 100 when it failed: the Average of an
            // hour is the failure rate in percent, which an alarm can watch
            // without metric math.
            for report in &reports {
                let failed = matches!(
                    report.disposition,
                    Disposition::Retry | Disposition::DeadLettered
                );
                emf.add(
                    "MessageFailureRate",
                    Unit::Percent,
                    if failed { 100.0 } else { 0.0 },
                );
            }
            emf.add("MessagesProcessed", Unit::Count, reports.len() as f64)
                .add("MessagesFailed", Unit::Count, failed)
                .add("MessagesRetried", Unit::Count, retried)
                .add("MessagesDeadLettered", Unit::Count, dead);
            for report in &reports {
                emf.add(
                    "StepDuration",
                    Unit::Milliseconds,
                    report.duration.as_millis() as f64,
                );
                if report.disposition == Disposition::Completed {
                    if let Some(started) = report.chain_started_at {
                        let latency = (now - started).num_milliseconds().max(0);
                        emf.add("ChainLatency", Unit::Milliseconds, latency as f64);
                    }
                }
            }
            emf
        })
        .collect();
    // A dead-lettered message with a task fails its task: one stack-wide
    // count (no dimensions), and a TaskFailureShare sample of 100 per
    // failure beside sync-manager's 0 per task started (see
    // TASK_FAILURE_SHARE_ALARM).
    if tasks_failed > 0 {
        let mut emf = Emf::new(namespace, now).dimension_set(&[]);
        emf.add("TasksFailed", Unit::Count, tasks_failed as f64);
        for _ in 0..tasks_failed {
            emf.add("TaskFailureShare", Unit::Percent, 100.0);
        }
        documents.push(emf);
    }
    documents
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use std::time::Duration;

    fn report(step: &str, provider: Option<&str>, disposition: Disposition) -> MessageReport {
        let started_at = Utc.with_ymd_and_hms(2026, 12, 2, 1, 0, 0).unwrap();
        MessageReport {
            message_id: "m".into(),
            step: Some(step.into()),
            disposition,
            detail: String::new(),
            children: vec![],
            provider: provider.map(str::to_string),
            task_id: Some("t".into()),
            attempt: 1,
            started_at,
            duration: Duration::from_millis(250),
            chain_started_at: Some(started_at - chrono::Duration::seconds(10)),
            error_kind: None,
        }
    }

    /// The specification's rules, checked on a parsed document.
    fn assert_valid_emf(document: &Value) {
        let aws = document["_aws"].as_object().expect("an _aws object");
        assert!(aws["Timestamp"].is_i64(), "Timestamp in epoch ms");
        let directives = aws["CloudWatchMetrics"].as_array().unwrap();
        assert!(!directives.is_empty());
        for directive in directives {
            assert!(directive["Namespace"]
                .as_str()
                .is_some_and(|n| !n.is_empty()));
            for set in directive["Dimensions"].as_array().unwrap() {
                let set = set.as_array().unwrap();
                assert!(set.len() <= MAX_DIMENSIONS);
                for name in set {
                    let value = &document[name.as_str().unwrap()];
                    assert!(value.is_string(), "dimension {name} is a top-level string");
                }
            }
            let metrics = directive["Metrics"].as_array().unwrap();
            assert!(metrics.len() <= MAX_METRICS);
            for metric in metrics {
                let name = metric["Name"].as_str().unwrap();
                assert!(["Count", "Milliseconds", "Percent"]
                    .contains(&metric["Unit"].as_str().unwrap()));
                let value = &document[name];
                assert!(
                    value.is_number()
                        || value.as_array().is_some_and(
                            |a| a.len() <= MAX_VALUES && a.iter().all(Value::is_number)
                        ),
                    "metric {name} is a number or an array of at most 100 numbers"
                );
            }
        }
    }

    #[test]
    fn a_batch_becomes_one_valid_document_per_step_and_provider() {
        let now = Utc.with_ymd_and_hms(2026, 12, 2, 1, 0, 5).unwrap();
        let reports = vec![
            report("SyncProfile", Some("routit"), Disposition::Completed),
            report("SyncProfile", Some("routit"), Disposition::Retry),
            report("SyncProfile", Some("routit"), Disposition::DeadLettered),
            report("SyncProfile", Some("vodafone"), Disposition::Completed),
        ];
        let documents = step_metrics("tem", "tem-RoutitSync", &reports, now);
        // routit, vodafone, and the stack-wide TasksFailed.
        assert_eq!(documents.len(), 3);
        let routit: Value =
            serde_json::from_str(&documents[0].to_json().unwrap().to_string()).unwrap();
        assert_valid_emf(&routit);
        assert_eq!(routit["_aws"]["Timestamp"], now.timestamp_millis());
        assert_eq!(routit["_aws"]["CloudWatchMetrics"][0]["Namespace"], "tem");
        assert_eq!(
            routit["_aws"]["CloudWatchMetrics"][0]["Dimensions"],
            json!([["Function"], ["Function", "Step"], ["Step", "Provider"]])
        );
        assert_eq!(routit["Function"], "tem-RoutitSync");
        assert_eq!(routit["Provider"], "routit");
        assert_eq!(routit["MessagesProcessed"], 3.0);
        assert_eq!(routit["MessagesFailed"], 2.0);
        assert_eq!(routit["MessagesRetried"], 1.0);
        assert_eq!(routit["MessagesDeadLettered"], 1.0);
        assert!(routit.get("TasksFailed").is_none());
        let tasks = documents[2].to_json().unwrap();
        assert_valid_emf(&tasks);
        assert_eq!(
            tasks["_aws"]["CloudWatchMetrics"][0]["Dimensions"],
            json!([[]])
        );
        assert_eq!(tasks["TasksFailed"], 1.0);
        assert_eq!(tasks["TaskFailureShare"], 100.0);
        assert_eq!(routit["StepDuration"], json!([250.0, 250.0, 250.0]));
        assert_eq!(routit["MessageFailureRate"], json!([0.0, 100.0, 100.0]));
        // Only the completed message has a chain latency: 10 s + 5 s.
        assert_eq!(routit["ChainLatency"], 15000.0);
        let units: Vec<(String, String)> = routit["_aws"]["CloudWatchMetrics"][0]["Metrics"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                (
                    m["Name"].as_str().unwrap().into(),
                    m["Unit"].as_str().unwrap().into(),
                )
            })
            .collect();
        assert!(units.contains(&("StepDuration".into(), "Milliseconds".into())));
        assert!(units.contains(&("MessagesFailed".into(), "Count".into())));
        assert!(units.contains(&("MessageFailureRate".into(), "Percent".into())));
    }

    #[test]
    fn a_report_without_a_provider_has_only_the_function_and_step_set() {
        let reports = vec![report("DispatchTotals", None, Disposition::Completed)];
        let documents = step_metrics("tem", "tem-Totals", &reports, Utc::now());
        assert_eq!(documents.len(), 1, "no TasksFailed without a dead letter");
        let document = documents[0].to_json().unwrap();
        assert_valid_emf(&document);
        assert_eq!(
            document["_aws"]["CloudWatchMetrics"][0]["Dimensions"],
            json!([["Function"], ["Function", "Step"]])
        );
        assert!(document.get("Provider").is_none());
    }

    #[test]
    fn the_task_failure_share_crosses_its_alarm_exactly_at_ten_percent_of_started_tasks() {
        let average =
            |started: usize, failed: usize| 100.0 * failed as f64 / (started + failed) as f64;
        assert!(average(100, 10) <= TASK_FAILURE_SHARE_ALARM + 1e-9);
        assert!(average(100, 11) > TASK_FAILURE_SHARE_ALARM);
        assert!(average(1000, 100) <= TASK_FAILURE_SHARE_ALARM + 1e-9);
        assert!(average(1000, 101) > TASK_FAILURE_SHARE_ALARM);
    }

    #[test]
    fn a_dimension_set_naming_a_dimension_without_value_is_refused() {
        let mut emf = Emf::new("tem", Utc::now()).dimension_set(&["Provider"]);
        emf.add("CdrsLoaded", Unit::Count, 1.0);
        assert_eq!(
            emf.to_json(),
            Err(EmfError::MissingDimension("Provider".into()))
        );
    }

    #[test]
    fn more_than_a_hundred_metrics_or_thirty_dimensions_are_refused() {
        let mut emf = Emf::new("tem", Utc::now());
        for i in 0..=MAX_METRICS {
            emf.add(&format!("M{i}"), Unit::Count, 1.0);
        }
        assert_eq!(emf.to_json(), Err(EmfError::TooManyMetrics));

        let names: Vec<String> = (0..=MAX_DIMENSIONS).map(|i| format!("D{i}")).collect();
        let mut emf = Emf::new("tem", Utc::now());
        for name in &names {
            emf = emf.dimension(name, "x");
        }
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let mut emf = emf.dimension_set(&refs);
        emf.add("M", Unit::Count, 1.0);
        assert_eq!(emf.to_json(), Err(EmfError::TooManyDimensions));
    }

    #[test]
    fn a_metric_added_with_two_units_is_refused() {
        let mut emf = Emf::new("tem", Utc::now());
        emf.add("StepDuration", Unit::Milliseconds, 1.0)
            .add("StepDuration", Unit::Count, 1.0);
        assert_eq!(
            emf.to_json(),
            Err(EmfError::UnitConflict("StepDuration".into()))
        );
    }

    #[test]
    fn more_than_a_hundred_values_are_split_over_documents() {
        let mut emf = Emf::new("tem", Utc::now())
            .dimension("Step", "CalculateTotals")
            .dimension_set(&["Step"]);
        for i in 0..250 {
            emf.add("StepDuration", Unit::Milliseconds, i as f64);
        }
        emf.add("MessagesProcessed", Unit::Count, 250.0);
        let parts = emf.split();
        assert_eq!(parts.len(), 3);
        let sizes: Vec<usize> = parts
            .iter()
            .map(|p| {
                let doc = p.to_json().unwrap();
                assert_valid_emf(&doc);
                doc["StepDuration"].as_array().map_or(1, Vec::len)
            })
            .collect();
        assert_eq!(sizes, vec![100, 100, 50]);
        // The count goes out once, not once per part.
        let counted = parts
            .iter()
            .filter(|p| p.to_json().unwrap().get("MessagesProcessed").is_some())
            .count();
        assert_eq!(counted, 1);
    }
}
