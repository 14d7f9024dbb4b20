#!/usr/bin/env bash
# TURN over TLS (issue 15, `turns://`): a and b each behind a random
# symmetric NAT whose router drops every UDP packet it would forward, so
# the only way out is TCP. coturn (started here) listens for TLS only, with
# a certificate from a throwaway CA made here; the ringlink server offers
# `turns://` credentials. Each client's leg to coturn is TLS, and coturn
# relays between the two allocations over UDP on its own address.
# Checked outside ringlink:
#   * first without the CA: the TLS handshake fails, logged and counted,
#     and the pair carries on over the server's relay;
#   * with the CA (tls_ca): both list each other on path "turn";
#   * a ping burst crosses coturn's interface as TCP to port 5349 while the
#     routers forward no UDP at all and the ringlink server stays flat;
#   * a capture on coturn's interface holds the burst and not the ping's
#     payload pattern;
#   * a 16 MiB transfer b -> a through TURN/TLS arrives whole (sha256);
#   * coturn killed mid-transfer: the TLS sessions end, both sides are
#     back on the relay within seconds, and the transfer completes.
set -uo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$here/lib.sh"
. "$here/fast_lib.sh"
rl_init "$here/.."
MB=16
SECRET=turns-secret-for-this-test
TURN_NAME=turn.ringlink.test
echo "test_turns_path: two sites without UDP meet through coturn over TLS"

command -v turnserver >/dev/null || { rl_fail "turnserver (Debian package coturn) is installed"; rl_finish; }
# A CA and a server certificate for $TURN_NAME, valid for this run only.
{
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
        -subj "/CN=ringlink test CA" -keyout "$RL_TMP/ca.key" -out "$RL_TMP/ca.pem" &&
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
        -subj "/CN=$TURN_NAME" -keyout "$RL_TMP/turn.key" -out "$RL_TMP/turn.csr" &&
    printf 'subjectAltName=DNS:%s\n' "$TURN_NAME" >"$RL_TMP/san.ext" &&
    openssl x509 -req -in "$RL_TMP/turn.csr" -CA "$RL_TMP/ca.pem" -CAkey "$RL_TMP/ca.key" \
        -CAcreateserial -days 2 -extfile "$RL_TMP/san.ext" -out "$RL_TMP/turn.pem"
} >"$RL_TMP/openssl.log" 2>&1
check "a throwaway CA and a certificate for $TURN_NAME" test -s "$RL_TMP/turn.pem"

RL_SERVER_IP="$RL_P2P_NET.1"
TURN_IP="$RL_P2P_NET.3"
rl_switch
rl_attach srv "$RL_SERVER_IP/24"
rl_attach turn "$TURN_IP/24"
rl_server_conf server "stun = \"$RL_SERVER_IP:3478\"" \
    "turn = { url = \"turns://$TURN_NAME:5349\", secret = \"$SECRET\", ttl = 600 }" >/dev/null
rl_start_server server srv
check "server listens" rl_wait_until 10 rl_server_listening srv
# TLS listener only: no UDP, plain TCP or DTLS listener for clients. The
# relayed side (coturn to peers) is UDP on $TURN_IP.
start_coturn() {
    rl_spawn coturn turn turnserver -n --no-cli --no-udp --no-tcp --no-dtls \
        --cert "$RL_TMP/turn.pem" --pkey "$RL_TMP/turn.key" \
        --listening-ip "$TURN_IP" --relay-ip "$TURN_IP" --tls-listening-port 5349 \
        --min-port 49152 --max-port 49999 --use-auth-secret --static-auth-secret "$SECRET" \
        --realm ringlink.test --userdb "$RL_TMP/turndb" --pidfile "$RL_TMP/turnserver.pid" \
        --log-file stdout --simple-log
}
start_coturn
coturn_tls() { rl_exec turn ss -Htln | grep -q "$TURN_IP:5349 "; }
check "coturn listens for TLS on $TURN_IP:5349" rl_wait_until 10 coturn_tls
check "and not for UDP on 3478" eval '! rl_exec turn ss -Huln | grep -q ":3478 "'

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

# Phase 1: web PKI roots only, so coturn's certificate does not verify.
rl_p2p_client_conf a "discovery = 0" "test_time_divisor = 5" >/dev/null
rl_p2p_client_conf b "discovery = 0" "test_time_divisor = 5" >/dev/null
rl_start_client a a
rl_start_client b b
check "client a connected" rl_wait_until 20 rl_ready a
check "client b connected" rl_wait_until 20 rl_ready b
va=$(rl_vip a); vb=$(rl_vip b)
path_of() { rl_peer_eval "$1" "$2" 'p["path"]'; }
rl_spawn traffic a ping -n -i 0.5 -w 60 "${vb:-127.0.0.1}"
check "without the CA: a's TLS handshake with coturn fails, and says why" \
    rl_wait_until 40 rl_log_has a "no TLS session to the TURN server.*(certificate|UnknownIssuer)"
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

# Phase 2: the same clients trusting the test CA.
rl_p2p_client_conf a "discovery = 0" "test_time_divisor = 5" "tls_ca = \"$RL_TMP/ca.pem\"" >/dev/null
rl_p2p_client_conf b "discovery = 0" "test_time_divisor = 5" "tls_ca = \"$RL_TMP/ca.pem\"" >/dev/null
rl_start_client a a
rl_start_client b b
check "client a connected with tls_ca" rl_wait_until 20 rl_ready a
check "client b connected with tls_ca" rl_wait_until 20 rl_ready b
va=$(rl_vip a); vb=$(rl_vip b)

