//! The `sellers` and `billing_details` sections of an apply file: who
//! invoices (the seller, once per version) and how each customer is
//! invoiced, both effective-dated by `valid_from` (an invoice uses the
//! versions valid on its issue date; see billing/parties.rs).
//!
//! ```yaml
//! sellers:
//!   - code: tem                       # the series of invoice numbers is per seller
//!     valid_from: 2025-01-01          # natural key: (code, valid_from)
//!     legal_name: TEM Services B.V.
//!     address: {street: Kade 1, city: Utrecht, postcode: 3511 AA, country: NL}
//!     kvk: "12345678"                 # 8 digits, quoted
//!     vat_number: NL123456789B01
//!     iban: NL91ABNA0417164300        # checked with its mod 97 checksum
//!     bic: ABNANL2A
//!     payment_terms_days: 30
//!     peppol: {scheme: "0106", id: "12345678"}
//!     invoice_number_format: "{year}-{seq:06}"   # 2026-000123
//! billing_details:
//!   - customer: acme                  # natural key: (customer, valid_from)
//!     valid_from: 2025-01-01
//!     seller: tem
//!     legal_name: Acme Logistics B.V.
//!     address: {street: Havenweg 2, city: Rotterdam, postcode: 3011 AA, country: NL}
//!     vat_number: NL987654321B01      # optional; with it an EU customer abroad is reverse-charged
//!     peppol: {scheme: "0106", id: "87654321"}
//!     invoice_email: ap@acme.example
//!     buyer_reference: ACME-TELECOM   # optional
//!     purchase_order: PO-2025-17      # optional
//!     payment_terms_days: 14          # optional; the seller's otherwise
//!     vat_category: Z                 # optional: Z, E or O; derived otherwise (billing/vat.rs)
//! ```
//!
//! Every required field that is missing is reported by name, all at once.

use std::collections::BTreeSet;

use chrono::NaiveDate;
use serde::Deserialize;
use serde_yaml::Value as Yaml;

use super::{Problem, Section};
use crate::billing::numbering::NumberFormat;
use crate::billing::parties::{
    check_bic, check_country, check_email, check_iban, check_kvk, check_peppol, check_vat_number,
    Address, PeppolId, SellerDetails, StoredBuyer,
};
use crate::billing::vat::VatCategory;

/// A version of a seller's details and where it is in the file.
#[derive(Debug, Clone, PartialEq)]
pub struct SellerEntry {
    pub at: usize,
    pub details: SellerDetails,
}

