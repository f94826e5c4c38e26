# Shell helpers shared by tools/cluster.sh and tools/fault.sh (sourced, not run).

# resp_to HOST PORT ARG...: sends one RESP command and prints the reply,
# without needing redis-cli. Fails if nothing listens there.
resp_to() {
    local host=$1 port=$2; shift 2
    local req="*$#\r\n" a
    for a in "$@"; do req+="\$${#a}\r\n$a\r\n"; done
    exec 3<>"/dev/tcp/$host/$port" 2>/dev/null || return 1
    printf "%b" "$req" >&3
    timeout 1 cat <&3 | head -c 4096 || true
    exec 3<&- 3>&- || true
}

# field NAME: the value of `NAME:value` in an INFO reply on stdin.
field() { tr -d '\r' | sed -n "s/^$1://p" | head -1; }

# make_secret FILE: the cluster's peer-link secret (32 random bytes, base64),
# created with mode 0600 unless FILE already exists: members that restart
# from their data dirs must keep the secret they were started with.
make_secret() {
    [ -s "$1" ] && return 0
    (umask 077 && head -c 32 /dev/urandom | base64 >"$1")
}

# resp_call HOST PORT ARG...: sends one RESP command and prints the decoded
# reply as soon as it is complete (resp_to always waits out its 1 s read):
# a simple string, integer or bulk string as is, an error with its leading
# `-`, nil as `(nil)`, an array one element a line, and an array nested in
# it on one line, its elements separated by spaces. Each read gives up
# after 2 s; fails if nothing listens there or the reply is cut short.
resp_call() {
    local host=$1 port=$2; shift 2
    local req="*$#\r\n" a fd rc=0
    for a in "$@"; do req+="\$${#a}\r\n$a\r\n"; done
    exec {fd}<>"/dev/tcp/$host/$port" 2>/dev/null || return 1
    printf "%b" "$req" >&"$fd"
    _resp_read "$fd" 0 || rc=1
    exec {fd}<&- || true
    return $rc
}

# _resp_read FD DEPTH: prints one reply read from FD (see resp_call).
# Arrays are read at most 3 levels deep and 10000 elements long.
_resp_read() {
    local fd=$1 depth=$2 line n i s LC_ALL=C
    IFS= read -r -t 2 -u "$fd" line || return 1
    line=${line%$'\r'}
    case ${line:0:1} in
        +|:) printf '%s\n' "${line:1}" ;;
        -) printf '%s\n' "$line" ;;
        \$)
            n=${line:1}
            [[ $n =~ ^-?[0-9]+$ ]] || return 1
            if [ "$n" -lt 0 ]; then echo "(nil)"; return 0; fi
            IFS= read -r -t 2 -N $((n + 2)) -u "$fd" s || return 1
            printf '%s\n' "${s:0:n}"
            ;;
        \*)
            n=${line:1}
            [[ $n =~ ^-?[0-9]+$ ]] && [ "$n" -le 10000 ] && [ "$depth" -lt 3 ] || return 1
            if [ "$depth" -eq 0 ]; then
                for ((i = 0; i < n; i++)); do _resp_read "$fd" 1 || return 1; done
                [ "$n" -gt 0 ] || echo "(empty array)"
            else
                # Nested: one line. The subshell reads the same socket
                # (bash reads a socket byte by byte, so nothing is lost).
                local parts=()
                for ((i = 0; i < n; i++)); do
                    s=$(_resp_read "$fd" $((depth + 1))) || return 1
                    parts+=("$s")
                done
                printf '%s\n' "${parts[*]}"
            fi
            ;;
        *) return 1 ;;
    esac
}
