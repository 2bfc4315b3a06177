//! The alert topic (BudgetAlertTopic) on SNS: one `Publish` per alert, its
//! attributes as String message attributes, its body as the message.

use async_trait::async_trait;
use aws_sdk_sns::error::DisplayErrorContext;
use aws_sdk_sns::types::MessageAttributeValue;
use aws_sdk_sns::Client;

use crate::budgets::alerts::{Alert, AlertPublisher, PublishError};

pub fn sns_client(config: &aws_config::SdkConfig) -> Client {
    Client::new(config)
}

pub struct SnsAlerts {
    client: Client,
    topic_arn: String,
}

impl SnsAlerts {
    pub fn new(client: Client, topic_arn: String) -> Self {
        Self { client, topic_arn }
    }
}

#[async_trait]
impl AlertPublisher for SnsAlerts {
    async fn publish(&self, alert: &Alert) -> Result<String, PublishError> {
        let failed = |reason: String, retryable: bool| PublishError {
            id: alert.id.clone(),
            reason,
            retryable,
        };
        let mut request = self
            .client
            .publish()
            .topic_arn(&self.topic_arn)
            .subject(subject(alert))
            .message(alert.body.to_string());
        for (name, value) in &alert.attributes {
            // SNS refuses an empty attribute value.
            if value.is_empty() {
                continue;
            }
            let value = MessageAttributeValue::builder()
                .data_type("String")
                .string_value(value)
                .build()
                .map_err(|e| failed(e.to_string(), false))?;
            request = request.message_attributes(name, value);
        }
        let output = request
            .send()
            .await
            .map_err(|e| failed(format!("sns Publish: {}", DisplayErrorContext(e)), true))?;
        Ok(output.message_id().unwrap_or_default().to_string())
    }
}

/// An e-mail subscriber's subject line: SNS takes at most 100 ASCII
/// characters without line breaks, so anything else becomes `?`.
fn subject(alert: &Alert) -> String {
    let get = |k: &str| alert.attributes.get(k).map(String::as_str).unwrap_or("");
    let text = match alert.kind {
        crate::budgets::alerts::AlertKind::BudgetAlert => format!(
            "tem budget alert: {} {} {} reached {}%",
            get("customer"),
            get("scope"),
            get("subject"),
            get("threshold")
        ),
        crate::budgets::alerts::AlertKind::BudgetResolved => format!(
            "tem budget resolved: {} {} {} under {}%",
            get("customer"),
            get("scope"),
            get("subject"),
            get("threshold")
        ),
        crate::budgets::alerts::AlertKind::BillShock => format!(
            "tem bill shock: {} {}",
            get("customer"),
            get("subscription")
        ),
        crate::budgets::alerts::AlertKind::Anomaly => {
            format!("tem anomaly: {} {}", get("customer"), get("subscription"))
        }
    };
    let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
    text.chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .take(99)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::budgets::alerts::AlertKind;

    #[test]
    fn a_subject_is_short_ascii_on_one_line_whatever_the_customer_is_called() {
        let alert = Alert::new(
            1,
            &format!("bäcker\n{}", "x".repeat(200)),
            AlertKind::BudgetAlert,
            serde_json::json!({}),
        )
        .with("threshold", 80);
        let text = subject(&alert);
        assert!(text.starts_with("tem budget alert: b?cker x"), "{text}");
        assert_eq!(text.chars().count(), 99);
        assert!(text.is_ascii() && !text.contains('\n'));
    }
}
