//! Carrier drivers: how each provider's usage export is fetched over HTTP.
//!
//! Most carriers hand out a period's export on one GET. Routit prepares
//! exports asynchronously: request, poll until ready, download; its driver
//! therefore names the chain steps that do this instead of fetching at once.

use std::time::Duration;

use async_trait::async_trait;
use chrono::NaiveDate;
use reqwest::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::command::{Command, ExportHandover, RoutitExport};
use crate::envelope::Step;
use crate::routing::Provider;
use crate::runtime::{Reason, StepError};

/// Credentials as stored in Secrets Manager: `{"token": "..."}` or
/// `{"username": "...", "password": "..."}`.
#[derive(Clone, Deserialize)]
#[serde(untagged)]
pub enum Credentials {
    Token { token: String },
    Basic { username: String, password: String },
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Credentials(redacted)")
    }
}

impl Credentials {
    pub fn parse(secret_id: &str, value: &str) -> Result<Self, StepError> {
        serde_json::from_str(value).map_err(|_| {
            StepError::Permanent(
                format!(
                    "secret {secret_id} must be JSON with \"token\" or \"username\" and \"password\""
                )
                .into(),
            )
        })
    }
}

/// Everything a driver needs to talk to one carrier account.
#[derive(Debug, Clone)]
pub struct Access {
    pub base_url: String,
    pub credentials: Credentials,
}

/// A downloaded export.
#[derive(Debug, Clone, PartialEq)]
pub struct Export {
    /// The carrier's id for the export, or a content hash when it has none;
    /// part of the S3 key, so a retried download overwrites, never duplicates.
    pub export_id: String,
    pub bytes: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Start {
    Fetched(Export),
    /// Run these steps (in this order) to fetch the period.
    Steps(Vec<Step>),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Progress {
    /// Hand the export id to the next step.
    Output(ExportHandover),
    NotReady,
    Fetched(Export),
}

#[async_trait]
pub trait ProviderDriver: Send + Sync {
    fn provider(&self) -> Provider;

    /// Begins fetching one period.
    async fn start(
        &self,
        access: &Access,
        period: NaiveDate,
        reference: &str,
    ) -> Result<Start, StepError>;

    /// Runs one of the steps that `start` named. Its command carries what
    /// the previous step handed on.
    async fn step(&self, command: &Command, _access: &Access) -> Result<Progress, StepError> {
        Err(StepError::Permanent(
            format!(
                "step {} is not part of the {} driver",
                command.step(),
                self.provider()
            )
            .into(),
        ))
    }
}

/// The driver of each provider.
pub fn driver_for(provider: Provider, http: HttpClient) -> Box<dyn ProviderDriver> {
    match provider {
        Provider::Routit => Box::new(RoutitDriver { http }),
        other => Box::new(DirectExportDriver {
            provider: other,
            http,
        }),
    }
}

/// An HTTP client with the carrier-call timeout set once.
#[derive(Debug, Clone)]
pub struct HttpClient {
    client: reqwest::Client,
}

impl HttpClient {
    pub fn new(timeout: Duration) -> Self {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .build()
            .expect("a client with only timeouts set always builds");
        Self { client }
    }

    fn request(
        &self,
        method: reqwest::Method,
        access: &Access,
        path: &str,
    ) -> reqwest::RequestBuilder {
        let url = format!("{}{}", access.base_url.trim_end_matches('/'), path);
        let builder = self.client.request(method, url);
        match &access.credentials {
            Credentials::Token { token } => builder.bearer_auth(token),
            Credentials::Basic { username, password } => {
                builder.basic_auth(username, Some(password))
            }
        }
    }

    async fn send(
        &self,
        what: &str,
        builder: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, StepError> {
        let response = builder.send().await.map_err(|e| {
            StepError::Retryable(Reason::with_source(
                format!("{what}: carrier unreachable: {e}"),
                e,
            ))
        })?;
        classify(what, response).await
    }

    async fn bytes(
        &self,
        what: &str,
        builder: reqwest::RequestBuilder,
    ) -> Result<(Option<String>, Vec<u8>), StepError> {
        let response = self.send(what, builder).await?;
        let export_id = response
            .headers()
            .get("x-export-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let bytes = response.bytes().await.map_err(|e| {
            StepError::Retryable(Reason::with_source(
                format!("{what}: download interrupted: {e}"),
                e,
            ))
        })?;
        Ok((export_id, bytes.to_vec()))
    }

    /// The carrier's own invoice for the month starting on `month`
    /// (`GET {base_url}/carrier-invoices/{month}`), for the carrier bill
    /// audit; `None` while the carrier has not issued it (404).
    pub async fn carrier_invoice(
        &self,
        access: &Access,
        month: NaiveDate,
    ) -> Result<Option<Vec<u8>>, StepError> {
        let what = format!("carrier invoice {month}");
        let request = self.request(
            reqwest::Method::GET,
            access,
            &format!("/carrier-invoices/{month}"),
        );
        let response = request.send().await.map_err(|e| {
            StepError::Retryable(Reason::with_source(
                format!("{what}: carrier unreachable: {e}"),
                e,
            ))
        })?;
        if response.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let response = classify(&what, response).await?;
        let bytes = response.bytes().await.map_err(|e| {
            StepError::Retryable(Reason::with_source(
                format!("{what}: download interrupted: {e}"),
                e,
            ))
        })?;
        Ok(Some(bytes.to_vec()))
    }

    async fn json(&self, what: &str, builder: reqwest::RequestBuilder) -> Result<Value, StepError> {
        self.send(what, builder).await?.json().await.map_err(|e| {
            StepError::Retryable(Reason::with_source(
                format!("{what}: unreadable answer: {e}"),
                e,
            ))
        })
    }
}

/// Sorts carrier answers into retryable and permanent failures.
async fn classify(what: &str, response: reqwest::Response) -> Result<reqwest::Response, StepError> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let body: String = response
        .text()
        .await
        .unwrap_or_default()
        .chars()
        .take(300)
        .collect();
    let message = format!("{what}: carrier answered {status}: {body}");
    match status {
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => Err(StepError::Permanent(
            format!("{message}; check the credentials in the profile's secret").into(),
        )),
        StatusCode::NOT_FOUND | StatusCode::TOO_MANY_REQUESTS | StatusCode::REQUEST_TIMEOUT => {
            Err(StepError::Retryable(message.into()))
        }
        s if s.is_server_error() => Err(StepError::Retryable(message.into())),
        _ => Err(StepError::Permanent(message.into())),
    }
}

/// Keeps an export id safe for use in an S3 key.
fn sanitize(id: &str) -> String {
    id.chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .take(100)
        .collect()
}

fn content_id(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(&Sha256::digest(bytes)[..12])
}

/// Carriers that return a period's export on one GET of
/// `{base_url}/exports/{period}`.
pub struct DirectExportDriver {
    provider: Provider,
    http: HttpClient,
}

#[async_trait]
impl ProviderDriver for DirectExportDriver {
    fn provider(&self) -> Provider {
        self.provider
    }

