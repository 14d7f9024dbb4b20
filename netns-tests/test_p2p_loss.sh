#!/usr/bin/env bash
# Like test_p2p_cone, but both routers drop 20% of everything leaving their
# WAN side (nft numgen: STUN, WS, heartbeats and data alike): the peers must
# still punch through and reach CONNECTED/direct, and a ping burst must
# then go direct: a's router forwards it as UDP straight to b's router while
# the server's interface barely moves. Real timers (a 10 s CONNECTING phase
# is ten heartbeat rounds, which 20% loss leaves plenty of).
set -uo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$here/lib.sh"
rl_init "$here/.."
PCT=20
echo "test_p2p_loss: direct path through two NATs with $PCT% loss on both uplinks"

rl_world_p2p plain plain || rl_finish
rl_loss ra eth0 "$PCT"
rl_loss rb eth0 "$PCT"
t0=$(rl_now_ms)
rl_start_client a a
rl_start_client b b
check "client a connected (through the loss)" rl_wait_until 30 rl_ready a
check "client b connected (through the loss)" rl_wait_until 30 rl_ready b
va=$(rl_vip a); vb=$(rl_vip b)
echo "  a = ${va:-?} behind $RL_P2P_NET.21, b = ${vb:-?} behind $RL_P2P_NET.22; $PCT% loss leaving each router's eth0"
check "a sees b CONNECTED/direct" rl_wait_until 40 rl_peer_direct a "${vb:-none}"
check "b sees a CONNECTED/direct" rl_wait_until 20 rl_peer_direct b "${va:-none}"
up_a=$(rl_log_time_ms a "direct path up") || up_a=$t0
up_b=$(rl_log_time_ms b "direct path up") || up_b=$t0
echo "  CONNECTED after $(( (up_a > up_b ? up_a : up_b) - t0 )) ms from client start (under loss)"
ep=$(rl_peer_eval a "${vb:-none}" 'p["endpoint"]')
check "a's endpoint for b is b's router's public mapping (${ep:-?})" test "${ep%:*}" = "$RL_P2P_NET.22"

# 200 pings of 1000 bytes in 2 s: over the relay they would move more than
# 2 x 200 KB through the server's interface.
# A dead-peer flap (3 s without an ack heartbeat: possible, if rare, at 20%
# loss) during the burst would send part of it through the relay: then the
# burst is repeated once on the restored direct path, and the flap reported.
burst() {
    rl_count ra "$1" forward ip daddr "$RL_P2P_NET.22" meta l4proto udp
    srv0=$(rl_if_total srv eth0)
    burst=$(timeout --foreground 15 ip netns exec "$(rl_ns a)" ping -n -q -c 200 -i 0.01 -s 1000 -W 1 "${vb:-127.0.0.1}" 2>/dev/null)
    srv1=$(rl_if_total srv eth0)
    fwd=$(rl_counted ra "$1")
}
flaps0=$(( $(rl_log_count a 'direct path lost') + $(rl_log_count b 'direct path lost') ))
burst direct
flaps1=$(( $(rl_log_count a 'direct path lost') + $(rl_log_count b 'direct path lost') ))
if [ "$flaps1" -ne "$flaps0" ]; then
    echo "  note: the direct path flapped during the burst (a: $(rl_paths a)); repeating it once"
    # Both at once: one side may flap later than the other, and a new
    # attempt under this loss can take 20 s (a lost STUN answer or
    # heartbeat round costs a whole phase timeout).
    both_direct() { rl_peer_direct a "${vb:-none}" && rl_peer_direct b "${va:-none}"; }
    rl_wait_until 60 both_direct
    burst direct2
fi
got=$(printf '%s\n' "$burst" | sed -n 's/.* \([0-9]*\) received.*/\1/p')
echo "  burst: ${got:-0}/200 answered (expect ~64% at 2 x $PCT% loss); server eth0 moved $((srv1 - srv0)) bytes; ra forwarded $fwd bytes of UDP to rb"
check "most of the burst answered (${got:-0} >= 80 of 200)" rl_ge "${got:-0}" 80
check "the burst went direct: ra forwarded >= 80 x 1000 bytes of UDP to rb" rl_ge "${fwd:-0}" 80000
check "and not through the server (its eth0 moved $((srv1 - srv0)) < 50000 bytes)" test $((srv1 - srv0)) -lt 50000
dra=$(rl_loss_dropped ra eth0); drb=$(rl_loss_dropped rb eth0)
check "the loss rules really dropped packets (ra ${dra:-0}, rb ${drb:-0})" test "${dra:-0}" -ge 1 -a "${drb:-0}" -ge 1
echo "  direct path lost and regained during the run: a $(rl_log_count a 'direct path lost'), b $(rl_log_count b 'direct path lost') time(s)"
rl_finish test_p2p_loss
