# shellcheck shell=bash
# Helpers for the fast-path tests (test_fast_*.sh), sourced after lib.sh:
# a direct pair with several workers, the workers as the kernel sees them,
# concurrent checked TCP flows, and the UDP sequence tool udp_seq.py (next
# to this file).

RL_UDP_SEQ="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/udp_seq.py"

# rl_fast_pair [client toml lines...] : the NAT lab of rl_world_p2p (plain
# port-preserving NATs) with the extra client lines, clients a and b
# started, connected and CONNECTED/direct to each other. Sets va and vb.
# Records a failed check and returns 1 if any of that does not happen.
rl_fast_pair() {
    va=""; vb=""
    rl_world_p2p plain plain "$@" || return 1
    rl_start_client a a
    rl_start_client b b
    check "client a connected" rl_wait_until 20 rl_ready a || return 1
    check "client b connected" rl_wait_until 20 rl_ready b || return 1
    va=$(rl_vip a); vb=$(rl_vip b)
    echo "  a = ${va:-?} behind $RL_P2P_NET.21, b = ${vb:-?} behind $RL_P2P_NET.22"
    check "a sees b CONNECTED/direct" rl_wait_until 15 rl_peer_direct a "${vb:-none}" || return 1
    check "b sees a CONNECTED/direct" rl_wait_until 15 rl_peer_direct b "${va:-none}" || return 1
    echo "  a's path to b: $(rl_peer_eval a "$vb" 'p["endpoint"]'); b's path to a: $(rl_peer_eval b "$va" 'p["endpoint"]')"
}

