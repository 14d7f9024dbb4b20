//! One remote VIP's state machine (PROTOCOL.md §5.1–§5.3), with
//! ringlink's endpoint proof for peers that speak it (docs/protocol.md §9.1).
//!
//! A stock Candy peer gets Candy's rules: an authenticated heartbeat from
//! an address makes it the path, and ack-heartbeats keep it alive. A
//! ringlink peer (it marked its UDP4CONN or heartbeat) gets challenges
//! instead: heartbeats and PINGs only name candidates, and the path moves
//! to, or is kept alive on, an address only when a PONG answers a fresh
//! challenge from it, so a replayed datagram can neither move the path nor
//! hold a dead one open.

use std::collections::VecDeque;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use crate::nat::{self, Advertised, Method, NatKind, PeerNat, Role, Step};
use crate::proto::udp::Nonce;
use crate::proto::Ipv4Cidr;

use super::action::{Action, BirthdayRole, FreshSpray, Ignored, Outcome};
use super::addr::is_private;
use super::attempt::{Attempt, Next};
// PONGs per peer get the budget challenges have (a peer challenges at most
// that often), so replayed PINGs cannot turn this node into a reflector.
use super::challenge::{Challenges, Reason, BURST as ANSWER_BURST, PER_TICK as ANSWERS_PER_TICK};
use super::ratelimit::TokenBucket;
use super::state::PeerState;
use super::timers::Timers;

/// WAITING after a missed draw lasts this fraction of Candy's interval.
const DRAW_RETRY_DIVISOR: u32 = 6;

/// Node-wide settings a peer consults; borrowed from the manager per call so
/// one change (e.g. an sdwan push) applies to every peer at once.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Env<'a> {
    pub timers: &'a Timers,
    /// P2P switched on *and* a STUN server configured: without STUN there is
    /// no public endpoint to offer, so Candy treats that as "no P2P".
    pub p2p: bool,
    pub lan_candidate: Option<SocketAddrV4>,
    /// Sources no path may use: the virtual network and every subnet the
    /// tunnel carries. A datagram from there came through the tunnel
    /// itself, and a path over it would loop (the danger Candy meets by
    /// ignoring every private source once subnet routes exist).
    pub tunnelled: &'a [Ipv4Cidr],
    /// This node's published NAT classification, if it has one.
    pub own_nat: Option<NatKind>,
    pub own_reachable: bool,
    /// This node's VIP: between two sequential NATs the lower one leads.
    pub own_vip: Ipv4Addr,
    /// The node's hard-NAT slot is free, or this peer holds it.
    pub slot_free: bool,
}

impl Env<'_> {
    fn tunnelled(&self, ip: Ipv4Addr) -> bool {
        self.tunnelled.iter().any(|c| c.contains(ip))
    }
}

/// Per-peer data of §5.1 plus what status reporting needs.
#[derive(Debug, Clone)]
pub struct Peer {
    vip: Ipv4Addr,
    eager: bool,
    state: PeerState,
    wide: Option<SocketAddrV4>,
    local: Option<SocketAddrV4>,
    real: Option<SocketAddrV4>,
    ack: bool,
    retry: Duration,
    last_active: Instant,
    last_heartbeat: Option<Instant>,
    /// The peer marked a message as ringlink's: challenge its addresses.
    ringlink: bool,
    challenges: Challenges,
    answers: TokenBucket,
    /// Attempts at a direct path (entries into PREPARING from rest).
    attempts: u32,
    attempt_started: Option<Instant>,
    /// From the start of the attempt that succeeded to CONNECTED.
    time_to_direct: Option<Duration>,
    connected_since: Option<Instant>,
    /// What the peer's UDP4CONN said about its NAT.
    nat: Option<Advertised>,
    /// The traversal method of the current (or last) attempt.
    method: Option<Method>,
    /// The hard-NAT attempt of the current CONNECTING stay.
    attempt: Option<Attempt>,
    /// The peer's latest endpoint announced since this attempt's first
    /// (a fresh socket's mapping), with its arrival, and the one before:
    /// their ports over the time between them measure its NAT's drift.
    announced: Option<(SocketAddrV4, Instant)>,
    announced_before: Option<(SocketAddrV4, Instant)>,
}

