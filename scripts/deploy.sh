#!/usr/bin/env bash
# One deploy command: build the release zips, `sam deploy`, migrate the
# database from inside the stack's network, print the stack's outputs.
#
#   scripts/deploy.sh [options] [-- extra `sam deploy` arguments]
#
#   --config FILE    samconfig to use (default infra/samconfig.toml; start from
#                    infra/samconfig.example.toml)
#   --env NAME       its environment (default: default); e.g. --env emulator
#   --yes            apply the change set without asking (confirm_changeset off)
#   --debug-build    native debug zips (scripts/build.sh) instead of release:
#                    fast, for the local emulator only
#   --no-build       deploy the zips already in target/lambda/
#   --no-migrate     skip the migration step
#
# Steps, in order; each stops the script on failure:
#   1. read stack_name, region, profile and parameter_overrides from the
#      samconfig; refuse a parameter the template does not declare (sam would
#      silently ignore it and deploy the default);
#   2. scripts/build.sh --release --arch <Architecture parameter> (cargo-lambda
#      and zig from scripts/requirements.txt; arm64 unless the samconfig says
#      Architecture=x86_64);
#   3. sam deploy (aws-sam-cli from scripts/requirements-deploy.txt, in its
#      own venv .venv-deploy: its boto3 pin conflicts with ministack's);
#   4. invokes the stack's ops function with events/ops/console-migrate.json:
#      the function runs in the VPC, so this works when only the VPC reaches
#      the database; it prints the migrations applied now and those already there;
#   5. prints the outputs (queue URLs, bucket, dashboard, function names).
#
# Against an emulator: with AWS_ENDPOINT_URL set (source .emulator/env), sam
# and the AWS CLI send every call there; `sam deploy` works against MiniStack
# as it is (tested with MiniStack 1.5.33, resolve_s3 included).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
TEMPLATE="$REPO/infra/template.yaml"
DEPLOY_VENV="$REPO/.venv-deploy"
DEPLOY_REQS="$REPO/scripts/requirements-deploy.txt"
MIGRATE_EVENT="$REPO/events/ops/console-migrate.json"

config="$REPO/infra/samconfig.toml"
config_env=default
build=release
migrate=true
yes=false
sam_extra=()
while (($#)); do
  case "$1" in
    --config) config="$(realpath "${2:?--config needs a file}")"; shift ;;
    --env) config_env="${2:?--env needs a name}"; shift ;;
    --yes) yes=true ;;
    --debug-build) build=debug ;;
    --no-build) build=none ;;
    --no-migrate) migrate=false ;;
    -h|--help) sed -n '2,33p' "$0"; exit 0 ;;
    --) shift; sam_extra=("$@"); break ;;
    *) echo "deploy.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

step() { echo; echo "==> $*"; }
fail() { echo "deploy.sh: $*" >&2; exit 1; }

[[ -f "$config" ]] || fail "no samconfig at $config: copy infra/samconfig.example.toml to infra/samconfig.toml and fill in the values marked CHANGE (or pass --config FILE)"

# The deploy venv (sam); the project venv (.venv: awscli, cargo-lambda, zig).
# shellcheck source=lib/venv.sh
source "$REPO/scripts/lib/venv.sh"
ensure_deploy_venv() {
  venv_ensure "$DEPLOY_VENV" "$DEPLOY_REQS"
}
ensure_deploy_venv
"$REPO/scripts/emulator.sh" venv
SAM="$DEPLOY_VENV/bin/sam"
AWS="$REPO/.venv/bin/aws"

step "settings from $config [$config_env]"
# Prints shell assignments: stack, region, profile, arch. Fails on a
# parameter the template does not declare.
settings="$("$DEPLOY_VENV/bin/python" - "$config" "$config_env" "$TEMPLATE" <<'PY'
import shlex, sys, tomllib
from samcli.yamlhelper import parse_yaml_file

config_path, env, template_path = sys.argv[1:]
with open(config_path, "rb") as f:
    document = tomllib.load(f)
if env not in document:
    sys.exit(f"deploy.sh: {config_path} has no [{env}.*] environment (has: {', '.join(k for k in document if k != 'version')})")
settings = dict(document[env].get("global", {}).get("parameters", {}))
settings.update(document[env].get("deploy", {}).get("parameters", {}))

overrides = settings.get("parameter_overrides", [])
if isinstance(overrides, str):
    overrides = shlex.split(overrides)
parameters = {}
for item in overrides:
    key, sep, value = item.partition("=")
    if not sep:
        sys.exit(f"deploy.sh: parameter_overrides entry {item!r} is not Key=Value")
    parameters[key] = value

template = parse_yaml_file(template_path)
declared = template.get("Parameters", {})
unknown = sorted(set(parameters) - set(declared))
if unknown:
    sys.exit(f"deploy.sh: {config_path} [{env}] sets {', '.join(unknown)}, which infra/template.yaml does not declare; "
             f"fix the name (declared: {', '.join(declared)})")
stack = settings.get("stack_name")
if not stack:
    sys.exit(f"deploy.sh: {config_path} [{env}] has no stack_name")