# TCP from each router to coturn's TLS port, and back; UDP either way.
sites="{ $RL_P2P_NET.21, $RL_P2P_NET.22 }"
rl_count turn tls_in input ip daddr "$TURN_IP" ip saddr "$sites" tcp dport 5349
rl_count turn tls_out output ip saddr "$TURN_IP" ip daddr "$sites" tcp sport 5349
rl_count turn udp_sites input ip saddr "$sites" meta l4proto udp

t0=$(rl_now_ms)
rl_spawn traffic a ping -n -i 0.5 -w 90 "${vb:-127.0.0.1}"
both_turn() { [ "$(path_of a "${vb:-none}")" = turn ] && [ "$(path_of b "${va:-none}")" = turn ]; }
check "a and b list each other on path turn within 40 s" rl_wait_until 40 both_turn
echo "  on TURN/TLS after $(rl_secs_since "$t0") s"
rl_stop traffic
check "a's log: TLS session to the TURN server up" rl_log_has a "TLS session to the TURN server up"
check "a's log: TURN path up" rl_log_has a "TURN path up"
check "ringlink status names the TURN server over TLS" \
    eval 'timeout 10 "$RINGLINK" status --socket "$(rl_sock a)" | grep -q "$TURN_NAME:5349 over TLS"'

PATTERN=72696e676c696e6b2d706c61696e2121   # "ringlink-plain!!"
rl_spawn capture turn tcpdump -i eth0 -n -U -w "$RL_TMP/turn.pcap" tcp port 5349
capturing() { rl_exec turn ss -Hxp 2>/dev/null | grep -q tcpdump || [ -s "$RL_TMP/turn.pcap" ]; }
rl_wait_until 5 capturing
c0=$(rl_counted turn tls_in bytes); o0=$(rl_counted turn tls_out bytes); s0=$(rl_if_total srv eth0)
d0=$(( $(rl_udp_dropped ra) + $(rl_udp_dropped rb) ))
check "ping a -> b over TURN/TLS (20 of 20, 1000 bytes, payload pattern)" \
    eval 'timeout 15 ip netns exec "$(rl_ns a)" ping -n -q -c 20 -i 0.1 -W 1 -s 1000 -p $PATTERN "${vb:-127.0.0.1}" >/dev/null'
c1=$(rl_counted turn tls_in bytes); o1=$(rl_counted turn tls_out bytes); s1=$(rl_if_total srv eth0)
d1=$(( $(rl_udp_dropped ra) + $(rl_udp_dropped rb) ))
rl_stop capture
echo "  coturn took in $((c1 - c0)) bytes of TLS from the sites and sent $((o1 - o0)); the ringlink server's eth0 moved $((s1 - s0)); the routers dropped $((d1 - d0)) UDP packets meanwhile"
check "the burst crossed coturn as TLS (>= 40 kB in, >= 40 kB out)" eval 'rl_ge $((c1 - c0)) 40000 && rl_ge $((o1 - o0)) 40000'
check "and not the ringlink server (< 10000 bytes)" test $((s1 - s0)) -lt 10000
check "no UDP from the sites ever reached coturn" test "$(rl_counted turn udp_sites packets)" = 0
seen() {
    python3 - "$RL_TMP/turn.pcap" "$PATTERN" <<'EOF'
import sys
data = open(sys.argv[1], "rb").read()
pattern = bytes.fromhex(sys.argv[2])
print(len(data), int(pattern[:8] in data))
EOF
}
read -r pcap_bytes plain <<<"$(seen)"
echo "  capture on coturn's interface: ${pcap_bytes:-0} bytes"
check "the capture holds the burst (> 40 kB)" rl_ge "${pcap_bytes:-0}" 40000
check "and the ping's payload pattern is nowhere in it" test "${plain:-1}" = 0

rl_flow_sink a "$va" 5001 || rl_fail "sink listening in a"
c0=$(rl_counted turn tls_in bytes)
rl_flow_source b "$va" 5001 "$MB"
check "transfer b -> a over TURN/TLS finished within 90 s" rl_wait_until 90 rl_flow_done 5001
check "$MB MiB b -> a arrived whole (sha256)" rl_flow_check 5001 "$MB"
echo "  $RL_FLOW_INFO"
c1=$(rl_counted turn tls_in bytes)
check "the transfer crossed coturn as TLS (>= $MB MiB in)" rl_ge $((c1 - c0)) $((MB << 20))
check "still on path turn after it" both_turn

# coturn dies mid-transfer: the TLS sessions end, the bridges say so, and
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
check "b's log: the TLS session ended" rl_log_has b "TLS session to the TURN server ended"
check "the 64 MiB transfer finished within 120 s" rl_wait_until 120 rl_flow_done 5002
check "64 MiB b -> a arrived whole (sha256) across the fallback" rl_flow_check 5002 64
echo "  $RL_FLOW_INFO"
check "nothing panicked" eval '! rl_log_has a panick && ! rl_log_has b panick'
rl_finish test_turns_path
