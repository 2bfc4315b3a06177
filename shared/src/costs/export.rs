//! A final invoice's chargeback stored by the chain (RenderInvoice) instead
//! of computed when asked: its allocation over the cost tree kept per node,
//! class and VAT category (`cost_allocation`), and its general-ledger CSV
//! written to S3 beside the invoice's documents
//! (`invoices/{customer}/{cycle}/{number}-gl.csv`).
//!
//! A final invoice never changes, so neither does its chargeback: it is
//! written once, and a cycle whose chargeback is stored costs one query.
//! A run that dies between the put and the record puts the same bytes
//! again (the allocation and the CSV are functions of the invoice, the
//! tree and the assignments). A customer without a cost tree has no
//! chargeback to store. Drafts are not stored: they change with every
//! calculation (`temctl costs show` allocates them when asked).

use async_trait::async_trait;
use chrono::NaiveDate;
use serde::Serialize;

use crate::billing::document::rendering::{document_key, sha256_hex};
use crate::costs::cycle::{allocate_cycle, CostStore, CostsError};
use crate::costs::gl::{gl_csv, gl_rows, GlRow};
use crate::ports::{ObjectPut, PortError, StoreError};

/// A final main invoice whose chargeback is not stored yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingChargeback {
    pub invoice_id: i64,
    pub number: String,
}

/// The stored chargeback of an invoice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StoredChargeback {
    pub invoice_id: i64,
    pub bucket: String,
    pub key: String,
    pub sha256: String,
    pub size_bytes: i64,
    pub rows: Vec<GlRow>,
    pub net_total_micros: i64,
}

/// Where stored chargebacks are kept (`adapters::costs` on PostgreSQL).
#[async_trait]
pub trait ChargebackStore: Send + Sync {
    /// The cycle's final main invoice when the customer has a cost tree
    /// and the invoice has no stored chargeback yet.
    async fn pending(
        &self,
        customer_id: i64,
        cycle: NaiveDate,
    ) -> Result<Option<PendingChargeback>, StoreError>;
    /// Records the allocation rows and the written object in one
    /// transaction (a second record of the same invoice changes nothing).
    async fn record(&self, chargeback: &StoredChargeback) -> Result<(), StoreError>;
}

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Costs(#[from] CostsError),
    #[error("database error: {0}")]
    Store(#[from] StoreError),
    #[error("writing the general-ledger CSV failed: {0}")]
    Put(#[from] PortError),
}

impl ExportError {
    pub fn is_retryable(&self) -> bool {
        match self {
            ExportError::Store(e) => e.retryable,
            ExportError::Costs(CostsError::Store(e)) => e.retryable,
            ExportError::Put(_) => true,
            ExportError::Costs(_) => false,
        }
    }
}

/// The GL CSV's key: beside the invoice's UBL document.
pub fn gl_key(customer_id: i64, cycle: NaiveDate, number: &str) -> String {
    let document = document_key(customer_id, cycle, number);
    format!(
        "{}-gl.csv",
        document.strip_suffix(".xml").unwrap_or(&document)
    )
}

/// Stores the chargeback of the cycle's final invoice when it has none
/// (see the module docs); answers what was stored now.
pub async fn export_chargeback(
    costs: &dyn CostStore,
    store: &dyn ChargebackStore,
    objects: &dyn ObjectPut,
    bucket: &str,
    customer_id: i64,
    cycle: NaiveDate,
) -> Result<Option<StoredChargeback>, ExportError> {
    let Some(pending) = store.pending(customer_id, cycle).await? else {
        return Ok(None);
    };
    let customer = crate::costs::cycle::find_customer(costs, &customer_id.to_string()).await?;
    let allocation = allocate_cycle(costs, customer, cycle).await?;
    if allocation.invoice_id != pending.invoice_id {
        // The main invoice is the one pending; anything else is a race
        // with nothing to store from it.
        return Ok(None);
    }
    let rows = gl_rows(&allocation);
    let csv = gl_csv(&rows).into_bytes();
    let key = gl_key(customer_id, cycle, &pending.number);
    let stored = StoredChargeback {
        invoice_id: pending.invoice_id,
        bucket: bucket.to_string(),
        key: key.clone(),
        sha256: sha256_hex(&csv),
        size_bytes: i64::try_from(csv.len()).unwrap_or(i64::MAX),
        rows,
        net_total_micros: allocation.net_total_micros,
    };
    objects
        .put_object(
            bucket,
            &key,
            csv,
            "text/csv; charset=utf-8",
            &[("tem-invoice-id", &pending.invoice_id.to_string())],
        )
        .await?;
    store.record(&stored).await?;
    Ok(Some(stored))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gl_csv_goes_beside_the_invoice_under_its_number_without_folders() {
        let cycle: NaiveDate = "2025-03-01".parse().unwrap();
        assert_eq!(
            gl_key(7, cycle, "2025/000123"),
            "invoices/7/2025-03-01/2025_000123-gl.csv"
        );
    }
}
