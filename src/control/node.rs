//! The node's peer-to-peer brain on the control thread: it feeds the sans-IO
//! peer state machines (`crate::peer`) and the router (`crate::route`) with
//! what arrives from the server and from UDP, and turns what they ask for
//! (heartbeats, STUN, endpoint exchange, probes, advertisements, a new
//! dataplane table) into [`Output`]s.
//!
//! Sans-IO in the manner of quinn-proto: the caller passes bytes, events
//! and `now`, drains [`Node::poll_output`] after every call and carries the
//! outputs out (see `control::driver`), and sleeps until
//! [`Node::next_deadline`]. The node owns no socket, channel or clock, and
//! its randomness (STUN transaction ids, IV prefixes) comes from the seed
//! it was built with, so a simulation replays exactly.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Instant;

use thiserror::Error;
use tracing::{debug, info, warn};

use crate::counters::counters;
use crate::dataplane::frame::{self, OpenError};
use crate::dataplane::{
    LocalSocket, LocalStream, PeerCounters, PeerEntry, Snapshot, MAIN_SOCKET, TURN_SOCKET,
};
use crate::nat::{self, Advertised, NatClass, StableClass};
use crate::peer::{
    Action, BirthdayRole, FreshSpray, Outcome, PeerConfig, PeerManager, PeerState, TimersError,
};
use crate::proto::crypto::{CipherKind, IvSequence, PeerKey, ENVELOPE_LEN};
use crate::proto::ext::{NatAdvert, Tail};
use crate::proto::udp::{ty, Heartbeat, PeerMessage, Ping, Pong};
use crate::proto::ws::{
    self, encode_local_conn, Discovery, General, PeerConn, SysRoute, TurnTransport, WsMessage,
};
use crate::proto::{stun, Ipv4Cidr};
use crate::rng::SplitMix64;
use crate::route::{self, NextHop, NextHopTable, RouteConfig, Router, SubnetRoute, SubnetRoutes};
use crate::session::handshake::HandshakeStats;
use crate::session::keys::PublicKey;
use crate::session::transport::DATAGRAM_HEADER_LEN;
use crate::turn::{channel, TurnUrl};

use super::publish;
use super::punch::{Opened, ProbeKind, Punch, Wanted};
use super::secure::{Identity, Secure};
use super::server_clock::ServerClock;
use super::status::{PeerLine, RouteLine};
use super::tcp_path::TcpPaths;
use super::turn::TurnSource;
use super::turn_link::{Need, TurnLink};
use super::turn_path::TurnOutput;
use super::turn_stream::Bridge;

mod tcp;
mod why;

/// What the node was built with.
pub struct NodeConfig {
    pub own: Ipv4Cidr,
    pub password: Vec<u8>,
    pub cipher: CipherKind,
    pub stun: Option<SocketAddrV4>,
    /// `public_endpoint`: announced instead of the STUN mapping.
    pub public_endpoint: Option<SocketAddrV4>,
    pub peer: PeerConfig,
    pub route: RouteConfig,
    /// Seeds STUN transaction ids and IV prefixes.
    pub seed: u64,
    /// The node key, the pins and the handshake timers.
    pub identity: Identity,
    /// The client's `turn` key; without it, the server's TURN_OFFER.
    pub turn: Option<TurnUrl>,
    /// Where our TCP listener is reached (`public_endpoint`, when the
    /// listener is up): offered to peers without a direct UDP path.
    pub tcp_offer: Option<SocketAddrV4>,
}

