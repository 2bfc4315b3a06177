//! Streaming ZIP reading over ranged reads.
//!
//! [`ZipArchive::open`] makes three kinds of ranged read: the last
//! 64 KiB + 22 bytes (the end-of-central-directory record and its comment),
//! the ZIP64 end record when there is one, and the whole central directory
//! (bounded by [`ZipLimits::max_central_directory`]). [`ZipArchive::entry_data`]
//! then reads one entry's local header and streams its compressed bytes in
//! chunks; [`EntryReader`] decompresses them on a blocking thread and checks
//! the actual output against the limits, the declared size and the CRC-32.
//! Nothing holds a whole archive or a whole entry in memory.
//!
//! Names: UTF-8 when general-purpose flag bit 11 is set (invalid sequences
//! become U+FFFD); otherwise the Info-ZIP Unicode Path extra field (0x7075)
//! when present and matching, else IBM code page 437 (the ZIP default), via a
//! full table: bytes below 0x80 are ASCII, the others map to CP437's letters
//! and symbols, so `é` written by an old Windows zipper comes out as `é`.
//!
//! Not supported (refused with a clear error): encryption, compression
//! methods other than stored (0) and deflate (8), split or spanned archives,
//! and archives with bytes prepended (self-extracting stubs).

use std::io::{self, Read};
use std::sync::Arc;

use bytes::Bytes;
use futures::{Stream, TryStreamExt};

use super::source::{chunks, spawn_pump, ChannelReader, RangeRead, SourceError};
/// Re-exported: sniffing lives with the sources, next to the plain-CSV path.
pub use super::source::{sniff, ObjectKind};

/// Compression method 0: the bytes are stored as they are.
pub const METHOD_STORED: u16 = 0;
/// Compression method 8: raw deflate.
pub const METHOD_DEFLATED: u16 = 8;
/// The size of the ranged reads that stream an entry's data.
pub const DEFAULT_CHUNK_SIZE: u64 = 1 << 20;
/// Output below this size is never refused for its compression ratio: a tiny
/// CSV can compress very well (a header-only file, a file of blanks).
pub const RATIO_GRACE_BYTES: u64 = 1 << 20;

const EOCD_SIG: u32 = 0x0605_4b50;
const EOCD_LEN: usize = 22;
const MAX_COMMENT: usize = 0xFFFF;
const EOCD64_LOCATOR_SIG: u32 = 0x0706_4b50;
const EOCD64_LOCATOR_LEN: usize = 20;
const EOCD64_SIG: u32 = 0x0606_4b50;
const EOCD64_LEN: usize = 56;
const CENTRAL_SIG: u32 = 0x0201_4b50;
const CENTRAL_LEN: usize = 46;
const LOCAL_SIG: u32 = 0x0403_4b50;
const LOCAL_LEN: usize = 30;
const EXTRA_ZIP64: u16 = 0x0001;
const EXTRA_UNICODE_PATH: u16 = 0x7075;
const FLAG_ENCRYPTED: u16 = 0x0001;
const FLAG_STRONG_ENCRYPTION: u16 = 0x0040;
const FLAG_UTF8: u16 = 0x0800;

/// Limits against zip bombs and hostile archives. (Deliberately not `Copy`,
/// so it can grow a non-`Copy` field without breaking callers.)
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZipLimits {
    /// Largest uncompressed entry, declared or actual.
    pub max_entry_uncompressed: u64,
    /// Largest uncompressed/compressed ratio, declared or actual (actual:
    /// checked once the output passes [`RATIO_GRACE_BYTES`]).
    pub max_ratio: u64,
    /// Largest central directory, read in one piece when the archive opens.
    pub max_central_directory: u64,
}

impl Default for ZipLimits {
    /// 4 GiB per entry (about 40 million CDR rows), ratio 200:1 (CSV
    /// typically deflates 5-20:1), central directory 64 MiB (about 500,000
    /// entries).
    fn default() -> Self {
        Self {
            max_entry_uncompressed: 4 << 30,
            max_ratio: 200,
            max_central_directory: 64 << 20,
        }
    }
}

/// Why an archive or an entry cannot be read. `what` is the archive
/// (`s3://bucket/key`, a path), `entry` the entry's name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ZipError {
    #[error("{what} is empty (0 bytes), not a ZIP file; the export was cut off or never written, fetch it again")]
    Empty { what: String },
    #[error("{what}: not a ZIP file: no end-of-central-directory record")]
    NotAZip { what: String },
    #[error("{what}: the ZIP file is truncated ({detail}); the upload or download was cut off, fetch the export again")]
    Truncated { what: String, detail: String },
    #[error("{what}: the ZIP central directory is {size} bytes, over the limit of {limit} bytes; refused (raise ZipLimits::max_central_directory if the file is genuine)")]
    CentralDirectoryTooLarge { what: String, size: u64, limit: u64 },
    #[error("{what}: unsupported ZIP file: {detail}")]
    Unsupported { what: String, detail: String },
    #[error("{what}: the ZIP file is corrupt: {detail}")]
    Corrupt { what: String, detail: String },
    #[error("entry {entry} refused: {reason}")]
    EntryRefused { entry: String, reason: String },
    #[error("entry {entry} is truncated or corrupt: {detail}")]
    EntryCorrupt { entry: String, detail: String },
    #[error("entry {entry} exceeds a limit: {detail}; refused as a possible zip bomb (raise ZipLimits if the file is genuine)")]
    LimitExceeded { entry: String, detail: String },
    #[error(transparent)]
    Source(#[from] SourceError),
}

impl ZipError {
    /// True when retrying may help (a transient read failure); everything
    /// about the archive's content is permanent.
    pub fn is_transient(&self) -> bool {
        matches!(self, ZipError::Source(e) if e.is_transient())
    }

    /// The `ZipError` inside an error from [`EntryReader`] or a
    /// [`ChannelReader`] over [`ZipArchive::entry_data`], if there is one.
    pub fn from_io(e: &io::Error) -> Option<&ZipError> {
        e.get_ref()
            .and_then(|inner| inner.downcast_ref::<ZipError>())
    }
}

/// Wraps the error so the CSV layer can recover it with [`ZipError::from_io`].
impl From<ZipError> for io::Error {
    fn from(e: ZipError) -> Self {
        let kind = match &e {
            ZipError::Source(SourceError::NotFound { .. }) => io::ErrorKind::NotFound,
            ZipError::Source(SourceError::AccessDenied { .. }) => io::ErrorKind::PermissionDenied,
            ZipError::Source(_) => io::ErrorKind::Other,
            ZipError::Truncated { .. } => io::ErrorKind::UnexpectedEof,
            _ => io::ErrorKind::InvalidData,
        };
        io::Error::new(kind, e)
    }
}

/// What to do with an entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryDecision {
    Import,
    /// Harmless and not for us (a directory, a README); log the reason.
    Skip(String),
    /// Dangerous or unreadable; load nothing from it and report the reason.
    Refuse(String),
}

/// One entry of the central directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZipEntry {
    pub name: String,
    /// [`METHOD_STORED`], [`METHOD_DEFLATED`], or another (refused).
    pub method: u16,
    /// The general-purpose bit flags.
    pub flags: u16,
    pub crc32: u32,
    pub compressed_size: u64,
    pub uncompressed_size: u64,
    pub local_header_offset: u64,
    /// High byte: the host system (0 MS-DOS, 3 Unix, 11 NTFS, 14 VFAT).
    pub version_made_by: u16,
    pub external_attributes: u32,
}

impl ZipEntry {
    pub fn is_dir(&self) -> bool {
        if self.name.ends_with('/') || self.name.ends_with('\\') {
            return true;
        }
        let host = self.version_made_by >> 8;
        let dos_dir = matches!(host, 0 | 11 | 14) && self.external_attributes & 0x10 != 0;
        let unix_dir = host == 3 && (self.external_attributes >> 16) & 0o170000 == 0o040000;
        dos_dir || unix_dir
    }

    /// Traditional (bit 0) or strong (bit 6) encryption.
    pub fn is_encrypted(&self) -> bool {
        self.flags & (FLAG_ENCRYPTED | FLAG_STRONG_ENCRYPTION) != 0
    }

