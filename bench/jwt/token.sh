#!/usr/bin/env bash
# An RS256 token for bench/candidate.sh's BENCH_PLUGINS=jwt, signed with bench/jwt/rsa.key
# (a test key that protects nothing), valid for a day: prints it.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
b64() { openssl base64 -A | tr '+/' '-_' | tr -d '='; }
head=$(printf '{"alg":"RS256","typ":"JWT"}' | b64)
body=$(printf '{"iss":"bench-iss","sub":"bench","exp":%d}' $(( $(date +%s) + 86400 )) | b64)
sig=$(printf '%s.%s' "$head" "$body" | openssl dgst -sha256 -sign "$here/rsa.key" -binary | b64)
echo "$head.$body.$sig"
