//! Several sans-IO control nodes (`ringlink::control::node`) wired through a
//! fake coordination server and a fake network on a simulated clock: every
//! byte between them goes through the real codecs and the real ciphers. No
//! sockets, no sleeping; the same run every time.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use ringlink::control::node::{Node, NodeConfig, Output};
use ringlink::control::secure::Identity;
use ringlink::dataplane::{frame, Snapshot, MAIN_SOCKET};
use ringlink::peer::PeerConfig;
use ringlink::proto::crypto::{CipherKind, IvSequence, PeerKey, ENVELOPE_LEN};
use ringlink::proto::ws::{self, SysRoute, WsMessage};
use ringlink::proto::{stun, Ipv4Cidr};
use ringlink::rng::SplitMix64;
use ringlink::route::RouteConfig;
use ringlink::session::keys::NodeKey;
use ringlink::session::pins::PinStore;
use ringlink::session::timers::HandshakeTimers;

const PASSWORD: &[u8] = b"node sim password";
const CIPHER: CipherKind = CipherKind::Aes256Gcm;
const STUN: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(203, 0, 113, 1), 3478);
/// Bounds every loop: a node that keeps talking without time passing is a bug.
const MAX_DELIVERIES: usize = 100_000;

fn vip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 77, 0, 2 + i as u8)
}

fn public(i: usize, port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::new(198, 51, 100, 1 + i as u8), port)
}

/// The public mapping of a host's extra socket `id`: each extra socket
/// gets a port of its own, as behind any NAT.
fn extra_public(i: usize, id: u16) -> SocketAddrV4 {
    public(i, 50_000 + id)
}

/// Something in flight, delivered in order with no latency. `local` is the
/// receiving host's socket (`MAIN_SOCKET` or an extra socket's id).
enum Delivery {
    Udp {
        to: usize,
        local: u16,
        from: SocketAddrV4,
        datagram: Vec<u8>,
    },
    Stun {
        to: usize,
        local: u16,
        from: SocketAddrV4,
        datagram: Vec<u8>,
    },
    Server {
        to: usize,
        frame: Vec<u8>,
    },
    /// A frame on a TCP stream, to the end whose fd is `fd`.
    Stream {
        to: usize,
        fd: RawFd,
        datagram: Vec<u8>,
    },
    /// The other end shut the stream down.
    StreamEnd {
        to: usize,
        fd: RawFd,
    },
}

struct Host {
    node: Node,
    vip: Ipv4Addr,
    /// The NAT mapping peers and the STUN server see.
    public: SocketAddrV4,
    published: Vec<Snapshot>,
    installs: Vec<Vec<SysRoute>>,
    /// Extra sockets its latest table lists.
    extra: Vec<u16>,
    /// Pins files the node asked to be written, oldest first.
    saved_pins: Vec<String>,
}

/// Node `i`'s configuration; `key` is the seed of its node key.
fn node_config(i: usize, seed: u64, route_cost: u32, key: u8) -> NodeConfig {
    let mut peer = PeerConfig::new(vip(i));
    peer.eager = true;
    let mut route = RouteConfig::new(vip(i));
    route.route_cost = route_cost;
    route.seed = seed ^ (i as u64);
    NodeConfig {
        own: Ipv4Cidr {
            addr: vip(i),
            prefix: 24,
        },
        password: PASSWORD.to_vec(),
        cipher: CIPHER,
        stun: Some(STUN),
        public_endpoint: None,
        peer,
        route,
        seed: seed.wrapping_mul(31) ^ (i as u64),
        identity: Identity {
            key: NodeKey::from_private([key; 32]),
            pins: PinStore::default(),
            timers: HandshakeTimers::default(),
            wall_clock: Duration::from_secs(1_700_000_000),
        },
        turn: None,
        tcp_offer: None,
    }
}

struct Sim {
    now: Instant,
    hosts: Vec<Host>,
    queue: VecDeque<Delivery>,
    /// Directed host pairs whose datagrams are dropped.
    blocked: HashSet<(usize, usize)>,
    /// Directed host pairs whose datagrams to the receiver's main socket
    /// are dropped (a mapping taken by an early probe).
    blocked_main: HashSet<(usize, usize)>,
    loss: f64,
    rng: SplitMix64,
    /// The STUN server answers with a transaction id it was not asked for.
    stun_wrong_txid: bool,
    /// Datagrams that did not open with the receiver's own key.
    open_failures: usize,
    udp_delivered: usize,
    /// Datagrams to endpoints no host has: (sender, destination).
    stray: Vec<(usize, SocketAddrV4)>,
    /// Sealed GENERAL frames (handshakes through the relay): (src, dst).
    sealed_generals: Vec<(Ipv4Addr, Ipv4Addr)>,
    /// The datagrams counted in `stray`, in the same order.
    stray_datagrams: Vec<Vec<u8>>,
    /// Hosts whose STUN requests go unanswered (a network dropping UDP).
    stun_blocked: HashSet<usize>,
    /// TCP listeners nodes offer, by address: the host behind each.
    listeners: HashMap<SocketAddrV4, usize>,
    /// Each open stream end (a socket pair stands in for the connection;
    /// frames are passed as deliveries): the host with the other end and
    /// that end's fd.
    pipes: HashMap<RawFd, (usize, RawFd)>,
    /// Frames delivered on streams.
    stream_delivered: usize,
    /// Frames written to streams are lost (the connection went dark).
    streams_dark: bool,
    /// The server answers TIME (as a ringlink server does), with its clock
    /// this far ahead of the simulation's start.
    time_server: Option<u64>,
    t0: Instant,
    /// Hole punches asked for and not yet met: (host, peer, local port,
    /// target).
    punches: Vec<(usize, Ipv4Addr, u16, SocketAddrV4)>,
    /// Punches that met.
    punched: usize,
}

impl Sim {
    fn new(n: usize, seed: u64, route_cost: u32) -> Self {
        Self::new_with(n, seed, route_cost, |_, _| {})
    }

