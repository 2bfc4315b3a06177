//! The bill-shock rule evaluated on import, right after a file's rows are
//! loaded, so the alert does not wait for the cycle's calculation: per
//! customer with a rule whose roaming data outside the EU the file
//! touched, that customer's world data from a day before the file's
//! earliest such CDR to a day after its latest, through
//! [`super::bill_shock::bill_shocks`]. A window over the limit is raised
//! once (a later import finding the same episode again raises nothing),
//! into the alert outbox in the same transaction; the caller publishes.
//!
//! The amounts are the carriers' costs (the CDRs are not rated yet at
//! import), and carrier data arrives late: each alert says the newest CDR
//! start it saw (`newest_cdr_at`).

use async_trait::async_trait;
use chrono::{DateTime, Duration, NaiveDate, Utc};
use serde_json::json;

use super::alerts::{Alert, AlertKind};
use super::bill_shock::{bill_shocks, Shock, UsageCdr};
use crate::cdr::{cycle_of, BadTimeZone};
use crate::ports::StoreError;

/// A customer with a bill-shock rule whose world data the import touched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShockCustomer {
    pub customer_id: i64,
    /// Its code (or id).
    pub customer: String,
    pub limit_micros: i64,
    pub start_day: u32,
    pub time_zone: String,
    /// The file's earliest and latest world-data CDR start of the customer.
    pub first_at: DateTime<Utc>,
    pub last_at: DateTime<Utc>,
}

/// What the rule reads and writes (`adapters::budgets` on PostgreSQL).
#[async_trait]
pub trait BillShockStore: Send + Sync {
    /// Of `customer_ids`, those with a bill-shock rule valid today whose
    /// roaming data outside the EU the file `import_file_id` loaded.
    async fn customers(
        &self,
        import_file_id: i64,
        customer_ids: &[i64],
    ) -> Result<Vec<ShockCustomer>, StoreError>;
    /// The customer's world-data CDRs started within `[from, to]`.
    async fn world_data(
        &self,
        customer_id: i64,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<UsageCdr>, StoreError>;
    /// Records the shock and its alert (outbox, insight of `cycle`) in
    /// one transaction, unless a window overlapping it was alerted
    /// before; true when it was raised now.
    async fn raise(
        &self,
        customer_id: i64,
        cycle: NaiveDate,
        import_file_id: i64,
        shock: &Shock,
        alert: &Alert,
    ) -> Result<bool, StoreError>;
}

#[derive(Debug, thiserror::Error)]
pub enum BillShockError {
    #[error("database error: {0}")]
    Store(#[from] StoreError),
    #[error(transparent)]
    TimeZone(#[from] BadTimeZone),
}

/// Evaluates the rule for the customers an import touched; answers the
/// alerts raised now (each in the outbox, to publish).
pub async fn evaluate_import(
    store: &dyn BillShockStore,
    import_file_id: i64,
    customer_ids: &[i64],
) -> Result<Vec<Alert>, BillShockError> {
    let mut raised = Vec::new();
    if customer_ids.is_empty() {
        return Ok(raised);
    }
    let day = Duration::days(1);
    for customer in store.customers(import_file_id, customer_ids).await? {
        let zone = BadTimeZone::parse(customer.customer_id, &customer.time_zone)?;
        let cdrs = store
            .world_data(
                customer.customer_id,
                customer.first_at - day,
                customer.last_at + day,
            )
            .await?;
        for shock in bill_shocks(&cdrs, customer.limit_micros) {
            let alert = Alert::new(
                customer.customer_id,
                &customer.customer,
                AlertKind::BillShock,
                json!({
                    "subscription": shock.subscription,
                    "window_start": shock.window_start,
                    "window_end": shock.window_end,
                    "amount_micros": shock.amount_micros,
                    "limit_micros": shock.limit_micros,
                    "newest_cdr_at": shock.newest_cdr_at,
                    "import_file_id": import_file_id,
                    "note": "provider costs of roaming data outside the EU within a day; carrier data arrives late, newest_cdr_at is the newest CDR start seen",
                }),
            )
            .with("subscription", &shock.subscription)
            .with("threshold", shock.limit_micros)
            .with("newest_cdr_at", shock.newest_cdr_at.to_rfc3339());
            let cycle = cycle_of(shock.window_start, customer.start_day, zone);
            if store
                .raise(customer.customer_id, cycle, import_file_id, &shock, &alert)
                .await?
            {
                raised.push(alert);
            }
        }
    }
    Ok(raised)
}
