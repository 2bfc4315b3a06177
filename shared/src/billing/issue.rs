//! Issuing an invoice: what a draft (or a correction) needs to become
//! final, read in its GenerateInvoice run's transaction, and the number
//! taken last. See "Finalisation" in [`crate::billing::invoice`].
//!
//! [`prepare_issue`] either returns everything but the number, or the
//! problems that keep the invoice from being issued, each naming the field
//! or row to apply: the parties valid on the issue date
//! ([`crate::billing::parties`]), the VAT category and the rate valid on
//! it ([`crate::billing::vat`]), the document amounts
//! ([`crate::billing::document::amounts`]). [`issue`] then takes the
//! number ([`crate::billing::numbering`]) and finalises.

use chrono::{DateTime, Datelike, NaiveDate, Utc};
use chrono_tz::Tz;

use crate::billing::document::amounts::{document_amounts, DocumentAmounts, Taxed};
use crate::billing::invoice::{CycleInvoices, InvoiceError, InvoiceLine};
use crate::billing::numbering::NumberFormat;
use crate::billing::parties::{BuyerDetails, SellerDetails, REQUIRED_BUYER_FIELDS};
use crate::billing::vat::{category_for, LineVat, VatCategory};

/// What a final invoice is issued with (see "Finalisation" in the module
/// docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issue {
    pub finalised_at: DateTime<Utc>,
    pub issue_date: NaiveDate,
    pub due_date: NaiveDate,
    pub seller: SellerDetails,
    pub buyer: BuyerDetails,
    pub number: String,
    /// The counter value the number was rendered from.
    pub number_seq: i64,
    /// Each line's VAT, in the order of the invoice's lines.
    pub line_vat: Vec<LineVat>,
    pub amounts: DocumentAmounts,
}

/// An issue ready but for its number.
pub(crate) struct Prepared {
    issue_date: NaiveDate,
    due_date: NaiveDate,
    seller: SellerDetails,
    buyer: BuyerDetails,
    format: NumberFormat,
    line_vat: Vec<LineVat>,
    amounts: DocumentAmounts,
}

/// What a draft would be issued with today, but its number: for
/// `temctl invoice preview`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuePreview {
    pub issue_date: NaiveDate,
    pub due_date: NaiveDate,
    pub seller: SellerDetails,
    pub buyer: BuyerDetails,
    pub line_vat: Vec<LineVat>,
    pub amounts: DocumentAmounts,
}

impl From<Prepared> for IssuePreview {
    fn from(p: Prepared) -> Self {
        Self {
            issue_date: p.issue_date,
            due_date: p.due_date,
            seller: p.seller,
            buyer: p.buyer,
            line_vat: p.line_vat,
            amounts: p.amounts,
        }
    }
}

