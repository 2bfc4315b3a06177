//! The totals function's schedule: cycles whose invoice is still a draft
//! although the cycle and its grace period have ended get a
//! `GenerateInvoice`, which finalises them. Without it a cycle that receives
//! no late CDRs would never be finalised.

use chrono::{DateTime, Duration, Utc};
use serde::Serialize;

use crate::billing::invoice::{cycles_due_for_finalisation, InvoiceError, InvoiceStore};
use crate::command::{Cause, Command, CyclePayload};
use crate::envelope::{derived_id, Envelope};
use crate::ports::{OutgoingMessage, PortError, QueueSend};

#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    #[error(transparent)]
    Invoice(#[from] InvoiceError),
    #[error("could not send GenerateInvoice to the totals queue: {0}; the next scheduled run tries again")]
    Send(#[from] PortError),
    #[error("{0} of the GenerateInvoice messages were refused by the totals queue (first: {1}); the next scheduled run tries again")]
    Refused(usize, String),
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SweepReport {
    pub due: usize,
    pub sent: Vec<String>,
}

/// The `GenerateInvoice` envelopes for the due cycles. Ids derive from the
/// schedule event, so a redelivered event sends the same messages.
pub fn finalisation_messages(
    due: &[(i64, chrono::NaiveDate)],
    run_key: &str,
    now: DateTime<Utc>,
) -> Vec<Envelope> {
    due.iter()
        .map(|(customer_id, cycle)| {
            let id = derived_id(&[
                "invoice-sweep",
                run_key,
                &customer_id.to_string(),
                &cycle.to_string(),
            ]);
            Envelope::start(
                id,
                Command::GenerateInvoice(CyclePayload::new(
                    *customer_id,
                    *cycle,
                    Cause::CycleClosed,
                )),
                vec![],
                None,
                now,
            )
        })
        .collect()
}

/// Sends `GenerateInvoice` for every cycle due for finalisation.
#[tracing::instrument(skip(invoices, queues))]
pub async fn sweep_due_invoices(
    invoices: &dyn InvoiceStore,
    queues: &dyn QueueSend,
    totals_queue: &str,
    run_key: &str,
    now: DateTime<Utc>,
    grace: Duration,
) -> Result<SweepReport, SweepError> {
    let due = cycles_due_for_finalisation(invoices, now, grace).await?;
    let messages = finalisation_messages(&due, run_key, now);
    let sent: Vec<String> = due
        .iter()
        .map(|(customer_id, cycle)| format!("{customer_id}:{cycle}"))
        .collect();
    let failed = queues
        .send_all(
            totals_queue,
            messages
                .iter()
                .map(|m| OutgoingMessage::new(m.id.clone(), m.to_body()))
                .collect(),
        )
        .await?;
    if let Some(first) = failed.first() {
        return Err(SweepError::Refused(failed.len(), first.reason.clone()));
    }
    tracing::info!(due = due.len(), "invoice sweep sent GenerateInvoice");
    Ok(SweepReport {
        due: due.len(),
        sent,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::Step;
    use chrono::NaiveDate;

    #[test]
    fn a_redelivered_schedule_event_sends_the_same_messages_and_a_new_one_new_ones() {
        let due = vec![
            (1, NaiveDate::from_ymd_opt(2025, 1, 1).unwrap()),
            (2, NaiveDate::from_ymd_opt(2025, 1, 15).unwrap()),
        ];
        let now = Utc::now();
        let first = finalisation_messages(&due, "schedule:a", now);
        let again = finalisation_messages(&due, "schedule:a", now);
        let next = finalisation_messages(&due, "schedule:b", now);
        assert_eq!(first.len(), 2);
        assert_eq!(first[0].id, again[0].id);
        assert_ne!(first[0].id, first[1].id);
        assert_ne!(first[0].id, next[0].id);
        assert_eq!(first[1].step, Step::GenerateInvoice);
        assert_eq!(first[1].payload["customer_id"], 2);
        assert_eq!(first[1].payload["cycle"], "2025-01-15");
        assert_eq!(first[1].payload["cause"], "cycle_closed");
    }
}
