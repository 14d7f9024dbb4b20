#!/usr/bin/env bash
# Two networks on one server port ([[network]] chosen by URL path), with
# the same addresses in both: pings work inside each, and no frame of one
# reaches a member of the other (the relay counters of the other side stay
# still). `ringlink status --server` lists each member with its network. A
# client with the wrong network's password is refused.
set -uo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$here/lib.sh"
rl_init "$here/.."
echo "test_networks: two networks on one port, isolated"

LAB_PW=lab-secret
rl_switch
rl_attach srv "$RL_SERVER_IP/24"
rl_server_conf server 'stun = ""' '[[network]]' 'name = "lab"' 'path = "/lab"' \
    "password = \"$LAB_PW\"" "pool = \"$RL_POOL\"" >/dev/null
rl_start_server server srv
check "server listens" rl_wait_until 10 rl_server_listening srv
lab_url="ws://$RL_SERVER_IP:$RL_SERVER_PORT/lab"
i=0
for x in a b c d; do
    rl_attach "$x" "10.91.0.$((10 + i))/24"; i=$((i + 1))
done
rl_client_conf a 'address = "10.77.0.10/24"' >/dev/null
rl_client_conf b 'address = "10.77.0.11/24"' >/dev/null
RL_CLIENT_SERVER=$lab_url RL_CLIENT_PASSWORD=$LAB_PW rl_client_conf c 'address = "10.77.0.10/24"' >/dev/null
RL_CLIENT_SERVER=$lab_url RL_CLIENT_PASSWORD=$LAB_PW rl_client_conf d 'address = "10.77.0.11/24"' >/dev/null
for x in a b c d; do rl_start_client "$x" "$x"; done
for x in a b c d; do check "client $x connected" rl_wait_until 20 rl_ready "$x"; done
check "the server logs c in network lab" rl_log_has server "joined vip=10.77.0.10 .*network=lab"
# status --server: every network, and each member with the network it joined.
by_network=$(rl_server_status_get server 'sorted(m["network"] + ":" + m["vip"] for m in d["members"])')
echo "  status --server members: ${by_network:-none}"
check "status --server lists a, b in default and c, d in lab" \
    test "$by_network" = '["default:10.77.0.10", "default:10.77.0.11", "lab:10.77.0.10", "lab:10.77.0.11"]'
check "status --server counts two members in each network" \
    test "$(rl_server_status_get server '[n["name"] + "=" + str(n["members"]) for n in d["networks"]]')" = '["default=2", "lab=2"]'
lab_rows() { timeout --foreground 10 "$RINGLINK" status --server --socket "$(rl_sock server)" 2>/dev/null | grep -c '^10\.77\.0\.1[01] \+lab '; }
check "the human table shows two rows in network lab" test "$(lab_rows)" = 2

rx() { rl_status_get "$1" 'd["relay_rx_frames"]'; }
settled_rx() { local r; r=$(rx "$1"); sleep 1; [ "$(rx "$1")" = "$r" ]; }
check "ping a -> b, default network (5 of 5)" rl_wait_until 15 rl_ping a 10.77.0.11 5
check "ping c -> d, lab network (5 of 5)" rl_wait_until 15 rl_ping c 10.77.0.11 5
# Counters are refreshed twice a second; wait for them to settle.
rl_wait_until 5 settled_rx b; rl_wait_until 5 settled_rx d
b0=$(rx b); d0=$(rx d)
check "ping c -> 10.77.0.11 (20 of 20)" rl_ping c 10.77.0.11 20
grew() { rl_ge "$(( $(rx "$1") - $2 ))" "$3"; }
check "d's relayed frames grew by >= 20" rl_wait_until 5 grew d "$d0" 20
rl_wait_until 5 settled_rx d
check "b (same address, default network) got none of them" test "$(rx b)" = "$b0"
d1=$(rx d)
check "ping a -> 10.77.0.11 (20 of 20)" rl_ping a 10.77.0.11 20
check "d (lab) got none of a's" test "$(rx d)" = "$d1"
echo "  ringlink status --server:"
timeout --foreground 10 "$RINGLINK" status --server --socket "$(rl_sock server)" 2>/dev/null | sed 's/^/    /'

rl_attach e 10.91.0.20/24
RL_CLIENT_SERVER=$lab_url rl_client_conf e 'address = "10.77.0.12/24"' >/dev/null
rl_start_client e e
check "a client with the default password is refused on /lab" rl_wait_until 15 rl_log_has server "refused .*wrong password"
check "e is told why (wrong password)" rl_wait_until 10 rl_log_has e "wrong password"
check "e never joined" test "$(rl_log_count server "joined vip=10.77.0.12")" = 0
rl_finish test_networks
