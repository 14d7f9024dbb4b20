#!/usr/bin/env bash
# The NAT lab's routers behave as their names say (issue 13), checked from
# outside ringlink with a small UDP probe (nat_probe.py): from the inside
# host's socket, the mapped address seen by two outside endpoints (mapping),
# answers from another port / another address (filtering), successive new
# sessions (port allocation), whether an unsolicited datagram to the router
# itself is dropped (input firewall) or refused (none), and whether an
# endpoint whose datagram arrived first gets another mapping (the conntrack
# clash of a bare masquerade router, issue 13), and that a datagram sent
# with IP TTL 2 passes its own router but reaches no other. A deliberately
# misbuilt router (a port-restricted one posing as a full cone) must fail
# the full-cone checks, so the probe can tell. Then ringlink's own NAT
# classifier (src/nat, run by the nat_classify example against `ringlink
# server`'s STUN responder on both outside addresses) must name each
# router's class.
set -uo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$here/lib.sh"
. "$here/nat_lab.sh"
rl_init "$here/.."
echo "test_nat_lab: every NAT lab router behaves as its name says"

PROBE="$here/nat_probe.py"
nl_lab
nl_router fake portrestricted 9
OUT1="$NL_WAN.1" OUT2="$NL_WAN.2"
rl_attach out "$OUT1/24"
ip -n "$(rl_ns out)" addr add "$OUT2/24" dev eth0
# The server exits by itself after 30 s without a request.
rl_spawn stunlike out python3 "$PROBE" server 30 "$OUT1:3478" "$OUT1:3479" "$OUT2:3478" "$OUT2:3479"
rl_wait_until 10 rl_exec out python3 -c "
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(0.5)
s.sendto(b'{\"id\": 0, \"reply_from\": \"$OUT1:3478\"}', ('$OUT1', 3478)); s.recv(100)" \
    || rl_fail "probe server answers"

# probe <router> : the client's JSON, plus the inbound result, as one line.
probe() {
    local name=$1 res fw
    res=$(timeout 30 ip netns exec "$(rl_ns "nh_$name")" python3 "$PROBE" client \
        "$OUT1:3478" "$OUT1:3479" "$OUT2:3479" "$OUT2:3478" 40000 4)
    fw=$(timeout 10 ip netns exec "$(rl_ns out)" python3 "$PROBE" inbound "$(nl_router_wan "$name"):9")
    printf '%s %s\n' "$fw" "$res"
}

# behaves <kind> <router> : the probe result of <router> matches <kind>.
behaves() {
    local kind=$1 name=$2 line
    line=$(probe "$name") || return 1
    rl_info "$name: $line"
    python3 - "$kind" "$(nl_router_wan "$name")" "$line" <<'EOF2'
import json, sys
kind, wan, line = sys.argv[1], sys.argv[2], sys.argv[3]
fw, res = line.split(" ", 1)
r = json.loads(res)
sessions = r["sessions"]
mapped = [m for _, m in sessions]
def fail(why):
    print(f"{kind}: {why}: {line}", file=sys.stderr)
    sys.exit(1)
if any(m is None for m in mapped):
    fail("a mapping request got no answer")
if any(m.split(":")[0] != wan for m in mapped):
    fail("a mapping is not on the router's WAN address")
ports = [int(m.split(":")[1]) for m in mapped]
eim = r["m1"] == r["m2"]
# On a cone, does the endpoint that sent first see another mapping?
clash = eim and r["m3"] != r["m1"]
# New NAT sessions in creation order: m2 and m3 only on a symmetric NAT.
new = ports if not eim else ports[:1] + ports[3:]
steps = [b - a for a, b in zip(new, new[1:])]
want = {
    #                  EIM    EIF    port   firewall   clash
    "fullcone":       (True,  True,  True,  "silent",  False),
    "restricted":     (True,  False, True,  "silent",  False),
    "portrestricted": (True,  False, False, "silent",  False),
    "seq":            (False, False, False, "silent",  False),
    "random":         (False, False, False, "silent",  False),
    "masq":           (True,  False, False, "refused", True),
}[kind]
got = (eim, r["eif"], r["port_changed"], fw, clash)
if got != want:
    fail(f"(EIM, EIF, other port gets in, firewall, clash) = {got}, want {want}")
if eim:
    if ports[0] != 40000 or any(p != l for (l, _), p in zip(sessions[3:], ports[3:])):
        fail("a cone here keeps the source port")
if kind == "seq" and steps != [1] * len(steps):
    fail(f"sequential ports step by 1, got steps {steps}")
if kind == "random" and len(set(steps)) == 1:
    fail(f"random ports show a pattern: steps {steps}")
EOF2
}