# rl_thread_cpu <name> <comm> : CPU ticks (user + system) of the thread
# called <comm> in process <name>; empty if there is no such thread.
rl_thread_cpu() {
    local pid=${RL_PID[$1]:-} t comm
    [ -n "$pid" ] || return 1
    for t in /proc/"$pid"/task/*; do
        comm=$(cat "$t/comm" 2>/dev/null) || continue
        if [ "$comm" = "$2" ]; then
            awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "$t/stat" 2>/dev/null
            return 0
        fi
    done
    return 1
}

# rl_workers_alive <name> <n> : process <name> has threads rl-dp0..rl-dp<n-1>.
rl_workers_alive() {
    local i
    for ((i = 0; i < $2; i++)); do
        [ -n "$(rl_thread_cpu "$1" "rl-dp$i")" ] || return 1
    done
}

# rl_has_workers <name> <n> : the status says <n> workers and the threads
# rl-dp0..rl-dp<n-1> are there.
rl_has_workers() {
    [ "$(rl_status_get "$1" 'd["workers"]')" = "$2" ] && rl_workers_alive "$1" "$2"
}

# rl_udp_sockets <name> <node> : UDP sockets process <name> has open on its data port in
# <node> (one per worker; the control thread's sender is a dup of worker 0's
# socket and shares its line).
rl_udp_sockets() {
    local pid=${RL_PID[$1]:-} port
    [ -n "$pid" ] || { echo 0; return 1; }
    # The data port, from the client's log: the NAT classifier's own
    # sockets (4, for a few seconds after start) are on other ports.
    port=$(rl_data_port "$1")
    [ -n "$port" ] || { echo 0; return 1; }
    rl_exec "$2" ss -Huanp "sport = :$port" 2>/dev/null | grep -c "pid=$pid,"
}

# rl_worker_cpu <name> <n> : "rl-dp0=<ticks> rl-dp1=<ticks> ..." for <n> workers.
rl_worker_cpu() {
    local i out=()
    for ((i = 0; i < $2; i++)); do out+=("rl-dp$i=$(rl_thread_cpu "$1" "rl-dp$i")"); done
    echo "${out[*]}"
}

# rl_net_stats <node> [ifname] : the kernel's view of loss and reordering
# in <node>: TCP retransmissions and reordering, UDP buffer errors
# (/proc/net/snmp, /proc/net/netstat of that namespace), and the drops of
# <ifname> (rl0; for TUN, tx_dropped are packets its queues had no room for).
rl_net_stats() {
    rl_exec "$1" python3 -c '
import sys
want = ["RetransSegs", "TCPOFOQueue", "TCPSACKReorder", "TCPTSReorder", "TCPDSACKRecv", "Udp.RcvbufErrors", "Udp.SndbufErrors"]
vals = {}
for path in ("/proc/net/snmp", "/proc/net/netstat"):
    lines = open(path).read().splitlines()
    for names, nums in zip(lines[0::2], lines[1::2]):
        proto = names.split(":")[0]
        for k, v in zip(names.split()[1:], nums.split()[1:]):
            vals.setdefault(k, v)
            vals[proto + "." + k] = v
out = ["%s=%s" % (k, vals.get(k, "?")) for k in want]
d = "/sys/class/net/%s/statistics/" % sys.argv[1]
for k in ("tx_dropped", "rx_dropped"):
    try:
        out.append("%s.%s=%s" % (sys.argv[1], k, open(d + k).read().strip()))
    except OSError:
        pass
print(" ".join(out))' "${2:-rl0}"
}

# rl_flow_sink <to> <to_addr> <port> : the sink of a checked TCP flow
# (RL_PY_SINK) on <to_addr>:<port> in <to>, awaited until it listens.
rl_flow_sink() {
    local to=$1 addr=$2 port=$3
    local out="$RL_TMP/flow-$port.out"
    rl_spawn "sink-$port" "$to" python3 -c "$RL_PY_SINK" "$addr" "$port" "$out"
    rl_wait_until 10 rl_file_exists "$out.ready"
}

# rl_flow_source <from> <to_addr> <port> <MB> : its source in <from>, in the
# background, sending <MB> random megabytes in 1 MiB writes (RL_PY_SOURCE).
# Call both directly, not in $(...).
rl_flow_source() {
    rl_spawn "src-$3" "$1" python3 -c "$RL_PY_SOURCE" "$2" "$3" "-$4"
}

# rl_flow_done <port> : the flow's source has exited and its sink reported.
rl_flow_done() { rl_exited "src-$1" && rl_file_exists "$RL_TMP/flow-$1.out"; }

# rl_flow_check <port> <MB> : true if the sink got exactly <MB> MiB with the
# sha256 the source computed. Sets RL_FLOW_INFO (for the log line) and
# RL_FLOW_MS (how long the source took, connect to close, in ms).
RL_FLOW_INFO=""; RL_FLOW_MS=0
rl_flow_check() {
    local port=$1 mb=$2 got_n got_sha sent_n sent_sha sent_s line
    read -r got_n got_sha _ <"$RL_TMP/flow-$port.out" 2>/dev/null || { got_n=0; got_sha=none; }
    line=$(grep -E '^[0-9]+ [0-9a-f]{64} [0-9.]+$' "$(rl_log_file "src-$port")" 2>/dev/null | tail -1)
    read -r sent_n sent_sha sent_s <<<"${line:-0 none 0}"
    RL_FLOW_MS=$(python3 -c 'import sys; print(int(float(sys.argv[1]) * 1000))' "$sent_s")
    RL_FLOW_INFO=$(python3 -c 'import sys; n, s = int(sys.argv[1]), float(sys.argv[2]); print("sent %d, received %s bytes in %.2fs (%.0f Mbit/s)" % (n, sys.argv[3], s, n * 8 / s / 1e6 if s > 0 else 0))' "$sent_n" "$sent_s" "$got_n")
    [ "$got_n" = $((mb << 20)) ] && [ "$sent_n" = "$got_n" ] && [ "$got_sha" = "$sent_sha" ]
}

# rl_seq_recv <name> <node> <addr> <port> [udp_seq.py recv options...] :
# starts the UDP sequence receiver (output $RL_TMP/<name>.json) and waits
# until it is bound.
rl_seq_recv() {
    local name=$1 node=$2 addr=$3 port=$4; shift 4
    rm -f "$RL_TMP/$name.json" "$RL_TMP/$name.json.ready"
    rl_spawn "$name" "$node" python3 "$RL_UDP_SEQ" recv "$addr" "$port" "$RL_TMP/$name.json" "$@"
    rl_wait_until 10 rl_file_exists "$RL_TMP/$name.json.ready"
}

# rl_seq_send <node> <addr> <port> [udp_seq.py send options...] : runs the
# sender in the foreground (bounded by its --timeout plus a margin) and
# prints its JSON line.
rl_seq_send() {
    local node=$1 addr=$2 port=$3; shift 3
    timeout --foreground 90 ip netns exec "$(rl_ns "$node")" python3 "$RL_UDP_SEQ" send "$addr" "$port" "$@"
}

# rl_seq_report <name> <python expr over d> : evaluates an expression over
# the receiver's JSON summary.
rl_seq_report() {
    python3 -c '
import json, sys
d = json.load(open(sys.argv[1]))
fl = d["flows"]
print(eval(sys.argv[2]))' "$RL_TMP/$1.json" "$2" 2>/dev/null
}

# rl_frag_count_on <node> <tag> <ifname> [nft match...] : counts packets
# arriving on <ifname> in <node> that match, before the kernel reassembles
# fragments (prerouting at priority -500, ahead of defrag at -400).
rl_frag_count_on() {
    local node=$1 tag=$2 ifn=$3; shift 3
    rl_exec "$node" nft -f - <<EOF2 || rl_die "nft counter $tag on $node"
table ip rl_pre_$tag {
    chain c {
        type filter hook prerouting priority -500; policy accept;
        iifname "$ifn" $* counter
    }
}
EOF2
}

# rl_frag_counted <node> <tag> : packets rl_frag_count_on has seen.
rl_frag_counted() {
    rl_exec "$1" nft list table ip "rl_pre_$2" 2>/dev/null \
        | sed -n 's/.*counter packets \([0-9]*\).*/\1/p' | head -1
}

# rl_ping_out <node> <addr> <count> [ping options...] : runs ping (0.2 s
# apart, 1 s timeout each) and prints its output, whatever its exit status.
rl_ping_out() {
    local node=$1 addr=$2 count=$3; shift 3
    timeout --foreground $((count + 5)) ip netns exec "$(rl_ns "$node")" \
        ping -n -c "$count" -i 0.2 -W 1 "$@" "$addr" 2>&1
    return 0
}

# rl_seq_flows <name> : one line per flow of a udp_seq.py receiver's
# summary: "flow src received end reorders dups corrupt src_changes
# first_reorder" (end: the count the sender announced, -1 if no END came;
# first_reorder: "seq<max" of the first late datagram, or "-").
rl_seq_flows() {
    python3 -c '
import json, sys
d = json.load(open(sys.argv[1]))
for k, f in d["flows"].items():
    fr = f["first_reorder"]
    print(k, f["src"], f["received"], -1 if f["end"] is None else f["end"], f["reorders"], f["dups"],
          f["corrupt"], f["src_changes"], "%d<%d" % tuple(fr) if fr else "-")' "$RL_TMP/$1.json" 2>/dev/null
}
