//! An invoice's document amounts: from its lines in integer micro-units to
//! the 2-decimal amounts an EN 16931 document states, such that the
//! standard's arithmetic rules hold exactly, not within a tolerance.
//!
//! # The rounding rule
//!
//! Every amount is an integer number of cents (`i64`), and each rounding
//! is half away from zero (0.005 -> 0.01, -0.005 -> -0.01), so a credit
//! note is exactly the negation of the invoice it reverses.
//!
//! 1. Each line's net amount (BT-131), and each document-level allowance
//!    (BT-92) and charge (BT-99), is rounded from micro-units to cents
//!    **once**. Nothing is summed before it is rounded.
//! 2. Everything the document sums is a sum of those rounded amounts:
//!    BT-106 = sum of line nets (BR-CO-10), BT-107 = sum of allowances
//!    (BR-CO-11), BT-108 = sum of charges (BR-CO-12), BT-109 = BT-106 -
//!    BT-107 + BT-108 (BR-CO-13).
//! 3. Per VAT category and rate, the taxable amount (BT-116) is the sum of
//!    that category's rounded line nets and charges minus its allowances,
//!    and its VAT (BT-117) is taxable x rate / 100, computed exactly (the
//!    rate is an integer number of hundredths of a percent) and rounded to
//!    cents **once** (BR-CO-17). VAT is never computed per line, so no
//!    rounding differences accumulate.
//! 4. BT-110 = sum of the categories' VAT (BR-CO-14); BT-112 = BT-109 +
//!    BT-110 (BR-CO-15); BT-115 = BT-112 - BT-113 (paid) + BT-114
//!    (rounding, always 0: tem states amounts to the cent) (BR-CO-16).
//!
//! The sum of the rounded line nets can differ from the micro-unit total
//! by at most half a cent per line; that difference is the price of
//! stating every line to the cent, and the document is consistent with
//! itself, which is what a receiving accounts-payable system checks.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::billing::vat::{Exemption, LineVat};

/// Micro-units in a cent.
const MICROS_PER_CENT: i128 = 10_000;
/// Hundredths of a percent in a whole: a rate in basis points divides by it.
const BP_PER_WHOLE: i128 = 10_000;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AmountsError {
    #[error("the invoice's amounts overflow 64-bit cents; split the invoice or check its lines for a wrong price")]
    Overflow,
}

/// `numerator / denominator` rounded half away from zero; `denominator` > 0.
fn div_round(numerator: i128, denominator: i128) -> i128 {
    let half = denominator / 2;
    if numerator >= 0 {
        (numerator + half) / denominator
    } else {
        -((-numerator + half) / denominator)
    }
}

fn cents(value: i128) -> Result<i64, AmountsError> {
    i64::try_from(value).map_err(|_| AmountsError::Overflow)
}

/// Micro-units to cents, half away from zero (rule 1).
pub fn micros_to_cents(micros: i64) -> i64 {
    // |micros| / 10,000 always fits an i64.
    div_round(i128::from(micros), MICROS_PER_CENT) as i64
}

/// A category's VAT: `taxable_cents` x rate, rounded to cents once (rule 3).
pub fn vat_cents(taxable_cents: i64, vat: LineVat) -> Result<i64, AmountsError> {
    cents(div_round(
        i128::from(taxable_cents) * i128::from(vat.rate.0),
        BP_PER_WHOLE,
    ))
}

/// An amount in micro-units with its VAT: a line, or a document-level
/// allowance or charge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Taxed {
    pub amount_micros: i64,
    pub vat: LineVat,
}

/// One row of the VAT breakdown (BG-23).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VatSubtotal {
    pub vat: LineVat,
    /// BT-116.
    pub taxable_cents: i64,
    /// BT-117.
    pub vat_cents: i64,
    /// BT-120/BT-121, for the categories that need a reason.
    pub exemption: Option<Exemption>,
}

/// The document amounts of an invoice, each in cents.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DocumentAmounts {
    /// BT-131 per line, in the order of the lines given.
    pub line_net_cents: Vec<i64>,
    /// BT-92 per document-level allowance.
    pub allowance_cents: Vec<i64>,
    /// BT-99 per document-level charge.
    pub charge_cents: Vec<i64>,
    /// BT-106.
    pub line_total_cents: i64,
    /// BT-107.
    pub allowance_total_cents: i64,
    /// BT-108.
    pub charge_total_cents: i64,
    /// BT-109.
    pub tax_exclusive_cents: i64,
    /// BT-110.
    pub vat_total_cents: i64,
    /// BT-112.
    pub tax_inclusive_cents: i64,
    /// BT-113.
    pub prepaid_cents: i64,
    /// BT-114.
    pub rounding_cents: i64,
    /// BT-115.
    pub payable_cents: i64,
    /// BG-23, by category and rate.
    pub breakdown: Vec<VatSubtotal>,
}

