#!/usr/bin/env bash
# Three sites, all directly connected. Then the "internet" switch drops UDP
# between gateways a and c (WebSocket and STUN to the server untouched), so
# a<->b and b<->c stay direct but a<->c is lost. Traffic LAN a -> LAN c must
# then flow through gateway b's dataplane, not the server's relay: the server's
# interface barely moves while b's carries the transfer twice and b's
# status counts it towards c. Unblocked, a and c connect directly and the
# route returns to the direct path; b's interface then stays quiet.
#
# Gateway b relays at route_cost 50 (a and c: 5). The router keeps its
# current next hop unless an alternative is better by max(10 ms, 10 %)
# (route/config.rs Hysteresis); on veth links every RTT is ~0 ms, so with
# b at the default cost of 5 the detour (~5 ms) would never be displaced by
# the direct path once learned. 50 ms stands for a real detour's latency.
set -uo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$here/lib.sh"
rl_init "$here/.."
MB=${RL_TRANSFER_MB:-20}
DIV=${RL_TIME_DIVISOR:-5}
echo "test_sites_via_peer: a<->c blocked (UDP and TCP): LAN a -> LAN c via gateway b; unblocked: direct again"

rl_sites_server || { rl_fail "server listens"; rl_finish; }
common=("test_time_divisor = $DIV" "discovery = 10")
rl_site a "${common[@]}"
rl_site b "${common[@]}" "route_cost = 50"
rl_site c "${common[@]}"
wa=$(rl_site_wan a); wc=$(rl_site_wan c)
va=$(rl_site_vip a); vb=$(rl_site_vip b); vc=$(rl_site_vip c)
ha=$(rl_site_host a); hc=$(rl_site_host c)
for x in a b c; do rl_start_client "gw-$x" "gw-$x"; done
for x in a b c; do
    check "gateway $x connected as $(rl_site_vip $x)" rl_wait_until 20 rl_ready "gw-$x"
done
all_direct() {
    rl_peer_direct gw-a "$vb" && rl_peer_direct gw-b "$vc" && rl_peer_direct gw-a "$vc" &&
        rl_route_via gw-a "$vc" "$vc" && rl_route_via gw-c "$va" "$va"
}
check "a, b, c direct; a and c route to each other directly within 20 s" rl_wait_until 20 all_direct

# Block: a and c lose each other and fall back to the path through b.
rl_block_pair "$wa" "$wc"
t0=$(rl_now_ms)
echo "  the switch now drops UDP $wa <-> $wc (b relays at route cost 50)"
via_b() { rl_peer_not_direct gw-a "$vc" && rl_route_via gw-a "$vc" "$vb" && rl_route_via gw-c "$va" "$vb"; }
check "blocked: a and c route to each other via b within 20 s" rl_wait_until 20 via_b
echo "  converged to the path via b $(rl_secs_since "$t0") s after the block"
check "a <-> b and b <-> c still direct" eval 'rl_peer_direct gw-a "$vb" && rl_peer_direct gw-b "$vc"'
echo "  gw-a peers: $(rl_paths gw-a)"
check "ping LAN a -> LAN c" rl_wait_until 10 rl_ping_once lan-a "$hc"
check "ping LAN c -> LAN a" rl_ping lan-c "$ha" 3

head -c $((MB << 20)) /dev/urandom >"$RL_TMP/payload"
want=$(sha256sum "$RL_TMP/payload" | cut -d' ' -f1)
peer_bytes() { rl_peer_get "$1" "$2" "$3"; }

# transfer <label> <port> : LAN a -> LAN c, sha256 checked; sets xfer_s.
xfer_s=0
transfer() {
    local label=$1 port=$2 out="$RL_TMP/sink.$2" sent rc got_n got_sha sent_n sent_sha
    rl_spawn "sink$port" lan-c python3 -c "$RL_PY_SINK" "$hc" "$port" "$out"
    rl_wait_until 10 rl_file_exists "$out.ready" || { rl_fail "$label: sink listening"; return 1; }
    sent=$(timeout --foreground 60 ip netns exec "$(rl_ns lan-a)" python3 -c "$RL_PY_SOURCE" "$hc" "$port" "$RL_TMP/payload" 2>>"$RL_TMP/source.log")
    rc=$?
    rl_wait_until 20 rl_file_exists "$out" || true
    read -r got_n got_sha _ <"$out" 2>/dev/null || { got_n=0; got_sha=none; }
    read -r sent_n sent_sha xfer_s <<<"${sent:-0 none 0}"
    check "$label: $MB MB LAN a -> LAN c arrived, sha256 matches (sender exit $rc)" \
        test "$rc" -eq 0 -a "$got_n" = "$((MB << 20))" -a "$got_sha" = "$want" -a "$sent_sha" = "$want"
    python3 -c 'import sys; n,s=int(sys.argv[1]),float(sys.argv[2]); print("  %s: %.0f Mbit/s" % (sys.argv[3], n*8/s/1e6 if s>0 else 0))' "$sent_n" "$xfer_s" "$label"
}

