//! What arrives on the import queue besides envelopes: S3 `ObjectCreated`
//! notifications and S3's one-off test event. A notification becomes an
//! `ImportCdrFile` envelope so the chain runtime handles it like any other
//! step. (The console's `{"bucket": ..., "key": ...}` is the function's
//! console command, [`crate::import::handler::ImportCommand`].)

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::command::{AuditCarrierInvoice, Command, ImportCdrFile};
use crate::envelope::{derived_id, Envelope};
pub use crate::lambda::Adapted;
use crate::sync::provider::handoff_token;

/// The prefix of the carrier invoices in the CDR bucket.
pub const CARRIER_INVOICES: &str = "carrier-invoices/";

/// What an SQS body on the import queue is.
#[derive(Debug, Clone, PartialEq)]
pub enum Notification {
    Object(ObjectCreated),
    /// Nothing to do (S3's test event), with the reason.
    Ignore(String),
    /// Not a notification: an envelope, or something the runtime rejects.
    NotANotification,
}

/// One `ObjectCreated` record.
#[derive(Debug, Clone, PartialEq)]
pub struct ObjectCreated {
    pub bucket: String,
    pub key: String,
    pub etag: String,
    pub size: u64,
    /// Set when the message cannot be imported as it is.
    pub error: Option<String>,
}

/// What an object's metadata says about the sync that stored it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ExportOrigin {
    /// `tem-task-id`: the sync task whose export this is.
    pub task_id: Option<String>,
    /// `tem-trace-id`: the trace of that sync.
    pub trace_id: Option<String>,
}

impl ObjectCreated {
    /// The `ImportCdrFile` envelope for this object. With a task id in the
    /// object's metadata it continues that task's hand-off (the token
    /// `s3://bucket/key`), which the runtime checks is still open before
    /// the import counts on the task; a trace id keeps the sync's trace.
    pub fn envelope(&self, origin: &ExportOrigin, now: DateTime<Utc>) -> String {
        let task_id = origin.task_id.as_deref();
        // The same object version notified twice gets the same id, so the
        // idempotency record stops the second; a new upload, or the same
        // bytes fetched again by a new task, is a new import (which the
        // importer recognises by content, but the new task gets counted).
        let mut parts = vec!["s3", &self.bucket, &self.key, &self.etag];
        if let Some(task_id) = task_id {
            parts.push(task_id);
        }
        let id = derived_id(&parts);
        // A carrier's own invoice is audited, not imported; it belongs to
        // no sync task (provider-sync stores it without one).
        if self.key.starts_with(CARRIER_INVOICES) && self.error.is_none() {
            let command = Command::AuditCarrierInvoice(AuditCarrierInvoice {
                bucket: self.bucket.clone(),
                key: self.key.clone(),
                etag: Some(self.etag.clone()),
                provider: None,
            });
            return Envelope::start(id, command, vec![], None, now).to_body();
        }
        let command = Command::ImportCdrFile(ImportCdrFile {
            etag: Some(self.etag.clone()),
            size: Some(self.size),
            error: self.error.clone(),
            ..ImportCdrFile::object(&self.bucket, &self.key)
        });
        let mut envelope = Envelope::start(id, command, vec![], task_id.map(str::to_string), now);
        if task_id.is_some() {
            envelope.handoff = Some(handoff_token(&self.bucket, &self.key));
        }
        if let Some(trace_id) = origin.trace_id.as_ref().filter(|t| !t.is_empty()) {
            envelope.trace_id = trace_id.clone();
        }
        envelope.to_body()
    }
}

