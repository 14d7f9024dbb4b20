#!/usr/bin/env bash
# Direct TCP by hole punching (issue 15): two sites behind plain Linux
# masquerade with a home-router firewall, whose routers drop all UDP, and
# no port forward anywhere. The ringlink server tells each client its clock
# and the address it sees (TIME); the pair agrees on an instant of that
# clock and both connect to each other's predicted endpoint then. Asserted
# on counters outside ringlink:
#   * both routers dropped UDP, and neither has a port forward;
#   * both sides show path "tcp";
#   * a ping burst a -> b crosses from ra to rb as TCP (>= 20 segments)
#     while the server's interface stays flat;
#   * 16 MiB b -> a arrives whole (sha256);
#   * then both routers lose their input firewall (bare masquerade, which
#     resets unexpected SYNs): the restarted pair punches through again.
# Timers / 5.
set -uo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$here/lib.sh"
. "$here/fast_lib.sh"
rl_init "$here/.."
echo "test_tcp_punch: two NATed sites whose routers drop UDP meet by TCP hole punching"

rl_world_p2p plain plain "test_time_divisor = 5" "discovery = 0" || rl_finish
rl_drop_udp ra
rl_drop_udp rb
rl_count ra tcp forward ip saddr 192.168.1.2 ip daddr "$RL_P2P_NET.22" meta l4proto tcp

rl_start_client a a
rl_start_client b b
check "client a connected" rl_wait_until 20 rl_ready a
check "client b connected" rl_wait_until 20 rl_ready b
va=$(rl_vip a); vb=$(rl_vip b)

path_of() { rl_peer_get "$1" "$2" path; }
both_tcp() { [ "$(path_of a "${vb:-none}")" = tcp ] && [ "$(path_of b "${va:-none}")" = tcp ]; }
t0=$(rl_now_ms)
rl_spawn traffic a ping -n -c 160 -i 0.25 "${vb:-127.0.0.1}"
check "a and b on a direct TCP path within 40 s" rl_wait_until 40 both_tcp
echo "  on TCP $(rl_secs_since "$t0") s after the first ping"
rl_stop traffic
check "a's log: a hole punch was agreed" rl_log_has a "TCP hole punch agreed"
check "ra dropped UDP" rl_ge "$(rl_udp_dropped ra)" 1
check "rb dropped UDP" rl_ge "$(rl_udp_dropped rb)" 1
check "rb has no port forward (no DNAT rule)" test -z "$(rl_exec rb nft list ruleset | grep -i dnat)"

f0=$(rl_counted ra tcp packets)
srv0=$(rl_if_total srv eth0)
check "ping a -> b (20 of 20)" timeout 15 ip netns exec "$(rl_ns a)" ping -n -q -c 20 -i 0.1 -W 1 "${vb:-127.0.0.1}"
f1=$(rl_counted ra tcp packets)
srv1=$(rl_if_total srv eth0)
echo "  ra forwarded $((f1 - f0)) TCP segments from a to rb; the server's eth0 moved $((srv1 - srv0)) bytes"
check "the burst crossed from ra to rb as TCP (>= 20 segments)" rl_ge $((f1 - f0)) 20
check "and not the server (< 20000 bytes)" test $((srv1 - srv0)) -lt 20000

MB=16
rl_flow_sink a "$va" 5001 || rl_fail "sink listening in a"
rl_flow_source b "$va" 5001 "$MB"
check "transfer b -> a over the punched stream finished within 60 s" rl_wait_until 60 rl_flow_done 5001
check "$MB MiB b -> a arrived whole (sha256)" rl_flow_check 5001 "$MB"
echo "  $RL_FLOW_INFO"
check "still on TCP after the transfer" both_tcp

# The commonest Linux gateway: masquerade and no input firewall, which
# answers a SYN it has no mapping for with a reset. The punch starts its
# connect again until the other side's SYN has opened the way.
rl_stop a; rl_stop b
rl_exec ra nft delete table inet rl_fw || rl_die "firewall off on ra"
rl_exec rb nft delete table inet rl_fw || rl_die "firewall off on rb"
rl_start_client a a
rl_start_client b b
check "both back after the restart" rl_wait_until 20 rl_ready a
rl_wait_until 20 rl_ready b
va=$(rl_vip a); vb=$(rl_vip b)
t1=$(rl_now_ms)
rl_spawn traffic2 a ping -n -c 160 -i 0.25 "${vb:-127.0.0.1}"
check "bare masquerade: a and b on a direct TCP path within 40 s" rl_wait_until 40 both_tcp
echo "  on TCP $(rl_secs_since "$t1") s after the first ping; punches agreed by a: $(rl_log_count a "TCP hole punch agreed"), failed: $(rl_log_count a "TCP path failed")"
grep -h "TCP path failed" "$(rl_log_file a)" "$(rl_log_file b)" 2>/dev/null | sed 's/^/    /' | tail -4
rl_stop traffic2
check "bare masquerade: ping a -> b (20 of 20)" timeout 15 ip netns exec "$(rl_ns a)" ping -n -q -c 20 -i 0.1 -W 1 "${vb:-127.0.0.1}"
rl_finish test_tcp_punch
