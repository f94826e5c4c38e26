#!/usr/bin/env bash
# Benchmarks a real 3-member raft-node cluster on 127.0.0.1/.2/.3 with
# raft-load: SET with 1, 16 and 64 clients, GET with 16 and 64 clients (and
# 64 with READONLY), then the idle CPU and RSS of the leader and a follower.
# For each SET run it also prints where a write's time goes (raft-load's
# latency beside the members' append-to-commit, append-to-durable and
# fdatasync histograms) and where its cost goes on the leader and
# a follower: CPU per write (utime + stime of every thread, /proc/PID/stat),
# disk bytes per write (/proc/PID/io write_bytes), fsyncs and peer messages
# per write (the members' metrics), and with SYSCALLS=1 the system calls per
# write by name (perf stat on syscall tracepoints), also
# during the idle window (wake-ups: epoll_wait calls per second).
# When a redis-server binary is on the PATH, the same raft-load workloads then
# run against one redis-server without persistence on 127.0.0.1 (a ceiling
# for the RESP path on this machine), and the summary puts both side by side
# with raft-node's share of it. Prints markdown table rows at the end, ready
# for docs/numbers.md. The idle window is followed by raft-idle-floor (three bare processes
# exchanging heartbeats of the same shape) as the floor for those figures.
#
#   cargo build --release -p raft-server -p tools && tools/bench-server.sh
#
# Builds nothing. Environment:
#   RAFT_NODE   raft-node binary      (target/release/raft-node)
#   RAFT_LOAD   raft-load binary      (target/release/raft-load)
#   RAFT_IDLE_FLOOR  raft-idle-floor binary (target/release/raft-idle-floor);
#               when built, the idle figures get the floor of bare heartbeat
#               traffic measured beside them
#   BENCH_SECS  seconds per load run  (10)
#   IDLE_SECS   idle measurement      (30)
#   VALUE_SIZE  bytes per value       (100)
#   KEYS        distinct keys         (10000)
#   SYSCALLS    1: count system calls with perf during SET runs and at rest
#               (perf must be able to attach; adds a little CPU per syscall)
#   REDIS       0: skip the redis-server comparison even if one is installed
#   KEEP_DATA   1: keep the temp dir (data and node logs) instead of removing it;
#               without it the dir is removed on success and failure alike,
#               after a failure's last node log lines are printed
#
# Ports are chosen at random above 20000 and checked to be free, so this does
# not collide with `make cluster` (7001-7003/6401-6403/9401-9403).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=tools/lib.sh
source tools/lib.sh
export LC_ALL=C
BIN=${RAFT_NODE:-target/release/raft-node}
LOAD=${RAFT_LOAD:-target/release/raft-load}
FLOOR=${RAFT_IDLE_FLOOR:-target/release/raft-idle-floor}
BENCH_SECS=${BENCH_SECS:-10}
IDLE_SECS=${IDLE_SECS:-30}
VALUE_SIZE=${VALUE_SIZE:-100}
KEYS=${KEYS:-10000}
N=3
# The members' heartbeat interval (raft-node's default), also the floor's.
HEARTBEAT_MS=50

for b in "$BIN" "$LOAD"; do
    [ -x "$b" ] || { echo "$b not built: cargo build --release -p raft-server -p tools (or set RAFT_NODE / RAFT_LOAD)" >&2; exit 1; }
done

TMP=$(mktemp -d "${TMPDIR:-/tmp}/raft-bench.XXXXXX")
PIDS=()

