#!/usr/bin/env bash
# What a sock_ops program costs a connection storm before it does any work: alternating 6-s storms
# (nginx + wrk -c64 "Connection: close" on loopback, as `cargo xtask bench storm`) with
#   off    no program,
#   empty  a sock_ops program that returns 1,
#   flags  one that only sets the agent's callback flags (RTO|RETRANS|STATE) at establishment,
#   agent  target/release/flow-agent (walk mode),
# each variant attached to the storm's cgroup, order reversed every other round.
# usage (root, nginx-light and wrk installed): PAIRS=6 docs/tools/sockops_floor_ab.sh off empty flags agent
# Prints one "variant Requests/sec: N" line per run. See docs/performance.md, "Where the storm's cost goes".
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
agent=${FLOW_AGENT:-$here/../../target/release/flow-agent}
. "$here/storm_env.sh"
run() {
  local v=$1 pid
  if [ "$v" = off ]; then echo "off $(storm 6)"; return; fi
  if [ "$v" = agent ]; then
    "$agent" --dry-run --report-interval 10s --metrics-address 127.0.0.1:0 --control-socket "$dir/c.sock" \
      --cgroup "$cg" --walk-netns "/run/netns/$ns" > /dev/null 2> "$dir/agent.log" &
  else
    python3 "$here/sockops_floor.py" "$cg" "$v" > /dev/null &
  fi
  pid=$!
  sleep 1.5
  echo "$v $(storm 6)"
  kill -INT "$pid"; wait "$pid" || true
}
for i in $(seq "${PAIRS:-4}"); do
  if [ $((i % 2)) = 1 ]; then list="$*"; else list=$(printf '%s\n' "$@" | tac | tr '\n' ' '); fi
  for v in $list; do run "$v"; done
done