# Counters are refreshed by the clients every 0.5 s: wait 1 s around reads.
sleep 1
srv0=$(rl_if_total srv eth0); b0=$(rl_if_total gw-b eth0)
btx_c0=$(peer_bytes gw-b "$vc" tx_bytes); btx_a0=$(peer_bytes gw-b "$va" tx_bytes)
atx_b0=$(peer_bytes gw-a "$vb" tx_bytes)
transfer "via b" 5001
sleep 1
srv1=$(rl_if_total srv eth0); b1=$(rl_if_total gw-b eth0)
btx_c1=$(peer_bytes gw-b "$vc" tx_bytes); btx_a1=$(peer_bytes gw-b "$va" tx_bytes)
atx_b1=$(peer_bytes gw-a "$vb" tx_bytes)
d_srv=$((srv1 - srv0)); d_b=$((b1 - b0))
echo "  bytes moved: server eth0 $d_srv, gw-b eth0 $d_b; gw-b status tx to c +$((btx_c1 - btx_c0)), tx to a +$((btx_a1 - btx_a0)); gw-a tx to b +$((atx_b1 - atx_b0))"
check "server's interface barely moved (< 1 MB)" test "$d_srv" -lt $((1 << 20))
check "gw-b's interface carried it in and out (>= 2 x $MB MB)" rl_ge "$d_b" $((2 * (MB << 20)))
check "gw-b status: tx to c grew by >= $MB MB (forwarded)" rl_ge $((btx_c1 - btx_c0)) $((MB << 20))
check "gw-b status: tx to a grew (ACKs forwarded back)" rl_ge $((btx_a1 - btx_a0)) 1
check "gw-a status: tx to b grew by >= $MB MB" rl_ge $((atx_b1 - atx_b0)) $((MB << 20))
check "a still routes $vc via $vb after the transfer" rl_route_via gw-a "$vc" "$vb"
dropped=$(rl_pair_dropped "$wa" "$wc")
check "the switch really dropped a <-> c UDP ($dropped packets)" rl_ge "$dropped" 1
via_s=$xfer_s

# Unblock: a and c find each other again and the route goes direct.
rl_unblock_pair "$wa" "$wc"
t0=$(rl_now_ms)
direct_again() { rl_peer_direct gw-a "$vc" && rl_route_via gw-a "$vc" "$vc" && rl_route_via gw-c "$va" "$va"; }
check "unblocked: a <-> c direct and routed direct within 45 s" rl_wait_until 45 direct_again
echo "  converged to direct $(rl_secs_since "$t0") s after the unblock"
echo "  gw-a routes: $(rl_status_get gw-a '", ".join(r["dst"] + " via " + r["next_hop"] + " (" + r["path"] + ")" for r in d["routes"])')"
sleep 1
srv0=$(rl_if_total srv eth0); b0=$(rl_if_total gw-b eth0); atx_c0=$(peer_bytes gw-a "$vc" tx_bytes)
transfer "direct" 5002
sleep 1
srv1=$(rl_if_total srv eth0); b1=$(rl_if_total gw-b eth0); atx_c1=$(peer_bytes gw-a "$vc" tx_bytes)
echo "  bytes moved: server eth0 $((srv1 - srv0)), gw-b eth0 $((b1 - b0)); gw-a status tx to c +$((atx_c1 - atx_c0))"
check "direct: server's interface barely moved (< 1 MB)" test $((srv1 - srv0)) -lt $((1 << 20))
check "direct: gw-b's interface barely moved (< 1 MB)" test $((b1 - b0)) -lt $((1 << 20))
check "direct: gw-a status tx to c grew by >= $MB MB" rl_ge $((atx_c1 - atx_c0)) $((MB << 20))
python3 -c 'import sys; v,d=float(sys.argv[1]),float(sys.argv[2]); print("  site-to-site %d MB: via b %.2f s, direct %.2f s" % (int(sys.argv[3]), v, d))' "$via_s" "$xfer_s" "$MB"
rl_finish test_sites_via_peer
