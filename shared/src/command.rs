//! The chain's commands: one variant per [`Step`], each with the payload
//! its handler reads, so the sender and the handler share one type instead
//! of agreeing on JSON by hand.
//!
//! The wire format does not change: an envelope still carries `step` and
//! `payload` (see [`crate::envelope`]), so messages already on a queue, the
//! bodies of failed messages and the emulator tests keep working. A payload
//! is typed on both ends: senders build links and roots from a [`Command`],
//! and handlers match on [`Envelope::command`]. A payload that does not
//! parse is a [`CommandError`], which the handlers turn into a permanent
//! step error (no retry can fix it) that names the step and what it
//! expects.
//!
//! Payload structs ignore fields they do not know: the runtime merges a
//! step's output into the next payload (Routit's `export_id`), and messages
//! sent by earlier builds carry fields (`method`, `import_file_id`) that no
//! handler reads any more.

use std::fmt;

use chrono::NaiveDate;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::envelope::{ChainLink, Envelope, Step};
use crate::routing::Provider;

/// One step of a chain with its payload.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    SyncProfile(SyncPeriod),
    RoutitRequestExport(RoutitExport),
    RoutitPollExport(RoutitExport),
    RoutitDownloadExport(RoutitExport),
    ImportCdrFile(ImportCdrFile),
    AttachUnassignedCdrs(AttachUnassignedCdrs),
    DispatchTotals(CyclePayload),
    CalculateTotals(CyclePayload),
    BackupTotals(CyclePayload),
    BillingInsight(CyclePayload),
    GenerateInvoice(CyclePayload),
    RenderInvoice(CyclePayload),
    SpecifyInvoice(CyclePayload),
    AuditCarrierInvoice(AuditCarrierInvoice),
    MaintainPartitions(MaintenanceRun),
    ArchiveExpiredMonths(MaintenanceRun),
    PruneExpiredRecords(MaintenanceRun),
}

/// One daily maintenance run: every step of its chain has the run's id
/// (its `maintenance_run` row) and the day it runs for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MaintenanceRun {
    pub run_id: String,
    pub today: NaiveDate,
}

/// One period of one sync profile: what every step of a provider sync is
/// about. `provider` also routes the message to that provider's queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncPeriod {
    pub provider: Provider,
    pub profile_id: i64,
    pub period: NaiveDate,
}

/// A Routit export in the making: the sync period, the reference that makes
/// the export request idempotent at Routit, and (from the request step on,
/// handed on as its output) the export's id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoutitExport {
    #[serde(flatten)]
    pub sync: SyncPeriod,
    pub reference: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub export_id: Option<String>,
}

/// What a step hands on to the next one of its chain (merged into the next
/// payload by the runtime): Routit's export id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportHandover {
    pub export_id: String,
}

/// One CDR export in the CDR bucket to import.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportCdrFile {
    pub bucket: String,
    pub key: String,
    /// From the S3 notification: which version of the object was notified.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// Given from the console; otherwise read from the key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<Provider>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile_id: Option<i64>,
    /// Set by the notification adapter when the notification cannot be
    /// imported as it is (several records in one message): the import
    /// fails permanently with this reason, so it reaches the DLQ visibly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl ImportCdrFile {
    /// The import of `bucket/key`, with the provider and profile read from the key.
    pub fn object(bucket: impl Into<String>, key: impl Into<String>) -> Self {
        Self {
            bucket: bucket.into(),
            key: key.into(),
            etag: None,
            size: None,
            provider: None,
            profile_id: None,
            error: None,
        }
    }
}

/// One carrier invoice file in the CDR bucket to audit
/// (`carrier-invoices/{provider}/...`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditCarrierInvoice {
    pub bucket: String,
    pub key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    /// Given from the console; otherwise read from the key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<Provider>,
}

/// Attaching customer-less CDRs has no parameters: it looks at all of them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachUnassignedCdrs {}

/// One customer's billing cycle, and why it is being (re)calculated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CyclePayload {
    pub customer_id: i64,
    /// The cycle's first day.
    pub cycle: NaiveDate,
    /// Missing in a console command, which is then the cause.
    #[serde(default)]
    pub cause: Cause,
}

