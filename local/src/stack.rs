//! Deploying infra/template.yaml into the emulator, as `sam deploy` would
//! into AWS: package (upload the function zips), then deploy.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::emulator::{repo_root, Emulator};

const ARTIFACT_BUCKET: &str = "tem-artifacts";

/// Builds the function zips once per process, as the emulator runs them.
pub fn build_functions(emulator: &Emulator) -> Result<()> {
    static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let mut build = std::process::Command::new("bash");
            build
                .arg(repo_root().join("scripts/build.sh"))
                .args(emulator.build_args());
            // A test binary runs with the variables cargo sets for it, and
            // ring's build script depends on CARGO_MANIFEST_DIR: inherited,
            // they make the nested build rebuild ring and everything above
            // it, and the next `cargo test` rebuild it all back.
            for (key, _) in std::env::vars_os() {
                if inherited_from_cargo(&key.to_string_lossy()) {
                    build.env_remove(&key);
                }
            }
            let output = build.output().map_err(|e| e.to_string())?;
            if output.status.success() {
                Ok(())
            } else {
                Err(String::from_utf8_lossy(&output.stderr).into_owned())
            }
        })
        .clone()
        .map_err(|e| anyhow::anyhow!("scripts/build.sh failed:\n{e}"))
}

/// Variables cargo sets for the process it runs (a test binary), as
/// opposed to the user's own settings (`CARGO_HOME`, `CARGO_TARGET_DIR`, ...).
fn inherited_from_cargo(key: &str) -> bool {
    key == "CARGO"
        || key == "CARGO_MANIFEST_DIR"
        || key == "CARGO_MANIFEST_PATH"
        || key == "CARGO_CRATE_NAME"
        || key == "CARGO_BIN_NAME"
        || key == "CARGO_PRIMARY_PACKAGE"
        || key == "CARGO_TARGET_TMPDIR"
        || key.starts_with("CARGO_PKG_")
}

#[derive(Debug, Clone)]
pub struct Stack {
    pub name: String,
    pub outputs: BTreeMap<String, String>,
    pub emulator: Emulator,
}

impl Stack {
    /// Deploys (or updates) the stack `name` with parameter overrides.
    pub async fn deploy(
        emulator: &Emulator,
        name: &str,
        parameters: &[(&str, String)],
    ) -> Result<Stack> {
        build_functions(emulator)?;
        let config = emulator.sdk_config().await;
        ensure_artifact_bucket(&tem_shared::adapters::s3_client(&config), &emulator.region).await?;
        let emulator = emulator.clone();
        let name = name.to_string();
        let parameters: Vec<String> = parameters.iter().map(|(k, v)| format!("{k}={v}")).collect();
        tokio::task::spawn_blocking(move || deploy_blocking(&emulator, &name, &parameters))
            .await
            .context("deploy task")?
    }

    /// Runs the aws cli against the emulator (for what the SDKs here do
    /// not cover, e.g. `events describe-rule`); returns its stdout.
    pub fn aws(&self, args: &[&str]) -> Result<String> {
        run(&self.emulator, args)
    }

    pub fn output(&self, key: &str) -> &str {
        self.outputs
            .get(key)
            .unwrap_or_else(|| panic!("stack {} has no output {key}", self.name))
    }

    /// Removes the stack `name` if it exists, and waits until it is gone, so
    /// the next deploy starts from empty tables, queues and bucket.
    pub async fn remove_existing(emulator: &Emulator, name: &str) -> Result<()> {
        if let Ok(stack) = describe(emulator, name) {
            stack.delete().await?;
            run(
                emulator,
                &[
                    "cloudformation",
                    "wait",
                    "stack-delete-complete",
                    "--stack-name",
                    name,
                ],
            )?;
        }
        // The CDR bucket outlives its stack (DeletionPolicy: Retain, as in
        // production), and its name comes from the stack's: the next
        // deploy could not create it again.
        let s3 = tem_shared::adapters::s3_client(&emulator.sdk_config().await);
        remove_retained_buckets(&s3, &format!("{name}-cdr-")).await
    }

    /// Deletes the stack (its functions first: see [`Emulator::delete_stack`]).
    pub async fn delete(&self) -> Result<()> {
        let functions: Vec<&str> = self
            .outputs
            .iter()
            .filter(|(key, _)| key.ends_with("FunctionName"))
            .map(|(_, name)| name.as_str())
            .collect();
        self.emulator.delete_stack(&self.name, &functions).await
    }
}

