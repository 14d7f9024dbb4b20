#!/usr/bin/env bash
# Direct TCP by direct connect (issue 15): two sites whose routers drop all
# UDP (no STUN answer, no punching, no TURN), plain Linux masquerade. b's
# router forwards TCP port 50000 to b's port 41000 and b sets
# `public_endpoint`, so b listens for TCP and offers it to a when a's
# attempt never starts. Asserted on counters outside ringlink:
#   * both routers dropped UDP (the STUN requests), so no UDP path exists;
#   * both sides show path "tcp" and `ringlink ping` says so;
#   * a ping burst a -> b crosses rb's TCP forward (>= 20 packets) while the
#     server's interface stays flat;
#   * 16 MiB b -> a arrives whole (sha256) over the stream;
#   * the forward cut mid-transfer (the connection goes dark): both back on
#     the server's relay within 8 s, and the 32 MiB transfer completes.
# Timers / 5.
set -uo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$here/lib.sh"
. "$here/fast_lib.sh"
rl_init "$here/.."
PORT=41000
FWD=50000
echo "test_tcp_direct: sites whose routers drop UDP reach a gateway's TCP port forward"

rl_world_p2p plain plain "test_time_divisor = 5" "port = $PORT" "discovery = 0" || rl_finish
rl_drop_udp ra
rl_drop_udp rb
rl_exec rb nft -f - <<EOF2 || rl_die "port forward on rb"
table ip rl_fwd {
    chain pre {
        type nat hook prerouting priority dstnat; policy accept;
        iifname "eth0" tcp dport $FWD dnat to 192.168.2.2:$PORT
    }
}
EOF2
rl_count rb fwd forward ip saddr "$RL_P2P_NET.21" ip daddr 192.168.2.2 tcp dport "$PORT"
rl_p2p_client_conf b "test_time_divisor = 5" "port = $PORT" "discovery = 0" \
    "public_endpoint = \"$RL_P2P_NET.22:$FWD\"" >/dev/null

rl_start_client a a
rl_start_client b b
check "client a connected" rl_wait_until 20 rl_ready a
check "client b connected" rl_wait_until 20 rl_ready b
va=$(rl_vip a); vb=$(rl_vip b)
check "b listens for TCP on its data port" rl_wait_until 10 rl_log_has b "accepting direct TCP streams"

path_of() { rl_peer_get "$1" "$2" path; }
both_tcp() { [ "$(path_of a "${vb:-none}")" = tcp ] && [ "$(path_of b "${va:-none}")" = tcp ]; }
t0=$(rl_now_ms)
rl_spawn traffic a ping -n -c 120 -i 0.25 "${vb:-127.0.0.1}"
check "a and b on a direct TCP path within 30 s" rl_wait_until 30 both_tcp
echo "  on TCP $(rl_secs_since "$t0") s after the first ping; a's view of b: state $(rl_peer_eval a "${vb:-none}" 'p["state"]')"
rl_stop traffic
check "ra dropped UDP (its STUN requests)" rl_ge "$(rl_udp_dropped ra)" 1
check "rb dropped UDP (its STUN requests)" rl_ge "$(rl_udp_dropped rb)" 1
timeout 30 ip netns exec "$(rl_ns a)" "$RINGLINK" ping "${vb:-127.0.0.1}" --socket "$(rl_sock a)" --count 3 \
    >"$RL_TMP/ping.out" 2>&1
check "ringlink ping: three replies, each on path=tcp" test "$(grep -c 'path=tcp$' "$RL_TMP/ping.out")" = 3
timeout 10 "$RINGLINK" metrics --socket "$(rl_sock a)" >"$RL_TMP/metrics.txt" 2>&1
check "ringlink metrics: one peer on path tcp" grep -q '^ringlink_peers_by_path{path="tcp"} 1$' "$RL_TMP/metrics.txt"

f0=$(rl_counted rb fwd packets)
srv0=$(rl_if_total srv eth0)
check "ping a -> b (20 of 20)" timeout 15 ip netns exec "$(rl_ns a)" ping -n -q -c 20 -i 0.1 -W 1 "${vb:-127.0.0.1}"
f1=$(rl_counted rb fwd packets)
srv1=$(rl_if_total srv eth0)
echo "  rb forwarded $((f1 - f0)) TCP segments from ra to b; the server's eth0 moved $((srv1 - srv0)) bytes"
for n in a b; do
    echo "  $n: $(rl_status_get "$n" '" ".join("%s=%s" % (k, d[k]) for k in ("tcp_tx_packets", "tcp_rx_packets", "tcp_tx_dropped", "decrypt_failed", "replayed", "tun_write_errors", "no_route", "dropped_malformed", "unsealed_refused"))')"
done
check "the burst crossed the TCP forward (>= 20 segments)" rl_ge $((f1 - f0)) 20
check "and not the server (< 20000 bytes)" test $((srv1 - srv0)) -lt 20000

MB=16
rl_flow_sink a "$va" 5001 || rl_fail "sink listening in a"
b0=$(rl_counted rb fwd bytes)
rl_flow_source b "$va" 5001 "$MB"
check "transfer b -> a over TCP finished within 60 s" rl_wait_until 60 rl_flow_done 5001
check "$MB MiB b -> a arrived whole (sha256)" rl_flow_check 5001 "$MB"
echo "  $RL_FLOW_INFO"
check "its acknowledgements crossed the forward (> 100 kB)" rl_ge $(($(rl_counted rb fwd bytes) - b0)) 100000

# The forward is cut mid-transfer: the stream goes dark, its re-checks go
# unanswered and the pair falls back to the relay; TCP inside carries on.
rl_flow_sink a "$va" 5002 || rl_fail "second sink listening in a"
rl_flow_source b "$va" 5002 32
b1=$(rl_counted rb fwd bytes)
moved() { rl_ge "$(rl_counted rb fwd bytes)" $((b1 + 20000)); }
check "the second transfer is under way over the stream" rl_wait_until 20 moved
rl_exec rb nft -f - <<EOF2 || rl_die "cut the stream on rb"
table inet rl_cut {
    chain c {
        type filter hook forward priority filter - 20; policy accept;
        ip daddr 192.168.2.2 tcp dport $PORT drop
        ip saddr 192.168.2.2 tcp sport $PORT drop
    }
}
EOF2
tk=$(rl_now_ms)
both_relay() { [ "$(path_of a "${vb:-none}")" = relay ] && [ "$(path_of b "${va:-none}")" = relay ]; }
check "stream dark: both back on the relay within 8 s" rl_wait_until 8 both_relay
echo "  back on the relay $(rl_secs_since "$tk") s after the cut"
check "the 32 MiB transfer finished within 90 s" rl_wait_until 90 rl_flow_done 5002
check "32 MiB b -> a arrived whole (sha256) across the fallback" rl_flow_check 5002 32
echo "  $RL_FLOW_INFO"
rl_finish test_tcp_direct
