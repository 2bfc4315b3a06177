//! VAT of an invoice line: its category (UNCL5305, as EN 16931 names
//! them) and its rate, which is data (`vat_rate`, effective-dated,
//! seeded by migration 0012) rather than a constant, so a change of the
//! law is a row with a `valid_from`, and an invoice uses the rate valid on
//! its issue date.
//!
//! Which category a customer's lines get ([`category_for`]):
//! - a category configured on the customer's billing details (zero-rated
//!   Z, exempt E, outside scope O) wins;
//! - a customer in the seller's country: standard rate S;
//! - a customer in another EU member state with a VAT number: reverse
//!   charge AE, 0%, with the exemption reason the law requires;
//! - anyone else: no category can be derived, and the invoice stays a
//!   draft until one is configured (never a guessed rate).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::billing::parties::{is_eu, BuyerDetails, SellerDetails};

/// The VAT categories tem bills with (UNCL5305 codes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum VatCategory {
    /// Standard rate.
    S,
    /// Reverse charge (VAT reverse charge, intra-EU B2B services).
    AE,
    /// Zero rated.
    Z,
    /// Exempt from tax.
    E,
    /// Services outside scope of tax.
    O,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a VAT category tem bills with; use one of S, AE, Z, E, O (UNCL5305)")]
pub struct UnknownCategory(pub String);

impl FromStr for VatCategory {
    type Err = UnknownCategory;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "S" => VatCategory::S,
            "AE" => VatCategory::AE,
            "Z" => VatCategory::Z,
            "E" => VatCategory::E,
            "O" => VatCategory::O,
            other => return Err(UnknownCategory(other.to_string())),
        })
    }
}

impl VatCategory {
    pub fn as_str(self) -> &'static str {
        match self {
            VatCategory::S => "S",
            VatCategory::AE => "AE",
            VatCategory::Z => "Z",
            VatCategory::E => "E",
            VatCategory::O => "O",
        }
    }

    /// The `vat_rate.code` whose rate this category bills (tem's services
    /// are all at the standard rate; `reduced` is seeded for completeness).
    pub fn rate_code(self) -> &'static str {
        match self {
            VatCategory::S => "standard",
            VatCategory::AE => "reverse_charge",
            VatCategory::Z => "zero",
            VatCategory::E => "exempt",
            VatCategory::O => "outside_scope",
        }
    }

    /// The exemption reason (BT-120) and its VATEX code (BT-121) a
    /// category other than S and Z must carry on the document.
    pub fn exemption(self) -> Option<Exemption> {
        match self {
            VatCategory::AE => Some(Exemption {
                code: "VATEX-EU-AE",
                reason: "Reverse charge / BTW verlegd",
            }),
            VatCategory::E => Some(Exemption {
                code: "VATEX-EU-132",
                reason: "Exempt from VAT / Vrijgesteld van BTW",
            }),
            VatCategory::O => Some(Exemption {
                code: "VATEX-EU-O",
                reason: "Not subject to VAT / Niet onderworpen aan BTW",
            }),
            VatCategory::S | VatCategory::Z => None,
        }
    }
}

impl fmt::Display for VatCategory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Exemption {
    pub code: &'static str,
    pub reason: &'static str,
}

/// A VAT rate in hundredths of a percent (2100 = 21%): exact, no float.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RateBp(pub u32);

impl fmt::Display for RateBp {
    /// As EN 16931 writes a percentage: `21.00`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:02}", self.0 / 100, self.0 % 100)
    }
}

/// What VAT a line is billed with: its category and the rate valid on the
/// invoice's issue date.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct LineVat {
    pub category: VatCategory,
    pub rate: RateBp,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VatError {
    #[error("the customer is in {country}, outside the EU, and has no vat_category; configure one (O outside scope, Z zero-rated or E exempt) in its billing_details")]
    NonEuWithoutCategory { country: String },
    #[error("the customer is in {country} (EU, not the seller's {seller_country}) without a VAT number; add its vat_number for reverse charge, or configure a vat_category")]
    EuWithoutVatNumber {
        country: String,
        seller_country: String,
    },
}

/// The category of a customer's lines (see the module docs).
pub fn category_for(seller: &SellerDetails, buyer: &BuyerDetails) -> Result<VatCategory, VatError> {
    if let Some(category) = buyer.vat_category {
        return Ok(category);
    }
    let country = &buyer.address.country;
    if *country == seller.address.country {
        return Ok(VatCategory::S);
    }
    if !is_eu(country) {
        return Err(VatError::NonEuWithoutCategory {
            country: country.clone(),
        });
    }
    match &buyer.vat_number {
        Some(_) => Ok(VatCategory::AE),
        None => Err(VatError::EuWithoutVatNumber {
            country: country.clone(),
            seller_country: seller.address.country.clone(),
        }),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::billing::parties::{Address, PeppolId};

    /// A Dutch seller with every field set (also the issuing tests').
    pub(crate) fn seller() -> SellerDetails {
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
            iban: "NL91ABNA0417164300".into(),
            bic: "ABNANL2A".into(),
            payment_terms_days: 30,
            peppol: PeppolId {
                scheme: "0106".into(),
                id: "12345678".into(),
            },
            invoice_number_format: "{year}-{seq:06}".into(),
        }
    }

    fn buyer(country: &str, vat: Option<&str>, category: Option<VatCategory>) -> BuyerDetails {
        BuyerDetails {
            customer_id: 1,
            valid_from: "2020-01-01".parse().unwrap(),
            seller: "tem".into(),
            legal_name: "Buyer".into(),
            address: Address {
                street: "Str 1".into(),
                city: "C".into(),
                postcode: "1".into(),
                country: country.into(),
            },
            vat_number: vat.map(Into::into),
            peppol: PeppolId {
                scheme: "0106".into(),
                id: "87654321".into(),
            },
            invoice_email: "ap@b.example".into(),
            buyer_reference: None,
            purchase_order: None,
            payment_terms_days: None,
            vat_category: category,
        }
    }

    #[test]
    fn a_dutch_customer_pays_the_standard_rate_and_an_eu_business_is_reverse_charged() {
        assert_eq!(
            category_for(&seller(), &buyer("NL", None, None)),
            Ok(VatCategory::S)
        );
        assert_eq!(
            category_for(&seller(), &buyer("BE", Some("BE0123456789"), None)),
            Ok(VatCategory::AE)
        );
        assert_eq!(
            VatCategory::AE.exemption().map(|e| e.code),
            Some("VATEX-EU-AE")
        );
        assert!(VatCategory::AE
            .exemption()
            .unwrap()
            .reason
            .contains("BTW verlegd"));
    }

    #[test]
    fn a_configured_category_wins_and_nothing_is_guessed_without_one() {
        assert_eq!(
            category_for(&seller(), &buyer("NL", None, Some(VatCategory::Z))),
            Ok(VatCategory::Z)
        );
        assert_eq!(
            category_for(&seller(), &buyer("US", None, Some(VatCategory::O))),
            Ok(VatCategory::O)
        );
        let err = category_for(&seller(), &buyer("US", None, None)).unwrap_err();
        assert!(err.to_string().contains("vat_category"), "{err}");
        let err = category_for(&seller(), &buyer("DE", None, None)).unwrap_err();
        assert!(err.to_string().contains("vat_number"), "{err}");
    }

    #[test]
    fn a_rate_prints_with_two_decimals() {
        assert_eq!(RateBp(2100).to_string(), "21.00");
        assert_eq!(RateBp(950).to_string(), "9.50");
        assert_eq!(RateBp(0).to_string(), "0.00");
    }
}
