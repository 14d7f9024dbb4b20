//! Single-node tests of every transition, trigger and timer, on a simulated clock.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use super::*;

const ME: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const B: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
const C: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 3);
const OWN_PUB: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(203, 0, 113, 1), 6000);
const OWN_LAN: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(192, 168, 0, 1), 6000);
const B_PUB: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 51, 100, 2), 5000);
const B_PUB2: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 51, 100, 2), 5001);
const B_LAN: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(192, 168, 0, 2), 5000);

/// One manager plus a clock that only moves when the test says so.
struct Node {
    m: PeerManager,
    t0: Instant,
    now: Instant,
}

impl Node {
    fn new(f: impl FnOnce(&mut PeerConfig)) -> Self {
        let mut cfg = PeerConfig::new(ME);
        cfg.lan_candidate = Some(OWN_LAN);
        f(&mut cfg);
        let t0 = Instant::now();
        Node {
            m: PeerManager::new(cfg, t0).unwrap(),
            t0,
            now: t0,
        }
    }

    fn at(&self, ms: u64) -> Instant {
        self.t0 + Duration::from_millis(ms)
    }

    /// Moves the clock to `ms`, running every tick on the way; returns the
    /// actions with the time (ms since t0) they were emitted.
    fn advance(&mut self, ms: u64) -> Vec<(u64, Action)> {
        let target = self.at(ms);
        assert!(target >= self.now, "clock must not go back");
        let mut out = Vec::new();
        while let Some(t) = self.m.poll_timeout() {
            if t > target {
                break;
            }
            self.now = t;
            self.m.handle_timeout(t);
            let stamp = (t - self.t0).as_millis() as u64;
            while let Some(a) = self.m.poll_action() {
                out.push((stamp, a));
            }
        }
        self.now = target;
        out
    }

    fn drain(&mut self) -> Vec<Action> {
        std::iter::from_fn(|| self.m.poll_action()).collect()
    }

    fn state(&self, vip: Ipv4Addr) -> PeerState {
        self.m.state(vip).expect("peer exists")
    }

    fn status(&self, vip: Ipv4Addr) -> PeerStatus {
        self.m.peer(vip).expect("peer exists")
    }

    fn try_p2p(&mut self) -> Outcome {
        self.m.try_p2p(B, self.now)
    }
    fn public(&mut self, ep: SocketAddrV4) -> Outcome {
        self.m.handle_public_info(B, ep, false, None, self.now)
    }
    fn stun(&mut self) -> Outcome {
        self.m.handle_stun_response(OWN_PUB, self.now)
    }
    fn hb(&mut self, from: SocketAddrV4, ack: bool) -> Outcome {
        self.m.handle_heartbeat(from, B, ack, false, self.now)
    }

    /// Public info then STUN: B in CONNECTING with wide = B_PUB.
    fn reach_connecting(&mut self) {
        assert!(self.public(B_PUB).is_accepted());
        assert!(self.stun().is_accepted());
        assert_eq!(self.state(B), PeerState::Connecting);
        self.drain();
    }

    fn reach_connected(&mut self) {
        self.reach_connecting();
        assert!(self.hb(B_PUB, true).is_accepted());
        assert_eq!(self.state(B), PeerState::Connected);
        self.drain();
    }
}

fn only_states(actions: &[(u64, Action)]) -> Vec<(u64, Action)> {
    actions
        .iter()
        .copied()
        .filter(|(_, a)| !matches!(a, Action::Heartbeat { .. } | Action::StunRequest))
        .collect()
}

fn times_of(actions: &[(u64, Action)], pred: impl Fn(&Action) -> bool) -> Vec<u64> {
    actions
        .iter()
        .filter(|(_, a)| pred(a))
        .map(|(t, _)| *t)
        .collect()
}

#[test]
fn new_peer_starts_in_init_with_initial_retry() {
    let mut n = Node::new(|_| {});
    n.advance(500);
    assert!(n.try_p2p().is_accepted());
    let s = n.status(B);
    assert_eq!(s.state, PeerState::Preparing);
    assert_eq!(s.retry, Duration::from_secs(30));
    assert_eq!(s.since, n.at(500));
    assert_eq!(s.path, None);
    assert_eq!(n.m.len(), 1);
}

