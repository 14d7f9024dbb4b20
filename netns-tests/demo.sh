# shellcheck shell=bash
# ringlink demo: a server and three gateway sites with a LAN host behind
# each, in network namespaces, with the real binary ($RINGLINK): LAN-to-LAN
# pings, throughput, and which path carried the traffic (direct, via a
# peer, or the server's relay) according to `ringlink status`.
# `ringlink demo` runs lib.sh + this file as one script; run by hand it
# sources lib.sh next to it:  sudo RINGLINK=target/release/ringlink bash netns-tests/demo.sh
set -uo pipefail
if ! declare -F rl_init >/dev/null 2>&1; then
    . "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
fi

rl_init
if [ -t 1 ]; then
    demo_step() { printf '\n\033[1m%s\033[0m\n' "$*"; }
else
    demo_step() { printf '\n%s\n' "$*"; }
fi
demo_fail() { printf '\ndemo failed: %s\n' "$*"; rl_dump_logs; exit 1; }

demo_step "1. Three sites and a server (namespaces ${RL_PREFIX}*)"
cat <<EOT
    LAN 192.168.11.0/24 ── site-a gateway 10.77.0.11 ──┐
    LAN 192.168.12.0/24 ── site-b gateway 10.77.0.12 ──┼── internet ── server $RL_SITES_NET.1
    LAN 192.168.13.0/24 ── site-c gateway 10.77.0.13 ──┘   (relay, STUN, subnet routes)
    a firewall on the internet blocks site-a and site-c from each other (UDP and TCP)
EOT
rl_sites_server || demo_fail "server did not start"
rl_block_pair "$(rl_site_wan a)" "$(rl_site_wan c)"
for x in a b c; do
    rl_site "$x"
    rl_start_client "gw-$x" "gw-$x"
done
for x in a b c; do
    rl_wait_until 20 rl_ready "gw-$x" || demo_fail "gateway $x did not connect"
done
vb=$(rl_site_vip b); vc=$(rl_site_vip c)
demo_paths_ready() { rl_peer_direct gw-a "$vb" && rl_peer_direct gw-b "$vc" && rl_route_via gw-a "$vc" "$vb"; }
rl_wait_until 20 demo_paths_ready || echo "    (paths still forming; traffic may take the relay)"
echo "    gateways up; each LAN host's default route points at its gateway"

# demo_path <dst subnet or VIP>: how gw-a reaches it, from its status.
demo_path() {
    rl_status "gw-a" | python3 -c '
import json, sys
d, want = json.load(sys.stdin), sys.argv[1]
routes = {r["dst"]: r for r in d["routes"]}
peers = {p["vip"]: p for p in d["peers"]}
gw = routes[want]["next_hop"] if want in routes and "/" in want else want
r = routes.get(gw)
p = peers.get(gw, {})
if r and r["next_hop"] != gw and peers.get(r["next_hop"], {}).get("path") == "direct":
    print("via peer %s (no direct UDP; metric %s ms)" % (r["next_hop"], r["metric_ms"]))
elif p.get("path") == "direct":
    print("direct UDP to %s" % p.get("endpoint"))
else:
    print("relay through the server")
' "$1" 2>/dev/null || echo "unknown"
}

demo_step "2. Ping from LAN host a (192.168.11.2)"
for x in b c; do
    h=$(rl_site_host "$x")
    rl_wait_until 15 rl_ping_once lan-a "$h" || demo_fail "no reply from $h"
    res=$(timeout --foreground 15 ip netns exec "$(rl_ns lan-a)" ping -n -q -c 5 -i 0.2 -W 2 "$h" 2>&1 |
        sed -n 's/.* \([0-9]*\) received.*/\1/p; s/.* = [0-9.]*\/\([0-9.]*\)\/.*/\1/p' | paste -sd' ')
    read -r got avg <<<"$res"
    printf '    -> LAN host %s %s: %s/5 replies, avg %s ms\n' "$x" "$h" "${got:-0}" "${avg:-?}"
done

demo_step "3. Throughput from LAN host a (TCP, 3 s each)"
demo_tput() {
    local x=$1 h port=$2
    h=$(rl_site_host "$x")
    if command -v iperf3 >/dev/null 2>&1; then
        rl_spawn "iperf3-$x" "lan-$x" iperf3 -s -1 -B "$h" -p "$port"
        rl_wait_until 10 rl_exec "lan-$x" ss -Hltn "sport = :$port" || { echo "    iperf3 server did not start"; return; }
        if timeout --foreground 20 ip netns exec "$(rl_ns lan-a)" iperf3 -c "$h" -p "$port" -t 3 -J >"$RL_TMP/iperf-$x.json" 2>&1; then
            python3 -c 'import json, sys; e = json.load(open(sys.argv[1]))["end"]; print("    -> LAN host %s: %.0f Mbit/s" % (sys.argv[2], e["sum_received"]["bits_per_second"] / 1e6))' "$RL_TMP/iperf-$x.json" "$x"
        else
            echo "    -> LAN host $x: iperf3 failed"
        fi
    else
        rl_spawn "sink-$x" "lan-$x" python3 -c "$RL_PY_SINK" "$h" "$port" "$RL_TMP/blast-$x"
        rl_wait_until 10 rl_file_exists "$RL_TMP/blast-$x.ready" || { echo "    sink did not start"; return; }
        local res n s
        res=$(timeout --foreground 30 ip netns exec "$(rl_ns lan-a)" python3 -c "$RL_PY_SOURCE" "$h" "$port" -32) || res=""
        read -r n _ s <<<"${res:-0 - 0}"
        python3 -c 'import sys; n,s=int(sys.argv[1]),float(sys.argv[2]); print("    -> LAN host %s: %.0f Mbit/s (python, 32 MB; iperf3 not installed)" % (sys.argv[3], n*8/s/1e6 if s else 0))' "$n" "$s" "$x"
    fi
}
demo_tput b 5201
demo_tput c 5202

demo_step "4. Which path carried it (ringlink status on site-a's gateway)"
for x in b c; do
    printf '    LAN %-16s gateway %-11s %s\n' "$(rl_site_lan "$x")" "$(rl_site_vip "$x")" "$(demo_path "$(rl_site_lan "$x")")"
done
echo "    sent by site-a's gateway: $(rl_status_get gw-a '", ".join("%d MB direct to %s" % (p["tx_bytes"] >> 20, p["vip"]) for p in d["peers"] if p["path"] == "direct")'), $(rl_status_get gw-a 'd["relay_tx_frames"]') frames through the server"

demo_step "Cleaning up"
exit 0
