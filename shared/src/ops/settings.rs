//! What the operators' commands need to know of a deployed stack: every
//! queue with its DLQ, and the DynamoDB tables. The ops function reads it
//! from its environment (the template sets `QUEUE_URL_*`, `DLQ_URL_*`);
//! `temctl` from the stack's CloudFormation outputs (`*QueueUrl`, `*DlqUrl`).

use std::collections::BTreeMap;

use serde::Serialize;

use crate::config::{ConfigError, Env};
use crate::routing::Provider;

/// One consuming queue and its dead-letter queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct QueuePair {
    /// `import`, `totals`, or the provider's name (`routit`, ...).
    pub name: String,
    pub url: String,
    pub dlq_url: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OpsSettings {
    pub queues: Vec<QueuePair>,
    pub tasks_table: String,
    pub idempotency_table: String,
}

/// Every queue of the stack: (name, environment key, output prefix).
fn queue_names() -> Vec<(String, String, String)> {
    let mut names = vec![
        (
            "import".to_string(),
            "IMPORT".to_string(),
            "Import".to_string(),
        ),
        (
            "totals".to_string(),
            "TOTALS".to_string(),
            "Totals".to_string(),
        ),
        (
            "maintenance".to_string(),
            "MAINTENANCE".to_string(),
            "Maintenance".to_string(),
        ),
    ];
    names.extend(Provider::ALL.into_iter().map(|p| {
        (
            p.as_str().to_string(),
            p.env_key(),
            output_prefix(p.as_str()),
        )
    }));
    names
}

/// `t_mobile` -> `TMobile`, `kpn_sp16` -> `KpnSp16`: the template's logical ids.
fn output_prefix(name: &str) -> String {
    name.split('_')
        .map(|part| {
            let mut chars = part.chars();
            match chars.next() {
                Some(first) => first.to_ascii_uppercase().to_string() + chars.as_str(),
                None => String::new(),
            }
        })
        .collect()
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("the stack's outputs have no {0}; is this a tem stack deployed from infra/template.yaml?")]
pub struct MissingOutput(pub String);

impl OpsSettings {
    /// From the ops function's environment: `QUEUE_URL_{NAME}` and
    /// `DLQ_URL_{NAME}` for every queue, `TASKS_TABLE`, `IDEMPOTENCY_TABLE`.
    /// A queue without both URLs is left out (a partial local setup).
    pub fn from_env<F: Fn(&str) -> Option<String>>(env: &Env<F>) -> Result<Self, ConfigError> {
        let queues = queue_names()
            .into_iter()
            .filter_map(|(name, key, _)| {
                Some(QueuePair {
                    url: env.optional(&format!("QUEUE_URL_{key}"))?,
                    dlq_url: env.optional(&format!("DLQ_URL_{key}"))?,
                    name,
                })
            })
            .collect();
        Ok(Self {
            queues,
            tasks_table: env.required("TASKS_TABLE")?,
            idempotency_table: env.required("IDEMPOTENCY_TABLE")?,
        })
    }

    /// From a stack's CloudFormation outputs (`RoutitQueueUrl`,
    /// `RoutitDlqUrl`, ..., `TasksTableName`, `IdempotencyTableName`).
    pub fn from_outputs(outputs: &BTreeMap<String, String>) -> Result<Self, MissingOutput> {
        let get = |key: &str| {
            outputs
                .get(key)
                .cloned()
                .ok_or_else(|| MissingOutput(key.to_string()))
        };
        let mut queues = Vec::new();
        for (name, _, prefix) in queue_names() {
            queues.push(QueuePair {
                url: get(&format!("{prefix}QueueUrl"))?,
                dlq_url: get(&format!("{prefix}DlqUrl"))?,
                name,
            });
        }
        Ok(Self {
            queues,
            tasks_table: get("TasksTableName")?,
            idempotency_table: get("IdempotencyTableName")?,
        })
    }

    /// The queue pair whose source queue or DLQ has this URL.
    pub fn queue_by_url(&self, url: &str) -> Option<&QueuePair> {
        self.queues
            .iter()
            .find(|q| q.url == url || q.dlq_url == url)
    }
}

/// A queue's name from its URL (the last path segment), as SQS names it.
pub fn queue_name_of(url: &str) -> &str {
    url.rsplit('/').next().unwrap_or(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_prefixes_follow_the_templates_logical_ids() {
        assert_eq!(output_prefix("t_mobile"), "TMobile");
        assert_eq!(output_prefix("kpn_sp16"), "KpnSp16");
        assert_eq!(output_prefix("routit"), "Routit");
    }

    #[test]
    fn every_queue_is_read_from_the_template_outputs() {
        let template = include_str!("../../../infra/template.yaml");
        let mut outputs = BTreeMap::new();
        for (_, _, prefix) in queue_names() {
            for suffix in ["QueueUrl", "DlqUrl"] {
                let key = format!("{prefix}{suffix}");
                assert!(
                    template.contains(&format!("  {key}:")),
                    "the template has no output {key}"
                );
                outputs.insert(key.clone(), format!("https://sqs/{key}"));
            }
        }
        outputs.insert("TasksTableName".into(), "tasks".into());
        outputs.insert("IdempotencyTableName".into(), "idem".into());
        let settings = OpsSettings::from_outputs(&outputs).unwrap();
        assert_eq!(settings.queues.len(), 10);
        assert_eq!(
            settings
                .queue_by_url("https://sqs/RoutitDlqUrl")
                .unwrap()
                .name,
            "routit"
        );
        outputs.remove("TotalsDlqUrl");
        assert_eq!(
            OpsSettings::from_outputs(&outputs),
            Err(MissingOutput("TotalsDlqUrl".into()))
        );
    }

    #[test]
    fn queue_names_come_from_urls() {
        assert_eq!(
            queue_name_of("https://sqs.eu-west-1.amazonaws.com/123/tem-RoutitQueue-AB"),
            "tem-RoutitQueue-AB"
        );
    }
}
