#!/usr/bin/env bash
# Sites behind NAT routers (nftables masquerade: plain on one side, "random"
# ports on the other) still reach each other through the relay; the server
# sees them at their routers' public addresses. Then 10% random loss on one
# router's uplink: a 5 MB transfer still arrives intact and ping still works.
set -uo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$here/lib.sh"
rl_init "$here/.."
echo "test_nat_relay: relay through masquerading NAT routers, then with 10% loss"

rl_switch
rl_attach srv "$RL_SERVER_IP/24"
rl_server_conf server >/dev/null
rl_start_server server srv
check "server listens" rl_wait_until 10 rl_server_listening srv
rl_nat_site a ra 10.91.0.21/24 192.168.1 plain
rl_nat_site b rb 10.91.0.22/24 192.168.2 random
check "site a (192.168.1.2) reaches the server through its NAT" rl_ping a "$RL_SERVER_IP" 2
check "site b (192.168.2.2) reaches the server through its NAT" rl_ping b "$RL_SERVER_IP" 2
for n in a b; do rl_client_conf "$n" >/dev/null; rl_start_client "$n" "$n"; done
check "client a connected" rl_wait_until 20 rl_ready a
check "client b connected" rl_wait_until 20 rl_ready b
va=$(rl_vip a); vb=$(rl_vip b)
echo "  a = ${va:-?} behind 10.91.0.21 (masquerade), b = ${vb:-?} behind 10.91.0.22 (masquerade random)"
check "server saw a at its router's address" rl_log_has server "joined.*from=10\.91\.0\.21:"
check "server saw b at its router's address" rl_log_has server "joined.*from=10\.91\.0\.22:"
check "ping a -> b within 15 s" rl_wait_until 15 rl_ping_once a "${vb:-none}"
check "ping a -> b (5 of 5)" rl_ping a "${vb:-none}" 5
check "ping b -> a (5 of 5)" rl_ping b "${va:-none}" 5

rl_loss ra eth0 10
echo "  10% loss on ra's uplink"
out="$RL_TMP/sink.out"
rl_spawn sink b python3 -c "$RL_PY_SINK" "${vb:-127.0.0.1}" 5002 "$out"
check "sink listening in b" rl_wait_until 10 rl_file_exists "$out.ready"
sent=$(timeout --foreground 120 ip netns exec "$(rl_ns a)" python3 -c "$RL_PY_SOURCE" "${vb:-127.0.0.1}" 5002 -5 2>"$RL_TMP/source.log")
check "5 MB sent under loss" test -n "$sent"
check "sink reported" rl_wait_until 30 rl_file_exists "$out"
read -r got_n got_sha _ <"$out" 2>/dev/null || { got_n=0; got_sha=none; }
read -r sent_n sent_sha sent_s <<<"${sent:-0 none 0}"
echo "  sent $sent_n bytes in ${sent_s}s under loss, received $got_n"
check "bytes and sha256 match under loss" test "$got_n" = $((5 << 20)) -a "$got_sha" = "$sent_sha"
lossy_ping() { timeout --foreground 15 ip netns exec "$(rl_ns a)" ping -n -q -c 10 -i 0.2 -W 1 "$1" 2>/dev/null | grep -Eq ' ([1-9][0-9]*) received'; }
check "ping a -> b still gets replies under loss" lossy_ping "${vb:-none}"
dropped=$(rl_loss_dropped ra eth0)
check "the loss rule really dropped packets (${dropped:-0})" rl_ge "${dropped:-0}" 1
rl_loss_off ra eth0
check "client a still connected" rl_connected a
rl_finish test_nat_relay