for k in "${NL_KINDS[@]}"; do
    check "router $k behaves as $k" behaves "$k" "$k"
done

# One routed hop between any two NAT routers (the core): a datagram sent
# with IP TTL 2 from behind one router passes that router and never
# reaches another (a primer, nat/schedule.rs), one with the default TTL
# does. Counted on the sender's router (forwarded out) and on the bare
# masquerade router's input (where an early datagram would claim a port).
rl_count nr_fullcone ttl forward iifname "lan0" oifname "eth0" udp dport 7777
rl_count nr_masq ttl input iifname "eth0" ip saddr "$(nl_router_wan fullcone)" udp dport 7777
send_ttl() {
    rl_exec nh_fullcone python3 -c "
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
if int(sys.argv[1]):
    s.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, int(sys.argv[1]))
for _ in range(3):
    s.sendto(b'hop', ('$(nl_router_wan masq)', 7777))" "$1"
}
send_ttl 2
send_ttl 0
counted() { [ "$(rl_counted "$1" ttl packets)" -ge "$2" ]; }
check "fullcone's router forwarded all 6 test datagrams" rl_wait_until 5 counted nr_fullcone 6
check "masq's router got the 3 sent with the default TTL" rl_wait_until 5 counted nr_masq 3
check "masq's router got none of the 3 sent with TTL 2 (got $(rl_counted nr_masq ttl packets) in all)" \
    test "$(rl_counted nr_masq ttl packets)" -eq 3
check_not "a port-restricted router fails the full-cone checks" behaves fullcone fake

# classified <router> <expected> : the classifier's line for <router>
# starts with <expected>.
classified() {
    local name=$1 want=$2 got
    got=$(timeout 30 ip netns exec "$(rl_ns "nh_$name")" "$CLASSIFY" "$OUT1:5000" "$(nl_host_ip "$name")" 5)
    rl_info "$name classified: $got"
    case $got in "$want"*) return 0 ;; esac
    echo "  $name: classified as: $got" >&2
    return 1
}

CLASSIFY=${RL_NAT_CLASSIFY:-$(dirname "$RINGLINK")/examples/nat_classify}
if [ -x "$CLASSIFY" ]; then
    RL_SERVER_IP=$OUT1
    rl_server_conf server "stun = \"$OUT1:5000\"" "stun_alt_address = \"$OUT2\"" >/dev/null
    rl_start_server server out
    rl_wait_until 10 rl_server_listening out || rl_fail "ringlink server listens in out"
    eim="behind_nat=true mapping=EndpointIndependent"
    edm="behind_nat=true mapping=EndpointDependent"
    check "classifier: fullcone" classified fullcone "$eim filtering=EndpointIndependent delta=Equal"
    check "classifier: restricted" classified restricted "$eim filtering=AddressDependent delta=Equal"
    check "classifier: portrestricted" classified portrestricted "$eim filtering=AddressAndPortDependent delta=Equal"
    check "classifier: seq" classified seq "$edm filtering=AddressAndPortDependent delta=Independent(1)"
    check "classifier: random" classified random "$edm filtering=AddressAndPortDependent delta=Random"
    check "classifier: masq (not mistaken for symmetric)" classified masq "$eim filtering=AddressAndPortDependent delta=Equal"
else
    rl_fail "no classifier at $CLASSIFY (cargo build --release --example nat_classify, or cargo test --release)"
fi
rl_finish
