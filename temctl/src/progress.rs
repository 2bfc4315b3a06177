//! The progress bar of an import: a [`RangeRead`] decorator that counts the
//! bytes the importer reads from the file.
//!
//! The importer reads the file twice: first all of it, in order, for its
//! sha256 (which decides whether the content was imported before), then
//! again to load it. So the first `size` bytes read are the checksum pass
//! ("1/2 checksum"); everything after is the load ("2/2 load"), and the bar
//! starts again from zero. The load's position is bytes read from the file,
//! up to a few MiB ahead of the rows written to the database (a small ZIP is
//! read completely long before its rows are in). So once the whole file has
//! been read the bar turns into a spinner saying the rows are being written,
//! rather than showing a rate and an ETA that no longer mean anything.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tem_shared::import::source::{RangeRead, SourceError};

const TEMPLATE: &str =
    "{prefix:>12} [{bar:32}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta} {msg}";
const WRITING_TEMPLATE: &str = "{prefix:>12} {spinner} {msg} ({elapsed})";
const CHECKSUM: &str = "1/2 checksum";
const LOAD: &str = "2/2 load";

pub struct Progress {
    bar: ProgressBar,
    size: u64,
    read: AtomicU64,
}

impl Progress {
    /// A bar for a file of `size` bytes, drawn on stderr when `visible`.
    pub fn new(size: u64, visible: bool) -> Arc<Self> {
        let style = ProgressStyle::with_template(TEMPLATE)
            .expect("the progress template is valid")
            .progress_chars("=> ");
        let target = if visible {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        let bar = ProgressBar::with_draw_target(Some(size), target)
            .with_style(style)
            .with_prefix(CHECKSUM);
        if visible {
            bar.enable_steady_tick(Duration::from_millis(200));
        }
        Arc::new(Self {
            bar,
            size,
            read: AtomicU64::new(0),
        })
    }

    fn record(&self, n: u64) {
        let before = self.read.fetch_add(n, Ordering::Relaxed);
        let after = before + n;
        if after <= self.size {
            self.bar.set_position(after);
            return;
        }
        if before < self.size || (before == self.size && self.bar.prefix() == CHECKSUM) {
            self.bar.reset();
            self.bar.set_prefix(LOAD);
        }
        let loaded = (after - self.size).min(self.size);
        self.bar.set_position(loaded);
        if loaded == self.size && self.bar.message().is_empty() {
            self.bar.set_style(
                ProgressStyle::with_template(WRITING_TEMPLATE)
                    .expect("the progress template is valid"),
            );
            self.bar
                .set_message("file read; writing the rows to the database");
        }
    }

    /// Removes the bar, before the summary is printed.
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

/// A source whose reads advance a [`Progress`].
pub struct Counted<S> {
    inner: S,
    progress: Arc<Progress>,
}

impl<S> Counted<S> {
    pub fn new(inner: S, progress: Arc<Progress>) -> Self {
        Self { inner, progress }
    }
}

#[async_trait]
impl<S: RangeRead> RangeRead for Counted<S> {
    async fn len(&self) -> Result<u64, SourceError> {
        self.inner.len().await
    }

    async fn read_range(&self, offset: u64, len: u64) -> Result<Bytes, SourceError> {
        let bytes = self.inner.read_range(offset, len).await?;
        self.progress.record(bytes.len() as u64);
        Ok(bytes)
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tem_shared::import::source::MemorySource;

    #[tokio::test]
    async fn the_bar_shows_the_checksum_pass_then_starts_again_for_the_load() {
        let progress = Progress::new(100, false);
        let source = Counted::new(MemorySource::new(vec![7u8; 100]), progress.clone());
        source.read_range(0, 60).await.unwrap();
        assert_eq!(
            (progress.bar.prefix(), progress.bar.position()),
            (CHECKSUM.to_string(), 60)
        );
        source.read_range(60, 40).await.unwrap();
        assert_eq!(
            (progress.bar.prefix(), progress.bar.position()),
            (CHECKSUM.to_string(), 100)
        );
        source.read_range(0, 4).await.unwrap();
        assert_eq!(
            (progress.bar.prefix(), progress.bar.position()),
            (LOAD.to_string(), 4)
        );
        source.read_range(0, 100).await.unwrap();
        assert_eq!(progress.bar.position(), 100, "the load never passes 100 %");
        assert!(progress.bar.message().contains("writing the rows"));
        assert_eq!(progress.bar.length(), Some(100));
    }

    #[tokio::test]
    async fn failed_reads_do_not_advance_the_bar() {
        let progress = Progress::new(10, false);
        let source = Counted::new(MemorySource::new(vec![0u8; 10]), progress.clone());
        source.read_range(5, 50).await.unwrap_err();
        assert_eq!(progress.bar.position(), 0);
    }
}