    /// As `new`, with `tweak` applied to each node's configuration.
    fn new_with(
        n: usize,
        seed: u64,
        route_cost: u32,
        tweak: impl Fn(usize, &mut NodeConfig),
    ) -> Self {
        let t0 = Instant::now();
        let hosts = (0..n)
            .map(|i| {
                let mut cfg = node_config(i, seed, route_cost, 1 + i as u8);
                tweak(i, &mut cfg);
                Host {
                    node: Node::new(cfg, t0).expect("valid node config"),
                    vip: vip(i),
                    public: public(i, 40_000),
                    published: Vec::new(),
                    installs: Vec::new(),
                    extra: Vec::new(),
                    saved_pins: Vec::new(),
                }
            })
            .collect();
        let mut sim = Sim {
            now: t0,
            hosts,
            queue: VecDeque::new(),
            blocked: HashSet::new(),
            blocked_main: HashSet::new(),
            loss: 0.0,
            rng: SplitMix64::new(seed),
            stun_wrong_txid: false,
            open_failures: 0,
            udp_delivered: 0,
            stray: Vec::new(),
            sealed_generals: Vec::new(),
            stray_datagrams: Vec::new(),
            stun_blocked: HashSet::new(),
            listeners: HashMap::new(),
            pipes: HashMap::new(),
            stream_delivered: 0,
            streams_dark: false,
            time_server: None,
            t0,
            punches: Vec::new(),
            punched: 0,
        };
        for i in 0..n {
            sim.hosts[i].node.set_server_up(true);
            sim.collect(i);
        }
        sim.deliver_all();
        sim
    }

    /// The host and socket a datagram to `endpoint` reaches.
    fn host_at(&self, endpoint: SocketAddrV4) -> Option<(usize, u16)> {
        if let Some(i) = self.hosts.iter().position(|h| h.public == endpoint) {
            return Some((i, MAIN_SOCKET));
        }
        let i = self
            .hosts
            .iter()
            .position(|h| h.public.ip() == endpoint.ip())?;
        let id = endpoint.port().checked_sub(50_000)?;
        self.hosts[i].extra.contains(&id).then_some((i, id))
    }

    fn host_with_vip(&self, v: Ipv4Addr) -> Option<usize> {
        self.hosts.iter().position(|h| h.vip == v)
    }

    /// Takes everything host `i` asked for and puts it on the wire.
    fn collect(&mut self, i: usize) {
        while let Some(out) = self.hosts[i].node.poll_output() {
            match out {
                Output::Datagram {
                    to, datagram, via, ..
                } if to == STUN => {
                    self.answer_stun(i, via.map_or(MAIN_SOCKET, |s| s.id), &datagram)
                }
                // One flat network: a primer's TTL reaches every host.
                Output::Datagram {
                    to, datagram, via, ..
                } => {
                    let from = via.map_or(self.hosts[i].public, |s| extra_public(i, s.id));
                    let Some((j, local)) = self.host_at(to) else {
                        self.stray.push((i, to));
                        self.stray_datagrams.push(datagram);
                        continue;
                    };
                    let lost = self.loss > 0.0 && self.rng.next_f64() < self.loss;
                    let main_blocked = local == MAIN_SOCKET && self.blocked_main.contains(&(i, j));
                    if !lost && !self.blocked.contains(&(i, j)) && !main_blocked {
                        self.queue.push_back(Delivery::Udp {
                            to: j,
                            local,
                            from,
                            datagram,
                        });
                    }
                }
                Output::ServerFrame(frame) => self.relay(i, frame),
                Output::InstallRoutes(r) => self.hosts[i].installs.push(r),
                Output::SavePins(text) => self.hosts[i].saved_pins.push(text),
                // No TURN server in these simulations.
                Output::ResolveTurn { .. } | Output::OpenTurnSocket => {}
                Output::Connect { peer, to } => self.connect_stream(i, peer, to),
                Output::StreamFrame { stream, datagram } => {
                    let end = self.pipes.get(&stream.fd.as_raw_fd());
                    if let (Some(&(to, fd)), false) = (end, self.streams_dark) {
                        self.queue.push_back(Delivery::Stream { to, fd, datagram });
                    }
                }
                Output::Punch { peer, port, to, .. } => self.punch(i, peer, port, to),
                Output::CloseStream(stream) => {
                    if let Some((to, fd)) = self.pipes.remove(&stream.fd.as_raw_fd()) {
                        self.pipes.remove(&fd);
                        self.queue.push_back(Delivery::StreamEnd { to, fd });
                    }
                }
                // Only the birthday test models extra sockets.
                Output::OpenSockets { count } => {
                    let fds: Vec<OwnedFd> = (0..count)
                        .map(|_| OwnedFd::from(UdpSocket::bind("127.0.0.1:0").expect("socket")))
                        .collect();
                    let now = self.now;
                    self.hosts[i].node.on_sockets_opened(fds, now);
                }
                Output::Publish(s) => {
                    self.hosts[i].extra = s.sockets.iter().map(|x| x.id).collect();
                    self.hosts[i].published.push(*s);
                }
            }
        }
    }

    /// Host `i` connects to `to` for `peer`: accepted if a node listens
    /// there, refused otherwise.
    fn connect_stream(&mut self, i: usize, peer: Ipv4Addr, to: SocketAddrV4) {
        let now = self.now;
        let Some(&j) = self.listeners.get(&to) else {
            self.hosts[i]
                .node
                .on_stream_connect_failed(peer, "refused".into(), now);
            return;
        };
        let (a, b) = UnixStream::pair().expect("socket pair");
        let (a, b) = (OwnedFd::from(a), OwnedFd::from(b));
        self.pipes.insert(a.as_raw_fd(), (j, b.as_raw_fd()));
        self.pipes.insert(b.as_raw_fd(), (i, a.as_raw_fd()));
        self.hosts[i].node.on_stream_connected(peer, to, a, now);
        let seen_from = public(i, 45_000);
        self.hosts[j].node.on_stream_accepted(seen_from, b, now);
        self.collect(j);
    }

    /// Host `i` punches from `port` to `to` for `peer`: once the peer
    /// punches back at the endpoint `i` announced (its public address and
    /// the same port, as a port-preserving NAT maps it), both connect.
    fn punch(&mut self, i: usize, peer: Ipv4Addr, port: u16, to: SocketAddrV4) {
        let mine = SocketAddrV4::new(*self.hosts[i].public.ip(), port);
        let j = self.host_with_vip(peer).expect("a punch to a known host");
        let Some(k) = self
            .punches
            .iter()
            .position(|&(h, p, _, t)| h == j && p == self.hosts[i].vip && t == mine)
        else {
            self.punches.push((i, peer, port, to));
            return;
        };
        let (_, _, their_port, _) = self.punches.remove(k);
        assert_eq!(
            to,
            SocketAddrV4::new(*self.hosts[j].public.ip(), their_port)
        );
        let (a, b) = UnixStream::pair().expect("socket pair");
        let (a, b) = (OwnedFd::from(a), OwnedFd::from(b));
        self.pipes.insert(a.as_raw_fd(), (j, b.as_raw_fd()));
        self.pipes.insert(b.as_raw_fd(), (i, a.as_raw_fd()));
        self.punched += 1;
        let now = self.now;
        let vip_i = self.hosts[i].vip;
        self.hosts[i].node.on_stream_connected(peer, to, a, now);
        self.hosts[j].node.on_stream_connected(vip_i, mine, b, now);
        self.collect(j);
    }

