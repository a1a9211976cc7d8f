# Sourced by the scripts that start daemons on fixed ports (slurm.sh, htcondor.sh): those ports are taken out of
# the kernel's range for outgoing connections (net.ipv4.ip_local_reserved_ports). With that range wide (this
# machine's is 1024-65535, set outside the project) a client socket may otherwise be given a daemon's port as its
# own, and the daemon's bind then fails ("Address already in use"; seen in CI for slurmrestd's 6820).
# Written here, not taken from a library: it is one kernel file, read and written with a few lines of shell.
RESERVED_PORTS_FILE=/proc/sys/net/ipv4/ip_local_reserved_ports

reserve_ports() {     # PORT...: added to the reserved list when missing; a failure to write is only logged
  local have port want=() list
  have=",$(cat "$RESERVED_PORTS_FILE" 2>/dev/null || true),"
  for port in "$@"; do
    case "$have" in *",$port,"*) ;; *) want+=("$port") ;; esac
  done
  [ ${#want[@]} -eq 0 ] && return 0
  list=$(IFS=,; echo "${want[*]}")
  have=${have#,}; have=${have%,}
  echo "${have:+$have,}$list" >"$RESERVED_PORTS_FILE" 2>/dev/null \
    || echo "could not reserve ports $list ($RESERVED_PORTS_FILE is not writable)" >&2
}

unreserve_port() {    # PORT: removed from the reserved list, splitting the range that holds it
  local kept
  kept=$(tr ',' '\n' <"$RESERVED_PORTS_FILE" | awk -v drop="$1" -F- 'NF {
      lo = $1; hi = (NF > 1) ? $2 : $1
      if (drop < lo || drop > hi) { print $0; next }
      if (lo < drop) print (lo == drop - 1) ? lo : lo "-" (drop - 1)
      if (drop < hi) print (drop + 1 == hi) ? hi : (drop + 1) "-" hi
    }' | paste -sd,)
  echo "$kept" >"$RESERVED_PORTS_FILE" 2>/dev/null || true
}

# PORT: the open connections whose own end is that port (a client given it by the kernel). Closing ones
# (TIME-WAIT, FIN-WAIT) are left out: those of the daemon's own earlier run do not stop it binding again (it and
# its connections set SO_REUSEADDR, slurmrestd and HTCondor alike), and waiting for them made a restart of
# slurmrestd take a minute, longer than a job's poll may be unanswered (seen in a fresh-clone run).
port_holders() {
  ss -Htanp state established state syn-sent state syn-recv state close-wait "sport = :$1" 2>/dev/null | head -3
}

port_free() {         # PORT [WHO]: no open connection holds it as its own end; waits up to 90 s for one to go
  local i
  for i in $(seq 360); do
    [ -z "$(port_holders "$1")" ] && return 0
    [ "$i" = 1 ] && echo "${2:-}${2:+: }port $1 is held by another socket; waiting for it to close:" \
      "$(port_holders "$1")" >&2
    sleep 0.25
  done
  return 1
}
