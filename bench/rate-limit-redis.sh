#!/usr/bin/env bash
# Open-loop benchmark of the rate-limit policies at a fixed offered rate (default 20k req/s,
# as issue 3 asks): nginx as a plain proxy, gatehouse with a local rate-limit, and gatehouse
# with policy redis (default batch, and a small batch that makes many more round trips).
# Every proxy is pinned to PROXY_CPU; upstream nginx, h2load and Redis to LOAD_CPU. Rounds
# alternate the peers so noise hits them alike. Reports CPU-µs per request of each proxy
# (from /proc, all its threads) and of Redis per request of the Redis runs.
#
# Usage: bench/rate-limit-redis.sh            (env: RATE DUR ROUNDS CONNS LIMIT PROXY_CPU LOAD_CPU BASE)
# Needs the release build (cargo build --release -p gatehouse); installs nginx, h2load
# (nghttp2-client) and redis-server with apt-get when they are missing.
set -euo pipefail
cd "$(dirname "$0")/.."
RATE=${RATE:-20000} DUR=${DUR:-10} ROUNDS=${ROUNDS:-5} CONNS=${CONNS:-50}
LIMIT=${LIMIT:-25000}   # above the offered rate: every request is admitted, every one checked
PROXY_CPU=${PROXY_CPU:-1} LOAD_CPU=${LOAD_CPU:-0} BASE=${BASE:-29400}
BIN=${GATEHOUSE_BIN:-$PWD/target/release/gatehouse}
[[ -x $BIN ]] || { echo "build first: cargo build --release -p gatehouse" >&2; exit 2; }
missing=()
command -v nginx >/dev/null || missing+=(nginx)
command -v h2load >/dev/null || missing+=(nghttp2-client)
command -v redis-server >/dev/null || missing+=(redis-server)
if ((${#missing[@]})); then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

OUT=$(mktemp -d /tmp/rl-bench.XXXXXX)
UP=$BASE P_NGINX=$((BASE + 1)) P_LOCAL=$((BASE + 2)) P_REDIS=$((BASE + 3)) P_SMALL=$((BASE + 4))
P_RDB=$((BASE + 9))
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

body=$(printf 'x%.0s' $(seq 1 100))
cat > "$OUT/upstream.conf" <<NGINX
worker_processes 1; master_process off; daemon off; pid $OUT/upstream.pid; error_log stderr error;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 10000000;
  server { listen 127.0.0.1:$UP; location / { return 200 "$body"; } } }
NGINX
cat > "$OUT/nginx.conf" <<NGINX
worker_processes 1; master_process off; daemon off; pid $OUT/nginx.pid; error_log stderr error;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 10000000;
  upstream up { server 127.0.0.1:$UP; keepalive 64; keepalive_requests 10000000; }
  server { listen 127.0.0.1:$P_NGINX;
    location / { proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
NGINX

start() { # cpu -- command...
  local cpu=$1; shift 2
  taskset -c "$cpu" "$@" >>"$OUT/servers.log" 2>&1 &
  PIDS+=($!)
}
start "$LOAD_CPU" -- nginx -p "$OUT" -c "$OUT/upstream.conf"
start "$LOAD_CPU" -- redis-server --port "$P_RDB" --bind 127.0.0.1 --save "" --appendonly no --dir "$OUT"
REDIS_PID=${PIDS[-1]}
start "$PROXY_CPU" -- nginx -p "$OUT" -c "$OUT/nginx.conf"
declare -A PID_OF=([nginx]=${PIDS[-1]})
export GATEHOUSE_BIN=$BIN BENCH_LIMIT=$LIMIT BENCH_REDIS=redis://127.0.0.1:$P_RDB
BENCH_PLUGINS=rate-limit start "$PROXY_CPU" -- bench/candidate.sh "$P_LOCAL" "$UP"
PID_OF[local]=${PIDS[-1]}
BENCH_PLUGINS=rate-limit-redis start "$PROXY_CPU" -- bench/candidate.sh "$P_REDIS" "$UP"
PID_OF[redis]=${PIDS[-1]}
BENCH_PLUGINS=rate-limit-redis BENCH_BATCH=10 start "$PROXY_CPU" -- bench/candidate.sh "$P_SMALL" "$UP"
PID_OF[redis-batch10]=${PIDS[-1]}
declare -A PORT_OF=([nginx]=$P_NGINX [local]=$P_LOCAL [redis]=$P_REDIS [redis-batch10]=$P_SMALL)
PEERS=(nginx local redis redis-batch10)
for p in "$UP" "$P_NGINX" "$P_LOCAL" "$P_REDIS" "$P_SMALL" "$P_RDB"; do
  for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null && break; sleep 0.05; done
done

ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }  # utime + stime of all threads, USER_HZ
hz=$(getconf CLK_TCK)
load() { # port secs
  taskset -c "$LOAD_CPU" timeout $(($2 + 20)) h2load --h1 -c "$CONNS" --rps $((RATE / CONNS)) \
    -D "$2" "http://127.0.0.1:$1/"
}

echo "# offered $RATE req/s for ${DUR}s x $ROUNDS rounds, $CONNS connections, limit $LIMIT/s; raw output in $OUT"
printf '%-6s %-14s %9s %10s %10s %12s %14s\n' round peer done rps mean_ms cpu_us/req redis_us/req | tee "$OUT/results.tsv"
for p in "${PEERS[@]}"; do load "${PORT_OF[$p]}" 2 >/dev/null; done   # warm-up: pools, leases
for r in $(seq "$ROUNDS"); do
  for p in "${PEERS[@]}"; do
    c0=$(ticks "${PID_OF[$p]}"); r0=$(ticks "$REDIS_PID")
    load "${PORT_OF[$p]}" "$DUR" > "$OUT/h2load-$p-$r.txt"
    c1=$(ticks "${PID_OF[$p]}"); r1=$(ticks "$REDIS_PID")
    done_n=$(awk '/^requests:/ {print $6}' "$OUT/h2load-$p-$r.txt")
    ok=$(awk '/^status codes:/ {print $3}' "$OUT/h2load-$p-$r.txt")
    rps=$(awk '/^finished in/ {gsub(",", "", $4); print $4}' "$OUT/h2load-$p-$r.txt")
    mean=$(awk '/^time for request:/ {print $6}' "$OUT/h2load-$p-$r.txt")
    [[ $ok == "$done_n" ]] || echo "warning: $p round $r: $ok of $done_n were 2xx" >&2
    awk -v r="$r" -v p="$p" -v n="$done_n" -v rps="$rps" -v m="$mean" -v c=$((c1 - c0)) \
        -v rc=$((r1 - r0)) -v hz="$hz" 'BEGIN {
      printf "%-6s %-14s %9d %10s %10s %12.2f %14s\n", r, p, n, rps, m, c * 1e6 / hz / n,
        (p ~ /redis/ ? sprintf("%.2f", rc * 1e6 / hz / n) : "-") }' | tee -a "$OUT/results.tsv"
  done
done
echo
awk 'NR > 1 { v[$2] = v[$2] " " $6 }
  function median(s,   a, n, i, j, t) { n = split(s, a, " ");
    for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t }
    return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2 }
  END { l = median(v["local"]); g = median(v["nginx"])
    for (p in v) { m = median(v[p]); printf "# %-14s median CPU-us/req %6.2f   vs local %.3f   vs nginx %.3f\n", p, m, m / l, m / g } }' \
  "$OUT/results.tsv" | sort
