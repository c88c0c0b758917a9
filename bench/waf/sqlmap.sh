#!/usr/bin/env bash
# sqlmap (Debian's) against a deliberately vulnerable app (bench/waf/vulnerable_app.py), once
# directly and once through Gatehouse with the `waf` plugin in block mode at paranoia level 1:
# what it finds injectable each way. The issue's bar: through the WAF, nothing it finds
# directly. Loopback only; bounded by sqlmap's own --timeout and the script's `timeout`.
#
#   bench/waf/sqlmap.sh [GATEHOUSE_BINARY]      (default target/release/gatehouse)
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${1:-target/release/gatehouse}
command -v sqlmap >/dev/null || { echo "apt-get install sqlmap" >&2; exit 2; }
APP_PORT=${APP_PORT:-18601}
GW_PORT=${GW_PORT:-18602}
OUT=${OUT:-bench/runs/issue22/sqlmap}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
: >"$OUT/deny.log"
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

# sqlmap hangs up on answers it no longer wants; the app's tracebacks about it go aside.
python3 bench/waf/vulnerable_app.py "$APP_PORT" 2>"$work/app.log" &
cat > "$work/gw.yaml" <<YAML
upstreams:
  - {name: app, targets: [{address: "127.0.0.1:$APP_PORT"}]}
services:
  - {name: app, upstream: app}
routes:
  - {name: app, paths: ["/*"], service: app}
plugins:
  - name: waf
    route: app
    config: {mode: block, paranoia_level: 1, deny_log: $OUT/deny.log}
YAML
"$BIN" run -c "$work/gw.yaml" --listen "127.0.0.1:$GW_PORT" --admin 127.0.0.1:0 2>"$work/gw.log" &
up=""
for _ in $(seq 600); do
  curl -s -o /dev/null "http://127.0.0.1:$GW_PORT/" && curl -s -o /dev/null "http://127.0.0.1:$APP_PORT/" && { up=1; break; }
  sleep 0.1
done
[ -n "$up" ] || { echo "the gateway or the app did not come up:" >&2; cat "$work/gw.log" >&2; exit 1; }

run() { # NAME URL [sqlmap args...]
  local name=$1 url=$2; shift 2
  # A browser's User-Agent: sqlmap's own is a scanner signature (CRS 913100) that would
  # block every request by itself, and the point is whether the injections are caught.
  timeout 900 sqlmap --batch --flush-session --level 2 --risk 1 --timeout 5 --retries 0 --random-agent \
    --output-dir "$work/sqlmap-$name" -u "$url" "$@" >"$OUT/$name.txt" 2>&1 || true
  if grep -q "unable to connect" "$OUT/$name.txt"; then
    echo "$name: sqlmap could not connect; the run proves nothing" >&2
    exit 1
  elif grep -q "sqlmap identified the following injection point" "$OUT/$name.txt"; then
    echo "$name: injectable ($(grep -c '^    Type:' "$OUT/$name.txt") techniques: $(grep '^    Type:' "$OUT/$name.txt" | sed 's/ *Type: //' | paste -sd ',' -))"
  else
    echo "$name: no injection found"
  fi
}

for target in "item|/item?id=1|" "search|/search?q=shirt|" "login|/login|--data=user=anne&pass=pw"; do
  IFS='|' read -r name path extra <<<"$target"
  run "$name-direct" "http://127.0.0.1:$APP_PORT$path" ${extra:+"$extra"}
  run "$name-waf" "http://127.0.0.1:$GW_PORT$path" ${extra:+"$extra"}
done
echo "deny log: $(wc -l <"$OUT/deny.log") decisions in $OUT/deny.log"
