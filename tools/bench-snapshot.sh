#!/usr/bin/env bash
# Snapshots and log compaction on a real 3-member cluster (issue 9), with
# the default thresholds (a snapshot every 50,000 entries, 5,000 trailing):
#
#   A. memory and disk at rest after WRITES 100-byte SETs over 10,000 keys;
#   B. restart time of a member after those writes (to caught up);
#   C. catch-up of a member stopped while CATCHUP more writes went in;
#   D. a store of BIG_KEYS distinct keys (redis-cli --pipe): snapshot time
#      and size, event-loop stalls and elections while it is snapshotted
#      under light load.
#
#   cargo build --release -p raft-server -p tools && tools/bench-snapshot.sh
#
# Environment: RAFT_NODE, RAFT_LOAD (binaries), WRITES (1000000),
# CATCHUP (200000), BIG_KEYS (1000000), PHASES (ABCD: the phases to run,
# e.g. PHASES=D for the large store alone), KEEP_DATA=1 keeps the temp dir.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=tools/lib.sh
source tools/lib.sh
export LC_ALL=C
BIN=${RAFT_NODE:-target/release/raft-node}
LOAD=${RAFT_LOAD:-target/release/raft-load}
WRITES=${WRITES:-1000000}
CATCHUP=${CATCHUP:-200000}
BIG_KEYS=${BIG_KEYS:-1000000}
PHASES=${PHASES:-ABCD}
phase() { [[ $PHASES == *"$1"* ]]; }
N=3
for b in "$BIN" "$LOAD"; do
    [ -x "$b" ] || { echo "$b not built: cargo build --release -p raft-server -p tools" >&2; exit 1; }
done

