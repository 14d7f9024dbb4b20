#!/usr/bin/env bash
# Syscalls per packet on the direct path (issue 5): two clients in
# namespaces with a direct path, one iperf3 TCP transfer a -> b, and
# `strace -f -c` attached to both client processes for the transfer. The
# counts are divided by the datagrams each side sent or received in the same
# window (from `ringlink status`). strace slows the traced process, which if
# anything makes batches bigger; the counts per packet are what matter here,
# not the throughput.
#
# Usage: sudo bash perf/syscalls.sh            (extra client.toml lines as
#        arguments, e.g. 'offload = false')
set -uo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$here/../netns-tests/lib.sh"
rl_init "$here/.."
SECS=${PERF_TIME:-5}
command -v strace >/dev/null || apt-get install -y -qq strace >/dev/null
command -v iperf3 >/dev/null || apt-get install -y -qq iperf3 >/dev/null

rl_world_p2p plain plain "pin_workers = false" "$@" || rl_finish
rl_start_client a a
rl_start_client b b
rl_wait_until 20 rl_ready a && rl_wait_until 20 rl_ready b || rl_die "clients did not connect"
vb=$(rl_vip b)
rl_wait_until 15 rl_peer_direct a "$vb" || rl_die "no direct path"
rl_spawn iperf3 b iperf3 -s -1 -B "$vb"
rl_wait_until 10 rl_exec b sh -c "ss -ltn | grep -q ':5201 '" || rl_die "iperf3 did not listen"

counts() { rl_status_get "$1" '"%d %d %d" % (d["udp_tx_packets"], d["udp_rx_packets"], d["tun_rx_packets"])'; }
declare -A TR
for c in a b; do
    strace -f -c -o "$RL_TMP/strace-$c" -p "$(rl_pid "$c")" 2>/dev/null &
    TR[$c]=$!
    RL_PIDS+=("${TR[$c]}")
done
sleep 1    # strace attaches to every thread; a short settle, then the window
read -r atx0 arx0 ard0 <<<"$(counts a)"; read -r btx0 brx0 brd0 <<<"$(counts b)"
rl_exec a iperf3 -c "$vb" -C cubic -t "$SECS" -f m | grep -E "sender|receiver"
sleep 0.6  # status refreshes every 500 ms
read -r atx1 arx1 ard1 <<<"$(counts a)"; read -r btx1 brx1 brd1 <<<"$(counts b)"
for c in a b; do kill -INT "${TR[$c]}"; done
for c in a b; do rl_wait_until 10 sh -c "! kill -0 ${TR[$c]} 2>/dev/null"; done

check "a sent datagrams on the direct path in the window" test $((atx1 - atx0)) -gt 0
check "b received datagrams on the direct path in the window" test $((brx1 - brx0)) -gt 0
total() { awk '$NF == "total" { print $(NF-2) }' "$RL_TMP/strace-$1"; }
per() { awk -v n="$1" -v d="$2" 'BEGIN { if (d > 0) printf "%.3f", n / d; else print "-" }'; }
sa=$(total a); sb=$(total b)
echo "sender a:   $((atx1 - atx0)) datagrams sent from $((ard1 - ard0)) TUN reads; $sa syscalls = $(per "$sa" $((atx1 - atx0))) per datagram, $(per "$sa" $((ard1 - ard0))) per TUN read"
echo "receiver b: $((brx1 - brx0)) datagrams received; $sb syscalls = $(per "$sb" $((brx1 - brx0))) per datagram"
for c in a b; do
    echo "--- strace -c, client $c"
    sed -n '1,12p' "$RL_TMP/strace-$c"
done
rl_finish perf_syscalls
