//! The table the control thread publishes and workers follow.
//!
//! Immutable once published: the control thread builds a new `Snapshot` and
//! swaps it in; a worker loads it once per batch, so it never takes a lock or
//! sees a half-updated table.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::proto::crypto::PeerKey;
use crate::route::is_broadcast_or_multicast;
use crate::route::subnet::SubnetRoutes;

/// Traffic over one peer's direct path, summed over all workers.
///
/// Shared by every worker, so workers add to it once per batch and peer,
/// not per packet. Bytes are IPv4 packet bytes (including an sdwan
/// pseudo-header), not UDP payload bytes, so they compare with relay
/// traffic.
#[derive(Debug, Default)]
pub struct PeerCounters {
    pub tx_packets: AtomicU64,
    pub tx_bytes: AtomicU64,
    pub rx_packets: AtomicU64,
    pub rx_bytes: AtomicU64,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PeerCounterSnapshot {
    pub tx_packets: u64,
    pub tx_bytes: u64,
    pub rx_packets: u64,
    pub rx_bytes: u64,
}

impl PeerCounters {
    pub fn snapshot(&self) -> PeerCounterSnapshot {
        let r = |a: &AtomicU64| a.load(Ordering::Relaxed);
        PeerCounterSnapshot {
            tx_packets: r(&self.tx_packets),
            tx_bytes: r(&self.tx_bytes),
            rx_packets: r(&self.rx_packets),
            rx_bytes: r(&self.rx_bytes),
        }
    }

    pub(crate) fn add(&self, d: &PeerCounterSnapshot) {
        let add = |a: &AtomicU64, v: u64| {
            if v != 0 {
                a.fetch_add(v, Ordering::Relaxed);
            }
        };
        add(&self.tx_packets, d.tx_packets);
        add(&self.tx_bytes, d.tx_bytes);
        add(&self.rx_packets, d.rx_packets);
        add(&self.rx_bytes, d.rx_bytes);
    }
}

/// A peer with a direct (CONNECTED) path.
///
/// The key is derived once, when the control thread learns the peer, and
/// the counters outlive snapshots: the control thread carries the same
/// `Arc`s into the next snapshot so totals survive republishing.
#[derive(Debug, Clone)]
pub struct PeerEntry {
    pub endpoint: SocketAddrV4,
    /// The peer's own key, `K(peer VIP)`: what we seal with.
    pub key: Arc<PeerKey>,
    pub counters: Arc<PeerCounters>,
}

#[derive(Debug, Clone)]
pub struct Snapshot {
    /// Bumped by the publisher; lets workers and tests tell tables apart.
    pub generation: u64,
    /// This node's virtual IP; 0.0.0.0 until the server assigns one, which
    /// makes every FORWARD a relay hop with nowhere to go (dropped).
    pub own_vip: Ipv4Addr,
    /// Peers with a direct (CONNECTED) path.
    pub direct: HashMap<Ipv4Addr, PeerEntry>,
    /// Latency routing: final destination VIP → next-hop VIP (must be in
    /// `direct` to be used).
    pub next_hops: HashMap<Ipv4Addr, Ipv4Addr>,
    /// Server-pushed subnet routes (site-to-site).
    pub subnets: SubnetRoutes,
}

impl Default for Snapshot {
    fn default() -> Self {
        Snapshot {
            generation: 0,
            own_vip: Ipv4Addr::UNSPECIFIED,
            direct: HashMap::new(),
            next_hops: HashMap::new(),
            subnets: SubnetRoutes::default(),
        }
    }
}

/// Where a packet read from TUN goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TunRoute {
    /// The subnet gateway VIP when an sdwan route matched: the packet must
    /// be wrapped in a pseudo-header addressed to it.
    pub wrap_for: Option<Ipv4Addr>,
    /// `Some(peer)` for a direct UDP send to `peer`, `None` for the relay.
    pub next_hop: Option<Ipv4Addr>,
}

impl Snapshot {
    /// PROTOCOL §6.4 selection: a latency route whose next hop is direct,
    /// else the destination itself if direct, else the relay (`None`).
    /// Broadcast and multicast always take the relay, which fans out.
    pub fn next_hop(&self, dest: Ipv4Addr) -> Option<Ipv4Addr> {
        if is_broadcast_or_multicast(dest) {
            return None;
        }
        if let Some(&via) = self.next_hops.get(&dest) {
            if self.direct.contains_key(&via) {
                return Some(via);
            }
        }
        self.direct.contains_key(&dest).then_some(dest)
    }

    /// The decision for a packet read from TUN with destination `daddr`.
    pub fn route_tun(&self, daddr: Ipv4Addr) -> TunRoute {
        if is_broadcast_or_multicast(daddr) {
            return TunRoute {
                wrap_for: None,
                next_hop: None,
            };
        }
        let wrap_for = self.subnets.lookup(daddr).map(|r| r.next_hop);
        TunRoute {
            wrap_for,
            next_hop: self.next_hop(wrap_for.unwrap_or(daddr)),
        }
    }

    /// Next hop for a FORWARD received over UDP that is not for us. Never
    /// the relay: like v5 (and unlike v6) a node passes others' traffic on
    /// only along a direct path, so it cannot be used as an open relay onto
    /// the server. Never back to ourselves either.
    pub fn relay_hop(&self, daddr: Ipv4Addr) -> Option<Ipv4Addr> {
        self.next_hop(daddr).filter(|&n| n != self.own_vip)
    }

