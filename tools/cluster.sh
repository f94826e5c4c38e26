#!/usr/bin/env bash
# make cluster / make stop: raft-node members on 127.0.0.1/.2/.3 (and more,
# added later).
#
#   tools/cluster.sh start    generate data/cluster.toml, start members 1-3 in
#                             the background (logs in data/nodeN/node.log, pid
#                             in data/nodeN.pid), wait for a leader
#   tools/cluster.sh stop     SIGTERM each member by pid file, wait for exit
#   tools/cluster.sh status   role and term of each member, the leader's
#                             view of the configuration
#   tools/cluster.sh add ID   start member ID (127.0.0.ID, ports 700ID,
#                             640ID, 940ID) with --join, add it as a learner,
#                             wait until it caught up, promote it to voter
#   tools/cluster.sh remove ID        RAFT.REMOVE ID, then stop member ID
#   tools/cluster.sh transfer [ID]    RAFT.TRANSFER [ID]
#   tools/cluster.sh rolling-restart  restart each member in turn, followers
#                             first, the leader last; each must be back and
#                             caught up before the next one goes
#
# Members are found from the cluster file and the pid files, so members
# added with `add` are covered by status, stop and rolling-restart. The
# cluster file only bootstraps the first configuration: each member's data
# dir remembers the configuration after that.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=tools/lib.sh
source tools/lib.sh
BIN=${RAFT_NODE:-target/release/raft-node}
DATA=${DATA:-data}
# Members started by `start` (the first configuration).
N=3
# Bounds of the waits, in seconds.
CATCH_UP_SECS=60
EXIT_SECS=10
ADMIN_SECS=60

die() { echo "cluster.sh: $*" >&2; exit 1; }
pidfile() { echo "$DATA/node$1.pid"; }
# Running: the pid exists and is not a zombie (a killed member may wait a
# while to be reaped when its parent script is gone).
alive() {
    local p
    p=$(cat "$(pidfile "$1")" 2>/dev/null) || return 1
    kill -0 "$p" 2>/dev/null && [ "$(awk '{print $3}' "/proc/$p/stat" 2>/dev/null)" != Z ]
}

