//! The ops function's console commands: operator tasks that must run inside
//! the stack's network (the database may be reachable only from the VPC).
//! An event is `{"command": "<name>", ...arguments}`; `migrate` is the first
//! command, later ones (a status report, failed-message handling) are added
//! as variants here and to [`OpsCommand::NAMES`].

pub mod settings;
pub mod status;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A command sent to the ops function (`events/ops/*.json`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "command", rename_all = "kebab-case", deny_unknown_fields)]
pub enum OpsCommand {
    /// Apply the embedded sqlx migrations that the database does not have yet.
    /// A struct variant, not a unit one: serde ignores unknown fields beside
    /// the tag of a unit variant, and a mistyped argument (a down-migration
    /// target, say) must be refused, not silently dropped.
    Migrate {},
    /// The runbook's monitoring points and the daily extras
    /// (`ops::status`); `set` overrides thresholds by name for this call,
    /// e.g. `{"STATUS_QUEUE_DEPTH_CRITICAL": "500"}`.
    Status {
        #[serde(default)]
        set: std::collections::BTreeMap<String, String>,
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
    pub const NAMES: &'static [&'static str] = &["migrate", "status"];

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
