#!/usr/bin/env bash
# /metrics during a transfer. Two sites behind port-preserving NATs (as in
# test_p2p_cone) go direct; a paced TCP transfer a -> b runs while a's
# /metrics is scraped from inside a's namespace (the default address,
# 127.0.0.1:9586, is that namespace's own loopback). The direct-path byte
# counters must move mid-transfer with path="direct" on both ends, by at
# least the bytes sent and at most what a's router forwarded as UDP to b's
# router (an independent witness), while the relay counters stay flat. The
# server's /metrics (127.0.0.1:9587 in its namespace) shows 2 members.
# `ringlink metrics` prints the same families, and every metric the Grafana
# dashboard queries is in the client's or the server's text (a misspelt
# copy of it must fail that check). Finally UDP between the
# routers is cut: pings then take the relay, and the relay counter, flat
# until then, moves (so "flat" was not a dead counter).
set -uo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$here/lib.sh"
rl_init "$here/.."
MB=${RL_TRANSFER_MB:-24}
RATE_MB=${RL_METRICS_RATE_MB:-8}
echo "test_metrics: /metrics scraped during a paced $MB MB direct transfer ($RATE_MB MB/s); server members; relay after a cut"

# Fetches URL ("-" reads the text from stdin) and prints the value of the
# series NAME with exactly the labels given as k=v (none: the unlabelled
# one). Exit 1 when there is no such series.
RL_PY_METRIC='
import sys, urllib.request
url, name = sys.argv[1], sys.argv[2]
want = dict(a.split("=", 1) for a in sys.argv[3:])
if url == "-":
    text = sys.stdin.read()
else:
    text = urllib.request.urlopen(url, timeout=5).read().decode()
for line in text.splitlines():
    if not line or line.startswith("#"):
        continue
    series, value = line.rsplit(" ", 1)
    n, _, labels = series.partition("{")
    if n != name:
        continue
    got = {}
    for part in labels.rstrip("}").split(","):
        if part:
            k, v = part.split("=", 1)
            got[k] = v.strip("\"")
    if got == want:
        print(value)
        sys.exit(0)
sys.exit(1)
'

# Sends MB random megabytes to ADDR:PORT at RATE MB/s (1/8 MB per step),
# then prints "<bytes> <sha256> <seconds>" like lib.sh's source.
RL_PY_PACED='
import hashlib, os, socket, sys, time
addr, port, mb, rate = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
s = socket.create_connection((addr, port), timeout=30)
s.settimeout(60)
step = 1 << 17
h = hashlib.sha256(); n = 0; t0 = time.monotonic()
while n < mb << 20:
    b = os.urandom(step)
    s.sendall(b); h.update(b); n += len(b)
    ahead = n / (rate * (1 << 20)) - (time.monotonic() - t0)
    if ahead > 0:
        time.sleep(ahead)
s.shutdown(socket.SHUT_WR)
s.settimeout(30)
while s.recv(4096): pass
print("%d %s %.6f" % (n, h.hexdigest(), time.monotonic() - t0))
'

# metric <node> <port> <name> [k=v...] : one value from /metrics in <node>.
metric() {
    local node=$1 port=$2; shift 2
    rl_exec "$node" timeout 10 python3 -c "$RL_PY_METRIC" "http://127.0.0.1:$port/metrics" "$@" 2>/dev/null
}
traffic() { metric "$1" 9586 ringlink_traffic_bytes_total "path=$2" "direction=$3"; }

rl_world_p2p plain plain || rl_finish
rl_start_client a a
rl_start_client b b
check "client a connected" rl_wait_until 20 rl_ready a
check "client b connected" rl_wait_until 20 rl_ready b
va=$(rl_vip a); vb=$(rl_vip b)
check "a sees b direct" rl_wait_until 15 rl_peer_direct a "${vb:-none}"
check "b sees a direct" rl_wait_until 15 rl_peer_direct b "${va:-none}"

members=$(metric srv 9587 ringlink_server_members)
echo "  server /metrics: ringlink_server_members ${members:-?}"
check "the server's /metrics shows 2 members" test "${members:-x}" = 2
check "a's /metrics answers in a's namespace with ringlink_link_up 1" \
    test "$(metric a 9586 ringlink_link_up)" = 1
