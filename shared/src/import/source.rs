//! Byte sources for the import: ranged reads of an object (S3, a local file,
//! memory), a stream of chunks over a byte range, and a bridge from that
//! async stream to a blocking [`std::io::Read`] for the synchronous parsers.
//!
//! Memory stays bounded: a [`chunks`] stream holds one chunk at a time, and
//! [`spawn_pump`] buffers at most `capacity` chunks between the reader task
//! and the blocking consumer.

use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::{Buf, Bytes};
use futures::{Stream, StreamExt};
use tokio::sync::mpsc;

/// Why a ranged read failed. [`SourceError::is_transient`] says whether a
/// retry of the same read (or of the whole import) can help.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SourceError {
    /// The object or file does not exist: permanent.
    #[error("object {what} not found; check the bucket and key (or the path)")]
    NotFound { what: String },
    /// Permission denied: permanent until someone fixes the policy.
    #[error("access to {what} denied: {message}; check the function's IAM policy (or the file's permissions)")]
    AccessDenied { what: String, message: String },
    /// A read past the end: the object is shorter than its listed length,
    /// or a caller asked for a range it should not have. Permanent.
    #[error("range {offset}..{end} is beyond the end of {what} ({size} bytes); the object is shorter than expected", end = offset.saturating_add(*len))]
    OutOfRange {
        what: String,
        offset: u64,
        len: u64,
        size: u64,
    },
    /// The object was replaced while it was being read (its ETag changed).
    /// Retrying the whole import reads the new version consistently.
    #[error(
        "object {what} changed while it was being read; retry the import to read the new version"
    )]
    Changed { what: String },
    /// A network or disk failure, a timeout, a throttle or a server error:
    /// worth a retry.
    #[error("reading {what} failed (transient, worth a retry): {message}")]
    Io { what: String, message: String },
    /// Any other refusal by the storage service: permanent.
    #[error("reading {what} was refused: {message}")]
    Rejected { what: String, message: String },
}

impl SourceError {
    /// True when a retry may succeed: I/O failures, and an object that
    /// changed under the reader (a retry of the whole import reads the new
    /// version). NotFound, AccessDenied, OutOfRange and Rejected are
    /// permanent for this object.
    pub fn is_transient(&self) -> bool {
        matches!(self, SourceError::Io { .. } | SourceError::Changed { .. })
    }

    fn io_kind(&self) -> io::ErrorKind {
        match self {
            SourceError::NotFound { .. } => io::ErrorKind::NotFound,
            SourceError::AccessDenied { .. } => io::ErrorKind::PermissionDenied,
            SourceError::OutOfRange { .. } => io::ErrorKind::UnexpectedEof,
            _ => io::ErrorKind::Other,
        }
    }
}

/// Wraps the error so a blocking reader's caller can get it back with
/// `err.get_ref().and_then(|e| e.downcast_ref::<SourceError>())`.
impl From<SourceError> for io::Error {
    fn from(e: SourceError) -> Self {
        io::Error::new(e.io_kind(), e)
    }
}

/// Random access to an object of known length. Implementations return
/// exactly `len` bytes, or an error (a range past the end is
/// [`SourceError::OutOfRange`], never a short read).
#[async_trait]
#[allow(clippy::len_without_is_empty)] // an object's length, not a collection's
pub trait RangeRead: Send + Sync {
    /// The object's length in bytes.
    async fn len(&self) -> Result<u64, SourceError>;
    /// Bytes `offset..offset + len`.
    async fn read_range(&self, offset: u64, len: u64) -> Result<Bytes, SourceError>;
    /// Where the bytes come from, for messages: `s3://bucket/key`, a path.
    fn describe(&self) -> String;
}

fn check_range(what: &str, offset: u64, len: u64, size: u64) -> Result<(), SourceError> {
    match offset.checked_add(len) {
        Some(end) if end <= size => Ok(()),
        _ => Err(SourceError::OutOfRange {
            what: what.to_string(),
            offset,
            len,
            size,
        }),
    }
}

/// An object held in memory (tests, small uploads).
#[derive(Debug, Clone)]
pub struct MemorySource {
    name: String,
    bytes: Bytes,
}

impl MemorySource {
    pub fn new(bytes: impl Into<Bytes>) -> Self {
        Self::named("memory", bytes)
    }

    pub fn named(name: impl Into<String>, bytes: impl Into<Bytes>) -> Self {
        Self {
            name: name.into(),
            bytes: bytes.into(),
        }
    }
}

#[async_trait]
impl RangeRead for MemorySource {
    async fn len(&self) -> Result<u64, SourceError> {
        Ok(self.bytes.len() as u64)
    }

