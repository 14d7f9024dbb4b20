#!/usr/bin/env bash
# netns-test: solo
# Per-flow ordering on the fast direct path with two workers per client: 4
# UDP flows a -> b and 4 flows b -> a at once (own source port each, N
# numbered datagrams per flow, sizes from 64 to 1372 bytes, paced), every
# datagram's content checked. The receivers send an ack back every 32
# datagrams of a flow, as TCP or RTCP would: reverse traffic is what makes
# the kernel steer a flow between TUN queues (it follows the queue that last
# wrote the flow's replies), the moment a multi-queue dataplane could
# reorder. Within each flow the sequence numbers must arrive strictly
# increasing (no reorder, no duplicate), >= 95 % delivered, nothing corrupt.
# RL_FAST_ORDER_N, _PPS and _BURST set datagrams per flow, datagrams per
# second per flow, and how many rounds go out back to back (default 1).
# RL_FAST_ORDER_SWAP=K makes the senders swap every K-th datagram with the
# one before it (a self-test: the test must then fail).
#
# RL_FAST_ORDER_STRESS=R adds R rounds that push one flow a -> b as fast as
# Python can (the sender pinned to CPU 0 or 1 in turn, the receiver acking
# every 5000): the flow starts on the TUN queue its hash picks, and moves to
# the queue of the worker that writes b's acks once the first ack arrives;
# a backlog left on the old queue is then overtaken. Losses are expected
# (the Python receiver cannot keep up); reorders are not allowed. Off by
# default: it reproduces a known reordering (see the rounds' output).
set -uo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$here/lib.sh"
. "$here/fast_lib.sh"
rl_init "$here/.."
N=${RL_FAST_ORDER_N:-20000}
PPS=${RL_FAST_ORDER_PPS:-1000}
SWAP=${RL_FAST_ORDER_SWAP:-0}
BURST=${RL_FAST_ORDER_BURST:-1}
FLOWS=4
W=2
echo "test_fast_order: workers = $W; $FLOWS UDP flows each way, $N numbered datagrams per flow at $PPS/s per flow; in-order per flow"

rl_fast_pair "workers = $W" || rl_finish
for c in a b; do
    check "$c: status reports $W workers, threads rl-dp0..rl-dp$((W - 1)) exist" rl_has_workers $c $W
done
check "ping a -> b (3 of 3)" rl_ping a "${vb:-none}" 3

idle=3
limit=$(( N / PPS + 20 ))
check "receiver in b on ${vb:-?}:7001" rl_seq_recv seq-ab b "${vb:-127.0.0.1}" 7001 --ack-every 32 --idle $idle --timeout $((limit + 10))
check "receiver in a on ${va:-?}:7002" rl_seq_recv seq-ba a "${va:-127.0.0.1}" 7002 --ack-every 32 --idle $idle --timeout $((limit + 10))
cpu_a0=$(rl_worker_cpu a $W); cpu_b0=$(rl_worker_cpu b $W)
srv0=$(rl_if_total srv eth0)
t0=$(rl_now_ms)
for dir in "a b ${vb:-127.0.0.1} 7001" "b a ${va:-127.0.0.1} 7002"; do
    read -r from to addr port <<<"$dir"
    rl_spawn "send-$from$to" "$from" python3 "$RL_UDP_SEQ" send "$addr" "$port" \
        --flows $FLOWS --count "$N" --pps "$PPS" --sizes 64,1372,512,200,1000 --timeout "$limit" --burst "$BURST" --swap-every "$SWAP"
done
senders_done() { rl_exited send-ab && rl_exited send-ba; }
receivers_done() { rl_file_exists "$RL_TMP/seq-ab.json" && rl_file_exists "$RL_TMP/seq-ba.json"; }
check "senders done within $((limit + 10)) s" rl_wait_until $((limit + 10)) senders_done
check "receivers reported within $((idle + 10)) s" rl_wait_until $((idle + 10)) receivers_done
echo "  sent and received in $(rl_secs_since "$t0")s"
srv1=$(rl_if_total srv eth0)

