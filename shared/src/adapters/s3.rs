//! S3: the CDR bucket.

use std::sync::Arc;

use async_trait::async_trait;
use aws_sdk_s3::error::{DisplayErrorContext, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::Client;
use bytes::Bytes;
use tokio::sync::OnceCell;

use crate::import::notification::{
    parse_notification, Adapted, ExportOrigin, Notification, ObjectCreated,
};
use crate::import::source::{RangeRead, SourceError};
use crate::lambda::BodyAdapter;
use crate::ports::{ObjectPut, PortError};
use crate::sync::provider::{TASK_ID_METADATA, TRACE_ID_METADATA};

#[derive(Debug, Clone)]
pub struct S3Objects {
    client: Client,
}

impl S3Objects {
    pub fn new(client: Client) -> Self {
        Self { client }
    }
}

#[async_trait]
impl ObjectPut for S3Objects {
    async fn put_object(
        &self,
        bucket: &str,
        key: &str,
        bytes: Vec<u8>,
        content_type: &str,
        metadata: &[(&str, &str)],
    ) -> Result<(), PortError> {
        let mut request = self
            .client
            .put_object()
            .bucket(bucket)
            .key(key)
            .content_type(content_type)
            .body(ByteStream::from(bytes));
        for (name, value) in metadata {
            request = request.metadata(*name, *value);
        }
        request
            .send()
            .await
            .map_err(|e| PortError::new("s3 PutObject", DisplayErrorContext(e)))?;
        Ok(())
    }
}

/// The housekeeping's deletes (expired rejected-row files). On a
/// versioned bucket this adds a delete marker; the noncurrent version
/// expires by the bucket's lifecycle rule. Its own type: only the
/// maintenance may delete.
pub struct S3Deletes {
    client: Client,
}

impl S3Deletes {
    pub fn new(client: Client) -> Self {
        Self { client }
    }
}

#[async_trait]
impl crate::maintenance::housekeeping::ObjectDelete for S3Deletes {
    async fn delete_object(&self, bucket: &str, key: &str) -> Result<(), PortError> {
        self.client
            .delete_object()
            .bucket(bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| PortError::new("s3 DeleteObject", DisplayErrorContext(e)))?;
        Ok(())
    }
}

/// One S3 object as a [`RangeRead`] for the CDR import: HeadObject once for
/// the length and ETag, then GetObject with a `Range` per read. Every read
/// sends `If-Match` with that ETag, so an object replaced in the middle of an
/// import fails with [`SourceError::Changed`] instead of mixing two versions.
#[derive(Debug, Clone)]
pub struct S3Source {
    client: Client,
    bucket: String,
    key: String,
    head: Arc<OnceCell<Head>>,
}

#[derive(Debug, Clone)]
struct Head {
    len: u64,
    etag: Option<String>,
}

impl S3Source {
    pub fn new(client: Client, bucket: impl Into<String>, key: impl Into<String>) -> Self {
        Self {
            client,
            bucket: bucket.into(),
            key: key.into(),
            head: Arc::new(OnceCell::new()),
        }
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    pub fn key(&self) -> &str {
        &self.key
    }

    async fn head(&self) -> Result<&Head, SourceError> {
        self.head
            .get_or_try_init(|| async {
                let out = self
                    .client
                    .head_object()
                    .bucket(&self.bucket)
                    .key(&self.key)
                    .send()
                    .await
                    .map_err(|e| {
                        let not_found = e.as_service_error().is_some_and(|s| s.is_not_found());
                        self.sdk_error(e, not_found)
                    })?;
                let len = out
                    .content_length()
                    .and_then(|n| u64::try_from(n).ok())
                    .ok_or_else(|| SourceError::Io {
                        what: self.describe(),
                        message: "HeadObject returned no content length".into(),
                    })?;
                Ok(Head {
                    len,
                    etag: out.e_tag().map(str::to_string),
                })
            })
            .await
    }

    /// Maps an SDK error by HTTP status: 404 not found, 403 denied, 412
    /// changed, 416 out of range, other 4xx refused, anything else (5xx,
    /// throttling, timeouts, connection failures) transient.
    fn sdk_error<E, R>(&self, e: SdkError<E, R>, not_found: bool) -> SourceError
    where
        E: std::error::Error + Send + Sync + 'static,
        R: std::fmt::Debug + HttpStatus,
    {
        let what = self.describe();
        let status = e.raw_response().map(HttpStatus::status_code);
        let message = DisplayErrorContext(&e).to_string();
        match status {
            _ if not_found => SourceError::NotFound { what },
            Some(404) => SourceError::NotFound { what },
            Some(403) => SourceError::AccessDenied { what, message },
            Some(412) => SourceError::Changed { what },
            Some(416) => SourceError::OutOfRange {
                what,
                offset: 0,
                len: 0,
                size: self.head.get().map_or(0, |h| h.len),
            },
            Some(408 | 429) => SourceError::Io { what, message },
            Some(s) if (400..500).contains(&s) => SourceError::Rejected { what, message },
            _ => SourceError::Io { what, message },
        }
    }
}

/// The HTTP status of an SDK raw response (kept generic so `sdk_error`
/// serves both operations).
trait HttpStatus {
    fn status_code(&self) -> u16;
}

impl HttpStatus for aws_sdk_s3::config::http::HttpResponse {
    fn status_code(&self) -> u16 {
        self.status().as_u16()
    }
}

#[async_trait]
impl RangeRead for S3Source {
    async fn len(&self) -> Result<u64, SourceError> {
        Ok(self.head().await?.len)
    }

    async fn read_range(&self, offset: u64, len: u64) -> Result<Bytes, SourceError> {
        let head = self.head().await?;
        match offset.checked_add(len) {
            Some(end) if end <= head.len => {}
            _ => {
                return Err(SourceError::OutOfRange {
                    what: self.describe(),
                    offset,
                    len,
                    size: head.len,
                })
            }
        }
        if len == 0 {
            return Ok(Bytes::new());
        }
        let mut request = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(&self.key)
            .range(format!("bytes={}-{}", offset, offset + len - 1));
        if let Some(etag) = &head.etag {
            request = request.if_match(etag);
        }
        let out = request.send().await.map_err(|e| {
            let not_found = e.as_service_error().is_some_and(|s| s.is_no_such_key());
            match self.sdk_error(e, not_found) {
                SourceError::OutOfRange { what, size, .. } => SourceError::OutOfRange {
                    what,
                    offset,
                    len,
                    size,
                },
                other => other,
            }
        })?;
        let body = out
            .body
            .collect()
            .await
            .map_err(|e| SourceError::Io {
                what: self.describe(),
                message: format!("reading the body of bytes {offset}+{len} failed: {e}"),
            })?
            .into_bytes();
        if body.len() as u64 != len {
            return Err(SourceError::Io {
                what: self.describe(),
                message: format!(
                    "asked for {len} bytes at offset {offset}, got {}",
                    body.len()
                ),
            });
        }
        Ok(body)
    }

    fn describe(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.key)
    }
}

#[cfg(test)]
mod s3_source_tests {
    use super::*;

    /// Against the emulator: `source .emulator/env` (scripts/emulator.sh
    /// start), then `cargo test -p tem-shared s3_source -- --ignored`.
    #[tokio::test]
    #[ignore = "needs the emulator: source .emulator/env first"]
    async fn s3_source_reads_ranges_and_tells_missing_and_changed_objects_apart() {
        use aws_sdk_s3::types::{BucketLocationConstraint, CreateBucketConfiguration};
        let config = crate::adapters::aws_config().await;
        let client = crate::adapters::s3_client(&config);
        let bucket = format!("tem-s3source-test-{}", std::process::id());
        let region = config.region().map(|r| r.to_string()).unwrap_or_default();
        client
            .create_bucket()
            .bucket(&bucket)
            .create_bucket_configuration(
                CreateBucketConfiguration::builder()
                    .location_constraint(BucketLocationConstraint::from(region.as_str()))
                    .build(),
            )
            .send()
            .await
            .unwrap();
        let put = |body: &'static [u8]| {
            client
                .put_object()
                .bucket(&bucket)
                .key("inbox/x.zip")
                .body(ByteStream::from_static(body))
                .send()
        };
        put(b"0123456789").await.unwrap();

        let source = S3Source::new(client.clone(), &bucket, "inbox/x.zip");
        assert_eq!(source.len().await.unwrap(), 10);
        assert_eq!(&source.read_range(2, 4).await.unwrap()[..], b"2345");
        assert_eq!(&source.read_range(9, 1).await.unwrap()[..], b"9");
        assert!(matches!(
            source.read_range(8, 5).await,
            Err(SourceError::OutOfRange { size: 10, .. })
        ));

        let missing = S3Source::new(client.clone(), &bucket, "inbox/missing.zip");
        let err = missing.len().await.unwrap_err();
        assert!(matches!(err, SourceError::NotFound { .. }), "{err}");
        assert_eq!(
            err.to_string(),
            format!("object s3://{bucket}/inbox/missing.zip not found; check the bucket and key (or the path)")
        );

        put(b"abcdefghij").await.unwrap();
        let err = source.read_range(0, 4).await.unwrap_err();
        assert!(matches!(err, SourceError::Changed { .. }), "{err}");
        assert!(err.is_transient());

        client
            .delete_object()
            .bucket(&bucket)
            .key("inbox/x.zip")
            .send()
            .await
            .unwrap();
        client.delete_bucket().bucket(&bucket).send().await.unwrap();
    }
}

