//! The node's side of hard-NAT attempts: the extra sockets it holds, which
//! peer endpoint each one has heard from, and the attempt's probes, paced.
//!
//! Sans-IO like the node: the caller opens sockets when asked and hands
//! them in; this only holds them (every worker receives on the sockets it
//! lists) and decides which datagram leaves from which socket, and when.
//! A socket stays while a direct path uses it, else until its attempt is
//! over.
//!
//! Two kinds of attempt open sockets: birthday (many, each probing the
//! peer once) and a fresh port (one, whose mapping is learned by STUN and
//! announced to the peer only after a primer from it has opened our
//! router towards the peer: a router that lets unsolicited datagrams
//! create conntrack entries, such as a bare Linux masquerade, then has
//! nothing in the way of the peer's answer).

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::dataplane::{LocalSocket, FIRST_STREAM_ID, MAIN_SOCKET};
use crate::nat::schedule::{self, Send};
use crate::peer::FreshSpray;

/// How long an attempt's sockets outlive their opening when no path uses
/// them: the attempt's probes take under 4 s, CONNECTING lasts 10, and a
/// late answer to the last probe may still arrive after that.
const SOCKET_LIFETIME: Duration = Duration::from_secs(15);

/// How long after its primer a fresh port's heartbeat to the peer's fresh
/// port leaves: the two sides hear of each other's port through the
/// server at moments that differ by the skew of their attempts (a relay
/// trip or so); both primers must be out before either heartbeat lands.
const PRIMER_LEAD: Duration = Duration::from_millis(500);

/// Endpoints a simultaneous open's fresh port primes: the peer's main
/// mapping, and its fresh port (one per round) with room for a
/// re-announcement or two.
const MAX_PRIMED: usize = 4;

/// Peer endpoints remembered as heard on an extra socket. Only datagrams
/// that opened with our key count, so this is a bound, not a filter.
const MAX_HEARD: usize = 4096;

/// A probe of the running attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    pub peer: Ipv4Addr,
    pub to: SocketAddrV4,
    pub kind: ProbeKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeKind {
    /// A marked HEARTBEAT sealed for the peer.
    Heartbeat,
    /// The same with a small IP TTL (`nat::schedule::PRIMER_TTL`): it
    /// opens our router's session towards `to` and dies before the
    /// peer's router.
    Primer,
    /// A STUN binding request to `to`, the STUN server: the fresh port
    /// learns its mapping, then announces it.
    Stun,
}

struct Held {
    socket: LocalSocket,
    until: Instant,
}

struct Queued {
    due: Instant,
    /// [`MAIN_SOCKET`] or an extra socket's id.
    local: u16,
    probe: Probe,
}

/// Sockets asked of the caller and not handed in yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wanted {
    /// A birthday attempt's sockets, each probing `target` once.
    Birthday {
        peer: Ipv4Addr,
        target: SocketAddrV4,
    },
    /// Sockets that each probe the `slots` ports after `base` (a random
    /// NAT against a sequential one).
    Slots {
        peer: Ipv4Addr,
        base: SocketAddrV4,
        step: i32,
        slots: u16,
    },
    /// One fresh port for a round of the attempt towards `peer`.
    FreshPort {
        peer: Ipv4Addr,
        target: Option<SocketAddrV4>,
        spray: FreshSpray,
    },
}

/// What [`Punch::opened`] did with the sockets handed in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Opened {
    /// Nothing was asked for: the fds just close.
    Unasked,
    /// A birthday attempt's probes are queued.
    Birthday { sockets: usize },
    /// The fresh port for `peer`; the caller queues its probes with
    /// [`Punch::fresh_port_probes`].
    FreshPort {
        peer: Ipv4Addr,
        target: Option<SocketAddrV4>,
        spray: FreshSpray,
        socket: LocalSocket,
    },
}

/// A fresh port waiting for its STUN answer.
struct Fresh {
    peer: Ipv4Addr,
    txid: [u8; 12],
}