    async fn read_range(&self, offset: u64, len: u64) -> Result<Bytes, SourceError> {
        check_range(&self.name, offset, len, self.bytes.len() as u64)?;
        Ok(self.bytes.slice(offset as usize..(offset + len) as usize))
    }

    fn describe(&self) -> String {
        self.name.clone()
    }
}

/// A local file (the `temctl import` CLI, tests). Its length is taken when it
/// is opened; reads run on tokio's blocking pool.
#[derive(Debug, Clone)]
pub struct FileSource {
    path: PathBuf,
    file: Arc<std::fs::File>,
    size: u64,
}

impl FileSource {
    pub fn open(path: impl AsRef<Path>) -> Result<Self, SourceError> {
        let path = path.as_ref().to_path_buf();
        let what = path.display().to_string();
        let file = std::fs::File::open(&path).map_err(|e| io_to_source(&what, e))?;
        let meta = file.metadata().map_err(|e| io_to_source(&what, e))?;
        if meta.is_dir() {
            return Err(SourceError::Rejected {
                what,
                message: "it is a directory, not a file".into(),
            });
        }
        Ok(Self {
            path,
            file: Arc::new(file),
            size: meta.len(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn io_to_source(what: &str, e: io::Error) -> SourceError {
    let what = what.to_string();
    match e.kind() {
        io::ErrorKind::NotFound => SourceError::NotFound { what },
        io::ErrorKind::PermissionDenied => SourceError::AccessDenied {
            what,
            message: e.to_string(),
        },
        _ => SourceError::Io {
            what,
            message: e.to_string(),
        },
    }
}

#[cfg(unix)]
fn read_exact_at(file: &std::fs::File, buf: &mut [u8], offset: u64) -> io::Result<()> {
    std::os::unix::fs::FileExt::read_exact_at(file, buf, offset)
}

#[cfg(windows)]
fn read_exact_at(file: &std::fs::File, mut buf: &mut [u8], mut offset: u64) -> io::Result<()> {
    use std::os::windows::fs::FileExt;
    while !buf.is_empty() {
        match file.seek_read(buf, offset) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => {
                buf = &mut buf[n..];
                offset += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[async_trait]
impl RangeRead for FileSource {
    async fn len(&self) -> Result<u64, SourceError> {
        Ok(self.size)
    }

    async fn read_range(&self, offset: u64, len: u64) -> Result<Bytes, SourceError> {
        let what = self.describe();
        check_range(&what, offset, len, self.size)?;
        let file = self.file.clone();
        let size = self.size;
        let result = tokio::task::spawn_blocking(move || {
            let mut buf = vec![0u8; len as usize];
            read_exact_at(&file, &mut buf, offset).map(|()| buf)
        })
        .await;
        match result {
            Ok(Ok(buf)) => Ok(Bytes::from(buf)),
            Ok(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => {
                Err(SourceError::OutOfRange {
                    what,
                    offset,
                    len,
                    size,
                })
            }
            Ok(Err(e)) => Err(io_to_source(&what, e)),
            Err(join) => Err(SourceError::Io {
                what,
                message: format!("the read task failed: {join}"),
            }),
        }
    }

    fn describe(&self) -> String {
        self.path.display().to_string()
    }
}

/// Bytes `offset..offset + len` of `source` as a stream of sequential ranged
/// reads of at most `chunk_size` bytes (a `chunk_size` of 0 is taken as 1).
/// The stream ends after the first error.
pub fn chunks(
    source: Arc<dyn RangeRead>,
    offset: u64,
    len: u64,
    chunk_size: u64,
) -> impl Stream<Item = Result<Bytes, SourceError>> + Send + 'static {
    let chunk_size = chunk_size.max(1);
    let end = offset.saturating_add(len);
    futures::stream::unfold(Some(offset), move |pos| {
        let source = source.clone();
        async move {
            let pos = pos?;
            if pos >= end {
                return None;
            }
            let n = chunk_size.min(end - pos);
            match source.read_range(pos, n).await {
                Ok(bytes) if bytes.len() as u64 == n => Some((Ok(bytes), Some(pos + n))),
                Ok(bytes) => Some((
                    Err(SourceError::Io {
                        what: source.describe(),
                        message: format!(
                            "asked for {n} bytes at offset {pos}, got {}",
                            bytes.len()
                        ),
                    }),
                    None,
                )),
                Err(e) => Some((Err(e), None)),
            }
        }
    })
}

/// A blocking [`Read`] over chunks arriving on a channel, for a synchronous
/// parser on a blocking thread (`tokio::task::spawn_blocking`). Calling
/// `read` from async code panics (it uses `blocking_recv`).
///
/// An `Err` item is returned once from `read`; later reads fail too. A
/// reader made by [`spawn_pump`] also fails, rather than reporting a clean
/// end, when the pump stops before the end of its stream (task aborted or
/// panicked), so a cut-off source is never mistaken for a short one.
/// Dropping the reader stops its pump.
pub struct ChannelReader {
    rx: mpsc::Receiver<Result<Bytes, io::Error>>,
    current: Bytes,
    state: ReaderState,
    /// Set by the pump once its stream has ended; `None` for a plain channel
    /// (closing the channel is then the end of the data).
    completed: Option<Arc<AtomicBool>>,
    pump: Option<tokio::task::AbortHandle>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReaderState {
    Open,
    Ended,
    Failed,
}

impl ChannelReader {
    /// A reader over `rx`: the data ends when every sender is dropped, so the
    /// producer must send an `Err` when it fails.
    pub fn new(rx: mpsc::Receiver<Result<Bytes, io::Error>>) -> Self {
        Self {
            rx,
            current: Bytes::new(),
            state: ReaderState::Open,
            completed: None,
            pump: None,
        }
    }
}

impl std::fmt::Debug for ChannelReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChannelReader")
            .field("buffered", &self.current.len())
            .field("state", &self.state)
            .finish()
    }
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            if !self.current.is_empty() {
                let n = buf.len().min(self.current.len());
                buf[..n].copy_from_slice(&self.current[..n]);
                self.current.advance(n);
                return Ok(n);
            }
            match self.state {
                ReaderState::Ended => return Ok(0),
                ReaderState::Failed => {
                    return Err(io::Error::other(
                        "the input failed earlier; the error was already reported",
                    ))
                }
                ReaderState::Open => {}
            }
            match self.rx.blocking_recv() {
                Some(Ok(chunk)) => self.current = chunk,
                Some(Err(e)) => {
                    self.state = ReaderState::Failed;
                    return Err(e);
                }
                None => {
                    let complete = self
                        .completed
                        .as_ref()
                        .is_none_or(|done| done.load(Ordering::Acquire));
                    if complete {
                        self.state = ReaderState::Ended;
                        return Ok(0);
                    }
                    self.state = ReaderState::Failed;
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the task reading the object stopped before the end of the data",
                    ));
                }
            }
        }
    }
}

impl Drop for ChannelReader {
    fn drop(&mut self) {
        if let Some(pump) = self.pump.take() {
            pump.abort();
        }
    }
}

/// Spawns a tokio task that forwards `stream` into a channel of `capacity`
/// chunks (at least 1), and returns the blocking reader at the other end.
/// At most `capacity` chunks (plus the one being read, plus the one being
/// fetched) are in memory at once. Must be called within a tokio runtime.
pub fn spawn_pump<S, E>(stream: S, capacity: usize) -> ChannelReader
where
    S: Stream<Item = Result<Bytes, E>> + Send + 'static,
    E: Into<io::Error> + Send + 'static,
{
    let (tx, rx) = mpsc::channel(capacity.max(1));
    let completed = Arc::new(AtomicBool::new(false));
    let done = completed.clone();
    let task = tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(item) = stream.next().await {
            let failed = item.is_err();
            if tx.send(item.map_err(Into::into)).await.is_err() {
                return; // the reader is gone
            }
            if failed {
                break;
            }
        }
        done.store(true, Ordering::Release);
    });
    ChannelReader {
        rx,
        current: Bytes::new(),
        state: ReaderState::Open,
        completed: Some(completed),
        pump: Some(task.abort_handle()),
    }
}

/// The kind of an object in the inbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectKind {
    Zip,
    Gzip,
    PlainCsv,
}

