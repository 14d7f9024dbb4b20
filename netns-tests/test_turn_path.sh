#!/usr/bin/env bash
# TURN carries a pair that no punching can (issue 15): a and b each behind a
# random symmetric NAT (masquerade random, home-router firewall), so no
# attempt can make a direct path; coturn (Debian's turnserver, started
# here) stands on the internet side, and the ringlink server hands both
# clients credentials minted from the secret it shares with coturn.
# Checked outside ringlink:
#   * both list each other on path "turn" within seconds of the first ping;
#   * a ping burst crosses coturn's interface (UDP from both routers) while
#     the ringlink server's interface stays flat;
#   * what coturn sees is ciphertext: a ping payload pattern is nowhere in a
#     capture on its interface that holds the burst;
#   * a 16 MiB transfer b -> a through TURN arrives whole (sha256);
#   * coturn killed mid-transfer: the pair falls back to the server's relay
#     within seconds and the transfer still arrives whole.
set -uo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$here/lib.sh"
. "$here/fast_lib.sh"
rl_init "$here/.."
MB=16
SECRET=turn-secret-for-this-test
echo "test_turn_path: two random symmetric NATs meet through coturn"

# The server names coturn by a host name, which the clients resolve (their
# namespaces' hosts files): the lookup runs beside the control loop.
TURN_NAME=turn.ringlink.test
rl_world_turn "$SECRET" "$TURN_NAME" || rl_finish

rl_nat_site a ra "$RL_P2P_NET.21/24" 192.168.1 random
rl_nat_site b rb "$RL_P2P_NET.22/24" 192.168.2 random
rl_router_firewall ra
rl_router_firewall rb
rl_hosts_entry a "$TURN_IP" "$TURN_NAME"
rl_hosts_entry b "$TURN_IP" "$TURN_NAME"
rl_p2p_client_conf a "discovery = 0" >/dev/null
rl_p2p_client_conf b "discovery = 0" >/dev/null
rl_start_client a a
rl_start_client b b
check "client a connected" rl_wait_until 20 rl_ready a
check "client b connected" rl_wait_until 20 rl_ready b
va=$(rl_vip a); vb=$(rl_vip b)

# UDP from each router into coturn's namespace, and back out.
rl_count turn from_sites input ip daddr "$TURN_IP" ip saddr "{ $RL_P2P_NET.21, $RL_P2P_NET.22 }" meta l4proto udp
rl_count turn to_sites output ip saddr "$TURN_IP" ip daddr "{ $RL_P2P_NET.21, $RL_P2P_NET.22 }" meta l4proto udp

check "a and b classify their NATs as symmetric/random" \
    rl_wait_until 30 eval '[ "$(rl_nat_of a)" = symmetric/random ] && [ "$(rl_nat_of b)" = symmetric/random ]'

# A relayed ping starts the attempt (discovery is off). Between two random
# symmetric NATs the method table punches nothing, so the pair asks for
# TURN as the attempt starts, without waiting out CONNECTING's 10 s.
t0=$(rl_now_ms)
rl_spawn traffic a ping -n -i 0.5 -w 60 "${vb:-127.0.0.1}"
path_of() { rl_peer_eval "$1" "$2" 'p["path"]'; }
both_turn() { [ "$(path_of a "${vb:-none}")" = turn ] && [ "$(path_of b "${va:-none}")" = turn ]; }
check "a and b list each other on path turn within 8 s" rl_wait_until 8 both_turn
echo "  on TURN after $(rl_secs_since "$t0") s"
check "a's method with b: relay (no probes spent)" test "$(rl_peer_eval a "${vb:-none}" 'p["method"]')" = relay
rl_stop traffic
check "a resolved $TURN_NAME and allocated on $TURN_IP:3478" rl_log_has a "allocating on the TURN server server=$TURN_IP:3478"
check "a's log: TURN path up" rl_log_has a "TURN path up"
timeout 30 ip netns exec "$(rl_ns a)" "$RINGLINK" ping "${vb:-127.0.0.1}" --socket "$(rl_sock a)" --count 3 \
    >"$RL_TMP/ping.out" 2>&1
