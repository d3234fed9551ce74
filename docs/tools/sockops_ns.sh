#!/usr/bin/env bash
# sock_ops run time per call in one 6-s connection storm (storm_env.sh), kernel.bpf_stats_enabled
# on for the run: ns per call, calls per request, and wrk's rate.
# usage (root): docs/tools/sockops_ns.sh PROGRAM [both|server] [perf]
#   PROGRAM  a flow-agent binary (walk mode, the storm's namespace walked), or `empty` / `flags`
#            (sockops_floor.py: the measurement's floor, and the agent's callback flags alone),
#            or `state` / `record` (with STEPS=..., as in bulk_ns.sh)
#   both     wrk in the monitored cgroup too (default); server: nginx's side only
#   perf     also `perf record -a -g` for 5 s of the storm, then the top symbols
# STATS=0 leaves kernel.bpf_stats_enabled off (no ns per call then; for profiles without its
# clock reads). TP=TRACEPOINT also attaches an empty tp_btf program there (tp_state_floor.py,
# e.g. TP=inet_sock_set_state) and prints its calls per request and ns per call too.
# KEEPALIVE=1 runs the load on keep-alive connections (storm_env.sh), RI=2s gives the agent 2-s
# windows (default 10s) so that its walks visit the busy sockets while the load runs; the walk's
# ns per visit is printed whenever it ran (docs/tools/walk_floor*.patch, "Results, 2026-12-07
# (tenth)": `KEEPALIVE=1 RI=2s docs/tools/sockops_ns.sh BIN`). AGENT_ARGS="--record-slots 16384"
# gives the agent extra flags.
# See docs/performance.md, "Where the storm's cost goes now" and "A walk mode without sock_ops".
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
prog=${1:?usage: sockops_ns.sh PROGRAM [both|server] [perf]}
side=${2:-both}
. "$here/storm_env.sh"
if [ -x "$prog" ]; then
  # shellcheck disable=SC2086 # AGENT_ARGS: extra agent flags, split on spaces
  "$prog" --dry-run --report-interval "${RI:-10s}" ${AGENT_ARGS:-} --metrics-address 127.0.0.1:0 --control-socket "$dir/c.sock" \
    --cgroup "$cg" --walk-netns "/run/netns/$ns" > /dev/null 2> "$dir/agent.log" &
else
  python3 "$here/sockops_floor.py" "$cg" "$prog" ${STEPS:+"$STEPS"} > /dev/null &
fi
pid=$!
tp_pid=""
if [ -n "${TP:-}" ]; then
  python3 "$here/tp_state_floor.py" "$TP" > /dev/null &
  tp_pid=$!
fi
stats_was=$(sysctl -n kernel.bpf_stats_enabled)
finish() {
  kill -INT "$pid" $tp_pid 2>/dev/null; wait "$pid" $tp_pid 2>/dev/null || true
  sysctl -q -w kernel.bpf_stats_enabled="$stats_was"; storm_cleanup
}
trap finish EXIT
sleep 1.5
. "$here/prog_stats.sh"
sample() { prog_stats "$pid" 13; }
sysctl -q -w kernel.bpf_stats_enabled="${STATS:-1}"
read -r t0 c0 < <(sample)
read -r w0 v0 < <(prog_stats "$pid" 26)
[ -n "$tp_pid" ] && read -r u0 d0 < <(prog_stats "$tp_pid" 26)
client=""; [ "$side" = server ] && client=none
if [ "${3:-}" = perf ]; then
  (sleep 0.5; perf record -q -a -g -o "$dir/perf.data" -- sleep 5 > /dev/null 2>&1) &
  perfpid=$!
fi
rate=$(storm 6 $client | awk '{print $2}')
read -r t1 c1 < <(sample)
read -r w1 v1 < <(prog_stats "$pid" 26)
[ -n "$tp_pid" ] && read -r u1 d1 < <(prog_stats "$tp_pid" 26)
sysctl -q -w kernel.bpf_stats_enabled=0
calls=$((c1 - c0))
reqs=$(awk -v r="$rate" 'BEGIN {printf "%d", r * 6}')
awk -v t=$((t1 - t0)) -v c="$calls" -v r="$rate" -v q="$reqs" -v p="$prog" -v s="$side" \
  'BEGIN {if (c) printf "%s (%s): %.0f ns/call, %d calls, %.2f calls/request, %s req/s\n", p, s, t / c, c, q ? c / q : 0, r;
         else printf "%s (%s): no run figures (kernel.bpf_stats_enabled off), %s req/s\n", p, s, r}'
if [ $((v1 - v0)) -gt 0 ]; then
  awk -v t=$((w1 - w0)) -v c=$((v1 - v0)) 'BEGIN {printf "walk: %.0f ns per visit, %d visits\n", t / c, c}'
fi
if [ -n "$tp_pid" ]; then
  awk -v t=$((u1 - u0)) -v c=$((d1 - d0)) -v q="$reqs" -v tp="$TP" \
    'BEGIN {if (c) printf "tp_btf/%s (empty): %.0f ns/call, %d calls, %.2f calls/request\n", tp, t / c, c, q ? c / q : 0}'
fi
if [ -n "${perfpid:-}" ]; then
  wait "$perfpid" || true
  perf report -q -i "$dir/perf.data" --no-children -g none --sort symbol 2>/dev/null | grep -v "^$" | head -40 || true
  echo "-- the agent's part (its programs, the dispatch, the map helpers):"
  perf report -q -i "$dir/perf.data" --no-children -g none --sort symbol 2>/dev/null | grep -E "bpf_prog_|sock_ops|htab|lookup_nulls|bpf_trace" | head -20 || true
fi
