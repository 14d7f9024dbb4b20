//! All peers of one node, the node-wide tick, and the caller-facing API.

use std::collections::{BTreeMap, VecDeque};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use crate::nat::{Advertised, Method, NatKind};
use crate::proto::udp::Nonce;
use crate::proto::Ipv4Cidr;
use crate::rng::SplitMix64;

use super::action::{Action, Ignored, Outcome};
use super::machine::{Env, Peer};
use super::state::PeerState;
use super::timers::{Timers, TimersError};

/// Node-wide settings of the peer logic (PROTOCOL.md §8 keys that matter here).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerConfig {
    /// This node's VIP.
    pub vip: Ipv4Addr,
    /// Whether this node attempts direct paths at all.
    pub p2p: bool,
    /// `stun=` is set. Without it there is no public endpoint, so P2P is off.
    pub stun: bool,
    /// `discovery=`: broadcast DISCOVERY every this many ticks; 0 = off.
    pub discovery_ticks: u32,
    /// Own LAN candidate (`localhost=` or first interface, : UDP port).
    pub lan_candidate: Option<SocketAddrV4>,
    /// Upper bound on tracked peers: any member can make us create entries
    /// (relayed packets carry arbitrary source VIPs), so memory must be capped.
    pub max_peers: usize,
    pub timers: Timers,
    /// Act on entering a state (STUN on PREPARING, heartbeats on CONNECTING
    /// and CONNECTED, an immediate ack to a first heartbeat) rather than on
    /// the next tick: about 3 s less to CONNECTED, same messages. Off gives
    /// Candy v6's exact timing.
    pub eager: bool,
    /// Seeds the challenge nonces (production: from the OS).
    pub seed: u64,
    /// Anyone can reach this node's UDP port (`public_endpoint`): the
    /// method table then has peers open the path towards it.
    pub reachable: bool,
}

impl PeerConfig {
    pub fn new(vip: Ipv4Addr) -> Self {
        PeerConfig {
            vip,
            p2p: true,
            stun: true,
            discovery_ticks: 0,
            lan_candidate: None,
            max_peers: 16_384,
            timers: Timers::default(),
            eager: false,
            seed: 0,
            reachable: false,
        }
    }
}

/// A point-in-time view of one peer, for `ringlink status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerStatus {
    pub vip: Ipv4Addr,
    pub state: PeerState,
    /// Path in use (`real`).
    pub path: Option<SocketAddrV4>,
    pub wide: Option<SocketAddrV4>,
    pub local: Option<SocketAddrV4>,
    pub last_heartbeat: Option<Instant>,
    /// When the current state was (re-)assigned.
    pub since: Instant,
    pub retry: Duration,
    /// The peer speaks ringlink's extensions (its paths are challenged).
    pub ringlink: bool,
    /// Attempts at a direct path so far.
    pub attempts: u32,
    /// How long the attempt that reached CONNECTED took.
    pub time_to_direct: Option<Duration>,
    /// What the peer said about its NAT.
    pub nat: Option<Advertised>,
    /// The method of the current or last attempt (ringlink peers).
    pub method: Option<Method>,
}

impl From<&Peer> for PeerStatus {
    fn from(p: &Peer) -> Self {
        PeerStatus {
            vip: p.vip(),
            state: p.state(),
            path: p.real(),
            wide: p.wide(),
            local: p.local(),
            last_heartbeat: p.last_heartbeat(),
            since: p.last_active(),
            retry: p.retry(),
            ringlink: p.ringlink(),
            attempts: p.attempts(),
            time_to_direct: p.time_to_direct(),
            nat: p.nat(),
            method: p.method(),
        }
    }
}

/// The sans-IO peer layer of one node. Feed it events with the current
/// `Instant`, call [`handle_timeout`](Self::handle_timeout) when
/// [`poll_timeout`](Self::poll_timeout) is reached, and drain
/// [`poll_action`](Self::poll_action) after every call.
#[derive(Debug)]
pub struct PeerManager {
    cfg: PeerConfig,
    // Ordered so that a tick emits actions in the same order on every run.
    peers: BTreeMap<Ipv4Addr, Peer>,
    actions: VecDeque<Action>,
    next_tick: Instant,
    ticks: u64,
    tunnelled: Vec<Ipv4Cidr>,
    own_nat: Option<NatKind>,
    /// The peer whose hard-NAT round holds the node's one slot, if any.
    slot: Option<Ipv4Addr>,
    rng: SplitMix64,
}

