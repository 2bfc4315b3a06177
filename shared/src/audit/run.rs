//! One carrier invoice file audited and stored: read with its provider's
//! format, held against what tem knows of the account's subscriptions for
//! the period, and its findings recorded, through a narrow store trait
//! ([`AuditStore`]; PostgreSQL in `adapters::audit`).
//!
//! Idempotent: the same content of one provider/account/period is one
//! carrier invoice, and auditing it again updates its findings in place
//! (the amounts of open ones; disputed and resolved ones keep their
//! status) instead of adding more. Another content for the same period is
//! a corrected invoice: it becomes the current one and the earlier
//! invoice's findings stay, marked superseded by it. The same content as an
//! invoice already superseded is not audited again.

use std::collections::BTreeMap;
use std::io::Read;

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, NaiveTime, Utc};
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::format::{CarrierFormat, CarrierFormatError};
use super::parse::{read_carrier_invoice, CarrierFile, CarrierFileError, RejectedLine};
use super::{audit, Finding, Known, Tolerance};
use crate::cdr::local_to_utc;
use crate::import::format::FormatTemplate;
use crate::ports::StoreError;
use crate::routing::Provider;

/// What the audit of one invoice reads: the account's subscriptions
/// (those billed and those with a buy rate on the account) over the
/// period, and the CDRs started in `[cdr_from, cdr_to)` (the period's
/// days in the provider's CDR time zone).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    pub provider: String,
    pub account: String,
    pub period_start: NaiveDate,
    pub period_end: NaiveDate,
    pub billed: Vec<String>,
    pub cdr_from: DateTime<Utc>,
    pub cdr_to: DateTime<Utc>,
}

/// The invoice already stored with the same content, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Existing {
    New,
    Current(i64),
    Superseded { id: i64, by: i64 },
}

/// What storing an audit did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Recorded {
    pub invoice_id: i64,
    /// The same content had been imported before.
    pub reimported: bool,
    /// The earlier invoices of the period this one supersedes.
    pub superseded: Vec<i64>,
    pub findings_created: usize,
    pub findings_updated: usize,
    /// Open findings of an earlier audit of this invoice that are no
    /// longer found (CDRs arrived since); disputed or resolved ones stay.
    pub findings_removed: usize,
    /// Set when a correction superseded this content while it was being
    /// audited: nothing was stored.
    pub superseded_by: Option<i64>,
}

/// What the audit reads and writes.
#[async_trait]
pub trait AuditStore: Send + Sync {
    async fn existing(
        &self,
        provider: &str,
        account: &str,
        period_start: NaiveDate,
        sha256: &str,
    ) -> Result<Existing, StoreError>;

    /// Per subscription in scope: its CDRs' cost and number per kind, its
    /// buy rate valid on the period's start and its inventory dates.
    async fn known(&self, scope: &Scope) -> Result<BTreeMap<String, Known>, StoreError>;

    /// Stores the invoice (or finds it, for the same content), supersedes
    /// the period's earlier invoice, and upserts the findings, in one
    /// transaction.
    async fn record(
        &self,
        scope: &Scope,
        file: &CarrierFile,
        sha256: &str,
        findings: &[Finding],
    ) -> Result<Recorded, StoreError>;
}

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error(transparent)]
    Format(#[from] CarrierFormatError),
    #[error(transparent)]
    File(#[from] CarrierFileError),
    #[error("storing the audit of {file}: {source}")]
    Store {
        file: String,
        #[source]
        source: StoreError,
    },
}

impl AuditError {
    /// Only the store's failures are worth another attempt: the same file
    /// reads the same way every time.
    pub fn is_retryable(&self) -> bool {
        matches!(self, AuditError::Store { source, .. } if source.retryable)
    }
}

/// The outcome of one audit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditReport {
    pub invoice_id: i64,
    pub provider: String,
    pub account: String,
    pub invoice_number: String,
    pub period_start: NaiveDate,
    pub period_end: NaiveDate,
    pub file: String,
    pub lines: usize,
    pub rejected: Vec<RejectedLine>,
    pub findings: Vec<Finding>,
    /// Set when this content is an invoice a correction already replaced:
    /// nothing was audited.
    pub superseded_by: Option<i64>,
    pub recorded: Recorded,
}

