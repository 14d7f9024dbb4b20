//! The TURN path of pairs that found no direct one (docs/turn.md): one
//! allocation per node, on a socket of its own, shared by every such pair.
//! Sans-IO like the `turn::Client` it drives: the caller feeds it what the
//! peer machines and the server link learn and the datagrams from the TURN
//! server, and carries out what [`TurnPath::poll_output`] asks.
//!
//! A pair's TURN path carries traffic only once proven, like any path
//! (docs/protocol.md §9.1): the peer's relayed address (UDP4CONN TLV 3) is
//! permitted and bound to a channel, a PING goes through the channel, and
//! only the PONG with its nonce, from the bound address, proves it. Until
//! then the channel is in [`TurnPath::turn_socket`] (so the dataplane
//! unwraps the PONG) but in no peer's entry (so no data goes through it).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use crate::dataplane::TurnSocket;
use crate::rng::SplitMix64;
use crate::turn::{Client, Credentials, Event, Received, TurnError};

/// Between PINGs of one challenge, and how many go out before the path is
/// given up: a relay adds a round trip, so a second is ample.
const PING_INTERVAL: Duration = Duration::from_secs(1);
const PING_TRIES: u8 = 5;
/// A proven path is challenged again this long after its last proof, and
/// given up after this many unanswered PINGs: like a direct path's
/// liveness (a challenge a tick, 3 s of silence), a dead TURN path (the
/// server gone, the peer restarted) falls back to the server's relay
/// within 4 s.
const RECHECK: Duration = Duration::from_secs(1);
const RECHECK_TRIES: u8 = 3;

pub type Nonce = [u8; 12];

/// One thing for the caller to do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TurnOutput {
    /// Send to the TURN server from the allocation's socket.
    ToServer(Vec<u8>),
    /// Tell `peer` our relayed address (UDP4CONN with TLV 3).
    Announce {
        peer: Ipv4Addr,
        relayed: SocketAddrV4,
    },
    /// Send `peer` a PING with `nonce`, sealed, led by the ChannelData
    /// header of `channel`, to the server. Comes after the `Changed` that
    /// put the channel in the table, so the answer is unwrapped.
    Ping {
        peer: Ipv4Addr,
        channel: u16,
        nonce: Nonce,
    },
    /// Channels or proven paths changed: publish a new snapshot.
    Changed,
    /// A pair's TURN path (`Some`) or the whole allocation (`None`) ended;
    /// log and count `error`.
    Failed {
        peer: Option<Ipv4Addr>,
        error: TurnError,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Waiting for the peer's relayed address, the allocation or the
    /// channel.
    Binding,
    Challenging {
        channel: u16,
        nonce: Nonce,
        next: Instant,
        sent: u8,
        /// A re-check of a proven path, which carries traffic meanwhile.
        proven: bool,
    },
    Proven {
        channel: u16,
        recheck: Instant,
    },
}

#[derive(Debug)]
struct Pair {
    /// What we permit and bind: the peer's relayed address.
    target: Option<SocketAddrV4>,
    stage: Stage,
}

pub struct TurnPath {
    client: Client,
    server: SocketAddrV4,
    pairs: BTreeMap<Ipv4Addr, Pair>,
    outputs: VecDeque<TurnOutput>,
    rng: SplitMix64,
    /// The server granted the allocation at some point.
    allocated: bool,
}

impl TurnPath {
    /// Starts allocating at once.
    pub fn new(server: SocketAddrV4, credentials: Credentials, seed: u64, now: Instant) -> Self {
        let mut rng = SplitMix64::new(seed);
        let client = Client::new(SocketAddr::V4(server), credentials, rng.next_u64(), now);
        let mut t = TurnPath {
            client,
            server,
            pairs: BTreeMap::new(),
            outputs: VecDeque::new(),
            rng,
            allocated: false,
        };
        t.drain(now);
        t
    }

    pub fn poll_output(&mut self) -> Option<TurnOutput> {
        self.outputs.pop_front()
    }

    pub fn relayed(&self) -> Option<SocketAddrV4> {
        self.client.relayed()
    }

    /// The server granted the allocation once: a failure now ended a live
    /// one (a refresh refused, as when REST credentials expire), not a
    /// request that never worked.
    pub fn was_allocated(&self) -> bool {
        self.allocated
    }

