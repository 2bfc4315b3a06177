//! An issued invoice as the PDF a person reads: the same invoice, amounts
//! and VAT as its UBL e-invoice ([`crate::billing::document::ubl`]), laid
//! out on A4 pages. Pure, like the UBL renderer: it takes what the invoice
//! was issued with and returns bytes.
//!
//! # Why `pdf-writer`
//!
//! An invoice of a customer with 5,000 subscriptions has some 20,000 lines
//! (hundreds of pages). `pdf-writer` (typst's) writes PDF objects straight
//! into one buffer with no document model in memory, so a page's content
//! stream is finished, compressed and appended as soon as the page is
//! full; it has four small dependencies. `printpdf` keeps every page's
//! operations as a document model until it saves, and `krilla` is built
//! for embedded fonts and text shaping an invoice does not need. The text
//! is set in the standard Type 1 fonts Helvetica and Helvetica-Bold with
//! WinAnsiEncoding: every PDF reader has them, so no font file is embedded,
//! and the widths below (Adobe's font metrics) are all the layout needs.
//! Characters outside Windows-1252 print as `?`.
//!
//! # What the document states
//!
//! The seller and the buyer (names, addresses, KvK and VAT numbers, the
//! buyer's references), the number, issue and due dates and the period;
//! the lines grouped by subscription (a subscription's monthly fee is one
//! of its lines, marked as a fee) with a subtotal per subscription; the VAT
//! breakdown per category and rate with the exemption note (reverse charge:
//! "Reverse charge / BTW verlegd", with the buyer's VAT number); the net
//! total, the VAT total and the amount due; and how to pay (IBAN, BIC,
//! payment reference = the invoice number, due date). A credit note says
//! so and which invoice it credits. Every amount is the UBL's: the line
//! nets, breakdown and totals come from the same
//! [`crate::billing::document::amounts`], so the two documents agree to the
//! cent (a subscription's subtotal is the sum of its rounded lines).
//!
//! # Pages
//!
//! Every page has a header (the seller, the document and "page x of y")
//! and a footer (the seller's registration and bank details); the table's
//! column headings repeat on every page. A page's body is written as soon
//! as it is full; its header, which needs the page count, is a second small
//! content stream written at the end (a page's contents may be an array of
//! streams). A preview ([`Mark::Preview`]) carries a large diagonal
//! "PREVIEW — NOT AN INVOICE" behind the text of every page.
//!
//! # Deterministic
//!
//! No creation date, no file id, no random object ids, no map iteration
//! order, and compression at a fixed level: the same invoice renders to the
//! same bytes, so the rendering step may run twice and its content hash
//! names the document.

use std::io::Write;

use chrono::{Months, NaiveDate};
use flate2::write::ZlibEncoder;
use flate2::Compression;
use pdf_writer::{Content, Filter, Finish, Name, Pdf, Rect, Ref, Str, TextStr};

use crate::billing::document::amounts::DocumentAmounts;
use crate::billing::document::ubl::{
    kind_and_amounts, money, DocumentKind, IssuedInvoice, UblError, CURRENCY,
};
use crate::billing::parties::Address;
use crate::billing::vat::VatCategory;

/// Whether the document is the invoice or a draft's preview.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mark {
    /// The issued invoice.
    Original,
    /// A draft as it would be issued: watermarked on every page.
    Preview,
}

/// The watermark of a preview.
pub const PREVIEW_WATERMARK: &str = "PREVIEW \u{2014} NOT AN INVOICE";

/// A rendered PDF.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PdfDocument {
    pub kind: DocumentKind,
    pub bytes: Vec<u8>,
    pub pages: usize,
}

// A4 in points, and the frame of the text.
const PAGE_W: f32 = 595.0;
const PAGE_H: f32 = 842.0;
const LEFT: f32 = 50.0;
const RIGHT: f32 = 545.0;
/// The body's first baseline below the page header.
const BODY_TOP: f32 = 785.0;
/// No body text below this (the footer is under it).
const BODY_BOTTOM: f32 = 62.0;
const ROW: f32 = 11.0;
const SMALL: f32 = 8.0;
const NORMAL: f32 = 9.0;

// Table columns: description, usage, VAT (right edge), amount (right edge).
const COL_USAGE: f32 = 300.0;
const COL_VAT_RIGHT: f32 = 475.0;
const DESCRIPTION_W: f32 = COL_USAGE - LEFT - 8.0;
const USAGE_W: f32 = COL_VAT_RIGHT - 45.0 - COL_USAGE;

const REGULAR: Name<'static> = Name(b"F1");
const BOLD: Name<'static> = Name(b"F2");

/// Renders `invoice` as a PDF (see the module docs).
pub fn render_pdf(invoice: &IssuedInvoice, mark: Mark) -> Result<PdfDocument, UblError> {
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
    let mut writer = Writer::new(invoice, kind, mark);
    writer.first_page(invoice, kind, &amounts, period_end);
    writer.lines(invoice, &amounts);
    writer.summary(invoice, kind, &amounts);
    Ok(writer.finish(invoice, kind))
}

