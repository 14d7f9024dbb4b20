#!/usr/bin/env bash
# Relay-path measurement (root): two clients talking through the server's
# WebSocket relay in network namespaces. iperf3 -C cubic -t 10 TCP throughput
# a -> b, ping RTT idle and under that load (median / p90). Prints a block to
# paste into perf/RESULTS.md.
# Usage: sudo bash perf/relay.sh   (binary: $RINGLINK or ${CARGO_TARGET_DIR:-target}/release/ringlink)
set -uo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$here/../netns-tests/lib.sh"
rl_init "$here/.."
command -v iperf3 >/dev/null 2>&1 || rl_die "iperf3 missing (apt-get install iperf3)"
SECS=${RL_PERF_SECS:-10}

rl_world_relay 2 || { rl_dump_logs; exit 1; }
rl_wait_until 20 rl_ready a || { rl_dump_logs; rl_die "client a did not connect"; }
rl_wait_until 20 rl_ready b || { rl_dump_logs; rl_die "client b did not connect"; }
va=$(rl_vip a); vb=$(rl_vip b)
rl_wait_until 15 rl_ping_once a "$vb" || { rl_dump_logs; rl_die "no ping a -> b"; }

# Idle RTT: 50 pings, 0.1 s apart.
timeout --foreground 30 ip netns exec "$(rl_ns a)" ping -n -c 50 -i 0.1 -W 2 "$vb" >"$RL_TMP/ping-idle.txt" 2>&1
read -r idle_med idle_p90 idle_n <<<"$(rl_ping_stats "$RL_TMP/ping-idle.txt")"

# Loaded: iperf3 for SECS seconds, ping every 0.1 s during it (started 1 s in).
rl_spawn iperf3-server b iperf3 -s -1 -B "$vb" -p 5201
rl_wait_until 10 rl_exec b ss -Hltn "sport = :5201" || rl_die "iperf3 server did not start"
timeout --foreground $((SECS + 30)) ip netns exec "$(rl_ns a)" iperf3 -c "$vb" -p 5201 -C cubic -t "$SECS" -J >"$RL_TMP/iperf.json" 2>"$RL_TMP/iperf.err" &
iperf_pid=$!
RL_PIDS+=("$iperf_pid")
sleep 1
timeout --foreground $((SECS + 10)) ip netns exec "$(rl_ns a)" ping -n -c $(( (SECS - 2) * 10 )) -i 0.1 -W 2 "$vb" >"$RL_TMP/ping-load.txt" 2>&1
wait "$iperf_pid"; iperf_rc=$?
read -r load_med load_p90 load_n <<<"$(rl_ping_stats "$RL_TMP/ping-load.txt")"
if [ "$iperf_rc" -eq 0 ]; then
    read -r mbps retr <<<"$(python3 -c '
import json, sys
e = json.load(open(sys.argv[1]))["end"]
print("%.0f %d" % (e["sum_received"]["bits_per_second"] / 1e6, e["sum_sent"].get("retransmits", 0)))' "$RL_TMP/iperf.json")"
else
    mbps="failed($(tail -c 200 "$RL_TMP/iperf.json" "$RL_TMP/iperf.err" | tr '\n' ' '))"; retr=-
fi
sa=$(rl_status a); drops=$(printf '%s' "$sa" | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["dropped"], d["relay_tx_frames"], d["workers"])' 2>/dev/null)
read -r dropped relay_tx workers <<<"${drops:-- - -}"
cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')
ver=$("$RINGLINK" --version 2>/dev/null | head -1)
commit=$(git -C "$here/.." rev-parse --short HEAD 2>/dev/null || echo '?')

cat <<EOT

### Relay path (WebSocket via server), $(date -u +%Y-%m-%d)
- host: $(uname -r), $(nproc) CPUs, ${cpu:-unknown CPU}
- binary: ${ver:-ringlink} (commit $commit), client workers: $workers
- command: \`sudo bash perf/relay.sh\` (iperf3 -C cubic -t $SECS, a -> b through ws://10.91.0.1:7443, netns + veth + bridge)
- TCP throughput: **$mbps Mbit/s** (retransmits $retr; client a relay_tx_frames $relay_tx, dropped $dropped)
- ping RTT idle: median $idle_med ms, p90 $idle_p90 ms ($idle_n replies of 50)
- ping RTT under load: median $load_med ms, p90 $load_p90 ms ($load_n replies of $(( (SECS - 2) * 10 )))
EOT