    /// The transport under the allocation is gone (a TLS session ended):
    /// every pair ends with it, as if the allocation had failed.
    pub fn fail(&mut self, error: TurnError) {
        self.pairs.clear();
        self.outputs.push_back(TurnOutput::Changed);
        self.outputs
            .push_back(TurnOutput::Failed { peer: None, error });
    }

    /// `peer` found no direct path: it is told our relayed address (now,
    /// or once allocated).
    pub fn want(&mut self, peer: Ipv4Addr) {
        if self.pairs.contains_key(&peer) {
            return;
        }
        self.pairs.insert(
            peer,
            Pair {
                target: None,
                stage: Stage::Binding,
            },
        );
        if let Some(relayed) = self.client.relayed() {
            self.outputs
                .push_back(TurnOutput::Announce { peer, relayed });
        }
    }

    /// `peer` announced its relayed address: permit and bind it. A peer
    /// that relays wants the pair over TURN, so this implies [`Self::want`].
    pub fn peer_relayed(&mut self, peer: Ipv4Addr, addr: SocketAddrV4, now: Instant) {
        self.want(peer);
        let Some(pair) = self.pairs.get_mut(&peer) else {
            return;
        };
        if pair.target == Some(addr) {
            return;
        }
        // A new allocation on the peer's side: the old path is gone.
        if let Some(old) = pair.target.replace(addr) {
            self.client.remove_peer(old, now);
            if matches!(pair.stage, Stage::Proven { .. }) {
                self.outputs.push_back(TurnOutput::Changed);
            }
        }
        pair.stage = Stage::Binding;
        if let Err(error) = self.client.add_peer(addr, now) {
            self.drop_pair(peer, error, now);
        }
        self.drain(now);
    }

    /// `peer` has a proven direct path: its TURN path is let go (TURN has
    /// no way to delete a permission or channel; they lapse).
    pub fn direct(&mut self, peer: Ipv4Addr, now: Instant) {
        if let Some(pair) = self.pairs.remove(&peer) {
            if let Some(t) = pair.target {
                self.client.remove_peer(t, now);
                self.outputs.push_back(TurnOutput::Changed);
            }
        }
    }

    /// A datagram from the TURN server that the dataplane passed up (STUN;
    /// ChannelData it unwraps itself). An error leaves everything as it
    /// was, for the caller to count.
    pub fn on_datagram(
        &mut self,
        from: SocketAddrV4,
        datagram: &[u8],
        now: Instant,
    ) -> Result<(), TurnError> {
        let r = self
            .client
            .handle_input(SocketAddr::V4(from), datagram, now)
            .map(|r| match r {
                // A Data indication: this node sends and expects only
                // ChannelData, which the dataplane handles.
                Received::Peer { .. } | Received::Control => (),
            });
        self.drain(now);
        r
    }

    /// A PONG that came in through the TURN socket from `from`: true if it
    /// proves `peer`'s TURN path (again).
    pub fn on_pong(
        &mut self,
        peer: Ipv4Addr,
        from: SocketAddrV4,
        nonce: &Nonce,
        now: Instant,
    ) -> bool {
        let Some(pair) = self.pairs.get_mut(&peer) else {
            return false;
        };
        match pair.stage {
            Stage::Challenging {
                channel,
                nonce: n,
                proven,
                ..
            } if pair.target == Some(from) && n == *nonce => {
                pair.stage = Stage::Proven {
                    channel,
                    recheck: now + RECHECK,
                };
                if !proven {
                    self.outputs.push_back(TurnOutput::Changed);
                }
                true
            }
            _ => false,
        }
    }

    /// The channel of `peer`'s proven TURN path.
    pub fn channel(&self, peer: Ipv4Addr) -> Option<u16> {
        match self.pairs.get(&peer)?.stage {
            Stage::Proven { channel, .. }
            | Stage::Challenging {
                channel,
                proven: true,
                ..
            } => Some(channel),
            _ => None,
        }
    }

    /// The channel bound to `addr` if that is `peer`'s address, proven or
    /// not: where the answer to a PING that came through it goes.
    pub fn channel_to(&self, peer: Ipv4Addr, addr: SocketAddrV4) -> Option<u16> {
        let target = self.pairs.get(&peer)?.target?;
        (target == addr)
            .then(|| self.client.channel(addr))
            .flatten()
    }

