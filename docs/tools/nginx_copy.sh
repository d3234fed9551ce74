# Sourced by storm_env.sh and twin_ab.sh: `nginx_copy NS CGROUP DIR` sets up one copy of the
# bench's nginx load, as `cargo xtask bench` does: network namespace NS with loopback, the
# whole ephemeral port range, tcp_tw_reuse and a deep accept queue; cgroup CGROUP; and nginx
# (one worker, no master, a 3-byte response on 127.0.0.1:8080, everything under DIR) started in
# both, its pid left in `nginx_pid`. The caller removes them.
nginx_copy() {
  local ns=$1 cg=$2 d=$3
  ip netns add "$ns"
  ip -n "$ns" link set lo up
  ip netns exec "$ns" sysctl -q -w net.ipv4.ip_local_port_range="1024 65535" net.ipv4.tcp_tw_reuse=1 net.core.somaxconn=65535
  mkdir -p "$cg" "$d"/{body,proxy,fastcgi,uwsgi,scgi}
  cat > "$d/nginx.conf" <<CONF
daemon off; master_process off; worker_processes 1; worker_rlimit_nofile 16384;
pid $d/nginx.pid; error_log $d/error.log warn;
events { worker_connections 8192; multi_accept on; }
http {
  access_log off; keepalive_requests 100000000;
  client_body_temp_path $d/body; proxy_temp_path $d/proxy; fastcgi_temp_path $d/fastcgi; uwsgi_temp_path $d/uwsgi; scgi_temp_path $d/scgi;
  server { listen 127.0.0.1:8080 backlog=4096; location / { return 200 "ok\n"; } }
}
CONF
  bash -c "echo \$\$ > $cg/cgroup.procs; exec ip netns exec $ns nginx -p $d -c $d/nginx.conf" &
  nginx_pid=$!
  disown "$nginx_pid"
}
