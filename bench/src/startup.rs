//! `startup-bench`: each function's package size and init time. Init runs
//! from process start to the function's first `GET
//! /2018-06-01/runtime/invocation/next` against a minimal Runtime API served
//! here, as lambda-perf measures it. See bench/README.md.
//!
//! Each function runs the `bootstrap` of its own zip (target/lambda/<f>/),
//! with the environment the template gives it: literal values as written,
//! `!Ref` of a parameter as its default, other intrinsics as fake names, and
//! the AWS endpoint pointing at the same local server, which answers every
//! AWS call with an error and counts it (init should make none). The
//! database is a migrated `tem_bench_*` database on the local server:
//! the functions connect to PostgreSQL at init, so init includes opening the
//! pool's first connection; the time of one such connection is measured
//! on its own and reported beside.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Serialize;
use serde_yaml::Value as Yaml;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::report::{self, Goal};

pub const FUNCTIONS: [&str; 5] = [
    "sync-manager",
    "provider-sync",
    "cdr-import",
    "totals",
    "ops",
];

/// The goals of issue 9: a zip of at most 8 MB, init of at most 30 ms.
pub const ZIP_GOAL_BYTES: u64 = 8_000_000;
pub const INIT_GOAL_MS: f64 = 30.0;

pub struct Options {
    pub repo: PathBuf,
    pub lambda_dir: PathBuf,
    /// Another build's zips whose sizes are reported too (e.g. arm64 beside
    /// a runnable x86_64 build).
    pub size_dirs: Vec<PathBuf>,
    pub functions: Vec<String>,
    pub runs: usize,
    pub database_url: String,
    pub json_out: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize)]
pub struct FunctionReport {
    pub function: String,
    pub logical_id: String,
    pub zip: PathBuf,
    pub zip_bytes: u64,
    pub binary_bytes: u64,
    pub arch: String,
    pub built_as: String,
    /// Zip sizes of the same function in the --size-dir builds.
    pub other_zips: BTreeMap<String, u64>,
    /// Sorted init times in milliseconds (empty when not runnable here).
    pub init_ms: Vec<f64>,
    pub init_median_ms: Option<f64>,
    pub init_best_ms: Option<f64>,
    pub init_p90_ms: Option<f64>,
    /// Resident memory when /next arrived (median over the runs), KiB.
    pub rss_kib: Option<u64>,
    /// AWS API requests made before the first /next (all runs together).
    pub aws_calls_at_init: usize,
    pub note: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub environment: BTreeMap<String, String>,
    pub runs: usize,
    /// One PostgreSQL connection opened from here (median over the runs).
    pub postgres_connect_median_ms: f64,
    pub functions: Vec<FunctionReport>,
    pub goals: Vec<Goal>,
    pub all_goals_met: bool,
}

pub async fn run(options: Options) -> Result<()> {
    let template = load_template(&options.repo.join("infra/template.yaml"))?;
    let db = crate::db::BenchDb::create(&options.database_url).await?;
    let result = measure_all(&options, &template, &db).await;
    db.drop_database().await?;
    let summary = result?;
    print(&summary);
    if let Some(path) = &options.json_out {
        std::fs::write(path, serde_json::to_string_pretty(&summary)?)
            .with_context(|| format!("write {}", path.display()))?;
    }
    report::print_json_summary(&summary);
    Ok(())
}

