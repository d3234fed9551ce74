#!/usr/bin/env bash
# sock_ops and walk run time per call around one-stream (or N-stream) iperf3 runs through a veth
# pair, the agent (or a floor program) on the cgroup of both iperf3 ends, both namespaces walked:
# per run, the calls of the connections' set-up (the first 1.5 s) and of the rest (the close
# after the copy), each with its mean. Shows what a call costs when the copy has left the
# caches cold (docs/performance.md, "Bulk with one stream: where the eBPF time goes").
# usage (root): docs/tools/bulk_ns.sh PROGRAM [RUNS] [SECS] [STREAMS]
#   PROGRAM  a flow-agent binary, or `empty` / `flags` / `state` / `record` (sockops_floor.py)
# STEPS=cookie,flows,sockets,delete  with `record`: the agent's kinds of work added to the floor,
#            each timed entered cold (sockops_floor.py, record_floor); `spread` (SPREAD=60 GAP=100)
#            lays the floor's paths out over that many blocks of code that many instructions apart
# AGENT_ARGS="--record-slots 16384"  extra agent flags
# AGENT_OUT=FILE  the agent's reports (stdout) there
# AFTER=CMD  run `CMD AGENT_PID` after each copy (docs/tools/op_time.py)
# STOP=1     stop the agent (SIGSTOP) once its programs are attached, so that nothing of the
#            daemon runs while the copies do (no walk figures then)
# RI=2s      the agent's report interval (the walk runs at each window end; default 2s, as in
#            the bench's bpf_stats runs); COUNT=1 also prints the callbacks by op
#            (sockops_ops.py) after each run.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
prog=${1:?usage: bulk_ns.sh PROGRAM [RUNS] [SECS] [STREAMS]}
runs=${2:-3}; secs=${3:-5}; streams=${4:-1}
a=bulk-a-$$; b=bulk-b-$$
cg=/sys/fs/cgroup/unified/bulk-$$
[ -d /sys/fs/cgroup/unified ] || cg=/sys/fs/cgroup/bulk-$$
dir=$(mktemp -d)
stats_was=$(sysctl -n kernel.bpf_stats_enabled)
cleanup() {
  [ -n "${cpid:-}" ] && kill "$cpid" 2>/dev/null
  if [ -n "${pid:-}" ]; then
    kill -CONT "$pid" 2>/dev/null  # if STOP=1 stopped it
    kill -INT "$pid" 2>/dev/null && { wait "$pid" 2>/dev/null || true; }
  fi
  [ -n "${srv:-}" ] && kill "$srv" 2>/dev/null
  # iperf3 itself is a child of $srv: end every process of the cgroup.
  [ -e "$cg/cgroup.kill" ] && echo 1 > "$cg/cgroup.kill" 2>/dev/null || true
  sleep 0.3; rmdir "$cg" 2>/dev/null || true
  ip netns del "$a" 2>/dev/null || true; ip netns del "$b" 2>/dev/null || true
  sysctl -q -w kernel.bpf_stats_enabled="$stats_was"; rm -rf "$dir"
}
trap cleanup EXIT
ip netns add "$a"; ip netns add "$b"
ip link add "va$$" type veth peer name "vb$$"
ip link set "va$$" netns "$a"; ip link set "vb$$" netns "$b"
ip -n "$a" addr add 10.77.0.1/24 dev "va$$"; ip -n "$b" addr add 10.77.0.2/24 dev "vb$$"
for n in "$a" "$b"; do ip -n "$n" link set lo up; done
ip -n "$a" link set "va$$" up; ip -n "$b" link set "vb$$" up
mkdir "$cg"
in_cg() { bash -c "echo \$\$ > $cg/cgroup.procs; exec ip netns exec $*"; }
in_cg "$b" iperf3 -s -B 10.77.0.2 -p 5201 > /dev/null 2>&1 &
srv=$!
if [ -x "$prog" ]; then
  # shellcheck disable=SC2086 # AGENT_ARGS: extra agent flags, split on spaces
  "$prog" --dry-run --report-interval "${RI:-2s}" ${AGENT_ARGS:-} --metrics-address 127.0.0.1:0 --control-socket "$dir/c.sock" \
    --cgroup "$cg" --walk-netns "/run/netns/$a" --walk-netns "/run/netns/$b" > "${AGENT_OUT:-/dev/null}" 2> "$dir/agent.log" &
else
  python3 "$here/sockops_floor.py" "$cg" "$prog" ${STEPS:+"$STEPS"} > /dev/null &
fi
pid=$!
sleep 2
if [ -n "${STOP:-}" ] && [ -x "$prog" ]; then kill -STOP "$pid"; fi
if [ -n "${COUNT:-}" ]; then python3 "$here/sockops_ops.py" "$cg" > /dev/null & cpid=$!; sleep 0.5; fi
. "$here/prog_stats.sh"
sample() { prog_stats "$pid" "$1"; }
mean() { awk -v t="$1" -v c="$2" 'BEGIN {printf "%.0f ns x %d", c ? t / c : 0, c}'; }
sysctl -q -w kernel.bpf_stats_enabled=1
for i in $(seq "$runs"); do
  read -r t0 c0 < <(sample 13); read -r w0 v0 < <(sample 26)
  in_cg "$a" iperf3 -c 10.77.0.2 -p 5201 -t "$secs" -P "$streams" -J > "$dir/out.json" &
  client=$!
  sleep 1.5; read -r tm cm < <(sample 13)
  wait "$client"; sleep 2.5
  read -r t1 c1 < <(sample 13); read -r w1 v1 < <(sample 26)
  gbit=$(python3 -c "import json; print(round(json.load(open('$dir/out.json'))['end']['sum_received']['bits_per_second'] / 1e9, 2))")
  echo "run $i: sock_ops $(mean $((t1 - t0)) $((c1 - c0))) (set-up $(mean $((tm - t0)) $((cm - c0))), rest $(mean $((t1 - tm)) $((c1 - cm)))), walk $(mean $((w1 - w0)) $((v1 - v0))), $gbit Gbit/s"
  if [ -n "${cpid:-}" ]; then kill -USR1 "$cpid"; sleep 0.2; fi
  if [ -n "${AFTER:-}" ]; then $AFTER "$pid"; fi
done
