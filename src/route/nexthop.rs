//! The next-hop rule (PROTOCOL §6.4, with §7's subnet wrapping in front),
//! written once. The control thread compiles it into the dataplane's
//! snapshot (`control::publish`), `ringlink status` and the simulations ask
//! it directly.

use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;

use super::subnet::SubnetRoutes;
use crate::proto::ipv4;

/// Where a packet for a VIP goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NextHop {
    /// UDP FORWARD to this CONNECTED peer (possibly the destination itself).
    Peer(Ipv4Addr),
    /// FORWARD over the WebSocket relay.
    Relay,
}

/// The decision for a packet read from TUN.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TunRoute {
    /// The subnet gateway when an sdwan route matched: the packet is
    /// wrapped in a pseudo-header addressed to it, and routed to it.
    pub wrap_for: Option<Ipv4Addr>,
    pub hop: NextHop,
}

/// Everything the rule decides on: latency routes, CONNECTED peers,
/// subnet routes, and which addresses the relay fans out.
#[derive(Clone, Debug, Default)]
pub struct NextHopTable {
    own_vip: Option<Ipv4Addr>,
    via: HashMap<Ipv4Addr, Ipv4Addr>,
    connected: HashSet<Ipv4Addr>,
    subnets: SubnetRoutes,
    directed_broadcast: Option<Ipv4Addr>,
}

impl NextHopTable {
    /// Latency routes (destination, next hop) and the CONNECTED peers.
    /// Entries whose next hop is not CONNECTED are dropped here: rule 1
    /// never uses them.
    pub fn new(
        routes: impl IntoIterator<Item = (Ipv4Addr, Ipv4Addr)>,
        connected: impl IntoIterator<Item = Ipv4Addr>,
    ) -> Self {
        let connected: HashSet<Ipv4Addr> = connected.into_iter().collect();
        let via = routes
            .into_iter()
            .filter(|(_, next)| connected.contains(next))
            .collect();
        NextHopTable {
            via,
            connected,
            ..Default::default()
        }
    }

    /// This node: a FORWARD is never passed on back to it.
    pub fn with_own_vip(mut self, vip: Ipv4Addr) -> Self {
        self.own_vip = Some(vip);
        self
    }

    /// Server-pushed subnet routes, checked before everything but
    /// broadcasts for packets read from TUN.
    pub fn with_subnets(mut self, subnets: SubnetRoutes) -> Self {
        self.subnets = subnets;
        self
    }

    /// The VIP subnet's directed broadcast, which the server fans out like
    /// 255.255.255.255 (Candy's server does for its DHCP range).
    pub fn with_directed_broadcast(mut self, addr: Ipv4Addr) -> Self {
        self.directed_broadcast = Some(addr);
        self
    }

    pub fn directed_broadcast(&self) -> Option<Ipv4Addr> {
        self.directed_broadcast
    }

    /// Addresses the relay fans out: multicast, limited broadcast and the
    /// VIP subnet's directed broadcast.
    pub fn is_broadcast(&self, d: Ipv4Addr) -> bool {
        ipv4::is_broadcast(d) || self.directed_broadcast == Some(d)
    }

    /// §6.4 for VIP `d` (v6 `sendPacket`): a table entry with a CONNECTED
    /// next hop, else direct if CONNECTED, else the relay; broadcasts
    /// always take the relay.
    pub fn lookup(&self, d: Ipv4Addr) -> NextHop {
        if self.is_broadcast(d) {
            return NextHop::Relay;
        }
        if let Some(&n) = self.via.get(&d) {
            return NextHop::Peer(n);
        }
        if self.connected.contains(&d) {
            return NextHop::Peer(d);
        }
        NextHop::Relay
    }

    /// A packet read from TUN: broadcasts go to the relay as they are; a
    /// destination behind a subnet route is wrapped for its gateway and
    /// follows the gateway's next hop (§7); anything else follows its own.
    pub fn tun_route(&self, daddr: Ipv4Addr) -> TunRoute {
        if self.is_broadcast(daddr) {
            return TunRoute {
                wrap_for: None,
                hop: NextHop::Relay,
            };
        }
        let wrap_for = self.subnets.lookup(daddr).map(|r| r.next_hop);
        TunRoute {
            wrap_for,
            hop: self.lookup(wrap_for.unwrap_or(daddr)),
        }
    }

    /// For a UDP FORWARD that is not ours to deliver. v6 re-runs the full
    /// selection including the relay fallback, making any node an open
    /// relay and letting loops spill onto the server (PROTOCOL §10.15);
    /// like v5 we only pass it on along a peer path, never back to
    /// ourselves, and drop otherwise.
    pub fn relay_lookup(&self, d: Ipv4Addr) -> Option<Ipv4Addr> {
        match self.lookup(d) {
            NextHop::Peer(n) if Some(n) != self.own_vip => Some(n),
            _ => None,
        }
    }

