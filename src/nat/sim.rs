//! Test-only simulated NATs and an RFC 5780 STUN server, so the classifier
//! and the schedules can be checked against each behaviour without sockets.

use std::collections::{HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddrV4};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::schedule::PORT_LOW;

/// How a simulated NAT picks the port of a new mapping.
#[derive(Debug, Clone, Copy)]
pub enum Alloc {
    /// Keep the local port.
    Preserve,
    /// Local port + a fixed offset.
    Offset(u16),
    /// A counter stepping by `step` per new mapping.
    Sequential { next: u16, step: u16 },
    /// Uniform over the range (Linux `masquerade random`).
    Random,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filter {
    Open,
    Address,
    AddressAndPort,
}

pub struct SimNat {
    public: Ipv4Addr,
    /// false: no NAT at all, addresses pass unchanged.
    translate: bool,
    per_destination: bool,
    filter: Filter,
    alloc: Alloc,
    rng: StdRng,
    mappings: HashMap<(SocketAddrV4, Option<SocketAddrV4>), u16>,
    used: HashSet<u16>,
    /// (mapped port, remote endpoint) pairs that went out.
    contacted: HashSet<(u16, SocketAddrV4)>,
    /// false: a bare Linux masquerade router, whose missing input firewall
    /// lets an unsolicited datagram leave a conntrack entry behind.
    firewall: bool,
    /// (mapped port, remote) pairs such entries hold: our own flow from
    /// that port to that remote would clash, so it gets another port.
    clashes: HashSet<(u16, SocketAddrV4)>,
    /// Routers that forward between the host and the outside, the NAT
    /// box included: 1 for a host behind it, 0 for the NAT box itself.
    hops_inside: u8,
}

/// Whether a datagram with IP TTL `ttl` gets through `routers` routers:
/// each drops one that arrives with TTL 1 rather than forward it (Linux
/// `ip_forward`), and takes one off the rest. The last hop's own
/// delivery (to the router itself, or to a host) needs no more than 1.
pub fn passes(ttl: u8, routers: u8) -> bool {
    ttl > routers
}

impl SimNat {
    pub fn new(per_destination: bool, filter: Filter, alloc: Alloc, seed: u64) -> Self {
        Self {
            public: Ipv4Addr::new(198, 51, 100, 7),
            translate: true,
            per_destination,
            filter,
            alloc,
            rng: StdRng::seed_from_u64(seed),
            mappings: HashMap::new(),
            used: HashSet::new(),
            contacted: HashSet::new(),
            firewall: true,
            clashes: HashSet::new(),
            hops_inside: 1,
        }
    }

    /// The host runs on the NAT box itself: its datagrams are translated
    /// as they leave, without a router's forwarding in between.
    pub fn run_on_the_gateway(&mut self) {
        self.hops_inside = 0;
    }

    /// A datagram `local` → `to` sent with IP TTL `ttl`: the public
    /// source it leaves from and the TTL it leaves with, or None if it
    /// expired before the NAT translated it (no mapping is made then).
    pub fn send(
        &mut self,
        local: SocketAddrV4,
        to: SocketAddrV4,
        ttl: u8,
    ) -> Option<(SocketAddrV4, u8)> {
        if !passes(ttl, self.hops_inside) {
            return None;
        }
        Some((self.outbound(local, to), ttl - self.hops_inside))
    }

    /// Whether a datagram the NAT admitted, arriving with TTL `ttl`, gets
    /// forwarded on to the host.
    pub fn reaches_host(&self, ttl: u8) -> bool {
        passes(ttl, self.hops_inside)
    }

    /// A port-preserving port-restricted cone without an input firewall.
    pub fn bare_masquerade() -> Self {
        let mut me = Self::new(false, Filter::AddressAndPort, Alloc::Preserve, 0);
        me.firewall = false;
        me
    }

    /// The same NAT on another public address.
    pub fn at(mut self, public: Ipv4Addr) -> Self {
        self.public = public;
        self
    }

    pub fn full_cone(seed: u64) -> Self {
        Self::new(false, Filter::Open, Alloc::Random, seed)
    }
    pub fn restricted(seed: u64) -> Self {
        Self::new(false, Filter::Address, Alloc::Random, seed)
    }
    pub fn port_restricted(seed: u64) -> Self {
        Self::new(false, Filter::AddressAndPort, Alloc::Random, seed)
    }
    pub fn symmetric_sequential(seed: u64) -> Self {
        let alloc = Alloc::Sequential {
            next: 20000,
            step: 1,
        };
        Self::new(true, Filter::AddressAndPort, alloc, seed)
    }
    pub fn symmetric_random(seed: u64) -> Self {
        Self::new(true, Filter::AddressAndPort, Alloc::Random, seed)
    }
    pub fn public_ip(&self) -> Ipv4Addr {
        self.public
    }
    /// The inside endpoint a datagram from `from` to the public `port`
    /// reaches, once [`SimNat::inbound`] admitted it: the mapping to
    /// exactly `from` if there is one, else the port's endpoint-independent
    /// one.
    pub fn local_for(&self, from: SocketAddrV4, port: u16) -> Option<SocketAddrV4> {
        if !self.translate {
            return None;
        }
        let on_port = || self.mappings.iter().filter(move |(_, &p)| p == port);
        on_port()
            .find(|((_, dest), _)| *dest == Some(from))
            .or_else(|| on_port().find(|((_, dest), _)| dest.is_none()))
            .or_else(|| on_port().find(|((_, dest), _)| dest.is_some_and(|d| d.ip() == from.ip())))
            .map(|((local, _), _)| *local)
    }

