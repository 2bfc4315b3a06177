//! The parties of an invoice: the seller (one set of details per seller
//! code, effective-dated) and each customer's billing details
//! (effective-dated too), as `temctl apply` stores them and as an invoice
//! records them when it becomes final.
//!
//! An invoice uses the versions valid on its issue date: the latest
//! `valid_from` on or before that date. Details are stored with optional
//! fields, because not every writer is `temctl apply` (a hand edit or a
//! migration from the legacy system can leave a field out); finalisation
//! checks them with [`missing_fields`] and keeps the invoice a draft, naming
//! what is missing, rather than sending a document the law would reject.
//!
//! The checks of single values (VAT number shape, IBAN checksum, KvK
//! number, Peppol scheme) live here so the catalog and finalisation apply
//! the same rules.

use chrono::NaiveDate;
use serde::{Deserialize, Serialize};

use crate::billing::vat::VatCategory;

/// A postal address; `country` is an ISO 3166-1 alpha-2 code (`NL`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Address {
    pub street: String,
    pub city: String,
    pub postcode: String,
    pub country: String,
}

/// A Peppol participant or endpoint id: an EAS (ICD) scheme and the id
/// within it (`0106` + a KvK number).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeppolId {
    pub scheme: String,
    pub id: String,
}

/// The seller's details valid from `valid_from`, as an invoice records them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SellerDetails {
    pub code: String,
    pub valid_from: NaiveDate,
    pub legal_name: String,
    pub address: Address,
    pub kvk: String,
    pub vat_number: String,
    pub iban: String,
    pub bic: String,
    pub payment_terms_days: u32,
    pub peppol: PeppolId,
    pub invoice_number_format: String,
}

/// A customer's billing details valid from `valid_from`, as an invoice
/// records them (complete: see [`StoredBuyer::complete`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuyerDetails {
    pub customer_id: i64,
    pub valid_from: NaiveDate,
    pub seller: String,
    pub legal_name: String,
    pub address: Address,
    pub vat_number: Option<String>,
    pub peppol: PeppolId,
    pub invoice_email: String,
    pub buyer_reference: Option<String>,
    pub purchase_order: Option<String>,
    /// The customer's own terms; `None` takes the seller's.
    pub payment_terms_days: Option<u32>,
    /// A VAT category configured for the customer (zero-rated, exempt,
    /// outside scope); `None` derives it from the countries and VAT number.
    pub vat_category: Option<VatCategory>,
}

/// A customer's billing details as stored: every required field may be
/// absent when someone other than `temctl apply` wrote them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoredBuyer {
    pub customer_id: i64,
    pub valid_from: Option<NaiveDate>,
    pub seller: Option<String>,
    pub legal_name: Option<String>,
    pub street: Option<String>,
    pub city: Option<String>,
    pub postcode: Option<String>,
    pub country: Option<String>,
    pub vat_number: Option<String>,
    pub peppol_scheme: Option<String>,
    pub peppol_id: Option<String>,
    pub invoice_email: Option<String>,
    pub buyer_reference: Option<String>,
    pub purchase_order: Option<String>,
    pub payment_terms_days: Option<u32>,
    pub vat_category: Option<String>,
}

/// The required fields of a customer's billing details, by the name
/// `temctl apply` gives them.
pub const REQUIRED_BUYER_FIELDS: &[&str] = &[
    "seller",
    "legal_name",
    "address.street",
    "address.city",
    "address.postcode",
    "address.country",
    "peppol.scheme",
    "peppol.id",
    "invoice_email",
];

fn present(value: &Option<String>) -> Option<&str> {
    value.as_deref().filter(|v| !v.trim().is_empty())
}

/// The required fields `stored` lacks (empty text counts as absent), in
/// the order of [`REQUIRED_BUYER_FIELDS`]; all of them when there are no
/// details at all.
pub fn missing_fields(stored: Option<&StoredBuyer>) -> Vec<&'static str> {
    let Some(s) = stored else {
        return REQUIRED_BUYER_FIELDS.to_vec();
    };
    let values = [
        &s.seller,
        &s.legal_name,
        &s.street,
        &s.city,
        &s.postcode,
        &s.country,
        &s.peppol_scheme,
        &s.peppol_id,
        &s.invoice_email,
    ];
    REQUIRED_BUYER_FIELDS
        .iter()
        .zip(values)
        .filter(|(_, value)| present(value).is_none())
        .map(|(name, _)| *name)
        .collect()
}

