//! Invoices as operators look at them (`temctl invoice list/show/download`
//! and the ops function's `invoice-*` console events): which invoices there
//! are, one invoice with its lines, VAT breakdown, totals, parties, the
//! reason a draft is blocked, and its documents; and where a document is,
//! or why it is not there yet and how to make it.
//!
//! Reads go through [`InvoiceViewStore`] (PostgreSQL in
//! `adapters::billing::invoice_view`); documents are fetched or presigned
//! through [`DocumentAccess`] (S3 in `adapters::s3`).

use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};
use serde::Serialize;

use crate::billing::document::pdf::{render_pdf, Mark, PdfDocument};
use crate::billing::document::ubl::{
    render_preview as render_ubl_preview, DocumentLine, IssuedInvoice, Profile, UblDocument,
    UblError,
};
use crate::billing::euros;
use crate::billing::invoice::{InvoiceError, InvoiceLine, InvoiceStore};
use crate::billing::issue::{prepare_issue, IssuePreview};
use crate::ports::{PortError, StoreError};

/// How long a presigned URL is valid when nobody says: long enough to
/// download, short enough that a URL pasted somewhere stops working soon.
pub const DEFAULT_EXPIRY: Duration = Duration::from_secs(15 * 60);
/// S3's own limit for a presigned URL (SigV4): 7 days.
pub const MAX_EXPIRY: Duration = Duration::from_secs(7 * 24 * 3600);

#[derive(Debug, thiserror::Error)]
pub enum InvoiceViewError {
    #[error("{0:?} names no invoice: give its numeric id, its number (e.g. 2026-000123), or id:N / number:X")]
    BadReference(String),
    #[error("no invoice {0}; `temctl invoice list` lists them")]
    NotFound(InvoiceRef),
    #[error("{given:?} is the id of invoice {by_id} and the number of invoice {by_number}; say id:{by_id} or number:{given}")]
    Ambiguous {
        given: String,
        by_id: i64,
        by_number: i64,
    },
    #[error("{0:?} is not an invoice status; use draft or final")]
    BadStatus(String),
    #[error("{0:?} is not a document of an invoice; use pdf, ubl or specification")]
    BadDocument(String),
    #[error("an expiry of {0} s is not allowed: give 1 to 604800 seconds (S3 signs a URL for at most 7 days)")]
    BadExpiry(u64),
    #[error("invoice {invoice} has no {what} yet: {how}")]
    NoDocument {
        invoice: String,
        what: DocumentKind,
        how: String,
    },
    #[error("customer {customer} has no draft invoice for the cycle {cycle}; `temctl invoice list --customer {customer}` lists its invoices (a final one is shown with `temctl invoice show`)")]
    NoDraft { customer: String, cycle: NaiveDate },
    #[error("customer {customer}'s time zone {zone:?} is not an IANA zone; correct it with temctl apply")]
    BadTimeZone { customer: String, zone: String },
    #[error("the draft of customer {customer} for {cycle} could not be issued now, so it has no preview documents: {problems}")]
    NotIssuable {
        customer: String,
        cycle: NaiveDate,
        problems: String,
    },
    #[error("rendering the preview failed: {0}")]
    Render(#[from] UblError),
    #[error(transparent)]
    Invoice(#[from] InvoiceError),
    #[error("database error: {0}")]
    Store(#[from] StoreError),
    #[error(transparent)]
    Port(#[from] PortError),
}

impl InvoiceViewError {
    /// The operator named something wrongly (a usage error, exit code 2).
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            InvoiceViewError::BadReference(_)
                | InvoiceViewError::BadStatus(_)
                | InvoiceViewError::BadDocument(_)
                | InvoiceViewError::BadExpiry(_)
        )
    }
}

/// An invoice as an operator names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InvoiceRef {
    Id(i64),
    Number(String),
    /// Digits only: an id, or the number of a series without separators.
    Either(i64, String),
}

impl FromStr for InvoiceRef {
    type Err = InvoiceViewError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let text = s.trim();
        let bad = || InvoiceViewError::BadReference(s.to_string());
        if let Some(id) = text.strip_prefix("id:") {
            return id.trim().parse().map(InvoiceRef::Id).map_err(|_| bad());
        }
        if let Some(number) = text.strip_prefix("number:") {
            let number = number.trim();
            return if number.is_empty() {
                Err(bad())
            } else {
                Ok(InvoiceRef::Number(number.to_string()))
            };
        }
        if text.is_empty() {
            return Err(bad());
        }
        if text.bytes().all(|b| b.is_ascii_digit()) {
            return match text.parse() {
                Ok(id) => Ok(InvoiceRef::Either(id, text.to_string())),
                Err(_) => Ok(InvoiceRef::Number(text.to_string())),
            };
        }
        Ok(InvoiceRef::Number(text.to_string()))
    }
}