#[derive(Default)]
pub struct Punch {
    sockets: BTreeMap<u16, Held>,
    heard: HashMap<SocketAddrV4, u16>,
    queue: VecDeque<Queued>,
    /// In the order the caller was asked.
    wanted: VecDeque<Wanted>,
    /// Per peer, the fresh port of its running attempt: what sprays to it
    /// leave from.
    attempt: HashMap<Ipv4Addr, u16>,
    /// Per peer, the fresh port of its simultaneous open, which meets the
    /// peer's own fresh port ([`Punch::meet`]).
    simultaneous: HashMap<Ipv4Addr, u16>,
    /// (socket, endpoint) pairs a simultaneous open's fresh port primed.
    primed: HashSet<(u16, SocketAddrV4)>,
    /// Per peer, the sockets of its birthday attempt, for retargeting.
    birthday: HashMap<Ipv4Addr, Vec<u16>>,
    stun: HashMap<u16, Fresh>,
    next_id: u16,
}

impl Punch {
    /// Records what the next sockets the caller opens are for; they come
    /// back, in the order asked, to [`Punch::opened`].
    pub fn want(&mut self, w: Wanted) {
        self.wanted.push_back(w);
    }

    /// The sockets asked for first are open. Birthday: each sends one probe
    /// to the target, paced (socket k ≥ 1 of the schedule is the k-th of
    /// `fds`).
    pub fn opened(&mut self, fds: Vec<OwnedFd>, now: Instant) -> Opened {
        let Some(w) = self.wanted.pop_front() else {
            return Opened::Unasked;
        };
        let ids: Vec<u16> = fds
            .into_iter()
            .filter_map(|fd| {
                let id = self.fresh_id()?;
                let socket = LocalSocket {
                    id,
                    fd: Arc::new(fd),
                };
                let until = now + SOCKET_LIFETIME;
                self.sockets.insert(id, Held { socket, until });
                Some(id)
            })
            .collect();
        let (peer, sends) = match w {
            Wanted::Birthday { peer, target } => (peer, schedule::open_sockets(target, ids.len())),
            Wanted::Slots {
                peer,
                base,
                step,
                slots,
            } => (
                peer,
                schedule::prediction_and_birthday_random_side(
                    base,
                    step,
                    usize::from(slots),
                    ids.len(),
                ),
            ),
            Wanted::FreshPort {
                peer,
                target,
                spray,
            } => {
                let Some(held) = ids.first().and_then(|id| self.sockets.get(id)) else {
                    return Opened::Unasked;
                };
                let socket = held.socket.clone();
                self.attempt.insert(peer, socket.id);
                if let (Some(target), FreshSpray::Nothing) = (target, spray) {
                    self.simultaneous.insert(peer, socket.id);
                    self.primed.insert((socket.id, target));
                }
                return Opened::FreshPort {
                    peer,
                    target,
                    spray,
                    socket,
                };
            }
        };
        self.birthday.insert(peer, ids.clone());
        self.enqueue_on(peer, now, &ids, sends);
        Opened::Birthday { sockets: ids.len() }
    }

    /// Sends one probe to `target` from each socket of `peer`'s birthday
    /// attempt that is still open, paced, and keeps them for another
    /// lifetime. False when it has none (the caller opens new ones).
    pub fn retarget(&mut self, peer: Ipv4Addr, target: SocketAddrV4, now: Instant) -> bool {
        let Some(ids) = self.birthday.get(&peer) else {
            return false;
        };
        let ids: Vec<u16> = ids
            .iter()
            .copied()
            .filter(|id| self.sockets.contains_key(id))
            .collect();
        if ids.is_empty() {
            return false;
        }
        for id in &ids {
            if let Some(h) = self.sockets.get_mut(id) {
                h.until = now + SOCKET_LIFETIME;
            }
        }
        let sends = schedule::open_sockets(target, ids.len());
        self.enqueue_on(peer, now, &ids, sends);
        true
    }

    /// The STUN request `txid` left from fresh port `socket`.
    pub fn asked_stun(&mut self, socket: u16, peer: Ipv4Addr, txid: [u8; 12]) {
        self.stun.insert(socket, Fresh { peer, txid });
    }

    /// A STUN answer `txid` arrived on `socket`: the peer whose fresh port
    /// it maps, if it answers our request (once).
    pub fn stun_answered(&mut self, socket: u16, txid: &[u8; 12]) -> Option<Ipv4Addr> {
        let f = self.stun.get(&socket).filter(|f| f.txid == *txid)?;
        let peer = f.peer;
        self.stun.remove(&socket);
        Some(peer)
    }

