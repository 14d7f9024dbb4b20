# shellcheck shell=bash
# ringlink netns test library: sourced by every netns-tests/test_*.sh, by
# perf/relay.sh, and (concatenated in front of demo.sh) by `ringlink demo`.
#
# It must not depend on its own file location: `ringlink demo` writes it to a
# temp file. The only input it needs is $RINGLINK (the binary), or a repo root
# passed to rl_init to find target/release/ringlink.
#
# Rules it enforces for its users:
#   * every namespace it creates is named "$RL_PREFIX<name>" (unique per run),
#     and every address used lives inside those namespaces;
#   * the host's interfaces, routes and nftables are never touched: links are
#     created with `ip -n <ns>` directly inside our namespaces;
#   * processes are started with rl_spawn and ended by PID only;
#   * every wait has a deadline (rl_wait_until), every loop a bound;
#   * rl_cleanup runs on EXIT, INT and TERM.

# ------------------------------------------------------------------ state

RL_PREFIX="rl$$-"            # namespace name prefix, unique per run
RL_TMP=""                    # per-run temp dir (configs, logs, sockets)
RL_NAMESPACES=()             # full names of namespaces we created
RL_PIDS=()                   # PIDs of background processes we started
declare -A RL_PID=()         # process name -> PID
RL_FAILS=0
RL_PASSES=0
RL_CLEANED=0
RL_VERBOSE="${RL_VERBOSE:-0}"

RL_SERVER_IP="10.91.0.1"
RL_SERVER_PORT="7443"
RL_PASSWORD="${RL_PASSWORD:-secret}"
RL_POOL="10.77.0.0/24"

# ------------------------------------------------------------------ output

rl_say()  { printf '%s\n' "$*"; }
rl_info() { [ "$RL_VERBOSE" = 1 ] && printf '  · %s\n' "$*" >&2; return 0; }
rl_die()  { printf 'error: %s\n' "$*" >&2; exit 1; }

rl_pass() { RL_PASSES=$((RL_PASSES + 1)); printf '  ok    %s\n' "$*"; }
rl_fail() { RL_FAILS=$((RL_FAILS + 1));   printf '  FAIL  %s\n' "$*"; }

# check "what is checked" cmd args... : runs the command, records ok/FAIL.
check() {
    local what=$1; shift
    if "$@"; then rl_pass "$what"; return 0; fi
    rl_fail "$what"; return 1
}

# check_not "what" cmd... : passes when the command fails.
check_not() {
    local what=$1; shift
    if "$@"; then rl_fail "$what"; return 1; fi
    rl_pass "$what"; return 0
}

