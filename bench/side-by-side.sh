#!/usr/bin/env bash
# Two gateway builds or settings measured at the same time: both pinned to one core
# (PROXY_CPU, default 1) and loaded at once by two wrk (-t1 -c50) on the other core, with an
# nginx origin there too. Each round prints each one's CPU-µs per request (utime+stime from
# /proc over the round) and B/A. Because A and B share the core and the clock, a noisy
# neighbour slows both alike; the ratio is far steadier than across peers.sh repetitions.
#
#   bench/side-by-side.sh "BENCH_OBSERVE=off" "BENCH_OBSERVE=log" [ROUNDS] [SECONDS]
#   bench/side-by-side.sh "GATEHOUSE_BIN=/tmp/old" "GATEHOUSE_BIN=/tmp/new" 5
#
# A and B are environment assignments for bench/candidate.sh (space-separated), or the word
# `nginx` for nginx's `proxy_pass` as peers.sh configures it (1 process, upstream keep-alive
# 64): `bench/side-by-side.sh nginx "" 5` gives Gatehouse ÷ nginx on one core. `nginx-duties`
# is that nginx doing what Gatehouse does on every request: X-Forwarded-For/Proto/Host and
# X-Real-IP upstream, and an X-Request-Id made when absent, sent upstream and returned.
# `nginx-modsec` is nginx with libmodsecurity 3 and the OWASP CRS at paranoia level WAF_PL
# (default 1; bench/waf/modsecurity-conf.sh), the WAF baseline of issue 22. Needs nginx
# and wrk (apt-get install -y nginx wrk). Run it both ways round (A B, then B A) to see that
# the order does not matter; an A/A run shows the method's own spread.
set -euo pipefail
if ! command -v wrk >/dev/null || ! command -v nginx >/dev/null; then
  apt-get install -y -qq nginx wrk >/dev/null || { echo "needs nginx and wrk" >&2; exit 2; }
fi
a=$1 b=$2 rounds=${3:-5} secs=${4:-5}
here=$(cd "$(dirname "$0")" && pwd)
proxy_cpu=${PROXY_CPU:-1} load_cpu=${LOAD_CPU:-0}
dir=$(mktemp -d /tmp/side-by-side.XXXXXX)
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
origin=$(free_port) origin_h2=$(free_port) pa=$(free_port) pb=$(free_port)
cat > "$dir/origin.conf" <<EOF
worker_processes 1;
pid $dir/origin.pid;
error_log $dir/origin-error.log;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  server {
    listen 127.0.0.1:$origin;
    location / { return 200 "hello hello hello hello hello hello hello hello hello hello hello hello hello hello hello hello hello!!"; }
  }
  # The same answers over h2c (prior knowledge), for candidates that want an HTTP/2 upstream.
  server {
    listen 127.0.0.1:$origin_h2 http2;
    http2_max_requests 1000000;
    location / { return 200 "hello hello hello hello hello hello hello hello hello hello hello hello hello hello hello hello hello!!"; }
  }
}
EOF
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  [[ -f $dir/origin.pid ]] && kill "$(cat "$dir/origin.pid")" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT
taskset -c "$load_cpu" nginx -c "$dir/origin.conf"
start() { # env-assignments port log-dir
  if [[ $1 == nginx || $1 == nginx-duties || $1 == nginx-modsec ]]; then
    local duties="" module="" waf=""
    if [[ $1 == nginx-modsec ]]; then
      module="load_module /usr/lib/nginx/modules/ngx_http_modsecurity_module.so;"
      mkdir -p "$3.waf"
      waf="modsecurity on; modsecurity_rules_file $("$here/waf/modsecurity-conf.sh" "$3.waf" "${WAF_PL:-1}");"
    fi
    if [[ $1 == nginx-duties ]]; then
      duties='proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
      proxy_set_header X-Real-IP $remote_addr; proxy_set_header X-Forwarded-Proto $scheme;
      proxy_set_header X-Forwarded-Host $http_host; proxy_set_header X-Request-Id $rid;
      add_header X-Request-Id $rid always;'
    fi
    cat > "$3.conf" <<EOF
$module
daemon off; master_process off; worker_processes 1;
pid $3.pid; error_log $3.err warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000; keepalive_timeout 60s;
  upstream up { server 127.0.0.1:$origin; keepalive 64; keepalive_requests 1000000; }
  map \$http_x_request_id \$rid { "" \$request_id; default \$http_x_request_id; }
  client_body_buffer_size 64k;
  server {
    listen 127.0.0.1:$2;
    $waf
    location / { proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection "";
      $duties }
  }
}
EOF
    taskset -c "$proxy_cpu" nginx -c "$3.conf" >"$3.out" 2>&1 &
    pids+=($!)
    return
  fi
  env $1 BENCH_LOG="$3/access.log" ORIGIN_H2_PORT="$origin_h2" taskset -c "$proxy_cpu" "$here/candidate.sh" "$2" "$origin" \
    >"$3.out" 2>&1 &
  pids+=($!)
}
start "$a" "$pa" "$dir/a"
start "$b" "$pb" "$dir/b"
pid_a=${pids[0]} pid_b=${pids[1]}
# Until both accept (a gateway compiling a WAF rule set takes a few seconds), at most 60 s.
for port in "$pa" "$pb"; do
  for _ in $(seq 600); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
    sleep 0.1
  done
done
sleep 0.5
cpu() { local s; s=($(sed 's/.*) //' "/proc/$1/stat")); echo $((s[11] + s[12])); }
# WRK_HEADER="name: value" is sent by both loads (a credential for a route that needs one).
# WRK_SCRIPT=FILE.lua shapes both loads' requests (bench/waf/post-1k-json.lua: a 1 KiB JSON POST).
hdr=(); [[ -n ${WRK_HEADER:-} ]] && hdr=(-H "$WRK_HEADER")
[[ -n ${WRK_SCRIPT:-} ]] && hdr+=(-s "$WRK_SCRIPT")
load() { # seconds -> requests for A and B
  taskset -c "$load_cpu" wrk -t1 -c50 -d"$1"s "${hdr[@]}" "http://127.0.0.1:$pa/" >"$dir/wa" 2>&1 &
  local w=$!
  taskset -c "$load_cpu" wrk -t1 -c50 -d"$1"s "${hdr[@]}" "http://127.0.0.1:$pb/" >"$dir/wb" 2>&1
  wait "$w"
}
load 2 # warm-up: pools, caches, branch predictors
hz=$(getconf CLK_TCK)
echo "# A: $a   B: $b   ($rounds rounds of ${secs}s, both on CPU $proxy_cpu)"
for i in $(seq "$rounds"); do
  ca=$(cpu "$pid_a") cb=$(cpu "$pid_b")
  load "$secs"
  da=$(($(cpu "$pid_a") - ca)) db=$(($(cpu "$pid_b") - cb))
  ra=$(awk '/requests in/ {print $1}' "$dir/wa") rb=$(awk '/requests in/ {print $1}' "$dir/wb")
  python3 -c "a=$da*1e6/$hz/$ra; b=$db*1e6/$hz/$rb; print(f'round $i: A {a:.2f} us/req ($ra req)  B {b:.2f} us/req ($rb req)  B/A {b/a:.3f}')"
done