impl PeerManager {
    /// The first tick is one tick period after `now`.
    pub fn new(cfg: PeerConfig, now: Instant) -> Result<Self, TimersError> {
        cfg.timers.validate()?;
        Ok(PeerManager {
            next_tick: now + cfg.timers.tick,
            peers: BTreeMap::new(),
            actions: VecDeque::new(),
            ticks: 0,
            tunnelled: Vec::new(),
            own_nat: None,
            slot: None,
            rng: SplitMix64::new(cfg.seed),
            cfg,
        })
    }

    pub fn config(&self) -> &PeerConfig {
        &self.cfg
    }

    /// Next instant at which [`handle_timeout`](Self::handle_timeout) must run.
    /// Always set: the tick also drives discovery and is cheap.
    pub fn poll_timeout(&self) -> Option<Instant> {
        Some(self.next_tick)
    }

    /// Next queued action, oldest first.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// One hard-NAT round (a spray, birthday sockets, an observation that
    /// the peer predicts from) per node at a time: a router's session table
    /// is shared by everything behind it, and behind a sequential NAT
    /// another round's sessions would move the port a peer is predicting.
    /// A peer may start one when no other peer's round is running.
    fn slot_free_for(&self, vip: Ipv4Addr, now: Instant) -> bool {
        match self.slot {
            Some(holder) if holder != vip => {
                !self.peers.get(&holder).is_some_and(|p| p.holds_slot(now))
            }
            _ => true,
        }
    }

    /// After a call into `vip`'s machine: it may have taken the slot, or
    /// given it up (its path is proven), and then a waiting peer starts its
    /// round now rather than on the next tick.
    fn note_slot(&mut self, vip: Ipv4Addr, now: Instant) {
        if self.peers.get(&vip).is_some_and(|p| p.holds_slot(now)) {
            self.slot = Some(vip);
            return;
        }
        if self.slot != Some(vip) {
            return;
        }
        self.slot = None;
        let waiting: Vec<Ipv4Addr> = self
            .peers
            .iter()
            .filter(|(&v, p)| v != vip && p.waits_for_slot())
            .map(|(&v, _)| v)
            .collect();
        for v in waiting {
            if self.slot.is_some() {
                break;
            }
            let env = env_of(&self.cfg, &self.tunnelled, self.own_nat, true);
            if let Some(p) = self.peers.get_mut(&v) {
                p.resume(now, env, &mut self.actions);
                if p.holds_slot(now) {
                    self.slot = Some(v);
                }
            }
        }
    }

    /// Runs the tick if it is due. A late call runs one tick and skips the
    /// missed ones: bursts of stale heartbeats would help nobody.
    pub fn handle_timeout(&mut self, now: Instant) {
        if now < self.next_tick {
            return;
        }
        while self.next_tick <= now {
            self.next_tick += self.cfg.timers.tick;
        }
        self.tick(now);
    }

    fn tick(&mut self, now: Instant) {
        self.ticks += 1;
        let mut want_stun = false;
        let vips: Vec<Ipv4Addr> = self.peers.keys().copied().collect();
        for vip in vips {
            want_stun |= self
                .with_peer(vip, now, |p, env, out| p.tick(now, env, out))
                .unwrap_or(false);
        }
        if want_stun && self.cfg.stun {
            self.actions.push_back(Action::StunRequest);
        }
        let every = u64::from(self.cfg.discovery_ticks);
        if every > 0 && self.cfg.stun && self.ticks.is_multiple_of(every) {
            self.actions.push_back(Action::DiscoveryBroadcast);
        }
    }

    fn check_vip(&self, vip: Ipv4Addr) -> Result<(), Ignored> {
        if vip == self.cfg.vip {
            return Err(Ignored::OwnVip);
        }
        if vip.is_unspecified() || vip.is_broadcast() || vip.is_multicast() {
            return Err(Ignored::InvalidVip);
        }
        Ok(())
    }