impl fmt::Display for InvoiceRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InvoiceRef::Id(id) => write!(f, "id {id}"),
            InvoiceRef::Number(number) => write!(f, "number {number}"),
            InvoiceRef::Either(id, _) => write!(f, "with id or number {id}"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum InvoiceStatus {
    Draft,
    Final,
}

impl FromStr for InvoiceStatus {
    type Err = InvoiceViewError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "draft" => Ok(InvoiceStatus::Draft),
            "final" => Ok(InvoiceStatus::Final),
            other => Err(InvoiceViewError::BadStatus(other.to_string())),
        }
    }
}

impl InvoiceStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            InvoiceStatus::Draft => "draft",
            InvoiceStatus::Final => "final",
        }
    }
}

/// The documents of an invoice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DocumentKind {
    Pdf,
    Ubl,
    Specification,
}

impl FromStr for DocumentKind {
    type Err = InvoiceViewError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "pdf" => Ok(DocumentKind::Pdf),
            "ubl" | "xml" => Ok(DocumentKind::Ubl),
            "specification" | "spec" => Ok(DocumentKind::Specification),
            other => Err(InvoiceViewError::BadDocument(other.to_string())),
        }
    }
}

impl fmt::Display for DocumentKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DocumentKind::Pdf => "PDF",
            DocumentKind::Ubl => "UBL document",
            DocumentKind::Specification => "usage specification",
        })
    }
}

/// Which invoices to list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InvoiceFilter {
    /// A customer's numeric id or code.
    pub customer: Option<String>,
    pub cycle: Option<NaiveDate>,
    pub status: Option<InvoiceStatus>,
    pub limit: i64,
}

/// One invoice in a list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InvoiceSummary {
    pub id: i64,
    pub customer_id: i64,
    pub customer: String,
    pub cycle: NaiveDate,
    pub kind: String,
    pub sequence: i32,
    pub status: String,
    pub number: Option<String>,
    pub issue_date: Option<NaiveDate>,
    pub total_micros: i64,
    pub payable_cents: Option<i64>,
    pub blocked_reason: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LineView {
    pub line_no: i32,
    pub description: String,
    pub subscription: String,
    pub kind: String,
    pub zone: String,
    pub quantity: String,
    pub amount_micros: i64,
    pub vat_category: Option<String>,
    pub vat_rate_bp: Option<i32>,
    pub net_cents: Option<i64>,
}

/// A document written for an invoice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DocumentRecord {
    pub what: DocumentKind,
    pub bucket: String,
    pub key: String,
    pub sha256: String,
    pub size_bytes: i64,
    pub written_at: DateTime<Utc>,
}

/// One invoice in full.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct InvoiceDetail {
    #[serde(flatten)]
    pub summary: InvoiceSummary,
    pub rated_cost_micros: i64,
    pub fees_micros: i64,
    /// The customer's billing time zone (a preview's issue date is its
    /// today there).
    pub time_zone: String,
    pub due_date: Option<NaiveDate>,
    pub finalised_at: Option<DateTime<Utc>>,
    pub net_cents: Option<i64>,
    pub vat_cents: Option<i64>,
    pub vat_breakdown: Option<serde_json::Value>,
    pub seller: Option<serde_json::Value>,
    pub buyer: Option<serde_json::Value>,
    pub blocked_at: Option<DateTime<Utc>>,
    pub lines: Vec<LineView>,
    pub documents: Vec<DocumentRecord>,
}