/// Everything an invoice of `lines` issued at `now` needs but its number,
/// or the problems that keep it from being issued (each naming what to
/// apply). Reads in the run's transaction; writes nothing.
pub(crate) async fn prepare_issue(
    run: &mut dyn CycleInvoices,
    customer_id: i64,
    cycle: NaiveDate,
    zone: Tz,
    now: DateTime<Utc>,
    lines: &[InvoiceLine],
) -> Result<Result<Prepared, Vec<String>>, InvoiceError> {
    let issue_date = now.with_timezone(&zone).date_naive();
    let Some(stored) = run.buyer_details(issue_date).await? else {
        return Ok(Err(vec![format!(
            "customer {customer_id} has no billing details valid on {issue_date}: apply a billing_details entry with {}",
            REQUIRED_BUYER_FIELDS.join(", ")
        )]));
    };
    let buyer = match stored.complete() {
        Ok(buyer) => buyer,
        Err(problems) => {
            return Ok(Err(problems
                .into_iter()
                .map(|p| {
                    format!(
                        "billing details of customer {customer_id} valid from {}: {p}",
                        stored.valid_from.map(|d| d.to_string()).unwrap_or_default()
                    )
                })
                .collect()))
        }
    };
    let Some(seller) = run.seller_details(&buyer.seller, issue_date).await? else {
        return Ok(Err(vec![format!(
            "seller {:?} has no details valid on {issue_date}: apply a sellers entry for it",
            buyer.seller
        )]));
    };
    let format = match NumberFormat::parse(&seller.invoice_number_format) {
        Ok(format) => format,
        Err(e) => {
            return Ok(Err(vec![format!(
                "seller {:?}: invoice_number_format {e}",
                seller.code
            )]))
        }
    };
    let category = match category_for(&seller, &buyer) {
        Ok(category) => category,
        Err(e) => return Ok(Err(vec![format!("customer {customer_id}: {e}")])),
    };
    let country = &seller.address.country;
    let rate = match run.vat_rate(country, category.rate_code(), issue_date).await? {
        Some((stored, rate)) if stored.parse::<VatCategory>() == Ok(category) => rate,
        Some((stored, _)) => {
            return Ok(Err(vec![format!(
                "the {} VAT rate of {country} valid on {issue_date} is stored with category {stored}, not {category}; correct the vat_rate row",
                category.rate_code()
            )]))
        }
        None => {
            return Ok(Err(vec![format!(
                "no {} VAT rate of {country} is valid on {issue_date}; add a vat_rate row for it",
                category.rate_code()
            )]))
        }
    };
    let vat = LineVat { category, rate };
    let taxed: Vec<Taxed> = lines
        .iter()
        .map(|l| Taxed {
            amount_micros: l.amount_micros,
            vat,
        })
        .collect();
    let amounts =
        document_amounts(&taxed, &[], &[], 0).map_err(|e| InvoiceError::Inconsistent {
            customer: customer_id,
            cycle,
            reason: e.to_string(),
        })?;
    let terms = buyer
        .payment_terms_days
        .unwrap_or(seller.payment_terms_days);
    let due_date = issue_date
        .checked_add_days(chrono::Days::new(u64::from(terms)))
        .unwrap_or(NaiveDate::MAX);
    Ok(Ok(Prepared {
        issue_date,
        due_date,
        seller,
        buyer,
        format,
        line_vat: vec![vat; lines.len()],
        amounts,
    }))
}

