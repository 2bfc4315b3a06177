//! The chargeback's store on PostgreSQL ([`CostStore`]): a customer's cost
//! tree and assignments (migration 0015, written by `temctl apply`) and
//! the lines of a cycle's main invoice. Each read is its own statement on
//! the pool; the catalog reads nodes and assignments with the same row
//! readers.

use std::collections::BTreeMap;

use async_trait::async_trait;
use chrono::NaiveDate;
use serde_json::Value;
use sqlx::postgres::PgRow;
use sqlx::{PgPool, Row};

use crate::catalog::cost_centres::parse_kind;
use crate::costs::allocation::{Assignment, Share};
use crate::costs::cycle::{
    self, CostCustomer, CostStore, CostsError, CycleAllocation, CycleInvoice, InvoiceCharge,
};
use crate::costs::export::{ChargebackStore, PendingChargeback, StoredChargeback};
use crate::costs::tree::CostNode;
use crate::costs::ChargeClass;
use crate::ports::StoreError;

fn decode(column: &str, e: impl std::error::Error + Send + Sync + 'static) -> sqlx::Error {
    sqlx::Error::ColumnDecode {
        index: column.to_string(),
        source: Box::new(e),
    }
}

#[derive(Debug, thiserror::Error)]
#[error("unknown {what} {value:?}")]
struct Unknown {
    what: &'static str,
    value: String,
}

/// A `cost_node` row (columns code, name, kind, parent_code, gl_codes).
pub fn node_from_row(row: &PgRow) -> Result<CostNode, sqlx::Error> {
    let kind: String = row.try_get("kind")?;
    let gl_codes: Value = row.try_get("gl_codes")?;
    Ok(CostNode {
        code: row.try_get("code")?,
        name: row.try_get("name")?,
        kind: parse_kind(&kind).ok_or_else(|| {
            decode(
                "kind",
                Unknown {
                    what: "node kind",
                    value: kind.clone(),
                },
            )
        })?,
        parent: row.try_get("parent_code")?,
        gl_codes: serde_json::from_value(gl_codes).map_err(|e| decode("gl_codes", e))?,
    })
}

/// A `cost_assignment` row (columns subscription, valid_from, shares,
/// by_class).
pub fn assignment_from_row(row: &PgRow) -> Result<Assignment, sqlx::Error> {
    let shares: Value = row.try_get("shares")?;
    let by_class: Value = row.try_get("by_class")?;
    Ok(Assignment {
        subscription: row.try_get("subscription")?,
        valid_from: row.try_get("valid_from")?,
        default: serde_json::from_value::<Vec<Share>>(shares).map_err(|e| decode("shares", e))?,
        by_class: serde_json::from_value::<BTreeMap<ChargeClass, Vec<Share>>>(by_class)
            .map_err(|e| decode("by_class", e))?,
    })
}

#[derive(Clone)]
pub struct PgCosts {
    pool: PgPool,
}

impl PgCosts {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }
}

#[async_trait]
impl CostStore for PgCosts {
    async fn customers(&self, id_or_code: &str) -> Result<Vec<CostCustomer>, StoreError> {
        let id: Option<i64> = id_or_code.parse().ok();
        let rows = sqlx::query(
            "SELECT id, code, name FROM customer WHERE id = $1 OR code = $2 ORDER BY id",
        )
        .bind(id)
        .bind(id_or_code)
        .fetch_all(&self.pool)
        .await?;
        let mut out = Vec::new();
        for row in rows {
            out.push(CostCustomer {
                id: row.try_get("id")?,
                code: row.try_get("code")?,
                name: row.try_get("name")?,
            });
        }
        Ok(out)
    }

