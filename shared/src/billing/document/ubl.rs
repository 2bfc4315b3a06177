//! An issued invoice as the e-invoice a customer's accounts-payable system
//! books: UBL 2.1, Peppol BIS Billing 3.0 (EN 16931), or NLCIUS (SI-UBL
//! 2.0) for a Dutch receiver outside Peppol. Pure: it takes what the
//! invoice was issued with ([`IssuedInvoice`]) and returns bytes; the
//! store and S3 are the rendering step's business.
//!
//! # What the document states, and why so
//!
//! - **Invoice or credit note.** A final invoice (sequence 0) and a
//!   correction that raises the amount are a UBL `Invoice`, type 380. A
//!   correction that lowers it is a UBL `CreditNote`, type 381, whose
//!   amounts are positive, as UBL wants: every line and total is the
//!   correction's negated. Because [`document_amounts`] rounds half away
//!   from zero, the negated micro-units round to exactly the negated cents,
//!   so the credit note states the correction to the cent. Both kinds of
//!   correction reference the corrected invoice's number and issue date
//!   (BG-3, `BillingReference/InvoiceDocumentReference`).
//! - **Amounts** are [`document_amounts`] of the lines in micro-units with
//!   their VAT (the rounding rule is in that module), written with two
//!   decimals.
//! - **Lines.** Each invoice line is one item: quantity 1 (`C62`, "one"),
//!   price = the line's net amount, base quantity 1, so BT-131 = BT-129 x
//!   BT-146 / BT-149 holds exactly for every line. A usage line bundles a
//!   subscription's calls (or data, SMS, ...) of one roaming zone; its
//!   volume ("3 calls, 180 s") is the item's description and its
//!   subscription, kind and zone are item properties. A line whose amount
//!   has the other sign than its document (a correction lowering one line
//!   while raising the total) has quantity -1: a price is never negative
//!   (BR-27).
//! - **References.** Peppol requires a buyer reference or an order
//!   reference (PEPPOL-EN16931-R003): the buyer's `buyer_reference` when
//!   configured, else its customer number, plus `OrderReference` when a
//!   purchase order is configured.
//! - **Payment.** An invoice is paid by SEPA credit transfer (payment
//!   means 58) to the seller's IBAN (and BIC), quoting the invoice number
//!   as payment reference, by the due date (payment terms as a note). A
//!   credit note's amount is owed by the seller: payment means 57
//!   (standing agreement: set off or refunded), since tem does not know
//!   the buyer's account.
//! - **Parties.** The seller's legal id is its KvK number (scheme 0106),
//!   as the Dutch rules (NL-R-003, BR-NL-1) require; its and the buyer's
//!   Peppol ids are the endpoint ids; the buyer's legal id is its Peppol
//!   id when that is a KvK or OIN number (schemes 0106, 0190), which the
//!   Dutch rules require of a Dutch buyer.
//! - **Deterministic.** No clock, no random id, no map iteration order:
//!   the same invoice renders to the same bytes, so a rendering step may
//!   run twice and its content hash names the document.

use std::io::Cursor;

use chrono::{Months, NaiveDate};
use quick_xml::events::{BytesDecl, BytesEnd, BytesStart, BytesText, Event};
use quick_xml::Writer;

use crate::billing::document::amounts::{
    document_amounts, AmountsError, DocumentAmounts, Taxed, VatSubtotal,
};
use crate::billing::parties::{BuyerDetails, SellerDetails};
use crate::billing::vat::{LineVat, VatCategory};

/// BT-24 of Peppol BIS Billing 3.0.
pub const PEPPOL_CUSTOMIZATION_ID: &str =
    "urn:cen.eu:en16931:2017#compliant#urn:fdc:peppol.eu:2017:poacc:billing:3.0";
/// BT-24 of NLCIUS (SI-UBL 2.0).
pub const NLCIUS_CUSTOMIZATION_ID: &str =
    "urn:cen.eu:en16931:2017#compliant#urn:fdc:nen.nl:nlcius:v1.0";