/// Where invoices are read.
#[async_trait]
pub trait InvoiceViewStore: Send + Sync {
    /// Newest first, at most `filter.limit`.
    async fn list(&self, filter: &InvoiceFilter) -> Result<Vec<InvoiceSummary>, StoreError>;
    /// The ids of the invoices with this id or this number (a number is
    /// unique per seller, so two sellers' series may share one).
    async fn find(
        &self,
        id: Option<i64>,
        number: Option<&str>,
    ) -> Result<Vec<(i64, bool)>, StoreError>;
    async fn detail(&self, id: i64) -> Result<Option<InvoiceDetail>, StoreError>;
}

/// A draft as it would be issued now: its lines and the document amounts
/// (no number: a preview is not an invoice), or what keeps it from being
/// issued.
#[derive(Debug, Clone, PartialEq)]
pub struct DraftPreview {
    pub draft: InvoiceDetail,
    pub issued: Result<IssuePreview, Vec<String>>,
}

/// The preview of customer `customer`'s draft of `cycle` as if issued at
/// `now`: the same preparation as the finalisation (parties, VAT and
/// amounts valid on the issue date), in a run that writes nothing.
pub async fn preview(
    view: &dyn InvoiceViewStore,
    invoices: &dyn InvoiceStore,
    customer: &str,
    cycle: NaiveDate,
    now: DateTime<Utc>,
) -> Result<DraftPreview, InvoiceViewError> {
    let no_draft = || InvoiceViewError::NoDraft {
        customer: customer.to_string(),
        cycle,
    };
    let drafts = view
        .list(&InvoiceFilter {
            customer: Some(customer.to_string()),
            cycle: Some(cycle),
            status: Some(InvoiceStatus::Draft),
            limit: 10,
        })
        .await?;
    let summary = drafts
        .into_iter()
        .find(|d| d.sequence == 0)
        .ok_or_else(no_draft)?;
    let draft = view.detail(summary.id).await?.ok_or_else(no_draft)?;
    let zone: chrono_tz::Tz =
        draft
            .time_zone
            .parse()
            .map_err(|_| InvoiceViewError::BadTimeZone {
                customer: customer.to_string(),
                zone: draft.time_zone.clone(),
            })?;
    let lines: Vec<InvoiceLine> = draft
        .lines
        .iter()
        .map(|l| InvoiceLine {
            description: l.description.clone(),
            subscription: l.subscription.clone(),
            kind: l.kind.clone(),
            zone: l.zone.clone(),
            quantity: l.quantity.clone(),
            amount_micros: l.amount_micros,
        })
        .collect();
    // The run is dropped, not committed: nothing it might write stays.
    let mut run = invoices
        .begin(draft.summary.customer_id, draft.summary.cycle)
        .await?;
    let prepared = prepare_issue(
        run.as_mut(),
        draft.summary.customer_id,
        draft.summary.cycle,
        zone,
        now,
        &lines,
    )
    .await?;
    drop(run);
    Ok(DraftPreview {
        draft,
        issued: prepared.map(IssuePreview::from),
    })
}

/// The number a preview states where an invoice has its number: a preview
/// takes none from the series.
pub const PREVIEW_NUMBER: &str = "DRAFT";

/// The draft as the invoice it would be if issued now, numbered
/// [`PREVIEW_NUMBER`]; `None` when it could not be issued.
pub fn preview_invoice(p: &DraftPreview) -> Option<IssuedInvoice> {
    let issued = p.issued.as_ref().ok()?;
    let lines = p
        .draft
        .lines
        .iter()
        .zip(&issued.line_vat)
        .map(|(l, vat)| DocumentLine {
            description: l.description.clone(),
            subscription: l.subscription.clone(),
            kind: l.kind.clone(),
            zone: l.zone.clone(),
            usage: l.quantity.clone(),
            amount_micros: l.amount_micros,
            vat: *vat,
        })
        .collect();
    Some(IssuedInvoice {
        number: PREVIEW_NUMBER.into(),
        issue_date: issued.issue_date,
        due_date: issued.due_date,
        cycle: p.draft.summary.cycle,
        seller: issued.seller.clone(),
        buyer: issued.buyer.clone(),
        lines,
        corrects: None,
    })
}