# The zips' architecture: the parameter, else the template's default, else
# the literal Globals value.
arch = parameters.get("Architecture") or declared.get("Architecture", {}).get("Default")
if not arch:
    globals_arch = template.get("Globals", {}).get("Function", {}).get("Architectures", ["arm64"])
    arch = globals_arch[0] if isinstance(globals_arch, list) and isinstance(globals_arch[0], str) else "arm64"
for name, value in [("stack", stack), ("region", settings.get("region", "")),
                    ("profile", settings.get("profile", "")), ("arch", arch)]:
    print(f"{name}={shlex.quote(str(value))}")
PY
)"
eval "$settings"
echo "stack $stack, region ${region:-<from the environment>}, architecture $arch${AWS_ENDPOINT_URL:+, endpoint $AWS_ENDPOINT_URL}"
aws_args=()
[[ -n "$region" ]] && aws_args+=(--region "$region")
[[ -n "$profile" ]] && aws_args+=(--profile "$profile")

case "$build" in
  release)
    step "release build ($arch)"
    scripts/build.sh --release --arch "$arch" ;;
  debug)
    step "debug build (native $(uname -m); for the emulator)"
    [[ "$arch" == "$(uname -m | sed 's/aarch64/arm64/')" ]] \
      || echo "deploy.sh: warning: the stack's Architecture is $arch, the debug build is $(uname -m)" >&2
    [[ -n "${AWS_ENDPOINT_URL:-}" ]] \
      || echo "deploy.sh: warning: a debug build deployed to AWS (AWS_ENDPOINT_URL is not set)" >&2
    scripts/build.sh ;;
  none)
    step "no build: deploying target/lambda/*/bootstrap.zip as they are"
    cat target/lambda/*/built-as 2>/dev/null | sort | uniq -c || true ;;
esac

step "sam deploy"
sam_args=(deploy --template-file "$TEMPLATE" --config-file "$config" --config-env "$config_env"
  --no-fail-on-empty-changeset)
$yes && sam_args+=(--no-confirm-changeset)
"$SAM" "${sam_args[@]}" "${sam_extra[@]}"

outputs_json="$("$AWS" "${aws_args[@]}" cloudformation describe-stacks --stack-name "$stack" \
  --query 'Stacks[0].Outputs' --output json)"
output() { # key
  python3 -c 'import json, sys; print(next((o["OutputValue"] for o in json.load(sys.stdin) or [] if o["OutputKey"] == sys.argv[1]), ""))' "$1" <<<"$outputs_json"
}

if $migrate; then
  step "migrate (ops function, events/ops/console-migrate.json)"
  ops="$(output OpsFunctionName)"
  [[ -n "$ops" ]] || fail "stack $stack has no OpsFunctionName output; is infra/template.yaml up to date?"
  answer="$(mktemp)"
  trap 'rm -f "$answer"' EXIT
  # No read timeout (a migration may take minutes) and one attempt: a retried
  # invoke would only wait behind the first one's lock.
  result="$(AWS_MAX_ATTEMPTS=1 "$AWS" "${aws_args[@]}" lambda invoke --function-name "$ops" \
    --payload "file://$MIGRATE_EVENT" --cli-read-timeout 0 \
    --query '[StatusCode, FunctionError]' --output text "$answer")"
  if [[ "$result" != 200*None* ]]; then
    echo "ops function $ops answered: $result" >&2
    cat "$answer" >&2; echo >&2
    fail "the migration failed; fix the cause (the message above; the function's log group has the details) and run scripts/deploy.sh --no-build again"
  fi
  python3 - "$answer" <<'PY'
import json, sys
report = json.load(open(sys.argv[1]))
applied = report.get("applied", [])
already = report.get("already_applied", [])
if applied:
    print(f"applied {len(applied)} migration(s):")
    for m in applied:
        print(f"  {m['version']:>4}  {m['description']}")
else:
    print("nothing to apply")
print(f"already applied before: {len(already)}" + (f" (versions {already[0]}..{already[-1]})" if already else ""))
PY
fi

step "stack outputs ($stack)"
OUTPUTS="$outputs_json" python3 - <<'PY'
import json, os
outputs = {o["OutputKey"]: o["OutputValue"] for o in json.loads(os.environ["OUTPUTS"]) or []}
groups = [
    ("Bucket", lambda k: k.endswith("BucketName")),
    ("Dashboard", lambda k: "Dashboard" in k),
    ("Queues", lambda k: k.endswith("QueueUrl")),
    ("Dead-letter queues", lambda k: k.endswith("DlqUrl")),
    ("Functions", lambda k: k.endswith("FunctionName")),
]
shown = set()
width = max(map(len, outputs), default=0)
for title, member in groups + [("Other", lambda k: True)]:
    keys = sorted(k for k in outputs if k not in shown and member(k))
    if not keys:
        continue
    print(f"{title}:")
    for k in keys:
        print(f"  {k:<{width}}  {outputs[k]}")
        shown.add(k)
PY
