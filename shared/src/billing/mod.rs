//! Billing: pricing each customer's cycle (`calculation`, `rating`), its
//! totals and their history, insights and invoices (with their parties,
//! VAT, numbers and document amounts), and how one CDR was priced
//! (`explain`). Cycles themselves are CDR vocabulary (`crate::cdr`).

pub mod calculation;
pub mod customer;
pub mod document;
mod encoding;
pub mod explain;
pub mod handler;
pub mod history;
pub mod insight;
pub mod invoice;
pub mod invoice_view;
pub mod issue;
pub mod numbering;
pub mod parties;
pub mod pricings;
pub mod rating;
pub mod specification;
pub mod sweep;
pub mod totals;
pub mod vat;

/// Micro-units as euros with all six decimals, exactly (no float).
pub fn euros(micros: i64) -> String {
    let sign = if micros < 0 { "-" } else { "" };
    let abs = micros.unsigned_abs();
    format!("{sign}{}.{:06}", abs / 1_000_000, abs % 1_000_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn euros_show_every_micro_unit_exactly() {
        assert_eq!(euros(0), "0.000000");
        assert_eq!(euros(1), "0.000001");
        assert_eq!(euros(12_500_000), "12.500000");
        assert_eq!(euros(-1_234_567), "-1.234567");
        assert_eq!(euros(i64::MIN), "-9223372036854.775808");
    }
}