    /// A spray, paced as `sends` say: from the attempt's fresh port when
    /// it has one, else from the shared port.
    pub fn spray(&mut self, peer: Ipv4Addr, now: Instant, sends: Vec<Send>) {
        let local = self.attempt.get(&peer).copied().unwrap_or(MAIN_SOCKET);
        self.enqueue(peer, now, sends.into_iter().map(|s| (local, s)));
    }

    /// Heartbeats of an attempt with sockets `ids`: socket k ≥ 1 of the
    /// schedule is the k-th of `ids`.
    fn enqueue_on(&mut self, peer: Ipv4Addr, now: Instant, ids: &[u16], sends: Vec<Send>) {
        self.enqueue(
            peer,
            now,
            sends.into_iter().filter_map(|s| {
                let local = *ids.get(s.socket.checked_sub(1)?)?;
                Some((local, s))
            }),
        );
    }

    fn enqueue(&mut self, peer: Ipv4Addr, now: Instant, sends: impl Iterator<Item = (u16, Send)>) {
        self.enqueue_kind(peer, now, ProbeKind::Heartbeat, sends);
    }

    fn enqueue_kind(
        &mut self,
        peer: Ipv4Addr,
        now: Instant,
        kind: ProbeKind,
        sends: impl Iterator<Item = (u16, Send)>,
    ) {
        for (local, s) in sends {
            self.queue.push_back(Queued {
                due: now + s.at,
                local,
                probe: Probe {
                    peer,
                    to: s.target,
                    kind,
                },
            });
        }
        // Stable: what was queued for one instant leaves in that order.
        self.queue.make_contiguous().sort_by_key(|q| q.due);
    }

    /// A fresh port's probes, in this order: a primer to the peer's
    /// mapping `target`, the `spray` (a prediction window, if the method
    /// has one), and only then the STUN request whose answer is announced
    /// to the peer. Every session the peer's answers need exists on our
    /// router before the peer learns the port, so none of its datagrams
    /// arrives unsolicited (which on a bare masquerade would claim the
    /// port); and the primer does not reach the peer's router, where it
    /// would do the same to the peer's mapping. Returns when the last of
    /// them leaves.
    pub fn fresh_port_probes(
        &mut self,
        peer: Ipv4Addr,
        socket: u16,
        target: Option<SocketAddrV4>,
        spray: Vec<Send>,
        stun: Option<SocketAddrV4>,
        now: Instant,
    ) -> Instant {
        let primer = target.map(|target| {
            let send = Send {
                socket: 0,
                target,
                at: Duration::ZERO,
            };
            (socket, send)
        });
        self.enqueue_kind(peer, now, ProbeKind::Primer, primer.into_iter());
        let gap = Duration::from_secs(1) / schedule::PACKETS_PER_SECOND;
        // An observation (nothing to send first) asks STUN at once.
        let offset = if primer.is_some() {
            gap
        } else {
            Duration::ZERO
        };
        let probes = usize::from(primer.is_some()) + spray.len();
        let last = spray
            .iter()
            .map(|s| s.at + offset)
            .max()
            .unwrap_or_default();
        let spray = spray.into_iter().map(|s| Send {
            at: s.at + offset,
            ..s
        });
        self.enqueue(peer, now, spray.map(|s| (socket, s)));
        let after = if probes == 0 {
            Duration::ZERO
        } else {
            last + gap
        };
        let ask = stun.map(|target| Send {
            socket: 0,
            target,
            at: after,
        });
        self.enqueue_kind(
            peer,
            now,
            ProbeKind::Stun,
            ask.into_iter().map(|s| (socket, s)),
        );
        now + after
    }