# Prints the last lines of every log of this run (on failure).
rl_dump_logs() {
    local f
    [ -n "$RL_TMP" ] && [ -d "$RL_TMP" ] || return 0
    for f in "$RL_TMP"/*.log; do
        [ -e "$f" ] || continue
        printf -- '---- %s (last 40 lines)\n' "$(basename "$f")"
        tail -n 40 "$f" | sed 's/^/    /'
    done
}

# Ends a test: summary line for this test, logs on failure, exit code.
rl_finish() {
    local name=${1:-$(basename "$0" .sh)}
    if [ "$RL_FAILS" -gt 0 ]; then
        rl_dump_logs
        printf '%s: FAILED (%d ok, %d failed)\n' "$name" "$RL_PASSES" "$RL_FAILS"
        exit 1
    fi
    if [ "$RL_PASSES" -eq 0 ]; then
        printf '%s: FAILED (nothing was checked)\n' "$name"
        exit 1
    fi
    printf '%s: passed (%d checks)\n' "$name" "$RL_PASSES"
    exit 0
}

# ------------------------------------------------------------------ setup

# rl_init [repo_root]
# Checks root and tools, finds the binary, makes the temp dir, installs the
# cleanup trap. Call it once, at the top of a script, not in a subshell.
rl_init() {
    local root=${1:-}
    if [ "$(id -u)" -ne 0 ]; then
        rl_die "needs root (network namespaces and TUN devices)"
    fi
    local tool
    for tool in ip nft ping python3 timeout; do
        command -v "$tool" >/dev/null 2>&1 || rl_die "missing tool: $tool (apt-get install iproute2 nftables iputils-ping python3 coreutils)"
    done
    [ -c /dev/net/tun ] || rl_die "/dev/net/tun is missing (modprobe tun)"
    if [ -z "${RINGLINK:-}" ] && [ -n "$root" ]; then
        local tdir=${CARGO_TARGET_DIR:-$root/target}
        case $tdir in /*) ;; *) tdir=$root/$tdir ;; esac
        RINGLINK=$tdir/release/ringlink
    fi
    [ -n "${RINGLINK:-}" ] || rl_die "RINGLINK is not set (path to the ringlink binary)"
    [ -x "$RINGLINK" ] || rl_die "no ringlink binary at $RINGLINK (cargo build --release)"
    export RINGLINK
    RL_TMP=$(mktemp -d "${TMPDIR:-/tmp}/ringlink-netns.XXXXXX") || rl_die "mktemp failed"
    chmod 755 "$RL_TMP"
    trap rl_cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
}

# True when PID is a live child of this shell (so never someone else's
# process that happens to have a recycled PID).
rl_is_our_child() {
    local pid=$1 stat rest ppid
    [ -r "/proc/$pid/stat" ] || return 1
    stat=$(cat "/proc/$pid/stat" 2>/dev/null) || return 1
    # Field 2 (comm) is in parentheses and may hold spaces: cut after ')'.
    rest=${stat##*) }
    ppid=$(printf '%s' "$rest" | cut -d' ' -f2)
    [ "$ppid" = "$$" ]
}

# rl_kill_pid PID [grace_seconds]: TERM, wait (bounded), then KILL.
rl_kill_pid() {
    local pid=$1 grace=${2:-5} i
    rl_is_our_child "$pid" || { wait "$pid" 2>/dev/null; return 0; }
    kill -TERM "$pid" 2>/dev/null
    for ((i = 0; i < grace * 10; i++)); do
        rl_is_our_child "$pid" || break
        # A zombie is dead; wait reaps it.
        if grep -q '^State:[[:space:]]*Z' "/proc/$pid/status" 2>/dev/null; then break; fi
        sleep 0.1
    done
    if rl_is_our_child "$pid" && ! grep -q '^State:[[:space:]]*Z' "/proc/$pid/status" 2>/dev/null; then
        kill -KILL "$pid" 2>/dev/null
    fi
    wait "$pid" 2>/dev/null
    return 0
}

rl_cleanup() {
    local rc=$?
    [ "$RL_CLEANED" = 1 ] && return 0
    RL_CLEANED=1
    # A second Ctrl-C must not cut the (bounded) cleanup short.
    trap '' INT TERM
    local pid ns i
    # Processes first: a namespace with a live process in it outlives `ip netns del`.
    for pid in "${RL_PIDS[@]}"; do
        rl_is_our_child "$pid" && kill -TERM "$pid" 2>/dev/null
    done
    for pid in "${RL_PIDS[@]}"; do
        rl_kill_pid "$pid" 5
    done
    for ns in "${RL_NAMESPACES[@]}"; do
        ip netns del "$ns" 2>/dev/null
    done
    for ns in "${RL_ETC_NETNS[@]}"; do
        rm -rf -- "/etc/netns/$ns"
    done
    for ns in "${RL_NAMESPACES[@]}"; do
        for ((i = 0; i < 20; i++)); do
            [ -e "/run/netns/$ns" ] || break
            sleep 0.1
        done
        [ -e "/run/netns/$ns" ] && printf 'warning: namespace %s is still there\n' "$ns" >&2
    done
    if [ -n "$RL_TMP" ] && [ -d "$RL_TMP" ]; then
        if [ -n "${RL_KEEP_LOGS:-}" ]; then
            printf 'logs kept in %s\n' "$RL_TMP" >&2
        else
            rm -rf -- "$RL_TMP"
        fi
    fi
    return "$rc"
}

# ------------------------------------------------------------------ waiting

# Milliseconds since the epoch.
rl_now_ms() { echo $(( $(date +%s%N) / 1000000 )); }

# rl_wait_until <timeout_s> cmd args... : polls every 0.2 s until the command
# succeeds (0) or the deadline passes (1). The command must itself be
# bounded (every helper here is).
rl_wait_until() {
    local timeout=$1; shift
    local deadline=$(( $(rl_now_ms) + timeout * 1000 ))
    local i max=$(( timeout * 5 + 1 ))
    for ((i = 0; i <= max; i++)); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        [ "$(rl_now_ms)" -ge "$deadline" ] && return 1
        sleep 0.2
    done
    return 1
}
wait_until() { rl_wait_until "$@"; }

# rl_holds_for <seconds> cmd... : true if the command succeeds at every poll
# (every 0.5 s) for the whole period.
rl_holds_for() {
    local secs=$1; shift
    local i
    for ((i = 0; i < secs * 2; i++)); do
        "$@" >/dev/null 2>&1 || return 1
        sleep 0.5
    done
    return 0
}

# ------------------------------------------------------------------ namespaces

rl_ns() { printf '%s%s' "$RL_PREFIX" "$1"; }

# rl_exec <name> cmd... : run a command in our namespace <name>.
rl_exec() { local n=$1; shift; ip netns exec "$(rl_ns "$n")" "$@"; }

rl_ns_exists() { [ -e "/run/netns/$(rl_ns "$1")" ]; }

# rl_ns_add <name> : creates namespace <name> with lo up.
rl_ns_add() {
    local full; full=$(rl_ns "$1")
    rl_ns_exists "$1" && return 0
    ip netns add "$full" || rl_die "ip netns add $full failed"
    RL_NAMESPACES+=("$full")
    ip -n "$full" link set lo up
}

# rl_switch : the "internet": namespace sw with bridge br0.
rl_switch() {
    rl_ns_add sw
    ip -n "$(rl_ns sw)" link add br0 type bridge || rl_die "bridge in sw"
    ip -n "$(rl_ns sw)" link set br0 up
}

# rl_attach <node> <addr/len> [gateway] [ifname]
# Creates namespace <node> (if needed) and plugs interface <ifname> (eth0) into
# the switch with that address. The veth pair is created inside our
# namespaces, never in the host's.
rl_attach() {
    local node=$1 addr=$2 gw=${3:-} ifn=${4:-eth0}
    local port="p-$node"; port=${port:0:15}
    rl_ns_add "$node"
    ip -n "$(rl_ns "$node")" link add "$ifn" type veth peer name "$port" netns "$(rl_ns sw)" \
        || rl_die "veth $node/$ifn"
    ip -n "$(rl_ns sw)" link set "$port" master br0
    ip -n "$(rl_ns sw)" link set "$port" up
    ip -n "$(rl_ns "$node")" addr add "$addr" dev "$ifn"
    ip -n "$(rl_ns "$node")" link set "$ifn" up
    if [ -n "$gw" ]; then
        ip -n "$(rl_ns "$node")" route add default via "$gw"
    fi
}

# rl_link <nodeA> <ifA> <addrA/len> <nodeB> <ifB> <addrB/len> : a direct veth
# between two of our namespaces (e.g. router LAN side to site).
rl_link() {
    local a=$1 ifa=$2 ada=$3 b=$4 ifb=$5 adb=$6
    rl_ns_add "$a"; rl_ns_add "$b"
    ip -n "$(rl_ns "$a")" link add "$ifa" type veth peer name "$ifb" netns "$(rl_ns "$b")" \
        || rl_die "veth $a/$ifa - $b/$ifb"
    ip -n "$(rl_ns "$a")" addr add "$ada" dev "$ifa"
    ip -n "$(rl_ns "$b")" addr add "$adb" dev "$ifb"
    ip -n "$(rl_ns "$a")" link set "$ifa" up
    ip -n "$(rl_ns "$b")" link set "$ifb" up
}

# rl_sysctl <node> key=value : per-namespace sysctl (net.* keys only).
rl_sysctl() {
    local node=$1 kv=$2
    local key=${kv%%=*} val=${kv#*=}
    rl_exec "$node" sh -c "echo '$val' > /proc/sys/$(printf '%s' "$key" | tr . /)"
}

# rl_nat_site <site> <router> <wan_addr/len> <lan_prefix> [plain|random]
# A site behind a NAT router: router namespace on the switch with wan_addr,
# LAN <lan_prefix>.1/24 towards the site at <lan_prefix>.2/24; nftables
# masquerade on the router's WAN (plain: port-preserving, "cone-like";
# random: random source ports per mapping, "symmetric-like").
rl_nat_site() {
    local site=$1 router=$2 wan=$3 lan=$4 mode=${5:-plain}
    local wan_gw=${RL_NAT_WAN_GW:-}
    rl_attach "$router" "$wan" "$wan_gw" eth0
    rl_link "$router" lan0 "$lan.1/24" "$site" eth0 "$lan.2/24"
    ip -n "$(rl_ns "$site")" route add default via "$lan.1"
    rl_sysctl "$router" net.ipv4.ip_forward=1
    rl_masquerade "$router" "$lan.0/24" "$mode" eth0
}

# rl_loss <node> <ifname> <percent> : drops that share of packets leaving
# <ifname> in <node> (locally sent and forwarded), at random.
rl_loss() {
    local node=$1 ifn=$2 pct=$3
    rl_exec "$node" nft -f - <<EOF || rl_die "nft loss on $node"
table inet rl_loss_$ifn {
    chain post {
        type filter hook postrouting priority filter; policy accept;
        oifname "$ifn" numgen random mod 100 < $pct counter drop
    }
}
EOF
}

# rl_loss_dropped <node> <ifname> : packets the loss rule has dropped so far.
rl_loss_dropped() {
    rl_exec "$1" nft list table inet "rl_loss_$2" 2>/dev/null | sed -n 's/.*counter packets \([0-9]*\).*/\1/p' | head -1
}