/// Opens objects of the CDR bucket for ranged reads.
#[derive(Debug, Clone)]
pub struct S3Sources {
    client: Client,
}

impl S3Sources {
    pub fn new(client: Client) -> Self {
        Self { client }
    }
}

impl crate::import::handler::ObjectSource for S3Sources {
    fn open(&self, bucket: &str, key: &str) -> Arc<dyn RangeRead> {
        Arc::new(S3Source::new(self.client.clone(), bucket, key))
    }
}

/// Rejected-rows files next to the export, under `rejected/` in the same
/// bucket (outside the `inbox/` prefix the import listens to).
#[derive(Debug, Clone)]
pub struct S3Rejects {
    client: Client,
    bucket: String,
}

impl S3Rejects {
    pub fn new(client: Client, bucket: impl Into<String>) -> Self {
        Self {
            client,
            bucket: bucket.into(),
        }
    }
}

#[async_trait]
impl crate::import::importer::RejectStore for S3Rejects {
    async fn store(&self, key: &str, file: &std::path::Path) -> Result<String, PortError> {
        let body = ByteStream::from_path(file)
            .await
            .map_err(|e| PortError::new("read rejected rows", e))?;
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_type("text/csv")
            .body(body)
            .send()
            .await
            .map_err(|e| PortError::new("s3 PutObject rejected rows", DisplayErrorContext(e)))?;
        Ok(format!("s3://{}/{key}", self.bucket))
    }
}

