#!/usr/bin/env bash
# Three gateways whose WAN addresses are private (10.60.0.0/24: a private
# WAN, MPLS, a cloud VPC), no NAT between them, each with a LAN pushed by
# the server as a subnet route. Issue 13's target:
#   (a) every pair of gateways goes direct: both ends list each other as
#       direct, and LAN-to-LAN pings cross the switch as UDP between the two
#       WAN addresses while the TCP between each gateway and the server's
#       port (all relayed traffic) stays flat;
#   (b) with UDP between a and c dropped on the switch, LAN a -> LAN c
#       flows through gateway b: UDP a -> b and b -> c on the switch, b's
#       dataplane counts the packets it forwarded, the server stays flat.
# Every counter that decides is on the switch (nftables bridge family), not
# in ringlink; status is only asked which path each end believes in.
#
# Every gateway relays at route_cost 400: on veth every RTT is ~0 ms, but a
# loaded host shows RTT spikes of tens of ms, and with a small cost latency
# routing may (rightly) send a pair's traffic through the third gateway,
# which phase (a), about the direct paths, would count against them. A
# detour now wins only over a direct RTT above 400 ms, and the one route
# phase (b) needs stays under Candy's 1000 ms withdrawal line.
set -uo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$here/lib.sh"
rl_init "$here/.."
# Private WAN: the point of the test (lib.sh's site worlds use TEST-NET-2).
# PW_WAN=198.51.100 runs the same checks on a public-looking WAN, where the
# private-address rule does not bite: a control for the test itself.
RL_SITES_NET=${PW_WAN:-10.60.0}
DEADLINE=20
COUNT=10
SIZE=1200
echo "test_sites_private_wan: gateways on WAN $RL_SITES_NET.0/24 with subnet routes go direct; a->c blocked goes via b"

rl_sites_server || { rl_fail "server listens"; rl_finish; }
common=("test_time_divisor = 5" "discovery = 10" "route_cost = 400")
rl_site a "${common[@]}"
rl_site b "${common[@]}"
rl_site c "${common[@]}"
declare -A WAN=() VIP=() HOST=()
for x in a b c; do
    WAN[$x]=$(rl_site_wan "$x"); VIP[$x]=$(rl_site_vip "$x"); HOST[$x]=$(rl_site_host "$x")
done

# Switch counters, read by comment: large UDP (the pings, never a
# heartbeat) and all UDP (heartbeats too, for the report) per ordered pair
# of gateways, TCP to and from the server's WebSocket port per gateway.
rules=""
for x in a b c; do
    for y in a b c; do
        [ "$x" = "$y" ] && continue
        rules+="ip saddr ${WAN[$x]} ip daddr ${WAN[$y]} ip length > 1100 meta l4proto udp counter comment \"udp-$x-$y\"
        ip saddr ${WAN[$x]} ip daddr ${WAN[$y]} meta l4proto udp counter comment \"any-$x-$y\"
        "
    done
    rules+="ip saddr ${WAN[$x]} ip daddr $RL_SERVER_IP tcp dport $RL_SERVER_PORT counter comment \"relay-$x\"
        ip saddr $RL_SERVER_IP ip daddr ${WAN[$x]} tcp sport $RL_SERVER_PORT counter comment \"relay-$x\"
        "
done
rl_exec sw nft -f - <<EOF || rl_die "nft counters on sw"
table bridge pw_count {
    chain count {
        type filter hook forward priority filter - 10; policy accept;
        $rules
    }
}
EOF

# sw_count <comment> [packets|bytes] : the sum of the switch rules so named.
sw_count() {
    rl_exec sw nft -j list table bridge pw_count 2>/dev/null | python3 -c '
import json, sys
want, field = sys.argv[1], sys.argv[2]
n = 0
for it in json.load(sys.stdin)["nftables"]:
    r = it.get("rule")
    if r and r.get("comment") == want:
        n += sum(e["counter"][field] for e in r["expr"] if isinstance(e, dict) and "counter" in e)
print(n)' "$1" "${2:-packets}"
}

for x in a b c; do rl_start_client "gw-$x" "gw-$x"; done
for x in a b c; do
    check "gateway $x connected as ${VIP[$x]} from ${WAN[$x]}" rl_wait_until 20 rl_ready "gw-$x"
done
check "gw-a has the route to c's LAN $(rl_site_lan c)" rl_wait_until 10 rl_route_via gw-a "$(rl_site_lan c)" "${VIP[c]}"