    /// Peers whose TURN path is proven.
    pub fn proven(&self) -> impl Iterator<Item = Ipv4Addr> + '_ {
        self.pairs
            .keys()
            .copied()
            .filter(|&p| self.channel(p).is_some())
    }

    /// What the dataplane needs to unwrap ChannelData: every bound
    /// channel, proven or still being challenged.
    pub fn turn_socket(&self) -> TurnSocket {
        let channels: HashMap<u16, SocketAddrV4> = self
            .pairs
            .values()
            .filter_map(|p| {
                let t = p.target?;
                Some((self.client.channel(t)?, t))
            })
            .collect();
        TurnSocket {
            server: self.server,
            channels,
        }
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        let pings = self.pairs.values().filter_map(|p| match p.stage {
            Stage::Challenging { next, .. } => Some(next),
            Stage::Proven { recheck, .. } => Some(recheck),
            Stage::Binding => None,
        });
        self.client.poll_timeout().into_iter().chain(pings).min()
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if self.client.poll_timeout().is_some_and(|t| t <= now) {
            self.client.handle_timeout(now);
        }
        let mut unanswered = Vec::new();
        for (&peer, pair) in &mut self.pairs {
            if let Stage::Proven { channel, recheck } = pair.stage {
                if recheck <= now {
                    let mut nonce = Nonce::default();
                    self.rng.fill(&mut nonce);
                    pair.stage = Stage::Challenging {
                        channel,
                        nonce,
                        next: now,
                        sent: 0,
                        proven: true,
                    };
                }
            }
            if let Stage::Challenging {
                channel,
                nonce,
                next,
                sent,
                proven,
            } = &mut pair.stage
            {
                if *next > now {
                    continue;
                }
                let tries = if *proven { RECHECK_TRIES } else { PING_TRIES };
                if *sent >= tries {
                    unanswered.push(peer);
                    continue;
                }
                *sent += 1;
                *next = now + PING_INTERVAL;
                self.outputs.push_back(TurnOutput::Ping {
                    peer,
                    channel: *channel,
                    nonce: *nonce,
                });
            }
        }
        for peer in unanswered {
            self.drop_pair(peer, TurnError::Timeout("no PONG through the channel"), now);
        }
        self.drain(now);
    }

    fn drop_pair(&mut self, peer: Ipv4Addr, error: TurnError, now: Instant) {
        if let Some(pair) = self.pairs.remove(&peer) {
            if let Some(t) = pair.target {
                self.client.remove_peer(t, now);
            }
            self.outputs.push_back(TurnOutput::Changed);
        }
        self.outputs.push_back(TurnOutput::Failed {
            peer: Some(peer),
            error,
        });
    }

    /// What the client has to send and what happened to it.
    fn drain(&mut self, now: Instant) {
        while let Some(d) = self.client.poll_transmit() {
            self.outputs.push_back(TurnOutput::ToServer(d));
        }
        while let Some(e) = self.client.poll_event() {
            match e {
                Event::Allocated { relayed, .. } => {
                    self.allocated = true;
                    for &peer in self.pairs.keys() {
                        self.outputs
                            .push_back(TurnOutput::Announce { peer, relayed });
                    }
                }
                Event::ChannelBound {
                    peer: addr,
                    channel,
                } => {
                    let Some((&peer, pair)) =
                        self.pairs.iter_mut().find(|(_, p)| p.target == Some(addr))
                    else {
                        continue;
                    };
                    let mut nonce = Nonce::default();
                    self.rng.fill(&mut nonce);
                    pair.stage = Stage::Challenging {
                        channel,
                        nonce,
                        next: now + PING_INTERVAL,
                        sent: 1,
                        proven: false,
                    };
                    self.outputs.push_back(TurnOutput::Changed);
                    self.outputs.push_back(TurnOutput::Ping {
                        peer,
                        channel,
                        nonce,
                    });
                }
                Event::PeerFailed { peer: addr, error } => {
                    let found = self
                        .pairs
                        .iter()
                        .find(|(_, p)| p.target == Some(addr))
                        .map(|(&v, _)| v);
                    if let Some(peer) = found {
                        self.drop_pair(peer, error, now);
                    }
                }
                Event::Failed(error) => {
                    self.pairs.clear();
                    self.outputs.push_back(TurnOutput::Changed);
                    self.outputs
                        .push_back(TurnOutput::Failed { peer: None, error });
                }
                Event::Refreshed { .. } | Event::Permitted(_) | Event::Closed => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::turn::tests::{creds, FakeTurn, RELAYED, SERVER};

    const B: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 3);

    fn b_relayed() -> SocketAddrV4 {
        "203.0.113.5:41000".parse().unwrap()
    }

    /// Carries every datagram to the simulated server and its answers
    /// back; returns the other outputs.
    fn pump(t: &mut TurnPath, s: &mut FakeTurn, now: Instant) -> Vec<TurnOutput> {
        let mut other = Vec::new();
        for _ in 0..100 {
            match t.poll_output() {
                Some(TurnOutput::ToServer(d)) => {
                    if let Some(r) = s.answer(&d) {
                        t.on_datagram(SERVER.parse().unwrap(), &r, now).unwrap();
                    }
                }
                Some(o) => other.push(o),
                None => return other,
            }
        }
        panic!("kept sending");
    }

    fn allocated() -> (TurnPath, FakeTurn, Instant) {
        let now = Instant::now();
        let mut s = FakeTurn::new("pw");
        let mut t = TurnPath::new(SERVER.parse().unwrap(), creds("pw"), 1, now);
        assert_eq!(pump(&mut t, &mut s, now), vec![]);
        assert_eq!(t.relayed(), Some(RELAYED.parse().unwrap()));
        (t, s, now)
    }

    /// Up to the PING: announced, bound, challenged; returns its nonce.
    fn challenged(t: &mut TurnPath, s: &mut FakeTurn, now: Instant) -> Nonce {
        t.want(B);
        let relayed = RELAYED.parse().unwrap();
        assert_eq!(
            t.poll_output(),
            Some(TurnOutput::Announce { peer: B, relayed })
        );
        t.peer_relayed(B, b_relayed(), now);
        let out = pump(t, s, now);
        let [TurnOutput::Changed, TurnOutput::Ping {
            peer: B,
            channel: 0x4000,
            nonce,
        }] = out[..]
        else {
            panic!("{out:?}");
        };
        nonce
    }

    #[test]
    fn a_bound_channel_is_used_only_once_a_pong_proves_it() {
        let (mut t, mut s, now) = allocated();
        let nonce = challenged(&mut t, &mut s, now);
        // The channel is unwrapped from now on, but carries no data yet.
        assert_eq!(t.turn_socket().channels[&0x4000], b_relayed());
        assert_eq!(t.turn_socket().server, SERVER.parse().unwrap());
        assert_eq!(t.channel(B), None);
        // A PONG with another nonce, or from another address: no proof.
        let mut other = nonce;
        other[0] ^= 1;
        assert!(!t.on_pong(B, b_relayed(), &other, now));
        assert!(!t.on_pong(B, "203.0.113.6:41000".parse().unwrap(), &nonce, now));
        assert!(!t.on_pong(Ipv4Addr::new(10, 77, 0, 9), b_relayed(), &nonce, now));
        assert_eq!(t.channel(B), None);
        assert!(t.on_pong(B, b_relayed(), &nonce, now));
        assert_eq!(t.poll_output(), Some(TurnOutput::Changed));
        assert_eq!(t.channel(B), Some(0x4000));
        // A direct path wins: TURN is let go.
        t.direct(B, now);
        assert_eq!(t.poll_output(), Some(TurnOutput::Changed));
        assert_eq!(t.channel(B), None);
        assert!(t.turn_socket().channels.is_empty());
    }

    #[test]
    fn a_peer_known_before_the_allocation_is_announced_when_it_exists() {
        let now = Instant::now();
        let mut s = FakeTurn::new("pw");
        let mut t = TurnPath::new(SERVER.parse().unwrap(), creds("pw"), 1, now);
        t.want(B);
        let relayed = RELAYED.parse().unwrap();
        assert_eq!(
            pump(&mut t, &mut s, now),
            vec![TurnOutput::Announce { peer: B, relayed }]
        );
    }

    #[test]
    fn unanswered_pings_are_repeated_then_the_path_is_given_up() {
        let (mut t, mut s, t0) = allocated();
        let nonce = challenged(&mut t, &mut s, t0);
        let mut pings = 1;
        for _ in 0..10 {
            let now = t.poll_timeout().unwrap();
            assert!(
                now <= t0 + Duration::from_secs(5),
                "no later than the 5th second"
            );
            t.handle_timeout(now);
            for o in pump(&mut t, &mut s, now) {
                match o {
                    TurnOutput::Ping { nonce: n, .. } => {
                        assert_eq!(n, nonce, "one challenge");
                        pings += 1;
                    }
                    TurnOutput::Failed {
                        peer: Some(B),
                        error: TurnError::Timeout(_),
                    } => {
                        assert_eq!(pings, PING_TRIES);
                        assert_eq!(now, t0 + Duration::from_secs(5));
                        assert!(t.turn_socket().channels.is_empty());
                        assert!(!t.on_pong(B, b_relayed(), &nonce, now), "too late");
                        return;
                    }
                    TurnOutput::Changed => {}
                    o => panic!("{o:?}"),
                }
            }
        }
        panic!("never gave up");
    }

    #[test]
    fn a_proven_path_is_challenged_again_and_dropped_when_silent() {
        let (mut t, mut s, t0) = allocated();
        let nonce = challenged(&mut t, &mut s, t0);
        assert!(t.on_pong(B, b_relayed(), &nonce, t0));
        assert_eq!(t.poll_output(), Some(TurnOutput::Changed));
        // The re-check: a fresh challenge, answered; the path never stops
        // carrying traffic and nothing is republished.
        let at = t.poll_timeout().unwrap();
        assert_eq!(at, t0 + RECHECK);
        t.handle_timeout(at);
        let out = pump(&mut t, &mut s, at);
        let [TurnOutput::Ping { nonce: again, .. }] = out[..] else {
            panic!("{out:?}");
        };
        assert_ne!(again, nonce, "a fresh nonce");
        assert_eq!(t.channel(B), Some(0x4000), "still carrying");
        assert!(!t.on_pong(B, b_relayed(), &nonce, at), "the old nonce");
        assert!(t.on_pong(B, b_relayed(), &again, at));
        assert_eq!(t.poll_output(), None);
        // The next re-check goes unanswered: the path ends.
        let mut now = t.poll_timeout().unwrap();
        assert_eq!(now, at + RECHECK);
        for _ in 0..RECHECK_TRIES + 1 {
            t.handle_timeout(now);
            let out = pump(&mut t, &mut s, now);
            if out.iter().any(|o| {
                matches!(
                    o,
                    TurnOutput::Failed {
                        peer: Some(B),
                        error: TurnError::Timeout(_)
                    }
                )
            }) {
                assert_eq!(t.channel(B), None);
                assert!(out.contains(&TurnOutput::Changed));
                assert!(now <= at + RECHECK + PING_INTERVAL * u32::from(RECHECK_TRIES));
                return;
            }
            assert_eq!(t.channel(B), Some(0x4000), "carrying while re-checked");
            now = t.poll_timeout().unwrap();
        }
        panic!("a silent peer kept its TURN path");
    }

    #[test]
    fn a_refused_allocation_ends_every_pair() {
        let now = Instant::now();
        let mut s = FakeTurn::new("pw");
        s.refuse_allocate = Some(486);
        let mut t = TurnPath::new(SERVER.parse().unwrap(), creds("pw"), 1, now);
        t.want(B);
        let out = pump(&mut t, &mut s, now);
        assert!(
            matches!(
                &out[..],
                [
                    TurnOutput::Changed,
                    TurnOutput::Failed {
                        peer: None,
                        error: TurnError::Refused { .. }
                    }
                ]
            ),
            "{out:?}"
        );
        assert_eq!(t.channel(B), None);
        assert_eq!(t.relayed(), None);
    }

    #[test]
    fn a_new_relayed_address_from_the_peer_restarts_the_proof() {
        let (mut t, mut s, now) = allocated();
        let nonce = challenged(&mut t, &mut s, now);
        assert!(t.on_pong(B, b_relayed(), &nonce, now));
        assert_eq!(t.poll_output(), Some(TurnOutput::Changed));
        let moved: SocketAddrV4 = "203.0.113.5:42000".parse().unwrap();
        t.peer_relayed(B, moved, now);
        let out = pump(&mut t, &mut s, now);
        assert_eq!(t.channel(B), None, "unproven again");
        assert!(
            matches!(
                &out[..],
                [
                    TurnOutput::Changed,
                    TurnOutput::Changed,
                    TurnOutput::Ping {
                        channel: 0x4001,
                        ..
                    }
                ]
            ),
            "{out:?}"
        );
        // A number of its own: the server still holds 0x4000 for the old
        // address.
        assert_eq!(t.turn_socket().channels, [(0x4001, moved)].into());
    }
}
