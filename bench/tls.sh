#!/usr/bin/env bash
# Gatehouse and nginx side by side on one core (PROXY_CPU, default 1), both terminating TLS
# with the same ECDSA P-256 certificate and their default TLS 1.3 suite, or proxying gRPC,
# in front of one nginx origin on the other core (LOAD_CPU, default 0). Each round loads
# both at once (the same load generator for each) and prints each one's CPU-µs per request
# (utime+stime from /proc over the round) and Gatehouse/nginx.
#
#   bench/tls.sh SCENARIO [ROUNDS] [SECONDS]
#
# SCENARIO:
#   h1         HTTPS keep-alive, HTTP/1.1: wrk -t1 -c50, 100-byte answers
#   h2         HTTPS keep-alive, HTTP/2: h2load -t1 -c5 -m10 (50 streams in flight)
#   handshake  a new TLS connection (full handshake, no resumption) per request: wrk with
#              Connection: close; 1e6 / CPU-µs per request = handshakes per CPU-second
#   grpc       gRPC unary calls over h2c to Gatehouse (upstream h2c) and nginx (grpc_pass), an
#              nginx h2c origin answering like a gRPC server: h2load -c5 -m10 with one framed
#              message per call
#
# GATEHOUSE_BIN picks the binary (default: target/release/gatehouse, what `cargo build
# --release` makes). Needs nginx, wrk, h2load and openssl (installed with apt-get when missing).
set -euo pipefail
scenario=${1:?"usage: bench/tls.sh h1|h2|handshake|grpc [ROUNDS] [SECONDS]"}
rounds=${2:-5} secs=${3:-5}
for tool in nginx wrk h2load openssl; do
  if ! command -v "$tool" >/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx wrk nghttp2-client openssl >/dev/null \
      || { echo "needs nginx, wrk, h2load, openssl" >&2; exit 2; }
  fi
done
here=$(cd "$(dirname "$0")" && pwd)
bin=${GATEHOUSE_BIN:-$here/../target/release/gatehouse}
proxy_cpu=${PROXY_CPU:-1} load_cpu=${LOAD_CPU:-0}
dir=$(mktemp -d /tmp/bench-tls.XXXXXX)
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
origin=$(free_port) origin_h2=$(free_port) pg=$(free_port) pn=$(free_port)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  [[ -f $dir/origin.pid ]] && kill "$(cat "$dir/origin.pid")" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
  -subj /CN=bench.test -addext subjectAltName=DNS:bench.test \
  -keyout "$dir/key.pem" -out "$dir/cert.pem" 2>/dev/null
body="hello hello hello hello hello hello hello hello hello hello hello hello hello hello hello hello hello!!"
# A gRPC answer: one framed message (the bytes do not matter to a proxy) and grpc-status 0.
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
    location / { return 200 "$body"; }
  }
  server {
    listen 127.0.0.1:$origin_h2 http2;
    location / {
      default_type application/grpc;
      add_trailer grpc-status 0;
      add_trailer grpc-message "";
      return 200 "$body";
    }
  }
}
EOF
taskset -c "$load_cpu" nginx -c "$dir/origin.conf"

# Gatehouse: the TLS listener (h1/h2/handshake) and a plain one (gRPC over h2c).
cat > "$dir/gatehouse.yaml" <<EOF
listen:
  - address: 127.0.0.1:$pg
$( [[ $scenario != grpc ]] && printf '    tls: {}\n' )
node:
  workers: 1
certificates:
  - {name: bench, default: true, cert: "$dir/cert.pem", key: "$dir/key.pem"}
upstreams:
  - {name: origin, targets: [{address: "127.0.0.1:$origin"}]}
  - {name: grpc, protocol: h2c, targets: [{address: "127.0.0.1:$origin_h2"}]}
services:
  - {name: origin, upstream: origin}
  - {name: grpc, upstream: grpc}
routes:
  - {name: grpc, paths: ["/gatehouse.test.Echo/*"], service: grpc}
  - {name: all, paths: ["/*"], service: origin}
