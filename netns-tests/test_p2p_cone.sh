#!/usr/bin/env bash
# Two sites, each behind its own port-preserving NAT router (nftables
# masquerade), the server with its STUN responder on the "internet": the
# peers punch a direct path without any traffic (discovery on join), reach
# CONNECTED, and a checked 20 MB transfer goes direct. "Direct" is verified
# outside ringlink: the server's interface counters barely move during the
# transfer, while a's router forwards the bytes as UDP straight to b's router.
# Real timers (no test_time_divisor): the time to CONNECTED is measured.
set -uo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$here/lib.sh"
rl_init "$here/.."
MB=${RL_TRANSFER_MB:-20}
BOUND_MS=${RL_P2P_CONNECT_BOUND_MS:-6000}
echo "test_p2p_cone: direct path through two port-preserving NATs; $MB MB checked; time to CONNECTED"

rl_world_p2p plain plain || rl_finish
t0=$(rl_now_ms)
rl_start_client a a
rl_start_client b b
check "client a connected" rl_wait_until 20 rl_ready a
check "client b connected" rl_wait_until 20 rl_ready b
va=$(rl_vip a); vb=$(rl_vip b)
echo "  a = ${va:-?} behind $RL_P2P_NET.21, b = ${vb:-?} behind $RL_P2P_NET.22 (masquerade)"

# No traffic yet: discovery alone must bring the mesh up.
check "a sees b CONNECTED/direct (no traffic sent)" rl_wait_until 15 rl_peer_direct a "${vb:-none}"
check "b sees a CONNECTED/direct (no traffic sent)" rl_wait_until 15 rl_peer_direct b "${va:-none}"
up_a=$(rl_log_time_ms a "direct path up") || up_a=0
up_b=$(rl_log_time_ms b "direct path up") || up_b=0
in_a=$(rl_log_time_ms a "logged in") || in_a=0
in_b=$(rl_log_time_ms b "logged in") || in_b=0
up=$(( up_a > up_b ? up_a : up_b )); joined=$(( in_a > in_b ? in_a : in_b ))
echo "  time to CONNECTED (both ends, from the 'direct path up' log lines):" \
     "$((up - t0)) ms from client start, $((up - joined)) ms after both joined" \
     "(aim < 2000 ms: $([ $((up - t0)) -lt 2000 ] && echo met || echo NOT met))"
check "both ends CONNECTED within ${BOUND_MS} ms of client start" test "$up_a" -gt 0 -a "$up_b" -gt 0 -a $((up - t0)) -le "$BOUND_MS"
ep=$(rl_peer_eval a "${vb:-none}" 'p["endpoint"]')
echo "  a's path to b: ${ep:-?}; b's path to a: $(rl_peer_eval b "${va:-none}" 'p["endpoint"]')"
check "a's endpoint for b is b's router's public mapping ($RL_P2P_NET.22:port)" \
    test "${ep%:*}" = "$RL_P2P_NET.22"

check "ping a -> b (5 of 5)" rl_ping a "${vb:-none}" 5
check "ping b -> a (5 of 5)" rl_ping b "${va:-none}" 5

# Independent witnesses: the server's interface, and a counter on a's router
# for UDP it forwards to b's router.
rl_count ra direct forward ip daddr "$RL_P2P_NET.22" meta l4proto udp
srv0=$(rl_if_total srv eth0)
check "$MB MB a -> b arrive intact (count + sha256)" rl_transfer a b "${vb:-127.0.0.1}" 5001 "$MB"
srv1=$(rl_if_total srv eth0)
fwd=$(rl_counted ra direct)
echo "  $RL_XFER_BYTES bytes in ${RL_XFER_SECS}s = $RL_XFER_MBIT Mbit/s direct;" \
     "server eth0 moved $((srv1 - srv0)) bytes, ra forwarded $fwd bytes of UDP to rb"
check "the server saw < 2% of it (its eth0 moved $((srv1 - srv0)) bytes)" test $((srv1 - srv0)) -lt $(( (MB << 20) / 50 ))
check "ra forwarded >= $MB MB of UDP straight to rb's address" rl_ge "${fwd:-0}" $((MB << 20))
check "a still has b CONNECTED/direct after the transfer" rl_peer_direct a "${vb:-none}"
rl_finish test_p2p_cone
