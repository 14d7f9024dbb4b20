//! Direct TCP paths (docs/tcp.md): for pairs with no direct UDP path, a
//! TCP stream to the peer's advertised endpoint, or one the peer opened
//! to ours. Sans-IO: the caller opens and accepts the streams, feeds in
//! what arrives on them, and carries out [`TcpOutput`]s.
//!
//! A stream carries traffic only once proven, like any path
//! (docs/protocol.md §9.1): a PING in the peer's session goes down the
//! stream and only the PONG with its nonce, in the same session, proves
//! it. A stream someone opened to us belongs to no peer until a PING in a
//! peer's session arrives on it; one that stays anonymous is closed.
//! Streams never reach the peer state machines, so a TCP stream can never
//! become a direct UDP path.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use crate::dataplane::{LocalStream, FIRST_STREAM_ID, TURN_SOCKET};
use crate::rng::SplitMix64;

pub type Nonce = [u8; 12];

/// Between PINGs of one challenge, how many go out before the stream is
/// given up, and when a proven one is challenged again and how many
/// unanswered PINGs end it: the same pace as a TURN path, so a dead
/// stream (a peer gone, a NAT that forgot the connection, a peer that
/// stopped reading) falls back to the server's relay within 4 s.
const PING_INTERVAL: Duration = Duration::from_secs(1);
const PING_TRIES: u8 = 5;
const RECHECK: Duration = Duration::from_secs(1);
const RECHECK_TRIES: u8 = 3;
/// How long a stream opened to us may stay without a peer's PING.
const ANONYMOUS_FOR: Duration = Duration::from_secs(10);
/// How long a pair may wait for its stream: a connect's own timeout, or a
/// hole punch's meeting time and connect, come well within it.
const CONNECT_DEADLINE: Duration = Duration::from_secs(15);
/// Most streams this node holds at once; beyond, new ones are closed.
pub const MAX_STREAMS: usize = 256;

#[derive(Debug)]
pub enum TcpOutput {
    /// Open a TCP stream to `to` for `peer`, and hand it to
    /// [`TcpPaths::connected`] (or report [`TcpPaths::connect_failed`]).
    Connect { peer: Ipv4Addr, to: SocketAddrV4 },
    /// Send `peer` a PING with `nonce`, in its session, on `stream`.
    Ping {
        peer: Ipv4Addr,
        stream: LocalStream,
        nonce: Nonce,
    },
    /// Shut the stream down; it is out of the table already.
    Close { stream: LocalStream, reason: String },
    /// Streams or proven paths changed: publish a new snapshot.
    Changed,
    /// `peer`'s TCP path ended or could not start: log and count.
    Failed { peer: Ipv4Addr, reason: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Asked to connect (or to punch), no stream yet.
    Connecting {
        since: Instant,
    },
    Challenging {
        nonce: Nonce,
        next: Instant,
        sent: u8,
        /// A re-check of a proven stream, which carries traffic meanwhile.
        proven: bool,
    },
    Proven {
        recheck: Instant,
    },
}

#[derive(Debug)]
struct Pair {
    /// The stream's id once there is one.
    stream: Option<u16>,
    stage: Stage,
}

#[derive(Debug)]
struct Entry {
    stream: LocalStream,
    /// The peer whose PING or whose connect it carries.
    peer: Option<Ipv4Addr>,
    opened: Instant,
}

pub struct TcpPaths {
    streams: BTreeMap<u16, Entry>,
    pairs: BTreeMap<Ipv4Addr, Pair>,
    next_id: u16,
    outputs: VecDeque<TcpOutput>,
    rng: SplitMix64,
}

impl TcpPaths {
    pub fn new(seed: u64) -> Self {
        TcpPaths {
            streams: BTreeMap::new(),
            pairs: BTreeMap::new(),
            next_id: FIRST_STREAM_ID - 1,
            outputs: VecDeque::new(),
            rng: SplitMix64::new(seed),
        }
    }

    pub fn poll_output(&mut self) -> Option<TcpOutput> {
        self.outputs.pop_front()
    }

