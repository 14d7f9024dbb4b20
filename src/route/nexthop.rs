//! Next-hop selection (PROTOCOL §6.4) as an immutable snapshot the control
//! thread publishes and dataplane workers read without locks.

use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;

/// Where a packet for a VIP goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NextHop {
    /// UDP FORWARD to this CONNECTED peer (possibly the destination itself).
    Peer(Ipv4Addr),
    /// FORWARD over the WebSocket relay.
    Relay,
}

/// Multicast and limited broadcast always take the relay, which fans out.
pub fn is_broadcast_or_multicast(d: Ipv4Addr) -> bool {
    d.is_multicast() || d.is_broadcast()
}

#[derive(Clone, Debug, Default)]
pub struct NextHopTable {
    via: HashMap<Ipv4Addr, Ipv4Addr>,
    connected: HashSet<Ipv4Addr>,
    directed_broadcast: Option<Ipv4Addr>,
}

impl NextHopTable {
    /// Table entries whose next hop is not CONNECTED are dropped here, so
    /// rule 1's check costs nothing per packet; the snapshot is rebuilt on
    /// every connectivity change anyway.
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
            directed_broadcast: None,
        }
    }

    /// The VIP subnet's directed broadcast, which the server fans out like
    /// 255.255.255.255 when it has a DHCP range.
    pub fn with_directed_broadcast(mut self, addr: Ipv4Addr) -> Self {
        self.directed_broadcast = Some(addr);
        self
    }

    /// v6 `sendPacket`: table entry with a CONNECTED next hop, else direct if
    /// CONNECTED, else relay.
    pub fn lookup(&self, d: Ipv4Addr) -> NextHop {
        if is_broadcast_or_multicast(d) || self.directed_broadcast == Some(d) {
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

    /// Destinations reached through another peer, with that peer.
    pub fn routes(&self) -> impl Iterator<Item = (Ipv4Addr, Ipv4Addr)> + '_ {
        self.via.iter().map(|(&d, &n)| (d, n))
    }

    /// For a UDP FORWARD that is not ours to deliver. v6 re-runs the full
    /// selection including the relay fallback, making any node an open
    /// relay and letting loops spill onto the server (PROTOCOL §10.15);
    /// like v5 we only pass it on along a peer path, and drop otherwise.
    pub fn relay_lookup(&self, d: Ipv4Addr) -> Option<Ipv4Addr> {
        match self.lookup(d) {
            NextHop::Peer(n) => Some(n),
            NextHop::Relay => None,
        }
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

    fn ip(d: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 0, 0, d)
    }

    #[test]
    fn selection_order() {
        let t = NextHopTable::new(
            [(ip(3), ip(2)), (ip(4), ip(9)), (ip(2), ip(2))],
            [ip(2), ip(4)],
        )
        .with_directed_broadcast(ip(255));
        // Relayed path beats a direct one when the table says so.
        assert_eq!(t.lookup(ip(3)), NextHop::Peer(ip(2)));
        // Next hop 9 is not CONNECTED: fall back to direct.
        assert_eq!(t.lookup(ip(4)), NextHop::Peer(ip(4)));
        assert_eq!(t.lookup(ip(5)), NextHop::Relay);
        assert_eq!(t.lookup(ip(255)), NextHop::Relay);
        assert_eq!(t.lookup(Ipv4Addr::BROADCAST), NextHop::Relay);
        assert_eq!(t.lookup(Ipv4Addr::new(224, 0, 0, 251)), NextHop::Relay);
        assert_eq!(t.relay_lookup(ip(5)), None);
        assert_eq!(t.relay_lookup(ip(3)), Some(ip(2)));
    }
}