#[test]
fn preparing_requests_one_stun_per_tick_then_fails_after_10s() {
    let mut n = Node::new(|_| {});
    assert!(n.m.try_p2p(C, n.now).is_accepted());
    n.advance(500);
    assert!(n.try_p2p().is_accepted());
    let acts = n.advance(12_000);
    // Two peers in PREPARING still produce a single request per tick.
    let stun = times_of(&acts, |a| *a == Action::StunRequest);
    assert_eq!(stun, (1..=10).map(|s| s * 1000).collect::<Vec<_>>());
    // C entered at 0 s: at tick 10 it has been 10 s → FAILED; B (0.5 s) fails at 11 s.
    assert_eq!(n.state(C), PeerState::Failed);
    assert_eq!(n.state(B), PeerState::Failed);
    assert_eq!(n.m.peer(C).unwrap().since, n.at(10_000));
    assert_eq!(n.status(B).since, n.at(11_000));
    assert!(acts
        .iter()
        .all(|(_, a)| !matches!(a, Action::Heartbeat { .. })));
}

#[test]
fn try_p2p_only_moves_init() {
    let mut n = Node::new(|_| {});
    n.reach_connecting();
    n.advance(2_500);
    assert!(n.try_p2p().is_accepted());
    assert_eq!(n.state(B), PeerState::Connecting);
    assert_eq!(n.status(B).since, n.at(0));
}

#[test]
fn p2p_disabled_goes_straight_to_failed() {
    for (p2p, stun) in [(false, true), (true, false), (false, false)] {
        let mut n = Node::new(|c| {
            c.p2p = p2p;
            c.stun = stun;
        });
        assert!(n.try_p2p().is_accepted());
        assert_eq!(n.state(B), PeerState::Failed, "p2p={p2p} stun={stun}");
        assert!(n.advance(5_000).is_empty());
    }
}

#[test]
fn stun_response_splits_preparing_peers_by_wide() {
    let mut n = Node::new(|_| {});
    assert!(n.try_p2p().is_accepted()); // B: no wide
    n.m.handle_public_info(C, B_PUB2, false, None, n.now)
        .is_accepted(); // C: wide known
    n.drain();
    n.advance(1_200);
    assert!(n.stun().is_accepted());
    assert_eq!(n.state(B), PeerState::Synchronizing);
    assert_eq!(n.state(C), PeerState::Connecting);
    assert_eq!(
        n.drain(),
        [
            Action::SendPublicInfo {
                peer: B,
                public: OWN_PUB
            },
            Action::SendPublicInfo {
                peer: C,
                public: OWN_PUB
            },
        ]
    );
    // Not PREPARING any more: a second response changes nothing.
    assert!(n.stun().is_accepted());
    assert!(n.drain().is_empty());
    // A zero mapping is a failed parse, not an endpoint.
    let zero = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 1);
    assert_eq!(
        n.m.handle_stun_response(zero, n.now),
        Outcome::Ignored(Ignored::InvalidEndpoint)
    );
}

#[test]
fn public_info_by_state() {
    // INIT (unknown peer is created) → PREPARING + own LAN info.
    let mut n = Node::new(|_| {});
    assert!(n.public(B_PUB).is_accepted());
    assert_eq!(n.state(B), PeerState::Preparing);
    assert_eq!(n.status(B).wide, Some(B_PUB));
    assert_eq!(
        n.drain(),
        [Action::SendLanInfo {
            peer: B,
            lan: OWN_LAN
        }]
    );
    // PREPARING again: timer restarts, LAN info sent again.
    n.advance(4_000);
    assert!(n.public(B_PUB).is_accepted());
    assert_eq!(n.status(B).since, n.at(4_000));
    assert_eq!(n.drain().len(), 1);
    // → CONNECTING via STUN; public info there only updates wide.
    assert!(n.stun().is_accepted());
    n.drain();
    assert!(n.public(B_PUB2).is_accepted());
    assert_eq!(n.state(B), PeerState::Connecting);
    assert_eq!(n.status(B).since, n.at(4_000));
    assert_eq!(n.status(B).wide, Some(B_PUB2));
    assert!(n.drain().is_empty());
    // CONNECTED: nothing changes either.
    assert!(n.hb(B_PUB, true).is_accepted());
    n.drain();
    assert!(n.public(B_PUB).is_accepted());
    assert_eq!(n.state(B), PeerState::Connected);
    assert!(n.drain().is_empty());

    // SYNCHRONIZING → CONNECTING, and (unlike v6) own LAN info: the peer
    // may be an initiator too, in which case nobody else would send it.
    let mut n = Node::new(|_| {});
    assert!(n.try_p2p().is_accepted());
    assert!(n.stun().is_accepted());
    n.drain();
    assert_eq!(n.state(B), PeerState::Synchronizing);
    assert!(n.public(B_PUB).is_accepted());
    assert_eq!(n.state(B), PeerState::Connecting);
    assert_eq!(
        n.drain(),
        [Action::SendLanInfo {
            peer: B,
            lan: OWN_LAN
        }]
    );

    // Without a LAN candidate nothing is sent, the state still moves.
    let mut n = Node::new(|c| c.lan_candidate = None);
    assert!(n.public(B_PUB).is_accepted());
    assert_eq!(n.state(B), PeerState::Preparing);
    assert!(n.drain().is_empty());
}

