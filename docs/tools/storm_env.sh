# Sourced by the storm tools in this directory: a network namespace with loopback, a cgroup,
# nginx (one worker, a tiny response) in both, and `storm SECS [client-cgroup]`: wrk -c64 with
# "Connection: close" on loopback, as `cargo xtask bench storm` runs it, printing wrk's
# Requests/sec line; with KEEPALIVE=1, the same load on keep-alive connections (the bench's
# keep-alive workload). With no client cgroup, wrk runs in the storm's cgroup (both ends monitored);
# with "none", outside it (the server side only). wrk runs WRK_THREADS threads (default: one per
# CPU, as the bench; 1 for the storm of the figures before 2026-12-05 afternoon). Cleans up at
# exit. Needs root, nginx-light, wrk.
set -euo pipefail
dir=$(mktemp -d)
ns=storm-$$
cg=/sys/fs/cgroup/unified/storm-$$
[ -d /sys/fs/cgroup/unified ] || cg=/sys/fs/cgroup/storm-$$
storm_cleanup() {
  [ -n "${nginx:-}" ] && kill "$nginx" 2>/dev/null || true
  [ -e "$cg/cgroup.kill" ] && echo 1 > "$cg/cgroup.kill" 2>/dev/null || true
  sleep 0.5; rmdir "$cg" 2>/dev/null || true
  ip netns del "$ns" 2>/dev/null || true
  rm -rf "$dir"
}
trap storm_cleanup EXIT
. "$(dirname "${BASH_SOURCE[0]}")/nginx_copy.sh"
nginx_copy "$ns" "$cg" "$dir"
nginx=$nginx_pid
sleep 1
storm() {
  local secs=$1 join="echo \$\$ > $cg/cgroup.procs;"
  [ "${2:-}" = none ] && join=""
  local close=(-H 'Connection: close')
  [ -n "${KEEPALIVE:-}" ] && close=()
  bash -c "$join exec ip netns exec $ns wrk -t${WRK_THREADS:-$(nproc)} -c64 -d${secs}s ${close[*]@Q} http://127.0.0.1:8080/" |
    grep -E "Requests/sec"
}
