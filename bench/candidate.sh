#!/usr/bin/env bash
# Candidate for ../shared/bench/peers.sh: one plain route to 127.0.0.1:$2, listening on
# 127.0.0.1:$1, one worker (the harness pins the proxy to one core). Execs the gateway so
# its PID is the one measured. GATEHOUSE_BIN picks the binary (default: the release build).
# BENCH_PLUGINS=rate-limit puts a local rate-limit on the route, with a limit no run reaches
# (BENCH_LIMIT, default 10^9), so every request pays for the check and none is rejected.
# BENCH_PLUGINS=rate-limit-redis: the same limit with policy redis on BENCH_REDIS, leasing
# BENCH_BATCH at a time (default: the plugin's, 1 % of the limit).
# BENCH_PLUGINS=key-auth: a consumer with an API key (BENCH_KEY, default bench-key), key-auth
# and a per-consumer rate-limit no run reaches on the route: send the key in `apikey`.
# BENCH_PLUGINS=jwt: jwt-auth with an RS256 consumer key (bench/jwt/rsa.pub): send
# `Authorization: Bearer $(bench/jwt/token.sh)`. BENCH_JWT_CACHE=0: verify the signature on every
# request (no remembered tokens).
# BENCH_PLUGINS=split: a traffic-split of five rules (header, cookie, IP range, query, a sticky
# BENCH_SPLIT_PERCENT share, default 10, by user id or client IP) to a second upstream on the same
# origin; wrk's requests match none but the share, so every rule is evaluated.
# BENCH_PLUGINS=mirror: traffic-mirror of BENCH_MIRROR_PERCENT (default 100) of requests to
# http://127.0.0.1:BENCH_MIRROR_PORT (default: the origin); BENCH_MIRROR_H2=1: to the origin's
# h2c port (ORIGIN_H2_PORT, which bench/side-by-side.sh sets) as an upstream with protocol h2c,
# so copies share one multiplexed connection per worker.
# BENCH_PLUGINS=waf: the waf plugin (the built-in OWASP CRS) at paranoia level BENCH_WAF_PL
# (default 1) on the route, in block mode.
# BENCH_DISCOVERY=etcd: the origin upstream has no static target; its one target is a key
# under /gatehouse-bench/PORT/ in the etcd at BENCH_ETCD (http://ip:port), written here first
# with etcdctl. BENCH_DISCOVERY=hostname: the target is `localhost:PORT`, a host name the
# gateway resolves in the background.
# BENCH_CONSUMER_HEADERS=off: no X-Consumer-* headers upstream.
# BENCH_HTTP1=hyper: hyper's HTTP/1.1 server for client connections instead of the own one.
# BENCH_OBSERVE=off: no metrics, no access log. BENCH_OBSERVE=metrics (or unset): the defaults,
# metrics on and no access log. BENCH_OBSERVE=log: metrics (the default) and a
# JSON access log line per request to BENCH_LOG (default /tmp/gatehouse-bench-logs/access.log,
# truncated at start).
set -euo pipefail
port=$1 upstream=$2
bin=${GATEHOUSE_BIN:-$(dirname "$0")/../target/release/gatehouse}
cfg=$(mktemp /tmp/gatehouse-bench.XXXXXX.yaml)
cat > "$cfg" <<YAML
listen:
  - address: 127.0.0.1:$port
node:
  workers: 1
  http1: {server: ${BENCH_HTTP1:-own}}
$( [[ ${BENCH_CONSUMER_HEADERS:-} == off ]] && echo '  consumer_headers: {username: "", id: "", groups: "", credential: "", anonymous: ""}' )
upstreams:
  - name: origin
$( case ${BENCH_DISCOVERY:-} in
  "") printf '    targets: [{address: "127.0.0.1:%s"}]' "$upstream" ;;
  hostname) printf '    targets: [{address: "localhost:%s"}]' "$upstream" ;;
  etcd) printf '    discovery: {etcd: {endpoints: ["%s"], prefix: /gatehouse-bench/%s/}}' "${BENCH_ETCD:?BENCH_DISCOVERY=etcd needs BENCH_ETCD}" "$port" ;;
esac )
$( [[ ${BENCH_PLUGINS:-} == split ]] && printf '  - name: canary\n    targets: [{address: "127.0.0.1:%s"}]' "$upstream" )
$( [[ ${BENCH_MIRROR_H2:-} == 1 ]] && printf '  - name: mirror\n    protocol: h2c\n    targets: [{address: "127.0.0.1:%s"}]' "${ORIGIN_H2_PORT:?BENCH_MIRROR_H2 needs an h2c origin (bench/side-by-side.sh gives one)}" )
services:
  - name: origin
    upstream: origin
