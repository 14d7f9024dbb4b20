#!/usr/bin/env bash
# Relays see only ciphertext (issue 14). Two ringlink clients that never try
# a direct path (no STUN: relay only) learn each other's node keys when
# they join, make a session through the server, and from then on every
# packet between them crosses the relay sealed with it. A capture on the
# server's own interface (plain ws://, so the capture sees the WebSocket
# frames in clear) is searched for a payload the pings carry: it must not
# be there, while the capture does hold the relayed frames. Both ends count
# what arrived sealed, and `ringlink status` says the peer is protected.
set -uo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$here/lib.sh"
rl_init "$here/.."
echo "test_sealed_relay: relayed traffic between ringlink nodes is sealed end to end"

# 16 bytes that ping repeats through its payload.
PATTERN=5a17ca5ef00dfacec0ffee0ddba11ad5

rl_world_relay 2 || rl_finish
check "client a connected" rl_wait_until 20 rl_ready a
check "client b connected" rl_wait_until 20 rl_ready b
va=$(rl_vip a); vb=$(rl_vip b)
echo "  a = ${va:-?}, b = ${vb:-?}"
check "first ping a -> b within 15 s" rl_wait_until 15 rl_ping_once a "${vb:-none}"
rl_ping b "${va:-none}" 1 >/dev/null
sealed() { [ "$(rl_peer_eval "$1" "$2" 'p["sealing"]')" = session ]; }
check "a seals with b (status: session)" rl_wait_until 20 sealed a "${vb:-none}"
check "b seals with a (status: session)" rl_wait_until 20 sealed b "${va:-none}"
check "the human status shows it" \
    sh -c "timeout 10 '$RINGLINK' status --socket '$(rl_sock a)' | grep -E '^${vb//./\\.} ' | grep -q ' session '"

cap="$RL_TMP/server.pcap"
rl_spawn capture srv tcpdump -i eth0 -U -n -s 0 -w "$cap" "tcp port $RL_SERVER_PORT"
rl_wait_until 5 rl_log_has capture "listening on" || true
rx0=$(rl_status_get b 'd["relay_rx_sealed"]')
check "20 pings a -> b with the pattern in their payload answered" \
    rl_exec a timeout 20 ping -n -q -c 20 -i 0.05 -W 2 -s 200 -p "$PATTERN" "${vb:-none}"
# Status counters are refreshed once a second.
took() { rl_ge "$(rl_status_get "$1" "d[\"relay_rx_sealed\"]")" "$2"; }
rl_wait_until 5 took b $(( ${rx0:-0} + 20 ))
rx1=$(rl_status_get b 'd["relay_rx_sealed"]')
rl_stop capture
frames=$(tcpdump -r "$cap" -n 2>/dev/null | wc -l)
echo "  capture: $frames TCP segments at the server; b received $(( ${rx1:-0} - ${rx0:-0} )) sealed relayed packets"
check "the capture holds the relayed traffic (>= 40 segments)" rl_ge "$frames" 40
found=$(python3 - "$cap" "$PATTERN" <<'EOF'
import sys
data = open(sys.argv[1], "rb").read()
pattern = bytes.fromhex(sys.argv[2])
print(data.count(pattern))
EOF
)
check "the pattern appears nowhere in the server's capture (found ${found:-?} times)" test "${found:-x}" = 0
check "b took >= 20 sealed packets from the relay" rl_ge "$(( ${rx1:-0} - ${rx0:-0} ))" 20
check "a took sealed replies too" rl_wait_until 5 took a 20
refusals=$(rl_status_get b 'd["relay_refused"] + d["relay_tampered"]')
check "nothing was refused or tampered with (${refusals:-?})" test "${refusals:-x}" = 0
check "a and b sealed their relayed packets (dataplane session_tx)" \
    rl_ge "$(rl_status_get a 'd["session_tx"]')" 20
rl_finish test_sealed_relay