/// The draft's preview documents: UBL with [`PREVIEW_NOTE`] first and a
/// PDF watermarked on every page, both numbered [`PREVIEW_NUMBER`]. Or the
/// problems that keep the draft from being issued.
pub fn preview_documents(p: &DraftPreview) -> Result<(UblDocument, PdfDocument), InvoiceViewError> {
    let Some(invoice) = preview_invoice(p) else {
        return Err(InvoiceViewError::NotIssuable {
            customer: p.draft.summary.customer.clone(),
            cycle: p.draft.summary.cycle,
            problems: p
                .issued
                .as_ref()
                .err()
                .cloned()
                .unwrap_or_default()
                .join("; "),
        });
    };
    let ubl = render_ubl_preview(&invoice, Profile::PeppolBis)?;
    let pdf = render_pdf(&invoice, Mark::Preview)?;
    Ok((ubl, pdf))
}

/// `temctl invoice preview` as text: plainly marked as a preview, without
/// a number.
pub fn render_preview(p: &DraftPreview) -> String {
    let d = &p.draft;
    let mut out = format!(
        "PREVIEW - NOT AN INVOICE (no number; draft id {} of customer {}, cycle {})\n",
        d.summary.id, d.summary.customer, d.summary.cycle
    );
    let issued = match &p.issued {
        Ok(issued) => issued,
        Err(problems) => {
            out.push_str("it could not be issued now:\n");
            for problem in problems {
                out.push_str(&format!("  - {problem}\n"));
            }
            return out;
        }
    };
    out.push_str(&format!(
        "as if issued {} (due {}) by {} to {}\n\n",
        issued.issue_date, issued.due_date, issued.seller.legal_name, issued.buyer.legal_name
    ));
    out.push_str(&format!(
        "{:>4}  {:<14} {:<8} {:<6} {:>16} {:>12} {:>4} {:>7}  {}\n",
        "line",
        "subscription",
        "kind",
        "zone",
        "amount EUR",
        "net EUR",
        "VAT",
        "rate",
        "description"
    ));
    for (i, l) in d.lines.iter().enumerate() {
        let vat = issued.line_vat.get(i);
        out.push_str(&format!(
            "{:>4}  {:<14} {:<8} {:<6} {:>16} {:>12} {:>4} {:>7}  {}\n",
            l.line_no,
            l.subscription,
            l.kind,
            l.zone,
            euros(l.amount_micros),
            issued
                .amounts
                .line_net_cents
                .get(i)
                .map(|c| cents(*c))
                .unwrap_or_default(),
            vat.map(|v| v.category.as_str()).unwrap_or("-"),
            vat.map(|v| rate(v.rate.0 as i32)).unwrap_or_default(),
            l.description
        ));
    }
    let a = &issued.amounts;
    out.push_str("\nVAT breakdown:\n");
    for row in &a.breakdown {
        out.push_str(&format!(
            "  {:<3} {:>7}  taxable {:>12}  VAT {:>12}\n",
            row.vat.category.as_str(),
            rate(row.vat.rate.0 as i32),
            cents(row.taxable_cents),
            cents(row.vat_cents)
        ));
    }
    out.push_str(&format!(
        "net {} EUR, VAT {} EUR, amount due {} EUR (PREVIEW)\n",
        cents(a.tax_exclusive_cents),
        cents(a.vat_total_cents),
        cents(a.payable_cents)
    ));
    out
}

