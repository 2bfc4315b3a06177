#!/usr/bin/env bash
# Issue 11, must-show 3: the totals function's own binary, run as the
# emulator runs it, calculates one cycle of --rows CDRs within the
# template's memory setting. Prints the function's peak RSS (VmHWM of its
# process, sampled while it runs) against the deployed MemorySize.
#
#   bench/scripts/totals-function-rss.sh [--rows N] [--subscriptions S]
#                                        [--release] [--no-build] [--keep]
#
#   --rows N           CDRs of the customer's cycle (default 3000000)
#   --subscriptions S  its subscriptions (default 5000)
#   --release          release x86_64 zips (scripts/build.sh --release --arch
#                      x86_64: cargo-lambda + zig) instead of the native debug
#                      build MiniStack runs by default (the emulator tests'
#                      build; EMULATOR_BUILD=release there means the same)
#   --no-build         use the zips already in target/lambda/
#   --keep             keep the stack and the database
#
# Steps: (1) scripts/build.sh builds every function's zip (packaging the
# template needs them all); (2) scripts/emulator.sh start (MiniStack from
# .venv); (3) `totals-bench seed` creates a database tem_bench_* on
# DATABASE_URL's server (default postgres://postgres@127.0.0.1:5432/postgres)
# with the cycle 2025-03-01 of one customer on a rate plan with bundles
# (bench/src/totals/data.rs), nothing calculated; (4) deploys
# infra/template.yaml as the emulator tests do (tem-local's Deployment:
# the database URL in the secret <stack>/database, the same parameter
# overrides); (5) invokes the totals function synchronously with a
# CalculateTotals envelope for that cycle (events/totals/console-dispatch.json's
# shape) while sampling the VmHWM of the function's process (found by its
# AWS_LAMBDA_FUNCTION_NAME); (6) checks the stored totals count every CDR;
# (7) deletes the function, the stack and the database (unless --keep).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$REPO"

rows=3000000
subscriptions=5000
build_args=()
build=true
keep=false
while (($#)); do
  case "$1" in
    --rows) rows="${2:?--rows needs a number}"; shift ;;
    --subscriptions) subscriptions="${2:?--subscriptions needs a number}"; shift ;;
    --release) build_args=(--release --arch x86_64) ;;
    --no-build) build=false ;;
    --keep) keep=true ;;
    -h|--help) sed -n '2,31p' "$0"; exit 0 ;;
    *) echo "totals-function-rss.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
for tool in jq psql; do
  command -v "$tool" >/dev/null || { echo "totals-function-rss.sh: needs $tool" >&2; exit 2; }
done
say() { echo "[totals-function-rss] $*" >&2; }

# 1. The zips, as the emulator runs them, and the data generator.
if $build; then
  say "building the function zips: scripts/build.sh ${build_args[*]:-}"
  scripts/build.sh "${build_args[@]}"
fi
[[ -f target/lambda/totals/bootstrap.zip ]] || { echo "no target/lambda/totals/bootstrap.zip: run scripts/build.sh" >&2; exit 1; }
built_as="$(cat target/lambda/totals/built-as 2>/dev/null || echo unknown)"
cargo build --quiet --release -p tem-bench --bin totals-bench

# 2. The emulator.
# Its export lines (MiniStack's .emulator/env, or those of the emulator at
# AWS_ENDPOINT_URL).
eval "$(scripts/emulator.sh start)"
aws() { "${EMULATOR_VENV:-$REPO/.venv}/bin/aws" "$@"; }

# 3. The data.
say "seeding $rows CDRs over $subscriptions subscriptions"
seeded="$(target/release/totals-bench seed --rows "$rows" --subscriptions "$subscriptions")"
database="$(jq -r .database <<<"$seeded")"
url="$(jq -r .url <<<"$seeded")"
customer="$(jq -r .customer_id <<<"$seeded")"
cycle="$(jq -r .cycle <<<"$seeded")"

stack="rss$(date +%s)$RANDOM"
work="$(mktemp -d)"
function_name=""
cleanup() {
  if ! $keep; then
    if [[ -n "$function_name" ]]; then
      aws lambda delete-function --function-name "$function_name" >/dev/null 2>&1 || true
    fi
    # The stack's CDR bucket is retained (DeletionPolicy: Retain, as in
    # production); MiniStack forgets it when it stops.
    aws cloudformation delete-stack --stack-name "$stack" >/dev/null 2>&1 || true
    aws secretsmanager delete-secret --secret-id "$stack/database" --force-delete-without-recovery >/dev/null 2>&1 || true
    psql "${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}" -X -q \
      -c "DROP DATABASE IF EXISTS $database WITH (FORCE)" >/dev/null 2>&1 || true
  else
    say "kept stack $stack and database $database"
  fi
  rm -rf "$work"
}
trap cleanup EXIT

# 4. The stack, as tem-local's Deployment::create deploys it.
say "deploying stack $stack"
aws secretsmanager create-secret --name "$stack/database" --secret-string "$url" >/dev/null
aws s3api head-bucket --bucket tem-artifacts >/dev/null 2>&1 \
  || aws s3api create-bucket --bucket tem-artifacts \
       --create-bucket-configuration "LocationConstraint=$AWS_DEFAULT_REGION" >/dev/null