/// BT-23: Peppol's billing process, which NLCIUS uses as well.
pub const PEPPOL_PROFILE_ID: &str = "urn:fdc:peppol.eu:2017:poacc:billing:01:1.0";
/// Every amount is in euros (the seller bills in euros only).
pub const CURRENCY: &str = "EUR";

const NS_INVOICE: &str = "urn:oasis:names:specification:ubl:schema:xsd:Invoice-2";
const NS_CREDIT_NOTE: &str = "urn:oasis:names:specification:ubl:schema:xsd:CreditNote-2";
const NS_CAC: &str = "urn:oasis:names:specification:ubl:schema:xsd:CommonAggregateComponents-2";
const NS_CBC: &str = "urn:oasis:names:specification:ubl:schema:xsd:CommonBasicComponents-2";

/// Which specification the document claims (BT-24). The content is the
/// same; the rules that judge it differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    /// Peppol BIS Billing 3.0: what tem stores and sends.
    PeppolBis,
    /// NLCIUS / SI-UBL 2.0, for a Dutch receiver that asks for it.
    Nlcius,
}

impl Profile {
    pub fn customization_id(self) -> &'static str {
        match self {
            Profile::PeppolBis => PEPPOL_CUSTOMIZATION_ID,
            Profile::Nlcius => NLCIUS_CUSTOMIZATION_ID,
        }
    }
}

/// A line of an issued invoice, as it was billed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocumentLine {
    pub description: String,
    pub subscription: String,
    /// `voice`, `sms`, `mms`, `data`, `service` or `fee`.
    pub kind: String,
    /// The roaming zone of a usage line; empty for a fee.
    pub zone: String,
    /// The billed volume in words ("3 calls, 180 s", "1 month").
    pub usage: String,
    /// In the invoice's sign: negative where a correction lowers a line.
    pub amount_micros: i64,
    pub vat: LineVat,
}

/// The invoice a correction corrects (BG-3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvoiceReference {
    pub number: String,
    pub issue_date: NaiveDate,
}

/// Everything a final invoice (or correction) was issued with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedInvoice {
    pub number: String,
    pub issue_date: NaiveDate,
    pub due_date: NaiveDate,
    /// The billing cycle's first day; the invoice period runs to the day
    /// before the next cycle starts.
    pub cycle: NaiveDate,
    pub seller: SellerDetails,
    pub buyer: BuyerDetails,
    pub lines: Vec<DocumentLine>,
    /// Set on a correction: the cycle's final invoice.
    pub corrects: Option<InvoiceReference>,
}

/// UBL's two document types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DocumentKind {
    /// `Invoice`, type code 380.
    Invoice,
    /// `CreditNote`, type code 381.
    CreditNote,
}

impl DocumentKind {
    pub fn type_code(self) -> &'static str {
        match self {
            DocumentKind::Invoice => "380",
            DocumentKind::CreditNote => "381",
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            DocumentKind::Invoice => "invoice",
            DocumentKind::CreditNote => "credit_note",
        }
    }
}

/// A rendered document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UblDocument {
    pub kind: DocumentKind,
    /// UTF-8 XML.
    pub xml: Vec<u8>,
    /// The amounts as the document states them (positive on a credit note).
    pub amounts: DocumentAmounts,
}

#[derive(Debug, thiserror::Error)]
pub enum UblError {
    #[error("invoice {number} has no lines; an EN 16931 document needs at least one (BR-16): check that its invoice_line rows exist")]
    NoLines { number: String },
    #[error("invoice {number}: {source}")]
    Amounts {
        number: String,
        #[source]
        source: AmountsError,
    },
    #[error(
        "invoice {number}: its cycle {cycle} has no end in the calendar; check the invoice's cycle"
    )]
    BadCycle { number: String, cycle: NaiveDate },
    #[error("writing the XML of invoice {number} failed: {source}; this is a bug in the renderer, report it with the invoice number")]
    Write {
        number: String,
        #[source]
        source: std::io::Error,
    },
}

