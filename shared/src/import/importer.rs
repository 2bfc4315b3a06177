//! One import: an object (ZIP of CSV, `.csv.gz` or `.csv`) into
//! `call_detail_record`, recorded in `import_file`.
//!
//! The whole object loads in one transaction, so a run killed at any moment
//! leaves nothing behind and its retry loads exactly the same rows. Imports
//! of the same content serialise on an advisory lock; the second finds the
//! first completed and loads nothing.

use std::io::Read;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};
use futures::StreamExt;
use serde::Serialize;
use serde_json::json;
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use tracing::{info, instrument, warn};

use crate::cdr::changes::ChangeSource;
use crate::import::format::{FormatError, FormatTemplate};
use crate::import::load::{
    load_csv, CsvOpen, LoadError, LoadInput, LoadMode, LoadReport, RejectFile, Resolver, Writers,
};
use crate::import::parse::{FileError, Stopped};
use crate::import::source::{chunks, sniff, spawn_pump, ObjectKind, RangeRead, SourceError};
use crate::import::zip::{EntryDecision, EntryReader, ZipArchive, ZipError, ZipLimits};
use crate::ports::PortError;
use crate::routing::Provider;

/// Ranged reads of 256 KiB, up to `PUMP_CAPACITY` of them fetched ahead of
/// the parser: enough to hide S3 latency, little enough that a small and a
/// huge file need about the same memory.
const READ_CHUNK: u64 = 256 << 10;
const PUMP_CAPACITY: usize = 4;

/// Objects from this size on (4 MiB: about 200,000 rows of a zipped
/// Routit export) are loaded on two connections when the pool
/// has one to spare (see [`Writers`]): below it, opening the second
/// connection costs more than it saves.
pub const TWO_WRITERS_FROM_BYTES: u64 = 4 << 20;

/// How long an import waits for the second connection before it loads on
/// its own one alone.
const HELPER_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// How an import ended (`import_file.status` for the first two).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ImportStatus {
    Completed,
    /// Some rows or entries were rejected; the rest loaded.
    CompletedWithErrors,
    /// The same content was imported before: nothing loaded.
    AlreadyImported,
}

impl ImportStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ImportStatus::Completed => "completed",
            ImportStatus::CompletedWithErrors => "completed_with_errors",
            ImportStatus::AlreadyImported => "already_imported",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ImportRequest {
    pub bucket: String,
    pub key: String,
    pub provider: Provider,
    pub profile_id: Option<i64>,
    /// When the attempt is cut off (the Lambda deadline); `None` for an
    /// import without one (temctl). A `running` row past it was killed.
    pub deadline: Option<DateTime<Utc>>,
}