impl Peer {
    pub(crate) fn new(
        vip: Ipv4Addr,
        now: Instant,
        timers: &Timers,
        eager: bool,
        seed: u64,
    ) -> Self {
        Peer {
            vip,
            eager,
            state: PeerState::Init,
            wide: None,
            local: None,
            real: None,
            ack: false,
            retry: timers.retry_initial,
            last_active: now,
            last_heartbeat: None,
            ringlink: false,
            challenges: Challenges::new(seed, timers.tick, now),
            answers: TokenBucket::new(ANSWER_BURST, timers.tick / ANSWERS_PER_TICK, now),
            attempts: 0,
            attempt_started: None,
            time_to_direct: None,
            connected_since: None,
            nat: None,
            method: None,
            attempt: None,
            announced: None,
            announced_before: None,
        }
    }

    pub fn vip(&self) -> Ipv4Addr {
        self.vip
    }
    pub fn state(&self) -> PeerState {
        self.state
    }
    pub fn wide(&self) -> Option<SocketAddrV4> {
        self.wide
    }
    pub fn local(&self) -> Option<SocketAddrV4> {
        self.local
    }
    pub fn real(&self) -> Option<SocketAddrV4> {
        self.real
    }
    /// How long WAITING lasts: Candy's doubling interval, or a sixth of it
    /// after a missed draw (5 s, 10 s, … from Candy's 30 s), so a pair
    /// with a random NAT side usually has its second draw well within
    /// half a minute. The packet budget per attempt is unchanged; the
    /// interval still doubles, so a pair that keeps missing (sequential ↔
    /// random, ~1.5 % a draw) still backs off, to 10 minutes at most.
    pub fn retry(&self) -> Duration {
        if self.method.is_some_and(Method::is_draw) {
            self.retry / DRAW_RETRY_DIVISOR
        } else {
            self.retry
        }
    }
    pub fn last_active(&self) -> Instant {
        self.last_active
    }
    pub fn last_heartbeat(&self) -> Option<Instant> {
        self.last_heartbeat
    }
    pub fn ringlink(&self) -> bool {
        self.ringlink
    }
    pub fn attempts(&self) -> u32 {
        self.attempts
    }
    pub fn time_to_direct(&self) -> Option<Duration> {
        self.time_to_direct
    }
    pub fn nat(&self) -> Option<Advertised> {
        self.nat
    }
    pub fn method(&self) -> Option<Method> {
        self.method
    }

