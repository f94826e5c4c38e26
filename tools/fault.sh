#!/usr/bin/env bash
# Fault injection for a raft-node cluster: network faults with iptables,
# process faults with signals. `tools/fault.sh help` for the subcommands.
#
# The cluster is described by a data dir laid out like tools/cluster.sh makes
# it: $DATA/cluster.toml, $DATA/nodeN.pid, $DATA/nodeN/ (node.log inside).
# DATA defaults to `data`; a relative DATA is taken from the repository root,
# as in cluster.sh. Member addresses always come from $DATA/cluster.toml.
#
# Two modes:
#  - RAFT_NETNS=NAME: the cluster runs inside network namespace NAME (see
#    netns-up and cluster-start). The script re-runs itself inside it, so every
#    iptables rule, RESP connection and restarted member lives there, and
#    deleting the namespace removes everything.
#  - RAFT_NETNS unset: iptables acts on the current namespace. That is for a
#    real VM's own firewall, each member on its own address: run it as root on
#    a member's VM (or on each), with the same cluster.toml the members use.
#
# Network rules match Raft peer traffic only: TCP between two members'
# addresses where one end is a member's peer port (members bind outgoing
# peer connections to their own IP). Client (RESP) and metrics traffic is not
# touched, so a client can still reach an isolated member and a client
# connecting from 127.0.0.1 is not mistaken for member 1. Every member needs
# an address of its own for per-member rules to make sense.
#
# Rules live in the chain RAFT-FAULT (filter table), jumped to from OUTPUT and
# from INPUT for packets not on `lo`: a loopback packet passes OUTPUT and then
# INPUT, and is matched once (in OUTPUT), so `drop 10` drops 10% and not 19%;
# a packet between VMs is matched on the way out and on the way in, so run
# `drop` on one VM only. Delay proxies use the nat chain RAFT-DELAY.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=tools/lib.sh
source tools/lib.sh
ROOT=$PWD
SELF="$ROOT/tools/fault.sh"
DATA=${DATA:-data}
BIN=${RAFT_NODE:-target/release/raft-node}
NETNS=${RAFT_NETNS:-}
CHAIN=RAFT-FAULT
NAT_CHAIN=RAFT-DELAY
# Address the delay proxies listen on and connect from (see `delay`).
PROXY_IP=${RAFT_PROXY_IP:-127.0.0.250}

