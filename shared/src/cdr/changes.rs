//! Marks of changed cycles: every writer that changes CDRs records, in the
//! same transaction, which customer's cycle it changed and the earliest
//! `started_at` it touched. The next calculation of that cycle restarts at
//! the last checkpoint before it (`billing::calculation`); `temctl explain`
//! reads the same marks to say whether a CDR's pricing is current. Hand
//! edits and deletions in SQL are marked by triggers
//! (migrations/0010_incremental_totals.sql).

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDate, Utc};
use sqlx::PgConnection;

/// Who changed the CDRs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeSource {
    Import,
    Attach,
    HandEdit,
    Deletion,
}

impl ChangeSource {
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeSource::Import => "import",
            ChangeSource::Attach => "attach",
            ChangeSource::HandEdit => "hand_edit",
            ChangeSource::Deletion => "deletion",
        }
    }
}

/// Changed cycles, each with the earliest `started_at` changed in it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChangedCycles(BTreeMap<(i64, NaiveDate), DateTime<Utc>>);

impl ChangedCycles {
    pub fn touch(&mut self, customer_id: i64, cycle: NaiveDate, started_at: DateTime<Utc>) {
        self.0
            .entry((customer_id, cycle))
            .and_modify(|at| *at = (*at).min(started_at))
            .or_insert(started_at);
    }

    pub fn extend(&mut self, other: &ChangedCycles) {
        for (&(customer, cycle), &at) in &other.0 {
            self.touch(customer, cycle, at);
        }
    }

    pub fn cycles(&self) -> Vec<(i64, NaiveDate)> {
        self.0.keys().copied().collect()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = (i64, NaiveDate, DateTime<Utc>)> + '_ {
        self.0.iter().map(|(&(c, cycle), &at)| (c, cycle, at))
    }
}

/// Records the changes, in the writer's transaction. It also tells the
/// hand-edit triggers that this transaction marks by itself, so call it
/// before the writer's UPDATE or DELETE of CDRs.
pub async fn mark(
    tx: &mut PgConnection,
    changes: &ChangedCycles,
    source: ChangeSource,
) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT set_config('tem.cycle_changes_marked', 'on', true)")
        .execute(&mut *tx)
        .await?;
    if changes.is_empty() {
        return Ok(());
    }
    let (customers, cycles, froms): (Vec<i64>, Vec<NaiveDate>, Vec<DateTime<Utc>>) =
        changes.iter().fold(
            (vec![], vec![], vec![]),
            |(mut a, mut b, mut c), (x, y, z)| {
                a.push(x);
                b.push(y);
                c.push(z);
                (a, b, c)
            },
        );
    sqlx::query(
        "INSERT INTO cycle_change (customer_id, cycle, changed_from, source)
         SELECT *, $4 FROM UNNEST($1::bigint[], $2::date[], $3::timestamptz[])",
    )
    .bind(customers)
    .bind(cycles)
    .bind(froms)
    .bind(source.as_str())
    .execute(&mut *tx)
    .await?;
    Ok(())
}
