#!/usr/bin/env bash
# Endpoint proof (issue 13): a third party on the internet captures the
# datagrams a sends b over their direct path (heartbeats, challenges,
# challenge answers and data alike; they are sealed, so it cannot tell them
# apart) and replays every one of them to b from its own address, 100 per
# second for 8 s. b sits behind a router with a port forward, so the
# replays really reach it (checked on b's router). b's path to a must not
# move, b's pings to a must keep answering, and b must count the replays it
# refused. Then a's router "reboots" onto a new port (its conntrack
# flushed, its masquerade moved to another port range): b must follow the
# genuine move within 2 s.
set -uo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$here/lib.sh"
rl_init "$here/.."
PORT=41000
EVE="$RL_P2P_NET.66"
echo "test_p2p_replay: replayed datagrams from a third address do not move a direct path; a genuine move is followed"

rl_world_p2p plain plain "port = $PORT" || rl_finish
# b's gateway forwards its ringlink port, as a site with a public service would.
rl_exec rb nft -f - <<EOF2 || rl_die "port forward on rb"
table ip rl_fwd {
    chain pre {
        type nat hook prerouting priority dstnat; policy accept;
        iifname "eth0" udp dport $PORT dnat to 192.168.2.2:$PORT
    }
}
EOF2
rl_attach eve "$EVE/24"
rl_start_client a a
rl_start_client b b
check "client a connected" rl_wait_until 20 rl_ready a
check "client b connected" rl_wait_until 20 rl_ready b
va=$(rl_vip a); vb=$(rl_vip b)
check "a sees b CONNECTED/direct" rl_wait_until 15 rl_peer_direct a "${vb:-none}"
check "b sees a CONNECTED/direct" rl_wait_until 15 rl_peer_direct b "${va:-none}"
ep_a=$(rl_peer_eval b "${va:-none}" 'p["endpoint"]')
echo "  b's path to a: ${ep_a:-?}"
check "b's path to a is a's router ($RL_P2P_NET.21)" test "${ep_a%:*}" = "$RL_P2P_NET.21"
check "b and a speak ringlink to each other" \
    test "$(rl_peer_eval b "${va:-none}" 'p["speaks"]')" = ringlink
# Captured after the handshake: every datagram is a session datagram.
sealed() { [ "$(rl_peer_eval "$1" "$2" 'p["sealing"]')" = session ]; }
check "b seals with a (status: session)" rl_wait_until 20 sealed b "${va:-none}"
check "a seals with b (status: session)" rl_wait_until 20 sealed a "${vb:-none}"

# The capture: what a's router sends to b's, as it arrives at b's router.
cap="$RL_TMP/a_to_b.pcap"
rl_spawn capture rb timeout 15 tcpdump -i eth0 -U -n -c 80 -w "$cap" \
    "udp and src host $RL_P2P_NET.21 and dst port $PORT"
rl_wait_until 5 rl_log_has capture "listening on" || true
rl_ping a "${vb:-none}" 20
rl_wait_until 15 bash -c "! kill -0 $(rl_pid capture) 2>/dev/null" || rl_stop capture
captured=$(tcpdump -r "$cap" -n 2>/dev/null | wc -l)
echo "  captured $captured datagrams a -> b"
check "the capture holds the pair's traffic (>= 20 datagrams)" rl_ge "$captured" 20

rl_count rb eve forward ip saddr "$EVE" udp dport "$PORT"
ign0=$(rl_status_get b 'd["node"]["ignored_events"]')
rep0=$(rl_status_get b 'd["replayed"]')
rl_spawn replay eve python3 "$here/replay_pcap.py" "$cap" "$RL_P2P_NET.22" "$PORT" 8 100
rl_spawn pinger b ping -n -c 80 -i 0.1 -W 1 "${va:-127.0.0.1}"
moved=""
for _ in $(seq 1 100); do
    rl_alive replay || break
    ep=$(rl_peer_eval b "${va:-none}" 'p["endpoint"]')
    [ "$ep" != "$ep_a" ] && moved="$moved ${ep:-none}"
    sleep 0.1
done
rl_wait_until 15 bash -c "! kill -0 $(rl_pid pinger) 2>/dev/null" || rl_stop pinger
rl_wait_until 5 bash -c "! kill -0 $(rl_pid replay) 2>/dev/null" || rl_stop replay
replayed=$(rl_counted rb eve packets)
ign1=$(rl_status_get b 'd["node"]["ignored_events"]')
rep1=$(rl_status_get b 'd["replayed"]')
received=$(sed -n 's/.* \([0-9]*\) received.*/\1/p' "$(rl_log_file pinger)")
echo "  replayed $(cat "$(rl_log_file replay)" | tail -1) (sent, distinct); rb forwarded $replayed of them to b;" \
     "b refused $(( ${ign1:-0} - ${ign0:-0} )) path events; b's pings to a: ${received:-0}/80"
check "the replays reached b (rb forwarded >= 400 from $EVE)" rl_ge "${replayed:-0}" 400
check "b's path to a never moved or dropped during the replay${moved:+ (saw$moved)}" test -z "$moved"
check "b's path to a is still a's router" test "$(rl_peer_eval b "${va:-none}" 'p["endpoint"]')" = "$ep_a"
echo "  b's replay window refused $(( ${rep1:-0} - ${rep0:-0} )) datagrams"
check "b's replay window refused the replays (>= 400, none delivered or acted on)" \
    rl_ge "$(( ${rep1:-0} - ${rep0:-0} ))" 400
check "b's pings to a kept answering (>= 76 of 80)" rl_ge "${received:-0}" 76

# a's router restarts onto another port range: every mapping is new.
rl_exec ra nft flush chain ip rl_nat post
rl_exec ra nft add rule ip rl_nat post oifname eth0 ip saddr 192.168.1.0/24 meta l4proto udp masquerade to :30000-30999
rl_exec ra nft add rule ip rl_nat post oifname eth0 ip saddr 192.168.1.0/24 masquerade
rl_exec ra conntrack -D -p udp >/dev/null 2>&1
t0=$(rl_now_ms)
followed() {
    local ep
    ep=$(rl_peer_eval b "${va:-none}" 'p["endpoint"]')
    case $ep in "$RL_P2P_NET.21:30"???) return 0 ;; esac
    return 1
}
check "b follows a's new mapping" rl_wait_until 10 followed
# When b moved, by its own log line (status polling adds its own delay).
t1=$(rl_log_time_ms b "direct path moved" last) || t1=0
echo "  b's path to a now $(rl_peer_eval b "${va:-none}" 'p["endpoint"]'), moved $((t1 - t0)) ms after the router restart"
check "within 2 s of the restart (b's log)" test "$t1" -gt "$t0" -a $((t1 - t0)) -le 2000
check "ping b -> a over the new path (5 of 5)" rl_ping b "${va:-none}" 5
check "b still has a direct" rl_peer_direct b "${va:-none}"
rl_finish test_p2p_replay
