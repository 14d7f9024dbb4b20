#!/usr/bin/env bash
# netns-test: solo
# Packets larger than the tunnel MTU (1400) on the fast direct path, two
# workers per client. Without DF the kernel fragments before the TUN device:
# ping -s 3000 is answered (and its fragments are seen arriving on the far
# TUN device), UDP datagrams from 1372 (fits exactly) up to 65507 bytes
# arrive with their content intact, both ways. With DF, a packet of exactly
# the MTU goes through, while one byte more (and ping -s 1500) fails locally
# with "message too long" and nothing reaches the far side. Then a TCP
# transfer in 1 MiB writes arrives intact. Everything direct (the server's
# interface barely moves).
set -uo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$here/lib.sh"
. "$here/fast_lib.sh"
rl_init "$here/.."
MB=${RL_FAST_MB:-10}
MTU=1400
echo "test_fast_oversize: packets over the tunnel MTU ($MTU) on the direct path: fragments, DF, big UDP, TCP"

rl_fast_pair "workers = 2" || rl_finish
for c in a b; do
    m=$(ip -n "$(rl_ns $c)" -o link show rl0 2>/dev/null | sed -n 's/.* mtu \([0-9]*\) .*/\1/p')
    check "$c: rl0 has MTU $MTU (found ${m:-none})" test "${m:-0}" = "$MTU"
done
srv0=$(rl_if_total srv eth0)

# --- ping without DF: the kernel fragments, the tunnel carries fragments.
rl_frag_count_on b frags rl0 'ip saddr' "${va:-0.0.0.0}" 'ip frag-off & 0x3fff != 0'
rl_frag_count_on a frags rl0 'ip saddr' "${vb:-0.0.0.0}" 'ip frag-off & 0x3fff != 0'
out=$(rl_ping_out a "${vb:-none}" 3 -M dont -s 3000)
got=$(grep -c '^3008 bytes from' <<<"$out")
check "ping -M dont -s 3000 a -> b: 3 of 3 answered with 3008 bytes (got $got)" test "$got" -eq 3
out=$(rl_ping_out b "${va:-none}" 3 -M dont -s 3000)
got=$(grep -c '^3008 bytes from' <<<"$out")
check "ping -M dont -s 3000 b -> a: 3 of 3 answered with 3008 bytes (got $got)" test "$got" -eq 3
fb=$(rl_frag_counted b frags); fa=$(rl_frag_counted a frags)
echo "  fragments from the peer seen arriving on rl0 (before reassembly): b ${fb:-?}, a ${fa:-?}"
# 3008 bytes of ICMP in 1376-byte fragments: 3 per packet; 6 packets (3
# requests, 3 replies) reach each side's rl0: requests and replies.
check "b's rl0 received the requests as fragments (>= 9, got ${fb:-0})" rl_ge "${fb:-0}" 9
check "a's rl0 received the replies and requests as fragments (>= 9, got ${fa:-0})" rl_ge "${fa:-0}" 9