/// Whether `invoice` is an `Invoice` or a `CreditNote`, and its amounts
/// in the document's sign.
pub fn kind_and_amounts(
    invoice: &IssuedInvoice,
) -> Result<(DocumentKind, DocumentAmounts), UblError> {
    let amounts_of = |lines: &[Taxed]| {
        document_amounts(lines, &[], &[], 0).map_err(|source| UblError::Amounts {
            number: invoice.number.clone(),
            source,
        })
    };
    let taxed: Vec<Taxed> = invoice
        .lines
        .iter()
        .map(|l| Taxed {
            amount_micros: l.amount_micros,
            vat: l.vat,
        })
        .collect();
    let amounts = amounts_of(&taxed)?;
    if invoice.corrects.is_none() || amounts.payable_cents >= 0 {
        return Ok((DocumentKind::Invoice, amounts));
    }
    let credited: Vec<Taxed> = taxed
        .iter()
        .map(|t| Taxed {
            amount_micros: t.amount_micros.checked_neg().unwrap_or(i64::MAX),
            vat: t.vat,
        })
        .collect();
    Ok((DocumentKind::CreditNote, amounts_of(&credited)?))
}

/// The first note of a preview's UBL: a preview is a draft as it would be
/// issued, with no number, and nobody may book or pay it.
pub const PREVIEW_NOTE: &str = "PREVIEW \u{2014} NOT AN INVOICE: a draft as it would be issued now; it has no invoice number and must not be booked or paid";

/// Renders `invoice` as UBL claiming `profile` (see the module docs).
pub fn render(invoice: &IssuedInvoice, profile: Profile) -> Result<UblDocument, UblError> {
    render_marked(invoice, profile, None)
}

/// A draft's preview as UBL: the document `render` would give, with
/// [`PREVIEW_NOTE`] as its first note (its number is the caller's
/// placeholder, e.g. `DRAFT`).
pub fn render_preview(invoice: &IssuedInvoice, profile: Profile) -> Result<UblDocument, UblError> {
    render_marked(invoice, profile, Some(PREVIEW_NOTE))
}

fn render_marked(
    invoice: &IssuedInvoice,
    profile: Profile,
    preview_note: Option<&str>,
) -> Result<UblDocument, UblError> {
    if invoice.lines.is_empty() {
        return Err(UblError::NoLines {
            number: invoice.number.clone(),
        });
    }
    let period_end = invoice
        .cycle
        .checked_add_months(Months::new(1))
        .and_then(|next| next.pred_opt())
        .ok_or(UblError::BadCycle {
            number: invoice.number.clone(),
            cycle: invoice.cycle,
        })?;
    let (kind, amounts) = kind_and_amounts(invoice)?;
    let mut doc = Doc {
        w: Writer::new_with_indent(Cursor::new(Vec::new()), b' ', 2),
    };
    write_document(
        &mut doc,
        invoice,
        profile,
        kind,
        &amounts,
        period_end,
        preview_note,
    )
    .map_err(|source| UblError::Write {
        number: invoice.number.clone(),
        source,
    })?;
    Ok(UblDocument {
        kind,
        xml: doc.w.into_inner().into_inner(),
        amounts,
    })
}

/// Cents as a 2-decimal amount: `1234` -> `12.34`, `-5` -> `-0.05`.
pub fn money(cents: i64) -> String {
    let sign = if cents < 0 { "-" } else { "" };
    let abs = cents.unsigned_abs();
    format!("{sign}{}.{:02}", abs / 100, abs % 100)
}

/// A thin layer over the writer: UBL is elements with text and at most
/// one or two attributes, nothing else.
struct Doc {
    w: Writer<Cursor<Vec<u8>>>,
}

type Io = std::io::Result<()>;

impl Doc {
    fn open(&mut self, name: &str, attrs: &[(&str, &str)]) -> Io {
        let mut start = BytesStart::new(name);
        for (k, v) in attrs {
            start.push_attribute((*k, *v));
        }
        self.w.write_event(Event::Start(start))
    }

    fn close(&mut self, name: &str) -> Io {
        self.w.write_event(Event::End(BytesEnd::new(name)))
    }

    fn text_with(&mut self, name: &str, attrs: &[(&str, &str)], text: &str) -> Io {
        self.open(name, attrs)?;
        self.w.write_event(Event::Text(BytesText::new(text)))?;
        self.close(name)
    }

