#!/usr/bin/env bash
# The server goes away and comes back: the clients keep their TUN device and
# address while it is down, reconnect by themselves (reconnects >= 1,
# connected again) and ping works again without restarting them.
set -uo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$here/lib.sh"
rl_init "$here/.."
echo "test_server_restart: clients survive a server restart"

rl_world_relay 2 || rl_finish
check "client a connected" rl_wait_until 20 rl_ready a
check "client b connected" rl_wait_until 20 rl_ready b
va=$(rl_vip a); vb=$(rl_vip b)
echo "  a = ${va:-?}, b = ${vb:-?}"
check "ping a -> b before the restart" rl_wait_until 15 rl_ping_once a "${vb:-none}"
r0=$(rl_reconnects a); r0=${r0:-0}

rl_stop server
check "server is gone" test -z "$(rl_pid server)"
check "a notices (status: not connected) within 40 s" rl_wait_until 40 rl_not_connected a
check "b notices (status: not connected) within 40 s" rl_wait_until 40 rl_not_connected b
check "a's client is still running" rl_alive a
check "a keeps rl0 while the server is down" rl_tun_exists a
check "a keeps its address $va on rl0" rl_tun_has_addr a "${va:-none}"
check "b keeps its address $vb on rl0" rl_tun_has_addr b "${vb:-none}"
sleep 2   # let the clients fail at least one reconnect attempt

rl_start_server server srv
check "server listens again" rl_wait_until 10 rl_server_listening srv
check "a reconnects by itself (reconnects >= $((r0 + 1)))" rl_wait_until 45 rl_reconnected a $((r0 + 1))
check "b reconnects by itself" rl_wait_until 45 rl_reconnected b 1
echo "  reconnects: a=$(rl_reconnects a) b=$(rl_reconnects b)"
check "a has the same address after reconnecting" test "$(rl_vip a)" = "$va"
check "b has the same address after reconnecting" test "$(rl_vip b)" = "$vb"
check "ping a -> b works again within 15 s" rl_wait_until 15 rl_ping_once a "${vb:-none}"
check "ping a -> b (5 of 5)" rl_ping a "${vb:-none}" 5
check "ping b -> a (5 of 5)" rl_ping b "${va:-none}" 5
rl_finish test_server_restart