/// Where documents are fetched, or signed for someone else to fetch.
#[async_trait]
pub trait DocumentAccess: Send + Sync {
    /// Streams the object into the file `to`; returns its size.
    async fn download(&self, bucket: &str, key: &str, to: &Path) -> Result<u64, PortError>;
    /// A GET URL valid for `expires`.
    async fn presign(
        &self,
        bucket: &str,
        key: &str,
        expires: Duration,
    ) -> Result<String, PortError>;
}

/// The invoice an operator named.
pub async fn resolve(
    store: &dyn InvoiceViewStore,
    invoice: &InvoiceRef,
) -> Result<i64, InvoiceViewError> {
    let (id, number) = match invoice {
        InvoiceRef::Id(id) => (Some(*id), None),
        InvoiceRef::Number(number) => (None, Some(number.as_str())),
        InvoiceRef::Either(id, number) => (Some(*id), Some(number.as_str())),
    };
    let found = store.find(id, number).await?;
    let by_id = found.iter().find(|(_, is_id)| *is_id).map(|(id, _)| *id);
    let by_number: Vec<i64> = found
        .iter()
        .filter(|(_, is_id)| !*is_id)
        .map(|(id, _)| *id)
        .collect();
    match (by_id, by_number.as_slice()) {
        (Some(a), [b, ..]) if a != *b => Err(InvoiceViewError::Ambiguous {
            given: number.unwrap_or_default().to_string(),
            by_id: a,
            by_number: *b,
        }),
        (Some(a), _) => Ok(a),
        (None, [only]) => Ok(*only),
        (None, [a, b, ..]) => Err(InvoiceViewError::Ambiguous {
            given: number.unwrap_or_default().to_string(),
            by_id: *a,
            by_number: *b,
        }),
        (None, []) => Err(InvoiceViewError::NotFound(invoice.clone())),
    }
}

pub async fn show(
    store: &dyn InvoiceViewStore,
    invoice: &InvoiceRef,
) -> Result<InvoiceDetail, InvoiceViewError> {
    let id = resolve(store, invoice).await?;
    store
        .detail(id)
        .await?
        .ok_or_else(|| InvoiceViewError::NotFound(invoice.clone()))
}

/// The name an operator knows an invoice by.
pub fn name_of(summary: &InvoiceSummary) -> String {
    match &summary.number {
        Some(number) => format!("{number} (id {})", summary.id),
        None => format!("id {} (draft, no number)", summary.id),
    }
}

/// The invoice's document of kind `what`, or why there is none and how to
/// make it.
pub fn document(
    detail: &InvoiceDetail,
    what: DocumentKind,
) -> Result<&DocumentRecord, InvoiceViewError> {
    if let Some(found) = detail.documents.iter().find(|d| d.what == what) {
        return Ok(found);
    }
    let id = detail.summary.id;
    let how = match (what, detail.summary.status.as_str()) {
        (DocumentKind::Specification, _) => format!(
            "write it with `temctl invoice specify {id}` (it streams the cycle's rated CDRs to S3)"
        ),
        (_, "draft") => format!(
            "a draft has no documents; it gets them once it is final (`temctl invoice preview {} {}` shows its amounts now)",
            detail.summary.customer, detail.summary.cycle
        ),
        _ => format!(
            "the UBL and the PDF are written after finalisation by the RenderInvoice chain step; send the totals function {{\"customer_id\": {}, \"cycle\": \"{}\"}} to run the cycle's chain, which renders what a final invoice lacks",
            detail.summary.customer_id, detail.summary.cycle
        ),
    };
    Err(InvoiceViewError::NoDocument {
        invoice: name_of(&detail.summary),
        what,
        how,
    })
}

/// The expiry of a presigned URL: `seconds`, or [`DEFAULT_EXPIRY`];
/// refused above S3's limit of 7 days, rather than silently shortened.
pub fn expiry(seconds: Option<u64>) -> Result<Duration, InvoiceViewError> {
    match seconds {
        None => Ok(DEFAULT_EXPIRY),
        Some(s) if s >= 1 && Duration::from_secs(s) <= MAX_EXPIRY => Ok(Duration::from_secs(s)),
        Some(s) => Err(InvoiceViewError::BadExpiry(s)),
    }
}