/// Decides by the first bytes: `PK\x03\x04` (or `PK\x05\x06`, an empty
/// archive) is a ZIP, `1f 8b` gzip. Otherwise the key decides: a key ending
/// in `.zip` is still taken as a ZIP and `.gz` as gzip, so that opening it
/// gives a clear "not a ZIP file" / "not gzip" error rather than a CSV of
/// garbage; anything else is a plain CSV. An empty object follows its key.
pub async fn sniff(source: &dyn RangeRead, key_hint: &str) -> Result<ObjectKind, SourceError> {
    let size = source.len().await?;
    let head = source.read_range(0, size.min(4)).await?;
    if head.starts_with(b"PK\x03\x04") || head.starts_with(b"PK\x05\x06") {
        return Ok(ObjectKind::Zip);
    }
    if head.starts_with(&[0x1f, 0x8b]) {
        return Ok(ObjectKind::Gzip);
    }
    let key = key_hint.to_ascii_lowercase();
    Ok(if key.ends_with(".zip") {
        ObjectKind::Zip
    } else if key.ends_with(".gz") {
        ObjectKind::Gzip
    } else {
        ObjectKind::PlainCsv
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::TryStreamExt;

    fn numbered(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i % 251) as u8).collect()
    }

    #[tokio::test]
    async fn memory_source_returns_exact_ranges_and_refuses_reads_past_the_end() {
        let src = MemorySource::named("mem://x", numbered(100));
        assert_eq!(src.len().await.unwrap(), 100);
        assert_eq!(
            &src.read_range(10, 5).await.unwrap()[..],
            &numbered(100)[10..15]
        );
        assert_eq!(src.read_range(100, 0).await.unwrap().len(), 0);
        let err = src.read_range(98, 5).await.unwrap_err();
        assert!(matches!(err, SourceError::OutOfRange { size: 100, .. }));
        assert!(!err.is_transient());
        assert!(err.to_string().contains("mem://x"), "{err}");
    }

    #[tokio::test]
    async fn file_source_reads_ranges_and_reports_a_missing_file_as_not_found() {
        let dir = std::env::temp_dir().join(format!("tem-source-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("data.bin");
        std::fs::write(&path, numbered(1000)).unwrap();
        let src = FileSource::open(&path).unwrap();
        assert_eq!(src.len().await.unwrap(), 1000);
        assert_eq!(
            &src.read_range(990, 10).await.unwrap()[..],
            &numbered(1000)[990..]
        );
        assert!(matches!(
            src.read_range(995, 10).await,
            Err(SourceError::OutOfRange { .. })
        ));
        let err = FileSource::open(dir.join("missing.zip")).unwrap_err();
        assert!(matches!(err, SourceError::NotFound { .. }));
        assert!(err.to_string().contains("missing.zip"), "{err}");
        assert!(!err.is_transient());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn chunks_cover_the_range_in_reads_of_at_most_the_chunk_size() {
        let data = numbered(1000);
        let src: Arc<dyn RangeRead> = Arc::new(MemorySource::new(data.clone()));
        let parts: Vec<Bytes> = chunks(src.clone(), 3, 990, 7).try_collect().await.unwrap();
        assert!(parts.iter().all(|p| p.len() <= 7 && !p.is_empty()));
        assert_eq!(parts.concat(), &data[3..993]);
        let none: Vec<Bytes> = chunks(src.clone(), 0, 0, 7).try_collect().await.unwrap();
        assert!(none.is_empty());
        let mut past_end = std::pin::pin!(chunks(src, 990, 15, 7));
        assert_eq!(past_end.next().await.unwrap().unwrap().len(), 7);
        assert!(past_end.next().await.unwrap().is_err());
        assert!(
            past_end.next().await.is_none(),
            "the stream ends after an error"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_pumped_channel_reader_reads_everything_on_a_blocking_thread() {
        let data = numbered(300_000);
        let src: Arc<dyn RangeRead> = Arc::new(MemorySource::new(data.clone()));
        let mut reader = spawn_pump(chunks(src, 0, 300_000, 4096), 2);
        let read = tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            reader.read_to_end(&mut out).unwrap();
            out
        })
        .await
        .unwrap();
        assert_eq!(read, data);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_source_error_reaches_the_blocking_reader_and_can_be_downcast() {
        let src: Arc<dyn RangeRead> = Arc::new(MemorySource::named("mem://short", numbered(10)));
        // Asks for more than there is: the second read fails.
        let mut reader = spawn_pump(chunks(src, 0, 20, 8), 1);
        let err = tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            let err = reader.read_to_end(&mut out).unwrap_err();
            assert_eq!(out.len(), 8);
            // A later read does not pretend the data ended cleanly.
            assert!(reader.read(&mut [0u8; 4]).is_err());
            err
        })
        .await
        .unwrap();
        let inner = err.get_ref().and_then(|e| e.downcast_ref::<SourceError>());
        assert!(
            matches!(inner, Some(SourceError::OutOfRange { .. })),
            "{err}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_pump_that_stops_early_is_an_error_not_an_end_of_data() {
        let stream = futures::stream::iter(vec![Ok::<_, io::Error>(Bytes::from_static(b"abc"))])
            .chain(futures::stream::pending());
        let mut reader = spawn_pump(stream, 1);
        let pump = reader.pump.clone().unwrap();
        let err = tokio::task::spawn_blocking(move || {
            let mut buf = [0u8; 3];
            reader.read_exact(&mut buf).unwrap();
            pump.abort();
            reader.read(&mut buf).unwrap_err()
        })
        .await
        .unwrap();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }
}