    async fn start(
        &self,
        access: &Access,
        period: NaiveDate,
        _reference: &str,
    ) -> Result<Start, StepError> {
        let what = format!("{} export {period}", self.provider);
        let request =
            self.http
                .request(reqwest::Method::GET, access, &format!("/exports/{period}"));
        let (export_id, bytes) = self.http.bytes(&what, request).await?;
        let export_id = export_id
            .map(|id| sanitize(&id))
            .filter(|id| !id.is_empty())
            .unwrap_or_else(|| content_id(&bytes));
        Ok(Start::Fetched(Export { export_id, bytes }))
    }
}

/// Routit: `POST /exports` (request), `GET /exports/{id}` (poll),
/// `GET /exports/{id}/file` (download).
pub struct RoutitDriver {
    http: HttpClient,
}

#[async_trait]
impl ProviderDriver for RoutitDriver {
    fn provider(&self) -> Provider {
        Provider::Routit
    }

    async fn start(
        &self,
        _access: &Access,
        _period: NaiveDate,
        _reference: &str,
    ) -> Result<Start, StepError> {
        Ok(Start::Steps(vec![
            Step::RoutitRequestExport,
            Step::RoutitPollExport,
            Step::RoutitDownloadExport,
        ]))
    }

    async fn step(&self, command: &Command, access: &Access) -> Result<Progress, StepError> {
        match command {
            Command::RoutitRequestExport(export) => {
                // The reference makes the request idempotent at Routit: a retried
                // request returns the export already being prepared.
                let body = ExportRequest {
                    period: export.sync.period,
                    reference: &export.reference,
                };
                let request = self
                    .http
                    .request(reqwest::Method::POST, access, "/exports")
                    .json(&body);
                let answer = self.http.json("routit export request", request).await?;
                let export_id = string_field(&answer, "export_id", "routit export request")?;
                Ok(Progress::Output(ExportHandover { export_id }))
            }
            Command::RoutitPollExport(export) => {
                let export_id = export_id_of(export, Step::RoutitPollExport)?;
                let request = self.http.request(
                    reqwest::Method::GET,
                    access,
                    &format!("/exports/{}", sanitize(&export_id)),
                );
                let answer = self.http.json("routit export status", request).await?;
                match answer.get("status").and_then(Value::as_str) {
                    Some("ready") => Ok(Progress::Output(ExportHandover { export_id })),
                    Some("pending") | Some("processing") => Ok(Progress::NotReady),
                    Some("failed") => Err(StepError::Permanent(
                        format!(
                            "routit export {export_id} failed at the carrier: {}",
                            answer
                                .get("error")
                                .and_then(Value::as_str)
                                .unwrap_or("no reason given")
                        )
                        .into(),
                    )),
                    other => Err(StepError::Retryable(
                        format!("routit export status: unexpected status {other:?}").into(),
                    )),
                }
            }
            Command::RoutitDownloadExport(export) => {
                let export_id = export_id_of(export, Step::RoutitDownloadExport)?;
                let request = self.http.request(
                    reqwest::Method::GET,
                    access,
                    &format!("/exports/{}/file", sanitize(&export_id)),
                );
                let (_, bytes) = self.http.bytes("routit export download", request).await?;
                Ok(Progress::Fetched(Export {
                    export_id: sanitize(&export_id),
                    bytes,
                }))
            }
            other => Err(StepError::Permanent(
                format!("step {} is not part of the routit driver", other.step()).into(),
            )),
        }
    }
}

/// What Routit's `POST /exports` takes.
#[derive(Debug, Serialize)]
struct ExportRequest<'a> {
    period: NaiveDate,
    reference: &'a str,
}