rl_loss_off() { rl_exec "$1" nft delete table inet "rl_loss_$2" 2>/dev/null; return 0; }

# rl_block <node> <ifname> : drop all UDP leaving <ifname> (forces relay).
rl_block_udp() {
    local node=$1 ifn=$2
    rl_exec "$node" nft -f - <<EOF || rl_die "nft block on $node"
table inet rl_block_$ifn {
    chain post {
        type filter hook postrouting priority filter; policy accept;
        oifname "$ifn" meta l4proto udp drop
    }
}
EOF
}

# ------------------------------------------------------------------ processes

# rl_spawn <name> <node> cmd... : starts cmd in namespace <node> in the
# background; stdout+stderr go to $RL_TMP/<name>.log; PID recorded.
# Call it directly (not in $(...)), so the process is a child of this shell.
rl_spawn() {
    local name=$1 node=$2; shift 2
    ip netns exec "$(rl_ns "$node")" "$@" >>"$RL_TMP/$name.log" 2>&1 &
    local pid=$!
    RL_PIDS+=("$pid")
    RL_PID[$name]=$pid
    rl_info "started $name (pid $pid) in $node: $*"
}

rl_pid() { printf '%s' "${RL_PID[$1]:-}"; }

rl_alive() {
    local pid=${RL_PID[$1]:-}
    [ -n "$pid" ] || return 1
    rl_is_our_child "$pid" || return 1
    ! grep -q '^State:[[:space:]]*Z' "/proc/$pid/status" 2>/dev/null
}

# rl_stop <name> : ends one process we started, by PID.
rl_stop() {
    local pid=${RL_PID[$1]:-}
    [ -n "$pid" ] || return 0
    rl_kill_pid "$pid" 5
    unset "RL_PID[$1]"
}

rl_log_file() { printf '%s/%s.log' "$RL_TMP" "$1"; }

# rl_log_has <name> <regex> : grep -E in a process log.
rl_log_has() { grep -Eq -- "$2" "$(rl_log_file "$1")" 2>/dev/null; }

# rl_log_count <name> <regex> : number of matching lines (0 if none).
rl_log_count() {
    local n
    n=$(grep -Ec -- "$2" "$(rl_log_file "$1")" 2>/dev/null) || true
    printf '%s' "${n:-0}"
}

# rl_ge <a> <b> : numeric a >= b, false on garbage.
rl_ge() { [ "${1:-x}" -ge "${2:-x}" ] 2>/dev/null; }

# ------------------------------------------------------------------ configs

# rl_server_conf <name> [extra toml lines...] : writes $RL_TMP/<name>.toml,
# with the control socket (`ringlink status --server`) at $RL_TMP/<name>.sock.
rl_server_conf() {
    local name=$1; shift
    local f="$RL_TMP/$name.toml" line
    {
        printf 'listen = "%s:%s"\n' "$RL_SERVER_IP" "$RL_SERVER_PORT"
        printf 'password = "%s"\n' "$RL_PASSWORD"
        printf 'pool = "%s"\n' "$RL_POOL"
        printf 'control_socket = "%s"\n' "$(rl_sock "$name")"
        for line in "$@"; do printf '%s\n' "$line"; done
    } >"$f"
    printf '%s' "$f"
}

# rl_client_conf <name> [extra toml lines...] : writes $RL_TMP/<name>.toml.
# Defaults: ws://server, the run's password, tun rl0, control socket
# $RL_TMP/<name>.sock. Extra lines may override server/password via
# RL_CLIENT_SERVER / RL_CLIENT_PASSWORD; RL_CLIENT_SERVERS (a TOML list's
# inside, like '"ws://a:1", "ws://b:1"') gives several servers instead.
rl_client_conf() {
    local name=$1; shift
    local f="$RL_TMP/$name.toml" line
    {
        if [ -n "${RL_CLIENT_SERVERS:-}" ]; then
            printf 'server = [%s]\n' "$RL_CLIENT_SERVERS"
        else
            printf 'server = "%s"\n' "${RL_CLIENT_SERVER:-ws://$RL_SERVER_IP:$RL_SERVER_PORT}"
        fi
        printf 'password = "%s"\n' "${RL_CLIENT_PASSWORD:-$RL_PASSWORD}"
        printf 'tun = "rl0"\n'
        printf 'control_socket = "%s"\n' "$(rl_sock "$name")"
        for line in "$@"; do printf '%s\n' "$line"; done
    } >"$f"
    printf '%s' "$f"
}

rl_sock() { printf '%s/%s.sock' "$RL_TMP" "$1"; }

# rl_start_server [name] [node] [conf] : server process <name> in <node>.
rl_start_server() {
    local name=${1:-server} node=${2:-srv} conf=${3:-$RL_TMP/${1:-server}.toml}
    [ -f "$conf" ] || conf=$(rl_server_conf "$name")
    rl_spawn "$name" "$node" "$RINGLINK" server --config "$conf"
}

rl_server_listening() {
    local node=${1:-srv}
    rl_exec "$node" ss -Hltn "sport = :$RL_SERVER_PORT" 2>/dev/null | grep -q LISTEN
}

# rl_start_client <name> <node> [conf] : client process <name> in <node>.
rl_start_client() {
    local name=$1 node=$2 conf=${3:-$RL_TMP/$1.toml}
    [ -f "$conf" ] || conf=$(rl_client_conf "$name")
    rl_spawn "$name" "$node" "$RINGLINK" client --config "$conf"
}

# ------------------------------------------------------------------ status

# rl_status <name> : the client's `ringlink status --json` (bounded).
rl_status() { timeout --foreground 10 "$RINGLINK" status --socket "$(rl_sock "$1")" --json 2>/dev/null; }

# rl_status_get <name> <python expr over d> : e.g. rl_status_get a 'd["connected"]'
# Prints JSON-style scalars (true/false/null) or strings as-is.
rl_status_get() {
    local json
    json=$(rl_status "$1") || return 1
    printf '%s' "$json" | python3 -c '
import json, sys
d = json.load(sys.stdin)
v = eval(sys.argv[1], {"d": d})
if isinstance(v, bool) or v is None:
    print(json.dumps(v))
elif isinstance(v, (dict, list)):
    print(json.dumps(v))
else:
    print(v)
' "$2" 2>/dev/null
}

# rl_server_status_get <name> <python expr over d> : like rl_status_get, over
# the server's `ringlink status --server --json`.
rl_server_status_get() {
    local json
    json=$(timeout --foreground 10 "$RINGLINK" status --server --socket "$(rl_sock "$1")" --json 2>/dev/null) || return 1
    printf '%s' "$json" | python3 -c '
import json, sys
d = json.load(sys.stdin)
v = eval(sys.argv[1], {"d": d})
print(json.dumps(v) if isinstance(v, (bool, dict, list)) or v is None else v)
' "$2" 2>/dev/null
}

