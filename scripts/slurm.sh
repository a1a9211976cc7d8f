#!/usr/bin/env bash
# A one-node Slurm cluster for the tests: Debian's slurm-wlm (slurmctld + slurmd on this host), munge, and
# slurmrestd with JWT authentication on a loopback port.
#
#   scripts/slurm.sh start    install what is missing, write the config, start the daemons, print the test env
#   scripts/slurm.sh stop     stop every slurmrestd, slurmd, slurmctld (munged is left to whoever else uses it)
#   scripts/slurm.sh stop-rest  stop the slurmrestd of SLURM_REST_PORT alone (the tests' outage; `start` starts
#                             it again)
#   scripts/slurm.sh stop-controller  stop slurmctld alone (jobs go on under slurmd; `start` starts it again)
#   scripts/slurm.sh env      print the env of the running cluster
#   scripts/slurm.sh status   exit 0 when slurmctld, slurmd and slurmrestd run
#   scripts/slurm.sh images IMAGE...  copy images from root's Podman store (scripts/podman.sh builds them) into the
#                             job user's own rootless store, for the slurm backend's `container` setting; prints
#                             that store's settings. Idempotent: an image already there (same id) is not copied
#
# Environment:
#   SLURM_CACHE       where the config, state, logs and keys live (default /var/cache/caesar-rest/slurm)
#   SLURM_REST_PORT   slurmrestd's loopback port (default 6820); slurmctld and slurmd use 6817 and 6818. `start`
#                     with another port runs one more slurmrestd, on that port, in front of the same cluster
#
# What it sets up:
#   - $SLURM_CACHE/etc/slurm.conf: one node (this host, its CPUs and memory from `slurmd -C`), partition `debug`
#   - $SLURM_CACHE/jwt_hs256.key: the HS256 key slurmctld checks tokens with (AuthAltTypes=auth/jwt)
#   - the users `slurmrest` (slurmrestd refuses to run as root) and `caesarjob` (uid 2100, the unprivileged
#     account the tests' jobs run as), with an ACL entry letting caesarjob traverse to the venv's Python
#   - $SLURM_CACHE/shared (mode 1777): a directory for test roots, which caesarjob can reach
#   - with `images`: $SLURM_CACHE/podman, caesarjob's rootless Podman (overlay storage, its runroot, a
#     containers.conf): what a node provides for jobs that run an image
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
D=${SLURM_CACHE:-/var/cache/caesar-rest/slurm}
PORT=${SLURM_REST_PORT:-6820}
API_VERSION=v0.0.38
H=$(hostname -s)
JOB_USER=caesarjob
JOB_UID=2100
REST_USER=slurmrest
CONF=$D/etc/slurm.conf
REST_PID=$D/run/slurmrestd.$PORT.pid
export SLURM_CONF=$CONF
VENV_PY=${SLURM_VENV_PYTHON:-$REPO/.venv/bin/python}

