#!/usr/bin/env bash
# The twin runs' noise floor: two identical nginx + wrk copies (a namespace, a cgroup and an
# nginx each, as `cargo xtask bench` sets them up) loaded at the same time with NO agent, printing
# each run's throughput ratio. Their spread is what a twin run can resolve (docs/performance.md,
# "Twin runs"). Needs root, nginx-light, wrk.
# usage: [RUNS=6] [SECS=5] docs/tools/twin_noise.sh [keepalive|storm]
set -euo pipefail
mode=${1:-keepalive}
d=$(mktemp -d)
cgroot=/sys/fs/cgroup/unified
[ -d "$cgroot" ] || cgroot=/sys/fs/cgroup
pids=()
setup() {
  local n=$1 ns=twin$1-$$ cg=$cgroot/twin$1-$$
  ip netns add "$ns"
  ip -n "$ns" link set lo up
  ip netns exec "$ns" sysctl -q -w net.ipv4.ip_local_port_range="1024 65535" net.ipv4.tcp_tw_reuse=1 net.core.somaxconn=65535
  mkdir -p "$cg" "$d/$n"/{body,proxy,fastcgi,uwsgi,scgi}
  cat > "$d/$n/nginx.conf" <<CONF
daemon off; master_process off; worker_processes 1; worker_rlimit_nofile 16384;
pid $d/$n/nginx.pid; error_log $d/$n/error.log warn;
events { worker_connections 8192; multi_accept on; }
http {
  access_log off; keepalive_requests 100000000;
  client_body_temp_path $d/$n/body; proxy_temp_path $d/$n/proxy; fastcgi_temp_path $d/$n/fastcgi; uwsgi_temp_path $d/$n/uwsgi; scgi_temp_path $d/$n/scgi;
  server { listen 127.0.0.1:8080 backlog=4096; location / { return 200 "ok\n"; } }
}
CONF
  bash -c "echo \$\$ > $cg/cgroup.procs; exec ip netns exec $ns nginx -p $d/$n -c $d/$n/nginx.conf" &
  pids+=($!)
  disown "$!"
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
  bash -c "echo \$\$ > $cgroot/twin$1-$$/cgroup.procs; exec ip netns exec twin$1-$$ wrk -t1 -c64 -d${SECS:-5}s $header http://127.0.0.1:8080/" |
    awk '/Requests\/sec/ {print $2}'
}
for i in $(seq "${RUNS:-6}"); do
  load a > "$d/ra" &
  p=$!
  load b > "$d/rb"
  wait "$p"
  awk -v a="$(cat "$d/ra")" -v b="$(cat "$d/rb")" 'BEGIN {printf "copy a %.0f req/s, copy b %.0f req/s, a/b %.4f\n", a, b, a / b}'
done