# rl_member_get <server name> <vip> <field> : one field of a member's line in
# the server's status (empty if it is not a member).
rl_member_get() {
    rl_server_status_get "$1" "next((m[\"$3\"] for m in d[\"members\"] if m[\"vip\"] == \"$2\"), \"\")"
}

rl_connected() { [ "$(rl_status_get "$1" 'd["connected"]')" = true ]; }
rl_not_connected() { ! rl_connected "$1"; }

# rl_vip <name> : the client's virtual address without prefix.
rl_vip() {
    local a
    a=$(rl_status_get "$1" 'd["address"]') || return 1
    [ -n "$a" ] && [ "$a" != null ] || return 1
    printf '%s' "${a%%/*}"
}

rl_has_vip() { rl_vip "$1" >/dev/null; }

rl_reconnects() { rl_status_get "$1" 'd["reconnects"]'; }

# rl_reconnected <name> <min> : connected and reconnects >= min.
rl_reconnected() {
    local r
    rl_connected "$1" || return 1
    r=$(rl_reconnects "$1") || return 1
    [ "$r" -ge "$2" ] 2>/dev/null
}

# rl_ready <name> : connected and has an address.
rl_ready() { rl_connected "$1" && rl_has_vip "$1"; }

# rl_paths <name> : "vip=path" per peer, or "(no peers listed)".
rl_paths() {
    rl_status_get "$1" '", ".join(p["vip"] + ": " + p["path"] + " (peer state " + p["state"] + ")" for p in d["peers"]) or "(no peers listed)"'
}

# ------------------------------------------------------------------ traffic

# rl_ping <node> <addr> [count] : count (3) pings, 1 s timeout each, 0.2 s apart.
rl_ping() {
    local node=$1 addr=$2 count=${3:-3}
    timeout --foreground $((count + 5)) ip netns exec "$(rl_ns "$node")" ping -n -q -c "$count" -i 0.2 -W 1 "$addr" >/dev/null 2>&1
}

# rl_ping_once <node> <addr> : a single ping (for rl_wait_until).
rl_ping_once() {
    timeout --foreground 3 ip netns exec "$(rl_ns "$1")" ping -n -q -c 1 -W 1 "$2" >/dev/null 2>&1
}

# rl_tun_up <node> [ifname] : the TUN device exists in <node>.
rl_tun_exists() { ip -n "$(rl_ns "$1")" link show "${2:-rl0}" >/dev/null 2>&1; }

# rl_tun_has_addr <node> <addr> [ifname]
rl_tun_has_addr() {
    ip -n "$(rl_ns "$1")" -4 addr show dev "${3:-rl0}" 2>/dev/null | grep -q "inet $2/"
}

# Python TCP sink: listens on ADDR:PORT, accepts one connection, reads to
# EOF, writes "<bytes> <sha256>" to OUT, then exits. Creates OUT.ready once
# listening.
RL_PY_SINK='
import hashlib, socket, sys, time
addr, port, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((addr, port)); s.listen(1); s.settimeout(120)
open(out + ".ready", "w").close()
c, _ = s.accept(); c.settimeout(60)
h = hashlib.sha256(); n = 0; t0 = None
while True:
    b = c.recv(1 << 16)
    if not b: break
    if t0 is None: t0 = time.monotonic()
    h.update(b); n += len(b)
dt = time.monotonic() - t0 if t0 else 0.0
c.close()
with open(out + ".tmp", "w") as f: f.write("%d %s %.6f\n" % (n, h.hexdigest(), dt))
import os; os.rename(out + ".tmp", out)
'

# Python TCP source: connects to ADDR:PORT and sends FILE (or N random MB if
# FILE is "-N"), prints "<bytes> <sha256> <seconds>".
RL_PY_SOURCE='
import hashlib, os, socket, sys, time
addr, port, src = sys.argv[1], int(sys.argv[2]), sys.argv[3]
s = socket.create_connection((addr, port), timeout=30)
s.settimeout(60)
h = hashlib.sha256(); n = 0; t0 = time.monotonic()
if src.startswith("-"):
    left = int(src[1:]) << 20; blk = os.urandom(1 << 20)
    while left > 0:
        b = blk[:min(left, len(blk))]; s.sendall(b); h.update(b); n += len(b); left -= len(b)
else:
    with open(src, "rb") as f:
        while True:
            b = f.read(1 << 16)
            if not b: break
            s.sendall(b); h.update(b); n += len(b)
s.shutdown(socket.SHUT_WR)
s.settimeout(30)
while s.recv(4096): pass
print("%d %s %.6f" % (n, h.hexdigest(), time.monotonic() - t0))
'

# rl_file_exists <path>
rl_file_exists() { [ -e "$1" ]; }

# rl_ping_stats <file-with-ping-output> : "median p90 count" of the RTTs (ms).
rl_ping_stats() {
    python3 - "$1" <<'EOF'
import re, sys
rtts = sorted(float(m.group(1)) for m in re.finditer(r"time=([0-9.]+) ms", open(sys.argv[1]).read()))
if not rtts:
    print("- - 0"); sys.exit(0)
def pct(p):
    k = max(0, min(len(rtts) - 1, int(round(p / 100.0 * (len(rtts) - 1)))))
    return rtts[k]
print("%.3f %.3f %d" % (pct(50), pct(90), len(rtts)))
EOF
}

# ------------------------------------------------------------------ worlds

# rl_world_relay <n_clients> : switch, server at 10.91.0.1, sites c1..cN at
# 10.91.0.(10+i), server running, clients a, b, c… started (names a b c d),
# each in its own namespace with the same name. Waits for the server to
# listen. Clients are only started, not awaited.
RL_SITE_NAMES=(a b c d e f)
rl_world_relay() {
    local n=${1:-2} i name
    rl_switch
    rl_attach srv "$RL_SERVER_IP/24"
    rl_server_conf server >/dev/null
    rl_start_server server srv
    rl_wait_until 10 rl_server_listening srv || { rl_fail "server listens on $RL_SERVER_IP:$RL_SERVER_PORT"; return 1; }
    for ((i = 0; i < n; i++)); do
        name=${RL_SITE_NAMES[$i]}
        rl_attach "$name" "10.91.0.$((10 + i))/24"
        rl_client_conf "$name" >/dev/null
        rl_start_client "$name" "$name"
    done
    return 0
}

# ------------------------------------------------------------------ TLS

# rl_make_certs <dir> <server_ip> : a throwaway CA (ca.pem) and a server
# certificate for IP <server_ip> (cert.pem, key.pem) signed by it. The leaf
# is not a CA certificate (rustls/webpki refuse a CA cert as end entity).
rl_make_certs() {
    local d=$1 ip=$2
    command -v openssl >/dev/null 2>&1 || { echo "openssl missing (apt-get install openssl)" >&2; return 1; }
    mkdir -p "$d"
    printf 'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\nsubjectAltName=IP:%s\n' "$ip" >"$d/leaf.ext"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
        -keyout "$d/ca.key" -out "$d/ca.pem" -days 2 -subj "/CN=ringlink test CA" \
        -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
        >"$d/openssl.log" 2>&1 || return 1
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
        -keyout "$d/key.pem" -out "$d/leaf.csr" -subj "/CN=$ip" >>"$d/openssl.log" 2>&1 || return 1
    openssl x509 -req -in "$d/leaf.csr" -CA "$d/ca.pem" -CAkey "$d/ca.key" -CAcreateserial \
        -out "$d/cert.pem" -days 2 -extfile "$d/leaf.ext" >>"$d/openssl.log" 2>&1 || return 1
}

