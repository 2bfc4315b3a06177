//! How sync-manager was invoked: by its EventBridge schedule, or from the
//! console with `{"profile_ids": [...]}` or `{"providers": [...]}`.

use serde_json::Value;

use crate::sync::profile::ProfileSelection;

#[derive(Debug, Clone, PartialEq)]
pub struct Trigger {
    pub selection: ProfileSelection,
    /// Identifies this invocation; a redelivered schedule event has the same.
    pub run_key: String,
    /// `schedule` or `console`, recorded with the run.
    pub kind: &'static str,
}

#[derive(Debug, thiserror::Error, PartialEq)]
#[error("{0}; send {{\"profile_ids\": [1, 2]}}, {{\"providers\": [\"routit\"]}} or {{}} for all active profiles")]
pub struct TriggerError(String);

impl Trigger {
    pub fn from_event(
        event: &Value,
        fresh_id: impl FnOnce() -> String,
    ) -> Result<Self, TriggerError> {
        let object = event
            .as_object()
            .ok_or_else(|| TriggerError("the event must be a JSON object".into()))?;
        if object.contains_key("detail-type") {
            let id = object
                .get("id")
                .and_then(Value::as_str)
                .ok_or_else(|| TriggerError("a scheduled event must have an id".into()))?;
            return Ok(Trigger {
                selection: ProfileSelection::All,
                run_key: format!("schedule:{id}"),
                kind: "schedule",
            });
        }
        if let Some(unknown) = object
            .keys()
            .find(|k| !matches!(k.as_str(), "profile_ids" | "providers" | "run_id"))
        {
            return Err(TriggerError(format!("unknown field {unknown:?}")));
        }
        let selection = match (object.get("profile_ids"), object.get("providers")) {
            (Some(_), Some(_)) => {
                return Err(TriggerError(
                    "give profile_ids or providers, not both".into(),
                ))
            }
            (Some(ids), None) => ProfileSelection::Ids(
                ids.as_array()
                    .and_then(|ids| ids.iter().map(Value::as_i64).collect::<Option<Vec<_>>>())
                    .ok_or_else(|| TriggerError("profile_ids must be a list of numbers".into()))?,
            ),
            (None, Some(providers)) => ProfileSelection::Providers(
                providers
                    .as_array()
                    .and_then(|p| {
                        p.iter()
                            .map(|v| v.as_str().map(str::to_string))
                            .collect::<Option<Vec<_>>>()
                    })
                    .ok_or_else(|| TriggerError("providers must be a list of names".into()))?,
            ),
            (None, None) => ProfileSelection::All,
        };
        let run_key = match object.get("run_id").and_then(Value::as_str) {
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

    fn parse(event: Value) -> Result<Trigger, TriggerError> {
        Trigger::from_event(&event, || "fresh".into())
    }

    #[test]
    fn a_schedule_event_syncs_all_profiles_keyed_by_its_event_id() {
        let t =
            parse(json!({"id": "ev-1", "detail-type": "Scheduled Event", "source": "aws.events"}))
                .unwrap();
        assert_eq!(t.selection, ProfileSelection::All);
        assert_eq!(t.run_key, "schedule:ev-1");
        assert_eq!(t.kind, "schedule");
    }

    #[test]
    fn the_console_can_name_profiles_or_providers() {
        assert_eq!(
            parse(json!({"profile_ids": [3, 4]})).unwrap().selection,
            ProfileSelection::Ids(vec![3, 4])
        );
        assert_eq!(
            parse(json!({"providers": ["routit"]})).unwrap().selection,
            ProfileSelection::Providers(vec!["routit".into()])
        );
        let all = parse(json!({})).unwrap();
        assert_eq!(
            (all.selection, all.run_key.as_str()),
            (ProfileSelection::All, "console:fresh")
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
            assert!(err.to_string().contains("profile_ids"), "{bad}: {err}");
        }
    }
}
