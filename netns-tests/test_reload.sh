#!/usr/bin/env bash
# SIGHUP reloads without dropping tunnels. Two sites (a, c) with subnet
# routes, and a second LAN behind gateway c that no route covers yet. A
# ping from LAN a to LAN c runs throughout (600 echoes, 50 ms apart), and
# ping's own summary must show every one answered.
#  1. The server's file gains a [[route]] for the second LAN; SIGHUP to the
#     server: it logs the route applied and sent to both members, gw-a
#     installs it on its live session (no reconnect), and LAN a reaches
#     the second LAN.
#  2. gw-a's file moves /metrics (9586 -> 9600), sets log = "debug" and
#     changes mtu; SIGHUP to gw-a: the old port stops answering, the new
#     one answers, mtu is named as needing a restart and rl0 keeps its MTU.
#  3. A broken file, SIGHUP to gw-a and to the server: both log the
#     rejection and keep running with what they had.
# Along the way: gw-a's dataplane threads block SIGHUP (the control thread
# takes it), and `ringlink status --server` lists both gateways.
set -uo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$here/lib.sh"
rl_init "$here/.."
RL_SITES="a c"
COUNT=${RL_RELOAD_PINGS:-600}
LAN2=192.168.23.0/24
HOST2=192.168.23.2
echo "test_reload: SIGHUP to server and client while LAN a pings LAN c ($COUNT echoes)"

check "server listens with [[route]]s for LAN a and LAN c" rl_sites_server
va=$(rl_site_vip a); vc=$(rl_site_vip c)
ha=$(rl_site_host a); hc=$(rl_site_host c)

# server_conf [more toml lines...] : the server's file, the sites' routes first.
server_conf() {
    local s lines=()
    for s in a c; do
        lines+=("[[route]]" "dst = \"$(rl_site_lan "$s")\"" "via = \"$(rl_site_vip "$s")\"")
    done
    rl_server_conf server "stun = \"$RL_SERVER_IP:3478\"" "${lines[@]}" "$@" >/dev/null
}
# gw_a_conf [more toml lines...] : gw-a's file, as rl_site writes it.
gw_a_conf() {
    rl_client_conf gw-a "address = \"$va/24\"" "stun = \"stun://$RL_SERVER_IP\"" \
        "test_time_divisor = 5" "discovery = 10" "$@" >/dev/null
}

rl_site a
rl_site c "test_time_divisor = 5" "discovery = 10"
gw_a_conf "metrics = \"127.0.0.1:9586\""
# The second LAN behind gateway c.
rl_link gw-c lan1 192.168.23.1/24 lan-c2 eth0 "$HOST2/24"
ip -n "$(rl_ns lan-c2)" route add default via 192.168.23.1
rl_start_client gw-a gw-a
rl_start_client gw-c gw-c
check "gw-a connected as $va" rl_wait_until 20 rl_ready gw-a
check "gw-c connected as $vc" rl_wait_until 20 rl_ready gw-c
check "ping LAN a ($ha) -> LAN c ($hc) within 20 s" rl_wait_until 20 rl_ping_once lan-a "$hc"
check_not "before the reload LAN a cannot reach the second LAN ($HOST2)" rl_ping_once lan-a "$HOST2"
reconnects_a=$(rl_reconnects gw-a)

