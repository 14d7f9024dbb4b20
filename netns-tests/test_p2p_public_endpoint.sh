#!/usr/bin/env bash
# public_endpoint (issue 13, reverse connect): b's gateway forwards public
# UDP port 50000 to b's ringlink port 41000; a and b both sit behind random
# symmetric NATs, which no punching crosses (the pair stays on the relay
# by design).
# Without the key, b announces its STUN mapping (port 41000, which the
# forward does not cover) and the pair stays on the relay. With
# `public_endpoint = "<rb>:50000"`, b announces the forward and says it is
# reachable: a's probes come in through it, b proves a's random mapping by
# challenge, and the pair goes direct. "Direct" is checked on b's router:
# the forwarded UDP from a's router grows with a ping burst while the
# server's interface stays flat. Timers / 5.
set -uo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$here/lib.sh"
rl_init "$here/.."
PORT=41000
FWD=50000
echo "test_p2p_public_endpoint: a random symmetric NAT reaches a gateway's port forward once it is announced"

rl_world_p2p random random "test_time_divisor = 5" "port = $PORT" "discovery = 0" || rl_finish
rl_exec rb nft -f - <<EOF2 || rl_die "port forward on rb"
table ip rl_fwd {
    chain pre {
        type nat hook prerouting priority dstnat; policy accept;
        iifname "eth0" udp dport $FWD dnat to 192.168.2.2:$PORT
    }
}
EOF2
rl_count rb fwd forward ip saddr "$RL_P2P_NET.21" ip daddr 192.168.2.2 udp dport "$PORT"

# Without the key: the relay.
rl_start_client a a
rl_start_client b b
check "client a connected" rl_wait_until 20 rl_ready a
check "client b connected" rl_wait_until 20 rl_ready b
va=$(rl_vip a); vb=$(rl_vip b)
rl_spawn traffic a ping -n -c 40 -i 0.25 "${vb:-127.0.0.1}"
check "without public_endpoint a stays on the relay to b (8 s, two attempts)" \
    rl_holds_for 8 rl_peer_not_direct a "${vb:-none}"
echo "  a's view of b: $(rl_peer_eval a "${vb:-none}" 'p["state"]'), method $(rl_peer_eval a "${vb:-none}" 'p["method"]')"
rl_stop traffic
rl_stop b

# With it.
rl_p2p_client_conf b "test_time_divisor = 5" "port = $PORT" "discovery = 0" \
    "public_endpoint = \"$RL_P2P_NET.22:$FWD\"" >/dev/null
rl_start_client b b
check "client b connected again" rl_wait_until 20 rl_ready b
vb=$(rl_vip b)
rl_spawn traffic2 a ping -n -c 80 -i 0.25 "${vb:-127.0.0.1}"
check "a sees b direct" rl_wait_until 15 rl_peer_direct a "${vb:-none}"
check "b sees a direct" rl_wait_until 15 rl_peer_direct b "${va:-none}"
ep=$(rl_peer_eval a "${vb:-none}" 'p["endpoint"]')
echo "  a's path to b: ${ep:-?}; b's path to a: $(rl_peer_eval b "${va:-none}" 'p["endpoint"]');" \
     "a's method: $(rl_peer_eval a "${vb:-none}" 'p["method"]'); b's NAT as a sees it: $(rl_peer_eval a "${vb:-none}" 'p["nat"]')"
check "a's path to b is the port forward" test "$ep" = "$RL_P2P_NET.22:$FWD"
f0=$(rl_counted rb fwd packets)
srv0=$(rl_if_total srv eth0)
check "ping a -> b (20 of 20)" timeout 15 ip netns exec "$(rl_ns a)" ping -n -q -c 20 -i 0.1 -W 1 "${vb:-127.0.0.1}"
f1=$(rl_counted rb fwd packets)
srv1=$(rl_if_total srv eth0)
echo "  rb forwarded $((f1 - f0)) UDP datagrams from ra to b; the server's eth0 moved $((srv1 - srv0)) bytes"
check "the burst came through the forward (>= 20 datagrams)" rl_ge $((f1 - f0)) 20
check "and not through the server (< 20000 bytes)" test $((srv1 - srv0)) -lt 20000
rl_finish test_p2p_public_endpoint
