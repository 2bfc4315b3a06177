//! The message envelope every queue carries (see ARCHITECTURE.md, "Message envelope").
//!
//! An envelope is validated on receipt: a body that does not parse, names an
//! unknown version or an unknown step is a [`EnvelopeError`], which the chain
//! runtime sends to the dead-letter queue at once because no retry can fix it.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::command::Command;

/// The only envelope version this build understands.
pub const ENVELOPE_VERSION: u32 = 1;

/// Every message type the system knows. A step names what to do; the router
/// (see [`crate::routing`]) names the queue that does it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Step {
    /// Fetch one period of usage for one sync profile (sent by sync-manager).
    SyncProfile,
    /// Routit: ask the carrier to prepare an export.
    RoutitRequestExport,
    /// Routit: ask whether the export is ready; re-enqueues itself while it is not.
    RoutitPollExport,
    /// Routit: download the ready export into the CDR bucket.
    RoutitDownloadExport,
    /// Import one CDR export from the CDR bucket (made from its S3 notification).
    ImportCdrFile,
    /// Give customer-less CDRs their customer once their subscription exists.
    AttachUnassignedCdrs,
    /// Decide how one customer's cycle is priced, then calculate and back up.
    DispatchTotals,
    /// Calculate and store the totals of one customer's cycle.
    CalculateTotals,
    /// Append the cycle's totals to their history when they changed.
    BackupTotals,
    /// Record the cycle's anomalies (cost jumps, idle lines, roaming, unrated).
    BillingInsight,
    /// Write the cycle's draft invoice, finalise it, or add a correction.
    GenerateInvoice,
    /// Write the documents of the cycle's final invoices to S3 (UBL, PDF).
    RenderInvoice,
    /// Write the usage specification of the cycle's final invoices to S3.
    SpecifyInvoice,
    /// Audit a carrier's invoice file (`carrier-invoices/`) against the
    /// CDRs, buy rates and subscriptions, and store its findings.
    AuditCarrierInvoice,
    /// The daily maintenance: create the monthly partitions ahead.
    MaintainPartitions,
    /// The daily maintenance: archive the months past their retention to
    /// S3, then drop or delete their rows.
    ArchiveExpiredMonths,
    /// The daily maintenance: prune expired bookkeeping rows, analyse the
    /// partitioned tables, and record the run.
    PruneExpiredRecords,
}

impl Step {
    pub const ALL: [Step; 17] = [
        Step::SyncProfile,
        Step::RoutitRequestExport,
        Step::RoutitPollExport,
        Step::RoutitDownloadExport,
        Step::ImportCdrFile,
        Step::AttachUnassignedCdrs,
        Step::DispatchTotals,
        Step::CalculateTotals,
        Step::BackupTotals,
        Step::BillingInsight,
        Step::GenerateInvoice,
        Step::RenderInvoice,
        Step::SpecifyInvoice,
        Step::AuditCarrierInvoice,
        Step::MaintainPartitions,
        Step::ArchiveExpiredMonths,
        Step::PruneExpiredRecords,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Step::SyncProfile => "SyncProfile",
            Step::RoutitRequestExport => "RoutitRequestExport",
            Step::RoutitPollExport => "RoutitPollExport",
            Step::RoutitDownloadExport => "RoutitDownloadExport",
            Step::ImportCdrFile => "ImportCdrFile",
            Step::AttachUnassignedCdrs => "AttachUnassignedCdrs",
            Step::DispatchTotals => "DispatchTotals",
            Step::CalculateTotals => "CalculateTotals",
            Step::BackupTotals => "BackupTotals",
            Step::BillingInsight => "BillingInsight",
            Step::GenerateInvoice => "GenerateInvoice",
            Step::RenderInvoice => "RenderInvoice",
            Step::SpecifyInvoice => "SpecifyInvoice",
            Step::AuditCarrierInvoice => "AuditCarrierInvoice",
            Step::MaintainPartitions => "MaintainPartitions",
            Step::ArchiveExpiredMonths => "ArchiveExpiredMonths",
            Step::PruneExpiredRecords => "PruneExpiredRecords",
        }
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Step {
    type Err = EnvelopeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Step::ALL
            .into_iter()
            .find(|step| step.as_str() == s)
            .ok_or_else(|| EnvelopeError::UnknownStep(s.to_string()))
    }
}

