//! The AWS emulator the local run and the emulator tests deploy into, and
//! the one place that knows which emulator it is.
//!
//! - **MiniStack** (the default): `scripts/emulator.sh start` runs it from
//!   the project's venv on a free loopback port and records it in `.emulator/`.
//! - **Any other emulator** (LocalStack, ...): set `AWS_ENDPOINT_URL` before
//!   running the tests or the local run. Nothing is started or stopped then;
//!   the endpoint, region and credentials come from the environment
//!   (credentials default to `test`/`test`).
//!
//! What the tests would otherwise take for granted about MiniStack, each
//! answered here (the facts: scripts/EMULATOR_NOTES.md):
//! 1. Health: MiniStack's `/_ministack/health` is checked only by
//!    `scripts/emulator.sh` when it starts MiniStack; another endpoint only
//!    has to answer HTTP.
//! 2. Where functions run: MiniStack runs them as processes of this machine,
//!    so they reach PostgreSQL and the carrier simulator on 127.0.0.1.
//!    Emulators that run them in containers (LocalStack with Docker) reach
//!    this machine at another address: set `EMULATOR_FUNCTION_HOST` (e.g.
//!    `172.17.0.1`, the Docker bridge); [`Emulator::for_functions`] rewrites
//!    loopback URLs handed to functions, and [`Emulator::serve_addr`] is
//!    where servers the functions call must listen.
//! 3. What functions run: MiniStack execs a native debug build; containers
//!    need binaries for Lambda's Amazon Linux 2023 (its glibc is older than
//!    this machine's), so other emulators get the release build
//!    ([`Emulator::build_args`]; `EMULATOR_BUILD=debug|release` overrides;
//!    `EMULATOR_BUILD=native-release` gives MiniStack the native release
//!    build, `scripts/build.sh --release --native`, for benchmarks).
//! 4. Stack delete: MiniStack leaves a deleted function's warm process, and
//!    its database connections, alive until it is reaped (up to 330 s), which
//!    blocks `DROP DATABASE`. [`Emulator::delete_stack`] deletes each
//!    function first; that is harmless elsewhere, so it does so everywhere.
//! 5. Not relied on, so nothing to adapt: DynamoDB TTL expiry (MiniStack
//!    ignores `TimeToLiveSpecification`; tests check `expires_at` on read),
//!    IAM enforcement (MiniStack enforces none; policies are checked by the
//!    template tests), the `!Ref` of a secret (an opaque id either way), and
//!    `aws sqs` in awscli v1 ignoring `AWS_ENDPOINT_URL` (tests use the SDK).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("local/ sits in the repository")
        .to_path_buf()
}

/// Which emulator the endpoint belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EmulatorKind {
    /// Started and stopped by `scripts/emulator.sh`.
    MiniStack,
    /// Given by `AWS_ENDPOINT_URL`; managed by whoever started it.
    External,
}

/// A running emulator: its endpoint and the environment its clients need.
#[derive(Debug, Clone)]
pub struct Emulator {
    pub endpoint: String,
    pub region: String,
    pub env: BTreeMap<String, String>,
    pub kind: EmulatorKind,
    /// The host by which a deployed function reaches this machine.
    pub function_host: String,
}

