#!/usr/bin/env bash
# Order of preference (issue 15): a pair on TURN keeps trying direct and
# moves up when it wins. a and b behind port-restricted cones (plain
# masquerade, home-router firewalls) would go direct at once, but ra drops
# all UDP to and from rb at first, so their attempt misses and the pair
# takes TURN through coturn. Then the cut is lifted: the state machine's
# next attempt (peer timers / 5: WAITING 6 s) goes direct, and the pair
# leaves TURN. Checked on counters outside ringlink: a ping burst crosses
# coturn while on TURN, and afterwards crosses between the routers while
# coturn's counters stay flat.
set -uo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$here/lib.sh"
rl_init "$here/.."
echo "test_turn_climb: a pair on TURN climbs to the direct path once UDP between the sites works"

rl_world_turn climb-secret || rl_finish
rl_nat_site a ra "$RL_P2P_NET.21/24" 192.168.1 plain
rl_nat_site b rb "$RL_P2P_NET.22/24" 192.168.2 plain
rl_router_firewall ra
rl_router_firewall rb
rl_p2p_client_conf a "discovery = 0" "test_time_divisor = 5" >/dev/null
rl_p2p_client_conf b "discovery = 0" "test_time_divisor = 5" >/dev/null
rl_cut_udp ra "$RL_P2P_NET.22"
rl_start_client a a
rl_start_client b b
check "client a connected" rl_wait_until 20 rl_ready a
check "client b connected" rl_wait_until 20 rl_ready b
va=$(rl_vip a); vb=$(rl_vip b)

rl_count turn via_turn input ip daddr "$TURN_IP" ip saddr "{ $RL_P2P_NET.21, $RL_P2P_NET.22 }" meta l4proto udp
rl_count ra site_to_site forward ip daddr "$RL_P2P_NET.22" meta l4proto udp meta length gt 900

rl_spawn traffic a ping -n -i 0.5 -w 90 "${vb:-127.0.0.1}"
path_of() { rl_peer_eval "$1" "$2" 'p["path"]'; }
both_on() { [ "$(path_of a "${vb:-none}")" = "$1" ] && [ "$(path_of b "${va:-none}")" = "$1" ]; }
check "with UDP between the sites cut: both on path turn within 30 s" rl_wait_until 30 both_on turn
burst() { timeout 15 ip netns exec "$(rl_ns a)" ping -n -q -c 20 -i 0.1 -W 1 -s 1000 "${vb:-127.0.0.1}" >/dev/null; }
t0=$(rl_counted turn via_turn bytes)
check "ping a -> b on TURN (20 of 20)" burst
t1=$(rl_counted turn via_turn bytes)
check "the burst crossed coturn (>= 40 kB)" rl_ge $((t1 - t0)) 40000

rl_cut_off ra
tc=$(rl_now_ms)
check "cut lifted: both direct within 30 s" rl_wait_until 30 both_on direct
echo "  direct $(rl_secs_since "$tc") s after the cut was lifted; a made $(rl_peer_eval a "${vb:-none}" 'p["attempts"]') attempts"
rl_stop traffic
t0=$(rl_counted turn via_turn bytes); d0=$(rl_counted ra site_to_site bytes)
check "ping a -> b direct (20 of 20)" burst
t1=$(rl_counted turn via_turn bytes); d1=$(rl_counted ra site_to_site bytes)
echo "  burst: $((d1 - d0)) bytes between the routers, $((t1 - t0)) into coturn"
check "the burst went between the routers (>= 20 kB)" rl_ge $((d1 - d0)) 20000
check "and not through coturn (< 5000 bytes)" test $((t1 - t0)) -lt 5000
check "a's log: the direct path replaced TURN" rl_log_has a "direct path up"
rl_finish test_turn_climb