    pub fn endpoint(&self, vip: Ipv4Addr) -> Option<SocketAddrV4> {
        self.direct.get(&vip).map(|p| p.endpoint)
    }
}

/// Shared, atomically swappable snapshot.
#[derive(Debug, Clone, Default)]
pub struct SharedSnapshot(Arc<ArcSwap<Snapshot>>);

impl SharedSnapshot {
    pub fn new(initial: Snapshot) -> Self {
        SharedSnapshot(Arc::new(ArcSwap::from_pointee(initial)))
    }

    /// Replace the table seen by every worker from its next batch on.
    pub fn publish(&self, snapshot: Snapshot) {
        self.0.store(Arc::new(snapshot));
    }

    /// Current table; cheap enough to call once per batch.
    pub fn load(&self) -> Arc<Snapshot> {
        self.0.load_full()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::crypto::CipherKind;
    use crate::route::subnet::SubnetRoute;

    fn ip(d: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 0, 0, d)
    }

    fn entry(port: u16) -> PeerEntry {
        PeerEntry {
            endpoint: SocketAddrV4::new(Ipv4Addr::new(203, 0, 113, 1), port),
            key: Arc::new(PeerKey::new(CipherKind::Aes256Gcm, &[7; 32])),
            counters: Arc::default(),
        }
    }

    fn table() -> Snapshot {
        let mut s = Snapshot {
            generation: 1,
            own_vip: ip(1),
            subnets: SubnetRoutes::new(ip(1)),
            ..Default::default()
        };
        s.direct.insert(ip(2), entry(2));
        s.direct.insert(ip(4), entry(4));
        // 3 is reached through 2; 4's table entry names a hop that is not
        // direct, so 4 falls back to its own direct path; 5 only via 9.
        s.next_hops.insert(ip(3), ip(2));
        s.next_hops.insert(ip(4), ip(9));
        s.next_hops.insert(ip(5), ip(9));
        s.subnets.push(
            SubnetRoute::new(
                Ipv4Addr::new(172, 16, 2, 0),
                Ipv4Addr::new(255, 255, 255, 0),
                ip(3),
            )
            .unwrap(),
        );
        s.subnets.push(
            SubnetRoute::new(
                Ipv4Addr::new(172, 16, 7, 0),
                Ipv4Addr::new(255, 255, 255, 0),
                ip(6),
            )
            .unwrap(),
        );
        s
    }

    #[test]
    fn next_hop_selection_follows_v6_order() {
        let s = table();
        assert_eq!(s.next_hop(ip(2)), Some(ip(2)));
        assert_eq!(s.next_hop(ip(3)), Some(ip(2)));
        assert_eq!(s.next_hop(ip(4)), Some(ip(4)));
        assert_eq!(s.next_hop(ip(5)), None);
        assert_eq!(s.next_hop(ip(8)), None);
        assert_eq!(s.next_hop(Ipv4Addr::BROADCAST), None);
        assert_eq!(s.next_hop(Ipv4Addr::new(224, 0, 0, 251)), None);
    }

    #[test]
    fn tun_route_wraps_subnet_traffic_for_its_gateway() {
        let s = table();
        let lan = Ipv4Addr::new(172, 16, 2, 9);
        assert_eq!(
            s.route_tun(lan),
            TunRoute {
                wrap_for: Some(ip(3)),
                next_hop: Some(ip(2)),
            }
        );
        // Gateway 6 has no direct path: wrapped, then relayed.
        assert_eq!(
            s.route_tun(Ipv4Addr::new(172, 16, 7, 1)),
            TunRoute {
                wrap_for: Some(ip(6)),
                next_hop: None,
            }
        );
        assert_eq!(
            s.route_tun(ip(4)),
            TunRoute {
                wrap_for: None,
                next_hop: Some(ip(4)),
            }
        );
        assert_eq!(
            s.route_tun(Ipv4Addr::new(239, 1, 1, 1)),
            TunRoute {
                wrap_for: None,
                next_hop: None,
            }
        );
    }

    #[test]
    fn relay_hop_never_uses_the_relay_or_loops_to_self() {
        let mut s = table();
        assert_eq!(s.relay_hop(ip(3)), Some(ip(2)));
        assert_eq!(s.relay_hop(ip(8)), None);
        s.direct.insert(ip(1), entry(1));
        assert_eq!(s.relay_hop(ip(1)), None);
    }

    #[test]
    fn publish_replaces_for_all_holders() {
        let a = SharedSnapshot::default();
        let b = a.clone();
        assert_eq!(b.load().generation, 0);
        let old = b.load();
        a.publish(table());
        assert_eq!(b.load().generation, 1);
        assert_eq!(b.load().endpoint(ip(2)).map(|e| e.port()), Some(2));
        assert_eq!(old.endpoint(ip(2)), None);
    }

    #[test]
    fn peer_counters_add_and_snapshot() {
        let c = PeerCounters::default();
        let d = PeerCounterSnapshot {
            tx_packets: 2,
            tx_bytes: 300,
            rx_packets: 1,
            rx_bytes: 60,
        };
        c.add(&d);
        c.add(&d);
        assert_eq!(
            c.snapshot(),
            PeerCounterSnapshot {
                tx_packets: 4,
                tx_bytes: 600,
                rx_packets: 2,
                rx_bytes: 120,
            }
        );
    }
}
