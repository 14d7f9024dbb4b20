#!/usr/bin/env bash
# A working direct path is cut (a's router drops forwarded UDP to and from
# b's router, while WS and STUN to the server still pass): both ends fall
# back to the relay within the dead-peer timeout, and a ping running across
# both switches keeps answering, losing at most LOSS_MAX probes. Then the cut
# is lifted and the path is direct again after the next retry. Timers are
# divided by 10: dead peer 0.3 s, tick 0.1 s, phases 1 s, WAITING 3 s, 6 s.
# "Direct" and "relay" are checked on the wire: a ping burst moves the
# server's interface counters only while the path is cut, and a's router
# forwards it as UDP straight to b's router once it is restored.
set -uo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$here/lib.sh"
rl_init "$here/.."
DIV=10
# Probes every 0.1 s. Only probes sent while an end still trusts the dead
# path are lost: dead-peer timeout (3 s / DIV) + one tick (1 s / DIV) per
# end, i.e. about 4 probes; going back to direct needs a heartbeat exchange
# over the new path first, so costs none. 10 leaves room for a busy 2-core host.
LOSS_MAX=10
DETECT_MAX_MS=1000
echo "test_p2p_cut: direct path cut -> relay without a pause, restored -> direct (timers / $DIV)"

rl_world_p2p plain plain "test_time_divisor = $DIV" || rl_finish
rl_start_client a a
rl_start_client b b
check "client a connected" rl_wait_until 20 rl_ready a
check "client b connected" rl_wait_until 20 rl_ready b
va=$(rl_vip a); vb=$(rl_vip b)
echo "  a = ${va:-?} behind $RL_P2P_NET.21, b = ${vb:-?} behind $RL_P2P_NET.22"
check "a sees b CONNECTED/direct" rl_wait_until 15 rl_peer_direct a "${vb:-none}"
check "b sees a CONNECTED/direct" rl_wait_until 15 rl_peer_direct b "${va:-none}"

# burst <label> : 100 pings of 1000 bytes a -> b; sets SRV (bytes through
# the server's eth0), FWD (UDP bytes ra forwarded to rb), GOT (answers).
burst() {
    rl_count ra "$1" forward ip daddr "$RL_P2P_NET.22" meta l4proto udp
    local s0 s1 out
    s0=$(rl_if_total srv eth0)
    out=$(timeout --foreground 15 ip netns exec "$(rl_ns a)" ping -n -q -c 100 -i 0.01 -s 1000 -W 1 "${vb:-127.0.0.1}" 2>/dev/null)
    s1=$(rl_if_total srv eth0)
    SRV=$((s1 - s0)); FWD=$(rl_counted ra "$1")
    GOT=$(printf '%s\n' "$out" | sed -n 's/.* \([0-9]*\) received.*/\1/p')
    echo "  $1 burst: ${GOT:-0}/100 answered, server eth0 moved $SRV bytes, ra forwarded ${FWD:-0} bytes of UDP to rb"
}

rl_spawn ping a ping -n -O -i 0.1 -w 60 "${vb:-127.0.0.1}"
check "the long ping answers" rl_wait_until 5 rl_log_has ping "icmp_seq=5 ttl="

t_cut=$(rl_now_ms)
rl_cut_udp ra "$RL_P2P_NET.22"
check "a falls back to the relay for b" rl_wait_until 5 rl_peer_relay a "${vb:-none}"
check "b falls back to the relay for a" rl_wait_until 5 rl_peer_relay b "${va:-none}"
lost_a=$(rl_log_time_ms a "direct path lost" last) || lost_a=0
lost_b=$(rl_log_time_ms b "direct path lost" last) || lost_b=0
echo "  dead path noticed after $((lost_a - t_cut)) ms at a, $((lost_b - t_cut)) ms at b (dead-peer timeout $((3000 / DIV)) ms)"
check "a noticed within ${DETECT_MAX_MS} ms" test "$lost_a" -ge "$t_cut" -a $((lost_a - t_cut)) -le "$DETECT_MAX_MS"
check "b noticed within ${DETECT_MAX_MS} ms" test "$lost_b" -ge "$t_cut" -a $((lost_b - t_cut)) -le "$DETECT_MAX_MS"
burst cut
check "during the cut the burst is answered (${GOT:-0}/100)" rl_ge "${GOT:-0}" 95
check "through the relay (server eth0 moved >= 2 x 100 KB)" rl_ge "$SRV" 200000
check "the cut dropped the punching attempts ($(rl_cut_dropped ra) packets)" rl_ge "$(rl_cut_dropped ra)" 1
check "a retries through the cut and parks b in WAITING" rl_wait_until 10 test "$(rl_peer_eval a "${vb:-none}" 'p["state"]')" = WAITING

retry=$(rl_peer_eval a "${vb:-none}" 'p["retry_secs"]')
t_restore=$(rl_now_ms)
rl_cut_off ra
echo "  cut lifted; a's retry_secs for b is ${retry:-?}"
check "a sees b CONNECTED/direct again" rl_wait_until 20 rl_peer_direct a "${vb:-none}"
check "b sees a CONNECTED/direct again" rl_wait_until 10 rl_peer_direct b "${va:-none}"
up_a=$(rl_log_time_ms a "direct path up" last) || up_a=0
up_b=$(rl_log_time_ms b "direct path up" last) || up_b=0
up=$(( up_a > up_b ? up_a : up_b ))
echo "  direct again $((up - t_restore)) ms after the cut was lifted"
check "within the retry (${retry:-?} s) + 2 s" test "$up" -ge "$t_restore" -a $((up - t_restore)) -le $(( (${retry:-0} + 2) * 1000 ))
burst restored
check "after the restore the burst is answered (${GOT:-0}/100)" rl_ge "${GOT:-0}" 95
check "directly: ra forwarded >= 100 x 1000 bytes of UDP to rb" rl_ge "${FWD:-0}" 100000
check "and not through the server (its eth0 moved $SRV < 50000 bytes)" test "$SRV" -lt 50000

rl_signal ping INT
rl_wait_until 5 rl_exited ping
read -r sent lost <<<"$(rl_ping_losses "$(rl_log_file ping)")"
echo "  long ping across both switches: ${lost:-?} of ${sent:-?} probes lost (bound $LOSS_MAX)"
check "the long ping kept answering (${sent:-0} probes, >= 50)" rl_ge "${sent:-0}" 50
check "at most $LOSS_MAX probes lost across the switches" test "${lost:-99}" -le "$LOSS_MAX"
rl_finish test_p2p_cut