    /// `peer` announced `endpoint` while our simultaneous open towards it
    /// runs: its own fresh port, typically. Our fresh port primes it, and
    /// a marked HEARTBEAT follows [`PRIMER_LEAD`] later; the peer's fresh
    /// port does the same towards ours once it hears of it. Both fresh
    /// ports are new to both routers, so with each side's primer out
    /// before the other's heartbeat arrives, neither heartbeat arrives
    /// unsolicited. Our main port cannot be trusted for this: behind a
    /// bare masquerade, one early datagram from anyone whose flow then
    /// clashed moves every later flow of the port to another port (Linux
    /// 6.18), while the STUN session that named the port lives on. Once
    /// per endpoint, and for [`MAX_PRIMED`] endpoints per fresh port: a
    /// member that announces address after address through the server
    /// gets no more datagrams sent where it points.
    pub fn meet(&mut self, peer: Ipv4Addr, endpoint: SocketAddrV4, now: Instant) {
        let Some(&socket) = self.simultaneous.get(&peer) else {
            return;
        };
        let spent = self.primed.iter().filter(|(s, _)| *s == socket).count();
        if spent >= MAX_PRIMED || !self.primed.insert((socket, endpoint)) {
            return;
        }
        let send = |at| Send {
            socket: 0,
            target: endpoint,
            at,
        };
        let primer = std::iter::once((socket, send(Duration::ZERO)));
        self.enqueue_kind(peer, now, ProbeKind::Primer, primer);
        let heartbeat = std::iter::once((socket, send(PRIMER_LEAD)));
        self.enqueue_kind(peer, now, ProbeKind::Heartbeat, heartbeat);
    }

    /// A spray from the shared port, paced as `sends` say from `start`.
    pub fn spray_from_main(&mut self, peer: Ipv4Addr, start: Instant, sends: Vec<Send>) {
        self.enqueue(peer, start, sends.into_iter().map(|s| (MAIN_SOCKET, s)));
    }

    /// The attempt towards `peer` is over (it connected): its probes not
    /// sent yet are dropped, and later sprays leave from the shared port.
    pub fn stop(&mut self, peer: Ipv4Addr) {
        self.queue.retain(|q| q.probe.peer != peer);
        self.attempt.remove(&peer);
        self.simultaneous.remove(&peer);
        self.birthday.remove(&peer);
    }

    /// An id no held socket has, below the ids of TCP streams (and so of
    /// the TURN socket); none once all are held (never, with attempts of
    /// 256 that are released within seconds).
    fn fresh_id(&mut self) -> Option<u16> {
        for _ in 1..FIRST_STREAM_ID {
            self.next_id = self.next_id.wrapping_add(1);
            if self.next_id == 0 || self.next_id >= FIRST_STREAM_ID {
                self.next_id = 1;
            }
            if !self.sockets.contains_key(&self.next_id) {
                return Some(self.next_id);
            }
        }
        None
    }

    /// A datagram from `from` opened with our key on socket `local`:
    /// replies to `from` leave from there. Back to the shared port only on
    /// `fresh` evidence (a PONG to a challenge of ours), so a replayed
    /// datagram cannot take a punched path off the socket it needs. Returns
    /// whether the socket for `from` changed.
    pub fn heard(&mut self, from: SocketAddrV4, local: u16, fresh: bool) -> bool {
        let before = self.heard.get(&from).copied();
        if local == MAIN_SOCKET {
            if fresh {
                self.heard.remove(&from);
            }
        } else if self.sockets.contains_key(&local)
            && (self.heard.len() < MAX_HEARD || before.is_some())
        {
            self.heard.insert(from, local);
        }
        self.heard.get(&from).copied() != before
    }

    /// The socket datagrams to `to` leave from; `None`: the shared port.
    pub fn via(&self, to: SocketAddrV4) -> Option<LocalSocket> {
        let id = self.heard.get(&to)?;
        self.sockets.get(id).map(|h| h.socket.clone())
    }

    /// Every socket held, for the workers to receive on.
    pub fn sockets(&self) -> Vec<LocalSocket> {
        self.sockets.values().map(|h| h.socket.clone()).collect()
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        let probe = self.queue.front().map(|q| q.due);
        let expiry = self.sockets.values().map(|h| h.until).min();
        probe.into_iter().chain(expiry).min()
    }