    /// `peer` has no direct UDP path and accepts TCP at `to`: connect,
    /// unless a stream to it exists or is on its way.
    pub fn want(&mut self, peer: Ipv4Addr, to: SocketAddrV4, now: Instant) {
        if self.expect(peer, now) {
            self.outputs.push_back(TcpOutput::Connect { peer, to });
        }
    }

    /// A stream for `peer` will come from a connect the caller starts (a
    /// hole punch). False if one exists or is on its way.
    pub fn expect(&mut self, peer: Ipv4Addr, now: Instant) -> bool {
        if self.pairs.contains_key(&peer) {
            return false;
        }
        self.pairs.insert(
            peer,
            Pair {
                stream: None,
                stage: Stage::Connecting { since: now },
            },
        );
        true
    }

    /// The stream [`TcpOutput::Connect`] asked for is open.
    pub fn connected(&mut self, peer: Ipv4Addr, remote: SocketAddrV4, fd: OwnedFd, now: Instant) {
        let wanted = self
            .pairs
            .get(&peer)
            .is_some_and(|p| matches!(p.stage, Stage::Connecting { .. }));
        let Some(stream) = self.admit(remote, fd, Some(peer), now) else {
            self.pairs.remove(&peer);
            return;
        };
        if !wanted {
            // The pair went direct or found another stream meanwhile.
            self.close(stream.id, "not needed any more".into());
            return;
        }
        self.challenge(peer, stream.id, false, now);
    }

    /// A connect or punch for `peer` is no longer wanted (another way to
    /// it came up); its stream, if one still comes, is closed.
    pub fn forget_connecting(&mut self, peer: Ipv4Addr) {
        if self
            .pairs
            .get(&peer)
            .is_some_and(|p| matches!(p.stage, Stage::Connecting { .. }))
        {
            self.pairs.remove(&peer);
        }
    }

    pub fn connect_failed(&mut self, peer: Ipv4Addr, reason: String) {
        if self
            .pairs
            .get(&peer)
            .is_some_and(|p| matches!(p.stage, Stage::Connecting { .. }))
        {
            self.pairs.remove(&peer);
            self.outputs.push_back(TcpOutput::Failed { peer, reason });
        }
    }

    /// Someone opened a stream to our listener. False if it was closed
    /// at once (too many streams).
    pub fn accepted(&mut self, remote: SocketAddrV4, fd: OwnedFd, now: Instant) -> bool {
        self.admit(remote, fd, None, now).is_some()
    }

    fn admit(
        &mut self,
        remote: SocketAddrV4,
        fd: OwnedFd,
        peer: Option<Ipv4Addr>,
        now: Instant,
    ) -> Option<LocalStream> {
        if self.streams.len() >= MAX_STREAMS {
            return None;
        }
        let id = self.free_id()?;
        let stream = LocalStream::new(id, remote, fd);
        self.streams.insert(
            id,
            Entry {
                stream: stream.clone(),
                peer,
                opened: now,
            },
        );
        self.outputs.push_back(TcpOutput::Changed);
        Some(stream)
    }

    fn free_id(&mut self) -> Option<u16> {
        for _ in FIRST_STREAM_ID..TURN_SOCKET {
            self.next_id = self.next_id.wrapping_add(1);
            if self.next_id < FIRST_STREAM_ID || self.next_id == TURN_SOCKET {
                self.next_id = FIRST_STREAM_ID;
            }
            if !self.streams.contains_key(&self.next_id) {
                return Some(self.next_id);
            }
        }
        None
    }

    /// Whether `local` names one of our streams.
    pub fn is_stream(&self, local: u16) -> bool {
        (FIRST_STREAM_ID..TURN_SOCKET).contains(&local)
    }