# ------------------------------------------------------------------ (a)
PAIRS=("a b" "b c" "a c")
declare -A T0=() TDIRECT=()
for p in "${PAIRS[@]}"; do
    read -r x y <<<"$p"
    T0[$x$y]=$(rl_now_ms)
    rl_spawn "ping-$x$y" "lan-$x" ping -n -i 0.2 -s "$SIZE" -W 1 -w $((DEADLINE + 5)) "${HOST[$y]}"
done
both_direct() { rl_peer_direct "gw-$1" "${VIP[$2]}" && rl_peer_direct "gw-$2" "${VIP[$1]}"; }
# Polls every pair until each is direct or the deadline has passed.
deadline=$(( $(rl_now_ms) + DEADLINE * 1000 ))
for ((i = 0; i < DEADLINE * 10; i++)); do
    open=0
    for p in "${PAIRS[@]}"; do
        read -r x y <<<"$p"
        [ -n "${TDIRECT[$x$y]:-}" ] && continue
        if both_direct "$x" "$y"; then TDIRECT[$x$y]=$(( $(rl_now_ms) - ${T0[$x$y]} )); else open=1; fi
    done
    [ "$open" = 0 ] && break
    [ "$(rl_now_ms)" -ge "$deadline" ] && break
    sleep 0.2
done
for p in "${PAIRS[@]}"; do
    read -r x y <<<"$p"
    rl_stop "ping-$x$y"
done
echo "  status after the watch: gw-a: $(rl_paths gw-a); gw-b: $(rl_paths gw-b)"
echo "  UDP datagrams of any size seen on the switch so far: a->b $(sw_count any-a-b), b->a $(sw_count any-b-a)," \
     "b->c $(sw_count any-b-c), c->b $(sw_count any-c-b), a->c $(sw_count any-a-c), c->a $(sw_count any-c-a)"

# window <x> <y> : COUNT pings LAN x -> LAN y, alone; prints
# "replies udp_xy udp_yx relay_x relay_y relay_other detour_xy detour_yx"
# from the switch, where detour_xy counts large UDP x -> o and o -> y
# through the third gateway o (what latency routing would send there).
window() {
    local x=$1 y=$2 o k out replies
    declare -A u0=() r0=()
    for k in a-b b-a a-c c-a b-c c-b; do u0[$k]=$(sw_count "udp-$k"); done
    for k in a b c; do r0[$k]=$(sw_count "relay-$k" bytes); done
    out=$(timeout --foreground $((COUNT + 10)) ip netns exec "$(rl_ns "lan-$x")" \
        ping -n -q -c "$COUNT" -i 0.1 -s "$SIZE" -W 1 "${HOST[$y]}" 2>/dev/null)
    replies=$(sed -n 's/.* \([0-9]*\) received.*/\1/p' <<<"$out")
    for o in a b c; do [ "$o" != "$x" ] && [ "$o" != "$y" ] && break; done
    udp_since() { echo $(( $(sw_count "udp-$1") - ${u0[$1]} )); }
    printf '%s %s %s %s %s %s %s %s\n' "${replies:-0}" \
        "$(udp_since "$x-$y")" "$(udp_since "$y-$x")" \
        $(( $(sw_count "relay-$x" bytes) - ${r0[$x]} )) $(( $(sw_count "relay-$y" bytes) - ${r0[$y]} )) \
        $(( $(sw_count "relay-$o" bytes) - ${r0[$o]} )) \
        $(( $(udp_since "$x-$o") + $(udp_since "$o-$y") )) $(( $(udp_since "$y-$o") + $(udp_since "$o-$x") ))
}
# routes_of <gw> : its route table, one "dst via next (path)" per entry.
routes_of() {
    rl_status_get "$1" '", ".join(r["dst"] + " via " + r["next_hop"] + " (" + r["path"] + ")" for r in d["routes"])'
}
# What relaying the window's pings would add at each end (request and reply).
RELAYED=$((2 * COUNT * (SIZE + 28)))
for p in "${PAIRS[@]}"; do
    read -r x y <<<"$p"
    read -r replies uxy uyx rx ry _ dxy dyx <<<"$(window "$x" "$y")"
    t=${TDIRECT[$x$y]:-}
    echo "  $x<->$y: status direct $( [ -n "$t" ] && printf 'after %d.%d s' $((t / 1000)) $(( (t % 1000) / 100 )) || echo "never within $DEADLINE s");" \
         "window: $replies/$COUNT replies, UDP $x->$y $uxy, $y->$x $uyx packets, through the third gateway $dxy and $dyx, relay bytes $x $rx, $y $ry"
    if ! rl_ge "$uxy" $((COUNT - 2)) || ! rl_ge "$uyx" $((COUNT - 2)); then
        echo "  gw-$x routes: $(routes_of "gw-$x")"
        echo "  gw-$y routes: $(routes_of "gw-$y")"
    fi
    check "(a) $x<->$y: both ends list each other as direct within $DEADLINE s" test -n "$t"
    check "(a) $x<->$y: the pings crossed the switch as UDP between ${WAN[$x]} and ${WAN[$y]} (both ways)" \
        eval "rl_ge $uxy $((COUNT - 2)) && rl_ge $uyx $((COUNT - 2))"
    check "(a) $x<->$y: the server's TCP stayed flat (< $((RELAYED / 4)) bytes at each end)" \
        test "$rx" -lt $((RELAYED / 4)) -a "$ry" -lt $((RELAYED / 4))