/// A version of a customer's billing details and where it is in the file;
/// `details.customer_id` is 0 until the store resolves `customer`.
#[derive(Debug, Clone, PartialEq)]
pub struct BillingDetailsEntry {
    pub at: usize,
    /// The customer's code.
    pub customer: String,
    pub details: StoredBuyer,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AddressSpec {
    street: String,
    city: String,
    postcode: String,
    country: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PeppolSpec {
    scheme: String,
    id: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SellerSpec {
    code: String,
    valid_from: NaiveDate,
    legal_name: String,
    address: AddressSpec,
    kvk: String,
    vat_number: String,
    iban: String,
    bic: String,
    payment_terms_days: i64,
    peppol: PeppolSpec,
    invoice_number_format: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct BillingDetailsSpec {
    pub(super) customer: String,
    valid_from: NaiveDate,
    pub(super) seller: String,
    legal_name: String,
    address: AddressSpec,
    #[serde(default)]
    vat_number: Option<String>,
    peppol: PeppolSpec,
    invoice_email: String,
    #[serde(default)]
    buyer_reference: Option<String>,
    #[serde(default)]
    purchase_order: Option<String>,
    #[serde(default)]
    payment_terms_days: Option<i64>,
    #[serde(default)]
    vat_category: Option<String>,
}

const ADDRESS_FIELDS: &[&str] = &["street", "city", "postcode", "country"];
const PEPPOL_FIELDS: &[&str] = &["scheme", "id"];

/// The required fields of a `sellers` entry (nested ones as `address.city`).
pub const SELLER_REQUIRED: &[&str] = &[
    "code",
    "valid_from",
    "legal_name",
    "address",
    "kvk",
    "vat_number",
    "iban",
    "bic",
    "payment_terms_days",
    "peppol",
    "invoice_number_format",
];

/// The required fields of a `billing_details` entry.
pub const BILLING_REQUIRED: &[&str] = &[
    "customer",
    "valid_from",
    "seller",
    "legal_name",
    "address",
    "peppol",
    "invoice_email",
];

/// Each required field `item` lacks, as (field path, message): all of
/// them, where serde would stop at the first.
pub(super) fn missing_required(item: &Yaml, required: &[&str]) -> Vec<(String, String)> {
    let mut missing = Vec::new();
    let Some(map) = item.as_mapping() else {
        return missing;
    };
    for field in required {
        match map.get(*field) {
            None | Some(Yaml::Null) => {
                missing.push((format!(".{field}"), "is required and missing".to_string()))
            }
            Some(inner) => {
                let nested = match *field {
                    "address" => ADDRESS_FIELDS,
                    "peppol" => PEPPOL_FIELDS,
                    _ => continue,
                };
                if let Some(inner_map) = inner.as_mapping() {
                    for sub in nested {
                        if matches!(inner_map.get(*sub), None | Some(Yaml::Null)) {
                            missing.push((
                                format!(".{field}.{sub}"),
                                "is required and missing".to_string(),
                            ));
                        }
                    }
                }
            }
        }
    }
    missing
}

type Found = Vec<(String, String)>;

fn non_empty(found: &mut Found, field: &str, value: &str) {
    if value.trim().is_empty() {
        found.push((field.into(), "must not be empty".into()));
    } else if value.trim() != value {
        found.push((
            field.into(),
            format!("{value:?} starts or ends with a space"),
        ));
    }
}

fn check(found: &mut Found, field: &str, result: Result<(), String>) {
    if let Err(message) = result {
        found.push((field.into(), message));
    }
}

fn terms(found: &mut Found, days: i64) -> u32 {
    match u32::try_from(days).ok().filter(|d| *d <= 365) {
        Some(days) => days,
        None => {
            found.push((
                ".payment_terms_days".into(),
                format!("{days} is not between 0 and 365"),
            ));
            0
        }
    }
}

fn address(found: &mut Found, spec: AddressSpec) -> Address {
    non_empty(found, ".address.street", &spec.street);
    non_empty(found, ".address.city", &spec.city);
    non_empty(found, ".address.postcode", &spec.postcode);
    check(found, ".address.country", check_country(&spec.country));
    Address {
        street: spec.street,
        city: spec.city,
        postcode: spec.postcode,
        country: spec.country,
    }
}

/// A seller entry's value problems (field path, message) and its details.
pub(super) fn seller(spec: SellerSpec) -> (SellerDetails, Found) {
    let mut found = Found::new();
    non_empty(&mut found, ".code", &spec.code);
    non_empty(&mut found, ".legal_name", &spec.legal_name);
    let address = address(&mut found, spec.address);
    check(&mut found, ".kvk", check_kvk(&spec.kvk));
    check(
        &mut found,
        ".vat_number",
        check_vat_number(&spec.vat_number, &address.country),
    );
    check(&mut found, ".iban", check_iban(&spec.iban));
    check(&mut found, ".bic", check_bic(&spec.bic));
    let payment_terms_days = terms(&mut found, spec.payment_terms_days);
    check(
        &mut found,
        ".peppol",
        check_peppol(&spec.peppol.scheme, &spec.peppol.id),
    );
    check(
        &mut found,
        ".invoice_number_format",
        NumberFormat::parse(&spec.invoice_number_format)
            .map(|_| ())
            .map_err(|e| e.to_string()),
    );
    let details = SellerDetails {
        code: spec.code,
        valid_from: spec.valid_from,
        legal_name: spec.legal_name,
        address,
        kvk: spec.kvk,
        vat_number: spec.vat_number,
        iban: spec.iban,
        bic: spec.bic,
        payment_terms_days,
        peppol: PeppolId {
            scheme: spec.peppol.scheme,
            id: spec.peppol.id,
        },
        invoice_number_format: spec.invoice_number_format,
    };
    (details, found)
}

/// A billing details entry's value problems and its details.
pub(super) fn billing_details(spec: BillingDetailsSpec) -> (BillingDetailsEntry, Found) {
    let mut found = Found::new();
    non_empty(&mut found, ".customer", &spec.customer);
    non_empty(&mut found, ".seller", &spec.seller);
    non_empty(&mut found, ".legal_name", &spec.legal_name);
    let address = address(&mut found, spec.address);
    if let Some(vat) = &spec.vat_number {
        check(
            &mut found,
            ".vat_number",
            check_vat_number(vat, &address.country),
        );
    }
    check(
        &mut found,
        ".peppol",
        check_peppol(&spec.peppol.scheme, &spec.peppol.id),
    );
    check(
        &mut found,
        ".invoice_email",
        check_email(&spec.invoice_email),
    );
    for (field, value) in [
        (".buyer_reference", &spec.buyer_reference),
        (".purchase_order", &spec.purchase_order),
    ] {
        if let Some(value) = value {
            non_empty(&mut found, field, value);
        }
    }
    let payment_terms_days = spec.payment_terms_days.map(|d| terms(&mut found, d));
    if let Some(category) = &spec.vat_category {
        match category.parse::<VatCategory>() {
            Ok(VatCategory::Z | VatCategory::E | VatCategory::O) => {}
            Ok(other) => found.push((
                ".vat_category".into(),
                format!("{other} is derived from the countries and VAT number; configure only Z, E or O"),
            )),
            Err(e) => found.push((".vat_category".into(), e.to_string())),
        }
    }
    let entry = BillingDetailsEntry {
        at: 0,
        customer: spec.customer,
        details: StoredBuyer {
            customer_id: 0,
            valid_from: Some(spec.valid_from),
            seller: Some(spec.seller),
            legal_name: Some(spec.legal_name),
            street: Some(address.street),
            city: Some(address.city),
            postcode: Some(address.postcode),
            country: Some(address.country),
            vat_number: spec.vat_number,
            peppol_scheme: Some(spec.peppol.scheme),
            peppol_id: Some(spec.peppol.id),
            invoice_email: Some(spec.invoice_email),
            buyer_reference: spec.buyer_reference,
            purchase_order: spec.purchase_order,
            payment_terms_days,
            vat_category: spec.vat_category,
        },
    };
    (entry, found)
}

fn text(value: &Option<String>) -> String {
    value.clone().unwrap_or_else(|| "none".into())
}

/// A seller version's fields as text, by their names in the file: what
/// [`super::changes::diff`] compares with the stored version.
pub fn seller_fields(s: &SellerDetails) -> Vec<(&'static str, String)> {
    vec![
        ("legal_name", s.legal_name.clone()),
        ("address.street", s.address.street.clone()),
        ("address.city", s.address.city.clone()),
        ("address.postcode", s.address.postcode.clone()),
        ("address.country", s.address.country.clone()),
        ("kvk", s.kvk.clone()),
        ("vat_number", s.vat_number.clone()),
        ("iban", s.iban.clone()),
        ("bic", s.bic.clone()),
        ("payment_terms_days", s.payment_terms_days.to_string()),
        ("peppol.scheme", s.peppol.scheme.clone()),
        ("peppol.id", s.peppol.id.clone()),
        ("invoice_number_format", s.invoice_number_format.clone()),
    ]
}

/// A billing details version's fields as text (`none` for an absent one).
pub fn billing_fields(b: &StoredBuyer) -> Vec<(&'static str, String)> {
    vec![
        ("seller", text(&b.seller)),
        ("legal_name", text(&b.legal_name)),
        ("address.street", text(&b.street)),
        ("address.city", text(&b.city)),
        ("address.postcode", text(&b.postcode)),
        ("address.country", text(&b.country)),
        ("vat_number", text(&b.vat_number)),
        ("peppol.scheme", text(&b.peppol_scheme)),
        ("peppol.id", text(&b.peppol_id)),
        ("invoice_email", text(&b.invoice_email)),
        ("buyer_reference", text(&b.buyer_reference)),
        ("purchase_order", text(&b.purchase_order)),
        (
            "payment_terms_days",
            b.payment_terms_days
                .map(|d| d.to_string())
                .unwrap_or_else(|| "none (the seller's)".into()),
        ),
        ("vat_category", text(&b.vat_category)),
    ]
}

/// How a version is named in messages and changes: `tem from 2025-01-01`.
pub fn version_label(key: &str, valid_from: NaiveDate) -> String {
    format!("{key} from {valid_from}")
}

/// References from `billing_details[i].seller` to sellers neither the file
/// nor the database (`stored`) has.
pub fn seller_reference_problems(
    references: &[(usize, String)],
    declared: &BTreeSet<String>,
    stored: &BTreeSet<String>,
) -> Vec<Problem> {
    references
        .iter()
        .filter(|(_, code)| !declared.contains(code) && !stored.contains(code))
        .map(|(at, code)| {
            Problem::at(
                Section::BillingDetails,
                *at,
                ".seller",
                format!(
                    "no seller {code:?} in this file or the database; add a sellers entry for it"
                ),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::changes::{diff, Action, Stored};
    use crate::catalog::document::parse;

    const PARTIES: &str = r#"
sellers:
  - code: tem
    valid_from: 2025-01-01
    legal_name: TEM Services B.V.
    address: {street: Kade 1, city: Utrecht, postcode: 3511 AA, country: NL}
    kvk: "12345678"
    vat_number: NL123456789B01
    iban: NL91ABNA0417164300
    bic: ABNANL2A
    payment_terms_days: 30
    peppol: {scheme: "0106", id: "12345678"}
    invoice_number_format: "{year}-{seq:06}"
customers:
  - {code: acme, name: Acme, billing_cycle_start_day: 1}
billing_details:
  - customer: acme
    valid_from: 2025-01-01
    seller: tem
    legal_name: Acme Logistics B.V.
    address: {street: Havenweg 2, city: Rotterdam, postcode: 3011 AA, country: NL}
    vat_number: NL987654321B01
    peppol: {scheme: "0106", id: "87654321"}
    invoice_email: ap@acme.example
  - customer: brussels
    valid_from: 2025-06-01
    seller: tem
    legal_name: Brussels Fleet SA
    address: {street: Rue 3, city: Brussel, postcode: "1000", country: BE}
    vat_number: BE0123456749
    peppol: {scheme: "0208", id: "0123456749"}
    invoice_email: factures@fleet.example
    payment_terms_days: 14
"#;

    fn messages(text: &str) -> Vec<String> {
        parse(text, |_| None)
            .problems
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn sellers_and_billing_details_parse_into_their_versions() {
        let parsed = parse(PARTIES, |_| None);
        assert_eq!(parsed.problems, vec![]);
        let doc = &parsed.document;
        assert_eq!(
            doc.sellers[0].details.invoice_number_format,
            "{year}-{seq:06}"
        );
        assert_eq!(doc.sellers[0].details.payment_terms_days, 30);
        assert_eq!(doc.billing_details.len(), 2);
        assert_eq!(doc.billing_details[1].at, 1);
        assert_eq!(doc.billing_details[1].details.payment_terms_days, Some(14));
        assert_eq!(
            doc.billing_details[1].details.country.as_deref(),
            Some("BE")
        );
        // brussels is not in the file: the database must have it.
        assert!(parsed.customers_needed_from_database().contains("brussels"));
    }

    #[test]
    fn every_missing_required_field_is_named_with_its_entry() {
        let text = r#"
billing_details:
  - customer: acme
    valid_from: 2025-01-01
    seller: tem
    address: {street: Havenweg 2, postcode: 3011 AA, country: NL}
    peppol: {scheme: "0106", id: "87654321"}
sellers:
  - code: tem
    valid_from: 2025-01-01
    legal_name: TEM
"#;
        assert_eq!(
            messages(text),
            vec![
                "sellers[0].address: is required and missing",
                "sellers[0].kvk: is required and missing",
                "sellers[0].vat_number: is required and missing",
                "sellers[0].iban: is required and missing",
                "sellers[0].bic: is required and missing",
                "sellers[0].payment_terms_days: is required and missing",
                "sellers[0].peppol: is required and missing",
                "sellers[0].invoice_number_format: is required and missing",
                "billing_details[0].legal_name: is required and missing",
                "billing_details[0].address.city: is required and missing",
                "billing_details[0].invoice_email: is required and missing",
            ]
        );
        // Each problem also knows the line its entry starts on.
        let parsed = parse(text, |_| None);
        let lines: Vec<(String, Option<usize>)> = parsed
            .problems
            .iter()
            .map(|p| (p.path.clone(), p.line))
            .filter(|(path, _)| path.ends_with(".kvk") || path.ends_with(".invoice_email"))
            .collect();
        assert_eq!(
            lines,
            vec![
                ("sellers[0].kvk".to_string(), Some(9)),
                ("billing_details[0].invoice_email".to_string(), Some(3)),
            ]
        );
        assert_eq!(
            parsed.problems[1].with_line(),
            "sellers[0].kvk: is required and missing (line 9)"
        );
    }

    #[test]
    fn entries_of_a_flow_list_are_named_by_path_alone() {
        let parsed = parse(
            "customers: [{code: a, name: A, billing_cycle_start_day: 31}]\nbilling_details:\n- customer: a\n",
            |_| None,
        );
        let lines: Vec<(String, Option<usize>)> = parsed
            .problems
            .iter()
            .map(|p| (p.path.clone(), p.line))
            .collect();
        assert_eq!(
            lines[0],
            ("customers[0].billing_cycle_start_day".into(), None)
        );
        // An entry at the key's own indentation is still an entry.
        assert_eq!(lines[1], ("billing_details[0].valid_from".into(), Some(3)));
    }

    #[test]
    fn wrong_values_are_reported_with_what_they_should_be() {
        let text = PARTIES
            .replace("NL123456789B01", "NL12345678B01")
            .replace("NL91ABNA0417164300", "NL91ABNA0417164301")
            .replace("kvk: \"12345678\"", "kvk: \"1234567\"")
            .replace("{year}-{seq:06}", "{year}-{month}")
            .replace("scheme: \"0208\"", "scheme: \"0999\"")
            .replace(
                "payment_terms_days: 14",
                "payment_terms_days: 14\n    vat_category: AE",
            );
        let found = messages(&text);
        let fields: Vec<&str> = found
            .iter()
            .map(|m| m.split(':').next().unwrap_or_default())
            .collect();
        assert_eq!(
            fields,
            vec![
                "sellers[0].kvk",
                "sellers[0].vat_number",
                "sellers[0].iban",
                "sellers[0].invoice_number_format",
                "billing_details[1].peppol",
                "billing_details[1].vat_category",
            ],
            "{found:#?}"
        );
        assert!(
            found[1].contains("NL + 9 digits + B + 2 digits"),
            "{}",
            found[1]
        );
        assert!(found[2].contains("checksum"), "{}", found[2]);
    }

    #[test]
    fn a_changed_billing_version_lists_its_fields_and_a_new_version_is_created() {
        let parsed = parse(PARTIES, |_| None);
        let mut stored = Stored::default();
        let acme = &parsed.document.billing_details[0].details;
        let mut before = acme.clone();
        before.invoice_email = Some("old@acme.example".into());
        stored.billing_details.insert(
            ("acme".into(), acme.valid_from.unwrap()),
            billing_fields(&before),
        );
        let seller = &parsed.document.sellers[0].details;
        stored.sellers.insert(
            (seller.code.clone(), seller.valid_from),
            seller_fields(seller),
        );
        let changes = diff(&parsed.document, &stored);
        let of = |key: &str| changes.iter().find(|c| c.key == key).unwrap();
        assert_eq!(of("tem from 2025-01-01").action, Action::Unchanged);
        let acme_change = of("acme from 2025-01-01");
        assert_eq!(acme_change.action, Action::Updated);
        assert_eq!(
            acme_change
                .fields
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>(),
            vec!["invoice_email: old@acme.example -> ap@acme.example"]
        );
        assert_eq!(of("brussels from 2025-06-01").action, Action::Created);
    }

    #[test]
    fn a_billing_version_naming_an_unknown_seller_is_refused() {
        let parsed = parse(
            &PARTIES.replace(
                "seller: tem\n    legal_name: Brussels",
                "seller: other\n    legal_name: Brussels",
            ),
            |_| None,
        );
        assert!(parsed.is_valid(), "{:?}", parsed.problems);
        let problems = parsed.seller_reference_problems(&BTreeSet::new());
        assert_eq!(problems.len(), 1);
        assert_eq!(
            problems[0].to_string(),
            "billing_details[1].seller: no seller \"other\" in this file or the database; add a sellers entry for it"
        );
        assert!(parsed
            .seller_reference_problems(&BTreeSet::from(["other".to_string()]))
            .is_empty());
    }
}