impl StoredBuyer {
    /// The details when every required field is there and the VAT
    /// category (if any) is one this build knows; otherwise the problems,
    /// each naming its field.
    pub fn complete(&self) -> Result<BuyerDetails, Vec<String>> {
        let mut problems: Vec<String> = missing_fields(Some(self))
            .into_iter()
            .map(|f| format!("{f} is missing"))
            .collect();
        let vat_category = match present(&self.vat_category) {
            None => None,
            Some(code) => match code.parse::<VatCategory>() {
                Ok(category) => Some(category),
                Err(e) => {
                    problems.push(format!("vat_category: {e}"));
                    None
                }
            },
        };
        if !problems.is_empty() {
            return Err(problems);
        }
        let text = |v: &Option<String>| present(v).unwrap_or_default().to_string();
        Ok(BuyerDetails {
            customer_id: self.customer_id,
            valid_from: self.valid_from.unwrap_or(NaiveDate::MIN),
            seller: text(&self.seller),
            legal_name: text(&self.legal_name),
            address: Address {
                street: text(&self.street),
                city: text(&self.city),
                postcode: text(&self.postcode),
                country: text(&self.country),
            },
            vat_number: present(&self.vat_number).map(str::to_string),
            peppol: PeppolId {
                scheme: text(&self.peppol_scheme),
                id: text(&self.peppol_id),
            },
            invoice_email: text(&self.invoice_email),
            buyer_reference: present(&self.buyer_reference).map(str::to_string),
            purchase_order: present(&self.purchase_order).map(str::to_string),
            payment_terms_days: self.payment_terms_days,
            vat_category,
        })
    }
}

/// The EU member states by ISO code, for the reverse charge: a customer
/// in one of these other than the seller's country, with a VAT number,
/// accounts for the VAT itself.
pub const EU_COUNTRIES: &[&str] = &[
    "AT", "BE", "BG", "CY", "CZ", "DE", "DK", "EE", "ES", "FI", "FR", "GR", "HR", "HU", "IE", "IT",
    "LT", "LU", "LV", "MT", "NL", "PL", "PT", "RO", "SE", "SI", "SK",
];

pub fn is_eu(country: &str) -> bool {
    EU_COUNTRIES.contains(&country)
}

/// A country code: two capital letters (ISO 3166-1 alpha-2).
pub fn check_country(country: &str) -> Result<(), String> {
    if country.len() == 2 && country.bytes().all(|b| b.is_ascii_uppercase()) {
        Ok(())
    } else {
        Err(format!(
            "{country:?} is not an ISO 3166-1 alpha-2 country code (two capital letters, e.g. NL)"
        ))
    }
}

/// The prefix of a VAT number of `country` (Greece's is EL, not GR).
fn vat_prefix(country: &str) -> &str {
    if country == "GR" {
        "EL"
    } else {
        country
    }
}

/// A VAT number of a customer or seller in `country`. The Netherlands
/// (`NL` + 9 digits + `B` + 2 digits), Belgium (`BE` + 0 or 1 + 9 digits),
/// Germany (`DE` + 9 digits) and Luxembourg (`LU` + 8 digits) are checked
/// exactly; other countries by their prefix and 2 to 12 letters or digits.
pub fn check_vat_number(vat: &str, country: &str) -> Result<(), String> {
    let prefix = vat_prefix(country);
    let Some(rest) = vat.strip_prefix(prefix) else {
        return Err(format!(
            "{vat:?} must start with {prefix}, the VAT prefix of {country}"
        ));
    };
    let digits = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_digit());
    let ok = match country {
        "NL" => {
            rest.len() == 12
                && digits(&rest[..9], 9)
                && &rest[9..10] == "B"
                && digits(&rest[10..], 2)
        }
        "BE" => digits(rest, 10) && matches!(rest.as_bytes()[0], b'0' | b'1'),
        "DE" => digits(rest, 9),
        "LU" => digits(rest, 8),
        _ => {
            (2..=12).contains(&rest.len())
                && rest
                    .bytes()
                    .all(|b| b.is_ascii_digit() || b.is_ascii_uppercase())
        }
    };
    if ok {
        return Ok(());
    }
    let shape = match country {
        "NL" => "NL + 9 digits + B + 2 digits, e.g. NL123456789B01",
        "BE" => "BE + 0 or 1 + 9 digits, e.g. BE0123456789",
        "DE" => "DE + 9 digits",
        "LU" => "LU + 8 digits",
        _ => "the prefix and 2 to 12 capital letters or digits, no spaces",
    };
    Err(format!(
        "{vat:?} is not a VAT number of {country} ({shape})"
    ))
}

