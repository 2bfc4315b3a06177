#!/usr/bin/env bash
# Builds the function binaries into target/lambda/{function}/bootstrap, the
# layout infra/template.yaml's CodeUri points at (the same as cargo-lambda's).
#
#   scripts/build.sh            debug build for the local emulator (fast)
#   scripts/build.sh --release  `cargo lambda build --release` for AWS
#
# Each function is zipped once (bootstrap.zip): CloudFormation packaging
# then uploads the zip as it is instead of zipping it again per function.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
FUNCTIONS=(sync-manager provider-sync cdr-import totals)

if [[ "${1:-}" == "--release" ]]; then
  # cargo-lambda (pinned in scripts/requirements.txt) cross-links for
  # Lambda's Amazon Linux with zig.
  "$REPO/scripts/emulator.sh" venv
  PATH="$REPO/.venv/bin:$PATH" cargo lambda build --release --output-format zip $(printf -- '-p %s ' "${FUNCTIONS[@]}")
  exit 0
fi

# The emulator runs functions as local processes, so a native debug build
# works there and shares its artifacts with `cargo test`.
cargo build --quiet $(printf -- '-p %s ' "${FUNCTIONS[@]}")
for f in "${FUNCTIONS[@]}"; do
  out="target/lambda/$f"
  mkdir -p "$out"
  if [[ "$out/bootstrap.zip" -nt "target/debug/$f" ]]; then
    continue
  fi
  # Stripped, the debug binary zips to a quarter of its size.
  cp "target/debug/$f" "$out/bootstrap"
  strip "$out/bootstrap"
  python3 - "$out/bootstrap" "$out/bootstrap.zip.tmp" <<'PY'
import sys, zipfile
src, dst = sys.argv[1:]
info = zipfile.ZipInfo("bootstrap")
info.external_attr = 0o755 << 16
info.compress_type = zipfile.ZIP_DEFLATED
with zipfile.ZipFile(dst, "w") as z, open(src, "rb") as f:
    z.writestr(info, f.read(), compresslevel=1)
PY
  mv "$out/bootstrap.zip.tmp" "$out/bootstrap.zip"
done
echo "built: $(printf 'target/lambda/%s/bootstrap.zip ' "${FUNCTIONS[@]}")"
