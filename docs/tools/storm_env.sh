# Sourced by the storm tools in this directory: a network namespace with loopback, a cgroup,
# nginx (one worker, a tiny response) in both, and `storm SECS [client-cgroup]`: wrk -c64 with
# "Connection: close" on loopback, as `cargo xtask bench storm` runs it, printing wrk's
# Requests/sec line. With no client cgroup, wrk runs in the storm's cgroup (both ends monitored);
# with "none", outside it (the server side only). Cleans up at exit. Needs root, nginx-light, wrk.
set -euo pipefail
dir=$(mktemp -d)
ns=storm-$$
cg=/sys/fs/cgroup/unified/storm-$$
[ -d /sys/fs/cgroup/unified ] || cg=/sys/fs/cgroup/storm-$$
storm_cleanup() {
  [ -n "${nginx:-}" ] && kill "$nginx" 2>/dev/null || true
  [ -e "$cg/cgroup.kill" ] && echo 1 > "$cg/cgroup.kill" 2>/dev/null || true
  sleep 0.5; rmdir "$cg" 2>/dev/null || true
  ip netns del "$ns" 2>/dev/null || true
  rm -rf "$dir"
}
trap storm_cleanup EXIT
ip netns add "$ns"
ip -n "$ns" link set lo up
ip netns exec "$ns" sysctl -q -w net.ipv4.ip_local_port_range="1024 65535" net.ipv4.tcp_tw_reuse=1 net.core.somaxconn=65535
mkdir -p "$cg" "$dir"/{body,proxy,fastcgi,uwsgi,scgi}
cat > "$dir/nginx.conf" <<CONF
daemon off; master_process off; worker_processes 1; worker_rlimit_nofile 16384;
pid $dir/nginx.pid; error_log $dir/error.log warn;
events { worker_connections 8192; multi_accept on; }
http {
  access_log off;
  client_body_temp_path $dir/body; proxy_temp_path $dir/proxy; fastcgi_temp_path $dir/fastcgi; uwsgi_temp_path $dir/uwsgi; scgi_temp_path $dir/scgi;
  server { listen 127.0.0.1:8080 backlog=4096; location / { return 200 "ok\n"; } }
}
CONF
bash -c "echo \$\$ > $cg/cgroup.procs; exec ip netns exec $ns nginx -p $dir -c $dir/nginx.conf" &
nginx=$!
disown "$nginx"
sleep 1
storm() {
  local secs=$1 join="echo \$\$ > $cg/cgroup.procs;"
  [ "${2:-}" = none ] && join=""
  bash -c "$join exec ip netns exec $ns wrk -t1 -c64 -d${secs}s -H 'Connection: close' http://127.0.0.1:8080/" |
    grep -E "Requests/sec"
}
