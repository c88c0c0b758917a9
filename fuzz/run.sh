#!/usr/bin/env bash
# Builds the fuzz targets (stable toolchain, no sanitizer) and runs each for SECONDS (default
# 600), one after another or JOBS at a time; new inputs that reach new code are added to
# fuzz/corpus/<target>, crashes land in fuzz/artifacts/<target>. Needs cargo-fuzz
# (`cargo install cargo-fuzz`).
#
#   fuzz/run.sh [SECONDS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")"
secs=${1:-600}
shift || true
targets=("$@")
[[ ${#targets[@]} -gt 0 ]] || targets=(h1_head h1_chunked header_rewrite route_match config)
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
cargo fuzz build --sanitizer none -O
jobs=${JOBS:-1}
run() {
  mkdir -p "corpus/$1"
  cargo fuzz run --sanitizer none -O "$1" "corpus/$1" -- -max_total_time="$secs" -max_len=65536 \
    2>&1 | tail -n 3 | sed "s/^/$1: /"
}
for t in "${targets[@]}"; do
  run "$t" &
  while [[ $(jobs -rp | wc -l) -ge $jobs ]]; do sleep 1; done
done
wait