    /// A PING from `peer`, in its session, arrived on stream `id`: the
    /// stream is now the peer's, and we challenge it ourselves. True if it
    /// is to be answered on the stream.
    pub fn on_ping(&mut self, id: u16, peer: Ipv4Addr, now: Instant) -> bool {
        let Some(e) = self.streams.get_mut(&id) else {
            return false;
        };
        match e.peer {
            Some(p) if p != peer => return false,
            Some(_) => {}
            None => e.peer = Some(peer),
        }
        let current = self.pairs.get(&peer).and_then(|p| p.stream);
        match current {
            Some(s) if s == id => {}
            // A proven stream stays; the new one is closed, unanswered.
            Some(s) if self.is_proven_on(peer, s) => {
                self.close(id, "the peer has a proven stream".into());
                return false;
            }
            Some(s) => {
                self.close(s, "replaced by a newer stream".into());
                self.challenge(peer, id, false, now);
            }
            None => self.challenge(peer, id, false, now),
        }
        true
    }

    /// A PONG from `peer`, in its session, on stream `id`; true if it
    /// proved the stream.
    pub fn on_pong(&mut self, id: u16, peer: Ipv4Addr, nonce: &Nonce, now: Instant) -> bool {
        let Some(pair) = self.pairs.get_mut(&peer) else {
            return false;
        };
        match pair.stage {
            Stage::Challenging {
                nonce: n, proven, ..
            } if pair.stream == Some(id) && n == *nonce => {
                pair.stage = Stage::Proven {
                    recheck: now + RECHECK,
                };
                if !proven {
                    self.outputs.push_back(TcpOutput::Changed);
                }
                true
            }
            _ => false,
        }
    }

    /// The dataplane reported stream `id` over.
    pub fn ended(&mut self, id: u16, reason: String) {
        self.close(id, reason);
    }

    /// `peer` has a direct UDP path: its stream is closed.
    pub fn direct(&mut self, peer: Ipv4Addr) {
        if let Some(pair) = self.pairs.remove(&peer) {
            if let Some(id) = pair.stream {
                self.drop_stream(id, "a direct UDP path is up".into());
                self.outputs.push_back(TcpOutput::Changed);
            }
        }
    }

    /// Closes stream `id` and ends the TCP path of the peer it served.
    fn close(&mut self, id: u16, reason: String) {
        if !self.streams.contains_key(&id) {
            return;
        }
        if let Some(peer) = self.drop_stream(id, reason.clone()) {
            if self.pairs.get(&peer).is_some_and(|p| p.stream == Some(id)) {
                self.pairs.remove(&peer);
                self.outputs.push_back(TcpOutput::Failed { peer, reason });
            }
        }
        self.outputs.push_back(TcpOutput::Changed);
    }

    /// Takes stream `id` out of the table and asks for its shutdown; the
    /// peer it carried, if any.
    fn drop_stream(&mut self, id: u16, reason: String) -> Option<Ipv4Addr> {
        let e = self.streams.remove(&id)?;
        self.outputs.push_back(TcpOutput::Close {
            stream: e.stream,
            reason,
        });
        e.peer
    }

    fn challenge(&mut self, peer: Ipv4Addr, id: u16, proven: bool, now: Instant) {
        let Some(stream) = self.streams.get(&id).map(|e| e.stream.clone()) else {
            return;
        };
        let mut nonce = [0u8; 12];
        self.rng.fill(&mut nonce);
        self.pairs.insert(
            peer,
            Pair {
                stream: Some(id),
                stage: Stage::Challenging {
                    nonce,
                    next: now + PING_INTERVAL,
                    sent: 1,
                    proven,
                },
            },
        );
        self.outputs.push_back(TcpOutput::Ping {
            peer,
            stream,
            nonce,
        });
    }

    fn is_proven_on(&self, peer: Ipv4Addr, id: u16) -> bool {
        self.pairs.get(&peer).is_some_and(|p| {
            p.stream == Some(id)
                && matches!(
                    p.stage,
                    Stage::Proven { .. } | Stage::Challenging { proven: true, .. }
                )
        })
    }