#[test]
fn public_info_revives_waiting_and_failed() {
    let mut n = Node::new(|_| {});
    n.reach_connecting();
    n.advance(11_000);
    assert_eq!(n.state(B), PeerState::Waiting);
    assert!(n.public(B_PUB).is_accepted());
    assert_eq!(n.state(B), PeerState::Preparing);
    // Leaving WAITING sideways does not double the retry.
    assert_eq!(n.status(B).retry, Duration::from_secs(30));

    let mut n = Node::new(|c| c.p2p = false);
    assert!(n.try_p2p().is_accepted());
    assert_eq!(n.state(B), PeerState::Failed);
    assert!(n.public(B_PUB).is_accepted());
    assert_eq!(n.state(B), PeerState::Preparing);
    assert_eq!(n.drain().len(), 1, "LAN info still answered");
    // …but a node without P2P never asks STUN and falls back at once.
    let acts = n.advance(1_000);
    assert!(acts.is_empty());
    assert_eq!(n.state(B), PeerState::Failed);
}

#[test]
fn lan_info_stores_local_only() {
    let mut n = Node::new(|_| {});
    assert!(n.try_p2p().is_accepted());
    n.advance(300);
    assert!(n.m.handle_lan_info(B, B_LAN, n.now).is_accepted());
    let s = n.status(B);
    assert_eq!(
        (s.state, s.local, s.since),
        (PeerState::Preparing, Some(B_LAN), n.at(0))
    );
    assert!(n.drain().is_empty());
    let bad = SocketAddrV4::new(Ipv4Addr::new(192, 168, 0, 9), 0);
    assert_eq!(
        n.m.handle_lan_info(B, bad, n.now),
        Outcome::Ignored(Ignored::InvalidEndpoint)
    );
}

#[test]
fn heartbeat_destinations_and_ack_flag_per_state() {
    let mut n = Node::new(|_| {});
    assert!(n.try_p2p().is_accepted());
    assert!(n.m.handle_lan_info(B, B_LAN, n.now).is_accepted());
    // PREPARING: STUN only.
    let acts = n.advance(1_000);
    assert_eq!(acts, [(1_000, Action::StunRequest)]);
    assert!(n.stun().is_accepted());
    n.drain();
    // SYNCHRONIZING: LAN candidate only, no ack yet.
    let acts = n.advance(2_000);
    assert_eq!(
        acts,
        [(
            2_000,
            Action::Heartbeat {
                peer: B,
                to: B_LAN,
                ack: false
            }
        )]
    );
    assert!(n.public(B_PUB).is_accepted());
    // SYNCHRONIZING → CONNECTING sends own LAN info over WS.
    assert_eq!(
        n.drain(),
        [Action::SendLanInfo {
            peer: B,
            lan: OWN_LAN
        }]
    );
    // CONNECTING: wide then local.
    let acts = n.advance(3_000);
    assert_eq!(
        acts,
        [
            (
                3_000,
                Action::Heartbeat {
                    peer: B,
                    to: B_PUB,
                    ack: false
                }
            ),
            (
                3_000,
                Action::Heartbeat {
                    peer: B,
                    to: B_LAN,
                    ack: false
                }
            ),
        ]
    );
    // A heartbeat without ack from B's public side: ack set, still CONNECTING.
    assert!(n.hb(B_PUB, false).is_accepted());
    assert_eq!(n.state(B), PeerState::Connecting);
    let acts = n.advance(4_000);
    assert!(acts
        .iter()
        .all(|(_, a)| matches!(a, Action::Heartbeat { ack: true, .. })));
    assert_eq!(acts.len(), 2);
    // An ack heartbeat: CONNECTED and its notification, nothing else
    // (latency probes are the router's).
    n.advance(4_100);
    assert!(n.hb(B_PUB, true).is_accepted());
    assert_eq!(
        n.drain(),
        [Action::Connected {
            peer: B,
            path: B_PUB
        },]
    );
    let s = n.status(B);
    assert_eq!(
        (s.path, s.last_heartbeat, s.since),
        (Some(B_PUB), Some(n.at(4_100)), n.at(4_100))
    );
    assert_eq!(n.status(B).state, PeerState::Connected);
    // CONNECTED: only `real`.
    let acts = n.advance(5_000);
    assert_eq!(
        acts,
        [(
            5_000,
            Action::Heartbeat {
                peer: B,
                to: B_PUB,
                ack: true
            }
        )]
    );
}