    /// The server says it speaks TIME to every host, as a ringlink server
    /// does on login.
    fn serve_time(&mut self, ahead: u64) {
        self.time_server = Some(ahead);
        for i in 0..self.hosts.len() {
            self.answer_time(i, 0);
        }
        self.deliver_all();
    }

    fn answer_time(&mut self, i: usize, echo: u64) {
        let Some(ahead) = self.time_server else {
            return;
        };
        let clock = ahead + (self.now - self.t0).as_nanos() as u64;
        let seen = SocketAddrV4::new(*self.hosts[i].public.ip(), 30_000);
        let frame = ws::Time {
            echo,
            answer: Some((clock, seen)),
        }
        .encode();
        self.queue.push_back(Delivery::Server { to: i, frame });
    }

    /// The id host `i`'s latest table gives the stream end `fd`.
    fn stream_id(&self, i: usize, fd: RawFd) -> Option<(u16, SocketAddrV4)> {
        self.hosts[i]
            .published
            .last()?
            .streams
            .iter()
            .find(|s| s.fd.as_raw_fd() == fd)
            .map(|s| (s.id, s.remote))
    }

    fn answer_stun(&mut self, i: usize, local: u16, request: &[u8]) {
        if self.stun_blocked.contains(&i) {
            return;
        }
        let mut txid = stun::parse_binding_request(request)
            .expect("node sent a STUN request")
            .txid;
        if self.stun_wrong_txid {
            txid[0] ^= 0xff;
        }
        let mapped = if local == MAIN_SOCKET {
            self.hosts[i].public
        } else {
            extra_public(i, local)
        };
        let datagram = stun::encode_binding_response(&txid, mapped).to_vec();
        self.queue.push_back(Delivery::Stun {
            to: i,
            local,
            from: STUN,
            datagram,
        });
    }

    /// What the coordination server does with a frame that is not FORWARD:
    /// relay it to its `dst`, or to every other member for a broadcast.
    fn relay(&mut self, from: usize, frame: Vec<u8>) {
        let (src, dst) = match WsMessage::decode(&frame).expect("node sent a valid frame") {
            WsMessage::PeerConn(p) => (p.src, p.dst),
            WsMessage::Discovery(d) => (d.src, d.dst),
            WsMessage::Time(t) => {
                self.answer_time(from, t.echo);
                return;
            }
            WsMessage::General(g) => {
                if g.subtype == ws::general::SEALED {
                    self.sealed_generals.push((g.src, g.dst));
                }
                (g.src, g.dst)
            }
            other => panic!("node sent an unexpected frame {other:?}"),
        };
        assert_eq!(src, self.hosts[from].vip, "frames carry the sender's VIP");
        let targets: Vec<usize> = if dst == ws::BROADCAST {
            (0..self.hosts.len()).filter(|&j| j != from).collect()
        } else {
            self.host_with_vip(dst).into_iter().collect()
        };
        for to in targets {
            self.queue.push_back(Delivery::Server {
                to,
                frame: frame.clone(),
            });
        }
    }

    /// The server's ROUTE push, as sent right after login.
    fn push_routes(&mut self, to: usize, routes: &[SysRoute]) {
        for frame in SysRoute::encode_list(routes) {
            self.queue.push_back(Delivery::Server { to, frame });
        }
        self.deliver_all();
    }

    fn deliver_all(&mut self) {
        let mut n = 0;
        while let Some(d) = self.queue.pop_front() {
            n += 1;
            assert!(
                n < MAX_DELIVERIES,
                "nodes keep talking without time passing"
            );
            let now = self.now;
            let to = match d {
                Delivery::Udp {
                    to,
                    local,
                    from,
                    datagram,
                } => {
                    if self.open_at(to, (from, local), datagram) {
                        self.udp_delivered += 1;
                    }
                    to
                }
                Delivery::Stun {
                    to,
                    local,
                    from,
                    datagram,
                } => {
                    self.hosts[to].node.on_stun(from, local, &datagram, now);
                    to
                }
                Delivery::Server { to, frame } => {
                    self.hosts[to].node.on_server_frame(&frame, now);
                    to
                }
                Delivery::Stream { to, fd, datagram } => {
                    // As the stream's owner worker does: opened like a
                    // datagram, handed up named by the stream's id.
                    let Some((id, remote)) = self.stream_id(to, fd) else {
                        continue;
                    };
                    if self.open_at(to, (remote, id), datagram) {
                        self.stream_delivered += 1;
                    }
                    to
                }
                Delivery::StreamEnd { to, fd } => {
                    let Some((id, _)) = self.stream_id(to, fd) else {
                        continue;
                    };
                    self.pipes.remove(&fd);
                    self.hosts[to]
                        .node
                        .on_stream_ended(id, "closed by the peer".into(), now);
                    to
                }
            };
            self.collect(to);
        }
    }

    /// Host `to`'s dataplane opens `datagram`, received from `from` on
    /// socket or stream `local`, with a session of its latest table or
    /// its own key K(own VIP), and hands it up; false (counted) if it does
    /// not open.
    fn open_at(
        &mut self,
        to: usize,
        (from, local): (SocketAddrV4, u16),
        datagram: Vec<u8>,
    ) -> bool {
        let key = PeerKey::for_vip(CIPHER, PASSWORD, self.hosts[to].vip);
        let mut buf = datagram;
        let snap = self.hosts[to].published.last().cloned().unwrap_or_default();
        let now = self.now;
        let opened = self.hosts[to]
            .node
            .on_datagram(&snap, &key, (from, local), &mut buf, now)
            .is_ok();
        if !opened {
            self.open_failures += 1;
        }
        opened
    }

    /// Runs timers and deliveries until `done` holds or `ms` of simulated
    /// time have passed; says which.
    fn run_until(&mut self, ms: u64, mut done: impl FnMut(&Sim) -> bool) -> bool {
        let end = self.now + Duration::from_millis(ms);
        loop {
            self.deliver_all();
            if done(self) {
                return true;
            }
            let next = self
                .hosts
                .iter()
                .filter_map(|h| h.node.next_deadline())
                .min();
            match next {
                Some(t) if t <= end => self.now = self.now.max(t),
                _ => {
                    self.now = end;
                    return false;
                }
            }
            for i in 0..self.hosts.len() {
                if self.hosts[i]
                    .node
                    .next_deadline()
                    .is_some_and(|t| t <= self.now)
                {
                    self.hosts[i].node.on_timeout(self.now);
                    self.collect(i);
                }
            }
        }
    }

