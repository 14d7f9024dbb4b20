#!/usr/bin/env bash
# A missed birthday draw (issue 13): the pair of test_p2p_birthday (a behind
# a random symmetric NAT, b behind a port-restricted cone), but ra drops
# every UDP datagram to and from rb while the first attempt runs, so both of
# its rounds miss for certain. Once a lists b as WAITING the cut is lifted.
# Checked:
#   * the WAITING after a missed draw is a sixth of Candy's (5 s, not 30 s);
#   * the second attempt goes direct, and the traffic really takes it: a
#     ping burst leaves a through the punched socket (ra's counters), not
#     through the server, and b -> a data arrives through that socket;
#   * the path holds afterwards (no falling back to the relay).
set -uo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$here/lib.sh"
rl_init "$here/.."
echo "test_p2p_birthday_miss: a birthday attempt that missed is retried within seconds, and the retry's path carries the traffic"

rl_world_p2p random plain "discovery = 0" "route_cost = 0" || rl_finish
rl_start_client a a
rl_start_client b b
check "client a connected" rl_wait_until 20 rl_ready a
check "client b connected" rl_wait_until 20 rl_ready b
va=$(rl_vip a); vb=$(rl_vip b)
port=$(rl_data_port a)
check "a classified its NAT as symmetric/random" rl_wait_until 20 eval '[ "$(rl_nat_of a)" = symmetric/random ]'
check "b classified its NAT as a port-restricted cone" rl_wait_until 20 eval '[ "$(rl_nat_of b)" = cone/port-restricted ]'

rl_count ra extra forward ip saddr 192.168.1.2 ip daddr "$RL_P2P_NET.22" udp sport != "$port" meta length gt 1000
rl_count ra extra_in forward ip saddr "$RL_P2P_NET.22" ip daddr 192.168.1.2 udp dport != "$port"
rl_cut_udp ra "$RL_P2P_NET.22"

# A relayed ping starts the attempt (discovery is off).
t0=$(rl_now_ms)
rl_spawn traffic a ping -n -i 0.2 -w 60 "${vb:-127.0.0.1}"
state_of() { rl_peer_eval "$1" "$2" 'p["state"]'; }
check "the cut attempt misses: a lists b as WAITING within 25 s" \
    rl_wait_until 25 eval '[ "$(state_of a "${vb:-none}")" = WAITING ]'
echo "  a WAITING after $(rl_secs_since "$t0") s; the cut dropped $(rl_cut_dropped ra) datagrams"
check "a's attempt was a birthday" test "$(rl_peer_eval a "${vb:-none}" 'p["method"]')" = birthday
check "a waits 5 s after the missed draw (status retry_secs)" \
    test "$(rl_peer_eval a "${vb:-none}" 'p["retry_secs"]')" = 5
check "the cut dropped the first attempt's probes (> 100)" rl_ge "$(rl_cut_dropped ra)" 100
rl_cut_off ra
t1=$(rl_now_ms)

both_direct() { rl_peer_direct a "${vb:-none}" && rl_peer_direct b "${va:-none}"; }
check "a and b direct within 20 s of the cut's end" rl_wait_until 20 both_direct
echo "  direct $(rl_secs_since "$t1") s after the cut ended; attempts: a $(rl_peer_eval a "${vb:-none}" 'p["attempts"]'), b $(rl_peer_eval b "${va:-none}" 'p["attempts"]')"
rl_stop traffic

x0=$(rl_counted ra extra packets); s0=$(rl_if_total srv eth0)
check "ping a -> b (20 of 20, 1200 bytes)" eval 'timeout 15 ip netns exec "$(rl_ns a)" ping -n -q -c 20 -i 0.1 -W 1 -s 1200 "${vb:-127.0.0.1}" >/dev/null'
x1=$(rl_counted ra extra packets); s1=$(rl_if_total srv eth0)
echo "  ra forwarded $((x1 - x0)) large datagrams a -> b from the punched socket; the server's eth0 moved $((s1 - s0)) bytes"
check "the burst left a from the punched socket (>= 20 datagrams)" rl_ge $((x1 - x0)) 20
check "and not through the server (< 20000 bytes)" test $((s1 - s0)) -lt 20000

i0=$(rl_counted ra extra_in packets)
check "ping b -> a (20 of 20)" eval 'timeout 15 ip netns exec "$(rl_ns b)" ping -n -q -c 20 -i 0.1 -W 1 "${va:-127.0.0.1}" >/dev/null'
i1=$(rl_counted ra extra_in packets)
check "b -> a came in through the punched socket (>= 20 datagrams)" rl_ge $((i1 - i0)) 20

# Two heartbeat timeouts (3 s each) later the path is still the punched one.
check "still direct 8 s later" rl_holds_for 8 both_direct
rl_finish test_p2p_birthday_miss