# rl_make_selfsigned <dir> <server_ip> : one self-signed certificate
# (self.pem, self.key) with the IP in subjectAltName and CA:FALSE.
rl_make_selfsigned() {
    local d=$1 ip=$2
    mkdir -p "$d"
    printf '[req]\ndistinguished_name=dn\nx509_extensions=v3\nprompt=no\n[dn]\nCN=%s\n[v3]\nbasicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\nsubjectAltName=IP:%s\n' "$ip" "$ip" >"$d/self.cnf"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
        -keyout "$d/self.key" -out "$d/self.pem" -days 2 -config "$d/self.cnf" >>"$d/openssl.log" 2>&1
}

# ------------------------------------------------------------------ sites

# Site-to-site worlds (test_sites_*.sh, demo.sh). Each site X is a gateway
# namespace gw-X (ringlink client, static VIP 10.77.0.1N) on the "internet"
# switch, and a LAN host namespace lan-X behind it on 192.168.1N.0/24
# (gateway .1, host .2, default route via the gateway). The server pushes a
# [[route]] per LAN via its gateway's VIP.
#
# The internet is 198.51.100.0/24 (TEST-NET-2, documentation only): once a
# client has received subnet routes it ignores heartbeats from private
# source addresses (PROTOCOL.md §5.4), so direct paths between gateways need
# public-looking addresses. It exists only inside our namespaces.
RL_SITES_NET="198.51.100"
declare -A RL_SITE_IDX=([a]=1 [b]=2 [c]=3 [d]=4)

rl_site_vip()  { printf '10.77.0.1%s' "${RL_SITE_IDX[$1]}"; }
rl_site_lan()  { printf '192.168.1%s.0/24' "${RL_SITE_IDX[$1]}"; }
rl_site_host() { printf '192.168.1%s.2' "${RL_SITE_IDX[$1]}"; }
rl_site_wan()  { printf '%s.1%s' "$RL_SITES_NET" "${RL_SITE_IDX[$1]}"; }

# rl_sites_server [extra toml lines...] : switch, server namespace srv on
# $RL_SITES_NET.1 with its STUN responder and a [[route]] for every site in
# $RL_SITES (default "a b c"); waits until it listens.
rl_sites_server() {
    local s lines=()
    RL_SERVER_IP="$RL_SITES_NET.1"
    rl_switch
    rl_attach srv "$RL_SERVER_IP/24"
    for s in ${RL_SITES:-a b c}; do
        lines+=("[[route]]" "dst = \"$(rl_site_lan "$s")\"" "via = \"$(rl_site_vip "$s")\"")
    done
    rl_server_conf server "stun = \"$RL_SERVER_IP:3478\"" "$@" "${lines[@]}" >/dev/null
    rl_start_server server srv
    rl_wait_until 10 rl_server_listening srv
}

# rl_site <x> [extra client toml lines...] : gateway gw-<x> and LAN host
# lan-<x>; writes the gateway's client config gw-<x>.toml (static VIP,
# STUN on the server, latency routing on) but does not start it.
rl_site() {
    local x=$1; shift
    local i=${RL_SITE_IDX[$x]}
    rl_attach "gw-$x" "$(rl_site_wan "$x")/24"
    rl_link "gw-$x" lan0 "192.168.1$i.1/24" "lan-$x" eth0 "192.168.1$i.2/24"
    ip -n "$(rl_ns "lan-$x")" route add default via "192.168.1$i.1"
    rl_client_conf "gw-$x" \
        "address = \"$(rl_site_vip "$x")/24\"" \
        "stun = \"stun://$RL_SERVER_IP\"" \
        "$@" >/dev/null
}

# rl_sites_world [extra client toml lines...] : server plus every site in
# $RL_SITES, gateways started (not awaited).
rl_sites_world() {
    local x
    rl_sites_server || return 1
    for x in ${RL_SITES:-a b c}; do
        rl_site "$x" "$@"
        rl_start_client "gw-$x" "gw-$x"
    done
}

# rl_peer_get <client> <peer vip> <field> : one field of a peer's status
# line (empty if the peer is not listed).
rl_peer_get() {
    rl_status_get "$1" "next((p[\"$3\"] for p in d[\"peers\"] if p[\"vip\"] == \"$2\"), \"\")"
}

# rl_peer_direct <client> <peer vip> : that peer is CONNECTED over UDP.
rl_peer_direct() { [ "$(rl_peer_get "$1" "$2" path)" = direct ]; }
rl_peer_not_direct() { ! rl_peer_direct "$1" "$2"; }

# rl_route_get <client> <dst> <field> : a field of the status route for
# <dst> (a VIP, or a subnet like 192.168.13.0/24); empty if there is none.
rl_route_get() {
    rl_status_get "$1" "next((r[\"$3\"] for r in d[\"routes\"] if r[\"dst\"] == \"$2\"), \"\")"
}

# rl_route_via <client> <dst> <next hop> : status routes <dst> via <next hop>.
rl_route_via() { [ "$(rl_route_get "$1" "$2" next_hop)" = "$3" ]; }

# rl_no_route <client> <dst> : status has no route for <dst>.
rl_no_route() { [ -z "$(rl_route_get "$1" "$2" next_hop)" ]; }

# rl_has_route <client> <dst> : the status lists a route for <dst>.
rl_has_route() { ! rl_no_route "$1" "$2"; }

# rl_if_bytes <node> <ifname> : "rx tx" byte counters of an interface.
rl_if_bytes() {
    local d="/sys/class/net/$2/statistics"
    rl_exec "$1" sh -c "echo \$(cat $d/rx_bytes) \$(cat $d/tx_bytes)" 2>/dev/null
}

# rl_if_total <node> <ifname> : rx + tx bytes of an interface.
rl_if_total() {
    local rx tx
    read -r rx tx <<<"$(rl_if_bytes "$1" "$2")"
    echo $(( ${rx:-0} + ${tx:-0} ))
}

# rl_block_pair <addr1> <addr2> : the "internet" switch drops UDP and TCP
# between the two addresses, both ways (nftables bridge family in namespace
# sw; the endpoints and everyone else are left alone), so neither a UDP
# path nor a direct TCP stream forms between them. One table per pair.
rl_block_pair() {
    local t="rl_pair_${1//./_}_${2//./_}"
    rl_exec sw nft -f - <<EOF2 || rl_die "nft pair block on sw"
table bridge $t {
    chain pair {
        type filter hook forward priority filter; policy accept;
        ip saddr $1 ip daddr $2 ip protocol { tcp, udp } counter drop
        ip saddr $2 ip daddr $1 ip protocol { tcp, udp } counter drop
    }
}
EOF2
}

