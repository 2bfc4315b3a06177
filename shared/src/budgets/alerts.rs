//! The alerts tem sends (budget levels, bill shock, anomalies) as messages
//! with attributes, the outbox they wait in, and the publisher that sends
//! them (SNS in production: `adapters::sns`).
//!
//! A message is written to the outbox in the same transaction as the state
//! change that decided it (a budget's new level, a bill-shock window
//! raised), and published after the commit, then marked. A run that dies
//! or fails to publish in between leaves the row for the next run that
//! publishes for that customer, or the totals function's hourly sweep
//! ([`publish_all_pending`]), so nothing decided is lost and an SNS outage
//! never holds up an invoice; a publish
//! whose mark did not land is sent again (at least once; the message
//! carries its outbox id for a subscriber to deduplicate). SNS's own
//! deduplication is for FIFO topics only.

use std::collections::BTreeMap;

use async_trait::async_trait;
use serde::Serialize;
use serde_json::Value;

use crate::ports::StoreError;

/// What kind of alert a message is (`kind` attribute, and the insight kind).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertKind {
    BudgetAlert,
    BudgetResolved,
    BillShock,
    Anomaly,
}

impl AlertKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AlertKind::BudgetAlert => "budget_alert",
            AlertKind::BudgetResolved => "budget_resolved",
            AlertKind::BillShock => "bill_shock",
            AlertKind::Anomaly => "anomaly",
        }
    }

    /// The `level` attribute: `resolved` for a resolution, else `alert`.
    pub fn level(self) -> &'static str {
        match self {
            AlertKind::BudgetResolved => "resolved",
            _ => "alert",
        }
    }
}

/// One message for the alert topic.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Alert {
    /// The outbox id, also in the body (`alert_id`).
    pub id: String,
    pub customer_id: i64,
    pub kind: AlertKind,
    /// The message attributes (String values): `customer`, `customer_id`,
    /// `kind`, `level`, and per kind `threshold`, `scope`, `subject`,
    /// `cycle`, `subscription`, `newest_cdr_at`.
    pub attributes: BTreeMap<String, String>,
    pub body: Value,
}

impl Alert {
    /// An alert with its common attributes; `id` is new (a UUID): the
    /// transaction that records it is what makes it happen once.
    pub fn new(customer_id: i64, customer: &str, kind: AlertKind, body: Value) -> Self {
        let id = uuid::Uuid::new_v4().to_string();
        let mut attributes = BTreeMap::new();
        attributes.insert("customer".to_string(), customer.to_string());
        attributes.insert("customer_id".to_string(), customer_id.to_string());
        attributes.insert("kind".to_string(), kind.as_str().to_string());
        attributes.insert("level".to_string(), kind.level().to_string());
        let mut body = body;
        if let Value::Object(map) = &mut body {
            map.insert("alert_id".into(), Value::String(id.clone()));
            map.insert("kind".into(), Value::String(kind.as_str().into()));
            map.insert("customer".into(), Value::String(customer.into()));
            map.insert("customer_id".into(), Value::from(customer_id));
        }
        Alert {
            id,
            customer_id,
            kind,
            attributes,
            body,
        }
    }

    pub fn with(mut self, attribute: &str, value: impl ToString) -> Self {
        self.attributes
            .insert(attribute.to_string(), value.to_string());
        self
    }
}

/// A failed publish: retried by the step (the row stays in the outbox).
#[derive(Debug, thiserror::Error)]
#[error("publishing alert {id} failed: {reason}; it stays in alert_outbox and is published by the next run of the customer's cycle")]
pub struct PublishError {
    pub id: String,
    pub reason: String,
    pub retryable: bool,
}

/// Sends one alert (SNS `Publish` in production); answers the message id.
#[async_trait]
pub trait AlertPublisher: Send + Sync {
    async fn publish(&self, alert: &Alert) -> Result<String, PublishError>;
}

/// The alerts written and not yet published.
#[async_trait]
pub trait AlertOutbox: Send + Sync {
    /// Claims up to `limit` unpublished alerts of `customer_id` (oldest
    /// first) for a while, so two runs do not publish one at once; a claim
    /// that lapses (its run died) may be claimed again.
    async fn claim(&self, customer_id: i64, limit: i64) -> Result<Vec<Alert>, StoreError>;
    /// Marks an alert published with the publisher's message id.
    async fn published(&self, id: &str, message_id: &str) -> Result<(), StoreError>;
    /// The customers with unpublished alerts (for the hourly sweep).
    async fn customers_pending(&self) -> Result<Vec<i64>, StoreError>;
}

#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error(transparent)]
    Publish(#[from] PublishError),
    #[error("database error: {0}")]
    Store(#[from] StoreError),
}

impl OutboxError {
    pub fn is_retryable(&self) -> bool {
        match self {
            OutboxError::Publish(e) => e.retryable,
            OutboxError::Store(e) => e.retryable,
        }
    }
}

/// Publishes every unpublished alert of `customer_id`, oldest first, and
/// marks each; answers how many were sent.
pub async fn publish_pending(
    outbox: &dyn AlertOutbox,
    publisher: &dyn AlertPublisher,
    customer_id: i64,
) -> Result<usize, OutboxError> {
    let mut sent = 0;
    loop {
        let batch = outbox.claim(customer_id, 50).await?;
        if batch.is_empty() {
            return Ok(sent);
        }
        for alert in &batch {
            let message_id = publisher.publish(alert).await?;
            outbox.published(&alert.id, &message_id).await?;
            sent += 1;
        }
    }
}

/// Publishes every customer's unpublished alerts: the totals function's
/// hourly sweep, so an alert whose publish failed (SNS unavailable while
/// its step ran) goes out within the hour without blocking the invoice.
/// A customer whose publish fails is left for the next sweep.
/// Answers how many were sent; what could not be read or sent is logged
/// and left for the next sweep (the sweep's own work, the invoices, is
/// not failed by it).
pub async fn publish_all_pending(
    outbox: &dyn AlertOutbox,
    publisher: &dyn AlertPublisher,
) -> usize {
    let customers = match outbox.customers_pending().await {
        Ok(customers) => customers,
        Err(e) => {
            tracing::warn!(error = %e.source, "pending alerts not read");
            return 0;
        }
    };
    let mut sent = 0;
    for customer_id in customers {
        match publish_pending(outbox, publisher, customer_id).await {
            Ok(n) => sent += n,
            Err(e) => tracing::warn!(error = %e, customer_id, "alerts not published yet"),
        }
    }
    if sent > 0 {
        tracing::info!(sent, "pending alerts published");
    }
    sent
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn an_alert_carries_its_id_kind_and_customer_in_attributes_and_body() {
        let alert = Alert::new(
            7,
            "acme",
            AlertKind::BudgetResolved,
            json!({"threshold": 100}),
        )
        .with("threshold", 100);
        assert_eq!(alert.attributes["level"], "resolved");
        assert_eq!(alert.attributes["kind"], "budget_resolved");
        assert_eq!(alert.attributes["customer"], "acme");
        assert_eq!(alert.attributes["threshold"], "100");
        assert_eq!(alert.body["alert_id"], json!(alert.id));
        assert_eq!(alert.body["customer_id"], json!(7));
        let other = Alert::new(7, "acme", AlertKind::BudgetAlert, json!({}));
        assert_ne!(alert.id, other.id);
        assert_eq!(other.attributes["level"], "alert");
    }
}