/// Text as WinAnsiEncoding (Windows-1252) bytes; what it cannot encode
/// prints as `?`.
pub fn win_ansi(text: &str) -> Vec<u8> {
    text.chars()
        .map(|c| match c as u32 {
            0x20..=0x7E | 0xA0..=0xFF => c as u32 as u8,
            _ => match c {
                '\u{20AC}' => 0x80,
                '\u{201A}' => 0x82,
                '\u{0192}' => 0x83,
                '\u{201E}' => 0x84,
                '\u{2026}' => 0x85,
                '\u{2020}' => 0x86,
                '\u{2021}' => 0x87,
                '\u{02C6}' => 0x88,
                '\u{2030}' => 0x89,
                '\u{0160}' => 0x8A,
                '\u{2039}' => 0x8B,
                '\u{0152}' => 0x8C,
                '\u{017D}' => 0x8E,
                '\u{2018}' => 0x91,
                '\u{2019}' => 0x92,
                '\u{201C}' => 0x93,
                '\u{201D}' => 0x94,
                '\u{2022}' => 0x95,
                '\u{2013}' => 0x96,
                '\u{2014}' => 0x97,
                '\u{02DC}' => 0x98,
                '\u{2122}' => 0x99,
                '\u{0161}' => 0x9A,
                '\u{203A}' => 0x9B,
                '\u{0153}' => 0x9C,
                '\u{017E}' => 0x9E,
                '\u{0178}' => 0x9F,
                _ => b'?',
            },
        })
        .collect()
}

/// Helvetica's advance widths (thousandths of the font size) of
/// WinAnsiEncoding's printable ASCII, 0x20..=0x7E (Adobe's AFM).
const HELVETICA: [u16; 95] = [
    278, 278, 355, 556, 556, 889, 667, 191, 333, 333, 389, 584, 278, 333, 278, 278, // ' '../
    556, 556, 556, 556, 556, 556, 556, 556, 556, 556, 278, 278, 584, 584, 584, 556, // 0..?
    1015, 667, 667, 722, 722, 667, 611, 778, 722, 278, 500, 667, 556, 833, 722, 778, // @..O
    667, 778, 722, 667, 611, 722, 667, 944, 667, 667, 611, 278, 278, 278, 469, 556, // P.._
    333, 556, 556, 500, 556, 556, 278, 556, 556, 222, 222, 500, 222, 833, 556, 556, // `..o
    556, 556, 333, 500, 278, 556, 500, 722, 500, 500, 500, 334, 260, 334, 584, // p..~
];

/// Helvetica-Bold's, likewise.
const HELVETICA_BOLD: [u16; 95] = [
    278, 333, 474, 556, 556, 889, 722, 238, 333, 333, 389, 584, 278, 333, 278, 278, // ' '../
    556, 556, 556, 556, 556, 556, 556, 556, 556, 556, 333, 333, 584, 584, 584, 611, // 0..?
    975, 722, 722, 722, 722, 667, 611, 778, 722, 278, 556, 722, 611, 833, 722, 778, // @..O
    667, 778, 722, 667, 611, 722, 667, 944, 667, 667, 611, 333, 278, 333, 584, 556, // P.._
    333, 556, 611, 556, 611, 556, 333, 611, 611, 278, 278, 556, 278, 889, 611, 611, // `..o
    611, 611, 389, 556, 333, 611, 556, 778, 556, 556, 500, 389, 280, 389, 584, // p..~
];

/// The width of WinAnsi `bytes` in points at `size`. Letters with
/// accents are as wide as their base letters in Helvetica; the rest of
/// Latin-1 is taken as a digit's width, which only matters for truncation.
fn width(bytes: &[u8], bold: bool, size: f32) -> f32 {
    let table = if bold { &HELVETICA_BOLD } else { &HELVETICA };
    let units: u32 = bytes
        .iter()
        .map(|b| match b {
            0x20..=0x7E => u32::from(table[usize::from(b - 0x20)]),
            0x97 => 1000,
            _ => 556,
        })
        .sum();
    units as f32 * size / 1000.0
}

/// `bytes` cut to `max` points, ending in "..." when cut.
fn fit(mut bytes: Vec<u8>, bold: bool, size: f32, max: f32) -> Vec<u8> {
    if width(&bytes, bold, size) <= max {
        return bytes;
    }
    let dots = width(b"...", bold, size);
    while !bytes.is_empty() && width(&bytes, bold, size) + dots > max {
        bytes.pop();
    }
    bytes.extend_from_slice(b"...");
    bytes
}