fn sum(values: &[i64]) -> Result<i64, AmountsError> {
    values
        .iter()
        .try_fold(0i64, |acc, v| acc.checked_add(*v))
        .ok_or(AmountsError::Overflow)
}

/// The document amounts of `lines`, `allowances` and `charges` with
/// `prepaid_cents` already paid, by the rule in the module docs.
pub fn document_amounts(
    lines: &[Taxed],
    allowances: &[Taxed],
    charges: &[Taxed],
    prepaid_cents: i64,
) -> Result<DocumentAmounts, AmountsError> {
    let round = |items: &[Taxed]| -> Vec<i64> {
        items
            .iter()
            .map(|t| micros_to_cents(t.amount_micros))
            .collect()
    };
    let line_net_cents = round(lines);
    let allowance_cents = round(allowances);
    let charge_cents = round(charges);

    let line_total_cents = sum(&line_net_cents)?;
    let allowance_total_cents = sum(&allowance_cents)?;
    let charge_total_cents = sum(&charge_cents)?;
    let tax_exclusive_cents = line_total_cents
        .checked_sub(allowance_total_cents)
        .and_then(|v| v.checked_add(charge_total_cents))
        .ok_or(AmountsError::Overflow)?;

    // Per (category, rate): lines and charges add, allowances subtract.
    let mut taxable: BTreeMap<LineVat, i64> = BTreeMap::new();
    let signed = lines
        .iter()
        .zip(&line_net_cents)
        .map(|(t, c)| (t.vat, *c))
        .chain(charges.iter().zip(&charge_cents).map(|(t, c)| (t.vat, *c)))
        .chain(
            allowances
                .iter()
                .zip(&allowance_cents)
                .map(|(t, c)| (t.vat, c.checked_neg().unwrap_or(i64::MAX))),
        );
    for (vat, amount) in signed {
        let base = taxable.entry(vat).or_insert(0);
        *base = base.checked_add(amount).ok_or(AmountsError::Overflow)?;
    }
    let breakdown = taxable
        .into_iter()
        .map(|(vat, taxable_cents)| {
            Ok(VatSubtotal {
                vat,
                taxable_cents,
                vat_cents: vat_cents(taxable_cents, vat)?,
                exemption: vat.category.exemption(),
            })
        })
        .collect::<Result<Vec<_>, AmountsError>>()?;

    let vat_total_cents = sum(&breakdown.iter().map(|b| b.vat_cents).collect::<Vec<_>>())?;
    let tax_inclusive_cents = tax_exclusive_cents
        .checked_add(vat_total_cents)
        .ok_or(AmountsError::Overflow)?;
    let rounding_cents = 0;
    let payable_cents = tax_inclusive_cents
        .checked_sub(prepaid_cents)
        .and_then(|v| v.checked_add(rounding_cents))
        .ok_or(AmountsError::Overflow)?;
    Ok(DocumentAmounts {
        line_net_cents,
        allowance_cents,
        charge_cents,
        line_total_cents,
        allowance_total_cents,
        charge_total_cents,
        tax_exclusive_cents,
        vat_total_cents,
        tax_inclusive_cents,
        prepaid_cents,
        rounding_cents,
        payable_cents,
        breakdown,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::billing::vat::{RateBp, VatCategory};
    use proptest::prelude::*;

    fn standard(rate: u32) -> LineVat {
        LineVat {
            category: VatCategory::S,
            rate: RateBp(rate),
        }
    }

    fn reverse() -> LineVat {
        LineVat {
            category: VatCategory::AE,
            rate: RateBp(0),
        }
    }

    fn line(micros: i64, vat: LineVat) -> Taxed {
        Taxed {
            amount_micros: micros,
            vat,
        }
    }

    #[test]
    fn half_a_cent_rounds_away_from_zero_both_ways() {
        assert_eq!(micros_to_cents(5_000), 1);
        assert_eq!(micros_to_cents(4_999), 0);
        assert_eq!(micros_to_cents(-5_000), -1);
        assert_eq!(micros_to_cents(-4_999), 0);
        assert_eq!(micros_to_cents(12_345_678), 1_235);
        assert_eq!(micros_to_cents(i64::MIN), -922_337_203_685_478);
    }

    #[test]
    fn vat_is_taken_once_from_the_category_base_not_summed_per_line() {
        // Eleven lines of 0.07 at 21%: VAT per line would be 0.0147 -> 0.01,
        // 0.11 in all; on the category base of 0.77 it is 0.1617 -> 0.16.
        let lines: Vec<Taxed> = (0..11).map(|_| line(70_000, standard(2100))).collect();
        let amounts = document_amounts(&lines, &[], &[], 0).unwrap();
        assert_eq!(amounts.line_total_cents, 77);
        assert_eq!(amounts.breakdown.len(), 1);
        assert_eq!(amounts.breakdown[0].taxable_cents, 77);
        assert_eq!(amounts.breakdown[0].vat_cents, 16);
        assert_eq!(amounts.tax_inclusive_cents, 93);
    }

    #[test]
    fn each_category_and_rate_is_its_own_breakdown_row_with_its_exemption() {
        let amounts = document_amounts(
            &[
                line(10_000_000, standard(2100)),
                line(2_500_000, reverse()),
                line(1_000_000, standard(900)),
            ],
            &[line(1_000_000, standard(2100))],
            &[line(500_000, standard(900))],
            100,
        )
        .unwrap();
        let rows: Vec<(VatCategory, u32, i64, i64, Option<&str>)> = amounts
            .breakdown
            .iter()
            .map(|b| {
                (
                    b.vat.category,
                    b.vat.rate.0,
                    b.taxable_cents,
                    b.vat_cents,
                    b.exemption.map(|e| e.code),
                )
            })
            .collect();
        assert_eq!(
            rows,
            vec![
                (VatCategory::S, 900, 150, 14, None),
                (VatCategory::S, 2100, 900, 189, None),
                (VatCategory::AE, 0, 250, 0, Some("VATEX-EU-AE")),
            ]
        );
        assert_eq!(amounts.tax_exclusive_cents, 1_300);
        assert_eq!(amounts.vat_total_cents, 203);
        assert_eq!(amounts.payable_cents, 1_300 + 203 - 100);
    }

    #[test]
    fn amounts_that_do_not_fit_in_cents_are_an_error_not_a_wrap() {
        let huge = [
            line(i64::MAX, standard(2100)),
            line(i64::MAX, standard(2100)),
        ];
        // Two lines of i64::MAX micros fit as cents; their VAT on a rate
        // of 100% does not overflow either, but 10,000 such lines would.
        assert!(document_amounts(&huge, &[], &[], 0).is_ok());
        let many: Vec<Taxed> = (0..20_000)
            .map(|_| line(i64::MAX, standard(2100)))
            .collect();
        assert_eq!(
            document_amounts(&many, &[], &[], 0),
            Err(AmountsError::Overflow)
        );
    }

    fn vat_strategy() -> impl Strategy<Value = LineVat> {
        prop_oneof![
            Just(standard(2100)),
            Just(standard(900)),
            Just(standard(1950)),
            Just(reverse()),
            Just(LineVat {
                category: VatCategory::Z,
                rate: RateBp(0)
            }),
            (0u32..=10_000).prop_map(standard),
        ]
    }

    fn taxed_strategy() -> impl Strategy<Value = Taxed> {
        // Up to a million euros a line, either sign (corrections are negative).
        (-1_000_000_000_000i64..=1_000_000_000_000, vat_strategy())
            .prop_map(|(amount_micros, vat)| Taxed { amount_micros, vat })
    }

    /// BR-CO-17 as the standard words it, checked independently of
    /// `vat_cents`: the stated VAT is the exact product rounded to two
    /// decimals, i.e. within half a cent of it, a tie going away from zero.
    fn br_co_17(taxable: i64, rate: u32, vat: i64) -> bool {
        let exact = i128::from(taxable) * i128::from(rate); // in 1/10,000 cent
        let stated = i128::from(vat) * 10_000;
        let off = (stated - exact).abs() * 2;
        off < 10_000 || off == 10_000 && stated.abs() > exact.abs()
    }

    #[test]
    fn the_br_co_17_oracle_refuses_a_cent_off_and_a_tie_rounded_towards_zero() {
        assert!(br_co_17(77, 2100, 16));
        assert!(!br_co_17(77, 2100, 17));
        assert!(!br_co_17(77, 2100, 15));
        // 0.50 at 1% is exactly half a cent: away from zero, either sign.
        assert!(br_co_17(50, 100, 1) && !br_co_17(50, 100, 0));
        assert!(br_co_17(-50, 100, -1) && !br_co_17(-50, 100, 0));
        assert_eq!(vat_cents(-50, standard(100)), Ok(-1));
    }

    proptest! {
        #![proptest_config(crate::proptest_config::fixed(512, 0x5eed_1816_c0de_0017))]

        #[test]
        fn random_invoices_satisfy_br_co_10_to_17_exactly(
            lines in prop::collection::vec(taxed_strategy(), 0..60),
            allowances in prop::collection::vec(taxed_strategy(), 0..4),
            charges in prop::collection::vec(taxed_strategy(), 0..4),
            prepaid in -1_000_000i64..=1_000_000,
        ) {
            let a = document_amounts(&lines, &allowances, &charges, prepaid).unwrap();
            // BR-CO-10, 11, 12.
            prop_assert_eq!(a.line_total_cents, a.line_net_cents.iter().sum::<i64>());
            prop_assert_eq!(a.allowance_total_cents, a.allowance_cents.iter().sum::<i64>());
            prop_assert_eq!(a.charge_total_cents, a.charge_cents.iter().sum::<i64>());
            // BR-CO-13.
            prop_assert_eq!(
                a.tax_exclusive_cents,
                a.line_total_cents - a.allowance_total_cents + a.charge_total_cents
            );
            // BR-CO-14.
            prop_assert_eq!(a.vat_total_cents, a.breakdown.iter().map(|b| b.vat_cents).sum::<i64>());
            // BR-CO-15, 16.
            prop_assert_eq!(a.tax_inclusive_cents, a.tax_exclusive_cents + a.vat_total_cents);
            prop_assert_eq!(a.payable_cents, a.tax_inclusive_cents - a.prepaid_cents + a.rounding_cents);
            // BR-CO-17, and each category's base is its lines and charges
            // less its allowances (BR-S-08 and its siblings).
            for row in &a.breakdown {
                prop_assert!(br_co_17(row.taxable_cents, row.vat.rate.0, row.vat_cents), "{:?}", row);
                let of = |items: &[Taxed], cents: &[i64]| -> i64 {
                    items.iter().zip(cents).filter(|(t, _)| t.vat == row.vat).map(|(_, c)| *c).sum()
                };
                prop_assert_eq!(
                    row.taxable_cents,
                    of(&lines, &a.line_net_cents) + of(&charges, &a.charge_cents) - of(&allowances, &a.allowance_cents)
                );
            }
            // The categories' bases add up to BT-109.
            prop_assert_eq!(a.breakdown.iter().map(|b| b.taxable_cents).sum::<i64>(), a.tax_exclusive_cents);
            // Each line is its micro-units to the nearest cent.
            for (t, c) in lines.iter().zip(&a.line_net_cents) {
                prop_assert!((i128::from(*c) * 10_000 - i128::from(t.amount_micros)).abs() * 2 <= 10_000);
            }
        }

        #[test]
        fn a_negated_invoice_has_exactly_the_negated_amounts(
            lines in prop::collection::vec(taxed_strategy(), 0..40),
        ) {
            let negated: Vec<Taxed> = lines
                .iter()
                .map(|t| Taxed { amount_micros: -t.amount_micros, vat: t.vat })
                .collect();
            let a = document_amounts(&lines, &[], &[], 0).unwrap();
            let b = document_amounts(&negated, &[], &[], 0).unwrap();
            prop_assert_eq!(b.payable_cents, -a.payable_cents);
            prop_assert_eq!(b.vat_total_cents, -a.vat_total_cents);
            let rows = |d: &DocumentAmounts| -> Vec<(LineVat, i64, i64)> {
                d.breakdown.iter().map(|r| (r.vat, r.taxable_cents, r.vat_cents)).collect()
            };
            let negated_rows: Vec<(LineVat, i64, i64)> =
                rows(&a).into_iter().map(|(v, t, c)| (v, -t, -c)).collect();
            prop_assert_eq!(rows(&b), negated_rows);
        }
    }
}
