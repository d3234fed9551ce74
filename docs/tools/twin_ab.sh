#!/usr/bin/env bash
# Twin runs by hand: two identical nginx + wrk copies (a namespace, a cgroup and an nginx each, as
# `cargo xtask bench` sets them up) loaded at the same time, with VARIANT attached to one copy,
# the first and the second in turn. Prints each run's throughput ratio (the copy with VARIANT
# over the other), then their mean and two standard errors. Needs root, nginx-light, wrk.
#   VARIANT  none     nothing attached: the twin runs' noise floor
#            empty    a sock_ops program that returns 1 (docs/tools/sockops_floor.py)
#            flags    one that only sets RTO|RETRANS|STATE at establishment
#            agent    target/release/flow-agent (walk mode), or $FLOW_AGENT
# Each copy's wrk runs one thread per two CPUs (at least one), as the bench's twins do.
# usage: [RUNS=10] [SECS=5] docs/tools/twin_ab.sh keepalive|storm [VARIANT]
# See docs/performance.md, "Twin runs" and "What remains".
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
mode=${1:?usage: twin_ab.sh keepalive|storm [none|empty|flags|agent]}
variant=${2:-none}
agent=${FLOW_AGENT:-$here/../../target/release/flow-agent}
d=$(mktemp -d)
cgroot=/sys/fs/cgroup/unified
[ -d "$cgroot" ] || cgroot=/sys/fs/cgroup
pids=()
. "$here/nginx_copy.sh"
setup() {
  local n=$1 ns=twin$1-$$ cg=$cgroot/twin$1-$$
  nginx_copy "$ns" "$cg" "$d/$n"
  pids+=("$nginx_pid")
}
cleanup() {
  kill "${pids[@]}" 2>/dev/null || true
  for n in a b; do
    echo 1 > "$cgroot/twin$n-$$/cgroup.kill" 2>/dev/null || true
    sleep 0.3
    rmdir "$cgroot/twin$n-$$" 2>/dev/null || true
    ip netns del "twin$n-$$" 2>/dev/null || true
  done
  rm -rf "$d"
}
trap cleanup EXIT
setup a
setup b
sleep 1
header=""
[ "$mode" = storm ] && header="-H 'Connection: close'"
load() {
  bash -c "echo \$\$ > $cgroot/twin$1-$$/cgroup.procs; exec ip netns exec twin$1-$$ wrk -t$(( $(nproc) / 2 > 1 ? $(nproc) / 2 : 1 )) -c64 -d${SECS:-5}s $header http://127.0.0.1:8080/" |
    awk '/Requests\/sec/ {print $2}'
}
attach() {
  case "$variant" in
    none) return ;;
    agent)
      "$agent" --dry-run --report-interval 10s --metrics-address 127.0.0.1:0 --control-socket "$d/c.sock" \
        --cgroup "$cgroot/twin$1-$$" --walk-netns "/run/netns/twin$1-$$" > /dev/null 2> "$d/agent.log" &
      ap=$!
      sleep 2 ;;
    *)
      python3 "$here/sockops_floor.py" "$cgroot/twin$1-$$" "$variant" > /dev/null &
      ap=$!
      sleep 0.7 ;;
  esac
}
for i in $(seq "${RUNS:-10}"); do
  if [ $((i % 2)) = 1 ]; then m=a o=b; else m=b o=a; fi
  ap=""
  attach "$m"
  load "$m" > "$d/rm" &
  p=$!
  load "$o" > "$d/ro"
  wait "$p"
  if [ -n "$ap" ]; then kill -INT "$ap"; wait "$ap" 2>/dev/null || true; fi
  awk -v a="$(cat "$d/rm")" -v b="$(cat "$d/ro")" -v v="$variant" -v c="$m" \
    'BEGIN {printf "%s on copy %s: %.0f req/s, other %.0f req/s, ratio %.4f\n", v, c, a, b, a / b}'
done | tee "$d/runs"
awk '{r = $NF; s += r; ss += r * r; n++}
     END {m = s / n; sd = n > 1 ? sqrt((ss - n * m * m) / (n - 1)) : 0;
          printf "mean ratio %.4f, cost %.2f%% ± %.2f (two standard errors, %d runs)\n", m, 100 * (1 - m), 200 * sd / sqrt(n), n}' "$d/runs"