    fn run_for(&mut self, ms: u64) {
        self.run_until(ms, |_| false);
    }

    fn latest(&self, i: usize) -> &Snapshot {
        self.hosts[i]
            .published
            .last()
            .expect("a node publishes at start")
    }

    fn direct(&self, i: usize, j: usize) -> Option<SocketAddrV4> {
        self.latest(i)
            .direct
            .get(&self.hosts[j].vip)
            .map(|e| e.endpoint)
    }

    fn connected(&self, i: usize, j: usize) -> bool {
        self.direct(i, j) == Some(self.hosts[j].public)
    }

    fn publishes(&self, i: usize) -> usize {
        self.hosts[i].published.len()
    }

    /// Node `i` hears of `j` the way it does in production: a packet from
    /// `j` came through the relay.
    fn relayed(&mut self, i: usize, j: usize) {
        let (v, now) = (self.hosts[j].vip, self.now);
        self.hosts[i].node.on_relayed(v, now);
        self.collect(i);
        self.deliver_all();
    }

    fn connect(&mut self, a: usize, b: usize) {
        self.relayed(a, b);
        assert!(
            self.run_until(20_000, |s| s.connected(a, b) && s.connected(b, a)),
            "{} and {} never connected",
            self.hosts[a].vip,
            self.hosts[b].vip
        );
    }
}

fn opens_with(key: &PeerKey, datagram: &[u8]) -> bool {
    key.open_in_place(&mut datagram.to_vec()).is_ok()
}

#[test]
fn peers_connect_and_seal_with_the_receivers_key() {
    let mut sim = Sim::new(2, 1, 0);
    sim.connect(0, 1);
    assert_eq!(
        sim.open_failures, 0,
        "every datagram opened at its receiver"
    );
    assert!(sim.udp_delivered >= 2, "heartbeats went both ways");
    let own_key = |i: usize| PeerKey::for_vip(CIPHER, PASSWORD, sim.hosts[i].vip);
    for (a, b) in [(0, 1), (1, 0)] {
        let entry = &sim.latest(a).direct[&sim.hosts[b].vip];
        // What a's workers will seal data with is b's key, not a's.
        let sealed = entry
            .key
            .seal_to_vec(IvSequence::with_prefix([7; 8]).next_iv(), b"data");
        assert!(opens_with(&own_key(b), &sealed));
        assert!(!opens_with(&own_key(a), &sealed));
        assert_eq!(sim.latest(a).own_vip, sim.hosts[a].vip);
    }
}

#[test]
fn runs_are_deterministic() {
    let trace = |seed| {
        let mut sim = Sim::new(3, seed, 5);
        sim.loss = 0.2;
        sim.relayed(0, 1);
        sim.relayed(2, 1);
        sim.run_for(30_000);
        let snapshots: Vec<String> = sim
            .hosts
            .iter()
            .flat_map(|h| &h.published)
            .map(|s| {
                let mut direct: Vec<_> = s.direct.iter().map(|(v, e)| (*v, e.endpoint)).collect();
                direct.sort();
                let mut hops: Vec<_> = s
                    .tun
                    .iter()
                    .map(|(d, h)| (*d, h.wrap_for, h.peer.as_ref().map(|p| p.endpoint)))
                    .collect();
                hops.sort();
                format!("{} {direct:?} {hops:?}", s.generation)
            })
            .collect();
        (snapshots, sim.udp_delivered)
    };
    assert_eq!(trace(5), trace(5));
}

#[test]
fn snapshot_is_republished_on_every_change_and_only_then() {
    let mut sim = Sim::new(2, 2, 0);
    assert_eq!(sim.publishes(0), 1, "the first table");

    // Connect: exactly one new table on each side.
    sim.connect(0, 1);
    assert_eq!((sim.publishes(0), sim.publishes(1)), (2, 2));

    // The handshake, two tables on each side. The initiator's session
    // seals at once, and the first message under it from the responder
    // marks the peer as one that seals. The responder's opens at once, and
    // seals (and protects) once the initiator's first message shows the
    // initiator has it.
    sim.run_for(20_000);
    assert_eq!((sim.publishes(0), sim.publishes(1)), (4, 4));
    for (i, peer) in [(0, 1), (1, 0)] {
        let t = sim.latest(i);
        let entry = &t.direct[&vip(peer)];
        let seal = &entry.session.as_ref().expect("sealed with a session").0;
        assert_eq!(seal.peer, vip(peer));
        assert!(t.sessions.contains_key(&seal.local_index));
        assert!(
            t.protected.contains(&vip(peer)),
            "{i} takes only sealed traffic"
        );
    }

    // Heartbeats, STUN and junk from the server change nothing.
    sim.run_for(20_000);
    assert_eq!((sim.publishes(0), sim.publishes(1)), (4, 4));
    let now = sim.now;
    // An empty frame, and a HEARTBEAT cut short.
    sim.hosts[0].node.on_server_frame(&[], now);
    sim.hosts[0]
        .node
        .on_peer_message(public(1, 40_000), MAIN_SOCKET, &[0], None, now);
    sim.collect(0);
    assert!(sim.connected(0, 1));
    assert_eq!((sim.publishes(0), sim.publishes(1)), (4, 4));
    assert_eq!(sim.hosts[0].node.stats.malformed, 2);

    // Path change: b's NAT rebinds; a follows the new source port.
    let moved = public(1, 41_000);
    sim.hosts[1].public = moved;
    assert!(sim.run_until(5_000, |s| s.direct(0, 1) == Some(moved)));
    assert_eq!(sim.publishes(0), 5);

    // Route push: one table carrying the subnet, and an install request.
    let lan = SysRoute {
        dst: Ipv4Cidr {
            addr: Ipv4Addr::new(192, 168, 20, 0),
            prefix: 24,
        },
        next: sim.hosts[1].vip,
    };
    sim.push_routes(0, &[lan]);
    assert_eq!(sim.publishes(0), 6);
    assert_eq!(sim.hosts[0].installs, [vec![lan]]);
    let subnets = &sim.latest(0).subnets;
    assert_eq!(subnets.len(), 1);
    assert_eq!(
        (subnets[0].net, subnets[0].mask),
        (
            Ipv4Addr::new(192, 168, 20, 0),
            Ipv4Addr::new(255, 255, 255, 0)
        )
    );
    assert_eq!(subnets[0].hop.wrap_for, Some(sim.hosts[1].vip));
    // The same push again is nothing new for the table.
    sim.push_routes(0, &[lan]);
    assert_eq!(sim.publishes(0), 7, "a push is republished");
    assert_eq!(sim.latest(0).subnets.len(), 1, "but not duplicated");

    // Disconnect: the path goes quiet; one table without the peer.
    sim.blocked.extend([(0, 1), (1, 0)]);
    assert!(sim.run_until(10_000, |s| s.direct(0, 1).is_none()));
    assert_eq!(sim.publishes(0), 8);
    sim.run_for(5_000);
    assert_eq!(
        sim.publishes(0),
        8,
        "nothing changes while the path is down"
    );

    // Generations only move forward, one per table.
    let gens: Vec<u64> = sim.hosts[0]
        .published
        .iter()
        .map(|s| s.generation)
        .collect();
    assert!(gens.windows(2).all(|w| w[1] == w[0] + 1), "{gens:?}");
}

