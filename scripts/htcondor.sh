#!/usr/bin/env bash
# A personal HTCondor pool for the tests: Debian 13's minicondor in a debootstrapped chroot.
#
#   scripts/htcondor.sh start    build the chroot if missing (cached), mount, start the pool, print its env
#   scripts/htcondor.sh stop     stop the pool's daemons; with the main instance, unmount everything
#   scripts/htcondor.sh env      print the env of a running instance
#   scripts/htcondor.sh status   exit 0 when the instance's condor_master runs
#
# Environment:
#   CONDOR_CACHE     where the chroot and the host-side state live (default /var/cache/caesar-rest)
#   CONDOR_INSTANCE  pool instance name (default main); each instance is a separate pool in the same chroot,
#                    with its own local directory and port; instances other than main start from an empty queue
#                    and are deleted when stopped
#   CONDOR_PORT      collector / shared port of the instance (default 9618 for main, else required)
#   CONDOR_MIRROR    Debian mirror for debootstrap (default http://deb.debian.org/debian)
#
# What it sets up:
#   - $CONDOR_CACHE/condor-trixie: the chroot (debootstrap --variant=minbase + minicondor, ~1 min the first time)
#   - read-only bind mounts of this repository and of the Python its venv links to, at the same paths, so the
#     apps' console scripts (.venv/bin/caesar-*) run on the execute side exactly as on the host
#   - $CONDOR_CACHE/condor-shared: a directory mounted at the same path on both sides (shared-filesystem mode)
#   - the submitting identity `tester` (uid 2000; root may not submit) and an IDTOKEN for it
#   - $CONDOR_CACHE/condor-<instance>/condor_config: a host-side CONDOR_CONFIG for the htcondor2 bindings
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
CACHE=${CONDOR_CACHE:-/var/cache/caesar-rest}
R=$CACHE/condor-trixie
SHARED=$CACHE/condor-shared
INSTANCE=${CONDOR_INSTANCE:-main}
STATE=$CACHE/condor-$INSTANCE
MIRROR=${CONDOR_MIRROR:-http://deb.debian.org/debian}
SUBMITTER=tester
SUBMITTER_UID=2000
if [ "$INSTANCE" = main ]; then PORT=${CONDOR_PORT:-9618}; else PORT=${CONDOR_PORT:?CONDOR_PORT is required for instance $INSTANCE}; fi
LOCAL=/var/lib/caesar-condor-$INSTANCE          # inside the chroot
VENV_PY=${CONDOR_VENV_PYTHON:-$REPO/.venv/bin/python}

# shellcheck source=scripts/ports.sh
. "$REPO/scripts/ports.sh"
log() { echo "htcondor: $*" >&2; }
die() { log "$*"; exit 1; }

in_chroot() {   # run a command in the chroot as this instance's tools see it
  chroot "$R" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 \
    _CONDOR_LOCAL_DIR="$LOCAL" _CONDOR_COLLECTOR_HOST="127.0.0.1:$PORT" _CONDOR_SHARED_PORT_PORT="$PORT" "$@"
}

mounted() { awk -v p="$1" '$2 == p {found=1} END {exit !found}' /proc/mounts; }

bind_ro() {     # bind-mount a host directory read-only at the same path in the chroot
  local src=$1 dst=$R$1
  if mounted "$dst"; then
    # Still the same directory? A path deleted and created again (a fresh clone at the same place)
    # leaves a stale mount of the old one behind: replace it.
    [ "$(stat -c %d:%i "$src")" = "$(stat -c %d:%i "$dst" 2>/dev/null)" ] && return 0
    umount "$dst" 2>/dev/null || umount -l "$dst"
  fi
  mkdir -p "$dst"
  mount --bind "$src" "$dst"
  mount -o remount,bind,ro "$dst" 2>/dev/null || log "could not make $dst read-only; left read-write"
}

unmount_all() { # everything mounted under $1, deepest first
  local root=$1
  awk -v r="$root" 'index($2, r "/") == 1 {print $2}' /proc/mounts | sort -r | while read -r m; do
    umount "$m" 2>/dev/null || umount -l "$m"
  done
}

build_rootfs() {
  [ -f "$R/.caesar-rootfs-ready" ] && return 0
  local P=$R.partial
  command -v debootstrap >/dev/null || {
    log "installing debootstrap"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
  }
  if [ -e "$P" ]; then unmount_all "$P"; rm -rf --one-file-system "$P"; fi
  mkdir -p "$CACHE"
  log "debootstrap trixie + minicondor into $P (about a minute)"
  # debootstrap does not resolve minicondor's virtual dependencies: name the provider, and finish with apt.
  debootstrap --variant=minbase --include=minicondor,python3-cffi-backend trixie "$P" "$MIRROR" \
    >"$CACHE/condor-debootstrap.log" 2>&1 || log "debootstrap reported errors; finishing with apt-get -f install"
  mount -t proc proc "$P/proc"; mount --bind /dev "$P/dev"; mount --bind /dev/pts "$P/dev/pts"
  chroot "$P" env DEBIAN_FRONTEND=noninteractive apt-get -y -qq -f install >>"$CACHE/condor-debootstrap.log" 2>&1 \
    || { unmount_all "$P"; die "apt-get -f install failed in the chroot; see $CACHE/condor-debootstrap.log"; }
  chroot "$P" apt-get clean
  unmount_all "$P"
  [ -x "$P/usr/sbin/condor_master" ] || die "minicondor is not installed in $P; see $CACHE/condor-debootstrap.log"
  touch "$P/.caesar-rootfs-ready"
  mv "$P" "$R"
}

configure_rootfs() {
  cat >"$R/etc/condor/config.d/99-caesar.conf" <<'EOF'
# caesar-rest test pool (written by scripts/htcondor.sh)
# No private /tmp, /var/tmp per job: the chroot cannot make those mounts (jobs would be held).
MOUNT_UNDER_SCRATCH =
# The same token is good for every instance of the pool.
TRUST_DOMAIN = caesar-condor
# Four 1-cpu jobs at once on a 2-core machine: the test jobs mostly sleep or wait on I/O.
NUM_CPUS = 4
# Respond fast: small pool, short jobs.
NEGOTIATOR_INTERVAL = 2
NEGOTIATOR_CYCLE_DELAY = 1
SCHEDD_INTERVAL = 2
STARTER_UPDATE_INTERVAL = 2
SHADOW_QUEUE_UPDATE_INTERVAL = 2
PERIODIC_EXPR_INTERVAL = 2
JOB_START_DELAY = 0
EOF
  grep -q "[[:space:]]$(hostname)\$" "$R/etc/hosts" 2>/dev/null || echo "127.0.0.1 $(hostname)" >>"$R/etc/hosts"
  chroot "$R" id -u "$SUBMITTER" >/dev/null 2>&1 || chroot "$R" useradd -m -u "$SUBMITTER_UID" "$SUBMITTER"
  chmod 755 "$R/root"   # the venv's Python may live under /root (pyenv); the job user must reach it
}

mount_all() {
  mounted "$R/proc" || mount -t proc proc "$R/proc"
  mounted "$R/dev" || mount --bind /dev "$R/dev"
  mounted "$R/dev/pts" || mount --bind /dev/pts "$R/dev/pts"
  mounted "$R/sys" || mount -t sysfs sys "$R/sys"
  mkdir -p "$SHARED" && chmod 1777 "$SHARED"
  if ! mounted "$R$SHARED"; then mkdir -p "$R$SHARED"; mount --bind "$SHARED" "$R$SHARED"; fi
  bind_ro "$REPO"
  if [ -x "$VENV_PY" ]; then
    local prefix base
    prefix=$(readlink -f "$("$VENV_PY" -c 'import sys; print(sys.prefix)')")
    base=$(readlink -f "$("$VENV_PY" -c 'import sys; print(sys.base_prefix)')")
    case "$prefix" in "$REPO"/*) ;; *) bind_ro "$prefix" ;; esac
    case "$base" in
      /usr|/usr/*|/) log "the venv's Python is the system one ($base): the chroot's differs; jobs may not run" ;;
      *) bind_ro "$base" ;;
    esac
  else
    log "no venv Python at $VENV_PY: the apps' console scripts will not run in the pool"
  fi
}

master_pid() { cat "$R$LOCAL/master.pid" 2>/dev/null || true; }
master_running() {
  local pid; pid=$(master_pid)
  [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q condor_master
}

start_master() {
  # The collector's port kept from the outgoing range, and free of a socket that was given it (scripts/ports.sh).
  reserve_ports "$PORT"
  master_running && return 0
  port_free "$PORT" htcondor || die "port $PORT stays held by another socket: $(port_holders "$PORT")"
  if [ "$INSTANCE" != main ]; then rm -rf --one-file-system "${R:?}$LOCAL"; fi  # scratch instances start empty
  local d
  for d in run/condor log/condor lock/condor spool/condor lib/condor/execute lib/condor/cred_dir; do
    mkdir -p "$R$LOCAL/$d"
  done
  chroot "$R" chown -R condor:condor "$LOCAL"
  chmod 700 "$R$LOCAL/lib/condor/cred_dir"
  log "starting condor_master (instance $INSTANCE, port $PORT)"
  in_chroot /usr/sbin/condor_master -pidfile "$LOCAL/master.pid" 9>&-   # the daemon must not keep our lock
}

wait_ready() {
  local i
  for i in $(seq 240); do
    if in_chroot condor_status -schedd -af Name 2>/dev/null | grep -q . \
       && in_chroot condor_status -af Name 2>/dev/null | grep -q slot; then
      return 0
    fi
    sleep 0.5
  done
  die "instance $INSTANCE: no schedd or slot visible after 120 s; logs in $R$LOCAL/log/condor"
}

write_client_config() {
  mkdir -p "$STATE/tokens.d"
  chmod 700 "$STATE" "$STATE/tokens.d"
  if [ ! -s "$STATE/tokens.d/$SUBMITTER" ]; then
    local domain
    domain=$(in_chroot condor_config_val UID_DOMAIN)
    in_chroot condor_token_create -identity "$SUBMITTER@$domain" >"$STATE/tokens.d/$SUBMITTER.tmp"
    chmod 600 "$STATE/tokens.d/$SUBMITTER.tmp"
    mv "$STATE/tokens.d/$SUBMITTER.tmp" "$STATE/tokens.d/$SUBMITTER"
  fi
  cat >"$STATE/condor_config" <<EOF
# Host-side client config for the caesar-rest test pool (instance $INSTANCE)
COLLECTOR_HOST = 127.0.0.1:$PORT
SEC_CLIENT_AUTHENTICATION_METHODS = IDTOKENS
SEC_TOKEN_DIRECTORY = $STATE/tokens.d
EOF
}

print_env() {
  echo "CONDOR_CONFIG=$STATE/condor_config"
  echo "CAESAR_TEST_CONDOR_COLLECTOR=127.0.0.1:$PORT"
  echo "CAESAR_TEST_CONDOR_TOKEN_DIR=$STATE/tokens.d"
  echo "CAESAR_TEST_CONDOR_SHARED=$SHARED"
  echo "CAESAR_TEST_CONDOR_CHROOT=$R"
  echo "CAESAR_TEST_CONDOR_UID=$SUBMITTER_UID"
}

stop_instance() {   # $1: the instance's local dir in the chroot
  local pidfile=$R$1/master.pid pid i
  pid=$(cat "$pidfile" 2>/dev/null || true)
  [ -n "$pid" ] || return 0
  if [ -r "/proc/$pid/cmdline" ] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q condor_master; then
    log "stopping condor_master $pid ($1)"
    kill -QUIT "$pid" 2>/dev/null || true     # fast shutdown: running jobs are killed
    for i in $(seq 120); do [ -d "/proc/$pid" ] || break; sleep 0.25; done
    [ -d "/proc/$pid" ] && { kill -KILL "$pid" 2>/dev/null || true; }
  fi
  rm -f "$pidfile"
}

stop_pool() {
  [ -d "$R" ] || return 0
  if [ "$INSTANCE" = main ]; then
    local dir
    for dir in "$R"/var/lib/caesar-condor-*; do
      if [ -d "$dir" ]; then stop_instance "${dir#"$R"}"; fi
    done
    # stragglers (shadows, starters, jobs) of any instance still rooted in the chroot
    local p
    for p in /proc/[0-9]*; do
      [ "$(readlink "$p/root" 2>/dev/null)" = "$R" ] && { kill -KILL "${p#/proc/}" 2>/dev/null || true; }
    done
    sleep 0.5
    unmount_all "$R"
    log "stopped; chroot unmounted"
  else
    stop_instance "$LOCAL"
    rm -rf --one-file-system "${R:?}$LOCAL" "$STATE"     # a throw-away instance leaves nothing behind
  fi
}

cmd=${1:-}
[ "$(id -u)" = 0 ] || die "must run as root (chroot, mount)"
mkdir -p "$CACHE"
exec 9>"$CACHE/condor.lock"
flock -w 600 9 || die "another htcondor.sh holds $CACHE/condor.lock"
case "$cmd" in
  start)
    t0=$(date +%s)
    build_rootfs
    configure_rootfs
    mount_all
    start_master
    wait_ready
    write_client_config
    log "instance $INSTANCE ready in $(( $(date +%s) - t0 )) s"
    print_env
    ;;
  stop)
    stop_pool
    [ "$INSTANCE" = main ] || unreserve_port "$PORT"     # a scratch instance's port goes back to the range
    ;;
  env) master_running || die "instance $INSTANCE is not running"; print_env ;;
  status) master_running ;;
  *) echo "usage: $0 start|stop|env|status" >&2; exit 2 ;;
esac