async fn measure_all(
    options: &Options,
    template: &Yaml,
    db: &crate::db::BenchDb,
) -> Result<Summary> {
    let mut environment = BTreeMap::new();
    environment.insert(
        "cpus".to_string(),
        std::thread::available_parallelism()
            .map(|n| n.to_string())
            .unwrap_or_else(|_| "?".into()),
    );
    environment.insert("load average (start)".into(), report::load_average());
    environment.insert("host arch".into(), std::env::consts::ARCH.into());

    let mut connects = Vec::new();
    for _ in 0..options.runs.max(1) {
        let start = Instant::now();
        let conn = db.connect().await?;
        connects.push(start.elapsed().as_secs_f64() * 1000.0);
        drop(conn);
    }
    connects.sort_by(f64::total_cmp);

    let scratch = std::env::temp_dir().join(format!("tem-startup-bench-{}", std::process::id()));
    std::fs::create_dir_all(&scratch)?;
    let mut functions = Vec::new();
    for function in &options.functions {
        let report = measure_function(options, template, db, function, &scratch).await;
        functions.push(report.with_context(|| format!("function {function}"))?);
    }
    let _ = std::fs::remove_dir_all(&scratch);
    environment.insert("load average (end)".into(), report::load_average());

    let mut goals = Vec::new();
    for f in &functions {
        goals.push(Goal::at_most(
            &format!("{} zip ({})", f.function, f.arch),
            f.zip_bytes as f64 / 1e6,
            ZIP_GOAL_BYTES as f64 / 1e6,
            " MB",
            false,
        ));
        for (dir, bytes) in &f.other_zips {
            goals.push(Goal::at_most(
                &format!("{} zip ({dir})", f.function),
                *bytes as f64 / 1e6,
                ZIP_GOAL_BYTES as f64 / 1e6,
                " MB",
                false,
            ));
        }
        if let Some(median) = f.init_median_ms {
            goals.push(Goal::at_most(
                &format!("{} init median", f.function),
                median,
                INIT_GOAL_MS,
                " ms",
                false,
            ));
        }
    }
    Ok(Summary {
        environment,
        runs: options.runs,
        postgres_connect_median_ms: median(&connects),
        all_goals_met: goals.iter().all(|g| g.met),
        goals,
        functions,
    })
}

async fn measure_function(
    options: &Options,
    template: &Yaml,
    db: &crate::db::BenchDb,
    function: &str,
    scratch: &Path,
) -> Result<FunctionReport> {
    let dir = options.lambda_dir.join(function);
    let zip = dir.join("bootstrap.zip");
    let zip_bytes = std::fs::metadata(&zip)
        .with_context(|| format!("{} (build it: scripts/build.sh --release)", zip.display()))?
        .len();
    let built_as = std::fs::read_to_string(dir.join("built-as"))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into());
    let mut other_zips = BTreeMap::new();
    for other in &options.size_dirs {
        let path = other.join(function).join("bootstrap.zip");
        let bytes = std::fs::metadata(&path)
            .with_context(|| format!("{}", path.display()))?
            .len();
        let label = std::fs::read_to_string(other.join(function).join("built-as"))
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| other.display().to_string());
        other_zips.insert(label, bytes);
    }
    let binary = scratch.join(function).join("bootstrap");
    extract_bootstrap(&zip, &binary)?;
    let binary_bytes = std::fs::metadata(&binary)?.len();
    let arch = elf_arch(&binary)?;
    let (logical_id, env) = function_env(template, function)?;
    let mut report = FunctionReport {
        function: function.to_string(),
        logical_id,
        zip,
        zip_bytes,
        binary_bytes,
        arch: arch.clone(),
        built_as,
        other_zips,
        init_ms: Vec::new(),
        init_median_ms: None,
        init_best_ms: None,
        init_p90_ms: None,
        rss_kib: None,
        aws_calls_at_init: 0,
        note: None,
    };
    if arch != host_arch() {
        report.note = Some(format!(
            "a {arch} binary cannot run on this {} machine: size only",
            host_arch()
        ));
        return Ok(report);
    }
    // One unrecorded run first: the page cache then holds the binary, as it
    // does for every run after the first.
    let mut rss = Vec::new();
    for run in 0..=options.runs {
        let outcome = init_once(&binary, &env, &db.url).await?;
        if run > 0 {
            report.init_ms.push(outcome.init.as_secs_f64() * 1000.0);
            rss.extend(outcome.rss_kib);
            report.aws_calls_at_init += outcome.aws_calls;
        }
    }
    report.init_ms.sort_by(f64::total_cmp);
    rss.sort();
    report.init_median_ms = Some(median(&report.init_ms));
    report.init_best_ms = report.init_ms.first().copied();
    report.init_p90_ms = Some(percentile(&report.init_ms, 0.9));
    report.rss_kib = rss.get(rss.len() / 2).copied();
    Ok(report)
}