#[test]
fn stun_responses_must_answer_our_request() {
    let mut sim = Sim::new(2, 3, 0);
    sim.stun_wrong_txid = true;
    sim.relayed(0, 1);
    sim.run_for(5_000);
    assert!(sim.hosts[0].node.stats.stun_ignored >= 1);
    assert_eq!(sim.direct(0, 1), None, "no public endpoint learned");

    // A well-formed answer from a host that is not our STUN server.
    let before = sim.hosts[0].node.stats.stun_ignored;
    let forged = stun::encode_binding_response(&[1; 12], public(0, 40_000));
    let now = sim.now;
    sim.hosts[0]
        .node
        .on_stun(public(1, 40_000), MAIN_SOCKET, &forged, now);
    assert_eq!(sim.hosts[0].node.stats.stun_ignored, before + 1);

    // With honest answers the retry cycle gets there.
    sim.stun_wrong_txid = false;
    sim.relayed(0, 1);
    assert!(sim.run_until(120_000, |s| s.connected(0, 1) && s.connected(1, 0)));
}

#[test]
fn frames_for_a_down_server_are_dropped_not_queued() {
    let mut sim = Sim::new(2, 4, 0);
    sim.hosts[0].node.set_server_up(false);
    sim.relayed(0, 1);
    sim.run_for(3_000);
    assert!(sim.hosts[0].node.stats.ws_dropped >= 1);
    assert_eq!(sim.direct(0, 1), None);
    sim.hosts[0].node.set_server_up(true);
    sim.collect(0);
    sim.relayed(1, 0);
    assert!(sim.run_until(20_000, |s| s.connected(0, 1) && s.connected(1, 0)));
}

#[test]
fn latency_routing_goes_around_a_blocked_link() {
    // a — b — c, with a ↔ c blocked: a's table sends c's traffic via b.
    let mut sim = Sim::new(3, 6, 5);
    sim.blocked.extend([(0, 2), (2, 0)]);
    sim.connect(0, 1);
    sim.connect(1, 2);
    let (b, c) = (sim.hosts[1].vip, sim.hosts[2].vip);
    assert!(
        sim.run_until(300_000, |s| {
            let snap = s.latest(0);
            let via_b = snap.direct.get(&b).map(|e| e.endpoint);
            via_b.is_some()
                && snap
                    .tun
                    .get(&c)
                    .and_then(|h| h.peer.as_ref())
                    .map(|p| p.endpoint)
                    == via_b
        }),
        "a never learned the route to c via b"
    );
    assert_eq!(sim.open_failures, 0, "probes and adverts sealed right");
    assert_eq!(sim.direct(0, 2), None);
}

#[test]
fn nat_classes_travel_with_the_endpoint_and_choose_port_prediction() {
    use ringlink::nat::{Delta, Filtering, Mapping, NatClass, NatKind, Outcome};
    let class = |i: usize, mapping, delta| {
        Outcome::Classified(NatClass {
            mapped: public(i, 40_000),
            last_mapped: public(i, 40_000),
            kind: NatKind {
                behind_nat: true,
                mapping,
                filtering: Filtering::AddressAndPortDependent,
                delta,
            },
        })
    };
    let mut sim = Sim::new(2, 5, 0);
    // Host 0 behind a port-restricted cone, host 1 behind a sequential
    // symmetric NAT, each classified before they meet.
    sim.hosts[0]
        .node
        .on_nat_outcome(class(0, Mapping::EndpointIndependent, Delta::Equal));
    sim.hosts[1]
        .node
        .on_nat_outcome(class(1, Mapping::EndpointDependent, Delta::Independent(1)));
    // Held apart at first, so the attempt runs its whole spray (paced at
    // 200 per second, and cut short by success).
    sim.blocked.extend([(0, 1), (1, 0)]);
    sim.relayed(0, 1);
    sim.run_for(2_000);
    let window: HashSet<u16> = sim
        .stray
        .iter()
        .filter(|(from, to)| *from == 0 && to.ip() == sim.hosts[1].public.ip())
        .map(|(_, to)| to.port())
        .collect();
    sim.blocked.clear();
    sim.connect(0, 1);
    let now = sim.now;
    let line = |i: usize, j: usize| {
        let (peers, _) = sim.hosts[i].node.status(now);
        peers
            .into_iter()
            .find(|p| p.vip == sim.hosts[j].vip.to_string())
            .expect("peer listed")
    };
    let (a, b) = (line(0, 1), line(1, 0));
    assert_eq!(a.nat.as_deref(), Some("symmetric/+1"));
    assert_eq!(b.nat.as_deref(), Some("cone/port-restricted"));
    assert_eq!(a.method.as_deref(), Some("port prediction"));
    assert_eq!(b.method.as_deref(), Some("port prediction"));
    // The sequential side observed its newest port from a fresh socket
    // (its first, id 1) and announced it; the cone side sprayed the window
    // around that, not around the stale mapping of its first UDP4CONN. The
    // sequential side sprayed nothing.
    let observed = extra_public(1, 1).port();
    let expected: HashSet<u16> = (observed - 4..=observed + 60)
        .filter(|&p| p != observed)
        .collect();
    assert!(expected.is_subset(&window), "sprayed {window:?}");
    assert!(
        !window.contains(&40_064),
        "nothing around the stale mapping"
    );
    assert!(!sim.stray.iter().any(|(from, _)| *from == 1));
}

