#!/usr/bin/env bash
# netns-test: solo
# Both sites behind "symmetric" NAT routers (nftables masquerade random: a
# new random port per destination), so hole punching cannot work: traffic
# stays on the relay and still works (ping both ways, a checked transfer
# that visibly crosses the server's interface), no peer ever reaches
# CONNECTED, and each failed attempt parks the peer in WAITING with the
# back-off of PROTOCOL.md §5.3 (30, 60, 120 s …), observed through status
# with test_time_divisor = 10 (so 3, 6, 12 s) while a ping keeps relayed
# traffic (the try-P2P trigger) flowing.
set -uo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$here/lib.sh"
rl_init "$here/.."
DIV=10
MB=${RL_TRANSFER_MB:-20}
echo "test_p2p_symmetric: two random-port NATs: relay only, WAITING back-off (timers / $DIV)"

rl_world_p2p random random "test_time_divisor = $DIV" || rl_finish
rl_start_client a a
rl_start_client b b
check "client a connected" rl_wait_until 20 rl_ready a
check "client b connected" rl_wait_until 20 rl_ready b
va=$(rl_vip a); vb=$(rl_vip b)
echo "  a = ${va:-?} behind $RL_P2P_NET.21, b = ${vb:-?} behind $RL_P2P_NET.22 (masquerade random)"

# Relayed traffic for the whole observation: every relayed packet fires
# try-P2P, so each WAITING -> INIT is followed by a new attempt at once.
rl_spawn ping a ping -n -O -i 0.2 -w 50 "${vb:-127.0.0.1}"
samples="$RL_TMP/samples"
t0=$(rl_now_ms)
want_last=$((120 / DIV))
# Sample until the WAITING period with the last wanted retry has ended in
# its doubling, so that two whole doubling periods are measured even when
# the first one was already running at the first sample.
for ((i = 0; i < 250; i++)); do
    now=$(( $(rl_now_ms) - t0 ))
    s=$(rl_peer_eval a "${vb:-none}" 'p["state"] + " " + str(p["retry_secs"])')
    [ -n "$s" ] && echo "$now $s" >>"$samples"
    case $s in *" $((2 * want_last))") break ;; esac
    [ "$now" -gt 45000 ] && break
    sleep 0.2
done
# Runs of equal (state, retry) as seen by a, for the log and the checks.
runs=$(python3 - "$samples" <<'PY'
import sys
rows = [l.split() for l in open(sys.argv[1]) if len(l.split()) == 3]
runs = []
for t, st, r in rows:
    t, r = int(t), int(r)
    if runs and runs[-1][0] == st and runs[-1][1] == r:
        runs[-1][3] = t
    else:
        runs.append([st, r, t, t])
for i, (st, r, a, b) in enumerate(runs):
    # A run's length is known from the first sample after it.
    end = runs[i + 1][2] if i + 1 < len(runs) else None
    print(st, r, a, "-" if end is None else end - a)
PY
)
echo "  a's view of b (state retry_secs start_ms length_ms):"
printf '%s\n' "$runs" | sed 's/^/    /'
check_not "b never CONNECTED at a (status samples)" grep -q CONNECTED "$samples"
# §5.3: retry doubles only on WAITING -> INIT. A WAITING period can also end
# early, without doubling, when the peer's public info arrives (the peer's
# own attempt): it then repeats with the same retry. So: the distinct values
# must run 3, 6, 12; a period that ends in a doubling lasts its retry; one
# cut short lasts less.
waits=$(printf '%s\n' "$runs" | awk '$1 == "WAITING" && $2 != last {printf "%s%s", sep, $2; sep=","; last=$2}')
want="$((30 / DIV)),$((60 / DIV)),$((120 / DIV))"
check "WAITING back-off seen by status: retry_secs $waits (want $want…, i.e. 30,60,120 / $DIV)" \
    test "${waits:0:${#want}}" = "$want"
# Each WAITING period is followed by a run whose retry says how it ended.
# The first run began before the first sample: its length is unknown.
durs_ok() {
    printf '%s\n' "$runs" | awk '
        prev_w && $2 == 2 * pr { n++; d = pd / 1000 - pr; if (d < -1.2 || d > 1.2) bad++ }
        prev_w && $2 == pr     { if (pd / 1000 > pr + 1.2) bad++ }
        { prev_w = ($1 == "WAITING" && $4 != "-" && NR > 1); pr = $2; pd = $4 }
        END { exit !(n >= 2 && !bad) }'
}
check "WAITING periods ending in a doubling last their retry_secs (±1.2 s), none lasts longer" durs_ok

check "ping a -> b over the relay (5 of 5)" rl_ping a "${vb:-none}" 5
check "ping b -> a over the relay (5 of 5)" rl_ping b "${va:-none}" 5
srv0=$(rl_if_total srv eth0)
check "$MB MB a -> b arrive intact (count + sha256)" rl_transfer a b "${vb:-127.0.0.1}" 5001 "$MB"
srv1=$(rl_if_total srv eth0)
echo "  $RL_XFER_BYTES bytes in ${RL_XFER_SECS}s = $RL_XFER_MBIT Mbit/s over the relay; server eth0 moved $((srv1 - srv0)) bytes"
check "it crossed the server twice (its eth0 moved >= 2 x $MB MB)" rl_ge $((srv1 - srv0)) $((2 * (MB << 20)))
check "a lists b on the relay path" rl_peer_relay a "${vb:-none}"
check "b lists a on the relay path" rl_peer_relay b "${va:-none}"
check "no 'direct path up' in a's log" test "$(rl_log_count a 'direct path up')" -eq 0
check "no 'direct path up' in b's log" test "$(rl_log_count b 'direct path up')" -eq 0
rl_finish test_p2p_symmetric
