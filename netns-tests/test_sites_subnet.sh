#!/usr/bin/env bash
# Three sites, each a gateway (ringlink client, static VIP) with a LAN host
# behind it; the server pushes a [[route]] per LAN. LAN host A reaches LAN
# host C (ping both ways, 10 MB over TCP with sha256 on both ends) through
# the subnet routes, and the SYN arriving at LAN host C carries an MSS
# clamped to the tunnel (<= mtu - 40).
set -uo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$here/lib.sh"
rl_init "$here/.."
MB=${RL_TRANSFER_MB:-10}
MTU=1400
echo "test_sites_subnet: LAN A <-> LAN C through subnet routes, $MB MB checked, MSS clamp"

check "server listens with three [[route]]s" rl_sites_world "mtu = $MTU" "test_time_divisor = 5" "discovery = 10"
for x in a b c; do
    check "gateway $x connected as $(rl_site_vip $x)" rl_wait_until 20 rl_ready "gw-$x"
done
va=$(rl_site_vip a); vb=$(rl_site_vip b); vc=$(rl_site_vip c)
ha=$(rl_site_host a); hc=$(rl_site_host c)
lan_a=$(rl_site_lan a); lan_b=$(rl_site_lan b); lan_c=$(rl_site_lan c)

# Pushed routes: everyone gets the other LANs (its own is skipped by the kernel
# side, but listed in status), as kernel routes through rl0.
kroute() { ip -n "$(rl_ns "$1")" -4 route show "$2" 2>/dev/null | grep -q "via $3 dev rl0"; }
check "gw-a: kernel route $lan_c via $vc dev rl0" rl_wait_until 10 kroute gw-a "$lan_c" "$vc"
check "gw-a: kernel route $lan_b via $vb dev rl0" rl_wait_until 10 kroute gw-a "$lan_b" "$vb"
check "gw-c: kernel route $lan_a via $va dev rl0" rl_wait_until 10 kroute gw-c "$lan_a" "$va"
check "gw-a status lists $lan_c via $vc" rl_wait_until 5 rl_route_via gw-a "$lan_c" "$vc"
fwd_on() { [ "$(rl_exec "$1" cat /proc/sys/net/ipv4/ip_forward)" = 1 ]; }
check "gateways enabled ip_forward themselves (a, c)" rl_wait_until 5 eval 'fwd_on gw-a && fwd_on gw-c'

check "ping LAN a ($ha) -> LAN c ($hc) within 20 s" rl_wait_until 20 rl_ping_once lan-a "$hc"
check "ping LAN a -> LAN c (5 of 5)" rl_ping lan-a "$hc" 5
check "ping LAN c -> LAN a (5 of 5)" rl_ping lan-c "$ha" 5
check "ping LAN a -> gateway c's VIP ($vc)" rl_ping lan-a "$vc" 2
echo "  gw-a peers: $(rl_paths gw-a)"

# Path MTU: a 1500-byte DF packet from the LAN does not fit the tunnel; the
# gateway's kernel answers with ICMP fragmentation-needed naming the tunnel
# MTU, and a packet of exactly the tunnel MTU goes through.
df_ping() { rl_exec lan-a ping -n -M do -c 1 -W 1 -s "$1" "$hc" 2>&1; }
# (ping fails here by design, so its output is matched after the fact
# rather than through a pipe, which pipefail would fail.)
frag_needed() { local out; out=$(df_ping $((1500 - 28))); grep -Eq "mtu ?= ?$MTU" <<<"$out"; }
check "1500-byte DF packet LAN a -> LAN c draws fragmentation-needed (mtu = $MTU)" rl_wait_until 5 frag_needed
check "a DF packet of exactly the tunnel MTU ($MTU) gets through" rl_wait_until 5 eval 'df_ping $((MTU - 28)) | grep -q " 0% packet loss"'