#[test]
fn a_port_filtering_cone_whose_mapping_was_taken_gets_through_from_a_fresh_port() {
    use ringlink::nat::{Delta, Filtering, Mapping, NatClass, NatKind, Outcome};
    let cone = |i: usize| {
        Outcome::Classified(NatClass {
            mapped: public(i, 40_000),
            last_mapped: public(i, 40_000),
            kind: NatKind {
                behind_nat: true,
                mapping: Mapping::EndpointIndependent,
                filtering: Filtering::AddressAndPortDependent,
                delta: Delta::Equal,
            },
        })
    };
    let mut sim = Sim::new(2, 9, 0);
    sim.hosts[0].node.on_nat_outcome(cone(0));
    sim.hosts[1].node.on_nat_outcome(cone(1));
    // Nothing from host 1 reaches host 0's main socket: what a bare
    // masquerade does once host 1's first probe has claimed the mapping.
    sim.blocked_main.insert((1, 0));
    sim.relayed(0, 1);
    assert!(
        sim.run_until(20_000, |s| s.direct(1, 0).is_some()
            && s.direct(0, 1).is_some()),
        "never connected around the taken mapping"
    );
    let entry = sim.latest(0).direct[&sim.hosts[1].vip].clone();
    let socket = entry.socket.expect("host 0 sends from its fresh port");
    assert_eq!(entry.endpoint, sim.hosts[1].public);
    assert_eq!(
        sim.direct(1, 0),
        Some(extra_public(0, socket.id)),
        "host 1's path is host 0's fresh port, learned by STUN and announced"
    );
    assert!(
        sim.latest(0).sockets.contains(&socket),
        "workers receive on it"
    );
    assert_eq!(sim.open_failures, 0);
}

/// The status line node `i` shows for node `j`.
fn peer_line(sim: &Sim, i: usize, j: usize) -> ringlink::control::status::PeerLine {
    let (peers, _) = sim.hosts[i].node.status(sim.now);
    let v = sim.hosts[j].vip.to_string();
    peers
        .into_iter()
        .find(|p| p.vip == v)
        .expect("the peer is listed")
}

#[test]
fn ringlink_nodes_pin_keys_and_complete_a_handshake() {
    let mut sim = Sim::new(2, 3, 0);
    sim.relayed(0, 1);
    let done = sim.run_until(20_000, |s| {
        peer_line(s, 0, 1).handshake_secs.is_some() && peer_line(s, 1, 0).handshake_secs.is_some()
    });
    assert!(
        done,
        "no handshake: {:?} / {:?}",
        peer_line(&sim, 0, 1),
        peer_line(&sim, 1, 0)
    );
    for (i, j) in [(0, 1), (1, 0)] {
        let key = sim.hosts[j].node.public_key();
        let line = peer_line(&sim, i, j);
        let shown = line.key.expect("a pinned key");
        assert_eq!(
            (shown.fingerprint, shown.source.as_str()),
            (key.fingerprint(), "tofu")
        );
        // The pins file the driver would write names the peer's key.
        let saved = sim.hosts[i].saved_pins.last().expect("pins saved");
        assert!(
            saved.contains(&format!("{} {}", sim.hosts[j].vip, key.to_base64())),
            "{saved}"
        );
        assert_eq!(sim.hosts[i].saved_pins.len(), 1, "pinned once, saved once");
    }
    let (a, b) = (
        sim.hosts[0].node.handshake_stats(),
        sim.hosts[1].node.handshake_stats(),
    );
    // One handshake, not two: the lower VIP initiated, the other answered.
    assert_eq!((a.initiations_sent, b.initiations_sent), (1, 0));
    assert_eq!((a.handshakes_completed, b.handshakes_completed), (1, 1));
    assert_eq!(
        b.transport_opened, 1,
        "the initiator's keepalive confirmed it"
    );
    // Rekeys on time keep it going.
    sim.run_for(300_000);
    let line = peer_line(&sim, 0, 1);
    assert!(line.handshake_secs.is_some_and(|s| s < 120.0), "{line:?}");
    assert!(line.handshakes >= 3, "{line:?}");
}

#[test]
fn a_node_back_with_another_key_is_refused() {
    let mut sim = Sim::new(2, 4, 0);
    sim.relayed(0, 1);
    assert!(sim.run_until(20_000, |s| peer_line(s, 0, 1).handshake_secs.is_some()));
    let pinned = sim.hosts[1].node.public_key();
    // Node 1 restarts with a new key on the same VIP.
    let t = sim.now;
    sim.hosts[1].node = Node::new(node_config(1, 4, 0, 99), t).unwrap();
    sim.hosts[1].node.set_server_up(true);
    sim.collect(1);
    let new_key = sim.hosts[1].node.public_key();
    assert_ne!(pinned, new_key);
    sim.relayed(1, 0);
    sim.relayed(0, 1);
    sim.run_for(200_000);
    let a = sim.hosts[0].node.handshake_stats();
    assert!(a.keys_refused >= 1, "{a:?}");
    assert_eq!(
        a.handshakes_completed, 1,
        "nothing completed with the new key: {a:?}"
    );
    let line = peer_line(&sim, 0, 1);
    assert_eq!(line.key.unwrap().fingerprint, pinned.fingerprint());
    // The old session expired and no new one was made.
    assert_eq!(line.handshake_secs, None);
    assert!(a.sessions_expired >= 1);
}

#[test]
fn a_peer_that_announced_no_key_is_sent_no_handshake() {
    let mut sim = Sim::new(2, 5, 0);
    // A stock Candy node at .50: its UDP4CONN has no marker and no key.
    let candy = Ipv4Addr::new(10, 77, 0, 50);
    let frame = ringlink::proto::ws::PeerConn {
        src: candy,
        dst: sim.hosts[0].vip,
        endpoint: public(9, 40_000),
        tail: None,
    }
    .encode();
    let now = sim.now;
    sim.hosts[0].node.on_server_frame(&frame, now);
    sim.collect(0);
    sim.relayed(0, 1);
    sim.run_for(60_000);
    // The two ringlink nodes did handshake through the relay or directly...
    assert!(sim.hosts[0].node.handshake_stats().handshakes_completed >= 1);
    // ...and nothing of it went to the Candy node.
    assert!(
        sim.sealed_generals.iter().all(|&(_, dst)| dst != candy),
        "{:?}",
        sim.sealed_generals
    );
    // Whatever went to its address over UDP (Candy's heartbeats) was no
    // handshake or session message.
    let candy_key = PeerKey::for_vip(CIPHER, PASSWORD, candy);
    let mut to_candy = 0;
    for (&(_, to), d) in sim.stray.iter().zip(&sim.stray_datagrams) {
        if to == public(9, 40_000) {
            let mut buf = d.clone();
            let plain = candy_key
                .open_in_place(&mut buf)
                .expect("sealed for the Candy node");
            assert!(
                !(0xF0..=0xF4).contains(&plain[0]),
                "type {:#x} sent to a Candy peer",
                plain[0]
            );
            to_candy += 1;
        }
    }
    assert!(to_candy > 0, "the Candy peer was tried over UDP at all");
    let (peers, _) = sim.hosts[0].node.status(sim.now);
    let line = peers
        .iter()
        .find(|p| p.vip == candy.to_string())
        .expect("listed");
    assert_eq!((line.key.is_none(), line.handshake_secs), (true, None));
    assert_eq!(line.speaks, "candy");
}