    /// Every VIP whose decision can be other than the relay: what a
    /// per-destination table needs keys for.
    pub fn destinations(&self) -> impl Iterator<Item = Ipv4Addr> + '_ {
        self.connected.iter().copied().chain(
            self.via
                .keys()
                .copied()
                .filter(|d| !self.connected.contains(d)),
        )
    }

    /// Subnet routes in the order they are matched, with their decision.
    pub fn subnet_routes(
        &self,
    ) -> impl Iterator<Item = (&super::subnet::SubnetRoute, TunRoute)> + '_ {
        self.subnets.longest_first().map(|r| {
            let route = TunRoute {
                wrap_for: Some(r.next_hop),
                hop: self.lookup(r.next_hop),
            };
            (r, route)
        })
    }
}

/// One line of `ringlink status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RouteStatus {
    pub dst: Ipv4Addr,
    pub next_hop: Ipv4Addr,
    /// Sum of link RTTs plus relaying nodes' costs, in ms.
    pub metric: u32,
    /// Smoothed RTT of our link to `next_hop`, in ms.
    pub next_hop_rtt_ms: Option<u32>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::subnet::SubnetRoute;

    fn ip(d: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 0, 0, d)
    }

    fn lan(c: u8, d: u8) -> Ipv4Addr {
        Ipv4Addr::new(172, 16, c, d)
    }

    /// Own VIP 1; 2 and 4 CONNECTED; 3 reached via 2; 4's route names 9,
    /// which is not CONNECTED; 172.16.2/24 behind 3, 172.16/16 behind 6.
    fn table() -> NextHopTable {
        let mut subnets = SubnetRoutes::new(ip(1));
        let mask = |p: u32| Ipv4Addr::from(u32::MAX << (32 - p));
        subnets.push(SubnetRoute::new(lan(0, 0), mask(16), ip(6)).unwrap());
        subnets.push(SubnetRoute::new(lan(2, 0), mask(24), ip(3)).unwrap());
        NextHopTable::new(
            [(ip(3), ip(2)), (ip(4), ip(9)), (ip(2), ip(2))],
            [ip(1), ip(2), ip(4)],
        )
        .with_own_vip(ip(1))
        .with_subnets(subnets)
        .with_directed_broadcast(ip(255))
    }

    #[test]
    fn via_peer_then_direct_then_relay() {
        let t = table();
        // Relayed path beats a direct one when the table says so.
        assert_eq!(t.lookup(ip(3)), NextHop::Peer(ip(2)));
        // Next hop 9 is not CONNECTED: fall back to direct.
        assert_eq!(t.lookup(ip(4)), NextHop::Peer(ip(4)));
        assert_eq!(t.lookup(ip(5)), NextHop::Relay);
    }

    #[test]
    fn every_broadcast_takes_the_relay_unwrapped() {
        let t = table();
        let relay = TunRoute {
            wrap_for: None,
            hop: NextHop::Relay,
        };
        for b in [ip(255), Ipv4Addr::BROADCAST, Ipv4Addr::new(224, 0, 0, 251)] {
            assert_eq!(t.lookup(b), NextHop::Relay, "{b}");
            assert_eq!(t.tun_route(b), relay, "{b}");
            assert_eq!(t.relay_lookup(b), None, "{b}");
        }
        // Inside a subnet route too: the relay fans out, no gateway does.
        let mut subnets = SubnetRoutes::new(ip(1));
        subnets
            .push(SubnetRoute::new(Ipv4Addr::UNSPECIFIED, Ipv4Addr::UNSPECIFIED, ip(2)).unwrap());
        let t = table().with_subnets(subnets);
        assert_eq!(t.tun_route(ip(255)), relay);
        assert_eq!(t.tun_route(Ipv4Addr::new(8, 8, 8, 8)).wrap_for, Some(ip(2)));
    }

    #[test]
    fn subnet_traffic_is_wrapped_and_follows_its_gateway() {
        let t = table();
        // The /24 behind 3 wins over the /16 behind 6; 3 is reached via 2.
        assert_eq!(
            t.tun_route(lan(2, 9)),
            TunRoute {
                wrap_for: Some(ip(3)),
                hop: NextHop::Peer(ip(2)),
            }
        );
        // Gateway 6 has no direct path: wrapped, then relayed.
        assert_eq!(
            t.tun_route(lan(7, 1)),
            TunRoute {
                wrap_for: Some(ip(6)),
                hop: NextHop::Relay,
            }
        );
        assert_eq!(
            t.tun_route(ip(4)),
            TunRoute {
                wrap_for: None,
                hop: NextHop::Peer(ip(4)),
            }
        );
        let order: Vec<_> = t
            .subnet_routes()
            .map(|(r, d)| (r.next_hop, d.hop))
            .collect();
        assert_eq!(
            order,
            [(ip(3), NextHop::Peer(ip(2))), (ip(6), NextHop::Relay)]
        );
    }

    #[test]
    fn relaying_never_uses_the_relay_or_loops_to_self() {
        let t = table();
        assert_eq!(t.relay_lookup(ip(3)), Some(ip(2)));
        assert_eq!(t.relay_lookup(ip(5)), None);
        assert_eq!(t.relay_lookup(ip(1)), None);
        let mut keys: Vec<_> = t.destinations().collect();
        keys.sort();
        assert_eq!(keys, [ip(1), ip(2), ip(3), ip(4)]);
    }
}
