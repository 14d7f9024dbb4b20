# shellcheck shell=bash
# NAT lab (issue 13): routers of each NAT behaviour, built with nftables in
# namespaces this script creates. Source it after lib.sh (it uses rl_attach,
# rl_link, rl_sysctl, rl_router_firewall, rl_exec).
#
# Addresses: the "internet" is $NL_WAN.0/24 (default 10.200.0). Outside
# hosts (servers, probes) sit on the switch sw; router <i> is
# $NL_WAN.(20+i), not on the switch but on a link of its own to the core
# router nl_core ($NL_WAN.254), with LAN 10.201.<i>.0/24: router .1, its one
# inside host .2. So any two NAT routers are one routed hop apart, as two
# sites are (several hops) on the internet: a datagram's TTL counts between
# them, and a primer (nat/schedule.rs) expires at the core. The core
# answers ARP on the switch for the routers' addresses (proxy ARP), so
# outside hosts keep seeing one /24.
#
# Kinds (RFC 4787 terms; all but `masq` with rl_router_firewall, the home
# router input firewall that drops new inbound to the router itself):
#   fullcone        EIM / EIF: masquerade (keeps the source port when
#                   free) + every inbound UDP port ≥ 1024 forwarded to the
#                   host: the port-preserving full cone.
#   restricted      EIM / ADF: masquerade + a dynamic set of (remote IP,
#                   mapped port) filled from outbound packets after NAT;
#                   inbound from any port of a listed IP is forwarded.
#   portrestricted  EIM / APDF: masquerade; conntrack only admits replies.
#   seq             symmetric, sequential: each new UDP session gets the
#                   next port of 20000–20511 from a counter (snat to
#                   WAN:numgen inc), so the mapping depends on the
#                   destination and steps by 1.
#   random          symmetric, random: masquerade random.
#   masq            bare masquerade without the input firewall (the
#                   commonest Linux gateway; EIM / APDF, except that an
#                   endpoint whose datagram arrived before ours leaves a
#                   conntrack entry, and our flow to it gets another port).
# Limits: one inside host per router (fullcone and restricted forward to
# it); EIM holds while masquerade can keep the source port (a clash makes
# Linux pick another port for that flow, and on 6.18 for every later new
# flow of the same socket: the bare-masquerade case of issue 13).

NL_WAN="${NL_WAN:-10.200.0}"
NL_KINDS=(fullcone restricted portrestricted seq random masq)
declare -A NL_IDX=()

# The sequential router's ports: 20000, 20001, … then round again.
NL_SEQ_PORTS=512
nl_seq_map() {
    local k out=""
    for ((k = 0; k < NL_SEQ_PORTS; k++)); do out+="$k : $((20000 + k)), "; done
    printf '%s' "${out%, }"
}

nl_router_wan() { printf '%s.%s' "$NL_WAN" "$((20 + NL_IDX[$1]))"; }
nl_host_ip() { printf '10.201.%s.2' "${NL_IDX[$1]}"; }

NL_CORE_IP="$NL_WAN.254"

# nl_world : the switch (outside hosts attach to it) and the core router
# on it (routers link to the core).
nl_world() {
    rl_switch
    rl_attach nl_core "$NL_CORE_IP/24"
    rl_sysctl nl_core net.ipv4.ip_forward=1
    rl_sysctl nl_core net.ipv4.conf.eth0.proxy_arp=1
    # Answer at once: the default holds a proxied ARP reply up to 0.8 s.
    rl_sysctl nl_core net.ipv4.neigh.eth0.proxy_delay=0
}

# nl_router <name> <kind> <index> : router namespace nr_<name> and inside
# host nh_<name>, the router's NAT built as <kind> behaves.
nl_router() {
    local name=$1 kind=$2 i=$3
    local r="nr_$name" h="nh_$name"
    NL_IDX[$name]=$i
    local wan lan="10.201.$i" host
    wan=$(nl_router_wan "$name"); host=$(nl_host_ip "$name")
    # The WAN link to the core: /32 at both ends (the core's address on
    # every such link), routed by hand.
    rl_link "$r" eth0 "$wan/32" nl_core "w$i" "$NL_CORE_IP/32"
    ip -n "$(rl_ns "$r")" route add "$NL_CORE_IP" dev eth0
    ip -n "$(rl_ns "$r")" route add default via "$NL_CORE_IP" dev eth0
    ip -n "$(rl_ns nl_core)" route add "$wan/32" dev "w$i"
    rl_link "$r" lan0 "$lan.1/24" "$h" eth0 "$lan.2/24"
    ip -n "$(rl_ns "$h")" route add default via "$lan.1"
    rl_sysctl "$r" net.ipv4.ip_forward=1
    local post pre="" extra=""
    case $kind in
        fullcone)
            post="masquerade"
            pre="iifname \"eth0\" udp dport 1024-65535 dnat ip to $host" ;;
        restricted)
            post="masquerade"
            extra="set contacted { type ipv4_addr . inet_service; flags dynamic,timeout; timeout 180s; }
    chain learn {
        type filter hook postrouting priority 110; policy accept;
        oifname \"eth0\" meta l4proto udp update @contacted { ip daddr . udp sport }
    }"
            pre="iifname \"eth0\" meta l4proto udp ip saddr . udp dport @contacted dnat ip to $host" ;;
        portrestricted|masq) post="masquerade" ;;
        # UDP from the counter, anything else (pings) plain masquerade.
        # The counter goes through a map: a bare `numgen … offset` lands in
        # the port in host byte order (steps of 256 on x86).
        seq) post="meta l4proto udp snat ip to $wan : numgen inc mod $NL_SEQ_PORTS map { $(nl_seq_map) }
        oifname \"eth0\" ip saddr $lan.0/24 masquerade" ;;
        random) post="masquerade random" ;;
        *) rl_die "nl_router: unknown kind $kind" ;;
    esac
    rl_exec "$r" nft -f - <<EOF2 || rl_die "nft nat ($kind) on $r"
table ip nl_nat {
    $extra
    chain post {
        type nat hook postrouting priority srcnat; policy accept;
        oifname "eth0" ip saddr $lan.0/24 $post
    }
    chain pre {
        type nat hook prerouting priority dstnat; policy accept;
        $pre
    }
}
EOF2
    [ "$kind" = masq ] || rl_router_firewall "$r" eth0
}

# nl_lab : the switch and one router of every kind, named after its kind.
nl_lab() {
    local k i=1
    nl_world
    for k in "${NL_KINDS[@]}"; do
        nl_router "$k" "$k" "$i"
        i=$((i + 1))
    done
}