#[test]
fn without_a_direct_path_the_handshake_goes_through_the_relay() {
    let mut sim = Sim::new(2, 6, 0);
    sim.blocked.insert((0, 1));
    sim.blocked.insert((1, 0));
    sim.relayed(0, 1);
    let done = sim.run_until(20_000, |s| {
        peer_line(s, 0, 1).handshake_secs.is_some() && peer_line(s, 1, 0).handshake_secs.is_some()
    });
    assert!(done, "no handshake over the relay");
    assert!(!sim.connected(0, 1), "UDP is blocked: no direct path");
    let (v0, v1) = (sim.hosts[0].vip, sim.hosts[1].vip);
    // Initiation and keepalive one way, the response the other.
    assert!(sim.sealed_generals.contains(&(v0, v1)));
    assert!(sim.sealed_generals.contains(&(v1, v0)));
    assert_eq!(sim.hosts[1].node.handshake_stats().transport_opened, 1);
}

#[test]
fn after_the_handshake_everything_between_ringlink_nodes_is_sealed_and_unsealed_claims_are_refused()
{
    let mut sim = Sim::new(2, 5, 0);
    sim.connect(0, 1);
    sim.run_for(20_000);
    for (i, j) in [(0, 1), (1, 0)] {
        assert_eq!(peer_line(&sim, i, j).sealing, "session", "{i} → {j}");
    }
    assert_eq!(sim.open_failures, 0);
    let path = sim.direct(0, 1).expect("direct");

    // A heartbeat in Candy's envelope naming b (sealed with a's key, which
    // every member can derive) from a third address: refused, path kept.
    let third = SocketAddrV4::new(Ipv4Addr::new(203, 0, 113, 66), 5555);
    let hb = ringlink::proto::udp::Heartbeat::ringlink(sim.hosts[1].vip, true).encode();
    let now = sim.now;
    let before = sim.hosts[0].node.stats.unsealed_refused;
    sim.hosts[0]
        .node
        .on_peer_message(third, MAIN_SOCKET, &hb, None, now);
    sim.collect(0);
    assert_eq!(sim.hosts[0].node.stats.unsealed_refused, before + 1);
    // A session's message that names someone else is refused too.
    sim.hosts[0]
        .node
        .on_peer_message(third, MAIN_SOCKET, &hb, Some(vip(4)), now);
    assert_eq!(sim.hosts[0].node.stats.unsealed_refused, before + 2);
    sim.run_for(3_000);
    assert_eq!(sim.direct(0, 1), Some(path), "the path did not move");

    // b's sealed heartbeat opens at a once; the same bytes again do not.
    let seal = sim.latest(1).direct[&vip(0)].session.clone().unwrap().0;
    let mut d = vec![0u8; ENVELOPE_LEN + hb.len()];
    d[ENVELOPE_LEN..].copy_from_slice(&hb);
    let end = d.len();
    seal.seal_datagram(&mut d, ENVELOPE_LEN..end).unwrap();
    let snap = sim.latest(0).clone();
    let key = PeerKey::for_vip(CIPHER, PASSWORD, vip(0));
    let opened = frame::open(&snap, &key, &mut d.clone()).expect("opens once");
    assert_eq!(opened.session.map(|s| s.peer), Some(vip(1)));
    assert!(matches!(
        frame::open(&snap, &key, &mut d.clone()),
        Err(frame::OpenError::Replayed)
    ));
}

#[test]
fn keys_travel_on_joining_so_members_that_never_try_a_direct_path_make_sessions() {
    let mut sim = Sim::new(3, 6, 0);
    // No UDP at all, and no traffic that would start an attempt: only the
    // key broadcasts of joining, their unicast answers and handshakes
    // through the relay.
    for a in 0..3 {
        for b in 0..3 {
            sim.blocked.insert((a, b));
        }
    }
    sim.run_for(15_000);
    for i in 0..3 {
        for j in (0..3).filter(|&j| j != i) {
            let key = sim.hosts[j].node.public_key().to_base64();
            let pins = sim.hosts[i].saved_pins.last().expect("pins saved");
            assert!(
                pins.contains(&format!("{} {key}", vip(j))),
                "{i} pinned {j}: {pins}"
            );
            let t = sim.latest(i);
            assert!(
                t.sessions.values().any(|s| s.peer == vip(j)),
                "{i}'s dataplane has a session with {j}"
            );
        }
    }
    assert!(
        !sim.sealed_generals.is_empty(),
        "the handshakes went through the relay"
    );
    assert_eq!(sim.udp_delivered, 0);
}

/// How node `i` reaches `j`, as `ringlink status` says.
fn path(sim: &Sim, i: usize, j: usize) -> String {
    peer_line(sim, i, j).path
}

/// Two sites whose networks drop UDP (no STUN answer, nothing between
/// them); the second listens for TCP at its public endpoint.
fn udp_blocked_with_listener(seed: u64) -> Sim {
    let listen = public(1, 40_000);
    let mut sim = Sim::new_with(2, seed, 0, |i, cfg| {
        if i == 1 {
            cfg.public_endpoint = Some(listen);
            cfg.peer.reachable = true;
            cfg.tcp_offer = Some(listen);
        }
    });
    sim.listeners.insert(listen, 1);
    sim.stun_blocked.extend([0, 1]);
    sim.blocked.extend([(0, 1), (1, 0)]);
    sim
}