    /// The single place a state is assigned, so Reset, the retry rules,
    /// `lastActive` and the CONNECTED notifications can never diverge.
    pub(crate) fn set_state(
        &mut self,
        next: PeerState,
        now: Instant,
        env: Env<'_>,
        out: &mut VecDeque<Action>,
    ) {
        let timers = env.timers;
        let prev = self.state;
        if prev != next {
            match next {
                PeerState::Init if prev == PeerState::Waiting => {
                    self.retry = timers.next_retry(self.retry)
                }
                PeerState::Init | PeerState::Failed => self.retry = timers.retry_initial,
                _ => {}
            }
        }
        if next.resets_on_entry() {
            self.wide = None;
            self.local = None;
            self.real = None;
            self.ack = false;
            self.challenges.clear();
            self.announced = None;
            self.announced_before = None;
        }
        if prev == PeerState::Connecting && next != PeerState::Connecting {
            self.attempt = None;
        }
        if next == PeerState::Preparing && prev.resets_on_entry() {
            self.attempts += 1;
            self.attempt_started = Some(now);
        }
        let attempt_starts = next == PeerState::Connecting && prev != PeerState::Connecting;
        if attempt_starts {
            self.attempt = self.ringlink.then(|| {
                let mine = PeerNat {
                    kind: env.own_nat,
                    reachable: env.own_reachable,
                };
                let peer = PeerNat {
                    kind: self.nat.map(|n| n.kind),
                    reachable: self.nat.is_some_and(|n| n.reachable),
                };
                Attempt::new(nat::plan(mine, peer, env.own_vip < self.vip), now)
            });
            self.method = self.attempt.as_ref().map(|a| a.plan.method);
            // Two random symmetric NATs: the table sends no probes, so the
            // caller need not wait out CONNECTING to offer a relayed path.
            if self.method == Some(Method::Relay) {
                out.push_back(Action::NoDirectPath { peer: self.vip });
            }
        }
        if next == PeerState::Connected && prev != PeerState::Connected {
            self.time_to_direct = self
                .attempt_started
                .map(|t| now.saturating_duration_since(t));
            self.connected_since = Some(now);
        }
        self.state = next;
        // Re-assigning the same state still counts: that is how ack-heartbeats
        // keep CONNECTED alive and how public info restarts PREPARING's timer.
        self.last_active = now;

        if prev == PeerState::Connected && next != PeerState::Connected {
            out.push_back(Action::Disconnected { peer: self.vip });
        }
        // Out of CONNECTING without a path, or never got there (no STUN
        // answer, no public info from the peer: a network that drops UDP):
        // the paths beyond direct UDP are worth trying.
        let punch_failed = prev == PeerState::Connecting
            && next == PeerState::Waiting
            && self.method != Some(Method::Relay);
        let never_punched = env.p2p
            && matches!(prev, PeerState::Preparing | PeerState::Synchronizing)
            && next == PeerState::Failed;
        // Whether a peer that never reached CONNECTING speaks ringlink only
        // its key shows (no public info came): the caller checks.
        if (self.ringlink && punch_failed) || never_punched {
            out.push_back(Action::NoDirectPath { peer: self.vip });
        }
        // Candy waits for the next 1 s tick at every step, which puts about
        // three seconds between "both joined" and CONNECTED. An eager peer
        // acts on entry instead (STUN at once, heartbeats at once), which
        // is invisible on the wire: a stock peer just sees them a tick early.
        if self.eager && prev != next {
            match next {
                PeerState::Preparing => out.push_back(Action::StunRequest),
                PeerState::Connecting | PeerState::Connected => self.probe(now, env, out),
                _ => {}
            }
        }
        // After the entry's challenges: an observation made now is newer
        // than the session they opened.
        if attempt_starts {
            self.drive_attempt(now, env, out);
        }
        if prev != PeerState::Connected && next == PeerState::Connected {
            if let Some(path) = self.real {
                out.push_back(Action::Connected {
                    peer: self.vip,
                    path,
                });
            }
        }
    }

    /// Relayed traffic or DISCOVERY from this peer.
    pub(crate) fn try_p2p(&mut self, now: Instant, env: Env<'_>, out: &mut VecDeque<Action>) {
        if self.state == PeerState::Init {
            let next = if env.p2p {
                PeerState::Preparing
            } else {
                PeerState::Failed
            };
            self.set_state(next, now, env, out);
        }
    }

    /// A peer FAILED before punching (no STUN answer, no public info: a
    /// network that drops UDP) but reached another way (a TCP stream,
    /// which only ringlink peers have) tries again once the back-off has passed, as from WAITING:
    /// the network may pass UDP by now, and a direct path that wins
    /// replaces the stream. Candy's FAILED waits for public info instead,
    /// which a pair off the relay would never send.
    pub(crate) fn retry_failed(&mut self, now: Instant, env: Env<'_>, out: &mut VecDeque<Action>) {
        let waited = now.saturating_duration_since(self.last_active);
        if self.state == PeerState::Failed && waited >= self.retry() {
            self.set_state(PeerState::Init, now, env, out);
            self.try_p2p(now, env, out);
        }
    }

