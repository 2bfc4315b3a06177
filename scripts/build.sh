#!/usr/bin/env bash
# Builds the function binaries into target/lambda/{function}/bootstrap.zip, the
# layout infra/template.yaml's CodeUri points at (the same as cargo-lambda's).
#
#   scripts/build.sh                    debug build for the local emulator (fast, native)
#   scripts/build.sh --release          `cargo lambda build --release` for AWS, arm64 (Graviton)
#   scripts/build.sh --release --arch x86_64
#   scripts/build.sh --release --native release build for the local emulator (benchmarks):
#                                       plain `cargo build --release` for this machine,
#                                       sharing target/release with the benchmarks
#   scripts/build.sh [...] ops totals   only these functions (default: all)
#
# Each function is zipped once (bootstrap.zip): CloudFormation packaging
# then uploads the zip as it is instead of zipping it again per function.
# target/lambda/{function}/built-as says which build the zip holds
# ("debug x86_64", "release arm64", ...), so a debug build never keeps a
# release zip for another architecture that the emulator could not run.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
ALL_FUNCTIONS=(sync-manager provider-sync cdr-import totals ops maintenance)

release=false
native=false
arch=arm64
functions=()
while (($#)); do
  case "$1" in
    --release) release=true ;;
    --native) native=true ;;
    --arch)
      arch="${2:?--arch needs arm64 or x86_64}"
      shift ;;
    --arch=*) arch="${1#--arch=}" ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    -*) echo "build.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    *) functions+=("$1") ;;
  esac
  shift
done
((${#functions[@]})) || functions=("${ALL_FUNCTIONS[@]}")
for f in "${functions[@]}"; do
  [[ " ${ALL_FUNCTIONS[*]} " == *" $f "* ]] || { echo "build.sh: unknown function $f (known: ${ALL_FUNCTIONS[*]})" >&2; exit 2; }
done

if $native && ! $release; then
  echo "build.sh: --native goes with --release (the debug build is native already)" >&2; exit 2
fi

if $release && ! $native; then
  case "$arch" in
    arm64) arch_flag=--arm64 ;;
    x86_64) arch_flag=--x86-64 ;;
    *) echo "build.sh: --arch must be arm64 or x86_64, not $arch" >&2; exit 2 ;;
  esac
  # cargo-lambda and zig (pinned in scripts/requirements.txt) cross-link for
  # Lambda's Amazon Linux 2023 on either architecture.
  "$REPO/scripts/emulator.sh" venv
  rustup target add "$([[ $arch == arm64 ]] && echo aarch64 || echo x86_64)-unknown-linux-gnu" >/dev/null 2>&1 || true
  PATH="$REPO/.venv/bin:$PATH" cargo lambda build --release "$arch_flag" --output-format zip \
    $(printf -- '-p %s ' "${functions[@]}")
  for f in "${functions[@]}"; do echo "release $arch" >"target/lambda/$f/built-as"; done
  echo "built (release $arch): $(printf 'target/lambda/%s/bootstrap.zip ' "${functions[@]}")"
  exit 0
fi

# The emulator runs functions as local processes, so a native debug build
# works there and shares its artifacts with `cargo test`; a native release
# build (--release --native) shares target/release with the benchmarks.
if $native; then
  profile=release
  cargo build --quiet --release $(printf -- '-p %s ' "${functions[@]}")
else
  profile=debug
  cargo build --quiet $(printf -- '-p %s ' "${functions[@]}")
fi
native="$profile $(uname -m)"
for f in "${functions[@]}"; do
  out="target/lambda/$f"
  mkdir -p "$out"
  # Reuse the zip only if it is newer than the binary and built-as was
  # written after it (a zip from a bare `cargo lambda build` is not ours).
  if [[ "$out/bootstrap.zip" -nt "target/$profile/$f" && "$(cat "$out/built-as" 2>/dev/null)" == "$native" \
        && ! "$out/bootstrap.zip" -nt "$out/built-as" ]]; then
    continue
  fi
  # Stripped, the debug binary zips to a quarter of its size (the release
  # profile strips already; strip again is harmless).
  cp "target/$profile/$f" "$out/bootstrap"
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
  echo "$native" >"$out/built-as"
done
echo "built: $(printf 'target/lambda/%s/bootstrap.zip ' "${functions[@]}")"
