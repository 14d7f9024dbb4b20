//! Compiling the next-hop rule (`route::NextHopTable`) into the snapshot
//! the dataplane follows: per destination, the decision made in advance,
//! with the peer's endpoint, key and counters in the entry itself.

use std::collections::HashMap;
use std::net::Ipv4Addr;

use crate::dataplane::{PeerEntry, Sealer, Snapshot, SubnetHop, TunHop};
use crate::route::{NextHop, NextHopTable, TunRoute};

/// The snapshot for `rule`, whose peer hops are the `direct` peers. A hop
/// to a peer missing from `direct` (the rule and the paths disagree for a
/// moment) takes the relay, sealed when `seals` has a session for the node
/// the packet is for.
pub fn compile(
    generation: u64,
    own_vip: Ipv4Addr,
    rule: &NextHopTable,
    direct: HashMap<Ipv4Addr, PeerEntry>,
    seals: &HashMap<Ipv4Addr, Sealer>,
) -> Snapshot {
    let peer = |n: Ipv4Addr| direct.get(&n).cloned();
    // `d` is the packet's destination; the node it is for is the gateway
    // when the packet is wrapped, else `d` itself.
    let tun_hop = |d: Ipv4Addr, r: TunRoute| {
        let (peer, via) = match r.hop {
            NextHop::Peer(n) => {
                let p = peer(n);
                let via = p.is_some() && n != r.wrap_for.unwrap_or(d);
                (p, via)
            }
            NextHop::Relay => (None, false),
        };
        let relay_seal = match peer {
            Some(_) => None,
            None => seals.get(&r.wrap_for.unwrap_or(d)).cloned(),
        };
        TunHop {
            wrap_for: r.wrap_for,
            peer,
            via,
            relay_seal,
        }
    };
    let mut tun = HashMap::new();
    let mut forward = HashMap::new();
    if let Some(b) = rule.directed_broadcast() {
        tun.insert(b, TunHop::RELAY);
    }
    // Nodes with a session are destinations too: relayed, they are sealed.
    let mut dests: Vec<Ipv4Addr> = rule.destinations().chain(seals.keys().copied()).collect();
    dests.sort_unstable();
    dests.dedup();
    for d in dests {
        let hop = tun_hop(d, rule.tun_route(d));
        if hop != TunHop::RELAY {
            tun.insert(d, hop);
        }
        if let Some(p) = rule.relay_lookup(d).and_then(peer) {
            forward.insert(d, p);
        }
    }
    let subnets = rule
        .subnet_routes()
        .map(|(r, decision)| SubnetHop {
            net: r.dst,
            mask: r.mask,
            hop: tun_hop(r.dst, decision),
        })
        .collect();
    Snapshot {
        generation,
        own_vip,
        direct,
        tun,
        forward,
        subnets,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::crypto::{CipherKind, PeerKey};
    use crate::route::{SubnetRoute, SubnetRoutes};
    use std::net::SocketAddrV4;
    use std::sync::Arc;

    fn ip(d: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 0, 0, d)
    }

    fn entry(d: u8) -> PeerEntry {
        PeerEntry {
            endpoint: SocketAddrV4::new(Ipv4Addr::new(203, 0, 113, d), 4000),
            socket: None,
            channel: None,
            stream: None,
            key: Arc::new(PeerKey::new(CipherKind::Aes256Gcm, &[d; 32])),
            session: None,
            counters: Arc::default(),
        }
    }

    /// The workers' one lookup gives what the rule gives, for VIPs with
    /// every kind of decision, LAN addresses and broadcasts.
    #[test]
    fn compiled_table_agrees_with_the_rule() {
        let mask = |p: u32| Ipv4Addr::from(u32::MAX.checked_shl(32 - p).unwrap_or(0));
        let mut subnets = SubnetRoutes::new(ip(1));
        for (net, p, gw) in [
            (Ipv4Addr::new(172, 16, 0, 0), 16, ip(6)),
            (Ipv4Addr::new(172, 16, 2, 0), 24, ip(3)),
            (Ipv4Addr::new(10, 0, 0, 64), 26, ip(4)),
            (Ipv4Addr::UNSPECIFIED, 0, ip(2)),
        ] {
            subnets.push(SubnetRoute::new(net, mask(p), gw).unwrap());
        }
        // 2 and 4 direct (and 7, which the router has not heard of yet);
        // 3 via 2; 5 via 9, which is not direct.
        let rule = NextHopTable::new([(ip(3), ip(2)), (ip(5), ip(9))], [ip(2), ip(4)])
            .with_own_vip(ip(1))
            .with_subnets(subnets)
            .with_directed_broadcast(ip(255));
        let direct: HashMap<_, _> = [2, 4, 7].map(|d| (ip(d), entry(d))).into();
        let snap = compile(7, ip(1), &rule, direct.clone(), &HashMap::new());
        assert_eq!((snap.generation, snap.own_vip), (7, ip(1)));
        let addrs = (0..=255).map(ip).chain([
            Ipv4Addr::new(172, 16, 2, 9),
            Ipv4Addr::new(172, 16, 9, 9),
            Ipv4Addr::new(8, 8, 8, 8),
            Ipv4Addr::new(224, 0, 0, 251),
            Ipv4Addr::BROADCAST,
        ]);
        for a in addrs {
            let r = rule.tun_route(a);
            let got = snap.route_tun(a);
            assert_eq!(got.wrap_for, r.wrap_for, "tun {a}");
            let want_peer = match r.hop {
                NextHop::Peer(n) => direct.get(&n).cloned(),
                NextHop::Relay => None,
            };
            assert_eq!(got.peer, want_peer, "tun {a}");
            let fwd = rule.relay_lookup(a).and_then(|n| direct.get(&n));
            assert_eq!(snap.forward_hop(a), fwd, "forward {a}");
        }
        // The cases the rule is about, spelled out.
        let peer_of = |a: Ipv4Addr| snap.route_tun(a).peer.as_ref().map(|p| p.endpoint);
        assert_eq!(peer_of(ip(3)), Some(entry(2).endpoint), "via a peer");
        // What the traffic counters call "via": the peer is not the node
        // the packet is for (the destination, or the gateway it is wrapped for).
        let via = |a: Ipv4Addr| snap.route_tun(a).via;
        assert!(!via(ip(2)) && !via(ip(4)), "direct peers");
        assert!(!via(ip(65)), "a subnet behind direct 4");
        assert!(via(Ipv4Addr::new(172, 16, 2, 9)), "3's subnet through 2");
        // The default subnet route wraps every other VIP for gateway 2.
        assert!(!via(ip(3)) && !via(ip(5)), "wrapped for direct 2");
        let plain = NextHopTable::new([(ip(3), ip(2))], [ip(2)]).with_own_vip(ip(1));
        let snap_plain = compile(1, ip(1), &plain, direct.clone(), &HashMap::new());
        assert!(snap_plain.route_tun(ip(3)).via, "3 through 2");
        assert!(!snap_plain.route_tun(ip(2)).via, "2 itself");
        let multicast = Ipv4Addr::new(224, 0, 0, 251);
        assert!(!via(ip(255)) && !via(multicast), "the relay is never via");
        // 5's hop is not direct, so the default route behind 2 catches it.
        assert_eq!(snap.forward_hop(ip(5)), None, "hop not direct");
        assert_eq!(snap.route_tun(ip(5)).wrap_for, Some(ip(2)));
        assert_eq!(
            snap.route_tun(ip(255)),
            &TunHop::RELAY,
            "directed broadcast"
        );
        assert_eq!(
            snap.route_tun(ip(65)).wrap_for,
            Some(ip(4)),
            "VIP in a subnet"
        );
        let lan = snap.route_tun(Ipv4Addr::new(172, 16, 2, 9));
        assert_eq!(lan.wrap_for, Some(ip(3)), "longest prefix");
        assert_eq!(
            lan.peer.as_ref().map(|p| p.endpoint),
            Some(entry(2).endpoint)
        );
        assert_eq!(snap.forward_hop(ip(1)), None, "never back to ourselves");
    }

    /// Relayed packets for a node with a session are sealed with it: for
    /// its own VIP and for the subnets it is the gateway of; direct hops,
    /// broadcasts and nodes without a session keep the plain relay.
    #[test]
    fn relay_hops_to_nodes_with_sessions_are_sealed() {
        use crate::proto::crypto::CipherKind;
        use crate::session::transport::{Role, Session, SessionKeys};
        let s = |vip| {
            let k = [9u8; 32];
            let keys = SessionKeys { send: &k, recv: &k };
            let now = std::time::Instant::now();
            Sealer(Arc::new(Session::new(
                vip,
                (1, 2),
                Role::Initiator,
                CipherKind::Aes256Gcm,
                keys,
                now,
            )))
        };
        let mut subnets = SubnetRoutes::new(ip(1));
        subnets.push(
            SubnetRoute::new(
                Ipv4Addr::new(172, 16, 3, 0),
                Ipv4Addr::new(255, 255, 255, 0),
                ip(3),
            )
            .unwrap(),
        );
        let rule = NextHopTable::new([], [ip(2)])
            .with_own_vip(ip(1))
            .with_subnets(subnets)
            .with_directed_broadcast(ip(255));
        let direct: HashMap<_, _> = [(ip(2), entry(2))].into();
        let seals: HashMap<_, _> = [2, 3].map(|d| (ip(d), s(ip(d)))).into();
        let snap = compile(1, ip(1), &rule, direct, &seals);
        let seal_of = |a| snap.route_tun(a).relay_seal.as_ref().map(|x| x.0.peer);
        assert_eq!(seal_of(ip(3)), Some(ip(3)), "relayed to 3, sealed for 3");
        assert_eq!(
            seal_of(Ipv4Addr::new(172, 16, 3, 9)),
            Some(ip(3)),
            "3's subnet"
        );
        assert_eq!(seal_of(ip(2)), None, "direct: the entry seals");
        assert_eq!(seal_of(ip(4)), None, "no session with 4");
        assert_eq!(seal_of(ip(255)), None, "broadcast");
        assert_eq!(seal_of(Ipv4Addr::new(224, 0, 0, 251)), None, "multicast");
    }
}