check "ringlink ping: three replies, each on path=turn" test "$(grep -c 'path=turn$' "$RL_TMP/ping.out")" = 3
timeout 10 "$RINGLINK" metrics --socket "$(rl_sock a)" >"$RL_TMP/metrics.txt" 2>&1
check "ringlink metrics: one peer on path turn" grep -q '^ringlink_peers_by_path{path="turn"} 1$' "$RL_TMP/metrics.txt"
turn_bytes() { grep '^ringlink_traffic_bytes_total{' "$RL_TMP/metrics.txt" | grep 'path="turn"' | grep 'direction="tx"' | awk '{print $NF}'; }
check "ringlink metrics: bytes sent on path turn ($(turn_bytes))" rl_ge "$(turn_bytes)" 1

PATTERN=72696e676c696e6b2d706c61696e2121   # "ringlink-plain!!"
rl_spawn capture turn tcpdump -i eth0 -n -U -w "$RL_TMP/turn.pcap" udp
capturing() { rl_exec turn ss -Hxp 2>/dev/null | grep -q tcpdump || [ -s "$RL_TMP/turn.pcap" ]; }
rl_wait_until 5 capturing
c0=$(rl_counted turn from_sites bytes); o0=$(rl_counted turn to_sites bytes); s0=$(rl_if_total srv eth0)
check "ping a -> b over TURN (20 of 20, 1000 bytes, payload pattern)" \
    eval 'timeout 15 ip netns exec "$(rl_ns a)" ping -n -q -c 20 -i 0.1 -W 1 -s 1000 -p $PATTERN "${vb:-127.0.0.1}" >/dev/null'
c1=$(rl_counted turn from_sites bytes); o1=$(rl_counted turn to_sites bytes); s1=$(rl_if_total srv eth0)
rl_stop capture
echo "  coturn took in $((c1 - c0)) bytes of UDP from the sites and sent $((o1 - o0)); the ringlink server's eth0 moved $((s1 - s0))"
# 20 requests and 20 replies of > 1000 bytes, each in and out of coturn.
check "the burst crossed coturn (>= 40 kB in, >= 40 kB out)" eval 'rl_ge $((c1 - c0)) 40000 && rl_ge $((o1 - o0)) 40000'
check "and not the ringlink server (< 10000 bytes)" test $((s1 - s0)) -lt 10000
rl_check_ciphertext "$RL_TMP/turn.pcap" "$PATTERN"

rl_flow_sink a "$va" 5001 || rl_fail "sink listening in a"
c0=$(rl_counted turn from_sites bytes)
rl_flow_source b "$va" 5001 "$MB"
check "transfer b -> a over TURN finished within 60 s" rl_wait_until 60 rl_flow_done 5001
check "$MB MiB b -> a arrived whole (sha256)" rl_flow_check 5001 "$MB"
echo "  $RL_FLOW_INFO"
c1=$(rl_counted turn from_sites bytes)
check "the transfer crossed coturn (>= $MB MiB in)" rl_ge $((c1 - c0)) $((MB << 20))

# coturn dies mid-transfer: the pair's re-checks go unanswered and it
# falls back to the server's relay; TCP carries on once it has.
rl_flow_sink a "$va" 5002 || rl_fail "second sink listening in a"
rl_flow_source b "$va" 5002 64
moved() { rl_ge "$(rl_counted turn from_sites bytes)" $((c1 + (4 << 20))); }
check "the second transfer is under way through coturn" rl_wait_until 20 moved
rl_stop coturn
tk=$(rl_now_ms)
both_relay() { [ "$(path_of a "${vb:-none}")" = relay ] && [ "$(path_of b "${va:-none}")" = relay ]; }
check "coturn gone: both back on the relay within 8 s" rl_wait_until 8 both_relay
echo "  back on the relay $(rl_secs_since "$tk") s after coturn ended"
check "the 64 MiB transfer finished within 90 s" rl_wait_until 90 rl_flow_done 5002
check "64 MiB b -> a arrived whole (sha256) across the fallback" rl_flow_check 5002 64
echo "  $RL_FLOW_INFO"
rl_finish test_turn_path