check "a's /metrics counts b as CONNECTED" \
    test "$(metric a 9586 ringlink_peers_by_state state=CONNECTED)" = 1

# Counters before; the status behind /metrics is refreshed every 0.5 s, so
# wait for a's view to settle on the last handshake traffic first.
settled() {
    local x y
    x=$(traffic a direct tx); sleep 1; y=$(traffic a direct tx)
    [ -n "$x" ] && [ "$x" = "$y" ]
}
rl_wait_until 10 settled
a_d0=$(traffic a direct tx); a_r0=$(traffic a relay tx); a_rr0=$(traffic a relay rx)
b_d0=$(traffic b direct rx); b_r0=$(traffic b relay rx)
echo "  before: a direct tx ${a_d0:-?}, a relay tx ${a_r0:-?}, b direct rx ${b_d0:-?}, b relay rx ${b_r0:-?}"

rl_count ra direct forward ip daddr "$RL_P2P_NET.22" meta l4proto udp
out="$RL_TMP/sink.out"
rl_spawn sink b python3 -c "$RL_PY_SINK" "${vb:-127.0.0.1}" 5001 "$out"
check "sink listening in b" rl_wait_until 10 rl_file_exists "$out.ready"
rl_spawn source a timeout 120 python3 -c "$RL_PY_PACED" "${vb:-127.0.0.1}" 5001 "$MB" "$RATE_MB"
# Mid-transfer: the sender is still sending and a's counter has moved.
mid=""
moved_mid_transfer() {
    local v
    rl_alive source || return 1
    v=$(traffic a direct tx) || return 1
    rl_alive source || return 1
    [ "$v" -gt "${a_d0:-0}" ] 2>/dev/null || return 1
    mid=$v
}
check "mid-transfer, a's ringlink_traffic_bytes_total{path=\"direct\",direction=\"tx\"} moves" \
    rl_wait_until 20 moved_mid_transfer
echo "  mid-transfer scrape: a direct tx ${mid:-?} (+$(( ${mid:-0} - ${a_d0:-0} )) bytes)"
check "mid-transfer, the count is short of the whole transfer" \
    test "$(( ${mid:-0} - ${a_d0:-0} ))" -lt $((MB << 20))
check "the transfer finishes" rl_wait_until 60 rl_exited source
check "sink reported" rl_wait_until 30 rl_file_exists "$out"
read -r got_n got_sha _ <"$out" 2>/dev/null || { got_n=0; got_sha=none; }
sent=$(cat "$(rl_log_file source)" 2>/dev/null)
read -r sent_n sent_sha sent_s <<<"${sent:-0 none 0}"
echo "  sent $sent_n bytes in ${sent_s}s, received $got_n"
check "$MB MB arrive intact (count + sha256)" \
    test "$got_n" = $((MB << 20)) -a "$sent_n" = "$got_n" -a "$got_sha" = "$sent_sha"

# After: wait out the 0.5 s status refresh, then compare.
caught_up() { rl_ge "$(traffic a direct tx)" $(( ${a_d0:-0} + (MB << 20) )); }
check "a's direct tx counter reaches the transfer's size" rl_wait_until 5 caught_up
a_d1=$(traffic a direct tx); a_r1=$(traffic a relay tx); a_rr1=$(traffic a relay rx)
b_d1=$(traffic b direct rx); b_r1=$(traffic b relay rx)
fwd=$(rl_counted ra direct)
a_dd=$(( ${a_d1:-0} - ${a_d0:-0} )); b_dd=$(( ${b_d1:-0} - ${b_d0:-0} ))
echo "  after: a direct tx +$a_dd, b direct rx +$b_dd, a relay tx +$(( ${a_r1:-0} - ${a_r0:-0} )), a relay rx +$(( ${a_rr1:-0} - ${a_rr0:-0} )), b relay rx +$(( ${b_r1:-0} - ${b_r0:-0} )); ra forwarded $fwd bytes of UDP to rb"
check "b's direct rx counter moved by at least $MB MB" rl_ge "$b_dd" $((MB << 20))
check "a's direct tx is no more than ra forwarded as UDP to rb ($fwd)" rl_ge "${fwd:-0}" "$a_dd"
check "a's relay tx stayed flat (${a_r0:-?} -> ${a_r1:-?})" test -n "${a_r0:-}" -a "${a_r0:-}" = "${a_r1:-x}"
check "b's relay rx stayed flat (${b_r0:-?} -> ${b_r1:-?})" test -n "${b_r0:-}" -a "${b_r0:-}" = "${b_r1:-x}"

