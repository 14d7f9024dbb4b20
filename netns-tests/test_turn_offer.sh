#!/usr/bin/env bash
# The server's `turn` key reaches ringlink clients end to end: after login a
# client's status names the TURN server and credentials minted for its own
# VIP, expiring within the ttl; a client with its own `turn` key keeps it.
# (test_turn_path carries traffic over it.)
set -uo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$here/lib.sh"
rl_init "$here/.."
echo "test_turn_offer: TURN credentials from the server show in a client's status"

rl_switch
rl_attach srv "$RL_SERVER_IP/24"
rl_server_conf server "turn = { url = \"turn://$RL_SERVER_IP:3478\", secret = \"coturn-secret\", ttl = 600 }" >/dev/null
rl_start_server server srv
check "server listens" rl_wait_until 10 rl_server_listening srv
rl_attach a 10.91.0.10/24
rl_client_conf a >/dev/null
rl_start_client a a
rl_attach b 10.91.0.11/24
rl_client_conf b 'turn = "turn://alice:static-pw@192.0.2.7:3479"' >/dev/null
rl_start_client b b
check "client a connected" rl_wait_until 20 rl_ready a
check "client b connected" rl_wait_until 20 rl_ready b
has_turn() { [ -n "$(rl_status_get a 'd.get("turn") or ""')" ]; }
check "a's status names a TURN server" rl_wait_until 10 has_turn
turn_a=$(rl_status_get a 'd["turn"]')
echo "  a: turn ${turn_a:-?}"
va=$(rl_vip a)
check "offered by the server, for $RL_SERVER_IP:3478" \
    grep -q "^$RL_SERVER_IP:3478 user [0-9]*:${va:-none} (offered by the server, valid [0-9]*s more)$" <<<"$turn_a"
expiry=$(sed -n 's/^.* user \([0-9]*\):.*$/\1/p' <<<"$turn_a")
now=$(date +%s)
check "the credential expires within the ttl (600 s) from now" \
    test "${expiry:-0}" -gt "$now" -a "${expiry:-0}" -le $((now + 600))
turn_b=$(rl_status_get b 'd.get("turn") or ""')
echo "  b: turn ${turn_b:-?}"
check "b keeps its own TURN server" test "$turn_b" = "192.0.2.7:3479 user alice (from the config)"
check_not "b's status does not show its password" grep -q static-pw <<<"$(rl_status b)"
rl_finish test_turn_offer
