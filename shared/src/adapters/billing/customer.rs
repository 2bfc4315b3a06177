//! A customer's billing settings on PostgreSQL ([`CustomerSettings`]): the
//! customer row with its rate plan's document, checked by
//! [`BillingCustomer::from_settings`].

use async_trait::async_trait;
use chrono::NaiveDate;
use sqlx::{PgPool, Row};

use crate::billing::customer::{BillingCustomer, CustomerError, CustomerSettings};

/// Reads each customer's settings from the pool, one statement a load.
#[derive(Clone)]
pub struct PgCustomerSettings {
    pool: PgPool,
}

impl PgCustomerSettings {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }
}

#[async_trait]
impl CustomerSettings for PgCustomerSettings {
    async fn load(
        &self,
        customer_id: i64,
        cycle: NaiveDate,
    ) -> Result<BillingCustomer, CustomerError> {
        let row = sqlx::query(
            "SELECT c.billing_cycle_start_day, c.time_zone, c.rate_plan_id, p.plan
             FROM customer c LEFT JOIN rate_plan p ON p.id = c.rate_plan_id WHERE c.id = $1",
        )
        .bind(customer_id)
        .fetch_optional(&self.pool)
        .await?
        .ok_or(CustomerError::UnknownCustomer(customer_id))?;
        BillingCustomer::from_settings(
            customer_id,
            cycle,
            row.try_get::<i16, _>("billing_cycle_start_day")?,
            row.try_get("time_zone")?,
            row.try_get("rate_plan_id")?,
            row.try_get("plan")?,
        )
    }
}
