//! `temctl import`: the cdr-import Lambda's import, run locally on a file.

use std::io::IsTerminal;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use tem_shared::import::importer::{ImportRequest, Importer, RejectStore};
use tem_shared::import::source::{FileSource, RangeRead, SourceError};
use tem_shared::import::zip::ZipLimits;
use tem_shared::import::LocalRejects;
use tem_shared::ports::PortError;

use crate::cli::ImportArgs;
use crate::db;
use crate::error::CliError;
use crate::progress::{Counted, Progress};
use crate::summary;

/// Connections for one import: the cdr-import Lambda's default
/// (DATABASE_MAX_CONNECTIONS). The ZIP limits are its defaults too.
const MAX_CONNECTIONS: u32 = 2;

pub async fn run(args: ImportArgs) -> Result<(), CliError> {
    let url = db::url_from_env()?;
    let file = open(&args.file)?;
    let db = db::open(&url, MAX_CONNECTIONS).await?;
    db.check_schema().await?;

    let size = file.len().await.map_err(|source| CliError::Open {
        path: args.file.display().to_string(),
        source,
    })?;
    let progress = Progress::new(size, !args.json && std::io::stderr().is_terminal());
    let source: Arc<dyn RangeRead> = Arc::new(Counted::new(file, progress.clone()));
    let rejects = Arc::new(RejectsDir::new(args.rejects_dir));
    let importer = Importer::new(db.pool.clone(), rejects, ZipLimits::default());
    let request = ImportRequest {
        bucket: "local".into(),
        key: args.file.to_string_lossy().into_owned(),
        provider: args.provider,
        profile_id: args.profile_id,
        deadline: None,
    };
    let result = importer.import(source, &request).await;
    progress.finish();
    let summary = result?;

    let mut out = std::io::stdout().lock();
    if args.json {
        summary::write_json(&mut out, &summary)?;
    } else {
        summary::write_human(&mut out, &request, &summary)?;
    }
    Ok(())
}

fn open(path: &Path) -> Result<FileSource, CliError> {
    FileSource::open(path).map_err(|source| match source {
        SourceError::NotFound { .. } => CliError::FileNotFound(path.display().to_string()),
        source => CliError::Open {
            path: path.display().to_string(),
            source,
        },
    })
}

/// Rejected-rows CSVs under `--rejects-dir`, at the key the importer gives
/// them (`rejected/<path>.csv`), minus any `..`, root or drive in the path,
/// so a file given as `../x.csv` or `/data/x.csv` cannot write outside the
/// folder. The key it reports is the path of the file written.
struct RejectsDir {
    dir: PathBuf,
    local: LocalRejects,
}

impl RejectsDir {
    fn new(dir: PathBuf) -> Self {
        Self {
            local: LocalRejects::new(&dir),
            dir,
        }
    }
}

#[async_trait]
impl RejectStore for RejectsDir {
    async fn store(&self, key: &str, file: &Path) -> Result<String, PortError> {
        let safe = confined(key);
        self.local.store(&safe.to_string_lossy(), file).await?;
        Ok(self.dir.join(safe).display().to_string())
    }
}

/// The plain folder and file names of `key`.
fn confined(key: &str) -> PathBuf {
    Path::new(key)
        .components()
        .filter_map(|c| match c {
            Component::Normal(name) => Some(name),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejected_rows_keys_stay_inside_the_rejects_folder() {
        assert_eq!(
            confined("rejected/../../etc/x.csv.csv"),
            PathBuf::from("rejected/etc/x.csv.csv")
        );
        assert_eq!(
            confined("rejected//data/./x.csv.csv"),
            PathBuf::from("rejected/data/x.csv.csv")
        );
    }
}
