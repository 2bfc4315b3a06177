//! How sync-manager was invoked: by its EventBridge schedule, or from the
//! console with `{"profile_ids": [...]}` or `{"providers": [...]}`
//! ([`SyncManagerInput`], the function's one input type).

use aws_lambda_events::event::cloudwatch_events::CloudWatchEvent;
use serde::de::Error as _;
use serde::{Deserialize, Deserializer};
use serde_json::Value;

use crate::sync::profile::ProfileSelection;

/// What sync-manager is invoked with.
#[derive(Debug, Clone, PartialEq)]
pub enum SyncManagerInput {
    /// The master-sync schedule (an EventBridge event has a `detail-type`).
    Schedule(CloudWatchEvent),
    /// A run from the console over some profiles or providers, or all.
    Console(ConsoleRun),
}

/// The console's run: `{"profile_ids": [1, 2]}`, `{"providers": ["routit"]}`
/// or `{}` for all active profiles; `run_id` keys a re-sent command.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleRun {
    #[serde(default)]
    pub profile_ids: Option<Vec<i64>>,
    #[serde(default)]
    pub providers: Option<Vec<String>>,
    #[serde(default)]
    pub run_id: Option<String>,
}

const SEND: &str =
    r#"send {"profile_ids": [1, 2]}, {"providers": ["routit"]} or {} for all active profiles"#;

impl<'de> Deserialize<'de> for SyncManagerInput {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let event = Value::deserialize(deserializer)?;
        if !event.is_object() {
            return Err(D::Error::custom(format!(
                "the event must be a JSON object; {SEND}"
            )));
        }
        if event.get("detail-type").is_some() {
            return serde_json::from_value(event)
                .map(SyncManagerInput::Schedule)
                .map_err(|e| D::Error::custom(format!("not an EventBridge event: {e}")));
        }
        serde_json::from_value(event)
            .map(SyncManagerInput::Console)
            .map_err(|e| D::Error::custom(format!("{e}; {SEND}")))
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Trigger {
    pub selection: ProfileSelection,
    /// Identifies this invocation; a redelivered schedule event has the same.
    pub run_key: String,
    /// `schedule` or `console`, recorded with the run.
    pub kind: &'static str,
}

#[derive(Debug, thiserror::Error, PartialEq)]
#[error("{0}; {SEND}")]
pub struct TriggerError(String);

impl Trigger {
    /// The run an input asks for; `fresh_id` keys a console run that names
    /// no `run_id` (the invocation's request id).
    pub fn from_input(
        input: SyncManagerInput,
        fresh_id: impl FnOnce() -> String,
    ) -> Result<Self, TriggerError> {
        let console = match input {
            SyncManagerInput::Schedule(event) => {
                let id = event
                    .id
                    .filter(|id| !id.is_empty())
                    .ok_or_else(|| TriggerError("a scheduled event must have an id".into()))?;
                return Ok(Trigger {
                    selection: ProfileSelection::All,
                    run_key: format!("schedule:{id}"),
                    kind: "schedule",
                });
            }
            SyncManagerInput::Console(console) => console,
        };
        let selection = match (console.profile_ids, console.providers) {
            (Some(_), Some(_)) => {
                return Err(TriggerError(
                    "give profile_ids or providers, not both".into(),
                ))
            }
            (Some(ids), None) => ProfileSelection::Ids(ids),
            (None, Some(providers)) => ProfileSelection::Providers(providers),
            (None, None) => ProfileSelection::All,
        };
        let run_key = match console.run_id {
            Some(id) => format!("console:{id}"),
            None => format!("console:{}", fresh_id()),
        };
        Ok(Trigger {
            selection,
            run_key,
            kind: "console",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const SCHEDULE: &str = include_str!("../../../events/sync-manager/schedule.json");
    const BY_PROFILE: &str = include_str!("../../../events/sync-manager/console-profiles.json");
    const BY_PROVIDER: &str = include_str!("../../../events/sync-manager/console-providers.json");

    fn parse(event: Value) -> Result<Trigger, String> {
        let input: SyncManagerInput = serde_json::from_value(event).map_err(|e| e.to_string())?;
        Trigger::from_input(input, || "fresh".into()).map_err(|e| e.to_string())
    }

    #[test]
    fn a_schedule_event_syncs_all_profiles_keyed_by_its_event_id() {
        let t = parse(serde_json::from_str(SCHEDULE).unwrap()).unwrap();
        assert_eq!(t.selection, ProfileSelection::All);
        assert_eq!(t.run_key, "schedule:53dc4d37-cffa-4f76-80c9-8b7d4a4d2eaa");
        assert_eq!(t.kind, "schedule");
    }

    #[test]
    fn the_console_can_name_profiles_or_providers() {
        assert_eq!(
            parse(serde_json::from_str(BY_PROFILE).unwrap())
                .unwrap()
                .selection,
            ProfileSelection::Ids(vec![1, 2])
        );
        assert_eq!(
            parse(serde_json::from_str(BY_PROVIDER).unwrap())
                .unwrap()
                .selection,
            ProfileSelection::Providers(vec!["routit".into(), "t_mobile".into()])
        );
        let all = parse(json!({})).unwrap();
        assert_eq!(
            (all.selection, all.run_key.as_str()),
            (ProfileSelection::All, "console:fresh")
        );
        assert_eq!(
            parse(json!({"run_id": "r1"})).unwrap().run_key,
            "console:r1"
        );
    }

    #[test]
    fn bad_console_input_says_what_to_send() {
        for bad in [
            json!([1]),
            json!({"profile_ids": ["x"]}),
            json!({"providers": 3}),
            json!({"profile_id": 1}),
            json!({"profile_ids": [1], "providers": ["a"]}),
        ] {
            let err = parse(bad.clone()).unwrap_err();
            assert!(err.contains("profile_ids"), "{bad}: {err}");
        }
    }
}
