//! A final invoice as it was issued, read back for its documents: the
//! store trait that reads it ([`IssuedStore`], on PostgreSQL in
//! `adapters::billing::document`) and [`ubl_of`], which renders it and
//! holds the rendering to what finalisation recorded.
//!
//! Nothing here recomputes what an invoice bills: the parties, dates, line
//! amounts and VAT are those recorded at finalisation, and the document
//! amounts that [`crate::billing::document::amounts`] derives from them
//! must equal the totals recorded with the invoice, or the document is
//! refused (a document that disagrees with the books is worse than none).

use async_trait::async_trait;

use crate::billing::document::ubl::{
    kind_and_amounts, render, DocumentKind, IssuedInvoice, Profile, UblDocument, UblError,
};
use crate::ports::StoreError;

/// A final invoice with the totals its finalisation recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredIssue {
    pub invoice_id: i64,
    pub customer_id: i64,
    /// 0 for the cycle's invoice, 1, 2, ... for its corrections.
    pub sequence: i32,
    pub invoice: IssuedInvoice,
    /// BT-109, BT-110 and BT-115 as recorded, in the invoice's sign.
    pub net_cents: i64,
    pub vat_cents: i64,
    pub payable_cents: i64,
}

/// What an invoice's record holds that keeps it from being rendered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotIssued {
    /// No invoice has this id.
    Missing,
    /// A draft: it has no number, parties or VAT yet.
    Draft,
    /// Finalised before migration 0012: no number, parties or VAT recorded.
    Unnumbered,
    /// A correction whose cycle's invoice has no number (finalised before
    /// migration 0012), so BG-3 cannot name it.
    UnnumberedOriginal,
}

/// Where issued invoices are read (`adapters::billing::document`).
#[async_trait]
pub trait IssuedStore: Send + Sync {
    /// Invoice `invoice_id` as issued, or why it is not.
    async fn issued(&self, invoice_id: i64) -> Result<Result<StoredIssue, NotIssued>, StoreError>;
}

#[derive(Debug, thiserror::Error)]
pub enum DocumentError {
    #[error("invoice {0} does not exist; list a customer's invoices with `temctl invoice list`")]
    Missing(i64),
    #[error("invoice {0} is a draft: only a final invoice has a document (a draft gets a watermarked preview)")]
    Draft(i64),
    #[error("invoice {0} was finalised before invoice numbering (migration 0012) and has no number, parties or VAT; it cannot become an e-invoice")]
    Unnumbered(i64),
    #[error("invoice {0} corrects an invoice finalised before invoice numbering (migration 0012), which has no number to reference (BG-3)")]
    UnnumberedOriginal(i64),
    #[error("invoice {invoice_id} ({number}): the document states {what} {document} cents but finalisation recorded {recorded}; the recorded lines or VAT were changed by hand, restore them from the invoice's history")]
    Disagrees {
        invoice_id: i64,
        number: String,
        what: &'static str,
        document: i64,
        recorded: i64,
    },
    #[error(transparent)]
    Ubl(#[from] UblError),
    #[error("database error: {0}")]
    Store(#[from] StoreError),
}

/// Invoice `invoice_id` as a UBL document claiming `profile`, after
/// checking that its amounts are the ones finalisation recorded.
pub async fn ubl_of(
    store: &dyn IssuedStore,
    invoice_id: i64,
    profile: Profile,
) -> Result<(StoredIssue, UblDocument), DocumentError> {
    let stored = match store.issued(invoice_id).await? {
        Ok(stored) => stored,
        Err(NotIssued::Missing) => return Err(DocumentError::Missing(invoice_id)),
        Err(NotIssued::Draft) => return Err(DocumentError::Draft(invoice_id)),
        Err(NotIssued::Unnumbered) => return Err(DocumentError::Unnumbered(invoice_id)),
        Err(NotIssued::UnnumberedOriginal) => {
            return Err(DocumentError::UnnumberedOriginal(invoice_id))
        }
    };
    check_recorded(&stored)?;
    let document = render(&stored.invoice, profile)?;
    Ok((stored, document))
}

/// The document's totals, in the invoice's sign, against those recorded.
fn check_recorded(stored: &StoredIssue) -> Result<(), DocumentError> {
    let (kind, amounts) = kind_and_amounts(&stored.invoice)?;
    let sign = match kind {
        DocumentKind::Invoice => 1,
        DocumentKind::CreditNote => -1,
    };
    for (what, document, recorded) in [
        ("net", amounts.tax_exclusive_cents, stored.net_cents),
        ("VAT", amounts.vat_total_cents, stored.vat_cents),
        ("payable", amounts.payable_cents, stored.payable_cents),
    ] {
        if document.checked_mul(sign) != Some(recorded) {
            return Err(DocumentError::Disagrees {
                invoice_id: stored.invoice_id,
                number: stored.invoice.number.clone(),
                what,
                document,
                recorded,
            });
        }
    }
    Ok(())
}