# rl_unblock_pair <addr1> <addr2>
rl_unblock_pair() { rl_exec sw nft delete table bridge "rl_pair_${1//./_}_${2//./_}" 2>/dev/null; return 0; }

# rl_pair_dropped <addr1> <addr2> : packets the pair rule dropped so far.
rl_pair_dropped() {
    rl_exec sw nft list table bridge "rl_pair_${1//./_}_${2//./_}" 2>/dev/null \
        | sed -n 's/.*counter packets \([0-9]*\).*/\1/p' | awk '{s += $1} END {print s + 0}'
}

# Python SYN watcher: on interface IFACE, waits (up to TIMEOUT s) for a TCP
# SYN (not SYN-ACK) to PORT and writes its MSS option to OUT ("none" when it
# has none). Creates OUT.ready once the raw socket is open.
RL_PY_SYN_MSS='
import os, socket, struct, sys, time
ifn, port, out, timeout = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
s = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(0x0800))
s.bind((ifn, 0)); s.settimeout(0.5)
open(out + ".ready", "w").close()
end = time.monotonic() + timeout; mss = None
while time.monotonic() < end and mss is None:
    try: p = s.recv(65535)
    except socket.timeout: continue
    if len(p) < 20 or p[9] != 6: continue
    t = p[(p[0] & 15) * 4:]
    if len(t) < 20 or struct.unpack("!H", t[2:4])[0] != port: continue
    if t[13] & 0x12 != 0x02: continue
    opts, i, mss = t[20:(t[12] >> 4) * 4], 0, "none"
    while i < len(opts):
        k = opts[i]
        if k == 0: break
        if k == 1: i += 1; continue
        if i + 1 >= len(opts) or opts[i + 1] < 2: break
        if k == 2 and opts[i + 1] == 4: mss = str(struct.unpack("!H", opts[i + 2:i + 4])[0])
        i += opts[i + 1]
with open(out + ".tmp", "w") as f: f.write((mss or "timeout") + "\n")
os.rename(out + ".tmp", out)
'

# rl_secs_since <t0 ms> : seconds since t0 with one decimal, e.g. "2.4".
rl_secs_since() {
    local d=$(( $(rl_now_ms) - $1 ))
    printf '%d.%d' $((d / 1000)) $(( (d % 1000) / 100 ))
}

# ------------------------------------------------------------------ p2p

# rl_router_firewall <router> [wan_ifname] : the usual home-router input
# firewall on the WAN side: new connections *to the router itself* are
# dropped (forwarded traffic and replies are untouched). Besides being
# realistic it matters for hole punching: a dropped packet never gets its
# conntrack entry confirmed, so the peer's first probe, arriving before our
# own outbound one, cannot leave an unreplied entry behind that would make
# masquerade pick a different source port for our reply (the classic Linux
# port clash that turns a "cone" router symmetric for that flow).
rl_router_firewall() {
    local router=$1 ifn=${2:-eth0}
    rl_exec "$router" nft -f - <<EOF2 || rl_die "nft firewall on $router"
table inet rl_fw {
    chain in {
        type filter hook input priority filter; policy accept;
        iifname "$ifn" ct state new counter drop
    }
}
EOF2
}

# rl_masquerade <router> <lan_cidr> [plain|random] [wan_ifname] : the NAT
# rule of rl_nat_site, for topologies built by hand.
rl_masquerade() {
    local router=$1 lan=$2 mode=${3:-plain} ifn=${4:-eth0}
    local masq="masquerade"
    [ "$mode" = random ] && masq="masquerade random"
    rl_exec "$router" nft -f - <<EOF2 || rl_die "nft nat on $router"
table ip rl_nat {
    chain post {
        type nat hook postrouting priority srcnat; policy accept;
        oifname "$ifn" ip saddr $lan $masq
    }
}
EOF2
}

# rl_nat_lan <router> <wan_addr/len> <lan_prefix> <mode> <host>... : one NAT
# router whose LAN <lan_prefix>.0/24 is a switch (namespace <router>lan,
# bridge br0) shared by several hosts: the router is <lan_prefix>.1, the
# hosts .2, .3, … in the order given, each with the router as default route.
rl_nat_lan() {
    local router=$1 wan=$2 lan=$3 mode=$4; shift 4
    local lsw="${router}lan" i=2 h port
    rl_attach "$router" "$wan" "${RL_NAT_WAN_GW:-}" eth0
    rl_ns_add "$lsw"
    ip -n "$(rl_ns "$lsw")" link add br0 type bridge || rl_die "bridge in $lsw"
    ip -n "$(rl_ns "$lsw")" link set br0 up
    for h in "$router" "$@"; do
        rl_ns_add "$h"
        port="p-$h"; port=${port:0:15}
        local ifn=eth0 addr
        if [ "$h" = "$router" ]; then ifn=lan0; addr="$lan.1/24"; else addr="$lan.$i/24"; i=$((i + 1)); fi
        ip -n "$(rl_ns "$h")" link add "$ifn" type veth peer name "$port" netns "$(rl_ns "$lsw")" \
            || rl_die "veth $h/$ifn"
        ip -n "$(rl_ns "$lsw")" link set "$port" master br0
        ip -n "$(rl_ns "$lsw")" link set "$port" up
        ip -n "$(rl_ns "$h")" addr add "$addr" dev "$ifn"
        ip -n "$(rl_ns "$h")" link set "$ifn" up
        [ "$h" = "$router" ] || ip -n "$(rl_ns "$h")" route add default via "$lan.1"
    done
    rl_sysctl "$router" net.ipv4.ip_forward=1
    rl_masquerade "$router" "$lan.0/24" "$mode" eth0
}

# rl_world_p2p <mode_a> <mode_b> [client toml lines...] : the "internet" is
# $RL_P2P_NET.0/24 (default 198.18.0, outside Candy's private blocks, so
# peers see each other's router addresses as public endpoints, as on the
# real internet; 10/8 would make them "LAN" paths). Sets RL_SERVER_IP to
# $RL_P2P_NET.1, runs the server there with its STUN responder on :3478,
# and builds sites a (192.168.1.2 behind router ra = .21) and b (192.168.2.2
# behind rb = .22), each router masquerading (<mode>: plain|random) with
# rl_router_firewall. Writes client configs a and b (STUN on, the extra
# lines appended) but starts no client.
RL_P2P_NET="${RL_P2P_NET:-198.18.0}"
rl_world_p2p() {
    local ma=$1 mb=$2; shift 2
    RL_SERVER_IP="$RL_P2P_NET.1"
    rl_switch
    rl_attach srv "$RL_SERVER_IP/24"
    rl_server_conf server "stun = \"$RL_SERVER_IP:3478\"" >/dev/null
    rl_start_server server srv
    rl_wait_until 10 rl_server_listening srv || { rl_fail "server listens on $RL_SERVER_IP:$RL_SERVER_PORT"; return 1; }
    rl_nat_site a ra "$RL_P2P_NET.21/24" 192.168.1 "$ma"
    rl_nat_site b rb "$RL_P2P_NET.22/24" 192.168.2 "$mb"
    rl_router_firewall ra
    rl_router_firewall rb
    rl_p2p_client_conf a "$@" >/dev/null
    rl_p2p_client_conf b "$@" >/dev/null
    return 0
}