    /// UDP4CONN from this peer; `ringlink` when it carried our marker. The
    /// server relays it from the peer's own session, so it is the one place
    /// a peer can also say it is *not* ringlink (a node restarted as Candy).
    pub(crate) fn on_public_info(
        &mut self,
        public: SocketAddrV4,
        ringlink: bool,
        nat: Option<Advertised>,
        now: Instant,
        env: Env<'_>,
        out: &mut VecDeque<Action>,
    ) {
        self.ringlink = ringlink;
        self.nat = nat;
        let moved = self.wide.is_some_and(|w| w != public);
        self.wide = Some(public);
        if moved && self.ringlink {
            self.announced_before = self.announced;
            self.announced = Some((public, now));
        }
        match self.state {
            // A ringlink peer announces a second endpoint mid-attempt (a
            // fresh socket): a cone's is challenged now, not a tick later,
            // before more sessions on a sequential NAT move our next port
            // out of the window the peer sprayed. A symmetric NAT's admits
            // only the STUN server: it is the base of our next round.
            PeerState::Connecting if moved && self.ringlink && !env.tunnelled(*public.ip()) => {
                if !nat::is_symmetric(self.nat.map(|n| n.kind)) {
                    self.challenge(public, Reason::Tick, now, out);
                }
                self.drive_attempt(now, env, out);
            }
            PeerState::Connected | PeerState::Connecting => {}
            PeerState::Synchronizing => {
                self.set_state(PeerState::Connecting, now, env, out);
                // Not in v6, which leaves LAN info to the "responder". When
                // both ends initiate at once (each heard the other's
                // DISCOVERY or relayed packet), both reach SYNCHRONIZING
                // before the other's public info arrives, so neither is the
                // responder and two peers behind one NAT only ever try
                // their (unhairpinned) public candidates. GENERAL/0 is
                // stored in any state by Candy, so sending it is harmless.
                if let Some(lan) = env.lan_candidate {
                    out.push_back(Action::SendLanInfo {
                        peer: self.vip,
                        lan,
                    });
                }
            }
            PeerState::Init | PeerState::Preparing | PeerState::Waiting | PeerState::Failed => {
                self.set_state(PeerState::Preparing, now, env, out);
                if let Some(lan) = env.lan_candidate {
                    out.push_back(Action::SendLanInfo {
                        peer: self.vip,
                        lan,
                    });
                }
            }
        }
    }

    /// GENERAL/0 from this peer.
    pub(crate) fn on_lan_info(&mut self, lan: SocketAddrV4) {
        self.local = Some(lan);
    }

    /// Our own public endpoint became known (or was confirmed).
    pub(crate) fn on_stun(
        &mut self,
        own_public: SocketAddrV4,
        now: Instant,
        env: Env<'_>,
        out: &mut VecDeque<Action>,
    ) {
        if self.state != PeerState::Preparing {
            return;
        }
        let next = if self.wide.is_some() {
            PeerState::Connecting
        } else {
            PeerState::Synchronizing
        };
        self.set_state(next, now, env, out);
        out.push_back(Action::SendPublicInfo {
            peer: self.vip,
            public: own_public,
        });
    }

    /// A UDP heartbeat naming this peer arrived from `from`; `marked` when
    /// it carried ringlink's marker.
    pub(crate) fn on_heartbeat(
        &mut self,
        from: SocketAddrV4,
        their_ack: bool,
        marked: bool,
        now: Instant,
        env: Env<'_>,
        out: &mut VecDeque<Action>,
    ) -> Outcome {
        if let Err(why) = self.admit(from, env) {
            return Outcome::Ignored(why);
        }
        self.ringlink |= marked;
        if self.ringlink {
            self.ack = true;
            self.challenge_new(from, now, out);
            return Outcome::Accepted;
        }
        self.take_path(from, out);
        self.ack = true;
        self.last_heartbeat = Some(now);
        if their_ack {
            self.set_state(PeerState::Connected, now, env, out);
        } else if self.eager && self.state != PeerState::Connected {
            // Answer a first heartbeat at once with our ack instead of on the
            // next tick; one reply per heartbeat received, so this cannot
            // run away.
            out.push_back(Action::Heartbeat {
                peer: self.vip,
                to: from,
                ack: true,
            });
        }
        Outcome::Accepted
    }

