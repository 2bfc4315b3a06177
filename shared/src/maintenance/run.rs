//! The archive of months past their retention, and their restore.
//!
//! Per customer month, three stages, each leaving the store whole if the
//! process dies after it:
//!
//! 1. the files: the month's CDRs and the cycle rows as Parquet, then the
//!    manifest, uploaded to S3 (an upload killed half-way leaves no object;
//!    a rerun writes the same files again);
//! 2. the record (`cdr_archive`, state written), only after the manifest;
//! 3. the removal, per month: one transaction that drops the month's
//!    partitions when every customer in them is written, or else deletes
//!    the written customers' rows, and marks them removed. Rows that came
//!    in after the files were written make the month's record stale: it is
//!    written again on the next run, and nothing unarchived is removed.
//!
//! So a rerun after any kill finds each month either not recorded (write
//! again), written (remove), or removed (nothing to do): nothing is lost
//! and nothing doubled.

use std::collections::BTreeMap;
use std::path::Path;

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::billing::invoice_view::DocumentAccess;
use crate::billing::specification::{PartUpload, UploadStarter, PART_BYTES};
use crate::maintenance::archive::{
    month_prefix, ArchivedCdr, ArchivedFile, CdrArchiveWriter, CycleRow, CycleRowsWriter, Manifest,
    RowDigest, SharedBuffer, MANIFEST_FORMAT,
};
use crate::maintenance::retention::{decide, ArchiveState, Blocker, Decision, RetentionPolicy};
use crate::maintenance::MaintenanceError;
use crate::ports::{ObjectPut, StoreError};

/// A customer's month that still has CDRs in the database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MonthRows {
    pub customer_id: Option<i64>,
    pub month: NaiveDate,
    pub rows: u64,
}

/// What one month's removal did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Removal {
    /// Customer months marked removed.
    pub removed: Vec<Option<i64>>,
    /// Customer months whose rows changed after their files were written:
    /// written again on the next run.
    pub stale: Vec<Option<i64>>,
    /// Partitions detached and dropped (`call_detail_record_y2024m11`, ...).
    pub partitions_dropped: Vec<String>,
    /// CDRs deleted row by row (the month's partition holds other
    /// customers who stay).
    pub rows_deleted: u64,
    /// CDRs gone with dropped partitions.
    pub rows_dropped: u64,
}

/// The month's CDRs and cycle rows, streamed by the store.
#[async_trait]
pub trait MonthRowsSink: Send {
    async fn cdr(&mut self, cdr: &ArchivedCdr) -> Result<(), MaintenanceError>;
    async fn cycle_row(&mut self, row: &CycleRow) -> Result<(), MaintenanceError>;
}

/// What the archive reads and records (`adapters::maintenance::PgArchive`).
#[async_trait]
pub trait ArchiveStore: Send + Sync {
    /// The customers' own retentions, over the stack's default.
    async fn retention(&self, default_months: u16) -> Result<RetentionPolicy, StoreError>;
    /// Every customer month before `before` that has CDRs, oldest first.
    async fn months_with_rows(&self, before: NaiveDate) -> Result<Vec<MonthRows>, StoreError>;
    async fn state(
        &self,
        customer: Option<i64>,
        month: NaiveDate,
    ) -> Result<Option<ArchiveState>, StoreError>;
    /// What keeps the month (draft invoices, cycles not invoiced, open
    /// audit findings).
    async fn blockers(
        &self,
        customer: Option<i64>,
        month: NaiveDate,
    ) -> Result<Vec<Blocker>, StoreError>;
    /// The customer's cycles that start in the month.
    async fn cycles(
        &self,
        customer: Option<i64>,
        month: NaiveDate,
    ) -> Result<Vec<NaiveDate>, StoreError>;
    /// Streams the month's CDRs (in the archive's order), then the rows of
    /// its cycles, from one snapshot.
    async fn read_month(
        &self,
        customer: Option<i64>,
        month: NaiveDate,
        sink: &mut dyn MonthRowsSink,
    ) -> Result<(), MaintenanceError>;
    async fn record_written(
        &self,
        bucket: &str,
        manifest_key: &str,
        manifest: &Manifest,
    ) -> Result<(), StoreError>;
    /// Removes the rows of the month's written customer months (see the
    /// module's stage 3).
    async fn remove(&self, month: NaiveDate) -> Result<Removal, StoreError>;
}

