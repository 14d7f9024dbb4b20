#!/usr/bin/env bash
# TURN over TLS (issue 15, `turns://`), or with TURN_TRANSPORT=tcp over
# plain TCP (`turn://…?transport=tcp`, test_turn_tcp_path.sh runs it
# that way): a and b each behind a random
# symmetric NAT whose router drops every UDP packet it would forward, so
# the only way out is TCP. coturn (started here) listens for TLS only, with
# a certificate from a throwaway CA made here; the ringlink server offers
# `turns://` credentials. Each client's leg to coturn is TLS, and coturn
# relays between the two allocations over UDP on its own address.
# Checked outside ringlink:
#   * (TLS) first without the CA: the TLS handshake fails, logged and
#     counted, and the pair carries on over the server's relay;
#   * with the CA (tls_ca): both list each other on path "turn";
#   * a ping burst crosses coturn's interface as TCP to its port while the
#     routers forward no UDP at all and the ringlink server stays flat;
#   * a capture on coturn's interface holds the burst and not the ping's
#     payload pattern;
#   * a 16 MiB transfer b -> a through TURN arrives whole (sha256);
#   * coturn killed mid-transfer: the streams end, both sides are back on
#     the relay within seconds, and the transfer completes.
set -uo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$here/lib.sh"
. "$here/fast_lib.sh"
rl_init "$here/.."
MB=16
SECRET=turns-secret-for-this-test
TURN_NAME=turn.ringlink.test
T=${TURN_TRANSPORT:-tls}
case $T in
    tls) NAME=test_turns_path; OVER=TLS ;;
    tcp) NAME=test_turn_tcp_path; OVER=TCP ;;
    *) echo "TURN_TRANSPORT must be tls or tcp" >&2; exit 2 ;;
esac
echo "$NAME: two sites without UDP meet through coturn over $OVER"

rl_world_turn "$SECRET" "$TURN_NAME" "$T" || rl_finish
check "coturn does not listen for UDP on 3478" eval '! rl_exec turn ss -Huln | grep -q ":3478 "'

rl_nat_site a ra "$RL_P2P_NET.21/24" 192.168.1 random
rl_nat_site b rb "$RL_P2P_NET.22/24" 192.168.2 random
rl_router_firewall ra
rl_router_firewall rb
rl_drop_udp ra
rl_drop_udp rb
# Not even a direct TCP stream between the sites: TURN or the relay.
rl_block_pair "$RL_P2P_NET.21" "$RL_P2P_NET.22"
rl_hosts_entry a "$TURN_IP" "$TURN_NAME"
rl_hosts_entry b "$TURN_IP" "$TURN_NAME"

path_of() { rl_peer_eval "$1" "$2" 'p["path"]'; }
# Phase 1 (TLS): web PKI roots only, so coturn's certificate does not verify.
if [ "$T" = tls ]; then
rl_p2p_client_conf a "discovery = 0" "test_time_divisor = 5" >/dev/null
rl_p2p_client_conf b "discovery = 0" "test_time_divisor = 5" >/dev/null
rl_start_client a a
rl_start_client b b
check "client a connected" rl_wait_until 20 rl_ready a
check "client b connected" rl_wait_until 20 rl_ready b
va=$(rl_vip a); vb=$(rl_vip b)
rl_spawn traffic a ping -n -i 0.5 -w 60 "${vb:-127.0.0.1}"
check "without the CA: a's TLS handshake with coturn fails, and says why" \
    rl_wait_until 40 rl_log_has a "no stream to the TURN server.*(certificate|UnknownIssuer)"
failures() { rl_status_get a 'd["node"]["turn_failures"]'; }
counted() { rl_ge "$(failures)" 1; }
check "and counts it in turn_failures (status is published every 0.5 s)" rl_wait_until 5 counted
echo "  turn_failures on a: $(failures)"
check "the pair carries on over the relay" \
    eval 'timeout 15 ip netns exec "$(rl_ns a)" ping -n -q -c 3 -W 2 "${vb:-127.0.0.1}" >/dev/null'
check "a lists b on path relay" test "$(path_of a "${vb:-none}")" = relay
check "nothing panicked" eval '! rl_log_has a panick && ! rl_log_has b panick'
rl_stop traffic
rl_stop a
rl_stop b
fi

# Phase 2: the clients trusting the test CA (TLS), or plainly (TCP).
trust=()
[ "$T" = tls ] && trust=("tls_ca = \"$RL_TMP/ca.pem\"")
rl_p2p_client_conf a "discovery = 0" "test_time_divisor = 5" "${trust[@]}" >/dev/null
rl_p2p_client_conf b "discovery = 0" "test_time_divisor = 5" "${trust[@]}" >/dev/null
rl_start_client a a
rl_start_client b b
check "client a connected" rl_wait_until 20 rl_ready a
check "client b connected" rl_wait_until 20 rl_ready b
va=$(rl_vip a); vb=$(rl_vip b)