# `ringlink metrics` reads the status socket: the same families as /metrics.
cli="$RL_TMP/metrics-cli.txt"
timeout 10 "$RINGLINK" metrics --socket "$(rl_sock a)" >"$cli" 2>"$RL_TMP/metrics-cli.err"
check "ringlink metrics exits 0" test $? -eq 0
families() { grep '^# TYPE ' | sort; }
# scrape <node> <port> : the whole /metrics text in <node>.
scrape() {
    rl_exec "$1" timeout 10 python3 -c 'import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode(), end="")' "http://127.0.0.1:$2/metrics"
}
http_families=$(scrape a 9586 | families)
check "ringlink metrics has the same TYPE lines as /metrics ($(families <"$cli" | wc -l) families)" \
    test -n "$http_families" -a "$http_families" = "$(families <"$cli")"
cli_d=$(python3 -c "$RL_PY_METRIC" - ringlink_traffic_bytes_total path=direct direction=tx <"$cli")
check "ringlink metrics shows the direct tx bytes (${cli_d:-?})" rl_ge "${cli_d:-0}" "$a_d1"

# The Grafana dashboard queries only names that the client or the server
# exports (dashboard_metrics.py), checked on these scrapes: every family is
# there by now, the direct path and the time-to-direct histogram included.
dash="$here/../dist/grafana/ringlink.json"
scrape a 9586 >"$RL_TMP/client.prom"
scrape srv 9587 >"$RL_TMP/server.prom"
check "every metric and matcher label of the Grafana dashboard is in a's or the server's /metrics" \
    python3 "$here/dashboard_metrics.py" "$dash" "$RL_TMP/client.prom" "$RL_TMP/server.prom"
# The same check on a copy with one name misspelt must fail, naming it:
# otherwise the check above proves nothing.
sed 's/ringlink_link_reconnects_total/ringlink_link_reconnect_total/' "$dash" >"$RL_TMP/misspelt.json"
python3 "$here/dashboard_metrics.py" "$RL_TMP/misspelt.json" "$RL_TMP/client.prom" "$RL_TMP/server.prom" \
    >"$RL_TMP/misspelt.out" 2>&1
misspelt_rc=$?
check "a dashboard querying ringlink_link_reconnect_total (no such metric) fails the check" \
    test "$misspelt_rc" = 1
check "and the failure names that metric" \
    grep -q 'ringlink_link_reconnect_total is not exported' "$RL_TMP/misspelt.out"

# Cut UDP between the routers: b falls back to the relay, and the relay
# counters move.
fwd0=$(metric srv 9587 ringlink_server_frames_forwarded_total kind=unicast)
rl_cut_udp ra "$RL_P2P_NET.22"
check "after the cut a sees b on the relay" rl_wait_until 20 rl_peer_relay a "${vb:-none}"
check "and b sees a on the relay" rl_wait_until 20 rl_peer_relay b "${va:-none}"
check "ping a -> b over the relay (5 of 5)" rl_ping a "${vb:-none}" 5
relay_moved() { rl_ge "$(traffic a relay tx)" $(( ${a_r1:-0} + 5 * 84 )); }
check "a's relay tx counter moved by at least 5 pings" rl_wait_until 5 relay_moved
fwd1=$(metric srv 9587 ringlink_server_frames_forwarded_total kind=unicast)
echo "  a relay tx now $(traffic a relay tx) (was ${a_r1:-?}); server unicast forwards ${fwd0:-?} -> ${fwd1:-?}"
check "the server's forwarded-unicast counter moved by at least 10 (pings and replies)" \
    rl_ge "$(( ${fwd1:-0} - ${fwd0:-0} ))" 10
rl_finish test_metrics
