#!/usr/bin/env bash
# The agent's own CPU with nothing to capture: the agent alone on an empty cgroup, the CPU time
# of all its threads (schedstat) over SECS seconds after a 3-s start, as ns per second and % of
# a core (docs/performance.md, "Results, 2026-12-06 (eighth)").
# usage (root): docs/tools/idle_cpu.sh BIN [SECS]
set -euo pipefail
bin=${1:?usage: idle_cpu.sh BIN [SECS]}; secs=${2:-20}
cg=/sys/fs/cgroup/unified/idle-cpu-$$
[ -d /sys/fs/cgroup/unified ] || cg=/sys/fs/cgroup/idle-cpu-$$
dir=$(mktemp -d)
mkdir "$cg"
cleanup() {
  [ -n "${pid:-}" ] && kill -INT "$pid" 2>/dev/null && { wait "$pid" 2>/dev/null || true; }
  rmdir "$cg" 2>/dev/null || true; rm -rf "$dir"
}
trap cleanup EXIT
"$bin" --dry-run --report-interval 10s --metrics-address 127.0.0.1:0 --control-socket "$dir/c.sock" \
  --cgroup "$cg" > /dev/null 2> "$dir/agent.log" &
pid=$!
sleep 3
cpu() { cat /proc/"$pid"/task/*/schedstat | awk '{s += $1} END {print s}'; }
a=$(cpu); sleep "$secs"; b=$(cpu)
awk -v d=$((b - a)) -v s="$secs" -v bin="$bin" 'BEGIN {printf "%s: %d ns/s, %.3f%% of a core\n", bin, d / s, d / s / 1e7}'