min_pct=95
for dir in ab ba; do
    sent_json=$(grep '^{' "$(rl_log_file "send-$dir")" | tail -1)
    echo "  sender ${dir:0:1} -> ${dir:1:1}: ${sent_json:-no report}"
    acks=$(python3 -c 'import json, sys; print(json.loads(sys.argv[1])["acks"])' "${sent_json:-{\}}" 2>/dev/null)
    check "${dir:0:1} -> ${dir:1:1}: acks came back over the reverse path (${acks:-0})" rl_ge "${acks:-0}" 1
    lines=$(rl_seq_flows "seq-$dir")
    n=$(grep -c . <<<"$lines")
    check "${dir:0:1} -> ${dir:1:1}: all $FLOWS flows seen by the receiver ($n)" test "$n" -eq $FLOWS
    while read -r flow src got end reord dups corrupt moved first; do
        [ -n "$flow" ] || continue
        pct=$(python3 -c 'import sys; print("%.2f" % (100.0 * int(sys.argv[1]) / int(sys.argv[2])))' "$got" "$N")
        echo "  ${dir:0:1} -> ${dir:1:1} flow $flow from $src: $got of $N ($pct %) delivered, sender said $end;" \
             "reordered $reord (first: $first), duplicated $dups, corrupt $corrupt, source changed $moved"
        check "${dir:0:1} -> ${dir:1:1} flow $flow: strictly increasing sequence numbers (0 reordered, 0 duplicated)" \
            test "$reord" = 0 -a "$dups" = 0
        check "${dir:0:1} -> ${dir:1:1} flow $flow: nothing corrupt, one source address" test "$corrupt" = 0 -a "$moved" = 0
        check "${dir:0:1} -> ${dir:1:1} flow $flow: >= $min_pct % delivered ($pct %)" \
            rl_ge "$got" $(( N * min_pct / 100 ))
    done <<<"$lines"
done

echo "  worker CPU ticks before -> after: a: $cpu_a0 -> $(rl_worker_cpu a $W); b: $cpu_b0 -> $(rl_worker_cpu b $W)"
echo "  kernel counters a: $(rl_net_stats a)"
echo "  kernel counters b: $(rl_net_stats b)"
for c in a b; do
    echo "  $c's counters: $(rl_status_get $c '" ".join("%s=%s" % (k, d[k]) for k in ("tun_rx_packets", "tun_written", "relay_tx_frames", "relay_rx_frames", "relay_dropped", "dropped_full", "dropped_malformed", "decrypt_failed", "oversize"))')"
done
if [ "${RL_FAST_ORDER_STRESS:-0}" -gt 0 ]; then
    echo "  stress: ${RL_FAST_ORDER_STRESS} rounds of one flow a -> b at full speed, acks every 5000"
    for ((r = 1; r <= RL_FAST_ORDER_STRESS; r++)); do
        cpu=$((r % 2))
        w0=$(rl_worker_cpu a $W)
        rl_seq_recv "stress$r" b "${vb:-127.0.0.1}" $((7100 + r)) --ack-every 5000 --idle 2 --timeout 40 || { rl_fail "stress receiver $r"; continue; }
        timeout --foreground 60 ip netns exec "$(rl_ns a)" taskset -c $cpu python3 "$RL_UDP_SEQ" send "${vb:-127.0.0.1}" $((7100 + r)) \
            --count 20000 --sizes 64,1372,512 --timeout 30 >/dev/null
        rl_wait_until 20 rl_file_exists "$RL_TMP/stress$r.json"
        read -r _ _ got _ reord _ corrupt _ first <<<"$(rl_seq_flows "stress$r")"
        echo "  stress round $r (sender on CPU $cpu): a's workers $w0 -> $(rl_worker_cpu a $W);" \
             "received ${got:-0} of 20000, reordered ${reord:-?} (first: ${first:--})"
        check "stress round $r: 0 reordered, 0 corrupt" test "${reord:-x}" = 0 -a "${corrupt:-x}" = 0
    done
fi

bytes=$(( 2 * FLOWS * N * 600 ))
check "direct, not relayed: the server's eth0 moved $((srv1 - srv0)) bytes (< 1% of ~$((bytes >> 20)) MiB)" \
    test $((srv1 - srv0)) -lt $((bytes / 100))
for c in a b; do
    check "$c: status still $W workers, threads still running" rl_has_workers $c $W
done
check "a still has b CONNECTED/direct" rl_peer_direct a "${vb:-none}"
rl_finish test_fast_order
