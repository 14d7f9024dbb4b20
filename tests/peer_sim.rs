//! Two (or more) `PeerManager`s wired through a simulated network: UDP with
//! seeded loss and cuts, a reliable WS relay, a STUN server, and ping traffic
//! that fires try-P2P the way relayed packets do in Candy. All on a simulated
//! clock; nothing sleeps.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use ringlink::peer::{Action, PeerConfig, PeerManager, PeerState};
use ringlink::proto::udp::Nonce;
use ringlink::rng::SplitMix64;

const UDP_DELAY: Duration = Duration::from_millis(10);
const WS_DELAY: Duration = Duration::from_millis(20);

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Udp {
    Heartbeat {
        tunip: Ipv4Addr,
        ack: bool,
        marked: bool,
    },
    Ping {
        tunip: Ipv4Addr,
        nonce: Nonce,
    },
    Pong {
        tunip: Ipv4Addr,
        nonce: Nonce,
    },
    Data {
        src: Ipv4Addr,
        reply: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Ws {
    PublicInfo { ep: SocketAddrV4, marked: bool },
    LanInfo(SocketAddrV4),
    Discovery { broadcast: bool },
    Forward { reply: bool },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Msg {
    Udp {
        to: usize,
        from: SocketAddrV4,
        body: Udp,
    },
    Stun {
        to: usize,
        mapped: SocketAddrV4,
    },
    Ws {
        to: usize,
        src: Ipv4Addr,
        body: Ws,
    },
}

struct Host {
    m: PeerManager,
    vip: Ipv4Addr,
    public: SocketAddrV4,
    lan: SocketAddrV4,
    lan_id: u32,
    /// Marks its messages as ringlink's and reads marks; a stock Candy
    /// host neither marks nor sees marks (trailing bytes it never reads).
    ringlink: bool,
    /// (ms since t0, peer, state entered) for every change observed.
    history: Vec<(u64, Ipv4Addr, PeerState)>,
    notes: Vec<(u64, Action)>,
    /// The data path as the control node keeps it: only what the
    /// CONNECTED, path-change and disconnect actions said.
    direct: BTreeMap<Ipv4Addr, SocketAddrV4>,
}

struct Sim {
    t0: Instant,
    now: Instant,
    hosts: Vec<Host>,
    queue: BinaryHeap<Reverse<(Instant, u64, Msg)>>,
    seq: u64,
    rng: SplitMix64,
    udp_loss: f64,
    /// Peer-to-peer UDP blackholed (STUN still works, as with a broken path
    /// between two NATs).
    udp_cut: bool,
    /// (from, to, period, next) pings; replies come back on the same rules.
    pings: Vec<(usize, usize, Duration, Instant)>,
    /// A third party that captures every peer-to-peer datagram and sends a
    /// copy from its own address this much later.
    replayer: Option<(SocketAddrV4, Duration)>,
}

fn vip(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, 0, i)
}

impl Sim {
    fn new(n: usize, seed: u64, cfg: impl Fn(usize, &mut PeerConfig)) -> Self {
        let t0 = Instant::now();
        let hosts = (0..n)
            .map(|i| {
                let v = vip(i as u8 + 1);
                let public =
                    SocketAddrV4::new(Ipv4Addr::new(198, 51, 100, i as u8 + 1), 40_000 + i as u16);
                let lan = SocketAddrV4::new(Ipv4Addr::new(192, 168, i as u8 + 1, 10), 50_000);
                let mut c = PeerConfig::new(v);
                c.lan_candidate = Some(lan);
                cfg(i, &mut c);
                Host {
                    m: PeerManager::new(c, t0).unwrap(),
                    vip: v,
                    public,
                    lan,
                    lan_id: i as u32,
                    ringlink: false,
                    history: Vec::new(),
                    notes: Vec::new(),
                    direct: BTreeMap::new(),
                }
            })
            .collect();
        Sim {
            t0,
            now: t0,
            hosts,
            queue: BinaryHeap::new(),
            seq: 0,
            rng: SplitMix64::new(seed),
            udp_loss: 0.0,
            udp_cut: false,
            pings: Vec::new(),
            replayer: None,
        }
    }

    fn ms(&self, t: Instant) -> u64 {
        (t - self.t0).as_millis() as u64
    }

    fn at(&self, ms: u64) -> Instant {
        self.t0 + Duration::from_millis(ms)
    }

    fn index_of(&self, v: Ipv4Addr) -> Option<usize> {
        self.hosts.iter().position(|h| h.vip == v)
    }

    fn push(&mut self, delay: Duration, msg: Msg) {
        self.seq += 1;
        self.queue.push(Reverse((self.now + delay, self.seq, msg)));
    }

    fn lost(&mut self) -> bool {
        self.udp_loss > 0.0 && self.rng.next_f64() < self.udp_loss
    }

    fn send_udp(&mut self, from: usize, to: SocketAddrV4, body: Udp) {
        if self.udp_cut || self.lost() {
            return;
        }
        let src_lan = self.hosts[from].lan_id;
        let dest = self.hosts.iter().enumerate().find_map(|(j, h)| {
            if h.public == to {
                Some((j, self.hosts[from].public))
            } else if h.lan == to && h.lan_id == src_lan {
                Some((j, self.hosts[from].lan))
            } else {
                None
            }
        });
        if let Some((j, src)) = dest {
            self.push(
                UDP_DELAY,
                Msg::Udp {
                    to: j,
                    from: src,
                    body,
                },
            );
            if let Some((eve, lag)) = self.replayer {
                let copy = Msg::Udp {
                    to: j,
                    from: eve,
                    body,
                };
                self.push(UDP_DELAY + lag, copy);
            }
        }
    }

    fn send_ws(&mut self, from: usize, dst: Ipv4Addr, body: Ws) {
        if let Some(j) = self.index_of(dst) {
            let src = self.hosts[from].vip;
            self.push(WS_DELAY, Msg::Ws { to: j, src, body });
        }
    }

    /// An IP packet from host `from` to `dst`: direct if CONNECTED, else relayed.
    fn send_data(&mut self, from: usize, dst: Ipv4Addr, reply: bool) {
        let src = self.hosts[from].vip;
        match self.hosts[from].direct.get(&dst).copied() {
            Some(ep) => self.send_udp(from, ep, Udp::Data { src, reply }),
            None => self.send_ws(from, dst, Ws::Forward { reply }),
        }
    }

    fn run_actions(&mut self, i: usize) {
        let now_ms = self.ms(self.now);
        while let Some(a) = self.hosts[i].m.poll_action() {
            match a {
                Action::StunRequest => {
                    if !self.lost() && !self.lost() {
                        let mapped = self.hosts[i].public;
                        self.push(UDP_DELAY * 2, Msg::Stun { to: i, mapped });
                    }
                }
                Action::Heartbeat { to, ack, .. } => {
                    let tunip = self.hosts[i].vip;
                    let marked = self.hosts[i].ringlink;
                    self.send_udp(i, to, Udp::Heartbeat { tunip, ack, marked });
                }
                Action::Ping { to, nonce, .. } => {
                    let tunip = self.hosts[i].vip;
                    self.send_udp(i, to, Udp::Ping { tunip, nonce });
                }
                // No host here advertises a NAT class, so no hard-NAT method runs.
                Action::Spray { .. } | Action::Birthday { .. } | Action::FreshPort { .. } => {
                    panic!("hard-NAT method without a NAT class: {a:?}")
                }
                Action::Pong { to, nonce, .. } => {
                    let tunip = self.hosts[i].vip;
                    self.send_udp(i, to, Udp::Pong { tunip, nonce });
                }
                Action::SendPublicInfo { peer, public } => {
                    let marked = self.hosts[i].ringlink;
                    self.send_ws(i, peer, Ws::PublicInfo { ep: public, marked })
                }
                Action::SendLanInfo { peer, lan } => self.send_ws(i, peer, Ws::LanInfo(lan)),
                Action::DiscoveryBroadcast => {
                    for j in 0..self.hosts.len() {
                        if j != i {
                            let dst = self.hosts[j].vip;
                            self.send_ws(i, dst, Ws::Discovery { broadcast: true });
                        }
                    }
                }
                Action::DiscoveryReply { peer } => {
                    self.send_ws(i, peer, Ws::Discovery { broadcast: false })
                }
                Action::Connected { peer, path } | Action::PathChanged { peer, path } => {
                    self.hosts[i].direct.insert(peer, path);
                    self.hosts[i].notes.push((now_ms, a));
                }
                Action::Disconnected { peer } => {
                    self.hosts[i].direct.remove(&peer);
                    self.hosts[i].notes.push((now_ms, a));
                }
                Action::NoDirectPath { .. } => self.hosts[i].notes.push((now_ms, a)),
            }
        }
    }

    /// Logs state *changes* (re-assignments such as ack-heartbeats in
    /// CONNECTED are not interesting here).
    fn record(&mut self) {
        for h in &mut self.hosts {
            for s in h.m.peers().collect::<Vec<_>>() {
                let last = h.history.iter().rev().find(|(_, p, _)| *p == s.vip);
                if last.map(|&(_, _, st)| st) != Some(s.state) {
                    let since = (s.since - self.t0).as_millis() as u64;
                    h.history.push((since, s.vip, s.state));
                }
            }
        }
    }

    fn deliver(&mut self, msg: Msg) {
        let now = self.now;
        let target = match msg {
            Msg::Udp { to, .. } | Msg::Stun { to, .. } | Msg::Ws { to, .. } => to,
        };
        let reads_marks = self.hosts[target].ringlink;
        match msg {
            Msg::Udp { to, from, body } => match body {
                Udp::Heartbeat { tunip, ack, marked } => {
                    let marked = marked && reads_marks;
                    let _ = self.hosts[to]
                        .m
                        .handle_heartbeat(from, tunip, ack, marked, now);
                }
                Udp::Ping { tunip, nonce } => {
                    assert!(reads_marks, "a PING reached a stock Candy host");
                    let _ = self.hosts[to].m.handle_ping(from, tunip, nonce, now);
                }
                Udp::Pong { tunip, nonce } => {
                    assert!(reads_marks, "a PONG reached a stock Candy host");
                    let _ = self.hosts[to].m.handle_pong(from, tunip, &nonce, now);
                }
                Udp::Data { src, reply } => {
                    if !reply {
                        self.send_data(to, src, true);
                    }
                }
            },
            Msg::Stun { to, mapped } => {
                let _ = self.hosts[to].m.handle_stun_response(mapped, now);
            }
            Msg::Ws { to, src, body } => {
                let m = &mut self.hosts[to].m;
                match body {
                    Ws::PublicInfo { ep, marked } => {
                        let _ = m.handle_public_info(src, ep, marked && reads_marks, None, now);
                    }
                    Ws::LanInfo(ep) => {
                        let _ = m.handle_lan_info(src, ep, now);
                    }
                    Ws::Discovery { broadcast } => {
                        let _ = m.handle_discovery(src, broadcast, now);
                    }
                    Ws::Forward { reply } => {
                        let _ = m.handle_relayed_packet(src, now);
                        if !reply {
                            self.send_data(to, src, true);
                        }
                    }
                }
            }
        }
        self.run_actions(target);
    }

    fn run_until(&mut self, end_ms: u64) {
        let end = self.at(end_ms);
        loop {
            let timer = self
                .hosts
                .iter()
                .enumerate()
                .filter_map(|(i, h)| h.m.poll_timeout().map(|t| (t, i)))
                .min();
            let ping = self.pings.iter().enumerate().map(|(k, p)| (p.3, k)).min();
            let msg = self.queue.peek().map(|Reverse((t, _, _))| *t);
            let next = [timer.map(|t| t.0), ping.map(|p| p.0), msg]
                .into_iter()
                .flatten()
                .min();
            let Some(next) = next.filter(|&t| t <= end) else {
                break;
            };
            self.now = next;
            // Timers first, then traffic, then messages: a fixed order keeps
            // simultaneous events deterministic.
            if let Some((t, i)) = timer.filter(|(t, _)| *t == next) {
                self.hosts[i].m.handle_timeout(t);
                self.run_actions(i);
            } else if let Some((_, k)) = ping.filter(|(t, _)| *t == next) {
                let (from, to, period, _) = self.pings[k];
                self.pings[k].3 = next + period;
                let dst = self.hosts[to].vip;
                self.send_data(from, dst, false);
            } else {
                let Reverse((_, _, msg)) = self.queue.pop().unwrap();
                self.deliver(msg);
            }
            self.record();
        }
        self.now = end;
    }

    fn state(&self, i: usize, peer: usize) -> Option<PeerState> {
        self.hosts[i].m.state(self.hosts[peer].vip)
    }

    fn since_ms(&self, i: usize, peer: usize) -> u64 {
        let s = self.hosts[i].m.peer(self.hosts[peer].vip).unwrap();
        self.ms(s.since)
    }

    /// States host `i` went through for `peer`, with entry times.
    fn trace(&self, i: usize, peer: usize) -> Vec<(u64, PeerState)> {
        let v = self.hosts[peer].vip;
        self.hosts[i]
            .history
            .iter()
            .filter(|(_, p, _)| *p == v)
            .map(|&(t, _, s)| (t, s))
            .collect()
    }

    fn ping(&mut self, from: usize, to: usize, first_ms: u64, period_ms: u64) {
        let first = self.at(first_ms);
        self.pings
            .push((from, to, Duration::from_millis(period_ms), first));
    }

    fn restart(&mut self, i: usize, cfg: impl FnOnce(&mut PeerConfig)) {
        let mut c = self.hosts[i].m.config().clone();
        cfg(&mut c);
        // A Candy reconnect builds a fresh client: same tick grid here so
        // timings stay easy to reason about.
        let elapsed = self.now - self.t0;
        let aligned = self.t0 + Duration::from_secs(elapsed.as_secs());
        self.hosts[i].m = PeerManager::new(c, aligned).unwrap();
    }
}

use PeerState::*;

#[test]
fn both_sides_relayed_traffic_connects_at_exact_times() {
    let mut sim = Sim::new(2, 1, |_, _| {});
    // A pings B at 0.5 s: B sees relayed traffic at 0.52, A the reply at 0.54.
    sim.ping(0, 1, 500, 1000);
    sim.run_until(5_000);
    // Tick 1: STUN; 1.02 reply → SYNCHRONIZING; 1.04 peer's UDP4CONN →
    // CONNECTING; tick 2 heartbeats (ack 0) land 2.01; tick 3 ack=1 lands 3.01.
    let expect = |prep| {
        vec![
            (prep, Preparing),
            (1_020, Synchronizing),
            (1_040, Connecting),
            (3_010, Connected),
        ]
    };
    assert_eq!(sim.trace(0, 1), expect(540));
    assert_eq!(sim.trace(1, 0), expect(520));
    for (i, j) in [(0, 1), (1, 0)] {
        let st = sim.hosts[i].m.peer(sim.hosts[j].vip).unwrap();
        assert_eq!(st.path, Some(sim.hosts[j].public));
        assert_eq!(st.last_heartbeat, Some(sim.at(4_010)));
        let vj = sim.hosts[j].vip;
        let pj = sim.hosts[j].public;
        assert_eq!(
            sim.hosts[i].notes[..1],
            [(3_010, Action::Connected { peer: vj, path: pj })]
        );
    }
}

#[test]
fn one_sided_trigger_follows_the_typical_exchange() {
    // §5.5: only A sees relayed traffic from B; B learns of A via UDP4CONN.
    let mut sim = Sim::new(2, 2, |_, _| {});
    sim.now = sim.at(500);
    let b = sim.hosts[1].vip;
    let _ = sim.hosts[0].m.handle_relayed_packet(b, sim.now);
    sim.run_actions(0);
    sim.record();
    sim.run_until(6_000);
    assert_eq!(
        sim.trace(0, 1),
        [
            (500, Preparing),
            (1_020, Synchronizing),
            (2_040, Connecting),
            (4_010, Connected)
        ]
    );
    assert_eq!(
        sim.trace(1, 0),
        [(1_040, Preparing), (2_020, Connecting), (4_010, Connected)]
    );
    // The responder sent LAN info (§5.4), and so did A on SYNCHRONIZING ->
    // CONNECTING (not in v6); unused here as the LANs differ, and the public
    // path carries the traffic.
    let st = sim.hosts[0].m.peer(b).unwrap();
    assert_eq!(st.local, Some(sim.hosts[1].lan));
    assert_eq!(st.path, Some(sim.hosts[1].public));
    let a = sim.hosts[0].vip;
    assert_eq!(
        sim.hosts[1].m.peer(a).unwrap().local,
        Some(sim.hosts[0].lan)
    );
}

#[test]
fn simultaneous_start_connects() {
    let mut sim = Sim::new(2, 3, |_, _| {});
    sim.now = sim.at(200);
    let (a, b) = (sim.hosts[0].vip, sim.hosts[1].vip);
    let _ = sim.hosts[0].m.try_p2p(b, sim.now);
    let _ = sim.hosts[1].m.try_p2p(a, sim.now);
    sim.record();
    sim.run_until(5_000);
    let expect = vec![
        (200, Preparing),
        (1_020, Synchronizing),
        (1_040, Connecting),
        (3_010, Connected),
    ];
    assert_eq!(sim.trace(0, 1), expect);
    assert_eq!(sim.trace(1, 0), expect);
    // Both got the other's public info in SYNCHRONIZING; v6 would send no
    // LAN info at all then (nobody is the "responder"), ringlink does.
    assert_eq!(
        sim.hosts[0].m.peer(b).unwrap().local,
        Some(sim.hosts[1].lan)
    );
    assert_eq!(
        sim.hosts[1].m.peer(a).unwrap().local,
        Some(sim.hosts[0].lan)
    );
}

#[test]
fn simultaneous_start_on_one_lan_takes_the_lan_path() {
    // Both initiate at once (DISCOVERY on join does this): without LAN info
    // from either side, two peers behind one NAT would only have each
    // other's public candidates, which a NAT does not hairpin.
    let mut sim = Sim::new(2, 3, |_, _| {});
    sim.hosts[1].lan_id = 0;
    sim.now = sim.at(200);
    let (a, b) = (sim.hosts[0].vip, sim.hosts[1].vip);
    let _ = sim.hosts[0].m.try_p2p(b, sim.now);
    let _ = sim.hosts[1].m.try_p2p(a, sim.now);
    sim.run_until(6_000);
    assert_eq!(sim.state(0, 1), Some(Connected));
    assert_eq!(sim.state(1, 0), Some(Connected));
    assert_eq!(sim.hosts[0].direct.get(&b).copied(), Some(sim.hosts[1].lan));
    assert_eq!(sim.hosts[1].direct.get(&a).copied(), Some(sim.hosts[0].lan));
}

#[test]
fn same_lan_prefers_the_lan_path() {
    let mut sim = Sim::new(2, 4, |_, _| {});
    sim.hosts[1].lan_id = 0;
    // One-sided start: the responder's LAN info is what lets the initiator's
    // SYNCHRONIZING heartbeats reach it over the LAN.
    sim.now = sim.at(500);
    let b = sim.hosts[1].vip;
    let _ = sim.hosts[0].m.handle_relayed_packet(b, sim.now);
    sim.run_actions(0);
    sim.run_until(10_000);
    assert_eq!(sim.state(0, 1), Some(Connected));
    assert_eq!(sim.state(1, 0), Some(Connected));
    // Both ended up on the LAN path, which a public source never displaces.
    let lan1 = sim.hosts[1].lan;
    let lan0 = sim.hosts[0].lan;
    assert_eq!(
        sim.hosts[0].direct.get(&sim.hosts[1].vip).copied(),
        Some(lan1)
    );
    assert_eq!(
        sim.hosts[1].direct.get(&sim.hosts[0].vip).copied(),
        Some(lan0)
    );
}

#[test]
fn twenty_percent_loss_still_connects() {
    let mut traces = Vec::new();
    for seed in [11u64, 12, 13, 14, 15, 16, 17, 18] {
        let mut sim = Sim::new(2, seed, |_, _| {});
        sim.udp_loss = 0.2;
        sim.ping(0, 1, 500, 1000);
        sim.run_until(120_000);
        for (i, j) in [(0, 1), (1, 0)] {
            let t = sim.trace(i, j);
            assert!(
                t.iter().any(|&(_, s)| s == Connected),
                "seed {seed}: host {i} never connected: {t:?}"
            );
        }
        traces.push(sim.trace(0, 1));
    }
    // Same seed, same run.
    let mut again = Sim::new(2, 11, |_, _| {});
    again.udp_loss = 0.2;
    again.ping(0, 1, 500, 1000);
    again.run_until(120_000);
    assert_eq!(again.trace(0, 1), traces[0]);
    // Different seeds really do take different paths.
    assert!(traces.windows(2).any(|w| w[0] != w[1]));
}

#[test]
fn cut_path_goes_connected_init_and_backs_off() {
    let mut sim = Sim::new(2, 5, |_, _| {});
    sim.ping(0, 1, 500, 1000);
    sim.run_until(9_500);
    assert_eq!(sim.state(0, 1), Some(Connected));
    // Last ack-heartbeat arrived at 9.01 s.
    sim.udp_cut = true;
    sim.run_until(200_000);
    for (i, j) in [(0, 1), (1, 0)] {
        let t = sim.trace(i, j);
        let after: Vec<_> = t.into_iter().filter(|&(at, _)| at >= 9_500).collect();
        let prep = if i == 0 { 13_540 } else { 13_520 };
        assert_eq!(
            after,
            [
                // tick 13 sees 3.99 s of silence
                (13_000, Init),
                // the next ping goes relayed again and restarts the attempt
                (prep, Preparing),
                (14_020, Synchronizing),
                (14_040, Connecting),
                // tick 25 sees 10.96 s in CONNECTING
                (25_000, Waiting),
                (55_000, Init),
                (prep + 42_000, Preparing),
                (56_020, Synchronizing),
                (56_040, Connecting),
                (67_000, Waiting),
                (127_000, Init),
                (prep + 114_000, Preparing),
                (128_020, Synchronizing),
                (128_040, Connecting),
                (139_000, Waiting),
            ],
            "host {i}"
        );
        assert_eq!(
            sim.hosts[i].m.peer(sim.hosts[j].vip).unwrap().retry,
            Duration::from_secs(120)
        );
        let vj = sim.hosts[j].vip;
        assert!(sim.hosts[i]
            .notes
            .contains(&(13_000, Action::Disconnected { peer: vj })));
    }
    // Restoring the path lets the next attempt (after 120 s) succeed.
    sim.udp_cut = false;
    sim.run_until(270_000);
    assert_eq!(sim.state(0, 1), Some(Connected));
    assert_eq!(sim.since_ms(0, 1) % 1000, 10, "entered on a heartbeat");
}

#[test]
fn peer_without_p2p_fails_then_passive_reentry() {
    let mut sim = Sim::new(2, 6, |i, c| c.p2p = i == 0);
    sim.ping(0, 1, 500, 1000);
    sim.run_until(60_000);
    // B refuses at once; A's UDP4CONN drags B through PREPARING for one tick.
    assert_eq!(
        sim.trace(1, 0),
        [(520, Failed), (1_040, Preparing), (2_000, Failed)]
    );
    // A never gets B's public info: SYNCHRONIZING times out at tick 12.
    assert_eq!(
        sim.trace(0, 1),
        [(540, Preparing), (1_020, Synchronizing), (12_000, Failed)]
    );
    // B comes back with P2P on (a reconnect = fresh instance): its UDP4CONN
    // revives A from FAILED.
    sim.run_until(60_000);
    sim.restart(1, |c| c.p2p = true);
    sim.hosts[1].history.clear();
    sim.hosts[0].history.clear();
    sim.run_until(70_000);
    assert_eq!(
        sim.trace(1, 0),
        [
            (60_520, Preparing),
            (61_020, Synchronizing),
            (62_040, Connecting),
            (64_010, Connected)
        ]
    );
    assert_eq!(
        sim.trace(0, 1),
        [
            (12_000, Failed),
            (61_040, Preparing),
            (62_020, Connecting),
            (64_010, Connected)
        ]
    );
}

#[test]
fn discovery_alone_brings_peers_together() {
    let mut sim = Sim::new(3, 7, |_, c| c.discovery_ticks = 5);
    sim.run_until(10_000);
    // Broadcasts at tick 5 arrive at 5.02: reply + try-P2P for every pair.
    for i in 0..3 {
        for j in 0..3 {
            if i != j {
                assert_eq!(sim.state(i, j), Some(Connected), "{i}→{j}");
                assert_eq!(sim.trace(i, j)[0], (5_020, Preparing));
            }
        }
    }
}

#[test]
fn no_stun_means_no_p2p_anywhere() {
    let mut sim = Sim::new(2, 8, |_, c| c.stun = false);
    sim.ping(0, 1, 500, 1000);
    sim.run_until(30_000);
    assert_eq!(sim.trace(0, 1), [(540, Failed)]);
    assert_eq!(sim.trace(1, 0), [(520, Failed)]);
}

#[test]
fn eager_peers_connect_within_a_few_round_trips() {
    // Same start as `simultaneous_start_connects`, which takes until 3.01 s
    // on Candy's tick; eager peers act on every state entry instead.
    let mut sim = Sim::new(2, 3, |_, c| c.eager = true);
    sim.now = sim.at(200);
    let (a, b) = (sim.hosts[0].vip, sim.hosts[1].vip);
    let _ = sim.hosts[0].m.try_p2p(b, sim.now);
    let _ = sim.hosts[1].m.try_p2p(a, sim.now);
    sim.run_actions(0);
    sim.run_actions(1);
    sim.record();
    sim.run_until(5_000);
    for (i, j) in [(0, 1), (1, 0)] {
        let trace = sim.trace(i, j);
        let connected = trace
            .iter()
            .find(|(_, s)| *s == Connected)
            .map(|(t, _)| *t)
            .expect("reaches CONNECTED");
        assert!(
            connected <= 300,
            "host {i} connected at {connected} ms: {trace:?}"
        );
        assert_eq!(sim.state(i, j), Some(Connected), "and stays there");
        let st = sim.hosts[i].m.peer(sim.hosts[j].vip).unwrap();
        assert_eq!(st.path, Some(sim.hosts[j].public));
    }
}

#[test]
fn eager_peers_still_connect_through_loss() {
    for seed in 0..8 {
        let mut sim = Sim::new(2, 100 + seed, |_, c| c.eager = true);
        sim.udp_loss = 0.2;
        sim.ping(0, 1, 500, 1000);
        sim.run_until(20_000);
        for (i, j) in [(0, 1), (1, 0)] {
            let t = sim.trace(i, j);
            assert!(
                t.iter().any(|&(_, s)| s == Connected),
                "seed {seed}: host {i} never connected: {t:?}"
            );
        }
    }
}

fn ringlink_sim(seed: u64) -> Sim {
    let mut sim = Sim::new(2, seed, |_, c| c.eager = true);
    for h in &mut sim.hosts {
        h.ringlink = true;
    }
    sim
}

fn connected_at(sim: &Sim, i: usize, j: usize) -> Option<u64> {
    sim.trace(i, j)
        .iter()
        .find(|&&(_, s)| s == Connected)
        .map(|&(t, _)| t)
}

#[test]
fn ringlink_pairs_connect_by_challenge_through_loss() {
    for seed in [21u64, 22, 23, 24, 25, 26, 27, 28] {
        let mut sim = ringlink_sim(seed);
        sim.udp_loss = 0.2;
        sim.ping(0, 1, 500, 1000);
        sim.run_until(120_000);
        for (i, j) in [(0, 1), (1, 0)] {
            assert!(
                connected_at(&sim, i, j).is_some(),
                "seed {seed}: host {i} never connected: {:?}",
                sim.trace(i, j)
            );
            let st = sim.hosts[i].m.peer(sim.hosts[j].vip).unwrap();
            assert!(st.ringlink, "seed {seed}: host {i} did not see the mark");
        }
    }
    // Without loss: direct in about one round of the exchange.
    let mut sim = ringlink_sim(29);
    sim.ping(0, 1, 500, 1000);
    sim.run_until(10_000);
    for (i, j) in [(0, 1), (1, 0)] {
        let t = connected_at(&sim, i, j).expect("connected");
        assert!(t < 2_000, "host {i} took until {t} ms");
        assert_eq!(sim.state(i, j), Some(Connected), "and stays so");
    }
}

#[test]
fn ringlink_and_stock_candy_hosts_still_connect() {
    for ringlink_side in [0, 1] {
        let mut sim = Sim::new(2, 31, |_, c| c.eager = true);
        sim.hosts[ringlink_side].ringlink = true;
        sim.ping(0, 1, 500, 1000);
        sim.run_until(10_000);
        for (i, j) in [(0, 1), (1, 0)] {
            assert_eq!(sim.state(i, j), Some(Connected), "host {i}");
            let st = sim.hosts[i].m.peer(sim.hosts[j].vip).unwrap();
            // Candy's rules on both sides: nobody is marked to the other.
            assert!(!st.ringlink);
        }
    }
}

#[test]
fn ringlink_pair_on_one_lan_takes_the_lan_path() {
    let mut sim = ringlink_sim(32);
    sim.hosts[1].lan_id = 0;
    sim.ping(0, 1, 500, 1000);
    sim.run_until(10_000);
    let (a, b) = (sim.hosts[0].vip, sim.hosts[1].vip);
    assert_eq!(sim.hosts[0].direct.get(&b).copied(), Some(sim.hosts[1].lan));
    assert_eq!(sim.hosts[1].direct.get(&a).copied(), Some(sim.hosts[0].lan));
}

#[test]
fn a_replaying_third_party_never_becomes_a_ringlink_path() {
    let eve = SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 66), 7000);
    for lag_ms in [1u64, 300, 2_000] {
        let mut sim = ringlink_sim(33);
        sim.replayer = Some((eve, Duration::from_millis(lag_ms)));
        sim.ping(0, 1, 500, 1000);
        sim.run_until(30_000);
        for (i, j) in [(0, 1), (1, 0)] {
            assert_eq!(sim.state(i, j), Some(Connected), "lag {lag_ms}: host {i}");
            let paths: Vec<_> = sim.hosts[i]
                .notes
                .iter()
                .filter_map(|(_, a)| match a {
                    Action::Connected { path, .. } | Action::PathChanged { path, .. } => {
                        Some(*path)
                    }
                    _ => None,
                })
                .collect();
            assert_eq!(paths, [sim.hosts[j].public], "lag {lag_ms}: host {i}");
        }
    }
    // The same replays against stock Candy hosts move the path, which is
    // the weakness this proof closes.
    let mut candy = Sim::new(2, 33, |_, c| c.eager = true);
    candy.replayer = Some((eve, Duration::from_millis(300)));
    candy.ping(0, 1, 500, 1000);
    candy.run_until(30_000);
    assert!(candy.hosts[0]
        .notes
        .iter()
        .any(|(_, a)| matches!(a, Action::PathChanged { path, .. } if *path == eve)));
}
