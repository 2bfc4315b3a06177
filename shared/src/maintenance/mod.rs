//! The daily maintenance (issue 20): the work that keeps the CDR store the
//! same size to every import and calculation however many years it holds.
//! Each part is its own module, idempotent, with a pure decision and a
//! narrow store trait (implemented on PostgreSQL in
//! `adapters::maintenance`):
//!
//! - [`partitions`]: monthly partitions of `call_detail_record` and
//!   `rating_chunk` created ahead of the data (migration 0019);
//! - [`retention`] and [`run`]: months past their retention archived to S3
//!   (the file format in [`archive`]) and removed, and restored on demand;
//! - [`housekeeping`]: expired bookkeeping rows pruned in batches, the
//!   partitioned tables analysed;
//! - [`handler`]: the parts as the steps of the maintenance chain.

use chrono::NaiveDate;

pub mod archive;
pub mod handler;
pub mod housekeeping;
pub mod partitions;
pub mod retention;
pub mod run;

/// Why a maintenance part stopped. Every part is idempotent and each of
/// its units of work is its own transaction, so the remedy is to run it
/// again once the cause is gone.
#[derive(Debug, thiserror::Error)]
pub enum MaintenanceError {
    #[error("the database failed during the maintenance ({0}); every part is idempotent: run it again once the database answers")]
    Store(#[from] crate::ports::StoreError),
    #[error(transparent)]
    File(#[from] archive::ArchiveFileError),
    #[error("uploading the archive to S3 failed ({0}); nothing is removed before its files are written: run it again")]
    Upload(crate::ports::PortError),
    #[error("deleting an expired rejected-row file failed ({0}); the import still names it: run the housekeeping again")]
    Delete(crate::ports::PortError),
    #[error("downloading the archive from S3 failed ({0}); check the bucket and the object (its key is in cdr_archive) and run it again")]
    Download(crate::ports::PortError),
    #[error("a local file of the restore failed ({0}); check the working directory's space and permissions")]
    LocalFile(std::io::Error),
    #[error("the archive's manifest is not valid JSON of this format ({0}); the file in S3 is damaged: restore its previous version")]
    Manifest(serde_json::Error),
    #[error("{key} does not match its manifest: {reason}; the archive is damaged or was replaced: restore the object's previous version, nothing was changed")]
    ManifestMismatch { key: String, reason: String },
    #[error("no customer has the code or id {0:?}; `none` names the CDRs without a customer")]
    UnknownCustomer(String),
    #[error("customer {customer:?} has no archived month {month}; `temctl archive list` shows what is archived")]
    NotArchived {
        customer: Option<i64>,
        month: NaiveDate,
    },
    #[error("the restored CDRs of customer {customer:?} month {month} do not match the archive ({reason}); the restore was rolled back and nothing changed")]
    RestoreMismatch {
        customer: Option<i64>,
        month: NaiveDate,
        reason: String,
    },
}

impl MaintenanceError {
    /// Whether running the part again, unchanged, may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            MaintenanceError::Store(e) => e.retryable,
            MaintenanceError::Upload(_)
            | MaintenanceError::Delete(_)
            | MaintenanceError::Download(_)
            | MaintenanceError::LocalFile(_) => true,
            MaintenanceError::File(_)
            | MaintenanceError::Manifest(_)
            | MaintenanceError::ManifestMismatch { .. }
            | MaintenanceError::NotArchived { .. }
            | MaintenanceError::UnknownCustomer(_)
            | MaintenanceError::RestoreMismatch { .. } => false,
        }
    }
}
