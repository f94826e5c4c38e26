#!/usr/bin/env bash
# Runs each cargo-fuzz target for a bounded time (default 60 s each).
# Installs cargo-fuzz from crates.io if missing. Works on the stable
# toolchain with `-s none` (no sanitizer).
set -euo pipefail
secs=${1:-60}
cd "$(dirname "$0")/../fuzz"
command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz
mkdir -p corpus/decode corpus/cluster
echo "== fuzz decode for ${secs}s"
cargo fuzz run -s none decode corpus/decode seeds/decode -- -max_total_time="$secs"
echo "== fuzz cluster for ${secs}s"
cargo fuzz run -s none cluster corpus/cluster -- -max_total_time="$secs"
echo "fuzzing finished: no crash in either target"
