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
    use crate::peer::BirthdayRole;

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
    /// behind `own`; the actions of the next tick.
    fn tick_actions(own: NatKind, peer: NatKind, last: SocketAddrV4) -> (Node, Vec<Action>) {
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
        assert!(n.stun().is_accepted());
        n.drain();
        let t = n.now_ms() + 1000;
        let acts = n.advance(t).into_iter().map(|(_, a)| a).collect();
        (n, acts)
    }

    #[test]
    fn a_cone_sprays_the_window_after_a_sequential_peers_newest_mapping() {
        let newer = SocketAddrV4::new(*B_PUB.ip(), B_PUB.port() + 7);
        let (n, acts) = tick_actions(port_restricted(), sequential(), newer);
        assert!(acts.contains(&Action::Spray {
            peer: B,
            base: newer,
            step: 1,
            count: 64
        }));
        assert_eq!(
            n.status(B).method.map(|m| m.to_string()).as_deref(),
            Some("port prediction")
        );
        // An older classification than the UDP4CONN: spray after the latter.
        let older = SocketAddrV4::new(*B_PUB.ip(), B_PUB.port() - 7);
        let (_, acts) = tick_actions(port_restricted(), sequential(), older);
        assert!(acts.contains(&Action::Spray {
            peer: B,
            base: B_PUB,
            step: 1,
            count: 64
        }));
    }

    #[test]
    fn cones_and_the_predicted_side_do_not_spray() {
        for (own, peer) in [
            (port_restricted(), port_restricted()),
            (sequential(), port_restricted()),
        ] {
            let (_, acts) = tick_actions(own, peer, B_PUB);
            assert!(
                !acts.iter().any(|a| matches!(a, Action::Spray { .. })),
                "{own} with {peer}: {acts:?}"
            );
            assert!(pings(&acts).iter().any(|(to, _)| *to == B_PUB));
        }
    }

    /// Our actions from B's UDP4CONN (NAT `peer`) through the STUN answer
    /// that puts B in CONNECTING and one tick after, we behind `own`.
    fn attempt_actions(own: NatKind, peer: NatKind) -> (Node, Vec<Action>) {
        let mut n = Node::new(|_| {});
        n.m.set_own_nat(Some(own));
        let nat = Advertised {
            kind: peer,
            last_mapped: B_PUB,
            reachable: false,
        };
        assert!(n
            .m
            .handle_public_info(B, B_PUB, true, Some(nat), n.now)
            .is_accepted());
        assert!(n.stun().is_accepted());
        let mut acts = n.drain();
        let t = n.now_ms() + 1000;
        acts.extend(n.advance(t).into_iter().map(|(_, a)| a));
        (n, acts)
    }

    fn random() -> NatKind {
        kind(
            Mapping::EndpointDependent,
            Filtering::AddressAndPortDependent,
            Delta::Random,
        )
    }

    #[test]
    fn birthday_pairs_run_birthday_once_per_attempt_each_side_its_half() {
        let (n, acts) = attempt_actions(port_restricted(), random());
        let birthdays: Vec<_> = acts
            .iter()
            .filter(|a| matches!(a, Action::Birthday { .. }))
            .collect();
        assert_eq!(
            birthdays,
            [&Action::Birthday {
                peer: B,
                role: BirthdayRole::Spray {
                    ip: *B_PUB.ip(),
                    count: 768
                }
            }]
        );
        assert_eq!(
            n.status(B).method.map(|m| m.to_string()).as_deref(),
            Some("birthday")
        );
        let (_, acts) = attempt_actions(random(), port_restricted());
        let birthdays: Vec<_> = acts
            .iter()
            .filter(|a| matches!(a, Action::Birthday { .. }))
            .collect();
        assert_eq!(
            birthdays,
            [&Action::Birthday {
                peer: B,
                role: BirthdayRole::Sockets {
                    target: B_PUB,
                    count: 256
                }
            }]
        );
        // Challenges to the peer's mapping still go out from the shared
        // port each tick, which is all a cone-side hit needs.
        assert!(pings(&acts).iter().any(|(to, _)| *to == B_PUB));
    }

    #[test]
    fn prediction_and_birthday_pairs_get_simultaneous_open_and_say_so() {
        let (n, acts) = attempt_actions(random(), sequential());
        assert!(!acts
            .iter()
            .any(|a| matches!(a, Action::Spray { .. } | Action::Birthday { .. })));
        assert_eq!(
            n.status(B).method.map(|m| m.to_string()).as_deref(),
            Some("simultaneous open")
        );
    }

    #[test]
    fn one_hard_attempt_at_a_time() {
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
        let sprayed = |acts: &[(u64, Action)]| -> Vec<Ipv4Addr> {
            acts.iter()
                .filter_map(|(_, a)| match a {
                    Action::Spray { peer, .. } => Some(*peer),
                    _ => None,
                })
                .collect()
        };
        let first = n.advance(1000);
        assert_eq!(sprayed(&first), [B], "only B's window; C waits");
        // B's attempt ends (direct): C's window goes out on the next tick.
        let nonce = pings(&first.iter().map(|(_, a)| *a).collect::<Vec<_>>())
            .into_iter()
            .find(|(to, _)| *to == B_PUB)
            .unwrap()
            .1;
        assert!(n.pong(B_PUB, nonce).is_accepted());
        assert_eq!(sprayed(&n.advance(2000)), [C]);
    }

    #[test]
    fn after_connecting_the_spraying_stops() {
        let (mut n, acts) = tick_actions(port_restricted(), sequential(), B_PUB);
        let nonce = pings(&acts)[0].1;
        assert!(n.pong(B_PUB, nonce).is_accepted());
        let t = n.now_ms() + 3000;
        assert!(!n
            .advance(t)
            .iter()
            .any(|(_, a)| matches!(a, Action::Spray { .. })));
    }
}
