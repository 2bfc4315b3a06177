#!/usr/bin/env bash
# Every check and test of tem: formatting, lints, unit tests, and the
# integration tests against PostgreSQL and the AWS emulator (MiniStack, from
# scripts/requirements.txt in .venv, installed here when missing), and the
# e-invoice validators of the UBL tests (scripts/requirements-validate.txt
# in .venv-validate), and DuckDB, the archive tests' Parquet reader
# (scripts/requirements-archive.txt in .venv-archive).
#
# Needs: cargo, python3, PostgreSQL at DATABASE_URL
# (default postgres://postgres@127.0.0.1:5432/postgres; tests create and
# drop their own tem_test_* databases).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
export DATABASE_URL="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

# Each step's wall time, printed at the end: the suite must stay well under
# CI's budget, and this says where the time goes.
timings=""
current=""
step_started=$SECONDS
step() {
  if [ -n "$current" ]; then timings+="$(printf '%5ds  %s' $((SECONDS - step_started)) "$current")"$'\n'; fi
  current="$*"
  step_started=$SECONDS
  echo; echo "==> $*"
}
report_timings() {
  if [ -n "$current" ]; then timings+="$(printf '%5ds  %s' $((SECONDS - step_started)) "$current")"$'\n'; fi
  printf '\nTime per step:\n%s%5ds  in all\n' "$timings" "$SECONDS"
}

step "formatting"
cargo fmt --all -- --check

step "lints"
cargo clippy --workspace --all-targets --quiet -- -D warnings

step "template checkers (cfn-lint, checkov: scripts/lint-template.sh)"
scripts/lint-template.sh

step "emulator"
started_here=false
if ! scripts/emulator.sh status >/dev/null 2>&1; then
  scripts/emulator.sh start >/dev/null
  started_here=true
fi
cleanup() {
  report_timings
  if $started_here; then scripts/emulator.sh stop >/dev/null 2>&1 || true; fi
}
trap cleanup EXIT

step "leftover test databases"
if command -v psql >/dev/null; then
  for db in $(psql "$DATABASE_URL" -Atc "SELECT datname FROM pg_database WHERE datname LIKE 'tem\_test\_%'"); do
    psql "$DATABASE_URL" -qc "DROP DATABASE \"$db\" WITH (FORCE)" >/dev/null
  done
fi

step "function binaries"
scripts/build.sh

step "e-invoice validators (scripts/ubl-validate.sh venv)"
scripts/ubl-validate.sh venv

step "Parquet reader of the archive tests (scripts/parquet-read.sh venv)"
scripts/parquet-read.sh venv

step "tests"
log="$(mktemp)"
status=0
cargo test --workspace --no-fail-fast 2>&1 | tee "$log" || status=$?
# One closing line over every test binary.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "\n%d passed, %d failed\n", p, f }' "$log"
# The slowest test binaries (cargo test runs them one after another).
echo; echo "Slowest test binaries:"
awk '/^ *Running / { name = ($2 == "unittests") ? $2 " " $3 " " $4 : $2 } /^test result:/ { for (i = 1; i <= NF; i++) if ($i == "in") { t = $(i+1); sub(/s$/, "", t); printf "%8.1fs  %s\n", t, name } }' "$log" | sort -rn | head -12
rm -f "$log"
exit "$status"