/// A KvK (Dutch chamber of commerce) number: 8 digits.
pub fn check_kvk(kvk: &str) -> Result<(), String> {
    if kvk.len() == 8 && kvk.bytes().all(|b| b.is_ascii_digit()) {
        Ok(())
    } else {
        Err(format!(
            "{kvk:?} is not a KvK number (8 digits; quote it in YAML)"
        ))
    }
}

/// An IBAN: country code, two check digits and up to 30 letters or digits,
/// without spaces, whose ISO 7064 mod 97 checksum is 1 (and 18 characters
/// for a Dutch one).
pub fn check_iban(iban: &str) -> Result<(), String> {
    let bytes = iban.as_bytes();
    let shape = (15..=34).contains(&bytes.len())
        && bytes[..2].iter().all(u8::is_ascii_uppercase)
        && bytes[2..4].iter().all(u8::is_ascii_digit)
        && bytes
            .iter()
            .all(|b| b.is_ascii_digit() || b.is_ascii_uppercase());
    if !shape {
        return Err(format!(
            "{iban:?} is not an IBAN (country code, 2 check digits, up to 30 capital letters or digits, no spaces)"
        ));
    }
    if iban.starts_with("NL") && bytes.len() != 18 {
        return Err(format!("{iban:?} is not a Dutch IBAN (18 characters)"));
    }
    // The first four characters move to the end; letters count as 10..35.
    let remainder = bytes[4..].iter().chain(&bytes[..4]).fold(0u32, |acc, &b| {
        if b.is_ascii_digit() {
            (acc * 10 + u32::from(b - b'0')) % 97
        } else {
            (acc * 100 + u32::from(b - b'A') + 10) % 97
        }
    });
    if remainder == 1 {
        Ok(())
    } else {
        Err(format!(
            "{iban:?} fails the IBAN checksum (mod 97 is {remainder}, not 1): a digit is mistyped"
        ))
    }
}

/// A BIC: 4 letters (bank), 2 (country), 2 letters or digits (location),
/// optionally 3 more (branch).
pub fn check_bic(bic: &str) -> Result<(), String> {
    let b = bic.as_bytes();
    let ok = (b.len() == 8 || b.len() == 11)
        && b[..6].iter().all(u8::is_ascii_uppercase)
        && b[6..]
            .iter()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{bic:?} is not a BIC (8 or 11 capital letters or digits, e.g. ABNANL2A)"
        ))
    }
}

/// The EAS codes (CEF Electronic Address Scheme, which Peppol's ICD list
/// follows) an endpoint id may use.
pub const PEPPOL_SCHEMES: &[&str] = &[
    "0002", "0007", "0009", "0037", "0060", "0088", "0096", "0097", "0106", "0130", "0135", "0142",
    "0147", "0151", "0154", "0158", "0170", "0183", "0184", "0188", "0190", "0191", "0192", "0193",
    "0194", "0195", "0196", "0198", "0199", "0200", "0201", "0202", "0203", "0204", "0205", "0208",
    "0209", "0210", "0211", "0212", "0213", "0215", "0216", "0218", "0221", "0225", "0230", "0235",
    "9901", "9910", "9913", "9914", "9915", "9918", "9919", "9920", "9922", "9923", "9924", "9925",
    "9926", "9927", "9928", "9929", "9930", "9931", "9932", "9933", "9934", "9935", "9936", "9937",
    "9938", "9939", "9940", "9941", "9942", "9943", "9944", "9945", "9946", "9947", "9948", "9949",
    "9950", "9951", "9952", "9953", "9957", "9959", "AN", "AQ", "AS", "AU", "EM",
];

/// A Peppol id: a known scheme, and for the Dutch and Belgian schemes an
/// id of their shape (0106 KvK: 8 digits; 0190 OIN: 20 digits; 9944 a
/// Dutch VAT number; 0208 a Belgian enterprise number: 10 digits whose
/// last two are 97 - (the first eight mod 97), as Peppol's
/// PEPPOL-COMMON-R043 checks).
pub fn check_peppol(scheme: &str, id: &str) -> Result<(), String> {
    if !PEPPOL_SCHEMES.contains(&scheme) {
        return Err(format!(
            "scheme {scheme:?} is not a known Peppol EAS code (e.g. 0106 KvK, 0190 OIN, 9944 NL VAT, 0208 BE enterprise number; quote it in YAML)"
        ));
    }
    let digits = |n: usize| id.len() == n && id.bytes().all(|b| b.is_ascii_digit());
    match scheme {
        "0106" => check_kvk(id)
            .map_err(|_| format!("{id:?} is not a KvK number (8 digits), as scheme 0106 needs")),
        "0190" if !digits(20) => Err(format!(
            "{id:?} is not an OIN (20 digits), as scheme 0190 needs"
        )),
        "9944" => check_vat_number(id, "NL"),
        "0208" if !digits(10) || !belgian_check_digits(id) => Err(format!(
            "{id:?} is not a Belgian enterprise number (10 digits, the last two 97 - the first eight mod 97), as scheme 0208 needs"
        )),
        _ if id.trim().is_empty() || id.trim() != id => {
            Err("must not be empty nor start or end with a space".into())
        }
        _ => Ok(()),
    }
}

