#!/usr/bin/env bash
# Local AWS emulator (MiniStack) for tests. See scripts/EMULATOR_NOTES.md.
#
#   scripts/emulator.sh start    # create/refresh $REPO/.venv, start MiniStack, wait until healthy
#   scripts/emulator.sh stop     # stop it (and the Lambda processes it spawned)
#   scripts/emulator.sh restart
#   scripts/emulator.sh status   # exit 0 if running and healthy
#   scripts/emulator.sh env      # print the export lines (same as .emulator/env)
#   scripts/emulator.sh venv     # only create/refresh the venv
#
# start is idempotent: if the emulator recorded in .emulator/ is alive and
# healthy it is left alone (use restart to pick up a changed environment).
#
# Another emulator (LocalStack, ...): when AWS_ENDPOINT_URL is set in the
# caller's environment, that endpoint is used and no MiniStack is started.
# start then only checks that the endpoint answers and prints the env lines
# for it (EMULATOR_KIND=external; .emulator/ is not touched); status checks
# that it answers; stop and restart leave it alone. The AWS_ENDPOINT_URL of our own .emulator/env
# (EMULATOR_KIND=ministack, e.g. after `source .emulator/env`) does not count
# as another emulator. Everything else MiniStack-specific lives in
# local/src/emulator.rs (its module doc lists the quirks).
# Lambda function processes inherit the emulator's environment. DATABASE_URL
# is removed from it on purpose: deployed functions read their database URL
# from Secrets Manager ({SecretsPrefix}/database), as on AWS, so each stack
# (each test) can have its own database.
#
# Tunables (environment): EMULATOR_REGION (default eu-west-1),
# EMULATOR_PORT (default: a free port), EMULATOR_START_TIMEOUT (seconds, 60),
# PYTHON (default python3), LOG_LEVEL (MiniStack's, default INFO).
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$SCRIPT_DIR/.." && pwd)"
VENV="$REPO/.venv"
REQS="$SCRIPT_DIR/requirements.txt"
STATE="$REPO/.emulator"
PYTHON="${PYTHON:-python3}"
REGION="${EMULATOR_REGION:-eu-west-1}"
START_TIMEOUT="${EMULATOR_START_TIMEOUT:-60}"

log() { echo "emulator: $*" >&2; }

# The endpoint of an emulator this script does not manage, if one is set.
external_endpoint() {
  [[ -n "${AWS_ENDPOINT_URL:-}" && "${EMULATOR_KIND:-}" != ministack ]] || return 1
  # The endpoint of the MiniStack recorded in .emulator/ is ours too.
  [[ -f "$STATE/port" && "$AWS_ENDPOINT_URL" == "http://127.0.0.1:$(cat "$STATE/port")" ]] && return 1
  echo "$AWS_ENDPOINT_URL"
}

# Any HTTP answer will do: emulators differ in their health URLs.
answers() { # url
  curl -sS -o /dev/null --max-time 5 "$1" 2>/dev/null
}

# The env lines for an emulator this script does not manage. Nothing is
# written to .emulator/: that state belongs to our own MiniStack.
external_env() { # endpoint
  cat <<EOF
# For the emulator at AWS_ENDPOINT_URL (not managed by scripts/emulator.sh).
export AWS_ENDPOINT_URL=$1
export AWS_ACCESS_KEY_ID=${AWS_ACCESS_KEY_ID:-test}
export AWS_SECRET_ACCESS_KEY=${AWS_SECRET_ACCESS_KEY:-test}
export AWS_DEFAULT_REGION=${AWS_DEFAULT_REGION:-${AWS_REGION:-$REGION}}
export AWS_REGION=${AWS_REGION:-${AWS_DEFAULT_REGION:-$REGION}}
export AWS_EC2_METADATA_DISABLED=true
export EMULATOR_KIND=external
export EMULATOR_VENV=$VENV
EOF
}

external_start() { # endpoint
  if ! answers "$1"; then
    log "AWS_ENDPOINT_URL=$1 does not answer; start that emulator first (or unset AWS_ENDPOINT_URL to use MiniStack)"
    return 1
  fi
  log "using the emulator at $1 (AWS_ENDPOINT_URL); not starting MiniStack"
  external_env "$1"
}

# shellcheck source=lib/venv.sh
source "$REPO/scripts/lib/venv.sh"
ensure_venv() {
  VENV_UPGRADE_PIP=1 venv_ensure "$VENV" "$REQS"
}

free_port() {
  "$VENV/bin/python" - <<'EOF'
import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
s.close()
EOF
}

healthy() { # port
  curl -fsS --max-time 2 "http://127.0.0.1:$1/_ministack/health" >/dev/null 2>&1
}