    /// Import, skip (directories, entries not named `*.csv`) or refuse
    /// (unsafe names, encryption, unsupported methods, declared size or
    /// ratio over the limits). The declared sizes may lie: [`EntryReader`]
    /// checks the actual output as well.
    pub fn classify(&self, limits: &ZipLimits) -> EntryDecision {
        if let Some(reason) = unsafe_name(&self.name) {
            return EntryDecision::Refuse(reason);
        }
        if self.is_dir() {
            return EntryDecision::Skip("a directory".into());
        }
        if !self.name.to_ascii_lowercase().ends_with(".csv") {
            return EntryDecision::Skip("not a .csv file".into());
        }
        if self.is_encrypted() {
            return EntryDecision::Refuse(
                "the entry is encrypted (password-protected); ask the carrier for an export without a password"
                    .into(),
            );
        }
        if let Some(reason) = unsupported_method(self.method) {
            return EntryDecision::Refuse(reason);
        }
        if self.uncompressed_size > limits.max_entry_uncompressed {
            return EntryDecision::Refuse(format!(
                "its declared uncompressed size of {} bytes is over the limit of {} bytes",
                self.uncompressed_size, limits.max_entry_uncompressed
            ));
        }
        if self.uncompressed_size > RATIO_GRACE_BYTES
            && self.uncompressed_size > limits.max_ratio.saturating_mul(self.compressed_size)
        {
            return EntryDecision::Refuse(format!(
                "its declared compression ratio of {}:1 ({} bytes from {}) is over the limit of {}:1",
                self.uncompressed_size / self.compressed_size.max(1),
                self.uncompressed_size,
                self.compressed_size,
                limits.max_ratio
            ));
        }
        if self.method == METHOD_STORED && self.compressed_size != self.uncompressed_size {
            return EntryDecision::Refuse(format!(
                "it is stored uncompressed but declares {} stored and {} uncompressed bytes (corrupt)",
                self.compressed_size, self.uncompressed_size
            ));
        }
        EntryDecision::Import
    }
}

fn unsafe_name(name: &str) -> Option<String> {
    if name.is_empty() {
        return Some("the entry has an empty name".into());
    }
    if name.contains('\0') {
        return Some("the name contains a NUL byte".into());
    }
    if name.starts_with('/') || name.starts_with('\\') {
        return Some("the name is an absolute path".into());
    }
    let b = name.as_bytes();
    if b.len() >= 2 && b[0].is_ascii_alphabetic() && b[1] == b':' {
        return Some("the name starts with a drive letter (an absolute path)".into());
    }
    if name.split(['/', '\\']).any(|part| part == "..") {
        return Some("the name has a '..' path component (path traversal)".into());
    }
    None
}

fn unsupported_method(method: u16) -> Option<String> {
    let known = match method {
        METHOD_STORED | METHOD_DEFLATED => return None,
        1 => "shrink",
        6 => "implode",
        9 => "deflate64",
        12 => "bzip2",
        14 => "LZMA",
        93 => "zstd",
        95 => "xz",
        99 => "AES encryption",
        _ => "unknown",
    };
    Some(format!(
        "compression method {method} ({known}) is not supported; only stored (0) and deflate (8) are"
    ))
}

/// An opened archive: its central directory, parsed.
pub struct ZipArchive {
    source: Arc<dyn RangeRead>,
    what: String,
    limits: ZipLimits,
    entries: Vec<ZipEntry>,
    /// Where the central directory starts: every entry's data lies before it.
    data_end: u64,
    chunk_size: u64,
}

impl std::fmt::Debug for ZipArchive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZipArchive")
            .field("source", &self.what)
            .field("entries", &self.entries.len())
            .field("limits", &self.limits)
            .finish()
    }
}