    /// A PING naming this peer arrived from `from`: answer it from where it
    /// came (that proves the path to the challenger, not to us), and
    /// challenge the address in turn if it is new to us.
    pub(crate) fn on_ping(
        &mut self,
        from: SocketAddrV4,
        nonce: Nonce,
        now: Instant,
        env: Env<'_>,
        out: &mut VecDeque<Action>,
    ) -> Outcome {
        if let Err(why) = self.admit(from, env) {
            return Outcome::Ignored(why);
        }
        // Only ringlink nodes send PINGs.
        self.ringlink = true;
        self.ack = true;
        // The path's own PINGs are answered always (they come once a tick
        // from a live peer); anyone else's within a budget.
        if self.real != Some(from) && !self.answers.take(now) {
            return Outcome::Ignored(Ignored::RateLimited);
        }
        out.push_back(Action::Pong {
            peer: self.vip,
            to: from,
            nonce,
        });
        self.challenge_new(from, now, out);
        Outcome::Accepted
    }

    /// A PONG naming this peer arrived from `from`. If it answers a
    /// challenge we sent to `from`, that address is proven: it may become
    /// the path, and if it is the path, the path is alive.
    pub(crate) fn on_pong(
        &mut self,
        from: SocketAddrV4,
        nonce: &Nonce,
        now: Instant,
        env: Env<'_>,
        out: &mut VecDeque<Action>,
    ) -> Outcome {
        if let Err(why) = self.admit(from, env) {
            return Outcome::Ignored(why);
        }
        if let Err(why) = self.challenges.answer(from, nonce, now) {
            return Outcome::Ignored(why);
        }
        self.take_path(from, out);
        if self.real == Some(from) {
            self.last_heartbeat = Some(now);
            self.set_state(PeerState::Connected, now, env, out);
        }
        Outcome::Accepted
    }

    /// Whether a datagram from `from` may say anything about paths.
    fn admit(&self, from: SocketAddrV4, env: Env<'_>) -> Result<(), Ignored> {
        if self.state.ignores_heartbeats() {
            return Err(Ignored::State(self.state));
        }
        if env.tunnelled(*from.ip()) {
            return Err(Ignored::TunnelledSource);
        }
        Ok(())
    }

    /// Candy's path choice, applied to an address that is trusted (any
    /// authenticated source for a Candy peer, a proven one for ringlink):
    /// a LAN path, once found, wins and sticks; a public one follows the
    /// latest source so NAT rebinding is tracked.
    fn take_path(&mut self, from: SocketAddrV4, out: &mut VecDeque<Action>) {
        let private = is_private(*from.ip());
        if private {
            self.local = Some(from);
        } else {
            self.wide = Some(from);
        }
        let replace = match self.real {
            None => true,
            Some(cur) => private || !is_private(*cur.ip()),
        };
        if replace && self.real != Some(from) {
            self.real = Some(from);
            if self.state == PeerState::Connected {
                out.push_back(Action::PathChanged {
                    peer: self.vip,
                    path: from,
                });
            }
        }
    }

    /// A ringlink peer was heard from `from`: challenge it unless it is
    /// already the proven path (the tick keeps that one checked).
    fn challenge_new(&mut self, from: SocketAddrV4, now: Instant, out: &mut VecDeque<Action>) {
        if self.real != Some(from) || self.state != PeerState::Connected {
            self.challenge(from, Reason::Heard, now, out);
        }
    }

    fn challenge(
        &mut self,
        to: SocketAddrV4,
        reason: Reason,
        now: Instant,
        out: &mut VecDeque<Action>,
    ) {
        if let Some(nonce) = self.challenges.issue(to, reason, now) {
            out.push_back(Action::Ping {
                peer: self.vip,
                to,
                nonce,
            });
        }
    }