/// One object written as an S3 multipart upload, a part at a time, for
/// documents too big to hold (the usage specification). An object of one
/// part is a plain PutObject instead; an aborted upload leaves nothing (S3
/// would otherwise keep, and bill, its parts).
/// Starts an S3 multipart upload per specification (the SpecifyInvoice
/// step's [`UploadStarter`]).
#[derive(Clone)]
pub struct S3Uploads {
    client: Client,
}

impl S3Uploads {
    pub fn new(client: Client) -> Self {
        Self { client }
    }
}

impl crate::billing::specification::UploadStarter for S3Uploads {
    fn start(&self, bucket: &str, key: &str) -> Box<dyn crate::billing::specification::PartUpload> {
        Box::new(S3MultipartUpload::new(
            self.client.clone(),
            bucket,
            key,
            crate::billing::specification::CONTENT_TYPE,
        ))
    }
}

pub struct S3MultipartUpload {
    client: Client,
    bucket: String,
    key: String,
    content_type: String,
    upload_id: Option<String>,
    parts: Vec<aws_sdk_s3::types::CompletedPart>,
}

impl S3MultipartUpload {
    pub fn new(
        client: Client,
        bucket: impl Into<String>,
        key: impl Into<String>,
        content_type: impl Into<String>,
    ) -> Self {
        Self {
            client,
            bucket: bucket.into(),
            key: key.into(),
            content_type: content_type.into(),
            upload_id: None,
            parts: Vec::new(),
        }
    }

