#!/usr/bin/env bash
# Podman's Docker-compatible API for the container backend and its tests: installs Podman when missing,
# writes its containers.conf, builds the images (scripts/container/build-images.sh) and starts
# `podman system service` in the background unless it already answers. Idempotent; safe to run from
# several test sessions at once (one lock). Progress goes to stderr; stdout is only the socket path.
#
#   CAESAR_PODMAN_DIR     where the socket, containers.conf and service log live (default /run/caesar-podman)
#   CAESAR_IMAGE_CACHE    cache of the debootstrapped base root filesystem (default /var/cache/caesar-rest/images)
#   CAESAR_PODMAN_IMAGES  set to 0 to skip building the images
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
state=${CAESAR_PODMAN_DIR:-/run/caesar-podman}
sock=$state/podman.sock
export CONTAINERS_CONF=$state/containers.conf

log() { echo "podman.sh: $*" >&2; }

mkdir -p "$state"
exec 9>"$state/lock"
flock 9

# ---- packages ------------------------------------------------------------------------------------------
missing=()
command -v podman >/dev/null 2>&1 || missing+=(podman)
command -v runc >/dev/null 2>&1 || missing+=(runc)
command -v catatonit >/dev/null 2>&1 || missing+=(catatonit)
command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
[ -x /bin/busybox ] || missing+=(busybox-static)
command -v curl >/dev/null 2>&1 || missing+=(curl)
if [ ${#missing[@]} -gt 0 ]; then
  log "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # Refresh the package lists only when apt cannot find a candidate with the ones it has.
  if ! apt-get install -y -qq "${missing[@]}" >&2; then
    apt-get update -qq >&2
    apt-get install -y -qq "${missing[@]}" >&2
  fi
fi

# ---- configuration ---------------------------------------------------------------------------------------
# Sandboxes here lack CAP_SYS_RESOURCE (no raising ulimits past the hard limit) and run cgroup v1 without
# systemd; there is no journald for logs or events either.
conf_tmp=$(mktemp "$state/containers.conf.XXXXXX")
cat >"$conf_tmp" <<'EOF'
# Written by scripts/podman.sh
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=4096:4096"]
log_driver = "k8s-file"
init_path = "/usr/bin/catatonit"

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
EOF
if cmp -s "$conf_tmp" "$CONTAINERS_CONF"; then rm -f "$conf_tmp"; else mv -f "$conf_tmp" "$CONTAINERS_CONF"; fi

# ---- images ----------------------------------------------------------------------------------------------
if [ "${CAESAR_PODMAN_IMAGES:-1}" != 0 ]; then
  bash "$here/container/build-images.sh" >&2
fi

# ---- the API service -------------------------------------------------------------------------------------
ping() { curl -sf --max-time 5 --unix-socket "$sock" http://d/_ping >/dev/null 2>&1; }
# The pid of the service this script started, if it still runs (and is still that service, not a reused pid).
service_pid() {
  local pid
  pid=$(cat "$state/service.pid" 2>/dev/null) || return 1
  tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline" | grep -q "system service" && echo "$pid"
}
wait_ping() { for _ in $(seq "$1"); do ping && return 0; sleep 0.2; done; ping; }
if ! ping; then
  if pid=$(service_pid) && ! wait_ping 50; then
    log "service (pid $pid) does not answer; restarting it"
    kill "$pid"
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
  fi
  if ! ping; then
    rm -f "$sock"
    log "starting podman system service on unix://$sock"
    # conmon writes files (e.g. "oom") into its working directory: keep them in $state
    (cd "$state" || exit 1
     setsid podman system service --time=0 "unix://$sock" >>"$state/service.log" 2>&1 </dev/null 9>&- &
     echo $! >"$state/service.pid")
    wait_ping 150 || { log "podman system service does not answer on $sock; see $state/service.log"; exit 1; }
  fi
fi
echo "$sock"
