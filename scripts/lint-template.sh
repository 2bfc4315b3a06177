#!/usr/bin/env bash
# Checks infra/template.yaml with tools nobody here wrote:
#   - cfn-lint, every rule including the informational ones (-i I), with zero
#     errors and zero warnings: on the template as written and on the
#     template the pinned aws-sam-translator makes of it (what CloudFormation
#     deploys);
#   - checkov, clean apart from the skips in infra/checkov-skips.yaml (each
#     with its reason; a skip that no longer matches a finding fails too).
#
#   scripts/lint-template.sh [TEMPLATE]
#
# The checkers are pinned in scripts/requirements-lint.txt and installed into
# $REPO/.venv-lint (their pins conflict with MiniStack's in .venv); the SAM
# translation uses .venv (scripts/emulator.sh venv).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
TEMPLATE="${1:-infra/template.yaml}"
VENV="$REPO/.venv-lint"
REQS="$REPO/scripts/requirements-lint.txt"
PYTHON="${PYTHON:-python3}"

# shellcheck source=lib/venv.sh
source "$REPO/scripts/lib/venv.sh"
venv_ensure "$VENV" "$REQS"
scripts/emulator.sh venv

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

echo "lint: cfn-lint $("$VENV/bin/cfn-lint" --version | cut -d' ' -f2) on $TEMPLATE"
"$VENV/bin/cfn-lint" --include-checks I -- "$TEMPLATE"

echo "lint: cfn-lint on the SAM translation"
"$REPO/.venv/bin/python" scripts/sam-translate.py "$TEMPLATE" >"$work/translated.json"
"$VENV/bin/cfn-lint" --include-checks I -- "$work/translated.json"

echo "lint: checkov $("$VENV/bin/checkov" --version) on $TEMPLATE"
# --skip-download: no network; the check ids are built in.
"$VENV/bin/checkov" --file "$TEMPLATE" --framework cloudformation --skip-download \
  --quiet --compact --output json >"$work/checkov.json" || true
"$VENV/bin/python" - "$work/checkov.json" infra/checkov-skips.yaml <<'PY'
import json, sys
import yaml

report = json.load(open(sys.argv[1]))
if isinstance(report, list):
    report = report[0]
if "results" not in report:
    sys.exit(f"lint: checkov gave no results: {json.dumps(report)[:500]}")
skips = yaml.safe_load(open(sys.argv[2]))
failed = [(f["check_id"], f["resource"].split(".", 1)[1]) for f in report["results"]["failed_checks"]]
used, problems = set(), []
for check, resource in failed:
    match = [i for i, s in enumerate(skips)
             if s["check"] == check and (s["resources"] == ["*"] or resource in s["resources"])]
    if match:
        used.add(match[0])
    else:
        problems.append(f"checkov {check} fails on {resource}; fix it or list it with its reason in infra/checkov-skips.yaml")
for i, s in enumerate(skips):
    if not s.get("reason", "").strip():
        problems.append(f"skip {s['check']} has no reason")
    if i not in used:
        problems.append(f"skip {s['check']} {s['resources']} matches no finding any more; remove it")
    elif s["resources"] != ["*"]:
        for r in s["resources"]:
            if (s["check"], r) not in failed:
                problems.append(f"skip {s['check']} names {r}, which passes; remove it")
passed = report["summary"]["passed"]
print(f"lint: checkov passed {passed}, failed {len(failed)}, all {len(failed)} failures covered by {len(used)} documented skips"
      if not problems else "\n".join(problems))
sys.exit(1 if problems else 0)
PY
echo "lint: template clean"