# shellcheck source=scripts/ports.sh
. "$REPO/scripts/ports.sh"
log() { echo "slurm: $*" >&2; }
die() { log "$*"; exit 1; }
listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
alive() {       # $1: pid file, $2: the command name its process must have (a zombie, not yet reaped, is dead)
  local pid stat; pid=$(cat "$1" 2>/dev/null || true)
  [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$2" ] || return 1
  stat=$(cat "/proc/$pid/stat" 2>/dev/null) || return 1
  stat=${stat##*) }; [ "${stat%% *}" != Z ]
}
log_tail() { tail -n 15 "$1" 2>/dev/null | sed 's/^/  | /' >&2 || true; }

install_packages() {
  local missing=()
  command -v slurmctld >/dev/null || missing+=(slurm-wlm)
  command -v slurmrestd >/dev/null || missing+=(slurmrestd)
  [ -e /usr/lib/x86_64-linux-gnu/slurm-wlm/auth_jwt.so ] || [ -n "$(find /usr/lib -name auth_jwt.so 2>/dev/null)" ] \
    || missing+=(slurm-wlm-jwt-plugin)
  command -v munged >/dev/null || missing+=(munge)
  command -v setfacl >/dev/null || missing+=(acl)   # make_users grants the job user traversal with an ACL entry
  command -v ss >/dev/null || missing+=(iproute2)   # port_free (scripts/ports.sh)
  [ ${#missing[@]} -eq 0 ] && return 0
  log "installing ${missing[*]}"
  # grep reads to the end (no -q): under pipefail, apt-cache killed by SIGPIPE would fail the check.
  apt-cache policy slurm-wlm 2>/dev/null | grep 'Candidate: 22\.05' >/dev/null \
    || log "this Debian's slurm-wlm is not 22.05; REST API $API_VERSION may not be served"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null 2>&1 || {
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null; }
}

make_users() {
  id -u "$REST_USER" >/dev/null 2>&1 || useradd -r -M -d /nonexistent -s /usr/sbin/nologin "$REST_USER"
  id -u "$JOB_USER" >/dev/null 2>&1 || useradd -M -d /nonexistent -s /usr/sbin/nologin -u "$JOB_UID" "$JOB_USER"
  # The apps' console scripts run the venv's Python, which imports the apps from the repository (an editable
  # install); the job user may traverse (not list) the directories down to them, the repository itself (a clone
  # in a mode-700 directory) included, and nothing else of theirs.
  if [ -x "$VENV_PY" ]; then
    local dir
    for dir in "$REPO/scripts" "$VENV_PY" "$(readlink -f "$VENV_PY")"; do
      dir=$(dirname "$dir")
      while [ "$dir" != / ]; do
        [ "$(( $(stat -c '%a' "$dir") % 2 ))" = 1 ] || setfacl -m "u:$JOB_USER:x" "$dir"
        dir=$(dirname "$dir")
      done
    done
  fi
}

write_config() {
  mkdir -p "$D"/{etc,state,spool,logs,run,shared}
  chmod 1777 "$D/shared"
  chmod 755 "$D" "$D/etc"
  chown slurm:slurm "$D/state" "$D/logs" "$D/run"
  if [ ! -s "$D/jwt_hs256.key" ]; then
    dd if=/dev/urandom of="$D/jwt_hs256.key.tmp" bs=32 count=1 status=none
    mv "$D/jwt_hs256.key.tmp" "$D/jwt_hs256.key"
  fi
  chown slurm:slurm "$D/jwt_hs256.key"; chmod 600 "$D/jwt_hs256.key"
  local node proctrack=proctrack/cgroup
  # The daemons talk over loopback: the host name need not resolve.
  node="$(slurmd -C | head -1 | sed 's/ UpTime=.*//') NodeAddr=127.0.0.1"
  [ -w /sys/fs/cgroup ] || [ -d /sys/fs/cgroup/freezer ] || proctrack=proctrack/linuxproc
  # A job's memory is its limit where the memory controller is there (v1 here, or v2's): past it the kernel's
  # OOM killer ends the job, which Slurm reports as OUT_OF_MEMORY.
  local taskplugin=task/none ram=no
  if [ "$proctrack" = proctrack/cgroup ] && { [ -d /sys/fs/cgroup/memory ] \
      || grep -qw memory /sys/fs/cgroup/cgroup.controllers 2>/dev/null; }; then
    taskplugin=task/cgroup ram=yes
  fi
  cat >"$CONF.tmp" <<EOF
# caesar-rest test cluster (written by scripts/slurm.sh)
ClusterName=caesar
SlurmctldHost=$H(127.0.0.1)
SlurmctldPort=6817
SlurmdPort=6818
SlurmUser=slurm
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthAltTypes=auth/jwt
AuthAltParameters=jwt_key=$D/jwt_hs256.key
StateSaveLocation=$D/state
SlurmdSpoolDir=$D/spool
SlurmctldPidFile=$D/run/slurmctld.pid
SlurmdPidFile=$D/run/slurmd.pid
SlurmctldLogFile=$D/logs/slurmctld.log
SlurmdLogFile=$D/logs/slurmd.log
ProctrackType=$proctrack
TaskPlugin=$taskplugin
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=512
MailProg=/bin/true
MpiDefault=none
ReturnToService=2
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
# Finished jobs stay known this long (there is no accounting database to ask afterwards).
MinJobAge=300
KillWait=5
OverTimeLimit=0
SchedulerParameters=sched_interval=2
$node
PartitionName=debug Nodes=$H Default=YES MaxTime=INFINITE State=UP
EOF
  cat >"$D/etc/cgroup.conf" <<EOF
CgroupPlugin=autodetect
ConstrainCores=no
ConstrainRAMSpace=$ram
ConstrainSwapSpace=$ram
ConstrainDevices=no
EOF
  if ! cmp -s "$CONF.tmp" "$CONF"; then mv "$CONF.tmp" "$CONF"; CHANGED=1; else rm -f "$CONF.tmp"; fi
}

reserve_ports_of_cluster() { reserve_ports 6817 6818 6820 "$PORT"; }

start_daemons() {
  # Debian's package makes the key when it is installed; a machine that lost it (or an image built without
  # running postinst) gets one here, before munged starts.
  if [ ! -s /etc/munge/munge.key ]; then
    install -d -o munge -g munge -m 0700 /etc/munge
    dd if=/dev/urandom of=/etc/munge/munge.key bs=128 count=1 status=none
    chown munge:munge /etc/munge/munge.key; chmod 600 /etc/munge/munge.key
  fi
  if ! pgrep -u munge -x munged >/dev/null; then
    install -d -o munge -g munge -m 0755 /run/munge
    runuser -u munge -- /usr/sbin/munged 9>&-
  fi
  if [ -n "${CHANGED:-}" ] && alive "$D/run/slurmctld.pid" slurmctld; then stop_daemons; fi
  alive "$D/run/slurmctld.pid" slurmctld || slurmctld -f "$CONF" 9>&-
  alive "$D/run/slurmd.pid" slurmd || slurmd -f "$CONF" 9>&-
  alive "$REST_PID" slurmrestd || start_rest
}

REST_ARGS=(-f "$CONF" -a rest_auth/jwt -s "openapi/$API_VERSION" "127.0.0.1:$PORT")
start_rest() {
  local pid
  # Ours without its pid file (a start killed between the two): taken back, not refused as a stranger.
  pid=$(pgrep -u "$REST_USER" -x -f "slurmrestd ${REST_ARGS[*]}" | head -1 || true)
  if [ -n "$pid" ]; then echo "$pid" >"$REST_PID"; return 0; fi
  listening "$PORT" && die "port $PORT is taken by another process than our slurmrestd"
  port_free "$PORT" slurm || die "port $PORT stays held by another socket: $(port_holders "$PORT")"
  # SLURM_JWT=daemon: slurmrestd takes each request's own token (without it every request is 401).
  # Without slurmdbd, only the plugin of the one API version may be loaded.
  echo "--- $(date -Is) starting slurmrestd" >>"$D/logs/slurmrestd.$PORT.log"
  SLURM_JWT=daemon setsid setpriv --reuid="$REST_USER" --regid="$REST_USER" --init-groups \
    slurmrestd "${REST_ARGS[@]}" </dev/null >>"$D/logs/slurmrestd.$PORT.log" 2>&1 9>&- &
  echo $! >"$REST_PID"
}

rest_listens() {   # waits up to 30 s for slurmrestd to listen; fails at once when it exits
  local i
  for i in $(seq 120); do
    listening "$PORT" && return 0
    alive "$REST_PID" slurmrestd || return 1
    sleep 0.25
  done
  return 1
}

wait_ready() {
  local i state=""
  for i in $(seq 240); do
    state=$(timeout 5 sinfo -h -p debug -o %T 2>/dev/null || true)
    if [ "$state" = idle ] || [ "$state" = mixed ] || [ "$state" = allocated ]; then break; fi
    sleep 0.25
  done
  case "$state" in idle|mixed|allocated) ;; *)
    log_tail "$D/logs/slurmctld.log"; log_tail "$D/logs/slurmd.log"
    die "node not idle after 60 s (state '$state'); logs in $D/logs" ;;
  esac
  rest_listens && return 0
  # Not listening: whatever the pid file said (a process left over from a killed run, or one stuck), it is
  # stopped and started once more before giving up.
  log "slurmrestd does not listen on 127.0.0.1:$PORT; starting it again. The end of its log:"
  log_tail "$D/logs/slurmrestd.$PORT.log"
  stop_one "$REST_PID" slurmrestd
  start_rest
  rest_listens && return 0
  log_tail "$D/logs/slurmrestd.$PORT.log"
  alive "$REST_PID" slurmrestd || die "slurmrestd exited without listening on 127.0.0.1:$PORT (its log above)"
  die "slurmrestd does not listen on 127.0.0.1:$PORT after 30 s, twice; see $D/logs/slurmrestd.$PORT.log"
}

print_env() {
  echo "SLURM_CONF=$CONF"
  echo "CAESAR_TEST_SLURM_URL=http://127.0.0.1:$PORT"
  echo "CAESAR_TEST_SLURM_API_VERSION=$API_VERSION"
  echo "CAESAR_TEST_SLURM_JWT_KEY=$D/jwt_hs256.key"
  echo "CAESAR_TEST_SLURM_USER=$JOB_USER"
  echo "CAESAR_TEST_SLURM_UID=$JOB_UID"
  echo "CAESAR_TEST_SLURM_PARTITION=debug"
  echo "CAESAR_TEST_SLURM_SHARED=$D/shared"
}

PODMAN=$D/podman
as_job_podman() {   # podman as the job user, on its store: the same --root and --runroot as its jobs use
  runuser -u "$JOB_USER" -- env HOME="$PODMAN/home" XDG_RUNTIME_DIR="$PODMAN/run" \
    CONTAINERS_CONF="$PODMAN/containers.conf" podman --root "$PODMAN/storage" --runroot "$PODMAN/run" \
    --storage-driver overlay "$@"
}

load_images() {
  command -v podman >/dev/null || die "podman is missing: scripts/podman.sh installs it and builds the images"
  install -d -m 755 "$PODMAN"
  install -d -o "$JOB_USER" -g "$JOB_USER" -m 700 "$PODMAN/home" "$PODMAN/run"
  install -d -o "$JOB_USER" -g "$JOB_USER" -m 755 "$PODMAN/storage"
  # Sandboxes here run cgroup v1 without systemd (as scripts/podman.sh says); no journald either.
  cat >"$PODMAN/containers.conf" <<'EOF'
# Written by scripts/slurm.sh: the job user's rootless Podman on the node
[containers]
log_driver = "k8s-file"
init_path = "/usr/bin/catatonit"

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
EOF
  chmod 644 "$PODMAN/containers.conf"
  local image want have root_conf=${CAESAR_PODMAN_DIR:-/run/caesar-podman}/containers.conf
  [ -e "$root_conf" ] && export CONTAINERS_CONF=$root_conf
  for image in "$@"; do
    want=$(podman image inspect --format '{{.Id}}' "$image" 2>/dev/null) \
      || die "image $image is not in root's Podman store (scripts/podman.sh builds it)"
    have=$(as_job_podman image inspect --format '{{.Id}}' "$image" 2>/dev/null || true)
    [ "$want" = "$have" ] && continue
    log "copying $image into $JOB_USER's Podman store"
    podman save "$image" | as_job_podman load >/dev/null
  done
  echo "CAESAR_TEST_SLURM_PODMAN=$(command -v podman)"
  echo "CAESAR_TEST_SLURM_PODMAN_STORAGE=$PODMAN/storage"
  echo "CAESAR_TEST_SLURM_PODMAN_RUNROOT=$PODMAN/run"
  echo "CAESAR_TEST_SLURM_PODMAN_CONF=$PODMAN/containers.conf"
}

stop_one() {    # $1: pid file, $2: command name
  local pid i; pid=$(cat "$1" 2>/dev/null || true)
  if alive "$1" "$2"; then
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 80); do [ -d "/proc/$pid" ] || break; sleep 0.25; done
    [ -d "/proc/$pid" ] && { kill -KILL "$pid" 2>/dev/null || true; }
  fi
  rm -f "$1"
}

stop_daemons() {
  local rest
  for rest in "$D"/run/slurmrestd.*.pid; do [ -e "$rest" ] && stop_one "$rest" slurmrestd; done
  stop_one "$D/run/slurmd.pid" slurmd
  stop_one "$D/run/slurmctld.pid" slurmctld
}

running() {
  alive "$D/run/slurmctld.pid" slurmctld && alive "$D/run/slurmd.pid" slurmd && alive "$REST_PID" slurmrestd
}

cmd=${1:-}
[ "$(id -u)" = 0 ] || die "must run as root (users, daemons)"
mkdir -p "$D"
exec 9>"$D/slurm.lock"
flock -w 300 9 || die "another slurm.sh holds $D/slurm.lock"
case "$cmd" in
  start)
    t0=$(date +%s)
    install_packages
    make_users
    write_config
    reserve_ports_of_cluster
    start_daemons
    wait_ready
    log "cluster ready in $(( $(date +%s) - t0 )) s"
    print_env
    ;;
  stop) stop_daemons ;;
  stop-rest)
    stop_one "$REST_PID" slurmrestd
    case "$PORT" in 6817|6818|6820) ;; *) unreserve_port "$PORT" ;; esac   # another slurmrestd's port only
    ;;
  stop-controller) stop_one "$D/run/slurmctld.pid" slurmctld ;;
  env) running || die "the cluster is not running"; print_env ;;
  status) running ;;
  images) shift; load_images "$@" ;;
  *) echo "usage: $0 start|stop|stop-rest|stop-controller|env|status|images IMAGE..." >&2; exit 2 ;;
esac