    /// The probes due by `now`, each with the socket it leaves from.
    pub fn due(&mut self, now: Instant) -> Vec<(Probe, Option<LocalSocket>)> {
        let mut out = Vec::new();
        while self.queue.front().is_some_and(|q| q.due <= now) {
            let Some(q) = self.queue.pop_front() else {
                break;
            };
            let via = self.sockets.get(&q.local).map(|h| h.socket.clone());
            if q.local != MAIN_SOCKET && via.is_none() {
                continue;
            }
            out.push((q.probe, via));
        }
        out
    }

    /// Lets go of sockets past their time that no path in `paths` uses;
    /// true if any went (the workers' list changes).
    pub fn release_idle(
        &mut self,
        now: Instant,
        paths: impl Iterator<Item = SocketAddrV4>,
    ) -> bool {
        let used: Vec<u16> = paths.filter_map(|p| self.heard.get(&p).copied()).collect();
        let before = self.sockets.len();
        for (id, h) in self.sockets.iter_mut() {
            if used.contains(id) && h.until <= now {
                h.until = now + SOCKET_LIFETIME;
            }
        }
        self.sockets.retain(|_, h| h.until > now);
        let sockets = &self.sockets;
        self.heard.retain(|_, id| sockets.contains_key(id));
        self.attempt.retain(|_, id| sockets.contains_key(id));
        self.simultaneous.retain(|_, id| sockets.contains_key(id));
        self.primed.retain(|(id, _)| sockets.contains_key(id));
        self.birthday.retain(|_, ids| {
            ids.retain(|id| sockets.contains_key(id));
            !ids.is_empty()
        });
        self.stun.retain(|id, _| sockets.contains_key(id));
        self.queue
            .retain(|q| q.local == MAIN_SOCKET || sockets.contains_key(&q.local));
        self.sockets.len() != before
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn ep(last: u8, port: u16) -> SocketAddrV4 {
        SocketAddrV4::new(Ipv4Addr::new(198, 51, 100, last), port)
    }

    pub(super) fn fds(n: usize) -> Vec<OwnedFd> {
        (0..n)
            .map(|_| {
                let s = std::net::UdpSocket::bind("127.0.0.1:0").expect("loopback socket");
                OwnedFd::from(s)
            })
            .collect()
    }

    pub(super) const PEER: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);

    #[test]
    fn socket_ids_wrap_below_the_ids_of_streams() {
        let mut p = Punch {
            next_id: FIRST_STREAM_ID - 2,
            ..Punch::default()
        };
        let ids: Vec<u16> = (0..4).filter_map(|_| p.fresh_id()).collect();
        assert_eq!(ids, [FIRST_STREAM_ID - 1, 1, 2, 3]);
    }

    #[test]
    fn each_socket_sends_one_paced_probe_to_the_target() {
        let t0 = Instant::now();
        let mut p = Punch::default();
        let target = ep(2, 40_000);
        assert_eq!(p.opened(fds(1), t0), Opened::Unasked);
        p.want(Wanted::Birthday { peer: PEER, target });
        assert_eq!(p.opened(fds(8), t0), Opened::Birthday { sockets: 8 });
        assert_eq!(p.sockets().len(), 8);
        let mut sent = Vec::new();
        let mut now = t0;
        while let Some(t) = p
            .poll_timeout()
            .filter(|&t| t < t0 + Duration::from_secs(5))
        {
            now = t;
            sent.extend(p.due(now));
        }
        assert_eq!(sent.len(), 8);
        assert!(sent
            .iter()
            .all(|(probe, _)| probe.to == target && probe.peer == PEER));
        let mut ids: Vec<u16> = sent
            .iter()
            .map(|(_, via)| via.as_ref().unwrap().id)
            .collect();
        ids.dedup();
        assert_eq!(ids.len(), 8, "one probe per socket");
        // 200 per second: the eighth leaves 35 ms after the first.
        assert_eq!(now - t0, Duration::from_millis(35));
    }

    /// Four birthday sockets opened at `t0`, aimed at the peer's endpoint
    /// (returned with them).
    fn four_birthday_sockets(t0: Instant) -> (Punch, SocketAddrV4) {
        let mut p = Punch::default();
        let peer = ep(2, 40_000);
        p.want(Wanted::Birthday {
            peer: PEER,
            target: peer,
        });
        p.opened(fds(4), t0);
        (p, peer)
    }