struct Outcome {
    init: Duration,
    rss_kib: Option<u64>,
    aws_calls: usize,
}

/// Starts the binary against a fresh Runtime API and waits for its first
/// `/next`; the request is held open (no event is ever sent) until the
/// process is killed.
async fn init_once(
    binary: &Path,
    env: &BTreeMap<String, String>,
    database_url: &str,
) -> Result<Outcome> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (next_tx, mut next_rx) = mpsc::unbounded_channel::<Instant>();
    let (aws_tx, mut aws_rx) = mpsc::unbounded_channel::<String>();
    let server = tokio::spawn(async move {
        // Dropped with the server task: that ends the held connections too.
        let mut connections = tokio::task::JoinSet::new();
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let (next_tx, aws_tx) = (next_tx.clone(), aws_tx.clone());
            connections.spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let Ok(n) = stream.read(&mut chunk).await else { return };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    if buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
                let at = Instant::now();
                let line = String::from_utf8_lossy(&buf).lines().next().unwrap_or_default().to_string();
                if line.starts_with("GET /2018-06-01/runtime/invocation/next") {
                    let _ = next_tx.send(at);
                    // Held open: the function waits for an event that never comes.
                    std::future::pending::<()>().await;
                } else {
                    let _ = aws_tx.send(line);
                    let body = r#"{"__type":"ServiceUnavailable","message":"startup-bench answers no AWS call"}"#;
                    let answer = format!(
                        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/x-amz-json-1.0\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = stream.write_all(answer.as_bytes()).await;
                }
            });
        }
    });

    let endpoint = format!("http://{addr}");
    let log = binary.with_extension("stdout");
    let log_err = binary.with_extension("stderr");
    let mut command = tokio::process::Command::new(binary);
    command
        .env_clear()
        .envs(env)
        .env("PATH", "/usr/bin:/bin")
        .env("AWS_LAMBDA_RUNTIME_API", addr.to_string())
        .env("AWS_ENDPOINT_URL", &endpoint)
        .env("DATABASE_URL", database_url)
        .current_dir(binary.parent().unwrap_or(Path::new(".")))
        .stdin(Stdio::null())
        // Files, not pipes: a full pipe would stall the function's logging.
        .stdout(Stdio::from(std::fs::File::create(&log)?))
        .stderr(Stdio::from(std::fs::File::create(&log_err)?))
        .kill_on_drop(true);
    let start = Instant::now();
    let mut child = command
        .spawn()
        .with_context(|| format!("start {}", binary.display()))?;
    let pid = child.id();
    let outcome = tokio::select! {
        at = next_rx.recv() => {
            let at = at.context("the Runtime API stopped")?;
            let rss_kib = pid.and_then(rss_of);
            Ok(Outcome { init: at.duration_since(start), rss_kib, aws_calls: 0 })
        }
        status = child.wait() => {
            let output = [&log, &log_err]
                .iter()
                .filter_map(|p| std::fs::read_to_string(p).ok())
                .collect::<Vec<_>>()
                .join("");
            Err(anyhow::anyhow!("{} exited before its first /next ({}):\n{output}", binary.display(), status?))
        }
        _ = tokio::time::sleep(Duration::from_secs(10)) => {
            Err(anyhow::anyhow!("{} did not reach /next within 10 s (Lambda's init limit)", binary.display()))
        }
    };
    let _ = child.kill().await;
    server.abort();
    let mut outcome = outcome?;
    while let Ok(call) = aws_rx.try_recv() {
        tracing::warn!(%call, "AWS call during init");
        outcome.aws_calls += 1;
    }
    Ok(outcome)
}