# Every dataplane thread (rl-dpN) of gw-a blocks SIGHUP; the main thread
# does not.
sighup_blocked() {
    local m
    m=$(sed -n 's/^SigBlk:[[:space:]]*//p' "$1" 2>/dev/null)
    [ -n "$m" ] && [ $(( 0x$m & 1 )) = 1 ]
}
workers_block_sighup() {
    local pid t n=0
    pid=$(rl_pid gw-a)
    for t in /proc/"$pid"/task/*; do
        case $(cat "$t/comm" 2>/dev/null) in
            rl-dp*) sighup_blocked "$t/status" || return 1; n=$((n + 1)) ;;
        esac
    done
    [ "$n" -gt 0 ] && ! sighup_blocked "/proc/$pid/task/$pid/status"
}
check "gw-a's dataplane threads block SIGHUP, its main thread takes it" workers_block_sighup

# scrape <node> <port> : /metrics there answers with ringlink_link_up 1.
scrape() {
    rl_exec "$1" timeout 5 python3 -c '
import sys, urllib.request
t = urllib.request.urlopen("http://127.0.0.1:%s/metrics" % sys.argv[1], timeout=3).read().decode()
sys.exit(0 if "ringlink_link_up 1" in t.splitlines() else 1)' "$2" 2>/dev/null
}
check "gw-a's /metrics answers on 9586" scrape gw-a 9586

# A STUN datagram from a stranger to gw-a's data port: counted in
# node.stun_ignored, and logged at debug. It tells the log level apart.
udp_port=$(sed -En 's/.*peer-to-peer on udp_port=([0-9]+).*/\1/p' "$(rl_log_file gw-a)" | head -1)
stray_stun() {
    local before
    before=$(rl_status_get gw-a 'd["node"]["stun_ignored"]')
    rl_exec gw-a python3 -c '
import os, socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.sendto(b"\x01\x01\x00\x00\x21\x12\xa4\x42" + os.urandom(12), ("127.0.0.1", int(sys.argv[1])))' "${udp_port:-9}"
    stun_counted() { rl_ge "$(rl_status_get gw-a 'd["node"]["stun_ignored"]')" $(( ${before:-0} + 1 )); }
    rl_wait_until 5 stun_counted
}
stray_line='DEBUG.*STUN datagram from a host that is not our STUN server'
check "a stray STUN datagram to gw-a's port ${udp_port:-?} is counted" stray_stun
check_not "at log level info it is not logged" rl_log_has gw-a "$stray_line"

rl_spawn longping lan-a ping -n -i 0.05 -W 2 -c "$COUNT" "$hc"
check "the long ping is answered" rl_wait_until 10 rl_log_has longping "icmp_seq=5 "

# 1. A route for the second LAN, on the server.
server_conf "[[route]]" "dst = \"$LAN2\"" "via = \"$vc\""
rl_signal server HUP
check "server: reload applied the route and sent it to both members" \
    rl_wait_until 10 rl_log_has server "reload: applied routes \+$LAN2 via $vc for $RL_POOL \(sent to 2 members\)"
kroute() { ip -n "$(rl_ns "$1")" -4 route show "$2" 2>/dev/null | grep -q "via $3 dev rl0"; }
check "gw-a: kernel route $LAN2 via $vc dev rl0" rl_wait_until 10 kroute gw-a "$LAN2" "$vc"
check "gw-a's status lists $LAN2 via $vc" rl_wait_until 5 rl_route_via gw-a "$LAN2" "$vc"
check "ping LAN a -> second LAN ($HOST2) within 15 s" rl_wait_until 15 rl_ping_once lan-a "$HOST2"
check "ping LAN a -> second LAN (5 of 5)" rl_ping lan-a "$HOST2" 5
check "ping second LAN -> LAN a (5 of 5)" rl_ping lan-c2 "$ha" 5
check "gw-a did not reconnect (reconnects ${reconnects_a:-?} -> $(rl_reconnects gw-a))" \
    test "$(rl_reconnects gw-a)" = "${reconnects_a:-x}"
check "the server saw no new login (2 joins)" test "$(rl_log_count server 'client joined')" = 2

# 2. /metrics elsewhere, a log level, and a key that needs a restart, on gw-a.
gw_a_conf "metrics = \"127.0.0.1:9600\"" "log = \"debug\"" "mtu = 1300"
rl_signal gw-a HUP
check "gw-a: reload applied log and metrics" \
    rl_wait_until 10 rl_log_has gw-a 'reload: applied log="debug", metrics=127\.0\.0\.1:9600$'
check "gw-a: mtu named as needing a restart" \
    rl_log_has gw-a 'reload: changed but needs a restart to take effect: mtu$'
check "gw-a's /metrics answers on 9600" rl_wait_until 5 scrape gw-a 9600
check_not "and no longer on 9586" scrape gw-a 9586
check "rl0 in gw-a keeps MTU 1400" eval 'ip -n "$(rl_ns gw-a)" link show rl0 | grep -q "mtu 1400 "'
check "another stray STUN datagram is counted" stray_stun
check "at log level debug it is logged" rl_log_has gw-a "$stray_line"

# 2b. gw-c's key, remembered on first use, pinned in gw-a's `peers`: applied
# live, the pin becomes a configured one, the session goes on.
pub_c=$(rl_status_get gw-c 'd["public_key"]')
check "gw-a remembers gw-c's key from first use" \
    test "$(rl_peer_eval gw-a "$vc" 'p["key"]["source"]')" = tofu
gw_a_conf "metrics = \"127.0.0.1:9600\"" "log = \"debug\"" "mtu = 1300" \
    "peers = [{ vip = \"$vc\", key = \"$pub_c\" }]"
rl_signal gw-a HUP
check "gw-a: reload applied peers without a restart" \
    rl_wait_until 10 rl_log_has gw-a 'reload: applied peers \(1 pinned\) \(0 changed\)$'
pinned() { [ "$(rl_peer_eval gw-a "$vc" 'p["key"]["source"]')" = pinned ]; }
check "gw-a's status shows gw-c's key as pinned by configuration" rl_wait_until 5 pinned
check "gw-a still seals with gw-c (session)" \
    test "$(rl_peer_eval gw-a "$vc" 'p["sealing"]')" = session

# 3. Broken files are refused; both keep running with what they had.
printf 'server = "ws://%s:%s"\npassword =\n' "$RL_SERVER_IP" "$RL_SERVER_PORT" >"$RL_TMP/gw-a.toml"
rl_signal gw-a HUP
check "gw-a: the broken file is rejected" \
    rl_wait_until 10 rl_log_has gw-a 'reload rejected, keeping the running configuration'
check "gw-a keeps running" rl_alive gw-a
check "gw-a's /metrics stays on 9600" scrape gw-a 9600
printf 'listen = "%s:%s"\npool = "%s"\n' "$RL_SERVER_IP" "$RL_SERVER_PORT" "$RL_POOL" >"$RL_TMP/server.toml"
rl_signal server HUP
check "server: the file without a password is rejected" \
    rl_wait_until 10 rl_log_has server 'reload rejected, keeping the running configuration.*password'
check "the server keeps running" rl_alive server
check "the long ping was still running through every reload" rl_alive longping

# The server's side of status.
members=$(rl_server_status_get server '" ".join(m["vip"] + "@" + m["remote"] for m in d["members"])')
echo "  status --server members: ${members:-none}"
check "status --server lists gw-a ($va) from $(rl_site_wan a)" \
    test "$(rl_member_get server "$va" remote | cut -d: -f1)" = "$(rl_site_wan a)"
check "status --server lists gw-c ($vc) from $(rl_site_wan c)" \
    test "$(rl_member_get server "$vc" remote | cut -d: -f1)" = "$(rl_site_wan c)"
check "and no one else" test "$(rl_server_status_get server 'len(d["members"])')" = 2

check "the long ping ends" rl_wait_until $((COUNT / 20 + 30)) rl_exited longping
summary=$(grep -E 'packets transmitted' "$(rl_log_file longping)")
echo "  ping: ${summary:-no summary}"
sent=$(sed -En 's/^([0-9]+) packets transmitted.*/\1/p' <<<"$summary")
got=$(sed -En 's/.* ([0-9]+) received.*/\1/p' <<<"$summary")
check "ping sent all $COUNT echoes" test "${sent:-0}" = "$COUNT"
check "and every one was answered (${got:-?} received, 0 lost)" test "${got:-x}" = "$COUNT"
rl_finish test_reload
