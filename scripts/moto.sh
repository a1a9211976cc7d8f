#!/usr/bin/env bash
# moto's server (AWS S3, Batch, CloudWatch Logs emulated) for the Batch backend and S3 storage tests. Batch jobs
# run as real containers: DOCKER_HOST points at the Podman service of scripts/podman.sh, and containers share
# the host's network so that they reach the server (and presigned S3 URLs) at 127.0.0.1.
#
#   moto.sh start DIR PORT    start moto_server on 127.0.0.1:PORT (idempotent), state and log in DIR
#   moto.sh stop DIR          stop it (and the Batch job threads with it)
#
#   MOTO_SERVER  the moto_server program (default: beside $PYTHON, else on PATH)
#   PYTHON       the venv's python (default python3)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
cmd=${1:?usage: moto.sh start DIR PORT | stop DIR}
dir=$(realpath -m "${2:?state directory}")
log() { echo "moto.sh: $*" >&2; }

server_pid() {
  local pid
  pid=$(cat "$dir/moto.pid" 2>/dev/null) || return 1
  local cmdline
  cmdline=$(tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline") || return 1
  [[ $cmdline == *moto_server* ]] && echo "$pid"
}

case "$cmd" in
start)
  port=${3:?port}
  mkdir -p "$dir"
  url=http://127.0.0.1:$port
  if server_pid >/dev/null && curl -sf --max-time 5 "$url/moto-api/" >/dev/null; then
    echo "$url"; exit 0
  fi
  rm -f "$dir/moto.pid"
  sock=$(bash "$here/podman.sh")
  python=${PYTHON:-python3}
  server=${MOTO_SERVER:-$(dirname "$(command -v "$python")")/moto_server}
  [ -x "$server" ] || server=$(command -v moto_server) || { log "moto_server not found: pip install 'moto[server]'"; exit 1; }
  server=$(realpath "$server")
  log "starting $server on $url (Batch containers through unix://$sock)"
  cd "$dir"
  DOCKER_HOST=unix://$sock CONTAINERS_CONF=$(dirname "$sock")/containers.conf MOTO_DOCKER_NETWORK_MODE=host \
    AWS_ACCESS_KEY_ID=${AWS_ACCESS_KEY_ID:-testing} AWS_SECRET_ACCESS_KEY=${AWS_SECRET_ACCESS_KEY:-testing} \
    setsid sh -c 'echo $$ >moto.pid; exec "$@"' moto "$server" -H 127.0.0.1 -p "$port" >>moto.log 2>&1 </dev/null &
  for _ in $(seq 50); do [ -s moto.pid ] && break; sleep 0.1; done
  for _ in $(seq 150); do
    curl -sf --max-time 2 "$url/moto-api/" >/dev/null && { echo "$url"; exit 0; }
    kill -0 "$(cat "$dir/moto.pid")" 2>/dev/null || { tail -20 "$dir/moto.log" >&2; log "moto_server exited"; exit 1; }
    sleep 0.2
  done
  log "moto_server does not answer on $url; see $dir/moto.log"; exit 1
  ;;
stop)
  if pid=$(server_pid); then
    kill "$pid"
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$dir/moto.pid"
  ;;
*) log "unknown command $cmd"; exit 2 ;;
esac