fn rss_of(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

fn extract_bootstrap(zip: &Path, to: &Path) -> Result<()> {
    let file = std::fs::File::open(zip).with_context(|| format!("open {}", zip.display()))?;
    let mut archive =
        zip::ZipArchive::new(file).with_context(|| format!("read {}", zip.display()))?;
    let mut entry = archive
        .by_name("bootstrap")
        .with_context(|| format!("{} has no bootstrap", zip.display()))?;
    let mut bytes = Vec::with_capacity(entry.size() as usize);
    entry.read_to_end(&mut bytes)?;
    std::fs::create_dir_all(to.parent().context("a parent directory")?)?;
    std::fs::write(to, bytes)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(0o755))?;
    Ok(())
}

/// The machine of an ELF binary, in Lambda's names.
fn elf_arch(binary: &Path) -> Result<String> {
    let mut header = [0u8; 20];
    std::fs::File::open(binary)?.read_exact(&mut header)?;
    if &header[..4] != b"\x7fELF" {
        bail!("{} is not an ELF binary", binary.display());
    }
    Ok(match u16::from_le_bytes([header[18], header[19]]) {
        0x3e => "x86_64".into(),
        0xb7 => "arm64".into(),
        other => format!("machine {other:#x}"),
    })
}

fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "aarch64" => "arm64",
        other => other,
    }
}

fn load_template(path: &Path) -> Result<Yaml> {
    let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    serde_yaml::from_str(&text).with_context(|| format!("parse {}", path.display()))
}

/// The first function resource whose CodeUri is this function's zip, and
/// the environment the template gives it (Globals, then its own).
fn function_env(template: &Yaml, function: &str) -> Result<(String, BTreeMap<String, String>)> {
    let code_uri = format!("../target/lambda/{function}/bootstrap.zip");
    let resources = template["Resources"]
        .as_mapping()
        .context("the template has Resources")?;
    let (logical_id, resource) = resources
        .iter()
        .find(|(_, r)| r["Properties"]["CodeUri"].as_str() == Some(code_uri.as_str()))
        .with_context(|| format!("no function in the template has CodeUri {code_uri}"))?;
    let logical_id = logical_id.as_str().unwrap_or_default().to_string();
    let mut env = BTreeMap::new();
    for variables in [
        &template["Globals"]["Function"]["Environment"]["Variables"],
        &resource["Properties"]["Environment"]["Variables"],
    ] {
        for (key, value) in variables.as_mapping().into_iter().flatten() {
            let Some(key) = key.as_str() else { continue };
            env.insert(key.to_string(), env_value(key, value, template));
        }
    }
    // The local database instead of the secrets; plain loopback.
    for key in ["DATABASE_SECRET_ID", "DATABASE_CA_SECRET_ID"] {
        env.remove(key);
    }
    if env.contains_key("DATABASE_SSL_MODE") {
        env.insert("DATABASE_SSL_MODE".into(), "disable".into());
    }
    // What Lambda sets for every function.
    for (key, value) in [
        ("AWS_LAMBDA_FUNCTION_NAME", format!("bench-{function}")),
        ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "256".into()),
        ("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST".into()),
        ("AWS_LAMBDA_LOG_STREAM_NAME", "bench".into()),
        (
            "AWS_LAMBDA_LOG_GROUP_NAME",
            format!("/aws/lambda/bench-{function}"),
        ),
        ("AWS_REGION", "eu-west-1".into()),
        ("AWS_DEFAULT_REGION", "eu-west-1".into()),
        ("AWS_ACCESS_KEY_ID", "bench".into()),
        ("AWS_SECRET_ACCESS_KEY", "bench".into()),
        ("AWS_SESSION_TOKEN", "bench".into()),
        ("AWS_EC2_METADATA_DISABLED", "true".into()),
        ("LAMBDA_TASK_ROOT", ".".into()),
        // The template's LoggingConfig: JSON logs.
        ("AWS_LAMBDA_LOG_FORMAT", "JSON".into()),
        ("AWS_LAMBDA_LOG_LEVEL", "INFO".into()),
        ("_HANDLER", "bootstrap".into()),
    ] {
        env.insert(key.to_string(), value);
    }
    Ok((logical_id, env))
}

