#!/usr/bin/env bash
# The baseline WAF: nginx + libmodsecurity 3 + OWASP CRS (Debian's libnginx-mod-http-modsecurity
# and modsecurity-crs, its files included one by one: libmodsecurity has no IncludeOptional) in front of an nginx origin that answers 200, on 127.0.0.1:PORT, at CRS
# paranoia level PL (default 1), anomaly scoring with CRS's default thresholds (inbound 5).
# Runs in the foreground until killed; for bench/waf/evaluate.py and side-by-side CPU runs.
#
#   bench/waf/modsecurity-nginx.sh PORT [PL]
set -euo pipefail
port=$1 pl=${2:-1}
dir=$(mktemp -d /tmp/modsec-nginx.XXXXXX)
origin=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$(dirname "$0")/modsecurity-conf.sh" "$dir" "$pl" >/dev/null
cat > "$dir/nginx.conf" <<CONF
load_module /usr/lib/nginx/modules/ngx_http_modsecurity_module.so;
worker_processes 1;
daemon off;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  client_body_buffer_size 64k;
  upstream origin { server 127.0.0.1:$origin; keepalive 64; }
  server {
    listen 127.0.0.1:$origin;
    location / { return 200 "hello"; }
  }
  server {
    listen 127.0.0.1:$port;
    modsecurity on;
    modsecurity_rules_file $dir/modsecurity.conf;
    location / {
      proxy_pass http://origin;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
}
CONF
nginx -c "$dir/nginx.conf" &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf "$dir"' EXIT INT TERM
wait $pid
