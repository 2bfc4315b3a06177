//! The daily maintenance (issue 20): the work that keeps the CDR store the
//! same size to every import and calculation however many years it holds.
//! Each part is its own module, idempotent, with a pure decision and a
//! narrow store trait (implemented on PostgreSQL in
//! `adapters::maintenance`):
//!
//! - [`partitions`]: monthly partitions of `call_detail_record` and
//!   `rating_chunk` created ahead of the data (migration 0019);
//! - [`archive`]: the archive's file format (a month of CDRs as Parquet).

pub mod archive;
pub mod partitions;

/// Why a maintenance part stopped. Every part is idempotent and each of
/// its units of work is its own transaction, so the remedy is to run it
/// again once the cause is gone.
#[derive(Debug, thiserror::Error)]
pub enum MaintenanceError {
    #[error("the database failed during the maintenance ({0}); every part is idempotent: run it again once the database answers")]
    Store(#[from] crate::ports::StoreError),
}
