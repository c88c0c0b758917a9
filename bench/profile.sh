#!/usr/bin/env bash
# A CPU profile of one gateway build alone on CPU 1 under wrk -t1 -c50 (nginx origin and wrk on
# CPU 0): bench/profile.sh BIN OUT.perf, then perf report -i OUT.perf --no-children --sort symbol.
# Needs nginx, wrk and linux-perf (apt-get install -y nginx wrk linux-perf).
set -euo pipefail
bin=$1 out=$2
dir=$(mktemp -d)
bin=$(realpath "$bin")
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
origin=$(free_port) gw=$(free_port)
cat > $dir/o.conf <<C
worker_processes 1; pid $dir/o.pid; error_log $dir/e.log; events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000; server { listen 127.0.0.1:$origin; location / { return 200 "hello hello hello hello hello hello hello hello hello hello hello hello hello hello hello hello hello!!"; } } }
C
taskset -c 0 nginx -c $dir/o.conf
GATEHOUSE_BIN=$bin taskset -c 1 "$(dirname "$0")"/candidate.sh $gw $origin > $dir/gw.log 2>&1 &
gpid=$!
sleep 1

pid=$gpid
# WRK_HEADER="name: value": sent with every request (a credential); BENCH_* pick the route's
# plugins and observability, as for candidate.sh.
hdr=(); [[ -n ${WRK_HEADER:-} ]] && hdr=(-H "$WRK_HEADER")
taskset -c 0 wrk -t1 -c50 -d2s "${hdr[@]}" http://127.0.0.1:$gw/ > /dev/null
taskset -c 0 wrk -t1 -c50 -d6s "${hdr[@]}" http://127.0.0.1:$gw/ > $dir/wrk.txt &
wpid=$!
sleep 1
perf record -e cpu-clock -g -p $pid -o $out -- sleep 4 2>/dev/null
wait $wpid
kill $pid; kill $(cat $dir/o.pid)
grep Requests/sec $dir/wrk.txt