# rl_hosts_entry <node> <ip> <name> : <name> resolves to <ip> for processes
# in <node>: `ip netns exec` mounts /etc/netns/<ns>/hosts over /etc/hosts,
# so no DNS server and nothing outside the test is involved. Removed on exit.
RL_ETC_NETNS=()
rl_hosts_entry() {
    local ns; ns=$(rl_ns "$1")
    if [ ! -d "/etc/netns/$ns" ]; then
        mkdir -p "/etc/netns/$ns" || rl_die "mkdir /etc/netns/$ns"
        RL_ETC_NETNS+=("$ns")
        printf '127.0.0.1 localhost\n' >"/etc/netns/$ns/hosts"
    fi
    printf '%s %s\n' "$2" "$3" >>"/etc/netns/$ns/hosts"
}

# rl_world_turn <secret> [host] [udp|tcp|tls] : the switch with the
# ringlink server at $RL_P2P_NET.1 (STUN on, and `turn` pointing at coturn
# with <secret>, by <host> if given: the caller makes it resolve where
# clients run) and coturn (Debian's turnserver, process "coturn") at
# $TURN_IP = $RL_P2P_NET.3, relaying from ports 49152-49999 of that
# address. Clients reach coturn on UDP 3478 by default; with "tcp" only on
# TCP 3478 (`turn://…?transport=tcp`); with "tls" only on TLS port 5349
# with a certificate for <host> from a CA made here ($RL_TMP/ca.pem), and
# the server hands out turns:// URLs. The caller adds the sites.
rl_world_turn() {
    local secret=$1 host=${2:-} mode=${3:-udp}
    command -v turnserver >/dev/null || { rl_fail "turnserver (Debian package coturn) is installed"; return 1; }
    RL_SERVER_IP="$RL_P2P_NET.1"
    TURN_IP="$RL_P2P_NET.3"
    RL_TURN_PORT=3478
    RL_TURN_TCP=
    local url="turn://${host:-$TURN_IP}:3478" listen=(--no-tls --no-dtls --no-tcp --listening-port 3478)
    if [ "$mode" = tcp ]; then
        RL_TURN_TCP=1
        url="turn://${host:-$TURN_IP}:3478?transport=tcp"
        listen=(--no-udp --no-tls --no-dtls --listening-port 3478)
    fi
    if [ "$mode" = tls ]; then
        RL_TURN_TCP=1
        rl_turn_cert "$host" || { rl_fail "a throwaway CA and a certificate for $host"; return 1; }
        rl_pass "a throwaway CA and a certificate for $host"
        RL_TURN_PORT=5349
        url="turns://$host:5349"
        listen=(--no-udp --no-tcp --no-dtls --cert "$RL_TMP/turn.pem" --pkey "$RL_TMP/turn.key"
            --tls-listening-port 5349)
    fi
    rl_switch
    rl_attach srv "$RL_SERVER_IP/24"
    rl_attach turn "$TURN_IP/24"
    rl_server_conf server "stun = \"$RL_SERVER_IP:3478\"" \
        "turn = { url = \"$url\", secret = \"$secret\", ttl = 600 }" >/dev/null
    rl_start_server server srv
    rl_wait_until 10 rl_server_listening srv || { rl_fail "server listens"; return 1; }
    rl_spawn coturn turn turnserver -n --no-cli "${listen[@]}" \
        --listening-ip "$TURN_IP" --relay-ip "$TURN_IP" \
        --min-port 49152 --max-port 49999 --use-auth-secret --static-auth-secret "$secret" \
        --realm ringlink.test --userdb "$RL_TMP/turndb" --pidfile "$RL_TMP/turnserver.pid" \
        --log-file stdout --simple-log
    rl_wait_until 10 rl_coturn_listens || { rl_fail "coturn listens on $TURN_IP:$RL_TURN_PORT"; return 1; }
    rl_pass "coturn listens on $TURN_IP:$RL_TURN_PORT"
}
rl_coturn_listens() {
    local ss_args=-Huln
    [ -n "$RL_TURN_TCP" ] && ss_args=-Htln
    rl_exec turn ss "$ss_args" | grep -q "$TURN_IP:$RL_TURN_PORT "
}

# rl_turn_cert <name> : a CA ($RL_TMP/ca.pem) and a certificate for <name>
# signed by it ($RL_TMP/turn.pem, key turn.key), valid for this run only.
rl_turn_cert() {
    {
        openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
            -subj "/CN=ringlink test CA" -keyout "$RL_TMP/ca.key" -out "$RL_TMP/ca.pem" &&
        openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
            -subj "/CN=$1" -keyout "$RL_TMP/turn.key" -out "$RL_TMP/turn.csr" &&
        printf 'subjectAltName=DNS:%s\n' "$1" >"$RL_TMP/san.ext" &&
        openssl x509 -req -in "$RL_TMP/turn.csr" -CA "$RL_TMP/ca.pem" -CAkey "$RL_TMP/ca.key" \
            -CAcreateserial -days 2 -extfile "$RL_TMP/san.ext" -out "$RL_TMP/turn.pem"
    } >"$RL_TMP/openssl.log" 2>&1 && test -s "$RL_TMP/turn.pem"
}

# rl_check_ciphertext <pcap> <hex pattern> : the capture holds a ping
# burst (> 40 kB) and not the first 8 bytes of the pings' payload pattern.
rl_check_ciphertext() {
    local bytes plain
    read -r bytes plain <<<"$(python3 - "$1" "$2" <<'EOF'
import sys
data = open(sys.argv[1], "rb").read()
pattern = bytes.fromhex(sys.argv[2])
print(len(data), int(pattern[:8] in data))
EOF
)"
    echo "  capture: ${bytes:-0} bytes"
    check "the capture holds the burst (> 40 kB)" rl_ge "${bytes:-0}" 40000
    check "and the ping's payload pattern is nowhere in it (ciphertext only)" test "${plain:-1}" = 0
}

# rl_p2p_client_conf <name> [toml lines...] : client config with STUN on.
rl_p2p_client_conf() {
    local name=$1; shift
    rl_client_conf "$name" "stun = \"stun://$RL_SERVER_IP\"" "$@"
}

# rl_count <node> <tag> <hook> [nft match...] : a counting rule (accepts
# everything) in table inet rl_count_<tag>, hook input/forward/output/...
rl_count() {
    local node=$1 tag=$2 hook=$3; shift 3
    rl_exec "$node" nft -f - <<EOF2 || rl_die "nft counter $tag on $node"
table inet rl_count_$tag {
    chain c {
        type filter hook $hook priority filter - 10; policy accept;
        $* counter
    }
}
EOF2
}