impl CyclePayload {
    pub fn new(customer_id: i64, cycle: NaiveDate, cause: Cause) -> Self {
        Self {
            customer_id,
            cycle,
            cause,
        }
    }
}

/// Why a cycle's totals are (re)calculated; recorded with every totals
/// history entry (`totals_history.cause`), so the spelling is kept.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Cause {
    /// Asked for from the console (also when a console command names no cause).
    #[default]
    Console,
    /// An import loaded CDRs of the cycle.
    Import,
    /// CDRs that arrived before their subscription were attached.
    LateSubscription,
    /// A catalog apply changed the customer's pricing.
    Rerating,
    /// The invoice sweep: the cycle and its grace period ended.
    CycleClosed,
    /// The local runner's backfill of every cycle with CDRs.
    Backfill,
}

impl Cause {
    pub const ALL: [Cause; 6] = [
        Cause::Console,
        Cause::Import,
        Cause::LateSubscription,
        Cause::Rerating,
        Cause::CycleClosed,
        Cause::Backfill,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Cause::Console => "console",
            Cause::Import => "import",
            Cause::LateSubscription => "late_subscription",
            Cause::Rerating => "rerating",
            Cause::CycleClosed => "cycle_closed",
            Cause::Backfill => "backfill",
        }
    }
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A payload that is not what its step needs. No retry can fix it.
#[derive(Debug, thiserror::Error)]
#[error("{step} payload is invalid: {reason}; {step} expects {expected}", expected = expected(*.step))]
pub struct CommandError {
    pub step: Step,
    /// What did not parse, with the path to the field.
    pub reason: String,
    #[source]
    pub source: serde_json::Error,
}

/// What each step's payload looks like, for the error of one that does not parse.
pub fn expected(step: Step) -> &'static str {
    match step {
        Step::SyncProfile => r#"{"provider": "routit", "profile_id": 1, "period": "YYYY-MM-DD"}"#,
        Step::RoutitRequestExport | Step::RoutitPollExport | Step::RoutitDownloadExport => {
            r#"{"provider": "routit", "profile_id": 1, "period": "YYYY-MM-DD", "reference": "...", "export_id"?: "..."}"#
        }
        Step::ImportCdrFile => {
            r#"{"bucket": "...", "key": "inbox/{provider}/{profile_id}/...", "provider"?: "routit", "profile_id"?: 1}"#
        }
        Step::AttachUnassignedCdrs => "{}",
        Step::AuditCarrierInvoice => {
            r#"{"bucket": "...", "key": "carrier-invoices/{provider}/...", "provider"?: "kpn_een"}"#
        }
        Step::DispatchTotals
        | Step::CalculateTotals
        | Step::BackupTotals
        | Step::BillingInsight
        | Step::GenerateInvoice
        | Step::RenderInvoice
        | Step::SpecifyInvoice => {
            r#"{"customer_id": 1, "cycle": "YYYY-MM-DD", "cause"?: "console" (or import, late_subscription, rerating, cycle_closed, backfill)}"#
        }
        Step::MaintainPartitions | Step::ArchiveExpiredMonths | Step::PruneExpiredRecords => {
            r#"{"run_id": "...", "today": "YYYY-MM-DD"}"#
        }
    }
}

fn parse<T: serde::de::DeserializeOwned>(step: Step, payload: &Value) -> Result<T, CommandError> {
    serde_path_to_error::deserialize(payload).map_err(|e| {
        let path = e.path().to_string();
        let source = e.into_inner();
        let reason = if path == "." {
            source.to_string()
        } else {
            format!("{path}: {source}")
        };
        CommandError {
            step,
            reason,
            source,
        }
    })
}

fn to_payload<T: Serialize>(payload: &T) -> Value {
    // Payload structs are plain data with string keys; they always serialise.
    serde_json::to_value(payload).unwrap_or_else(|_| Value::Object(Default::default()))
}

