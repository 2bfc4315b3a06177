#!/usr/bin/env bash
# An independent reader of tem's archive files (DuckDB, pinned in
# scripts/requirements-archive.txt, in $REPO/.venv-archive):
#
#   scripts/parquet-read.sh venv          # install it only
#   scripts/parquet-read.sh FILE.parquet  # print the file's schema and rows
#
# Prints one JSON object: {"columns": [[name, type], ...], "rows": [[...], ...]}
# with timestamps as ISO 8601 UTC strings, for the tests to compare with
# PostgreSQL's rows.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$REPO/.venv-archive"
REQS="$REPO/scripts/requirements-archive.txt"
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
exec "$VENV/bin/python" - "$1" <<'PY'
import json, sys
import duckdb

con = duckdb.connect()
source = f"read_parquet('{sys.argv[1]}')"
described = con.sql(f"SELECT * FROM {source}")
columns = [[name, str(kind)] for name, kind in zip(described.columns, described.types)]
# Instants as ISO 8601 UTC text made by DuckDB itself (its Python
# conversion of a time-zone-aware value would need pytz).
select = ", ".join(
    f"strftime(timezone('UTC', \"{name}\"), '%Y-%m-%dT%H:%M:%S.%fZ')"
    if kind == "TIMESTAMP WITH TIME ZONE" else f'"{name}"'
    for name, kind in columns
)
rows = [list(row) for row in con.sql(f"SELECT {select} FROM {source}").fetchall()]
json.dump({"columns": columns, "rows": rows}, sys.stdout)
PY