    async fn upload_id(&mut self) -> Result<String, PortError> {
        if let Some(id) = &self.upload_id {
            return Ok(id.clone());
        }
        let created = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(&self.key)
            .content_type(&self.content_type)
            .send()
            .await
            .map_err(|e| PortError::new("s3 CreateMultipartUpload", DisplayErrorContext(e)))?;
        let id = created
            .upload_id()
            .ok_or_else(|| PortError::new("s3 CreateMultipartUpload", "no upload id returned"))?
            .to_string();
        self.upload_id = Some(id.clone());
        Ok(id)
    }

    async fn upload_part(&mut self, bytes: Vec<u8>) -> Result<(), PortError> {
        let id = self.upload_id().await?;
        let number = i32::try_from(self.parts.len() + 1)
            .map_err(|_| PortError::new("s3 UploadPart", "too many parts"))?;
        let uploaded = self
            .client
            .upload_part()
            .bucket(&self.bucket)
            .key(&self.key)
            .upload_id(id)
            .part_number(number)
            .body(ByteStream::from(bytes))
            .send()
            .await
            .map_err(|e| PortError::new("s3 UploadPart", DisplayErrorContext(e)))?;
        self.parts.push(
            aws_sdk_s3::types::CompletedPart::builder()
                .part_number(number)
                .set_e_tag(uploaded.e_tag().map(str::to_string))
                .build(),
        );
        Ok(())
    }
}

#[async_trait]
impl crate::billing::specification::PartUpload for S3MultipartUpload {
    async fn part(&mut self, bytes: Vec<u8>) -> Result<(), PortError> {
        self.upload_part(bytes).await
    }

    async fn complete(&mut self, last: Vec<u8>) -> Result<(), PortError> {
        if self.upload_id.is_none() {
            self.client
                .put_object()
                .bucket(&self.bucket)
                .key(&self.key)
                .content_type(&self.content_type)
                .body(ByteStream::from(last))
                .send()
                .await
                .map_err(|e| PortError::new("s3 PutObject", DisplayErrorContext(e)))?;
            return Ok(());
        }
        self.upload_part(last).await?;
        let id = self.upload_id().await?;
        self.client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(&self.key)
            .upload_id(id)
            .multipart_upload(
                aws_sdk_s3::types::CompletedMultipartUpload::builder()
                    .set_parts(Some(std::mem::take(&mut self.parts)))
                    .build(),
            )
            .send()
            .await
            .map_err(|e| PortError::new("s3 CompleteMultipartUpload", DisplayErrorContext(e)))?;
        Ok(())
    }

    async fn abort(&mut self) {
        let Some(id) = self.upload_id.take() else {
            return;
        };
        if let Err(e) = self
            .client
            .abort_multipart_upload()
            .bucket(&self.bucket)
            .key(&self.key)
            .upload_id(id)
            .send()
            .await
        {
            // The bucket's lifecycle rule for incomplete uploads is the
            // backstop; the caller reports its own error, not this one.
            tracing::warn!(key = %self.key, error = %DisplayErrorContext(e), "aborting the multipart upload failed");
        }
    }
}