fn category_name(category: VatCategory) -> &'static str {
    match category {
        VatCategory::S => "Standard rate",
        VatCategory::AE => "Reverse charge",
        VatCategory::Z => "Zero rated",
        VatCategory::E => "Exempt",
        VatCategory::O => "Outside the scope of VAT",
    }
}

fn title(kind: DocumentKind, mark: Mark) -> &'static str {
    match (kind, mark) {
        (DocumentKind::Invoice, Mark::Original) => "Invoice",
        (DocumentKind::CreditNote, Mark::Original) => "Credit note",
        (DocumentKind::Invoice, Mark::Preview) => "Invoice preview",
        (DocumentKind::CreditNote, Mark::Preview) => "Credit note preview",
    }
}

fn address_lines(address: &Address) -> [String; 3] {
    [
        address.street.clone(),
        format!("{} {}", address.postcode, address.city),
        address.country.clone(),
    ]
}

/// A page whose body is written and whose header is still to come.
struct PageRefs {
    page: Ref,
    body: Ref,
    header: Ref,
}

/// The document being written: the PDF buffer, the pages so far and the
/// page being filled.
struct Writer {
    pdf: Pdf,
    next_id: i32,
    pages: Vec<PageRefs>,
    content: Content,
    /// The baseline of the next row on the current page.
    y: f32,
    mark: Mark,
    /// "Invoice 2025-000001" for the page header.
    running_title: String,
}

const CATALOG: Ref = Ref::new(1);
const PAGE_TREE: Ref = Ref::new(2);
const FONT_REGULAR: Ref = Ref::new(3);
const FONT_BOLD: Ref = Ref::new(4);
const INFO: Ref = Ref::new(5);
const FIRST_FREE_ID: i32 = 6;

impl Writer {
    fn new(invoice: &IssuedInvoice, kind: DocumentKind, mark: Mark) -> Self {
        Self {
            pdf: Pdf::new(),
            next_id: FIRST_FREE_ID,
            pages: Vec::new(),
            content: Content::new(),
            y: BODY_TOP,
            mark,
            running_title: format!("{} {}", title(kind, mark), invoice.number),
        }
    }

    fn alloc(&mut self) -> Ref {
        let id = Ref::new(self.next_id);
        self.next_id += 1;
        id
    }

    fn text(&mut self, x: f32, y: f32, bold: bool, size: f32, bytes: &[u8]) {
        self.content
            .begin_text()
            .set_font(if bold { BOLD } else { REGULAR }, size)
            .next_line(x, y)
            .show(Str(bytes))
            .end_text();
    }

    /// Text whose right edge is at `right`.
    fn text_right(&mut self, right: f32, y: f32, bold: bool, size: f32, text: &str) {
        let bytes = win_ansi(text);
        let x = right - width(&bytes, bold, size);
        self.text(x, y, bold, size, &bytes);
    }

    fn text_left(&mut self, x: f32, y: f32, bold: bool, size: f32, text: &str) {
        self.text(x, y, bold, size, &win_ansi(text));
    }

    fn rule(&mut self, x0: f32, x1: f32, y: f32, width: f32) {
        self.content
            .set_line_width(width)
            .move_to(x0, y)
            .line_to(x1, y)
            .stroke();
    }

    /// Ends the current page's body: compressed and written now.
    fn end_page(&mut self) {
        let content = std::mem::replace(&mut self.content, Content::new()).finish();
        let page = self.alloc();
        let body = self.alloc();
        let header = self.alloc();
        self.pdf
            .stream(body, &deflate(&content))
            .filter(Filter::FlateDecode);
        self.pages.push(PageRefs { page, body, header });
        self.y = BODY_TOP;
    }

    /// Room for `height` more points on this page, else a new page.
    /// Returns whether a new page was started.
    fn room(&mut self, height: f32) -> bool {
        if self.y - height >= BODY_BOTTOM {
            return false;
        }
        self.end_page();
        true
    }

    fn table_heading(&mut self) {
        let y = self.y;
        self.text_left(LEFT, y, true, SMALL, "Description");
        self.text_left(COL_USAGE, y, true, SMALL, "Usage");
        self.text_right(COL_VAT_RIGHT, y, true, SMALL, "VAT");
        self.text_right(RIGHT, y, true, SMALL, &format!("Amount {CURRENCY}"));
        self.rule(LEFT, RIGHT, y - 3.5, 0.6);
        self.y -= ROW + 3.0;
    }

