//! The ops function's console commands: operator tasks that must run inside
//! the stack's network (the database may be reachable only from the VPC).
//! An event is `{"command": "<name>", ...arguments}` (events/ops/). The
//! failed-message, task and watch commands run the same code as `temctl
//! failed` and `temctl task` ([`failed`], [`timeline`], [`watch`]).

pub mod console;
pub mod failed;
pub mod settings;
pub mod status;
pub mod timeline;
pub mod watch;

#[cfg(test)]
mod fakes;

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use failed::FailedSelection;

/// A command sent to the ops function (`events/ops/*.json`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "command", rename_all = "kebab-case", deny_unknown_fields)]
pub enum OpsCommand {
    /// Apply the embedded sqlx migrations that the database does not have yet.
    /// A struct variant, not a unit one: serde ignores unknown fields beside
    /// the tag of a unit variant, and a mistyped argument (a down-migration
    /// target, say) must be refused, not silently dropped.
    Migrate {},
    /// Failed messages matching the filters (`temctl failed list`).
    FailedList(FailedSelection),
    /// Counts of failed messages per queue, step, provider and kind.
    FailedStats(FailedSelection),
    /// One failed message: envelope, chain to run, attributes, attempts.
    FailedShow { id: String },
    /// Send failed messages back to their queues (`ids`, or `all` with filters).
    FailedRetry(FailedSelection),
    /// Remove failed messages; needs `"yes": true`.
    FailedRemove(FailedSelection),
    /// One sync task's steps as a timeline.
    TaskShow { task_id: String },
    /// Sync tasks created in the last `since` (default 1d).
    TaskList {
        #[serde(default)]
        status: Option<String>,
        #[serde(default)]
        since: Option<String>,
        #[serde(default)]
        provider: Option<String>,
    },
    /// The scheduled watch (every minute): DLQ-only failures recorded and
    /// their tasks failed, resolved DLQ copies deleted, stalled tasks
    /// marked, expired records deleted.
    Watch {},
    /// The runbook's monitoring points and the daily extras
    /// (`ops::status`); `set` overrides thresholds by name for this call,
    /// e.g. `{"STATUS_QUEUE_DEPTH_CRITICAL": "500"}`.
    Status {
        #[serde(default)]
        set: std::collections::BTreeMap<String, String>,
    },
    /// Invoices (`temctl invoice list`): `customer` (id or code), `cycle`,
    /// `status` (draft or final), `limit` (default 100).
    InvoiceList {
        #[serde(default)]
        customer: Option<String>,
        #[serde(default)]
        cycle: Option<chrono::NaiveDate>,
        #[serde(default)]
        status: Option<String>,
        #[serde(default)]
        limit: Option<i64>,
    },
    /// One invoice by id or number (`temctl invoice show`).
    InvoiceShow { invoice: String },
    /// A presigned URL of one of an invoice's documents (`what`: pdf, ubl
    /// or specification), valid `expires_seconds` (default 900, at most
    /// 604800): the console cannot receive the file itself.
    InvoiceDownload {
        invoice: String,
        what: String,
        #[serde(default)]
        expires_seconds: Option<u64>,
    },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OpsCommandError {
    #[error("the ops event has no \"command\"; send one of {known:?}, e.g. events/ops/console-migrate.json ({{\"command\": \"migrate\"}})", known = OpsCommand::NAMES)]
    Missing,
    #[error("unknown ops command {given:?}; the known commands are {known:?}", known = OpsCommand::NAMES)]
    Unknown { given: String },
    #[error("ops command {command:?} is malformed: {reason}")]
    Malformed { command: String, reason: String },
}

impl OpsCommand {
    /// Every command's name, as the event spells it.
    pub const NAMES: &'static [&'static str] = &[
        "migrate",
        "failed-list",
        "failed-stats",
        "failed-show",
        "failed-retry",
        "failed-remove",
        "task-show",
        "task-list",
        "watch",
        "status",
        "invoice-list",
        "invoice-show",
        "invoice-download",
    ];

    /// Reads the command from a Lambda event. An unknown name is refused
    /// with the list of known ones, before its arguments are looked at.
    pub fn from_event(event: &Value) -> Result<Self, OpsCommandError> {
        let name = match event.get("command") {
            Some(Value::String(name)) => name.clone(),
            Some(other) => other.to_string(),
            None => return Err(OpsCommandError::Missing),
        };
        if !Self::NAMES.contains(&name.as_str()) {
            return Err(OpsCommandError::Unknown { given: name });
        }
        Self::deserialize(event).map_err(|e| OpsCommandError::Malformed {
            command: name,
            reason: e.to_string(),
        })
    }
}