#[derive(Debug, Error)]
pub enum NodeError {
    #[error("peer timers: {0}")]
    Timers(#[from] TimersError),
    #[error("routing: {0}")]
    Route(#[from] route::RouteConfigError),
}

/// One thing for the caller to do, in the order the node decided it.
#[derive(Debug)]
pub enum Output {
    /// Send `datagram` to `to`, from the shared data port or from `via`,
    /// with IP TTL `ttl` when given (a primer), else the system's.
    /// Peer messages are already sealed; STUN requests go as they are.
    Datagram {
        to: SocketAddrV4,
        via: Option<LocalSocket>,
        datagram: Vec<u8>,
        ttl: Option<u8>,
    },
    /// Open `count` fresh UDP sockets on ephemeral ports for a hard-NAT
    /// attempt and hand them to [`Node::on_sockets_opened`].
    OpenSockets { count: usize },
    /// Resolve the TURN server's name to an IPv4 address and hand it to
    /// [`Node::on_turn_resolved`]. Over a stream transport: a bridge to the
    /// server, answered by [`Node::on_turn_bridge`].
    ResolveTurn {
        host: String,
        port: u16,
        transport: TurnTransport,
    },
    /// Open one UDP socket for the TURN allocation and hand it to
    /// [`Node::on_turn_socket`].
    OpenTurnSocket,
    /// Open a TCP stream to `to` for `peer` and hand it to
    /// [`Node::on_stream_connected`] (or [`Node::on_stream_connect_failed`]).
    Connect { peer: Ipv4Addr, to: SocketAddrV4 },
    /// Send this sealed datagram on the stream, as a frame.
    StreamFrame {
        stream: LocalStream,
        datagram: Vec<u8>,
    },
    /// Shut this stream down (the snapshot no longer lists it).
    CloseStream(LocalStream),
    /// A TCP hole punch: at `at`, connect from local `port` to `to` (and
    /// keep trying for a few seconds), then hand the stream to
    /// [`Node::on_stream_connected`] (or report the failure).
    Punch {
        peer: Ipv4Addr,
        port: u16,
        to: SocketAddrV4,
        at: Instant,
    },
    /// Send this frame to the server (only emitted while the link is up).
    ServerFrame(Vec<u8>),
    /// Publish this table to the dataplane workers.
    Publish(Box<Snapshot>),
    /// Install these server-pushed subnet routes in the kernel.
    InstallRoutes(Vec<SysRoute>),
    /// Replace the pins file with this text (a key was pinned on first use).
    SavePins(String),
}

counters! {
    /// What the node dropped, and what its hard-NAT attempts spent, for
    /// `ringlink status` and `/metrics`.
    plain NodeStats {
        /// Peer events the state machines refused (`peer::Ignored`).
        ignored_events,
        /// Server frames and peer messages that did not decode.
        malformed,
        /// Frames for the server not sent because the link was down.
        ws_dropped,
        /// STUN responses from another host or for no request of ours.
        stun_ignored,
        /// Probes of hard-NAT attempts sent (birthday, prediction sprays,
        /// fresh ports), paced at 200/s.
        punch_probes,
        /// Sockets opened for hard-NAT attempts (256 per birthday, one per
        /// fresh port).
        punch_sockets,
        /// Control messages (heartbeats, pings, probes, adverts) refused
        /// because they claimed a peer that seals with us and came without
        /// its session, or came in one peer's session naming another.
        unsealed_refused,
        /// TURN allocations and per-pair TURN paths that ended in an error
        /// (refused, timed out, unanswered challenges).
        turn_failures,
        /// TURN datagrams refused: bad STUN from the TURN server, or a
        /// PING through a channel that is not the named peer's.
        turn_refused,
        /// Direct TCP paths that ended or could not start (connect failed,
        /// challenges unanswered, stream closed or broken).
        tcp_failures,
        /// Streams and stream messages refused: too many streams, a PING
        /// on another peer's stream, a message not in its peer's session.
        tcp_refused,
    }
}

/// How a table entry reaches a peer: the peer, the endpoint, and the
/// socket, TURN channel or stream the path goes through.
type Route = (
    Ipv4Addr,
    SocketAddrV4,
    Option<LocalSocket>,
    Option<u16>,
    Option<LocalStream>,
);

pub struct Node {
    own: Ipv4Addr,
    network: Ipv4Cidr,
    password: Vec<u8>,
    cipher: CipherKind,
    peers: PeerManager,
    router: Router,
    /// Sealing keys of the peers we talk to, derived once per peer.
    keys: HashMap<Ipv4Addr, Arc<PeerKey>>,
    /// Per-peer traffic counters, kept across snapshot rebuilds.
    counters: HashMap<Ipv4Addr, Arc<PeerCounters>>,
    /// CONNECTED peers and the path in use.
    direct: BTreeMap<Ipv4Addr, SocketAddrV4>,
    subnets: Vec<SubnetRoute>,
    rng: SplitMix64,
    ivs: IvSequence,
    stun: Option<SocketAddrV4>,
    public_endpoint: Option<SocketAddrV4>,
    stun_txid: Option<stun::TransactionId>,
    outputs: VecDeque<Output>,
    generation: u64,
    published_router_gen: u64,
    published_secure_gen: u64,
    dirty: bool,
    server_up: bool,
    discover_on_join: bool,
    /// This node's NAT classification, published after hysteresis.
    nat: StableClass,
    /// Extra sockets and paced probes of hard-NAT attempts.
    punch: Punch,
    /// Keys, pins and handshakes with ringlink peers.
    secure: Secure,
    /// The TURN server, its allocation and the pairs relayed through it.
    turn: TurnLink,
    /// Peers whose TURN path is proven, as the router was last told.
    turned: BTreeSet<Ipv4Addr>,
    /// Direct TCP streams and the pairs proven on them.
    tcp: TcpPaths,
    /// Our listener's address, if peers may be offered it.
    tcp_offer: Option<SocketAddrV4>,
    /// Listeners peers offered us.
    tcp_offers: BTreeMap<Ipv4Addr, SocketAddrV4>,
    /// Peers whose TCP path is proven, as the router was last told.
    streamed: BTreeSet<Ipv4Addr>,
    /// The server's clock and the address it sees us at, for punches.
    clock: ServerClock,
    /// Punches we proposed, by peer: the local port each will use and
    /// the instant proposed (an answer names the same one).
    punches: BTreeMap<Ipv4Addr, (u16, u64)>,
    /// How TURN and TCP last failed, for `ringlink status`.
    setbacks: why::Setbacks,
    pub stats: NodeStats,
}

impl Node {
    /// Queues the first table (no direct peers) as an output.
    pub fn new(cfg: NodeConfig, now: Instant) -> Result<Self, NodeError> {
        let discover_on_join = cfg.peer.stun && cfg.peer.discovery_ticks > 0;
        let peers = PeerManager::new(cfg.peer, now)?;
        let router = Router::new(cfg.route, now)?;
        let mut rng = SplitMix64::new(cfg.seed);
        let ivs = IvSequence::with_prefix(rng.next_u64().to_be_bytes());
        let secure = Secure::new(
            cfg.own.addr,
            &cfg.password,
            cfg.cipher,
            cfg.identity,
            rng.next_u64(),
            now,
        );
        let turn = TurnLink::new(TurnSource::new(cfg.turn), rng.next_u64());
        // Its own stream of randomness, so the draws the rest of the node
        // makes from its seed stay what they were.
        let tcp = TcpPaths::new(cfg.seed ^ 0x7463_705f_6e6f_6e63);
        let mut node = Self {
            own: cfg.own.addr,
            network: cfg.own,
            password: cfg.password,
            cipher: cfg.cipher,
            peers,
            router,
            keys: HashMap::new(),
            counters: HashMap::new(),
            direct: BTreeMap::new(),
            subnets: Vec::new(),
            rng,
            ivs,
            stun: cfg.stun,
            public_endpoint: cfg.public_endpoint,
            stun_txid: None,
            outputs: VecDeque::new(),
            generation: 0,
            published_router_gen: 0,
            published_secure_gen: 0,
            dirty: true,
            server_up: false,
            discover_on_join,
            nat: StableClass::default(),
            punch: Punch::default(),
            secure,
            turn,
            turned: BTreeSet::new(),
            tcp,
            tcp_offer: cfg.tcp_offer,
            tcp_offers: BTreeMap::new(),
            streamed: BTreeSet::new(),
            clock: ServerClock::new(now),
            punches: BTreeMap::new(),
            setbacks: why::Setbacks::default(),
            stats: NodeStats::default(),
        };
        node.peers.set_tunnelled(node.tunnelled());
        node.publish();
        Ok(node)
    }

    /// Next thing to do, oldest first. Drain after every call.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// On every (re)join, a DISCOVERY broadcast lets every other node know
    /// we exist, so direct paths form before any traffic needs them.
    pub fn set_server_up(&mut self, up: bool) {
        self.server_up = up;
        if up {
            self.send_key(ws::BROADCAST);
        } else {
            self.clock.link_down();
        }
        if up && self.discover_on_join {
            let frame = Discovery {
                src: self.own,
                dst: ws::BROADCAST,
            }
            .encode();
            self.send_server(frame);
        }
    }

    /// The earliest instant something is due.
    pub fn next_deadline(&self) -> Option<Instant> {
        [
            self.peers.poll_timeout(),
            self.router.poll_timeout(),
            self.punch.poll_timeout(),
            self.secure.poll_timeout(),
            self.turn.poll_timeout(),
            self.tcp.poll_timeout(),
            self.clock.poll_timeout().filter(|_| self.server_up),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    pub fn on_timeout(&mut self, now: Instant) {
        if self.peers.poll_timeout().is_some_and(|t| t <= now) {
            self.peers.handle_timeout(now);
        }
        if self.router.poll_timeout().is_some_and(|t| t <= now) {
            self.router.handle_timeout(now);
        }
        if self.punch.poll_timeout().is_some_and(|t| t <= now) {
            let plain = Heartbeat::ringlink(self.own, false).encode();
            let due = self.punch.due(now);
            self.stats.punch_probes += due.len() as u64;
            for (probe, via) in due {
                let mut ttl = None;
                let datagram = match (probe.kind, &via) {
                    (ProbeKind::Heartbeat, _) => self.seal_for(probe.peer, &plain),
                    (ProbeKind::Primer, _) => {
                        ttl = Some(nat::schedule::PRIMER_TTL);
                        self.seal_for(probe.peer, &plain)
                    }
                    (ProbeKind::Stun, Some(socket)) => {
                        let mut txid: stun::TransactionId = Default::default();
                        self.rng.fill(&mut txid);
                        self.punch.asked_stun(socket.id, probe.peer, txid);
                        stun::encode_binding_request(&txid).to_vec()
                    }
                    (ProbeKind::Stun, None) => continue,
                };
                self.outputs.push_back(Output::Datagram {
                    to: probe.to,
                    via,
                    datagram,
                    ttl,
                });
            }
            if self.punch.release_idle(now, self.direct.values().copied()) {
                self.dirty = true;
            }
        }
        if self.turn.poll_timeout().is_some_and(|t| t <= now) {
            self.turn.handle_timeout(now);
        }
        if self.tcp.poll_timeout().is_some_and(|t| t <= now) {
            self.tcp.handle_timeout(now);
        }
        if self.server_up {
            if let Some(frame) = self.clock.poll_request(now) {
                self.send_server(frame);
            }
        }
        // A pair on TURN or TCP sends nothing through the server, so no
        // relayed packet fires try-P2P for it: its back-off ending does
        // instead, and a direct path that wins replaces the other.
        let off_relay: Vec<_> = self.turned.union(&self.streamed).copied().collect();
        for peer in off_relay {
            if self.peers.state(peer) == Some(PeerState::Init) {
                let outcome = self.peers.try_p2p(peer, now);
                self.count(outcome);
            }
        }
        // A ringlink pair whose attempt never started (UDP dropped) tries
        // again after the back-off, so the paths beyond UDP are tried
        // again too and UDP wins once the network passes it.
        let failed: Vec<_> = self
            .peers
            .peers()
            .filter(|p| p.state == PeerState::Failed)
            .map(|p| p.vip)
            .collect();
        for peer in failed {
            if self.speaks_ringlink(peer) {
                self.peers.retry_failed(peer, now);
            }
        }
        // Every time, not only at its deadline: rekeys by message count
        // are read off the sessions' counters here.
        self.secure.handle_timeout(now);
        self.flush(now);
    }

    /// The answer to [`Output::ResolveTurn`]; `None`: the name did not
    /// resolve to an IPv4 address.
    pub fn on_turn_resolved(
        &mut self,
        host: &str,
        port: u16,
        addr: Option<SocketAddrV4>,
        now: Instant,
    ) {
        if addr.is_none() {
            warn!(
                host,
                port, "TURN server name has no IPv4 address; pairs stay on the server's relay"
            );
        }
        let need = self.turn.resolved(host, port, addr, now);
        self.fetch(need);
        self.flush(now);
    }

    /// The answer to [`Output::ResolveTurn`] for a server over TCP or TLS:
    /// a running bridge, or why there is none. A failed setup is a failure
    /// of the TURN path: pairs stay where they are (the server's relay, or
    /// a direct TCP stream) until their next miss asks again.
    pub fn on_turn_bridge(
        &mut self,
        host: &str,
        port: u16,
        transport: TurnTransport,
        bridge: Result<Bridge, String>,
        now: Instant,
    ) {
        let bridge = match bridge {
            Ok(b) => Some(b),
            Err(why) => {
                self.stats.turn_failures += 1;
                let transport = transport.label();
                warn!(host, port, transport, error = %why, "no stream to the TURN server; pairs stay on their path");
                None
            }
        };
        let need = self.turn.bridged(host, port, transport, bridge, now);
        self.fetch(need);
        self.flush(now);
    }

    /// The bridge at `local` ended: so did the allocation on it.
    pub fn on_turn_bridge_ended(&mut self, local: SocketAddrV4, reason: &str, now: Instant) {
        if self.turn.bridge_ended(local, reason) {
            self.flush(now);
        }
    }

    /// The socket [`Output::OpenTurnSocket`] asked for.
    pub fn on_turn_socket(&mut self, fd: OwnedFd, now: Instant) {
        let socket = LocalSocket {
            id: TURN_SOCKET,
            fd: Arc::new(fd),
        };
        // Workers receive on it before the server can answer.
        self.dirty = true;
        let need = self.turn.socket_opened(socket, now);
        self.fetch(need);
        self.flush(now);
    }

    fn fetch(&mut self, need: Option<Need>) {
        match need {
            Some(Need::Resolve {
                host,
                port,
                transport,
            }) => self.outputs.push_back(Output::ResolveTurn {
                host,
                port,
                transport,
            }),
            Some(Need::Socket) => self.outputs.push_back(Output::OpenTurnSocket),
            None => {}
        }
    }

    /// The sockets an [`Output::OpenSockets`] asked for; fewer than asked
    /// (the caller ran out of descriptors) is fine.
    pub fn on_sockets_opened(&mut self, fds: Vec<OwnedFd>, now: Instant) {
        self.stats.punch_sockets += fds.len() as u64;
        match self.punch.opened(fds, now) {
            Opened::Unasked => {}
            Opened::Birthday { sockets } => {
                debug!(sockets, "birthday attempt sockets open");
                self.dirty = true;
            }
            Opened::FreshPort {
                peer,
                target,
                spray,
                socket,
            } => {
                // Workers receive on it before anything can answer.
                self.dirty = true;
                let (fresh, main) = match spray {
                    FreshSpray::Nothing => (Vec::new(), Vec::new()),
                    // The main port gets the window too (unwidened): the
                    // peer's first challenges to our main mapping left
                    // just before its observation, from ports the window
                    // reaches back to. Behind a firewalled cone that is
                    // the quickest path.
                    FreshSpray::Window {
                        base,
                        step,
                        behind,
                        ahead,
                    } => (
                        nat::schedule::window_spray(base, step, behind, ahead),
                        nat::schedule::window_spray(
                            base,
                            step,
                            behind,
                            ahead.min(nat::schedule::WINDOW_AHEAD),
                        ),
                    ),
                    FreshSpray::Birthday { ip, count } => {
                        let seed = self.rng.next_u64();
                        let sends = nat::schedule::birthday_spray(ip, usize::from(count), seed);
                        (sends, Vec::new())
                    }
                };
                let done = self
                    .punch
                    .fresh_port_probes(peer, socket.id, target, fresh, self.stun, now);
                if !main.is_empty() {
                    let gap = std::time::Duration::from_secs(1) / nat::schedule::PACKETS_PER_SECOND;
                    self.punch.spray_from_main(peer, done + gap, main);
                }
            }
        }
        self.flush(now);
    }

    /// A packet from `saddr` came through the relay: maybe time to try a
    /// direct path to it. Sources outside the virtual network are LAN hosts
    /// behind a gateway, not peers.
    pub fn on_relayed(&mut self, saddr: Ipv4Addr, now: Instant) {
        if self.network.contains(saddr) && saddr != self.own {
            let outcome = self.peers.handle_relayed_packet(saddr, now);
            self.count(outcome);
            self.flush(now);
        }
    }

    /// A frame from the server other than FORWARD. Pushed subnet routes
    /// come out as [`Output::InstallRoutes`].
    pub fn on_server_frame(&mut self, frame: &[u8], now: Instant) {
        match WsMessage::decode(frame) {
            Ok(WsMessage::PeerConn(pc)) if pc.src != self.own && pc.dst == self.own => {
                if let Some(punch) = pc.tail.and_then(|t| t.punch) {
                    self.on_peer_punch(pc.src, punch, now);
                    self.flush(now);
                    return;
                }
                if let Some(tcp) = pc.tail.and_then(|t| t.tcp) {
                    self.on_peer_tcp(pc.src, tcp, now);
                    self.flush(now);
                    return;
                }
                if let Some(relayed) = pc.tail.and_then(|t| t.relayed) {
                    self.on_peer_relayed(pc.src, relayed, now);
                    self.flush(now);
                    return;
                }
                let ringlink = pc.tail.is_some();
                let nat = pc
                    .tail
                    .and_then(|t| t.nat)
                    .map(|a| Advertised::from_wire(&a));
                let outcome =
                    self.peers
                        .handle_public_info(pc.src, pc.endpoint, ringlink, nat, now);
                self.count(outcome);
                // Never towards an address the tunnel carries (a loop).
                let tunnelled = self
                    .tunnelled()
                    .iter()
                    .any(|c| c.contains(*pc.endpoint.ip()));
                if ringlink && outcome == Outcome::Accepted && !tunnelled {
                    self.punch.meet(pc.src, pc.endpoint, now);
                }
                if let Some(key) = pc.tail.and_then(|t| t.key) {
                    if let Some(text) = self.secure.announced(pc.src, PublicKey(key), now) {
                        self.outputs.push_back(Output::SavePins(text));
                    }
                }
            }
            Ok(WsMessage::General(g))
                if g.subtype == ws::general::SEALED && g.src != self.own && g.dst == self.own =>
            {
                self.on_sealed_relay(g.src, g.body, now);
            }
            Ok(WsMessage::General(g)) if g.subtype == ws::general::KEY && g.src != self.own => {
                let broadcast = g.dst == ws::BROADCAST;
                match <[u8; ws::general::KEY_LEN]>::try_from(g.body) {
                    Ok(key) if broadcast || g.dst == self.own => {
                        if let Some(text) = self.secure.announced(g.src, PublicKey(key), now) {
                            self.outputs.push_back(Output::SavePins(text));
                        }
                        // A member that just joined: it learns ours in turn.
                        if broadcast {
                            self.send_key(g.src);
                        }
                    }
                    Ok(_) => {}
                    Err(_) => {
                        self.stats.malformed += 1;
                        debug!(src = %g.src, len = g.body.len(), "key announcement of the wrong size");
                    }
                }
            }
            Ok(WsMessage::General(g)) if g.src != self.own && g.dst == self.own => {
                if let Some(lan) = g.local_conn() {
                    let outcome = self.peers.handle_lan_info(g.src, lan, now);
                    self.count(outcome);
                }
            }
            Ok(WsMessage::Discovery(d)) if d.src != self.own => {
                let broadcast = d.dst == ws::BROADCAST;
                if broadcast || d.dst == self.own {
                    let outcome = self.peers.handle_discovery(d.src, broadcast, now);
                    self.count(outcome);
                }
            }
            Ok(WsMessage::SysRoutes(list)) => {
                for r in &list {
                    match SubnetRoute::new(r.dst.network(), r.dst.netmask(), r.next) {
                        Ok(s) if !self.subnets.contains(&s) => self.subnets.push(s),
                        Ok(_) => {}
                        Err(e) => warn!(error = %e, "server pushed an unusable subnet route"),
                    }
                }
                self.peers.set_tunnelled(self.tunnelled());
                self.dirty = true;
                self.outputs.push_back(Output::InstallRoutes(list));
            }
            Ok(WsMessage::TurnOffer(offer)) => {
                let server = format!("{}:{}", offer.host, offer.port);
                if self.turn.on_offer(offer) {
                    info!(%server, "TURN server and credentials from the server");
                }
            }
            Ok(WsMessage::Time(t)) => {
                self.clock.on_time(t, now);
                // The first sample is asked for at once.
                if let Some(frame) = self.clock.poll_request(now) {
                    self.send_server(frame);
                }
            }
            Ok(other) => debug!(message = ?other, "server message not for us"),
            Err(e) => {
                self.stats.malformed += 1;
                warn!(error = %e, "malformed frame from the server");
            }
        }
        self.flush(now);
    }

    /// A decrypted peer message that is not data, received on socket
    /// `local` (`dataplane::MAIN_SOCKET` or an attempt's socket).
    /// A peer message from UDP; `session` is the peer whose session opened
    /// it, `None` for Candy's envelope.
    pub fn on_peer_message(
        &mut self,
        from: SocketAddrV4,
        local: u16,
        plaintext: &[u8],
        session: Option<Ipv4Addr>,
        now: Instant,
    ) {
        let decoded = PeerMessage::decode(plaintext);
        if let Ok(m) = &decoded {
            if !self.sealed_as_claimed(m, session) {
                self.stats.unsealed_refused += 1;
                debug!(%from, ?session, "peer message refused: not sealed by the peer it names");
                return;
            }
        }
        if local == TURN_SOCKET {
            self.on_turn_message(from, decoded, now);
            self.flush(now);
            return;
        }
        if self.tcp.is_stream(local) {
            self.on_stream_message(local, from, decoded, session, now);
            self.flush(now);
            return;
        }
        if let Ok(m) = &decoded {
            // It opened with our key: answers to `from` leave from where
            // it came in, the only socket whose NAT mapping `from` reaches.
            let fresh = matches!(m, PeerMessage::Pong(_));
            let moved = self.punch.heard(from, local, fresh);
            if moved && self.direct.values().any(|&p| p == from) {
                self.dirty = true;
            }
        }
        match decoded {
            Ok(PeerMessage::Heartbeat(hb)) => {
                let marked = hb.tail.is_some();
                let outcome = self
                    .peers
                    .handle_heartbeat(from, hb.tunip, hb.ack, marked, now);
                self.count(outcome);
            }
            Ok(PeerMessage::Ping(p)) => {
                let outcome = self.peers.handle_ping(from, p.tunip, p.nonce, now);
                self.count(outcome);
            }
            Ok(PeerMessage::Pong(p)) => {
                let outcome = self.peers.handle_pong(from, p.tunip, &p.nonce, now);
                self.count(outcome);
            }
            // The router counts what it ignores (`RouteStats`).
            Ok(PeerMessage::Delay(d)) => {
                let _ = self.router.handle_delay(d, now);
            }
            Ok(PeerMessage::Route(r)) => {
                let _ = self.router.handle_route(r, now);
            }
            Ok(PeerMessage::Forward(_)) => {}
            Ok(PeerMessage::Session(m)) => {
                // Answered where it came from: the initiator may not have
                // a proven path to us yet.
                if let Some((peer, reply)) = self.secure.handle(m, now) {
                    self.send_udp(peer, from, &reply);
                }
            }
            Ok(PeerMessage::Unknown(t)) => debug!(ty = t, %from, "unknown peer message type"),
            Err(e) => {
                self.stats.malformed += 1;
                debug!(error = %e, %from, "malformed peer message");
            }
        }
        self.flush(now);
    }

    /// A datagram the way a worker hands it up, for simulations that run
    /// no dataplane: opened with a session of `table` or with `own_key`,
    /// and what opened is passed on as the worker would pass it.
    pub fn on_datagram(
        &mut self,
        table: &Snapshot,
        own_key: &PeerKey,
        (from, local): (SocketAddrV4, u16),
        datagram: &mut [u8],
        now: Instant,
    ) -> Result<(), OpenError> {
        let opened = frame::open(table, own_key, datagram)?;
        if let (true, Some(s)) = (opened.first_use, opened.session) {
            self.on_session_used(s.local_index, now);
        }
        let session = opened.session.map(|s| s.peer);
        let plain = &datagram[ENVELOPE_LEN..];
        // A session's empty message only shows it is alive.
        if session.is_none() || !plain.is_empty() {
            self.on_peer_message(from, local, plain, session, now);
        }
        Ok(())
    }

    /// A reloaded `peers` list; returns how many pins changed.
    pub fn set_configured_pins(&mut self, config: &[(Ipv4Addr, PublicKey)], now: Instant) -> usize {
        let n = self.secure.set_configured_pins(config, now);
        self.flush(now);
        n
    }

    /// The dataplane (a worker, or the server link for a relayed message)
    /// opened the first message under our session `index`.
    pub fn on_session_used(&mut self, index: u32, now: Instant) {
        self.secure.session_used(index);
        self.flush(now);
    }

    /// Whether a message may be acted on: one that names its sender must
    /// come in that sender's session if the sender seals with us, and a
    /// session's message must name its own peer. Handshake messages prove
    /// themselves.
    fn sealed_as_claimed(&self, m: &PeerMessage<'_>, session: Option<Ipv4Addr>) -> bool {
        let claimed = match m {
            PeerMessage::Heartbeat(hb) => hb.tunip,
            PeerMessage::Ping(p) => p.tunip,
            PeerMessage::Pong(p) => p.tunip,
            // A probe names its prober; the echo of ours comes from dst.
            PeerMessage::Delay(d) if d.src == self.own => d.dst,
            PeerMessage::Delay(d) => d.src,
            PeerMessage::Route(r) => r.next,
            PeerMessage::Forward(_) | PeerMessage::Session(_) | PeerMessage::Unknown(_) => {
                return true
            }
        };
        match session {
            Some(peer) => peer == claimed,
            None => !self.secure.protected(claimed),
        }
    }

    /// One classification run finished. A changed class is used for the
    /// attempts that start from now on, and told to peers in the next
    /// UDP4CONN.
    pub fn on_nat_outcome(&mut self, outcome: nat::Outcome) {
        if self.nat.observe(outcome) {
            if let Some(c) = self.nat.published() {
                info!(nat = %c.kind, mapped = %c.mapped, "NAT classified");
                self.peers.set_own_nat(Some(c.kind));
            }
        }
    }

    fn nat_advert(&self) -> Option<NatAdvert> {
        let reachable = self.public_endpoint.is_some();
        match (self.nat.published(), self.public_endpoint) {
            (Some(c), _) => Some(c.advert(reachable)),
            (None, Some(public)) => Some(nat::reachable_advert(public)),
            (None, None) => None,
        }
    }

    /// The published NAT classification, for `ringlink status`.
    pub fn nat_class(&self) -> Option<NatClass> {
        self.nat.published().copied()
    }

    /// A STUN datagram arrived on socket `local`; only the shared data
    /// port asks the STUN server anything.
    pub fn on_stun(&mut self, from: SocketAddrV4, local: u16, datagram: &[u8], now: Instant) {
        if self.turn.is_server(from, local) {
            if let Err(e) = self.turn.on_datagram(from, datagram, now) {
                self.stats.turn_refused += 1;
                debug!(error = %e, "TURN server datagram refused");
            }
            self.flush(now);
            return;
        }
        if Some(from) == self.stun && local != MAIN_SOCKET {
            self.on_fresh_port_stun(local, datagram, now);
            return;
        }
        if Some(from) != self.stun {
            self.stats.stun_ignored += 1;
            debug!(%from, "STUN datagram from a host that is not our STUN server");
            return;
        }
        match stun::parse_binding_response(datagram) {
            Ok((txid, mapped)) if Some(txid) == self.stun_txid => {
                let outcome = self.peers.handle_stun_response(mapped, now);
                self.count(outcome);
            }
            Ok(_) => {
                self.stats.stun_ignored += 1;
                debug!("STUN response that answers no request of ours");
            }
            Err(e) => {
                self.stats.malformed += 1;
                debug!(error = %e, "malformed STUN response");
            }
        }
        self.flush(now);
    }

    /// The STUN answer for an attempt's fresh port: its mapping goes to
    /// the peer, which probes it next.
    fn on_fresh_port_stun(&mut self, local: u16, datagram: &[u8], now: Instant) {
        let answered = stun::parse_binding_response(datagram)
            .ok()
            .and_then(|(txid, mapped)| Some((self.punch.stun_answered(local, &txid)?, mapped)));
        match answered {
            Some((peer, mapped)) => {
                info!(%peer, %mapped, "fresh port mapped; announcing it to the peer");
                self.send_public_info(peer, mapped);
                self.peers.handle_own_fresh(peer, mapped, now);
            }
            None => self.stats.stun_ignored += 1,
        }
        self.flush(now);
    }

    fn send_public_info(&mut self, peer: Ipv4Addr, endpoint: SocketAddrV4) {
        let frame = PeerConn {
            src: self.own,
            dst: peer,
            endpoint,
            tail: Some(Tail {
                nat: self.nat_advert(),
                key: Some(self.secure.public_key().0),
                ..Tail::OURS
            }),
        }
        .encode();
        self.send_server(frame);
    }

    /// Our node key in a GENERAL: broadcast on joining, or answering a
    /// member that broadcast its own (so known to speak ringlink).
    fn send_key(&mut self, dst: Ipv4Addr) {
        let key = self.secure.public_key().0;
        let frame = General {
            subtype: ws::general::KEY,
            extra: 0,
            src: self.own,
            dst,
            body: &key,
        }
        .encode();
        self.send_server(frame);
    }

    /// A peer message relayed by the server in a GENERAL frame, sealed
    /// with our key. Only handshake and session messages are taken this
    /// way; the server's word is no path proof for anything else.
    fn on_sealed_relay(&mut self, src: Ipv4Addr, sealed: &[u8], now: Instant) {
        let key = self.key(self.own);
        let mut buf = sealed.to_vec();
        let plain = match key.open_in_place(&mut buf) {
            Ok(p) => p,
            Err(e) => {
                self.stats.malformed += 1;
                debug!(error = %e, %src, "relayed sealed message does not open");
                return;
            }
        };
        match PeerMessage::decode(plain) {
            Ok(PeerMessage::Session(m)) => {
                if let Some((peer, reply)) = self.secure.handle(m, now) {
                    self.send_relayed(peer, &reply);
                }
            }
            _ => {
                self.stats.malformed += 1;
                debug!(%src, "relayed sealed message that is not a session message");
            }
        }
    }

    /// A peer message through the server, sealed with the peer's key.
    fn send_relayed(&mut self, peer: Ipv4Addr, plaintext: &[u8]) {
        let sealed = self.key(peer).seal_to_vec(self.ivs.next_iv(), plaintext);
        let frame = General {
            subtype: ws::general::SEALED,
            extra: 0,
            src: self.own,
            dst: peer,
            body: &sealed,
        }
        .encode();
        self.send_server(frame);
    }

    /// This node's public key, for `ringlink status`.
    pub fn public_key(&self) -> PublicKey {
        self.secure.public_key()
    }

    /// The handshake counters, for `ringlink status`.
    pub fn handshake_stats(&self) -> HandshakeStats {
        self.secure.stats()
    }

    fn count(&mut self, outcome: Outcome) {
        if let Outcome::Ignored(why) = outcome {
            self.stats.ignored_events += 1;
            debug!(reason = %why, "peer event ignored");
        }
    }

    fn key(&mut self, vip: Ipv4Addr) -> Arc<PeerKey> {
        let (cipher, password) = (self.cipher, &self.password);
        self.keys
            .entry(vip)
            .or_insert_with(|| Arc::new(PeerKey::for_vip(cipher, password, vip)))
            .clone()
    }

    fn send_udp(&mut self, peer: Ipv4Addr, to: SocketAddrV4, plaintext: &[u8]) {
        let datagram = self.seal_for(peer, plaintext);
        let via = self.punch.via(to);
        self.outputs.push_back(Output::Datagram {
            to,
            via,
            datagram,
            ttl: None,
        });
    }

    /// A peer message for `peer` as a datagram: sealed with its session if
    /// there is one, so it cannot be replayed; handshake messages, which
    /// make sessions, and everything for a peer without one go in Candy's
    /// envelope.
    fn seal_for(&mut self, peer: Ipv4Addr, plaintext: &[u8]) -> Vec<u8> {
        let handshake = plaintext
            .first()
            .is_some_and(|t| (ty::SESSION_FIRST..=ty::SESSION_LAST).contains(t));
        if !handshake {
            if let Some(s) = self.secure.sealing(peer) {
                let mut d = vec![0u8; DATAGRAM_HEADER_LEN + plaintext.len()];
                d[DATAGRAM_HEADER_LEN..].copy_from_slice(plaintext);
                let end = d.len();
                match s.seal_datagram(&mut d, DATAGRAM_HEADER_LEN..end) {
                    Ok(_) => return d,
                    // Spent: the rekey is under way; the envelope meanwhile.
                    Err(e) => debug!(%peer, error = %e, "session cannot seal"),
                }
            }
        }
        self.key(peer).seal_to_vec(self.ivs.next_iv(), plaintext)
    }

    /// Frames for a link that is down would only be stale when it is back.
    fn send_server(&mut self, frame: Vec<u8>) {
        if self.server_up {
            self.outputs.push_back(Output::ServerFrame(frame));
        } else {
            self.stats.ws_dropped += 1;
        }
    }

    /// Carries out everything the peer logic and the router asked for, then
    /// republishes the dataplane table if anything it holds changed.
    fn flush(&mut self, now: Instant) {
        while let Some(action) = self.peers.poll_action() {
            self.act(action, now);
        }
        self.drain_turn(now);
        self.drain_tcp(now);
        // Handshakes take the peer's path when there is one, else the relay.
        while let Some((peer, msg)) = self.secure.poll_transmit() {
            if !self.send_on_path(peer, &msg) {
                self.send_relayed(peer, &msg);
            }
        }
        while let Some(t) = self.router.poll_transmit() {
            self.send_on_path(t.to, &t.msg.encode());
        }
        if self.dirty
            || self.router.generation() != self.published_router_gen
            || self.secure.generation() != self.published_secure_gen
        {
            self.publish();
        }
    }

    fn act(&mut self, action: Action, now: Instant) {
        match action {
            Action::StunRequest => {
                if let Some(server) = self.stun {
                    let mut txid: stun::TransactionId = Default::default();
                    self.rng.fill(&mut txid);
                    self.stun_txid = Some(txid);
                    self.outputs.push_back(Output::Datagram {
                        to: server,
                        via: None,
                        datagram: stun::encode_binding_request(&txid).to_vec(),
                        ttl: None,
                    });
                }
            }
            Action::Heartbeat { peer, to, ack } => {
                let plain = Heartbeat::ringlink(self.own, ack).encode();
                self.send_udp(peer, to, &plain);
            }
            Action::Ping { peer, to, nonce } => {
                let plain = Ping {
                    tunip: self.own,
                    nonce,
                }
                .encode();
                self.send_udp(peer, to, &plain);
            }
            Action::Spray {
                peer,
                base,
                step,
                stride,
                count,
            } => {
                let sends = nat::schedule::stride_spray(base, step, stride, count);
                self.punch.spray(peer, now, sends);
            }
            Action::Birthday { peer, role } => match role {
                BirthdayRole::Sockets { target, count } => {
                    if self.punch.retarget(peer, target, now) {
                        info!(%peer, %target, "birthday attempt: sockets probe the peer's new endpoint");
                    } else {
                        info!(%peer, %target, sockets = count, "birthday attempt: opening sockets");
                        self.punch.want(Wanted::Birthday { peer, target });
                        self.outputs.push_back(Output::OpenSockets {
                            count: usize::from(count),
                        });
                    }
                }
                BirthdayRole::Spray { ip, count } => {
                    info!(%peer, %ip, probes = count, "birthday attempt: spraying ports");
                    let seed = self.rng.next_u64();
                    let sends = nat::schedule::birthday_spray(ip, usize::from(count), seed);
                    self.punch.spray(peer, now, sends);
                }
                BirthdayRole::Slots {
                    base,
                    step,
                    slots,
                    per_slot,
                } => {
                    info!(%peer, %base, slots, sockets = per_slot, "prediction + birthday: sockets aimed at the peer's next ports");
                    self.punch.want(Wanted::Slots {
                        peer,
                        base,
                        step,
                        slots,
                    });
                    self.outputs.push_back(Output::OpenSockets {
                        count: usize::from(per_slot),
                    });
                }
            },
            Action::Pong { peer, to, nonce } => {
                let plain = Pong {
                    tunip: self.own,
                    nonce,
                    seen: to,
                }
                .encode();
                self.send_udp(peer, to, &plain);
            }
            Action::SendPublicInfo { peer, public } => {
                // A port forward reaches us whoever sends; the STUN
                // mapping only whoever we sent to first.
                let endpoint = self.public_endpoint.unwrap_or(public);
                self.send_public_info(peer, endpoint);
            }
            Action::FreshPort {
                peer,
                target,
                spray,
            } => {
                self.punch.want(Wanted::FreshPort {
                    peer,
                    target,
                    spray,
                });
                self.outputs.push_back(Output::OpenSockets { count: 1 });
            }
            Action::SendLanInfo { peer, lan } => {
                let frame = encode_local_conn(self.own, peer, lan);
                self.send_server(frame);
            }
            Action::DiscoveryBroadcast => {
                let frame = Discovery {
                    src: self.own,
                    dst: ws::BROADCAST,
                }
                .encode();
                self.send_server(frame);
            }
            Action::DiscoveryReply { peer } => {
                let frame = Discovery {
                    src: self.own,
                    dst: peer,
                }
                .encode();
                self.send_server(frame);
            }
            Action::Connected { peer, path } => {
                info!(%peer, %path, "direct path up");
                self.punch.stop(peer);
                self.direct.insert(peer, path);
                self.turn.direct(peer, now);
                self.tcp.direct(peer);
                self.router.peer_connected(peer, now);
                self.dirty = true;
            }
            Action::NoDirectPath { peer } if !self.speaks_ringlink(peer) => {}
            Action::NoDirectPath { peer } => {
                if self.turn.available() && self.turn.channel(peer).is_none() {
                    info!(%peer, "no direct path; asking for a TURN path");
                    let need = self.turn.want(peer, now);
                    self.fetch(need);
                }
                self.tcp_no_direct(peer, now);
            }
            Action::PathChanged { peer, path } => {
                info!(%peer, %path, "direct path moved");
                self.direct.insert(peer, path);
                self.dirty = true;
            }
            Action::Disconnected { peer } => {
                info!(%peer, "direct path lost; back to the relay");
                self.direct.remove(&peer);
                if !self.turned.contains(&peer) && !self.streamed.contains(&peer) {
                    self.router.peer_disconnected(peer, now);
                }
                self.dirty = true;
            }
        }
    }

    /// Whether `peer` is a ringlink node: it marked its announcements, or
    /// we hold a key for it (a stock Candy node has neither).
    fn speaks_ringlink(&self, peer: Ipv4Addr) -> bool {
        self.secure.knows(peer) || self.peers.peers().any(|p| p.vip == peer && p.ringlink)
    }

    /// A peer announced its TURN relayed address (a UDP4CONN with TLV 3,
    /// which carries nothing for the state machine).
    fn on_peer_relayed(&mut self, peer: Ipv4Addr, relayed: SocketAddrV4, now: Instant) {
        if !self.turn.available() {
            debug!(%peer, %relayed, "peer relays through TURN; no TURN server here");
            return;
        }
        if self.direct.contains_key(&peer) {
            debug!(%peer, %relayed, "peer relays through TURN; our direct path to it stands");
            return;
        }
        info!(%peer, %relayed, "peer's TURN relayed address; binding it");
        let need = self.turn.peer_relayed(peer, relayed, now);
        self.fetch(need);
    }

    /// A peer message that came through the TURN allocation from `from`,
    /// the peer address its channel is bound to. Only what proves and uses
    /// the TURN path is taken here; the peer state machines see nothing of
    /// it, so it can never become a direct path.
    fn on_turn_message(
        &mut self,
        from: SocketAddrV4,
        decoded: Result<PeerMessage<'_>, crate::proto::ProtoError>,
        now: Instant,
    ) {
        match decoded {
            Ok(PeerMessage::Ping(p)) => match self.turn.channel_to(p.tunip, from) {
                Some(ch) => {
                    let plain = Pong {
                        tunip: self.own,
                        nonce: p.nonce,
                        seen: from,
                    }
                    .encode();
                    self.send_turn(p.tunip, ch, &plain);
                }
                None => {
                    self.stats.turn_refused += 1;
                    debug!(peer = %p.tunip, %from, "PING through a channel that is not the peer's");
                }
            },
            Ok(PeerMessage::Pong(p)) => {
                if self.turn.on_pong(p.tunip, from, &p.nonce, now) {
                    debug!(peer = %p.tunip, "TURN path answers its challenge");
                }
            }
            Ok(PeerMessage::Delay(d)) => {
                let _ = self.router.handle_delay(d, now);
            }
            Ok(PeerMessage::Route(r)) => {
                let _ = self.router.handle_route(r, now);
            }
            Ok(PeerMessage::Session(m)) => {
                if let Some((peer, reply)) = self.secure.handle(m, now) {
                    match self.turn.channel_to(peer, from) {
                        Some(ch) => self.send_turn(peer, ch, &reply),
                        None => self.send_relayed(peer, &reply),
                    }
                }
            }
            Ok(_) => {}
            Err(e) => {
                self.stats.malformed += 1;
                debug!(error = %e, %from, "malformed peer message through TURN");
            }
        }
    }

    /// Carries out what the TURN path asked for.
    fn drain_turn(&mut self, now: Instant) {
        while let Some(o) = self.turn.poll_output() {
            match o {
                TurnOutput::ToServer(datagram) => {
                    if let Some((to, socket)) = self.turn.endpoint() {
                        self.outputs.push_back(Output::Datagram {
                            to,
                            via: Some(socket),
                            datagram,
                            ttl: None,
                        });
                    }
                }
                TurnOutput::Announce { peer, relayed } => {
                    info!(%peer, %relayed, "TURN relayed address; announcing it to the peer");
                    let frame = PeerConn {
                        src: self.own,
                        dst: peer,
                        endpoint: relayed,
                        tail: Some(Tail {
                            key: Some(self.secure.public_key().0),
                            relayed: Some(relayed),
                            ..Tail::OURS
                        }),
                    }
                    .encode();
                    self.send_server(frame);
                }
                TurnOutput::Ping {
                    peer,
                    channel,
                    nonce,
                } => {
                    let plain = Ping {
                        tunip: self.own,
                        nonce,
                    }
                    .encode();
                    self.send_turn(peer, channel, &plain);
                }
                TurnOutput::Changed => self.sync_turned(now),
                TurnOutput::Failed { peer, error } => {
                    self.stats.turn_failures += 1;
                    self.setbacks
                        .note(peer, why::Fallback::Turn, error.to_string(), now);
                    match peer {
                        Some(peer) => warn!(%peer, error = %error, "TURN path failed"),
                        None => warn!(error = %error, "TURN allocation ended"),
                    }
                    let again: Vec<_> = match peer {
                        None if self.turn.ended_live() => self.turned.iter().copied().collect(),
                        _ => Vec::new(),
                    };
                    self.sync_turned(now);
                    for peer in again {
                        info!(%peer, "asking for a TURN path on a new allocation");
                        let need = self.turn.want(peer, now);
                        self.fetch(need);
                    }
                }
            }
        }
    }

    /// Tells the router which peers a TURN path now reaches.
    fn sync_turned(&mut self, now: Instant) {
        let before = std::mem::replace(&mut self.turned, self.turn.proven());
        self.relink(&before, |n| &n.turned, "TURN", now);
    }

    /// Tells the router which peers a fallback path (TURN or TCP) reaches
    /// now that its set changed from `before` to `after(self)`: a peer
    /// that gained it is a neighbour like a direct one; one that lost it
    /// falls back to the server's relay unless another path holds it.
    fn relink(
        &mut self,
        before: &BTreeSet<Ipv4Addr>,
        after: impl Fn(&Self) -> &BTreeSet<Ipv4Addr>,
        what: &str,
        now: Instant,
    ) {
        let up: Vec<_> = after(self).difference(before).copied().collect();
        let down: Vec<_> = before.difference(after(self)).copied().collect();
        for peer in up {
            info!(%peer, "{what} path up");
            self.router.peer_connected(peer, now);
        }
        for peer in down {
            let held = self.direct.contains_key(&peer)
                || self.turned.contains(&peer)
                || self.streamed.contains(&peer);
            if !held {
                info!(%peer, "{what} path lost; back to the server's relay");
                self.router.peer_disconnected(peer, now);
            }
        }
        self.dirty = true;
    }

    /// A peer message through the TURN server: sealed, then led by the
    /// ChannelData header of `channel`.
    fn send_turn(&mut self, peer: Ipv4Addr, channel: u16, plaintext: &[u8]) {
        let Some((to, socket)) = self.turn.endpoint() else {
            return;
        };
        let sealed = self.seal_for(peer, plaintext);
        let Ok(header) = channel::header(channel, sealed.len()) else {
            return;
        };
        let mut datagram = Vec::with_capacity(header.len() + sealed.len());
        datagram.extend_from_slice(&header);
        datagram.extend_from_slice(&sealed);
        self.outputs.push_back(Output::Datagram {
            to,
            via: Some(socket),
            datagram,
            ttl: None,
        });
    }

    /// Sends a peer message on the peer's direct or TURN path; false if it
    /// has neither.
    fn send_on_path(&mut self, peer: Ipv4Addr, plaintext: &[u8]) -> bool {
        if let Some(&to) = self.direct.get(&peer) {
            self.send_udp(peer, to, plaintext);
        } else if let Some(ch) = self.turn.channel(peer) {
            self.send_turn(peer, ch, plaintext);
        } else if let Some(s) = self.tcp.stream_of(peer).cloned() {
            self.send_stream(peer, &s, plaintext);
        } else {
            return false;
        }
        true
    }

    fn publish(&mut self) {
        self.generation += 1;
        let sessions = self.secure.dataplane();
        let mut direct = HashMap::with_capacity(self.direct.len());
        // Direct UDP first, then TURN, then TCP: a peer takes the first
        // path it has. Each entry says how: the socket punched from, the
        // TURN server and channel, or the stream.
        let mut paths: Vec<Route> = self
            .direct
            .iter()
            .map(|(&v, &e)| (v, e, self.punch.via(e), None, None))
            .collect();
        if let Some((server, socket)) = self.turn.endpoint() {
            paths.extend(self.turned.iter().filter_map(|&v| {
                let channel = self.turn.channel(v)?;
                Some((v, server, Some(socket.clone()), Some(channel), None))
            }));
        }
        paths.extend(self.streamed.iter().filter_map(|&v| {
            let stream = self.tcp.stream_of(v)?.clone();
            Some((v, stream.remote, None, None, Some(stream)))
        }));
        for (vip, endpoint, socket, channel, stream) in paths {
            if direct.contains_key(&vip) {
                continue;
            }
            let key = self.key(vip);
            let counters = self.counters.entry(vip).or_default().clone();
            direct.insert(
                vip,
                PeerEntry {
                    endpoint,
                    socket,
                    channel,
                    stream,
                    key,
                    session: sessions.seals.get(&vip).cloned(),
                    counters,
                },
            );
        }
        let rule = self.next_hop_rule();
        let mut snapshot =
            publish::compile(self.generation, self.own, &rule, direct, &sessions.seals);
        snapshot.streams = self.tcp.streams();
        snapshot.sockets = self.punch.sockets();
        snapshot.sockets.extend(self.turn.socket());
        if let Some(table) = self.turn.table() {
            snapshot.turn.insert(TURN_SOCKET, table);
        }
        snapshot.sessions = sessions.open;
        snapshot.protected = sessions.protected;
        self.outputs.push_back(Output::Publish(Box::new(snapshot)));
        self.published_router_gen = self.router.generation();
        self.published_secure_gen = self.secure.generation();
        self.dirty = false;
    }

    /// Where no direct path may lead: the virtual network and every subnet
    /// the tunnel carries.
    fn tunnelled(&self) -> Vec<Ipv4Cidr> {
        let subnets = self
            .subnets
            .iter()
            .filter_map(|s| Ipv4Cidr::new(s.dst, s.prefix_len() as u8).ok());
        std::iter::once(self.network).chain(subnets).collect()
    }

    /// The next-hop rule as it stands: what the dataplane is compiled from
    /// and what `ringlink status` reports.
    fn next_hop_rule(&self) -> NextHopTable {
        let mut subnets = SubnetRoutes::new(self.own);
        for s in &self.subnets {
            subnets.push(*s);
        }
        self.router
            .next_hops()
            .with_own_vip(self.own)
            .with_subnets(subnets)
            .with_directed_broadcast(self.network.broadcast())
    }

    /// How a packet for `vip` leaves this node, by the rule the dataplane
    /// is compiled from.
    fn path_to(&self, vip: Ipv4Addr) -> String {
        match self.next_hop_rule().lookup(vip) {
            NextHop::Peer(n) if n == vip => self.link_to(vip).to_string(),
            NextHop::Peer(n) => format!("via {n}"),
            NextHop::Relay => "relay".to_string(),
        }
    }

    /// How a neighbour is reached: "direct", "turn", "tcp", or "relay".
    fn link_to(&self, vip: Ipv4Addr) -> &'static str {
        if self.direct.contains_key(&vip) {
            "direct"
        } else if self.turned.contains(&vip) {
            "turn"
        } else if self.streamed.contains(&vip) {
            "tcp"
        } else {
            "relay"
        }
    }

    /// The router's counters, for `ringlink status`.
    pub fn route_stats(&self) -> route::RouteStats {
        self.router.stats()
    }

    /// The TURN server this node would relay through, for `ringlink status`.
    pub fn turn_status(&self, now_unix: u64) -> Option<String> {
        self.turn.describe(now_unix)
    }

    /// Lines for `ringlink status`.
    pub fn status(&self, now: Instant) -> (Vec<PeerLine>, Vec<RouteLine>) {
        let peers = self
            .peers
            .peers()
            .map(|p| {
                let c = self
                    .counters
                    .get(&p.vip)
                    .map(|c| c.snapshot())
                    .unwrap_or_default();
                let (key, handshake_secs, handshakes) = self.secure.peer_line(p.vip, now);
                let sealed = self.secure.protected(p.vip) && self.secure.sealing(p.vip).is_some();
                PeerLine {
                    key,
                    handshake_secs,
                    handshakes,
                    sealing: if sealed { "session" } else { "envelope" }.to_string(),
                    vip: p.vip.to_string(),
                    state: p.state.to_string(),
                    path: self.link_to(p.vip).to_string(),
                    why: self.path_why(&p, now),
                    endpoint: p.path.map(|e| e.to_string()),
                    last_heartbeat_secs: p
                        .last_heartbeat
                        .map(|t| now.saturating_duration_since(t).as_secs_f64()),
                    tx_bytes: c.tx_bytes,
                    rx_bytes: c.rx_bytes,
                    retry_secs: p.retry.as_secs(),
                    speaks: if p.ringlink { "ringlink" } else { "candy" }.to_string(),
                    attempts: p.attempts,
                    time_to_direct_secs: p.time_to_direct.map(|d| d.as_secs_f64()),
                    nat: p.nat.map(|n| n.kind.to_string()),
                    method: p.method.map(|m| m.to_string()),
                }
            })
            .collect();
        let routes = self
            .router
            .status()
            .map(|r| RouteLine {
                dst: r.dst.to_string(),
                next_hop: r.next_hop.to_string(),
                path: self.path_to(r.dst),
                rtt_ms: r.next_hop_rtt_ms.map(f64::from),
                metric_ms: Some(r.metric),
            })
            .chain(self.subnets.iter().map(|s| RouteLine {
                dst: format!("{}/{}", s.dst, s.prefix_len()),
                next_hop: s.next_hop.to_string(),
                path: if s.next_hop == self.own {
                    "local".to_string()
                } else {
                    self.path_to(s.next_hop)
                },
                rtt_ms: self.router.peer_rtt(s.next_hop).map(f64::from),
                metric_ms: None,
            }))
            .collect();
        (peers, routes)
    }
}