/// Reads an SQS body from the import queue.
pub fn parse_notification(body: &str) -> Notification {
    let Ok(value) = serde_json::from_str::<Value>(body) else {
        return Notification::NotANotification;
    };
    if value.get("Event").and_then(Value::as_str) == Some("s3:TestEvent") {
        return Notification::Ignore("S3 test event".into());
    }
    let Some(records) = value.get("Records").and_then(Value::as_array) else {
        return Notification::NotANotification;
    };
    let Some(record) = records
        .first()
        .filter(|r| r.get("eventSource").and_then(Value::as_str) == Some("aws:s3"))
    else {
        return Notification::NotANotification;
    };
    let s3 = &record["s3"];
    Notification::Object(ObjectCreated {
        bucket: s3["bucket"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        key: url_decode(s3["object"]["key"].as_str().unwrap_or_default()),
        etag: s3["object"]["eTag"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        size: s3["object"]["size"].as_u64().unwrap_or(0),
        error: (records.len() > 1)
            .then(|| format!("{} S3 records in one message; expected one", records.len())),
    })
}

/// Adapts an SQS body from the import queue without looking at the object
/// (no task): what a notification means on its own.
pub fn adapt_body(body: &str, now: DateTime<Utc>) -> Adapted {
    match parse_notification(body) {
        Notification::Object(object) => {
            Adapted::Envelope(object.envelope(&ExportOrigin::default(), now))
        }
        Notification::Ignore(reason) => Adapted::Ignore(reason),
        Notification::NotANotification => Adapted::Unchanged,
    }
}

/// S3 notification keys are URL-encoded with `+` for spaces.
fn url_decode(raw: &str) -> String {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => match bytes
                .get(i + 1..i + 3)
                .and_then(|hex| std::str::from_utf8(hex).ok())
                .and_then(|hex| u8::from_str_radix(hex, 16).ok())
            {
                Some(byte) => {
                    out.push(byte);
                    i += 2;
                }
                None => out.push(b'%'),
            },
            other => out.push(other),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::Step;

    const NOTIFICATION: &str = include_str!("../../../events/cdr-import/sqs-s3-notification.json");

    fn s3_body() -> String {
        let event: Value = serde_json::from_str(NOTIFICATION).unwrap();
        event["Records"][0]["body"].as_str().unwrap().to_string()
    }

    #[test]
    fn an_s3_notification_becomes_an_import_envelope_with_a_stable_id() {
        let Adapted::Envelope(body) = adapt_body(&s3_body(), Utc::now()) else {
            panic!("an S3 notification is adapted");
        };
        let envelope = Envelope::parse(&body).unwrap();
        assert_eq!(envelope.step, Step::ImportCdrFile);
        assert_eq!(
            envelope.payload["key"],
            "inbox/routit/1/2025-01-14/rt 20250114.zip"
        );
        let Command::ImportCdrFile(file) = envelope.command().unwrap() else {
            panic!("an import command");
        };
        assert_eq!(
            file.etag.as_deref(),
            Some("0123456789abcdef0123456789abcdef")
        );
        assert_eq!(file.size, Some(1024));
        let Adapted::Envelope(again) = adapt_body(&s3_body(), Utc::now()) else {
            panic!()
        };
        assert_eq!(Envelope::parse(&again).unwrap().id, envelope.id);
    }

    #[test]
    fn a_carrier_invoice_becomes_an_audit_envelope_of_no_task() {
        let body = s3_body().replace(
            "inbox/routit/1/2025-01-14/rt+20250114.zip",
            "carrier-invoices/kpn_een/3/2025-03-01.csv",
        );
        let Notification::Object(object) = parse_notification(&body) else {
            panic!("an S3 notification is an object");
        };
        let origin = ExportOrigin {
            task_id: Some("task-1".into()),
            trace_id: None,
        };
        let envelope = Envelope::parse(&object.envelope(&origin, Utc::now())).unwrap();
        assert_eq!(envelope.step, Step::AuditCarrierInvoice);
        assert_eq!(envelope.task_id, None);
        let Command::AuditCarrierInvoice(audit) = envelope.command().unwrap() else {
            panic!("an audit command");
        };
        assert_eq!(audit.key, "carrier-invoices/kpn_een/3/2025-03-01.csv");
    }

    #[test]
    fn an_export_of_a_sync_task_continues_that_task_under_its_own_id() {
        let Notification::Object(object) = parse_notification(&s3_body()) else {
            panic!("an S3 notification is an object");
        };
        let origin = ExportOrigin {
            task_id: Some("task-1".into()),
            trace_id: Some("trace-of-the-sync".into()),
        };
        let plain =
            Envelope::parse(&object.envelope(&ExportOrigin::default(), Utc::now())).unwrap();
        let of_task = Envelope::parse(&object.envelope(&origin, Utc::now())).unwrap();
        assert_eq!(of_task.task_id.as_deref(), Some("task-1"));
        assert_eq!(
            of_task.handoff.as_deref(),
            Some("s3://tem-cdr-000000000000-eu-west-1/inbox/routit/1/2025-01-14/rt 20250114.zip")
        );
        assert_eq!(of_task.trace_id, "trace-of-the-sync");
        assert_eq!((plain.task_id, plain.handoff), (None, None));
        assert_eq!(plain.trace_id, plain.id);
        // A task that fetched the same bytes again is still counted.
        assert_ne!(of_task.id, plain.id);
        assert_eq!(
            of_task.id,
            Envelope::parse(&object.envelope(&origin, Utc::now()))
                .unwrap()
                .id
        );
    }

    #[test]
    fn the_s3_test_event_is_ignored_and_envelopes_pass_unchanged() {
        let test_event = r#"{"Service":"Amazon S3","Event":"s3:TestEvent","Bucket":"b"}"#;
        assert!(matches!(
            adapt_body(test_event, Utc::now()),
            Adapted::Ignore(_)
        ));
        assert_eq!(
            adapt_body(r#"{"version":1}"#, Utc::now()),
            Adapted::Unchanged
        );
        assert_eq!(adapt_body("not json", Utc::now()), Adapted::Unchanged);
    }

    #[test]
    fn keys_are_url_decoded() {
        assert_eq!(url_decode("a+b%2Fc%3D.zip"), "a b/c=.zip");
        assert_eq!(url_decode("100%"), "100%");
        assert_eq!(url_decode("%zz"), "%zz");
    }
}
