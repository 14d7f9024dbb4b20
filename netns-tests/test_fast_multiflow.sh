#!/usr/bin/env bash
# netns-test: solo
# The fast direct path with two dataplane workers per client: four TCP
# flows at once, two a -> b and two b -> a, each of random bytes checked by
# count and sha256 at the far end. Both workers must exist (status, threads,
# one UDP socket each) before and after; the traffic must go direct (the
# server's interface barely moves), and the offloads must have been used in
# both directions. Prints each flow's throughput, the CPU
# time each worker spent, and TCP's own reordering/retransmission counters.
set -uo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$here/lib.sh"
. "$here/fast_lib.sh"
rl_init "$here/.."
MB=${RL_FAST_MB:-16}
W=2
echo "test_fast_multiflow: workers = $W; 4 concurrent TCP flows (2 a -> b, 2 b -> a), $MB MB each, sha256 checked"

rl_fast_pair "workers = $W" || rl_finish

for c in a b; do
    check "$c: status reports $W workers" test "$(rl_status_get $c 'd["workers"]')" = "$W"
    check "$c: threads rl-dp0..rl-dp$((W - 1)) exist" rl_workers_alive $c $W
    n=$(rl_udp_sockets $c $c)
    check "$c: $W UDP sockets on the data port (one per worker; found ${n:-0})" test "${n:-0}" -eq "$W"
done
check "ping a -> b (3 of 3)" rl_ping a "${vb:-none}" 3

cpu_a0=$(rl_worker_cpu a $W); cpu_b0=$(rl_worker_cpu b $W)
net_a0=$(rl_net_stats a); net_b0=$(rl_net_stats b)
# Flows: port 52xx ends in b, 53xx ends in a. Every sink listens before the
# first source starts, so the four sources start within a moment of each
# other.
flows=("a b ${vb:-127.0.0.1} 5201" "a b ${vb:-127.0.0.1} 5202" "b a ${va:-127.0.0.1} 5301" "b a ${va:-127.0.0.1} 5302")
for f in "${flows[@]}"; do
    read -r from to addr port <<<"$f"
    check "sink for $from -> $to listening on $addr:$port" rl_flow_sink "$to" "$addr" "$port"
done
srv0=$(rl_if_total srv eth0)
t0=$(rl_now_ms)
for f in "${flows[@]}"; do
    read -r from to addr port <<<"$f"
    rl_flow_source "$from" "$addr" "$port" "$MB"
done
spread=$(( $(rl_now_ms) - t0 ))
for f in "${flows[@]}"; do
    read -r _ _ _ port <<<"$f"
    check "flow :$port finished within 60 s" rl_wait_until 60 rl_flow_done "$port"
done
secs=$(rl_secs_since "$t0")
srv1=$(rl_if_total srv eth0)
shortest=999999
for f in "${flows[@]}"; do
    read -r from to addr port <<<"$f"
    if rl_flow_check "$port" "$MB"; then
        rl_pass "flow $from -> $to :$port: $MB MiB intact (count + sha256); $RL_FLOW_INFO"
    else
        rl_fail "flow $from -> $to :$port: $MB MiB intact (count + sha256); $RL_FLOW_INFO"
    fi
    [ "$RL_FLOW_MS" -lt "$shortest" ] && shortest=$RL_FLOW_MS
done
total=$(( 4 * (MB << 20) ))
echo "  all flows done in ${secs}s: $((total >> 20)) MiB in total; server eth0 moved $((srv1 - srv0)) bytes"
# Every source started within $spread ms of the first; if each also ran
# longer than that, all four were running at once when the last started.
check "the flows ran concurrently (all started within $spread ms; the shortest took $shortest ms)" \
    test "$shortest" -gt "$spread"
check "direct, not relayed: the server's eth0 moved < 2% of the $((total >> 20)) MiB ($((srv1 - srv0)) bytes)" \
    test $((srv1 - srv0)) -lt $((total / 50))

cpu_a1=$(rl_worker_cpu a $W); cpu_b1=$(rl_worker_cpu b $W)
echo "  worker CPU ticks before -> after: a: $cpu_a0 -> $cpu_a1; b: $cpu_b0 -> $cpu_b1"
echo "  kernel counters a before: $net_a0"
echo "                  after:  $(rl_net_stats a)"
echo "  kernel counters b before: $net_b0"
echo "                  after:  $(rl_net_stats b)"
for c in a b; do
    check "$c: status still $W workers, threads still running" rl_has_workers $c $W
    echo "  $c's counters: $(rl_status_get $c '" ".join("%s=%s" % (k, d[k]) for k in ("tun_rx_packets", "tun_gso_packets", "tun_written", "tun_coalesced_writes", "udp_rx_packets", "udp_gro_receives", "relay_tx_frames", "relay_rx_frames", "relay_dropped", "dropped_full", "dropped_malformed", "decrypt_failed", "oversize"))')"
    # Offloads are on by default: bulk TCP must have used both halves.
    check "$c: read super-packets, received GRO runs and wrote coalesced segments" \
        test "$(rl_status_get $c 'min(d["tun_gso_packets"], d["udp_gro_receives"], d["tun_coalesced_writes"])')" -gt 0
done
check "a still has b CONNECTED/direct" rl_peer_direct a "${vb:-none}"
check "b still has a CONNECTED/direct" rl_peer_direct b "${va:-none}"
rl_finish test_fast_multiflow