# TCP from each router to coturn's port, and back; UDP either way.
sites="{ $RL_P2P_NET.21, $RL_P2P_NET.22 }"
rl_count turn tls_in input ip daddr "$TURN_IP" ip saddr "$sites" tcp dport "$RL_TURN_PORT"
rl_count turn tls_out output ip saddr "$TURN_IP" ip daddr "$sites" tcp sport "$RL_TURN_PORT"
rl_count turn udp_sites input ip saddr "$sites" meta l4proto udp

t0=$(rl_now_ms)
rl_spawn traffic a ping -n -i 0.5 -w 90 "${vb:-127.0.0.1}"
both_turn() { [ "$(path_of a "${vb:-none}")" = turn ] && [ "$(path_of b "${va:-none}")" = turn ]; }
check "a and b list each other on path turn within 40 s" rl_wait_until 40 both_turn
echo "  on TURN/$OVER after $(rl_secs_since "$t0") s"
rl_stop traffic
check "a's log: stream to the TURN server up, over $OVER" rl_log_has a "stream to the TURN server up.*$T"
check "a's log: TURN path up" rl_log_has a "TURN path up"
check "ringlink status names the TURN server over $OVER" \
    eval 'timeout 10 "$RINGLINK" status --socket "$(rl_sock a)" | grep -q "$TURN_NAME:$RL_TURN_PORT over $OVER"'

PATTERN=72696e676c696e6b2d706c61696e2121   # "ringlink-plain!!"
rl_spawn capture turn tcpdump -i eth0 -n -U -w "$RL_TMP/turn.pcap" tcp port "$RL_TURN_PORT"
capturing() { rl_exec turn ss -Hxp 2>/dev/null | grep -q tcpdump || [ -s "$RL_TMP/turn.pcap" ]; }
rl_wait_until 5 capturing
c0=$(rl_counted turn tls_in bytes); o0=$(rl_counted turn tls_out bytes); s0=$(rl_if_total srv eth0)
d0=$(( $(rl_udp_dropped ra) + $(rl_udp_dropped rb) ))
check "ping a -> b over TURN/$OVER (20 of 20, 1000 bytes, payload pattern)" \
    eval 'timeout 15 ip netns exec "$(rl_ns a)" ping -n -q -c 20 -i 0.1 -W 1 -s 1000 -p $PATTERN "${vb:-127.0.0.1}" >/dev/null'
c1=$(rl_counted turn tls_in bytes); o1=$(rl_counted turn tls_out bytes); s1=$(rl_if_total srv eth0)
d1=$(( $(rl_udp_dropped ra) + $(rl_udp_dropped rb) ))
rl_stop capture
echo "  coturn took in $((c1 - c0)) bytes of $OVER from the sites and sent $((o1 - o0)); the ringlink server's eth0 moved $((s1 - s0)); the routers dropped $((d1 - d0)) UDP packets meanwhile"
check "the burst crossed coturn as $OVER (>= 40 kB in, >= 40 kB out)" eval 'rl_ge $((c1 - c0)) 40000 && rl_ge $((o1 - o0)) 40000'
check "and not the ringlink server (< 10000 bytes)" test $((s1 - s0)) -lt 10000
check "no UDP from the sites ever reached coturn" test "$(rl_counted turn udp_sites packets)" = 0
rl_check_ciphertext "$RL_TMP/turn.pcap" "$PATTERN"

rl_flow_sink a "$va" 5001 || rl_fail "sink listening in a"
c0=$(rl_counted turn tls_in bytes)
rl_flow_source b "$va" 5001 "$MB"
check "transfer b -> a over TURN/$OVER finished within 90 s" rl_wait_until 90 rl_flow_done 5001
check "$MB MiB b -> a arrived whole (sha256)" rl_flow_check 5001 "$MB"
echo "  $RL_FLOW_INFO"
c1=$(rl_counted turn tls_in bytes)
check "the transfer crossed coturn as $OVER (>= $MB MiB in)" rl_ge $((c1 - c0)) $((MB << 20))
check "still on path turn after it" both_turn

# coturn dies mid-transfer: the streams end, the bridges say so, and
# the pair is back on the relay without waiting out its re-checks.
rl_flow_sink a "$va" 5002 || rl_fail "second sink listening in a"
rl_flow_source b "$va" 5002 64
moved() { rl_ge "$(rl_counted turn tls_in bytes)" $((c1 + (4 << 20))); }
check "the second transfer is under way through coturn" rl_wait_until 30 moved
rl_stop coturn
tk=$(rl_now_ms)
check "coturn ended with the transfer still under way" eval '! rl_flow_done 5002'
both_relay() { [ "$(path_of a "${vb:-none}")" = relay ] && [ "$(path_of b "${va:-none}")" = relay ]; }
check "coturn gone: both back on the relay within 8 s" rl_wait_until 8 both_relay
echo "  back on the relay $(rl_secs_since "$tk") s after coturn ended"
check "b's log: the stream ended" rl_log_has b "stream to the TURN server ended"
check "the 64 MiB transfer finished within 120 s" rl_wait_until 120 rl_flow_done 5002
check "64 MiB b -> a arrived whole (sha256) across the fallback" rl_flow_check 5002 64
echo "  $RL_FLOW_INFO"
check "nothing panicked" eval '! rl_log_has a panick && ! rl_log_has b panick'
rl_finish "$NAME"