/// One step still to run after the current one. Senders make links from
/// a [`Command`] (`ChainLink::from(command)`); the payload stays JSON here
/// because the runtime merges a step's output into it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChainLink {
    pub step: Step,
    #[serde(default = "empty_object")]
    pub payload: Value,
}

fn empty_object() -> Value {
    Value::Object(Map::new())
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    pub version: u32,
    pub id: String,
    pub step: Step,
    #[serde(default = "empty_object")]
    pub payload: Value,
    #[serde(default)]
    pub chain: Vec<ChainLink>,
    #[serde(default)]
    pub task_id: Option<String>,
    /// Attempts spent on this step in earlier SQS messages: the runtime
    /// re-sends a step that only waited for a database connection as a new
    /// message (its receive count starts over) and carries the count here.
    #[serde(default)]
    pub attempt: u32,
    pub created_at: DateTime<Utc>,
    pub trace_id: String,
    /// How many steps ran before this one in the same chain.
    #[serde(default)]
    pub depth: u32,
    /// How often this step has re-enqueued itself (Routit polling).
    #[serde(default)]
    pub requeues: u32,
    /// How often this step was put back unattempted because no database
    /// connection came in time: each postponement waits twice as long as
    /// the one before, so a database outage is not hammered.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub postponements: u32,
    /// The hand-off token (`s3://bucket/key`) this root message continues:
    /// set on the import of an export a sync task stored, so the import
    /// counts on that task only while the task has this hand-off open.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handoff: Option<String>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum EnvelopeError {
    #[error("message body is not a JSON object: {0}")]
    NotJson(String),
    #[error("envelope has no version; senders must set \"version\": {ENVELOPE_VERSION}")]
    MissingVersion,
    #[error("envelope version {0} is not supported by this build (supports {ENVELOPE_VERSION}); deploy a build that knows it or re-send as version {ENVELOPE_VERSION}")]
    UnsupportedVersion(u64),
    #[error("unknown step {0:?}; known steps: {known}", known = Step::ALL.map(Step::as_str).join(", "))]
    UnknownStep(String),
    #[error("malformed envelope: {0}")]
    Malformed(String),
}

impl Envelope {
    /// A new chain that starts with `command`, e.g. the `SyncProfile` that
    /// sync-manager sends. Senders start chains this way.
    pub fn start(
        id: impl Into<String>,
        command: Command,
        chain: Vec<ChainLink>,
        task_id: Option<String>,
        now: DateTime<Utc>,
    ) -> Self {
        Self::root(id, command.step(), command.payload(), chain, task_id, now)
    }

    /// A chain root with a payload as it is: for tests and tools that must
    /// send what no [`Command`] makes (a payload that does not parse, a
    /// benchmark's extra fields). Senders use [`Self::start`].
    pub fn root(
        id: impl Into<String>,
        step: Step,
        payload: Value,
        chain: Vec<ChainLink>,
        task_id: Option<String>,
        now: DateTime<Utc>,
    ) -> Self {
        let id = id.into();
        Self {
            version: ENVELOPE_VERSION,
            trace_id: id.clone(),
            id,
            step,
            payload,
            chain,
            task_id,
            attempt: 0,
            created_at: now,
            depth: 0,
            requeues: 0,
            postponements: 0,
            handoff: None,
        }
    }

    /// Parses and validates a message body.
    pub fn parse(body: &str) -> Result<Self, EnvelopeError> {
        let value: Value =
            serde_json::from_str(body).map_err(|e| EnvelopeError::NotJson(e.to_string()))?;
        let object = value
            .as_object()
            .ok_or_else(|| EnvelopeError::NotJson(format!("found {}", json_kind(&value))))?;
        match object.get("version") {
            None => return Err(EnvelopeError::MissingVersion),
            Some(Value::Number(n)) if n.as_u64() == Some(u64::from(ENVELOPE_VERSION)) => {}
            Some(Value::Number(n)) => {
                return Err(EnvelopeError::UnsupportedVersion(n.as_u64().unwrap_or(0)))
            }
            Some(other) => {
                return Err(EnvelopeError::Malformed(format!(
                    "version must be a number, found {}",
                    json_kind(other)
                )))
            }
        }
        // Name an unknown step explicitly rather than through serde's variant list.
        for step in std::iter::once(object.get("step")).chain(
            object
                .get("chain")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .map(|link| link.get("step")),
        ) {
            if let Some(Value::String(name)) = step {
                name.parse::<Step>()?;
            }
        }
        let envelope: Envelope =
            serde_json::from_value(value).map_err(|e| EnvelopeError::Malformed(e.to_string()))?;
        if envelope.id.trim().is_empty() {
            return Err(EnvelopeError::Malformed("id must not be empty".into()));
        }
        if !envelope.payload.is_object() {
            return Err(EnvelopeError::Malformed("payload must be an object".into()));
        }
        Ok(envelope)
    }