cleanup() {
    local status=$? i pid t
    trap - EXIT INT TERM
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for i in "${!PIDS[@]}"; do
        pid=${PIDS[$i]}
        t=0
        while kill -0 "$pid" 2>/dev/null && [ $t -lt 50 ]; do sleep 0.1; t=$((t + 1)); done
        if kill -0 "$pid" 2>/dev/null; then
            echo "node $((i + 1)) (pid $pid) ignored SIGTERM for 5 s; sending SIGKILL" >&2
            kill -KILL "$pid" 2>/dev/null || true
        fi
        wait "$pid" 2>/dev/null || true
    done
    if [ "$status" -ne 0 ]; then
        for i in "${!PIDS[@]}"; do
            echo "--- last lines of node $((i + 1))'s log:" >&2
            tail -n 5 "$TMP/node$((i + 1)).log" >&2 2>/dev/null || true
        done
    fi
    if [ "${KEEP_DATA:-0}" = 1 ]; then
        echo "data and node logs kept in $TMP" >&2
    else
        rm -rf "$TMP"
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- ports -----------------------------------------------------------------

port_free() { [ -z "$(ss -Htan "( sport = :$1 )" 2>/dev/null)" ]; }

# Nine consecutive free ports from a random base: peer, client and metrics
# for each member.
pick_base() {
    local try base p ok
    for try in $(seq 1 50); do
        base=$((20000 + RANDOM % 40000))
        ok=1
        for p in $(seq "$base" $((base + 3 * N - 1))); do
            port_free "$p" || { ok=0; break; }
        done
        [ $ok = 1 ] && { echo "$base"; return 0; }
    done
    echo "no 9 free consecutive ports found" >&2
    return 1
}
BASE=$(pick_base)
host() { echo "127.0.0.$1"; }
peer_port() { echo $((BASE + $1 - 1)); }
client_port() { echo $((BASE + N + $1 - 1)); }
metrics_port() { echo $((BASE + 2 * N + $1 - 1)); }

# --- talking to members ----------------------------------------------------

# resp I ARGS...: one RESP command to member I; prints a simple/error reply's
# line or a bulk reply's body. No redis-cli needed.
resp() {
    local i=$1 fd line n body req a
    shift
    req="*$#"$'\r\n'
    for a in "$@"; do req+="\$${#a}"$'\r\n'"$a"$'\r\n'; done
    exec {fd}<>"/dev/tcp/$(host "$i")/$(client_port "$i")" 2>/dev/null || return 1
    printf '%s' "$req" >&"$fd"
    if IFS= read -r -t 2 line <&"$fd"; then
        line=${line%$'\r'}
        if [ "${line:0:1}" = '$' ] && [ "${line:1}" -ge 0 ] 2>/dev/null; then
            n=${line:1}
            IFS= read -r -d '' -N "$n" -t 2 body <&"$fd" || true
            printf '%s\n' "$body"
        else
            printf '%s\n' "$line"
        fi
    fi
    exec {fd}>&-
}


# metrics I: the Prometheus text of member I.
metrics() {
    local i=$1 fd
    exec {fd}<>"/dev/tcp/$(host "$i")/$(metrics_port "$i")" 2>/dev/null || return 1
    printf 'GET /metrics HTTP/1.0\r\nHost: bench\r\n\r\n' >&"$fd"
    timeout 3 cat <&"$fd" || true
    exec {fd}>&-
}

# fsync_counters I: "fsyncs entries seconds writes_ok messages_sent
# messages_received" of member I.
fsync_counters() {
    metrics "$1" | tr -d '\r' | awk '
        $1 == "raft_fsyncs_total" { f = $2 }
        $1 == "raft_entries_persisted_total" { e = $2 }
        $1 == "raft_fsync_seconds_sum" { s = $2 }
        $1 == "raft_writes_ok_total" { w = $2 }
        $1 == "raft_messages_sent_total" { ms = $2 }
        $1 == "raft_messages_received_total" { mr = $2 }
        END { print f + 0, e + 0, s + 0, w + 0, ms + 0, mr + 0 }'
}

# lag_buckets I: "name le count" of member I's latency histograms (the
# append-to-apply and append-to-durable lags and the fdatasync alone).
lag_buckets() {
    metrics "$1" | tr -d '\r' |
        sed -n 's/^raft_\(apply_lag\|durable_lag\|fsync\)_seconds_bucket{le="\([^"]*\)"} \(.*\)$/\1 \2 \3/p'
}

# lag_quantiles BEFORE AFTER NAME: "p50 / p99" in ms of histogram NAME over
# what was observed between two lag_buckets outputs, interpolated linearly
# within a bucket.
lag_quantiles() {
    { sed 's/^/B /' <<<"$1"; sed 's/^/A /' <<<"$2"; } | awk -v n="$3" '
        $1 == "B" && $2 == n { b[$3] = $4 }
        $1 == "A" && $2 == n { le[++k] = $3; c[k] = $4 - b[$3] }
        END {
            if (k == 0 || c[k] <= 0) { print "- / -"; exit }
            for (j = 1; j <= 2; j++) {
                want = (j == 1 ? 0.5 : 0.99) * c[k]; lo = 0; below = 0; v = 0
                for (x = 1; x <= k; x++) {
                    if (c[x] >= want) {
                        v = (le[x] == "+Inf") ? lo : lo + (want - below) / (c[x] - below) * (le[x] - lo)
                        break
                    }
                    lo = le[x]; below = c[x]
                }
                printf "%s%.2f", (j == 1 ? "" : " / "), v * 1000
            }
            print ""
        }'
}

# --- start -----------------------------------------------------------------

CONF=$TMP/cluster.toml
make_secret "$TMP/cluster.secret"
{
    echo "# Generated by tools/bench-server.sh."
    echo "heartbeat_ms = $HEARTBEAT_MS"
    echo "election_timeout_ms = [300, 600]"
    echo 'secret_file = "cluster.secret"'
    for i in $(seq 1 $N); do
        printf '\n[[node]]\nid = %d\npeer_addr = "%s:%d"\nclient_addr = "%s:%d"\nmetrics_addr = "%s:%d"\n' \
            "$i" "$(host "$i")" "$(peer_port "$i")" "$(host "$i")" "$(client_port "$i")" "$(host "$i")" "$(metrics_port "$i")"
    done
} >"$CONF"

ADDRS=""
for i in $(seq 1 $N); do
    mkdir -p "$TMP/node$i"
    "$BIN" --config "$CONF" --id "$i" --data-dir "$TMP/node$i" >"$TMP/node$i.log" 2>&1 </dev/null &
    PIDS+=($!)
    ADDRS+="${ADDRS:+,}$(host "$i"):$(client_port "$i")"
done
echo "cluster: $N members, client addresses $ADDRS, data in $TMP"
echo "binary: $BIN ($(stat -c %y "$BIN" | cut -d. -f1)); $(nproc) CPUs; data dir on $(df -P "$TMP" | awk 'NR==2 {print $1}') ($(stat -f -c %T "$TMP"))"

# wait_leader: sets LEADER once one member is leader and every member knows it.
wait_leader() {
    local deadline=$((SECONDS + 15)) i info role lid agree
    while [ $SECONDS -lt $deadline ]; do
        LEADER=""
        agree=0
        for i in $(seq 1 $N); do
            kill -0 "${PIDS[$((i - 1))]}" 2>/dev/null || { echo "node $i exited:" >&2; tail -5 "$TMP/node$i.log" >&2; return 1; }
            info=$(resp "$i" INFO raft 2>/dev/null || true)
            role=$(field raft_role <<<"$info")
            lid=$(field raft_leader_id <<<"$info")
            [ "$role" = leader ] && LEADER=$i
            [ -n "$lid" ] && [ "$lid" != 0 ] && agree=$((agree + 1))
        done
        [ -n "$LEADER" ] && [ $agree = $N ] && return 0
        sleep 0.2
    done
    echo "no leader known to all members within 15 s; logs:" >&2
    tail -n 5 "$TMP"/node*.log >&2
    return 1
}
wait_leader
FOLLOWER=$((LEADER % N + 1))
echo "leader: node $LEADER; follower measured: node $FOLLOWER"
echo

# --- per-process counters ----------------------------------------------------

CLK_TCK=$(getconf CLK_TCK)
# cpu_ticks PID: utime + stime of all the process's threads in clock ticks
# (fields 14 and 15 of stat; the command name in field 2 is skipped by
# cutting at its closing parenthesis).
cpu_ticks() {
    local s rest
    s=$(<"/proc/$1/stat")
    rest=${s##*) }
    # shellcheck disable=SC2086
    set -- $rest
    echo $((${12} + ${13}))
}
# cpu_ns PID: time on CPU in ns of every thread (schedstat; finer than ticks).
cpu_ns() { cat /proc/"$1"/task/*/schedstat 2>/dev/null | awk '{ s += $1 } END { printf "%.0f\n", s }'; }
status_kb() { awk -v k="$2:" '$1 == k { print $2 }' "/proc/$1/status"; }
ctxsw() { echo $(($(status_kb "$1" voluntary_ctxt_switches) + $(status_kb "$1" nonvoluntary_ctxt_switches))); }
# io_write_bytes PID: bytes the process caused to be sent to the block layer.
io_write_bytes() { awk '$1 == "write_bytes:" { print $2 }' "/proc/$1/io"; }

# System calls by name (SYSCALLS=1): perf stat counts each syscall tracepoint
# of a process, its helper threads included, until SIGINT.
SYSCALLS=${SYSCALLS:-0}
if [ "$SYSCALLS" = 1 ] && ! perf stat -e 'syscalls:sys_enter_getpid' -- true >/dev/null 2>&1; then
    echo "SYSCALLS=1 but perf cannot count syscall tracepoints here; not counting" >&2
    SYSCALLS=0
fi
# Every syscall counts in raw_syscalls:sys_enter; the names are the ones the
# loop and its helper threads make. All 360-odd syscalls:sys_enter_* events
# at once cost the members more than half their SET throughput here.
PERF_EVENTS=raw_syscalls:sys_enter
for s in recvfrom sendto read write writev epoll_wait futex fdatasync close openat; do
    PERF_EVENTS+=",syscalls:sys_enter_$s"
done
declare -A PERF_PID
perf_start() { # perf_start PID FILE
    [ "$SYSCALLS" = 1 ] || return 0
    perf stat -x, -e "$PERF_EVENTS" -p "$1" -o "$2" >/dev/null 2>&1 &
    PERF_PID[$1]=$!
}
perf_stop() { # perf_stop PID
    [ "$SYSCALLS" = 1 ] || return 0
    kill -INT "${PERF_PID[$1]}" 2>/dev/null || true
    wait "${PERF_PID[$1]}" 2>/dev/null || true
}
# syscalls_summary FILE DIVISOR: the total and the most frequent syscalls,
# each divided by DIVISOR ("12.3 (write 4.1, ...)").
syscalls_summary() {
    awk -F, -v d="$2" '
        $1 ~ /^[0-9]+$/ && $3 == "raw_syscalls:sys_enter" { t = $1; next }
        $1 ~ /^[0-9]+$/ && $1 > 0 { n = $3; sub(/.*sys_enter_/, "", n); c[n] = $1 }
        END {
            if (d <= 0 || t == 0) { print "-"; exit }
            out = sprintf("%.1f (", t / d); sep = ""
            for (k = 0; k < 6; k++) {
                best = ""; for (n in c) if (best == "" || c[n] > c[best]) best = n
                if (best == "" || c[best] / d < 0.05) break
                out = out sprintf("%s%s %.2f", sep, best, c[best] / d); sep = ", "; delete c[best]
            }
            print out ")"
        }' "$1"
}

# --- load ------------------------------------------------------------------

ROWS=()
WROWS=()
LROWS=()
declare -A OPSPS
jf() { sed -n "s/.*\"$1\":\([^,}]*\).*/\1/p"; }

# run_load TARGET OP CLIENTS [EXTRA]: one raft-load run against TARGET ("raft":
# the cluster, "redis": the reference redis-server); prints its line and, for
# the cluster, the leader's group commit figures, and adds a table row. SET
# runs on the cluster also add the leader's and a follower's write-path rows.
run_load() {
    local target=$1 op=$2 clients=$3 extra=${4:-} addrs before after json ops opsps p50 p99 err fs ent sec per ms label=$2
    local c0 c1 w p i m lb0 lb1 fb0 fb1
    local -a c
    local -A T0 B0 T1 B1
    [ -n "$extra" ] && label="$op $extra"
    addrs=$ADDRS
    [ "$target" = redis ] && addrs=127.0.0.1:$REDIS_PORT
    if [ "$target" = raft ]; then
        before=$(fsync_counters "$LEADER")
        c0=$(fsync_counters "$FOLLOWER")
        lb0=$(lag_buckets "$LEADER")
        fb0=$(lag_buckets "$FOLLOWER")
        for p in "$LPID" "$FPID"; do T0[$p]=$(cpu_ticks "$p") B0[$p]=$(io_write_bytes "$p"); done
        if [ "$op" = set ] && [ "$clients" != 1 ]; then
            for p in "$LPID" "$FPID"; do perf_start "$p" "$TMP/perf.$p.$clients"; done
        fi
    fi
    # shellcheck disable=SC2086
    if ! json=$("$LOAD" --addr "$addrs" --clients "$clients" --duration-secs "$BENCH_SECS" \
        --op "$op" --value-size "$VALUE_SIZE" --keys "$KEYS" --json ${extra:+--$extra}); then
        echo "$target $op clients=$clients: raft-load failed: $json"
        [ "$target" = raft ] && ROWS+=("| $op ${VALUE_SIZE} B | $clients | failed | | | | | |")
        for p in "${!PERF_PID[@]}"; do perf_stop "$p"; done
        PERF_PID=()
        return 0
    fi
    opsps=$(jf ops_per_sec <<<"$json"); ops=$(jf ops <<<"$json")
    p50=$(jf p50_ms <<<"$json"); p99=$(jf p99_ms <<<"$json"); err=$(jf errors <<<"$json")
    OPSPS["$target $label $clients"]=$opsps
    if [ "$target" = redis ]; then
        printf 'redis-server %s clients=%s value=%sB: %.0f ops/s, p50 %.2f ms, p99 %.2f ms, errors %s\n' \
            "$label" "$clients" "$VALUE_SIZE" "$opsps" "$p50" "$p99" "$err"
        return 0
    fi
    for p in "${!PERF_PID[@]}"; do perf_stop "$p"; done
    for p in "$LPID" "$FPID"; do T1[$p]=$(cpu_ticks "$p") B1[$p]=$(io_write_bytes "$p"); done
    after=$(fsync_counters "$LEADER")
    c1=$(fsync_counters "$FOLLOWER")
    lb1=$(lag_buckets "$LEADER")
    fb1=$(lag_buckets "$FOLLOWER")
    read -r fs ent sec w <<<"$(paste -d' ' <(echo "$before") <(echo "$after") |
        awk '{ print $7 - $1, $8 - $2, $9 - $3, $10 - $4 }')"
    per=$(awk -v e="$ent" -v f="$fs" 'BEGIN { if (f > 0) printf "%.1f", e / f; else print "-" }')
    ms=$(awk -v s="$sec" -v f="$fs" 'BEGIN { if (f > 0) printf "%.2f", s * 1000 / f; else print "-" }')
    local note="leader: $fs fsyncs, $per entries/fsync, $ms ms/fsync"
    if [ "$op" != set ]; then
        # The counters span raft-load's unmeasured SET phase that writes the
        # keys first, so they say nothing about the measured GETs.
        note="leader, including the key-writing phase: $fs fsyncs, $ent entries"
        per="n/a" ms="n/a"
    fi
    printf '%s clients=%s value=%sB: %.0f ops/s, p50 %.2f ms, p99 %.2f ms, errors %s  (%s ops; %s)\n' \
        "$label" "$clients" "$VALUE_SIZE" "$opsps" "$p50" "$p99" "$err" "$ops" "$note"
    if [ "$err" != 0 ]; then
        echo "  errors seen: $(sed -n 's/.*"error_samples":\(.*\)}$/\1/p' <<<"$json")"
    fi
    ROWS+=("$(printf '| %s %s B | %s | %.0f | %.2f | %.2f | %s | %s | %s |' \
        "$(tr a-z A-Z <<<"$label")" "$VALUE_SIZE" "$clients" "$opsps" "$p50" "$p99" "$err" "$per" "$ms")")
    [ "$op" = set ] && [ "$w" -gt 0 ] || return 0
    # Where a write's time goes: raft-load's latency beside the leader's
    # append-to-commit (apply) and append-to-durable lags, its fdatasync,
    # and the follower's durable lag and fdatasync.
    LROWS+=("$(printf '| %s | %.2f / %.2f | %s | %s | %s | %s | %s |' "$clients" "$p50" "$p99" \
        "$(lag_quantiles "$lb0" "$lb1" apply_lag)" "$(lag_quantiles "$lb0" "$lb1" durable_lag)" \
        "$(lag_quantiles "$lb0" "$lb1" fsync)" "$(lag_quantiles "$fb0" "$fb1" durable_lag)" \
        "$(lag_quantiles "$fb0" "$fb1" fsync)")")
    # Where a write's cost goes, per member: every figure is a delta over
    # the run divided by the writes the leader acknowledged in it.
    for p in "$LPID" "$FPID"; do
        if [ "$p" = "$LPID" ]; then m=leader i=$LEADER c=("$before" "$after")
        else m=follower i=$FOLLOWER c=("$c0" "$c1"); fi
        local row sc="-"
        [ -s "$TMP/perf.$p.$clients" ] && sc=$(syscalls_summary "$TMP/perf.$p.$clients" "$w")
        row=$(paste -d' ' <(echo "${c[0]}") <(echo "${c[1]}") | awk \
            -v w="$w" -v t=$((T1[$p] - T0[$p])) -v hz="$CLK_TCK" -v b=$((B1[$p] - B0[$p])) \
            -v cl="$clients" -v m="$m" -v sc="$sc" '{
                f = $7 - $1; e = $8 - $2; ms = $11 - $5; mr = $12 - $6
                printf "| SET %d | %s | %.1f | %s | %.3f | %s | %.0f | %.2f / %.2f |", cl, m, t / hz * 1e6 / w, sc, f / w,
                    (f > 0 ? sprintf("%.1f", e / f) : "-"), b / w, ms / w, mr / w }')
        WROWS+=("$row")
    done
}

LPID=${PIDS[$((LEADER - 1))]}
FPID=${PIDS[$((FOLLOWER - 1))]}
echo "load: ${BENCH_SECS} s per run, ${VALUE_SIZE} B values, ${KEYS} keys, every client on its own connection"
run_load raft set 1
run_load raft set 16
run_load raft set 64
run_load raft get 16
run_load raft get 64
# READONLY: followers serve reads with a read index from the leader.
run_load raft get 64 readonly
echo

# --- idle ------------------------------------------------------------------

sleep 1 # let the last replies and appends drain
declare -A T0 NS0 CS0 FS0 MEMBER=(["$LPID"]=$LEADER ["$FPID"]=$FOLLOWER)
# The metrics scrape is done outside the CPU window: it costs the member work.
for p in "$LPID" "$FPID"; do FS0[$p]=$(fsync_counters "${MEMBER[$p]}" | cut -d' ' -f1); done
for p in "$LPID" "$FPID"; do perf_start "$p" "$TMP/perf.$p.idle"; done
for p in "$LPID" "$FPID"; do T0[$p]=$(cpu_ticks "$p") NS0[$p]=$(cpu_ns "$p") CS0[$p]=$(ctxsw "$p"); done
sleep "$IDLE_SECS"
declare -A CPU CPUNS RSS DETAIL
declare -A T1 NS1 CS1
for p in "$LPID" "$FPID"; do T1[$p]=$(cpu_ticks "$p") NS1[$p]=$(cpu_ns "$p") CS1[$p]=$(ctxsw "$p"); done
for p in "$LPID" "$FPID"; do perf_stop "$p"; done
for p in "$LPID" "$FPID"; do
    ticks=$((T1[$p] - T0[$p]))
    ns=$((NS1[$p] - NS0[$p]))
    cs=$((CS1[$p] - CS0[$p]))
    fs=$(($(fsync_counters "${MEMBER[$p]}" | cut -d' ' -f1) - FS0[$p]))
    CPU[$p]=$(awk -v t="$ticks" -v hz="$CLK_TCK" -v s="$IDLE_SECS" 'BEGIN { printf "%.2f", t / hz / s * 100 }')
    CPUNS[$p]=$(awk -v ns="$ns" -v s="$IDLE_SECS" 'BEGIN { printf "%.3f", ns / 1e9 / s * 100 }')
    RSS[$p]=$(awk -v k="$(status_kb "$p" VmRSS)" 'BEGIN { printf "%.1f", k / 1024 }')
    DETAIL[$p]=$(awk -v t="$ticks" -v ns="$ns" -v cs="$cs" -v s="$IDLE_SECS" -v fs="$fs" \
        'BEGIN { printf "%d ticks, %.1f ms on CPU (%.3f%%), %.1f context switches/s, %d fsyncs", t, ns / 1e6, ns / 1e9 / s * 100, cs / s, fs }')
    if [ -s "$TMP/perf.$p.idle" ]; then
        DETAIL[$p]+="; syscalls per second: $(syscalls_summary "$TMP/perf.$p.idle" "$IDLE_SECS")"
    fi
done
echo "idle over $IDLE_SECS s: leader cpu ${CPU[$LPID]}% rss ${RSS[$LPID]} MB; follower cpu ${CPU[$FPID]}% rss ${RSS[$FPID]} MB"
echo "  leader:   ${DETAIL[$LPID]}"
echo "  follower: ${DETAIL[$FPID]}"
echo "  data dir after the run: leader $(du -sm "$TMP/node$LEADER" | cut -f1) MB, follower $(du -sm "$TMP/node$FOLLOWER" | cut -f1) MB"
# The floor: three bare processes doing only the heartbeat traffic of a
# cluster at rest (raft-idle-floor), over a window as long, in this run.
FLOOR_LINE=""
if [ -x "$FLOOR" ]; then
    FLOOR_LINE=$("$FLOOR" --secs "$IDLE_SECS" --heartbeat-ms "$HEARTBEAT_MS" --json) || { echo "raft-idle-floor failed" >&2; exit 1; }
    FLOOR_L=$(jf leader_cpu_pct <<<"$FLOOR_LINE")
    FLOOR_F=$(sed -n 's/.*"follower_cpu_pct":\[\([^],]*\).*/\1/p' <<<"$FLOOR_LINE")
    echo "  floor (raft-idle-floor, bare heartbeats of the same shape, same window): leader ${FLOOR_L}%, follower ${FLOOR_F}%;" \
        "raft-node at $(awk -v a="${CPUNS[$LPID]}" -v b="$FLOOR_L" 'BEGIN { printf "%.2f", a / b }')x and $(awk -v a="${CPUNS[$FPID]}" -v b="$FLOOR_F" 'BEGIN { printf "%.2f", a / b }')x of it"
fi
echo

# --- reference: redis-server without persistence -----------------------------

REDIS_PORT=""
if [ "${REDIS:-1}" != 0 ] && command -v redis-server >/dev/null; then
    for try in $(seq 1 50); do
        p=$((20000 + RANDOM % 40000))
        port_free "$p" && { REDIS_PORT=$p; break; }
    done
fi
if [ -n "$REDIS_PORT" ]; then
    mkdir -p "$TMP/redis"
    redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save '' --appendonly no \
        --dir "$TMP/redis" --daemonize no >"$TMP/redis.log" 2>&1 </dev/null &
    PIDS+=($!)
    up=0
    for try in $(seq 1 50); do
        sleep 0.1
        # The braces keep the failed connect's message off stderr without
        # redirecting the shell's stderr for good.
        if { exec {rfd}<>"/dev/tcp/127.0.0.1/$REDIS_PORT"; } 2>/dev/null; then
            printf 'PING\r\n' >&"$rfd"
            IFS= read -r -t 1 line <&"$rfd" && [ "${line%$'\r'}" = "+PONG" ] && up=1
            exec {rfd}>&-
        fi
        [ $up = 1 ] && break
    done
    if [ $up = 1 ]; then
        echo "reference: $(redis-server --version | cut -d' ' -f1-3) on 127.0.0.1:$REDIS_PORT, no persistence (--save '' --appendonly no)"
        run_load redis set 1
        run_load redis set 16
        run_load redis set 64
        run_load redis get 16
        run_load redis get 64
        echo
    else
        echo "redis-server did not answer PING on 127.0.0.1:$REDIS_PORT; no reference run" >&2
        REDIS_PORT=""
    fi
fi

# --- summary ---------------------------------------------------------------

echo "| workload | clients | ops/s | p50 ms | p99 ms | errors | entries/fsync | ms/fsync |"
echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
printf '%s\n' "${ROWS[@]}"
echo
if [ "${#WROWS[@]}" -gt 0 ]; then
    echo "Per write acknowledged by the leader, over each SET run:"
    echo "| load | member | CPU µs | syscalls (most frequent) | fsyncs | entries/fsync | disk bytes | peer msgs sent / received |"
    echo "| --- | --- | ---: | --- | ---: | ---: | ---: | ---: |"
    printf '%s\n' "${WROWS[@]}"
    echo
fi
if [ "${#LROWS[@]}" -gt 0 ]; then
    echo "Where a SET's time goes, p50 / p99 in ms (append: to this member's log; commit: the leader's answer goes out in the same turn):"
    echo "| clients | raft-load | leader append → commit | leader append → durable | leader fdatasync | follower append → durable | follower fdatasync |"
    echo "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    printf '%s\n' "${LROWS[@]}"
    echo
fi
if [ -n "$FLOOR_LINE" ]; then
    echo "| idle ${IDLE_SECS} s | CPU (schedstat) | floor (raft-idle-floor) | RSS |"
    echo "| --- | ---: | ---: | ---: |"
    echo "| leader | ${CPUNS[$LPID]}% | ${FLOOR_L}% | ${RSS[$LPID]} MB |"
    echo "| follower | ${CPUNS[$FPID]}% | ${FLOOR_F}% | ${RSS[$FPID]} MB |"
else
    echo "| idle ${IDLE_SECS} s | CPU | RSS |"
    echo "| --- | ---: | ---: |"
    echo "| leader | ${CPU[$LPID]}% | ${RSS[$LPID]} MB |"
    echo "| follower | ${CPU[$FPID]}% | ${RSS[$FPID]} MB |"
fi
if [ -n "$REDIS_PORT" ]; then
    echo
    echo "Same run, same raft-load workloads against redis-server without persistence:"
    echo "| workload | clients | raft-node ops/s | redis-server ops/s | raft-node / redis |"
    echo "| --- | ---: | ---: | ---: | ---: |"
    for k in "set 1" "set 16" "set 64" "get 16" "get 64"; do
        r=${OPSPS["raft $k"]:-} d=${OPSPS["redis $k"]:-}
        [ -n "$r" ] && [ -n "$d" ] || continue
        awk -v k="$k" -v r="$r" -v d="$d" 'BEGIN { split(k, a, " "); printf "| %s | %s | %.0f | %.0f | %.2f |\n", toupper(a[1]), a[2], r, d, r / d }'
    done
fi