/// Invoice documents for operators: downloaded to a file as a stream, or
/// a presigned GET URL for someone without access to the bucket.
#[derive(Debug, Clone)]
pub struct S3Documents {
    client: Client,
}

impl S3Documents {
    pub fn new(client: Client) -> Self {
        Self { client }
    }
}

#[async_trait]
impl crate::billing::invoice_view::DocumentAccess for S3Documents {
    async fn download(
        &self,
        bucket: &str,
        key: &str,
        to: &std::path::Path,
    ) -> Result<u64, PortError> {
        use tokio::io::AsyncWriteExt;
        let object = self
            .client
            .get_object()
            .bucket(bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| PortError::new("s3 GetObject", DisplayErrorContext(e)))?;
        let mut file = tokio::fs::File::create(to)
            .await
            .map_err(|e| PortError::new("create the download's file", e))?;
        let mut body = object.body;
        let mut size = 0u64;
        while let Some(chunk) = body
            .try_next()
            .await
            .map_err(|e| PortError::new("s3 GetObject body", e))?
        {
            size += chunk.len() as u64;
            file.write_all(&chunk)
                .await
                .map_err(|e| PortError::new("write the download's file", e))?;
        }
        file.flush()
            .await
            .map_err(|e| PortError::new("write the download's file", e))?;
        Ok(size)
    }

    async fn presign(
        &self,
        bucket: &str,
        key: &str,
        expires: std::time::Duration,
    ) -> Result<String, PortError> {
        let config = aws_sdk_s3::presigning::PresigningConfig::expires_in(expires)
            .map_err(|e| PortError::new("s3 presign", e))?;
        let request = self
            .client
            .get_object()
            .bucket(bucket)
            .key(key)
            .presigned(config)
            .await
            .map_err(|e| PortError::new("s3 presign GetObject", DisplayErrorContext(e)))?;
        Ok(request.uri().to_string())
    }
}

/// The import queue's bodies: S3 notifications become `ImportCdrFile`
/// envelopes, and an export a sync task stored (its `tem-task-id` and
/// `tem-trace-id` metadata) continues that task's hand-off and trace, so the
/// task completes only when its totals do.
pub struct S3Notifications {
    client: Client,
}

impl S3Notifications {
    pub fn new(client: Client) -> Self {
        Self { client }
    }

    async fn origin_of(&self, object: &ObjectCreated) -> Result<ExportOrigin, String> {
        match self
            .client
            .head_object()
            .bucket(&object.bucket)
            .key(&object.key)
            .send()
            .await
        {
            Ok(head) => {
                let get = |name: &str| head.metadata().and_then(|m| m.get(name)).cloned();
                Ok(ExportOrigin {
                    task_id: get(TASK_ID_METADATA),
                    trace_id: get(TRACE_ID_METADATA),
                })
            }
            // Gone already: the import says so in the DLQ with the key.
            Err(e) if e.as_service_error().is_some_and(|s| s.is_not_found()) => {
                Ok(ExportOrigin::default())
            }
            Err(e) => Err(format!(
                "could not read s3://{}/{} to find its sync task: {}",
                object.bucket,
                object.key,
                DisplayErrorContext(e)
            )),
        }
    }
}

#[async_trait]
impl BodyAdapter for S3Notifications {
    async fn adapt(&self, body: &str, now: chrono::DateTime<chrono::Utc>) -> Adapted {
        match parse_notification(body) {
            Notification::Object(object) => match self.origin_of(&object).await {
                Ok(origin) => Adapted::Envelope(object.envelope(&origin, now)),
                Err(reason) => Adapted::Retry(reason),
            },
            Notification::Ignore(reason) => Adapted::Ignore(reason),
            Notification::NotANotification => Adapted::Unchanged,
        }
    }
}
