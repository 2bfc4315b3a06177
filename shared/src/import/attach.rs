//! CDRs that arrived before their subscription was known are kept without a
//! customer. Once the subscription exists, attaching them gives them their
//! customer, marks every (customer, cycle) they join as changed, and the
//! totals of those cycles are recalculated.

use chrono::{DateTime, NaiveDate, Utc};
use chrono_tz::Tz;
use sqlx::{PgPool, Row};

use crate::cdr::changes::{self, ChangeSource, ChangedCycles};
use crate::cdr::{cycle_of, BadTimeZone};

/// Why attaching failed.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error(transparent)]
    TimeZone(#[from] BadTimeZone),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Attached {
    pub cdrs: u64,
    pub touched: Vec<(i64, NaiveDate)>,
}

/// Attaches every customer-less CDR whose subscription is now known and
/// active on the CDR's local date. Idempotent: a second run finds nothing.
pub async fn attach_unassigned(pool: &PgPool) -> Result<Attached, AttachError> {
    let mut tx = pool.begin().await?;
    // Before the UPDATE: this transaction marks its cycles itself, so the
    // hand-edit trigger leaves it alone.
    changes::mark(&mut tx, &ChangedCycles::default(), ChangeSource::Attach).await?;
    let rows = sqlx::query(
        "UPDATE call_detail_record r
            SET customer_id = s.customer_id
           FROM subscription s
           JOIN customer c ON c.id = s.customer_id
          WHERE r.customer_id IS NULL
            AND s.provider = r.provider
            AND s.identifier = r.subscription
            AND (r.started_at AT TIME ZONE c.time_zone)::date >= s.active_from
            AND (s.active_to IS NULL OR (r.started_at AT TIME ZONE c.time_zone)::date <= s.active_to)
      RETURNING r.customer_id, r.started_at, c.billing_cycle_start_day, c.time_zone",
    )
    .fetch_all(&mut *tx)
    .await?;
    let mut touched = ChangedCycles::default();
    for row in &rows {
        let customer: i64 = row.try_get("customer_id")?;
        let at: DateTime<Utc> = row.try_get("started_at")?;
        let day: i16 = row.try_get("billing_cycle_start_day")?;
        let zone: String = row.try_get("time_zone")?;
        let zone: Tz = BadTimeZone::parse(customer, &zone)?;
        touched.touch(customer, cycle_of(at, day as u32, zone), at);
    }
    changes::mark(&mut tx, &touched, ChangeSource::Attach).await?;
    tx.commit().await?;
    Ok(Attached {
        cdrs: rows.len() as u64,
        touched: touched.cycles(),
    })
}