# (package reports its uploads' progress on stderr: kept for a failure.)
aws cloudformation package --template-file infra/template.yaml --s3-bucket tem-artifacts \
  --s3-prefix "$stack" --output-template-file "$work/packaged.yaml" >/dev/null 2>"$work/package.err" \
  || { cat "$work/package.err" >&2; exit 1; }
aws cloudformation deploy --template-file "$work/packaged.yaml" --stack-name "$stack" \
  --capabilities CAPABILITY_IAM CAPABILITY_AUTO_EXPAND --no-fail-on-empty-changeset \
  --s3-bucket tem-artifacts --s3-prefix "$stack" \
  --parameter-overrides "SecretsPrefix=$stack" ScheduleEnabled=false DatabaseSslMode=disable \
    Architecture=x86_64 DatabaseMaxConnections=50 >/dev/null 2>"$work/deploy.err" \
  || { cat "$work/deploy.err" >&2; exit 1; }
function_name="$(aws cloudformation describe-stacks --stack-name "$stack" \
  --query "Stacks[0].Outputs[?OutputKey=='TotalsFunctionName'].OutputValue" --output text)"
memory_mb="$(aws lambda get-function-configuration --function-name "$function_name" \
  --query MemorySize --output text)"
timeout_s="$(aws lambda get-function-configuration --function-name "$function_name" \
  --query Timeout --output text)"

# 5. One CalculateTotals, its process's peak memory sampled meanwhile.
id="$stack-calculate"
envelope="$(jq -cn --arg id "$id" --argjson customer "$customer" --arg cycle "$cycle" \
  --arg now "$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
  '{version: 1, id: $id, step: "CalculateTotals",
    payload: {customer_id: $customer, cycle: $cycle, cause: "console", method: "rate_plan"},
    chain: [], task_id: null, attempt: 0, created_at: $now, trace_id: $id, depth: 0, requeues: 0}')"
echo "$envelope" >"$work/envelope.json"
pid_of_function() {
  local p
  for p in /proc/[0-9]*; do
    if { tr '\0' '\n' <"$p/environ"; } 2>/dev/null | grep -qx "AWS_LAMBDA_FUNCTION_NAME=$function_name"; then
      basename "$p"
      return 0
    fi
  done
  return 1
}
say "invoking $function_name (MemorySize $memory_mb MB, Timeout $timeout_s s, $built_as build)"
started="$(date +%s.%N)"
aws lambda invoke --function-name "$function_name" --cli-read-timeout 0 \
  --payload "$envelope" "$work/response.json" >"$work/invoke.json" &
invoke=$!
pid=""
hwm_kb=0
while kill -0 "$invoke" 2>/dev/null; do
  [[ -n "$pid" ]] || pid="$(pid_of_function || true)"
  if [[ -n "$pid" ]]; then
    v="$(awk '/^VmHWM:/ {print $2}' "/proc/$pid/status" 2>/dev/null || true)"
    [[ -n "$v" ]] && hwm_kb="$v"
  fi
  sleep 0.2
done
wait "$invoke"
ended="$(date +%s.%N)"
[[ -n "$pid" ]] || pid="$(pid_of_function || true)"
if [[ -n "$pid" ]]; then
  v="$(awk '/^VmHWM:/ {print $2}' "/proc/$pid/status" 2>/dev/null || true)"
  [[ -n "$v" ]] && hwm_kb="$v"
fi
function_error="$(jq -r '.FunctionError // empty' "$work/invoke.json")"

# 6. What it stored.
stored="$(psql "$url" -X -At -F ' ' -c \
  "SELECT method, cdr_count, rated_cost_micros FROM totals WHERE customer_id = $customer AND cycle = '$cycle'")"
read -r method cdr_count rated <<<"${stored:-none 0 0}"
seconds="$(echo "$ended - $started" | bc)"
hwm_mib="$(echo "scale=1; $hwm_kb / 1024" | bc)"
verdict=missed
if [[ -z "$function_error" && "$cdr_count" == "$rows" && "$hwm_kb" -gt 0 && "$hwm_kb" -le $((memory_mb * 1024)) ]]; then
  verdict=met
fi
echo
echo "== the totals function on a cycle of $rows CDRs ($subscriptions subscriptions), as the emulator runs it =="
echo "  binary                 target/lambda/totals/bootstrap.zip ($built_as)"
echo "  invoke                 ${seconds} s (awscli start-up included), function error: ${function_error:-none}"
echo "  response               $(head -c 300 "$work/response.json")"
echo "  stored totals          method $method, $cdr_count CDRs, rated $rated micro-euros"
echo "  peak RSS (VmHWM)       ${hwm_mib} MiB of pid ${pid:-?}"
echo "  template MemorySize    $memory_mb MB"
echo "  goal                   peak RSS <= MemorySize and every CDR counted: $verdict"
jq -n --argjson rows "$rows" --argjson subscriptions "$subscriptions" --arg built_as "$built_as" \
  --argjson seconds "$seconds" --arg function_error "$function_error" --arg method "$method" \
  --argjson cdr_count "${cdr_count:-0}" --argjson vm_hwm_kb "$hwm_kb" --argjson memory_mb "$memory_mb" \
  --arg verdict "$verdict" \
  '{rows: $rows, subscriptions: $subscriptions, built_as: $built_as, invoke_seconds: $seconds,
    function_error: $function_error, method: $method, cdr_count: $cdr_count, vm_hwm_kb: $vm_hwm_kb,
    memory_size_mb: $memory_mb, verdict: $verdict}'
[[ "$verdict" == met ]]