impl AuditReport {
    /// What the findings would recover if every dispute succeeded.
    pub fn overcharge_micros(&self) -> i64 {
        self.findings.iter().map(Finding::overcharge_micros).sum()
    }
}

/// The tolerance unless configured: one cent, no share.
pub const DEFAULT_TOLERANCE: Tolerance = Tolerance {
    micros: 10_000,
    basis_points: 0,
};

/// Hashes what is read through it, so the file is read once.
struct Hashing<R> {
    inner: R,
    hash: Sha256,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        Ok(n)
    }
}

/// The UTC instants of the period's days in the provider's CDR time zone
/// (where the carrier's period boundaries are).
fn cdr_window(provider: &str, start: NaiveDate, end: NaiveDate) -> (DateTime<Utc>, DateTime<Utc>) {
    let zone = provider
        .parse::<Provider>()
        .ok()
        .and_then(|p| FormatTemplate::for_provider(p).ok())
        .map_or(chrono_tz::Europe::Amsterdam, |t| t.time_zone);
    let at = |day: NaiveDate| {
        local_to_utc(day, NaiveTime::MIN, zone)
            .unwrap_or_else(|_| day.and_time(NaiveTime::MIN).and_utc())
    };
    (at(start), at(end))
}

/// Audits the carrier invoice of `provider` read from `input`, stored as
/// `file` (its S3 key), with `tolerance`.
pub async fn audit_carrier_invoice(
    store: &dyn AuditStore,
    provider: &str,
    file: &str,
    input: impl Read,
    tolerance: Tolerance,
) -> Result<AuditReport, AuditError> {
    let format = CarrierFormat::named(provider)?;
    let mut input = Hashing {
        inner: input,
        hash: Sha256::new(),
    };
    let parsed = read_carrier_invoice(&mut input, &format, file)?;
    // The reader stops at the last record; the rest (nothing, normally)
    // still belongs to the content.
    std::io::copy(&mut input, &mut std::io::sink()).map_err(|e| CarrierFileError::Read {
        file: file.to_string(),
        reason: e.to_string(),
    })?;
    let sha256 = hex::encode(input.hash.finalize());
    let store_error = |source| AuditError::Store {
        file: file.to_string(),
        source,
    };
    let invoice = &parsed.invoice;
    let mut report = AuditReport {
        invoice_id: 0,
        provider: invoice.provider.clone(),
        account: invoice.account.clone(),
        invoice_number: invoice.invoice_number.clone(),
        period_start: invoice.period_start,
        period_end: invoice.period_end,
        file: file.to_string(),
        lines: invoice.lines.len(),
        rejected: parsed.rejected.clone(),
        findings: Vec::new(),
        superseded_by: None,
        recorded: Recorded::default(),
    };
    if let Existing::Superseded { id, by } = store
        .existing(
            &invoice.provider,
            &invoice.account,
            invoice.period_start,
            &sha256,
        )
        .await
        .map_err(store_error)?
    {
        report.invoice_id = id;
        report.superseded_by = Some(by);
        return Ok(report);
    }
    let mut billed: Vec<String> = invoice
        .lines
        .iter()
        .map(|l| l.subscription.clone())
        .collect();
    billed.sort();
    billed.dedup();
    let (cdr_from, cdr_to) = cdr_window(provider, invoice.period_start, invoice.period_end);
    let scope = Scope {
        provider: invoice.provider.clone(),
        account: invoice.account.clone(),
        period_start: invoice.period_start,
        period_end: invoice.period_end,
        billed,
        cdr_from,
        cdr_to,
    };
    let known = store.known(&scope).await.map_err(store_error)?;
    let mut findings = audit(invoice, &known, tolerance);
    findings.extend(parsed.totals_finding());
    report.recorded = store
        .record(&scope, &parsed, &sha256, &findings)
        .await
        .map_err(store_error)?;
    report.invoice_id = report.recorded.invoice_id;
    report.superseded_by = report.recorded.superseded_by;
    if report.superseded_by.is_none() {
        report.findings = findings;
    }
    Ok(report)
}