fn cents(cents: i64) -> String {
    let sign = if cents < 0 { "-" } else { "" };
    let abs = cents.unsigned_abs();
    format!("{sign}{}.{:02}", abs / 100, abs % 100)
}

fn rate(bp: i32) -> String {
    format!("{}.{:02}%", bp / 100, (bp % 100).abs())
}

/// `temctl invoice list` as text.
pub fn render_list(rows: &[InvoiceSummary]) -> String {
    let mut out = format!(
        "{:>6}  {:<14} {:<16} {:<10} {:<10} {:<6} {:<11} {:>14} {:>12}\n",
        "id", "number", "customer", "cycle", "kind", "status", "issued", "total EUR", "payable EUR"
    );
    for r in rows {
        out.push_str(&format!(
            "{:>6}  {:<14} {:<16} {:<10} {:<10} {:<6} {:<11} {:>14} {:>12}{}\n",
            r.id,
            r.number.as_deref().unwrap_or("-"),
            r.customer,
            r.cycle,
            if r.sequence > 0 {
                format!("{} {}", r.kind, r.sequence)
            } else {
                r.kind.clone()
            },
            r.status,
            r.issue_date
                .map(|d| d.to_string())
                .unwrap_or_else(|| "-".into()),
            euros(r.total_micros),
            r.payable_cents.map(cents).unwrap_or_else(|| "-".into()),
            match &r.blocked_reason {
                Some(reason) => format!("  BLOCKED: {reason}"),
                None => String::new(),
            }
        ));
    }
    out.push_str(&format!("{} invoice(s)\n", rows.len()));
    out
}

fn party(label: &str, value: &Option<serde_json::Value>) -> String {
    let Some(value) = value else {
        return format!(
            "{label}: (not recorded: a draft is issued with the parties valid on its issue date)\n"
        );
    };
    let field = |name: &str| value.get(name).and_then(|v| v.as_str()).unwrap_or("");
    let mut out = format!("{label}: {}\n", field("legal_name"));
    let address = value.get("address").unwrap_or(value);
    let part = |name: &str| address.get(name).and_then(|v| v.as_str()).unwrap_or("");
    out.push_str(&format!(
        "  {}, {} {}, {}\n",
        part("street"),
        part("postcode"),
        part("city"),
        part("country")
    ));
    for name in ["vat_number", "kvk", "iban", "invoice_email"] {
        if !field(name).is_empty() {
            out.push_str(&format!("  {name}: {}\n", field(name)));
        }
    }
    out
}

