#!/usr/bin/env bash
# Two clients behind one server, no STUN (relay only): each gets an address
# from the pool, and ping works both ways through the WebSocket relay.
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
check "ping a -> b (5 of 5)" rl_ping a "${vb:-none}" 5
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
