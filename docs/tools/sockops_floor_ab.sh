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
dir=$(mktemp -d)
ns=sofloor-$$
cg=/sys/fs/cgroup/unified/sofloor-$$
[ -d /sys/fs/cgroup/unified ] || cg=/sys/fs/cgroup/sofloor-$$
cleanup() {
  [ -n "${nginx:-}" ] && kill "$nginx" 2>/dev/null || true
  [ -e "$cg/cgroup.kill" ] && echo 1 > "$cg/cgroup.kill" 2>/dev/null || true
  sleep 0.5; rmdir "$cg" 2>/dev/null || true
  ip netns del "$ns" 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT
ip netns add "$ns"
ip -n "$ns" link set lo up
ip netns exec "$ns" sysctl -q -w net.ipv4.ip_local_port_range="1024 65535" net.ipv4.tcp_tw_reuse=1 net.core.somaxconn=65535
mkdir -p "$cg" "$dir"/{body,proxy,fastcgi,uwsgi,scgi}
cat > "$dir/nginx.conf" <<EOF
daemon off; master_process off; worker_processes 1; worker_rlimit_nofile 16384;
pid $dir/nginx.pid; error_log $dir/error.log warn;
events { worker_connections 8192; multi_accept on; }
http {
  access_log off;
  client_body_temp_path $dir/body; proxy_temp_path $dir/proxy; fastcgi_temp_path $dir/fastcgi; uwsgi_temp_path $dir/uwsgi; scgi_temp_path $dir/scgi;
  server { listen 127.0.0.1:8080 backlog=4096; location / { return 200 "ok\n"; } }
}
EOF
bash -c "echo \$\$ > $cg/cgroup.procs; exec ip netns exec $ns nginx -p $dir -c $dir/nginx.conf" &
nginx=$!
disown "$nginx"
sleep 1
storm() {
  bash -c "echo \$\$ > $cg/cgroup.procs; exec ip netns exec $ns wrk -t1 -c64 -d6s -H 'Connection: close' http://127.0.0.1:8080/" |
    grep -E "Requests/sec"
}
run() {
  local v=$1 pid
  if [ "$v" = off ]; then echo "off $(storm)"; return; fi
  if [ "$v" = agent ]; then
    "$agent" --dry-run --report-interval 10s --metrics-address 127.0.0.1:0 --control-socket "$dir/c.sock" \
      --cgroup "$cg" --walk-netns "/run/netns/$ns" > /dev/null 2> "$dir/agent.log" &
  else
    python3 "$here/sockops_floor.py" "$cg" "$v" > /dev/null &
  fi
  pid=$!
  sleep 1.5
  echo "$v $(storm)"
  kill -INT "$pid"; wait "$pid" || true
}
for i in $(seq "${PAIRS:-4}"); do
  if [ $((i % 2)) = 1 ]; then list="$*"; else list=$(printf '%s\n' "$@" | tac | tr '\n' ' '); fi
  for v in $list; do run "$v"; done
done
