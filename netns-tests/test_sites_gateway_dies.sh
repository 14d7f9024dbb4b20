#!/usr/bin/env bash
# Three sites, all gateways directly connected. Gateway c's client is
# killed (SIGKILL, by PID) while LAN a pings LAN b: a and b notice, withdraw
# every latency route to or through c, and LAN a <-> LAN b keeps working
# (the ping across the kill, a TCP transfer afterwards). c's subnet route
# stays listed (the server pushes subnet routes once per login, as Candy
# does) but is no longer direct. Restarted, c is reachable again.
set -uo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$here/lib.sh"
rl_init "$here/.."
MB=${RL_TRANSFER_MB:-5}
DIV=${RL_TIME_DIVISOR:-5}
echo "test_sites_gateway_dies: kill gateway c; its routes go, LAN a <-> LAN b carries on"

check "server listens with three [[route]]s" rl_sites_world "test_time_divisor = $DIV" "discovery = 10"
for x in a b c; do
    check "gateway $x connected as $(rl_site_vip $x)" rl_wait_until 20 rl_ready "gw-$x"
done
vb=$(rl_site_vip b); vc=$(rl_site_vip c)
ha=$(rl_site_host a); hb=$(rl_site_host b); hc=$(rl_site_host c)
lan_c=$(rl_site_lan c)
all_direct() {
    rl_peer_direct gw-a "$vb" && rl_peer_direct gw-a "$vc" && rl_peer_direct gw-b "$vc" &&
        rl_has_route gw-a "$vc" && rl_has_route gw-b "$vc" && rl_has_route gw-a "$vb"
}
check "a, b, c all direct with latency routes within 25 s" rl_wait_until 25 all_direct
check "ping LAN a -> LAN b" rl_wait_until 10 rl_ping_once lan-a "$hb"
check "ping LAN a -> LAN c" rl_wait_until 10 rl_ping_once lan-a "$hc"
echo "  gw-a routes: $(rl_status_get gw-a '", ".join(r["dst"] + " via " + r["next_hop"] + " (" + r["path"] + ")" for r in d["routes"])')"

# A ping LAN a -> LAN b every 0.1 s across the kill.
ping_log="$RL_TMP/ping-across.txt"
ip netns exec "$(rl_ns lan-a)" timeout --foreground 20 ping -n -i 0.1 -c 120 -W 1 "$hb" >"$ping_log" 2>&1 &
ping_pid=$!
RL_PIDS+=("$ping_pid")
sleep 2
pid_c=$(rl_pid gw-c)
echo "  killing gateway c's client (pid $pid_c, SIGKILL)"
# (bash would report the killed job on stderr: not news here)
{ kill -KILL "$pid_c"; rl_stop gw-c; } 2>/dev/null
check "gateway c's client is gone" rl_wait_until 5 eval '! rl_alive gw-c'
t0=$(rl_now_ms)
gone() { rl_peer_not_direct "$1" "$vc" && rl_no_route "$1" "$vc"; }
check "a: c no longer direct, route to $vc withdrawn within 15 s" rl_wait_until 15 gone gw-a
check "b: c no longer direct, route to $vc withdrawn within 15 s" rl_wait_until 15 gone gw-b
echo "  routes to c withdrawn $(rl_secs_since "$t0") s after the kill"
no_route_via_c() { ! rl_status_get "$1" '[r for r in d["routes"] if r["metric_ms"] is not None and r["next_hop"] == "'"$vc"'"]' | grep -q dst; }
check "a: no latency route points through $vc" no_route_via_c gw-a
check "b: no latency route points through $vc" no_route_via_c gw-b
echo "  gw-a's subnet route $lan_c: next hop $(rl_route_get gw-a "$lan_c" next_hop), path $(rl_route_get gw-a "$lan_c" path)"
check "a: subnet route $lan_c no longer direct" test "$(rl_route_get gw-a "$lan_c" path)" != direct
check "a <-> b still direct, route to $vb kept" eval 'rl_peer_direct gw-a "$vb" && rl_route_via gw-a "$vb" "$vb"'

wait "$ping_pid" 2>/dev/null
recv=$(sed -n 's/.* \([0-9]*\) received.*/\1/p' "$ping_log")
sent=$(sed -n 's/^\([0-9]*\) packets transmitted.*/\1/p' "$ping_log")
missing=$(python3 -c '
import re, sys
got = {int(m) for m in re.findall(r"icmp_seq=(\d+)", open(sys.argv[1]).read())}
print(" ".join(str(i) for i in range(1, 121) if i not in got) or "none")' "$ping_log")
echo "  ping LAN a -> LAN b across the kill: ${recv:-0} of ${sent:-?} sent (120 asked) replied; missing icmp_seq: $missing"
check "ping LAN a -> LAN b across the kill: >= 114 of 120 replies" rl_ge "${recv:-0}" 114
check "ping LAN a -> LAN c fails now (its gateway is dead)" eval '! rl_ping lan-a "$hc" 2'
check "ping LAN b -> LAN a (5 of 5)" rl_ping lan-b "$ha" 5

head -c $((MB << 20)) /dev/urandom >"$RL_TMP/payload"
want=$(sha256sum "$RL_TMP/payload" | cut -d' ' -f1)
out="$RL_TMP/sink.out"
rl_spawn sink lan-b python3 -c "$RL_PY_SINK" "$hb" 5001 "$out"
check "sink listening on $hb:5001" rl_wait_until 10 rl_file_exists "$out.ready"
sent=$(timeout --foreground 60 ip netns exec "$(rl_ns lan-a)" python3 -c "$RL_PY_SOURCE" "$hb" 5001 "$RL_TMP/payload" 2>"$RL_TMP/source.log")
rc=$?
rl_wait_until 20 rl_file_exists "$out" || true
read -r got_n got_sha _ <"$out" 2>/dev/null || { got_n=0; got_sha=none; }
read -r _ sent_sha _ <<<"${sent:-0 none 0}"
check "$MB MB LAN a -> LAN b after the kill, sha256 matches (sender exit $rc)" \
    test "$rc" -eq 0 -a "$got_n" = "$((MB << 20))" -a "$got_sha" = "$want" -a "$sent_sha" = "$want"

rl_start_client gw-c gw-c
check "gateway c restarted and connected" rl_wait_until 20 rl_ready gw-c
check "ping LAN a -> LAN c works again within 20 s" rl_wait_until 20 rl_ping_once lan-a "$hc"
check "a <-> c direct again within 20 s" rl_wait_until 20 rl_peer_direct gw-a "$vc"
rl_finish test_sites_gateway_dies