/// `temctl invoice show` as text.
pub fn render_detail(d: &InvoiceDetail) -> String {
    let s = &d.summary;
    let mut out = format!(
        "invoice {}\ncustomer {} (id {}), cycle {}, {}{}, {}\n",
        name_of(s),
        s.customer,
        s.customer_id,
        s.cycle,
        s.kind,
        if s.sequence > 0 {
            format!(" {}", s.sequence)
        } else {
            String::new()
        },
        s.status
    );
    if let Some(reason) = &s.blocked_reason {
        out.push_str(&format!(
            "BLOCKED since {}: {reason}\n",
            d.blocked_at.map(|t| t.to_rfc3339()).unwrap_or_default()
        ));
    }
    if let (Some(issued), Some(due)) = (s.issue_date, d.due_date) {
        out.push_str(&format!("issued {issued}, due {due}\n"));
    }
    out.push('\n');
    out.push_str(&party("seller", &d.seller));
    out.push_str(&party("buyer", &d.buyer));
    out.push_str(&format!(
        "\n{:>4}  {:<14} {:<8} {:<6} {:>16} {:>16} {:>4} {:>7} {:>12}  {}\n",
        "line",
        "subscription",
        "kind",
        "zone",
        "quantity",
        "amount EUR",
        "VAT",
        "rate",
        "net EUR",
        "description"
    ));
    for l in &d.lines {
        out.push_str(&format!(
            "{:>4}  {:<14} {:<8} {:<6} {:>16} {:>16} {:>4} {:>7} {:>12}  {}\n",
            l.line_no,
            l.subscription,
            l.kind,
            l.zone,
            l.quantity,
            euros(l.amount_micros),
            l.vat_category.as_deref().unwrap_or("-"),
            l.vat_rate_bp.map(rate).unwrap_or_else(|| "-".into()),
            l.net_cents.map(cents).unwrap_or_else(|| "-".into()),
            l.description
        ));
    }
    out.push_str(&format!(
        "\nrated {} EUR + fees {} EUR = {} EUR (micro-euro precision)\n",
        euros(d.rated_cost_micros),
        euros(d.fees_micros),
        euros(s.total_micros)
    ));
    if let Some(breakdown) = d.vat_breakdown.as_ref().and_then(|b| b.as_array()) {
        out.push_str("VAT breakdown:\n");
        for row in breakdown {
            let num = |name: &str| row.get(name).and_then(|v| v.as_i64());
            let vat = row.get("vat").unwrap_or(row);
            out.push_str(&format!(
                "  {:<3} {:>7}  taxable {:>12}  VAT {:>12}\n",
                vat.get("category").and_then(|v| v.as_str()).unwrap_or("?"),
                vat.get("rate")
                    .and_then(|v| v.as_i64())
                    .map(|bp| rate(bp as i32))
                    .unwrap_or_default(),
                num("taxable_cents").map(cents).unwrap_or_default(),
                num("vat_cents").map(cents).unwrap_or_default(),
            ));
        }
    }
    if let (Some(net), Some(vat), Some(payable)) = (d.net_cents, d.vat_cents, s.payable_cents) {
        out.push_str(&format!(
            "net {} EUR, VAT {} EUR, amount due {} EUR\n",
            cents(net),
            cents(vat),
            cents(payable)
        ));
    }
    out.push_str("\ndocuments:\n");
    for kind in [
        DocumentKind::Ubl,
        DocumentKind::Pdf,
        DocumentKind::Specification,
    ] {
        match d.documents.iter().find(|doc| doc.what == kind) {
            Some(doc) => out.push_str(&format!(
                "  {kind}: s3://{}/{} ({} bytes, sha256 {})\n",
                doc.bucket, doc.key, doc.size_bytes, doc.sha256
            )),
            None => out.push_str(&format!("  {kind}: none yet\n")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[test]
    fn an_invoice_is_named_by_id_number_or_explicitly() {
        assert_eq!("id:7".parse::<InvoiceRef>().unwrap(), InvoiceRef::Id(7));
        assert_eq!(
            "2026-000123".parse::<InvoiceRef>().unwrap(),
            InvoiceRef::Number("2026-000123".into())
        );
        assert_eq!(
            "number:42".parse::<InvoiceRef>().unwrap(),
            InvoiceRef::Number("42".into())
        );
        assert_eq!(
            "42".parse::<InvoiceRef>().unwrap(),
            InvoiceRef::Either(42, "42".into())
        );
        for bad in ["", "id:x", "number:", "  "] {
            assert!(bad.parse::<InvoiceRef>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn an_expiry_defaults_to_fifteen_minutes_and_is_refused_past_seven_days() {
        assert_eq!(expiry(None).unwrap(), Duration::from_secs(900));
        assert_eq!(expiry(Some(604_800)).unwrap(), Duration::from_secs(604_800));
        for bad in [0, 604_801] {
            let err = expiry(Some(bad)).unwrap_err();
            assert!(err.to_string().contains("7 days"), "{err}");
        }
    }

    /// Invoices by (id, number).
    struct Store(Mutex<Vec<(i64, Option<String>)>>);

    #[async_trait]
    impl InvoiceViewStore for Store {
        async fn list(&self, _: &InvoiceFilter) -> Result<Vec<InvoiceSummary>, StoreError> {
            Ok(vec![])
        }
        async fn find(
            &self,
            id: Option<i64>,
            number: Option<&str>,
        ) -> Result<Vec<(i64, bool)>, StoreError> {
            let rows = self.0.lock().unwrap();
            let mut found = Vec::new();
            for (i, n) in rows.iter() {
                if Some(*i) == id {
                    found.push((*i, true));
                }
                if number.is_some() && n.as_deref() == number {
                    found.push((*i, false));
                }
            }
            Ok(found)
        }
        async fn detail(&self, _: i64) -> Result<Option<InvoiceDetail>, StoreError> {
            Ok(None)
        }
    }

    #[tokio::test]
    async fn digits_that_are_one_invoices_id_and_anothers_number_are_refused_as_ambiguous() {
        let store = Store(Mutex::new(vec![
            (1, Some("7".into())),
            (7, Some("2026-1".into())),
            (9, None),
        ]));
        let err = resolve(&store, &"7".parse().unwrap()).await.unwrap_err();
        assert!(err.to_string().contains("say id:7 or number:7"), "{err}");
        assert_eq!(resolve(&store, &"id:7".parse().unwrap()).await.unwrap(), 7);
        assert_eq!(
            resolve(&store, &"number:7".parse().unwrap()).await.unwrap(),
            1
        );
        assert_eq!(resolve(&store, &"9".parse().unwrap()).await.unwrap(), 9);
        assert_eq!(
            resolve(&store, &"2026-1".parse().unwrap()).await.unwrap(),
            7
        );
        let err = resolve(&store, &"2026-2".parse().unwrap())
            .await
            .unwrap_err();
        assert!(matches!(err, InvoiceViewError::NotFound(_)), "{err}");
    }

    fn detail(status: &str, documents: Vec<DocumentRecord>) -> InvoiceDetail {
        InvoiceDetail {
            summary: InvoiceSummary {
                id: 5,
                customer_id: 3,
                customer: "acme".into(),
                cycle: NaiveDate::from_ymd_opt(2025, 3, 1).unwrap(),
                kind: "invoice".into(),
                sequence: 0,
                status: status.into(),
                number: (status == "final").then(|| "2025-000001".into()),
                issue_date: None,
                total_micros: 1_234_567,
                payable_cents: None,
                blocked_reason: None,
            },
            rated_cost_micros: 1_234_567,
            fees_micros: 0,
            time_zone: "Europe/Amsterdam".into(),
            due_date: None,
            finalised_at: None,
            net_cents: None,
            vat_cents: None,
            vat_breakdown: None,
            seller: None,
            buyer: None,
            blocked_at: None,
            lines: vec![],
            documents,
        }
    }

    #[test]
    fn a_missing_document_says_which_and_how_to_make_it() {
        let final_one = detail("final", vec![]);
        let err = document(&final_one, DocumentKind::Specification).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("2025-000001 (id 5) has no usage specification yet"),
            "{text}"
        );
        assert!(text.contains("temctl invoice specify 5"), "{text}");
        let text = document(&final_one, DocumentKind::Pdf)
            .unwrap_err()
            .to_string();
        assert!(
            text.contains("no PDF yet") && text.contains("RenderInvoice"),
            "{text}"
        );
        let text = document(&detail("draft", vec![]), DocumentKind::Ubl)
            .unwrap_err()
            .to_string();
        assert!(
            text.contains("a draft has no documents")
                && text.contains("temctl invoice preview acme 2025-03-01"),
            "{text}"
        );
        let spec = DocumentRecord {
            what: DocumentKind::Specification,
            bucket: "b".into(),
            key: "invoices/3/2025-03-01/2025-000001-specification.csv.gz".into(),
            sha256: "0".repeat(64),
            size_bytes: 10,
            written_at: Utc::now(),
        };
        let with = detail("final", vec![spec.clone()]);
        assert_eq!(document(&with, DocumentKind::Specification).unwrap(), &spec);
        assert!(render_detail(&with).contains("usage specification: s3://b/invoices/3/"));
    }
}