fn u16le(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32le(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64le(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// The last end-of-central-directory record in `tail` whose comment fits.
fn find_eocd(tail: &[u8]) -> Option<usize> {
    if tail.len() < EOCD_LEN {
        return None;
    }
    (0..=tail.len() - EOCD_LEN).rev().find(|&i| {
        u32le(tail, i) == EOCD_SIG && i + EOCD_LEN + u16le(tail, i + 20) as usize <= tail.len()
    })
}

/// The ZIP64 end record that ends exactly where `before` ends (where the
/// locator starts): its signature, and its own size field agreeing.
fn find_eocd64(before: &[u8]) -> Option<usize> {
    if before.len() < EOCD64_LEN {
        return None;
    }
    (0..=before.len() - EOCD64_LEN).rev().find(|&i| {
        u32le(before, i) == EOCD64_SIG
            && u64le(before, i + 4).checked_add(12 + i as u64) == Some(before.len() as u64)
    })
}

impl ZipArchive {
    /// Reads the end record(s) and the central directory. An archive with
    /// bytes before its first local header (a self-extracting stub) is read
    /// too: its offsets are shifted by the size of that prefix.
    pub async fn open(source: Arc<dyn RangeRead>, limits: ZipLimits) -> Result<Self, ZipError> {
        let what = source.describe();
        let size = source.len().await?;
        if size == 0 {
            return Err(ZipError::Empty { what });
        }
        let corrupt = |detail: String| ZipError::Corrupt {
            what: what.clone(),
            detail,
        };

        let tail_len = size.min((EOCD_LEN + MAX_COMMENT) as u64);
        let tail_start = size - tail_len;
        let tail = source.read_range(tail_start, tail_len).await?;
        let Some(at) = find_eocd(&tail) else {
            let head = if tail_start == 0 {
                tail.slice(..tail.len().min(4))
            } else {
                source.read_range(0, 4).await?
            };
            if head.starts_with(b"PK\x03\x04") {
                return Err(ZipError::Truncated {
                    what,
                    detail: "it starts like a ZIP file but its end-of-central-directory record is missing".into(),
                });
            }
            return Err(ZipError::NotAZip { what });
        };
        let eocd_pos = tail_start + at as u64;
        let e = &tail[at..];
        let mut disk = u16le(e, 4) as u32;
        let mut cd_disk = u16le(e, 6) as u32;
        let mut total = u16le(e, 10) as u64;
        let mut cd_size = u32le(e, 12) as u64;
        let mut cd_offset = u32le(e, 16) as u64;
        let mut cd_end = eocd_pos;

        // ZIP64: a locator right before the end record points at the ZIP64
        // end record, whose 64-bit counts and offsets replace the 16/32-bit
        // ones (0xFFFF / 0xFFFFFFFF markers there).
        let locator = if at >= EOCD64_LOCATOR_LEN {
            Some(tail.slice(at - EOCD64_LOCATOR_LEN..at))
        } else if eocd_pos >= EOCD64_LOCATOR_LEN as u64 {
            Some(
                source
                    .read_range(
                        eocd_pos - EOCD64_LOCATOR_LEN as u64,
                        EOCD64_LOCATOR_LEN as u64,
                    )
                    .await?,
            )
        } else {
            None
        };
        if let Some(loc) = locator.filter(|l| u32le(l, 0) == EOCD64_LOCATOR_SIG) {
            let locator_pos = eocd_pos - EOCD64_LOCATOR_LEN as u64;
            let mut record_pos = u64le(&loc, 8);
            if u32le(&loc, 16) > 1 {
                return Err(ZipError::Unsupported {
                    what,
                    detail: "split or spanned archives (several disks) are not supported".into(),
                });
            }
            if record_pos.saturating_add(EOCD64_LEN as u64) > locator_pos {
                return Err(corrupt(format!(
                    "the ZIP64 locator points at offset {record_pos}, past its own position {locator_pos}"
                )));
            }
            let mut r = source.read_range(record_pos, EOCD64_LEN as u64).await?;
            if u32le(&r, 0) != EOCD64_SIG {
                // An archive with bytes before it (a self-extractor's stub)
                // keeps the offsets it had without them: find the record
                // where it ends, right before the locator, as unzip does.
                let found = (at >= EOCD64_LOCATOR_LEN)
                    .then(|| find_eocd64(&tail[..at - EOCD64_LOCATOR_LEN]))
                    .flatten();
                let Some(found) = found else {
                    return Err(corrupt(format!(
                        "no ZIP64 end-of-central-directory record at offset {record_pos}, where the locator points"
                    )));
                };
                r = tail.slice(found..found + EOCD64_LEN);
                record_pos = tail_start + found as u64;
            }
            disk = u32le(&r, 16);
            cd_disk = u32le(&r, 20);
            total = u64le(&r, 32);
            cd_size = u64le(&r, 40);
            cd_offset = u64le(&r, 48);
            cd_end = record_pos;
        }
        if disk != 0 || cd_disk != 0 {
            return Err(ZipError::Unsupported {
                what,
                detail: "split or spanned archives (several disks) are not supported".into(),
            });
        }
        if cd_size > limits.max_central_directory {
            return Err(ZipError::CentralDirectoryTooLarge {
                what,
                size: cd_size,
                limit: limits.max_central_directory,
            });
        }
        match cd_offset.checked_add(cd_size) {
            Some(end) if end <= cd_end => {}
            _ => {
                return Err(corrupt(format!(
                    "the central directory ({cd_size} bytes at offset {cd_offset}) does not fit before the end record at offset {cd_end}"
                )))
            }
        }
        if total.saturating_mul(CENTRAL_LEN as u64) > cd_size {
            return Err(corrupt(format!(
                "the end record declares {total} entries, more than a {cd_size}-byte central directory can hold"
            )));
        }

        // Bytes before the archive (a self-extracting stub, a mail header)
        // shift everything while the recorded offsets stay as they were
        // without them. Like unzip and Python's zipfile, take the gap
        // between where the central directory should end and where the end
        // record really is as that prefix, and shift every offset by it.
        let mut prefix = cd_end - (cd_offset + cd_size);
        let mut cd = if cd_size == 0 {
            Bytes::new()
        } else {
            source.read_range(cd_offset + prefix, cd_size).await?
        };
        if prefix > 0 && total > 0 && u32le(&cd, 0) != CENTRAL_SIG {
            // Not a prefix after all: something between the central
            // directory and the end record. Read it where it says it is.
            let unshifted = source.read_range(cd_offset, cd_size).await?;
            if u32le(&unshifted, 0) == CENTRAL_SIG {
                cd = unshifted;
                prefix = 0;
            }
        }
        let mut entries = Vec::with_capacity(total as usize);
        let mut pos = 0usize;
        while (entries.len() as u64) < total {
            let n = entries.len();
            let (entry, next) = parse_central_entry(&cd, pos).map_err(|detail| {
                corrupt(format!(
                    "central directory entry {} of {total} (at offset {}): {detail}",
                    n + 1,
                    cd_offset + pos as u64
                ))
            })?;
            let mut entry = entry;
            entry.local_header_offset =
                entry
                    .local_header_offset
                    .checked_add(prefix)
                    .ok_or_else(|| {
                        corrupt(format!(
                        "central directory entry {} of {total}: its local header offset overflows",
                        n + 1
                    ))
                    })?;
            entries.push(entry);
            pos = next;
        }
        Ok(Self {
            source,
            what,
            limits,
            entries,
            data_end: cd_offset + prefix,
            chunk_size: DEFAULT_CHUNK_SIZE,
        })
    }

    /// Sets the size of the ranged reads of entry data (default 1 MiB).
    pub fn with_chunk_size(mut self, chunk_size: u64) -> Self {
        self.chunk_size = chunk_size.max(1);
        self
    }

    pub fn entries(&self) -> &[ZipEntry] {
        &self.entries
    }

    pub fn limits(&self) -> &ZipLimits {
        &self.limits
    }

    /// The archive's source, for messages.
    pub fn describe(&self) -> &str {
        &self.what
    }

    /// The entry's compressed bytes, in ranged reads of the chunk size,
    /// after one read of its local header. Does not decompress or check
    /// anything but the header: see [`EntryReader`] / [`ZipArchive::reader`].
    pub fn entry_data(
        &self,
        entry: &ZipEntry,
    ) -> impl Stream<Item = Result<Bytes, ZipError>> + Send + 'static {
        let source = self.source.clone();
        let entry = entry.clone();
        let data_end = self.data_end;
        let chunk_size = self.chunk_size;
        futures::stream::once(async move {
            let start = data_start(&*source, &entry, data_end).await?;
            Ok::<_, ZipError>(
                chunks(source, start, entry.compressed_size, chunk_size).map_err(ZipError::from),
            )
        })
        .try_flatten()
    }

    /// A blocking reader of the entry's decompressed, checked bytes: the
    /// entry data pumped by a tokio task through a channel of `capacity`
    /// chunks into an [`EntryReader`]. Call it within a tokio runtime; read
    /// from it on a blocking thread (`spawn_blocking`). It does not
    /// [`classify`](ZipEntry::classify) the entry; do that first.
    pub fn reader(&self, entry: &ZipEntry, capacity: usize) -> EntryReader<ChannelReader> {
        let inner = spawn_pump(self.entry_data(entry), capacity);
        EntryReader::new(inner, entry, &self.limits)
    }
}

/// Parses the central directory entry at `pos`; returns it and the offset of
/// the next one.
fn parse_central_entry(cd: &[u8], pos: usize) -> Result<(ZipEntry, usize), String> {
    if cd.len() < pos + CENTRAL_LEN {
        return Err("the central directory ends in the middle of an entry".into());
    }
    let c = &cd[pos..];
    if u32le(c, 0) != CENTRAL_SIG {
        return Err(
            "no central directory entry signature (archive with a prefix, or corrupt)".into(),
        );
    }
    let version_made_by = u16le(c, 4);
    let flags = u16le(c, 8);
    let method = u16le(c, 10);
    let crc32 = u32le(c, 16);
    let mut compressed_size = u32le(c, 20) as u64;
    let mut uncompressed_size = u32le(c, 24) as u64;
    let name_len = u16le(c, 28) as usize;
    let extra_len = u16le(c, 30) as usize;
    let comment_len = u16le(c, 32) as usize;
    let external_attributes = u32le(c, 38);
    let mut local_header_offset = u32le(c, 42) as u64;
    let next = pos + CENTRAL_LEN + name_len + extra_len + comment_len;
    if next > cd.len() {
        return Err(
            "the entry's name, extra field or comment runs past the central directory".into(),
        );
    }
    let raw_name = &c[CENTRAL_LEN..CENTRAL_LEN + name_len];
    let extra = &c[CENTRAL_LEN + name_len..CENTRAL_LEN + name_len + extra_len];

    let mut unicode_name = None;
    let mut p = 0;
    while p + 4 <= extra.len() {
        let id = u16le(extra, p);
        let size = u16le(extra, p + 2) as usize;
        let Some(data) = extra.get(p + 4..p + 4 + size) else {
            return Err(format!(
                "extra field 0x{id:04x} runs past the end of the extra data"
            ));
        };
        if id == EXTRA_ZIP64 {
            // Only the fields saturated in the fixed header are present, in
            // this order.
            let mut q = 0;
            let mut take = |field: &mut u64| -> Result<(), String> {
                if *field == u32::MAX as u64 {
                    let v = data
                        .get(q..q + 8)
                        .ok_or("the ZIP64 extra field is too short")?;
                    *field = u64le(v, 0);
                    q += 8;
                }
                Ok(())
            };
            take(&mut uncompressed_size)?;
            take(&mut compressed_size)?;
            take(&mut local_header_offset)?;
        } else if id == EXTRA_UNICODE_PATH
            && data.len() >= 5
            && data[0] == 1
            && u32le(data, 1) == crc32fast::hash(raw_name)
        {
            unicode_name = std::str::from_utf8(&data[5..]).ok().map(str::to_string);
        }
        p += 4 + size;
    }

    let name = if flags & FLAG_UTF8 != 0 {
        String::from_utf8_lossy(raw_name).into_owned()
    } else if let Some(name) = unicode_name {
        name
    } else {
        decode_cp437(raw_name)
    };
    Ok((
        ZipEntry {
            name,
            method,
            flags,
            crc32,
            compressed_size,
            uncompressed_size,
            local_header_offset,
            version_made_by,
            external_attributes,
        },
        next,
    ))
}

/// Reads the local header (its name and extra lengths may differ from the
/// central directory's) and returns where the entry's data starts.
async fn data_start(
    source: &dyn RangeRead,
    entry: &ZipEntry,
    data_end: u64,
) -> Result<u64, ZipError> {
    let corrupt = |detail: String| ZipError::EntryCorrupt {
        entry: entry.name.clone(),
        detail,
    };
    let offset = entry.local_header_offset;
    if offset.saturating_add(LOCAL_LEN as u64) > data_end {
        return Err(corrupt(format!(
            "its local header offset {offset} is past the entries' data (which ends at {data_end})"
        )));
    }
    let h = source.read_range(offset, LOCAL_LEN as u64).await?;
    if u32le(&h, 0) != LOCAL_SIG {
        return Err(corrupt(format!("no local file header at offset {offset}")));
    }
    let flags = u16le(&h, 6);
    if flags & (FLAG_ENCRYPTED | FLAG_STRONG_ENCRYPTION) != 0 {
        return Err(ZipError::EntryRefused {
            entry: entry.name.clone(),
            reason: "its local header says it is encrypted".into(),
        });
    }
    let method = u16le(&h, 8);
    if method != entry.method {
        return Err(corrupt(format!(
            "its local header says compression method {method}, the central directory {}",
            entry.method
        )));
    }
    let start = offset + LOCAL_LEN as u64 + u16le(&h, 26) as u64 + u16le(&h, 28) as u64;
    if start.saturating_add(entry.compressed_size) > data_end {
        return Err(corrupt(format!(
            "its {} bytes of data at offset {start} run past the entries' data (which ends at {data_end})",
            entry.compressed_size
        )));
    }
    Ok(start)
}

/// Counts the bytes read through it, and notes whether the last error came
/// from the inner reader (rather than from the decoder above it).
struct Counting<R> {
    inner: R,
    count: u64,
    inner_failed: bool,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.inner.read(buf) {
            Ok(n) => {
                self.count += n as u64;
                Ok(n)
            }
            Err(e) => {
                self.inner_failed = e.kind() != io::ErrorKind::Interrupted;
                Err(e)
            }
        }
    }
}

enum Decoder<R: Read> {
    Stored(Counting<R>),
    Deflated(flate2::read::DeflateDecoder<Counting<R>>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReadState {
    Open,
    Done,
    Failed,
}

/// A blocking reader of one entry's decompressed bytes over its compressed
/// bytes (`inner`), checking the actual output: it never returns more than
/// the declared uncompressed size nor more than
/// [`ZipLimits::max_entry_uncompressed`], fails once the output passes
/// [`ZipLimits::max_ratio`] times the compressed bytes read (after
/// [`RATIO_GRACE_BYTES`]), and at the end checks the size and CRC-32 against
/// the central directory. Errors are `io::Error`s with a [`ZipError`] inside
/// ([`ZipError::from_io`]); after one, every read fails.
pub struct EntryReader<R: Read> {
    decoder: Decoder<R>,
    name: String,
    declared_size: u64,
    declared_crc: u32,
    limits: ZipLimits,
    out: u64,
    crc: crc32fast::Hasher,
    state: ReadState,
    /// Why the entry cannot be read at all; reported by the first read.
    refused: Option<String>,
}

impl<R: Read> std::fmt::Debug for EntryReader<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EntryReader")
            .field("entry", &self.name)
            .field("out", &self.out)
            .field("state", &self.state)
            .finish()
    }
}

impl<R: Read> EntryReader<R> {
    /// A reader of `entry`'s data from `inner` (its compressed bytes, e.g.
    /// a [`ChannelReader`] over [`ZipArchive::entry_data`]). An encrypted
    /// entry or an unsupported method is not an error here: the first read
    /// fails with [`ZipError::EntryRefused`].
    pub fn new(inner: R, entry: &ZipEntry, limits: &ZipLimits) -> Self {
        let refused = if entry.is_encrypted() {
            Some("the entry is encrypted".to_string())
        } else {
            unsupported_method(entry.method)
        };
        let counting = Counting {
            inner,
            count: 0,
            inner_failed: false,
        };
        let decoder = if entry.method == METHOD_DEFLATED {
            Decoder::Deflated(flate2::read::DeflateDecoder::new(counting))
        } else {
            Decoder::Stored(counting)
        };
        Self {
            decoder,
            name: entry.name.clone(),
            declared_size: entry.uncompressed_size,
            declared_crc: entry.crc32,
            limits: limits.clone(),
            out: 0,
            crc: crc32fast::Hasher::new(),
            state: ReadState::Open,
            refused,
        }
    }

    /// Decompressed bytes returned so far.
    pub fn uncompressed_bytes(&self) -> u64 {
        self.out
    }

    /// Compressed bytes consumed so far by the decompressor (not counting
    /// its read-ahead buffer).
    pub fn compressed_bytes(&self) -> u64 {
        match &self.decoder {
            Decoder::Stored(c) => c.count,
            Decoder::Deflated(d) => d.total_in(),
        }
    }

    fn read_inner(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match &mut self.decoder {
            Decoder::Stored(c) => c.read(buf),
            Decoder::Deflated(d) => d.read(buf).map_err(|e| {
                if d.get_ref().inner_failed {
                    e // the source's error (a ZipError or SourceError inside)
                } else {
                    io::Error::from(ZipError::EntryCorrupt {
                        entry: self.name.clone(),
                        detail: format!("bad deflate data: {e}"),
                    })
                }
            }),
        }
    }

    fn fail(&mut self, e: ZipError) -> io::Error {
        self.state = ReadState::Failed;
        e.into()
    }

    fn finish(&mut self) -> io::Result<usize> {
        if self.out != self.declared_size {
            let detail = format!(
                "it ends after {} bytes, its header declares {}",
                self.out, self.declared_size
            );
            return Err(self.fail(ZipError::EntryCorrupt {
                entry: self.name.clone(),
                detail,
            }));
        }
        let crc = self.crc.clone().finalize();
        if crc != self.declared_crc {
            let detail = format!(
                "its CRC-32 is {crc:08x}, its header declares {:08x}",
                self.declared_crc
            );
            return Err(self.fail(ZipError::EntryCorrupt {
                entry: self.name.clone(),
                detail,
            }));
        }
        self.state = ReadState::Done;
        Ok(0)
    }
}

impl<R: Read> Read for EntryReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.state {
            ReadState::Done => return Ok(0),
            ReadState::Failed => {
                return Err(io::Error::other(format!(
                    "entry {} failed earlier; the error was already reported",
                    self.name
                )))
            }
            ReadState::Open => {}
        }
        if let Some(reason) = self.refused.take() {
            return Err(self.fail(ZipError::EntryRefused {
                entry: self.name.clone(),
                reason,
            }));
        }
        if buf.is_empty() {
            return Ok(0);
        }
        let cap = self.limits.max_entry_uncompressed.min(self.declared_size);
        let remaining = cap - self.out;
        let result = if remaining == 0 {
            // At the cap: anything more is an error, not output.
            let mut probe = [0u8; 1];
            match self.read_inner(&mut probe) {
                Ok(0) => Ok(0),
                Ok(_) if self.out >= self.limits.max_entry_uncompressed => {
                    let detail = format!(
                        "its uncompressed data is over the limit of {} bytes",
                        self.limits.max_entry_uncompressed
                    );
                    return Err(self.fail(ZipError::LimitExceeded {
                        entry: self.name.clone(),
                        detail,
                    }));
                }
                Ok(_) => {
                    let detail = format!(
                        "it holds more than the {} bytes its header declares (a lying header: possibly a zip bomb)",
                        self.declared_size
                    );
                    return Err(self.fail(ZipError::EntryCorrupt {
                        entry: self.name.clone(),
                        detail,
                    }));
                }
                Err(e) => Err(e),
            }
        } else {
            let len = (buf.len() as u64).min(remaining) as usize;
            self.read_inner(&mut buf[..len])
        };
        let n = match result {
            Ok(n) => n,
            Err(e) => {
                self.state = ReadState::Failed;
                return Err(e);
            }
        };
        if n == 0 {
            return self.finish();
        }
        self.crc.update(&buf[..n]);
        self.out += n as u64;
        let compressed = self.compressed_bytes();
        if self.out > RATIO_GRACE_BYTES
            && self.out > self.limits.max_ratio.saturating_mul(compressed)
        {
            let detail = format!(
                "its compression ratio passed {}:1 ({} bytes from {} compressed)",
                self.limits.max_ratio, self.out, compressed
            );
            return Err(self.fail(ZipError::LimitExceeded {
                entry: self.name.clone(),
                detail,
            }));
        }
        Ok(n)
    }
}