# Member ids: those in the cluster file and those with a pid file, sorted.
ids() {
    {
        [ -f "$DATA/cluster.toml" ] && sed -n 's/^[ \t]*id[ \t]*=[ \t]*\([0-9]\+\).*/\1/p' "$DATA/cluster.toml"
        local f
        for f in "$DATA"/node*.pid; do
            [ -e "$f" ] || continue
            f=${f##*/node}; echo "${f%.pid}"
        done
    } | sort -nu
}
running() { local i; for i in $(ids); do alive "$i" && echo "$i"; done; return 0; }

# Sends one RESP command to member $1 (127.0.0.$1, port 6400+$1, as the
# cluster file says); prints the reply. resp_to is the raw reply after 1 s
# (start and status keep it); rcall the decoded one as soon as it is there.
resp() { local i=$1; shift; resp_to "127.0.0.$i" "$((6400 + i))" "$@"; }
rcall() { local i=$1; shift; resp_call "127.0.0.$i" "$((6400 + i))" "$@"; }

# The running member that says it leads (highest term); empty if none.
leader() {
    local i info best="" best_term=-1
    for i in $(running); do
        info=$(rcall "$i" INFO raft 2>/dev/null || true)
        if [ "$(field raft_role <<<"$info")" = leader ]; then
            local t; t=$(field raft_term <<<"$info")
            if [ "${t:-0}" -gt "$best_term" ]; then best=$i; best_term=$t; fi
        fi
    done
    echo "$best"
}

# admin RETRY_PATTERN CMD...: sends CMD to the leader, again while there is
# no leader, on MOVED/CLUSTERDOWN and on errors matching RETRY_PATTERN (an
# extended regex), for ADMIN_SECS at most. Prints the reply; fails on any
# other error.
admin() {
    local retry=$1; shift
    local deadline=$((SECONDS + ADMIN_SECS)) l out last="no leader"
    while [ $SECONDS -lt $deadline ]; do
        l=$(leader)
        if [ -z "$l" ]; then sleep 0.1; continue; fi
        if ! out=$(rcall "$l" "$@"); then
            # The outcome of a change whose reply was lost is unknown: say
            # so rather than send it again.
            echo "cluster.sh: $*: no complete reply from member $l" >&2
            return 1
        fi
        if [[ $out == -MOVED* || $out == -CLUSTERDOWN* ]] || { [ -n "$retry" ] && [[ $out == -* ]] && grep -Eq "$retry" <<<"$out"; }; then
            last="$out (member $l)"
            sleep 0.1
            continue
        fi
        if [[ $out == -* ]]; then
            echo "cluster.sh: $*: $out (from member $l)" >&2
            return 1
        fi
        printf '%s\n' "$out"
        return 0
    done
    echo "cluster.sh: $*: not done within $ADMIN_SECS s; last reply: $last" >&2
    return 1
}

status() {
    local i
    for i in $(ids); do
        if alive "$i"; then
            local info role term leader applied
            info=$(rcall "$i" INFO raft 2>/dev/null || true)
            role=$(field raft_role <<<"$info"); term=$(field raft_term <<<"$info"); leader=$(field raft_leader_id <<<"$info")
            applied=$(field raft_last_applied <<<"$info")
            echo "node $i: pid $(cat "$(pidfile "$i")"), ${role:-?}, term ${term:-?}, leader ${leader:-?}, applied ${applied:-?}"
        else
            echo "node $i: not running"
        fi
    done
    local l
    l=$(leader)
    if [ -n "$l" ]; then
        echo "members (leader $l's view: id peer client role match link):"
        rcall "$l" RAFT.MEMBERS | sed 's/^/  /' || true
    fi
}

start() {
    local i running=0
    for i in $(ids); do alive "$i" && running=$((running + 1)); done
    if [ "$running" -gt 0 ]; then
        echo "a cluster started by make cluster is already running ($running members); 'make stop' first"
        status
        exit 0
    fi
    [ -x "$BIN" ] || { echo "$BIN not built: run 'cargo build --release'" >&2; exit 1; }
    mkdir -p "$DATA"
    make_secret "$DATA/cluster.secret"
    cat >"$DATA/cluster.toml" <<TOML
# Generated by make cluster.
heartbeat_ms = 50
election_timeout_ms = [300, 600]
# Peer links prove this secret to each other (mode 0600, same on every member).
secret_file = "cluster.secret"
TOML
    for i in $(seq 1 $N); do node_entry "$i" >>"$DATA/cluster.toml"; done
    for i in $(seq 1 $N); do launch "$i"; done
    echo "started $N members; waiting for a leader..."
    local deadline=$((SECONDS + 15)) leader=""
    while [ $SECONDS -lt $deadline ]; do
        for i in $(seq 1 $N); do
            alive "$i" || { echo "node $i exited; see $DATA/node$i/node.log:" >&2; tail -5 "$DATA/node$i/node.log" >&2; exit 1; }
            local info
            info=$(resp "$i" INFO raft 2>/dev/null || true)
            if [ "$(field raft_role <<<"$info")" = leader ]; then leader=$i; break 2; fi
        done
        sleep 0.2
    done
    [ -n "$leader" ] || { echo "no leader within 15 s; logs in $DATA/node*/node.log" >&2; exit 1; }
    status
    echo
    echo "leader: node $leader (client address 127.0.0.$leader:640$leader)"
    echo "connect: redis-cli -c -h 127.0.0.1 -p 6401     (-c follows MOVED to the leader)"
    echo "logs:    tail -f $DATA/node*/node.log"
    echo "stop:    make stop"
}

# The [[node]] entry of member $1, by the address pattern above.
node_entry() {
    local i=$1
    cat <<TOML

[[node]]
id = $i
peer_addr = "127.0.0.$i:$((7000 + i))"
client_addr = "127.0.0.$i:$((6400 + i))"
metrics_addr = "127.0.0.$i:$((9400 + i))"
TOML
}

# launch ID [FLAG...]: starts member ID in the background from its data dir.
launch() {
    local i=$1; shift
    mkdir -p "$DATA/node$i"
    nohup "$BIN" --config "$DATA/cluster.toml" --id "$i" --data-dir "$DATA/node$i" "$@" \
        >>"$DATA/node$i/node.log" 2>&1 </dev/null &
    echo $! >"$(pidfile "$i")"
}

# wait_exit ID: waits up to EXIT_SECS for member ID to exit after a signal;
# SIGKILLs it then and fails. Removes the pid file once it is gone.
wait_exit() {
    local i=$1 t=0
    while alive "$i" && [ $t -lt $((EXIT_SECS * 10)) ]; do sleep 0.1; t=$((t + 1)); done
    if alive "$i"; then
        kill -KILL "$(cat "$(pidfile "$i")")" 2>/dev/null || true
        echo "cluster.sh: node $i did not exit within $EXIT_SECS s of SIGTERM; sent SIGKILL" >&2
        return 1
    fi
    rm -f "$(pidfile "$i")"
}

# wait_answers ID: until member ID answers INFO (10 s at most).
wait_answers() {
    local i=$1 t=0
    while [ $t -lt 100 ]; do
        alive "$i" || die "node $i exited; see $DATA/node$i/node.log: $(tail -2 "$DATA/node$i/node.log")"
        rcall "$i" INFO raft >/dev/null 2>&1 && return 0
        sleep 0.1; t=$((t + 1))
    done
    die "node $i did not answer INFO within 10 s; see $DATA/node$i/node.log"
}

# wait_caught_up ID: until member ID applied what the leader had committed
# when the wait began (CATCH_UP_SECS at most).
wait_caught_up() {
    local i=$1 deadline=$((SECONDS + CATCH_UP_SECS)) l="" target="" applied=""
    while [ $SECONDS -lt $deadline ]; do
        if [ -z "$target" ]; then
            l=$(leader)
            [ -n "$l" ] && target=$(rcall "$l" INFO raft 2>/dev/null | field raft_commit_index || true)
        fi
        if [ -n "$target" ]; then
            applied=$(rcall "$i" INFO raft 2>/dev/null | field raft_last_applied || true)
            if [ -n "$applied" ] && [ "$applied" -ge "$target" ]; then
                echo "node $i caught up: applied $applied >= leader $l's commit index $target"
                return 0
            fi
        fi
        alive "$i" || die "node $i exited while catching up; see $DATA/node$i/node.log"
        sleep 0.1
    done
    die "node $i did not catch up within $CATCH_UP_SECS s (applied ${applied:-?} of ${target:-? (no leader)})"
}

valid_id() {
    [[ ${1:-} =~ ^[0-9]+$ ]] && [ "$1" -ge 1 ] && [ "$1" -le 254 ] || die "member id must be 1..254, got '${1:-}'"
}

add() {
    local i=${1:-}
    valid_id "$i"
    alive "$i" && die "node $i is already running (pid $(cat "$(pidfile "$i")"))"
    [ -x "$BIN" ] || die "$BIN not built: run 'cargo build --release'"
    [ -f "$DATA/cluster.toml" ] || die "no cluster file $DATA/cluster.toml: 'make cluster' first"
    local l
    l=$(leader)
    [ -n "$l" ] || die "no leader: is the cluster running? (tools/cluster.sh status)"
    # --join only matters for an empty data dir: a member that was removed
    # would come back with its old state, believing in an old configuration.
    if [ -d "$DATA/node$i" ] && [ -n "$(ls -A "$DATA/node$i" | grep -v '^node.log$' || true)" ]; then
        die "$DATA/node$i holds a member's state; move it aside to add node $i afresh"
    fi
    if ! grep -Eq "^[ \t]*id[ \t]*=[ \t]*$i[ \t]*(#.*)?$" "$DATA/cluster.toml"; then
        # The new member reads its own addresses from here; the running
        # members never reread the file.
        node_entry "$i" >>"$DATA/cluster.toml"
        echo "added node $i to $DATA/cluster.toml"
    fi
    launch "$i" --join
    echo "started node $i with --join (pid $(cat "$(pidfile "$i")")), log $DATA/node$i/node.log"
    wait_answers "$i"
    local fail="node $i still runs (as a learner, or not a member): 'tools/cluster.sh remove $i' or 'make stop'"
    admin "in progress" RAFT.ADD "$i" "127.0.0.$i:$((7000 + i))" "127.0.0.$i:$((6400 + i))" LEARNER >/dev/null \
        || die "RAFT.ADD $i failed; $fail"
    echo "node $i added as a learner"
    (wait_caught_up "$i") || die "node $i was not promoted; $fail"
    admin "has caught up|in progress" RAFT.PROMOTE "$i" >/dev/null || die "RAFT.PROMOTE $i failed; $fail"
    echo "node $i promoted to voter"
    echo "members (id peer client role match link):"
    admin "" RAFT.MEMBERS | sed 's/^/  /'
}

remove() {
    local i=${1:-} out
    valid_id "$i"
    if ! out=$(admin "in progress" RAFT.REMOVE "$i" 2>&1); then
        # A leader that removes itself may lose leadership before the
        # change commits, and say the change may still take effect: what
        # counts is whether the configuration still lists the member.
        echo "$out" >&2
        grep -q "may still take effect" <<<"$out" || die "RAFT.REMOVE $i failed"
        sleep 1
        if config_ids | grep -qx "$i"; then die "RAFT.REMOVE $i failed: the configuration still lists node $i"; fi
        echo "RAFT.REMOVE $i answered an error, but the configuration no longer lists node $i"
    fi
    echo "node $i removed from the configuration"
    if alive "$i"; then
        kill -TERM "$(cat "$(pidfile "$i")")"
        wait_exit "$i" || exit 1
        echo "node $i stopped"
    else
        rm -f "$(pidfile "$i")"
        echo "node $i was not running here"
    fi
    echo "members (id peer client role match link):"
    admin "" RAFT.MEMBERS | sed 's/^/  /'
}

# The ids in the configuration, as the leader sees it.
config_ids() { admin "" RAFT.MEMBERS | awk '{print $1}'; }

transfer() {
    [ -z "${1:-}" ] || valid_id "$1"
    local out
    out=$(admin "in progress|retry in" RAFT.TRANSFER ${1:+"$1"}) || exit 1
    echo "RAFT.TRANSFER ${1:-}: $out"
    status
}

rolling_restart() {
    local l order=() i
    l=$(leader)
    [ -n "$l" ] || die "no leader: is the cluster running? (tools/cluster.sh status)"
    local members
    members=$(config_ids) || die "RAFT.MEMBERS failed"
    for i in $(running); do
        if ! grep -qx "$i" <<<"$members"; then
            # It would never hear from the leader, so never catch up.
            echo "node $i runs but is not in the configuration: not restarting it"
            continue
        fi
        [ "$i" = "$l" ] || order+=("$i")
    done
    order+=("$l")
    echo "restarting ${order[*]} in that order (leader $l last)"
    for i in "${order[@]}"; do
        alive "$i" || die "node $i is not running any more"
        local p argv=() cwd t0
        p=$(cat "$(pidfile "$i")")
        # The same command line and directory it was started with.
        mapfile -d '' -t argv <"/proc/$p/cmdline"
        cwd=$(readlink "/proc/$p/cwd")
        [ ${#argv[@]} -gt 0 ] || die "node $i: empty command line"
        t0=$(date +%s%3N)
        kill -TERM "$p"
        wait_exit "$i" || exit 1
        echo "node $i exited $(($(date +%s%3N) - t0)) ms after SIGTERM"
        (cd "$cwd" && exec nohup "${argv[@]}" >>"$DATA/node$i/node.log" 2>&1 </dev/null) &
        echo $! >"$(pidfile "$i")"
        wait_answers "$i"
        wait_caught_up "$i"
        echo "node $i back $(($(date +%s%3N) - t0)) ms after SIGTERM; leader now $(leader)"
    done
    status
}

stop() {
    local i pids=()
    for i in $(ids); do
        if alive "$i"; then
            kill -TERM "$(cat "$(pidfile "$i")")" && pids+=("$i")
        fi
    done
    for i in "${pids[@]}"; do
        local t=0
        while alive "$i" && [ $t -lt 50 ]; do sleep 0.1; t=$((t + 1)); done
        if alive "$i"; then
            echo "node $i did not exit within 5 s of SIGTERM; sending SIGKILL" >&2
            kill -KILL "$(cat "$(pidfile "$i")")" 2>/dev/null || true
        fi
        echo "node $i stopped"
    done
    for i in $(ids); do rm -f "$(pidfile "$i")"; done
    [ ${#pids[@]} -gt 0 ] || echo "no member of a make cluster cluster was running"
}

cmd=${1:-}
[ $# -eq 0 ] || shift
case "$cmd" in
    start) start ;;
    stop) stop ;;
    status) status ;;
    add) add "$@" ;;
    remove) remove "$@" ;;
    transfer) transfer "$@" ;;
    rolling-restart) rolling_restart ;;
    *) echo "usage: $0 start|stop|status|add ID|remove ID|transfer [ID]|rolling-restart" >&2; exit 2 ;;
esac
