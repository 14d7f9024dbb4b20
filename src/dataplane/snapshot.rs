//! The table the control thread publishes and workers follow.
//!
//! Immutable once published: the control thread builds a new `Snapshot` and
//! swaps it in; a worker loads it once per batch, so it never takes a lock or
//! sees a half-updated table.

use std::collections::{HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;

use super::stream::LocalStream;
use crate::proto::crypto::PeerKey;
use crate::proto::ipv4;
use crate::session::transport::Session;

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

/// A UDP socket of this node's besides the workers' own (which share one
/// port): opened for one hard-NAT attempt. Its NAT mapping is its own, so a
/// path punched through it must send from it, and every worker receives on
/// every socket a snapshot lists.
#[derive(Debug, Clone)]
pub struct LocalSocket {
    /// Nonzero, unique among the sockets of one node; what upcalls name.
    pub id: u16,
    pub fd: Arc<OwnedFd>,
}

impl PartialEq for LocalSocket {
    fn eq(&self, o: &Self) -> bool {
        self.id == o.id && Arc::ptr_eq(&self.fd, &o.fd)
    }
}

impl Eq for LocalSocket {}

/// Upcalls name the socket a datagram arrived on: this one is every
/// worker's own, on the shared port.
pub const MAIN_SOCKET: u16 = 0;
/// The id of the TURN allocation's socket; attempt sockets never take it.
pub const TURN_SOCKET: u16 = u16::MAX;

/// A ringlink peer's current session, which seals what goes to it. Equal
/// when it is the same session object.
#[derive(Debug, Clone)]
pub struct Sealer(pub Arc<Session>);

impl PartialEq for Sealer {
    fn eq(&self, o: &Self) -> bool {
        Arc::ptr_eq(&self.0, &o.0)
    }
}

impl Eq for Sealer {}

/// A peer with a direct (CONNECTED) path.
///
/// The key is derived once, when the control thread learns the peer, and
/// the counters outlive snapshots: the control thread carries the same
/// `Arc`s into the next snapshot so totals survive republishing.
#[derive(Debug, Clone)]
pub struct PeerEntry {
    pub endpoint: SocketAddrV4,
    /// The socket the path was punched from; `None`: the shared port.
    /// For a path through TURN, the allocation's socket.
    pub socket: Option<LocalSocket>,
    /// The TURN channel bound to the peer: `endpoint` is then the TURN
    /// server, and every datagram goes out led by the ChannelData header.
    pub channel: Option<u16>,
    /// The direct TCP stream to the peer: every datagram goes out on it
    /// as a frame, and `endpoint` is its other end.
    pub stream: Option<LocalStream>,
    /// The peer's own key, `K(peer VIP)`: what we seal with when there
    /// is no session (a stock Candy peer, or before the handshake).
    pub key: Arc<PeerKey>,
    /// The session with a ringlink peer, which seals instead of `key`.
    pub session: Option<Sealer>,
    pub counters: Arc<PeerCounters>,
}

impl PartialEq for PeerEntry {
    /// Keys have no observable value; the same key object is the same peer.
    fn eq(&self, o: &Self) -> bool {
        self.endpoint == o.endpoint
            && self.socket == o.socket
            && self.channel == o.channel
            && self.stream == o.stream
            && Arc::ptr_eq(&self.key, &o.key)
            && self.session == o.session
            && Arc::ptr_eq(&self.counters, &o.counters)
    }
}

impl Eq for PeerEntry {}

/// The published forwarding table: the next-hop rule (`route::NextHopTable`,
/// PROTOCOL §6.4 and §7) compiled by the control thread into entries that
/// *are* the peer, so a worker does one lookup per packet.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// Bumped by the publisher; lets workers and tests tell tables apart.
    pub generation: u64,
    /// This node's virtual IP; 0.0.0.0 until the server assigns one, which
    /// makes every FORWARD a relay hop with nowhere to go (dropped).
    pub own_vip: Ipv4Addr,
    /// Peers with a direct (CONNECTED) path, by VIP: whose counters a
    /// delivered packet adds to.
    pub direct: HashMap<Ipv4Addr, PeerEntry>,
    /// A packet read from TUN for one of these VIPs: the decision, made in
    /// advance. Holds every VIP whose decision is other than "relay as is",
    /// and the VIP network's directed broadcast (relay as is), which a
    /// subnet route must not catch.
    pub tun: HashMap<Ipv4Addr, TunHop>,
    /// A FORWARD for another node: the direct peer to pass it on to.
    /// Absent: dropped (never the relay, never back to ourselves).
    pub forward: HashMap<Ipv4Addr, PeerEntry>,
    /// For TUN destinations not in `tun`: subnet routes, longest prefix
    /// first, each with its gateway's decision.
    pub subnets: Vec<SubnetHop>,
    /// Sockets besides the shared port that workers receive on.
    pub sockets: Vec<LocalSocket>,
    /// Every live session with a ringlink peer, by the index the peer puts
    /// in its datagrams: what opens them.
    pub sessions: HashMap<u32, Arc<Session>>,
    /// Peers that seal with us: traffic claiming to come from them that is
    /// not sealed with a session is refused.
    pub protected: HashSet<Ipv4Addr>,
    /// TURN allocations, by the id of the socket each lives on: what a
    /// worker unwraps ChannelData with.
    pub turn: HashMap<u16, TurnSocket>,
    /// Direct TCP streams, proven or not: each is read by its owner
    /// worker, and what it carries for the control thread goes up named
    /// by the stream's id.
    pub streams: Vec<LocalStream>,
}

