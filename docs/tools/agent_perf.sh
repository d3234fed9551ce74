#!/usr/bin/env bash
# A profile of the agent's own process (user and kernel side of its threads) during a 20-s
# connection storm at the maximum rate, both ends in the agent's cgroup, 10-s windows:
# `perf record -g -p <agent>` (docs/performance.md, "Results, 2026-12-07 (fourteenth)").
# Prints wrk's Requests/sec and the agent's /proc/PID/schedstat (ns on CPU since its start).
# usage (root): docs/tools/agent_perf.sh FLOW_AGENT_BINARY [OUT]   (OUT: /tmp/agent.perf)
# then: perf report -i OUT --no-children --sort dso,sym --stdio
set -euo pipefail
bin=${1:?usage: agent_perf.sh FLOW_AGENT_BINARY [OUT]}
out=${2:-/tmp/agent.perf}
. "$(dirname "$0")/storm_env.sh"
"$bin" --dry-run --report-interval 10s --metrics-address 127.0.0.1:0 --control-socket "$dir/c.sock" \
  --cgroup "$cg" --walk-netns "/run/netns/$ns" > /dev/null 2> "$dir/agent.log" &
apid=$!
sleep 3
perf record -F 4999 -g -p "$apid" -o "$out" -- sleep 20 2> /dev/null &
ppid=$!
storm 20
wait "$ppid" || true
cat "/proc/$apid/schedstat"
kill -INT "$apid"; wait "$apid" || true