    fn text(&mut self, name: &str, text: &str) -> Io {
        self.text_with(name, &[], text)
    }

    fn amount(&mut self, name: &str, cents: i64) -> Io {
        self.text_with(name, &[("currencyID", CURRENCY)], &money(cents))
    }

    fn date(&mut self, name: &str, date: NaiveDate) -> Io {
        self.text(name, &date.format("%Y-%m-%d").to_string())
    }

    /// `<name><cbc:ID>{id}</cbc:ID></name>`: the shape of a scheme.
    fn id_in(&mut self, name: &str, id: &str) -> Io {
        self.open(name, &[])?;
        self.text("cbc:ID", id)?;
        self.close(name)
    }
}

fn write_document(
    d: &mut Doc,
    invoice: &IssuedInvoice,
    profile: Profile,
    kind: DocumentKind,
    amounts: &DocumentAmounts,
    period_end: NaiveDate,
    preview_note: Option<&str>,
) -> Io {
    let (root, ns) = match kind {
        DocumentKind::Invoice => ("Invoice", NS_INVOICE),
        DocumentKind::CreditNote => ("CreditNote", NS_CREDIT_NOTE),
    };
    d.w.write_event(Event::Decl(BytesDecl::new("1.0", Some("UTF-8"), None)))?;
    d.open(
        root,
        &[("xmlns", ns), ("xmlns:cac", NS_CAC), ("xmlns:cbc", NS_CBC)],
    )?;
    d.text("cbc:CustomizationID", profile.customization_id())?;
    d.text("cbc:ProfileID", PEPPOL_PROFILE_ID)?;
    d.text("cbc:ID", &invoice.number)?;
    d.date("cbc:IssueDate", invoice.issue_date)?;
    match kind {
        DocumentKind::Invoice => {
            d.date("cbc:DueDate", invoice.due_date)?;
            d.text("cbc:InvoiceTypeCode", kind.type_code())?;
        }
        DocumentKind::CreditNote => d.text("cbc:CreditNoteTypeCode", kind.type_code())?,
    }
    if let Some(note) = preview_note {
        d.text("cbc:Note", note)?;
    }
    // The note the law requires for a reverse charge (and any other
    // exemption): the breakdown carries it too, a note is what a person
    // reading the document sees first.
    for exemption in amounts.breakdown.iter().filter_map(|b| b.exemption) {
        d.text("cbc:Note", exemption.reason)?;
    }
    d.text("cbc:DocumentCurrencyCode", CURRENCY)?;
    let buyer_reference = invoice
        .buyer
        .buyer_reference
        .clone()
        .unwrap_or_else(|| invoice.buyer.customer_id.to_string());
    d.text("cbc:BuyerReference", &buyer_reference)?;
    d.open("cac:InvoicePeriod", &[])?;
    d.date("cbc:StartDate", invoice.cycle)?;
    d.date("cbc:EndDate", period_end)?;
    d.close("cac:InvoicePeriod")?;
    if let Some(order) = &invoice.buyer.purchase_order {
        d.id_in("cac:OrderReference", order)?;
    }
    if let Some(corrected) = &invoice.corrects {
        d.open("cac:BillingReference", &[])?;
        d.open("cac:InvoiceDocumentReference", &[])?;
        d.text("cbc:ID", &corrected.number)?;
        d.date("cbc:IssueDate", corrected.issue_date)?;
        d.close("cac:InvoiceDocumentReference")?;
        d.close("cac:BillingReference")?;
    }
    // BR-O-02: a document with category O states no VAT identifiers.
    let states_vat_ids = amounts
        .breakdown
        .iter()
        .all(|b| b.vat.category != VatCategory::O);
    write_seller(d, &invoice.seller, states_vat_ids)?;
    write_buyer(d, &invoice.buyer, states_vat_ids)?;
    match kind {
        DocumentKind::Invoice => {
            d.open("cac:PaymentMeans", &[])?;
            d.text("cbc:PaymentMeansCode", "58")?;
            d.text("cbc:PaymentID", &invoice.number)?;
            d.open("cac:PayeeFinancialAccount", &[])?;
            d.text("cbc:ID", &compact(&invoice.seller.iban))?;
            d.id_in("cac:FinancialInstitutionBranch", &invoice.seller.bic)?;
            d.close("cac:PayeeFinancialAccount")?;
            d.close("cac:PaymentMeans")?;
            let days = (invoice.due_date - invoice.issue_date).num_days();
            d.open("cac:PaymentTerms", &[])?;
            d.text(
                "cbc:Note",
                &format!(
                    "Payment within {days} days, by {}, to {} quoting {}",
                    invoice.due_date.format("%Y-%m-%d"),
                    compact(&invoice.seller.iban),
                    invoice.number
                ),
            )?;
            d.close("cac:PaymentTerms")?;
        }
        DocumentKind::CreditNote => {
            // Peppol's NL-R-007 wants a payment means on any document with
            // an amount due, a credit note too; 57 (standing agreement):
            // the credit is set off or refunded as agreed, to an account
            // of the buyer's that tem does not know.
            d.open("cac:PaymentMeans", &[])?;
            d.text("cbc:PaymentMeansCode", "57")?;
            d.text("cbc:PaymentID", &invoice.number)?;
            d.close("cac:PaymentMeans")?;
            if let Some(corrected) = &invoice.corrects {
                d.open("cac:PaymentTerms", &[])?;
                d.text(
                    "cbc:Note",
                    &format!(
                        "Credited against invoice {}; the amount is set off or refunded",
                        corrected.number
                    ),
                )?;
                d.close("cac:PaymentTerms")?;
            }
        }
    }
    d.open("cac:TaxTotal", &[])?;
    d.amount("cbc:TaxAmount", amounts.vat_total_cents)?;
    for subtotal in &amounts.breakdown {
        write_subtotal(d, subtotal)?;
    }
    d.close("cac:TaxTotal")?;
    d.open("cac:LegalMonetaryTotal", &[])?;
    d.amount("cbc:LineExtensionAmount", amounts.line_total_cents)?;
    d.amount("cbc:TaxExclusiveAmount", amounts.tax_exclusive_cents)?;
    d.amount("cbc:TaxInclusiveAmount", amounts.tax_inclusive_cents)?;
    if amounts.allowance_total_cents != 0 {
        d.amount("cbc:AllowanceTotalAmount", amounts.allowance_total_cents)?;
    }
    if amounts.charge_total_cents != 0 {
        d.amount("cbc:ChargeTotalAmount", amounts.charge_total_cents)?;
    }
    if amounts.prepaid_cents != 0 {
        d.amount("cbc:PrepaidAmount", amounts.prepaid_cents)?;
    }
    d.amount("cbc:PayableAmount", amounts.payable_cents)?;
    d.close("cac:LegalMonetaryTotal")?;
    let (line_tag, quantity_tag) = match kind {
        DocumentKind::Invoice => ("cac:InvoiceLine", "cbc:InvoicedQuantity"),
        DocumentKind::CreditNote => ("cac:CreditNoteLine", "cbc:CreditedQuantity"),
    };
    for (index, (line, net)) in invoice
        .lines
        .iter()
        .zip(&amounts.line_net_cents)
        .enumerate()
    {
        d.open(line_tag, &[])?;
        d.text("cbc:ID", &(index + 1).to_string())?;
        d.text_with(
            quantity_tag,
            &[("unitCode", "C62")],
            if *net < 0 { "-1" } else { "1" },
        )?;
        d.amount("cbc:LineExtensionAmount", *net)?;
        d.open("cac:Item", &[])?;
        d.text("cbc:Description", &line.usage)?;
        d.text("cbc:Name", &line.description)?;
        d.open("cac:ClassifiedTaxCategory", &[])?;
        d.text("cbc:ID", line.vat.category.as_str())?;
        d.text("cbc:Percent", &line.vat.rate.to_string())?;
        d.id_in("cac:TaxScheme", "VAT")?;
        d.close("cac:ClassifiedTaxCategory")?;
        for (name, value) in [
            ("Subscription", line.subscription.as_str()),
            ("Kind", line.kind.as_str()),
            ("Zone", line.zone.as_str()),
        ] {
            if value.is_empty() {
                continue;
            }
            d.open("cac:AdditionalItemProperty", &[])?;
            d.text("cbc:Name", name)?;
            d.text("cbc:Value", value)?;
            d.close("cac:AdditionalItemProperty")?;
        }
        d.close("cac:Item")?;
        d.open("cac:Price", &[])?;
        d.amount("cbc:PriceAmount", net.checked_abs().unwrap_or(i64::MAX))?;
        d.text_with("cbc:BaseQuantity", &[("unitCode", "C62")], "1")?;
        d.close("cac:Price")?;
        d.close(line_tag)?;
    }
    d.close(root)
}

