#!/usr/bin/env bash
# Birthday punching (issue 13): a behind a random symmetric NAT (masquerade
# random), b behind a port-restricted cone (plain masquerade), both routers
# with a home-router input firewall. No single socket crosses that pair:
# b sprays random ports of a's router from a fresh port and then announces
# that port; a opens 256 fresh sockets towards it; one of a's sockets wins
# and then carries the pair's traffic through the io_uring workers. (a's
# data port, challenging the announced port every tick, holds a 257th
# ticket; when it wins, about 1 run in 100, the checks follow it.) An
# attempt is two such draws (b's second from another fresh port, which
# a's same sockets are retargeted at).
# Checked outside ringlink:
#   * ra forwards large UDP from a to rb from a source port other than a's
#     data port (the winning socket), and the server's interface stays flat
#     during a ping burst;
#   * a checked 16 MiB transfer b -> a crosses the punched path;
#   * once the attempt is over, a holds one UDP socket besides its data
#     port (the winner): the other 255 were closed.
# Real timers: CONNECTING must outlast both rounds (2 x 2.6 s of spray).
set -uo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$here/lib.sh"
. "$here/fast_lib.sh"
rl_init "$here/.."
MB=16
echo "test_p2p_birthday: random symmetric NAT <-> port-restricted cone goes direct by birthday punching"

rl_world_p2p random plain "discovery = 0" "route_cost = 0" || rl_finish
rl_start_client a a
rl_start_client b b
check "client a connected" rl_wait_until 20 rl_ready a
check "client b connected" rl_wait_until 20 rl_ready b
va=$(rl_vip a); vb=$(rl_vip b)
port=$(rl_data_port a)
echo "  a = ${va:-?} (data port ${port:-?}) behind $RL_P2P_NET.21 (random), b = ${vb:-?} behind $RL_P2P_NET.22 (port-restricted)"
check "a classified its NAT as symmetric/random" rl_wait_until 20 eval '[ "$(rl_nat_of a)" = symmetric/random ]'
check "b classified its NAT as a port-restricted cone" rl_wait_until 20 eval '[ "$(rl_nat_of b)" = cone/port-restricted ]'

# Large UDP a -> b forwarded by ra (before its SNAT: a's own address and
# port), from the data port and from any other.
rl_count ra main forward ip saddr 192.168.1.2 ip daddr "$RL_P2P_NET.22" udp sport "$port" meta length gt 1000
rl_count ra extra forward ip saddr 192.168.1.2 ip daddr "$RL_P2P_NET.22" udp sport != "$port" meta length gt 1000
# And b -> a into the punched socket (after ra's reverse NAT).
rl_count ra extra_in forward ip saddr "$RL_P2P_NET.22" ip daddr 192.168.1.2 udp dport != "$port" meta length gt 1000

# A relayed ping starts the attempt (discovery is off).
t0=$(rl_now_ms)
rl_spawn traffic a ping -n -i 0.2 -w 40 "${vb:-127.0.0.1}"
sockets_of() {
    local pid; pid=$(rl_pid "$1")
    rl_exec "$1" ss -Huanp 2>/dev/null | grep "pid=$pid," | grep -vc ":$port "
}
most=0
both_direct() {
    local n; n=$(sockets_of a); [ "${n:-0}" -gt "$most" ] && most=$n
    rl_peer_direct a "${vb:-none}" && rl_peer_direct b "${va:-none}"
}
check "a and b direct within 30 s" rl_wait_until 30 both_direct
echo "  direct after $(rl_secs_since "$t0") s; a's method: $(rl_peer_eval a "${vb:-none}" 'p["method"]'), b's: $(rl_peer_eval b "${va:-none}" 'p["method"]');" \
     "a held up to $most UDP sockets besides its data port while punching"
