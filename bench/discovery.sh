#!/usr/bin/env bash
# Issue 21's two performance checks, with a real etcd on free loopback ports:
#  1. the request path: a static upstream (A) against the same origin found through etcd (B),
#     side by side on one core (bench/side-by-side.sh), as a B/A ratio of CPU per request;
#  2. propagation: how soon an etcd change of one upstream's target is live on every worker
#     of a gateway with 10 000 routes (bench/discovery_latency.py).
#
#   bench/discovery.sh [ROUNDS] [SECONDS] [CHANGES]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
rounds=${1:-5} secs=${2:-5} changes=${3:-20}
bin=${GATEHOUSE_BIN:-$here/../target/release/gatehouse}
command -v etcd >/dev/null || apt-get install -y -qq etcd-server etcd-client >/dev/null
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
cport=$(free_port) pport=$(free_port) dir=$(mktemp -d /tmp/bench-etcd.XXXXXX)
etcd --data-dir "$dir" --name bench \
  --listen-client-urls "http://127.0.0.1:$cport" --advertise-client-urls "http://127.0.0.1:$cport" \
  --listen-peer-urls "http://127.0.0.1:$pport" --initial-advertise-peer-urls "http://127.0.0.1:$pport" \
  --initial-cluster "bench=http://127.0.0.1:$pport" >/dev/null 2>&1 &
etcd_pid=$!
trap 'kill $etcd_pid 2>/dev/null; wait $etcd_pid 2>/dev/null; rm -rf "$dir"' EXIT
for _ in $(seq 100); do
  ETCDCTL_API=3 etcdctl --endpoints "http://127.0.0.1:$cport" endpoint health >/dev/null 2>&1 && break
  sleep 0.1
done
echo "== request path: static target (A) vs the same target from etcd (B)"
GATEHOUSE_BIN=$bin "$here/side-by-side.sh" "" "BENCH_DISCOVERY=etcd BENCH_ETCD=http://127.0.0.1:$cport" "$rounds" "$secs"
echo "== propagation with 10 000 routes"
python3 "$here/discovery_latency.py" "$bin" "http://127.0.0.1:$cport" "$changes" 10000