usage() {
    cat <<'EOF'
usage: tools/fault.sh SUBCOMMAND [ARGS]     (env: DATA=data RAFT_NETNS=NAME)

namespace and cluster
  netns-up NAME          create network namespace NAME with lo up (127.0.0.0/8)
  netns-down NAME        kill every process inside NAME and delete it
  cluster-start          tools/cluster.sh start (inside $RAFT_NETNS when set)
  cluster-stop           tools/cluster.sh stop (likewise)

network faults (Raft peer traffic only; member addresses from cluster.toml)
  isolate N              drop all peer traffic between member N and the others
  cut A B [--one-way]    drop peer traffic between A and B (or only A -> B)
  partition 1,2 3        drop peer traffic between the two groups
  drop PCT [N]           drop PCT% of peer packets (all members, or N's only)
  reset N                reject N's peer traffic with a TCP reset: whoever
                         sends on a link to or from N gets ECONNRESET (redials
                         ECONNREFUSED); a side that only receives notices by
                         timeout, as nothing reaches it
  delay A B MS           add MS ms each way to the A <-> B link (see below)
  heal                   remove every rule and delay proxy this script added

process faults (by $DATA/nodeN.pid)
  freeze N / thaw N      SIGSTOP / SIGCONT
  kill N                 SIGKILL
  kill-leader            SIGKILL the member that INFO raft names leader
  restart N              start N from its data dir, as cluster.sh does
                         (appends to $DATA/nodeN/node.log, writes the pid file)
  leader                 print the leader's id
  status                 each member's pid, role, term, leader; active rules

Network subcommands, netns-up/down, and everything with RAFT_NETNS set need
root; without it they say so and exit 1. Process subcommands without
RAFT_NETNS only need permission to signal the members.

delay: `tc netem` is not available on these kernels, so `delay A B MS` starts
two raft-delay-proxy processes (A -> B and B -> A, each adding MS ms per
chunk) listening on $RAFT_PROXY_IP (127.0.0.250), adds nat OUTPUT DNAT rules
sending A's connections to B's peer port (and B's to A's) to them, and closes
the existing A-B connections with `ss -K` so the members redial through the
proxies (expect one "link ... lost" line per side). A Raft round trip on
that link then takes 2 x MS more. It needs every member on this host (a
namespace or loopback cluster). `heal` stops the proxies, which closes the
delayed links: expect "link ... lost" lines and, if the leader's links were
delayed, a new election (the survivors' fast failover). While a link is
delayed, cut/isolate rules do not match its (redirected) packets: heal first.
The proxy binary is $RAFT_DELAY_PROXY, else target/release/raft-delay-proxy,
else $CARGO_TARGET_DIR/release/raft-delay-proxy. Manual use: see the doc
comment of tools/src/bin/raft-delay-proxy.rs.

Where a kernel has netem, use it instead (inside the namespace it affects all
loopback traffic there, clients included, both directions, so a round trip
gains twice the delay):
  ip netns exec NAME tc qdisc add dev lo root netem delay 50ms 10ms
  ip netns exec NAME tc qdisc del dev lo root
On VMs, put it on the member's interface (tc qdisc add dev eth0 root netem
delay 50ms), or filter one destination with a prio qdisc and a u32 filter.

examples
  tools/fault.sh netns-up raft
  RAFT_NETNS=raft DATA=/tmp/drill tools/fault.sh cluster-start
  RAFT_NETNS=raft DATA=/tmp/drill tools/fault.sh isolate 2
  RAFT_NETNS=raft DATA=/tmp/drill tools/fault.sh heal
  RAFT_NETNS=raft DATA=/tmp/drill tools/fault.sh kill-leader
  tools/fault.sh netns-down raft
EOF
}

netns_exists() { ip netns list | awk -v n="$1" '$1 == n { f = 1 } END { exit !f }'; }
die() { echo "fault.sh: $*" >&2; exit 1; }
need_root() { [ "$(id -u)" = 0 ] || { echo "fault.sh $1: needs root (iptables, ip netns); run it with sudo"; exit 1; }; }

# ----- cluster file ---------------------------------------------------------

# Prints "id peer_ip peer_port client_ip client_port" per member, in file
# order. Understands the subset of TOML that cluster files use.
members() {
    [ -f "$DATA/cluster.toml" ] || die "no cluster file $DATA/cluster.toml (DATA=$DATA)"
    awk '
        function val(line) {
            sub(/^[^=]*=[ \t]*/, "", line); sub(/[ \t]*#.*$/, "", line)
            gsub(/"/, "", line); gsub(/[ \t]/, "", line); return line
        }
        function flush() {
            if (id == "") return
            if (peer == "" || client == "") { print "member " id ": missing address" > "/dev/stderr"; exit 1 }
            pi = peer; sub(/:[0-9]+$/, "", pi); pp = peer; sub(/^.*:/, "", pp)
            ci = client; sub(/:[0-9]+$/, "", ci); cp = client; sub(/^.*:/, "", cp)
            print id, pi, pp, ci, cp
            id = ""; peer = ""; client = ""
        }
        /^[ \t]*\[\[node\]\]/ { flush(); innode = 1; next }
        /^[ \t]*\[/ { flush(); innode = 0; next }
        innode && /^[ \t]*id[ \t]*=/ { id = val($0) }
        innode && /^[ \t]*peer_addr[ \t]*=/ { peer = val($0) }
        innode && /^[ \t]*client_addr[ \t]*=/ { client = val($0) }
        END { flush() }
    ' "$DATA/cluster.toml"
}

MEMBER_IDS=()
declare -A PEER_IP PEER_PORT CLIENT_IP CLIENT_PORT
load_members() {
    local id pi pp ci cp out
    out=$(members) || exit 1
    while read -r id pi pp ci cp; do
        [ -n "$id" ] || continue
        case "$pi" in *[!0-9.]*) die "member $id: peer address $pi is not IPv4 (only IPv4 is supported)" ;; esac
        MEMBER_IDS+=("$id")
        PEER_IP[$id]=$pi; PEER_PORT[$id]=$pp; CLIENT_IP[$id]=$ci; CLIENT_PORT[$id]=$cp
    done <<<"$out"
    [ ${#MEMBER_IDS[@]} -gt 0 ] || die "no [[node]] in $DATA/cluster.toml"
}

member() {
    [[ "${1:-}" =~ ^[0-9]+$ ]] && [ -n "${PEER_IP[$1]:-}" ] || die "no member '${1:-}' in $DATA/cluster.toml (members: ${MEMBER_IDS[*]})"
}

pidfile() { echo "$DATA/node$1.pid"; }
pid_of() { [ -f "$(pidfile "$1")" ] && cat "$(pidfile "$1")"; }
# Running: the process exists and is not a zombie (a killed member stays one
# until its parent, often init, reaps it).
alive() {
    local p
    p=$(pid_of "$1" 2>/dev/null) && [ -n "$p" ] && kill -0 "$p" 2>/dev/null &&
        [ "$(sed 's/^.*) //' "/proc/$p/stat" 2>/dev/null | cut -c1)" != Z ]
}

# ----- RESP ----------------------------------------------------------------

# One RESP command to member $1's client address; prints the reply.
resp() { local i=$1; shift; resp_to "${CLIENT_IP[$i]}" "${CLIENT_PORT[$i]}" "$@"; }

# The leader's id: a member that says it is leader, or else the leader the
# members agree on. Empty when none is known.
find_leader() {
    local i info
    for i in "${MEMBER_IDS[@]}"; do
        alive "$i" || continue
        info=$(resp "$i" INFO raft 2>/dev/null || true)
        if [ "$(field raft_role <<<"$info")" = leader ]; then echo "$i"; return; fi
    done
}

# ----- iptables -------------------------------------------------------------

ipt() { iptables -w 5 "$@"; }

# A fault that cannot take effect must fail loudly: a missing iptables would
# otherwise turn every network fault into a silent no-op.
need_iptables() {
    local t
    for t in iptables iptables-restore; do
        command -v "$t" >/dev/null || die "$t not found: network faults need it (apt-get install iptables)"
    done
}

ensure_chain() {
    need_iptables
    ipt -S "$CHAIN" >/dev/null 2>&1 || ipt -N "$CHAIN" || die "cannot create iptables chain $CHAIN"
    ipt -C OUTPUT -j "$CHAIN" 2>/dev/null || ipt -I OUTPUT 1 -j "$CHAIN" ||
        die "cannot hook $CHAIN into OUTPUT"
    ipt -C INPUT ! -i lo -j "$CHAIN" 2>/dev/null || ipt -I INPUT 1 ! -i lo -j "$CHAIN" ||
        die "cannot hook $CHAIN into INPUT"
}

RULES=0
PENDING=()
# Queues rules matching peer packets sent by member $1 to member $2: to $2's
# peer port (on $1's outbound connection) and from $1's peer port (on $2's
# outbound connection, i.e. $1's acks and handshake). $3 is a comment, the
# rest is the match/target tail. apply_rules installs the queue.
rule_dir() {
    local a=$1 b=$2 why=$3; shift 3
    [ "${PEER_IP[$a]}" != "${PEER_IP[$b]}" ] || die "members $a and $b share the address ${PEER_IP[$a]}: per-member rules need an address per member"
    PENDING+=("-A $CHAIN -s ${PEER_IP[$a]} -d ${PEER_IP[$b]} -p tcp --dport ${PEER_PORT[$b]} -m comment --comment \"raft-fault: $why\" $*")
    PENDING+=("-A $CHAIN -s ${PEER_IP[$a]} -d ${PEER_IP[$b]} -p tcp --sport ${PEER_PORT[$a]} -m comment --comment \"raft-fault: $why\" $*")
    RULES=$((RULES + 2))
}

# Installs the queued rules in one iptables-restore transaction: a fault
# (say, a partition) starts all at once, not rule by rule.
apply_rules() {
    [ ${#PENDING[@]} -gt 0 ] || return 0
    local before after
    before=$(count_rules)
    printf '*filter\n%s\nCOMMIT\n' "$(printf '%s\n' "${PENDING[@]}")" | iptables-restore -w --noflush ||
        die "iptables-restore failed; nothing was added"
    # Check that the rules really are in place before saying so.
    after=$(count_rules)
    [ "$after" -eq $((before + ${#PENDING[@]})) ] ||
        die "expected $((before + ${#PENDING[@]})) rules in $CHAIN after adding ${#PENDING[@]}, found $after"
    PENDING=()
}

rule_pair() { rule_dir "$1" "$2" "$3" "${@:4}"; rule_dir "$2" "$1" "$3" "${@:4}"; }

count_rules() { ipt -S "$CHAIN" 2>/dev/null | grep -c -- '^-A' || true; }

# ----- delay proxies ---------------------------------------------------------

proxy_bin() {
    local c
    for c in "${RAFT_DELAY_PROXY:-}" target/release/raft-delay-proxy \
        "${CARGO_TARGET_DIR:+$CARGO_TARGET_DIR/release/raft-delay-proxy}"; do
        [ -n "$c" ] && [ -x "$c" ] && { echo "$c"; return; }
    done
    die "raft-delay-proxy not found: cargo build --release -p tools, or set RAFT_DELAY_PROXY"
}

# Starts a proxy for what member $1 sends to member $2 and redirects $1's
# connections to $2's peer port to it.
delay_dir() {
    local a=$1 b=$2 ms=$3 bin=$4
    local port=$((17000 + (a % 100) * 100 + b % 100))
    local pf="$DATA/delay-$a-$b.pid"
    [ ! -f "$pf" ] || ! kill -0 "$(cat "$pf")" 2>/dev/null || die "link $a -> $b is already delayed (heal first)"
    nohup "$bin" --listen "$PROXY_IP:$port" --to "${PEER_IP[$b]}:${PEER_PORT[$b]}" --delay-ms "$ms" \
        >>"$DATA/delay-$a-$b.log" 2>&1 </dev/null &
    echo $! >"$pf"
    local t=0
    until grep -q -- "-> ${PEER_IP[$b]}" "$DATA/delay-$a-$b.log" 2>/dev/null; do
        kill -0 "$(cat "$pf")" 2>/dev/null || die "raft-delay-proxy $a -> $b exited: $(tail -1 "$DATA/delay-$a-$b.log")"
        t=$((t + 1)); [ $t -lt 50 ] || die "raft-delay-proxy $a -> $b did not start"
        sleep 0.1
    done
    ipt -t nat -A "$NAT_CHAIN" -s "${PEER_IP[$a]}" -d "${PEER_IP[$b]}" -p tcp --dport "${PEER_PORT[$b]}" \
        -m comment --comment "raft-fault: delay $a $b" -j DNAT --to-destination "$PROXY_IP:$port"
    # Connections made before the rule keep their old route: close them so
    # that the members redial, now through the proxy.
    ss -K -t dst "${PEER_IP[$b]}:${PEER_PORT[$b]}" src "${PEER_IP[$a]}" >/dev/null 2>&1 || true
}

stop_proxies() {
    local pf n=0
    for pf in "$DATA"/delay-*.pid; do
        [ -f "$pf" ] || continue
        kill -TERM "$(cat "$pf")" 2>/dev/null && n=$((n + 1))
        rm -f "$pf"
    done
    echo "$n"
}

# ----- subcommands -----------------------------------------------------------

cmd_netns_up() {
    local ns=${1:?netns-up NAME}
    local how=created
    if netns_exists "$ns"; then how="already existed"; else ip netns add "$ns"; fi
    ip netns exec "$ns" ip link set lo up
    # 127.0.0.0/8 is local on lo: check that .2 and .3 answer (a refused
    # connection is an answer; a timeout is not).
    local ip
    for ip in 127.0.0.2 127.0.0.3; do
        local out
        out=$(ip netns exec "$ns" timeout 2 bash -c "exec 3<>/dev/tcp/$ip/9" 2>&1 || true)
        grep -q 'Connection refused' <<<"$out" || die "namespace $ns: $ip is not reachable on lo"
    done
    echo "network namespace $ns $how: lo up, 127.0.0.0/8 reachable; use RAFT_NETNS=$ns"
}

cmd_netns_down() {
    local ns=${1:?netns-down NAME}
    if ! netns_exists "$ns"; then
        echo "no network namespace $ns"
        return
    fi
    local pids n=0 p
    pids=$(ip netns pids "$ns" || true)
    for p in $pids; do kill -KILL "$p" 2>/dev/null && n=$((n + 1)); done
    ip netns delete "$ns"
    echo "network namespace $ns deleted ($n processes inside killed)"
}

cmd_isolate() {
    member "${1:-}"
    ensure_chain
    local m
    for m in "${MEMBER_IDS[@]}"; do
        [ "$m" = "$1" ] || rule_pair "$1" "$m" "isolate $1" -j DROP
    done
    apply_rules
    echo "isolated member $1 (${PEER_IP[$1]}): peer traffic to and from every other member dropped ($RULES rules)"
}

cmd_cut() {
    local a=${1:-} b=${2:-} one_way=${3:-}
    member "$a"; member "$b"
    [ "$a" != "$b" ] || die "cut: A and B must differ"
    ensure_chain
    if [ "$one_way" = --one-way ]; then
        rule_dir "$a" "$b" "cut $a -> $b" -j DROP
        apply_rules
        echo "cut member $a -> $b one way: peer packets from ${PEER_IP[$a]} to ${PEER_IP[$b]} dropped ($RULES rules)"
    elif [ -z "$one_way" ]; then
        rule_pair "$a" "$b" "cut $a $b" -j DROP
        apply_rules
        echo "cut link $a <-> $b: peer traffic between ${PEER_IP[$a]} and ${PEER_IP[$b]} dropped ($RULES rules)"
    else
        die "cut A B [--one-way]"
    fi
}

cmd_partition() {
    local g1=${1:-} g2=${2:-} a b
    [ -n "$g1" ] && [ -n "$g2" ] || die "partition GROUP GROUP, e.g. partition 1,2 3"
    local -a left right
    IFS=, read -r -a left <<<"$g1"
    IFS=, read -r -a right <<<"$g2"
    for a in "${left[@]}" "${right[@]}"; do member "$a"; done
    for a in "${left[@]}"; do for b in "${right[@]}"; do
        [ "$a" != "$b" ] || die "partition: member $a is in both groups"
    done; done
    ensure_chain
    for a in "${left[@]}"; do for b in "${right[@]}"; do
        rule_pair "$a" "$b" "partition $g1 | $g2" -j DROP
    done; done
    apply_rules
    echo "partitioned {$g1} | {$g2}: peer traffic between the groups dropped ($RULES rules)"
}

cmd_drop() {
    local pct=${1:-} n=${2:-} a b
    [[ "$pct" =~ ^[0-9]+(\.[0-9]+)?$ ]] || die "drop PCT [N]: PCT is a percentage, e.g. 10 or 2.5"
    awk -v p="$pct" 'BEGIN { exit !(p > 0 && p <= 100) }' || die "drop: PCT must be in (0, 100]"
    local prob
    prob=$(awk -v p="$pct" 'BEGIN { printf "%.5f", p / 100 }')
    [ -z "$n" ] || member "$n"
    ensure_chain
    for a in "${MEMBER_IDS[@]}"; do for b in "${MEMBER_IDS[@]}"; do
        [ "$a" != "$b" ] || continue
        if [ -n "$n" ] && [ "$a" != "$n" ] && [ "$b" != "$n" ]; then continue; fi
        rule_dir "$a" "$b" "drop $pct% ${n:-all}" -m statistic --mode random --probability "$prob" -j DROP
    done; done
    apply_rules
    if [ -n "$n" ]; then
        echo "dropping $pct% of member $n's peer packets, each direction ($RULES rules)"
    else
        echo "dropping $pct% of all peer packets between members ($RULES rules)"
    fi
}

cmd_reset() {
    member "${1:-}"
    ensure_chain
    local m
    for m in "${MEMBER_IDS[@]}"; do
        # The resets REJECT generates pass OUTPUT too, and would match the
        # same rules (and be dropped, as REJECT never answers a RST): leave
        # RST packets alone so that they reach the sockets.
        [ "$m" = "$1" ] || rule_pair "$1" "$m" "reset $1" --tcp-flags RST NONE -j REJECT --reject-with tcp-reset
    done
    apply_rules
    echo "rejecting member $1's peer traffic with TCP reset: its links see ECONNRESET, redials ECONNREFUSED ($RULES rules)"
}

cmd_delay() {
    local a=${1:-} b=${2:-} ms=${3:-}
    member "$a"; member "$b"
    [ "$a" != "$b" ] || die "delay: A and B must differ"
    [[ "$ms" =~ ^[0-9]+$ ]] && [ "$ms" -le 60000 ] || die "delay A B MS: MS is whole milliseconds (at most 60000)"
    local bin
    bin=$(proxy_bin)
    ipt -t nat -N "$NAT_CHAIN" 2>/dev/null || true
    ipt -t nat -C OUTPUT -j "$NAT_CHAIN" 2>/dev/null || ipt -t nat -I OUTPUT 1 -j "$NAT_CHAIN"
    delay_dir "$a" "$b" "$ms" "$bin"
    delay_dir "$b" "$a" "$ms" "$bin"
    echo "delaying link $a <-> $b by $ms ms each way (2 raft-delay-proxy on $PROXY_IP, DNAT in nat $NAT_CHAIN; links redialed)"
}

cmd_heal() {
    local n=0 m=0 p
    if ipt -S "$CHAIN" >/dev/null 2>&1; then
        n=$(count_rules)
        while ipt -D OUTPUT -j "$CHAIN" 2>/dev/null; do :; done
        while ipt -D INPUT ! -i lo -j "$CHAIN" 2>/dev/null; do :; done
        ipt -F "$CHAIN"
        ipt -X "$CHAIN"
    fi
    if ipt -t nat -S "$NAT_CHAIN" >/dev/null 2>&1; then
        m=$(ipt -t nat -S "$NAT_CHAIN" | grep -c -- '^-A' || true)
        while ipt -t nat -D OUTPUT -j "$NAT_CHAIN" 2>/dev/null; do :; done
        ipt -t nat -F "$NAT_CHAIN"
        ipt -t nat -X "$NAT_CHAIN"
    fi
    p=0
    [ ! -d "$DATA" ] || p=$(stop_proxies)
    echo "healed: removed $n filter rules, $m delay rules and stopped $p delay proxies"
}

# The state letter of process $1 (R, S, T, Z, ...), empty if it is gone.
proc_state() {
    local st
    st=$(sed 's/^.*) //' "/proc/$1/stat" 2>/dev/null) || true
    printf '%s' "${st:0:1}"
}

signal_member() {
    local sig=$1 n=$2 what=$3
    member "$n"
    local p
    p=$(pid_of "$n" 2>/dev/null) || die "member $n: no pid file $(pidfile "$n")"
    kill -0 "$p" 2>/dev/null || die "member $n (pid $p) is not running"
    kill "-$sig" "$p" || die "could not send SIG$sig to member $n (pid $p)"
    # Wait (at most 2 s) until the signal has taken effect: a drill that
    # measures from here must not measure a process that still runs.
    local t=0 st
    while :; do
        st=$(proc_state "$p")
        case "$sig" in
            STOP) [ "$st" = T ] && break ;;
            CONT) [ "$st" != T ] && break ;;
            KILL) { [ -z "$st" ] || [ "$st" = Z ]; } && break ;;
            *) break ;;
        esac
        t=$((t + 1))
        [ $t -lt 200 ] || die "member $n (pid $p) did not take SIG$sig within 2 s (state ${st:-gone})"
        sleep 0.01
    done
    echo "$what member $n (pid $p, SIG$sig)"
}

cmd_kill_leader() {
    local l
    l=$(find_leader)
    [ -n "$l" ] || die "kill-leader: no member reports itself leader"
    signal_member KILL "$l" "killed leader:"
}

cmd_restart() {
    local n=${1:-}
    member "$n"
    if alive "$n"; then die "member $n is running (pid $(pid_of "$n")); kill or stop it first"; fi
    [ -x "$BIN" ] || die "$BIN not built: cargo build --release (or set RAFT_NODE)"
    [ -d "$DATA/node$n" ] || die "no data dir $DATA/node$n"
    # Exactly as tools/cluster.sh starts a member.
    nohup "$BIN" --config "$DATA/cluster.toml" --id "$n" --data-dir "$DATA/node$n" \
        >>"$DATA/node$n/node.log" 2>&1 </dev/null &
    echo $! >"$(pidfile "$n")"
    sleep 0.2
    alive "$n" || die "member $n exited at once; see $DATA/node$n/node.log: $(tail -1 "$DATA/node$n/node.log")"
    echo "restarted member $n (pid $(pid_of "$n")) from $DATA/node$n"
}

cmd_leader() {
    local l
    l=$(find_leader)
    [ -n "$l" ] || { echo "no leader"; exit 1; }
    echo "$l"
}

cmd_status() {
    local i info
    for i in "${MEMBER_IDS[@]}"; do
        if alive "$i"; then
            local state="" p
            p=$(pid_of "$i")
            [ "$(sed 's/^.*) //' "/proc/$p/stat" 2>/dev/null | cut -c1)" = T ] && state=" (frozen)"
            info=$(resp "$i" INFO raft 2>/dev/null || true)
            echo "member $i: pid $p$state, $(field raft_role <<<"$info" | sed 's/^$/?/'), term $(field raft_term <<<"$info" | sed 's/^$/?/'), leader $(field raft_leader_id <<<"$info" | sed 's/^$/?/')"
        else
            echo "member $i: not running"
        fi
    done
    if [ "$(id -u)" = 0 ]; then
        local r
        r=$( (ipt -S "$CHAIN" 2>/dev/null; ipt -t nat -S "$NAT_CHAIN" 2>/dev/null) | grep -- '^-A' | sed -n 's/.*--comment "\{0,1\}raft-fault: \([^"]*\)"\{0,1\} .*/\1/p' | sort | uniq -c | sed 's/^ *//' || true)
        if [ -n "$r" ]; then echo "fault rules: $(tr '\n' ';' <<<"$r" | sed 's/;$//; s/;/; /g')"; else echo "fault rules: none"; fi
    fi
}

# ----- dispatch --------------------------------------------------------------

cmd=${1:-help}
[ $# -eq 0 ] || shift
case "$cmd" in
    help | -h | --help) usage; exit 0 ;;
    netns-up | netns-down) need_root "$cmd"; "cmd_${cmd//-/_}" "$@"; exit 0 ;;
    cluster-start | cluster-stop | isolate | cut | partition | drop | reset | delay | heal | \
        freeze | thaw | kill | kill-leader | restart | leader | status) ;;
    *) echo "fault.sh: unknown subcommand '$cmd'" >&2; usage >&2; exit 2 ;;
esac

case "$cmd" in
    isolate | cut | partition | drop | reset | delay) need_root "$cmd"; need_iptables ;;
    heal) need_root "$cmd"; command -v iptables >/dev/null || { echo "healed: nothing to do (no iptables, so no rules)"; exit 0; } ;;
esac

# With RAFT_NETNS, run the rest inside the namespace: iptables, RESP
# connections and restarted members all belong there.
if [ -n "$NETNS" ] && [ -z "${RAFT_FAULT_INSIDE:-}" ]; then
    need_root "$cmd"
    netns_exists "$NETNS" || die "no network namespace $NETNS (tools/fault.sh netns-up $NETNS)"
    exec ip netns exec "$NETNS" env RAFT_FAULT_INSIDE=1 DATA="$DATA" "$SELF" "$cmd" "$@"
fi

case "$cmd" in
    cluster-start | cluster-stop)
        # cluster.sh exits 0 with a message when a cluster already runs.
        DATA=$DATA tools/cluster.sh "${cmd#cluster-}"
        echo "cluster ${cmd#cluster-}: done (DATA=$DATA${NETNS:+, namespace $NETNS})"
        exit 0
        ;;
esac

load_members
case "$cmd" in
    isolate) cmd_isolate "$@" ;;
    cut) cmd_cut "$@" ;;
    partition) cmd_partition "$@" ;;
    drop) cmd_drop "$@" ;;
    reset) cmd_reset "$@" ;;
    delay) cmd_delay "$@" ;;
    heal) cmd_heal ;;
    freeze) signal_member STOP "${1:-}" froze ;;
    thaw) signal_member CONT "${1:-}" thawed ;;
    kill) signal_member KILL "${1:-}" killed ;;
    kill-leader) cmd_kill_leader ;;
    restart) cmd_restart "$@" ;;
    leader) cmd_leader ;;
    status) cmd_status ;;
esac