#[test]
fn heartbeat_ignored_cases() {
    let mut n = Node::new(|_| {});
    assert_eq!(n.hb(B_PUB, true), Outcome::Ignored(Ignored::UnknownPeer));
    assert!(
        n.m.is_empty(),
        "an unknown heartbeat must not create a peer"
    );
    assert_eq!(
        n.m.handle_heartbeat(B_PUB, ME, true, false, n.now),
        Outcome::Ignored(Ignored::OwnVip)
    );
    // Created via LAN info: still INIT, so ignored.
    assert!(n.m.handle_lan_info(B, B_LAN, n.now).is_accepted());
    assert_eq!(
        n.hb(B_PUB, true),
        Outcome::Ignored(Ignored::State(PeerState::Init))
    );
    assert!(n.m.try_p2p(C, n.now).is_accepted());
    n.advance(11_000);
    assert_eq!(
        n.m.handle_heartbeat(B_PUB, C, true, false, n.now),
        Outcome::Ignored(Ignored::State(PeerState::Failed))
    );
    assert_eq!(n.state(C), PeerState::Failed);
}

#[test]
fn heartbeat_in_preparing_can_connect() {
    // The spec only ignores INIT/WAITING/FAILED, so an early ack-heartbeat
    // (peer already punching) short-cuts PREPARING.
    let mut n = Node::new(|_| {});
    assert!(n.try_p2p().is_accepted());
    assert!(n.hb(B_PUB, true).is_accepted());
    assert_eq!(n.state(B), PeerState::Connected);
}

#[test]
fn connected_dies_after_3s_without_ack_heartbeat() {
    let mut n = Node::new(|_| {});
    n.advance(200);
    n.reach_connected();
    // Heartbeats without ack do not keep it alive.
    let mut acts = n.advance(2_500);
    assert!(n.hb(B_PUB, false).is_accepted());
    acts.extend(n.advance(10_000));
    // Entered at 0.2 s: ticks at 1, 2, 3 see < 3 s; tick 4 sees 3.8 s.
    assert_eq!(
        times_of(&acts, |a| matches!(a, Action::Heartbeat { .. })),
        [1_000, 2_000, 3_000]
    );
    assert_eq!(
        only_states(&acts),
        [(4_000, Action::Disconnected { peer: B })]
    );
    let s = n.status(B);
    assert_eq!(s.state, PeerState::Init);
    assert_eq!(s.since, n.at(4_000));
    assert_eq!((s.path, s.wide, s.local), (None, None, None));
    assert_eq!(n.status(B).path, None);
    // Retry: relayed traffic sends it round again.
    assert!(n.try_p2p().is_accepted());
    assert_eq!(n.state(B), PeerState::Preparing);
}

#[test]
fn ack_heartbeats_keep_connected_alive() {
    let mut n = Node::new(|_| {});
    n.reach_connected();
    for s in 1..=20u64 {
        n.advance(s * 1000 - 500);
        assert!(n.hb(B_PUB, true).is_accepted());
    }
    n.advance(22_400);
    assert_eq!(n.state(B), PeerState::Connected);
    // Last refresh at 19.5 s: 22 s tick sees 2.5 s, 23 s tick sees 3.5 s.
    let acts = n.advance(23_000);
    assert_eq!(
        only_states(&acts),
        [(23_000, Action::Disconnected { peer: B })]
    );
}