/// An IBAN as a payment system reads it: no spaces, upper case.
fn compact(iban: &str) -> String {
    iban.chars()
        .filter(|c| !c.is_whitespace())
        .collect::<String>()
        .to_uppercase()
}

fn write_address(d: &mut Doc, address: &crate::billing::parties::Address) -> Io {
    d.open("cac:PostalAddress", &[])?;
    d.text("cbc:StreetName", &address.street)?;
    d.text("cbc:CityName", &address.city)?;
    d.text("cbc:PostalZone", &address.postcode)?;
    d.open("cac:Country", &[])?;
    d.text("cbc:IdentificationCode", &address.country)?;
    d.close("cac:Country")?;
    d.close("cac:PostalAddress")
}

fn write_vat_id(d: &mut Doc, vat_number: &str) -> Io {
    d.open("cac:PartyTaxScheme", &[])?;
    d.text("cbc:CompanyID", vat_number)?;
    d.id_in("cac:TaxScheme", "VAT")?;
    d.close("cac:PartyTaxScheme")
}

fn write_seller(d: &mut Doc, seller: &SellerDetails, states_vat_ids: bool) -> Io {
    d.open("cac:AccountingSupplierParty", &[])?;
    d.open("cac:Party", &[])?;
    d.text_with(
        "cbc:EndpointID",
        &[("schemeID", &seller.peppol.scheme)],
        &seller.peppol.id,
    )?;
    d.open("cac:PartyName", &[])?;
    d.text("cbc:Name", &seller.legal_name)?;
    d.close("cac:PartyName")?;
    write_address(d, &seller.address)?;
    if states_vat_ids {
        write_vat_id(d, &seller.vat_number)?;
    }
    d.open("cac:PartyLegalEntity", &[])?;
    d.text("cbc:RegistrationName", &seller.legal_name)?;
    d.text_with("cbc:CompanyID", &[("schemeID", "0106")], &seller.kvk)?;
    d.close("cac:PartyLegalEntity")?;
    d.close("cac:Party")?;
    d.close("cac:AccountingSupplierParty")
}