/// IBM code page 437, bytes 0x80..=0xFF.
const CP437_HIGH: [char; 128] = [
    'Ç', 'ü', 'é', 'â', 'ä', 'à', 'å', 'ç', 'ê', 'ë', 'è', 'ï', 'î', 'ì', 'Ä', 'Å', //
    'É', 'æ', 'Æ', 'ô', 'ö', 'ò', 'û', 'ù', 'ÿ', 'Ö', 'Ü', '¢', '£', '¥', '₧', 'ƒ', //
    'á', 'í', 'ó', 'ú', 'ñ', 'Ñ', 'ª', 'º', '¿', '⌐', '¬', '½', '¼', '¡', '«', '»', //
    '░', '▒', '▓', '│', '┤', '╡', '╢', '╖', '╕', '╣', '║', '╗', '╝', '╜', '╛', '┐', //
    '└', '┴', '┬', '├', '─', '┼', '╞', '╟', '╚', '╔', '╩', '╦', '╠', '═', '╬', '╧', //
    '╨', '╤', '╥', '╙', '╘', '╒', '╓', '╫', '╪', '┘', '┌', '█', '▄', '▌', '▐', '▀', //
    'α', 'ß', 'Γ', 'π', 'Σ', 'σ', 'µ', 'τ', 'Φ', 'Θ', 'Ω', 'δ', '∞', 'φ', 'ε', '∩', //
    '≡', '±', '≥', '≤', '⌠', '⌡', '÷', '≈', '°', '∙', '·', '√', 'ⁿ', '²', '■', '\u{a0}',
];