impl Emulator {
    /// The emulator of `AWS_ENDPOINT_URL`, or MiniStack, started unless it
    /// runs already (the script is idempotent and serialises concurrent
    /// starts). The endpoint of our own `.emulator/env` (sourced into the
    /// shell) is MiniStack, not another emulator.
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
        // The script prints the export lines of the emulator it chose (for
        // MiniStack, the same as .emulator/env).
        let env = parse_exports(&String::from_utf8_lossy(&output.stdout));
        let kind = match env.get("EMULATOR_KIND").map(String::as_str) {
            Some("external") => EmulatorKind::External,
            _ => EmulatorKind::MiniStack,
        };
        Ok(Self {
            endpoint: env
                .get("AWS_ENDPOINT_URL")
                .context("AWS_ENDPOINT_URL in the output of scripts/emulator.sh start")?
                .clone(),
            region: env
                .get("AWS_DEFAULT_REGION")
                .cloned()
                .unwrap_or_else(|| "eu-west-1".into()),
            function_host: std::env::var("EMULATOR_FUNCTION_HOST")
                .ok()
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "127.0.0.1".into()),
            kind,
            env,
        })
    }

    /// SDK configuration pointing at the emulator.
    pub async fn sdk_config(&self) -> aws_config::SdkConfig {
        let key = |name: &str| self.env.get(name).cloned().unwrap_or_else(|| "test".into());
        aws_config::defaults(aws_config::BehaviorVersion::latest())
            .endpoint_url(&self.endpoint)
            .region(aws_config::Region::new(self.region.clone()))
            .credentials_provider(aws_sdk_sqs::config::Credentials::new(
                key("AWS_ACCESS_KEY_ID"),
                key("AWS_SECRET_ACCESS_KEY"),
                None,
                None,
                "emulator",
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

    /// `url` as a deployed function must use it: a loopback or unspecified
    /// host (127.0.0.1, localhost, 0.0.0.0) becomes [`Self::function_host`].
    pub fn for_functions(&self, url: &str) -> String {
        rewrite_loopback(url, &self.function_host)
    }

    /// Where a server that deployed functions call (the carrier simulator)
    /// must listen: loopback when functions run on this machine, every
    /// interface when they run elsewhere.
    pub fn serve_addr(&self) -> SocketAddr {
        let loopback = matches!(self.function_host.as_str(), "127.0.0.1" | "localhost");
        let ip = if loopback {
            Ipv4Addr::LOCALHOST
        } else {
            Ipv4Addr::UNSPECIFIED
        };
        SocketAddr::new(IpAddr::V4(ip), 0)
    }

    /// The arguments of `scripts/build.sh` for zips this emulator can run.
    pub fn build_args(&self) -> Vec<String> {
        let release = match std::env::var("EMULATOR_BUILD").as_deref() {
            Ok("native-release") => return vec!["--release".into(), "--native".into()],
            Ok("release") => true,
            Ok("debug") => false,
            _ => self.kind == EmulatorKind::External,
        };
        if release {
            let arch = if cfg!(target_arch = "aarch64") {
                "arm64"
            } else {
                "x86_64"
            };
            vec!["--release".into(), "--arch".into(), arch.into()]
        } else {
            Vec::new()
        }
    }

    /// Deletes a stack: its functions one by one first (`functions`: their
    /// names), since MiniStack keeps a deleted stack's warm function
    /// processes and their database connections (module doc, item 4).
    /// Deleting a function first is harmless on other emulators and on AWS.
    pub async fn delete_stack(&self, name: &str, functions: &[&str]) -> Result<()> {
        let lambda = aws_sdk_lambda::Client::new(&self.sdk_config().await);
        for function in functions {
            // Already gone is fine: the stack delete removes the rest.
            let _ = lambda
                .delete_function()
                .function_name(*function)
                .send()
                .await;
        }
        let status = self
            .aws_cli()
            .args(["cloudformation", "delete-stack", "--stack-name", name])
            .status()?;
        if !status.success() {
            bail!("delete-stack {name} failed");
        }
        Ok(())
    }
}

fn parse_exports(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("export "))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.trim_matches('"').to_string()))
        .collect()
}

fn rewrite_loopback(url: &str, host: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    // userinfo@host:port/... : the host starts after the last '@' of the authority.
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let (userinfo, host_port) = match authority.rfind('@') {
        Some(at) => authority.split_at(at + 1),
        None => ("", authority),
    };
    let (current, port) = match host_port.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (host_port, None),
    };
    if !matches!(current, "127.0.0.1" | "localhost" | "0.0.0.0") {
        return url.to_string();
    }
    let port = port.map(|p| format!(":{p}")).unwrap_or_default();
    format!("{scheme}://{userinfo}{host}{port}{tail}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_urls_are_rewritten_to_the_function_host() {
        assert_eq!(
            rewrite_loopback(
                "postgres://postgres@127.0.0.1:5432/tem_test_x",
                "172.17.0.1"
            ),
            "postgres://postgres@172.17.0.1:5432/tem_test_x"
        );
        assert_eq!(
            rewrite_loopback("http://0.0.0.0:4100/routit", "host.docker.internal"),
            "http://host.docker.internal:4100/routit"
        );
        assert_eq!(
            rewrite_loopback("postgres://u:p@localhost/db?sslmode=disable", "10.0.0.5"),
            "postgres://u:p@10.0.0.5/db?sslmode=disable"
        );
    }

    #[test]
    fn other_hosts_are_left_alone() {
        for url in [
            "postgres://db.internal:5432/tem",
            "https://api.example.com/v1",
            "not a url",
        ] {
            assert_eq!(rewrite_loopback(url, "172.17.0.1"), url);
        }
    }

    #[test]
    fn the_exports_of_the_script_are_read_as_key_values() {
        let env = parse_exports(
            "# comment\nexport AWS_ENDPOINT_URL=http://127.0.0.1:4566\nexport EMULATOR_KIND=external\nnoise\n",
        );
        assert_eq!(env["AWS_ENDPOINT_URL"], "http://127.0.0.1:4566");
        assert_eq!(env["EMULATOR_KIND"], "external");
        assert_eq!(env.len(), 2);
    }
}