# TCP: the SYN LAN host c receives must carry a clamped MSS.
mss_out="$RL_TMP/syn.mss"
rl_spawn synwatch lan-c python3 -c "$RL_PY_SYN_MSS" eth0 5001 "$mss_out" 40
check "SYN watcher ready in lan-c" rl_wait_until 10 rl_file_exists "$mss_out.ready"
head -c $((MB << 20)) /dev/urandom >"$RL_TMP/payload"
want=$(sha256sum "$RL_TMP/payload" | cut -d' ' -f1)
out="$RL_TMP/sink.out"
rl_spawn sink lan-c python3 -c "$RL_PY_SINK" "$hc" 5001 "$out"
check "sink listening on $hc:5001" rl_wait_until 10 rl_file_exists "$out.ready"
rx0=$(rl_status_get gw-a 'd["tun_rx_bytes"]')
sent=$(timeout --foreground 60 ip netns exec "$(rl_ns lan-a)" python3 -c "$RL_PY_SOURCE" "$hc" 5001 "$RL_TMP/payload" 2>"$RL_TMP/source.log")
rc=$?
check "sender finished (exit $rc)" test "$rc" -eq 0
check "sink reported" rl_wait_until 20 rl_file_exists "$out"
read -r got_n got_sha _ <"$out" 2>/dev/null || { got_n=0; got_sha=none; }
read -r sent_n sent_sha sent_s <<<"${sent:-0 none 0}"
echo "  sent $sent_n bytes in ${sent_s}s, received $got_n bytes"
check "byte count matches ($((MB << 20)))" test "$got_n" = "$((MB << 20))" -a "$sent_n" = "$((MB << 20))"
check "sha256 matches on both ends (${want:0:16}…)" test "$got_sha" = "$want" -a "$sent_sha" = "$want"
tun_moved() { rl_ge "$(rl_status_get gw-a 'd["tun_rx_bytes"]')" $(( ${rx0:-0} + (MB << 20) )); }
check "it went through gw-a's tunnel (tun_rx_bytes +$MB MB within 5 s)" rl_wait_until 5 tun_moved
if [ "$rc" -eq 0 ]; then
    python3 -c 'import sys; n,s=int(sys.argv[1]),float(sys.argv[2]); print("  LAN a -> LAN c: %.0f Mbit/s" % (n*8/s/1e6 if s>0 else 0))' "$sent_n" "$sent_s"
fi
check "SYN watcher saw the SYN" rl_wait_until 10 rl_file_exists "$mss_out"
mss=$(cat "$mss_out" 2>/dev/null)
echo "  MSS in the SYN at LAN host c: ${mss:-?} (LAN MTU 1500 would give 1460; tunnel mtu $MTU)"
check "SYN MSS ${mss:-?} <= $((MTU - 40)) (clamped to the tunnel)" rl_ge $((MTU - 40)) "${mss:-99999}"
# Control: a SYN that does not cross the tunnel (gateway c's own LAN side
# to host c) keeps the LAN's MSS, so the watcher really reads the option.
ctl_out="$RL_TMP/syn-ctl.mss"
rl_spawn synwatch2 lan-c python3 -c "$RL_PY_SYN_MSS" eth0 5003 "$ctl_out" 20
rl_wait_until 10 rl_file_exists "$ctl_out.ready"
rl_exec gw-c timeout 5 python3 -c 'import socket, sys
try: socket.create_connection((sys.argv[1], 5003), timeout=2)
except OSError: pass' "$hc"
rl_wait_until 10 rl_file_exists "$ctl_out"
ctl=$(cat "$ctl_out" 2>/dev/null)
check "control: an untunnelled SYN on LAN c carries MSS ${ctl:-?} = 1460" test "${ctl:-x}" = 1460
echo "  gw-a peers: $(rl_paths gw-a)"
echo "  gw-a routes: $(rl_status_get gw-a '", ".join(r["dst"] + " via " + r["next_hop"] + " (" + r["path"] + ")" for r in d["routes"])')"
rl_finish test_sites_subnet