#[test]
fn reset_clears_ack_so_next_attempt_starts_without_it() {
    let mut n = Node::new(|_| {});
    n.reach_connecting();
    assert!(n.hb(B_PUB, false).is_accepted());
    n.advance(10_000);
    assert_eq!(n.state(B), PeerState::Waiting);
    n.advance(40_000);
    assert_eq!(n.state(B), PeerState::Init);
    n.reach_connecting();
    let acts = n.advance(41_000);
    assert_eq!(
        acts,
        [(
            41_000,
            Action::Heartbeat {
                peer: B,
                to: B_PUB,
                ack: false
            }
        )]
    );
}

#[test]
fn connecting_times_out_to_waiting_and_synchronizing_to_failed() {
    let mut n = Node::new(|_| {});
    assert!(n.m.try_p2p(C, n.now).is_accepted());
    n.advance(300);
    n.reach_connecting();
    assert!(n.stun().is_accepted()); // C: PREPARING → SYNCHRONIZING at 0.3 s
    assert_eq!(n.state(C), PeerState::Synchronizing);
    n.drain();
    n.advance(10_000);
    assert_eq!(n.state(B), PeerState::Connecting);
    assert_eq!(n.state(C), PeerState::Synchronizing);
    let acts = n.advance(11_000);
    assert_eq!(n.state(B), PeerState::Waiting);
    assert_eq!(n.state(C), PeerState::Failed);
    // A stock Candy peer whose attempt failed is never offered the other
    // paths; one whose attempt never started (C) is, and the caller
    // checks for a key first (`Node::speaks_ringlink`).
    let offered: Vec<_> = acts
        .iter()
        .filter_map(|(_, a)| match a {
            Action::NoDirectPath { peer } => Some(*peer),
            _ => None,
        })
        .collect();
    assert_eq!(offered, vec![C]);
    assert_eq!(n.status(B).since, n.at(11_000));
    assert_eq!(n.status(B).wide, None);
    assert_eq!(n.status(B).retry, Duration::from_secs(30));
}

/// Drives B through repeated failed attempts and returns the WAITING
/// durations observed (state entry to INIT), in seconds.
fn waits(n: &mut Node, rounds: usize) -> Vec<u64> {
    let mut out = Vec::new();
    for _ in 0..rounds {
        n.reach_connecting();
        let entered = loop {
            let next = (n.now - n.t0).as_millis() as u64 + 1000;
            n.advance(next);
            if n.state(B) == PeerState::Waiting {
                break n.status(B).since;
            }
        };
        let left = loop {
            let next = (n.now - n.t0).as_millis() as u64 + 1000;
            n.advance(next);
            if n.state(B) == PeerState::Init {
                break n.status(B).since;
            }
        };
        out.push((left - entered).as_secs());
        n.drain();
    }
    out
}

#[test]
fn waiting_backoff_doubles_to_3600_and_stays() {
    let mut n = Node::new(|_| {});
    assert_eq!(
        waits(&mut n, 10),
        [30, 60, 120, 240, 480, 960, 1920, 3600, 3600, 3600]
    );
    assert_eq!(n.status(B).retry, Duration::from_secs(3600));
}

#[test]
fn backoff_reset_by_failed_and_by_connected_to_init() {
    let mut n = Node::new(|_| {});
    assert_eq!(waits(&mut n, 3), [30, 60, 120]);
    assert_eq!(n.status(B).retry, Duration::from_secs(240));
    // A fresh INIT from CONNECTED resets.
    n.reach_connected();
    assert_eq!(
        n.status(B).retry,
        Duration::from_secs(240),
        "CONNECTED keeps it"
    );
    let t = (n.now - n.t0).as_millis() as u64;
    n.advance(t + 4_000);
    assert_eq!(n.state(B), PeerState::Init);
    assert_eq!(n.status(B).retry, Duration::from_secs(30));
    assert_eq!(waits(&mut n, 2), [30, 60]);
    // FAILED resets too (SYNCHRONIZING timeout).
    assert!(n.try_p2p().is_accepted());
    assert!(n.stun().is_accepted());
    let t = (n.now - n.t0).as_millis() as u64;
    n.advance(t + 11_000);
    assert_eq!(n.state(B), PeerState::Failed);
    assert_eq!(n.status(B).retry, Duration::from_secs(30));
    assert!(n.public(B_PUB).is_accepted());
    assert!(n.stun().is_accepted());
    n.drain();
    assert_eq!(waits(&mut n, 1), [30]);
}

