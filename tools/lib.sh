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