/// One migration, by its version and the description in its file name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrationId {
    pub version: i64,
    pub description: String,
}

/// What `migrate` did: the migrations it applied now, in order, and the
/// versions the database already had.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrationReport {
    pub applied: Vec<MigrationId>,
    pub already_applied: Vec<i64>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_console_migrate_event_is_the_migrate_command() {
        let event: Value =
            serde_json::from_str(include_str!("../../../events/ops/console-migrate.json")).unwrap();
        assert_eq!(OpsCommand::from_event(&event), Ok(OpsCommand::Migrate {}));
    }

    #[test]
    fn every_console_event_of_the_ops_function_is_a_known_command() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../events/ops");
        let mut seen = std::collections::BTreeSet::new();
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let event: Value =
                serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
            let command = OpsCommand::from_event(&event)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            seen.insert(event["command"].as_str().unwrap().to_string());
            if let OpsCommand::FailedRemove(selection) = command {
                assert!(selection.yes, "a remove event confirms itself");
            }
        }
        for name in OpsCommand::NAMES {
            assert!(seen.contains(*name), "no events/ops event for {name}");
        }
    }

    #[test]
    fn a_failed_selection_takes_its_filters_and_refuses_a_mistyped_one() {
        let command = OpsCommand::from_event(&json!({
            "command": "failed-retry", "all": true, "provider": "routit", "since": "2h"
        }))
        .unwrap();
        assert_eq!(
            command,
            OpsCommand::FailedRetry(FailedSelection {
                all: true,
                provider: Some("routit".into()),
                since: Some("2h".into()),
                ..FailedSelection::default()
            })
        );
        let err =
            OpsCommand::from_event(&json!({"command": "failed-list", "provder": "x"})).unwrap_err();
        assert!(err.to_string().contains("provder"), "{err}");
    }

    #[test]
    fn the_console_status_event_is_the_status_command() {
        let event: Value =
            serde_json::from_str(include_str!("../../../events/ops/console-status.json")).unwrap();
        assert_eq!(
            OpsCommand::from_event(&event),
            Ok(OpsCommand::Status {
                set: Default::default()
            })
        );
        let with = OpsCommand::from_event(
            &json!({"command": "status", "set": {"STATUS_QUEUE_DEPTH_CRITICAL": "5"}}),
        )
        .unwrap();
        assert!(
            matches!(with, OpsCommand::Status { set } if set["STATUS_QUEUE_DEPTH_CRITICAL"] == "5")
        );
    }

    #[test]
    fn the_console_invoice_events_take_their_arguments_and_refuse_a_mistyped_one() {
        let event: Value = serde_json::from_str(include_str!(
            "../../../events/ops/console-invoice-download.json"
        ))
        .unwrap();
        assert_eq!(
            OpsCommand::from_event(&event),
            Ok(OpsCommand::InvoiceDownload {
                invoice: "PUT-THE-INVOICE-NUMBER-HERE".into(),
                what: "specification".into(),
                expires_seconds: Some(3600),
            })
        );
        let err = OpsCommand::from_event(
            &json!({"command": "invoice-download", "invoice": "1", "what": "pdf", "expires": 60}),
        )
        .unwrap_err();
        assert!(err.to_string().contains("expires"), "{err}");
    }

    #[test]
    fn an_unknown_command_is_refused_with_the_known_ones() {
        let err = OpsCommand::from_event(&json!({"command": "migrat"})).unwrap_err();
        assert_eq!(
            err,
            OpsCommandError::Unknown {
                given: "migrat".into()
            }
        );
        let message = err.to_string();
        assert!(message.contains("\"migrat\""), "{message}");
        assert!(message.contains("\"migrate\""), "{message}");
    }

    #[test]
    fn an_event_without_a_command_says_what_to_send() {
        let err = OpsCommand::from_event(&json!({"Records": []})).unwrap_err();
        assert_eq!(err, OpsCommandError::Missing);
        assert!(err.to_string().contains("console-migrate.json"));
    }

    #[test]
    fn a_command_that_is_not_a_string_is_unknown() {
        assert_eq!(
            OpsCommand::from_event(&json!({"command": 7})),
            Err(OpsCommandError::Unknown { given: "7".into() })
        );
    }

    #[test]
    fn arguments_a_command_does_not_take_are_refused() {
        let err = OpsCommand::from_event(&json!({"command": "migrate", "target": 3})).unwrap_err();
        assert!(
            matches!(&err, OpsCommandError::Malformed { command, reason } if command == "migrate" && reason.contains("target")),
            "{err}"
        );
    }
}
