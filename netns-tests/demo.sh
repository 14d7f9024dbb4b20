# shellcheck shell=bash
# ringlink demo: a server and two gateway sites in network namespaces, the
# real binary ($RINGLINK), a ping, a throughput figure and the path taken.
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

demo_step "1. Network (namespaces ${RL_PREFIX}*)"
cat <<EOT
    site-a 10.91.0.11 ──┐
                        ├── switch ── server 10.91.0.1 (ws://10.91.0.1:7443, pool $RL_POOL)
    site-b 10.91.0.12 ──┘
    each site runs \`ringlink client\` with TUN rl0; relay over the server's WebSocket
EOT
rl_switch
rl_attach srv "$RL_SERVER_IP/24"
rl_attach a 10.91.0.11/24
rl_attach b 10.91.0.12/24
rl_server_conf server >/dev/null
rl_start_server server srv
rl_wait_until 10 rl_server_listening srv || demo_fail "server did not start"
rl_client_conf a >/dev/null
rl_client_conf b >/dev/null
rl_start_client a a
rl_start_client b b
rl_wait_until 20 rl_ready a || demo_fail "site-a did not connect"
rl_wait_until 20 rl_ready b || demo_fail "site-b did not connect"
va=$(rl_vip a); vb=$(rl_vip b)
echo "    site-a got $va, site-b got $vb"

demo_step "2. Ping site-a -> site-b ($vb) through the tunnel"
rl_wait_until 15 rl_ping_once a "$vb" || demo_fail "no ping reply from $vb"
timeout --foreground 15 ip netns exec "$(rl_ns a)" ping -n -c 5 -i 0.2 -W 2 "$vb" | sed -n 's/^/    /; /bytes from/p; /packet loss/p; /rtt/p'

demo_step "3. Throughput site-a -> site-b"
if command -v iperf3 >/dev/null 2>&1; then
    rl_spawn iperf3 b iperf3 -s -1 -B "$vb" -p 5201
    rl_wait_until 10 rl_exec b ss -Hltn "sport = :5201" || demo_fail "iperf3 server did not start"
    sleep 0.3
    if timeout --foreground 30 ip netns exec "$(rl_ns a)" iperf3 -c "$vb" -p 5201 -C cubic -t 5 -J >"$RL_TMP/iperf.json" 2>&1; then
        python3 - "$RL_TMP/iperf.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
e = d["end"]
print("    iperf3 -C cubic, 5 s: %.0f Mbit/s received, %d retransmits" % (
    e["sum_received"]["bits_per_second"] / 1e6, e["sum_sent"].get("retransmits", 0)))
PY
    else
        echo "    iperf3 failed: $(tail -c 300 "$RL_TMP/iperf.json")"
    fi
else
    out="$RL_TMP/blast"
    rl_spawn sink b python3 -c "$RL_PY_SINK" "$vb" 5001 "$out"
    rl_wait_until 10 rl_file_exists "$out.ready" || demo_fail "sink did not start"
    res=$(timeout --foreground 60 ip netns exec "$(rl_ns a)" python3 -c "$RL_PY_SOURCE" "$vb" 5001 -64) || echo "    transfer failed"
    rl_wait_until 20 rl_file_exists "$out" || true
    read -r n _ s <<<"${res:-0 - 0}"
    python3 -c 'import sys; n,s=int(sys.argv[1]),float(sys.argv[2]); print("    python TCP blast: %d MB in %.2f s = %.0f Mbit/s (iperf3 not installed)" % (n>>20, s, n*8/s/1e6 if s else 0))' "$n" "$s"
fi

demo_step "4. Which path carried it (ringlink status on site-a)"
"$RINGLINK" status --socket "$(rl_sock a)" 2>&1 | sed 's/^/    /'
npeers=$(rl_status_get a 'len(d["peers"])')
if [ "${npeers:-0}" = 0 ]; then
    echo "    path: relay through the server for every peer ($(rl_status_get a 'd["relay_tx_frames"]') frames sent via WebSocket; no direct peers)"
else
    echo "    paths per peer: $(rl_paths a)"
fi

demo_step "Cleaning up"
exit 0
