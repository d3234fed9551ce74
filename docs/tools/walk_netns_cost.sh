#!/usr/bin/env bash
# What walking a network namespace costs the agent, per namespace and walk, when the namespaces
# share the host's TCP hash table and when they have tables of their own:
#   docs/tools/walk_netns_cost.sh N CHILD_TABLE [AGENT]
# makes N empty namespaces with net.ipv4.tcp_child_ehash_entries=CHILD_TABLE (0: the host's shared
# table, the default), runs the agent (default target/release/flow-agent) with 1-s windows walking
# them all (--walk-netns), and reads its CPU time (utime + stime) over 30 s, 30 walks, then its
# memory (VmRSS, VmHWM) and threads (one per namespace walked but its own). Run with
# N=0 first: that is the agent's own namespace and the rest of its work. Restores the sysctl and
# deletes the namespaces. Needs root.
set -euo pipefail
n=${1:?N}
child=${2:?CHILD_TABLE}
agent=${3:-target/release/flow-agent}
old=$(sysctl -n net.ipv4.tcp_child_ehash_entries)
args=()
cleanup() {
  sysctl -qw net.ipv4.tcp_child_ehash_entries="$old"
  for i in $(seq 1 "$n"); do ip netns del "walkcost$i" 2>/dev/null || true; done
}
trap cleanup EXIT
sysctl -qw net.ipv4.tcp_child_ehash_entries="$child"
for i in $(seq 1 "$n"); do
  ip netns add "walkcost$i"
  args+=(--walk-netns "/run/netns/walkcost$i")
done
sysctl -qw net.ipv4.tcp_child_ehash_entries="$old"
"$agent" --dry-run --report-interval 1s "${args[@]}" >/dev/null 2>&1 &
ag=$!
sleep 4
t0=$(awk '{print $14 + $15}' "/proc/$ag/stat")
sleep 30
t1=$(awk '{print $14 + $15}' "/proc/$ag/stat")
mem=$(awk '/^(VmRSS|VmHWM|Threads):/ {printf "%s %s%s ", $1, $2, $3}' "/proc/$ag/status")
kill -INT "$ag"
wait "$ag" || true
ticks=$((t1 - t0))
hz=$(getconf CLK_TCK)
echo "N=$n child table=$child: agent CPU $((ticks * 1000 / hz)) ms in 30 s (30 walks of $((n + 1)) namespaces); $mem"