routes:
  - name: all
    paths: ["/*"]
    service: origin
YAML
case ${BENCH_OBSERVE:-} in
  ""|metrics) ;;
  off) cat >> "$cfg" <<YAML
observability:
  metrics: {enabled: false}
YAML
  ;;
  log) log=${BENCH_LOG:-/tmp/gatehouse-bench-logs/access.log}; mkdir -p "$(dirname "$log")"; : > "$log"; cat >> "$cfg" <<YAML
observability:
  metrics: {enabled: true}
  access_log: {path: "$log"}
YAML
  ;;
  *) echo "unknown BENCH_OBSERVE: $BENCH_OBSERVE" >&2; exit 2 ;;
esac
case ${BENCH_PLUGINS:-} in
  "") ;;
  rate-limit) cat >> "$cfg" <<YAML
plugins:
  - name: rate-limit
    route: all
    config: {limit: ${BENCH_LIMIT:-1000000000}, window: 1s, key: ip, algorithm: sliding_window}
YAML
  ;;
  rate-limit-redis) cat >> "$cfg" <<YAML
redis: ${BENCH_REDIS:?BENCH_REDIS=redis://... is needed}
plugins:
  - name: rate-limit
    route: all
    config:
      limit: ${BENCH_LIMIT:-1000000000}
      window: 1s
      key: ip
      algorithm: sliding_window
      policy: redis
$( [[ -n ${BENCH_BATCH:-} ]] && echo "      redis_batch: $BENCH_BATCH" )
YAML
  ;;
  key-auth) cat >> "$cfg" <<YAML
consumers:
  - username: bench
    credentials: [{type: key-auth, key: "${BENCH_KEY:-bench-key}"}]
plugins:
  - name: key-auth
    route: all
  - name: rate-limit
    route: all
    config: {limit: ${BENCH_LIMIT:-1000000000}, window: 1s, key: consumer, algorithm: sliding_window}
YAML
  ;;
  jwt) pem=$(sed 's/^/          /' "$(dirname "$0")/jwt/rsa.pub"); cat >> "$cfg" <<YAML
consumers:
  - username: bench
    credentials:
      - type: jwt-auth
        key: bench-iss
        algorithm: RS256
        public_key: |
$pem
plugins:
  - name: jwt-auth
    route: all
    config: {verified_cache: ${BENCH_JWT_CACHE:-10000}}
YAML
  ;;
  split) cat >> "$cfg" <<YAML
plugins:
  - name: traffic-split
    route: all
    config:
      user_id: query:uid
      rules:
        - {name: testers, when: {headers: [{name: x-tester, equals: "1"}]}, upstream: canary}
        - {name: beta, when: {cookies: [{name: beta, in: ["1", "yes"]}]}, upstream: canary}
        - {name: office, when: {ip: ["10.0.0.0/8", "192.168.0.0/16"]}, upstream: canary}
        - {name: ab, when: {query: [{name: exp, equals: ab1}]}, rewrite: /ab1}
        - {name: canary, when: {percent: ${BENCH_SPLIT_PERCENT:-10}}, upstream: canary}
YAML
  ;;
  waf) cat >> "$cfg" <<YAML
plugins:
  - name: waf
    route: all
    config: {paranoia_level: ${BENCH_WAF_PL:-1}}
YAML
  ;;
  mirror) cat >> "$cfg" <<YAML
plugins:
  - name: traffic-mirror
    route: all
    config: {$( [[ ${BENCH_MIRROR_H2:-} == 1 ]] && echo "upstream: mirror" || echo "url: \"http://127.0.0.1:${BENCH_MIRROR_PORT:-$upstream}\"" ), percent: ${BENCH_MIRROR_PERCENT:-100}}
YAML
  ;;
  *) echo "unknown BENCH_PLUGINS: $BENCH_PLUGINS" >&2; exit 2 ;;
esac
if [[ ${BENCH_DISCOVERY:-} == etcd ]]; then
  ETCDCTL_API=3 etcdctl --endpoints "$BENCH_ETCD" put "/gatehouse-bench/$port/origin" "127.0.0.1:$upstream" >/dev/null
fi
export GATEHOUSE_LOG=${GATEHOUSE_LOG:-warn}
# Each candidate gets its own admin port, so two builds can run side by side in one run.
exec "$bin" run -c "$cfg" --admin "127.0.0.1:${BENCH_ADMIN_PORT:-0}"
