#!/usr/bin/env bash
# Mutation testing of raft-proto with cargo-mutants: each mutant (an
# operator swapped, a function body replaced by a default, a `!` deleted)
# is built and run against the fast tests; a mutant no test fails on is
# "missed", a gap in the tests. See docs/mutants.md for the last results.
#
#   tools/mutants.sh [FILE...]      FILE as in raft-proto/src, e.g. leader.rs
#
# Default files, most important first: driver, leader, follower,
# candidate, progress, quorum, node. Files run one after another, each in
# its own cargo-mutants run (in a scratch copy of the tree, never in
# place), until MUTANTS_BUDGET_SECS (default 3000) of wall time is spent;
# the run in progress is then interrupted (what it finished is kept) and
# later files are skipped. MUTANTS_TIMEOUT (default 30) bounds one
# mutant's test run in seconds: the tests take 1 to 4 s unmutated (more
# on a loaded machine), and a mutant that stops heartbeats or the
# simulator's clock would otherwise spin forever.
#
# Tests: unit tests, tests/scenarios.rs, tests/transcripts.rs and
# tests/mutants_killed.rs, all deterministic. Left out: doctests, and the
# proptests of tests/adversary.rs, which draw new random cases on every
# run (a mutant's verdict would vary) and cost 1.5 to 13 s per mutant.
#
# Output: target/mutants/<file>/mutants.out/{caught,missed,timeout,
# unviable}.txt (one mutant a line; diffs in mutants.out/diff/), and a
# table on stdout. Installs cargo-mutants from crates.io if missing.
set -uo pipefail
cd "$(dirname "$0")/.."

command -v cargo-mutants >/dev/null || cargo install --locked cargo-mutants

if [ $# -gt 0 ]; then
    files=("$@")
else
    files=(driver.rs leader.rs follower.rs candidate.rs progress.rs quorum.rs node.rs term_rules.rs)
fi
budget=${MUTANTS_BUDGET_SECS:-3000}
test_timeout=${MUTANTS_TIMEOUT:-30}

tests=(--lib --test scenarios --test transcripts)
[ -f raft-proto/tests/mutants_killed.rs ] && tests+=(--test mutants_killed)

# The scratch copies start from a built target/ (dependencies reused);
# later files skip the unmutated baseline run once one has passed.
baseline=run
start=$SECONDS
declare -A state
for f in "${files[@]}"; do
    f=${f#raft-proto/src/}
    left=$((budget - (SECONDS - start)))
    if [ "$left" -lt 120 ]; then
        state[$f]="not run (budget spent)"
        continue
    fi
    out=target/mutants/${f%.rs}
    rm -rf "$out"
    mkdir -p "$out"
    echo "== $f: at most ${left}s left ($(date +%T))"
    t0=$SECONDS
    timeout --signal=INT --kill-after=60 "$left" \
        nice cargo mutants -p raft-proto -f "raft-proto/src/$f" \
        --no-shuffle --copy-target=true --baseline="$baseline" \
        --timeout "$test_timeout" --build-timeout 600 \
        --output "$out" -- "${tests[@]}"
    rc=$?
    # 0: all caught, 2: some missed, 3: some timed out (cargo-mutants);
    # 124 or 130: the budget ran out (interrupted).
    case $rc in
    0 | 2 | 3) state[$f]="done in $((SECONDS - t0))s"; baseline=skip ;;
    124 | 130 | 137) state[$f]="interrupted after $((SECONDS - t0))s (budget spent)" ;;
    4) state[$f]="baseline failed: the tests fail unmutated"; break ;;
    *) state[$f]="cargo-mutants failed (exit $rc)" ;;
    esac
done

count() { [ -f "$1" ] && wc -l <"$1" | tr -d ' ' || echo 0; }
printf '\n%-14s %7s %7s %7s %9s %9s  %s\n' file caught missed timeout unviable total status
for f in "${files[@]}"; do
    f=${f#raft-proto/src/}
    d=target/mutants/${f%.rs}/mutants.out
    c=$(count "$d/caught.txt")
    m=$(count "$d/missed.txt")
    t=$(count "$d/timeout.txt")
    u=$(count "$d/unviable.txt")
    printf '%-14s %7s %7s %7s %9s %9s  %s\n' "$f" "$c" "$m" "$t" "$u" \
        "$((c + m + t + u))" "${state[$f]:-not run}"
done
echo "wall time: $((SECONDS - start))s; missed mutants:"
cat target/mutants/*/mutants.out/missed.txt 2>/dev/null || true