    /// Peers whose stream carries traffic.
    pub fn proven(&self) -> BTreeSet<Ipv4Addr> {
        self.pairs
            .iter()
            .filter(|(peer, p)| p.stream.is_some_and(|s| self.is_proven_on(**peer, s)))
            .map(|(peer, _)| *peer)
            .collect()
    }

    /// The stream `peer` is reached on, proven or being challenged.
    pub fn stream_of(&self, peer: Ipv4Addr) -> Option<&LocalStream> {
        let id = self.pairs.get(&peer)?.stream?;
        self.streams.get(&id).map(|e| &e.stream)
    }

    /// The stream `id`, if it is `peer`'s or still anonymous.
    pub fn stream_for(&self, id: u16, peer: Ipv4Addr) -> Option<&LocalStream> {
        let e = self.streams.get(&id)?;
        e.peer.is_none_or(|p| p == peer).then_some(&e.stream)
    }

    /// Every open stream, for the snapshot: the dataplane reads them all.
    pub fn streams(&self) -> Vec<LocalStream> {
        self.streams.values().map(|e| e.stream.clone()).collect()
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        let pairs = self.pairs.values().map(|p| match p.stage {
            Stage::Connecting { since } => since + CONNECT_DEADLINE,
            Stage::Challenging { next, .. } => next,
            Stage::Proven { recheck } => recheck,
        });
        let anonymous = self
            .streams
            .values()
            .filter(|e| e.peer.is_none())
            .map(|e| e.opened + ANONYMOUS_FOR);
        pairs.chain(anonymous).min()
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        let late: Vec<Ipv4Addr> = self
            .pairs
            .iter()
            .filter(|(_, p)| {
                matches!(p.stage, Stage::Connecting { since } if now >= since + CONNECT_DEADLINE)
            })
            .map(|(peer, _)| *peer)
            .collect();
        for peer in late {
            self.connect_failed(peer, "no stream in time".into());
        }
        let stale: Vec<u16> = self
            .streams
            .iter()
            .filter(|(_, e)| e.peer.is_none() && now >= e.opened + ANONYMOUS_FOR)
            .map(|(id, _)| *id)
            .collect();
        for id in stale {
            self.close(id, "no peer spoke on it".into());
        }
        let due: Vec<(Ipv4Addr, u16, Stage)> = self
            .pairs
            .iter()
            .filter_map(|(peer, p)| Some((*peer, p.stream?, p.stage)))
            .collect();
        for (peer, id, stage) in due {
            match stage {
                Stage::Challenging {
                    next,
                    sent,
                    proven,
                    nonce,
                } if now >= next => {
                    let tries = if proven { RECHECK_TRIES } else { PING_TRIES };
                    if sent >= tries {
                        self.close(id, format!("{sent} PINGs unanswered"));
                        continue;
                    }
                    let Some(stream) = self.streams.get(&id).map(|e| e.stream.clone()) else {
                        continue;
                    };
                    if let Some(p) = self.pairs.get_mut(&peer) {
                        p.stage = Stage::Challenging {
                            nonce,
                            next: now + PING_INTERVAL,
                            sent: sent + 1,
                            proven,
                        };
                    }
                    self.outputs.push_back(TcpOutput::Ping {
                        peer,
                        stream,
                        nonce,
                    });
                }
                Stage::Proven { recheck } if now >= recheck => {
                    self.challenge(peer, id, true, now);
                }
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    const A: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
    const B: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 3);

    fn fd() -> OwnedFd {
        OwnedFd::from(UnixStream::pair().unwrap().0)
    }

    fn remote(port: u16) -> SocketAddrV4 {
        SocketAddrV4::new(Ipv4Addr::new(198, 51, 100, 1), port)
    }

    fn drain(t: &mut TcpPaths) -> Vec<TcpOutput> {
        std::iter::from_fn(|| t.poll_output()).collect()
    }

    fn pinged(outs: &[TcpOutput]) -> Option<(u16, Nonce)> {
        outs.iter().find_map(|o| match o {
            TcpOutput::Ping { stream, nonce, .. } => Some((stream.id, *nonce)),
            _ => None,
        })
    }

    /// A stream accepted from B, answered and proven.
    fn proven_from_b(t: &mut TcpPaths, now: Instant) -> u16 {
        assert!(t.accepted(remote(1), fd(), now));
        let id = t.streams()[0].id;
        assert!(t.on_ping(id, B, now), "B's PING is answered");
        let (on, nonce) = pinged(&drain(t)).expect("we challenge it too");
        assert_eq!(on, id);
        assert!(t.on_pong(id, B, &nonce, now));
        assert_eq!(t.proven(), [B].into());
        id
    }

    #[test]
    fn a_stream_is_used_only_once_its_challenge_is_answered() {
        let now = Instant::now();
        let mut t = TcpPaths::new(1);
        t.want(A, remote(9), now);
        assert!(matches!(
            drain(&mut t)[..],
            [TcpOutput::Connect { peer: A, .. }]
        ));
        t.want(A, remote(9), now);
        assert!(drain(&mut t).is_empty(), "one connect at a time");
        t.connected(A, remote(9), fd(), now);
        let (id, nonce) = pinged(&drain(&mut t)).unwrap();
        assert!(t.proven().is_empty());
        assert_eq!(t.stream_of(A).map(|s| s.id), Some(id));
        assert!(
            !t.on_pong(id, A, &[0; 12], now),
            "a wrong nonce proves nothing"
        );
        assert!(!t.on_pong(id, B, &nonce, now), "nor another peer's PONG");
        assert!(t.on_pong(id, A, &nonce, now));
        assert_eq!(t.proven(), [A].into());
    }

    #[test]
    fn a_stream_belongs_to_the_first_peer_that_speaks_on_it() {
        let now = Instant::now();
        let mut t = TcpPaths::new(2);
        let id = proven_from_b(&mut t, now);
        assert!(!t.on_ping(id, A, now), "B's stream is not A's");
        assert!(t.stream_for(id, A).is_none());
        // A second stream from B while the first is proven: closed.
        assert!(t.accepted(remote(2), fd(), now));
        let second = t.streams().iter().map(|s| s.id).find(|&s| s != id).unwrap();
        assert!(!t.on_ping(second, B, now));
        assert!(drain(&mut t)
            .iter()
            .any(|o| matches!(o, TcpOutput::Close { stream, .. } if stream.id == second)));
        assert_eq!(t.stream_of(B).map(|s| s.id), Some(id));
    }

    #[test]
    fn silence_ends_proven_streams_and_anonymous_ones() {
        let t0 = Instant::now();
        let mut t = TcpPaths::new(3);
        proven_from_b(&mut t, t0);
        assert!(t.accepted(remote(3), fd(), t0));
        let mut failed_at = None;
        for _ in 0..20 {
            let now = t.poll_timeout().unwrap();
            t.handle_timeout(now);
            if drain(&mut t)
                .iter()
                .any(|o| matches!(o, TcpOutput::Failed { peer: B, .. }))
            {
                failed_at = Some(now);
                break;
            }
        }
        let failed = failed_at.expect("never failed") - t0;
        // A recheck a second after the proof, then three unanswered PINGs.
        assert!(failed <= Duration::from_secs(4), "{failed:?}");
        assert!(t.proven().is_empty());
        while !t.streams().is_empty() {
            let now = t.poll_timeout().unwrap();
            assert!(now - t0 <= ANONYMOUS_FOR, "anonymous stream kept");
            t.handle_timeout(now);
        }
    }

    #[test]
    fn a_connect_that_never_comes_is_given_up() {
        let t0 = Instant::now();
        let mut t = TcpPaths::new(4);
        assert!(t.expect(A, t0));
        assert!(!t.expect(A, t0));
        t.handle_timeout(t0 + CONNECT_DEADLINE);
        assert!(drain(&mut t)
            .iter()
            .any(|o| matches!(o, TcpOutput::Failed { peer: A, .. })));
        assert!(t.expect(A, t0 + CONNECT_DEADLINE), "and may be tried again");
    }
}