    /// The port a new flow from `local` would leave from, on a cone.
    pub fn mapped_port(&self, local: SocketAddrV4) -> Option<u16> {
        self.mappings.get(&(local, None)).copied()
    }

    /// A host with a public address and no NAT or firewall.
    pub fn none() -> Self {
        let mut me = Self::new(false, Filter::Open, Alloc::Preserve, 0);
        me.translate = false;
        me
    }

    /// The public endpoint `local` → `to` leaves from.
    pub fn outbound(&mut self, local: SocketAddrV4, to: SocketAddrV4) -> SocketAddrV4 {
        if !self.translate {
            return local;
        }
        let mut key = (local, self.per_destination.then_some(to));
        if self.mappings.contains_key(&(local, Some(to))) {
            // A flow of its own: on a cone, one that clashed before keeps
            // the port it got then (its conntrack entry).
            key = (local, Some(to));
        } else if let Some(&p) = self.mappings.get(&key) {
            if self.clashes.contains(&(p, to)) {
                // The clashing port stays taken by the stale entry.
                let fresh = self.allocate_avoiding(p);
                self.used.insert(fresh);
                if self.per_destination {
                    self.mappings.insert(key, fresh);
                } else {
                    // Linux (6.18, measured in the NAT lab) then gives
                    // every later new flow of `local` that port too; flows
                    // already open keep theirs.
                    let open: Vec<SocketAddrV4> = self
                        .contacted
                        .iter()
                        .filter(|(port, _)| *port == p)
                        .map(|(_, r)| *r)
                        .collect();
                    for r in open {
                        self.mappings.entry((local, Some(r))).or_insert(p);
                    }
                    self.mappings.insert(key, fresh);
                    key = (local, Some(to));
                    self.mappings.insert(key, fresh);
                }
            }
        }
        let port = match self.mappings.get(&key) {
            Some(&p) => p,
            None => {
                let p = self.allocate(local.port());
                self.mappings.insert(key, p);
                self.used.insert(p);
                p
            }
        };
        self.contacted.insert((port, to));
        SocketAddrV4::new(self.public, port)
    }

    /// Whether a datagram from `from` to the public `port` gets in.
    pub fn inbound(&mut self, from: SocketAddrV4, port: u16) -> bool {
        if !self.translate {
            return true;
        }
        let mut sent = self.contacted.iter().filter(|(p, _)| *p == port);
        let admitted = match self.filter {
            Filter::Open => self.used.contains(&port),
            Filter::Address => sent.any(|(_, r)| r.ip() == from.ip()),
            Filter::AddressAndPort => sent.any(|(_, r)| *r == from),
        };
        if !admitted && !self.firewall {
            self.clashes.insert((port, from));
        }
        admitted
    }

    /// A port for a flow whose preserved port `taken` clashes: Linux
    /// masquerade then searches the range; one further up stands for that.
    fn allocate_avoiding(&mut self, taken: u16) -> u16 {
        let mut p = taken;
        for _ in 0..u16::MAX {
            p = p.checked_add(1).unwrap_or(PORT_LOW);
            if !self.used.contains(&p) {
                break;
            }
        }
        p
    }

    fn allocate(&mut self, local: u16) -> u16 {
        loop {
            let p = match &mut self.alloc {
                Alloc::Preserve => local,
                Alloc::Offset(o) => local.wrapping_add(*o),
                Alloc::Sequential { next, step } => {
                    let p = *next;
                    *next = next.wrapping_add(*step);
                    p
                }
                Alloc::Random => self.rng.gen_range(PORT_LOW..=u16::MAX),
            };
            // Preserving allocators keep their port even if taken: the
            // simulated sessions never clash on the full 5-tuple.
            if !self.used.contains(&p) || matches!(self.alloc, Alloc::Preserve | Alloc::Offset(_)) {
                return p;
            }
        }
    }
}

/// An RFC 5780 STUN server: a primary endpoint and optionally an other one.
pub struct SimStun {
    pub primary: SocketAddrV4,
    pub other: Option<SocketAddrV4>,
}

impl SimStun {
    pub fn two_addresses() -> Self {
        Self {
            primary: "192.0.2.1:3478".parse().unwrap(),
            other: Some("192.0.2.2:3479".parse().unwrap()),
        }
    }
    pub fn alt_port_only() -> Self {
        Self {
            primary: "192.0.2.1:3478".parse().unwrap(),
            other: Some("192.0.2.1:3479".parse().unwrap()),
        }
    }

    /// Where the answer to a request sent to `to` comes from.
    pub fn answer_from(&self, to: SocketAddrV4, ip: bool, port: bool) -> SocketAddrV4 {
        match self.other {
            None => to,
            Some(o) => SocketAddrV4::new(
                if ip { *o.ip() } else { *to.ip() },
                if port { o.port() } else { to.port() },
            ),
        }
    }
}