running_pid() { # prints pid if the recorded emulator process is alive
  [[ -f "$STATE/pid" ]] || return 1
  local pid
  pid="$(cat "$STATE/pid")"
  [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null && echo "$pid"
}

is_up() {
  local pid
  pid="$(running_pid)" || return 1
  [[ -f "$STATE/port" ]] && healthy "$(cat "$STATE/port")"
}

write_env() { # port
  local url="http://127.0.0.1:$1"
  cat >"$STATE/env.tmp" <<EOF
# Written by scripts/emulator.sh start; source it. Only 'export KEY=VALUE' lines follow.
export AWS_ENDPOINT_URL=$url
export AWS_ACCESS_KEY_ID=test
export AWS_SECRET_ACCESS_KEY=test
export AWS_DEFAULT_REGION=$REGION
export AWS_REGION=$REGION
export AWS_EC2_METADATA_DISABLED=true
export EMULATOR_KIND=ministack
export EMULATOR_PORT=$1
export EMULATOR_PID=$(cat "$STATE/pid")
export EMULATOR_LOG=$STATE/ministack.log
export EMULATOR_VENV=$VENV
EOF
  mv "$STATE/env.tmp" "$STATE/env"
}

start() {
  ensure_venv
  mkdir -p "$STATE"
  if is_up; then
    log "already running (pid $(cat "$STATE/pid"), port $(cat "$STATE/port"))"
    cat "$STATE/env"
    return 0
  fi
  # A recorded process that is alive but unhealthy (or stale state): clear it.
  stop_quiet
  local attempt
  for attempt in 1 2 3; do
    # A free port is picked, then bound by MiniStack: retry if another process
    # grabbed it in between (only when the port was not fixed by the caller).
    if launch "${EMULATOR_PORT:-$(free_port)}"; then
      cat "$STATE/env"
      return 0
    fi
    [[ -z "${EMULATOR_PORT:-}" ]] || break
  done
  return 1
}

launch() { # port
  local port="$1"
  local url="http://127.0.0.1:$port"
  # setsid: own process group, so stop can also end the Lambda bootstrap
  # processes it spawns. Foreground mode (not --detach) so the pid is ours.
  # TMPDIR: MiniStack's pid file and extracted function code live there.
  # 9>&-: do not hand the start/stop lock to the long-lived server.
  mkdir -p "$STATE/tmp"
  (
    cd "$STATE"
    export BIND_HOST=127.0.0.1 GATEWAY_PORT="$port" MINISTACK_HOST=127.0.0.1 \
      AWS_ENDPOINT_URL="$url" AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test \
      AWS_DEFAULT_REGION="$REGION" AWS_REGION="$REGION" MINISTACK_REGION="$REGION" \
      AWS_EC2_METADATA_DISABLED=true TMPDIR="$STATE/tmp" \
      PATH="$VENV/bin:$PATH"
    unset AWS_SESSION_TOKEN AWS_PROFILE DATABASE_URL
    exec setsid "$VENV/bin/ministack" </dev/null >"$STATE/ministack.log" 2>&1 9>&-
  ) &
  local pid=$!
  echo "$pid" >"$STATE/pid"
  echo "$port" >"$STATE/port"
  local waited=0
  until healthy "$port"; do
    if ! kill -0 "$pid" 2>/dev/null; then
      log "MiniStack exited during start; log follows"
      tail -n 50 "$STATE/ministack.log" >&2 || true
      rm -f "$STATE/pid" "$STATE/port"
      return 1
    fi
    if ((waited >= START_TIMEOUT * 10)); then
      log "MiniStack not healthy after ${START_TIMEOUT}s; log: $STATE/ministack.log"
      stop_quiet
      return 1
    fi
    sleep 0.1
    waited=$((waited + 1))
  done
  write_env "$port"
  log "MiniStack pid $pid on $url (log $STATE/ministack.log)"
}

stop_quiet() {
  local pid
  if pid="$(running_pid)"; then
    # The whole process group: MiniStack and its Lambda processes.
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    local i
    for i in $(seq 1 50); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL -- "-$pid" 2>/dev/null || true
  fi
  rm -f "$STATE/pid" "$STATE/port" "$STATE/env"
  rm -rf "$STATE/tmp"
}

stop() {
  if pid="$(running_pid)"; then
    log "stopping MiniStack pid $pid"
  else
    log "not running"
  fi
  stop_quiet
}

lock() { # serialise concurrent start/stop calls (e.g. parallel test binaries)
  mkdir -p "$STATE"
  exec 9>"$STATE/lock"
  flock 9
}

if endpoint="$(external_endpoint)"; then
  case "${1:-}" in
    start) ensure_venv; external_start "$endpoint" ;;
    stop|restart) log "the emulator at $endpoint (AWS_ENDPOINT_URL) is not managed here; left alone" ;;
    status)
      if answers "$endpoint"; then log "using the emulator at $endpoint (AWS_ENDPOINT_URL)"
      else log "the emulator at $endpoint (AWS_ENDPOINT_URL) does not answer"; exit 1; fi ;;
    env) external_env "$endpoint" ;;
    venv) ensure_venv ;;
    *) echo "usage: $0 {start|stop|restart|status|env|venv}" >&2; exit 2 ;;
  esac
  exit
fi

case "${1:-}" in
  start) lock; start ;;
  stop) lock; stop ;;
  restart) lock; stop; start ;;
  status)
    if is_up; then
      log "running (pid $(cat "$STATE/pid"), port $(cat "$STATE/port"))"
    else
      log "not running"; exit 1
    fi ;;
  env)
    if is_up; then cat "$STATE/env"; else log "not running (run: $0 start)"; exit 1; fi ;;
  venv) lock; ensure_venv ;;
  *)
    echo "usage: $0 {start|stop|restart|status|env|venv}" >&2
    exit 2 ;;
esac
