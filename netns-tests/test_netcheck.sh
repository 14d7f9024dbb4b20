#!/usr/bin/env bash
# `ringlink netcheck` (issue 17) in a site behind a NAT router: with the
# network intact it reaches the server, gets a STUN answer, names the NAT
# and exits 0; with UDP dropped by the site's router it says UDP looks
# blocked and exits 3 (relay only); with the server stopped it exits 1.
set -uo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$here/lib.sh"
rl_init "$here/.."
echo "test_netcheck: netcheck tells a working site, a UDP-blocked one and a missing server apart"

rl_world_p2p plain plain || rl_finish
conf="$RL_TMP/a.toml"
netcheck() {
    timeout 60 ip netns exec "$(rl_ns a)" "$RINGLINK" netcheck --config "$conf" >"$RL_TMP/netcheck.out" 2>&1
    echo $? >"$RL_TMP/netcheck.rc"
    sed 's/^/    /' "$RL_TMP/netcheck.out"
}
rc() { cat "$RL_TMP/netcheck.rc"; }
says() { grep -Eq -- "$1" "$RL_TMP/netcheck.out"; }

netcheck
check "intact: exit 0" test "$(rc)" = 0
check "intact: the server is reachable" says "^server .* reachable over TCP"
check "intact: STUN answers with the router's public mapping" says "^stun .* public mapping $RL_P2P_NET\.21:"
check "intact: the NAT is named (a masquerading router with a firewall: a port-restricted cone)" says "^nat +cone/port-restricted"

rl_exec ra nft -f - <<EOF2 || rl_die "udp drop on ra"
table inet rl_noudp {
    chain blocked {
        type filter hook forward priority filter - 5; policy accept;
        meta l4proto udp drop
    }
}
EOF2
netcheck
check "UDP dropped: exit 3 (relay only)" test "$(rc)" = 3
check "UDP dropped: it says UDP looks blocked" says "UDP looks blocked"
check "UDP dropped: the server is still reachable" says "^server .* reachable over TCP"

rl_stop server
netcheck
check "server stopped: exit 1 (cannot work)" test "$(rc)" = 1
check "server stopped: it says so" says "^server .* NOT reachable"
rl_finish test_netcheck
