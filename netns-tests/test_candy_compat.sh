#!/usr/bin/env bash
# A ringlink node and a stock Candy peer still talk (issue 14): sessions,
# key announcements and sealed relay frames are only ever sent to ringlink
# peers. Two ringlink clients (a, b) and a Candy client (candy_peer.py:
# Candy's login and relayed packets in clear) on one relay-only network:
# a and b seal with each other, while a and the Candy peer ping each other
# both ways in Candy's format, and the Candy peer never receives anything a
# stock client would misread (a sealed packet, a unicast GENERAL that v6
# takes for a LAN candidate). a's status shows b protected and the Candy
# peer not.
set -uo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$here/lib.sh"
rl_init "$here/.."
echo "test_candy_compat: a ringlink node talks Candy's format to a Candy peer while sealing with ringlink peers"

VC=10.77.0.50
rl_world_relay 2 || rl_finish
rl_attach candy "10.91.0.30/24"
check "client a connected" rl_wait_until 20 rl_ready a
check "client b connected" rl_wait_until 20 rl_ready b
va=$(rl_vip a); vb=$(rl_vip b)
echo "  a = ${va:-?}, b = ${vb:-?}, the Candy peer = $VC"
check "ping a -> b" rl_wait_until 15 rl_ping_once a "${vb:-none}"
sealed() { [ "$(rl_peer_eval "$1" "$2" 'p["sealing"]')" = session ]; }
check "a seals with b" rl_wait_until 20 sealed a "${vb:-none}"

out="$RL_TMP/candy.json"
rl_spawn candy candy sh -c "cd '$here' && exec python3 candy_peer.py '$RL_SERVER_IP' '$RL_SERVER_PORT' '$RL_PASSWORD' '$VC' '${va:-0.0.0.0}' 20 >'$out'"
check "the Candy peer joined" rl_wait_until 10 rl_log_has server "client joined vip=${VC//./\\.} "
check "a pings the Candy peer (5 of 5)" rl_ping a "$VC" 5
rl_wait_until 20 bash -c "! kill -0 $(rl_pid candy) 2>/dev/null" || rl_stop candy
echo "  Candy peer: $(cat "$out" 2>/dev/null)"
field() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$out" "$1" 2>/dev/null; }
check "the Candy peer's 20 pings to a were answered (>= 19)" rl_ge "$(field replies)" 19
check "the Candy peer answered all 5 of a's pings" rl_ge "$(field answered)" 5
check "the Candy peer got no sealed packet" test "$(field sealed)" = 0
check "the Candy peer got no unicast GENERAL a v6 client would misread" test "$(field generals_unicast)" = 0
check "the server kept the Candy peer's session" test "$(field closed)" = None
check "a shows the Candy peer unprotected (envelope)" \
    test "$(rl_peer_eval a "$VC" 'p["sealing"]')" = envelope
check "and b still protected (session)" sealed a "${vb:-none}"
check "a refused nothing from the Candy peer" \
    test "$(rl_status_get a 'd["relay_refused"] + d["unsealed_refused"]')" = 0
rl_finish test_candy_compat
