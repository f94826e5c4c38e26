#!/usr/bin/env bash
# Runs each cargo-fuzz target for a bounded time (default 60 s each):
#   decode   the wire codec on arbitrary bytes
#   cluster  the simulator under arbitrary faults (crashes, partitions, ...)
#   node     one node among hostile peers (messages through the codec)
#   network  correct nodes over a network that reorders, duplicates, loses
# Installs cargo-fuzz from crates.io if missing. Works on the stable
# toolchain with `-s none` (no sanitizer). `-a` keeps debug assertions and
# overflow checks on: arithmetic on a peer's numbers must not wrap silently.
set -euo pipefail
secs=${1:-60}
cd "$(dirname "$0")/../fuzz"
command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz
mkdir -p corpus/decode corpus/cluster corpus/node corpus/network
echo "== fuzz decode for ${secs}s"
cargo fuzz run -s none -a decode corpus/decode seeds/decode -- -max_total_time="$secs"
for target in cluster node network; do
    echo "== fuzz $target for ${secs}s"
    cargo fuzz run -s none -a "$target" "corpus/$target" -- -max_total_time="$secs"
done
echo "fuzzing finished: no crash in any target"
