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

# PORT [reuse]: the sockets holding it. A connection closing (TIME-WAIT, 60 s) holds it too, for a daemon that
# binds without SO_REUSEADDR (slurmrestd); `reuse` leaves those out, for one that sets it (HTCondor's).
port_holders() {
  if [ "${2:-}" = reuse ]; then ss -Htanp exclude time-wait "sport = :$1"; else ss -Htanp "sport = :$1"; fi \
    2>/dev/null | head -3
}

port_free() {         # PORT [WHO] [reuse]: no socket (a connection's own end included) holds it; waits up to 90 s
  local i
  for i in $(seq 360); do
    [ -z "$(port_holders "$1" "${3:-}")" ] && return 0
    [ "$i" = 1 ] && echo "${2:-}${2:+: }port $1 is held by another socket; waiting for it to close:" \
      "$(port_holders "$1" "${3:-}")" >&2
    sleep 0.25
  done
  return 1
}