impl Command {
    /// Reads a step's payload.
    pub fn parse(step: Step, payload: &Value) -> Result<Self, CommandError> {
        Ok(match step {
            Step::SyncProfile => Command::SyncProfile(parse(step, payload)?),
            Step::RoutitRequestExport => Command::RoutitRequestExport(parse(step, payload)?),
            Step::RoutitPollExport => Command::RoutitPollExport(parse(step, payload)?),
            Step::RoutitDownloadExport => Command::RoutitDownloadExport(parse(step, payload)?),
            Step::ImportCdrFile => Command::ImportCdrFile(parse(step, payload)?),
            Step::AttachUnassignedCdrs => Command::AttachUnassignedCdrs(parse(step, payload)?),
            Step::DispatchTotals => Command::DispatchTotals(parse(step, payload)?),
            Step::CalculateTotals => Command::CalculateTotals(parse(step, payload)?),
            Step::BackupTotals => Command::BackupTotals(parse(step, payload)?),
            Step::BillingInsight => Command::BillingInsight(parse(step, payload)?),
            Step::GenerateInvoice => Command::GenerateInvoice(parse(step, payload)?),
            Step::RenderInvoice => Command::RenderInvoice(parse(step, payload)?),
            Step::SpecifyInvoice => Command::SpecifyInvoice(parse(step, payload)?),
            Step::AuditCarrierInvoice => Command::AuditCarrierInvoice(parse(step, payload)?),
            Step::MaintainPartitions => Command::MaintainPartitions(parse(step, payload)?),
            Step::ArchiveExpiredMonths => Command::ArchiveExpiredMonths(parse(step, payload)?),
            Step::PruneExpiredRecords => Command::PruneExpiredRecords(parse(step, payload)?),
        })
    }

    pub fn step(&self) -> Step {
        match self {
            Command::SyncProfile(_) => Step::SyncProfile,
            Command::RoutitRequestExport(_) => Step::RoutitRequestExport,
            Command::RoutitPollExport(_) => Step::RoutitPollExport,
            Command::RoutitDownloadExport(_) => Step::RoutitDownloadExport,
            Command::ImportCdrFile(_) => Step::ImportCdrFile,
            Command::AttachUnassignedCdrs(_) => Step::AttachUnassignedCdrs,
            Command::DispatchTotals(_) => Step::DispatchTotals,
            Command::CalculateTotals(_) => Step::CalculateTotals,
            Command::BackupTotals(_) => Step::BackupTotals,
            Command::BillingInsight(_) => Step::BillingInsight,
            Command::GenerateInvoice(_) => Step::GenerateInvoice,
            Command::RenderInvoice(_) => Step::RenderInvoice,
            Command::SpecifyInvoice(_) => Step::SpecifyInvoice,
            Command::AuditCarrierInvoice(_) => Step::AuditCarrierInvoice,
            Command::MaintainPartitions(_) => Step::MaintainPartitions,
            Command::ArchiveExpiredMonths(_) => Step::ArchiveExpiredMonths,
            Command::PruneExpiredRecords(_) => Step::PruneExpiredRecords,
        }
    }

    /// The payload as it goes on the wire.
    pub fn payload(&self) -> Value {
        match self {
            Command::SyncProfile(p) => to_payload(p),
            Command::RoutitRequestExport(p)
            | Command::RoutitPollExport(p)
            | Command::RoutitDownloadExport(p) => to_payload(p),
            Command::ImportCdrFile(p) => to_payload(p),
            Command::AttachUnassignedCdrs(p) => to_payload(p),
            Command::DispatchTotals(p)
            | Command::CalculateTotals(p)
            | Command::BackupTotals(p)
            | Command::BillingInsight(p)
            | Command::GenerateInvoice(p)
            | Command::RenderInvoice(p)
            | Command::SpecifyInvoice(p) => to_payload(p),
            Command::AuditCarrierInvoice(p) => to_payload(p),
            Command::MaintainPartitions(p)
            | Command::ArchiveExpiredMonths(p)
            | Command::PruneExpiredRecords(p) => to_payload(p),
        }
    }