    /// Finds or creates the peer, enforcing the cap; the only way entries are made.
    fn ensure_peer(&mut self, vip: Ipv4Addr, now: Instant) -> Result<(), Ignored> {
        self.check_vip(vip)?;
        if self.peers.contains_key(&vip) {
            return Ok(());
        }
        if self.peers.len() >= self.cfg.max_peers {
            return Err(Ignored::TooManyPeers {
                limit: self.cfg.max_peers,
            });
        }
        let seed = self.rng.next_u64();
        self.peers.insert(
            vip,
            Peer::new(vip, now, &self.cfg.timers, self.cfg.eager, seed),
        );
        Ok(())
    }

    fn with_peer<R>(
        &mut self,
        vip: Ipv4Addr,
        now: Instant,
        f: impl FnOnce(&mut Peer, Env<'_>, &mut VecDeque<Action>) -> R,
    ) -> Option<R> {
        let slot_free = self.slot_free_for(vip, now);
        let env = env_of(&self.cfg, &self.tunnelled, self.own_nat, slot_free);
        let peer = self.peers.get_mut(&vip)?;
        let r = f(peer, env, &mut self.actions);
        self.note_slot(vip, now);
        Some(r)
    }

    /// try-P2P: a FORWARD relayed over WS arrived with this source VIP.
    pub fn handle_relayed_packet(&mut self, src: Ipv4Addr, now: Instant) -> Outcome {
        self.try_p2p(src, now)
    }

    /// WS DISCOVERY from `src`; `broadcast` when its dst was 255.255.255.255.
    pub fn handle_discovery(&mut self, src: Ipv4Addr, broadcast: bool, now: Instant) -> Outcome {
        if let Err(why) = self.check_vip(src) {
            return Outcome::Ignored(why);
        }
        if broadcast {
            self.actions.push_back(Action::DiscoveryReply { peer: src });
        }
        self.try_p2p(src, now)
    }

    /// The seed's try-P2P trigger; creates the peer if needed.
    pub fn try_p2p(&mut self, vip: Ipv4Addr, now: Instant) -> Outcome {
        if let Err(why) = self.ensure_peer(vip, now) {
            return Outcome::Ignored(why);
        }
        self.with_peer(vip, now, |p, env, out| p.try_p2p(now, env, out));
        Outcome::Accepted
    }

    /// `vip` is reached off the relay (TCP): a FAILED attempt is retried
    /// after the back-off (`Peer::retry_failed`).
    pub fn retry_failed(&mut self, vip: Ipv4Addr, now: Instant) {
        self.with_peer(vip, now, |p, env, out| p.retry_failed(now, env, out));
    }

    /// WS UDP4CONN from `src` carrying its public endpoint (dst already
    /// checked against own VIP by the caller); `ringlink` when it carried
    /// ringlink's marker.
    pub fn handle_public_info(
        &mut self,
        src: Ipv4Addr,
        public: SocketAddrV4,
        ringlink: bool,
        nat: Option<Advertised>,
        now: Instant,
    ) -> Outcome {
        if !endpoint_valid(public) {
            return Outcome::Ignored(Ignored::InvalidEndpoint);
        }
        // The responder learns of the initiator only through this message (§5.5).
        if let Err(why) = self.ensure_peer(src, now) {
            return Outcome::Ignored(why);
        }
        self.with_peer(src, now, |p, env, out| {
            p.on_public_info(public, ringlink, nat, now, env, out)
        });
        Outcome::Accepted
    }

    /// WS GENERAL/0 from `src` carrying its LAN endpoint.
    pub fn handle_lan_info(&mut self, src: Ipv4Addr, lan: SocketAddrV4, now: Instant) -> Outcome {
        if !endpoint_valid(lan) {
            return Outcome::Ignored(Ignored::InvalidEndpoint);
        }
        if let Err(why) = self.ensure_peer(src, now) {
            return Outcome::Ignored(why);
        }
        self.with_peer(src, now, |p, _, _| p.on_lan_info(lan));
        Outcome::Accepted
    }

    /// A STUN binding response told us our public endpoint.
    pub fn handle_stun_response(&mut self, own_public: SocketAddrV4, now: Instant) -> Outcome {
        if !endpoint_valid(own_public) {
            return Outcome::Ignored(Ignored::InvalidEndpoint);
        }
        let vips: Vec<Ipv4Addr> = self.peers.keys().copied().collect();
        for vip in vips {
            self.with_peer(vip, now, |p, env, out| p.on_stun(own_public, now, env, out));
        }
        Outcome::Accepted
    }

    /// The fresh socket of `peer`'s attempt is mapped at `mapped` (its
    /// STUN answer); the caller announces it to the peer.
    pub fn handle_own_fresh(&mut self, peer: Ipv4Addr, mapped: SocketAddrV4, now: Instant) {
        self.with_peer(peer, now, |p, env, out| {
            p.on_own_fresh(mapped, now, env, out)
        });
    }

    /// A decrypted UDP HEARTBEAT naming `tunip` arrived from `from`;
    /// `marked` when it carried ringlink's marker.
    pub fn handle_heartbeat(
        &mut self,
        from: SocketAddrV4,
        tunip: Ipv4Addr,
        ack: bool,
        marked: bool,
        now: Instant,
    ) -> Outcome {
        self.with_known(from, tunip, now, |p, env, out| {
            p.on_heartbeat(from, ack, marked, now, env, out)
        })
    }

    /// A decrypted UDP PING from `tunip` arrived from `from`.
    pub fn handle_ping(
        &mut self,
        from: SocketAddrV4,
        tunip: Ipv4Addr,
        nonce: Nonce,
        now: Instant,
    ) -> Outcome {
        self.with_known(from, tunip, now, |p, env, out| {
            p.on_ping(from, nonce, now, env, out)
        })
    }

    /// A decrypted UDP PONG from `tunip` arrived from `from`.
    pub fn handle_pong(
        &mut self,
        from: SocketAddrV4,
        tunip: Ipv4Addr,
        nonce: &Nonce,
        now: Instant,
    ) -> Outcome {
        self.with_known(from, tunip, now, |p, env, out| {
            p.on_pong(from, nonce, now, env, out)
        })
    }

    /// The checks every datagram naming a peer passes before it reaches
    /// that peer; datagrams never create peers (only the server's
    /// introductions and relayed traffic do).
    fn with_known(
        &mut self,
        from: SocketAddrV4,
        tunip: Ipv4Addr,
        now: Instant,
        f: impl FnOnce(&mut Peer, Env<'_>, &mut VecDeque<Action>) -> Outcome,
    ) -> Outcome {
        if tunip == self.cfg.vip {
            return Outcome::Ignored(Ignored::OwnVip);
        }
        if !endpoint_valid(from) {
            return Outcome::Ignored(Ignored::InvalidEndpoint);
        }
        self.with_peer(tunip, now, f)
            .unwrap_or(Outcome::Ignored(Ignored::UnknownPeer))
    }

    /// No path may run over these: the virtual network and the subnets the
    /// tunnel carries (set again whenever the server pushes routes). This
    /// replaces Candy's rule of ignoring every private source once subnet
    /// routes exist, which kept gateways on a private WAN from going direct.
    pub fn set_tunnelled(&mut self, cidrs: Vec<Ipv4Cidr>) {
        self.tunnelled = cidrs;
    }

    /// This node's published NAT classification: the method for each
    /// attempt from now on is chosen with it.
    pub fn set_own_nat(&mut self, kind: Option<NatKind>) {
        self.own_nat = kind;
    }

    pub fn peer(&self, vip: Ipv4Addr) -> Option<PeerStatus> {
        self.peers.get(&vip).map(PeerStatus::from)
    }

    pub fn peers(&self) -> impl Iterator<Item = PeerStatus> + '_ {
        self.peers.values().map(PeerStatus::from)
    }

    pub fn len(&self) -> usize {
        self.peers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }

    pub fn state(&self, vip: Ipv4Addr) -> Option<PeerState> {
        self.peers.get(&vip).map(Peer::state)
    }

    /// Ticks run so far (discovery counts these).
    #[cfg(test)]
    pub fn ticks(&self) -> u64 {
        self.ticks
    }
}

// A free function so callers can borrow `cfg` while mutating `peers`.
fn env_of<'a>(
    cfg: &'a PeerConfig,
    tunnelled: &'a [Ipv4Cidr],
    own_nat: Option<NatKind>,
    slot_free: bool,
) -> Env<'a> {
    Env {
        timers: &cfg.timers,
        p2p: cfg.p2p && cfg.stun,
        lan_candidate: cfg.lan_candidate,
        tunnelled,
        own_nat,
        own_reachable: cfg.reachable,
        own_vip: cfg.vip,
        slot_free,
    }
}

fn endpoint_valid(ep: SocketAddrV4) -> bool {
    !ep.ip().is_unspecified() && ep.port() != 0
}