/// A template value as the function would see it: literals as written, a
/// `!Ref` of a parameter as its default, anything else a fake name (queue
/// URLs on the local endpoint, which answers no call).
fn env_value(key: &str, value: &Yaml, template: &Yaml) -> String {
    let parameters = &template["Parameters"];
    match value {
        Yaml::String(s) => s.clone(),
        Yaml::Number(n) => n.to_string(),
        Yaml::Bool(b) => b.to_string(),
        Yaml::Tagged(tagged) if tagged.tag == "Ref" => {
            let name = tagged.value.as_str().unwrap_or_default();
            scalar(&parameters[name]["Default"]).unwrap_or_else(|| fake(key, name))
        }
        // `!FindInMap [Map, !Ref Parameter, Key]` (the connection budget):
        // the mapping's value at the parameter's default.
        Yaml::Tagged(tagged) if tagged.tag == "FindInMap" => {
            let path: Vec<String> = tagged
                .value
                .as_sequence()
                .into_iter()
                .flatten()
                .filter_map(|part| match part {
                    Yaml::Tagged(r) if r.tag == "Ref" => {
                        scalar(&parameters[r.value.as_str().unwrap_or_default()]["Default"])
                    }
                    other => scalar(other),
                })
                .collect();
            match path.as_slice() {
                [map, first, second] => scalar(&template["Mappings"][map][first][second]),
                _ => None,
            }
            .unwrap_or_else(|| fake(key, &key.to_lowercase()))
        }
        _ => fake(key, &key.to_lowercase()),
    }
}

