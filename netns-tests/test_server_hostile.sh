#!/usr/bin/env bash
# The server under hostile traffic (issue 14, server part). Two members a
# and b ping each other over the relay (no STUN, so no direct path) the
# whole time, while, one after the other:
#   1. a non-member (namespace x) replays a's login for 8 s, byte for byte:
#      the VMAC, EXPTTUN and AUTH frames captured with tcpdump on a's ws://
#      connection (not rebuilt from the password);
#   2. a third member (x again, it knows the password) floods FORWARD and
#      DISCOVERY broadcasts for 8 s;
#   3. x holds 10,000 TCP connections that never log in, from 200 source
#      addresses, and a new member d starts meanwhile and must join in 2 s.
# Each member's ping loss stays under 1 %; the server counts what it refused.
set -uo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$here/lib.sh"
rl_init "$here/.."
command -v tcpdump >/dev/null 2>&1 || rl_die "missing tool: tcpdump (apt-get install tcpdump)"
command -v curl >/dev/null 2>&1 || rl_die "missing tool: curl"
PY="$here/server_hostile.py"
X=10.91.0.30
echo "test_server_hostile: replayed login, broadcast flood and 10,000 idle connects; members keep pinging"

rl_switch
rl_attach srv "$RL_SERVER_IP/24"
rl_server_conf server "metrics = \"$RL_SERVER_IP:9587\"" 'stun = ""' >/dev/null
rl_start_server server srv
rl_wait_until 10 rl_server_listening srv || { rl_fail "server listens"; rl_finish; }
rl_attach a 10.91.0.10/24
rl_attach b 10.91.0.11/24
rl_attach x "$X/24"

# a's login, captured off its ws:// connection from the start.
# --immediate-mode: each packet is written when it arrives, not when a
# kernel buffer block fills or times out.
rl_spawn cap a tcpdump --immediate-mode -i eth0 -U -w "$RL_TMP/a.pcap" tcp port "$RL_SERVER_PORT"
rl_wait_until 10 rl_log_has cap "listening on" || rl_fail "tcpdump started"
rl_client_conf a >/dev/null; rl_start_client a a
rl_client_conf b >/dev/null; rl_start_client b b
check "client a connected" rl_wait_until 20 rl_ready a
check "client b connected" rl_wait_until 20 rl_ready b
va=$(rl_vip a); vb=$(rl_vip b)
echo "  a = ${va:-?}, b = ${vb:-?}"
check "first ping a -> b over the relay" rl_wait_until 15 rl_ping_once a "${vb:-none}"
login_captured() { python3 "$PY" extract "$RL_TMP/a.pcap" 10.91.0.10 "$RL_TMP/a.login"; }
rl_wait_until 10 login_captured
rl_stop cap
frames=$(login_captured 2>&1)
echo "  captured from a's connection: $frames"
check "a's AUTH frame was captured" grep -q AUTH <<<"$frames"

metric() {
    rl_exec srv curl -s --max-time 5 "http://$RL_SERVER_IP:9587/metrics" \
        | awk -v n="ringlink_server_$1" '$1 == n { print $2 }'
}
reconnects_a0=$(rl_reconnects a); reconnects_b0=$(rl_reconnects b)

# Pings for the whole attack, 10 a second each way.
rl_spawn ping_ab a ping -n -O -i 0.1 -w 60 "${vb:-none}"
rl_spawn ping_ba b ping -n -O -i 0.1 -w 60 "${va:-none}"

# 1. The captured login, replayed.
replay=$(timeout --foreground 20 ip netns exec "$(rl_ns x)" python3 "$PY" replay "$RL_SERVER_IP" "$RL_SERVER_PORT" "$RL_TMP/a.login" 8)
echo "  replay: $replay"
attempts=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["attempts"])' "${replay:-{\}}" 2>/dev/null)
refused=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["reasons"].get("replayed AUTH for '"${va:-x}"'", 0))' "${replay:-{\}}" 2>/dev/null)
admitted=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["admitted"])' "${replay:-{\}}" 2>/dev/null)
check "replays were attempted (${attempts:-0})" rl_ge "${attempts:-0}" 3
check "every replay refused as a replayed AUTH (${refused:-0} of ${attempts:-0})" test "${refused:-0}" = "${attempts:-x}"
check "no replay kept a session open" test "${admitted:-x}" = 0
check "server counted them (refused_replayed_auth >= ${attempts:-1})" rl_ge "$(metric refused_replayed_auth_total)" "${attempts:-1}"
check "no session was evicted (evicted_reconnect = 0)" test "$(metric evicted_reconnect_total)" = 0
check "the server log names the refused source" rl_log_has server "refused from=$X:[0-9]+ reason=replayed AUTH"