    /// One 1-s tick. Returns true when this peer wants a STUN request; the
    /// manager sends at most one per tick for all peers.
    pub(crate) fn tick(&mut self, now: Instant, env: Env<'_>, out: &mut VecDeque<Action>) -> bool {
        let t = env.timers;
        let in_state = now.saturating_duration_since(self.last_active);
        match self.state {
            PeerState::Init | PeerState::Failed => {}
            PeerState::Preparing => {
                if env.p2p && in_state < t.preparing {
                    return true;
                }
                self.set_state(PeerState::Failed, now, env, out);
            }
            PeerState::Synchronizing => {
                if in_state < t.synchronizing {
                    self.probe(now, env, out);
                } else {
                    self.set_state(PeerState::Failed, now, env, out);
                }
            }
            PeerState::Connecting => {
                let waited = self.attempt.as_mut().map_or(Duration::ZERO, |a| {
                    a.tick(t.tick, t.connecting);
                    a.waited()
                });
                if in_state < t.connecting + waited {
                    self.probe(now, env, out);
                    self.drive_attempt(now, env, out);
                } else {
                    self.set_state(PeerState::Waiting, now, env, out);
                }
            }
            PeerState::Connected => {
                if in_state < t.connected_idle {
                    self.probe(now, env, out);
                } else {
                    self.set_state(PeerState::Init, now, env, out);
                }
            }
            PeerState::Waiting => {
                if in_state >= self.retry() {
                    self.set_state(PeerState::Init, now, env, out);
                }
            }
        }
        false
    }

    fn lan_worth_trying(&self, now: Instant, timers: &Timers) -> bool {
        let young = self
            .connected_since
            .is_some_and(|t| now.saturating_duration_since(t) < timers.connecting);
        young && self.local.is_some() && self.local != self.real
    }

    /// The tick's messages to the peer's candidates: Candy's heartbeats,
    /// or challenges to a ringlink peer (whose PONGs are its heartbeats).
    fn probe(&mut self, now: Instant, env: Env<'_>, out: &mut VecDeque<Action>) {
        let timers = env.timers;
        let (first, second) = match self.state {
            // A ringlink peer connects on the first proven address, often
            // the public one before the LAN candidate is known or answered,
            // and only a proof moves the path; so for as long as Candy
            // would try candidates, keep challenging the LAN one too.
            PeerState::Connected if self.ringlink && self.lan_worth_trying(now, timers) => {
                (self.real, self.local)
            }
            PeerState::Connected => (self.real, None),
            PeerState::Connecting => (self.wide, self.local),
            // v6 sends nothing while PREPARING (its tick only asks for STUN).
            PeerState::Synchronizing => (self.local, None),
            _ => (None, None),
        };
        // A candidate inside the tunnel (a LAN address the peer announced
        // that is also a subnet the tunnel carries) would be reached
        // through the tunnel itself: never probe there.
        let outside = |to: &SocketAddrV4| !env.tunnelled(*to.ip());
        for to in [first, second].into_iter().flatten().filter(outside) {
            if self.ringlink {
                self.challenge(to, Reason::Tick, now, out);
            } else {
                out.push_back(Action::Heartbeat {
                    peer: self.vip,
                    to,
                    ack: self.ack,
                });
            }
        }
    }

    /// The attempt's socket for this round is mapped at `mapped` (its STUN
    /// answer); the announcement to the peer is the caller's.
    pub(crate) fn on_own_fresh(
        &mut self,
        mapped: SocketAddrV4,
        now: Instant,
        env: Env<'_>,
        out: &mut VecDeque<Action>,
    ) {
        if let Some(a) = &mut self.attempt {
            a.observed(mapped);
            self.drive_attempt(now, env, out);
        }
    }

    /// The node's hard-NAT slot is this peer's.
    pub(crate) fn holds_slot(&self, now: Instant) -> bool {
        self.state == PeerState::Connecting
            && self.attempt.as_ref().is_some_and(|a| a.holds_slot(now))
    }

    /// The attempt wanted the node's slot and did not get it.
    pub(crate) fn waits_for_slot(&self) -> bool {
        self.state == PeerState::Connecting
            && self.attempt.as_ref().is_some_and(Attempt::waits_for_slot)
    }

    /// The slot came free: the attempt may start its round.
    pub(crate) fn resume(&mut self, now: Instant, env: Env<'_>, out: &mut VecDeque<Action>) {
        self.drive_attempt(now, env, out);
    }

