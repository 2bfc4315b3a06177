//! A final invoice as it was issued, read back for its documents: the
//! store trait that reads it ([`IssuedStore`], on PostgreSQL in
//! `adapters::billing::document`) and [`ubl_of`] and [`pdf_of`], which
//! render it and hold the rendering to what finalisation recorded.
//!
//! Nothing here recomputes what an invoice bills: the parties, dates, line
//! amounts and VAT are those recorded at finalisation, and the document
//! amounts that [`crate::billing::document::amounts`] derives from them
//! must equal the totals recorded with the invoice, or the document is
//! refused (a document that disagrees with the books is worse than none).

use async_trait::async_trait;

use crate::billing::document::pdf::{render_pdf, Mark, PdfDocument};
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
    let stored = issued_of(store, invoice_id).await?;
    let document = render(&stored.invoice, profile)?;
    Ok((stored, document))
}

/// Invoice `invoice_id` as its PDF, after the same check as [`ubl_of`]:
/// both documents state what finalisation recorded.
pub async fn pdf_of(
    store: &dyn IssuedStore,
    invoice_id: i64,
) -> Result<(StoredIssue, PdfDocument), DocumentError> {
    let stored = issued_of(store, invoice_id).await?;
    let document = render_pdf(&stored.invoice, Mark::Original)?;
    Ok((stored, document))
}

/// Invoice `invoice_id` as issued, its recorded totals checked against
/// its recorded lines.
pub async fn issued_of(
    store: &dyn IssuedStore,
    invoice_id: i64,
) -> Result<StoredIssue, DocumentError> {
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
    Ok(stored)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::billing::document::ubl::{DocumentLine, InvoiceReference, IssuedInvoice};
    use crate::billing::parties::{Address, BuyerDetails, PeppolId, SellerDetails};
    use crate::billing::vat::{LineVat, RateBp, VatCategory};

    struct One(Result<StoredIssue, NotIssued>);

    #[async_trait]
    impl IssuedStore for One {
        async fn issued(&self, _: i64) -> Result<Result<StoredIssue, NotIssued>, StoreError> {
            Ok(self.0.clone())
        }
    }

    fn address() -> Address {
        Address {
            street: "Kade 1".into(),
            city: "Utrecht".into(),
            postcode: "3511 AA".into(),
            country: "NL".into(),
        }
    }

    fn peppol() -> PeppolId {
        PeppolId {
            scheme: "0106".into(),
            id: "12345678".into(),
        }
    }

    /// A correction of -10.00 at 21%, recorded as finalisation records it:
    /// net -1000, VAT -210, payable -1210 cents.
    fn correction() -> StoredIssue {
        StoredIssue {
            invoice_id: 9,
            customer_id: 7,
            sequence: 1,
            invoice: IssuedInvoice {
                number: "2025-000002".into(),
                issue_date: "2025-04-10".parse().unwrap(),
                due_date: "2025-05-10".parse().unwrap(),
                cycle: "2025-03-01".parse().unwrap(),
                seller: SellerDetails {
                    code: "tem".into(),
                    valid_from: "2020-01-01".parse().unwrap(),
                    legal_name: "TEM B.V.".into(),
                    address: address(),
                    kvk: "12345678".into(),
                    vat_number: "NL123456789B01".into(),
                    iban: "NL91ABNA0417164300".into(),
                    bic: "ABNANL2A".into(),
                    payment_terms_days: 30,
                    peppol: peppol(),
                    invoice_number_format: "{year}-{seq:06}".into(),
                },
                buyer: BuyerDetails {
                    customer_id: 7,
                    valid_from: "2020-01-01".parse().unwrap(),
                    seller: "tem".into(),
                    legal_name: "Buyer B.V.".into(),
                    address: address(),
                    vat_number: None,
                    peppol: peppol(),
                    invoice_email: "ap@buyer.example".into(),
                    buyer_reference: None,
                    purchase_order: None,
                    payment_terms_days: None,
                    vat_category: None,
                },
                lines: vec![DocumentLine {
                    description: "Correction of Calls, home: +31611111111".into(),
                    subscription: "+31611111111".into(),
                    kind: "voice".into(),
                    zone: "home".into(),
                    usage: "now none".into(),
                    amount_micros: -10_000_000,
                    vat: LineVat {
                        category: VatCategory::S,
                        rate: RateBp(2100),
                    },
                }],
                corrects: Some(InvoiceReference {
                    number: "2025-000001".into(),
                    issue_date: "2025-04-06".parse().unwrap(),
                }),
            },
            net_cents: -1000,
            vat_cents: -210,
            payable_cents: -1210,
        }
    }

    #[tokio::test]
    async fn a_credit_note_agrees_with_the_negative_totals_its_correction_recorded() {
        let (_, document) = ubl_of(&One(Ok(correction())), 9, Profile::PeppolBis)
            .await
            .unwrap();
        assert_eq!(document.amounts.payable_cents, 1210);
    }

    #[tokio::test]
    async fn a_document_that_disagrees_with_the_recorded_totals_is_refused_naming_both() {
        let mut changed = correction();
        changed.vat_cents = -209;
        let err = ubl_of(&One(Ok(changed)), 9, Profile::PeppolBis)
            .await
            .unwrap_err();
        let text = err.to_string();
        assert!(
            matches!(
                err,
                DocumentError::Disagrees {
                    what: "VAT",
                    document: 210,
                    recorded: -209,
                    ..
                }
            ),
            "{text}"
        );
        assert!(text.contains("2025-000002"), "{text}");
    }

    #[tokio::test]
    async fn an_invoice_that_is_not_issued_says_why() {
        for (why, expected) in [
            (NotIssued::Missing, "does not exist"),
            (NotIssued::Draft, "is a draft"),
            (NotIssued::Unnumbered, "before invoice numbering"),
            (
                NotIssued::UnnumberedOriginal,
                "corrects an invoice finalised before",
            ),
        ] {
            let err = ubl_of(&One(Err(why)), 9, Profile::PeppolBis)
                .await
                .unwrap_err();
            assert!(err.to_string().contains(expected), "{err}");
        }
    }
}
