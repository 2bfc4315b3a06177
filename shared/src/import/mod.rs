//! CDR import: a carrier export (ZIP of CSV, or a plain/gzipped CSV) from S3
//! into `call_detail_record`, exactly once, with every bad row reported.

pub mod attach;
pub mod format;
pub mod handler;
pub mod importer;
pub mod load;
pub mod normalize;
pub mod notification;
pub mod parse;
pub mod source;
pub mod zip;

use std::path::{Path, PathBuf};

use async_trait::async_trait;

use crate::ports::PortError;

/// Rejected-rows files in a local folder (the CLI and tests), under the
/// same keys they get in the bucket.
pub struct LocalRejects {
    dir: PathBuf,
}

impl LocalRejects {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }
}

#[async_trait]
impl importer::RejectStore for LocalRejects {
    async fn store(&self, key: &str, file: &Path) -> Result<String, PortError> {
        let target = self.dir.join(key);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| PortError::new("write rejected rows", e))?;
        }
        std::fs::copy(file, &target).map_err(|e| PortError::new("write rejected rows", e))?;
        Ok(key.to_string())
    }
}