#[test]
fn lan_path_wins_and_sticks() {
    let mut n = Node::new(|_| {});
    n.reach_connected(); // real = B_PUB
    n.advance(500);
    assert!(n.hb(B_LAN, true).is_accepted());
    assert_eq!(
        n.drain(),
        [Action::PathChanged {
            peer: B,
            path: B_LAN
        }]
    );
    let s = n.status(B);
    assert_eq!(
        (s.path, s.local, s.wide),
        (Some(B_LAN), Some(B_LAN), Some(B_PUB))
    );
    // A public source afterwards updates wide but not real.
    assert!(n.hb(B_PUB2, true).is_accepted());
    let s = n.status(B);
    assert_eq!((s.path, s.wide), (Some(B_LAN), Some(B_PUB2)));
    assert!(n.drain().is_empty());
}

#[test]
fn public_path_follows_rebinding() {
    let mut n = Node::new(|_| {});
    n.reach_connected();
    assert!(n.hb(B_PUB2, true).is_accepted());
    assert_eq!(n.status(B).path, Some(B_PUB2));
    assert_eq!(
        n.drain(),
        [Action::PathChanged {
            peer: B,
            path: B_PUB2
        }]
    );
}

#[test]
fn sources_inside_the_tunnel_are_refused_private_wans_are_not() {
    let mut n = Node::new(|_| {});
    n.reach_connecting();
    // The virtual network and a subnet the tunnel carries (a LAN behind
    // some gateway): a path there would run through the tunnel itself.
    n.m.set_tunnelled(vec![
        "10.0.0.0/24".parse().unwrap(),
        "192.168.0.0/24".parse().unwrap(),
    ]);
    let via_tunnel = SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 9), 5000);
    for from in [B_LAN, via_tunnel] {
        assert_eq!(n.hb(from, true), Outcome::Ignored(Ignored::TunnelledSource));
    }
    assert_eq!(n.state(B), PeerState::Connecting);
    assert_eq!(n.status(B).local, None);
    // Another private address (a private WAN, not carried by the tunnel)
    // is a path like any other, with subnet routes or without.
    let private_wan = SocketAddrV4::new(Ipv4Addr::new(10, 1, 2, 3), 5000);
    assert!(n.hb(private_wan, true).is_accepted());
    assert_eq!(n.state(B), PeerState::Connected);
    assert_eq!(n.status(B).path, Some(private_wan));
}

#[test]
fn peer_table_is_capped() {
    let mut n = Node::new(|c| c.max_peers = 2);
    assert!(n.m.try_p2p(B, n.now).is_accepted());
    assert!(n.m.try_p2p(C, n.now).is_accepted());
    let d = Ipv4Addr::new(10, 0, 0, 4);
    let full = Outcome::Ignored(Ignored::TooManyPeers { limit: 2 });
    assert_eq!(n.m.try_p2p(d, n.now), full);
    assert_eq!(n.m.handle_public_info(d, B_PUB, false, None, n.now), full);
    assert_eq!(n.m.handle_lan_info(d, B_LAN, n.now), full);
    assert_eq!(n.m.handle_discovery(d, false, n.now), full);
    assert_eq!(n.m.len(), 2);
    // Known peers keep working at the cap.
    assert!(n
        .m
        .handle_public_info(B, B_PUB, false, None, n.now)
        .is_accepted());
    // Repeats never add entries.
    for _ in 0..100 {
        assert!(n.m.try_p2p(B, n.now).is_accepted());
    }
    assert_eq!(n.m.len(), 2);
}

#[test]
fn bogus_vips_never_create_peers() {
    let mut n = Node::new(|_| {});
    for (vip, why) in [
        (ME, Ignored::OwnVip),
        (Ipv4Addr::UNSPECIFIED, Ignored::InvalidVip),
        (Ipv4Addr::BROADCAST, Ignored::InvalidVip),
        (Ipv4Addr::new(224, 0, 0, 1), Ignored::InvalidVip),
    ] {
        assert_eq!(n.m.try_p2p(vip, n.now), Outcome::Ignored(why));
        assert_eq!(
            n.m.handle_public_info(vip, B_PUB, false, None, n.now),
            Outcome::Ignored(why)
        );
    }
    assert!(n.m.is_empty());
    assert!(n.drain().is_empty());
}