    #[test]
    fn replies_leave_from_the_socket_the_peer_was_heard_on() {
        let (mut p, peer) = four_birthday_sockets(Instant::now());
        let id = p.sockets()[2].id;
        assert_eq!(p.via(peer), None);
        assert!(p.heard(peer, id, false));
        assert_eq!(p.via(peer).map(|s| s.id), Some(id));
        // A heartbeat on the shared port may be a replay: no move.
        assert!(!p.heard(peer, MAIN_SOCKET, false));
        assert_eq!(p.via(peer).map(|s| s.id), Some(id));
        // A PONG there is fresh: replies go back to the shared port.
        assert!(p.heard(peer, MAIN_SOCKET, true));
        assert_eq!(p.via(peer), None);
        // An id that is not ours is never recorded.
        assert!(!p.heard(peer, 999, true));
        assert_eq!(p.via(peer), None);
    }

    #[test]
    fn idle_sockets_go_after_their_time_and_a_used_one_stays() {
        let t0 = Instant::now();
        let (mut p, peer) = four_birthday_sockets(t0);
        let id = p.sockets()[1].id;
        p.heard(peer, id, false);
        assert!(!p.release_idle(t0 + Duration::from_secs(1), std::iter::once(peer)));
        let later = t0 + SOCKET_LIFETIME;
        assert!(p.release_idle(later, std::iter::once(peer)));
        assert_eq!(p.sockets().iter().map(|s| s.id).collect::<Vec<_>>(), [id]);
        // The path moved away: the last one goes at its next expiry.
        assert!(p.release_idle(later + SOCKET_LIFETIME, std::iter::empty()));
        assert!(p.sockets().is_empty());
        assert_eq!(p.via(peer), None);
        assert_eq!(p.poll_timeout(), None);
    }

    #[test]
    fn when_the_shared_port_wins_the_draw_every_attempt_socket_goes() {
        // The data port challenges the peer's announced port too, so it
        // holds a ticket in the birthday draw; when its answer proves the
        // path, none of the attempt's sockets carries it.
        let t0 = Instant::now();
        let (mut p, peer) = four_birthday_sockets(t0);
        assert!(!p.heard(peer, MAIN_SOCKET, true));
        assert_eq!(p.via(peer), None, "replies leave from the shared port");
        assert!(p.release_idle(t0 + SOCKET_LIFETIME, std::iter::once(peer)));
        assert!(p.sockets().is_empty());
        assert_eq!(p.via(peer), None);
    }

    #[test]
    fn a_spray_leaves_from_the_shared_port_at_the_budgeted_rate() {
        let t0 = Instant::now();
        let mut p = Punch::default();
        let ip = Ipv4Addr::new(198, 51, 100, 9);
        p.spray(PEER, t0, schedule::birthday_spray(ip, 768, 7));
        let first_second = p.due(t0 + Duration::from_millis(999));
        assert_eq!(first_second.len(), 200);
        assert!(first_second
            .iter()
            .all(|(pr, via)| via.is_none() && *pr.to.ip() == ip));
        let rest = p.due(t0 + Duration::from_millis(1999));
        assert_eq!(rest.len(), 200);
        // The peer connected: the rest of the spray stays home.
        p.stop(PEER);
        assert!(p.due(t0 + Duration::from_secs(10)).is_empty());
    }
}

#[cfg(test)]
mod fresh_port_tests {
    use super::tests::{ep, fds, PEER};
    use super::*;

    /// Asks for a fresh port towards `PEER` aimed at `target`, and opens it.
    fn fresh_port(p: &mut Punch, target: Option<SocketAddrV4>, now: Instant) -> LocalSocket {
        p.want(Wanted::FreshPort {
            peer: PEER,
            target,
            spray: FreshSpray::Nothing,
        });
        match p.opened(fds(1), now) {
            Opened::FreshPort {
                peer,
                target: asked,
                socket,
                ..
            } => {
                assert_eq!((peer, asked), (PEER, target));
                socket
            }
            other => panic!("a fresh port was asked for, got {other:?}"),
        }
    }