    /// The command of one step of a Routit export.
    pub fn routit(step: Step, export: RoutitExport) -> Option<Self> {
        match step {
            Step::RoutitRequestExport => Some(Command::RoutitRequestExport(export)),
            Step::RoutitPollExport => Some(Command::RoutitPollExport(export)),
            Step::RoutitDownloadExport => Some(Command::RoutitDownloadExport(export)),
            _ => None,
        }
    }
}

impl From<Command> for ChainLink {
    fn from(command: Command) -> Self {
        ChainLink {
            step: command.step(),
            payload: command.payload(),
        }
    }
}

impl Envelope {
    /// This message's command: its step with its payload read.
    pub fn command(&self) -> Result<Command, CommandError> {
        Command::parse(self.step, &self.payload)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{DateTime, Utc};
    use serde_json::json;

    fn day(s: &str) -> NaiveDate {
        s.parse().unwrap()
    }

    /// One command of every step.
    fn every_command() -> Vec<Command> {
        let sync = SyncPeriod {
            provider: Provider::Routit,
            profile_id: 7,
            period: day("2025-01-14"),
        };
        let export = RoutitExport {
            sync: sync.clone(),
            reference: "task-1".into(),
            export_id: Some("x1".into()),
        };
        let cycle = CyclePayload::new(3, day("2025-01-01"), Cause::LateSubscription);
        let run = MaintenanceRun {
            run_id: "schedule:abc".into(),
            today: day("2026-12-07"),
        };
        let commands = vec![
            Command::SyncProfile(sync),
            Command::RoutitRequestExport(RoutitExport {
                export_id: None,
                ..export.clone()
            }),
            Command::RoutitPollExport(export.clone()),
            Command::RoutitDownloadExport(export),
            Command::ImportCdrFile(ImportCdrFile {
                etag: Some("e".into()),
                size: Some(10),
                provider: Some(Provider::TMobile),
                profile_id: Some(2),
                ..ImportCdrFile::object("b", "inbox/t_mobile/2/x.zip")
            }),
            Command::AttachUnassignedCdrs(AttachUnassignedCdrs {}),
            Command::DispatchTotals(cycle),
            Command::CalculateTotals(cycle),
            Command::BackupTotals(cycle),
            Command::BillingInsight(cycle),
            Command::GenerateInvoice(cycle),
            Command::RenderInvoice(cycle),
            Command::SpecifyInvoice(cycle),
            Command::AuditCarrierInvoice(AuditCarrierInvoice {
                bucket: "b".into(),
                key: "carrier-invoices/kpn_een/1/2025-03-01.csv".into(),
                etag: Some("e".into()),
                provider: None,
            }),
            Command::MaintainPartitions(run.clone()),
            Command::ArchiveExpiredMonths(run.clone()),
            Command::PruneExpiredRecords(run),
        ];
        let steps: Vec<Step> = commands.iter().map(Command::step).collect();
        assert_eq!(steps, Step::ALL, "one command of every step, in order");
        commands
    }

    fn now() -> DateTime<Utc> {
        "2025-01-15T10:00:00Z".parse().unwrap()
    }

    #[test]
    fn every_command_round_trips_through_an_envelope_body() {
        for command in every_command() {
            let envelope = Envelope::start("id-1", command.clone(), vec![], None, now());
            let parsed = Envelope::parse(&envelope.to_body()).unwrap();
            assert_eq!(parsed.step, command.step());
            assert_eq!(parsed.command().unwrap(), command);
        }
    }

    #[test]
    fn every_command_round_trips_as_a_link_of_a_chain() {
        let chain: Vec<ChainLink> = every_command().into_iter().map(ChainLink::from).collect();
        let root = Envelope::start(
            "id-1",
            Command::AttachUnassignedCdrs(AttachUnassignedCdrs {}),
            chain,
            None,
            now(),
        );
        let parsed = Envelope::parse(&root.to_body()).unwrap();
        let commands: Vec<Command> = parsed
            .chain
            .iter()
            .map(|link| Command::parse(link.step, &link.payload).unwrap())
            .collect();
        assert_eq!(commands, every_command());
    }

    #[test]
    fn the_wire_format_of_payloads_is_what_earlier_builds_sent() {
        let cycle = CyclePayload::new(1, day("2025-01-01"), Cause::CycleClosed);
        assert_eq!(
            Command::GenerateInvoice(cycle).payload(),
            json!({"customer_id": 1, "cycle": "2025-01-01", "cause": "cycle_closed"})
        );
        assert_eq!(
            Command::AttachUnassignedCdrs(AttachUnassignedCdrs {}).payload(),
            json!({})
        );
        assert_eq!(
            Command::ImportCdrFile(ImportCdrFile::object("b", "k")).payload(),
            json!({"bucket": "b", "key": "k"})
        );
        let request = RoutitExport {
            sync: SyncPeriod {
                provider: Provider::Routit,
                profile_id: 1,
                period: day("2025-01-14"),
            },
            reference: "r".into(),
            export_id: None,
        };
        assert_eq!(
            Command::RoutitRequestExport(request).payload(),
            json!({"provider": "routit", "profile_id": 1, "period": "2025-01-14", "reference": "r"})
        );
    }

    #[test]
    fn every_cause_keeps_the_spelling_the_history_records() {
        let spelled: Vec<Value> = Cause::ALL
            .iter()
            .map(|c| serde_json::to_value(c).unwrap())
            .collect();
        assert_eq!(
            spelled,
            [
                "console",
                "import",
                "late_subscription",
                "rerating",
                "cycle_closed",
                "backfill"
            ]
            .map(|s| json!(s))
        );
        for cause in Cause::ALL {
            assert_eq!(json!(cause.as_str()), serde_json::to_value(cause).unwrap());
        }
    }

    #[test]
    fn a_payload_of_an_earlier_build_still_parses_and_its_unread_fields_are_dropped() {
        // DispatchTotals used to send a `method` nobody read; imports an
        // `import_file_id`.
        let old = json!({"customer_id": 1, "cycle": "2025-01-01", "cause": "import",
                         "method": "rate_plan", "import_file_id": 9});
        assert_eq!(
            Command::parse(Step::CalculateTotals, &old).unwrap(),
            Command::CalculateTotals(CyclePayload::new(1, day("2025-01-01"), Cause::Import))
        );
    }

    #[test]
    fn a_console_cycle_without_a_cause_is_caused_by_the_console() {
        let parsed = Command::parse(
            Step::DispatchTotals,
            &json!({"customer_id": 1, "cycle": "2025-01-01"}),
        )
        .unwrap();
        assert_eq!(
            parsed,
            Command::DispatchTotals(CyclePayload::new(1, day("2025-01-01"), Cause::Console))
        );
    }

    #[test]
    fn a_payload_that_does_not_parse_names_the_step_the_field_and_what_is_expected() {
        let err = Command::parse(
            Step::DispatchTotals,
            &json!({"customer_id": "one", "cycle": "2025-01-01"}),
        )
        .unwrap_err();
        assert_eq!(err.step, Step::DispatchTotals);
        let text = err.to_string();
        assert!(
            text.starts_with("DispatchTotals payload is invalid"),
            "{text}"
        );
        assert!(text.contains("customer_id"), "{text}");
        assert!(text.contains(r#"expects {"customer_id": 1"#), "{text}");

        let err = Command::parse(Step::ImportCdrFile, &json!({"bucket": "b"})).unwrap_err();
        assert!(err.to_string().contains("key"), "{err}");

        let err = Command::parse(
            Step::BackupTotals,
            &json!({"customer_id": 1, "cycle": "2025-01-01", "cause": "whim"}),
        )
        .unwrap_err();
        assert!(err.to_string().contains("cause"), "{err}");
        assert!(err.to_string().contains("cycle_closed"), "{err}");
    }

    #[test]
    fn a_routit_poll_keeps_the_export_id_the_request_handed_on() {
        let fixed = json!({"provider": "routit", "profile_id": 1, "period": "2025-01-14",
                           "reference": "task-1", "export_id": "exp-9"});
        let Command::RoutitPollExport(export) =
            Command::parse(Step::RoutitPollExport, &fixed).unwrap()
        else {
            panic!("a poll command");
        };
        assert_eq!(export.export_id.as_deref(), Some("exp-9"));
        assert_eq!(export.sync.provider, Provider::Routit);
    }
}