/// A TURN allocation as the dataplane sees it: ChannelData from `server`
/// on its socket carries the datagrams of the peers bound to channels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TurnSocket {
    pub server: SocketAddrV4,
    /// Bound channels and the peer address each was bound to (the peer's
    /// relayed or public address): what an upcall names as the sender, so
    /// the control thread tells paths apart as it does direct ones.
    pub channels: HashMap<u16, SocketAddrV4>,
}

impl Default for Snapshot {
    fn default() -> Self {
        Snapshot {
            generation: 0,
            own_vip: Ipv4Addr::UNSPECIFIED,
            direct: HashMap::new(),
            tun: HashMap::new(),
            forward: HashMap::new(),
            subnets: Vec::new(),
            sockets: Vec::new(),
            sessions: HashMap::new(),
            protected: HashSet::new(),
            turn: HashMap::new(),
            streams: Vec::new(),
        }
    }
}

/// Where a packet read from TUN goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunHop {
    /// The subnet gateway VIP when an sdwan route matched: the packet must
    /// be wrapped in a pseudo-header addressed to it.
    pub wrap_for: Option<Ipv4Addr>,
    /// The peer for a direct UDP send, `None` for the relay.
    pub peer: Option<PeerEntry>,
    /// `peer` passes the packet on to the node it is for (a latency route
    /// through another node): what the traffic counters call "via".
    pub via: bool,
    /// Over the relay to a ringlink peer with a session: sealed with it, so
    /// the server sees ciphertext.
    pub relay_seal: Option<Sealer>,
}

impl TunHop {
    /// Unwrapped, over the relay.
    pub const RELAY: TunHop = TunHop {
        wrap_for: None,
        peer: None,
        via: false,
        relay_seal: None,
    };
}

/// [`TunHop::RELAY`] to lend out: a session in the type keeps the constant
/// from being promoted to a static by itself.
static RELAY_HOP: TunHop = TunHop::RELAY;

/// A subnet route, compiled: LAN destinations in `net/prefix` are wrapped
/// for `hop.wrap_for` and sent to `hop.peer`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubnetHop {
    pub net: Ipv4Addr,
    pub mask: Ipv4Addr,
    pub hop: TunHop,
}

impl SubnetHop {
    fn contains(&self, addr: Ipv4Addr) -> bool {
        u32::from(addr) & u32::from(self.mask) == u32::from(self.net)
    }
}

impl Snapshot {
    /// The decision for a packet read from TUN with destination `daddr`.
    /// Peer traffic is one hash lookup; a miss is multicast or limited
    /// broadcast (the relay fans out), a LAN address behind a subnet
    /// route, or relay traffic, in the order the rule checks them.
    pub fn route_tun(&self, daddr: Ipv4Addr) -> &TunHop {
        if let Some(hop) = self.tun.get(&daddr) {
            return hop;
        }
        if ipv4::is_broadcast(daddr) {
            return &RELAY_HOP;
        }
        self.subnets
            .iter()
            .find(|s| s.contains(daddr))
            .map_or(&RELAY_HOP, |s| &s.hop)
    }

