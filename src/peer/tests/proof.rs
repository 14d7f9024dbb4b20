//! Endpoint proof between ringlink peers: candidates, challenges, and what
//! a replayed datagram can no longer do.

use super::*;
use crate::proto::udp::Nonce;

/// A third party replaying captured datagrams.
const EVE: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 66), 7000);

impl Node {
    fn public_ringlink(&mut self, ep: SocketAddrV4) -> Outcome {
        self.m.handle_public_info(B, ep, true, None, self.now)
    }
    fn marked_hb(&mut self, from: SocketAddrV4) -> Outcome {
        self.m.handle_heartbeat(from, B, true, true, self.now)
    }
    fn ping(&mut self, from: SocketAddrV4, nonce: Nonce) -> Outcome {
        self.m.handle_ping(from, B, nonce, self.now)
    }
    fn pong(&mut self, from: SocketAddrV4, nonce: Nonce) -> Outcome {
        self.m.handle_pong(from, B, &nonce, self.now)
    }

    /// B (ringlink) in CONNECTING with wide = B_PUB.
    fn reach_ringlink_connecting(&mut self) {
        assert!(self.public_ringlink(B_PUB).is_accepted());
        assert!(self.stun().is_accepted());
        assert_eq!(self.state(B), PeerState::Connecting);
        self.drain();
    }

    /// B (ringlink) CONNECTED on B_PUB, proven by one challenge.
    fn reach_ringlink_connected(&mut self) {
        self.reach_ringlink_connecting();
        let t = self.now_ms() + 1000;
        let nonce = only_ping_to(&self.advance(t), B_PUB);
        assert!(self.pong(B_PUB, nonce).is_accepted());
        assert_eq!(self.state(B), PeerState::Connected);
        self.drain();
    }

    fn now_ms(&self) -> u64 {
        (self.now - self.t0).as_millis() as u64
    }
}

fn pings(actions: &[Action]) -> Vec<(SocketAddrV4, Nonce)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Ping { to, nonce, .. } => Some((*to, *nonce)),
            _ => None,
        })
        .collect()
}

fn only_ping_to(actions: &[(u64, Action)], to: SocketAddrV4) -> Nonce {
    let all: Vec<Action> = actions.iter().map(|(_, a)| *a).collect();
    assert!(
        all.iter().all(|a| !matches!(a, Action::Heartbeat { .. })),
        "a ringlink peer is challenged, not sent heartbeats: {all:?}"
    );
    match pings(&all)[..] {
        [(t, n)] if t == to => n,
        ref other => panic!("expected one PING to {to}, got {other:?}"),
    }
}

#[test]
fn a_second_endpoint_announced_mid_attempt_is_challenged_at_once() {
    let mut n = Node::new(|_| {});
    assert!(n
        .m
        .handle_public_info(B, B_PUB, true, None, n.now)
        .is_accepted());
    assert!(n.stun().is_accepted());
    assert_eq!(n.state(B), PeerState::Connecting);
    n.drain();
    // The peer's fresh port: a challenge leaves now, not on the next tick.
    assert!(n
        .m
        .handle_public_info(B, B_PUB2, true, None, n.now)
        .is_accepted());
    assert_eq!(
        pings(&n.drain())
            .iter()
            .map(|(to, _)| *to)
            .collect::<Vec<_>>(),
        [B_PUB2]
    );
    // The same endpoint again is no news.
    assert!(n
        .m
        .handle_public_info(B, B_PUB2, true, None, n.now)
        .is_accepted());
    assert!(pings(&n.drain()).is_empty());
}