    fn first_page(
        &mut self,
        invoice: &IssuedInvoice,
        kind: DocumentKind,
        amounts: &DocumentAmounts,
        period_end: NaiveDate,
    ) {
        let top = self.y - 12.0;
        self.text_left(LEFT, top, true, 20.0, title(kind, self.mark));

        // The parties, side by side.
        let seller = &invoice.seller;
        let buyer = &invoice.buyer;
        let mut from = vec![seller.legal_name.clone()];
        from.extend(address_lines(&seller.address));
        from.push(format!("KvK {}", seller.kvk));
        from.push(format!("VAT {}", seller.vat_number));
        let mut to = vec![buyer.legal_name.clone()];
        to.extend(address_lines(&buyer.address));
        if let Some(vat) = &buyer.vat_number {
            to.push(format!("VAT {vat}"));
        }
        if matches!(buyer.peppol.scheme.as_str(), "0106") {
            to.push(format!("KvK {}", buyer.peppol.id));
        }
        to.push(format!("Customer {}", buyer.customer_id));
        let y0 = top - 30.0;
        self.text_left(LEFT, y0, true, SMALL, "From");
        self.text_left(320.0, y0, true, SMALL, "To");
        for (i, line) in from.iter().enumerate() {
            let bytes = fit(win_ansi(line), i == 0, NORMAL, 250.0);
            self.text(LEFT, y0 - 12.0 - ROW * i as f32, i == 0, NORMAL, &bytes);
        }
        for (i, line) in to.iter().enumerate() {
            let bytes = fit(win_ansi(line), i == 0, NORMAL, RIGHT - 320.0);
            self.text(320.0, y0 - 12.0 - ROW * i as f32, i == 0, NORMAL, &bytes);
        }
        let mut y = y0 - 12.0 - ROW * from.len().max(to.len()) as f32 - 14.0;

        // The document's facts, as label: value.
        let number_label = match kind {
            DocumentKind::Invoice => "Invoice number",
            DocumentKind::CreditNote => "Credit note number",
        };
        let mut facts: Vec<(&str, String)> = vec![
            (number_label, invoice.number.clone()),
            (
                "Issue date",
                invoice.issue_date.format("%Y-%m-%d").to_string(),
            ),
        ];
        if kind == DocumentKind::Invoice {
            facts.push(("Due date", invoice.due_date.format("%Y-%m-%d").to_string()));
        }
        facts.push((
            "Period",
            format!(
                "{} to {}",
                invoice.cycle.format("%Y-%m-%d"),
                period_end.format("%Y-%m-%d")
            ),
        ));
        if let Some(corrected) = &invoice.corrects {
            let what = match kind {
                DocumentKind::Invoice => "Corrects invoice",
                DocumentKind::CreditNote => "Credits invoice",
            };
            facts.push((
                what,
                format!(
                    "{} of {}",
                    corrected.number,
                    corrected.issue_date.format("%Y-%m-%d")
                ),
            ));
        }
        if let Some(reference) = &buyer.buyer_reference {
            facts.push(("Your reference", reference.clone()));
        }
        if let Some(order) = &buyer.purchase_order {
            facts.push(("Purchase order", order.clone()));
        }
        let due_label = match kind {
            DocumentKind::Invoice => "Amount due",
            DocumentKind::CreditNote => "Amount credited",
        };
        facts.push((
            due_label,
            format!("{CURRENCY} {}", money(amounts.payable_cents)),
        ));
        for (label, value) in &facts {
            self.text_left(LEFT, y, true, NORMAL, label);
            let bytes = fit(win_ansi(value), false, NORMAL, RIGHT - 160.0);
            self.text(160.0, y, false, NORMAL, &bytes);
            y -= ROW + 1.0;
        }
        self.y = y - 12.0;
        self.table_heading();
    }

    /// The lines, grouped by subscription (lines are stored in that
    /// order: subscription, then kind, the fee last), each group with its
    /// subtotal.
    fn lines(&mut self, invoice: &IssuedInvoice, amounts: &DocumentAmounts) {
        let lines = &invoice.lines;
        let mut start = 0;
        while start < lines.len() {
            let subscription = &lines[start].subscription;
            let end = lines[start..]
                .iter()
                .position(|l| &l.subscription != subscription)
                .map_or(lines.len(), |n| start + n);
            let heading = if subscription.is_empty() {
                "Other charges".to_string()
            } else {
                format!("Subscription {subscription}")
            };
            // A heading never ends a page alone.
            if self.room(2.0 * ROW + 2.0) {
                self.table_heading();
            }
            self.y -= 2.0;
            let y = self.y;
            self.text_left(LEFT, y, true, SMALL, &heading);
            self.y -= ROW;
            let mut subtotal: i64 = 0;
            for (line, net) in lines[start..end]
                .iter()
                .zip(&amounts.line_net_cents[start..end])
            {
                if self.room(ROW) {
                    self.table_heading();
                    // A group that goes on says whose lines these are.
                    let y = self.y;
                    self.text_left(LEFT, y, true, SMALL, &format!("{heading} (continued)"));
                    self.y -= ROW;
                }
                subtotal = subtotal.saturating_add(*net);
                let y = self.y;
                let description = if line.kind == "fee" {
                    format!("{} (fee)", line.description)
                } else {
                    line.description.clone()
                };
                let bytes = fit(win_ansi(&description), false, SMALL, DESCRIPTION_W);
                self.text(LEFT + 6.0, y, false, SMALL, &bytes);
                let bytes = fit(win_ansi(&line.usage), false, SMALL, USAGE_W);
                self.text(COL_USAGE, y, false, SMALL, &bytes);
                let vat = format!("{} {}%", line.vat.category.as_str(), line.vat.rate);
                self.text_right(COL_VAT_RIGHT, y, false, SMALL, &vat);
                self.text_right(RIGHT, y, false, SMALL, &money(*net));
                self.y -= ROW;
            }
            if self.room(ROW + 2.0) {
                self.table_heading();
            }
            let y = self.y;
            self.rule(RIGHT - 70.0, RIGHT, y + ROW - 2.5, 0.4);
            let label = if subscription.is_empty() {
                "Subtotal other charges".to_string()
            } else {
                format!("Subtotal {subscription}")
            };
            self.text_right(COL_VAT_RIGHT, y, true, SMALL, &label);
            self.text_right(RIGHT, y, true, SMALL, &money(subtotal));
            self.y -= ROW + 4.0;
            start = end;
        }
    }