/// Takes the number and finalises: the last writes of the run, so the
/// seller's counter row is locked for as short a time as possible.
pub(crate) async fn issue(
    run: &mut dyn CycleInvoices,
    invoice_id: i64,
    prepared: Prepared,
    now: DateTime<Utc>,
) -> Result<String, InvoiceError> {
    let year = prepared.issue_date.year();
    let seq = run
        .take_number(&prepared.seller.code, prepared.format.counter_year(year))
        .await?;
    let number = prepared.format.render(year, seq);
    run.finalise(
        invoice_id,
        &Issue {
            finalised_at: now,
            issue_date: prepared.issue_date,
            due_date: prepared.due_date,
            seller: prepared.seller,
            buyer: prepared.buyer,
            number: number.clone(),
            number_seq: seq,
            line_vat: prepared.line_vat,
            amounts: prepared.amounts,
        },
    )
    .await?;
    Ok(number)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use async_trait::async_trait;

    use super::*;
    use crate::billing::invoice::{CycleUsage, InvoiceFigures, LineKey};
    use crate::billing::parties::StoredBuyer;
    use crate::billing::vat::RateBp;
    use crate::ports::StoreError;

    /// Only what issuing reads; the rest of a run is not used here.
    struct Reads {
        buyer: Option<StoredBuyer>,
        seller: Option<SellerDetails>,
        rates: BTreeMap<(&'static str, &'static str), (&'static str, u32)>,
    }

    #[async_trait]
    impl CycleInvoices for Reads {
        async fn buyer_details(&mut self, _: NaiveDate) -> Result<Option<StoredBuyer>, StoreError> {
            Ok(self.buyer.clone())
        }
        async fn seller_details(
            &mut self,
            seller: &str,
            _: NaiveDate,
        ) -> Result<Option<SellerDetails>, StoreError> {
            Ok(self.seller.clone().filter(|s| s.code == seller))
        }
        async fn vat_rate(
            &mut self,
            country: &str,
            code: &str,
            _: NaiveDate,
        ) -> Result<Option<(String, RateBp)>, StoreError> {
            Ok(self
                .rates
                .iter()
                .find(|((c, k), _)| *c == country && *k == code)
                .map(|(_, (category, bp))| (category.to_string(), RateBp(*bp))))
        }
        async fn usage(&mut self) -> Result<Option<CycleUsage>, StoreError> {
            unreachable!("issuing reads no usage")
        }
        async fn fee_counts(&mut self) -> Result<BTreeMap<String, i64>, StoreError> {
            unreachable!("issuing reads no fees")
        }
        async fn main_invoice(&mut self) -> Result<Option<(i64, String)>, StoreError> {
            unreachable!("issuing reads no invoice")
        }
        async fn billed_lines(&mut self) -> Result<BTreeMap<LineKey, i64>, StoreError> {
            unreachable!("issuing reads no billed lines")
        }
        async fn billed_totals(&mut self) -> Result<(i32, i64), StoreError> {
            unreachable!("issuing reads no billed totals")
        }
        async fn create_draft(&mut self, _: &InvoiceFigures) -> Result<i64, StoreError> {
            unreachable!("preparing writes nothing")
        }
        async fn rewrite_draft(&mut self, _: i64, _: &InvoiceFigures) -> Result<(), StoreError> {
            unreachable!("preparing writes nothing")
        }
        async fn create_correction(
            &mut self,
            _: i32,
            _: &InvoiceFigures,
        ) -> Result<i64, StoreError> {
            unreachable!("preparing writes nothing")
        }
        async fn insert_lines(&mut self, _: i64, _: &[InvoiceLine]) -> Result<(), StoreError> {
            unreachable!("preparing writes nothing")
        }
        async fn block(&mut self, _: i64, _: &str, _: DateTime<Utc>) -> Result<(), StoreError> {
            unreachable!("preparing writes nothing")
        }
        async fn take_number(&mut self, _: &str, _: i32) -> Result<i64, StoreError> {
            unreachable!("preparing takes no number")
        }
        async fn finalise(&mut self, _: i64, _: &Issue) -> Result<(), StoreError> {
            unreachable!("preparing writes nothing")
        }
        async fn commit(self: Box<Self>) -> Result<(), StoreError> {
            unreachable!("preparing commits nothing")
        }
    }

    use crate::billing::vat::tests::seller;

    fn buyer(country: &str, vat: Option<&str>) -> StoredBuyer {
        StoredBuyer {
            customer_id: 7,
            valid_from: Some("2020-01-01".parse().unwrap()),
            seller: Some("tem".into()),
            legal_name: Some("Buyer B.V.".into()),
            street: Some("Havenweg 2".into()),
            city: Some("Rotterdam".into()),
            postcode: Some("3011 AA".into()),
            country: Some(country.into()),
            vat_number: vat.map(Into::into),
            peppol_scheme: Some("0106".into()),
            peppol_id: Some("87654321".into()),
            invoice_email: Some("ap@buyer.example".into()),
            ..StoredBuyer::default()
        }
    }

    fn reads(buyer: Option<StoredBuyer>, seller: Option<SellerDetails>) -> Reads {
        Reads {
            buyer,
            seller,
            rates: BTreeMap::from([
                (("NL", "standard"), ("S", 2100)),
                (("NL", "reverse_charge"), ("AE", 0)),
            ]),
        }
    }

    fn line(amount_micros: i64) -> InvoiceLine {
        InvoiceLine {
            description: "Calls".into(),
            subscription: "+31611111111".into(),
            kind: "voice".into(),
            zone: "home".into(),
            quantity: "1 call".into(),
            amount_micros,
        }
    }

    /// Issued on 2025-04-06 in Amsterdam.
    async fn prepare(run: &mut Reads) -> Result<Prepared, Vec<String>> {
        prepare_issue(
            run,
            7,
            "2025-03-01".parse().unwrap(),
            chrono_tz::Europe::Amsterdam,
            "2025-04-06T10:00:00Z".parse().unwrap(),
            &[line(10_000_000), line(2_345_678)],
        )
        .await
        .expect("no store failure")
    }

    #[tokio::test]
    async fn a_dutch_buyer_is_issued_at_21_percent_due_after_the_sellers_terms() {
        let prepared = prepare(&mut reads(Some(buyer("NL", None)), Some(seller())))
            .await
            .unwrap();
        assert_eq!(prepared.due_date, "2025-05-06".parse().unwrap());
        assert_eq!(prepared.line_vat.len(), 2);
        assert_eq!(prepared.line_vat[0].category, VatCategory::S);
        // 10.00 + 2.35 = 12.35; 21% = 2.5935 -> 2.59.
        assert_eq!(
            (
                prepared.amounts.tax_exclusive_cents,
                prepared.amounts.vat_total_cents
            ),
            (1235, 259)
        );
    }

    #[tokio::test]
    async fn the_customers_own_terms_win_over_the_sellers() {
        let mut with_terms = buyer("NL", None);
        with_terms.payment_terms_days = Some(14);
        let prepared = prepare(&mut reads(Some(with_terms), Some(seller())))
            .await
            .unwrap();
        assert_eq!(prepared.due_date, "2025-04-20".parse().unwrap());
    }

    #[tokio::test]
    async fn each_missing_piece_blocks_the_issue_and_says_what_to_apply() {
        let problems = |r: Result<Prepared, Vec<String>>| r.err().expect("blocked").join("; ");

        let no_seller = problems(prepare(&mut reads(Some(buyer("NL", None)), None)).await);
        assert!(
            no_seller.contains("seller \"tem\" has no details valid on 2025-04-06"),
            "{no_seller}"
        );

        let eu_without_vat =
            problems(prepare(&mut reads(Some(buyer("DE", None)), Some(seller()))).await);
        assert!(eu_without_vat.contains("vat_number"), "{eu_without_vat}");

        let mut bad_format = seller();
        bad_format.invoice_number_format = "{seq".into();
        let format = problems(prepare(&mut reads(Some(buyer("NL", None)), Some(bad_format))).await);
        assert!(format.contains("invoice_number_format"), "{format}");

        let mut no_rate = reads(Some(buyer("NL", None)), Some(seller()));
        no_rate.rates.clear();
        let rate = problems(prepare(&mut no_rate).await);
        assert!(
            rate.contains("no standard VAT rate of NL is valid on 2025-04-06"),
            "{rate}"
        );

        let mut wrong_category = reads(Some(buyer("NL", None)), Some(seller()));
        wrong_category.rates.insert(("NL", "standard"), ("Z", 0));
        let category = problems(prepare(&mut wrong_category).await);
        assert!(
            category.contains("stored with category Z, not S"),
            "{category}"
        );
    }

    #[tokio::test]
    async fn an_eu_business_with_a_vat_number_is_reverse_charged() {
        let prepared = prepare(&mut reads(
            Some(buyer("BE", Some("BE0123456789"))),
            Some(seller()),
        ))
        .await
        .unwrap();
        assert_eq!(prepared.line_vat[0].category, VatCategory::AE);
        assert_eq!(prepared.amounts.vat_total_cents, 0);
        assert_eq!(
            prepared.amounts.breakdown[0].exemption.map(|e| e.code),
            Some("VATEX-EU-AE")
        );
    }
}