fn write_buyer(d: &mut Doc, buyer: &BuyerDetails, states_vat_ids: bool) -> Io {
    d.open("cac:AccountingCustomerParty", &[])?;
    d.open("cac:Party", &[])?;
    d.text_with(
        "cbc:EndpointID",
        &[("schemeID", &buyer.peppol.scheme)],
        &buyer.peppol.id,
    )?;
    d.open("cac:PartyName", &[])?;
    d.text("cbc:Name", &buyer.legal_name)?;
    d.close("cac:PartyName")?;
    write_address(d, &buyer.address)?;
    if let Some(vat) = buyer.vat_number.as_deref().filter(|_| states_vat_ids) {
        write_vat_id(d, vat)?;
    }
    d.open("cac:PartyLegalEntity", &[])?;
    d.text("cbc:RegistrationName", &buyer.legal_name)?;
    // A KvK or OIN endpoint is also the buyer's legal registration.
    if matches!(buyer.peppol.scheme.as_str(), "0106" | "0190") {
        d.text_with(
            "cbc:CompanyID",
            &[("schemeID", &buyer.peppol.scheme)],
            &buyer.peppol.id,
        )?;
    }
    d.close("cac:PartyLegalEntity")?;
    d.open("cac:Contact", &[])?;
    d.text("cbc:ElectronicMail", &buyer.invoice_email)?;
    d.close("cac:Contact")?;
    d.close("cac:Party")?;
    d.close("cac:AccountingCustomerParty")
}

