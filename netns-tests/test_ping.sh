#!/usr/bin/env bash
# `ringlink ping` (issue 17): between two NATed sites it reports the direct
# path with the peer's endpoint and stops at that first reply; once the
# routers drop the pair's UDP, its replies say "relay" and it sends all of
# --count. Timers / 10 so the fallback takes a fraction of a second.
set -uo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$here/lib.sh"
rl_init "$here/.."
echo "test_ping: ringlink ping names the path each reply took"

rl_world_p2p plain plain "test_time_divisor = 10" || rl_finish
rl_start_client a a
rl_start_client b b
check "client a connected" rl_wait_until 20 rl_ready a
check "client b connected" rl_wait_until 20 rl_ready b
va=$(rl_vip a); vb=$(rl_vip b)
rl_ping a "${vb:-none}" 2
check "a sees b direct" rl_wait_until 15 rl_peer_direct a "${vb:-none}"
rlping() {
    timeout 30 ip netns exec "$(rl_ns a)" "$RINGLINK" ping "${vb:-127.0.0.1}" --socket "$(rl_sock a)" "$@" \
        >"$RL_TMP/ping.out" 2>&1
    echo $? >"$RL_TMP/ping.rc"
    sed 's/^/    /' "$RL_TMP/ping.out"
}
rlping --count 5
check "direct: exit 0" test "$(cat "$RL_TMP/ping.rc")" = 0
check "direct: the reply names the direct path and b's router ($RL_P2P_NET.22)" \
    grep -Eq "^reply from ${vb//./\\.}: seq=1 time=[0-9.]+ ms path=direct $RL_P2P_NET\.22:[0-9]+$" "$RL_TMP/ping.out"
check "direct: it stopped at the first direct reply" test "$(grep -c '^reply' "$RL_TMP/ping.out")" = 1

rl_cut_udp ra "$RL_P2P_NET.22"
check "after the cut a falls back to the relay for b" rl_wait_until 10 rl_peer_relay a "${vb:-none}"
rlping --count 3
check "relay: exit 0" test "$(cat "$RL_TMP/ping.rc")" = 0
check "relay: three replies, each over the relay" test "$(grep -c 'path=relay$' "$RL_TMP/ping.out")" = 3
rl_finish test_ping
