//! The billing domain's stores on PostgreSQL: each module implements the
//! narrow traits of the `billing` module of its name and holds all of that
//! module's SQL, so rating, the totals arithmetic, insights and invoices
//! see no sqlx type. The convenience entry points (`explain_cdr(pool, ..)`,
//! `generate_invoice(pool, ..)`, ...) wire those stores to a pool for
//! `temctl`, the bench and the tests.

pub mod explain;
pub mod pricings;