fn scalar(value: &Yaml) -> Option<String> {
    match value {
        Yaml::String(s) => Some(s.clone()),
        Yaml::Number(n) => Some(n.to_string()),
        Yaml::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn fake(key: &str, name: &str) -> String {
    if key.contains("QUEUE_URL") || key.ends_with("_URL") {
        format!("http://127.0.0.1:9/000000000000/bench-{name}")
    } else {
        format!("bench-{name}")
    }
}

fn median(sorted: &[f64]) -> f64 {
    match sorted.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let index = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[index]
}

fn print(summary: &Summary) {
    println!();
    println!(
        "== package and start-up: {} runs per function ==",
        summary.runs
    );
    for (key, value) in &summary.environment {
        println!("  {key:<22} {value}");
    }
    println!(
        "  one PostgreSQL connect  {:.1} ms (median; part of every init below)",
        summary.postgres_connect_median_ms
    );
    println!();
    println!(
        "{:<14} {:<7} {:>9} {:>9}  {:>8} {:>8} {:>8}  {:>7}  {:>5}  built as",
        "function", "arch", "zip MB", "binary MB", "init med", "best", "p90", "RSS MiB", "AWS"
    );
    for f in &summary.functions {
        let ms = |v: Option<f64>| v.map(|v| format!("{v:.1}")).unwrap_or_else(|| "-".into());
        println!(
            "{:<14} {:<7} {:>9.2} {:>9.2}  {:>8} {:>8} {:>8}  {:>7}  {:>5}  {}",
            f.function,
            f.arch,
            f.zip_bytes as f64 / 1e6,
            f.binary_bytes as f64 / 1e6,
            ms(f.init_median_ms),
            ms(f.init_best_ms),
            ms(f.init_p90_ms),
            f.rss_kib
                .map(|k| format!("{:.1}", k as f64 / 1024.0))
                .unwrap_or_else(|| "-".into()),
            if f.init_ms.is_empty() {
                "-".to_string()
            } else {
                f.aws_calls_at_init.to_string()
            },
            f.built_as,
        );
        for (label, bytes) in &f.other_zips {
            println!(
                "{:<14} {:<7} {:>9.2}  ({label})",
                "",
                "",
                *bytes as f64 / 1e6
            );
        }
        if let Some(note) = &f.note {
            println!("{:<14} {note}", "");
        }
    }
    println!();
    report::print_goals(&summary.goals, 34, 2);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template() -> Yaml {
        serde_yaml::from_str(
            r#"
Parameters:
  Backoff: { Type: Number, Default: 5 }
  Prefix: { Type: String }
  Budget: { Type: String, Default: "50" }
Mappings:
  ConnectionBudget:
    "50": { TotalsPool: "2" }
Globals:
  Function:
    Environment:
      Variables:
        TASKS_TABLE: !Ref TasksTable
        BACKOFF_BASE_SECONDS: !Ref Backoff
        DATABASE_SECRET_ID: !Sub "${Prefix}/database"
Resources:
  TotalsFunction:
    Type: AWS::Serverless::Function
    Properties:
      CodeUri: ../target/lambda/totals/bootstrap.zip
      Environment:
        Variables:
          QUEUE_URL_TOTALS: !Ref TotalsQueue
          MAX_ATTEMPTS: "5"
          DATABASE_MAX_CONNECTIONS: !FindInMap [ConnectionBudget, !Ref Budget, TotalsPool]
"#,
        )
        .unwrap()
    }

    #[test]
    fn a_function_gets_the_template_environment_with_parameter_defaults_and_fakes() {
        let (id, env) = function_env(&template(), "totals").unwrap();
        assert_eq!(id, "TotalsFunction");
        assert_eq!(env["BACKOFF_BASE_SECONDS"], "5");
        assert_eq!(env["MAX_ATTEMPTS"], "5");
        // The connection budget's pool at the parameter's default tier.
        assert_eq!(env["DATABASE_MAX_CONNECTIONS"], "2");
        assert_eq!(env["TASKS_TABLE"], "bench-TasksTable");
        assert!(env["QUEUE_URL_TOTALS"].starts_with("http://"));
        assert!(
            !env.contains_key("DATABASE_SECRET_ID"),
            "the local database is used"
        );
        assert_eq!(env["AWS_LAMBDA_FUNCTION_VERSION"], "$LATEST");
    }

    #[test]
    fn a_function_missing_from_the_template_is_an_error() {
        let err = function_env(&template(), "ops").unwrap_err();
        assert!(err
            .to_string()
            .contains("../target/lambda/ops/bootstrap.zip"));
    }

    #[test]
    fn median_and_percentile_of_sorted_times() {
        assert_eq!(median(&[1.0, 2.0, 3.0]), 2.0);
        assert_eq!(median(&[1.0, 2.0, 3.0, 10.0]), 2.5);
        assert_eq!(
            percentile(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0], 0.9),
            9.0
        );
        assert!(median(&[]).is_nan());
    }

    #[test]
    fn the_architecture_is_read_from_the_elf_header() {
        let dir = std::env::temp_dir().join(format!("tem-elf-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("bin");
        let mut header = vec![0u8; 20];
        header[..4].copy_from_slice(b"\x7fELF");
        header[18] = 0xb7;
        std::fs::write(&path, &header).unwrap();
        assert_eq!(elf_arch(&path).unwrap(), "arm64");
        header[18] = 0x3e;
        std::fs::write(&path, &header).unwrap();
        assert_eq!(elf_arch(&path).unwrap(), "x86_64");
        std::fs::write(&path, b"#!/bin/sh\nexit 0\n----------").unwrap();
        assert!(elf_arch(&path).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