    /// The VAT breakdown, the totals, the notes and how to pay, kept
    /// together on one page.
    fn summary(&mut self, invoice: &IssuedInvoice, kind: DocumentKind, amounts: &DocumentAmounts) {
        let exemptions: Vec<_> = amounts
            .breakdown
            .iter()
            .filter_map(|b| b.exemption)
            .collect();
        let rows = 2 + amounts.breakdown.len() + 4 + 2 * exemptions.len() + 7;
        self.room(rows as f32 * (ROW + 1.0) + 20.0);
        self.y -= 8.0;
        let y = self.y;
        self.text_left(LEFT, y, true, NORMAL, "VAT breakdown");
        self.y -= ROW + 3.0;
        let y = self.y;
        const RATE_RIGHT: f32 = 330.0;
        const TAXABLE_RIGHT: f32 = 440.0;
        self.text_left(LEFT, y, true, SMALL, "Category");
        self.text_right(RATE_RIGHT, y, true, SMALL, "Rate");
        self.text_right(
            TAXABLE_RIGHT,
            y,
            true,
            SMALL,
            &format!("Taxable {CURRENCY}"),
        );
        self.text_right(RIGHT, y, true, SMALL, &format!("VAT {CURRENCY}"));
        self.rule(LEFT, RIGHT, y - 3.5, 0.6);
        self.y -= ROW + 3.0;
        for subtotal in &amounts.breakdown {
            let y = self.y;
            let category = subtotal.vat.category;
            self.text_left(
                LEFT,
                y,
                false,
                SMALL,
                &format!("{} {}", category.as_str(), category_name(category)),
            );
            self.text_right(
                RATE_RIGHT,
                y,
                false,
                SMALL,
                &format!("{}%", subtotal.vat.rate),
            );
            self.text_right(
                TAXABLE_RIGHT,
                y,
                false,
                SMALL,
                &money(subtotal.taxable_cents),
            );
            self.text_right(RIGHT, y, false, SMALL, &money(subtotal.vat_cents));
            self.y -= ROW;
        }
        self.y -= 8.0;
        let due_label = match kind {
            DocumentKind::Invoice => format!("Amount due {CURRENCY}"),
            DocumentKind::CreditNote => format!("Amount credited {CURRENCY}"),
        };
        for (label, cents, bold) in [
            ("Net total".to_string(), amounts.tax_exclusive_cents, false),
            ("VAT total".to_string(), amounts.vat_total_cents, false),
            (due_label, amounts.payable_cents, true),
        ] {
            let y = self.y;
            if bold {
                self.rule(TAXABLE_RIGHT - 100.0, RIGHT, y + ROW - 1.5, 0.6);
            }
            let size = if bold { NORMAL + 1.0 } else { NORMAL };
            self.text_right(TAXABLE_RIGHT, y, bold, size, &label);
            self.text_right(RIGHT, y, bold, size, &money(cents));
            self.y -= ROW + 2.0;
        }
        self.y -= 8.0;
        for exemption in exemptions {
            let y = self.y;
            self.text_left(LEFT, y, true, NORMAL, exemption.reason);
            self.y -= ROW;
            if exemption.code == "VATEX-EU-AE" {
                let note = match &invoice.buyer.vat_number {
                    Some(vat) => format!(
                        "VAT is reverse charged: it is due by the customer, VAT number {vat}."
                    ),
                    None => "VAT is reverse charged: it is due by the customer.".to_string(),
                };
                let y = self.y;
                self.text_left(LEFT, y, false, SMALL, &note);
                self.y -= ROW;
            }
            self.y -= 4.0;
        }
        self.y -= 4.0;
        let seller = &invoice.seller;
        let payment: Vec<String> = match kind {
            DocumentKind::Invoice => vec![
                format!(
                    "Please pay {CURRENCY} {} by {} by bank transfer to:",
                    money(amounts.payable_cents),
                    invoice.due_date.format("%Y-%m-%d")
                ),
                format!("IBAN {}", group_iban(&seller.iban)),
                format!("BIC {}", seller.bic),
                format!("Account holder {}", seller.legal_name),
                format!("Payment reference {}", invoice.number),
            ],
            DocumentKind::CreditNote => {
                let mut lines = vec![format!(
                    "{CURRENCY} {} is credited to you: it is set off against an open invoice or refunded.",
                    money(amounts.payable_cents)
                )];
                if let Some(corrected) = &invoice.corrects {
                    lines.push(format!(
                        "This credit note corrects invoice {} of {}.",
                        corrected.number,
                        corrected.issue_date.format("%Y-%m-%d")
                    ));
                }
                lines.push(format!("Reference {}", invoice.number));
                lines
            }
        };
        let y = self.y;
        self.text_left(LEFT, y, true, NORMAL, "Payment");
        self.y -= ROW + 1.0;
        for line in payment {
            let y = self.y;
            let bytes = fit(win_ansi(&line), false, NORMAL, RIGHT - LEFT);
            self.text(LEFT, y, false, NORMAL, &bytes);
            self.y -= ROW + 1.0;
        }
    }

