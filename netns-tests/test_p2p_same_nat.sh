#!/usr/bin/env bash
# Two peers on the same LAN behind one NAT router: they find each other
# through the LAN candidates (their public candidates are the same router
# address, and a packet to it from inside is not hairpinned back), so the
# direct path runs over the LAN: each status shows the other's LAN address
# as endpoint, and during a checked 20 MB transfer neither the router (nft
# counter on its forward hook, its LAN interface) nor the server moves.
set -uo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$here/lib.sh"
rl_init "$here/.."
MB=${RL_TRANSFER_MB:-20}
DIV=5
echo "test_p2p_same_nat: two peers behind one NAT router go direct over their LAN (timers / $DIV)"

RL_SERVER_IP="$RL_P2P_NET.1"
rl_switch
rl_attach srv "$RL_SERVER_IP/24"
rl_server_conf server "stun = \"$RL_SERVER_IP:3478\"" >/dev/null
rl_start_server server srv
check "server listens" rl_wait_until 10 rl_server_listening srv
rl_nat_lan ra "$RL_P2P_NET.21/24" 192.168.1 plain a b
rl_router_firewall ra
check "a (192.168.1.2) reaches the server through the NAT" rl_ping a "$RL_SERVER_IP" 2
check "b (192.168.1.3) reaches the server through the NAT" rl_ping b "$RL_SERVER_IP" 2
for n in a b; do rl_p2p_client_conf "$n" "test_time_divisor = $DIV" >/dev/null; rl_start_client "$n" "$n"; done
check "client a connected" rl_wait_until 20 rl_ready a
check "client b connected" rl_wait_until 20 rl_ready b
va=$(rl_vip a); vb=$(rl_vip b)
echo "  a = ${va:-?} at 192.168.1.2, b = ${vb:-?} at 192.168.1.3, both behind $RL_P2P_NET.21"
# Discovery alone starts both ends at the same moment, so both are
# initiators; the LAN path must still be found on the first attempt (before
# the fix in src/peer/machine.rs, both could reach SYNCHRONIZING before the
# other's public info arrived, neither sent its LAN info, and only the
# unusable public candidates were tried, attempt after attempt).
check "a sees b CONNECTED/direct" rl_wait_until 15 rl_peer_direct a "${vb:-none}"
check "b sees a CONNECTED/direct" rl_wait_until 10 rl_peer_direct b "${va:-none}"
retry=$(rl_peer_eval a "${vb:-none}" 'p["retry_secs"]')
check "found on the first attempt (a's retry_secs for b still $((30 / DIV)), is ${retry:-?})" test "${retry:-0}" = $((30 / DIV))
ep_ab=$(rl_peer_eval a "${vb:-none}" 'p["endpoint"]')
ep_ba=$(rl_peer_eval b "${va:-none}" 'p["endpoint"]')
echo "  a's path to b: ${ep_ab:-?}; b's path to a: ${ep_ba:-?}"
check "a's endpoint for b is b's LAN address" test "${ep_ab%:*}" = 192.168.1.3
check "b's endpoint for a is a's LAN address" test "${ep_ba%:*}" = 192.168.1.2
check "ping a -> b (5 of 5)" rl_ping a "${vb:-none}" 5
check "ping b -> a (5 of 5)" rl_ping b "${va:-none}" 5

rl_count ra forwarded forward
fwd0=$(rl_counted ra forwarded packets)
lan0=$(rl_if_total ra lan0)
srv0=$(rl_if_total srv eth0)
check "$MB MB a -> b arrive intact (count + sha256)" rl_transfer a b "${vb:-127.0.0.1}" 5001 "$MB"
fwd1=$(rl_counted ra forwarded packets)
lan1=$(rl_if_total ra lan0)
srv1=$(rl_if_total srv eth0)
echo "  $RL_XFER_BYTES bytes in ${RL_XFER_SECS}s = $RL_XFER_MBIT Mbit/s over the LAN;" \
     "ra forwarded $((fwd1 - fwd0)) packets, its lan0 moved $((lan1 - lan0)) bytes; server eth0 moved $((srv1 - srv0)) bytes"
# A transfer of MB megabytes is > MB * 700 full-size packets; heartbeats and
# WS keepalives are a handful.
check "the router forwarded almost nothing ($((fwd1 - fwd0)) < 100 packets)" test $((fwd1 - fwd0)) -lt 100
check "its LAN interface barely moved ($((lan1 - lan0)) < 2% of $MB MB; it sees the bridge's flooding at most)" test $((lan1 - lan0)) -lt $(( (MB << 20) / 50 ))
check "the server barely moved ($((srv1 - srv0)) bytes < 2% of $MB MB)" test $((srv1 - srv0)) -lt $(( (MB << 20) / 50 ))
check "a still has b CONNECTED/direct after the transfer" rl_peer_direct a "${vb:-none}"
rl_finish test_p2p_same_nat
