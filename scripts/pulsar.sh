#!/usr/bin/env bash
# A Galaxy Pulsar server (pulsar-app, REST) for tests and development, in its own venv.
#
#   PULSAR_PRIVATE_TOKEN=T scripts/pulsar.sh start DIR PORT [SLOTS]   idempotent: venv, config, server on 127.0.0.1:PORT
#   scripts/pulsar.sh stop DIR     stop the server, then kill whatever jobs it still runs
#   scripts/pulsar.sh crash DIR    SIGKILL the server and its running jobs (the host went down; staging stays)
#   scripts/pulsar.sh wipe DIR     with the server down: drop its staging and persisted state (it forgets its jobs)
#   scripts/pulsar.sh status DIR   exit 0 when the server answers
#
# pulsar-app pins Galaxy libraries that must not mix with the project's venv, hence PULSAR_VENV
# (default .scratch/pulsar-venv, gitignored). Jobs run as children of the server in their own process groups.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${PULSAR_VENV:-$REPO/.scratch/pulsar-venv}
VERSION=${PULSAR_VERSION:-0.16.0}
PYTHON=${PYTHON:-python3}

die() { echo "pulsar.sh: $*" >&2; exit 1; }

ensure_venv() {
  local stamp="$VENV/.installed-$VERSION"
  [ -f "$stamp" ] && return 0
  mkdir -p "$(dirname "$VENV")"
  exec 9>"$VENV.lock"
  flock 9                         # concurrent test sessions install once
  if [ ! -f "$stamp" ]; then
    echo "pulsar.sh: installing pulsar-app[web]==$VERSION into $VENV" >&2
    rm -rf "$VENV"
    "$PYTHON" -m venv "$VENV"
    "$VENV/bin/pip" install -q --disable-pip-version-check "pulsar-app[web]==$VERSION" >&2
    touch "$stamp"
  fi
  flock -u 9
}

server_pid() {
  local pid
  pid=$(cat "$1/pulsar.pid" 2>/dev/null) || return 1
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && echo "$pid"
}

# The server answers /healthz with its private token (read from app.yml, never put on a command line here).
healthy() {
  [ -f "$1/app.yml" ] && [ -f "$1/port" ] || return 1
  "$VENV/bin/python" - "$1" <<'EOF' 2>/dev/null
import sys, urllib.parse, urllib.request, yaml
d = sys.argv[1]
token = (yaml.safe_load(open(f"{d}/app.yml")) or {}).get("private_token") or ""
port = open(f"{d}/port").read().strip()
url = f"http://127.0.0.1:{port}/healthz?" + urllib.parse.urlencode({"private_token": token})
sys.exit(0 if urllib.request.urlopen(url, timeout=3).status == 200 else 1)
EOF
}

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Process groups of the jobs the server started (Pulsar records each job script's pid; it runs setpgrp).
kill_jobs() {
  local dir=$1 pidfile pid cwd
  for pidfile in "$dir"/staging/*/pid; do
    [ -f "$pidfile" ] || continue
    pid=$(tr -cd '0-9' < "$pidfile" 2>/dev/null) || continue     # stored as JSON: "1234"
    [ -n "$pid" ] || continue
    cwd=$(readlink "/proc/$pid/cwd" 2>/dev/null) || continue
    case "$cwd" in "$dir"/staging/*) kill -KILL -- "-$pid" 2>/dev/null || true ;; esac   # guards pid reuse
  done
}

children() { cat /proc/"$1"/task/*/children 2>/dev/null || true; }   # no procps needed

kill_server() {
  local dir=$1 sig=$2 pid child
  pid=$(server_pid "$dir") || return 0
  for child in $(children "$pid"); do kill "-$sig" "$child" 2>/dev/null || true; done
  kill "-$sig" "$pid" 2>/dev/null || true
  for _ in $(seq 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
  if kill -0 "$pid" 2>/dev/null; then
    for child in $(children "$pid"); do kill -KILL "$child" 2>/dev/null || true; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$dir/pulsar.pid"
}

start() {
  local dir port slots
  [ $# -ge 2 ] || die "usage: PULSAR_PRIVATE_TOKEN=T $0 start DIR PORT [SLOTS]"
  mkdir -p "$1"
  dir=$(cd "$1" && pwd)
  port=$2
  slots=${3:-4}
  [ -n "${PULSAR_PRIVATE_TOKEN:-}" ] || die "set PULSAR_PRIVATE_TOKEN: Pulsar runs any command line it is sent"
  ensure_venv
  if server_pid "$dir" >/dev/null; then
    for _ in $(seq 150); do healthy "$dir" && { echo "pulsar.sh: already running in $dir"; return 0; }; sleep 0.2; done
    die "server in $dir runs but does not answer; see $dir/pulsar.log"
  fi
  listening "$port" && die "port $port is taken by another process"
  (cd "$dir" && "$VENV/bin/pulsar-config" --directory "$dir" --host 127.0.0.1 --port "$port" \
      --private_token "$PULSAR_PRIVATE_TOKEN" --force >/dev/null)
  # app.yml by YAML's own dumper (any token survives quoting), readable by its owner only.
  (umask 077 && "$VENV/bin/python" - "$dir" "$slots" <<'EOF'
import os, sys, yaml
d, slots = sys.argv[1], int(sys.argv[2])
conf = {"private_token": os.environ["PULSAR_PRIVATE_TOKEN"], "conda_auto_init": False, "conda_auto_install": False,
        "staging_directory": f"{d}/staging", "persistence_directory": f"{d}/persisted",
        "managers": {"_default_": {"type": "queued_python", "num_concurrent_jobs": slots}}}
with open(f"{d}/app.yml.new", "w") as fh:
    yaml.safe_dump(conf, fh)
os.replace(f"{d}/app.yml.new", f"{d}/app.yml")
EOF
  )
  echo "$port" > "$dir/port"
  mkdir -p "$dir/home"
  # gunicorn's control socket goes to XDG_RUNTIME_DIR: one per server, not a shared ~/.gunicorn.
  (cd "$dir" && env HOME="$dir/home" XDG_RUNTIME_DIR="$dir" "$VENV/bin/pulsar-serve" "$dir/server.ini" \
      --daemon --pid "$dir/pulsar.pid" --log-file "$dir/pulsar.log")
  for _ in $(seq 300); do
    healthy "$dir" && { echo "pulsar.sh: Pulsar $VERSION on 127.0.0.1:$port ($dir, $slots slots)"; return 0; }
    sleep 0.2
  done
  die "Pulsar did not answer on port $port within 60 s; see $dir/pulsar.log"
}

cmd=${1:-}
[ $# -ge 2 ] || die "usage: $0 start|stop|crash|wipe|status DIR ..."
shift
case "$cmd" in
  start) start "$@" ;;
  stop) dir=$(cd "$1" && pwd); kill_server "$dir" TERM; kill_jobs "$dir" ;;
  crash) dir=$(cd "$1" && pwd); kill_jobs "$dir"; kill_server "$dir" KILL ;;
  wipe)
    dir=$(cd "$1" && pwd)
    server_pid "$dir" >/dev/null && die "stop the server in $dir first"
    kill_jobs "$dir"
    rm -rf "$dir/staging" "$dir/persisted" ;;
  status) dir=$(cd "$1" && pwd); server_pid "$dir" >/dev/null && healthy "$dir" ;;
  *) die "unknown command $cmd (start|stop|crash|wipe|status)" ;;
esac