    /// Writes the headers (now that the page count is known), the pages,
    /// the fonts and the catalog.
    fn finish(mut self, invoice: &IssuedInvoice, kind: DocumentKind) -> PdfDocument {
        self.end_page();
        let total = self.pages.len();
        let seller = &invoice.seller;
        let footer = win_ansi(&format!(
            "{} \u{2022} KvK {} \u{2022} VAT {} \u{2022} IBAN {} \u{2022} BIC {}",
            seller.legal_name,
            seller.kvk,
            seller.vat_number,
            group_iban(&seller.iban),
            seller.bic
        ));
        let footer = fit(footer, false, 7.0, RIGHT - LEFT);
        let seller_name = fit(win_ansi(&seller.legal_name), true, SMALL, 250.0);
        for (index, refs) in self.pages.iter().enumerate() {
            let mut header = Content::new();
            if self.mark == Mark::Preview {
                watermark(&mut header);
            }
            header.set_fill_gray(0.0);
            let mut text = |x: f32, y: f32, bold: bool, size: f32, bytes: &[u8]| {
                header
                    .begin_text()
                    .set_font(if bold { BOLD } else { REGULAR }, size)
                    .next_line(x, y)
                    .show(Str(bytes))
                    .end_text();
            };
            text(LEFT, 815.0, true, SMALL, &seller_name);
            let right = win_ansi(&format!(
                "{} \u{2022} page {} of {}",
                self.running_title,
                index + 1,
                total
            ));
            let x = RIGHT - width(&right, false, SMALL);
            text(x, 815.0, false, SMALL, &right);
            let x = (PAGE_W - width(&footer, false, 7.0)) / 2.0;
            text(x, 34.0, false, 7.0, &footer);
            header
                .set_line_width(0.6)
                .move_to(LEFT, 808.0)
                .line_to(RIGHT, 808.0)
                .move_to(LEFT, 46.0)
                .line_to(RIGHT, 46.0)
                .stroke();
            let header = header.finish();
            self.pdf
                .stream(refs.header, &deflate(&header))
                .filter(Filter::FlateDecode);
            let mut page = self.pdf.page(refs.page);
            page.media_box(Rect::new(0.0, 0.0, PAGE_W, PAGE_H))
                .parent(PAGE_TREE)
                .contents_array([refs.header, refs.body]);
            let mut resources = page.resources();
            resources
                .fonts()
                .pair(REGULAR, FONT_REGULAR)
                .pair(BOLD, FONT_BOLD);
            resources.finish();
            page.finish();
        }
        self.pdf
            .pages(PAGE_TREE)
            .kids(self.pages.iter().map(|p| p.page))
            .count(i32::try_from(total).unwrap_or(i32::MAX));
        self.pdf.catalog(CATALOG).pages(PAGE_TREE);
        for (id, name) in [
            (FONT_REGULAR, Name(b"Helvetica")),
            (FONT_BOLD, Name(b"Helvetica-Bold")),
        ] {
            self.pdf
                .type1_font(id)
                .base_font(name)
                .encoding_predefined(Name(b"WinAnsiEncoding"));
        }
        let document_title = format!("{} {}", title(kind, self.mark), invoice.number);
        self.pdf
            .document_info(INFO)
            .title(TextStr(&document_title))
            .author(TextStr(&invoice.seller.legal_name))
            .producer(TextStr("tem"));
        PdfDocument {
            kind,
            bytes: self.pdf.finish(),
            pages: total,
        }
    }
}

