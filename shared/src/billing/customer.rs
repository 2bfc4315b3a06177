//! A customer's billing settings for one cycle, read the same way by every
//! billing step: a cycle date that is not one of the customer's cycle
//! starts, a time zone that is not an IANA name or a plan that does not
//! parse is an error, never a silent default.

use async_trait::async_trait;
use chrono::{Datelike, NaiveDate};
use chrono_tz::Tz;
use serde_json::Value;

use crate::billing::rating::RatePlan;
use crate::ports::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum CustomerError {
    #[error("customer {0} does not exist")]
    UnknownCustomer(i64),
    #[error("{cycle} is not a cycle start of customer {customer} (cycles start on day {day})")]
    NotACycle {
        customer: i64,
        cycle: NaiveDate,
        day: u32,
    },
    #[error("customer {customer} has time zone {zone:?}, which is not an IANA zone name; correct the customer's time_zone with temctl apply")]
    BadTimeZone { customer: i64, zone: String },
    #[error("rate plan {0} is not valid: {1}; fix it with temctl apply")]
    BadPlan(String, String),
    #[error("database error: {0}")]
    Store(#[from] StoreError),
}

impl CustomerError {
    /// Only a store failure can go away on a retry.
    pub fn is_retryable(&self) -> bool {
        matches!(self, CustomerError::Store(e) if e.retryable)
    }
}

/// Where billing reads a customer's settings (`adapters::billing::customer`
/// on PostgreSQL).
#[async_trait]
pub trait CustomerSettings: Send + Sync {
    /// The customer's settings, checked against the cycle being billed.
    async fn load(
        &self,
        customer_id: i64,
        cycle: NaiveDate,
    ) -> Result<BillingCustomer, CustomerError>;
}

#[derive(Debug, Clone)]
pub struct BillingCustomer {
    pub id: i64,
    pub start_day: u32,
    pub zone: Tz,
    pub plan_id: Option<String>,
    /// The plan document as stored, and parsed.
    pub plan: Option<(Value, RatePlan)>,
}

impl BillingCustomer {
    /// The customer's settings as stored, checked against the cycle.
    pub fn from_settings(
        customer_id: i64,
        cycle: NaiveDate,
        start_day: i16,
        zone_name: String,
        plan_id: Option<String>,
        plan: Option<Value>,
    ) -> Result<Self, CustomerError> {
        let start_day = u32::try_from(start_day).unwrap_or(0);
        if cycle.day() != start_day {
            return Err(CustomerError::NotACycle {
                customer: customer_id,
                cycle,
                day: start_day,
            });
        }
        let zone: Tz = zone_name.parse().map_err(|_| CustomerError::BadTimeZone {
            customer: customer_id,
            zone: zone_name.clone(),
        })?;
        let plan = match plan {
            Some(document) => {
                let parsed = serde_json::from_value(document.clone()).map_err(|e| {
                    CustomerError::BadPlan(plan_id.clone().unwrap_or_default(), e.to_string())
                })?;
                Some((document, parsed))
            }
            None => None,
        };
        Ok(Self {
            id: customer_id,
            start_day,
            zone,
            plan_id,
            plan,
        })
    }

    pub fn rate_plan(&self) -> Option<&RatePlan> {
        self.plan.as_ref().map(|(_, plan)| plan)
    }
}
