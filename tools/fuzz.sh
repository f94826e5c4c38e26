#!/usr/bin/env bash
# Runs each cargo-fuzz target:
#   decode   the wire codec on arbitrary bytes
#   cluster  the simulator under arbitrary faults (crashes, partitions, ...)
#   node     one node among hostile peers (messages through the codec)
#   network  correct nodes over a network that reorders, duplicates, loses
#
#   tools/fuzz.sh [SECS]   each target for SECS seconds (default 60), growing
#                          fuzz/corpus/ (make fuzz)
#   tools/fuzz.sh --short  each target for a fixed number of runs with a fixed
#                          seed, from the kept seeds only (fuzz/seeds/; a fresh
#                          corpus in a temporary directory): about 20 s each,
#                          the same inputs every time (.ci/run, make fuzz-short)
#
# Installs cargo-fuzz from crates.io if missing. Works on the stable
# toolchain with `-s none` (no sanitizer). `-a` keeps debug assertions and
# overflow checks on: arithmetic on a peer's numbers must not wrap silently.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz

seeds_of() { [ -d "seeds/$1" ] && echo "seeds/$1" || true; }

if [ "${1:-}" = "--short" ]; then
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    # Runs sized for 15-35 s each on the development VM from the kept
    # seeds (node's inputs are the slowest).
    for spec in decode:2000000 cluster:50000 node:60000 network:50000; do
        target=${spec%%:*} runs=${spec##*:}
        mkdir -p "$tmp/$target"
        echo "== fuzz $target: $runs runs, seed 1"
        # shellcheck disable=SC2046
        cargo fuzz run -s none -a "$target" "$tmp/$target" $(seeds_of "$target") \
            -- -runs="$runs" -seed=1
    done
    echo "fuzzing finished: no crash in any target"
    exit 0
fi

secs=${1:-60}
mkdir -p corpus/decode corpus/cluster corpus/node corpus/network
for target in decode cluster node network; do
    echo "== fuzz $target for ${secs}s"
    # shellcheck disable=SC2046
    cargo fuzz run -s none -a "$target" "corpus/$target" $(seeds_of "$target") \
        -- -max_total_time="$secs"
done
echo "fuzzing finished: no crash in any target"