    /// Moves the attempt on: a new round, or the spray of the current one.
    fn drive_attempt(&mut self, now: Instant, env: Env<'_>, out: &mut VecDeque<Action>) {
        let Some(wide) = self.wide.filter(|w| !env.tunnelled(*w.ip())) else {
            return;
        };
        if self.state != PeerState::Connecting {
            return;
        }
        let Some(a) = &mut self.attempt else {
            return;
        };
        let next = a.next(now, env.timers.tick, self.announced, env.slot_free);
        let (role, acted_on) = (a.plan.role, a.acted_on());
        let peer = self.vip;
        let step = self.nat.map_or(1, |n| nat::schedule::step_of(n.kind.delta));
        match next {
            Next::Nothing => {}
            Next::Round { step: s, on } => {
                let base = on.unwrap_or_else(|| self.newest_mapping(wide));
                let action = match s {
                    Step::FreshPort => Action::FreshPort {
                        peer,
                        target: Some(wide),
                        spray: FreshSpray::Nothing,
                    },
                    Step::Observe
                    | Step::ObserveAndStride { .. }
                    | Step::ObserveAndBirthday { .. } => Action::FreshPort {
                        peer,
                        target: None,
                        spray: FreshSpray::Nothing,
                    },
                    Step::FreshPortWindow { behind, ahead } => {
                        let ahead = match (self.announced_before, self.announced) {
                            (before, Some((later, at))) if Some(later) == on => {
                                nat::schedule::widened_ahead(
                                    ahead,
                                    step,
                                    before.map(|(ep, t)| (ep.port(), t)),
                                    (later.port(), at),
                                )
                            }
                            _ => ahead,
                        };
                        Action::FreshPort {
                            peer,
                            target: None,
                            spray: FreshSpray::Window {
                                base,
                                step,
                                behind,
                                ahead,
                            },
                        }
                    }
                    Step::FreshPortBirthday { count } => Action::FreshPort {
                        peer,
                        target: None,
                        spray: FreshSpray::Birthday {
                            ip: *wide.ip(),
                            count,
                        },
                    },
                    Step::Sockets { count } => Action::Birthday {
                        peer,
                        role: BirthdayRole::Sockets {
                            target: on.unwrap_or(wide),
                            count,
                        },
                    },
                    Step::SlotSockets { slots, per_slot } => Action::Birthday {
                        peer,
                        role: BirthdayRole::Slots {
                            base,
                            step,
                            slots,
                            per_slot,
                        },
                    },
                };
                out.push_back(action);
            }
            Next::SprayObserved { step: s } => {
                let action = match s {
                    Step::ObserveAndStride { stride, count } => {
                        let base = match role {
                            Role::Lead => self.announced.map(|(ep, _)| ep),
                            Role::Follow => acted_on,
                        }
                        .unwrap_or_else(|| self.newest_mapping(wide));
                        Action::Spray {
                            peer,
                            base,
                            step,
                            stride,
                            count,
                        }
                    }
                    Step::ObserveAndBirthday { count } => Action::Birthday {
                        peer,
                        role: BirthdayRole::Spray {
                            ip: *wide.ip(),
                            count,
                        },
                    },
                    _ => return,
                };
                out.push_back(action);
            }
        }
    }

    /// The peer's newest mapping we know of: the later of the one its
    /// classification saw last and the one its UDP4CONN carries, unless
    /// an announcement of this attempt (an observation) is fresher still.
    fn newest_mapping(&self, wide: SocketAddrV4) -> SocketAddrV4 {
        if let Some((ep, _)) = self.announced {
            return ep;
        }
        let Some(nat) = self.nat else {
            return wide;
        };
        let step = nat::schedule::step_of(nat.kind.delta);
        if nat.last_mapped.ip() != wide.ip() {
            wide
        } else if (i32::from(nat.last_mapped.port()) - i32::from(wide.port())) * step.signum() > 0 {
            nat.last_mapped
        } else {
            wide
        }
    }
}