/// The preview's watermark: large, light grey, diagonal, behind the text.
fn watermark(content: &mut Content) {
    let text = win_ansi(PREVIEW_WATERMARK);
    let size = 44.0;
    let w = width(&text, true, size);
    // Rotated 45 degrees about the page's centre.
    let (s, c) = (
        std::f32::consts::FRAC_1_SQRT_2,
        std::f32::consts::FRAC_1_SQRT_2,
    );
    content.save_state();
    content.set_fill_gray(0.82);
    content
        .begin_text()
        .set_font(BOLD, size)
        .set_text_matrix([
            c,
            s,
            -s,
            c,
            PAGE_W / 2.0 - c * w / 2.0 + s * size / 3.0,
            PAGE_H / 2.0 - s * w / 2.0 - c * size / 3.0,
        ])
        .show(Str(&text))
        .end_text();
    content.restore_state();
}

/// An IBAN in groups of four, as people read it.
fn group_iban(iban: &str) -> String {
    let compact: Vec<char> = iban
        .chars()
        .filter(|c| !c.is_whitespace())
        .map(|c| c.to_ascii_uppercase())
        .collect();
    compact
        .chunks(4)
        .map(|chunk| chunk.iter().collect::<String>())
        .collect::<Vec<_>>()
        .join(" ")
}