    pub fn to_body(&self) -> String {
        serde_json::to_string(self).expect("an envelope always serialises")
    }

    /// The message that continues the chain after this one succeeded.
    ///
    /// `next` are steps the handler wants to run before the rest of the chain;
    /// `output` is merged into the next payload so a step can hand values on
    /// (Routit's export id), without overriding what the chain already fixed.
    /// Returns `None` when the chain is finished.
    pub fn continuation(&self, output: &Value, next: Vec<ChainLink>) -> Option<Envelope> {
        let mut remaining = next;
        remaining.extend(self.chain.iter().cloned());
        if remaining.is_empty() {
            return None;
        }
        let head = remaining.remove(0);
        let mut payload = output.as_object().cloned().unwrap_or_default();
        if let Value::Object(fixed) = head.payload {
            payload.extend(fixed);
        }
        Some(self.child("0", head.step, Value::Object(payload), remaining))
    }

    /// The continuation of this chain from its first `until` link, leaving
    /// out the links before it (the whole chain when it has none). Its id is
    /// the one [`Self::continuation`] would give: a step runs once per
    /// message id, so an attempt that skipped and an earlier attempt that
    /// did not can never both go on, nor both count on the task.
    pub fn skipping_to(&self, until: Step) -> Option<Envelope> {
        let Some(at) = self.chain.iter().position(|link| link.step == until) else {
            return self.continuation(&Value::Null, Vec::new());
        };
        let mut remaining = self.chain[at..].to_vec();
        let head = remaining.remove(0);
        Some(self.child("0", head.step, head.payload, remaining))
    }

    /// One message per branch, each followed by the rest of this chain
    /// (fan-out, e.g. `DispatchTotals` per customer and cycle an import
    /// touched). Ids derive from this message's id and the branch position.
    pub fn fork(&self, branches: Vec<ChainLink>) -> Vec<Envelope> {
        branches
            .into_iter()
            .enumerate()
            .map(|(position, head)| {
                self.child(
                    &format!("branch-{position}"),
                    head.step,
                    head.payload,
                    self.chain.clone(),
                )
            })
            .collect()
    }

    /// The next message of this one's chain, at `position`: one step deeper,
    /// same task and trace, a fresh attempt count.
    fn child(&self, position: &str, step: Step, payload: Value, chain: Vec<ChainLink>) -> Envelope {
        Envelope {
            version: ENVELOPE_VERSION,
            id: child_id(&self.id, position),
            step,
            payload,
            chain,
            task_id: self.task_id.clone(),
            attempt: 0,
            created_at: self.created_at,
            trace_id: self.trace_id.clone(),
            depth: self.depth + 1,
            requeues: 0,
            postponements: 0,
            handoff: None,
        }
    }

    /// The same step again, later (Routit: export not ready yet).
    pub fn requeued(&self, payload: Value) -> Envelope {
        Envelope {
            id: child_id(&self.id, "requeue"),
            payload,
            attempt: 0,
            requeues: self.requeues + 1,
            postponements: 0,
            ..self.clone()
        }
    }
}

/// Derives a child's id from its parent's id and its position, so a parent
/// that runs twice sends children with the same ids, which the idempotency
/// store then deduplicates on receipt.
pub fn child_id(parent_id: &str, position: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(parent_id.as_bytes());
    hasher.update(b"/");
    hasher.update(position.as_bytes());
    hex::encode(&hasher.finalize()[..16])
}