# 2. A member floods broadcasts. Its address: one a and b do not hold.
fvip=10.77.0.200
[ "$fvip" = "$va" ] || [ "$fvip" = "$vb" ] && fvip=10.77.0.201
[ "$fvip" = "$va" ] || [ "$fvip" = "$vb" ] && fvip=10.77.0.202
flood=$(timeout --foreground 20 ip netns exec "$(rl_ns x)" python3 "$PY" flood "$RL_SERVER_IP" "$RL_SERVER_PORT" "$RL_PASSWORD" "$fvip" 10.77.0.255 8)
echo "  flood: $flood"
limited=$(metric rate_limited_broadcast_total)
echo "  broadcasts dropped by the rate limit: ${limited:-?}"
check "the flood was rate limited (rate_limited_broadcast > 1000)" rl_ge "${limited:-0}" 1000
check "logged once per interval, not per frame (<= 3 lines)" test "$(rl_log_count server "vip=$fvip .*over its broadcast limit")" -le 3
check "the limit was logged" rl_log_has server "vip=$fvip .*over its broadcast limit"

# 3. 10,000 connections that never log in, from 200 addresses.
{
    for ((i = 40; i < 240; i++)); do printf 'addr add 10.91.0.%d/24 dev eth0\n' "$i"; done
} | ip -n "$(rl_ns x)" -batch - || rl_fail "source addresses on x"
rl_spawn idle x python3 "$PY" idle "$RL_SERVER_IP" "$RL_SERVER_PORT" 10000 25 10.91.0 40 200
rl_wait_until 20 rl_log_has idle '"opened"' || rl_fail "idle connections opened"
echo "  idle: $(head -n1 "$(rl_log_file idle)")"
check "the idle flood filled the cap (evicted_unauthenticated > 0)" rl_ge "$(metric evicted_unauthenticated_total)" 1
rl_attach d 10.91.0.13/24
rl_client_conf d >/dev/null
t0=$(rl_now_ms)
rl_start_client d d
joined_ms=""
for ((i = 0; i < 100; i++)); do
    if rl_ready d; then joined_ms=$(( $(rl_now_ms) - t0 )); break; fi
    sleep 0.05
done
echo "  d joined in ${joined_ms:-(never)} ms with the idle connections held"
check "new member d joins within 2 s" test -n "$joined_ms" -a "${joined_ms:-99999}" -le 2000
vd=$(rl_vip d)
check "ping a -> d" rl_wait_until 10 rl_ping_once a "${vd:-none}"
echo "  evicted_unauthenticated=$(metric evicted_unauthenticated_total) refused_per_source=$(metric refused_per_source_total)"
rl_wait_until 30 rl_exited idle
echo "  idle: $(tail -n1 "$(rl_log_file idle)")"

rl_stop ping_ab; rl_stop ping_ba
read -r sent_ab lost_ab <<<"$(rl_ping_losses "$(rl_log_file ping_ab)")"
read -r sent_ba lost_ba <<<"$(rl_ping_losses "$(rl_log_file ping_ba)")"
echo "  ping a -> b: ${lost_ab:-?} of ${sent_ab:-?} lost; b -> a: ${lost_ba:-?} of ${sent_ba:-?} lost"
under_1pct() { rl_ge "${1:-0}" 100 && [ $(( ${2:-1} * 100 )) -lt "${1:-0}" ]; }
check "a -> b loss under 1 %" under_1pct "$sent_ab" "$lost_ab"
check "b -> a loss under 1 %" under_1pct "$sent_ba" "$lost_ba"
check "a never reconnected" test "$(rl_reconnects a)" = "$reconnects_a0"
check "b never reconnected" test "$(rl_reconnects b)" = "$reconnects_b0"
check "a and b still connected" rl_ready a
rl_finish test_server_hostile