/// How long a `running` row without a deadline may be before a new attempt
/// of the same object takes it as dead (Lambda's own limit).
const UNDATED_ATTEMPT_LIMIT: &str = "15 minutes";

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct EntryNote {
    pub entry: String,
    pub outcome: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct ImportSummary {
    pub import_file_id: i64,
    /// `completed`, `completed_with_errors` (an entry was refused, failed,
    /// or stopped early at a quote that never closes; see `entries`) or
    /// `already_imported` (the same content was imported before).
    pub status: ImportStatus,
    pub sha256: String,
    pub read: u64,
    pub loaded: u64,
    pub duplicate: u64,
    pub rejected: u64,
    pub without_customer: u64,
    pub touched: Vec<(i64, NaiveDate)>,
    pub rejected_key: Option<String>,
    pub entries: Vec<EntryNote>,
    pub duration_ms: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("cannot read {what}: {source}")]
    Source { what: String, source: SourceError },
    /// The object itself is unusable; retrying will not help.
    #[error("{what} was refused: {reason}")]
    Refused { what: String, reason: String },
    #[error(transparent)]
    Format(#[from] FormatError),
    #[error("database error: {0}; the import was rolled back and can be retried")]
    Database(#[from] sqlx::Error),
    #[error("could not store the rejected rows: {0}")]
    Rejects(String),
    /// A customer's time zone is not an IANA name: rows cannot be given
    /// their cycle until it is corrected.
    #[error(transparent)]
    TimeZone(#[from] crate::cdr::BadTimeZone),
}

impl From<crate::import::load::ResolverError> for ImportError {
    fn from(e: crate::import::load::ResolverError) -> Self {
        match e {
            crate::import::load::ResolverError::TimeZone(e) => ImportError::TimeZone(e),
            crate::import::load::ResolverError::Database(e) => ImportError::Database(e),
        }
    }
}

impl ImportError {
    /// Whether a retry may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            ImportError::Source { source, .. } => source.is_transient(),
            ImportError::Database(_) | ImportError::Rejects(_) => true,
            ImportError::TimeZone(_) => false,
            ImportError::Refused { .. } | ImportError::Format(_) => false,
        }
    }
}

/// Marks `running` imports whose deadline passed as `abandoned`: their
/// process died and no later attempt of the object came (the ops watch
/// calls this). Returns how many. An attempt that is in fact still running
/// overwrites the mark when it finishes.
pub async fn mark_abandoned_imports(pool: &PgPool, now: DateTime<Utc>) -> Result<u64, ImportError> {
    Ok(sqlx::query(
        "UPDATE import_file SET status = 'abandoned', finished_at = $1,
             error = 'abandoned: the attempt did not finish by its deadline (' || deadline || '); its process died'
         WHERE status = 'running' AND deadline < $1",
    )
    .bind(now)
    .execute(pool)
    .await?
    .rows_affected())
}

/// Where the rejected-rows CSV is stored (the CDR bucket, or a local folder).
#[async_trait]
pub trait RejectStore: Send + Sync {
    async fn store(&self, key: &str, file: &Path) -> Result<String, PortError>;
}

pub struct Importer {
    pool: PgPool,
    rejects: Arc<dyn RejectStore>,
    limits: ZipLimits,
    two_writers_from: u64,
}

impl Importer {
    pub fn new(pool: PgPool, rejects: Arc<dyn RejectStore>, limits: ZipLimits) -> Self {
        Self {
            pool,
            rejects,
            limits,
            two_writers_from: TWO_WRITERS_FROM_BYTES,
        }
    }

    /// Objects of at least `bytes` load on two connections when the pool
    /// has one to spare ([`TWO_WRITERS_FROM_BYTES`] unless set).
    pub fn with_two_writers_from(mut self, bytes: u64) -> Self {
        self.two_writers_from = bytes;
        self
    }

    #[instrument(skip_all, fields(bucket = %request.bucket, key = %request.key, provider = %request.provider))]
    pub async fn import(
        &self,
        source: Arc<dyn RangeRead>,
        request: &ImportRequest,
    ) -> Result<ImportSummary, ImportError> {
        let started = Instant::now();
        let what = source.describe();
        let source_error = |source: SourceError| ImportError::Source {
            what: what.clone(),
            source,
        };
        let size = source.len().await.map_err(source_error)?;
        let sha256 = sha256_of(source.clone(), size)
            .await
            .map_err(source_error)?;
        let template = FormatTemplate::for_provider(request.provider)?;
        let import_file_id: i64 = sqlx::query_scalar(
            "INSERT INTO import_file (bucket, key, sha256, size_bytes, provider, profile_id, status, deadline)
             VALUES ($1, $2, $3, $4, $5, $6, 'running', $7) RETURNING id",
        )
        .bind(&request.bucket)
        .bind(&request.key)
        .bind(&sha256)
        .bind(size as i64)
        .bind(request.provider.as_str())
        .bind(request.profile_id)
        .bind(request.deadline)
        .fetch_one(&self.pool)
        .await?;
        self.supersede(request, import_file_id).await?;

        let result = self
            .run(
                source,
                request,
                &template,
                &sha256,
                size,
                import_file_id,
                started,
            )
            .await;
        if let Err(e) = &result {
            warn!(error = %e, import_file_id, "import failed");
            let _ = sqlx::query(
                "UPDATE import_file SET status = 'failed', error = $2, finished_at = now(), duration_ms = $3 WHERE id = $1",
            )
            .bind(import_file_id)
            .bind(e.to_string())
            .bind(started.elapsed().as_millis() as i64)
            .execute(&self.pool)
            .await;
        }
        result
    }

    /// Earlier attempts of the same object that died (killed, out of
    /// memory, timed out) left their rows `running`; this attempt replaces
    /// them, so nobody takes them for imports still under way.
    async fn supersede(
        &self,
        request: &ImportRequest,
        import_file_id: i64,
    ) -> Result<(), ImportError> {
        let superseded = sqlx::query(&format!(
            "UPDATE import_file SET status = 'superseded', finished_at = now(),
                 error = 'superseded by import_file ' || $3::bigint || ', a later attempt of the same object'
             WHERE bucket = $1 AND key = $2 AND id <> $3 AND status = 'running'
               AND (deadline < now()
                    OR (deadline IS NULL AND started_at < now() - interval '{UNDATED_ATTEMPT_LIMIT}'))"
        ))
        .bind(&request.bucket)
        .bind(&request.key)
        .bind(import_file_id)
        .execute(&self.pool)
        .await?
        .rows_affected();
        if superseded > 0 {
            info!(
                superseded,
                import_file_id, "earlier attempts of this object marked superseded"
            );
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    async fn run(
        &self,
        source: Arc<dyn RangeRead>,
        request: &ImportRequest,
        template: &FormatTemplate,
        sha256: &str,
        size: u64,
        import_file_id: i64,
        started: Instant,
    ) -> Result<ImportSummary, ImportError> {
        let resolver = Arc::new(Resolver::load(&self.pool, request.provider.as_str()).await?);
        let kind = sniff(source.as_ref(), &request.key)
            .await
            .map_err(|source_err| ImportError::Source {
                what: source.describe(),
                source: source_err,
            })?;
        let input = LoadInput {
            provider: request.provider.as_str(),
            import_file_id,
            template,
            resolver,
        };
        let mut mode = LoadMode::Direct;
        loop {
            let mut tx = self.pool.begin().await?;
            sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
                .bind(format!("{}:{sha256}", request.provider))
                .execute(&mut *tx)
                .await?;
            let earlier: Option<i64> = sqlx::query_scalar(
                "SELECT id FROM import_file WHERE sha256 = $1 AND provider = $2 AND id <> $3
                 AND status IN ('completed', 'completed_with_errors') ORDER BY id LIMIT 1",
            )
            .bind(sha256)
            .bind(request.provider.as_str())
            .bind(import_file_id)
            .fetch_optional(&mut *tx)
            .await?;
            if let Some(earlier) = earlier {
                info!(earlier, "same content imported before; nothing to load");
                let duration_ms = started.elapsed().as_millis() as u64;
                sqlx::query(
                    "UPDATE import_file SET status = 'completed', details = $2, finished_at = now(), duration_ms = $3 WHERE id = $1",
                )
                .bind(import_file_id)
                .bind(json!({ "already_imported_as": earlier }))
                .bind(duration_ms as i64)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                return Ok(ImportSummary {
                    import_file_id,
                    status: ImportStatus::AlreadyImported,
                    sha256: sha256.to_string(),
                    read: 0,
                    loaded: 0,
                    duplicate: 0,
                    rejected: 0,
                    without_customer: 0,
                    touched: vec![],
                    rejected_key: None,
                    entries: vec![],
                    duration_ms,
                });
            }

            let mut helper = match mode {
                LoadMode::Direct if size >= self.two_writers_from => self.spare_transaction().await,
                _ => None,
            };
            let mut rejects =
                RejectFile::create().map_err(|e| ImportError::Rejects(e.to_string()))?;
            let mut writers = Writers {
                main: &mut tx,
                helper: helper.as_deref_mut(),
            };
            let loaded = self
                .load_object(
                    &mut writers,
                    source.clone(),
                    kind,
                    size,
                    &input,
                    &mut rejects,
                    mode,
                )
                .await;
            let (report, entries) = match loaded {
                Ok(done) => done,
                Err(LoadFailure::ExistingRows) if mode == LoadMode::Direct => {
                    info!("rows exist already; loading again with deduplication");
                    if let Some(helper) = helper {
                        helper.rollback().await?;
                    }
                    tx.rollback().await?;
                    let _ = rejects.finish();
                    mode = LoadMode::Deduplicate;
                    continue;
                }
                Err(LoadFailure::ExistingRows) => {
                    return Err(ImportError::Database(sqlx::Error::Protocol(
                        "unique violation while deduplicating".into(),
                    )))
                }
                Err(LoadFailure::Import(e)) => return Err(e),
            };
            let rejected_file = rejects
                .finish()
                .map_err(|e| ImportError::Rejects(e.to_string()))?;
            let rejected_key = match rejected_file {
                Some(path) => {
                    let key = format!("rejected/{}.csv", request.key);
                    let stored = self.rejects.store(&key, &path).await;
                    let _ = std::fs::remove_file(&path);
                    Some(stored.map_err(|e| ImportError::Rejects(e.to_string()))?)
                }
                None => None,
            };
            let failed_entries = entries.iter().any(|e| {
                e.outcome.starts_with("refused")
                    || e.outcome.starts_with("failed")
                    || e.outcome.starts_with("stopped")
            });
            let status = if failed_entries {
                ImportStatus::CompletedWithErrors
            } else {
                ImportStatus::Completed
            };
            // In the transaction that loads the rows: a calculation that
            // sees them sees the marks too.
            crate::cdr::changes::mark(&mut tx, &report.touched, ChangeSource::Import).await?;
            let duration_ms = started.elapsed().as_millis() as u64;
            sqlx::query(
                "UPDATE import_file SET status = $2, rows_read = $3, rows_loaded = $4, rows_duplicate = $5,
                   rows_rejected = $6, rows_without_customer = $7, rejected_key = $8, details = $9,
                   finished_at = now(), duration_ms = $10
                 WHERE id = $1",
            )
            .bind(import_file_id)
            .bind(status.as_str())
            .bind(report.read as i64)
            .bind(report.loaded as i64)
            .bind(report.duplicate as i64)
            .bind(report.rejected as i64)
            .bind(report.without_customer as i64)
            .bind(&rejected_key)
            .bind(json!({ "entries": entries, "mode": format!("{mode:?}"), "connections": 1 + usize::from(helper.is_some()) }))
            .bind(duration_ms as i64)
            .execute(&mut *tx)
            .await?;
            // The second transaction first, with its own marks: were the
            // import's own to commit first and this one then fail, the file
            // would be recorded as loaded with rows missing.
            if let Some(mut helper) = helper {
                crate::cdr::changes::mark(&mut helper, &report.touched, ChangeSource::Import)
                    .await?;
                helper.commit().await?;
            }
            tx.commit().await?;
            if report.loaded >= LARGE_LOAD_ROWS {
                if let Some((from, to)) = report.span {
                    analyze_months(&self.pool, from, to).await;
                }
            }
            info!(
                read = report.read,
                loaded = report.loaded,
                duplicate = report.duplicate,
                rejected = report.rejected,
                without_customer = report.without_customer,
                duration_ms,
                "import completed"
            );
            return Ok(ImportSummary {
                import_file_id,
                status,
                sha256: sha256.to_string(),
                read: report.read,
                loaded: report.loaded,
                duplicate: report.duplicate,
                rejected: report.rejected,
                without_customer: report.without_customer,
                touched: report.touched.cycles(),
                rejected_key,
                entries,
                duration_ms,
            });
        }
    }

    /// A second transaction for the load, if the pool can lend one now:
    /// an idle connection or room to open one. Otherwise the import loads
    /// on its own transaction alone, as fast as one backend goes.
    async fn spare_transaction(&self) -> Option<sqlx::Transaction<'static, sqlx::Postgres>> {
        if crate::adapters::postgres::spare_connections(&self.pool, 0) == 0 {
            return None;
        }
        match tokio::time::timeout(HELPER_WAIT, self.pool.begin()).await {
            Ok(Ok(helper)) => Some(helper),
            Ok(Err(e)) => {
                warn!(error = %e, "no second connection for the load; loading on one");
                None
            }
            Err(_) => None,
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn load_object(
        &self,
        writers: &mut Writers<'_>,
        source: Arc<dyn RangeRead>,
        kind: ObjectKind,
        size: u64,
        input: &LoadInput<'_>,
        rejects: &mut RejectFile,
        mode: LoadMode,
    ) -> Result<(LoadReport, Vec<EntryNote>), LoadFailure> {
        let what = source.describe();
        match kind {
            ObjectKind::PlainCsv | ObjectKind::Gzip => {
                let raw = spawn_pump(chunks(source, 0, size, READ_CHUNK), PUMP_CAPACITY);
                let max = self.limits.max_entry_uncompressed;
                let csv: CsvOpen = if kind == ObjectKind::Gzip {
                    Box::new(move || {
                        Box::new(Limited::new(flate2::read::MultiGzDecoder::new(raw), max))
                    })
                } else {
                    Box::new(move || Box::new(raw))
                };
                rejects.set_entry("");
                let report = load_csv(writers, csv, input, rejects, mode)
                    .await
                    .map_err(|e| LoadFailure::from_load(e, &what))?;
                let notes = match &report.stopped {
                    Some(stopped) => {
                        warn!(line = stopped.line, reason = %stopped.reason, "file stopped");
                        vec![EntryNote {
                            entry: what.clone(),
                            outcome: stopped_outcome(stopped, &report),
                        }]
                    }
                    None => vec![],
                };
                Ok((report, notes))
            }
            ObjectKind::Zip => {
                let archive = ZipArchive::open(source, self.limits.clone())
                    .await
                    .map_err(|e| match e {
                        ZipError::Source(source) if source.is_transient() => {
                            LoadFailure::Import(ImportError::Source {
                                what: what.clone(),
                                source,
                            })
                        }
                        other => LoadFailure::refused(&what, other.to_string()),
                    })?
                    .with_chunk_size(READ_CHUNK);
                let mut total = LoadReport::default();
                let mut notes = Vec::new();
                for entry in archive.entries() {
                    let name = entry.name.clone();
                    match entry.classify(&self.limits) {
                        EntryDecision::Skip(reason) => {
                            info!(entry = %name, %reason, "entry skipped");
                            notes.push(EntryNote {
                                entry: name,
                                outcome: format!("skipped: {reason}"),
                            });
                            continue;
                        }
                        EntryDecision::Refuse(reason) => {
                            warn!(entry = %name, %reason, "entry refused");
                            notes.push(EntryNote {
                                entry: name,
                                outcome: format!("refused: {reason}"),
                            });
                            continue;
                        }
                        EntryDecision::Import => {}
                    }
                    writers
                        .execute_all("SAVEPOINT entry")
                        .await
                        .map_err(LoadFailure::db)?;
                    let raw = spawn_pump(archive.entry_data(entry), PUMP_CAPACITY);
                    let reader = EntryReader::new(raw, entry, &self.limits);
                    let csv: CsvOpen = Box::new(move || Box::new(reader));
                    rejects.set_entry(&name);
                    match load_csv(writers, csv, input, rejects, mode).await {
                        Ok(report) => {
                            writers
                                .execute_all("RELEASE SAVEPOINT entry")
                                .await
                                .map_err(LoadFailure::db)?;
                            let outcome = match &report.stopped {
                                Some(stopped) => {
                                    warn!(entry = %name, line = stopped.line, reason = %stopped.reason, "entry stopped");
                                    stopped_outcome(stopped, &report)
                                }
                                None => format!("loaded {} of {} rows", report.loaded, report.read),
                            };
                            notes.push(EntryNote {
                                entry: name,
                                outcome,
                            });
                            total.read += report.read;
                            total.loaded += report.loaded;
                            total.duplicate += report.duplicate;
                            total.rejected += report.rejected;
                            total.without_customer += report.without_customer;
                            total.touched.extend(&report.touched);
                        }
                        Err(LoadError::File(e)) if transient_read(&e).is_none() => {
                            // Nothing of this entry stays; the other entries load.
                            writers
                                .execute_all("ROLLBACK TO SAVEPOINT entry")
                                .await
                                .map_err(LoadFailure::db)?;
                            warn!(entry = %name, error = %e, "entry failed");
                            notes.push(EntryNote {
                                entry: name,
                                outcome: format!("failed: {e}"),
                            });
                        }
                        Err(other) => return Err(LoadFailure::from_load(other, &what)),
                    }
                }
                if total.read == 0
                    && notes.iter().all(|n| !n.outcome.starts_with("loaded"))
                    && notes.iter().any(|n| !n.outcome.starts_with("skipped"))
                {
                    let reasons: Vec<String> = notes
                        .iter()
                        .map(|n| format!("{}: {}", n.entry, n.outcome))
                        .collect();
                    return Err(LoadFailure::refused(
                        &what,
                        format!("no entry could be imported ({})", reasons.join("; ")),
                    ));
                }
                Ok((total, notes))
            }
        }
    }
}

/// The note of an entry (or file) whose parser stopped: what loaded before
/// the stop, and why the rest was not read.
fn stopped_outcome(stopped: &Stopped, report: &LoadReport) -> String {
    format!(
        "stopped at line {}: {}; loaded {} of the {} rows before it (the record at line {} is in the rejected rows)",
        stopped.line,
        stopped.reason,
        report.loaded,
        report.read.saturating_sub(1),
        stopped.line
    )
}

enum LoadFailure {
    ExistingRows,
    Import(ImportError),
}

impl LoadFailure {
    fn db(e: sqlx::Error) -> Self {
        LoadFailure::Import(ImportError::Database(e))
    }

    fn refused(what: &str, reason: String) -> Self {
        LoadFailure::Import(ImportError::Refused {
            what: what.to_string(),
            reason,
        })
    }

    fn from_load(e: LoadError, what: &str) -> Self {
        match e {
            LoadError::ExistingRows => LoadFailure::ExistingRows,
            LoadError::File(file) if transient_read(&file).is_some() => {
                let source = transient_read(&file).expect("checked in the guard");
                LoadFailure::Import(ImportError::Source {
                    what: what.to_string(),
                    source,
                })
            }
            LoadError::File(file) => LoadFailure::refused(what, file.to_string()),
            LoadError::Database(db) => LoadFailure::db(db),
            LoadError::Rejects(io) => LoadFailure::Import(ImportError::Rejects(io.to_string())),
        }
    }
}

/// A read that failed for a reason a retry may fix (the source, not the
/// content), hidden inside the CSV reader's I/O error.
fn transient_read(e: &FileError) -> Option<SourceError> {
    let FileError::Read { source, .. } = e else {
        return None;
    };
    let inner = source.get_ref()?;
    if let Some(source) = inner.downcast_ref::<SourceError>() {
        return source.is_transient().then(|| source.clone());
    }
    match ZipError::from_io(source) {
        Some(ZipError::Source(source)) if source.is_transient() => Some(source.clone()),
        _ if source.kind() == std::io::ErrorKind::UnexpectedEof
            && inner.downcast_ref::<ZipError>().is_none() =>
        {
            // The pump feeding the reader stopped before the end.
            Some(SourceError::Io {
                what: "object".into(),
                message: source.to_string(),
            })
        }
        _ => None,
    }
}

async fn sha256_of(source: Arc<dyn RangeRead>, size: u64) -> Result<String, SourceError> {
    let mut hasher = Sha256::new();
    let mut stream = std::pin::pin!(chunks(source, 0, size, READ_CHUNK));
    while let Some(chunk) = stream.next().await {
        hasher.update(&chunk?);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// Stops a decompressor at `max` bytes of output (gzip bombs).
struct Limited<R> {
    inner: R,
    left: u64,
    max: u64,
}

impl<R> Limited<R> {
    fn new(inner: R, max: u64) -> Self {
        Self {
            inner,
            left: max,
            max,
        }
    }
}

impl<R: Read> Read for Limited<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n as u64 > self.left {
            return Err(std::io::Error::other(format!(
                "decompressed data exceeds the limit of {} bytes",
                self.max
            )));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

/// A load of at least this many rows is followed by an ANALYZE of the
/// months it loaded into: the totals that run next plan with the month's
/// new size, not wait for autovacuum's next round.
pub const LARGE_LOAD_ROWS: u64 = 100_000;

/// Analyses the monthly partitions of `call_detail_record` from `from`'s
/// month to `to`'s. A failed ANALYZE costs only a plan: it is logged, and
/// the import stands.
async fn analyze_months(
    pool: &sqlx::PgPool,
    from: chrono::DateTime<chrono::Utc>,
    to: chrono::DateTime<chrono::Utc>,
) {
    use chrono::{Datelike, Months};
    let Some(mut month) = from.date_naive().with_day(1) else {
        return;
    };
    while month <= to.date_naive() {
        let partition = format!("call_detail_record_y{}", month.format("%Ym%m"));
        let exists: Result<bool, sqlx::Error> =
            sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
                .bind(&partition)
                .fetch_one(pool)
                .await;
        let analysed = match exists {
            Ok(true) => sqlx::query(&format!("ANALYZE {partition}"))
                .execute(pool)
                .await
                .map(|_| ()),
            Ok(false) => Ok(()),
            Err(e) => Err(e),
        };
        if let Err(e) = analysed {
            tracing::warn!(partition, error = %e, "analyse after a large load failed");
        }
        let Some(next) = month.checked_add_months(Months::new(1)) else {
            return;
        };
        month = next;
    }
}