/// Where and how the archive runs.
#[derive(Debug, Clone)]
pub struct ArchiveSettings {
    pub bucket: String,
    pub default_retention_months: u16,
    pub today: NaiveDate,
    pub now: DateTime<Utc>,
    /// Stop starting new months after this (a Lambda's time): the step
    /// runs again for the rest.
    pub stop_after: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ArchivedMonth {
    pub customer_id: Option<i64>,
    pub month: NaiveDate,
    pub cdr_rows: u64,
    pub cycle_rows: u64,
    pub manifest_key: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeptMonth {
    pub customer_id: Option<i64>,
    pub month: NaiveDate,
    pub reasons: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ArchiveReport {
    pub written: Vec<ArchivedMonth>,
    pub removed: BTreeMap<NaiveDate, Removal>,
    pub kept: Vec<KeptMonth>,
    /// Restored months left in place until their date.
    pub held: u64,
    /// The run stopped at `stop_after` with months left.
    pub unfinished: bool,
}

impl ArchiveReport {
    pub fn rows_archived(&self) -> u64 {
        self.written.iter().map(|w| w.cdr_rows).sum()
    }

    pub fn partitions_dropped(&self) -> u64 {
        self.removed
            .values()
            .map(|r| r.partitions_dropped.len() as u64)
            .sum()
    }

    pub fn rows_removed(&self) -> u64 {
        self.removed
            .values()
            .map(|r| r.rows_deleted + r.rows_dropped)
            .sum()
    }
}

/// Archives every customer month past its retention that nothing keeps,
/// month by month, oldest first.
#[tracing::instrument(skip_all, fields(today = %settings.today))]
pub async fn archive_expired(
    store: &dyn ArchiveStore,
    uploads: &dyn UploadStarter,
    objects: &dyn ObjectPut,
    settings: &ArchiveSettings,
) -> Result<ArchiveReport, MaintenanceError> {
    let policy = store.retention(settings.default_retention_months).await?;
    let before = policy.latest_first_kept_month(settings.today);
    let mut by_month: BTreeMap<NaiveDate, Vec<MonthRows>> = BTreeMap::new();
    for rows in store.months_with_rows(before).await? {
        if rows.month < policy.first_kept_month(rows.customer_id, settings.today) {
            by_month.entry(rows.month).or_default().push(rows);
        }
    }
    let mut report = ArchiveReport::default();
    let out_of_time = || settings.stop_after.is_some_and(|t| Utc::now() >= t);
    'months: for (month, customers) in by_month {
        let mut any_written = false;
        for unit in customers {
            // Between customer months: what is written stays written, and
            // the next run removes it.
            if out_of_time() {
                report.unfinished = true;
                break 'months;
            }
            let state = store.state(unit.customer_id, month).await?;
            let decision = if state == Some(ArchiveState::Removed) {
                Decision::Keep(vec![Blocker::RowsAfterRemoval { rows: unit.rows }])
            } else {
                let blockers = store.blockers(unit.customer_id, month).await?;
                decide(state, blockers, settings.now)
            };
            match decision {
                Decision::Write => {
                    let written = write_month(
                        store,
                        uploads,
                        objects,
                        settings,
                        unit.customer_id,
                        month,
                        policy.months_for(unit.customer_id),
                    )
                    .await?;
                    report.written.push(written);
                    any_written = true;
                }
                Decision::Remove => any_written = true,
                Decision::Keep(blockers) => report.kept.push(KeptMonth {
                    customer_id: unit.customer_id,
                    month,
                    reasons: blockers.iter().map(Blocker::describe).collect(),
                }),
                Decision::Held { .. } => report.held += 1,
            }
        }
        if any_written {
            let removal = store.remove(month).await?;
            tracing::info!(%month, removed = removal.removed.len(), stale = removal.stale.len(),
                dropped = ?removal.partitions_dropped, "month removed");
            report.removed.insert(month, removal);
        }
    }
    Ok(report)
}

/// Writes one customer month's files and manifest, then records it.
async fn write_month(
    store: &dyn ArchiveStore,
    uploads: &dyn UploadStarter,
    objects: &dyn ObjectPut,
    settings: &ArchiveSettings,
    customer: Option<i64>,
    month: NaiveDate,
    retention_months: u16,
) -> Result<ArchivedMonth, MaintenanceError> {
    let prefix = month_prefix(customer, month);
    let cdr_key = format!("{prefix}cdrs.parquet");
    let cycle_key = format!("{prefix}cycles.parquet");
    let manifest_key = format!("{prefix}manifest.json");
    let cycles = store.cycles(customer, month).await?;
    let mut sink = FileUploads {
        cdrs: ParquetUpload::new(
            uploads.start(&settings.bucket, &cdr_key),
            CdrArchiveWriter::new,
        )?,
        cycles: ParquetUpload::new(
            uploads.start(&settings.bucket, &cycle_key),
            CycleRowsWriter::new,
        )?,
        digest: RowDigest::default(),
        max_cdr_id: None,
    };
    if let Err(e) = store.read_month(customer, month, &mut sink).await {
        sink.cdrs.upload.abort().await;
        sink.cycles.upload.abort().await;
        return Err(e);
    }
    let FileUploads {
        cdrs,
        cycles: cycle_upload,
        digest,
        max_cdr_id,
    } = sink;
    let cdr_file = cdrs.finish(cdr_key, |w| w.finish()).await?;
    let cycle_file = cycle_upload.finish(cycle_key, |w| w.finish()).await?;
    let manifest = Manifest {
        format: MANIFEST_FORMAT.into(),
        customer_id: customer,
        month,
        cycles,
        cdr_rows_sha256: digest.hex(),
        max_cdr_id,
        retention_months,
        written_at: settings.now,
        cdrs: cdr_file,
        cycle_rows: cycle_file,
    };
    let body = serde_json::to_vec_pretty(&manifest).map_err(MaintenanceError::Manifest)?;
    objects
        .put_object(
            &settings.bucket,
            &manifest_key,
            body,
            "application/json",
            &[],
        )
        .await
        .map_err(MaintenanceError::Upload)?;
    store
        .record_written(&settings.bucket, &manifest_key, &manifest)
        .await?;
    tracing::info!(?customer, %month, rows = manifest.cdrs.rows, "month archived");
    Ok(ArchivedMonth {
        customer_id: customer,
        month,
        cdr_rows: manifest.cdrs.rows,
        cycle_rows: manifest.cycle_rows.rows,
        manifest_key,
    })
}

/// A Parquet file on its way to S3: the writer fills a buffer, full parts
/// leave as they fill, and the file's SHA-256 is taken on the way.
struct ParquetUpload<W> {
    writer: W,
    buffer: SharedBuffer,
    upload: Box<dyn PartUpload>,
    sha256: Sha256,
    bytes: u64,
}

impl<W> ParquetUpload<W> {
    fn new(
        upload: Box<dyn PartUpload>,
        make: impl FnOnce(SharedBuffer) -> Result<W, crate::maintenance::archive::ArchiveFileError>,
    ) -> Result<Self, MaintenanceError> {
        let buffer = SharedBuffer::default();
        Ok(Self {
            writer: make(buffer.clone())?,
            buffer,
            upload,
            sha256: Sha256::new(),
            bytes: 0,
        })
    }

    async fn send_full_parts(&mut self) -> Result<(), MaintenanceError> {
        if self.buffer.len() >= PART_BYTES {
            let part = self.buffer.take();
            self.sha256.update(&part);
            self.bytes += part.len() as u64;
            self.upload
                .part(part)
                .await
                .map_err(MaintenanceError::Upload)?;
        }
        Ok(())
    }

    async fn finish(
        mut self,
        key: String,
        close: impl FnOnce(
            W,
        )
            -> Result<(SharedBuffer, u64), crate::maintenance::archive::ArchiveFileError>,
    ) -> Result<ArchivedFile, MaintenanceError> {
        let (buffer, rows) = match close(self.writer) {
            Ok(done) => done,
            Err(e) => {
                self.upload.abort().await;
                return Err(e.into());
            }
        };
        let last = buffer.take();
        self.sha256.update(&last);
        self.bytes += last.len() as u64;
        if let Err(e) = self.upload.complete(last).await {
            self.upload.abort().await;
            return Err(MaintenanceError::Upload(e));
        }
        Ok(ArchivedFile {
            key,
            rows,
            bytes: self.bytes,
            sha256: hex::encode(self.sha256.finalize()),
        })
    }
}

struct FileUploads {
    cdrs: ParquetUpload<CdrArchiveWriter<SharedBuffer>>,
    cycles: ParquetUpload<CycleRowsWriter<SharedBuffer>>,
    digest: RowDigest,
    max_cdr_id: Option<i64>,
}

#[async_trait]
impl MonthRowsSink for FileUploads {
    async fn cdr(&mut self, cdr: &ArchivedCdr) -> Result<(), MaintenanceError> {
        self.digest.add(cdr);
        self.max_cdr_id = self.max_cdr_id.max(Some(cdr.id));
        self.cdrs.writer.push(cdr)?;
        self.cdrs.send_full_parts().await
    }

    async fn cycle_row(&mut self, row: &CycleRow) -> Result<(), MaintenanceError> {
        self.cycles.writer.push(row)?;
        self.cycles.send_full_parts().await
    }
}

// ------------------------------------------------------------------ restore

/// An archived month as recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveRecord {
    pub bucket: String,
    pub manifest_key: String,
    pub state: ArchiveState,
}

/// What a restore did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RestoreReport {
    pub customer_id: Option<i64>,
    pub month: NaiveDate,
    /// CDRs in the archive, and those put back (the rest were there).
    pub cdr_rows: u64,
    pub cdrs_inserted: u64,
    pub cycle_rows: u64,
    pub cycle_rows_inserted: u64,
    /// The CDRs' checksum, as the manifest has it and as the restored
    /// rows give it: equal, or the restore is rolled back.
    pub cdr_rows_sha256: String,
    pub keep_until: DateTime<Utc>,
}

