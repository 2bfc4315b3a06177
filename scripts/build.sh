#!/usr/bin/env bash
# Builds the function binaries into target/lambda/{function}/bootstrap, the
# layout infra/template.yaml's CodeUri points at (the same as cargo-lambda's).
#
#   scripts/build.sh            debug build for the local emulator (fast)
#   scripts/build.sh --release  `cargo lambda build --release` for AWS
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
FUNCTIONS=(sync-manager provider-sync)

if [[ "${1:-}" == "--release" ]]; then
  # cargo-lambda (pinned in scripts/requirements.txt) cross-links for
  # Lambda's Amazon Linux with zig.
  "$REPO/scripts/emulator.sh" venv
  PATH="$REPO/.venv/bin:$PATH" cargo lambda build --release $(printf -- '-p %s ' "${FUNCTIONS[@]}")
  exit 0
fi

# The emulator runs functions as local processes, so a native debug build
# works there and shares its artifacts with `cargo test`.
cargo build --quiet $(printf -- '-p %s ' "${FUNCTIONS[@]}")
for f in "${FUNCTIONS[@]}"; do
  mkdir -p "target/lambda/$f"
  cp "target/debug/$f" "target/lambda/$f/bootstrap.tmp"
  mv "target/lambda/$f/bootstrap.tmp" "target/lambda/$f/bootstrap"
done
echo "built: $(printf 'target/lambda/%s/bootstrap ' "${FUNCTIONS[@]}")"