#[test]
fn with_udp_dropped_a_pair_goes_direct_over_tcp_to_the_listener() {
    let mut sim = udp_blocked_with_listener(11);
    // The server speaks TIME, so a punch could be proposed too: a
    // listener wins over it.
    sim.serve_time(1_700_000_000_000_000_000);
    sim.relayed(0, 1);
    sim.relayed(1, 0);
    assert!(
        sim.run_until(40_000, |s| path(s, 0, 1) == "tcp" && path(s, 1, 0) == "tcp"),
        "never on TCP: {} / {}",
        path(&sim, 0, 1),
        path(&sim, 1, 0)
    );
    // Each table sends to the other over the stream, and only there.
    for (i, j) in [(0, 1), (1, 0)] {
        let e = sim.latest(i).direct.get(&vip(j)).expect("a table entry");
        let s = e.stream.as_ref().expect("the entry names the stream");
        assert!(sim.latest(i).streams.contains(s));
        assert_eq!(e.channel, None);
    }
    assert_eq!(sim.latest(0).streams.len(), 1, "one stream serves the pair");
    assert_eq!(
        sim.latest(0).streams[0].remote,
        public(1, 40_000),
        "to the listener"
    );
    assert_eq!(sim.punched, 0, "no punch");
    // Rechecked every second, it stays up; the frames are sealed in the
    // pair's session (none opened with a node key).
    let before = sim.stream_delivered;
    sim.run_for(10_000);
    assert_eq!(
        (path(&sim, 0, 1), path(&sim, 1, 0)),
        ("tcp".into(), "tcp".into())
    );
    assert!(sim.stream_delivered >= before + 10, "no rechecks");
    assert_eq!(sim.open_failures, 0);
    assert_eq!(sim.hosts[0].node.stats.tcp_failures, 0);
    // Status says why: UDP found nothing, the stream is proven.
    let why = peer_line(&sim, 0, 1).why;
    assert!(
        why.starts_with("no direct UDP path") && why.ends_with("; TCP stream proven"),
        "{why}"
    );
}

#[test]
fn a_stream_that_stops_answering_falls_back_to_the_relay_within_four_seconds() {
    let mut sim = udp_blocked_with_listener(12);
    sim.relayed(0, 1);
    sim.relayed(1, 0);
    assert!(sim.run_until(40_000, |s| path(s, 0, 1) == "tcp" && path(s, 1, 0) == "tcp"));
    // The stream goes dark both ways (a NAT that forgot the connection):
    // frames are written and never arrive.
    sim.streams_dark = true;
    sim.queue.retain(|d| !matches!(d, Delivery::Stream { .. }));
    let cut = sim.now;
    assert!(
        sim.run_until(10_000, |s| path(s, 0, 1) == "relay"
            && path(s, 1, 0) == "relay"),
        "still {} / {}",
        path(&sim, 0, 1),
        path(&sim, 1, 0)
    );
    assert!(
        sim.now - cut <= Duration::from_secs(4),
        "took {:?}",
        sim.now - cut
    );
    assert!(!sim.latest(0).direct.contains_key(&vip(1)));
    assert!(sim.hosts[0].node.stats.tcp_failures >= 1);
    // On the relay, status names what failed: no TURN server here, and
    // the stream that went dark.
    let why = peer_line(&sim, 0, 1).why;
    assert!(why.contains("; no TURN server; TCP failed "), "{why}");
}

#[test]
fn with_udp_back_the_pair_climbs_from_tcp_to_direct_udp() {
    let mut sim = udp_blocked_with_listener(13);
    sim.relayed(0, 1);
    sim.relayed(1, 0);
    assert!(sim.run_until(40_000, |s| path(s, 0, 1) == "tcp" && path(s, 1, 0) == "tcp"));
    sim.stun_blocked.clear();
    sim.blocked.clear();
    assert!(
        sim.run_until(120_000, |s| s.connected(0, 1) && s.connected(1, 0)),
        "never direct over UDP: {} {} / {} {}",
        path(&sim, 0, 1),
        peer_line(&sim, 0, 1).state,
        path(&sim, 1, 0),
        peer_line(&sim, 1, 0).state
    );
    assert_eq!(path(&sim, 0, 1), "direct");
    let why = peer_line(&sim, 0, 1).why;
    assert!(
        why.starts_with("direct UDP") && why.ends_with("proven by challenge"),
        "{why}"
    );
    // The stream is closed once UDP wins.
    sim.run_for(2_000);
    assert!(sim.latest(0).streams.is_empty() && sim.latest(1).streams.is_empty());
}

#[test]
fn a_stream_on_which_no_peer_speaks_is_closed() {
    let mut sim = udp_blocked_with_listener(14);
    let (a, _b) = UnixStream::pair().expect("socket pair");
    let now = sim.now;
    sim.hosts[1]
        .node
        .on_stream_accepted(public(7, 1234), OwnedFd::from(a), now);
    sim.collect(1);
    assert_eq!(sim.latest(1).streams.len(), 1);
    assert!(sim.run_until(11_000, |s| s.latest(1).streams.is_empty()));
    assert!(sim.latest(1).direct.is_empty());
}

#[test]
fn with_udp_dropped_and_no_listener_the_pair_meets_by_tcp_hole_punch() {
    let mut sim = Sim::new(2, 15, 0);
    sim.serve_time(1_700_000_000_000_000_000);
    sim.stun_blocked.extend([0, 1]);
    sim.blocked.extend([(0, 1), (1, 0)]);
    sim.relayed(0, 1);
    sim.relayed(1, 0);
    assert!(
        sim.run_until(40_000, |s| path(s, 0, 1) == "tcp" && path(s, 1, 0) == "tcp"),
        "never on TCP: {} / {}; punches {:?}, stats {:?} / {:?}",
        path(&sim, 0, 1),
        path(&sim, 1, 0),
        sim.punches,
        sim.hosts[0].node.stats,
        sim.hosts[1].node.stats
    );
    assert_eq!(sim.punched, 1, "one punch, proposed by the lower VIP");
    assert!(sim.punches.is_empty());
    assert_eq!(sim.latest(0).streams.len(), 1);
    sim.run_for(5_000);
    assert_eq!(
        (path(&sim, 0, 1), path(&sim, 1, 0)),
        ("tcp".into(), "tcp".into())
    );
    assert_eq!(sim.open_failures, 0);
}

#[test]
fn a_server_without_time_means_no_punch_and_the_relay() {
    let mut sim = Sim::new(2, 16, 0);
    sim.stun_blocked.extend([0, 1]);
    sim.blocked.extend([(0, 1), (1, 0)]);
    sim.relayed(0, 1);
    sim.relayed(1, 0);
    sim.run_for(40_000);
    assert_eq!(
        (path(&sim, 0, 1), path(&sim, 1, 0)),
        ("relay".into(), "relay".into())
    );
    assert_eq!(sim.punched + sim.punches.len(), 0);
    let why = peer_line(&sim, 0, 1).why;
    assert!(
        why.ends_with("; no TCP listener on either side, and no server clock to punch by"),
        "{why}"
    );
}