#[test]
fn a_ringlink_path_needs_an_answered_challenge() {
    let mut n = Node::new(|_| {});
    n.reach_ringlink_connecting();
    // An authenticated heartbeat from the right address is not enough.
    assert!(n.marked_hb(B_PUB).is_accepted());
    assert_eq!(n.state(B), PeerState::Connecting);
    let first = pings(&n.drain());
    assert_eq!(first.len(), 1);
    assert_eq!(n.status(B).path, None);
    // Neither is an answer with a nonce we never sent, or from elsewhere.
    assert_eq!(
        n.pong(B_PUB, [0; 12]),
        Outcome::Ignored(Ignored::UnknownNonce)
    );
    assert_eq!(
        n.pong(EVE, first[0].1),
        Outcome::Ignored(Ignored::WrongSource)
    );
    assert_eq!(n.state(B), PeerState::Connecting);
    // The genuine answer is.
    assert!(n.pong(B_PUB, first[0].1).is_accepted());
    assert_eq!(n.state(B), PeerState::Connected);
    assert_eq!(
        n.drain(),
        [Action::Connected {
            peer: B,
            path: B_PUB
        }]
    );
    // Used once: the same answer again is a replay.
    assert_eq!(
        n.pong(B_PUB, first[0].1),
        Outcome::Ignored(Ignored::UnknownNonce)
    );
}

#[test]
fn replays_from_a_third_address_do_not_move_the_path() {
    let mut n = Node::new(|_| {});
    n.reach_ringlink_connected();
    let ping_nonce = [5; 12];
    // Eve replays a heartbeat and a PING; each only earns her a challenge
    // (and the PING an answer) that she cannot answer without the key.
    assert!(n.marked_hb(EVE).is_accepted());
    assert!(n.ping(EVE, ping_nonce).is_accepted());
    let acts = n.drain();
    assert!(acts.iter().all(|a| matches!(
        a,
        Action::Ping { to: EVE, .. } | Action::Pong { to: EVE, .. }
    )));
    // She replays the PONG B sent to our latest genuine challenge, too.
    let t = n.now_ms() + 1000;
    let nonce = only_ping_to(&n.advance(t), B_PUB);
    assert_eq!(n.pong(EVE, nonce), Outcome::Ignored(Ignored::WrongSource));
    assert_eq!(n.status(B).path, Some(B_PUB));
    assert!(n.drain().is_empty());
    // The genuine answer still counts: Eve's copy did not consume it.
    assert!(n.pong(B_PUB, nonce).is_accepted());
    assert_eq!(n.status(B).path, Some(B_PUB));
}

#[test]
fn replayed_heartbeats_do_not_keep_a_dead_path_alive() {
    let mut n = Node::new(|_| {});
    n.reach_ringlink_connected();
    let start = n.now_ms();
    // B is gone; someone replays its ack-heartbeats from its old address
    // every 250 ms. Candy would stay CONNECTED forever.
    let mut died = None;
    for step in 1..=40u64 {
        let acts = n.advance(start + step * 250);
        if acts
            .iter()
            .any(|(_, a)| matches!(a, Action::Disconnected { .. }))
        {
            died = Some(step * 250);
            break;
        }
        assert!(n.marked_hb(B_PUB).is_accepted());
    }
    let died = died.expect("the path died");
    assert!((3000..=4000).contains(&died), "died after {died} ms");
}

#[test]
fn answered_challenges_keep_the_path_alive() {
    let mut n = Node::new(|_| {});
    n.reach_ringlink_connected();
    for _ in 0..20 {
        let t = n.now_ms() + 1000;
        let nonce = only_ping_to(&n.advance(t), B_PUB);
        assert!(n.pong(B_PUB, nonce).is_accepted());
        assert!(n.drain().is_empty());
    }
    assert_eq!(n.state(B), PeerState::Connected);
}

