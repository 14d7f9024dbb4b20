#!/usr/bin/env bash
# Two clients behind one server, no STUN (relay only): each gets an address
# from the pool, and ping works both ways through the WebSocket relay. The
# server's `ringlink status --server` lists both members, and their frame
# and byte counters move with the relayed pings.
set -uo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$here/lib.sh"
rl_init "$here/.."
echo "test_relay_ping: two clients, relay only, ping both ways"

rl_world_relay 2 || rl_finish
check "client a connected (status)" rl_wait_until 20 rl_ready a
check "client b connected (status)" rl_wait_until 20 rl_ready b
va=$(rl_vip a); vb=$(rl_vip b)
echo "  a = ${va:-?}, b = ${vb:-?}"
in_pool() { python3 -c 'import ipaddress,sys; sys.exit(0 if ipaddress.ip_address(sys.argv[1]) in ipaddress.ip_network(sys.argv[2]) else 1)' "$1" "$RL_POOL"; }
check "a's address is in the pool $RL_POOL" in_pool "${va:-0.0.0.0}"
check "b's address is in the pool $RL_POOL" in_pool "${vb:-0.0.0.0}"
check "a and b got different addresses" test -n "$va" -a "$va" != "$vb"
check "TUN rl0 in a carries $va" rl_tun_has_addr a "${va:-none}"
check "TUN rl0 in b carries $vb" rl_tun_has_addr b "${vb:-none}"
check "first ping a -> b within 15 s" rl_wait_until 15 rl_ping_once a "${vb:-none}"
# The server's side: both members listed with their VIPs, and the relayed
# pings move their frame and byte counters.
members=$(rl_server_status_get server '" ".join(m["vip"] for m in d["members"])')
is_member() { [ "$(rl_member_get server "$1" vip)" = "$1" ]; }
check "ringlink status --server lists exactly a and b (${members:-none})" \
    eval 'is_member "${va:-x}" && is_member "${vb:-x}" && [ "$(rl_server_status_get server "len(d[\"members\"])")" = 2 ]'
check "their remote addresses are a's and b's (10.91.0.10, 10.91.0.11)" \
    test "$(rl_member_get server "${va:-x}" remote | cut -d: -f1) $(rl_member_get server "${vb:-x}" remote | cut -d: -f1)" = "10.91.0.10 10.91.0.11"
a_in0=$(rl_member_get server "${va:-x}" frames_in); a_bin0=$(rl_member_get server "${va:-x}" bytes_in)
b_out0=$(rl_member_get server "${vb:-x}" frames_out); b_bout0=$(rl_member_get server "${vb:-x}" bytes_out)
check "ping a -> b (5 of 5)" rl_ping a "${vb:-none}" 5
a_in1=$(rl_member_get server "${va:-x}" frames_in); a_bin1=$(rl_member_get server "${va:-x}" bytes_in)
b_out1=$(rl_member_get server "${vb:-x}" frames_out); b_bout1=$(rl_member_get server "${vb:-x}" bytes_out)
echo "  server status: a frames_in ${a_in0:-?} -> ${a_in1:-?}, bytes_in ${a_bin0:-?} -> ${a_bin1:-?}; b frames_out ${b_out0:-?} -> ${b_out1:-?}, bytes_out ${b_bout0:-?} -> ${b_bout1:-?}"
# An echo request is 84 bytes, 85 as a FORWARD frame.
check "a's frames in at the server grew by at least the 5 echo requests" rl_ge "$(( ${a_in1:-0} - ${a_in0:-0} ))" 5
check "a's bytes in grew by at least 5 x 85" rl_ge "$(( ${a_bin1:-0} - ${a_bin0:-0} ))" 425
check "b's frames out grew by at least 5" rl_ge "$(( ${b_out1:-0} - ${b_out0:-0} ))" 5
check "b's bytes out grew by at least 5 x 85" rl_ge "$(( ${b_bout1:-0} - ${b_bout0:-0} ))" 425
server_table() { timeout --foreground 10 "$RINGLINK" status --server --socket "$(rl_sock server)" 2>/dev/null; }
check "the human table has a row per member" \
    eval 'server_table | grep -q "^${va:-x} " && server_table | grep -q "^${vb:-x} "'
check "ping b -> a (5 of 5)" rl_ping b "${va:-none}" 5
check "relay counters moved (a relay_tx_frames > 0)" rl_ge "$(rl_status_get a 'd["relay_tx_frames"]')" 1
# Every counter reaches the operator, by name, in both forms.
human_status() { timeout --foreground 10 "$RINGLINK" status --socket "$(rl_sock a)" 2>/dev/null; }
status_names() { human_status | grep -qw "$1"; }
for k in decrypt_failed no_route oversize send_errors tun_write_errors relay_dropped stun_ignored routes_ignored; do
    check "ringlink status shows $k" status_names "$k"
done
check "--json carries the dataplane, node and router counters" test "$(rl_status_get a '"decrypt_failed" in d and "tun_write_errors" in d and "malformed" in d["node"] and "probes_sent" in d["router"]')" = true
check "the server log shows two joins" rl_ge "$(rl_log_count server joined)" 2
rl_finish test_relay_ping