fn write_subtotal(d: &mut Doc, subtotal: &VatSubtotal) -> Io {
    d.open("cac:TaxSubtotal", &[])?;
    d.amount("cbc:TaxableAmount", subtotal.taxable_cents)?;
    d.amount("cbc:TaxAmount", subtotal.vat_cents)?;
    d.open("cac:TaxCategory", &[])?;
    d.text("cbc:ID", subtotal.vat.category.as_str())?;
    d.text("cbc:Percent", &subtotal.vat.rate.to_string())?;
    if let Some(exemption) = subtotal.exemption {
        d.text("cbc:TaxExemptionReasonCode", exemption.code)?;
        d.text("cbc:TaxExemptionReason", exemption.reason)?;
    }
    d.id_in("cac:TaxScheme", "VAT")?;
    d.close("cac:TaxCategory")?;
    d.close("cac:TaxSubtotal")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::billing::parties::{Address, PeppolId};
    use crate::billing::vat::RateBp;

    fn seller() -> SellerDetails {
        SellerDetails {
            code: "tem".into(),
            valid_from: "2020-01-01".parse().unwrap(),
            legal_name: "TEM B.V.".into(),
            address: Address {
                street: "Kade 1".into(),
                city: "Utrecht".into(),
                postcode: "3511 AA".into(),
                country: "NL".into(),
            },
            kvk: "12345678".into(),
            vat_number: "NL123456789B01".into(),
            iban: "NL91 ABNA 0417 1643 00".into(),
            bic: "ABNANL2A".into(),
            payment_terms_days: 30,
            peppol: PeppolId {
                scheme: "0106".into(),
                id: "12345678".into(),
            },
            invoice_number_format: "{year}-{seq:06}".into(),
        }
    }

    fn buyer() -> BuyerDetails {
        BuyerDetails {
            customer_id: 7,
            valid_from: "2020-01-01".parse().unwrap(),
            seller: "tem".into(),
            legal_name: "Buyer & Zonen B.V.".into(),
            address: Address {
                street: "Havenweg 2".into(),
                city: "Rotterdam".into(),
                postcode: "3011 AA".into(),
                country: "NL".into(),
            },
            vat_number: None,
            peppol: PeppolId {
                scheme: "0106".into(),
                id: "87654321".into(),
            },
            invoice_email: "ap@buyer.example".into(),
            buyer_reference: None,
            purchase_order: Some("PO-1".into()),
            payment_terms_days: None,
            vat_category: None,
        }
    }

    fn line(amount_micros: i64) -> DocumentLine {
        DocumentLine {
            description: "Calls, home: +31611111111".into(),
            subscription: "+31611111111".into(),
            kind: "voice".into(),
            zone: "home".into(),
            usage: "3 calls, 180 s".into(),
            amount_micros,
            vat: LineVat {
                category: VatCategory::S,
                rate: RateBp(2100),
            },
        }
    }

    fn invoice(lines: Vec<DocumentLine>, corrects: bool) -> IssuedInvoice {
        IssuedInvoice {
            number: if corrects {
                "2025-000002"
            } else {
                "2025-000001"
            }
            .into(),
            issue_date: "2025-04-06".parse().unwrap(),
            due_date: "2025-05-06".parse().unwrap(),
            cycle: "2025-02-01".parse().unwrap(),
            seller: seller(),
            buyer: buyer(),
            lines,
            corrects: corrects.then(|| InvoiceReference {
                number: "2025-000001".into(),
                issue_date: "2025-03-06".parse().unwrap(),
            }),
        }
    }

    fn xml(doc: &UblDocument) -> String {
        String::from_utf8(doc.xml.clone()).unwrap()
    }

    #[test]
    fn money_has_two_decimals_and_its_sign() {
        assert_eq!(money(1234), "12.34");
        assert_eq!(money(-5), "-0.05");
        assert_eq!(money(0), "0.00");
        assert_eq!(money(i64::MIN), "-92233720368547758.08");
    }

    #[test]
    fn rendering_twice_gives_the_same_bytes() {
        let inv = invoice(vec![line(10_000_000), line(2_345_678)], false);
        let first = render(&inv, Profile::PeppolBis).unwrap();
        assert_eq!(first.xml, render(&inv, Profile::PeppolBis).unwrap().xml);
        assert_eq!(first.kind, DocumentKind::Invoice);
    }

    #[test]
    fn an_invoice_states_its_period_payment_reference_and_escaped_names() {
        let doc = render(&invoice(vec![line(10_000_000)], false), Profile::PeppolBis).unwrap();
        let text = xml(&doc);
        for expected in [
            "<cbc:CustomizationID>urn:cen.eu:en16931:2017#compliant#urn:fdc:peppol.eu:2017:poacc:billing:3.0</cbc:CustomizationID>",
            "<cbc:InvoiceTypeCode>380</cbc:InvoiceTypeCode>",
            "<cbc:StartDate>2025-02-01</cbc:StartDate>",
            "<cbc:EndDate>2025-02-28</cbc:EndDate>",
            "<cbc:BuyerReference>7</cbc:BuyerReference>",
            "<cbc:PaymentID>2025-000001</cbc:PaymentID>",
            "<cbc:ID>NL91ABNA0417164300</cbc:ID>",
            "Buyer &amp; Zonen B.V.",
            "<cbc:PayableAmount currencyID=\"EUR\">12.10</cbc:PayableAmount>",
        ] {
            assert!(text.contains(expected), "{expected} missing in\n{text}");
        }
        assert!(!text.contains("BillingReference"), "{text}");
    }

    #[test]
    fn a_correction_lowering_the_amount_is_a_positive_credit_note_referencing_the_invoice() {
        // -10.00 on one line, +2.00 on another: credited 8.00 + 21%.
        let doc = render(
            &invoice(vec![line(-10_000_000), line(2_000_000)], true),
            Profile::PeppolBis,
        )
        .unwrap();
        assert_eq!(doc.kind, DocumentKind::CreditNote);
        assert_eq!(doc.amounts.line_net_cents, vec![1000, -200]);
        assert_eq!(doc.amounts.payable_cents, 968);
        let text = xml(&doc);
        for expected in [
            "<CreditNote xmlns=\"urn:oasis:names:specification:ubl:schema:xsd:CreditNote-2\"",
            "<cbc:CreditNoteTypeCode>381</cbc:CreditNoteTypeCode>",
            "<cbc:ID>2025-000001</cbc:ID>\n      <cbc:IssueDate>2025-03-06</cbc:IssueDate>",
            "<cbc:CreditedQuantity unitCode=\"C62\">1</cbc:CreditedQuantity>",
            "<cbc:CreditedQuantity unitCode=\"C62\">-1</cbc:CreditedQuantity>",
            "<cbc:PriceAmount currencyID=\"EUR\">2.00</cbc:PriceAmount>",
        ] {
            assert!(text.contains(expected), "{expected} missing in\n{text}");
        }
        assert!(
            text.contains("<cbc:PaymentMeansCode>57</cbc:PaymentMeansCode>"),
            "a credit note is settled, not paid to the seller: {text}"
        );
        assert!(!text.contains("DueDate"), "{text}");
    }

    #[test]
    fn a_correction_raising_the_amount_is_an_invoice_referencing_the_invoice() {
        let doc = render(&invoice(vec![line(5_000_000)], true), Profile::PeppolBis).unwrap();
        assert_eq!(doc.kind, DocumentKind::Invoice);
        assert!(xml(&doc).contains("<cac:BillingReference>"));
    }

    #[test]
    fn the_nlcius_profile_claims_its_own_customization() {
        let doc = render(&invoice(vec![line(1)], false), Profile::Nlcius).unwrap();
        assert!(xml(&doc).contains(NLCIUS_CUSTOMIZATION_ID));
    }

    #[test]
    fn an_invoice_without_lines_is_refused_naming_its_number() {
        let err = render(&invoice(vec![], false), Profile::PeppolBis).unwrap_err();
        assert!(err.to_string().contains("2025-000001"), "{err}");
    }
}