TMP=$(mktemp -d "${TMPDIR:-/tmp}/raft-snapbench.XXXXXX")
declare -A PID
cleanup() {
    local status=$? i
    trap - EXIT INT TERM
    for i in "${!PID[@]}"; do kill -TERM "${PID[$i]}" 2>/dev/null || true; done
    for i in "${!PID[@]}"; do wait "${PID[$i]}" 2>/dev/null || true; done
    if [ "$status" -ne 0 ]; then
        for i in $(seq 1 $N); do
            echo "--- last lines of node $i's log:" >&2
            tail -n 5 "$TMP/node$i.log" >&2 2>/dev/null || true
        done
    fi
    if [ "${KEEP_DATA:-0}" = 1 ]; then echo "kept $TMP" >&2; else rm -rf "$TMP"; fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

BASE=$((20000 + RANDOM % 40000))
host() { echo "127.0.0.$1"; }
peer_port() { echo $((BASE + $1 - 1)); }
client_port() { echo $((BASE + N + $1 - 1)); }
# INFO raft of member I: redis-cli when installed (resp_to waits up to a
# second for the connection to end, which would blur the timings).
if command -v redis-cli >/dev/null; then
    info() { redis-cli -h "$(host "$1")" -p "$(client_port "$1")" INFO raft 2>/dev/null; }
else
    info() { resp_to "$(host "$1")" "$(client_port "$1")" INFO raft; }
fi
num() { local v; v=$(info "$1" | field "$2"); echo "${v:-0}"; }

CONF=$TMP/cluster.toml
make_secret "$TMP/cluster.secret"
{
    echo 'secret_file = "cluster.secret"'
    for i in $(seq 1 $N); do
        printf '\n[[node]]\nid = %d\npeer_addr = "%s:%d"\nclient_addr = "%s:%d"\n' \
            "$i" "$(host "$i")" "$(peer_port "$i")" "$(host "$i")" "$(client_port "$i")"
    done
} >"$CONF"

start() {
    mkdir -p "$TMP/node$1"
    "$BIN" --config "$CONF" --id "$1" --data-dir "$TMP/node$1" >>"$TMP/node$1.log" 2>&1 </dev/null &
    PID[$1]=$!
}
stop() {
    kill -TERM "${PID[$1]}"
    wait "${PID[$1]}" 2>/dev/null || true
    unset "PID[$1]"
}
leader() {
    local deadline=$((SECONDS + 15)) i
    while [ $SECONDS -lt $deadline ]; do
        for i in "${!PID[@]}"; do
            [ "$(num "$i" raft_role)" = leader ] && { echo "$i"; return 0; }
        done
        sleep 0.2
    done
    echo "no leader within 15 s" >&2
    return 1
}
addrs() {
    local i a=""
    for i in "${!PID[@]}"; do a+="${a:+,}$(host "$i"):$(client_port "$i")"; done
    echo "$a"
}
# write_until TOTAL KEYS: SETs (64 clients, 8 pipelined each) until the
# leader's commit index has grown by TOTAL; prints the seconds it took.
write_until() {
    local total=$1 keys=$2 l start target t0
    l=$(leader)
    start=$(num "$l" raft_commit_index)
    target=$((start + total))
    t0=$(date +%s.%N)
    while [ "$(num "$l" raft_commit_index)" -lt "$target" ]; do
        "$LOAD" --addr "$(addrs)" --clients 64 --pipeline 8 --keys "$keys" --duration-secs 5 --json >/dev/null
        l=$(leader)
    done
    echo "$(date +%s.%N) - $t0" | bc
}
# wait_applied I INDEX: seconds until member I applied INDEX (or 120 s).
wait_applied() {
    local t0 deadline=$((SECONDS + 120))
    t0=$(date +%s.%N)
    while [ "$(num "$1" raft_last_applied)" -lt "$2" ]; do
        [ $SECONDS -lt $deadline ] || { echo "member $1 did not reach $2" >&2; return 1; }
        sleep 0.02
    done
    echo "$(date +%s.%N) - $t0" | bc
}
rss_mb() { echo "scale=1; $(ps -o rss= -p "${PID[$1]}") / 1024" | bc; }
dir_mb() { echo "scale=1; $(du -sb "$TMP/node$1" | cut -f1) / 1048576" | bc; }

for i in $(seq 1 $N); do start "$i"; done
L=$(leader)
F=$((L % N + 1))
echo "cluster of $N on 127.0.0.1-3, base port $BASE, data in $TMP; leader $L"

# --- A: at rest after WRITES writes over 10k keys ---------------------------
if phase A; then
secs=$(write_until "$WRITES" 10000)
sleep 3
echo
echo "A. $WRITES SETs of 100 bytes over 10,000 keys in ${secs} s; at rest:"
for i in $(seq 1 $N); do
    printf '   member %d: RSS %s MB, data dir %s MB (snapshot %s B at %s, log %s B from index %s, %s segments)\n' \
        "$i" "$(rss_mb "$i")" "$(dir_mb "$i")" "$(num "$i" raft_snapshot_bytes)" "$(num "$i" raft_snapshot_index)" \
        "$(num "$i" raft_log_bytes)" "$(num "$i" raft_log_first_index)" "$(num "$i" raft_log_segments)"
done
fi

# --- B: restart time ----------------------------------------------------------
if phase B; then
commit=$(num "$L" raft_commit_index)
stop "$F"
t0=$(date +%s.%N)
start "$F"
while ! info "$F" | grep -q raft_role; do sleep 0.01; done
up=$(echo "$(date +%s.%N) - $t0" | bc)
caught=$(wait_applied "$F" "$commit")
echo
echo "B. restart of member $F after $commit entries: serving INFO after ${up} s, applied everything after another ${caught} s"
grep "started from the snapshot" "$TMP/node$F.log" | tail -1 | sed 's/^/   /'
fi

# --- C: catch-up after CATCHUP writes missed ----------------------------------
if phase C; then
stop "$F"
secs=$(write_until "$CATCHUP" 10000)
commit=$(num "$L" raft_commit_index)
installs=$(num "$L" raft_snapshots_sent)
t0=$(date +%s.%N)
start "$F"
caught=$(wait_applied "$F" "$commit")
echo
echo "C. member $F stopped while $CATCHUP SETs went in (${secs} s): caught up ${caught} s after its start" \
    "(snapshot transfers from the leader: $(( $(num "$L" raft_snapshots_sent) - installs )))"
grep "installed the leader's snapshot" "$TMP/node$F.log" | tail -1 | sed 's/^/   /'
fi

# --- D: a store of BIG_KEYS keys ----------------------------------------------
phase D || exit 0
# D1: fill the store with BIG_KEYS distinct keys, piped straight to the leader.
L=$(leader)
t0=$(date +%s.%N)
awk -v n="$BIG_KEYS" 'BEGIN { v = sprintf("%0100d", 7); for (i = 0; i < n; i++) printf "*3\r\n$3\r\nSET\r\n$%d\r\nkey:%d\r\n$100\r\n%s\r\n", length("key:" i), i, v }' |
    redis-cli -h "$(host "$L")" -p "$(client_port "$L")" --pipe >"$TMP/pipe.out" 2>&1 || { cat "$TMP/pipe.out" >&2; exit 1; }
secs=$(echo "$(date +%s.%N) - $t0" | bc)
keys=$(resp_to "$(host "$L")" "$(client_port "$L")" INFO keyspace | tr -d '\r' | sed -n 's/^db0:keys=\([0-9]*\).*/\1/p')
echo
echo "D. $BIG_KEYS SETs of distinct keys piped to the leader in ${secs} s ($(tail -1 "$TMP/pipe.out")); keys in the store: $keys"
sleep 2
# D2: with the store full, light load (4 clients) until every member took at
# least two more snapshots of it; stalls and elections counted over that
# window only.
declare -A TURNS0 TAKEN0 LINES0
el0=0
for i in $(seq 1 $N); do
    LINES0[$i]=$(wc -l <"$TMP/node$i.log")
    el0=$((el0 + $(num "$i" raft_elections_started)))
    TURNS0[$i]=$(num "$i" raft_loop_turns_over_heartbeat)
    TAKEN0[$i]=$(num "$i" raft_snapshots_taken)
done
deadline=$((SECONDS + 300))
while :; do
    done_all=1
    for i in $(seq 1 $N); do
        [ "$(num "$i" raft_snapshots_taken)" -ge $((TAKEN0[$i] + 2)) ] || done_all=0
    done
    [ $done_all = 1 ] && break
    [ $SECONDS -lt $deadline ] || { echo "no snapshots within 300 s" >&2; exit 1; }
    "$LOAD" --addr "$(addrs)" --clients 4 --keys 10000 --duration-secs 5 --json >/dev/null
done
el1=0
for i in $(seq 1 $N); do el1=$((el1 + $(num "$i" raft_elections_started))); done
for i in $(seq 1 $N); do
    printf '   member %d: last snapshot %s ms for %s B; event-loop turns over a heartbeat (50 ms) meanwhile: %s; longest turn since start %s ms; RSS %s MB\n' \
        "$i" "$(num "$i" raft_last_snapshot_ms)" "$(num "$i" raft_snapshot_bytes)" \
        "$(( $(num "$i" raft_loop_turns_over_heartbeat) - TURNS0[$i] ))" "$(num "$i" raft_loop_turn_max_ms)" "$(rss_mb "$i")"
done
echo "   elections started while the $keys-key snapshots were taken under light load: $((el1 - el0))"
# The members' own account of the slow turns in that window (rate-limited:
# at most one line per member every 10 s).
for i in $(seq 1 $N); do
    tail -n +$((LINES0[$i] + 1)) "$TMP/node$i.log" | grep "slow event-loop turn" | sed "s/^/   member $i: /" || true
done