    #[test]
    fn a_fresh_port_carries_the_sprays_and_learns_its_mapping_once() {
        let t0 = Instant::now();
        let mut p = Punch::default();
        let last = ep(2, 40_000);
        let socket = fresh_port(&mut p, Some(last), t0);
        // Sprays towards the peer now leave from it.
        p.spray(PEER, t0, schedule::prediction_spray(last, 1, 4));
        let sent = p.due(t0 + Duration::from_secs(1));
        assert_eq!(sent.len(), 4);
        assert!(sent.iter().all(|(_, via)| via.as_ref() == Some(&socket)));
        // Only the answer to our own request, on that socket, counts.
        p.asked_stun(socket.id, PEER, [7; 12]);
        assert_eq!(p.stun_answered(socket.id, &[8; 12]), None);
        assert_eq!(p.stun_answered(socket.id + 1, &[7; 12]), None);
        assert_eq!(p.stun_answered(socket.id, &[7; 12]), Some(PEER));
        assert_eq!(p.stun_answered(socket.id, &[7; 12]), None, "answered once");
        // Connected: sprays go back to the shared port.
        p.stop(PEER);
        p.spray(PEER, t0, schedule::prediction_spray(last, 1, 1));
        let sent = p.due(t0 + Duration::from_secs(2));
        assert_eq!(sent.len(), 1);
        assert!(sent[0].1.is_none());
    }

    #[test]
    fn sockets_come_back_in_the_order_they_were_asked_for() {
        let t0 = Instant::now();
        let mut p = Punch::default();
        let target = ep(2, 40_000);
        p.want(Wanted::FreshPort {
            peer: PEER,
            target: Some(target),
            spray: FreshSpray::Nothing,
        });
        p.want(Wanted::Birthday { peer: PEER, target });
        assert!(matches!(p.opened(fds(1), t0), Opened::FreshPort { .. }));
        assert_eq!(p.opened(fds(1), t0), Opened::Birthday { sockets: 1 });
        assert_eq!(p.opened(fds(1), t0), Opened::Unasked);
    }

    #[test]
    fn a_fresh_port_announces_itself_only_after_its_spray() {
        let t0 = Instant::now();
        let mut p = Punch::default();
        let target = ep(2, 40_000);
        let stun = ep(1, 3478);
        let socket = fresh_port(&mut p, Some(target), t0);
        let window = schedule::prediction_spray(target, 1, 8);
        p.fresh_port_probes(PEER, socket.id, Some(target), window, Some(stun), t0);
        let sent = p.due(t0 + Duration::from_secs(1));
        let kinds: Vec<_> = sent.iter().map(|(pr, _)| (pr.kind, pr.to.port())).collect();
        let mut want = vec![(ProbeKind::Primer, 40_000)];
        want.extend((40_001..=40_008).map(|port| (ProbeKind::Heartbeat, port)));
        want.push((ProbeKind::Stun, 3478));
        assert_eq!(kinds, want);
        assert!(sent.iter().all(|(_, via)| via.as_ref() == Some(&socket)));
    }

    #[test]
    fn an_observation_asks_stun_before_anything_else_leaves_its_socket() {
        let t0 = Instant::now();
        let mut p = Punch::default();
        let stun = ep(1, 3478);
        let socket = fresh_port(&mut p, None, t0);
        p.fresh_port_probes(PEER, socket.id, None, Vec::new(), Some(stun), t0);
        let first = p.due(t0);
        assert_eq!(first.len(), 1, "the STUN request goes at once");
        assert_eq!((first[0].0.kind, first[0].0.to), (ProbeKind::Stun, stun));
        // A stride spray queued once it is mapped leaves from the same socket.
        let base = ep(2, 20_000);
        p.spray(PEER, t0, schedule::stride_spray(base, 1, 2, 3));
        let sent = p.due(t0 + Duration::from_secs(1));
        let ports: Vec<u16> = sent.iter().map(|(pr, _)| pr.to.port()).collect();
        assert_eq!(ports, [20_001, 20_003, 20_005]);
        assert!(sent.iter().all(|(_, via)| via.as_ref() == Some(&socket)));
    }