# rl_counted <node> <tag> [packets|bytes] : what rl_count has seen (bytes).
rl_counted() {
    local what=${3:-bytes}
    rl_exec "$1" nft list table inet "rl_count_$2" 2>/dev/null \
        | sed -n "s/.*counter packets \([0-9]*\) bytes \([0-9]*\).*/\1 \2/p" | head -1 \
        | { read -r p b; [ "$what" = packets ] && printf '%s' "${p:-0}" || printf '%s' "${b:-0}"; }
}

# rl_drop_udp <router> : the router forwards no UDP at all, either way (a
# network that blocks UDP); rl_udp_dropped <router> says how many it dropped.
rl_drop_udp() {
    rl_exec "$1" nft -f - <<EOF2 || rl_die "UDP drop on $1"
table inet rl_noudp {
    chain forward_udp {
        type filter hook forward priority filter - 5; policy accept;
        meta l4proto udp counter drop
    }
}
EOF2
}
rl_udp_dropped() {
    rl_exec "$1" nft list table inet rl_noudp | sed -n 's/.*counter packets \([0-9]*\).*/\1/p' | head -1
}

# rl_cut_udp <router> <ip> : drops forwarded UDP to or from <ip> (the other
# site's router), leaving everything else (WS, STUN to the server) alone.
rl_cut_udp() {
    local node=$1 ip=$2
    rl_exec "$node" nft -f - <<EOF2 || rl_die "nft cut on $node"
table inet rl_cut {
    chain cut {
        type filter hook forward priority filter; policy accept;
        ip daddr $ip meta l4proto udp counter drop
        ip saddr $ip meta l4proto udp counter drop
    }
}
EOF2
}

# rl_cut_dropped <router> : packets the cut has dropped (both rules).
rl_cut_dropped() {
    rl_exec "$1" nft list table inet rl_cut 2>/dev/null \
        | sed -n 's/.*counter packets \([0-9]*\).*/\1/p' | awk '{s += $1} END {print s + 0}'
}

rl_cut_off() { rl_exec "$1" nft delete table inet rl_cut 2>/dev/null; return 0; }

# rl_peer_eval <name> <vip> <python expr over p> : a field of one peer in the
# client's status (fails if the peer is not listed).
rl_peer_eval() {
    rl_status_get "$1" "[p for p in d[\"peers\"] if p[\"vip\"] == \"$2\"][0]" \
        | python3 -c 'import json, sys; p = json.load(sys.stdin); v = eval(sys.argv[1], {"p": p}); print(json.dumps(v) if isinstance(v, bool) or v is None else v)' "$3" 2>/dev/null
}

# rl_nat_of <name> : the client's NAT classification in its status
# ("symmetric/random", "cone/port-restricted", …; empty until classified).
rl_nat_of() { rl_status_get "$1" 'd["nat"]'; }

# rl_data_port <name> : the client's data port (UDP), from its log.
rl_data_port() { grep -o 'udp_port=[0-9]*' "$(rl_log_file "$1")" 2>/dev/null | head -1 | cut -d= -f2; }

# rl_peer_relay <name> <vip> : that peer is listed and not on the direct path.
rl_peer_relay() {
    [ "$(rl_peer_eval "$1" "$2" 'p["path"]')" = relay ]
}

# rl_log_time_ms <name> <regex> [first|last] : the timestamp (ms since the
# epoch) of the first (last) matching log line of a ringlink process.
rl_log_time_ms() {
    local sel=${3:-first} line
    if [ "$sel" = last ]; then
        line=$(grep -E -- "$2" "$(rl_log_file "$1")" 2>/dev/null | tail -1)
    else
        line=$(grep -E -m1 -- "$2" "$(rl_log_file "$1")" 2>/dev/null)
    fi
    [ -n "$line" ] || return 1
    python3 -c '
import datetime, sys
ts = sys.argv[1].split()[0].rstrip("Z")
t = datetime.datetime.fromisoformat(ts[:26]).replace(tzinfo=datetime.timezone.utc)
print(int(t.timestamp() * 1000))' "$line" 2>/dev/null
}

# rl_signal <name> <SIG> : sends a signal to one process we started, by PID.
rl_signal() {
    local pid=${RL_PID[$1]:-}
    [ -n "$pid" ] && rl_is_our_child "$pid" && kill "-$2" "$pid" 2>/dev/null
}

# rl_exited <name> : the process has ended (or was never started).
rl_exited() { ! rl_alive "$1"; }

# rl_ping_losses <log> : "sent lost" of a ping -O run, counting the
# sequence numbers up to the last one answered (so stopping ping early does
# not count its last, unanswered probes).
rl_ping_losses() {
    python3 - "$1" <<'EOF2'
import re, sys
text = open(sys.argv[1]).read()
got = {int(m.group(1)) for m in re.finditer(r"icmp_seq=(\d+) ttl=", text)}
if not got:
    print("0 0"); sys.exit(0)
last = max(got)
print("%d %d" % (last, sum(1 for s in range(1, last + 1) if s not in got)))
EOF2
}

# rl_transfer <from_node> <to_node> <to_addr> <port> <MB> : sends MB random
# megabytes over TCP and checks count and sha256 at the sink. Sets
# RL_XFER_BYTES (received), RL_XFER_SECS and RL_XFER_MBIT; true if intact.
RL_XFER_BYTES=0; RL_XFER_SECS=0; RL_XFER_MBIT=0
rl_transfer() {
    local from=$1 to=$2 addr=$3 port=$4 mb=$5
    local out="$RL_TMP/sink-$port.out" sent got_n got_sha sent_n sent_sha sent_s
    RL_XFER_BYTES=0; RL_XFER_SECS=0; RL_XFER_MBIT=0
    rl_spawn "sink-$port" "$to" python3 -c "$RL_PY_SINK" "$addr" "$port" "$out"
    rl_wait_until 10 rl_file_exists "$out.ready" || return 1
    sent=$(timeout --foreground 120 ip netns exec "$(rl_ns "$from")" python3 -c "$RL_PY_SOURCE" "$addr" "$port" "-$mb" 2>>"$RL_TMP/source-$port.log")
    rl_wait_until 30 rl_file_exists "$out" || return 1
    read -r got_n got_sha _ <"$out" 2>/dev/null || return 1
    read -r sent_n sent_sha sent_s <<<"${sent:-0 none 0}"
    RL_XFER_BYTES=$got_n
    RL_XFER_SECS=$sent_s
    RL_XFER_MBIT=$(python3 -c 'import sys; n, s = int(sys.argv[1]), float(sys.argv[2]); print("%.0f" % (n * 8 / s / 1e6 if s > 0 else 0))' "$sent_n" "$sent_s")
    [ "$got_n" = $((mb << 20)) ] && [ "$sent_n" = "$got_n" ] && [ "$got_sha" = "$sent_sha" ]
}