/// A Belgian enterprise number's check digits (10 ASCII digits given).
fn belgian_check_digits(id: &str) -> bool {
    match (id.get(..8), id.get(8..)) {
        (Some(base), Some(check)) => match (base.parse::<u64>(), check.parse::<u64>()) {
            (Ok(base), Ok(check)) => 97 - base % 97 == check,
            _ => false,
        },
        _ => false,
    }
}

/// An invoice address: something@domain.tld, without spaces.
pub fn check_email(email: &str) -> Result<(), String> {
    let ok = match email.split_once('@') {
        Some((local, domain)) => {
            !local.is_empty()
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
                && !domain.contains('@')
                && !email.contains(char::is_whitespace)
        }
        None => false,
    };
    if ok {
        Ok(())
    } else {
        Err(format!("{email:?} is not an e-mail address"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dutch_vat_numbers_are_nl_nine_digits_b_two_digits() {
        assert!(check_vat_number("NL123456789B01", "NL").is_ok());
        for bad in [
            "NL123456789",
            "NL12345678B01",
            "NL123456789X01",
            "123456789B01",
        ] {
            assert!(check_vat_number(bad, "NL").is_err(), "{bad}");
        }
        assert!(check_vat_number("BE0123456789", "BE").is_ok());
        assert!(check_vat_number("BE2123456789", "BE").is_err());
        assert!(check_vat_number("DE123456789", "DE").is_ok());
        assert!(check_vat_number("EL123456789", "GR").is_ok());
        assert!(check_vat_number("NL123456789B01", "DE")
            .unwrap_err()
            .contains("start with DE"));
    }

    #[test]
    fn an_iban_must_pass_its_mod_97_checksum() {
        assert!(check_iban("NL91ABNA0417164300").is_ok());
        assert!(check_iban("DE89370400440532013000").is_ok());
        let typo = check_iban("NL91ABNA0417164301").unwrap_err();
        assert!(typo.contains("checksum"), "{typo}");
        assert!(check_iban("NL91 ABNA 0417 1643 00").is_err());
        assert!(check_iban("NL91ABNA041716430").is_err());
    }

    #[test]
    fn kvk_bic_email_and_peppol_ids_have_their_shapes() {
        assert!(check_kvk("12345678").is_ok());
        assert!(check_kvk("1234567").is_err());
        assert!(check_bic("ABNANL2A").is_ok());
        assert!(check_bic("ABNANL2AXXX").is_ok());
        assert!(check_bic("ABN1NL2A").is_err());
        assert!(check_email("ap@acme.example").is_ok());
        assert!(check_email("ap@acme").is_err());
        assert!(check_peppol("0106", "12345678").is_ok());
        assert!(check_peppol("0190", "00000001234567890000").is_ok());
        assert!(check_peppol("9944", "NL123456789B01").is_ok());
        assert!(check_peppol("0208", "0123456749").is_ok());
        // Ten digits with wrong check digits: Peppol refuses the document.
        assert!(check_peppol("0208", "0123456789")
            .unwrap_err()
            .contains("97"));
        assert!(check_peppol("0106", "NL123").unwrap_err().contains("KvK"));
        assert!(check_peppol("1234", "x").unwrap_err().contains("EAS"));
    }

    #[test]
    fn missing_billing_fields_are_named_and_no_details_lack_every_field() {
        assert_eq!(missing_fields(None), REQUIRED_BUYER_FIELDS);
        let partial = StoredBuyer {
            customer_id: 1,
            seller: Some("tem".into()),
            legal_name: Some("Acme B.V.".into()),
            street: Some("Kade 1".into()),
            city: Some("Utrecht".into()),
            postcode: Some(" ".into()),
            country: Some("NL".into()),
            peppol_scheme: Some("0106".into()),
            peppol_id: Some("12345678".into()),
            ..StoredBuyer::default()
        };
        assert_eq!(
            missing_fields(Some(&partial)),
            vec!["address.postcode", "invoice_email"]
        );
        let problems = partial.complete().unwrap_err();
        assert_eq!(
            problems,
            vec!["address.postcode is missing", "invoice_email is missing"]
        );
    }
}
