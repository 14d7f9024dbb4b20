#!/usr/bin/env bash
# 20 MB of random bytes over TCP from a to b through the relay; the byte
# count and sha256 must match on both ends.
set -uo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$here/lib.sh"
rl_init "$here/.."
MB=${RL_TRANSFER_MB:-20}
echo "test_tcp_transfer: $MB MB of random data a -> b through the tunnel, sha256 checked"

rl_world_relay 2 || rl_finish
check "client a connected" rl_wait_until 20 rl_ready a
check "client b connected" rl_wait_until 20 rl_ready b
va=$(rl_vip a); vb=$(rl_vip b)
echo "  a = ${va:-?}, b = ${vb:-?}"
check "ping a -> b works before the transfer" rl_wait_until 15 rl_ping_once a "${vb:-none}"

head -c $((MB << 20)) /dev/urandom >"$RL_TMP/payload"
want=$(sha256sum "$RL_TMP/payload" | cut -d' ' -f1)
out="$RL_TMP/sink.out"
rl_spawn sink b python3 -c "$RL_PY_SINK" "${vb:-127.0.0.1}" 5001 "$out"
check "sink listening on ${vb:-?}:5001 in b" rl_wait_until 10 rl_file_exists "$out.ready"
sent=$(timeout --foreground 180 ip netns exec "$(rl_ns a)" python3 -c "$RL_PY_SOURCE" "${vb:-127.0.0.1}" 5001 "$RL_TMP/payload" 2>"$RL_TMP/source.log")
rc=$?
check "sender finished (exit $rc)" test "$rc" -eq 0
check "sink reported" rl_wait_until 30 rl_file_exists "$out"
read -r got_n got_sha got_s <"$out" 2>/dev/null || { got_n=0; got_sha=none; got_s=0; }
read -r sent_n sent_sha sent_s <<<"${sent:-0 none 0}"
echo "  sent $sent_n bytes in ${sent_s}s, received $got_n bytes"
check "byte count matches ($((MB << 20)))" test "$got_n" = "$((MB << 20))" -a "$sent_n" = "$((MB << 20))"
check "sha256 matches on both ends (${want:0:16}…)" test "$got_sha" = "$want" -a "$sent_sha" = "$want"
counter_ge() { rl_ge "$(rl_status_get a "d[\"$1\"]")" "$2"; }
# The status counters are refreshed periodically, not per query: allow 5 s.
check "it went through ringlink (a's tun_rx_bytes >= $MB MB within 5 s)" rl_wait_until 5 counter_ge tun_rx_bytes $((MB << 20))
check "and through the relay (a's relay_tx_frames >= $(( (MB << 20) / 1500 )))" rl_wait_until 5 counter_ge relay_tx_frames $(( (MB << 20) / 1500 ))
echo "  a's counters: $(rl_status_get a '" ".join("%s=%s" % (k, d[k]) for k in ("tun_rx_packets", "tun_rx_bytes", "tun_written", "relay_tx_frames", "relay_rx_frames", "relay_dropped", "dropped_full", "dropped_malformed", "decrypt_failed", "oversize"))')"
if [ "$rc" -eq 0 ]; then
    python3 -c 'import sys; n,s=int(sys.argv[1]),float(sys.argv[2]); print("  throughput %.1f Mbit/s" % (n*8/s/1e6 if s>0 else 0))' "$sent_n" "$sent_s"
fi
rl_finish test_tcp_transfer
