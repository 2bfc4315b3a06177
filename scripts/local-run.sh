#!/usr/bin/env bash
# The main job, locally: starts the AWS emulator, builds the functions,
# deploys infra/template.yaml, seeds demo profiles against the carrier
# simulator, runs one master-sync cycle and prints the tasks and what landed
# in S3. PostgreSQL at DATABASE_URL (default
# postgres://postgres@127.0.0.1:5432/tem_local, created if missing).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
exec cargo run --quiet -p tem-local --bin local-run
