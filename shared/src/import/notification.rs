//! What arrives on the import queue: S3 `ObjectCreated` notifications (not
//! envelopes), S3's one-off test event, or, from the console,
//! `{"bucket": ..., "key": ...}`. Each becomes an `ImportCdrFile` envelope so
//! the chain runtime handles it like any other step.

use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use crate::envelope::{derived_id, Envelope, Step};

#[derive(Debug, Clone, PartialEq)]
pub enum Adapted {
    /// An envelope to process instead of the body.
    Envelope(String),
    /// Nothing to do (S3's test event), with the reason.
    Ignore(String),
    /// Not a notification: process the body as it is.
    Unchanged,
}

/// Adapts an SQS body from the import queue.
pub fn adapt_body(body: &str, now: DateTime<Utc>) -> Adapted {
    let Ok(value) = serde_json::from_str::<Value>(body) else {
        return Adapted::Unchanged;
    };
    if value.get("Event").and_then(Value::as_str) == Some("s3:TestEvent") {
        return Adapted::Ignore("S3 test event".into());
    }
    let Some(records) = value.get("Records").and_then(Value::as_array) else {
        return Adapted::Unchanged;
    };
    let Some(record) = records
        .first()
        .filter(|r| r.get("eventSource").and_then(Value::as_str) == Some("aws:s3"))
    else {
        return Adapted::Unchanged;
    };
    let s3 = &record["s3"];
    let bucket = s3["bucket"]["name"].as_str().unwrap_or_default();
    let key = url_decode(s3["object"]["key"].as_str().unwrap_or_default());
    let etag = s3["object"]["eTag"].as_str().unwrap_or_default();
    let size = s3["object"]["size"].as_u64().unwrap_or(0);
    // The same object version notified twice gets the same id, so the
    // idempotency record stops the second; a new upload is a new import.
    let id = derived_id(&["s3", bucket, &key, etag]);
    let mut payload = json!({ "bucket": bucket, "key": key, "etag": etag, "size": size });
    if records.len() > 1 {
        payload["error"] = json!(format!(
            "{} S3 records in one message; expected one",
            records.len()
        ));
    }
    Adapted::Envelope(Envelope::root(id, Step::ImportCdrFile, payload, vec![], None, now).to_body())
}

/// The console's `{"bucket": ..., "key": ..., "provider"?: ...}` as an envelope.
pub fn console_envelope(event: &Value, request_id: &str, now: DateTime<Utc>) -> Option<String> {
    if event.get("version").is_some() || event.get("bucket").is_none() || event.get("key").is_none()
    {
        return None;
    }
    let id = derived_id(&["console-import", request_id]);
    Some(Envelope::root(id, Step::ImportCdrFile, event.clone(), vec![], None, now).to_body())
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
        let Adapted::Envelope(again) = adapt_body(&s3_body(), Utc::now()) else {
            panic!()
        };
        assert_eq!(Envelope::parse(&again).unwrap().id, envelope.id);
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

    #[test]
    fn the_console_command_becomes_an_envelope() {
        let body =
            console_envelope(&json!({"bucket": "b", "key": "k"}), "req-1", Utc::now()).unwrap();
        assert_eq!(Envelope::parse(&body).unwrap().payload["key"], "k");
        assert!(console_envelope(
            &json!({"version": 1, "bucket": "b", "key": "k"}),
            "r",
            Utc::now()
        )
        .is_none());
    }
}