EOF
taskset -c "$proxy_cpu" "$bin" run -c "$dir/gatehouse.yaml" --admin 127.0.0.1:0 \
  >"$dir/gatehouse.out" 2>&1 &
pids+=($!)
pid_g=$!

if [[ $scenario == grpc ]]; then
  listen="listen 127.0.0.1:$pn http2;"
  location="location / { grpc_pass grpc://grpc_up; }"
else
  listen="listen 127.0.0.1:$pn ssl http2;
    ssl_certificate $dir/cert.pem; ssl_certificate_key $dir/key.pem;
    ssl_protocols TLSv1.2 TLSv1.3; ssl_session_cache shared:SSL:10m;"
  location="location / { proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection \"\"; }"
fi
cat > "$dir/nginx.conf" <<EOF
daemon off; master_process off; worker_processes 1;
pid $dir/nginx.pid; error_log $dir/nginx.err warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000; keepalive_timeout 60s;
  upstream up { server 127.0.0.1:$origin; keepalive 64; keepalive_requests 1000000; }
  upstream grpc_up { server 127.0.0.1:$origin_h2; keepalive 64; keepalive_requests 1000000; }
  server {
    $listen
    $location
  }
}
EOF
taskset -c "$proxy_cpu" nginx -c "$dir/nginx.conf" >"$dir/nginx.out" 2>&1 &
pids+=($!)
pid_n=$!
sleep 1.5

printf '\x00\x00\x00\x00\x07\x0a\x05hello' > "$dir/call.bin"
cpu() { local s; s=($(sed 's/.*) //' "/proc/$1/stat")); echo $((s[11] + s[12])); }
one() { # port output seconds
  local url=https://127.0.0.1:$1/
  case $scenario in
    h1) taskset -c "$load_cpu" wrk -t1 -c50 -d"$3"s "$url" >"$2" 2>&1 ;;
    handshake) taskset -c "$load_cpu" wrk -t1 -c50 -d"$3"s -H "Connection: close" "$url" >"$2" 2>&1 ;;
    h2) taskset -c "$load_cpu" h2load -t1 -c5 -m10 -D "$3" "$url" >"$2" 2>&1 ;;
    grpc) taskset -c "$load_cpu" h2load -t1 -c5 -m10 -D "$3" -d "$dir/call.bin" \
            -H 'content-type: application/grpc' -H 'te: trailers' \
            "http://127.0.0.1:$1/gatehouse.test.Echo/Unary" >"$2" 2>&1 ;;
    *) echo "unknown scenario $scenario" >&2; exit 2 ;;
  esac
}
load() { one "$pg" "$dir/lg" "$1" & local w=$!; one "$pn" "$dir/ln" "$1"; wait "$w"; }
count() { # output -> successful requests
  if grep -q "requests in" "$1"; then
    awk '/requests in/ {print $1}' "$1"
  else
    awk '/^requests:/ {print $8}' "$1"
  fi
}
load 2
hz=$(getconf CLK_TCK)
echo "# $scenario: Gatehouse (G) and nginx (N), $rounds rounds of ${secs}s, both on CPU $proxy_cpu"
for i in $(seq "$rounds"); do
  cg=$(cpu "$pid_g") cn=$(cpu "$pid_n")
  load "$secs"
  dg=$(($(cpu "$pid_g") - cg)) dn=$(($(cpu "$pid_n") - cn))
  rg=$(count "$dir/lg") rn=$(count "$dir/ln")
  python3 -c "g=$dg*1e6/$hz/max($rg,1); n=$dn*1e6/$hz/max($rn,1); print(f'round $i: G {g:.2f} us/req ({$rg} req, {1e6/g:.0f}/cpu-s)  N {n:.2f} us/req ({$rn} req, {1e6/n:.0f}/cpu-s)  G/N {g/n:.3f}')"
done
if [[ ${BENCH_SHOW:-} == 1 ]]; then tail -5 "$dir/lg" "$dir/ln"; fi