/// What a restore reads and writes (`adapters::maintenance::PgArchive`).
#[async_trait]
pub trait RestoreStore: Send + Sync {
    async fn record(
        &self,
        customer: Option<i64>,
        month: NaiveDate,
    ) -> Result<Option<ArchiveRecord>, StoreError>;
    /// Puts the files' rows back in one transaction (the month's
    /// partitions made again if they were dropped), checks them against
    /// the manifest, and marks the month restored until `keep_until`.
    async fn restore(
        &self,
        manifest: &Manifest,
        cdr_file: &Path,
        cycle_file: &Path,
        keep_until: DateTime<Utc>,
    ) -> Result<RestoreReport, MaintenanceError>;
}

/// Brings an archived month back for a late dispute: downloads its
/// manifest and files into `workdir`, checks their SHA-256, and restores
/// the rows. Run again, it adds nothing.
pub async fn restore_month(
    store: &dyn RestoreStore,
    files: &dyn DocumentAccess,
    customer: Option<i64>,
    month: NaiveDate,
    keep_until: DateTime<Utc>,
    workdir: &Path,
) -> Result<RestoreReport, MaintenanceError> {
    let record = store
        .record(customer, month)
        .await?
        .ok_or(MaintenanceError::NotArchived { customer, month })?;
    let manifest_path = workdir.join("manifest.json");
    files
        .download(&record.bucket, &record.manifest_key, &manifest_path)
        .await
        .map_err(MaintenanceError::Download)?;
    let text = std::fs::read(&manifest_path).map_err(MaintenanceError::LocalFile)?;
    let manifest: Manifest = serde_json::from_slice(&text).map_err(MaintenanceError::Manifest)?;
    if manifest.format != MANIFEST_FORMAT
        || manifest.customer_id != customer
        || manifest.month != month
    {
        return Err(MaintenanceError::ManifestMismatch {
            key: record.manifest_key,
            reason: format!(
                "it is {} for customer {:?} month {}",
                manifest.format, manifest.customer_id, manifest.month
            ),
        });
    }
    let cdr_path = workdir.join("cdrs.parquet");
    let cycle_path = workdir.join("cycles.parquet");
    for (file, path) in [
        (&manifest.cdrs, &cdr_path),
        (&manifest.cycle_rows, &cycle_path),
    ] {
        files
            .download(&record.bucket, &file.key, path)
            .await
            .map_err(MaintenanceError::Download)?;
        let bytes = std::fs::read(path).map_err(MaintenanceError::LocalFile)?;
        let sha256 = hex::encode(Sha256::digest(&bytes));
        if sha256 != file.sha256 || bytes.len() as u64 != file.bytes {
            return Err(MaintenanceError::ManifestMismatch {
                key: file.key.clone(),
                reason: format!(
                    "{} bytes with SHA-256 {sha256}, the manifest says {} bytes with {}",
                    bytes.len(),
                    file.bytes,
                    file.sha256
                ),
            });
        }
    }
    store
        .restore(&manifest, &cdr_path, &cycle_path, keep_until)
        .await
}