# --- UDP datagrams over the MTU, content checked per datagram.
SIZES=1372,1373,3000,8000,20000,65507
udp_sizes() {
    local from=$1 to=$2 addr=$3 port=$4 name="big-$1$2"
    check "UDP receiver in $to on $addr:$port" rl_seq_recv "$name" "$to" "$addr" "$port" --idle 3 --timeout 30 || return 1
    local sent
    sent=$(rl_seq_send "$from" "$addr" "$port" --count 18 --sizes "$SIZES" --pps 20 --timeout 20)
    check "$from -> $to: receiver reported" rl_wait_until 10 rl_file_exists "$RL_TMP/$name.json" || return 1
    local f='fl.get("0", {})'
    local rcv corrupt sizes junk
    rcv=$(rl_seq_report "$name" "$f.get(\"received\", 0)")
    corrupt=$(rl_seq_report "$name" "$f.get(\"corrupt\", 0) + d[\"junk\"]")
    sizes=$(rl_seq_report "$name" "\" \".join(\"%s:%s\" % (s, $f.get(\"sizes\", {}).get(s, 0)) for s in \"$SIZES\".split(\",\"))")
    echo "  $from -> $to: sender ${sent:-?}"
    echo "  $from -> $to: received ${rcv:-0} of 18 intact (size:count $sizes), corrupt or unknown ${corrupt:-?}"
    check "$from -> $to: no datagram corrupted or truncated" test "${corrupt:-x}" = 0
    check "$from -> $to: every size up to 65507 arrived intact (3 sent of each)" \
        test -n "$sizes" -a "$(grep -c ':0' <<<"${sizes// /$'\n'}")" = 0
    check "$from -> $to: >= 16 of 18 datagrams arrived" rl_ge "${rcv:-0}" 16
}
udp_sizes a b "${vb:-127.0.0.1}" 6001
udp_sizes b a "${va:-127.0.0.1}" 6002

# --- DF: exactly the MTU passes, anything larger fails at the sender.
# b counts a's echo requests arriving on rl0 (the counter is checked on the
# packets that fit, so a broken counter cannot pass the ones that do not).
rl_frag_count_on b echo rl0 'ip saddr' "${va:-0.0.0.0}" 'icmp type echo-request'
out=$(rl_ping_out a "${vb:-none}" 3 -M do -s $((MTU - 28)))
got=$(grep -c "^$((MTU - 20)) bytes from" <<<"$out")
check "ping -M do -s $((MTU - 28)) a -> b (exactly $MTU bytes): 3 of 3 answered (got $got)" test "$got" -eq 3
n=$(rl_frag_counted b echo)
check "b's rl0 counted those 3 echo requests (got ${n:-none})" test "${n:-0}" = 3
for size in $((MTU - 27)) 1500; do
    before=$(rl_frag_counted b echo)
    out=$(rl_ping_out a "${vb:-none}" 2 -M do -s "$size")
    after=$(rl_frag_counted b echo)
    echo "  ping -M do -s $size: $(grep -iE -m1 'too long|mtu' <<<"$out" || echo '(no error line)')"
    check "ping -M do -s $size a -> b fails locally with 'message too long'" grep -qi 'message too long' <<<"$out"
    check "ping -M do -s $size: no reply" test "$(grep -c 'bytes from' <<<"$out")" = 0
    check "ping -M do -s $size: nothing reached b's rl0 (echo requests ${before:-?} -> ${after:-?})" \
        test -n "$before" -a "$before" = "$after"
done

# --- TCP in 1 MiB writes (the kernel segments at the tunnel's MSS).
check "$MB MB a -> b over TCP in 1 MiB writes arrive intact (count + sha256)" \
    rl_transfer a b "${vb:-127.0.0.1}" 5001 "$MB"
echo "  $RL_XFER_BYTES bytes in ${RL_XFER_SECS}s = $RL_XFER_MBIT Mbit/s"

srv1=$(rl_if_total srv eth0)
echo "  server eth0 moved $((srv1 - srv0)) bytes during the test"
check "direct, not relayed: the server's eth0 moved < 2% of the $MB MB ($((srv1 - srv0)) bytes)" \
    test $((srv1 - srv0)) -lt $(( (MB << 20) / 50 ))
for c in a b; do
    echo "  $c's counters: $(rl_status_get $c '" ".join("%s=%s" % (k, d[k]) for k in ("tun_rx_packets", "tun_written", "relay_tx_frames", "relay_rx_frames", "relay_dropped", "dropped_full", "dropped_malformed", "decrypt_failed", "oversize"))')"
done
check "a still has b CONNECTED/direct" rl_peer_direct a "${vb:-none}"
check "b still has a CONNECTED/direct" rl_peer_direct b "${va:-none}"
rl_finish test_fast_oversize