fn decode_cp437(raw: &[u8]) -> String {
    raw.iter()
        .map(|&b| {
            if b < 0x80 {
                b as char
            } else {
                CP437_HIGH[(b - 0x80) as usize]
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::import::source::MemorySource;
    use std::io::{Cursor, Write};
    use std::sync::Mutex;
    use zip::write::SimpleFileOptions;
    use zip::CompressionMethod;

    const MIB: u64 = 1 << 20;

    fn csv_text(bytes: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(bytes + 64);
        let mut i = 0u64;
        while out.len() < bytes {
            let line = format!(
                "{:02}-01-2025;12:{:02}:{:02};0612{:06};0201234567;Spraak;Uitgaand;00:01:{:02};;0,{:04};NL;R{i}\r\n",
                i % 28 + 1,
                i % 60,
                (i * 7) % 60,
                i * 7919 % 1_000_000,
                i % 60,
                i * 13 % 10_000
            );
            out.extend_from_slice(line.as_bytes());
            i += 1;
        }
        out.truncate(bytes);
        out
    }

    fn options(method: CompressionMethod) -> SimpleFileOptions {
        SimpleFileOptions::default().compression_method(method)
    }

    /// A ZIP made by the `zip` crate.
    fn build(entries: &[(&str, &[u8], SimpleFileOptions)]) -> Vec<u8> {
        build_with(entries, |_| {})
    }

    fn build_with(
        entries: &[(&str, &[u8], SimpleFileOptions)],
        finish: impl FnOnce(&mut zip::ZipWriter<Cursor<Vec<u8>>>),
    ) -> Vec<u8> {
        let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
        for (name, data, opts) in entries {
            if name.ends_with('/') {
                w.add_directory(*name, *opts).unwrap();
            } else {
                w.start_file(*name, *opts).unwrap();
                w.write_all(data).unwrap();
            }
        }
        finish(&mut w);
        w.finish().unwrap().into_inner()
    }

    struct Raw<'a> {
        name: &'a [u8],
        flags: u16,
        data: &'a [u8],
    }

    fn put16(v: &mut Vec<u8>, x: u16) {
        v.extend_from_slice(&x.to_le_bytes());
    }
    fn put32(v: &mut Vec<u8>, x: u32) {
        v.extend_from_slice(&x.to_le_bytes());
    }
    fn put64(v: &mut Vec<u8>, x: u64) {
        v.extend_from_slice(&x.to_le_bytes());
    }

    /// A ZIP of stored entries written by hand, byte by byte. With `zip64`,
    /// every size, offset and count in the classic records is a 0xFFFF /
    /// 0xFFFFFFFF marker and the real values are only in the ZIP64 extra
    /// fields and the ZIP64 end record.
    fn handmade(entries: &[Raw], zip64: bool) -> Vec<u8> {
        let mut out = Vec::new();
        let mut central = Vec::new();
        for e in entries {
            let offset = out.len() as u64;
            let crc = crc32fast::hash(e.data);
            let size = e.data.len() as u64;
            put32(&mut out, LOCAL_SIG);
            put16(&mut out, 45);
            put16(&mut out, e.flags);
            put16(&mut out, METHOD_STORED);
            put32(&mut out, 0); // time, date
            put32(&mut out, crc);
            if zip64 {
                put32(&mut out, u32::MAX);
                put32(&mut out, u32::MAX);
                put16(&mut out, e.name.len() as u16);
                put16(&mut out, 20);
                out.extend_from_slice(e.name);
                put16(&mut out, EXTRA_ZIP64);
                put16(&mut out, 16);
                put64(&mut out, size);
                put64(&mut out, size);
            } else {
                put32(&mut out, size as u32);
                put32(&mut out, size as u32);
                put16(&mut out, e.name.len() as u16);
                put16(&mut out, 0);
                out.extend_from_slice(e.name);
            }
            out.extend_from_slice(e.data);

            put32(&mut central, CENTRAL_SIG);
            put16(&mut central, (3 << 8) | 45);
            put16(&mut central, 45);
            put16(&mut central, e.flags);
            put16(&mut central, METHOD_STORED);
            put32(&mut central, 0);
            put32(&mut central, crc);
            let marker = |v: u64| if zip64 { u32::MAX } else { v as u32 };
            put32(&mut central, marker(size));
            put32(&mut central, marker(size));
            put16(&mut central, e.name.len() as u16);
            put16(&mut central, if zip64 { 28 } else { 0 });
            put16(&mut central, 0); // comment
            put16(&mut central, 0); // disk
            put16(&mut central, 0); // internal attributes
            put32(&mut central, 0o100644 << 16);
            put32(&mut central, marker(offset));
            central.extend_from_slice(e.name);
            if zip64 {
                put16(&mut central, EXTRA_ZIP64);
                put16(&mut central, 24);
                put64(&mut central, size);
                put64(&mut central, size);
                put64(&mut central, offset);
            }
        }
        let cd_offset = out.len() as u64;
        let cd_size = central.len() as u64;
        out.extend_from_slice(&central);
        let n = entries.len() as u64;
        if zip64 {
            let record = out.len() as u64;
            put32(&mut out, EOCD64_SIG);
            put64(&mut out, 44);
            put16(&mut out, 45);
            put16(&mut out, 45);
            put32(&mut out, 0);
            put32(&mut out, 0);
            put64(&mut out, n);
            put64(&mut out, n);
            put64(&mut out, cd_size);
            put64(&mut out, cd_offset);
            put32(&mut out, EOCD64_LOCATOR_SIG);
            put32(&mut out, 0);
            put64(&mut out, record);
            put32(&mut out, 1);
        }
        put32(&mut out, EOCD_SIG);
        let (n16, size32, offset32) = if zip64 {
            (u16::MAX, u32::MAX, u32::MAX)
        } else {
            (n as u16, cd_size as u32, cd_offset as u32)
        };
        put16(&mut out, if zip64 { u16::MAX } else { 0 });
        put16(&mut out, if zip64 { u16::MAX } else { 0 });
        put16(&mut out, n16);
        put16(&mut out, n16);
        put32(&mut out, size32);
        put32(&mut out, offset32);
        put16(&mut out, 0);
        out
    }

    fn positions(bytes: &[u8], sig: u32) -> Vec<usize> {
        let sig = sig.to_le_bytes();
        bytes
            .windows(4)
            .enumerate()
            .filter(|(_, w)| *w == sig)
            .map(|(i, _)| i)
            .collect()
    }

    /// Overwrites a little-endian field of the `n`th record with `sig`.
    fn patch(bytes: &mut [u8], sig: u32, n: usize, field: usize, value: &[u8]) {
        let at = positions(bytes, sig)[n] + field;
        bytes[at..at + value.len()].copy_from_slice(value);
    }

    fn arc(bytes: Vec<u8>) -> Arc<dyn RangeRead> {
        Arc::new(MemorySource::named("mem://export.zip", bytes))
    }

    async fn open(bytes: Vec<u8>) -> Result<ZipArchive, ZipError> {
        ZipArchive::open(arc(bytes), ZipLimits::default()).await
    }

    /// Reads the entry the way the import will: pumped chunks, a blocking
    /// thread, the checking reader.
    async fn read_entry(archive: &ZipArchive, entry: &ZipEntry) -> io::Result<Vec<u8>> {
        let mut reader = archive.reader(entry, 2);
        tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            reader.read_to_end(&mut out).map(|_| out)
        })
        .await
        .unwrap()
    }

    fn zip_err(e: &io::Error) -> ZipError {
        ZipError::from_io(e)
            .unwrap_or_else(|| panic!("not a ZipError: {e:?}"))
            .clone()
    }

    fn entry<'a>(archive: &'a ZipArchive, name: &str) -> &'a ZipEntry {
        archive.entries().iter().find(|e| e.name == name).unwrap()
    }

    #[tokio::test]
    async fn deflated_and_stored_entries_read_back_byte_identically_across_chunk_boundaries() {
        let big = csv_text(300_000);
        let small = csv_text(1000);
        let bytes = build(&[
            ("deflated.csv", &big, options(CompressionMethod::Deflated)),
            ("stored.csv", &big, options(CompressionMethod::Stored)),
            ("small.csv", &small, options(CompressionMethod::Deflated)),
            ("empty.csv", b"", options(CompressionMethod::Deflated)),
        ]);
        for chunk in [7, 64 * 1024, DEFAULT_CHUNK_SIZE] {
            let archive = open(bytes.clone()).await.unwrap().with_chunk_size(chunk);
            assert_eq!(archive.entries().len(), 4);
            for (name, expected) in [
                ("deflated.csv", &big),
                ("stored.csv", &big),
                ("small.csv", &small),
                ("empty.csv", &Vec::new()),
            ] {
                let e = entry(&archive, name);
                assert_eq!(
                    e.classify(archive.limits()),
                    EntryDecision::Import,
                    "{name}"
                );
                let read = read_entry(&archive, e).await.unwrap();
                assert!(read == *expected, "{name} with {chunk}-byte chunks differs");
            }
            assert_eq!(entry(&archive, "deflated.csv").method, METHOD_DEFLATED);
            assert_eq!(entry(&archive, "stored.csv").method, METHOD_STORED);
        }
    }

    #[tokio::test]
    async fn a_zip64_archive_from_the_zip_crate_is_read() {
        let data = csv_text(100_000);
        let opts = options(CompressionMethod::Deflated).large_file(true);
        let bytes = build_with(
            &[("a.csv", &data, opts), ("b.csv", &data[..500], opts)],
            |w| w.set_zip64_comment(Some("forces the ZIP64 end record")),
        );
        assert!(!positions(&bytes, EOCD64_SIG).is_empty());
        let archive = open(bytes).await.unwrap().with_chunk_size(4096);
        assert_eq!(archive.entries().len(), 2);
        assert_eq!(
            read_entry(&archive, entry(&archive, "a.csv"))
                .await
                .unwrap(),
            data
        );
        assert_eq!(
            read_entry(&archive, entry(&archive, "b.csv"))
                .await
                .unwrap(),
            &data[..500]
        );
    }

    #[tokio::test]
    async fn an_archive_with_only_zip64_markers_in_its_classic_records_is_read_through_the_zip64_records(
    ) {
        let one = csv_text(5000);
        let two = csv_text(70);
        let bytes = handmade(
            &[
                Raw {
                    name: b"one.csv",
                    flags: 0,
                    data: &one,
                },
                Raw {
                    name: b"two.csv",
                    flags: 0,
                    data: &two,
                },
            ],
            true,
        );
        let archive = open(bytes).await.unwrap().with_chunk_size(7);
        let e = entry(&archive, "two.csv");
        assert_eq!(e.uncompressed_size, 70);
        assert_eq!(e.compressed_size, 70);
        assert!(e.local_header_offset > 5000);
        assert_eq!(
            read_entry(&archive, entry(&archive, "one.csv"))
                .await
                .unwrap(),
            one
        );
        assert_eq!(read_entry(&archive, e).await.unwrap(), two);
    }

    /// A fake self-extractor stub: `MZ`, then bytes that hold no ZIP
    /// signature.
    fn stub(len: usize) -> Vec<u8> {
        let mut out = b"MZ\x90\x00".to_vec();
        out.extend((0..len.saturating_sub(4)).map(|i| (i % 7) as u8 + b'a'));
        out.truncate(len);
        out
    }

    fn prefixed(prefix: usize, archive: &[u8]) -> Vec<u8> {
        let mut out = stub(prefix);
        out.extend_from_slice(archive);
        out
    }

    #[tokio::test]
    async fn an_archive_with_a_self_extractor_stub_before_it_is_read_with_shifted_offsets() {
        let big = csv_text(200_000);
        let small = csv_text(900);
        let archive = build(&[
            ("big.csv", &big, options(CompressionMethod::Deflated)),
            ("small.csv", &small, options(CompressionMethod::Stored)),
        ]);
        // 4 KiB, and more than the 64 KiB tail read, and 3 MiB.
        for prefix in [1, 4096, 200_000, 3 << 20] {
            let bytes = prefixed(prefix, &archive);
            let opened = open(bytes).await.unwrap().with_chunk_size(64 * 1024);
            assert_eq!(opened.entries().len(), 2, "prefix {prefix}");
            assert_eq!(
                entry(&opened, "big.csv").local_header_offset,
                prefix as u64,
                "prefix {prefix}"
            );
            assert_eq!(
                read_entry(&opened, entry(&opened, "big.csv"))
                    .await
                    .unwrap(),
                big,
                "prefix {prefix}"
            );
            assert_eq!(
                read_entry(&opened, entry(&opened, "small.csv"))
                    .await
                    .unwrap(),
                small,
                "prefix {prefix}"
            );
        }
    }

    #[tokio::test]
    async fn a_zip64_archive_with_a_prefix_is_read_through_its_shifted_zip64_records() {
        let one = csv_text(5000);
        let two = csv_text(70);
        let raw = [
            Raw {
                name: b"one.csv",
                flags: 0,
                data: &one,
            },
            Raw {
                name: b"two.csv",
                flags: 0,
                data: &two,
            },
        ];
        let bytes = prefixed(4096, &handmade(&raw, true));
        let archive = open(bytes).await.unwrap().with_chunk_size(512);
        assert_eq!(
            read_entry(&archive, entry(&archive, "one.csv"))
                .await
                .unwrap(),
            one
        );
        assert_eq!(
            read_entry(&archive, entry(&archive, "two.csv"))
                .await
                .unwrap(),
            two
        );

        let data = csv_text(100_000);
        let opts = options(CompressionMethod::Deflated).large_file(true);
        let from_crate = build_with(&[("a.csv", &data, opts)], |w| {
            w.set_zip64_comment(Some("forces the ZIP64 end record"))
        });
        let archive = open(prefixed(4096, &from_crate)).await.unwrap();
        assert_eq!(
            read_entry(&archive, entry(&archive, "a.csv"))
                .await
                .unwrap(),
            data
        );
    }

    #[tokio::test]
    async fn a_prefixed_archive_cut_short_or_with_a_bad_entry_is_still_refused() {
        let data = csv_text(50_000);
        let archive = build(&[("a.csv", &data, options(CompressionMethod::Stored))]);
        let bytes = prefixed(4096, &archive);
        let err = open(bytes[..bytes.len() - 1].to_vec()).await.unwrap_err();
        assert!(matches!(err, ZipError::NotAZip { .. }), "{err}");
        // A CRC mismatch in the shifted data is still found.
        let mut bad = bytes.clone();
        bad[4096 + LOCAL_LEN + "a.csv".len() + 100] ^= 0x01;
        let opened = open(bad).await.unwrap();
        let err = read_entry(&opened, &opened.entries()[0]).await.unwrap_err();
        assert!(err.to_string().contains("CRC-32"), "{err}");
        // A central directory that claims more than fits before its end
        // record is corrupt, not a negative prefix.
        let mut lying = bytes;
        let eocd = positions(&lying, EOCD_SIG)[0];
        lying[eocd + 16..eocd + 20].copy_from_slice(&(u32::MAX - 10).to_le_bytes());
        let err = open(lying).await.unwrap_err();
        assert!(matches!(err, ZipError::Corrupt { .. }), "{err}");
    }

    #[tokio::test]
    async fn utf8_names_and_cp437_names_are_decoded() {
        let bytes = build(&[(
            "gesprekken-€-ünïcode/maart.csv",
            b"x\n",
            options(CompressionMethod::Deflated),
        )]);
        let archive = open(bytes).await.unwrap();
        assert_eq!(archive.entries()[0].name, "gesprekken-€-ünïcode/maart.csv");
        assert_ne!(archive.entries()[0].flags & FLAG_UTF8, 0);

        // "café.csv" as an old DOS zipper writes it: é is 0x82 in CP437.
        let bytes = handmade(
            &[Raw {
                name: b"caf\x82 \xb0.csv",
                flags: 0,
                data: b"x",
            }],
            false,
        );
        let archive = open(bytes).await.unwrap();
        assert_eq!(archive.entries()[0].name, "café ░.csv");
        // The same byte with the UTF-8 flag is invalid UTF-8: replaced, not a panic.
        let bytes = handmade(
            &[Raw {
                name: b"caf\x82.csv",
                flags: FLAG_UTF8,
                data: b"x",
            }],
            false,
        );
        let archive = open(bytes).await.unwrap();
        assert_eq!(archive.entries()[0].name, "caf\u{fffd}.csv");
    }

    #[tokio::test]
    async fn directories_and_non_csv_entries_are_skipped_with_reasons() {
        let opts = options(CompressionMethod::Deflated);
        let bytes = build(&[
            ("exports/", b"", opts),
            ("exports/readme.txt", b"hello", opts),
            ("exports/usage.CSV", b"a;b\n", opts),
            ("exports/usage.csv.bak", b"a;b\n", opts),
        ]);
        let archive = open(bytes).await.unwrap();
        let limits = ZipLimits::default();
        let decisions: Vec<_> = archive
            .entries()
            .iter()
            .map(|e| (e.name.as_str(), e.classify(&limits)))
            .collect();
        assert_eq!(
            decisions,
            vec![
                ("exports/", EntryDecision::Skip("a directory".into())),
                (
                    "exports/readme.txt",
                    EntryDecision::Skip("not a .csv file".into())
                ),
                ("exports/usage.CSV", EntryDecision::Import),
                (
                    "exports/usage.csv.bak",
                    EntryDecision::Skip("not a .csv file".into())
                ),
            ]
        );
        assert!(archive.entries()[0].is_dir());
    }

    #[tokio::test]
    async fn an_entry_flagged_as_encrypted_is_refused() {
        let mut bytes = build(&[("secret.csv", b"a;b\n", options(CompressionMethod::Stored))]);
        patch(&mut bytes, LOCAL_SIG, 0, 6, &FLAG_ENCRYPTED.to_le_bytes());
        patch(&mut bytes, CENTRAL_SIG, 0, 8, &FLAG_ENCRYPTED.to_le_bytes());
        let archive = open(bytes).await.unwrap();
        let e = &archive.entries()[0];
        assert!(e.is_encrypted());
        match e.classify(archive.limits()) {
            EntryDecision::Refuse(reason) => assert!(reason.contains("encrypted"), "{reason}"),
            other => panic!("{other:?}"),
        }
        let err = read_entry(&archive, e).await.unwrap_err();
        assert!(
            matches!(zip_err(&err), ZipError::EntryRefused { .. }),
            "{err}"
        );

        // Strong encryption (bit 6) too.
        let strong = ZipEntry {
            flags: FLAG_STRONG_ENCRYPTION,
            ..e.clone()
        };
        assert!(strong.is_encrypted());
    }

    #[tokio::test]
    async fn an_encryption_flag_only_in_the_local_header_stops_the_read() {
        let mut bytes = build(&[("secret.csv", b"a;b\n", options(CompressionMethod::Stored))]);
        patch(&mut bytes, LOCAL_SIG, 0, 6, &FLAG_ENCRYPTED.to_le_bytes());
        let archive = open(bytes).await.unwrap();
        let err = read_entry(&archive, &archive.entries()[0])
            .await
            .unwrap_err();
        assert!(
            matches!(zip_err(&err), ZipError::EntryRefused { .. }),
            "{err}"
        );
    }

    #[tokio::test]
    async fn path_traversal_and_absolute_names_are_refused() {
        let names: [&[u8]; 6] = [
            b"../evil.csv",
            b"exports/../../evil.csv",
            b"..\\evil.csv",
            b"/abs.csv",
            b"\\abs.csv",
            b"C:\\abs.csv",
        ];
        let raws: Vec<Raw> = names
            .iter()
            .map(|n| Raw {
                name: n,
                flags: 0,
                data: b"x",
            })
            .collect();
        let archive = open(handmade(&raws, false)).await.unwrap();
        assert_eq!(archive.entries().len(), names.len());
        for e in archive.entries() {
            match e.classify(archive.limits()) {
                EntryDecision::Refuse(reason) => {
                    assert!(reason.contains("path"), "{}: {reason}", e.name)
                }
                other => panic!("{}: {other:?}", e.name),
            }
        }
        // Dots inside a name are fine.
        let ok = ZipEntry {
            name: "a..b/x..csv".into(),
            ..archive.entries()[0].clone()
        };
        assert_eq!(ok.classify(&ZipLimits::default()), EntryDecision::Import);
    }

    #[tokio::test]
    async fn unsupported_compression_methods_are_refused() {
        let mut bytes = build(&[("bz.csv", b"a;b\n", options(CompressionMethod::Stored))]);
        patch(&mut bytes, CENTRAL_SIG, 0, 10, &12u16.to_le_bytes());
        let archive = open(bytes).await.unwrap();
        match archive.entries()[0].classify(archive.limits()) {
            EntryDecision::Refuse(reason) => assert!(reason.contains("bzip2"), "{reason}"),
            other => panic!("{other:?}"),
        }
        let err = read_entry(&archive, &archive.entries()[0])
            .await
            .unwrap_err();
        assert!(
            matches!(zip_err(&err), ZipError::EntryRefused { .. }),
            "{err}"
        );
    }

    fn deflate(data: &[u8]) -> Vec<u8> {
        let mut enc =
            flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(data).unwrap();
        enc.finish().unwrap()
    }

    /// 50 MB of zeros, deflated (about 50 KB).
    fn zeros_bomb() -> (Vec<u8>, ZipEntry) {
        let zeros = vec![0u8; 50_000_000];
        let compressed = deflate(&zeros);
        let entry = ZipEntry {
            name: "bomb.csv".into(),
            method: METHOD_DEFLATED,
            flags: 0,
            crc32: crc32fast::hash(&zeros),
            compressed_size: compressed.len() as u64,
            uncompressed_size: zeros.len() as u64,
            local_header_offset: 0,
            version_made_by: 3 << 8,
            external_attributes: 0,
        };
        (compressed, entry)
    }

    /// Reads to the end, returning how many bytes came out before the error.
    fn drain(mut reader: impl Read) -> (u64, io::Result<()>) {
        let mut buf = vec![0u8; 64 * 1024];
        let mut total = 0u64;
        loop {
            match reader.read(&mut buf) {
                Ok(0) => return (total, Ok(())),
                Ok(n) => total += n as u64,
                Err(e) => return (total, Err(e)),
            }
        }
    }

    #[test]
    fn a_zip_bomb_is_refused_by_its_declared_size_and_ratio() {
        let (compressed, entry) = zeros_bomb();
        let limits = ZipLimits {
            max_entry_uncompressed: 10_000_000,
            ..ZipLimits::default()
        };
        match entry.classify(&limits) {
            EntryDecision::Refuse(reason) => assert!(reason.contains("over the limit"), "{reason}"),
            other => panic!("{other:?}"),
        }
        // Under the size limit, but declaring 201:1.
        let over_ratio = ZipEntry {
            uncompressed_size: compressed.len() as u64 * 201,
            ..entry.clone()
        };
        assert!(over_ratio.uncompressed_size < limits.max_entry_uncompressed);
        match over_ratio.classify(&limits) {
            EntryDecision::Refuse(reason) => assert!(reason.contains("ratio"), "{reason}"),
            other => panic!("{other:?}"),
        }
        let at_ratio = ZipEntry {
            uncompressed_size: compressed.len() as u64 * 200,
            ..entry
        };
        assert_eq!(at_ratio.classify(&limits), EntryDecision::Import);
    }

    #[test]
    fn a_zip_bomb_with_a_lying_header_is_stopped_by_the_actual_output() {
        let (compressed, entry) = zeros_bomb();
        let limits = ZipLimits {
            max_entry_uncompressed: 10_000_000,
            ..ZipLimits::default()
        };

        // Declares 1,000 bytes: passes the declared checks, stops at 1,000.
        let small = ZipEntry {
            uncompressed_size: 1000,
            ..entry.clone()
        };
        assert_eq!(small.classify(&limits), EntryDecision::Import);
        let reader = EntryReader::new(Cursor::new(&compressed), &small, &limits);
        let (out, result) = drain(reader);
        let err = result.unwrap_err();
        assert_eq!(out, 1000);
        assert!(
            matches!(zip_err(&err), ZipError::EntryCorrupt { .. }),
            "{err}"
        );
        assert!(
            err.to_string().contains("more than the 1000 bytes"),
            "{err}"
        );

        // Declares its real size without the declared checks (a caller that
        // skipped classify): the ratio check stops it soon after the grace.
        let reader = EntryReader::new(Cursor::new(&compressed), &entry, &limits);
        let (out, result) = drain(reader);
        let err = result.unwrap_err();
        assert!(
            matches!(zip_err(&err), ZipError::LimitExceeded { .. }),
            "{err}"
        );
        assert!(err.to_string().contains("ratio"), "{err}");
        assert!(out <= 2 * RATIO_GRACE_BYTES, "{out} bytes came out");

        // With no ratio limit, the size limit stops it at exactly the limit.
        let no_ratio = ZipLimits {
            max_ratio: u64::MAX,
            ..limits
        };
        let reader = EntryReader::new(Cursor::new(&compressed), &entry, &no_ratio);
        let (out, result) = drain(reader);
        let err = result.unwrap_err();
        assert!(
            matches!(zip_err(&err), ZipError::LimitExceeded { .. }),
            "{err}"
        );
        assert_eq!(out, 10_000_000);
    }

    #[tokio::test]
    async fn a_zip_bomb_in_an_archive_with_a_patched_size_is_stopped_through_the_whole_pipeline() {
        let zeros = vec![0u8; 50_000_000];
        let mut bytes = build(&[("bomb.csv", &zeros, options(CompressionMethod::Deflated))]);
        drop(zeros);
        // Declare 900 KB (under the ratio grace): only the output check can
        // catch it.
        let declared = 900_000u32.to_le_bytes();
        patch(&mut bytes, CENTRAL_SIG, 0, 24, &declared);
        patch(&mut bytes, LOCAL_SIG, 0, 22, &declared);
        let limits = ZipLimits {
            max_entry_uncompressed: 10_000_000,
            ..ZipLimits::default()
        };
        let archive = ZipArchive::open(arc(bytes), limits.clone()).await.unwrap();
        let e = archive.entries()[0].clone();
        assert_eq!(e.classify(&limits), EntryDecision::Import);
        let reader = archive.reader(&e, 2);
        let (out, result) = tokio::task::spawn_blocking(move || drain(reader))
            .await
            .unwrap();
        assert!(result.is_err());
        assert!(out <= 900_000);
    }

    #[tokio::test]
    async fn a_truncated_archive_gives_a_clear_error() {
        let data = csv_text(50_000);
        let bytes = build(&[("a.csv", &data, options(CompressionMethod::Stored))]);
        let cd_start = positions(&bytes, CENTRAL_SIG)[0];
        for cut in [20_000, cd_start, bytes.len() - 1] {
            let err = open(bytes[..cut].to_vec()).await.unwrap_err();
            assert!(
                matches!(err, ZipError::Truncated { .. }),
                "cut at {cut}: {err}"
            );
            assert!(err.to_string().contains("truncated"), "{err}");
        }
    }

    #[tokio::test]
    async fn entry_data_shorter_than_declared_is_reported_as_truncated_or_corrupt() {
        let data = csv_text(50_000);
        let mut bytes = build(&[("a.csv", &data, options(CompressionMethod::Deflated))]);
        // The central directory now claims less compressed data than there is.
        let compressed = u32le(&bytes, positions(&bytes, CENTRAL_SIG)[0] + 20);
        patch(
            &mut bytes,
            CENTRAL_SIG,
            0,
            20,
            &(compressed / 2).to_le_bytes(),
        );
        let archive = open(bytes).await.unwrap().with_chunk_size(1000);
        let err = read_entry(&archive, &archive.entries()[0])
            .await
            .unwrap_err();
        assert!(
            matches!(zip_err(&err), ZipError::EntryCorrupt { .. }),
            "{err}"
        );
        assert!(err.to_string().contains("truncated or corrupt"), "{err}");
    }

    #[tokio::test]
    async fn random_bytes_an_empty_file_and_a_csv_are_not_zips() {
        let mut seed = 0x1234_5678u32;
        let random: Vec<u8> = (0..100_000)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 17;
                seed ^= seed << 5;
                seed as u8
            })
            .collect();
        for bytes in [
            random,
            b"Datum;Tijd\n01-01-2025;12:00:00\n".to_vec(),
            b"PK".to_vec(),
        ] {
            let err = open(bytes).await.unwrap_err();
            assert!(matches!(err, ZipError::NotAZip { .. }), "{err}");
            assert_eq!(
                err.to_string(),
                "mem://export.zip: not a ZIP file: no end-of-central-directory record"
            );
        }
        let err = open(Vec::new()).await.unwrap_err();
        assert!(matches!(err, ZipError::Empty { .. }), "{err}");
        assert!(err.to_string().contains("empty"), "{err}");
    }

    #[tokio::test]
    async fn an_archive_without_entries_opens_with_none() {
        let bytes = build(&[]);
        assert_eq!(bytes.len(), 22);
        let archive = open(bytes).await.unwrap();
        assert!(archive.entries().is_empty());
        // With a comment too.
        let bytes = build_with(&[], |w| w.set_comment("no usage this month"));
        assert!(open(bytes).await.unwrap().entries().is_empty());
    }

    #[tokio::test]
    async fn a_crc_mismatch_is_detected() {
        let data = csv_text(10_000);
        let mut bytes = build(&[("a.csv", &data, options(CompressionMethod::Stored))]);
        let first_data_byte = LOCAL_LEN + "a.csv".len() + u16le(&bytes, 28) as usize;
        bytes[first_data_byte + 5000] ^= 0x01;
        let archive = open(bytes).await.unwrap();
        let err = read_entry(&archive, &archive.entries()[0])
            .await
            .unwrap_err();
        assert!(
            matches!(zip_err(&err), ZipError::EntryCorrupt { .. }),
            "{err}"
        );
        assert!(err.to_string().contains("CRC-32"), "{err}");
    }

    #[tokio::test]
    async fn a_central_directory_over_the_limit_is_refused_before_it_is_read() {
        let opts = options(CompressionMethod::Stored);
        let bytes = build(&[("a.csv", b"x", opts), ("b.csv", b"y", opts)]);
        let limits = ZipLimits {
            max_central_directory: 60,
            ..ZipLimits::default()
        };
        let err = ZipArchive::open(arc(bytes), limits).await.unwrap_err();
        assert!(
            matches!(err, ZipError::CentralDirectoryTooLarge { limit: 60, .. }),
            "{err}"
        );
    }

    #[tokio::test]
    async fn a_missing_object_is_a_source_error_callers_can_tell_apart() {
        struct Missing;
        #[async_trait::async_trait]
        impl RangeRead for Missing {
            async fn len(&self) -> Result<u64, SourceError> {
                Err(SourceError::NotFound {
                    what: "s3://b/k".into(),
                })
            }
            async fn read_range(&self, _: u64, _: u64) -> Result<Bytes, SourceError> {
                unreachable!()
            }
            fn describe(&self) -> String {
                "s3://b/k".into()
            }
        }
        let err = ZipArchive::open(Arc::new(Missing), ZipLimits::default())
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "object s3://b/k not found; check the bucket and key (or the path)"
        );
        assert!(!err.is_transient());
    }

    /// Records every ranged read.
    struct Recording {
        inner: MemorySource,
        reads: Mutex<Vec<(u64, u64)>>,
    }

    #[async_trait::async_trait]
    impl RangeRead for Recording {
        async fn len(&self) -> Result<u64, SourceError> {
            self.inner.len().await
        }
        async fn read_range(&self, offset: u64, len: u64) -> Result<Bytes, SourceError> {
            self.reads.lock().unwrap().push((offset, len));
            self.inner.read_range(offset, len).await
        }
        fn describe(&self) -> String {
            self.inner.describe()
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_large_entry_streams_through_the_pump_in_bounded_reads_on_a_blocking_thread() {
        let data = csv_text(20 * MIB as usize);
        let expected_crc = crc32fast::hash(&data);
        let bytes = build(&[("usage.csv", &data, options(CompressionMethod::Deflated))]);
        drop(data);
        let archive_len = bytes.len() as u64;
        let source = Arc::new(Recording {
            inner: MemorySource::new(bytes),
            reads: Mutex::new(Vec::new()),
        });
        let archive = ZipArchive::open(source.clone(), ZipLimits::default())
            .await
            .unwrap()
            .with_chunk_size(64 * 1024);
        assert_eq!(
            source.reads.lock().unwrap().len(),
            2,
            "end record, central directory"
        );
        let e = archive.entries()[0].clone();
        let mut reader = archive.reader(&e, 4);
        let (len, crc) = tokio::task::spawn_blocking(move || {
            let mut hasher = crc32fast::Hasher::new();
            let mut buf = vec![0u8; 8192];
            let mut len = 0u64;
            loop {
                let n = reader.read(&mut buf).unwrap();
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
                len += n as u64;
            }
            (len, hasher.finalize())
        })
        .await
        .unwrap();
        assert_eq!(len, 20 * MIB);
        assert_eq!(crc, expected_crc);
        let reads = source.reads.lock().unwrap();
        assert!(
            reads.iter().all(|&(_, n)| n <= 64 * 1024 + 22 + 0xFFFF),
            "{reads:?}"
        );
        assert!(reads.iter().map(|&(_, n)| n).sum::<u64>() < archive_len + 70_000);
    }

    #[tokio::test]
    async fn sniff_tells_zip_gzip_and_csv_apart_by_magic_bytes_then_by_key() {
        let zip_bytes = build(&[("a.csv", b"x", options(CompressionMethod::Stored))]);
        let cases: Vec<(Vec<u8>, &str, ObjectKind)> = vec![
            (zip_bytes, "inbox/x.csv", ObjectKind::Zip),
            (build(&[]), "inbox/x", ObjectKind::Zip),
            (vec![0x1f, 0x8b, 8, 0, 0], "inbox/x.csv", ObjectKind::Gzip),
            (
                b"Datum;Tijd\n".to_vec(),
                "inbox/x.csv",
                ObjectKind::PlainCsv,
            ),
            (b"Datum;Tijd\n".to_vec(), "inbox/x.ZIP", ObjectKind::Zip),
            (b"Datum;Tijd\n".to_vec(), "inbox/x.csv.gz", ObjectKind::Gzip),
            (Vec::new(), "inbox/x.csv", ObjectKind::PlainCsv),
            (b"P".to_vec(), "inbox/x.csv", ObjectKind::PlainCsv),
        ];
        for (bytes, key, kind) in cases {
            let src = MemorySource::new(bytes);
            assert_eq!(sniff(&src, key).await.unwrap(), kind, "{key}");
        }
    }
}
