#!/usr/bin/env bash
# sock_ops and walk run time per call in one 6-s keep-alive run (wrk -c64, keep-alive, on the
# storm's nginx: storm_env.sh), the agent with 2-s windows (as the bench's bpf_stats runs), so
# that its walks visit the 128 busy sockets while the load runs. Prints ns per call and calls of
# both programs, and wrk's rate. Used with the walk floors (docs/tools/walk_floor*.patch, see
# docs/performance.md, "Results, 2026-12-07 (tenth)").
# usage (root): docs/tools/keepalive_ns.sh FLOW_AGENT_BINARY
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
prog=${1:?usage: keepalive_ns.sh FLOW_AGENT_BINARY}
. "$here/storm_env.sh"
"$prog" --dry-run --report-interval 2s --metrics-address 127.0.0.1:0 --control-socket "$dir/c.sock" \
  --cgroup "$cg" --walk-netns "/run/netns/$ns" > /dev/null 2> "$dir/agent.log" &
pid=$!
stats_was=$(sysctl -n kernel.bpf_stats_enabled)
finish() {
  kill -INT "$pid" 2>/dev/null; wait "$pid" 2>/dev/null || true
  sysctl -q -w kernel.bpf_stats_enabled="$stats_was"; storm_cleanup
}
trap finish EXIT
sleep 1.5
. "$here/prog_stats.sh"
sysctl -q -w kernel.bpf_stats_enabled=1
read -r t0 c0 < <(prog_stats "$pid" 13); read -r w0 v0 < <(prog_stats "$pid" 26)
rate=$(bash -c "echo \$\$ > $cg/cgroup.procs; exec ip netns exec $ns wrk -t$(nproc) -c64 -d6s http://127.0.0.1:8080/" |
  awk '/Requests\/sec/ {print $2}')
read -r t1 c1 < <(prog_stats "$pid" 13); read -r w1 v1 < <(prog_stats "$pid" 26)
sysctl -q -w kernel.bpf_stats_enabled=0
awk -v t=$((t1 - t0)) -v c=$((c1 - c0)) -v wt=$((w1 - w0)) -v wc=$((v1 - v0)) -v r="$rate" -v p="$prog" \
  'BEGIN {printf "%s: sock_ops %.0f ns x %d, walk %.0f ns x %d, %s req/s\n", p, c ? t / c : 0, c, wc ? wt / wc : 0, wc, r}'