/// A deterministic id for anything derived from a list of parts.
pub fn derived_id(parts: &[&str]) -> String {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update(part.as_bytes());
        hasher.update(b"\x1f");
    }
    hex::encode(&hasher.finalize()[..16])
}

/// Best-effort task id of a body that failed validation, so the task it
/// belongs to can still be marked failed.
pub fn salvage_task_id(body: &str) -> Option<String> {
    let value: Value = serde_json::from_str(body).ok()?;
    value.get("task_id")?.as_str().map(str::to_string)
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn link(step: Step, payload: Value) -> ChainLink {
        ChainLink { step, payload }
    }

    fn sample() -> Envelope {
        Envelope::root(
            "root-1",
            Step::SyncProfile,
            json!({"profile_id": 7, "provider": "routit"}),
            vec![
                link(Step::RoutitPollExport, json!({"profile_id": 7})),
                link(Step::RoutitDownloadExport, json!({})),
            ],
            Some("task-1".into()),
            DateTime::parse_from_rfc3339("2025-01-02T03:04:05Z")
                .unwrap()
                .with_timezone(&Utc),
        )
    }

    #[test]
    fn an_envelope_survives_a_round_trip_through_its_body() {
        let envelope = sample();
        assert_eq!(Envelope::parse(&envelope.to_body()).unwrap(), envelope);
    }

    #[test]
    fn a_body_that_is_not_json_is_rejected_with_the_parser_reason() {
        let err = Envelope::parse("{not json").unwrap_err();
        assert!(matches!(err, EnvelopeError::NotJson(_)), "{err:?}");
        assert!(matches!(
            Envelope::parse("[1,2]").unwrap_err(),
            EnvelopeError::NotJson(reason) if reason.contains("array")
        ));
    }

    #[test]
    fn a_missing_or_unknown_version_is_rejected() {
        let mut value = serde_json::to_value(sample()).unwrap();
        value.as_object_mut().unwrap().remove("version");
        assert_eq!(
            Envelope::parse(&value.to_string()).unwrap_err(),
            EnvelopeError::MissingVersion
        );
        value["version"] = json!(2);
        assert_eq!(
            Envelope::parse(&value.to_string()).unwrap_err(),
            EnvelopeError::UnsupportedVersion(2)
        );
    }

    #[test]
    fn an_unknown_step_is_named_in_the_error_also_inside_the_chain() {
        let mut value = serde_json::to_value(sample()).unwrap();
        value["step"] = json!("LaunchRocket");
        assert_eq!(
            Envelope::parse(&value.to_string()).unwrap_err(),
            EnvelopeError::UnknownStep("LaunchRocket".into())
        );
        let mut value = serde_json::to_value(sample()).unwrap();
        value["chain"][1]["step"] = json!("Nope");
        assert_eq!(
            Envelope::parse(&value.to_string()).unwrap_err(),
            EnvelopeError::UnknownStep("Nope".into())
        );
    }

    #[test]
    fn missing_fields_and_wrong_types_are_malformed() {
        let mut value = serde_json::to_value(sample()).unwrap();
        value.as_object_mut().unwrap().remove("id");
        assert!(matches!(
            Envelope::parse(&value.to_string()).unwrap_err(),
            EnvelopeError::Malformed(reason) if reason.contains("id")
        ));
        let mut value = serde_json::to_value(sample()).unwrap();
        value["payload"] = json!([1]);
        assert!(matches!(
            Envelope::parse(&value.to_string()).unwrap_err(),
            EnvelopeError::Malformed(_)
        ));
    }

    #[test]
    fn child_ids_are_deterministic_and_differ_by_position_and_parent() {
        assert_eq!(child_id("a", "0"), child_id("a", "0"));
        assert_ne!(child_id("a", "0"), child_id("a", "1"));
        assert_ne!(child_id("a", "0"), child_id("b", "0"));
        assert_eq!(child_id("a", "0").len(), 32);
    }

    #[test]
    fn a_parent_that_runs_twice_produces_the_same_continuation() {
        let parent = sample();
        let output = json!({"export_id": "x1"});
        let first = parent.continuation(&output, vec![]).unwrap();
        let second = parent.continuation(&output, vec![]).unwrap();
        assert_eq!(first, second);
        assert_eq!(first.step, Step::RoutitPollExport);
        assert_eq!(first.chain.len(), 1);
        assert_eq!(first.depth, 1);
        assert_eq!(first.task_id.as_deref(), Some("task-1"));
        assert_eq!(first.trace_id, parent.trace_id);
        assert_eq!(first.id, child_id(&parent.id, "0"));
    }

    #[test]
    fn output_is_merged_into_the_next_payload_without_overriding_the_chain() {
        let parent = sample();
        let next = parent
            .continuation(&json!({"export_id": "x1", "profile_id": 99}), vec![])
            .unwrap();
        assert_eq!(next.payload, json!({"export_id": "x1", "profile_id": 7}));
    }

    #[test]
    fn steps_a_handler_adds_run_before_the_rest_of_the_chain() {
        let parent = sample();
        let next = parent
            .continuation(
                &json!({}),
                vec![link(Step::RoutitRequestExport, json!({"a": 1}))],
            )
            .unwrap();
        assert_eq!(next.step, Step::RoutitRequestExport);
        let steps: Vec<Step> = next.chain.iter().map(|l| l.step).collect();
        assert_eq!(
            steps,
            vec![Step::RoutitPollExport, Step::RoutitDownloadExport]
        );
    }

    #[test]
    fn a_fork_makes_one_message_per_branch_each_with_the_rest_of_the_chain() {
        let parent = sample();
        let branches = parent.fork(vec![
            link(Step::DispatchTotals, json!({"customer_id": 1})),
            link(Step::DispatchTotals, json!({"customer_id": 2})),
        ]);
        assert_eq!(branches.len(), 2);
        assert_ne!(branches[0].id, branches[1].id);
        assert_eq!(
            branches,
            parent.fork(vec![
                link(Step::DispatchTotals, json!({"customer_id": 1})),
                link(Step::DispatchTotals, json!({"customer_id": 2})),
            ])
        );
        for branch in &branches {
            assert_eq!(branch.chain, parent.chain);
            assert_eq!(branch.depth, 1);
            assert_eq!(branch.task_id, parent.task_id);
        }
        assert_eq!(branches[1].payload["customer_id"], 2);
    }

    #[test]
    fn skipping_to_a_step_leaves_out_the_links_before_it_and_keeps_the_continuations_id() {
        let mut parent = sample();
        parent
            .chain
            .push(link(Step::GenerateInvoice, json!({"customer_id": 1})));
        let next = parent.skipping_to(Step::RoutitDownloadExport).unwrap();
        assert_eq!(next.step, Step::RoutitDownloadExport);
        assert_eq!(
            next.chain,
            vec![link(Step::GenerateInvoice, json!({"customer_id": 1}))]
        );
        assert_eq!(
            next.id,
            parent.continuation(&json!({}), vec![]).unwrap().id,
            "an attempt that skips and one that did not send one id"
        );
        assert_eq!((next.depth, next.task_id.as_deref()), (1, Some("task-1")));
        let last = parent.skipping_to(Step::GenerateInvoice).unwrap();
        assert!(last.chain.is_empty());
        // A chain without the step is continued as it was fixed.
        assert_eq!(
            parent.skipping_to(Step::SyncProfile),
            parent.continuation(&Value::Null, vec![])
        );
    }

    #[test]
    fn the_end_of_the_chain_has_no_continuation() {
        let mut last = sample();
        last.chain.clear();
        assert!(last.continuation(&json!({}), vec![]).is_none());
    }

    #[test]
    fn a_requeued_message_counts_its_requeues_and_gets_a_new_derived_id() {
        let parent = sample();
        let again = parent.requeued(json!({"export_id": "x"}));
        assert_eq!(again.requeues, 1);
        assert_eq!(again.step, parent.step);
        assert_eq!(again.chain, parent.chain);
        assert_eq!(again.id, child_id(&parent.id, "requeue"));
        assert_eq!(again.requeued(json!({})).requeues, 2);
    }

    #[test]
    fn the_task_id_of_a_broken_body_can_still_be_found() {
        assert_eq!(
            salvage_task_id(r#"{"task_id":"t9","step":"Nope"}"#).as_deref(),
            Some("t9")
        );
        assert_eq!(salvage_task_id("garbage"), None);
    }
}