/// A content stream compressed at a fixed level (so the same bytes each
/// time). Writing to a `Vec` cannot fail.
fn deflate(data: &[u8]) -> Vec<u8> {
    let mut encoder = ZlibEncoder::new(Vec::with_capacity(data.len() / 4), Compression::new(6));
    let _ = encoder.write_all(data);
    encoder.finish().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::billing::document::ubl::{DocumentLine, InvoiceReference};
    use crate::billing::parties::{BuyerDetails, PeppolId, SellerDetails};
    use crate::billing::vat::{LineVat, RateBp};

    fn address(city: &str) -> Address {
        Address {
            street: "Kade 1".into(),
            city: city.into(),
            postcode: "3511 AA".into(),
            country: "NL".into(),
        }
    }

    fn invoice(lines: Vec<DocumentLine>, corrects: bool) -> IssuedInvoice {
        IssuedInvoice {
            number: "2025-000001".into(),
            issue_date: "2025-04-06".parse().unwrap(),
            due_date: "2025-05-06".parse().unwrap(),
            cycle: "2025-03-01".parse().unwrap(),
            seller: SellerDetails {
                code: "tem".into(),
                valid_from: "2020-01-01".parse().unwrap(),
                legal_name: "TEM B.V.".into(),
                address: address("Utrecht"),
                kvk: "12345678".into(),
                vat_number: "NL123456789B01".into(),
                iban: "NL91ABNA0417164300".into(),
                bic: "ABNANL2A".into(),
                payment_terms_days: 30,
                peppol: PeppolId {
                    scheme: "0106".into(),
                    id: "12345678".into(),
                },
                invoice_number_format: "{year}-{seq:06}".into(),
            },
            buyer: BuyerDetails {
                customer_id: 7,
                valid_from: "2020-01-01".parse().unwrap(),
                seller: "tem".into(),
                legal_name: "Bäcker & Zonen B.V.".into(),
                address: address("Rotterdam"),
                vat_number: None,
                peppol: PeppolId {
                    scheme: "0106".into(),
                    id: "87654321".into(),
                },
                invoice_email: "ap@buyer.example".into(),
                buyer_reference: None,
                purchase_order: None,
                payment_terms_days: None,
                vat_category: None,
            },
            lines,
            corrects: corrects.then(|| InvoiceReference {
                number: "2025-000000".into(),
                issue_date: "2025-04-01".parse().unwrap(),
            }),
        }
    }

    fn line(subscription: &str, amount_micros: i64) -> DocumentLine {
        DocumentLine {
            description: format!("Calls, home: {subscription}"),
            subscription: subscription.into(),
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

    #[test]
    fn rendering_twice_gives_the_same_bytes_with_no_date_or_file_id() {
        let inv = invoice(vec![line("+31611111111", 10_000_000)], false);
        let first = render_pdf(&inv, Mark::Original).unwrap();
        assert_eq!(first.bytes, render_pdf(&inv, Mark::Original).unwrap().bytes);
        assert!(first.bytes.starts_with(b"%PDF-1."));
        let text = String::from_utf8_lossy(&first.bytes);
        assert!(!text.contains("CreationDate"), "no clock in the PDF");
        assert!(!text.contains("/ID"), "no random file id in the PDF");
        assert!(text.contains("/WinAnsiEncoding"));
        assert_eq!(first.pages, 1);
    }

    #[test]
    fn twenty_thousand_lines_make_hundreds_of_pages_and_a_preview_only_adds_its_watermark() {
        let lines: Vec<DocumentLine> = (0..5_000)
            .flat_map(|s| (0..4).map(move |k| line(&format!("+316{s:08}"), 1_234_567 + k)))
            .collect();
        let inv = invoice(lines, false);
        let original = render_pdf(&inv, Mark::Original).unwrap();
        assert!(original.pages > 200, "{} pages", original.pages);
        let preview = render_pdf(&inv, Mark::Preview).unwrap();
        assert_eq!(preview.pages, original.pages);
        assert_ne!(preview.bytes, original.bytes);
    }

    /// The content streams of a PDF this module wrote, inflated.
    fn contents(pdf: &[u8]) -> Vec<Vec<u8>> {
        use std::io::Read;
        let find = |hay: &[u8], needle: &[u8]| hay.windows(needle.len()).position(|w| w == needle);
        let mut out = Vec::new();
        let mut at = 0;
        while let Some(p) = find(&pdf[at..], b">>\nstream\n") {
            let start = at + p + 10;
            let end = start + find(&pdf[start..], b"\nendstream").unwrap();
            let mut inflated = Vec::new();
            flate2::read::ZlibDecoder::new(&pdf[start..end])
                .read_to_end(&mut inflated)
                .unwrap();
            out.push(inflated);
            at = end;
        }
        out
    }

    #[test]
    fn a_preview_carries_its_watermark_on_every_page_and_an_invoice_on_none() {
        let lines: Vec<DocumentLine> = (0..300)
            .map(|s| line(&format!("+316{s:08}"), 1_000_000))
            .collect();
        let mut inv = invoice(lines, false);
        inv.number = "DRAFT".into();
        // Text with a byte outside ASCII (the dash) is written in hex.
        let watermark = format!("<{}>", hex::encode_upper(win_ansi(PREVIEW_WATERMARK)));
        let watermark = watermark.as_bytes();
        let marked = |pdf: &PdfDocument| {
            contents(&pdf.bytes)
                .iter()
                .filter(|c| c.windows(watermark.len()).any(|w| w == watermark))
                .count()
        };
        let preview = render_pdf(&inv, Mark::Preview).unwrap();
        assert!(preview.pages > 3, "{} pages", preview.pages);
        assert_eq!(marked(&preview), preview.pages);
        let last = hex::encode_upper(format!("page {} of {}", preview.pages, preview.pages));
        assert!(contents(&preview.bytes)
            .iter()
            .any(|c| c.windows(last.len()).any(|w| w == last.as_bytes())));
        assert_eq!(marked(&render_pdf(&inv, Mark::Original).unwrap()), 0);
    }

    #[test]
    fn a_subscription_whose_lines_go_on_over_a_page_is_named_again_there() {
        let has = |pdf: &PdfDocument, text: &[u8]| {
            contents(&pdf.bytes)
                .iter()
                .filter(|c| c.windows(text.len()).any(|w| w == text))
                .count()
        };
        let long = render_pdf(
            &invoice(
                (0..150).map(|_| line("+31611111111", 1_000_000)).collect(),
                false,
            ),
            Mark::Original,
        )
        .unwrap();
        assert!(long.pages >= 2, "{} pages", long.pages);
        assert_eq!(
            has(&long, b"Subscription +31611111111 (continued)"),
            long.pages - 1
        );
        let short = render_pdf(
            &invoice(vec![line("+31611111111", 1)], false),
            Mark::Original,
        )
        .unwrap();
        assert_eq!(has(&short, b"continued"), 0);
    }

    #[test]
    fn a_lowering_correction_is_a_credit_note() {
        let doc = render_pdf(
            &invoice(vec![line("+31611111111", -5_000_000)], true),
            Mark::Original,
        )
        .unwrap();
        assert_eq!(doc.kind, DocumentKind::CreditNote);
    }

    #[test]
    fn an_invoice_without_lines_is_refused_naming_its_number() {
        let err = render_pdf(&invoice(vec![], false), Mark::Original).unwrap_err();
        assert!(err.to_string().contains("2025-000001"), "{err}");
    }

    #[test]
    fn text_is_windows_1252_and_what_it_cannot_hold_is_a_question_mark() {
        assert_eq!(win_ansi("Bäcker €5 — ok"), b"B\xe4cker \x805 \x97 ok");
        assert_eq!(win_ansi("日本"), b"??");
    }

    #[test]
    fn widths_are_helveticas_and_long_text_is_cut_with_dots() {
        // "0" is 556/1000 of the size in both weights.
        assert!((width(b"00", false, 10.0) - 11.12).abs() < 1e-4);
        assert!((width(b"i", true, 10.0) - 2.78).abs() < 1e-4);
        let cut = fit(win_ansi(&"x".repeat(200)), false, 8.0, 100.0);
        assert!(cut.ends_with(b"..."));
        assert!(width(&cut, false, 8.0) <= 100.0);
    }

    #[test]
    fn an_iban_is_printed_in_groups_of_four() {
        assert_eq!(group_iban("nl91abna0417164300"), "NL91 ABNA 0417 1643 00");
    }
}
