//! One remote VIP's state machine (PROTOCOL.md §5.1–§5.3).

use std::collections::VecDeque;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use super::action::{Action, Ignored, Outcome};
use super::addr::is_private;
use super::state::PeerState;
use super::timers::Timers;

/// Node-wide settings a peer consults; borrowed from the manager per call so
/// one change (e.g. an sdwan push) applies to every peer at once.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Env<'a> {
    pub timers: &'a Timers,
    /// P2P switched on *and* a STUN server configured: without STUN there is
    /// no public endpoint to offer, so Candy treats that as "no P2P".
    pub p2p: bool,
    pub lan_p2p: bool,
    pub lan_candidate: Option<SocketAddrV4>,
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
}

impl Peer {
    pub(crate) fn new(vip: Ipv4Addr, now: Instant, timers: &Timers, eager: bool) -> Self {
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
    pub fn retry(&self) -> Duration {
        self.retry
    }
    pub fn last_active(&self) -> Instant {
        self.last_active
    }
    pub fn last_heartbeat(&self) -> Option<Instant> {
        self.last_heartbeat
    }

    /// The single place a state is assigned, so Reset, the retry rules,
    /// `lastActive` and the CONNECTED notifications can never diverge.
    pub(crate) fn set_state(
        &mut self,
        next: PeerState,
        now: Instant,
        timers: &Timers,
        out: &mut VecDeque<Action>,
    ) {
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
        }
        self.state = next;
        // Re-assigning the same state still counts: that is how ack-heartbeats
        // keep CONNECTED alive and how public info restarts PREPARING's timer.
        self.last_active = now;

        if prev == PeerState::Connected && next != PeerState::Connected {
            out.push_back(Action::Disconnected { peer: self.vip });
        }
        // Candy waits for the next 1 s tick at every step, which puts about
        // three seconds between "both joined" and CONNECTED. An eager peer
        // acts on entry instead (STUN at once, heartbeats at once), which
        // is invisible on the wire: a stock peer just sees them a tick early.
        if self.eager && prev != next {
            match next {
                PeerState::Preparing => out.push_back(Action::StunRequest),
                PeerState::Connecting | PeerState::Connected => self.send_heartbeats(out),
                _ => {}
            }
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
            self.set_state(next, now, env.timers, out);
        }
    }

    /// UDP4CONN from this peer.
    pub(crate) fn on_public_info(
        &mut self,
        public: SocketAddrV4,
        now: Instant,
        env: Env<'_>,
        out: &mut VecDeque<Action>,
    ) {
        self.wide = Some(public);
        match self.state {
            PeerState::Connected | PeerState::Connecting => {}
            PeerState::Synchronizing => {
                self.set_state(PeerState::Connecting, now, env.timers, out);
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
                self.set_state(PeerState::Preparing, now, env.timers, out);
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
        self.set_state(next, now, env.timers, out);
        out.push_back(Action::SendPublicInfo {
            peer: self.vip,
            public: own_public,
        });
    }

    /// A UDP heartbeat naming this peer arrived from `from`.
    pub(crate) fn on_heartbeat(
        &mut self,
        from: SocketAddrV4,
        their_ack: bool,
        now: Instant,
        env: Env<'_>,
        out: &mut VecDeque<Action>,
    ) -> Outcome {
        if self.state.ignores_heartbeats() {
            return Outcome::Ignored(Ignored::State(self.state));
        }
        let private = is_private(*from.ip());
        if !private {
            self.wide = Some(from);
        } else if env.lan_p2p {
            self.local = Some(from);
        } else {
            // After an sdwan push a private source may be a routed subnet
            // behind the peer rather than its LAN, so v6 distrusts it.
            return Outcome::Ignored(Ignored::LanP2pDisabled);
        }
        // A LAN path, once found, wins and sticks; a public one follows the
        // latest source so NAT rebinding is tracked.
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
        self.ack = true;
        self.last_heartbeat = Some(now);
        if their_ack {
            self.set_state(PeerState::Connected, now, env.timers, out);
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
                self.set_state(PeerState::Failed, now, t, out);
            }
            PeerState::Synchronizing => {
                if in_state < t.synchronizing {
                    self.send_heartbeats(out);
                } else {
                    self.set_state(PeerState::Failed, now, t, out);
                }
            }
            PeerState::Connecting => {
                if in_state < t.connecting {
                    self.send_heartbeats(out);
                } else {
                    self.set_state(PeerState::Waiting, now, t, out);
                }
            }
            PeerState::Connected => {
                if in_state < t.connected_idle {
                    self.send_heartbeats(out);
                } else {
                    self.set_state(PeerState::Init, now, t, out);
                }
            }
            PeerState::Waiting => {
                if in_state >= self.retry {
                    self.set_state(PeerState::Init, now, t, out);
                }
            }
        }
        false
    }

    fn send_heartbeats(&self, out: &mut VecDeque<Action>) {
        let (first, second) = match self.state {
            PeerState::Connected => (self.real, None),
            PeerState::Connecting => (self.wide, self.local),
            // v6 sends nothing while PREPARING (its tick only asks for STUN).
            PeerState::Synchronizing => (self.local, None),
            _ => (None, None),
        };
        for to in [first, second].into_iter().flatten() {
            out.push_back(Action::Heartbeat {
                peer: self.vip,
                to,
                ack: self.ack,
            });
        }
    }
}