check "a ran birthday" test "$(rl_peer_eval a "${vb:-none}" 'p["method"]')" = birthday
check "a opened the attempt's sockets (>= 200 seen besides the data port)" rl_ge "$most" 200
ps=$(rl_status_get a 'd["node"]["punch_sockets"]'); pp=$(rl_status_get a 'd["node"]["punch_probes"]')
pb=$(rl_status_get b 'd["node"]["punch_probes"]')
na=$(rl_peer_eval a "${vb:-none}" 'p["attempts"]'); nb=$(rl_peer_eval b "${va:-none}" 'p["attempts"]')
echo "  status: a opened ${ps:-?} attempt sockets and sent ${pp:-?} probes in ${na:-?} attempt(s); b sent ${pb:-?} in ${nb:-?}"
# Each side stops its probes at the first proven path, so the counts are
# bounds, not totals; a missed attempt (1.7 %) adds a second.
check "status counts a's 256 sockets, and at most one probe from each per round" \
    eval 'rl_ge "${ps:-0}" 256 && rl_ge $((512 * ${na:-0})) "${pp:-0}"'
# b sprays 510 ports from a fresh port, then asks STUN for its mapping
# from there and announces it; a's sockets aim at that port. Twice.
check "b's sprays stay within the budget (2 x (510 + its STUN request) per attempt)" \
    eval 'rl_ge "${pb:-0}" 1 && rl_ge $((1022 * ${nb:-0})) "${pb:-0}"' 
rl_stop traffic

m0=$(rl_counted ra main packets); x0=$(rl_counted ra extra packets); s0=$(rl_if_total srv eth0)
check "ping a -> b (20 of 20, 1200 bytes)" timeout 15 ip netns exec "$(rl_ns a)" ping -n -q -c 20 -i 0.1 -W 1 -s 1200 "${vb:-127.0.0.1}"
m1=$(rl_counted ra main packets); x1=$(rl_counted ra extra packets); s1=$(rl_if_total srv eth0)
echo "  ra forwarded a -> b: $((x1 - x0)) large datagrams from the punched socket, $((m1 - m0)) from the data port; the server's eth0 moved $((s1 - s0)) bytes"
# a's data port is a ticket in the same draw: while CONNECTING it
# challenges b's announced fresh port every tick, through a mapping of its
# own that b's spray covers as likely as any of the 256 (about 0.8 % a
# round), and it sends before the paced sockets do. Either winner is a
# genuine path; the checks below follow the one that won.
if [ $((m1 - m0)) -ge 20 ] && [ $((x1 - x0)) -lt 5 ]; then
    winner=data
    echo "  the data port's own challenge to b's fresh port won the draw"
    check "the burst left a from the data port (>= 20 datagrams)" rl_ge $((m1 - m0)) 20
else
    winner=punched
    check "status counts at least one probe from a's sockets" rl_ge "${pp:-0}" 1
    check "the burst left a from the punched socket (>= 20 datagrams)" rl_ge $((x1 - x0)) 20
    check "and not from the data port" test $((m1 - m0)) -lt 5
fi
check "and not through the server (< 20000 bytes)" test $((s1 - s0)) -lt 20000

i0=$(rl_counted ra extra_in bytes)
rl_flow_sink a "$va" 5001 || rl_fail "sink listening in a"
rl_flow_source b "$va" 5001 "$MB"
check "transfer b -> a finished within 60 s" rl_wait_until 60 rl_flow_done 5001
check "$MB MiB b -> a arrived whole (sha256)" rl_flow_check 5001 "$MB"
echo "  $RL_FLOW_INFO"
i1=$(rl_counted ra extra_in bytes)
# Bytes, not packets: veth forwards GSO runs as one packet each.
echo "  ra forwarded $((i1 - i0)) bytes of large UDP from b into a's punched socket during the transfer"
if [ "$winner" = punched ]; then
    check "the transfer came in through the punched socket (>= $MB MiB)" rl_ge $((i1 - i0)) $((MB << 20))
    one_left() { [ "$(sockets_of a)" = 1 ]; }
    check "the attempt's other sockets closed: one left besides the data port within 40 s" rl_wait_until 40 one_left
else
    check "the transfer came in through the data port (< 1 MiB into other sockets)" test $((i1 - i0)) -lt $((1 << 20))
    none_left() { [ "$(sockets_of a)" = 0 ]; }
    check "the attempt's sockets closed: none left besides the data port within 40 s" rl_wait_until 40 none_left
fi
check "a <-> b still direct over it" eval 'rl_peer_direct a "${vb:-none}" && timeout 10 ip netns exec "$(rl_ns a)" ping -n -q -c 5 -i 0.1 -W 1 "${vb:-127.0.0.1}" >/dev/null'
rl_finish test_p2p_birthday