    async fn tree(&self, customer_id: i64) -> Result<Vec<CostNode>, StoreError> {
        let rows = sqlx::query(
            "SELECT code, name, kind, parent_code, gl_codes FROM cost_node WHERE customer_id = $1 ORDER BY code",
        )
        .bind(customer_id)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(node_from_row)
            .collect::<Result<_, sqlx::Error>>()?)
    }

    async fn assignments(&self, customer_id: i64) -> Result<Vec<Assignment>, StoreError> {
        let rows = sqlx::query(
            "SELECT subscription, valid_from, shares, by_class FROM cost_assignment
             WHERE customer_id = $1 ORDER BY subscription, valid_from",
        )
        .bind(customer_id)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(assignment_from_row)
            .collect::<Result<_, sqlx::Error>>()?)
    }

    async fn invoice(
        &self,
        customer_id: i64,
        cycle: NaiveDate,
    ) -> Result<Option<CycleInvoice>, StoreError> {
        let Some(row) = sqlx::query(
            "SELECT id, status, total_micros FROM invoice
             WHERE customer_id = $1 AND cycle = $2 AND sequence = 0",
        )
        .bind(customer_id)
        .bind(cycle)
        .fetch_optional(&self.pool)
        .await?
        else {
            return Ok(None);
        };
        let id: i64 = row.try_get("id")?;
        let rows = sqlx::query(
            "SELECT subscription, kind, amount_micros, vat_category FROM invoice_line
             WHERE invoice_id = $1 ORDER BY line_no",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await?;
        let mut lines = Vec::with_capacity(rows.len());
        for row in rows {
            let kind: String = row.try_get("kind")?;
            lines.push(InvoiceCharge {
                subscription: row.try_get("subscription")?,
                class: kind.parse().map_err(|_| {
                    decode(
                        "kind",
                        Unknown {
                            what: "invoice line kind",
                            value: kind.clone(),
                        },
                    )
                })?,
                amount_micros: row.try_get("amount_micros")?,
                vat_category: row.try_get("vat_category")?,
            });
        }
        Ok(Some(CycleInvoice {
            id,
            status: row.try_get("status")?,
            total_micros: row.try_get("total_micros")?,
            lines,
        }))
    }
}

/// The chargeback of `customer` (id or code) for the cycle starting
/// `cycle`, read from `pool`: for `temctl`, the local run and the tests.
pub async fn cycle_allocation(
    pool: &PgPool,
    customer: &str,
    cycle: NaiveDate,
) -> Result<CycleAllocation, CostsError> {
    let store = PgCosts::new(pool.clone());
    let customer = cycle::find_customer(&store, customer).await?;
    cycle::allocate_cycle(&store, customer, cycle).await
}

#[async_trait]
impl ChargebackStore for PgCosts {
    async fn pending(
        &self,
        customer_id: i64,
        cycle: NaiveDate,
    ) -> Result<Option<PendingChargeback>, StoreError> {
        let row = sqlx::query(
            "SELECT i.id, i.number FROM invoice i
             WHERE i.customer_id = $1 AND i.cycle = $2 AND i.sequence = 0 AND i.status = 'final'
               AND i.number IS NOT NULL
               AND EXISTS (SELECT 1 FROM cost_node n WHERE n.customer_id = i.customer_id)
               AND NOT EXISTS (SELECT 1 FROM gl_export g WHERE g.invoice_id = i.id)",
        )
        .bind(customer_id)
        .bind(cycle)
        .fetch_optional(&self.pool)
        .await?;
        match row {
            Some(row) => Ok(Some(PendingChargeback {
                invoice_id: row.try_get("id")?,
                number: row.try_get("number")?,
            })),
            None => Ok(None),
        }
    }

    async fn record(&self, chargeback: &StoredChargeback) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        let inserted = sqlx::query(
            "INSERT INTO gl_export (invoice_id, bucket, key, sha256, size_bytes, net_total_micros)
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (invoice_id) DO NOTHING",
        )
        .bind(chargeback.invoice_id)
        .bind(&chargeback.bucket)
        .bind(&chargeback.key)
        .bind(&chargeback.sha256)
        .bind(chargeback.size_bytes)
        .bind(chargeback.net_total_micros)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if inserted == 1 {
            let rows = &chargeback.rows;
            sqlx::query(
                "INSERT INTO cost_allocation (invoice_id, cost_centre, gl_code, charge_class, vat_category, amount_micros)
                 SELECT $1, * FROM UNNEST($2::text[], $3::text[], $4::text[], $5::text[], $6::bigint[])",
            )
            .bind(chargeback.invoice_id)
            .bind(rows.iter().map(|r| r.cost_centre.clone()).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.gl_code.clone()).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.charge_class.as_str()).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.vat_category.clone()).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.amount_micros).collect::<Vec<_>>())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }
}
