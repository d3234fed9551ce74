#!/usr/bin/env bash
# Where the agent's memory goes over a long connection storm (storm_env.sh): its RssAnon,
# RssFile and RssShmem (/proc/PID/status) every 10 s, and at the end the agent's debug lines on
# the room its connection-record tables take (logged at a full walk when it grew). For where a
# growth is, compare /proc/PID/smaps at two moments; for who allocated it, attach heaptrack once
# the agent has dropped its privileges (`heaptrack -p PID`: started under heaptrack, the agent
# refuses to run, as heaptrack's thread keeps capabilities). docs/performance.md, "Results,
# 2026-12-07 (thirteenth)".
# usage (root): docs/tools/soak_mem.sh BIN [SECS]   (default 600)
# AGENT_ARGS gives the agent extra flags (e.g. "--record-slots 0"); RI its window (default 10s,
# as the bench's soak).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
bin=${1:?usage: soak_mem.sh BIN [SECS]}; secs=${2:-600}
. "$here/storm_env.sh"
# shellcheck disable=SC2086 # AGENT_ARGS: extra agent flags, split on spaces
RUST_LOG=info,flow_agent::capture::records=debug "$bin" --dry-run --report-interval "${RI:-10s}" ${AGENT_ARGS:-} \
  --metrics-address 127.0.0.1:0 --control-socket "$dir/c.sock" --cgroup "$cg" --walk-netns "/run/netns/$ns" \
  > /dev/null 2> "$dir/agent.log" &
pid=$!
finish() { kill -INT "$pid" 2>/dev/null; wait "$pid" 2>/dev/null || true; storm_cleanup; }
trap finish EXIT
sleep 2
mem() { awk '/^(RssAnon|RssFile|RssShmem):/ {printf "%s %s ", $1, $2}' /proc/"$pid"/status; }
t0=$(date +%s)
( storm "$secs" > "$dir/rate" ) &
load=$!
while kill -0 "$load" 2>/dev/null; do
  echo "$(($(date +%s) - t0)) s: $(mem)kB"
  sleep 10
done
wait "$load" || true
echo "end: $(mem)kB; $(cat "$dir/rate")"
grep -E "bytes of room" "$dir/agent.log" | sed -E 's/^.*Z +//' || true