/// Empties (every version) and deletes the buckets whose names start with
/// `prefix`.
async fn remove_retained_buckets(s3: &aws_sdk_s3::Client, prefix: &str) -> Result<()> {
    use aws_sdk_s3::types::{Delete, ObjectIdentifier};
    fn s3_error<E: std::error::Error + Send + Sync + 'static>(e: E) -> anyhow::Error {
        anyhow::anyhow!(aws_sdk_s3::error::DisplayErrorContext(e).to_string())
    }
    let buckets = s3.list_buckets().send().await.map_err(s3_error)?;
    for bucket in buckets
        .buckets()
        .iter()
        .filter_map(|b| b.name())
        .filter(|n| n.starts_with(prefix))
    {
        loop {
            let listed = s3
                .list_object_versions()
                .bucket(bucket)
                .send()
                .await
                .map_err(s3_error)?;
            let versions = listed
                .versions()
                .iter()
                .map(|v| (v.key(), v.version_id()))
                .chain(
                    listed
                        .delete_markers()
                        .iter()
                        .map(|m| (m.key(), m.version_id())),
                );
            let objects = versions
                .filter_map(|(key, version)| {
                    ObjectIdentifier::builder()
                        .key(key?)
                        .set_version_id(version.map(str::to_string))
                        .build()
                        .ok()
                })
                .collect::<Vec<_>>();
            if objects.is_empty() {
                break;
            }
            s3.delete_objects()
                .bucket(bucket)
                .delete(Delete::builder().set_objects(Some(objects)).build()?)
                .send()
                .await
                .map_err(s3_error)?;
        }
        s3.delete_bucket()
            .bucket(bucket)
            .send()
            .await
            .map_err(s3_error)
            .with_context(|| format!("delete the retained bucket {bucket}"))?;
    }
    Ok(())
}

async fn ensure_artifact_bucket(s3: &aws_sdk_s3::Client, region: &str) -> Result<()> {
    if s3
        .head_bucket()
        .bucket(ARTIFACT_BUCKET)
        .send()
        .await
        .is_ok()
    {
        return Ok(());
    }
    let mut create = s3.create_bucket().bucket(ARTIFACT_BUCKET);
    if region != "us-east-1" {
        create = create.create_bucket_configuration(
            aws_sdk_s3::types::CreateBucketConfiguration::builder()
                .location_constraint(aws_sdk_s3::types::BucketLocationConstraint::from(region))
                .build(),
        );
    }
    match create.send().await {
        Ok(_) => Ok(()),
        // A concurrent deploy created it first.
        Err(e)
            if s3
                .head_bucket()
                .bucket(ARTIFACT_BUCKET)
                .send()
                .await
                .is_ok() =>
        {
            let _ = e;
            Ok(())
        }
        Err(e) => Err(anyhow::anyhow!(aws_sdk_s3::error::DisplayErrorContext(e)))
            .context("create the artifact bucket"),
    }
}

fn run(emulator: &Emulator, args: &[&str]) -> Result<String> {
    let output = emulator
        .aws_cli()
        .args(args)
        .output()
        .context("run the aws cli from .venv")?;
    if !output.status.success() {
        bail!(
            "aws {} failed:\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

fn deploy_blocking(emulator: &Emulator, name: &str, parameters: &[String]) -> Result<Stack> {
    let template = repo_root().join("infra/template.yaml");
    let packaged = std::env::temp_dir().join(format!("tem-packaged-{name}.yaml"));
    run(
        emulator,
        &[
            "cloudformation",
            "package",
            "--template-file",
            template.to_str().context("template path is UTF-8")?,
            "--s3-bucket",
            ARTIFACT_BUCKET,
            "--s3-prefix",
            name,
            "--output-template-file",
            packaged.to_str().context("temp path is UTF-8")?,
        ],
    )?;
    let mut args = vec![
        "cloudformation",
        "deploy",
        "--template-file",
        packaged.to_str().unwrap_or_default(),
        "--stack-name",
        name,
        "--capabilities",
        "CAPABILITY_IAM",
        "CAPABILITY_AUTO_EXPAND",
        "--no-fail-on-empty-changeset",
        // Over 51,200 bytes a template must go through S3, as on AWS.
        "--s3-bucket",
        ARTIFACT_BUCKET,
        "--s3-prefix",
        name,
    ];
    if !parameters.is_empty() {
        args.push("--parameter-overrides");
        args.extend(parameters.iter().map(String::as_str));
    }
    if let Err(e) = run(emulator, &args) {
        let events = run(
            emulator,
            &[
                "cloudformation",
                "describe-stack-events",
                "--stack-name",
                name,
                "--output",
                "json",
            ],
        )
        .unwrap_or_default();
        let failures: Vec<String> = serde_json::from_str::<Value>(&events)
            .ok()
            .and_then(|v| v["StackEvents"].as_array().cloned())
            .unwrap_or_default()
            .iter()
            .filter(|e| {
                e["ResourceStatus"]
                    .as_str()
                    .is_some_and(|s| s.contains("FAILED"))
            })
            .map(|e| format!("{}: {}", e["LogicalResourceId"], e["ResourceStatusReason"]))
            .collect();
        bail!("{e}\nfailed resources:\n{}", failures.join("\n"));
    }
    describe(emulator, name)
}

/// The deployed stack `name` with its outputs.
fn describe(emulator: &Emulator, name: &str) -> Result<Stack> {
    let described = run(
        emulator,
        &[
            "cloudformation",
            "describe-stacks",
            "--stack-name",
            name,
            "--output",
            "json",
        ],
    )?;
    let value: Value =
        serde_json::from_str(&described).context("describe-stacks output is JSON")?;
    let outputs = value["Stacks"][0]["Outputs"]
        .as_array()
        .context("the stack has outputs")?
        .iter()
        .filter_map(|o| {
            Some((
                o["OutputKey"].as_str()?.to_string(),
                o["OutputValue"].as_str()?.to_string(),
            ))
        })
        .collect();
    Ok(Stack {
        name: name.to_string(),
        outputs,
        emulator: emulator.clone(),
    })
}