#[test]
fn a_genuine_rebinding_is_followed_after_its_proof() {
    let mut n = Node::new(|_| {});
    n.reach_ringlink_connected();
    // B's router restarted and maps it to a new port: its PINGs arrive
    // from there. We answer, and challenge the new address.
    assert!(n.ping(B_PUB2, [1; 12]).is_accepted());
    let acts = n.drain();
    assert!(acts.contains(&Action::Pong {
        peer: B,
        to: B_PUB2,
        nonce: [1; 12]
    }));
    let challenge = pings(&acts);
    assert_eq!(challenge.len(), 1);
    assert_eq!(challenge[0].0, B_PUB2);
    assert_eq!(n.status(B).path, Some(B_PUB), "not before the proof");
    assert!(n.pong(B_PUB2, challenge[0].1).is_accepted());
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
fn answers_and_challenges_are_rate_limited() {
    let mut n = Node::new(|_| {});
    n.reach_ringlink_connected();
    let limited = (0..100u8)
        .filter(|i| n.ping(EVE, [*i; 12]) == Outcome::Ignored(Ignored::RateLimited))
        .count();
    let acts = n.drain();
    let pongs = acts
        .iter()
        .filter(|a| matches!(a, Action::Pong { .. }))
        .count();
    assert_eq!((pongs, limited), (8, 92));
    assert!(pings(&acts).len() <= 8);
}

#[test]
fn a_marked_heartbeat_turns_a_candy_peer_into_a_challenged_one() {
    let mut n = Node::new(|_| {});
    n.reach_connecting(); // UDP4CONN without the marker
    assert!(!n.status(B).ringlink);
    assert!(n.marked_hb(B_PUB).is_accepted());
    assert!(n.status(B).ringlink);
    assert_eq!(n.state(B), PeerState::Connecting);
    assert_eq!(pings(&n.drain()).len(), 1);
}

#[test]
fn attempts_and_time_to_direct_are_reported() {
    let mut n = Node::new(|_| {});
    assert!(n.try_p2p().is_accepted());
    n.advance(400);
    n.reach_ringlink_connected();
    let s = n.status(B);
    assert_eq!(s.attempts, 1);
    assert_eq!(s.time_to_direct, Some(n.now - n.t0));
}

#[test]
fn a_replay_flood_does_not_starve_the_path() {
    let mut n = Node::new(|_| {});
    n.reach_ringlink_connected();
    let start = n.now_ms();
    let mut answered_b = 0;
    for step in 1..=100u64 {
        // Eve: ten replayed PINGs and heartbeats every 100 ms.
        for k in 0..10u8 {
            let _ = n.ping(EVE, [k; 12]);
            let _ = n.marked_hb(EVE);
        }
        let mut acts: Vec<Action> = n
            .advance(start + step * 100)
            .into_iter()
            .map(|(_, a)| a)
            .collect();
        // B: its own PING once a tick; and our challenge to it answered.
        if step % 10 == 0 {
            assert!(n.ping(B_PUB, [step as u8; 12]).is_accepted());
        }
        acts.extend(n.drain());
        for a in &acts {
            match *a {
                Action::Ping {
                    to: B_PUB, nonce, ..
                } => {
                    assert!(n.pong(B_PUB, nonce).is_accepted());
                }
                Action::Pong { to: B_PUB, .. } => answered_b += 1,
                Action::Disconnected { .. } => panic!("path lost at step {step}"),
                _ => {}
            }
        }
    }
    assert_eq!(n.state(B), PeerState::Connected);
    assert_eq!(n.status(B).path, Some(B_PUB));
    assert_eq!(answered_b, 10, "every one of B's PINGs answered");
}

mod prediction {
    use super::*;
    use crate::nat::{Advertised, Delta, Filtering, Mapping, NatKind};
    use crate::peer::{BirthdayRole, FreshSpray};

    fn kind(mapping: Mapping, filtering: Filtering, delta: Delta) -> NatKind {
        NatKind {
            behind_nat: true,
            mapping,
            filtering,
            delta,
        }
    }

    fn port_restricted() -> NatKind {
        kind(
            Mapping::EndpointIndependent,
            Filtering::AddressAndPortDependent,
            Delta::Equal,
        )
    }

    fn sequential() -> NatKind {
        kind(
            Mapping::EndpointDependent,
            Filtering::AddressAndPortDependent,
            Delta::Independent(1),
        )
    }

    /// B (ringlink, NAT `peer`, last mapping `last`) in CONNECTING, we
    /// behind `own`; our actions from the STUN answer on.
    fn connecting(own: NatKind, peer: NatKind, last: SocketAddrV4) -> (Node, Vec<Action>) {
        let mut n = Node::new(|_| {});
        n.m.set_own_nat(Some(own));
        let nat = Advertised {
            kind: peer,
            last_mapped: last,
            reachable: false,
        };
        assert!(n
            .m
            .handle_public_info(B, B_PUB, true, Some(nat), n.now)
            .is_accepted());
        n.drain();
        assert!(n.stun().is_accepted());
        assert_eq!(n.state(B), PeerState::Connecting);
        let acts = n.drain();
        (n, acts)
    }

    /// B announces `ep` (a fresh socket's mapping) `ms` from now.
    fn announce(n: &mut Node, ep: SocketAddrV4, peer: NatKind, ms: u64) -> Vec<Action> {
        let t = n.now_ms() + ms;
        let mut acts: Vec<Action> = n.advance(t).into_iter().map(|(_, a)| a).collect();
        let nat = Advertised {
            kind: peer,
            last_mapped: B_PUB,
            reachable: false,
        };
        assert!(n
            .m
            .handle_public_info(B, ep, true, Some(nat), n.now)
            .is_accepted());
        acts.extend(n.drain());
        acts
    }

    fn fresh_ports(acts: &[Action]) -> Vec<(Option<SocketAddrV4>, FreshSpray)> {
        acts.iter()
            .filter_map(|a| match a {
                Action::FreshPort { target, spray, .. } => Some((*target, *spray)),
                _ => None,
            })
            .collect()
    }

    fn hard(acts: &[Action]) -> Vec<Action> {
        acts.iter()
            .copied()
            .filter(|a| {
                matches!(
                    a,
                    Action::Spray { .. } | Action::Birthday { .. } | Action::FreshPort { .. }
                )
            })
            .collect()
    }

    const SEQ_OBSERVED: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 51, 100, 2), 20_010);

    #[test]
    fn a_cone_sprays_the_window_around_each_observation_of_a_sequential_peer() {
        let (mut n, acts) = connecting(port_restricted(), sequential(), B_PUB);
        assert_eq!(hard(&acts), [], "it waits for the peer's observation");
        assert_eq!(
            n.status(B).method.map(|m| m.to_string()).as_deref(),
            Some("port prediction")
        );
        let acts = announce(&mut n, SEQ_OBSERVED, sequential(), 300);
        assert_eq!(
            fresh_ports(&acts),
            [(
                None,
                FreshSpray::Window {
                    base: SEQ_OBSERVED,
                    step: 1,
                    behind: 4,
                    ahead: 60
                }
            )]
        );
        // A symmetric NAT's announced mapping admits only STUN: it is a
        // base, not challenged.
        assert!(!pings(&acts).iter().any(|(to, _)| *to == SEQ_OBSERVED));
        // The next observation 3 s later is 90 ports on: 30 sessions a
        // second, so the window reaches 60 further.
        let later = SocketAddrV4::new(*SEQ_OBSERVED.ip(), SEQ_OBSERVED.port() + 90);
        let acts = announce(&mut n, later, sequential(), 3000);
        assert_eq!(
            fresh_ports(&acts),
            [(
                None,
                FreshSpray::Window {
                    base: later,
                    step: 1,
                    behind: 4,
                    ahead: 120
                }
            )]
        );
    }

    #[test]
    fn without_an_observation_the_cone_falls_back_to_the_newest_mapping() {
        let newer = SocketAddrV4::new(*B_PUB.ip(), B_PUB.port() + 7);
        let (mut n, _) = connecting(port_restricted(), sequential(), newer);
        let t = n.now_ms() + 1000;
        assert_eq!(
            hard(&n.advance(t).into_iter().map(|(_, a)| a).collect::<Vec<_>>()),
            []
        );
        let t = n.now_ms() + 1000;
        let acts: Vec<Action> = n.advance(t).into_iter().map(|(_, a)| a).collect();
        assert_eq!(
            fresh_ports(&acts),
            [(
                None,
                FreshSpray::Window {
                    base: newer,
                    step: 1,
                    behind: 4,
                    ahead: 60
                }
            )]
        );
        // Waiting for the observation did not count against CONNECTING.
        let t = n.now_ms() + 9000;
        n.advance(t);
        assert_eq!(n.state(B), PeerState::Connecting);
    }

    #[test]
    fn the_predicted_side_observes_each_round_and_sprays_nothing() {
        let (mut n, acts) = connecting(sequential(), port_restricted(), B_PUB);
        assert_eq!(fresh_ports(&acts), [(None, FreshSpray::Nothing)]);
        // The round ends without a path: a fresh observation, twice more.
        let t = n.now_ms() + 10_000;
        let later: Vec<Action> = n.advance(t).into_iter().map(|(_, a)| a).collect();
        assert_eq!(fresh_ports(&later).len(), 2);
        assert!(!later.iter().any(|a| matches!(a, Action::Spray { .. })));
        // Two cones: the port-filtering one probes from a fresh port.
        let (_, acts) = connecting(port_restricted(), port_restricted(), B_PUB);
        assert_eq!(fresh_ports(&acts), [(Some(B_PUB), FreshSpray::Nothing)]);
    }

    #[test]
    fn two_sequential_nats_observe_then_stride() {
        // We lead (the lower VIP): observe, and spray by 2 only once our
        // socket is mapped and the follower has announced its own base.
        let (mut n, acts) = connecting(sequential(), sequential(), B_PUB);
        assert_eq!(fresh_ports(&acts), [(None, FreshSpray::Nothing)]);
        let own = SocketAddrV4::new(OWN_PUB.ip().to_owned(), 30_000);
        n.m.handle_own_fresh(B, own, n.now);
        assert_eq!(hard(&n.drain()), []);
        let acts = announce(&mut n, SEQ_OBSERVED, sequential(), 100);
        assert_eq!(
            hard(&acts),
            [Action::Spray {
                peer: B,
                base: SEQ_OBSERVED,
                step: 1,
                stride: 2,
                count: 64
            }]
        );
        // B leads when its VIP is the lower one: we follow, observing on its
        // announcement and striding by 1 over its base.
        let mut n = Node::new(|c| c.vip = Ipv4Addr::new(10, 0, 0, 9));
        n.m.set_own_nat(Some(sequential()));
        let nat = Advertised {
            kind: sequential(),
            last_mapped: B_PUB,
            reachable: false,
        };
        assert!(n
            .m
            .handle_public_info(B, B_PUB, true, Some(nat), n.now)
            .is_accepted());
        assert!(n.stun().is_accepted());
        assert_eq!(hard(&n.drain()), [], "the follower waits");
        let acts = announce(&mut n, SEQ_OBSERVED, sequential(), 100);
        assert_eq!(fresh_ports(&acts), [(None, FreshSpray::Nothing)]);
        n.m.handle_own_fresh(B, own, n.now);
        assert_eq!(
            hard(&n.drain()),
            [Action::Spray {
                peer: B,
                base: SEQ_OBSERVED,
                step: 1,
                stride: 1,
                count: 128
            }]
        );
    }

    fn random() -> NatKind {
        kind(
            Mapping::EndpointDependent,
            Filtering::AddressAndPortDependent,
            Delta::Random,
        )
    }

    #[test]
    fn birthday_the_cone_sprays_from_a_fresh_port_and_the_sockets_follow_it() {
        let (mut n, acts) = connecting(port_restricted(), random(), B_PUB);
        let spray = [(
            None,
            FreshSpray::Birthday {
                ip: *B_PUB.ip(),
                count: 510,
            },
        )];
        assert_eq!(fresh_ports(&acts), spray);
        assert_eq!(
            n.status(B).method.map(|m| m.to_string()).as_deref(),
            Some("birthday")
        );
        // No path yet: a second draw from another fresh port once the
        // first spray (2.6 s at 200/s) and two ticks have passed, and no
        // third within the attempt.
        let rounds: Vec<u64> = n
            .advance(n.now_ms() + 9_000)
            .into_iter()
            .filter(|(_, a)| matches!(a, Action::FreshPort { .. }))
            .map(|(t, _)| t)
            .collect();
        assert_eq!(rounds.len(), 1, "{rounds:?}");
        assert!((4_000..=5_000).contains(&rounds[0]), "{rounds:?}");
        // The random side waits for the cone's fresh port, then aims its
        // sockets at it.
        let (mut n, acts) = connecting(random(), port_restricted(), B_PUB);
        assert_eq!(hard(&acts), []);
        let fresh = SocketAddrV4::new(*B_PUB.ip(), 41_234);
        let acts = announce(&mut n, fresh, port_restricted(), 2000);
        assert_eq!(
            hard(&acts),
            [Action::Birthday {
                peer: B,
                role: BirthdayRole::Sockets {
                    target: fresh,
                    count: 256
                }
            }]
        );
        assert!(
            pings(&acts).iter().any(|(to, _)| *to == fresh),
            "a cone's port is challenged"
        );
        // The cone's second round announces another port: the same
        // sockets are aimed at it.
        let second = SocketAddrV4::new(*B_PUB.ip(), 41_300);
        let acts = announce(&mut n, second, port_restricted(), 3000);
        assert_eq!(
            hard(&acts),
            [Action::Birthday {
                peer: B,
                role: BirthdayRole::Sockets {
                    target: second,
                    count: 256
                }
            }]
        );
    }

    #[test]
    fn two_random_nats_are_told_at_once_that_no_direct_path_will_come() {
        let (mut n, acts) = connecting(random(), random(), B_PUB);
        assert_eq!(
            n.status(B).method.map(|m| m.to_string()).as_deref(),
            Some("relay")
        );
        assert!(acts.contains(&Action::NoDirectPath { peer: B }), "{acts:?}");
        assert!(hard(&acts).is_empty(), "no probes spent");
        // Not a second time when the attempt runs out.
        let later = n.advance(n.now_ms() + 11_000);
        assert_eq!(n.state(B), PeerState::Waiting);
        assert!(!later
            .iter()
            .any(|(_, a)| matches!(a, Action::NoDirectPath { .. })));
    }

    #[test]
    fn a_missed_draw_is_retried_sooner_than_candy_would() {
        let (mut n, _) = connecting(port_restricted(), random(), B_PUB);
        let mut waiting = Vec::new();
        let mut no_path = 0;
        for _ in 0..200 {
            let acts = n.advance(n.now_ms() + 100);
            no_path += acts
                .iter()
                .filter(|(_, a)| *a == Action::NoDirectPath { peer: B })
                .count();
            if n.state(B) == PeerState::Waiting {
                waiting.push(n.now_ms());
                assert_eq!(n.status(B).retry, Duration::from_secs(5));
            }
        }
        let stay = waiting.last().unwrap() - waiting.first().unwrap();
        assert!((4_800..=5_000).contains(&stay), "WAITING for {stay} ms");
        // Each missed attempt tells the caller once (it may offer TURN).
        assert_eq!(no_path, 1);
        // A method that is no draw waits Candy's interval.
        let (mut n, _) = connecting(port_restricted(), port_restricted(), B_PUB);
        n.advance(n.now_ms() + 11_000);
        assert_eq!(n.state(B), PeerState::Waiting);
        assert_eq!(n.status(B).retry, Duration::from_secs(30));
    }

    #[test]
    fn sequential_and_random_combine_prediction_and_birthday() {
        let (mut n, acts) = connecting(sequential(), random(), B_PUB);
        assert_eq!(fresh_ports(&acts), [(None, FreshSpray::Nothing)]);
        assert_eq!(
            n.status(B).method.map(|m| m.to_string()).as_deref(),
            Some("prediction + birthday")
        );
        let own = SocketAddrV4::new(OWN_PUB.ip().to_owned(), 30_000);
        n.m.handle_own_fresh(B, own, n.now);
        assert_eq!(
            hard(&n.drain()),
            [Action::Birthday {
                peer: B,
                role: BirthdayRole::Spray {
                    ip: *B_PUB.ip(),
                    count: 32
                }
            }]
        );
        let (mut n, acts) = connecting(random(), sequential(), B_PUB);
        assert_eq!(hard(&acts), []);
        let acts = announce(&mut n, SEQ_OBSERVED, sequential(), 100);
        assert_eq!(
            hard(&acts),
            [Action::Birthday {
                peer: B,
                role: BirthdayRole::Slots {
                    base: SEQ_OBSERVED,
                    step: 1,
                    slots: 32,
                    per_slot: 31
                }
            }]
        );
    }

    #[test]
    fn one_hard_round_at_a_time() {
        let mut n = Node::new(|_| {});
        n.m.set_own_nat(Some(port_restricted()));
        let nat = |last| Advertised {
            kind: sequential(),
            last_mapped: last,
            reachable: false,
        };
        let c_pub = SocketAddrV4::new(Ipv4Addr::new(198, 51, 100, 3), 6000);
        assert!(n
            .m
            .handle_public_info(B, B_PUB, true, Some(nat(B_PUB)), n.now)
            .is_accepted());
        assert!(n
            .m
            .handle_public_info(C, c_pub, true, Some(nat(c_pub)), n.now)
            .is_accepted());
        assert!(n.stun().is_accepted());
        n.drain();
        let windows = |acts: &[Action]| -> Vec<Ipv4Addr> {
            acts.iter()
                .filter_map(|a| match a {
                    Action::FreshPort { peer, .. } => Some(*peer),
                    _ => None,
                })
                .collect()
        };
        let b_seen = SocketAddrV4::new(*B_PUB.ip(), 20_000);
        let c_seen = SocketAddrV4::new(*c_pub.ip(), 20_000);
        assert!(n
            .m
            .handle_public_info(B, b_seen, true, Some(nat(B_PUB)), n.now)
            .is_accepted());
        assert!(n
            .m
            .handle_public_info(C, c_seen, true, Some(nat(c_pub)), n.now)
            .is_accepted());
        assert_eq!(windows(&n.drain()), [B], "only B's window; C waits");
        // B's round holds the slot through ticks; once B's path is proven,
        // C's round starts at once.
        let t = n.now_ms() + 300;
        let acts: Vec<Action> = n.advance(t).into_iter().map(|(_, a)| a).collect();
        assert!(windows(&acts).is_empty());
        let nonce = pings(
            &n.advance(n.now_ms() + 1000)
                .into_iter()
                .map(|(_, a)| a)
                .collect::<Vec<_>>(),
        )
        .into_iter()
        .find(|(to, _)| *to == b_seen)
        .unwrap()
        .1;
        assert!(n.pong(b_seen, nonce).is_accepted());
        assert_eq!(n.state(B), PeerState::Connected);
        assert_eq!(windows(&n.drain()), [C]);
    }

    #[test]
    fn after_connecting_no_round_starts() {
        let (mut n, _) = connecting(sequential(), port_restricted(), B_PUB);
        let t = n.now_ms() + 1000;
        let nonce = pings(&n.advance(t).into_iter().map(|(_, a)| a).collect::<Vec<_>>())[0].1;
        assert!(n.pong(B_PUB, nonce).is_accepted());
        let t = n.now_ms() + 10_000;
        assert_eq!(
            hard(&n.advance(t).into_iter().map(|(_, a)| a).collect::<Vec<_>>()),
            []
        );
    }
}