    /// Whether `daddr` is for every node: multicast, limited broadcast or
    /// the virtual network's directed broadcast (the one `tun` entry that
    /// says "relay as is").
    pub fn is_broadcast(&self, daddr: Ipv4Addr) -> bool {
        ipv4::is_broadcast(daddr) || self.tun.get(&daddr) == Some(&TunHop::RELAY)
    }

    /// The peer to pass a FORWARD for `daddr` (not us) on to.
    pub fn forward_hop(&self, daddr: Ipv4Addr) -> Option<&PeerEntry> {
        self.forward.get(&daddr)
    }

    /// Add a peer reached directly and by no other route, as the publisher
    /// compiles rule 2 of §6.4.
    #[cfg(test)]
    pub(crate) fn add_direct_peer(&mut self, vip: Ipv4Addr, entry: PeerEntry) {
        let hop = TunHop {
            wrap_for: None,
            peer: Some(entry.clone()),
            via: false,
            relay_seal: None,
        };
        self.tun.insert(vip, hop);
        if vip != self.own_vip {
            self.forward.insert(vip, entry.clone());
        }
        self.direct.insert(vip, entry);
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

    fn ip(d: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 0, 0, d)
    }

    fn entry(port: u16) -> PeerEntry {
        PeerEntry {
            endpoint: SocketAddrV4::new(Ipv4Addr::new(203, 0, 113, 1), port),
            socket: None,
            channel: None,
            stream: None,
            key: Arc::new(PeerKey::new(CipherKind::Aes256Gcm, &[7; 32])),
            session: None,
            counters: Arc::default(),
        }
    }

    fn table() -> Snapshot {
        let mut s = Snapshot {
            generation: 1,
            own_vip: ip(1),
            ..Default::default()
        };
        s.tun.insert(ip(255), TunHop::RELAY);
        s.add_direct_peer(ip(1), entry(1));
        s.add_direct_peer(ip(2), entry(2));
        let via_gateway = TunHop {
            wrap_for: Some(ip(2)),
            peer: Some(entry(2)),
            via: false,
            relay_seal: None,
        };
        s.subnets.push(SubnetHop {
            net: Ipv4Addr::new(172, 16, 2, 0),
            mask: Ipv4Addr::new(255, 255, 255, 0),
            hop: via_gateway,
        });
        s.subnets.push(SubnetHop {
            net: Ipv4Addr::UNSPECIFIED,
            mask: Ipv4Addr::UNSPECIFIED,
            hop: TunHop {
                wrap_for: Some(ip(6)),
                peer: None,
                via: false,
                relay_seal: None,
            },
        });
        s
    }

    #[test]
    fn tun_lookup_is_the_table_then_broadcasts_then_subnets() {
        let s = table();
        assert_eq!(s.route_tun(ip(2)).peer.as_ref(), s.direct.get(&ip(2)));
        assert_eq!(s.route_tun(ip(2)).wrap_for, None);
        assert_eq!(
            s.route_tun(Ipv4Addr::new(172, 16, 2, 9)).wrap_for,
            Some(ip(2))
        );
        // The default route would catch them, but broadcasts take the relay
        // as they are.
        for b in [ip(255), Ipv4Addr::BROADCAST, Ipv4Addr::new(239, 1, 1, 1)] {
            assert_eq!(s.route_tun(b), &TunHop::RELAY, "{b}");
        }
        assert_eq!(s.route_tun(ip(8)).wrap_for, Some(ip(6)));
        assert_eq!(s.route_tun(ip(8)).peer, None);
    }

    #[test]
    fn forward_never_loops_to_self() {
        let s = table();
        assert_eq!(s.forward_hop(ip(2)), Some(&entry_of(&s, 2)));
        assert_eq!(s.forward_hop(ip(1)), None);
        assert_eq!(s.forward_hop(ip(8)), None);
    }

    fn entry_of(s: &Snapshot, d: u8) -> PeerEntry {
        s.direct[&ip(d)].clone()
    }

    #[test]
    fn publish_replaces_for_all_holders() {
        let a = SharedSnapshot::default();
        let b = a.clone();
        assert_eq!(b.load().generation, 0);
        let old = b.load();
        a.publish(table());
        assert_eq!(b.load().generation, 1);
        assert_eq!(b.load().direct[&ip(2)].endpoint.port(), 2);
        assert!(old.direct.is_empty());
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
