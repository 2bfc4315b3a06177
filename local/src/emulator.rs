//! The local AWS emulator (MiniStack), started by `scripts/emulator.sh`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("local/ sits in the repository")
        .to_path_buf()
}

/// A running emulator: its endpoint and the environment its clients need.
#[derive(Debug, Clone)]
pub struct Emulator {
    pub endpoint: String,
    pub region: String,
    pub env: BTreeMap<String, String>,
}

impl Emulator {
    /// Starts the emulator unless it runs already (the script is idempotent
    /// and serialises concurrent starts).
    pub fn start() -> Result<Self> {
        let script = repo_root().join("scripts/emulator.sh");
        let output = Command::new("bash")
            .arg(&script)
            .arg("start")
            .output()
            .with_context(|| format!("run {}", script.display()))?;
        if !output.status.success() {
            bail!(
                "scripts/emulator.sh start failed:\n{}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        let env_file = repo_root().join(".emulator/env");
        let text = std::fs::read_to_string(&env_file)
            .with_context(|| format!("read {}", env_file.display()))?;
        let env: BTreeMap<String, String> = text
            .lines()
            .filter_map(|l| l.strip_prefix("export "))
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.trim_matches('"').to_string()))
            .collect();
        Ok(Self {
            endpoint: env
                .get("AWS_ENDPOINT_URL")
                .context("AWS_ENDPOINT_URL in .emulator/env")?
                .clone(),
            region: env
                .get("AWS_DEFAULT_REGION")
                .cloned()
                .unwrap_or_else(|| "eu-west-1".into()),
            env,
        })
    }

    /// SDK configuration pointing at the emulator.
    pub async fn sdk_config(&self) -> aws_config::SdkConfig {
        aws_config::defaults(aws_config::BehaviorVersion::latest())
            .endpoint_url(&self.endpoint)
            .region(aws_config::Region::new(self.region.clone()))
            .credentials_provider(aws_sdk_sqs::config::Credentials::new(
                "test", "test", None, None, "emulator",
            ))
            .load()
            .await
    }

    /// The pinned awscli from the project's virtual environment.
    pub fn aws_cli(&self) -> Command {
        let mut command = Command::new(repo_root().join(".venv/bin/aws"));
        command.envs(&self.env).env_remove("AWS_PROFILE");
        command
    }
}