#[test]
fn discovery_broadcast_period_and_reply() {
    let mut n = Node::new(|c| c.discovery_ticks = 3);
    let acts = n.advance(10_000);
    assert_eq!(
        acts,
        [
            (3_000, Action::DiscoveryBroadcast),
            (6_000, Action::DiscoveryBroadcast),
            (9_000, Action::DiscoveryBroadcast),
        ]
    );
    assert!(n.m.handle_discovery(B, true, n.now).is_accepted());
    assert_eq!(n.drain(), [Action::DiscoveryReply { peer: B }]);
    assert_eq!(n.state(B), PeerState::Preparing);
    // A unicast DISCOVERY (a reply) gets no reply but still tries P2P.
    assert!(n.m.handle_discovery(C, false, n.now).is_accepted());
    assert!(n.drain().is_empty());
    assert_eq!(n.state(C), PeerState::Preparing);
    // Our own broadcast echoed back is not a peer.
    assert_eq!(
        n.m.handle_discovery(ME, true, n.now),
        Outcome::Ignored(Ignored::OwnVip)
    );
    assert!(n.drain().is_empty());
}

#[test]
fn discovery_needs_stun_and_a_period() {
    let mut n = Node::new(|c| {
        c.discovery_ticks = 1;
        c.stun = false;
    });
    assert!(n.advance(5_000).is_empty());
    let mut n = Node::new(|c| c.discovery_ticks = 0);
    assert!(n.advance(5_000).is_empty());
}

#[test]
fn late_timeout_runs_one_tick_and_keeps_the_grid() {
    let mut n = Node::new(|_| {});
    assert_eq!(n.m.poll_timeout(), Some(n.at(1_000)));
    n.m.handle_timeout(n.at(999));
    assert_eq!(n.m.ticks(), 0);
    n.m.handle_timeout(n.at(3_500));
    assert_eq!(n.m.ticks(), 1);
    assert_eq!(n.m.poll_timeout(), Some(n.at(4_000)));
}

#[test]
fn shortened_timers_scale_everything() {
    let ms = Duration::from_millis;
    let mut n = Node::new(|c| {
        c.timers = Timers {
            tick: ms(100),
            preparing: ms(1_000),
            synchronizing: ms(1_000),
            connecting: ms(1_000),
            connected_idle: ms(300),
            retry_initial: ms(3_000),
            retry_max: ms(10_000),
        }
    });
    n.reach_connecting();
    n.advance(1_000);
    assert_eq!(n.state(B), PeerState::Waiting);
    assert_eq!(n.status(B).since, n.at(1_000));
    n.advance(3_900);
    assert_eq!(n.state(B), PeerState::Waiting);
    n.advance(4_000);
    assert_eq!(n.state(B), PeerState::Init);
    assert_eq!(n.status(B).retry, ms(6_000));
}

#[test]
fn peers_listing_is_ordered_by_vip() {
    let mut n = Node::new(|_| {});
    assert!(n.m.try_p2p(C, n.now).is_accepted());
    assert!(n.m.try_p2p(B, n.now).is_accepted());
    let vips: Vec<_> = n.m.peers().map(|s| s.vip).collect();
    assert_eq!(vips, [B, C]);
}

#[test]
fn connected_boundary_is_exactly_three_seconds() {
    // Refreshed exactly on a tick instant: the tick 3 s later must already
    // see "not < 3 s" and drop the peer (v6 compares with a strict <).
    let mut n = Node::new(|_| {});
    n.advance(1_000);
    n.reach_connected();
    let acts = n.advance(3_000);
    assert_eq!(n.state(B), PeerState::Connected);
    assert_eq!(acts.len(), 2, "heartbeats at 2 s and 3 s");
    let acts = n.advance(4_000);
    assert_eq!(
        only_states(&acts),
        [(4_000, Action::Disconnected { peer: B })]
    );
    assert_eq!(n.status(B).since, n.at(4_000));
}

mod proof;

#[test]
fn candidates_inside_the_tunnel_are_never_probed() {
    let mut n = Node::new(|_| {});
    assert!(n.m.handle_lan_info(B, B_LAN, n.now).is_accepted());
    n.reach_connecting();
    // B's LAN is a subnet the tunnel carries (B is its gateway).
    n.m.set_tunnelled(vec!["192.168.0.0/24".parse().unwrap()]);
    let to: Vec<SocketAddrV4> = n
        .advance(1000)
        .into_iter()
        .filter_map(|(_, a)| match a {
            Action::Heartbeat { to, .. } => Some(to),
            _ => None,
        })
        .collect();
    assert_eq!(to, [B_PUB]);
}
