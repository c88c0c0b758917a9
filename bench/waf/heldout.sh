#!/usr/bin/env bash
# A held-out attack corpus, written by nobody who wrote a detector here: Debian's wfuzz
# wordlists (Injections/SQL.txt, XSS.txt, Traversal.txt; GPL-2, installed, not vendored),
# laid out as bench/waf/evaluate.py and the probe read it (WAF_CORPUS=DIR).
#
#   dir=$(bench/waf/heldout.sh) && WAF_CORPUS=$dir bench/waf/evaluate.py http://127.0.0.1:PORT
set -euo pipefail
src=/usr/share/wfuzz/wordlist/Injections
[[ -d $src ]] || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wfuzz >/dev/null
dir=${1:-/tmp/waf-heldout}
mkdir -p "$dir/attack"
# Blank lines and lines of whitespace are no samples.
grep -v '^[[:space:]]*$' "$src/SQL.txt" > "$dir/attack/sqli.txt"
grep -v '^[[:space:]]*$' "$src/XSS.txt" > "$dir/attack/xss.txt"
grep -v '^[[:space:]]*$' "$src/Traversal.txt" > "$dir/attack/traversal.txt"
echo "$dir"