/// The export id the request step handed on.
fn export_id_of(export: &RoutitExport, step: Step) -> Result<String, StepError> {
    export
        .export_id
        .clone()
        .filter(|id| !id.is_empty())
        .ok_or_else(|| StepError::Permanent(format!("{step} payload has no \"export_id\"").into()))
}

fn string_field(value: &Value, field: &str, what: &str) -> Result<String, StepError> {
    value
        .get(field)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .ok_or_else(|| StepError::Permanent(format!("{what} has no \"{field}\"").into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_accept_a_token_or_a_user_and_password() {
        assert!(matches!(
            Credentials::parse("s", r#"{"token":"abc"}"#).unwrap(),
            Credentials::Token { token } if token == "abc"
        ));
        assert!(matches!(
            Credentials::parse("s", r#"{"username":"u","password":"p"}"#).unwrap(),
            Credentials::Basic { .. }
        ));
        assert!(matches!(
            Credentials::parse("tem/x", "hunter2").unwrap_err(),
            StepError::Permanent(reason) if reason.contains("tem/x")
        ));
    }

    #[test]
    fn credentials_never_show_in_debug_output() {
        let c = Credentials::parse("s", r#"{"token":"very-secret"}"#).unwrap();
        assert!(!format!("{c:?}").contains("very-secret"));
    }

    #[test]
    fn export_ids_are_made_safe_for_s3_keys() {
        assert_eq!(sanitize("../../etc/passwd"), "etcpasswd");
        assert_eq!(sanitize("exp-2025_01"), "exp-2025_01");
    }

    #[test]
    fn routit_fetches_through_request_poll_and_download() {
        let driver = driver_for(Provider::Routit, HttpClient::new(Duration::from_secs(1)));
        let access = Access {
            base_url: "http://127.0.0.1:9".into(),
            credentials: Credentials::Token { token: "t".into() },
        };
        let start =
            futures::executor::block_on(driver.start(&access, NaiveDate::MIN, "r")).unwrap();
        assert_eq!(
            start,
            Start::Steps(vec![
                Step::RoutitRequestExport,
                Step::RoutitPollExport,
                Step::RoutitDownloadExport
            ])
        );
    }
}