    #[test]
    fn a_simultaneous_fresh_port_meets_the_peers_fresh_port_a_bounded_number_of_times() {
        let t0 = Instant::now();
        let mut p = Punch::default();
        let main = ep(2, 40_000);
        // Nothing to meet with before our fresh port exists.
        p.meet(PEER, ep(2, 41_000), t0);
        assert_eq!(p.poll_timeout(), None);
        let socket = fresh_port(&mut p, Some(main), t0);
        p.fresh_port_probes(PEER, socket.id, Some(main), Vec::new(), None, t0);
        assert_eq!(p.due(t0).len(), 1, "the primer to the main mapping");
        let theirs = ep(2, 41_000);
        p.meet(PEER, theirs, t0);
        p.meet(PEER, theirs, t0);
        let now: Vec<_> = p.due(t0).iter().map(|(pr, _)| (pr.kind, pr.to)).collect();
        assert_eq!(now, [(ProbeKind::Primer, theirs)], "once per endpoint");
        assert!(p
            .due(t0 + PRIMER_LEAD - Duration::from_millis(1))
            .is_empty());
        let later = p.due(t0 + PRIMER_LEAD);
        assert_eq!(later.len(), 1);
        assert_eq!(
            (later[0].0.kind, later[0].0.to),
            (ProbeKind::Heartbeat, theirs)
        );
        assert_eq!(later[0].1.as_ref(), Some(&socket));
        // The main mapping and three more; the rest are not sent to.
        for port in 42_000..42_010 {
            p.meet(PEER, ep(2, port), t0);
        }
        let primers = p
            .due(t0 + Duration::from_secs(1))
            .into_iter()
            .filter(|(pr, _)| pr.kind == ProbeKind::Primer)
            .count();
        assert_eq!(primers, MAX_PRIMED - 2);
        // Connected: nothing more to meet.
        p.stop(PEER);
        p.meet(PEER, ep(2, 43_000), t0);
        assert!(p.due(t0 + Duration::from_secs(2)).is_empty());
    }

    #[test]
    fn birthday_sockets_are_retargeted_not_reopened() {
        let t0 = Instant::now();
        let mut p = Punch::default();
        let first = ep(2, 40_000);
        let fresh = ep(2, 41_234);
        assert!(!p.retarget(PEER, fresh, t0), "nothing to retarget yet");
        p.want(Wanted::Birthday {
            peer: PEER,
            target: first,
        });
        assert_eq!(p.opened(fds(4), t0), Opened::Birthday { sockets: 4 });
        let opened = p.due(t0 + Duration::from_secs(1));
        assert_eq!(opened.len(), 4);
        let t1 = t0 + Duration::from_secs(10);
        assert!(p.retarget(PEER, fresh, t1));
        let again = p.due(t1 + Duration::from_secs(1));
        assert_eq!(again.len(), 4);
        assert!(again.iter().all(|(pr, _)| pr.to == fresh));
        let socks = |v: &[(Probe, Option<LocalSocket>)]| -> Vec<u16> {
            v.iter().map(|(_, s)| s.as_ref().unwrap().id).collect()
        };
        assert_eq!(socks(&again), socks(&opened), "the same four sockets");
        // Retargeting kept them past their first lifetime.
        assert!(!p.release_idle(t0 + SOCKET_LIFETIME, std::iter::empty()));
        assert_eq!(p.sockets().len(), 4);
    }

    #[test]
    fn slot_sockets_each_probe_every_predicted_port() {
        let t0 = Instant::now();
        let mut p = Punch::default();
        let base = ep(2, 20_000);
        p.want(Wanted::Slots {
            peer: PEER,
            base,
            step: 1,
            slots: 3,
        });
        assert_eq!(p.opened(fds(2), t0), Opened::Birthday { sockets: 2 });
        let sent = p.due(t0 + Duration::from_secs(1));
        let mut pairs: Vec<(u16, u16)> = sent
            .iter()
            .map(|(pr, s)| (s.as_ref().unwrap().id, pr.to.port()))
            .collect();
        pairs.sort_unstable();
        let ids: Vec<u16> = p.sockets().iter().map(|s| s.id).collect();
        let want: Vec<(u16, u16)> = ids
            .iter()
            .flat_map(|&id| (20_001..=20_003).map(move |port| (id, port)))
            .collect();
        assert_eq!(pairs, want);
    }
}