done

# ------------------------------------------------------------------ (b)
rl_block_pair "${WAN[a]}" "${WAN[c]}"
t0=$(rl_now_ms)
echo "  the switch now drops UDP ${WAN[a]} <-> ${WAN[c]} (b relays at route cost 400)"
rl_spawn ping-ac2 lan-a ping -n -i 0.2 -s "$SIZE" -W 1 -w $((DEADLINE + 5)) "${HOST[c]}"
via_b() { rl_route_via gw-a "${VIP[c]}" "${VIP[b]}" && rl_route_via gw-c "${VIP[a]}" "${VIP[b]}"; }
if rl_wait_until "$DEADLINE" via_b; then
    rl_pass "(b) a and c route to each other via b within $DEADLINE s ($(rl_secs_since "$t0") s)"
else
    rl_fail "(b) a and c route to each other via b within $DEADLINE s (gw-a routes: $(routes_of gw-a))"
fi
rl_stop ping-ac2
fwd0=$(rl_status_get gw-b 'd["forwarded"]')
ab0=$(sw_count udp-a-b); bc0=$(sw_count udp-b-c); cb0=$(sw_count udp-c-b); ba0=$(sw_count udp-b-a)
read -r replies uac uca ra rc rb _ _ <<<"$(window a c)"
ab=$(( $(sw_count udp-a-b) - ab0 )); bc=$(( $(sw_count udp-b-c) - bc0 ))
cb=$(( $(sw_count udp-c-b) - cb0 )); ba=$(( $(sw_count udp-b-a) - ba0 ))
# The dataplane counters are published every 0.5 s.
fwd_grew() { rl_ge "$(rl_status_get gw-b 'd["forwarded"]')" $(( ${fwd0:-0} + 2 * (COUNT - 2) )); }
rl_wait_until 3 fwd_grew
fwd1=$(rl_status_get gw-b 'd["forwarded"]')
echo "  LAN a -> LAN c window: $replies/$COUNT replies; UDP a->b $ab, b->c $bc, c->b $cb, b->a $ba, a->c $uac, c->a $uca packets;" \
     "relay bytes a $ra, c $rc, b $rb; gw-b forwarded $(( ${fwd1:-0} - ${fwd0:-0} ))"
check "(b) LAN a -> LAN c: $replies of $COUNT pings answered" rl_ge "$replies" $((COUNT - 2))
check "(b) requests crossed the switch a -> b and b -> c as UDP" eval "rl_ge $ab $((COUNT - 2)) && rl_ge $bc $((COUNT - 2))"
check "(b) replies crossed c -> b and b -> a as UDP" eval "rl_ge $cb $((COUNT - 2)) && rl_ge $ba $((COUNT - 2))"
check "(b) gw-b's dataplane forwarded them (forwarded +$(( ${fwd1:-0} - ${fwd0:-0} )))" fwd_grew
check "(b) the server's TCP stayed flat at a, b and c (< $((RELAYED / 4)) bytes each)" \
    test "$ra" -lt $((RELAYED / 4)) -a "$rc" -lt $((RELAYED / 4)) -a "$rb" -lt $((RELAYED / 4))
check "(b) the switch dropped traffic a <-> c" rl_ge "$(rl_pair_dropped "${WAN[a]}" "${WAN[c]}")" 1
rl_finish test_sites_private_wan
